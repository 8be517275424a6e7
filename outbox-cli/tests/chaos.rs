//! The `outbox relay` process killed with SIGKILL over and over while
//! writers keep committing, then drained with `--until-empty`: the Kafka
//! log (the mock cluster, or the broker at `KAFKA_BROKERS`) is checked
//! against the writers' ledger (`outbox_tests::ledger`): every committed
//! event delivered, no rolled-back one, first copies per key in commit
//! order. Prints one line of counts per database.

#[path = "../../outbox-sea-orm/tests/common/mod.rs"]
mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use chrono::Utc;
use common::{Backend, TestDb};
use outbox_engine::OutboxAdmin;
use outbox_tests::ledger::{Kafka, Ledger, WriterPlan, Writers};

/// How many times the relay is killed.
const KILLS: u32 = 20;

/// The `outbox relay` command for `db` and `brokers`: small batches, a
/// short lease (a killed relay's records wait for it), no retention.
fn relay(db: &TestDb, brokers: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outbox"));
    command
        .env("DATABASE_URL", &db.url)
        .env_remove("KAFKA_BROKERS")
        .env_remove("RUST_LOG")
        .env("OUTBOX_HTTP_ADDR", "off")
        .args(["relay", "--brokers", brokers])
        .args([
            "--batch-size",
            "20",
            "--lease",
            "1s",
            "--poll-interval",
            "50ms",
        ])
        .args(["--retain", "off", "--backlog-interval", "1h"]);
    command
}

fn spawn(mut command: Command) -> Child {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the outbox binary starts")
}

/// Runs a command to its end, off the runtime's threads, for at most
/// `within`.
async fn output(mut command: Command, within: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the outbox binary starts");
    let id = child.id();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(within, waiting).await {
        Ok(output) => output.unwrap().expect("the outbox binary runs"),
        Err(_) => {
            // The drain hangs: end it so the test fails with a message.
            Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status()
                .ok();
            panic!("`outbox relay --until-empty` did not finish within {within:?}");
        }
    }
}

async fn relay_killed_with_sigkill(db: TestDb) {
    let mut kafka = Kafka::start().await;
    let topic = kafka.topic("ledger", 3).await;
    Writers::prepare(&db.db, 12).await;
    let ledger = Ledger::new();
    let writers = Writers::spawn(db.db.clone(), ledger.clone(), WriterPlan::new(&topic, 12));
    let store = db.store();

    // Kill it at random points: starting up, claiming, publishing,
    // marking, idle.
    let mut busy_kills = 0;
    for _ in 0..KILLS {
        let mut child = spawn(relay(&db, kafka.brokers()));
        let alive = rand::random_range(80..700);
        tokio::time::sleep(Duration::from_millis(alive)).await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "the relay exited by itself: {:?}",
            child.try_wait()
        );
        let pending = store.stats(Utc::now()).await.unwrap().pending;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if pending > 0 {
            busy_kills += 1;
        }
    }
    let errors = writers.finish().await;
    ledger.resolve(&db.db).await;

    let mut drain = relay(&db, kafka.brokers());
    drain.arg("--until-empty");
    let out = output(drain, Duration::from_secs(120)).await;
    assert!(
        out.status.success(),
        "the drain failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 0), "{stats:?}");

    let log = kafka
        .read_log(&[&topic], ledger.expected_deliveries())
        .await;
    let backend = match db.backend {
        Backend::Postgres => "PostgreSQL",
        Backend::MySql => "MariaDB",
        _ => "SQLite",
    };
    ledger.assert_holds(
        &log,
        &format!("relay process killed with SIGKILL on {backend}"),
        &format!("kills {KILLS} ({busy_kills} with records pending), writer errors {errors}"),
    );
    assert!(busy_kills > 0, "no kill found work pending");
}

on!(relay_killed_with_sigkill: Postgres, MySql, SqliteFile);
