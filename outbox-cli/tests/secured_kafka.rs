//! The `outbox` command against a secured Kafka: `outbox relay` publishes
//! through a TLS listener with the CA given in its `--kafka-config` file,
//! and with the wrong CA it waits, not ready, and `/readyz` names
//! `ssl.ca.location`; nothing is published meanwhile.
//!
//! Needs `tansu`, `socat` and `openssl` (as `scripts/test` installs them):
//! without them the test says SKIPPED, and fails when `CI=true`.

#[path = "../../outbox-sea-orm/tests/common/mod.rs"]
mod common;
#[path = "../../outbox-kafka/tests/secured/mod.rs"]
mod secured;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use common::{Backend, TestDb};
use outbox_engine::{NewRecord, OutboxAdmin, OutboxEvent, OutboxStore};
use secured::{certificates, config, create_topic, free_port, program, tls_broker};

#[derive(Debug, serde::Serialize, serde::Deserialize, OutboxEvent)]
#[outbox(topic = "secured-cli", key = order)]
struct OrderPlaced {
    order: String,
}

/// `/readyz` on `port`: its status code and body.
fn readyz(port: u16) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /readyz HTTP/1.0\r\nHost: relay\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, response.split("\r\n\r\n").nth(1)?.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_relay_publishes_over_tls_and_names_a_wrong_ca() {
    let (Some(bin), Some(_), Some(_)) = (program("tansu"), program("socat"), program("openssl"))
    else {
        return;
    };
    let Some(db) = TestDb::new(Backend::SqliteFile).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path(), "server");
    certificates(dir.path(), "stranger");
    let broker = tls_broker(&bin, dir.path());
    let (brokers, ca) = (broker.brokers.clone(), broker.ca.clone());
    create_topic(
        &config(
            &brokers,
            &[
                ("security.protocol", "ssl".into()),
                ("ssl.ca.location", ca.clone()),
            ],
        ),
        "secured-cli",
    )
    .await;
    let store = db.store();
    let records: Vec<NewRecord> = (0..5)
        .map(|n| {
            NewRecord::from_event(&OrderPlaced {
                order: format!("o{n}"),
            })
            .unwrap()
        })
        .collect();
    store.enqueue(&records).await.unwrap();
    let properties = |ca: &str| {
        let path = dir.path().join(format!("kafka-{}.properties", ca.len()));
        std::fs::write(
            &path,
            format!("# TLS to the brokers\nsecurity.protocol=ssl\nssl.ca.location={ca}\n"),
        )
        .unwrap();
        path
    };

    // The wrong CA: the relay waits, not ready, and says which setting.
    let wrong = properties(&dir.path().join("stranger-ca.pem").display().to_string());
    let http = free_port();
    let mut child = Command::cargo_bin("outbox")
        .unwrap()
        .args(["relay", "--broker-timeout", "2s"])
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BROKERS", &brokers)
        .env("OUTBOX_KAFKA_CONFIG", &wrong)
        .env("OUTBOX_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let reason = loop {
        if let Some((503, body)) = readyz(http)
            && body.contains("ssl.ca.location")
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never named the CA: {:?}",
            readyz(http)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("outbox relay with the wrong CA, /readyz: {reason}");
    assert!(child.try_wait().unwrap().is_none(), "the relay exited");
    child.kill().unwrap();
    child.wait().unwrap();
    let stats = store.stats(chrono::Utc::now()).await.unwrap();
    assert_eq!(
        (stats.pending, stats.dead),
        (5, 0),
        "nothing published: {stats:?}"
    );

    // The right CA: everything is published.
    let right = properties(&ca);
    let output = Command::cargo_bin("outbox")
        .unwrap()
        .args(["relay", "--until-empty", "--kafka-config"])
        .arg(&right)
        .args(["--brokers", &brokers])
        .env("DATABASE_URL", &db.url)
        .env("OUTBOX_HTTP_ADDR", "off")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stats = store.stats(chrono::Utc::now()).await.unwrap();
    assert_eq!((stats.published, stats.pending), (0, 0), "{stats:?}");
}
