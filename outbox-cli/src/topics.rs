//! `outbox topics ensure`: creates the topics that pending records name,
//! for brokers that do not create topics on first use.

use std::collections::BTreeSet;
use std::process::ExitCode;

use chrono::Utc;
use clap::{Args, Subcommand};
use outbox_engine::OutboxAdmin;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;

use crate::db::{self, StoreContext};
use crate::kafka::KafkaArgs;

/// `outbox topics ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum TopicsCommand {
    /// Creates the topics the outbox's pending records name (with the
    /// prefix the relay adds), and those given with --topic; topics that
    /// exist are left as they are.
    #[command(
        after_help = "Examples:\n  outbox topics ensure --brokers 127.0.0.1:9092\n  outbox topics ensure --partitions 12 --replication-factor 3 --topic-prefix prod."
    )]
    Ensure(EnsureArgs),
}

/// `outbox topics ensure`.
#[derive(Debug, Args)]
pub(crate) struct EnsureArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Partitions of each topic created.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    partitions: i32,
    /// Replicas of each partition of a topic created.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    replication_factor: i32,
    /// The prefix the relay puts before each record's topic (its
    /// --topic-prefix).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Another topic to create, as named on the broker (repeat for more).
    #[arg(long = "topic", value_name = "NAME")]
    topics: Vec<String>,
}

pub(crate) async fn run(
    url: &str,
    tables: &outbox_sea_orm::Tables,
    command: TopicsCommand,
) -> anyhow::Result<ExitCode> {
    let TopicsCommand::Ensure(args) = command;
    let store = db::store(url, tables, 2).await?;
    let stats = store
        .stats(Utc::now())
        .await
        .doing("cannot read the outbox's topics")?;
    let mut names: BTreeSet<String> = stats
        .topics
        .iter()
        .filter(|topic| topic.pending > 0)
        .map(|topic| format!("{}{}", args.topic_prefix, topic.topic))
        .collect();
    names.extend(args.topics.iter().cloned());
    if names.is_empty() {
        println!("no pending record names a topic: nothing to create (--topic NAME creates one)");
        return Ok(ExitCode::SUCCESS);
    }
    let config = args.kafka.config()?;
    let admin = args.kafka.admin(&config)?;
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                args.partitions,
                TopicReplication::Fixed(args.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(30)));
    let results = admin.create_topics(&new_topics, &options).await?;
    let mut failed = 0;
    for result in results {
        match result {
            Ok(name) => println!(
                "created {name} ({} partition(s), replication factor {})",
                args.partitions, args.replication_factor
            ),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => println!("exists  {name}"),
            Err((name, code)) => {
                eprintln!("error: cannot create topic {name}: {code}");
                failed += 1;
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
