//! Publishing throughput of `KafkaSink`, batch by batch as the relay calls it.
//!
//! ```text
//! cargo run --release -p outbox-rdkafka --example publish_bench -- \
//!     --records 100000 --batch 500 [--partitions 6] [--brokers host:port] \
//!     [--rtt-ms N] [--set property=value]...
//! ```
//!
//! Without `--brokers` it runs against librdkafka's in-process mock cluster,
//! whose brokers answer after `--rtt-ms` (default 0). Both ways of keeping
//! per-key order are measured, each on hot keys (10 keys: a batch of 500
//! holds about 50 records per key) and on many keys (1,000), each variant on
//! a fresh topic:
//!
//! - pipelined, the default (`enable.gapless.guarantee=true`): a key's
//!   records go to the producer together;
//! - one record at a time per key (`enable.gapless.guarantee=false`): each
//!   once the previous one is acknowledged, a round trip per record of a
//!   key.
//!
//! Records that are not delivered are published again, as the relay would.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use outbox_engine::{NewRecord, OutboxRecord, Outcome, Sink};
use outbox_rdkafka::KafkaSink;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, outbox_engine::OutboxEvent)]
#[outbox(topic = "bench", key = account, event_type = "bench.Transfer")]
struct Transfer {
    account: String,
    amount_cents: i64,
    memo: String,
}

struct Args {
    records: usize,
    batch: usize,
    partitions: i32,
    brokers: Option<String>,
    /// The mock brokers' round trip time.
    rtt: Duration,
    /// Extra producer properties, `key=value`.
    set: Vec<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        records: 100_000,
        batch: 500,
        partitions: 6,
        brokers: None,
        rtt: Duration::ZERO,
        set: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--records" => args.records = parse(&flag, &value()?)?,
            "--batch" => args.batch = parse(&flag, &value()?)?,
            "--partitions" => args.partitions = parse(&flag, &value()?)?,
            "--brokers" => args.brokers = Some(value()?),
            "--rtt-ms" => args.rtt = Duration::from_millis(parse(&flag, &value()?)?),
            "--set" => {
                let pair = value()?;
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("--set takes `property=value`, not `{pair}`"))?;
                args.set.push((key.to_owned(), value.to_owned()));
            }
            "--help" | "-h" => {
                return Err(
                    "usage: publish_bench [--records N] [--batch N] [--partitions N] \
                            [--brokers host:port] [--rtt-ms N] [--set property=value]..."
                        .into(),
                );
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    if args.records == 0 || args.batch == 0 || args.partitions <= 0 {
        return Err("--records, --batch and --partitions must be positive".into());
    }
    Ok(args)
}

fn parse<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} takes a number, not `{value}`"))
}

/// The key counts measured: hot keys, and many keys.
const KEY_COUNTS: [usize; 2] = [10, 1_000];

/// `count` records over `keys` keys, interleaved as a relay claims them.
fn records(topic: &str, count: usize, keys: usize) -> Vec<OutboxRecord> {
    (0..count)
        .map(|i| {
            let event = Transfer {
                account: format!("account-{}", i % keys),
                amount_cents: i as i64,
                memo: "monthly rent, paid on time".into(),
            };
            let mut new = NewRecord::from_event(&event).expect("serializes");
            new.topic = topic.to_owned();
            OutboxRecord::from_new(i as i64 + 1, new)
        })
        .collect()
}

enum Cluster {
    Mock(MockCluster<'static, rdkafka::producer::DefaultProducerContext>),
    Real(AdminClient<DefaultClientContext>),
}

impl Cluster {
    async fn create_topic(&self, name: &str, partitions: i32) -> Result<(), String> {
        match self {
            Cluster::Mock(mock) => mock
                .create_topic(name, partitions, 1)
                .map_err(|e| format!("creating topic {name}: {e}")),
            Cluster::Real(admin) => {
                let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
                let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
                let results = admin
                    .create_topics([&topic], &options)
                    .await
                    .map_err(|e| format!("creating topic {name}: {e}"))?;
                for result in results {
                    result.map_err(|(t, code)| format!("creating topic {t}: {code}"))?;
                }
                Ok(())
            }
        }
    }
}

struct Run {
    elapsed: Duration,
    calls: usize,
    republished: usize,
}

async fn run(
    sink: &KafkaSink,
    mut pending: Vec<OutboxRecord>,
    batch: usize,
) -> Result<Run, String> {
    let started = Instant::now();
    let mut calls = 0;
    let mut republished = 0;
    while !pending.is_empty() {
        let mut left = Vec::new();
        for chunk in pending.chunks(batch) {
            calls += 1;
            let outcomes = sink.publish(chunk).await;
            for (record, outcome) in chunk.iter().zip(outcomes) {
                match outcome {
                    Outcome::Delivered => {}
                    Outcome::Retriable(_) => left.push(record.clone()),
                    Outcome::Permanent(error) => {
                        return Err(format!("record {} failed for good: {error}", record.id));
                    }
                }
            }
        }
        republished += left.len();
        pending = left;
    }
    Ok(Run {
        elapsed: started.elapsed(),
        calls,
        republished,
    })
}

async fn bench(args: Args) -> Result<(), String> {
    let cluster = match &args.brokers {
        Some(brokers) => Cluster::Real(
            ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .create()
                .map_err(|e| format!("admin client for {brokers}: {e}"))?,
        ),
        None => Cluster::Mock(MockCluster::new(3).map_err(|e| format!("mock cluster: {e}"))?),
    };
    let bootstrap = match (&cluster, &args.brokers) {
        (Cluster::Mock(mock), _) => {
            mock.broker_round_trip_time(-1, args.rtt)
                .map_err(|e| format!("mock round trip time: {e}"))?;
            mock.bootstrap_servers()
        }
        (_, Some(brokers)) => brokers.clone(),
        (Cluster::Real(_), None) => unreachable!("a real cluster has brokers"),
    };
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &bootstrap);
    for (key, value) in &args.set {
        config.set(key, value);
    }

    println!(
        "publish_bench: {} records, batches of {}, {} partitions, {}",
        args.records,
        args.batch,
        args.partitions,
        match &args.brokers {
            Some(brokers) => format!("brokers {brokers}"),
            None => format!(
                "mock cluster of 3 brokers answering after {} ms",
                args.rtt.as_millis()
            ),
        },
    );
    let run_id = std::process::id();
    for (mode, gapless) in [
        ("pipelined", "true"),
        ("one record at a time per key", "false"),
    ] {
        let mut config = config.clone();
        config.set("enable.gapless.guarantee", gapless);
        let sink = KafkaSink::new(config).map_err(|e| e.to_string())?;
        let settings: Vec<String> = [
            "enable.idempotence",
            "enable.gapless.guarantee",
            "acks",
            "compression.type",
            "linger.ms",
        ]
        .iter()
        .filter_map(|key| Some(format!("{key}={}", sink.client_config().get(key)?)))
        .collect();
        println!("  {mode} ({})", settings.join(", "));
        if (mode == "pipelined") != sink.is_pipelined() {
            return Err(format!("the sink is not {mode} with these settings"));
        }
        for keys in KEY_COUNTS {
            let topic = format!("outbox-bench-{run_id}-{gapless}-{keys}");
            cluster.create_topic(&topic, args.partitions).await?;
            let records = records(&topic, args.records, keys);
            let result = run(&sink, records, args.batch).await?;
            let secs = result.elapsed.as_secs_f64();
            println!(
                "    {:<10} {:>9.0} records/s  ({} records in {:.2} s, {} publish calls, {} \
                 republished, {} order gaps)",
                format!("{keys} keys"),
                args.records as f64 / secs,
                args.records,
                secs,
                result.calls,
                result.republished,
                sink.order_gaps(),
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    match bench(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("publish_bench: {message}");
            ExitCode::FAILURE
        }
    }
}
