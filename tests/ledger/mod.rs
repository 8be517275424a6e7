//! A ledger of what writers committed and rolled back, checked against what
//! a consumer read back from Kafka.
//!
//! The promises it checks (DESIGN, "The promises" 1 to 3):
//!
//! - every committed event is delivered at least once;
//! - no rolled-back event is ever delivered;
//! - for each key, the first copy of each event appears in the commit
//!   order of the transactions that enqueued them;
//! - duplicates (later copies) are allowed, and counted.
//!
//! The parts:
//!
//! - [`Ledger`]: what [`Writers`] (or a test by hand) committed, with each
//!   event's place in its key's commit order, and what they rolled back;
//!   [`Ledger::check`] compares it with a consumed log and returns the
//!   [`Counts`] or the first [`Violation`].
//! - [`Writers`]: business transactions over many keys on a table of their
//!   own (`ledger_accounts`, `ledger_moves`) with `outbox_sea_orm::enqueue`
//!   in the same transaction, some rolled back on purpose.
//! - [`Kafka`]: the broker the relays publish to (librdkafka's mock cluster,
//!   or the broker at `KAFKA_BROKERS`), its topics, and a consumer that
//!   reads them back with a decoding of its own ([`Delivered`]).
//!
//! ```no_run
//! # async fn scenario(db: sea_orm::DatabaseConnection) {
//! use outbox_tests::ledger::{Kafka, Ledger, WriterPlan, Writers};
//!
//! let mut kafka = Kafka::start().await;
//! let topic = kafka.topic("orders", 3).await;
//! let ledger = Ledger::new();
//! Writers::prepare(&db, 20).await;
//! let writers = Writers::spawn(db.clone(), ledger.clone(), WriterPlan::new(&topic, 20));
//! // ... relays publish, faults happen ...
//! writers.finish().await;
//! ledger.resolve(&db).await;
//! let log = kafka.read_log(&[&topic], ledger.expected_deliveries()).await;
//! ledger.assert_holds(&log, "my scenario on PostgreSQL", "kills 0");
//! # }
//! ```

mod kafka;
mod writers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sea_orm::DatabaseConnection;
use uuid::Uuid;

pub use kafka::{Delivered, Kafka};
pub use writers::{CommitOrder, LedgerEvent, WriterPlan, Writers};

/// A committed event, as the ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The event's key.
    pub key: String,
    /// Its place in the key's commit order: greater means committed later.
    pub stamp: u64,
    /// The sequence number written in the payload (`seq`).
    pub seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    committed: HashMap<Uuid, Entry>,
    rolled_back: HashSet<Uuid>,
    /// Events whose commit reported an error: committed or not, as the
    /// business table says ([`Ledger::resolve`]).
    uncertain: HashMap<Uuid, Entry>,
    /// Committed events the broker refuses for good: they go dead and hold
    /// their key, so neither they nor the later events of their key are
    /// delivered.
    poisoned: HashSet<Uuid>,
    /// Committed events in the order they were recorded: right after their
    /// commit returned, so close to commit order across keys.
    recorded: Vec<Uuid>,
    /// How long each writer's transaction took, begin to commit, and what
    /// it was.
    took: Vec<(Duration, Wait)>,
}

/// What was committed and rolled back; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    inner: Arc<Mutex<Inner>>,
}

/// The counts of a check that passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Committed events.
    pub committed: usize,
    /// Rolled-back events.
    pub rolled_back: usize,
    /// Messages read back (copies included).
    pub delivered: usize,
    /// Copies after the first of an event.
    pub duplicates: usize,
    /// Committed events held back behind a poison event of their key (the
    /// poison events included): not delivered, as promised.
    pub held: usize,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "committed {}, rolled back {}, delivered {}, duplicates {}",
            self.committed, self.rolled_back, self.delivered, self.duplicates
        )?;
        if self.held > 0 {
            write!(f, ", held {}", self.held)?;
        }
        Ok(())
    }
}

/// What a writer's transaction was, for [`Ledger::took`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// It held its keys long on purpose.
    Long,
    /// It wrote a key that a long transaction held when it began: it
    /// waits for that one, as writers of one key do.
    Behind,
    /// Any other: it should wait for nothing.
    Other,
}

/// How long the writers' transactions took ([`Ledger::waits`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waits {
    /// Transactions of keys no long transaction held.
    pub transactions: usize,
    /// Transactions that held their keys long on purpose.
    pub long: usize,
    /// Transactions that wrote a key a long one held.
    pub behind: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// The longest.
    pub max: Duration,
}

impl fmt::Display for Waits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "writers of other keys: {} transactions, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
             (beside {} held long on purpose and {} behind them on their keys)",
            self.transactions,
            self.p50.as_secs_f64() * 1000.0,
            self.p99.as_secs_f64() * 1000.0,
            self.max.as_secs_f64() * 1000.0,
            self.long,
            self.behind
        )
    }
}

/// The first broken promise a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A committed event never arrived.
    Lost {
        /// The event.
        event_id: Uuid,
        /// Its key.
        key: String,
        /// Its payload's sequence number.
        seq: u64,
    },
    /// A rolled-back event arrived.
    RolledBack {
        /// The event.
        event_id: Uuid,
        /// The message's key.
        key: String,
        /// Where it arrived.
        at: String,
    },
    /// The first copies of a key's events are not in commit order.
    OutOfOrder {
        /// The key.
        key: String,
        /// The position among the key's first copies.
        position: usize,
        /// The event that arrived there.
        got: Uuid,
        /// Its sequence number.
        got_seq: u64,
        /// The event commit order puts there.
        expected: Uuid,
        /// Its sequence number.
        expected_seq: u64,
    },
    /// An event held behind a poison event of its key arrived.
    Held {
        /// The event.
        event_id: Uuid,
        /// Its key.
        key: String,
    },
    /// A message that is neither a committed nor a rolled-back event.
    Unknown {
        /// Its event id.
        event_id: Uuid,
        /// Where it arrived.
        at: String,
    },
    /// A message whose key or payload differs from what was committed, or
    /// that does not decode.
    Corrupt {
        /// Where it arrived.
        at: String,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Lost { event_id, key, seq } => write!(
                f,
                "lost: event {event_id} of key {key} (seq {seq}) was committed but never delivered"
            ),
            Violation::RolledBack { event_id, key, at } => write!(
                f,
                "rolled back: event {event_id} of key {key} was rolled back, so never to be \
                 delivered, but was delivered at {at}"
            ),
            Violation::OutOfOrder {
                key,
                position,
                got,
                got_seq,
                expected,
                expected_seq,
            } => write!(
                f,
                "out of commit order: key {key}, first copy #{position} is event {got} (seq \
                 {got_seq}); commit order expects event {expected} (seq {expected_seq}) there"
            ),
            Violation::Held { event_id, key } => write!(
                f,
                "held: event {event_id} of key {key} was delivered although a dead event before \
                 it holds the key"
            ),
            Violation::Unknown { event_id, at } => write!(
                f,
                "unknown: event {event_id} delivered at {at} was neither committed nor rolled back"
            ),
            Violation::Corrupt { at, reason } => {
                write!(f, "corrupt: the message at {at}: {reason}")
            }
        }
    }
}

impl std::error::Error for Violation {}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a committed event: `stamp` orders the commits of its key
    /// (greater is later), `seq` is what its payload says.
    pub fn committed(&self, event_id: Uuid, key: &str, stamp: u64, seq: u64) {
        let entry = Entry {
            key: key.to_owned(),
            stamp,
            seq,
        };
        let mut inner = self.lock();
        inner.committed.insert(event_id, entry);
        inner.recorded.push(event_id);
    }

    /// Records how long a writer's transaction took, begin to commit (or
    /// rollback), and what it was.
    pub fn took(&self, duration: Duration, wait: Wait) {
        self.lock().took.push((duration, wait));
    }

    /// How long the writers' transactions took, those of keys no long
    /// transaction held: what the outbox made them wait.
    pub fn waits(&self) -> Waits {
        let inner = self.lock();
        let mut times: Vec<Duration> = inner
            .took
            .iter()
            .filter(|(_, wait)| *wait == Wait::Other)
            .map(|(took, _)| *took)
            .collect();
        times.sort_unstable();
        let at = |q: f64| {
            times
                .get(((times.len().saturating_sub(1)) as f64 * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        let count = |kind: Wait| inner.took.iter().filter(|(_, wait)| *wait == kind).count();
        Waits {
            transactions: times.len(),
            long: count(Wait::Long),
            behind: count(Wait::Behind),
            p50: at(0.5),
            p99: at(0.99),
            max: times.last().copied().unwrap_or_default(),
        }
    }

    /// Records a rolled-back event.
    pub fn rolled_back(&self, event_id: Uuid) {
        self.lock().rolled_back.insert(event_id);
    }

    /// Records an event whose commit failed with an error: it may or may
    /// not have committed; [`resolve`](Self::resolve) finds out.
    pub fn uncertain(&self, event_id: Uuid, key: &str, stamp: u64, seq: u64) {
        let entry = Entry {
            key: key.to_owned(),
            stamp,
            seq,
        };
        self.lock().uncertain.insert(event_id, entry);
    }

    /// Marks a committed event as one the broker refuses for good: it and
    /// the later events of its key are expected to stay undelivered.
    pub fn poisoned(&self, event_id: Uuid) {
        self.lock().poisoned.insert(event_id);
    }

    /// Settles the uncertain events: committed if the business row written
    /// in their transaction exists, rolled back otherwise.
    pub async fn resolve(&self, db: &DatabaseConnection) {
        let uncertain: Vec<(Uuid, Entry)> = self.lock().uncertain.drain().collect();
        for (event_id, entry) in uncertain {
            let exists = writers::move_exists(db, event_id).await;
            let mut inner = self.lock();
            if exists {
                inner.committed.insert(event_id, entry);
                inner.recorded.push(event_id);
            } else {
                inner.rolled_back.insert(event_id);
            }
        }
    }

    /// How many committed events a complete log holds at least (those held
    /// behind a poison event left out).
    pub fn expected_deliveries(&self) -> usize {
        let inner = self.lock();
        let held: usize = held_by_poison(&inner).values().map(Vec::len).sum();
        inner.committed.len() - held
    }

    /// The committed events of `key`, in commit order.
    pub fn committed_of(&self, key: &str) -> Vec<Uuid> {
        let inner = self.lock();
        commit_order(&inner)
            .remove(key)
            .unwrap_or_default()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// The committed events in the order their commits returned, across
    /// keys (events of one transaction in a row); uncertain commits that
    /// [`resolve`](Self::resolve) found committed come last.
    pub fn commit_sequence(&self) -> Vec<Uuid> {
        self.lock().recorded.clone()
    }

    /// How many events were committed and rolled back so far.
    pub fn totals(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.committed.len(), inner.rolled_back.len())
    }

    /// Checks `log` (messages in log order per partition) against the
    /// ledger; see the module docs for the promises.
    pub fn check(&self, log: &[Delivered]) -> Result<Counts, Violation> {
        let inner = self.lock();
        assert!(
            inner.uncertain.is_empty(),
            "resolve the uncertain commits before checking"
        );
        let held = held_by_poison(&inner);
        let held_ids: HashSet<Uuid> = held.values().flatten().copied().collect();
        let mut counts = Counts {
            committed: inner.committed.len(),
            rolled_back: inner.rolled_back.len(),
            delivered: log.len(),
            duplicates: 0,
            held: held_ids.len(),
        };
        let mut seen: HashSet<Uuid> = HashSet::new();
        let mut firsts: BTreeMap<&str, Vec<Uuid>> = BTreeMap::new();
        for message in log {
            let at = message.position();
            let event_id = message.event_id.map_err(|reason| Violation::Corrupt {
                at: at.clone(),
                reason: reason.to_owned(),
            })?;
            if inner.rolled_back.contains(&event_id) {
                let key = message.key.clone().unwrap_or_default();
                return Err(Violation::RolledBack { event_id, key, at });
            }
            let Some(entry) = inner.committed.get(&event_id) else {
                return Err(Violation::Unknown { event_id, at });
            };
            message
                .matches(entry)
                .map_err(|reason| Violation::Corrupt {
                    at: at.clone(),
                    reason: format!("event {event_id}: {reason}"),
                })?;
            if held_ids.contains(&event_id) {
                return Err(Violation::Held {
                    event_id,
                    key: entry.key.clone(),
                });
            }
            if seen.insert(event_id) {
                firsts.entry(&entry.key).or_default().push(event_id);
            } else {
                counts.duplicates += 1;
            }
        }
        for (key, events) in commit_order(&inner) {
            let held = held.get(&key).map(Vec::as_slice).unwrap_or_default();
            let expected: Vec<(Uuid, u64)> = events
                .into_iter()
                .filter(|(id, _)| !held.contains(id))
                .collect();
            let got = firsts.remove(key.as_str()).unwrap_or_default();
            for (position, (want, want_seq)) in expected.iter().enumerate() {
                match got.get(position) {
                    Some(got) if got == want => {}
                    Some(&got) if seen.contains(want) => {
                        return Err(Violation::OutOfOrder {
                            key,
                            position,
                            got,
                            got_seq: inner.committed[&got].seq,
                            expected: *want,
                            expected_seq: *want_seq,
                        });
                    }
                    _ => {
                        return Err(Violation::Lost {
                            event_id: *want,
                            key,
                            seq: *want_seq,
                        });
                    }
                }
            }
        }
        Ok(counts)
    }

    /// Checks `log`, prints one line of counts for `scenario` with `faults`
    /// (such as `kills 23`), and panics with the first violation.
    #[track_caller]
    pub fn assert_holds(&self, log: &[Delivered], scenario: &str, faults: &str) -> Counts {
        match self.check(log) {
            Ok(counts) => {
                let waits = self.waits();
                if waits.transactions > 0 {
                    println!("{scenario}: {counts}, {faults}; {waits}");
                } else {
                    println!("{scenario}: {counts}, {faults}");
                }
                counts
            }
            Err(violation) => {
                let (committed, rolled_back) = self.totals();
                panic!(
                    "{scenario}: {violation}\n(committed {committed}, rolled back {rolled_back}, \
                     delivered {}, {faults})",
                    log.len()
                )
            }
        }
    }
}

/// Each key's committed events with their payload `seq`, in commit order.
fn commit_order(inner: &Inner) -> BTreeMap<String, Vec<(Uuid, u64)>> {
    let mut by_key: BTreeMap<String, Vec<(u64, Uuid, u64)>> = BTreeMap::new();
    for (id, entry) in &inner.committed {
        by_key
            .entry(entry.key.clone())
            .or_default()
            .push((entry.stamp, *id, entry.seq));
    }
    by_key
        .into_iter()
        .map(|(key, mut events)| {
            events.sort_unstable();
            let events = events.into_iter().map(|(_, id, seq)| (id, seq)).collect();
            (key, events)
        })
        .collect()
}

/// Per key with a poison event, the committed events from the first poison
/// event on: none of them may arrive.
fn held_by_poison(inner: &Inner) -> BTreeMap<String, Vec<Uuid>> {
    let mut held = BTreeMap::new();
    for (key, events) in commit_order(inner) {
        if let Some(first) = events
            .iter()
            .position(|(id, _)| inner.poisoned.contains(id))
        {
            held.insert(key, events[first..].iter().map(|(id, _)| *id).collect());
        }
    }
    held
}

/// Commits one event of `key` by hand in a business transaction of its
/// own, as [`CommitOrder::BusinessLock`] writers do, padded with `pad`
/// bytes (a poison event the broker refuses, say), records it in the
/// ledger and returns its id. The account row of `key` must exist
/// ([`Writers::prepare`]).
pub async fn commit_one(
    db: &DatabaseConnection,
    ledger: &Ledger,
    topic: &str,
    key: &str,
    pad: usize,
) -> Uuid {
    writers::commit_one(db, ledger, topic, key, pad).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(ledger_key: &str, event_id: Uuid, seq: u64, offset: i64) -> Delivered {
        Delivered::for_test("t", 0, offset, ledger_key, event_id, seq)
    }

    /// Key a: three events committed in order; key b: one; one rolled back.
    fn ledger() -> (Ledger, [Uuid; 5]) {
        let ledger = Ledger::new();
        let ids = [(); 5].map(|()| Uuid::now_v7());
        ledger.committed(ids[0], "a", 1, 1);
        ledger.committed(ids[1], "a", 2, 2);
        ledger.committed(ids[2], "a", 3, 3);
        ledger.committed(ids[3], "b", 1, 1);
        ledger.rolled_back(ids[4]);
        (ledger, ids)
    }

    #[test]
    fn a_complete_log_in_commit_order_passes_and_duplicates_are_counted() {
        let (ledger, ids) = ledger();
        let log = vec![
            message("a", ids[0], 1, 0),
            message("b", ids[3], 1, 1),
            message("a", ids[1], 2, 2),
            // A crash after the broker acknowledged: the same two again.
            message("a", ids[0], 1, 3),
            message("a", ids[1], 2, 4),
            message("a", ids[2], 3, 5),
        ];
        let counts = ledger.check(&log).unwrap();
        assert_eq!(
            counts,
            Counts {
                committed: 4,
                rolled_back: 1,
                delivered: 6,
                duplicates: 2,
                held: 0
            }
        );
        assert_eq!(
            counts.to_string(),
            "committed 4, rolled back 1, delivered 6, duplicates 2"
        );
    }

    #[test]
    fn a_lost_event_is_named() {
        let (ledger, ids) = ledger();
        let log = vec![
            message("a", ids[0], 1, 0),
            message("a", ids[2], 3, 1),
            message("b", ids[3], 1, 2),
        ];
        let violation = ledger.check(&log).unwrap_err();
        assert_eq!(
            violation,
            Violation::Lost {
                event_id: ids[1],
                key: "a".into(),
                seq: 2
            }
        );
        assert_eq!(
            violation.to_string(),
            format!(
                "lost: event {} of key a (seq 2) was committed but never delivered",
                ids[1]
            )
        );
    }

    #[test]
    fn a_reordered_key_is_named() {
        let (ledger, ids) = ledger();
        // The second copy of ids[1] comes in order, but its first copy
        // overtook ids[0]: order is about first copies.
        let log = vec![
            message("a", ids[1], 2, 0),
            message("a", ids[0], 1, 1),
            message("a", ids[1], 2, 2),
            message("a", ids[2], 3, 3),
            message("b", ids[3], 1, 4),
        ];
        let violation = ledger.check(&log).unwrap_err();
        let text = violation.to_string();
        assert!(
            text.starts_with("out of commit order: key a, first copy #0"),
            "{text}"
        );
        assert!(
            text.contains(&format!("is event {} (seq 2)", ids[1])),
            "{text}"
        );
        assert!(
            text.contains(&format!("expects event {} (seq 1)", ids[0])),
            "{text}"
        );
    }

    #[test]
    fn a_rolled_back_event_is_named_with_its_position() {
        let (ledger, ids) = ledger();
        let mut log: Vec<Delivered> = [0, 1, 2]
            .iter()
            .map(|&i| message("a", ids[i], i as u64 + 1, i as i64))
            .collect();
        log.push(message("b", ids[3], 1, 3));
        log.push(message("c", ids[4], 1, 4));
        let violation = ledger.check(&log).unwrap_err();
        assert_eq!(
            violation.to_string(),
            format!(
                "rolled back: event {} of key c was rolled back, so never to be delivered, but \
                 was delivered at t/0@4",
                ids[4]
            )
        );
    }

    #[test]
    fn a_message_whose_payload_differs_from_the_ledger_is_corrupt() {
        let (ledger, ids) = ledger();
        let log = vec![message("a", ids[0], 7, 0)];
        let text = ledger.check(&log).unwrap_err().to_string();
        assert!(text.starts_with("corrupt: the message at t/0@0"), "{text}");
        assert!(text.contains(r#""seq":7"#), "{text}");
    }

    #[test]
    fn events_held_behind_a_poison_event_must_not_arrive() {
        let (ledger, ids) = ledger();
        ledger.poisoned(ids[1]);
        assert_eq!(ledger.expected_deliveries(), 2);
        let good = vec![message("a", ids[0], 1, 0), message("b", ids[3], 1, 1)];
        assert_eq!(ledger.check(&good).unwrap().held, 2);
        let mut bad = good;
        bad.push(message("a", ids[2], 3, 2));
        assert_eq!(
            ledger.check(&bad).unwrap_err(),
            Violation::Held {
                event_id: ids[2],
                key: "a".into()
            }
        );
    }

    #[test]
    #[should_panic(expected = "lost: event")]
    fn assert_holds_panics_with_the_first_violation() {
        let (ledger, ids) = ledger();
        ledger.assert_holds(&[message("a", ids[0], 1, 0)], "wrong log", "kills 0");
    }
}
