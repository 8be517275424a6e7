//! The migration command line: `cargo run -p outbox-migration --features cli -- up`
//! (reads `DATABASE_URL`; `--help` lists the commands).

use sea_orm_migration::prelude::*;

#[tokio::main]
async fn main() {
    cli::run_cli(outbox_migration::Migrator).await;
}
