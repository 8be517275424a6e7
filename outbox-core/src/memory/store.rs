use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::StoreError;
use crate::record::{NewRecord, OutboxRecord, Status};
use crate::store::{ClaimRequest, DeadLetter, OutboxAdmin, OutboxStats, OutboxStore, Retry};

/// An [`OutboxStore`] and [`OutboxAdmin`] in memory, for tests of code that
/// writes events or runs a relay. It keeps the same contract as the SQL
/// stores (it passes the same conformance suite), but nothing survives the
/// process. Clones share the same records.
#[derive(Debug, Clone, Default)]
pub struct InMemoryStore {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    next_id: i64,
    rows: BTreeMap<i64, Row>,
}

#[derive(Debug)]
struct Row {
    record: OutboxRecord,
    locked_by: Option<String>,
    locked_until: Option<DateTime<Utc>>,
    published_at: Option<DateTime<Utc>>,
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

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update_leased<T>(
        &self,
        owner: &str,
        items: &[T],
        id: impl Fn(&T) -> i64,
        mut change: impl FnMut(&mut Row, &T),
    ) -> u64 {
        let mut state = self.lock();
        let mut changed = 0;
        for item in items {
            if let Some(row) = state.rows.get_mut(&id(item))
                && row.leased_to(owner)
            {
                change(row, item);
                row.unlock();
                changed += 1;
            }
        }
        changed
    }
}

#[async_trait]
impl OutboxStore for InMemoryStore {
    async fn enqueue(&self, records: &[NewRecord]) -> Result<(), StoreError> {
        let mut state = self.lock();
        for record in records {
            state.next_id += 1;
            let id = state.next_id;
            let row = Row {
                record: OutboxRecord::from_new(id, record.clone()),
                locked_by: None,
                locked_until: None,
                published_at: None,
            };
            state.rows.insert(id, row);
        }
        Ok(())
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<OutboxRecord>, StoreError> {
        let now = request.now;
        let until = request.lease_until();
        let mut state = self.lock();
        // Keys with an earlier pending record that this claim does not take.
        let mut blocked_keys: HashSet<String> = HashSet::new();
        let mut claimed = Vec::new();
        for row in state.rows.values_mut() {
            if claimed.len() >= request.limit {
                break;
            }
            if row.record.status != Status::Pending {
                continue;
            }
            let ready = row.record.available_at <= now && !row.lease_active(now);
            let key = row.record.key.as_ref();
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

    async fn mark_published(&self, owner: &str, ids: &[i64]) -> Result<u64, StoreError> {
        let now = Utc::now();
        Ok(self.update_leased(
            owner,
            ids,
            |id| *id,
            |row, _| {
                row.record.status = Status::Published;
                row.published_at = Some(now);
            },
        ))
    }

    async fn schedule_retry(&self, owner: &str, retries: &[Retry]) -> Result<u64, StoreError> {
        Ok(self.update_leased(
            owner,
            retries,
            |retry| retry.id,
            |row, retry| {
                row.record.attempts += 1;
                row.record.last_error = Some(retry.error.clone());
                row.record.available_at = retry.retry_at;
            },
        ))
    }

    async fn mark_dead(&self, owner: &str, dead: &[DeadLetter]) -> Result<u64, StoreError> {
        Ok(self.update_leased(
            owner,
            dead,
            |dead| dead.id,
            |row, dead| {
                row.record.attempts += 1;
                row.record.last_error = Some(dead.error.clone());
                row.record.status = Status::Dead;
            },
        ))
    }

    async fn release(&self, owner: &str, ids: &[i64]) -> Result<u64, StoreError> {
        Ok(self.update_leased(owner, ids, |id| *id, |_, _| {}))
    }
}

#[async_trait]
impl OutboxAdmin for InMemoryStore {
    async fn list_dead(
        &self,
        after_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        let start = after_id.map_or(i64::MIN, |id| id.saturating_add(1));
        Ok(self
            .lock()
            .rows
            .range(start..)
            .filter(|(_, row)| row.record.status == Status::Dead)
            .take(limit)
            .map(|(_, row)| row.record.clone())
            .collect())
    }

    async fn requeue(&self, id: i64) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let Some(row) = state.rows.get_mut(&id) else {
            return Ok(false);
        };
        if row.record.status != Status::Dead {
            return Ok(false);
        }
        requeue_row(row, Utc::now());
        Ok(true)
    }

    async fn requeue_all(&self) -> Result<u64, StoreError> {
        let now = Utc::now();
        let mut state = self.lock();
        let mut count = 0;
        for row in state.rows.values_mut() {
            if row.record.status == Status::Dead {
                requeue_row(row, now);
                count += 1;
            }
        }
        Ok(count)
    }

    async fn purge_published(
        &self,
        before: DateTime<Utc>,
        batch_size: usize,
    ) -> Result<u64, StoreError> {
        if batch_size == 0 {
            return Err(StoreError::permanent("purge batch size must be at least 1"));
        }
        let mut total = 0;
        loop {
            // One bounded batch per lock, as the SQL stores do per statement.
            let mut state = self.lock();
            let doomed: Vec<i64> = state
                .rows
                .iter()
                .filter(|(_, row)| {
                    row.record.status == Status::Published
                        && row.published_at.is_some_and(|at| at < before)
                })
                .map(|(id, _)| *id)
                .take(batch_size)
                .collect();
            for id in &doomed {
                state.rows.remove(id);
            }
            total += doomed.len() as u64;
            if doomed.len() < batch_size {
                return Ok(total);
            }
        }
    }

    async fn stats(&self, now: DateTime<Utc>) -> Result<OutboxStats, StoreError> {
        let state = self.lock();
        let mut stats = OutboxStats::default();
        for row in state.rows.values() {
            match row.record.status {
                Status::Pending => {
                    stats.pending += 1;
                    if row.lease_active(now) {
                        stats.leased += 1;
                    }
                    let created = row.record.created_at;
                    if stats
                        .oldest_pending_at
                        .is_none_or(|oldest| created < oldest)
                    {
                        stats.oldest_pending_at = Some(created);
                    }
                }
                Status::Published => stats.published += 1,
                Status::Dead => stats.dead += 1,
            }
        }
        Ok(stats)
    }
}

fn requeue_row(row: &mut Row, now: DateTime<Utc>) {
    row.record.status = Status::Pending;
    row.record.attempts = 0;
    row.record.available_at = now;
    row.unlock();
}
