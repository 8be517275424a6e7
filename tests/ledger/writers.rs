//! Business transactions that enqueue events, and what they record in the
//! ledger.
//!
//! Each transaction changes the business tables (`ledger_accounts`: one row
//! per key with a version and a balance; `ledger_moves`: one row per event)
//! and enqueues one event per key it touches with
//! `outbox_sea_orm::enqueue_records`, then commits or, now and then, rolls
//! back on purpose. How the commit order of a key is known depends on the
//! [`CommitOrder`].

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outbox_engine::{NewRecord, OutboxEvent};
use sea_orm::sea_query::{Alias, ColumnDef, Expr, ExprTrait, Query, Table};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{Ledger, Wait};

const ACCOUNTS: &str = "ledger_accounts";
const MOVES: &str = "ledger_moves";

/// The event the writers enqueue: a move on an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = topic_of, key = key, event_type = "ledger.Moved")]
pub struct LedgerEvent {
    /// The topic it is published to (a scenario's own).
    pub topic: String,
    /// The account, and the ordering key.
    pub key: String,
    /// With [`CommitOrder::BusinessLock`], the account's version after the
    /// move (so commit order within the key); otherwise unique per writer.
    pub seq: u64,
    /// The writer that enqueued it.
    pub writer: u32,
    /// The amount moved.
    pub cents: i64,
    /// Padding, to make an event larger than the broker accepts.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pad: String,
}

impl LedgerEvent {
    /// Its event type (`outbox-event-type`).
    pub const TYPE: &'static str = "ledger.Moved";
}

fn topic_of(event: &LedgerEvent) -> &str {
    &event.topic
}

/// How the writers make the commit order of a key known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOrder {
    /// Each transaction first updates its accounts' rows (in key order),
    /// which locks them until it ends: the version it reads is its place in
    /// the key's commit order.
    BusinessLock,
    /// No business lock: only `enqueue`'s own lock on the key orders the
    /// transactions. Commits happen one at a time under a lock of the
    /// writers', which stamps them in order.
    CommitLock,
}

/// What the writers do.
#[derive(Debug, Clone)]
pub struct WriterPlan {
    /// The topic of the events.
    pub topic: String,
    /// Keys `key-0` .. `key-{keys - 1}` (see [`Writers::prepare`]).
    pub keys: usize,
    /// Concurrent writers.
    pub writers: u32,
    /// Transactions per writer; `None`: until [`Writers::finish`].
    pub transactions: Option<u32>,
    /// One transaction in this many is rolled back on purpose.
    pub rollback_one_in: u32,
    /// One transaction in this many touches two keys.
    pub two_keys_one_in: u32,
    /// How the commit order of a key is known.
    pub order: CommitOrder,
    /// How long a transaction waits, in milliseconds, between its enqueue
    /// and its commit: ids then commit out of order across keys.
    pub hold_ms: Range<u64>,
    /// One transaction in `.0` holds its keys for `.1` (longer than a
    /// relay's lease) between its enqueue and its commit, as a business
    /// transaction with a slow call in its middle does.
    pub long_hold: Option<(u32, Duration)>,
    /// The pause between two transactions of a writer.
    pub pause: Duration,
}

impl WriterPlan {
    /// Four writers over `keys` keys until finished, one transaction in
    /// six rolled back, one in four with two keys, a business lock, no hold
    /// but one transaction in 40 holding its keys 1.5 s (longer than the
    /// scenarios' leases), 5 ms between transactions.
    pub fn new(topic: &str, keys: usize) -> Self {
        Self {
            topic: topic.to_owned(),
            keys,
            writers: 4,
            transactions: None,
            rollback_one_in: 6,
            two_keys_one_in: 4,
            order: CommitOrder::BusinessLock,
            hold_ms: 0..1,
            long_hold: Some((40, Duration::from_millis(1500))),
            pause: Duration::from_millis(5),
        }
    }
}

/// Writers running as tasks.
#[derive(Debug)]
pub struct Writers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<u64>>,
}

/// A transaction others may wait for on its keys: its keys, when it began
/// and, once ended, when it ended.
type Blocker = (Vec<String>, Instant, Option<Instant>);

struct Shared {
    db: DatabaseConnection,
    ledger: Ledger,
    plan: WriterPlan,
    commit_lock: tokio::sync::Mutex<()>,
    commits: AtomicU64,
    /// The transactions that made others wait on their keys: the long
    /// ones and those that waited behind one (a writer of two keys that
    /// waits for one holds the other meanwhile): their keys, when they
    /// began and, once ended, when they ended.
    long: std::sync::Mutex<Vec<Blocker>>,
}

impl Writers {
    /// Creates the business tables on `db` and an account row per key.
    pub async fn prepare(db: &DatabaseConnection, keys: usize) {
        prepare(db, keys).await;
    }

    /// Starts the writers of `plan`.
    pub fn spawn(db: DatabaseConnection, ledger: Ledger, plan: WriterPlan) -> Self {
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            db,
            ledger,
            plan,
            commit_lock: tokio::sync::Mutex::new(()),
            commits: AtomicU64::new(0),
            long: std::sync::Mutex::default(),
        });
        let tasks = (0..shared.plan.writers)
            .map(|writer| tokio::spawn(write(Arc::clone(&shared), writer, stopped.clone())))
            .collect();
        Self { stop, tasks }
    }

    /// Stops the writers after their transaction in flight and waits for
    /// them; returns how many transactions failed on an error (not on
    /// purpose).
    pub async fn finish(self) -> u64 {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits for writers with a number of transactions to do them all.
    pub async fn wait(self) -> u64 {
        let mut errors = 0;
        for task in self.tasks {
            errors += task.await.expect("a writer panicked");
        }
        errors
    }
}

/// One writer's loop; returns how many transactions failed on an error.
async fn write(shared: Arc<Shared>, writer: u32, stopped: watch::Receiver<bool>) -> u64 {
    let plan = &shared.plan;
    let mut errors = 0;
    let mut n: u32 = 0;
    loop {
        if *stopped.borrow() || plan.transactions.is_some_and(|max| n >= max) {
            return errors;
        }
        n += 1;
        let rollback = rand::random_range(0..Ord::max(plan.rollback_one_in, 1)) == 0;
        let mut keys = vec![rand::random_range(0..plan.keys)];
        if plan.keys > 1 && rand::random_range(0..Ord::max(plan.two_keys_one_in, 1)) == 0 {
            let other = rand::random_range(0..plan.keys);
            if other != keys[0] {
                keys.push(other);
            }
        }
        keys.sort_unstable();
        let keys: Vec<String> = keys.iter().map(|k| format!("key-{k}")).collect();
        let sequence = u64::from(writer) * 1_000_000 + u64::from(n);
        if let Err(error) = transaction(&shared, writer, sequence, &keys, rollback).await {
            errors += 1;
            tracing::debug!(writer, %error, "a writer's transaction failed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(plan.pause).await;
    }
}

/// One business transaction: what it wrote is in the ledger whatever
/// happens (committed, rolled back, or uncertain when the commit failed).
async fn transaction(
    shared: &Shared,
    writer: u32,
    sequence: u64,
    keys: &[String],
    rollback: bool,
) -> Result<(), DbErr> {
    let plan = &shared.plan;
    let long = plan
        .long_hold
        .filter(|(one_in, _)| rand::random_range(0..Ord::max(*one_in, 1)) == 0)
        .map(|(_, hold)| hold);
    let started = Instant::now();
    let slot = long.map(|_| {
        let mut all = shared.long.lock().expect("long transactions");
        all.push((keys.to_vec(), started, None));
        all.len() - 1
    });
    let result = transaction_body(shared, writer, sequence, keys, rollback, long).await;
    let ended = Instant::now();
    let wait = {
        let mut all = shared.long.lock().expect("long transactions");
        match slot {
            Some(slot) => {
                all[slot].2 = Some(ended);
                Wait::Long
            }
            // Behind a long transaction when one held a key of this one
            // while this one ran, or one that waited behind one did.
            None if all.iter().any(|(held, began, end)| {
                *began < ended
                    && end.is_none_or(|end| end > started)
                    && held.iter().any(|key| keys.contains(key))
            }) =>
            {
                all.push((keys.to_vec(), started, Some(ended)));
                Wait::Behind
            }
            None => Wait::Other,
        }
    };
    shared.ledger.took(ended - started, wait);
    result
}

async fn transaction_body(
    shared: &Shared,
    writer: u32,
    sequence: u64,
    keys: &[String],
    rollback: bool,
    long: Option<Duration>,
) -> Result<(), DbErr> {
    let plan = &shared.plan;
    let txn = shared.db.begin().await?;
    let mut events: Vec<(Uuid, String, u64)> = Vec::new();
    let written = async {
        let mut records = Vec::new();
        for key in keys {
            let cents = rand::random_range(1..1000);
            let seq = match plan.order {
                CommitOrder::BusinessLock => bump(&txn, key, cents).await?,
                CommitOrder::CommitLock => sequence,
            };
            let event = LedgerEvent {
                topic: plan.topic.clone(),
                key: key.clone(),
                seq,
                writer,
                cents,
                pad: String::new(),
            };
            let record = NewRecord::from_event(&event).expect("a ledger event serializes");
            insert_move(&txn, record.event_id, key, seq, cents).await?;
            events.push((record.event_id, key.clone(), seq));
            records.push(record);
        }
        outbox_sea_orm::enqueue_records(&txn, &records)
            .await
            .map_err(|error| DbErr::Custom(outbox_engine::error_chain(&error)))?;
        let hold = rand::random_range(
            plan.hold_ms.start..Ord::max(plan.hold_ms.end, plan.hold_ms.start + 1),
        );
        match long {
            Some(long) => tokio::time::sleep(long).await,
            None if hold > 0 => tokio::time::sleep(Duration::from_millis(hold)).await,
            None => {}
        }
        Ok::<_, DbErr>(())
    }
    .await;
    if let Err(error) = written {
        drop(txn);
        for (id, _, _) in &events {
            shared.ledger.rolled_back(*id);
        }
        return Err(error);
    }
    if rollback {
        let result = txn.rollback().await;
        // Rolled back either way: a transaction that is not committed.
        for (id, _, _) in &events {
            shared.ledger.rolled_back(*id);
        }
        return result;
    }
    let (result, stamp) = match plan.order {
        CommitOrder::BusinessLock => (txn.commit().await, None),
        CommitOrder::CommitLock => {
            let _turn = shared.commit_lock.lock().await;
            let stamp = shared.commits.fetch_add(1, Ordering::SeqCst);
            (txn.commit().await, Some(stamp))
        }
    };
    for (id, key, seq) in &events {
        let stamp = stamp.unwrap_or(*seq);
        match &result {
            Ok(()) => shared.ledger.committed(*id, key, stamp, *seq),
            Err(_) => shared.ledger.uncertain(*id, key, stamp, *seq),
        }
    }
    result
}

/// Updates the account of `key` (locking its row until the transaction
/// ends) and returns its new version.
async fn bump(txn: &DatabaseTransaction, key: &str, cents: i64) -> Result<u64, DbErr> {
    let update = Query::update()
        .table(Alias::new(ACCOUNTS))
        .value(
            Alias::new("version"),
            Expr::col(Alias::new("version")).add(1),
        )
        .value(
            Alias::new("balance"),
            Expr::col(Alias::new("balance")).add(cents),
        )
        .and_where(Expr::col(Alias::new("account")).eq(key))
        .to_owned();
    let changed = txn.execute(&update).await?.rows_affected();
    assert_eq!(
        changed, 1,
        "no account row for {key}: call Writers::prepare"
    );
    let select = Query::select()
        .column(Alias::new("version"))
        .from(Alias::new(ACCOUNTS))
        .and_where(Expr::col(Alias::new("account")).eq(key))
        .to_owned();
    let row = txn
        .query_one(&select)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("account {key}")))?;
    let version: i64 = row.try_get("", "version")?;
    Ok(u64::try_from(version).expect("versions count up from 0"))
}

async fn insert_move(
    txn: &DatabaseTransaction,
    event_id: Uuid,
    key: &str,
    seq: u64,
    cents: i64,
) -> Result<(), DbErr> {
    let insert = Query::insert()
        .into_table(Alias::new(MOVES))
        .columns([
            Alias::new("event_id"),
            Alias::new("account"),
            Alias::new("seq"),
            Alias::new("cents"),
        ])
        .values_panic([
            event_id.to_string().into(),
            key.into(),
            i64::try_from(seq).expect("a small seq").into(),
            cents.into(),
        ])
        .to_owned();
    txn.execute(&insert).await?;
    Ok(())
}

/// Whether the transaction that enqueued `event_id` committed: its row of
/// `ledger_moves` exists.
pub(super) async fn move_exists(db: &DatabaseConnection, event_id: Uuid) -> bool {
    let select = Query::select()
        .column(Alias::new("event_id"))
        .from(Alias::new(MOVES))
        .and_where(Expr::col(Alias::new("event_id")).eq(event_id.to_string()))
        .to_owned();
    db.query_one(&select)
        .await
        .expect("read ledger_moves")
        .is_some()
}

pub(super) async fn prepare(db: &DatabaseConnection, keys: usize) {
    let accounts = Table::create()
        .table(Alias::new(ACCOUNTS))
        .if_not_exists()
        .col(
            ColumnDef::new(Alias::new("account"))
                .string_len(100)
                .not_null()
                .primary_key(),
        )
        .col(
            ColumnDef::new(Alias::new("version"))
                .big_integer()
                .not_null(),
        )
        .col(
            ColumnDef::new(Alias::new("balance"))
                .big_integer()
                .not_null(),
        )
        .to_owned();
    let moves = Table::create()
        .table(Alias::new(MOVES))
        .if_not_exists()
        .col(
            ColumnDef::new(Alias::new("event_id"))
                .string_len(36)
                .not_null()
                .primary_key(),
        )
        .col(
            ColumnDef::new(Alias::new("account"))
                .string_len(100)
                .not_null(),
        )
        .col(ColumnDef::new(Alias::new("seq")).big_integer().not_null())
        .col(ColumnDef::new(Alias::new("cents")).big_integer().not_null())
        .to_owned();
    db.execute(&accounts).await.expect("create ledger_accounts");
    db.execute(&moves).await.expect("create ledger_moves");
    let mut insert = Query::insert();
    insert.into_table(Alias::new(ACCOUNTS)).columns([
        Alias::new("account"),
        Alias::new("version"),
        Alias::new("balance"),
    ]);
    for key in 0..keys {
        insert.values_panic([format!("key-{key}").into(), 0i64.into(), 0i64.into()]);
    }
    db.execute(&insert).await.expect("seed ledger_accounts");
}

/// Commits one event of `key` by hand (a poison event, say) in a business
/// transaction of its own, as [`CommitOrder::BusinessLock`] writers do, and
/// records it in the ledger; returns its id.
pub(super) async fn commit_one(
    db: &DatabaseConnection,
    ledger: &Ledger,
    topic: &str,
    key: &str,
    pad: usize,
) -> Uuid {
    let txn = db.begin().await.expect("begin");
    let cents = 1;
    let seq = bump(&txn, key, cents).await.expect("bump the account");
    let event = LedgerEvent {
        topic: topic.to_owned(),
        key: key.to_owned(),
        seq,
        writer: u32::MAX,
        cents,
        pad: "x".repeat(pad),
    };
    let record = NewRecord::from_event(&event).expect("a ledger event serializes");
    insert_move(&txn, record.event_id, key, seq, cents)
        .await
        .expect("insert the move");
    outbox_sea_orm::enqueue_records(&txn, std::slice::from_ref(&record))
        .await
        .expect("enqueue");
    txn.commit().await.expect("commit");
    ledger.committed(record.event_id, key, seq, seq);
    record.event_id
}
