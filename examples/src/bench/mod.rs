//! The scenarios of the `bench` program and what they share: the broker,
//! a fresh database per run, loading, the figures.

mod blocked;
mod broker;
mod db;
mod drain;
mod enqueue;
mod latency;
mod load;
mod memory;
mod report;
mod scale;
mod seed;
mod soak;
mod waits;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};

use clap::ValueEnum;

pub(crate) use broker::serve_mock_cluster;

/// A benchmark scenario; see the program's docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// 100,000 pending events over 1,000 keys: the relay, the seed's reader,
    /// the floor.
    Drain,
    /// The same over 10 keys.
    HotKeys,
    /// Commit to acknowledgement at 20 and 1,000 commits/s.
    Latency,
    /// What enqueueing one event adds to a business transaction.
    Enqueue,
    /// 1, 2 and 4 relays on PostgreSQL, then a per-key order check.
    Scale,
    /// Claim times over 990,000 records behind blocked keys.
    Blocked,
    /// Peak RSS while one relay drains 1,000,000 events (PostgreSQL).
    Memory,
    /// Writers of other keys while a business transaction holds a key 8 s.
    LongWriter,
    /// 200 healthy events/s beside 50 keys whose sends take 20 s to fail.
    SlowKeys,
    /// 20 minutes at 2,000 events/s: claim times and table size each
    /// minute (run only when named).
    Soak,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Drain => "drain",
            Scenario::HotKeys => "hot-keys",
            Scenario::Latency => "latency",
            Scenario::Enqueue => "enqueue",
            Scenario::Scale => "scale",
            Scenario::Blocked => "blocked",
            Scenario::Memory => "memory",
            Scenario::LongWriter => "long-writer",
            Scenario::SlowKeys => "slow-keys",
            Scenario::Soak => "soak",
        }
    }

    /// The servers it runs on, of the reachable ones: `scale` only on
    /// PostgreSQL, `memory` on PostgreSQL unless given URLs.
    fn urls(self, reachable: &[String], explicit: bool) -> Vec<&String> {
        let postgres = |url: &&String| db::label(url) == "postgres";
        match self {
            Scenario::Scale => reachable.iter().filter(postgres).collect(),
            Scenario::Memory if !explicit => reachable.iter().filter(postgres).collect(),
            _ => reachable.iter().collect(),
        }
    }

    async fn run(self, bench: &Bench, url: &str) -> Result<Vec<report::Figures>, String> {
        match self {
            Scenario::Drain => drain::run(bench, url, "drain", 1_000).await,
            Scenario::HotKeys => drain::run(bench, url, "hot-keys", 10).await,
            Scenario::Latency => latency::run(bench, url).await,
            Scenario::Enqueue => enqueue::run(bench, url).await,
            Scenario::Scale => scale::run(bench, url).await,
            Scenario::Blocked => blocked::run(bench, url).await,
            Scenario::Memory => memory::run(bench, url).await,
            Scenario::LongWriter => waits::long_writer(bench, url).await,
            Scenario::SlowKeys => waits::slow_keys(bench, url).await,
            Scenario::Soak => soak::run(bench, url).await,
        }
    }
}

/// What the program was asked to do.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) scenarios: Vec<Scenario>,
    pub(crate) database_urls: Vec<String>,
    pub(crate) brokers: Option<String>,
    pub(crate) json: bool,
    pub(crate) events: Option<u64>,
    pub(crate) seconds: Option<u64>,
    pub(crate) quick: bool,
    pub(crate) keep_published: bool,
}

/// What every scenario is given.
pub(crate) struct Bench {
    broker: broker::Broker,
    quick: bool,
    events: Option<u64>,
    seconds: Option<u64>,
    keep_published: bool,
    databases: AtomicU32,
}

impl Bench {
    /// The store the relays of `drain`, `hot-keys` and `soak` use.
    fn store(&self, db: sea_orm::DatabaseConnection) -> outbox_sea_orm::SeaOrmStore {
        let store = outbox_sea_orm::SeaOrmStore::new(db);
        if self.keep_published {
            store.keep_published()
        } else {
            store
        }
    }

    /// The scenario's event count: `--events`, else `quick` with
    /// `--quick`, else `full`.
    fn events(&self, full: u64, quick: u64) -> u64 {
        self.events
            .unwrap_or(if self.quick { quick } else { full })
            .max(1)
    }

    /// The scenario's duration in seconds, chosen as [`events`](Self::events).
    fn seconds(&self, full: u64, quick: u64) -> u64 {
        self.seconds
            .unwrap_or(if self.quick { quick } else { full })
            .max(1)
    }

    /// Runs `run` on a new database on the server of `url`, with the
    /// outbox tables and a pool of `pool` connections, and drops the
    /// database afterwards, whatever `run` returned.
    async fn with_database<T>(
        &self,
        url: &str,
        pool: u32,
        run: impl AsyncFnOnce(&db::BenchDb) -> Result<T, String>,
    ) -> Result<T, String> {
        let name = format!(
            "outbox_bench_{}_{}",
            std::process::id(),
            self.databases.fetch_add(1, Ordering::Relaxed)
        );
        let db = db::BenchDb::create(url, &name, pool).await?;
        let result = run(&db).await;
        db.drop().await;
        result
    }
}

/// Tells relays (and the seed's reader) to stop.
#[derive(Debug)]
pub(crate) struct Stop(tokio::sync::watch::Sender<bool>);

impl Stop {
    fn new() -> Self {
        Self(tokio::sync::watch::channel(false).0)
    }

    /// Stops them.
    fn stop(&self) {
        self.0.send_replace(true);
    }

    fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once [`stop`](Self::stop) was called: a relay's shutdown
    /// signal.
    fn stopped(&self) -> impl Future<Output = ()> + use<> {
        let mut stopped = self.0.subscribe();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    }
}

/// Runs the scenarios on every reachable server, printing figures as they
/// come; fails when a scenario failed.
pub(crate) async fn run(options: Options) -> ExitCode {
    if cfg!(debug_assertions) {
        eprintln!("NOTE: a debug build; for figures worth keeping, run with --release");
    }
    let broker = match broker::Broker::start(options.brokers.as_deref()) {
        Ok(broker) => broker,
        Err(error) => {
            eprintln!("FAILED: {error}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("broker: {}", broker.describe());
    let explicit = !options.database_urls.is_empty();
    let urls = if explicit {
        options.database_urls
    } else {
        db::DEFAULT_URLS.map(str::to_owned).to_vec()
    };
    let mut reachable = Vec::new();
    for url in urls {
        match db::reachable(&url).await {
            Ok(()) => reachable.push(url),
            Err(error) => eprintln!(
                "SKIPPED {}: the server does not answer ({error}); its scenarios are left out",
                outbox_sea_orm::redact_url(&url)
            ),
        }
    }
    let scenarios = if options.scenarios.is_empty() {
        // All but the soak, which runs for twenty minutes.
        Scenario::value_variants()
            .iter()
            .copied()
            .filter(|scenario| *scenario != Scenario::Soak)
            .collect()
    } else {
        options.scenarios
    };
    let bench = Bench {
        broker,
        quick: options.quick,
        events: options.events,
        seconds: options.seconds,
        keep_published: options.keep_published,
        databases: AtomicU32::new(0),
    };
    let mut failed = 0;
    for scenario in scenarios {
        let urls = scenario.urls(&reachable, explicit);
        if urls.is_empty() {
            eprintln!(
                "SKIPPED {}: none of its servers is reachable",
                scenario.name()
            );
            continue;
        }
        for url in urls {
            eprintln!("{} on {} ...", scenario.name(), db::label(url));
            match scenario.run(&bench, url).await {
                Ok(figures) => {
                    for figures in figures {
                        figures.print(options.json);
                    }
                }
                Err(error) => {
                    eprintln!("FAILED {} on {}: {error}", scenario.name(), db::label(url));
                    failed += 1;
                }
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} run(s) failed");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
