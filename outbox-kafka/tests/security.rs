//! A secured Kafka, with real parts: a tansu broker of the test's own
//! behind a TLS listener (socat, with a CA and certificates the test makes
//! with openssl), and tansu demanding SASL SCRAM logins. The relay
//! publishes through them; a wrong CA, a wrong password and a token the
//! broker refuses each give one clear error naming the setting to fix,
//! nothing is marked published and nothing goes dead.
//!
//! Needs `tansu` (on PATH or in ~/.cargo/bin; `scripts/test` installs it),
//! `socat` and `openssl`: without them each test says SKIPPED, and fails
//! when `CI=true`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use outbox_engine::{
    DeadFilter, InMemoryStore, NewRecord, OutboxAdmin, OutboxEvent, OutboxStore, Relay, Status,
};
use outbox_rdkafka::{Error, KafkaSink, check_brokers};
use rdkafka::client::OAuthToken;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "secured", key = order)]
struct OrderPlaced {
    order: String,
    n: u32,
}

mod secured;

use secured::*;

/// Enqueues `count` events for `topic` in a fresh store.
async fn store_with(topic: &str, count: u32) -> InMemoryStore {
    let store = InMemoryStore::new();
    let records: Vec<NewRecord> = (0..count)
        .map(|n| {
            let mut record = NewRecord::from_event(&OrderPlaced {
                order: format!("o{}", n % 3),
                n,
            })
            .unwrap();
            record.topic = topic.to_owned();
            record
        })
        .collect();
    store.enqueue(&records).await.unwrap();
    store
}

/// Publishes everything in `store` through `sink`, failing after a while.
async fn publish_all<C: rdkafka::client::ClientContext + 'static>(
    store: &InMemoryStore,
    sink: KafkaSink<C>,
) {
    let relay = Relay::builder(store.clone(), sink).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !store.records_with_status(Status::Pending).is_empty() {
        assert!(
            Instant::now() < deadline,
            "not published in time: {:?}",
            relay.status()
        );
        relay.run_once().await.unwrap();
    }
}

/// One batch through `sink`, which must fail: nothing published, nothing
/// dead; returns the records' last error.
async fn fails_clearly<C: rdkafka::client::ClientContext + 'static>(
    store: &InMemoryStore,
    sink: KafkaSink<C>,
) -> String {
    let relay = Relay::builder(store.clone(), sink).build().unwrap();
    relay.run_once().await.unwrap();
    assert!(
        store.records_with_status(Status::Published).is_empty(),
        "nothing published"
    );
    assert!(
        store
            .list_dead(&DeadFilter::all(), None, 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing dead"
    );
    let pending = store.records_with_status(Status::Pending);
    let errors: Vec<String> = pending
        .iter()
        .filter_map(|r| r.last_error.clone())
        .collect();
    assert!(!errors.is_empty(), "the failure is recorded");
    errors[0].clone()
}

/// Reads `count` messages of `topic` back.
fn read_back(config: &ClientConfig, topic: &str, count: usize) -> usize {
    let mut config = config.clone();
    config
        .set("group.id", format!("security-{}", uuid::Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    config.remove("message.timeout.ms");
    let consumer: BaseConsumer = config.create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    while seen < count && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200))
            && message.payload().is_some()
        {
            seen += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_over_tls_and_a_wrong_ca_is_named() {
    let (Some(bin), Some(_), Some(_)) = (program("tansu"), program("socat"), program("openssl"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path(), "server");
    certificates(dir.path(), "client");
    certificates(dir.path(), "stranger");
    let mutual = free_port();
    let broker = tls_broker(&bin, dir.path());
    let (plain, ca) = (broker.plain, broker.ca.clone());
    let tls = config(
        &broker.brokers,
        &[
            ("security.protocol", "ssl".into()),
            ("ssl.ca.location", ca.clone()),
        ],
    );
    check_brokers(&tls, Duration::from_secs(10)).expect("the brokers answer over TLS");
    create_topic(&tls, "secured").await;
    let store = store_with("secured", 10).await;
    publish_all(&store, KafkaSink::new(tls.clone()).unwrap()).await;
    assert_eq!(read_back(&tls, "secured", 10), 10, "read back over TLS");

    // A CA that did not sign the brokers' certificate.
    let stranger = dir.path().join("stranger-ca.pem").display().to_string();
    let wrong = config(
        &broker.brokers,
        &[
            ("security.protocol", "ssl".into()),
            ("ssl.ca.location", stranger),
        ],
    );
    let error = check_brokers(&wrong, Duration::from_secs(5)).unwrap_err();
    println!("wrong CA at start: {error}");
    assert!(matches!(error, Error::Brokers { .. }), "{error:?}");
    assert!(error.to_string().contains("`ssl.ca.location`"), "{error}");
    assert!(!error.is_retriable(), "a setting to fix");
    let store = store_with("secured", 3).await;
    let last = fails_clearly(&store, KafkaSink::new(wrong).unwrap()).await;
    println!("wrong CA, a record's last error: {last}");
    assert!(last.contains("`ssl.ca.location`"), "{last}");

    // Client certificates: a listener that asks for one signed by the
    // client CA.
    let _mtls = tls_proxy(dir.path(), mutual, plain, Some("client-ca.pem"));
    let client = |name: &str| {
        config(
            &format!("localhost:{mutual}"),
            &[
                ("security.protocol", "ssl".into()),
                ("ssl.ca.location", ca.clone()),
                (
                    "ssl.certificate.location",
                    dir.path()
                        .join(format!("{name}-cert.pem"))
                        .display()
                        .to_string(),
                ),
                (
                    "ssl.key.location",
                    dir.path()
                        .join(format!("{name}-key.pem"))
                        .display()
                        .to_string(),
                ),
            ],
        )
    };
    // tansu advertises the first TLS port: the mutual listener is for the
    // bootstrap check only.
    check_brokers(&client("client"), Duration::from_secs(10))
        .expect("a client certificate the listener trusts");
    let error = check_brokers(&client("stranger"), Duration::from_secs(5)).unwrap_err();
    println!("a client certificate the listener does not trust: {error}");
    assert!(
        error.to_string().contains("ssl.certificate.location"),
        "{error}"
    );
}

/// Makes user `alice` with `password` for SCRAM-SHA-256 in a tansu storing
/// in `storage`, then returns a tansu on `port` that demands SASL.
fn scram_broker(bin: &Path, dir: &Path, port: u16, storage: &str, password: &str) -> Running {
    {
        let _setup = tansu(bin, dir, port, &format!("127.0.0.1:{port}"), storage, false);
        let status = Command::new(bin)
            .args(["user", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{port}"))
            .args(["--mechanism", "scram256", "alice", password])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("tansu user create runs");
        assert!(status.success(), "tansu user create");
    }
    // The port is free again once the setup broker is gone.
    std::thread::sleep(Duration::from_millis(300));
    tansu(bin, dir, port, &format!("127.0.0.1:{port}"), storage, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_logs_in_with_scram_and_a_wrong_password_is_named() {
    let Some(bin) = program("tansu") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let storage = "sqlite://tansu.db";
    let port = free_port();
    let _broker = scram_broker(&bin, dir.path(), port, storage, "s3cret");
    let login = |password: &str| {
        config(
            &format!("127.0.0.1:{port}"),
            &[
                ("security.protocol", "sasl_plaintext".into()),
                ("sasl.mechanism", "SCRAM-SHA-256".into()),
                ("sasl.username", "alice".into()),
                ("sasl.password", password.into()),
            ],
        )
    };
    check_brokers(&login("s3cret"), Duration::from_secs(10)).expect("alice logs in");
    create_topic(&login("s3cret"), "secured").await;
    let store = store_with("secured", 10).await;
    publish_all(&store, KafkaSink::new(login("s3cret")).unwrap()).await;
    assert_eq!(read_back(&login("s3cret"), "secured", 10), 10);

    let error = check_brokers(&login("wrong"), Duration::from_secs(5)).unwrap_err();
    println!("wrong password at start: {error}");
    assert!(error.to_string().contains("`sasl.password`"), "{error}");
    assert!(!error.is_retriable(), "a setting to fix");
    let store = store_with("secured", 3).await;
    let last = fails_clearly(&store, KafkaSink::new(login("wrong")).unwrap()).await;
    println!("wrong password, a record's last error: {last}");
    assert!(last.contains("`sasl.password`"), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oauthbearer_token_provider_is_asked_and_a_refused_token_is_named() {
    let Some(bin) = program("tansu") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let storage = "sqlite://tansu.db";
    let port = free_port();
    // tansu takes the OAUTHBEARER handshake but validates no token: every
    // login is refused, which is what this test needs of it.
    let _broker = tansu(
        &bin,
        dir.path(),
        port,
        &format!("127.0.0.1:{port}"),
        storage,
        true,
    );
    let asked = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&asked);
    let oauth = config(
        &format!("127.0.0.1:{port}"),
        &[
            ("security.protocol", "sasl_plaintext".into()),
            ("sasl.mechanism", "OAUTHBEARER".into()),
            ("sasl.oauthbearer.config", "scope=outbox".into()),
        ],
    );
    let sink = KafkaSink::builder(oauth)
        .oauth_token(move |config: Option<&str>| {
            assert_eq!(config, Some("scope=outbox"));
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(OAuthToken {
                token: "token-from-the-provider".to_owned(),
                principal_name: "outbox-relay".to_owned(),
                lifetime_ms: chrono::Utc::now().timestamp_millis() + 600_000,
            })
        })
        .build()
        .unwrap();
    let store = store_with("secured", 3).await;
    let last = fails_clearly(&store, sink).await;
    println!("a token the broker refuses, a record's last error: {last}");
    assert!(
        asked.load(Ordering::SeqCst) >= 1,
        "librdkafka asked the provider"
    );
    assert!(last.contains("OAUTHBEARER token"), "{last}");
}

/// A token provider that panics (an `unwrap` in a signer) costs one token,
/// not the producer: librdkafka calls it on the producer's polling thread,
/// which goes on, and asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_token_provider_is_asked_again() {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    let asked = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&asked);
    let oauth = config(
        &mock.bootstrap_servers(),
        &[
            ("security.protocol", "sasl_plaintext".into()),
            ("sasl.mechanism", "OAUTHBEARER".into()),
        ],
    );
    let _sink = KafkaSink::builder(oauth)
        .oauth_token(move |_: Option<&str>| {
            if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("the signer failed");
            }
            Ok(OAuthToken {
                token: "token".to_owned(),
                principal_name: "outbox-relay".to_owned(),
                lifetime_ms: chrono::Utc::now().timestamp_millis() + 600_000,
            })
        })
        .build()
        .unwrap();
    // librdkafka asks again 10 s after a failed refresh.
    let deadline = Instant::now() + Duration::from_secs(30);
    while asked.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the provider was not asked again after its panic"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
