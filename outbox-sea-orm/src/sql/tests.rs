//! Every statement's placeholders and values, and where the dialects differ.

use super::*;

/// Every hand-written statement of `sql`, with sample values.
fn every_statement(sql: &dyn Dialect) -> Vec<(&'static str, Statement)> {
    let now = Utc::now();
    let keys = ["k1".to_owned(), "k2".to_owned()];
    let mut statements = sql.explained(now);
    statements.extend([
        ("lease keys", sql.lease_keys(&["k1", "k2"], now)),
        ("lock free keys", sql.lock_free_keys(&keys)),
        ("delete keys", sql.delete_keys(&keys)),
        ("register missing keys", sql.register_missing_keys(now)),
        ("idle keys with records", sql.idle_keys_with_records()),
        ("ready now", sql.ready_now(&keys, now)),
        ("hold key", sql.hold_key(7)),
        ("check outbox", sql.check_outbox()),
        ("check keys", sql.check_keys()),
        ("leased keys", sql.leased_keys(&[1, 2, 3], "relay#1")),
        (
            "list dead of a topic and key",
            sql.list_dead(Some("t"), Some("k"), 5, 10),
        ),
        (
            "inbox record",
            sql.inbox_record("billing", uuid::Uuid::nil(), now),
        ),
        ("inbox purge", sql.inbox_purge(now, 100)),
    ]);
    statements
}

fn placeholders(backend: DbBackend, sql: &str) -> Vec<usize> {
    match backend {
        DbBackend::Postgres => sql
            .split('$')
            .skip(1)
            .map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().expect("a numbered placeholder")
            })
            .collect(),
        _ => (1..=sql.matches('?').count()).collect(),
    }
}

#[test]
fn every_statement_binds_one_value_per_placeholder_in_order() {
    let named = Tables::prefixed("billing_").unwrap();
    for backend in [DbBackend::Postgres, DbBackend::MySql, DbBackend::Sqlite] {
        for tables in [Tables::default(), named.clone()] {
            let sql = dialect(backend, &tables);
            for (name, statement) in every_statement(&*sql) {
                let values = statement.values.as_ref().map_or(0, |values| values.0.len());
                let found = placeholders(backend, &statement.sql);
                assert_eq!(
                    found,
                    (1..=values).collect::<Vec<_>>(),
                    "{backend:?} {name}:\n{}",
                    statement.sql
                );
                let others: &[&str] = if tables.is_default() {
                    &["billing_"]
                } else {
                    &["\"outbox", "`outbox", "\"inbox\"", "`inbox`", "idx_outbox"]
                };
                for other in others {
                    assert!(
                        !statement.sql.contains(other),
                        "{backend:?} {name} names another outbox's table ({other}):\n{}",
                        statement.sql
                    );
                }
            }
        }
    }
}

#[test]
fn the_dialects_differ_in_locks_hints_and_branches() {
    let now = Utc::now();
    let tables = Tables::default();
    let (pg, my, lite) = (
        dialect(DbBackend::Postgres, &tables),
        dialect(DbBackend::MySql, &tables),
        dialect(DbBackend::Sqlite, &tables),
    );
    let after = [("k1".to_owned(), 0), ("k2".to_owned(), 0)];
    let ready = pg.ready_keys(now, 100, &[]).sql;
    assert!(
        ready.ends_with("LIMIT $2\nFOR UPDATE SKIP LOCKED"),
        "{ready}"
    );
    let unkeyed = my.unkeyed(now, 100).sql;
    assert!(
        unkeyed.contains("FORCE INDEX (idx_outbox_keyless)"),
        "{unkeyed}"
    );
    assert!(
        unkeyed.ends_with("LIMIT ?\nFOR UPDATE SKIP LOCKED"),
        "{unkeyed}"
    );
    let ready = lite.ready_keys(now, 100, &[]).sql;
    assert!(ready.ends_with("LIMIT ?"), "{ready}");
    assert!(!lite.unkeyed(now, 1).sql.contains("FOR UPDATE"));
    assert!(
        lite.unkeyed(now, 1)
            .sql
            .contains("INDEXED BY idx_outbox_keyless")
    );
    let records = pg.key_records(&after, 10);
    assert!(
        records.sql.contains("CROSS JOIN LATERAL"),
        "{}",
        records.sql
    );
    assert_eq!(records.values.unwrap().0.len(), 2, "the keys, the limit");
    let records = my.key_records(&after, 10);
    assert!(records.sql.starts_with("(SELECT"), "{}", records.sql);
    assert_eq!(
        records.values.unwrap().0.len(),
        6,
        "key, after, limit per key"
    );
    let records = lite.key_records(&after, 10).sql;
    assert!(records.starts_with("SELECT * FROM (SELECT"), "{records}");
    assert!(my.key_heads(&["k".to_owned()]).sql.contains("GROUP BY"));
    assert!(lite.key_heads(&["k".to_owned()]).sql.contains("GROUP BY"));
    assert!(pg.key_heads(&["k".to_owned()]).sql.contains("LATERAL"));
    let upsert = my.upsert_keys(vec![("k".to_owned(), now.into())]);
    let upsert = DbBackend::MySql.build(&upsert).sql;
    assert!(upsert.contains("ON DUPLICATE KEY UPDATE"), "{upsert}");
    let upsert = pg.upsert_keys(vec![("k".to_owned(), now.into())]);
    let upsert = DbBackend::Postgres.build(&upsert).sql;
    assert!(
        upsert.contains("excluded.next_at") && upsert.contains("WHERE"),
        "{upsert}"
    );
    let schema = Tables::default().schema("accounts").unwrap();
    let ready = dialect(DbBackend::Postgres, &schema)
        .ready_keys(now, 1, &[])
        .sql;
    assert!(
        ready.contains("FROM \"accounts\".\"outbox_keys\""),
        "{ready}"
    );
}
