//! The promises under faults, on real parts: business transactions on
//! PostgreSQL, MariaDB and SQLite commit events (some roll back), relays in
//! this process publish them through `KafkaSink` (to librdkafka's mock
//! cluster, or the broker at `KAFKA_BROKERS`) while they crash, the broker
//! goes away, the database drops their connections or restarts, and a
//! consumer's log is checked against the writers' ledger
//! (`outbox_tests::ledger`): every committed event delivered, no rolled-back
//! one, first copies per key in commit order.
//!
//! Each scenario prints one line of counts. Tests named `server_restart_*`
//! restart a database server, which breaks every other test using it at
//! that moment: they are ignored here, and `scripts/test` runs them alone.

#[path = "../../outbox-sea-orm/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use chrono::Utc;
use common::{Backend, TestDb};
use outbox_engine::{
    DeadFilter, ExponentialBackoff, OutboxAdmin, OutboxStats, OutboxStore, RecordRef, Relay,
    RelayStatus, Sink,
};
use outbox_rdkafka::KafkaSink;
use outbox_sea_orm::SeaOrmStore;
use outbox_tests::faults::{Faults, FaultySink, FaultyStore, Odds, run_crashing, wait_for};
use outbox_tests::ledger::{self, CommitOrder, Kafka, Ledger, WriterPlan, Writers};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, TransactionTrait,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a scenario may take to drain once its faults stop.
const DRAIN: Duration = Duration::from_secs(90);

/// The parts of a scenario: its database, broker, topic and ledger.
struct Scenario {
    db: TestDb,
    kafka: Kafka,
    topic: String,
    ledger: Ledger,
    keys: usize,
}

impl Scenario {
    async fn new(db: TestDb, keys: usize) -> Self {
        Self::with_kafka(db, keys, Kafka::start().await).await
    }

    async fn with_kafka(db: TestDb, keys: usize, mut kafka: Kafka) -> Self {
        Writers::prepare(&db.db, keys).await;
        let topic = kafka.topic("ledger", 3).await;
        Self {
            db,
            kafka,
            topic,
            ledger: Ledger::new(),
            keys,
        }
    }

    fn name(&self, scenario: &str) -> String {
        let backend = match self.db.backend {
            Backend::Postgres => "PostgreSQL",
            Backend::MySql => "MariaDB",
            Backend::SqliteFile => "SQLite",
            Backend::SqliteMemory => "SQLite (in memory)",
        };
        format!("{scenario} on {backend}")
    }

    fn store(&self) -> SeaOrmStore {
        self.db.store()
    }

    /// The writers' plan: on SQLite, whose one writer at a time holds the
    /// whole database, without the transactions that hold their keys long
    /// (they would hold up every writer and relay, by SQLite's design).
    fn plan(&self) -> WriterPlan {
        let plan = WriterPlan::new(&self.topic, self.keys);
        match self.db.backend {
            Backend::SqliteFile | Backend::SqliteMemory => WriterPlan {
                long_hold: None,
                ..plan
            },
            _ => plan,
        }
    }

    fn writers(&self, plan: WriterPlan) -> Writers {
        Writers::spawn(self.db.db.clone(), self.ledger.clone(), plan)
    }

    /// A Kafka sink whose records time out after `message_timeout`.
    fn sink(&self, message_timeout: Duration) -> KafkaSink {
        KafkaSink::new(self.kafka.producer_config(message_timeout)).expect("a Kafka sink")
    }

    /// A Kafka sink as [`sink`](Self::sink), without the idempotent
    /// producer, for faults of the mock cluster that fail produce requests
    /// (a broker going down under them, injected errors): when a request
    /// fails while a later one of the same partition is in flight and
    /// succeeds, librdkafka's idempotent producer counts the failed one's
    /// records delivered too ("implicitly acked"). A real broker accepts the
    /// later request only if the earlier one was written (it checks the
    /// sequence numbers), but the mock cluster checks them only for
    /// transactional producers, so records lost in the fault would be
    /// reported delivered. The sink sends one record of a
    /// key at a time, so per-key order holds without idempotence;
    /// librdkafka's retries may add duplicates, which the ledger allows.
    fn sink_without_idempotence(&self, message_timeout: Duration) -> KafkaSink {
        let mut config = self.kafka.producer_config(message_timeout);
        config.set("enable.idempotence", "false");
        KafkaSink::new(config).expect("a Kafka sink")
    }

    /// Waits until nothing is pending but records held behind dead ones.
    async fn drained(&self) -> OutboxStats {
        let store = self.store();
        wait_for("the outbox to drain", DRAIN, || {
            let store = store.clone();
            async move {
                let stats = store.stats(Utc::now()).await.map_err(|e| e.to_string())?;
                if stats.pending == stats.held {
                    return Ok(stats);
                }
                // Why the first pending record waits.
                let first = store
                    .connection()
                    .query_one_raw(sea_orm::Statement::from_string(
                        store.backend(),
                        "SELECT id, attempts, last_error FROM outbox WHERE status = 'pending' \
                         ORDER BY id LIMIT 1",
                    ))
                    .await
                    .ok()
                    .flatten()
                    .map(|row| {
                        let id: i64 = row.try_get("", "id").unwrap_or_default();
                        let attempts: i32 = row.try_get("", "attempts").unwrap_or_default();
                        let error: Option<String> = row.try_get("", "last_error").ok().flatten();
                        format!("record {id}, {attempts} attempts, last error {error:?}")
                    });
                Err(format!("{stats:?}; first pending: {first:?}"))
            }
        })
        .await
    }

    /// Resolves uncertain commits, reads the log back, checks it, and
    /// prints the counts line.
    async fn check(&self, scenario: &str, faults: &str) -> ledger::Counts {
        self.ledger.resolve(&self.db.db).await;
        let log = self
            .kafka
            .read_log(&[&self.topic], self.ledger.expected_deliveries())
            .await;
        if let Err(ledger::Violation::Lost { event_id, key, .. }) = self.ledger.check(&log) {
            // What the outbox says of it, and what the log holds of its key.
            let record = self.store().find(RecordRef::EventId(event_id)).await;
            eprintln!("the lost event in the outbox: {record:#?}");
            for message in log
                .iter()
                .filter(|m| m.key.as_deref() == Some(key.as_str()))
            {
                eprintln!(
                    "{} {:?} {:?}",
                    message.position(),
                    message.event_id,
                    message.payload
                );
            }
        }
        self.ledger.assert_holds(&log, &self.name(scenario), faults)
    }
}

/// A relay as the scenarios run it: small batches, short pauses.
fn relay<St: OutboxStore, Si: Sink>(
    store: St,
    sink: Si,
    id: String,
    lease: Duration,
) -> Relay<St, Si> {
    Relay::builder(store, sink)
        .relay_id(id)
        .batch_size(25)
        .lease(lease)
        .poll_interval(Duration::from_millis(20))
        .backoff(
            ExponentialBackoff::new(Duration::from_millis(20), Duration::from_millis(300)).unwrap(),
        )
        .build()
        .expect("a relay")
}

/// `count` relays running until `stopped` turns true; each returns its
/// status.
fn spawn_relays<St, Si>(
    count: usize,
    store: &St,
    sink: &Si,
    lease: Duration,
    stopped: &watch::Receiver<bool>,
) -> Vec<JoinHandle<RelayStatus>>
where
    St: OutboxStore + Clone + 'static,
    Si: Sink + Clone + 'static,
{
    (0..count)
        .map(|n| {
            let relay = relay(store.clone(), sink.clone(), format!("relay-{n}"), lease);
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                relay
                    .run(async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    })
                    .await;
                relay.status()
            })
        })
        .collect()
}

async fn stop_relays(stop: &watch::Sender<bool>, relays: Vec<JoinHandle<RelayStatus>>) {
    let _ = stop.send(true);
    for relay in relays {
        relay.await.expect("a relay panicked");
    }
}

// --- Crashes at the points that matter --------------------------------------

/// Relays that crash at random as `odds` say, each replaced by a new relay
/// (named `<prefix>-<generation>`), until six crashes happened; then the
/// ledger check, reported as `scenario`.
async fn crashing_relays(
    db: TestDb,
    odds: Odds,
    prefix: &'static str,
    scenario: &str,
) -> ledger::Counts {
    let s = Scenario::new(db, 12).await;
    let writers = s.writers(s.plan());
    let faults = Faults::new(odds);
    let (stop, stopped) = watch::channel(false);
    let relays = tokio::spawn({
        let (store, sink, faults) = (s.store(), s.sink(Duration::from_secs(5)), faults.clone());
        run_crashing(
            move |generation, crash| {
                relay(
                    FaultyStore::new(store.clone(), faults.clone(), crash.clone()),
                    FaultySink::new(sink.clone(), faults.clone(), crash),
                    format!("{prefix}-{generation}"),
                    Duration::from_secs(1),
                )
            },
            Duration::from_millis(20),
            stopped,
        )
    });
    wait_for(&format!("six crashes ({scenario})"), DRAIN, || async {
        match faults.crashes() {
            n if n >= 6 => Ok(()),
            n => Err(format!("{n} so far")),
        }
    })
    .await;
    let errors = writers.finish().await;
    faults.disarm();
    s.drained().await;
    let _ = stop.send(true);
    let kills = relays.await.unwrap();
    s.check(scenario, &format!("kills {kills}, writer errors {errors}"))
        .await
}

/// Relays crash at random after the broker acknowledged a batch and before
/// (all of) it was marked; each is replaced by a new relay, which
/// publishes the unmarked records again once their lease runs out.
async fn crash_after_ack_before_mark(db: TestDb) {
    let odds = Odds {
        crash_after_ack: 0.3,
        ..Odds::default()
    };
    let counts = crashing_relays(db, odds, "ack", "crash after ack before mark").await;
    assert!(
        counts.duplicates > 0,
        "records acknowledged and not marked are published again: {counts}"
    );
}

on!(crash_after_ack_before_mark: Postgres, MySql, SqliteFile);

/// Relays crash at random right after their claim committed, before
/// publishing anything: the records stay leased until the lease runs out,
/// and a new relay takes them over.
async fn crash_after_claim_before_publish(db: TestDb) {
    let odds = Odds {
        crash_after_claim: 0.3,
        ..Odds::default()
    };
    crashing_relays(db, odds, "claim", "crash after claim before publish").await;
}

on!(crash_after_claim_before_publish: Postgres, MySql, SqliteFile);

// --- The broker goes away ---------------------------------------------------

/// The broker goes down and comes back three times while writers commit and
/// two relays publish. On the mock cluster (`broker_down`, `broker_up`), which
/// also answers produce requests with transient errors in between; with a
/// real broker (`KAFKA_BROKERS`), stopping the shared one would break the
/// other tests, so the scenario starts a tansu broker of its own (when
/// `tansu` is installed; else it is skipped, failing under CI), kills it
/// and starts it again.
async fn broker_down_and_back(db: TestDb) {
    let mut own = None;
    let kafka = match std::env::var("KAFKA_BROKERS") {
        Ok(brokers) if !brokers.trim().is_empty() => match OwnTansu::find() {
            Some(bin) => {
                let tansu = OwnTansu::start(bin).await;
                let kafka = Kafka::real(&tansu.brokers());
                own = Some(tansu);
                kafka
            }
            None => {
                skip_or_fail(
                    "broker down and back against a real broker: stopping the shared broker \
                     would break the other tests, and starting one of its own needs `tansu` \
                     on PATH or at ~/.cargo/bin/tansu (the mock cluster run covers this \
                     scenario)",
                );
                return;
            }
        },
        _ => Kafka::mock(),
    };
    let s = Scenario::with_kafka(db, 10, kafka).await;
    let writers = s.writers(s.plan());
    let (stop, stopped) = watch::channel(false);
    // Records time out well within the lease while the broker is down.
    // Without idempotence on either broker: the mock cluster's (see
    // `sink_without_idempotence`), and tansu 0.6, killed while an
    // idempotent producer's requests are in flight, answers every later
    // produce request of that producer with UNKNOWN_SERVER_ERROR.
    let sink = s.sink_without_idempotence(Duration::from_secs(1));
    let relays = spawn_relays(2, &s.store(), &sink, Duration::from_secs(5), &stopped);
    let mut outages = 0;
    let mut request_errors = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match (&mut own, s.kafka.mock_cluster()) {
            (Some(tansu), _) => tansu.kill(),
            (None, Some(cluster)) => cluster.broker_down(1).expect("broker down"),
            (None, None) => unreachable!("a mock cluster or a broker of its own"),
        }
        outages += 1;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        match (&mut own, s.kafka.mock_cluster()) {
            (Some(tansu), _) => tansu.restart().await,
            (None, Some(cluster)) => {
                cluster.broker_up(1).expect("broker up");
                let errors = [
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                ];
                cluster.request_errors(RDKafkaApiKey::Produce, &errors);
                request_errors += errors.len();
            }
            (None, None) => unreachable!("a mock cluster or a broker of its own"),
        }
    }
    let errors = writers.finish().await;
    let stats = s.drained().await;
    assert_eq!(stats.dead, 0, "an outage makes nothing dead: {stats:?}");
    stop_relays(&stop, relays).await;
    let broker = if own.is_some() { "tansu" } else { "mock" };
    s.check(
        "broker down and back",
        &format!(
            "{broker} broker outages {outages}, produce request errors {request_errors}, \
             writer errors {errors}"
        ),
    )
    .await;
}

/// A tansu broker of the test's own on a free loopback port, its log in a
/// SQLite file of a temp dir so that it survives a restart; killed and
/// removed on drop.
struct OwnTansu {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnTansu {
    /// `tansu` on PATH, or at ~/.cargo/bin/tansu.
    fn find() -> Option<std::path::PathBuf> {
        let on_path = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("tansu"))
                .find(|bin| bin.is_file())
        });
        on_path.or_else(|| {
            let home = std::env::var_os("HOME")?;
            let bin = std::path::Path::new(&home).join(".cargo/bin/tansu");
            bin.is_file().then_some(bin)
        })
    }

    async fn start(bin: std::path::PathBuf) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tansu-")
            .tempdir()
            .expect("a temp dir for tansu");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut tansu = Self {
            bin,
            dir,
            port,
            child: None,
        };
        tansu.restart().await;
        tansu
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker and waits until it listens.
    async fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // tansu reads the path of a `sqlite://` URL from its working dir.
        let storage = "sqlite://tansu.db";
        let log =
            std::fs::File::create(self.dir.path().join("tansu.log")).expect("tansu's log file");
        let child = std::process::Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", storage])
            .current_dir(self.dir.path())
            .stdout(log.try_clone().expect("tansu's log file"))
            .stderr(log)
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        let brokers = self.brokers();
        wait_for("tansu to listen", Duration::from_secs(30), || {
            let brokers = brokers.clone();
            async move {
                std::net::TcpStream::connect(&brokers)
                    .map(drop)
                    .map_err(|error| error.to_string())
            }
        })
        .await;
    }

    /// Kills the broker (SIGKILL).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Drop for OwnTansu {
    fn drop(&mut self) {
        self.kill();
    }
}

on!(broker_down_and_back: Postgres, MySql, SqliteFile);

/// Skips a scenario loudly, or fails it under CI.
fn skip_or_fail(why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "CI=true, so this fails: {why}");
    eprintln!("\n*** SKIPPED: {why} ***\n");
}

// --- The database drops connections -----------------------------------------

/// The name of a test database, from its URL.
fn database_name(db: &TestDb) -> String {
    let path = db.url.split('?').next().unwrap_or_default();
    path.rsplit('/').next().unwrap_or_default().to_owned()
}

/// Ends every connection to `db`'s database from another session (the
/// server's own `pg_terminate_backend` or `KILL`); returns how many.
async fn kill_backends(db: &TestDb) -> u64 {
    let name = database_name(db);
    match db.backend {
        Backend::Postgres => {
            let admin = Database::connect(common::postgres_url()).await.unwrap();
            let row = admin
                .query_one_raw(sea_orm::Statement::from_string(
                    DbBackend::Postgres,
                    format!(
                        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
                         WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                    ),
                ))
                .await
                .unwrap()
                .unwrap();
            admin.close().await.ok();
            u64::try_from(row.try_get::<i64>("", "n").unwrap()).unwrap()
        }
        Backend::MySql => {
            let admin = Database::connect(common::mysql_url()).await.unwrap();
            let rows = admin
                .query_all_raw(sea_orm::Statement::from_string(
                    DbBackend::MySql,
                    format!(
                        "SELECT CAST(id AS SIGNED) AS id FROM information_schema.processlist \
                         WHERE db = '{name}' AND id <> CONNECTION_ID()"
                    ),
                ))
                .await
                .unwrap();
            let mut killed = 0;
            for row in rows {
                let id: i64 = row.try_get("", "id").unwrap();
                // It may have ended by itself meanwhile.
                if admin
                    .execute_unprepared(&format!("KILL CONNECTION {id}"))
                    .await
                    .is_ok()
                {
                    killed += 1;
                }
            }
            admin.close().await.ok();
            killed
        }
        _ => unreachable!("SQLite has no server connections to kill"),
    }
}

/// The server ends the connections of relays and writers five times.
async fn backends_killed(db: TestDb) {
    let s = Scenario::new(db, 10).await;
    let writers = s.writers(s.plan());
    let (stop, stopped) = watch::channel(false);
    let sink = s.sink(Duration::from_secs(5));
    let relays = spawn_relays(2, &s.store(), &sink, Duration::from_secs(5), &stopped);
    let mut killed = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        killed += kill_backends(&s.db).await;
    }
    assert!(killed > 0, "no connection was ended");
    let errors = writers.finish().await;
    s.drained().await;
    stop_relays(&stop, relays).await;
    s.check(
        "backends killed",
        &format!("rounds 5, connections killed {killed}, writer errors {errors}"),
    )
    .await;
}

on!(backends_killed: Postgres, MySql);

/// Other work holds every connection of the relay's pool (two) for two
/// seconds, three times: the relay's batches fail meanwhile, then it goes
/// on.
async fn pool_exhausted(db: TestDb) {
    let s = Scenario::new(db, 10).await;
    let mut options = ConnectOptions::new(s.db.url.clone());
    options
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .sqlx_logging(false);
    let pool: DatabaseConnection = Database::connect(options).await.unwrap();
    let store = SeaOrmStore::new(pool.clone());
    let writers = s.writers(s.plan());
    let (stop, stopped) = watch::channel(false);
    let sink = s.sink(Duration::from_secs(5));
    let relays = spawn_relays(1, &store, &sink, Duration::from_secs(5), &stopped);
    let mut exhausted = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The relay may hold a connection for a moment (a claim waiting
        // for SQLite's write lock, say): take both as they come free.
        let mut held = Vec::new();
        let since = tokio::time::Instant::now();
        while held.len() < 2 {
            assert!(
                since.elapsed() < Duration::from_secs(30),
                "the relay never gave its connections back"
            );
            match pool.begin().await {
                Ok(txn) => held.push(txn),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let refused = store.stats(Utc::now()).await;
        assert!(refused.is_err(), "the relay's pool is exhausted");
        exhausted += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(held);
    }
    let errors = writers.finish().await;
    s.drained().await;
    stop_relays(&stop, relays).await;
    s.check(
        "pool exhausted",
        &format!("pool exhaustions {exhausted}, writer errors {errors}"),
    )
    .await;
}

on!(pool_exhausted: Postgres, MySql, SqliteFile);

// --- Writers whose ids commit out of order ------------------------------------

/// Writers hold their transactions open for up to 40 ms after enqueueing,
/// so ids commit out of order across keys, while two relays claim all the
/// time; how each key's commit order is known depends on `order`.
async fn ids_commit_out_of_order(db: TestDb, order: CommitOrder, scenario: &str) {
    let s = Scenario::new(db, 16).await;
    let (stop, stopped) = watch::channel(false);
    let sink = s.sink(Duration::from_secs(5));
    // Keeping the published records, to read their ids afterwards.
    let store = s.store().keep_published();
    let relays = spawn_relays(2, &store, &sink, Duration::from_secs(5), &stopped);
    let plan = WriterPlan {
        writers: 6,
        transactions: Some(40),
        order,
        hold_ms: 0..40,
        pause: Duration::from_millis(1),
        ..s.plan()
    };
    let errors = s.writers(plan).wait().await;
    s.drained().await;
    stop_relays(&stop, relays).await;

    // How often a commit returned after a later one's whose record has a
    // greater id: the ids committed out of order.
    let mut ids = Vec::new();
    for event_id in s.ledger.commit_sequence() {
        let record = store.find(RecordRef::EventId(event_id)).await.unwrap();
        ids.push(record.expect("a committed record").id);
    }
    let mut highest = i64::MIN;
    let mut overtaken = 0;
    for id in ids {
        if id < highest {
            overtaken += 1;
        }
        highest = highest.max(id);
    }
    assert!(overtaken > 0, "no id committed out of order");
    s.check(
        scenario,
        &format!("ids committed out of order {overtaken}, writer errors {errors}"),
    )
    .await;
}

async fn ids_commit_out_of_order_with_a_business_lock(db: TestDb) {
    ids_commit_out_of_order(
        db,
        CommitOrder::BusinessLock,
        "ids out of order, business lock",
    )
    .await;
}

async fn ids_commit_out_of_order_without_a_business_lock(db: TestDb) {
    ids_commit_out_of_order(
        db,
        CommitOrder::CommitLock,
        "ids out of order, no business lock",
    )
    .await;
}

// SQLite has one writer: it holds the database from a transaction's first
// write to its commit, so ids commit in order there.
on!(ids_commit_out_of_order_with_a_business_lock: Postgres, MySql);
on!(ids_commit_out_of_order_without_a_business_lock: Postgres, MySql);

// --- Four relays at once ----------------------------------------------------------

/// Four relays share the outbox while every fault of `outbox_tests::faults`
/// strikes them at random (crashes after a claim and after an
/// acknowledgement, claims and settlements refused, settlements applied and
/// reported failed) and, on the mock cluster, produce requests fail now and
/// then.
async fn four_relays_with_faults(db: TestDb) {
    let s = Scenario::new(db, 16).await;
    let writers = s.writers(s.plan());
    let faults = Faults::new(Odds {
        crash_after_claim: 0.04,
        crash_after_ack: 0.04,
        fail_claim: 0.05,
        fail_before_settle: 0.05,
        fail_after_settle: 0.05,
    });
    let (stop, stopped) = watch::channel(false);
    let sink = match s.kafka.mock_cluster() {
        Some(_) => s.sink_without_idempotence(Duration::from_secs(5)),
        None => s.sink(Duration::from_secs(5)),
    };
    let relays: Vec<JoinHandle<u64>> = (0..4)
        .map(|n| {
            let (store, sink, faults) = (s.store(), sink.clone(), faults.clone());
            tokio::spawn(run_crashing(
                move |generation, crash| {
                    relay(
                        FaultyStore::new(store.clone(), faults.clone(), crash.clone()),
                        FaultySink::new(sink.clone(), faults.clone(), crash),
                        format!("four-{n}-{generation}"),
                        Duration::from_secs(1),
                    )
                },
                Duration::from_millis(20),
                stopped.clone(),
            ))
        })
        .collect();
    let mut request_errors = 0;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        if let Some(cluster) = s.kafka.mock_cluster() {
            let errors = [
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            ];
            cluster.request_errors(RDKafkaApiKey::Produce, &errors);
            request_errors += errors.len();
        }
    }
    let errors = writers.finish().await;
    faults.disarm();
    s.drained().await;
    let _ = stop.send(true);
    let mut kills = 0;
    for relay in relays {
        kills += relay.await.unwrap();
    }
    assert!(
        kills > 0 && faults.failures() > 0,
        "faults struck: {kills} crashes, {} failures",
        faults.failures()
    );
    s.check(
        "four relays with faults",
        &format!(
            "relays 4, kills {kills}, injected store failures {}, produce request errors \
             {request_errors}, writer errors {errors}",
            faults.failures()
        ),
    )
    .await;
}

on!(four_relays_with_faults: Postgres, MySql, SqliteFile);

// --- Poison and corruption ------------------------------------------------------

/// Among healthy events, one the broker refuses for good (larger than its
/// largest message) and a row another client corrupted (a payload that is
/// not JSON, written with raw SQL): both go dead with the reason and hold
/// their keys; everything else flows.
async fn a_poison_event_and_a_corrupted_row(db: TestDb) {
    let s = Scenario::new(db, 8).await;
    let store = s.store();
    let poison = ledger::commit_one(&s.db.db, &s.ledger, &s.topic, "key-0", 2 << 20).await;
    s.ledger.poisoned(poison);
    let corrupt = ledger::commit_one(&s.db.db, &s.ledger, &s.topic, "key-1", 0).await;
    s.ledger.poisoned(corrupt);
    let row = store
        .find(RecordRef::EventId(corrupt))
        .await
        .unwrap()
        .expect("the committed row");
    s.db.exec(&format!(
        "UPDATE outbox SET payload = 'not json {{' WHERE id = {}",
        row.id
    ))
    .await;

    let (stop, stopped) = watch::channel(false);
    let sink = s.sink(Duration::from_secs(5));
    let relays = spawn_relays(2, &store, &sink, Duration::from_secs(5), &stopped);
    let plan = WriterPlan {
        transactions: Some(30),
        ..s.plan()
    };
    let errors = s.writers(plan).wait().await;
    let stats = s.drained().await;
    stop_relays(&stop, relays).await;
    let counts = s
        .check(
            "a poison event and a corrupted row",
            &format!("dead 2, writer errors {errors}"),
        )
        .await;

    let dead = store.list_dead(&DeadFilter::all(), None, 10).await.unwrap();
    let reasons: Vec<(uuid::Uuid, String)> = dead
        .iter()
        .map(|record| {
            (
                record.event_id,
                record.last_error.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    let reason = |id| {
        reasons
            .iter()
            .find(|(event_id, _)| *event_id == id)
            .map(|(_, reason)| reason.clone())
            .unwrap_or_else(|| panic!("{id} is not dead: {reasons:?}"))
    };
    let too_large = reason(poison);
    assert!(too_large.contains("too large"), "{too_large}");
    let unreadable = reason(corrupt);
    assert!(unreadable.contains("payload"), "{unreadable}");
    // The held events wait behind their dead heads.
    assert_eq!(stats.held as usize, counts.held - 2, "{stats:?}");
}

on!(a_poison_event_and_a_corrupted_row: Postgres, MySql, SqliteFile);

// --- The database server restarts -------------------------------------------

/// The PostgreSQL cluster version on this machine (`/etc/postgresql/<v>`).
fn postgres_version() -> Option<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort();
    versions.pop()
}

fn run(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether the local server of `backend` answers.
fn server_answers(backend: Backend) -> bool {
    match backend {
        Backend::Postgres => run("pg_isready", &["-q", "-h", "127.0.0.1", "-p", "5432"]),
        _ => run(
            "mariadb-admin",
            &[
                "--protocol=tcp",
                "-h",
                "127.0.0.1",
                "-P",
                "3306",
                "-u",
                "root",
                "ping",
            ],
        ),
    }
}

/// Waits until the server answers (or not), for at most a minute.
fn wait_server(backend: Backend, up: bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server_answers(backend) != up {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

fn start_server(backend: Backend) {
    match backend {
        Backend::Postgres => {
            let version = postgres_version().unwrap_or_default();
            let args = ["--skip-systemctl-redirect", &version, "main", "start"];
            run("pg_ctlcluster", &args);
        }
        _ => {
            let args = [
                "--start",
                "--oknodo",
                "--background",
                "--exec",
                "/usr/sbin/mariadbd",
            ];
            run("start-stop-daemon", &args);
        }
    }
}

/// Restarts the local server of `backend` and waits until it answers.
fn restart_server(backend: Backend) {
    match backend {
        Backend::Postgres => {
            let version = postgres_version().expect("a PostgreSQL cluster in /etc/postgresql");
            let args = ["--skip-systemctl-redirect", &version, "main", "restart"];
            assert!(run("pg_ctlcluster", &args), "pg_ctlcluster {args:?} failed");
        }
        _ => {
            let args = [
                "--protocol=tcp",
                "-h",
                "127.0.0.1",
                "-P",
                "3306",
                "-u",
                "root",
            ];
            assert!(
                run("mariadb-admin", &[&args[..], &["shutdown"]].concat()),
                "mariadb-admin shutdown failed"
            );
            // It stops answering before its process is gone, and a start
            // meanwhile would find it running and do nothing.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while mariadb_running() {
                assert!(std::time::Instant::now() < deadline, "MariaDB did not stop");
                std::thread::sleep(Duration::from_millis(200));
            }
            start_server(backend);
        }
    }
    assert!(wait_server(backend, true), "the server did not come back");
}

/// Whether a `mariadbd` process runs.
fn mariadb_running() -> bool {
    run(
        "start-stop-daemon",
        &["--status", "--exec", "/usr/sbin/mariadbd"],
    )
}

/// Brings the local server of its backend back up when dropped, also when
/// the test fails half-way through a restart.
struct ServerUp(Backend);

impl Drop for ServerUp {
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while !server_answers(self.0) {
            if std::time::Instant::now() > deadline {
                eprintln!("warning: the {:?} server is not answering again", self.0);
                return;
            }
            // Starting one that is still stopping does nothing: try again.
            if self.0 == Backend::Postgres || !mariadb_running() {
                start_server(self.0);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Whether this machine can restart the local server of `backend` (its
/// tools are installed and the tests use the local server).
fn can_restart(backend: Backend) -> bool {
    match backend {
        Backend::Postgres => {
            std::env::var("POSTGRES_URL").is_err()
                && postgres_version().is_some()
                && run("sh", &["-c", "command -v pg_ctlcluster"])
        }
        _ => {
            std::env::var("MYSQL_URL").is_err()
                && std::path::Path::new("/usr/sbin/mariadbd").exists()
        }
    }
}

/// The database server restarts twice under two relays and the writers.
async fn server_restart(db: TestDb) {
    let backend = db.backend;
    if !can_restart(backend) {
        skip_or_fail(&format!(
            "restarting the {backend:?} server needs the local server and its tools \
             (pg_ctlcluster, or mariadb-admin and /usr/sbin/mariadbd)"
        ));
        return;
    }
    let s = Scenario::new(db, 10).await;
    // Dropped before the scenario, which drops its database on the server.
    let _up = ServerUp(backend);
    let writers = s.writers(s.plan());
    let (stop, stopped) = watch::channel(false);
    let sink = s.sink(Duration::from_secs(5));
    let relays = spawn_relays(2, &s.store(), &sink, Duration::from_secs(5), &stopped);
    let mut restarts = 0;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::spawn_blocking(move || restart_server(backend))
            .await
            .unwrap();
        restarts += 1;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let errors = writers.finish().await;
    s.drained().await;
    stop_relays(&stop, relays).await;
    s.check(
        "server restart",
        &format!("server restarts {restarts}, writer errors {errors}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the database server: scripts/test runs it alone"]
async fn server_restart_postgres() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    server_restart(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the database server: scripts/test runs it alone"]
async fn server_restart_mariadb() {
    let Some(db) = TestDb::new(Backend::MySql).await else {
        return;
    };
    server_restart(db).await;
}
