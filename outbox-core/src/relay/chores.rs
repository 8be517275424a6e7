//! What a running relay does beside its batches: retention and backlog
//! gauges, both through the store's [`OutboxAdmin`] side.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;

use super::metrics::{
    DEAD_RECORDS, HELD_RECORDS, LEASED_RECORDS, OLDEST_PENDING_AGE_SECONDS, PENDING_RECORDS,
    PURGED_TOTAL,
};
use crate::sink::error_chain;
use crate::{OutboxAdmin, OutboxStats};

/// Records deleted per purge statement.
const PURGE_BATCH: usize = 1_000;

/// The pause between two purge statements, so claims and writers never
/// queue behind a purge.
const PURGE_PAUSE: Duration = Duration::from_millis(20);

/// The retention and backlog settings of a relay.
pub(crate) struct Chores {
    pub(crate) admin: Option<Arc<dyn OutboxAdmin>>,
    pub(crate) retain: Option<Duration>,
    pub(crate) purge_every: Duration,
    pub(crate) backlog_every: Option<Duration>,
}

impl Default for Chores {
    fn default() -> Self {
        Self {
            admin: None,
            retain: None,
            purge_every: Duration::from_secs(60),
            backlog_every: None,
        }
    }
}

impl fmt::Debug for Chores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chores")
            .field("retain", &self.retain)
            .field("purge_every", &self.purge_every)
            .field("backlog_every", &self.backlog_every)
            .finish_non_exhaustive()
    }
}

impl Chores {
    /// Runs the purge and the backlog report, each at its interval and
    /// first at once, until `stop` turns true.
    pub(crate) async fn run(
        &self,
        relay_id: &str,
        now: impl Fn() -> DateTime<Utc>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(admin) = &self.admin else {
            return;
        };
        let mut purge = self.retain.map(|_| tokio::time::interval(self.purge_every));
        let mut report = self.backlog_every.map(tokio::time::interval);
        for interval in purge.iter_mut().chain(report.iter_mut()) {
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut topics = BTreeSet::new();
        enum Chore {
            Purge,
            Report,
        }
        loop {
            let chore = tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => return,
                () = tick(&mut purge) => Chore::Purge,
                () = tick(&mut report) => Chore::Report,
            };
            match chore {
                Chore::Purge => {
                    let retain = self.retain.unwrap_or_default();
                    let before = now() - TimeDelta::from_std(retain).unwrap_or(TimeDelta::MAX);
                    purge_published(&**admin, relay_id, before, &mut stop).await;
                }
                Chore::Report => match admin.backlog(now()).await {
                    Ok(stats) => report_backlog(&stats, now(), &mut topics),
                    Err(error) => tracing::warn!(
                        relay = relay_id,
                        error = %error_chain(&error),
                        "counting the outbox's backlog failed; the backlog gauges are stale"
                    ),
                },
            }
        }
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Deletes the records published before `before`, batch by batch with a
/// pause between, then tidies; stops early when `stop` turns true.
async fn purge_published(
    admin: &dyn OutboxAdmin,
    relay_id: &str,
    before: DateTime<Utc>,
    stop: &mut watch::Receiver<bool>,
) {
    let mut purged = 0;
    loop {
        match admin.purge_published_batch(before, PURGE_BATCH).await {
            Ok(deleted) => {
                purged += deleted;
                metrics::counter!(PURGED_TOTAL).increment(deleted);
                if deleted < PURGE_BATCH as u64 {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(
                    relay = relay_id,
                    error = %error_chain(&error),
                    purged,
                    "purging published outbox records failed; trying again at the next purge"
                );
                return;
            }
        }
        tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => return,
            () = tokio::time::sleep(PURGE_PAUSE) => {}
        }
    }
    if let Err(error) = admin.tidy(PURGE_BATCH).await {
        tracing::warn!(
            relay = relay_id,
            error = %error_chain(&error),
            "tidying the outbox after a purge failed; trying again at the next purge"
        );
    }
    if purged > 0 {
        tracing::info!(relay = relay_id, purged, %before, "purged published outbox records");
    }
}

/// Sets the backlog gauges from `stats`; a topic seen before and gone now
/// reads zero.
fn report_backlog(stats: &OutboxStats, now: DateTime<Utc>, seen: &mut BTreeSet<String>) {
    metrics::gauge!(HELD_RECORDS).set(stats.held as f64);
    metrics::gauge!(LEASED_RECORDS).set(stats.leased as f64);
    let mut gone = std::mem::take(seen);
    for topic in &stats.topics {
        gone.remove(&topic.topic);
        seen.insert(topic.topic.clone());
        let label = [("topic", topic.topic.clone())];
        metrics::gauge!(PENDING_RECORDS, &label).set(topic.pending as f64);
        metrics::gauge!(DEAD_RECORDS, &label).set(topic.dead as f64);
        metrics::gauge!(OLDEST_PENDING_AGE_SECONDS, &label)
            .set(topic.oldest_pending_age(now).as_secs_f64());
    }
    for topic in gone {
        let label = [("topic", topic)];
        metrics::gauge!(PENDING_RECORDS, &label).set(0.0);
        metrics::gauge!(DEAD_RECORDS, &label).set(0.0);
        metrics::gauge!(OLDEST_PENDING_AGE_SECONDS, &label).set(0.0);
    }
}
