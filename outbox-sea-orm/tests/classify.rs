//! Lock conflicts on a real server come back as retriable errors: a
//! deadlock between two transactions that enqueue the same two events in
//! opposite orders, and a lock wait that runs out of time.

#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use common::{Backend, TestDb};
use outbox_engine::NewRecord;
use outbox_engine::testkit::record;
use outbox_sea_orm::{Error, enqueue_records};
use sea_orm::{ConnectionTrait, DbErr, RuntimeErr, TransactionTrait};

/// The SQLSTATE under an error, to say which failure a test got.
fn sqlstate(error: &Error) -> Option<String> {
    match error.db_err()? {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            Some(e.as_database_error()?.code()?.into_owned())
        }
        _ => None,
    }
}

/// Two transactions each enqueue one event, then the other's: each waits
/// for the other to finish with the event id it holds, and the server
/// ends one of them. Returns the victim's error.
async fn deadlock(db: &TestDb) -> Error {
    let (a, b) = (record(Some("a"), 1), record(Some("b"), 2));
    let first = db.db.begin().await.unwrap();
    let second = db.db.begin().await.unwrap();
    enqueue_records(&first, std::slice::from_ref(&a))
        .await
        .unwrap();
    enqueue_records(&second, std::slice::from_ref(&b))
        .await
        .unwrap();
    let (one, two) = tokio::join!(
        enqueue_records(&first, std::slice::from_ref(&b)),
        enqueue_records(&second, std::slice::from_ref(&a)),
    );
    first.rollback().await.ok();
    second.rollback().await.ok();
    let mut errors: Vec<Error> = [one, two].into_iter().filter_map(Result::err).collect();
    assert_eq!(
        errors.len(),
        1,
        "one transaction is the deadlock's victim, the other goes on: {errors:?}"
    );
    errors.remove(0)
}

/// One transaction enqueues an event, and another, after `limit_wait`,
/// the same one: it waits for the first until its lock wait times out.
async fn lock_wait_timeout(db: &TestDb, limit_wait: &str) -> Error {
    let a: NewRecord = record(Some("a"), 1);
    let first = db.db.begin().await.unwrap();
    let second = db.db.begin().await.unwrap();
    enqueue_records(&first, std::slice::from_ref(&a))
        .await
        .unwrap();
    second.execute_unprepared(limit_wait).await.unwrap();
    let error = enqueue_records(&second, std::slice::from_ref(&a))
        .await
        .expect_err("the second transaction waits for the first's event id");
    first.rollback().await.ok();
    second.rollback().await.ok();
    error
}

fn assert_retriable(error: &Error, expected_sqlstate: &str) {
    assert!(matches!(error, Error::Database { .. }), "{error:?}");
    assert_eq!(
        sqlstate(error).as_deref(),
        Some(expected_sqlstate),
        "{error:?}"
    );
    assert!(
        error.is_retriable(),
        "retrying can succeed once the other transaction is gone: {error:?}"
    );
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadlock_is_a_retriable_error() {
        let Some(db) = TestDb::new(Backend::Postgres).await else {
            return;
        };
        // deadlock_detected
        assert_retriable(&deadlock(&db).await, "40P01");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_timeout_is_a_retriable_error() {
        let Some(db) = TestDb::new(Backend::Postgres).await else {
            return;
        };
        // lock_not_available
        let error = lock_wait_timeout(&db, "SET LOCAL lock_timeout = '100ms'").await;
        assert_retriable(&error, "55P03");
    }
}

mod mysql {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadlock_is_a_retriable_error() {
        let Some(db) = TestDb::new(Backend::MySql).await else {
            return;
        };
        // ER_LOCK_DEADLOCK, 1213
        assert_retriable(&deadlock(&db).await, "40001");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_wait_timeout_is_a_retriable_error() {
        let Some(db) = TestDb::new(Backend::MySql).await else {
            return;
        };
        // ER_LOCK_WAIT_TIMEOUT, 1205, under the generic SQLSTATE: the
        // error number tells it apart. One second is the least it takes.
        let error = lock_wait_timeout(&db, "SET SESSION innodb_lock_wait_timeout = 1").await;
        assert_retriable(&error, "HY000");
    }
}
