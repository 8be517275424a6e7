//! `memory`: the peak resident memory of this process while one relay
//! with the default settings drains 1,000,000 pending events (`--quick`:
//! 20,000). The database writes the records itself (`INSERT ... SELECT`
//! from its row generator), so loading them costs this process nothing,
//! and the mock cluster keeps its messages in a process of its own.

use std::time::Instant;

use outbox_engine::{Relay, error_chain};
use outbox_sea_orm::SeaOrmStore;

use super::db::BenchDb;
use super::load::{self, Generated};
use super::report::{self, Figures};
use super::{Bench, drain};

const KEYS: u64 = 1_000;

pub(crate) async fn run(bench: &Bench, url: &str) -> Result<Vec<Figures>, String> {
    let events = bench.events(1_000_000, 20_000);
    let topic = bench.broker.new_topic("memory").await?;
    let run = async |db: &BenchDb| {
        let backend = db.db.get_database_backend();
        let started = Instant::now();
        let key = load::concat(backend, &["'k'", &format!("({{n}} % {KEYS})")]);
        let rows = Generated {
            count: events,
            key,
            topic: &topic,
        };
        db.execute(&load::generate(backend, &rows)).await?;
        db.execute(load::REGISTER_KEYS).await?;
        db.analyze().await?;
        eprintln!(
            "  {}: {events} records written in {:.1?}",
            db.label(),
            started.elapsed()
        );
        let before = Rss::read()?;
        let reset = Rss::reset_peak();
        let relay = Relay::builder(SeaOrmStore::new(db.db.clone()), drain::sink(bench)?)
            .build()
            .map_err(|e| error_chain(&e))?;
        let elapsed = drain::drain(db, &[relay], events).await?;
        let after = Rss::read()?;
        if let Err(error) = reset {
            eprintln!(
                "  cannot reset the peak RSS ({error}): the figure may be an earlier \
                 scenario's peak"
            );
        }
        let peak = after.peak_mb;
        eprintln!(
            "  RSS before the relay {:.1} MB, after {:.1} MB, peak while draining {peak:.1} MB",
            before.now_mb, after.now_mb
        );
        let mut figures = Figures::throughput(
            "memory",
            db.label(),
            bench.broker.label(),
            "outbox",
            (events, KEYS, 1),
            elapsed,
        );
        figures.peak_rss_mb = Some(report::round(peak, 1));
        Ok(vec![figures])
    };
    bench.with_database(url, 4, run).await
}

/// This process's resident memory, from `/proc/self/status`.
struct Rss {
    now_mb: f64,
    /// The high-water mark (`VmHWM`).
    peak_mb: f64,
}

impl Rss {
    fn read() -> Result<Self, String> {
        let status = std::fs::read_to_string("/proc/self/status")
            .map_err(|e| format!("cannot read /proc/self/status (Linux only): {e}"))?;
        let field = |name: &str| -> Result<f64, String> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
                .map(|kb| kb / 1024.0)
                .ok_or_else(|| format!("no {name} in /proc/self/status"))
        };
        Ok(Self {
            now_mb: field("VmRSS:")?,
            peak_mb: field("VmHWM:")?,
        })
    }

    /// Resets the high-water mark to the current RSS (Linux 4.0 and
    /// later), so earlier scenarios do not count.
    fn reset_peak() -> Result<(), String> {
        std::fs::write("/proc/self/clear_refs", "5").map_err(|e| e.to_string())
    }
}
