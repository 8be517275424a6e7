//! The relay's housekeeping on the store's tables
//! ([`OutboxStore::housekeep`](outbox_engine::OutboxStore::housekeep)).
//!
//! Every record leaves a dead row version behind: the lease's, and the
//! delete (or the mark) that settles it. PostgreSQL makes their room usable
//! again only when a `VACUUM` passes; until then every new record takes new
//! room at the end of the table and of its indexes, and every claim reads
//! past the dead versions. Where autovacuum runs and keeps up, that is its
//! job; where it does not (turned off, or behind on a busy server), the
//! table grows without end. So the relay vacuums the two tables itself,
//! once enough rows were settled since the last time: a `VACUUM` that
//! waits for no lock and takes none that a writer or a claim would wait
//! for (see [`Dialect::vacuum`](crate::sql::Dialect::vacuum)). A crash in
//! the middle of one loses nothing: it changes no row that is still
//! visible to any transaction.
//!
//! MySQL/MariaDB (InnoDB's purge threads) and SQLite (its free pages) reuse
//! the room by themselves. But MySQL/MariaDB's settlements mark what they
//! publish (`Dialect::deletes_published`): there, without a history, the
//! housekeeping purges the published records, a batch per transaction, and
//! the keys left idle, passing over any a writer holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use sea_orm::ConnectionTrait;

use super::SeaOrmStore;
use crate::error::Error;

/// Rows settled since the last vacuum before the next one is worth it.
pub(crate) const ROWS_PER_VACUUM: u64 = 1_000;

/// Whether the connection's role may vacuum the tables, once asked.
const UNKNOWN: u8 = 0;
const ALLOWED: u8 = 1;
const REFUSED: u8 = 2;

/// The housekeeping's state, shared by a store's clones.
#[derive(Debug, Clone)]
pub(crate) struct Reclaim(Arc<State>);

#[derive(Debug)]
struct State {
    on: AtomicBool,
    settled: AtomicU64,
    allowed: AtomicU8,
}

impl Default for Reclaim {
    fn default() -> Self {
        Self(Arc::new(State {
            on: AtomicBool::new(true),
            settled: AtomicU64::new(0),
            allowed: AtomicU8::new(UNKNOWN),
        }))
    }
}

impl Reclaim {
    pub(crate) fn set(&self, on: bool) {
        self.0.on.store(on, Ordering::Relaxed);
    }

    /// Counts rows a settlement changed.
    pub(crate) fn settled(&self, rows: u64) {
        self.0.settled.fetch_add(rows, Ordering::Relaxed);
    }
}

/// Published records a housekeeping purges at most, in batches of
/// [`PURGE_BATCH`], so that it ends between two intervals.
const MOST_PURGED: u64 = 50_000;
const PURGE_BATCH: usize = 1_000;

/// The store's housekeeping: the purge where settlements mark, the vacuum
/// where the database needs one.
pub(super) async fn housekeep(store: &SeaOrmStore) -> Result<(), Error> {
    if store.purges_published() {
        purge(store).await?;
    }
    vacuum(store).await?;
    Ok(())
}

/// Deletes what settlements marked published (up to [`MOST_PURGED`]), then
/// the keys left idle.
async fn purge(store: &SeaOrmStore) -> Result<(), Error> {
    // Whatever the clocks of this host and the database: everything
    // published so far.
    let before = chrono::Utc::now() + store.clock_offset() + chrono::TimeDelta::days(1);
    let mut purged = 0;
    while purged < MOST_PURGED {
        let deleted = super::admin::purge_published_batch(store, before, PURGE_BATCH).await?;
        purged += deleted;
        if deleted < PURGE_BATCH as u64 {
            break;
        }
    }
    super::admin::delete_idle_keys(store, PURGE_BATCH).await
}

/// Vacuums the tables when it is on, allowed, and enough rows were settled
/// since the last time; returns whether it did.
async fn vacuum(store: &SeaOrmStore) -> Result<bool, Error> {
    let state = &store.reclaim.0;
    let sql = store.sql();
    let Some(vacuum) = sql.vacuum() else {
        return Ok(false);
    };
    if !state.on.load(Ordering::Relaxed) || state.allowed.load(Ordering::Relaxed) == REFUSED {
        return Ok(false);
    }
    if state.settled.load(Ordering::Relaxed) < ROWS_PER_VACUUM {
        return Ok(false);
    }
    if state.allowed.load(Ordering::Relaxed) == UNKNOWN {
        let allowed = match sql.may_vacuum() {
            Some(question) => match store.connection().query_one_raw(question).await {
                Ok(row) => row,
                Err(error) => return Err(store.fail("read the outbox tables' owner", error).await),
            }
            .and_then(|row| row.try_get::<Option<bool>>("", "allowed").ok().flatten())
            .unwrap_or(false),
            None => true,
        };
        if !allowed {
            state.allowed.store(REFUSED, Ordering::Relaxed);
            tracing::warn!(
                outbox = store.tables().outbox(),
                "the relay's database role does not own the outbox tables, so it cannot vacuum \
                 them: the room of published records is reused only when autovacuum runs. Make \
                 sure it does, or run the relay as the tables' owner"
            );
            return Ok(false);
        }
        state.allowed.store(ALLOWED, Ordering::Relaxed);
    }
    // Counted before it runs: rows settled while it runs wait for the next.
    state.settled.store(0, Ordering::Relaxed);
    if let Err(error) = store.connection().execute_raw(vacuum).await {
        state.settled.fetch_add(ROWS_PER_VACUUM, Ordering::Relaxed);
        return Err(store.fail("vacuum the outbox tables", error).await);
    }
    Ok(true)
}
