//! `outbox relay`: publishes committed records until Ctrl-C or SIGTERM, and
//! serves `/metrics` and `/healthz`.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use chrono::Utc;
use clap::Args;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use outbox_engine::{OutboxAdmin, Relay};
use outbox_rdkafka::KafkaSink;
use outbox_sea_orm::SeaOrmStore;
use tokio::sync::watch;

use crate::db;
use crate::kafka::KafkaArgs;

pub(crate) const EXAMPLES: &str = "\
Examples:
  outbox relay --brokers 127.0.0.1:9092
  outbox relay --brokers kafka:9092 -X security.protocol=ssl --metrics-addr 0.0.0.0:9464
  outbox relay --kafka-config kafka.properties --retain 3d --batch-size 1000
  outbox relay --brokers 127.0.0.1:9092 --listen          # PostgreSQL: wake on NOTIFY
  outbox relay --brokers 127.0.0.1:9092 --until-empty      # drain, then exit 0";

/// `outbox relay`.
#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// The most records claimed at once, as one batch.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    batch_size: u64,
    /// The most records being published and settled at once, over every
    /// batch (the next batch is claimed while earlier ones are published);
    /// default: twice the batch size.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_in_flight: Option<u64>,
    /// On PostgreSQL, wake at once when a writer commits with
    /// `Outbox::notify_on_commit` (LISTEN on the `outbox` channel; holds
    /// one connection), instead of waiting for the next poll.
    #[arg(long)]
    listen: bool,
    /// How long a claim holds before another relay may take its records
    /// over (1s to 24h).
    #[arg(long, value_name = "PERIOD", default_value = "30s", value_parser = db::period)]
    lease: Duration,
    /// The longest wait between polls when nothing is pending (the relay
    /// polls sooner right after it had work).
    #[arg(long, value_name = "PERIOD", default_value = "500ms", value_parser = db::period)]
    poll_interval: Duration,
    /// This relay's id in the records it leases (default:
    /// relay-<host>-<pid>-<8 random hex digits>, unique even for replicas
    /// that share a hostname and run as pid 1).
    #[arg(long)]
    relay_id: Option<String>,
    /// A prefix put before every record's topic (such as `staging.`).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// How long to keep published records before purging them, or `off`.
    #[arg(long, value_name = "PERIOD|off", default_value = "7d", value_parser = retention)]
    retain: Retention,
    /// A limit on failed attempts before a record goes to dead letters
    /// (default: retriable failures are retried forever).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: Option<u32>,
    /// On Ctrl-C or SIGTERM, how long to wait for the batch in flight to
    /// finish before exiting anyway (its records are then published again
    /// after their lease).
    #[arg(long, value_name = "PERIOD", default_value = "30s", value_parser = db::period)]
    shutdown_timeout: Duration,
    /// Exit 0 once nothing is pending but records held behind dead ones
    /// (for jobs and tests), instead of running until a signal.
    #[arg(long)]
    until_empty: bool,
    /// Serve Prometheus metrics at /metrics and readiness at /healthz on
    /// this address, such as 0.0.0.0:9464.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<SocketAddr>,
    /// /healthz answers 200 while the last batch or poll succeeded within
    /// this period, 503 otherwise.
    #[arg(long, value_name = "PERIOD", default_value = "60s", value_parser = db::period)]
    health_window: Duration,
    /// How often to count the backlog for the gauges.
    #[arg(long, value_name = "PERIOD", default_value = "15s", value_parser = db::period)]
    backlog_interval: Duration,
}

/// `--retain`: a period or `off`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Retention {
    Off,
    Keep(Duration),
}

fn retention(text: &str) -> Result<Retention, String> {
    match text.trim() {
        "off" | "never" | "forever" => Ok(Retention::Off),
        other => db::period(other).map(Retention::Keep),
    }
}

pub(crate) async fn run(url: &str, args: RelayArgs) -> anyhow::Result<ExitCode> {
    let store = db::store(url, 5).await?;
    if args.listen && store.backend() != sea_orm::DbBackend::Postgres {
        anyhow::bail!(
            "--listen needs PostgreSQL (LISTEN/NOTIFY), and {} is not; leave it off: the relay \
             polls, and wakes at once after work",
            outbox_sea_orm::redact_url(url)
        );
    }
    let config = args.kafka.config()?;
    let brokers = config
        .get("bootstrap.servers")
        .unwrap_or_default()
        .to_owned();
    args.kafka.admin(&config)?;
    let mut sink = KafkaSink::builder(config);
    if !args.topic_prefix.is_empty() {
        sink = sink.topic_prefix(args.topic_prefix.clone());
    }
    let sink = sink.build().context("invalid Kafka settings")?;

    let prometheus = match args.metrics_addr {
        Some(_) => Some(install_prometheus()?),
        None => None,
    };
    outbox_engine::describe_metrics();
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
    let relay = Arc::new(builder.build().context("invalid relay settings")?);
    let listening = if args.listen {
        Some(
            outbox_sea_orm::listen(&store, relay.wakeup())
                .await
                .context("cannot listen for outbox notifications (--listen)")?,
        )
    } else {
        None
    };

    let (stop, stopped) = watch::channel(false);
    let server = match (args.metrics_addr, prometheus) {
        (Some(addr), Some(handle)) => Some(
            serve(
                addr,
                handle,
                Arc::clone(&relay),
                args.health_window,
                stopped.clone(),
            )
            .await?,
        ),
        _ => None,
    };
    tracing::info!(
        relay = relay.relay_id(),
        database = %outbox_sea_orm::redact_url(url),
        brokers = %brokers,
        batch_size = args.batch_size,
        max_in_flight = args.max_in_flight,
        listen = args.listen,
        retain = ?args.retain,
        metrics = ?args.metrics_addr,
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
        signal = signal() => {
            tracing::info!(
                signal,
                timeout = %humantime::format_duration(args.shutdown_timeout),
                "stopping: finishing the batch in flight"
            );
        }
        () = drained => tracing::info!("nothing left to publish; stopping"),
    }
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
            "the batch in flight did not finish in time; its records are published again \
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
        match store.stats(Utc::now()).await {
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

/// Serves `/metrics` and `/healthz` on `addr` until `stopped` turns true.
async fn serve<St, Si>(
    addr: SocketAddr,
    handle: PrometheusHandle,
    relay: Arc<Relay<St, Si>>,
    window: Duration,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>>
where
    St: OutboxAdmin + outbox_engine::OutboxStore + 'static,
    Si: outbox_engine::Sink + 'static,
{
    let app = Router::new()
        .route("/metrics", get(move || async move { handle.render() }))
        .route(
            "/healthz",
            get(move || async move {
                match relay.status().health(Utc::now(), window) {
                    Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
                    Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr} (--metrics-addr)"))?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|stopped| *stopped).await;
    });
    Ok(tokio::spawn(async move {
        if let Err(error) = server.into_future().await {
            tracing::error!(%error, "the metrics server failed");
        }
    }))
}
