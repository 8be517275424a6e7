//! `outbox status`, `outbox dead ...` and `outbox purge`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use clap::{Args, Subcommand};
use outbox_engine::{DeadFilter, OutboxAdmin, OutboxRecord, OutboxStats, RecordRef, Status};
use outbox_sea_orm::SeaOrmStore;
use serde_json::{Value, json};

use crate::db::{self, StoreContext};
use crate::text;

/// `outbox status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `outbox dead ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum DeadCommand {
    /// Lists dead records, oldest id first.
    #[command(
        after_help = "Examples:\n  outbox dead list\n  outbox dead list --topic orders --key 42 --json"
    )]
    List(ListArgs),
    /// Shows one record whole: payload, headers, last error, attempts.
    #[command(
        after_help = "Examples:\n  outbox dead show 42\n  outbox dead show 0190b6e4-7a1c-7c3e-9f00-2a4be3e1c0de"
    )]
    Show(ShowArgs),
    /// Moves dead records back to pending, to be published again (first of
    /// their key).
    #[command(
        after_help = "Examples:\n  outbox dead requeue 42 43\n  outbox dead requeue --all --topic orders"
    )]
    Requeue(RequeueArgs),
    /// Gives up on dead records: they stay in the table as dead, with the
    /// discard noted, and their keys flow again.
    #[command(after_help = "Examples:\n  outbox dead discard 42")]
    Discard(DiscardArgs),
}

/// `outbox dead list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only records of this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only records of this key.
    #[arg(long)]
    key: Option<String>,
    /// The most records to list.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// `outbox dead show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The record's id or event id.
    #[arg(value_name = "ID|EVENT-ID")]
    record: RecordRef,
    /// Print a JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `outbox dead requeue`.
#[derive(Debug, Args)]
pub(crate) struct RequeueArgs {
    /// The records' ids or event ids.
    #[arg(
        value_name = "ID|EVENT-ID",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    records: Vec<RecordRef>,
    /// Every dead record (of --topic and --key, when given).
    #[arg(long)]
    all: bool,
    /// With --all: only records of this topic.
    #[arg(long, requires = "all")]
    topic: Option<String>,
    /// With --all: only records of this key.
    #[arg(long, requires = "all")]
    key: Option<String>,
}

/// `outbox dead discard`.
#[derive(Debug, Args)]
pub(crate) struct DiscardArgs {
    /// The records' ids or event ids.
    #[arg(value_name = "ID|EVENT-ID", required = true)]
    records: Vec<RecordRef>,
}

/// `outbox purge`.
#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// Delete records published longer ago than this (7d, 12h, 30m).
    #[arg(long, value_name = "PERIOD", value_parser = db::period)]
    older_than: Duration,
    /// Records deleted per statement (each its own short transaction).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batch_size: u64,
}

pub(crate) async fn status(
    url: &str,
    tables: &outbox_sea_orm::Tables,
    args: &StatusArgs,
) -> anyhow::Result<ExitCode> {
    let store = db::store(url, tables, 2).await?;
    let now = Utc::now();
    let stats = store
        .stats(now)
        .await
        .doing("cannot count the outbox's records")?;
    if args.json {
        println!("{}", status_json(&stats, now));
        return Ok(ExitCode::SUCCESS);
    }
    let oldest = match stats.oldest_pending_at {
        Some(_) => format!(
            ", the oldest waiting {}",
            text::age(stats.oldest_pending_age(now))
        ),
        None => String::new(),
    };
    println!("outbox at {}", outbox_sea_orm::redact_url(url));
    println!(
        "pending    {}{oldest} ({} leased by a relay, {} held behind dead records)",
        stats.pending, stats.leased, stats.held
    );
    println!("published  {} (not yet purged)", stats.published);
    println!("dead       {}", stats.dead);
    if !stats.topics.is_empty() {
        let rows: Vec<Vec<String>> = stats
            .topics
            .iter()
            .map(|topic| {
                vec![
                    topic.topic.clone(),
                    topic.pending.to_string(),
                    topic.dead.to_string(),
                    match topic.oldest_pending_at {
                        Some(_) => text::age(topic.oldest_pending_age(now)),
                        None => "-".to_owned(),
                    },
                ]
            })
            .collect();
        println!();
        println!(
            "{}",
            text::table(&["TOPIC", "PENDING", "DEAD", "OLDEST PENDING"], &rows)
        );
    }
    if stats.dead > 0 {
        println!();
        println!("see them with `outbox dead list`; requeue with `outbox dead requeue`");
    }
    Ok(ExitCode::SUCCESS)
}

fn status_json(stats: &OutboxStats, now: DateTime<Utc>) -> Value {
    let topics: Vec<Value> = stats
        .topics
        .iter()
        .map(|topic| {
            json!({
                "topic": topic.topic,
                "pending": topic.pending,
                "dead": topic.dead,
                "oldest_pending_at": topic.oldest_pending_at,
                "oldest_pending_age_seconds": topic.oldest_pending_age(now).as_secs_f64(),
            })
        })
        .collect();
    json!({
        "pending": stats.pending,
        "leased": stats.leased,
        "held": stats.held,
        "published": stats.published,
        "dead": stats.dead,
        "oldest_pending_at": stats.oldest_pending_at,
        "oldest_pending_age_seconds": stats.oldest_pending_age(now).as_secs_f64(),
        "topics": topics,
    })
}

pub(crate) async fn dead(
    url: &str,
    tables: &outbox_sea_orm::Tables,
    command: DeadCommand,
) -> anyhow::Result<ExitCode> {
    let store = db::store(url, tables, 2).await?;
    match command {
        DeadCommand::List(args) => list(&store, &args).await,
        DeadCommand::Show(args) => show(&store, &args).await,
        DeadCommand::Requeue(args) => requeue(&store, &args).await,
        DeadCommand::Discard(args) => discard(&store, &args).await,
    }
}

async fn list(store: &SeaOrmStore, args: &ListArgs) -> anyhow::Result<ExitCode> {
    let filter = DeadFilter {
        topic: args.topic.clone(),
        key: args.key.clone(),
    };
    let mut records: Vec<OutboxRecord> = Vec::new();
    let mut after = None;
    while records.len() < args.limit {
        let page = (args.limit - records.len()).min(500);
        let batch = store
            .list_dead(&filter, after, page)
            .await
            .doing("cannot list dead records")?;
        after = batch.last().map(|record| record.id);
        let done = batch.len() < page;
        records.extend(batch);
        if done {
            break;
        }
    }
    if args.json {
        let list: Vec<Value> = records.iter().map(record_json).collect();
        println!("{}", Value::Array(list));
        return Ok(ExitCode::SUCCESS);
    }
    if records.is_empty() {
        println!("no dead records{}", describe(&filter));
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|record| {
            vec![
                record.id.to_string(),
                record.event_id.to_string(),
                record.topic.clone(),
                record.key.clone().unwrap_or_else(|| "-".to_owned()),
                record.event_type.clone(),
                record.attempts.to_string(),
                text::cut(record.last_error.as_deref().unwrap_or("-"), 60),
            ]
        })
        .collect();
    println!(
        "{}",
        text::table(
            &[
                "ID",
                "EVENT ID",
                "TOPIC",
                "KEY",
                "TYPE",
                "ATTEMPTS",
                "LAST ERROR"
            ],
            &rows
        )
    );
    if records.len() == args.limit {
        println!("(the first {}; --limit N for more)", args.limit);
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(filter: &DeadFilter) -> String {
    match (&filter.topic, &filter.key) {
        (None, None) => String::new(),
        (Some(topic), None) => format!(" of topic {topic}"),
        (None, Some(key)) => format!(" of key {key}"),
        (Some(topic), Some(key)) => format!(" of topic {topic} and key {key}"),
    }
}

async fn show(store: &SeaOrmStore, args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let record = find(store, args.record).await?;
    if args.json {
        println!("{}", record_json(&record));
        return Ok(ExitCode::SUCCESS);
    }
    println!("id              {}", record.id);
    println!("event id        {}", record.event_id);
    println!("status          {}", record.status.as_str());
    println!("topic           {}", record.topic);
    println!(
        "key             {}",
        record.key.as_deref().unwrap_or("(none)")
    );
    println!(
        "event type      {} (schema version {})",
        record.event_type, record.schema_version
    );
    println!("attempts        {}", record.attempts);
    println!("created at      {}", record.created_at);
    println!("available at    {}", record.available_at);
    println!(
        "last error      {}",
        record.last_error.as_deref().unwrap_or("(none)")
    );
    println!("headers");
    for (name, value) in &record.headers {
        println!("  {name}: {value}");
    }
    println!("payload");
    let payload = serde_json::from_str::<Value>(&record.payload)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or_else(|| record.payload.clone());
    for line in payload.lines() {
        println!("  {line}");
    }
    Ok(ExitCode::SUCCESS)
}

fn record_json(record: &OutboxRecord) -> Value {
    // The payload as JSON when it is (it should be), else as stored.
    let payload = serde_json::from_str::<Value>(&record.payload)
        .unwrap_or_else(|_| Value::String(record.payload.clone()));
    json!({
        "id": record.id,
        "event_id": record.event_id,
        "status": record.status.as_str(),
        "topic": record.topic,
        "key": record.key,
        "event_type": record.event_type,
        "schema_version": record.schema_version,
        "attempts": record.attempts,
        "last_error": record.last_error,
        "created_at": record.created_at,
        "available_at": record.available_at,
        "headers": record.headers,
        "payload": payload,
    })
}

async fn find(store: &SeaOrmStore, record: RecordRef) -> anyhow::Result<OutboxRecord> {
    store
        .find(record)
        .await
        .doing("cannot read the outbox")?
        .with_context(|| {
            format!("no outbox record has {record} (published records may have been purged)")
        })
}

/// A dead record named on the command line, or why it cannot be acted on.
async fn find_dead(store: &SeaOrmStore, record: RecordRef) -> anyhow::Result<OutboxRecord> {
    let found = find(store, record).await?;
    if found.status != Status::Dead {
        anyhow::bail!(
            "record {} ({record}) is {}, not dead",
            found.id,
            found.status.as_str()
        );
    }
    Ok(found)
}

async fn requeue(store: &SeaOrmStore, args: &RequeueArgs) -> anyhow::Result<ExitCode> {
    if args.all {
        let filter = DeadFilter {
            topic: args.topic.clone(),
            key: args.key.clone(),
        };
        let count = store
            .requeue_all(&filter)
            .await
            .doing("cannot requeue dead records")?;
        println!("requeued {count} dead record(s){}", describe(&filter));
        return Ok(ExitCode::SUCCESS);
    }
    each(&args.records, async |record| {
        let found = find_dead(store, record).await?;
        if store
            .requeue(found.id)
            .await
            .doing("cannot requeue a dead record")?
        {
            println!("requeued {} (event id {})", found.id, found.event_id);
            Ok(())
        } else {
            anyhow::bail!("record {} is no longer dead", found.id)
        }
    })
    .await
}

async fn discard(store: &SeaOrmStore, args: &DiscardArgs) -> anyhow::Result<ExitCode> {
    each(&args.records, async |record| {
        let found = find_dead(store, record).await?;
        if store
            .discard(found.id)
            .await
            .doing("cannot discard a dead record")?
        {
            println!(
                "discarded {} (event id {}): it stays dead, and key {} flows again",
                found.id,
                found.event_id,
                found.key.as_deref().unwrap_or_default()
            );
        } else {
            println!(
                "{} holds no key (already discarded, or dead records do not hold keys); left as it is",
                found.id
            );
        }
        Ok(())
    })
    .await
}

/// Runs `action` for each record, reporting each failure on its own line;
/// fails when any did.
async fn each(
    records: &[RecordRef],
    action: impl AsyncFn(RecordRef) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let mut failed = 0;
    for &record in records {
        if let Err(error) = action(record).await {
            eprintln!("error: {error:#}");
            failed += 1;
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(crate) async fn purge(
    url: &str,
    tables: &outbox_sea_orm::Tables,
    args: &PurgeArgs,
) -> anyhow::Result<ExitCode> {
    let store = db::store(url, tables, 2).await?;
    let before = Utc::now() - TimeDelta::from_std(args.older_than).unwrap_or(TimeDelta::MAX);
    let batch = usize::try_from(args.batch_size).unwrap_or(usize::MAX);
    let progress = std::io::stderr().is_terminal();
    let mut total = 0;
    loop {
        let deleted = store
            .purge_published_batch(before, batch)
            .await
            .doing("cannot purge published records")?;
        total += deleted;
        if progress {
            eprint!("\rpurged {total} published record(s)…");
            std::io::stderr().flush().ok();
        }
        if deleted < batch as u64 {
            break;
        }
    }
    if progress {
        eprintln!();
    }
    store
        .tidy(batch)
        .await
        .doing("purged, but cannot tidy the outbox's keys")?;
    println!(
        "purged {total} record(s) published before {} (older than {})",
        before.format("%Y-%m-%d %H:%M:%S UTC"),
        humantime::format_duration(args.older_than)
    );
    Ok(ExitCode::SUCCESS)
}
