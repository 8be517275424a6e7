//! SeaORM's own ways of writing: an event enqueued from an
//! `ActiveModelBehavior` hook, and inside `db.transaction(..)` whose error
//! type is `DbErr`.

#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::time::Duration;

use chrono::Utc;
use common::TestDb;
use outbox_engine::{ClaimRequest, OutboxAdmin, OutboxEvent, OutboxStore};
use sea_orm::{ActiveModelTrait, DbErr, Set, TransactionTrait};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "invoices", key = invoice_id)]
struct InvoiceSaved {
    invoice_id: i64,
    cents: i64,
}

/// Serializes to no JSON: map keys must be strings.
#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "invoices")]
struct Broken {
    cells: std::collections::HashMap<(i32, i32), i32>,
}

#[allow(unreachable_pub)]
mod invoice {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "invoices")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        pub cents: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[async_trait::async_trait]
    impl ActiveModelBehavior for ActiveModel {
        async fn after_save<C: ConnectionTrait>(
            model: Model,
            db: &C,
            _insert: bool,
        ) -> Result<Model, DbErr> {
            let event = super::InvoiceSaved {
                invoice_id: model.id,
                cents: model.cents,
            };
            outbox_sea_orm::enqueue_in(db, &event).await?;
            Ok(model)
        }
    }
}

backend_tests!(
    a_hook_enqueues_in_the_models_transaction,
    a_hook_on_a_pool_leaves_a_claimable_event,
    enqueue_works_inside_a_transaction_closure_with_dberr,
);

async fn create_invoices(db: &TestDb) {
    db.exec("CREATE TABLE invoices (id BIGINT NOT NULL PRIMARY KEY, cents BIGINT NOT NULL)")
        .await;
}

fn claim(owner: &str) -> ClaimRequest {
    ClaimRequest {
        owner: owner.to_owned(),
        limit: 100,
        lease: Duration::from_secs(30),
        dead_holds_key: true,
    }
}

async fn a_hook_enqueues_in_the_models_transaction(db: TestDb) {
    create_invoices(&db).await;
    let store = db.store();

    let txn = db.db.begin().await.unwrap();
    invoice::ActiveModel {
        id: Set(1),
        cents: Set(100),
    }
    .insert(&txn)
    .await
    .unwrap();
    txn.rollback().await.unwrap();
    assert_eq!(store.stats(Utc::now()).await.unwrap().pending, 0);

    let txn = db.db.begin().await.unwrap();
    invoice::ActiveModel {
        id: Set(2),
        cents: Set(200),
    }
    .insert(&txn)
    .await
    .unwrap();
    // (In-memory SQLite has one connection, which the transaction holds.)
    if db.backend != common::Backend::SqliteMemory {
        assert_eq!(
            store.stats(Utc::now()).await.unwrap().pending,
            0,
            "not visible before the commit"
        );
    }
    txn.commit().await.unwrap();
    let claimed = store.claim(&claim("a")).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].key.as_deref(), Some("2"));
    assert_eq!(claimed[0].payload, r#"{"invoice_id":2,"cents":200}"#);
}

async fn a_hook_on_a_pool_leaves_a_claimable_event(db: TestDb) {
    create_invoices(&db).await;
    let store = db.store();
    for id in 1..=3 {
        invoice::ActiveModel {
            id: Set(id),
            cents: Set(id * 10),
        }
        .insert(&db.db)
        .await
        .unwrap();
    }
    let claimed = store.claim(&claim("a")).await.unwrap();
    let keys: Vec<Option<String>> = claimed.iter().map(|r| r.key.clone()).collect();
    assert_eq!(
        keys,
        vec![Some("1".into()), Some("2".into()), Some("3".into())]
    );
}

async fn enqueue_works_inside_a_transaction_closure_with_dberr(db: TestDb) {
    let store = db.store();
    db.db
        .transaction::<_, (), DbErr>(|txn| {
            Box::pin(async move {
                outbox_sea_orm::enqueue(
                    txn,
                    &InvoiceSaved {
                        invoice_id: 9,
                        cents: 1,
                    },
                )
                .await?;
                Ok(())
            })
        })
        .await
        .unwrap();
    assert_eq!(store.stats(Utc::now()).await.unwrap().pending, 1);

    // A bad event fails the closure with SeaORM's error, saying why, and
    // rolls the transaction back.
    let failed = db
        .db
        .transaction::<_, (), DbErr>(|txn| {
            Box::pin(async move {
                outbox_sea_orm::enqueue(
                    txn,
                    &InvoiceSaved {
                        invoice_id: 10,
                        cents: 2,
                    },
                )
                .await?;
                outbox_sea_orm::enqueue(
                    txn,
                    &Broken {
                        cells: [((1, 2), 3)].into(),
                    },
                )
                .await?;
                Ok(())
            })
        })
        .await
        .unwrap_err();
    let message = failed.to_string();
    assert!(
        message.contains("serialize") || message.contains("JSON"),
        "{message}"
    );
    assert_eq!(store.stats(Utc::now()).await.unwrap().pending, 1);
}
