use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};

use crate::StoreError;
use crate::record::{NewRecord, OutboxRecord, Status};
use crate::store::{
    ClaimRequest, DeadFilter, OutboxAdmin, OutboxStats, OutboxStore, RecordRef, Settled,
    Settlement, TopicStats,
};

/// An [`OutboxStore`] and [`OutboxAdmin`] in memory, for tests of code that
/// writes events or runs a relay. It keeps the same contract as the SQL
/// stores (it passes the same conformance suite), but nothing survives the
/// process. Clones share the same records.
///
/// Its clock is the system clock, moved forward by
/// [`advance_clock`](InMemoryStore::advance_clock) in tests of leases and
/// backoff.
///
/// A writer's transaction that stays open is [`begin`](Self::begin): it
/// holds its records' keys, as the SQL stores' writers hold their key
/// rows, until it commits or is dropped; meanwhile claims pass those keys
/// over and settlements defer the dead letters that would hold them.
#[derive(Debug, Clone, Default)]
pub struct InMemoryStore {
    state: Arc<Mutex<State>>,
    /// Woken when a writer lets its keys go.
    released: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Default)]
struct State {
    next_id: i64,
    rows: BTreeMap<i64, Row>,
    /// How far the store's clock runs ahead of the system clock.
    offset: TimeDelta,
    /// Keys held by open writers' transactions, with how many hold each
    /// (one at a time, but a writer may hold a key twice).
    held: HashMap<String, usize>,
}

impl State {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }
}

#[derive(Debug)]
struct Row {
    record: OutboxRecord,
    locked_by: Option<String>,
    locked_until: Option<DateTime<Utc>>,
    published_at: Option<DateTime<Utc>>,
    /// A dead record that holds its key.
    holds_key: bool,
}

impl Row {
    fn leased_to(&self, owner: &str) -> bool {
        self.record.status == Status::Pending && self.locked_by.as_deref() == Some(owner)
    }

    fn lease_active(&self, now: DateTime<Utc>) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }

    fn unlock(&mut self) {
        self.locked_by = None;
        self.locked_until = None;
    }
}

fn after(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(delay)
        .ok()
        .and_then(|delay| now.checked_add_signed(delay))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every record, in id order, whatever its status.
    pub fn records(&self) -> Vec<OutboxRecord> {
        self.lock()
            .rows
            .values()
            .map(|row| row.record.clone())
            .collect()
    }

    /// The records with `status`, in id order.
    pub fn records_with_status(&self, status: Status) -> Vec<OutboxRecord> {
        self.lock()
            .rows
            .values()
            .filter(|row| row.record.status == status)
            .map(|row| row.record.clone())
            .collect()
    }

    /// Moves the store's clock forward by `by`: leases run out, backoffs
    /// end and delayed records come due as if that much time had passed.
    pub fn advance_clock(&self, by: Duration) {
        let mut state = self.lock();
        state.offset += TimeDelta::from_std(by).unwrap_or(TimeDelta::MAX);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn insert(&mut self, records: &[NewRecord]) {
        for record in records {
            self.next_id += 1;
            let id = self.next_id;
            let row = Row {
                record: OutboxRecord::from_new(id, record.clone()),
                locked_by: None,
                locked_until: None,
                published_at: None,
                holds_key: false,
            };
            self.rows.insert(id, row);
        }
    }

    fn is_held(&self, key: Option<&String>) -> bool {
        key.is_some_and(|key| self.held.contains_key(key))
    }
}

/// The distinct keys of `records`.
fn keys_of(records: &[NewRecord]) -> Vec<String> {
    let mut keys: Vec<String> = records.iter().filter_map(|r| r.key.clone()).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

impl InMemoryStore {
    /// Waits until none of `keys` is held by a writer, then runs `then`
    /// on the state, still locked.
    async fn when_free<T>(&self, keys: &[String], then: impl FnOnce(&mut State) -> T) -> T {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut state = self.lock();
                if keys.iter().all(|key| !state.held.contains_key(key)) {
                    return then(&mut state);
                }
            }
            released.await;
        }
    }

    /// Begins a writer's transaction that enqueues `records`: once no
    /// other writer holds their keys (it waits, as a SQL writer waits for
    /// the key's row), it holds them, and the records stay invisible,
    /// until [`OpenWrite::commit`]; dropping it rolls back. Their ids are
    /// drawn at the commit, so a key's records are in commit order.
    pub async fn begin(&self, records: &[NewRecord]) -> OpenWrite {
        let keys = keys_of(records);
        self.when_free(&keys, |state| {
            for key in &keys {
                *state.held.entry(key.clone()).or_default() += 1;
            }
        })
        .await;
        OpenWrite {
            store: self.clone(),
            records: records.to_vec(),
            keys,
            done: false,
        }
    }
}

/// A writer's transaction left open: [`InMemoryStore::begin`].
pub struct OpenWrite {
    store: InMemoryStore,
    records: Vec<NewRecord>,
    keys: Vec<String>,
    done: bool,
}

impl OpenWrite {
    /// Commits: the records are enqueued and the keys let go.
    pub fn commit(mut self) {
        let store = self.store.clone();
        let mut state = store.lock();
        state.insert(&self.records);
        self.let_go(&mut state);
    }

    fn let_go(&mut self, state: &mut State) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        for key in &self.keys {
            if let Some(count) = state.held.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    state.held.remove(key);
                }
            }
        }
        self.store.released.notify_waiters();
    }
}

/// Rolls back: nothing is enqueued, the keys are let go.
impl Drop for OpenWrite {
    fn drop(&mut self) {
        if !self.done {
            let store = self.store.clone();
            let mut state = store.lock();
            self.let_go(&mut state);
        }
    }
}

impl fmt::Debug for OpenWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenWrite")
            .field("keys", &self.keys)
            .field("records", &self.records.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl OutboxStore for InMemoryStore {
    async fn enqueue(&self, records: &[NewRecord]) -> Result<(), StoreError> {
        let keys = keys_of(records);
        self.when_free(&keys, |state| state.insert(records)).await;
        Ok(())
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<OutboxRecord>, StoreError> {
        let mut state = self.lock();
        let now = state.now();
        let until = after(now, request.lease);
        // Keys with an earlier record that this claim does not take: pending
        // and not claimable, or dead and holding the key.
        let mut blocked_keys: HashSet<String> = HashSet::new();
        let mut claimed = Vec::new();
        let held: HashSet<String> = state.held.keys().cloned().collect();
        for row in state.rows.values_mut() {
            if claimed.len() >= request.limit {
                break;
            }
            let key = row.record.key.as_ref();
            // A writer holds the key: passed over, as `SKIP LOCKED` does.
            if key.is_some_and(|key| held.contains(key)) {
                continue;
            }
            match row.record.status {
                Status::Pending => {}
                Status::Dead if row.holds_key => {
                    if let Some(key) = key {
                        blocked_keys.insert(key.clone());
                    }
                    continue;
                }
                _ => continue,
            }
            let ready = row.record.available_at <= now && !row.lease_active(now);
            if ready && !key.is_some_and(|key| blocked_keys.contains(key)) {
                row.locked_by = Some(request.owner.clone());
                row.locked_until = Some(until);
                claimed.push(row.record.clone());
            } else if let Some(key) = key {
                blocked_keys.insert(key.clone());
            }
        }
        Ok(claimed)
    }

    async fn settle(&self, owner: &str, settlement: &Settlement) -> Result<Settled, StoreError> {
        let mut state = self.lock();
        let now = state.now();
        // A dead letter that would hold a key a writer holds waits.
        let deferred: Vec<i64> = settlement
            .dead
            .iter()
            .filter(|dead| {
                dead.holds_key
                    && state.rows.get(&dead.id).is_some_and(|row| {
                        row.leased_to(owner) && state.is_held(row.record.key.as_ref())
                    })
            })
            .map(|dead| dead.id)
            .collect();
        let mut changed = 0;
        let mut leased = |id: i64, change: &mut dyn FnMut(&mut Row)| {
            if let Some(row) = state.rows.get_mut(&id)
                && row.leased_to(owner)
            {
                change(row);
                row.unlock();
                changed += 1;
            }
        };
        for &id in &settlement.published {
            leased(id, &mut |row| {
                row.record.status = Status::Published;
                row.published_at = Some(now);
            });
        }
        for retry in &settlement.retries {
            leased(retry.id, &mut |row| {
                row.record.attempts += 1;
                row.record.last_error = Some(retry.error.clone());
                row.record.available_at = after(now, retry.delay);
            });
        }
        for dead in settlement.dead.iter().filter(|d| !deferred.contains(&d.id)) {
            leased(dead.id, &mut |row| {
                row.record.attempts += 1;
                row.record.last_error = Some(dead.error.clone());
                row.record.status = Status::Dead;
                row.holds_key = dead.holds_key && row.record.key.is_some();
            });
        }
        for &id in &settlement.released {
            leased(id, &mut |_| {});
        }
        Ok(Settled { changed, deferred })
    }

    async fn renew(&self, owner: &str, ids: &[i64], lease: Duration) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let until = after(state.now(), lease);
        let mut renewed = 0;
        for id in ids {
            if let Some(row) = state.rows.get_mut(id)
                && row.leased_to(owner)
            {
                row.locked_until = Some(until);
                renewed += 1;
            }
        }
        Ok(renewed)
    }
}

#[async_trait]
impl OutboxAdmin for InMemoryStore {
    async fn list_dead(
        &self,
        filter: &DeadFilter,
        after_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        let start = after_id.map_or(i64::MIN, |id| id.saturating_add(1));
        Ok(self
            .lock()
            .rows
            .range(start..)
            .filter(|(_, row)| row.record.status == Status::Dead && filter.matches(&row.record))
            .take(limit)
            .map(|(_, row)| row.record.clone())
            .collect())
    }

    async fn find(&self, record: RecordRef) -> Result<Option<OutboxRecord>, StoreError> {
        let state = self.lock();
        let row = match record {
            RecordRef::Id(id) => state.rows.get(&id),
            RecordRef::EventId(event_id) => state
                .rows
                .values()
                .find(|row| row.record.event_id == event_id),
        };
        Ok(row.map(|row| row.record.clone()))
    }

    async fn requeue(&self, id: i64) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let now = state.now();
        let Some(row) = state.rows.get_mut(&id) else {
            return Ok(false);
        };
        if row.record.status != Status::Dead {
            return Ok(false);
        }
        requeue_row(row, now);
        Ok(true)
    }

    async fn requeue_all(&self, filter: &DeadFilter) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let now = state.now();
        let mut count = 0;
        for row in state.rows.values_mut() {
            if row.record.status == Status::Dead && filter.matches(&row.record) {
                requeue_row(row, now);
                count += 1;
            }
        }
        Ok(count)
    }

    async fn discard(&self, id: i64) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let now = state.now();
        let Some(row) = state.rows.get_mut(&id) else {
            return Ok(false);
        };
        if row.record.status != Status::Dead || !row.holds_key {
            return Ok(false);
        }
        row.holds_key = false;
        let error = row.record.last_error.take().unwrap_or_default();
        row.record.last_error = Some(format!("discarded at {now}: {error}"));
        Ok(true)
    }

    async fn purge_published_batch(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let mut doomed: Vec<(DateTime<Utc>, i64)> = state
            .rows
            .iter()
            .filter_map(|(id, row)| match row.published_at {
                Some(at) if row.record.status == Status::Published && at < before => {
                    Some((at, *id))
                }
                _ => None,
            })
            .collect();
        doomed.sort_unstable();
        doomed.truncate(limit);
        for (_, id) in &doomed {
            state.rows.remove(id);
        }
        Ok(doomed.len() as u64)
    }

    async fn stats(&self, now: DateTime<Utc>) -> Result<OutboxStats, StoreError> {
        let state = self.lock();
        let mut stats = OutboxStats::default();
        let mut topics: BTreeMap<&str, TopicStats> = BTreeMap::new();
        let held_keys: HashSet<&str> = state
            .rows
            .values()
            .filter(|row| row.record.status == Status::Dead && row.holds_key)
            .filter_map(|row| row.record.key.as_deref())
            .collect();
        for row in state.rows.values() {
            let record = &row.record;
            match record.status {
                Status::Pending => {
                    stats.pending += 1;
                    if row.lease_active(now) {
                        stats.leased += 1;
                    }
                    if record
                        .key
                        .as_deref()
                        .is_some_and(|key| held_keys.contains(key))
                    {
                        stats.held += 1;
                    }
                    stats.oldest_pending_at = earliest(stats.oldest_pending_at, record.created_at);
                    let topic = topic_stats(&mut topics, record);
                    topic.pending += 1;
                    topic.oldest_pending_at = earliest(topic.oldest_pending_at, record.created_at);
                }
                Status::Published => stats.published += 1,
                Status::Dead => {
                    stats.dead += 1;
                    topic_stats(&mut topics, record).dead += 1;
                }
            }
        }
        stats.topics = topics.into_values().collect();
        Ok(stats)
    }
}

fn topic_stats<'t, 'r: 't>(
    topics: &'t mut BTreeMap<&'r str, TopicStats>,
    record: &'r OutboxRecord,
) -> &'t mut TopicStats {
    topics
        .entry(record.topic.as_str())
        .or_insert_with(|| TopicStats {
            topic: record.topic.clone(),
            ..TopicStats::default()
        })
}

fn earliest(oldest: Option<DateTime<Utc>>, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Some(oldest.map_or(at, |oldest| oldest.min(at)))
}

fn requeue_row(row: &mut Row, now: DateTime<Utc>) {
    row.record.status = Status::Pending;
    row.record.attempts = 0;
    row.record.available_at = now;
    row.holds_key = false;
    row.unlock();
}
