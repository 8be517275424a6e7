//! `outbox`: the operator's command for a transactional outbox in a
//! PostgreSQL, MySQL/MariaDB or SQLite database, published to Kafka.
//!
//! ```text
//! outbox migrate                       # create or update the outbox tables
//! outbox relay --brokers kafka:9092    # publish until Ctrl-C or SIGTERM
//! outbox status                        # the backlog, by topic
//! outbox dead list                     # records that failed for good
//! outbox dead requeue 42               # publish one again
//! outbox purge --older-than 7d         # delete old published records
//! outbox topics ensure                 # create the topics pending records name
//! ```
//!
//! Every command reads the database URL from `--database-url` or
//! `DATABASE_URL`. Errors are one line on stderr; the exit code is 2 for a
//! usage error and 1 for any other failure.

mod admin;
mod db;
mod kafka;
mod migrate;
mod relay;
mod text;
mod topics;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  export DATABASE_URL=postgres://app@127.0.0.1/app
  outbox migrate
  outbox relay --brokers 127.0.0.1:9092
  outbox status --json
  outbox dead list --topic orders
  outbox dead requeue --all --topic orders
  outbox purge --older-than 7d";

/// Runs and operates a transactional outbox: the relay that publishes its
/// records to Kafka, and the commands that show and repair its state.
#[derive(Debug, Parser)]
#[command(name = "outbox", version, after_help = EXAMPLES, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
struct Global {
    /// The database that holds the outbox table: postgres://...,
    /// mysql://... (MySQL and MariaDB) or sqlite://FILE.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// The PostgreSQL schema of the outbox's tables (created by `outbox
    /// migrate` when missing); by default the connection's.
    #[arg(long, env = "OUTBOX_SCHEMA", global = true, value_name = "NAME")]
    schema: Option<String>,
    /// The outbox table's name; its keys' table is NAME_keys unless
    /// --keys-table says otherwise. Give the same names to every command
    /// and to the service's writers.
    #[arg(
        long,
        env = "OUTBOX_TABLE",
        global = true,
        value_name = "NAME",
        default_value = "outbox"
    )]
    outbox_table: String,
    /// The keys' table's name (by default the outbox table's, then `_keys`).
    #[arg(long, env = "OUTBOX_KEYS_TABLE", global = true, value_name = "NAME")]
    keys_table: Option<String>,
    /// The consumer's inbox table's name (`outbox migrate --inbox`).
    #[arg(
        long,
        env = "OUTBOX_INBOX_TABLE",
        global = true,
        value_name = "NAME",
        default_value = "inbox"
    )]
    inbox_table: String,
    /// How log lines look on stderr (the level comes from RUST_LOG).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "OUTBOX_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates or updates the outbox tables (the outbox migrations).
    #[command(after_help = "Examples:\n  outbox migrate\n  outbox migrate --status")]
    Migrate(migrate::MigrateArgs),
    /// Publishes committed records to Kafka (or NATS) until Ctrl-C or
    /// SIGTERM.
    #[command(after_help = relay::EXAMPLES)]
    Relay(relay::RelayArgs),
    /// Counts records by status and topic, and the age of the oldest
    /// pending one.
    #[command(after_help = "Examples:\n  outbox status\n  outbox status --json | jq .pending")]
    Status(admin::StatusArgs),
    /// Lists, shows, requeues and discards dead records.
    #[command(subcommand)]
    Dead(admin::DeadCommand),
    /// Deletes published records older than a period, in bounded batches.
    #[command(
        after_help = "Examples:\n  outbox purge --older-than 7d\n  outbox purge --older-than 12h --batch-size 5000"
    )]
    Purge(admin::PurgeArgs),
    /// Manages the Kafka topics the outbox publishes to.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&anyhow::anyhow!("cannot start the async runtime: {error}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => fail(&error),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let url = || db::database_url(&cli.global);
    let tables = db::tables(&cli.global)?;
    match cli.command {
        Command::Migrate(args) => migrate::run(&url()?, &tables, &args).await,
        Command::Relay(args) => relay::run(&url()?, &tables, args).await,
        Command::Status(args) => admin::status(&url()?, &tables, &args).await,
        Command::Dead(command) => admin::dead(&url()?, &tables, command).await,
        Command::Purge(args) => admin::purge(&url()?, &tables, &args).await,
        Command::Topics(command) => topics::run(&url()?, &tables, command).await,
    }
}

/// Prints `error` on one line (its causes after colons) and returns 1.
fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::FAILURE
}

fn init_logging(cli: &Cli) {
    // The relay logs what it does; the other commands print their result
    // and log only problems.
    let default = match cli.command {
        Command::Relay(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.global.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A usage error, reported as clap reports its own (exit code 2).
fn usage_error(message: impl std::fmt::Display) -> ! {
    use clap::CommandFactory;
    Cli::command()
        .error(clap::error::ErrorKind::MissingRequiredArgument, message)
        .exit()
}
