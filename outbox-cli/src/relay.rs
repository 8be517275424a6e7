//! `outbox relay`: publishes committed records until Ctrl-C or SIGTERM, and
//! serves `/livez`, `/readyz` and `/metrics`.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use chrono::Utc;
use clap::Args;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use outbox_engine::{OutboxAdmin, Relay, Sink};
use outbox_rdkafka::KafkaSink;
use outbox_rdkafka::rdkafka::ClientConfig;
use outbox_sea_orm::{Error as StoreError, SeaOrmStore};
use tokio::sync::watch;

use crate::db;
use crate::kafka::KafkaArgs;

pub(crate) const EXAMPLES: &str = "\
Examples:
  outbox relay --brokers 127.0.0.1:9092
  outbox relay --brokers kafka:9093 -X security.protocol=sasl_ssl -X sasl.mechanism=SCRAM-SHA-512 \\
      --kafka-config /etc/outbox/kafka.properties        # TLS and SASL settings from a file
  outbox relay --kafka-config kafka.properties --retain 3d --batch-size 1000
  outbox relay --nats-url nats://127.0.0.1:4222        # NATS JetStream instead of Kafka
  outbox relay --brokers 127.0.0.1:9092 --listen          # PostgreSQL: wake on NOTIFY
  outbox relay --brokers 127.0.0.1:9092 --until-empty      # drain, then exit 0

It serves /livez, /readyz and /metrics on --http-addr (0.0.0.0:9464). At start it
waits for the database and the brokers, with backoff, not ready meanwhile.
Every option also reads the environment variable shown beside it.";

/// `outbox relay`.
#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Publish to NATS JetStream at this URL instead of Kafka (the streams
    /// must exist, with subjects for the records' topics).
    #[arg(
        long,
        value_name = "URL",
        env = "OUTBOX_NATS_URL",
        hide_env_values = true,
        conflicts_with = "brokers"
    )]
    nats_url: Option<String>,
    /// The most records claimed at once, as one batch.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000), env = "OUTBOX_BATCH_SIZE")]
    batch_size: u64,
    /// The most records being published and settled at once, over every
    /// batch (the next batch is claimed while earlier ones are published);
    /// default: twice the batch size.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000), env = "OUTBOX_MAX_IN_FLIGHT")]
    max_in_flight: Option<u64>,
    /// Connections of the relay's database pool (one more with --listen).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000), env = "OUTBOX_POOL_SIZE")]
    pool_size: u32,
    /// On PostgreSQL, wake at once when a writer commits with
    /// `Outbox::notify_on_commit` (LISTEN on the `outbox` channel; holds
    /// one connection), instead of waiting for the next poll.
    #[arg(long, env = "OUTBOX_LISTEN")]
    listen: bool,
    /// How long a claim holds before another relay may take its records
    /// over (1s to 24h).
    #[arg(long, value_name = "PERIOD", default_value = "30s", value_parser = db::period, env = "OUTBOX_LEASE")]
    lease: Duration,
    /// The longest wait between polls when nothing is pending (the relay
    /// polls sooner right after it had work).
    #[arg(long, value_name = "PERIOD", default_value = "500ms", value_parser = db::period, env = "OUTBOX_POLL_INTERVAL")]
    poll_interval: Duration,
    /// This relay's id in the records it leases (default:
    /// relay-<host>-<pid>-<8 random hex digits>, unique even for replicas
    /// that share a hostname and run as pid 1).
    #[arg(long, env = "OUTBOX_RELAY_ID")]
    relay_id: Option<String>,
    /// A prefix put before every record's topic (such as `staging.`).
    #[arg(long, default_value = "", env = "OUTBOX_TOPIC_PREFIX")]
    topic_prefix: String,
    /// How long to keep published records in the table, marked, before
    /// purging them (a history for `outbox find` and audits), or `off` to
    /// delete each record as it is published: the cheapest, and the
    /// events are in the broker.
    #[arg(long, value_name = "PERIOD|off", default_value = "off", value_parser = retention, env = "OUTBOX_RETAIN")]
    retain: Retention,
    /// A limit on failed attempts before a record goes to dead letters
    /// (default: retriable failures are retried forever).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), env = "OUTBOX_MAX_ATTEMPTS")]
    max_attempts: Option<u32>,
    /// On Ctrl-C or SIGTERM, how long to wait for the batches in flight to
    /// finish before exiting anyway (their records are then published
    /// again after their lease).
    #[arg(long, value_name = "PERIOD", default_value = "30s", value_parser = db::period, env = "OUTBOX_SHUTDOWN_TIMEOUT")]
    shutdown_timeout: Duration,
    /// Exit 0 once nothing is pending but records held behind dead ones
    /// (for jobs and tests), instead of running until a signal.
    #[arg(long, env = "OUTBOX_UNTIL_EMPTY")]
    until_empty: bool,
    /// Serve /livez (the process runs), /readyz (it reaches the database
    /// and the brokers and its last batch or poll succeeded; /healthz is
    /// the same) and /metrics (Prometheus) on this address, or `off`.
    #[arg(long = "http-addr", alias = "metrics-addr", value_name = "HOST:PORT|off", default_value = "0.0.0.0:9464", value_parser = http_addr, env = "OUTBOX_HTTP_ADDR")]
    http_addr: HttpAddr,
    /// /readyz answers 200 while the last batch or poll succeeded within
    /// this period, 503 otherwise.
    #[arg(long, value_name = "PERIOD", default_value = "60s", value_parser = db::period, env = "OUTBOX_HEALTH_WINDOW")]
    health_window: Duration,
    /// How often to count the backlog for the gauges (pending and dead
    /// records, as cheap as the backlog; never the published history).
    #[arg(long, value_name = "PERIOD", default_value = "15s", value_parser = db::period, env = "OUTBOX_BACKLOG_INTERVAL")]
    backlog_interval: Duration,
}

/// `--http-addr`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HttpAddr {
    Off,
    On(SocketAddr),
}

fn http_addr(text: &str) -> Result<HttpAddr, String> {
    match text.trim() {
        "off" | "none" => Ok(HttpAddr::Off),
        other => other.parse().map(HttpAddr::On).map_err(|_| {
            format!("`{other}` is not an address: write HOST:PORT, such as 0.0.0.0:9464, or off")
        }),
    }
}

/// `--retain`: a period or `off`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Retention {
    Off,
    Keep(Duration),
}

fn retention(text: &str) -> Result<Retention, String> {
    match text.trim() {
        "off" | "none" | "0" => Ok(Retention::Off),
        "never" | "forever" => Err(
            "published records are kept for a bounded period, such as 7d, or not at all (off): \
             a history kept forever grows without end"
                .to_owned(),
        ),
        other => db::period(other).map(Retention::Keep),
    }
}

pub(crate) async fn run(
    url: &str,
    tables: &outbox_sea_orm::Tables,
    args: RelayArgs,
) -> anyhow::Result<ExitCode> {
    // What no waiting can fix fails at once: the URL, the options.
    outbox_sea_orm::SeaOrmStore::check_url(url).map_err(anyhow::Error::new)?;
    if args.listen && !url.starts_with("postgres") {
        anyhow::bail!(
            "--listen needs PostgreSQL (LISTEN/NOTIFY), and {} is not; leave it off: the relay \
             polls, and wakes at once after work",
            outbox_sea_orm::redact_url(url)
        );
    }
    let target = match &args.nats_url {
        Some(nats) => Target::Nats(nats.clone()),
        None => Target::Kafka(args.kafka.config()?),
    };

    // One listener for the whole run, installed now: a SIGTERM while the
    // relay still waits for its database is not lost.
    let mut signalled = tokio::spawn(signal());
    let readiness = Arc::new(Readiness::default());
    let (stop, stopped) = watch::channel(false);
    let server = match args.http_addr {
        HttpAddr::On(addr) => Some(
            serve(
                addr,
                install_prometheus()?,
                Arc::clone(&readiness),
                args.health_window,
                stopped.clone(),
            )
            .await?,
        ),
        HttpAddr::Off => None,
    };
    outbox_engine::describe_metrics();

    // The database and the brokers may not be there yet (a relay starting
    // beside them): wait, with backoff, not ready meanwhile.
    let started = tokio::select! {
        started = start(url, tables, &args, &target, &readiness) => started?,
        signal = &mut signalled => {
            let signal = signal.unwrap_or("a signal");
            tracing::info!(signal, "stopping before the relay started");
            let _ = stop.send(true);
            if let Some(server) = server {
                server.await.ok();
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    let (store, sink, described) = started;
    let store = match args.retain {
        Retention::Keep(_) => store.keep_published(),
        Retention::Off => store,
    };

    let relay_id = args.relay_id.clone().unwrap_or_else(default_relay_id);
    let mut builder = Relay::builder(store.clone(), sink)
        .relay_id(relay_id)
        .batch_size(usize::try_from(args.batch_size).unwrap_or(usize::MAX))
        .lease(args.lease)
        .poll_interval(args.poll_interval)
        .report_backlog(args.backlog_interval);
    if let Retention::Keep(period) = args.retain {
        builder = builder.retain_published(period);
    }
    if let Some(max) = args.max_attempts {
        builder = builder.max_attempts(max);
    }
    if let Some(records) = args.max_in_flight {
        builder = builder.max_in_flight(usize::try_from(records).unwrap_or(usize::MAX));
    }
    let relay: Arc<CliRelay> = Arc::new(builder.build().context("invalid relay settings")?);
    let listening = if args.listen {
        let listen = until_ok(&readiness, "LISTEN (--listen)", || async {
            match outbox_sea_orm::listen(&store, relay.wakeup()).await {
                Ok(listening) => Ok(Ok(listening)),
                Err(error) if error.is_retriable() => Err(outbox_engine::error_chain(&error)),
                Err(error) => Ok(Err(anyhow::Error::new(error)
                    .context("cannot listen for outbox notifications (--listen)"))),
            }
        });
        tokio::select! {
            listening = listen => Some(listening?),
            signal = &mut signalled => {
                tracing::info!(signal = signal.unwrap_or("a signal"), "stopping before the relay started");
                let _ = stop.send(true);
                if let Some(server) = server {
                    server.await.ok();
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
    } else {
        None
    };
    readiness.running(Arc::clone(&relay));
    tracing::info!(
        relay = relay.relay_id(),
        database = %outbox_sea_orm::redact_url(url),
        sink = %described,
        batch_size = args.batch_size,
        max_in_flight = args.max_in_flight,
        pool_size = args.pool_size,
        listen = args.listen,
        retain = ?args.retain,
        http = ?args.http_addr,
        "outbox relay started"
    );

    let shutdown = {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        }
    };
    let run = relay.run(shutdown);
    let mut run = std::pin::pin!(run);
    let drained = drained(&store, args.until_empty, args.poll_interval);
    tokio::select! {
        () = &mut run => {}
        signal = &mut signalled => {
            let signal = signal.unwrap_or("a signal");
            tracing::info!(
                signal,
                timeout = %humantime::format_duration(args.shutdown_timeout),
                "stopping: finishing the batches in flight"
            );
        }
        () = drained => tracing::info!("nothing left to publish; stopping"),
    }
    readiness.stopping();
    let _ = stop.send(true);
    if let Some(listening) = listening {
        listening.abort();
    }
    let finished = tokio::time::timeout(args.shutdown_timeout, &mut run).await;
    if let Some(server) = server {
        server.await.ok();
    }
    let totals = relay.status().totals;
    if finished.is_err() {
        tracing::error!(
            timeout = %humantime::format_duration(args.shutdown_timeout),
            "the batches in flight did not finish in time; their records are published again \
             once their lease runs out"
        );
        return Ok(ExitCode::FAILURE);
    }
    tracing::info!(
        published = totals.published,
        retried = totals.retried,
        dead = totals.dead,
        "outbox relay stopped"
    );
    Ok(ExitCode::SUCCESS)
}

/// The relay this command runs.
type CliRelay = Relay<SeaOrmStore, Box<dyn Sink>>;

/// Where the relay publishes.
enum Target {
    Kafka(ClientConfig),
    Nats(String),
}

/// The first pause after a failed start-up check, doubling to
/// [`MAX_START_PAUSE`].
const FIRST_START_PAUSE: Duration = Duration::from_secs(1);
const MAX_START_PAUSE: Duration = Duration::from_secs(30);

/// Connects to the database and checks its tables, then reaches the
/// brokers, each again and again with backoff until it works, logging
/// once per new reason and showing it at /readyz. Fails at once only on
/// what waiting cannot fix (a login the database refuses, a bad setting).
async fn start(
    url: &str,
    tables: &outbox_sea_orm::Tables,
    args: &RelayArgs,
    target: &Target,
    readiness: &Readiness,
) -> anyhow::Result<(SeaOrmStore, Box<dyn Sink>, String)> {
    let pool = args.pool_size + u32::from(args.listen);
    let store = until_ok(readiness, "the database", || async {
        match SeaOrmStore::connect_with_tables(db::options(url, pool), tables).await {
            Ok(store) => Ok(Ok(store)),
            Err(error @ (StoreError::MissingTable { .. } | StoreError::OutdatedTable { .. })) => {
                Err(format!(
                    "{}: {}",
                    outbox_sea_orm::redact_url(url),
                    outbox_engine::error_chain(&error)
                ))
            }
            Err(error) if error.is_retriable() => Err(outbox_engine::error_chain(&error)),
            Err(error) => Ok(Err(db::explain(error, url))),
        }
    })
    .await?;
    let (sink, described): (Box<dyn Sink>, String) = match target {
        Target::Kafka(config) => {
            let brokers = config
                .get("bootstrap.servers")
                .unwrap_or_default()
                .to_owned();
            let timeout = args.kafka.broker_timeout;
            until_ok(readiness, "the Kafka brokers", || async {
                let config = config.clone();
                let checked = tokio::task::spawn_blocking(move || {
                    outbox_rdkafka::check_brokers(&config, timeout)
                        .map_err(|error| outbox_engine::error_chain(&error))
                })
                .await;
                match checked {
                    Ok(Ok(())) => Ok(Ok(())),
                    Ok(Err(chain)) => Err(chain),
                    Err(error) => Ok(Err(anyhow::anyhow!("the broker check panicked: {error}"))),
                }
            })
            .await?;
            let mut sink = KafkaSink::builder(config.clone());
            if !args.topic_prefix.is_empty() {
                sink = sink.topic_prefix(args.topic_prefix.clone());
            }
            let sink = sink.build().context("invalid Kafka settings")?;
            (Box::new(sink), format!("kafka {brokers}"))
        }
        Target::Nats(nats) => {
            let sink = until_ok(readiness, "the NATS server", || async {
                match outbox_nats::NatsSink::connect(nats).await {
                    Ok(sink) => Ok(Ok(sink)),
                    Err(error) => Err(outbox_engine::error_chain(&error)),
                }
            })
            .await?;
            (
                Box::new(sink),
                format!("nats {}", outbox_sea_orm::redact_url(nats)),
            )
        }
    };
    Ok((store, sink, described))
}

/// Runs `attempt` until it answers `Ok(..)`: `Ok(Ok(value))` is done,
/// `Ok(Err(error))` is a failure waiting cannot fix, `Err(reason)` is tried
/// again after a pause that doubles up to 30 s, logged when the reason
/// changes, and shown at /readyz.
async fn until_ok<T, F, Fut>(readiness: &Readiness, what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<anyhow::Result<T>, String>>,
{
    let mut pause = FIRST_START_PAUSE;
    let mut last: Option<String> = None;
    loop {
        match attempt().await {
            Ok(done) => {
                if last.is_some() {
                    tracing::info!("{what}: reached");
                }
                return done;
            }
            Err(reason) => {
                if last.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(
                        "waiting for {what}: {reason}; trying again, every {} at most",
                        humantime::format_duration(MAX_START_PAUSE)
                    );
                }
                readiness.waiting(format!("waiting for {what}: {reason}"));
                last = Some(reason);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_START_PAUSE);
            }
        }
    }
}

/// What /readyz says.
#[derive(Default)]
struct Readiness {
    phase: Mutex<Phase>,
}

#[derive(Default)]
enum Phase {
    #[default]
    Starting,
    Waiting(String),
    Running(Arc<CliRelay>),
    Stopping,
}

impl Readiness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn waiting(&self, reason: String) {
        *self.lock() = Phase::Waiting(reason);
    }

    fn running(&self, relay: Arc<CliRelay>) {
        *self.lock() = Phase::Running(relay);
    }

    fn stopping(&self) {
        *self.lock() = Phase::Stopping;
    }

    /// Ready, or why not.
    fn check(&self, window: Duration) -> Result<(), String> {
        match &*self.lock() {
            Phase::Starting => Err("starting".to_owned()),
            Phase::Waiting(reason) => Err(reason.clone()),
            Phase::Running(relay) => relay.status().health(Utc::now(), window),
            Phase::Stopping => Err("stopping".to_owned()),
        }
    }
}

fn default_relay_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    // Containers often share a hostname and all run as pid 1: the random
    // part keeps ids (and so claim tokens) apart.
    let random = uuid::Uuid::now_v7().simple().to_string();
    // A UUIDv7's last hex digits are random.
    format!("relay-{host}-{}-{}", std::process::id(), &random[24..])
}

/// Resolves with the signal's name on Ctrl-C or SIGTERM.
async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// With `--until-empty`: resolves once nothing is pending but records
/// held behind dead ones. Otherwise never.
async fn drained(store: &SeaOrmStore, until_empty: bool, every: Duration) {
    if !until_empty {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(every).await;
        match store.backlog(Utc::now()).await {
            Ok(stats) if stats.pending == stats.held => {
                if stats.held > 0 {
                    tracing::warn!(
                        held = stats.held,
                        dead = stats.dead,
                        "records wait behind dead records of their keys; see `outbox dead list`"
                    );
                }
                return;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(
                error = %outbox_engine::error_chain(&error),
                "cannot count the pending records; trying again"
            ),
        }
    }
}

fn install_prometheus() -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &buckets)
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the Prometheus recorder")?;
    // Histograms need their upkeep.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Serves `/livez`, `/readyz` (and `/healthz`, the same) and `/metrics` on
/// `addr` until `stopped` turns true.
async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    readiness: Arc<Readiness>,
    window: Duration,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let ready = move || {
        let readiness = Arc::clone(&readiness);
        async move {
            match readiness.check(window) {
                Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            }
        }
    };
    let app = Router::new()
        .route("/metrics", get(move || async move { handle.render() }))
        .route("/livez", get(|| async { (StatusCode::OK, "alive\n") }))
        .route("/readyz", get(ready.clone()))
        .route("/healthz", get(ready));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot serve /livez, /readyz and /metrics on {addr} (--http-addr): pick a free \
             port, or --http-addr off"
        )
    })?;
    tracing::info!(%addr, "serving /livez, /readyz and /metrics");
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|stopped| *stopped).await;
    });
    Ok(tokio::spawn(async move {
        if let Err(error) = server.into_future().await {
            tracing::error!(%error, "the health and metrics server failed");
        }
    }))
}
