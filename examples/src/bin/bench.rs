//! The outbox's benchmarks, one program. Each scenario prints a line of
//! figures per run; with `--json`, one JSON object per line on stdout
//! (fields `scenario`, `backend`, `sink`, `relay`, `events`, `keys`,
//! `relays`, `seconds`, `events_per_s`, and where measured `p50_ms`,
//! `p99_ms`, `per_event_ms`, `peak_rss_mb`) and the lines for people on
//! stderr. Run them on a release build:
//!
//! ```text
//! cargo run --release -p outbox-examples --bin bench                        # every scenario but the soak
//! cargo run --release -p outbox-examples --bin bench -- drain               # 100,000 events, 1,000 keys: relay vs the seed's reader
//! cargo run --release -p outbox-examples --bin bench -- hot-keys            # the same over 10 keys
//! cargo run --release -p outbox-examples --bin bench -- latency             # commit to ack at 20 and 1,000 commits/s: polling, wake-up, NOTIFY
//! cargo run --release -p outbox-examples --bin bench -- enqueue             # what enqueue adds to a business transaction
//! cargo run --release -p outbox-examples --bin bench -- scale               # 1, 2 and 4 relays on PostgreSQL, per-key order checked
//! cargo run --release -p outbox-examples --bin bench -- blocked             # claims over 990,000 records behind blocked keys
//! cargo run --release -p outbox-examples --bin bench -- memory              # peak RSS draining 1,000,000 events (PostgreSQL)
//! cargo run --release -p outbox-examples --bin bench -- long-writer         # other writers while a transaction holds a key 8 s
//! cargo run --release -p outbox-examples --bin bench -- slow-keys           # healthy load beside 50 keys whose sends take 20 s to fail
//! cargo run --release -p outbox-examples --bin bench -- soak                # 20 minutes at 2,000 events/s: claim times and table size each minute
//! cargo run -p outbox-examples --bin bench -- --quick                       # every scenario, small, in seconds each
//! ```
//!
//! - `drain`: 100,000 pending events (200-byte JSON payloads) over 1,000
//!   keys, loaded through `enqueue_records`, drained by one relay with the
//!   default settings (`relay` `outbox`); then, on freshly loaded data and
//!   the same broker, by the seed article's reader (`seed`): select 100
//!   pending rows, send each with a `FutureProducer`, mark each published
//!   with its own `UPDATE` when its delivery completes; then by the floor
//!   (`floor`): one `DELETE ... RETURNING` of the 500 oldest records, each
//!   sent, two such steps in flight at most: each record read and removed
//!   once, what no outbox can do without; and the database's part of it
//!   alone (`floor-db`: the deletes, nothing sent). Events per second from the
//!   start to the last record marked published. The relay's run notes its
//!   statements per event and, on PostgreSQL, its row versions per event
//!   (`pg_stat_user_tables`, from the load to the end of the drain).
//! - `hot-keys`: the same over 10 keys.
//! - `latency`: a writer commits a business row and one event at 20 and at
//!   1,000 transactions a second for 30 s while one relay runs; p50 and p99
//!   of commit to the broker's acknowledgement, with the relay polling
//!   (`outbox`), woken after each commit (`outbox+wakeup`), and on
//!   PostgreSQL woken by `NOTIFY` (`outbox+notify`).
//! - `enqueue`: 5,000 transactions inserting a business row, then 5,000
//!   that also enqueue one event; `per_event_ms` is the difference per
//!   transaction.
//! - `scale`: 1, 2 and 4 relays, each with its own pool and producer,
//!   draining 100,000 events over 1,000 keys on PostgreSQL; the topic is
//!   then read back and the run fails if the first copies of a key's
//!   events are out of order.
//! - `blocked`: 1,000,000 pending records, 990,000 of them behind blocked
//!   key heads (one hot key, or 9,900 keys in backoff): p50/p99 of claims
//!   of 500 healthy records (`claim-500`) and of claims that find nothing
//!   (`claim-empty`).
//! - `memory`: peak RSS (`VmHWM`) of this process while one relay drains
//!   1,000,000 events written by the database itself; PostgreSQL unless
//!   `--database-url` says otherwise.
//! - `long-writer` and `slow-keys`: see `bench/waits.rs`.
//! - `soak` (only when named): writers commit 2,000 events a second, one
//!   transaction each, over 1,000 keys, for 20 minutes (`--seconds`) while
//!   one relay publishes them; each minute, the rates, the backlog, the
//!   relay's claim p50/p99 and the outbox tables' size on disk
//!   (`pg_total_relation_size` on PostgreSQL).
//!
//! Options:
//!
//! - `--database-url URL` (repeatable): the servers; by default
//!   PostgreSQL at 127.0.0.1:5432, MariaDB at 127.0.0.1:3306 and SQLite (a
//!   temporary file), each skipped with a `SKIPPED` line when it does not
//!   answer. Each run makes a database of its own and drops it afterwards.
//! - `--brokers HOST:PORT`: a Kafka-protocol broker (topics of 6
//!   partitions are created there); by default librdkafka's mock cluster,
//!   run in a child process of this program.
//! - `--quick`: small sizes (1,000 to 20,000 events, 3 s per latency run),
//!   so that every scenario finishes in seconds; `--events N` and `--seconds S` set the
//!   sizes directly.
//! - `BENCH_STATEMENTS=1` (environment): `drain` and `hot-keys` print the
//!   relay's statements by the time spent in them.
//! - `--keep-published`: in `drain`, `hot-keys` and `soak`, the relay's
//!   store keeps a published history (`SeaOrmStore::keep_published`)
//!   instead of deleting what it publishes.
//!
//! It exits non-zero when a run failed.

use std::process::ExitCode;

use clap::Parser;

#[path = "../bench/mod.rs"]
mod bench;

use bench::{Options, Scenario};

/// The outbox's benchmarks (see the source's docs for each scenario).
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Scenarios to run; all when none is named.
    #[arg(value_enum, value_name = "SCENARIO")]
    scenarios: Vec<Scenario>,
    /// A database server (repeatable): postgres://..., mysql://...,
    /// `sqlite` for a temporary file. Default: PostgreSQL, MariaDB and
    /// SQLite on this host, those that answer.
    #[arg(long = "database-url", value_name = "URL")]
    database_urls: Vec<String>,
    /// A Kafka-protocol broker. Default: librdkafka's mock cluster.
    #[arg(long, value_name = "HOST:PORT")]
    brokers: Option<String>,
    /// One JSON object per run on stdout.
    #[arg(long)]
    json: bool,
    /// Events (transactions, records) of each scenario, instead of its own
    /// size.
    #[arg(long, value_name = "N")]
    events: Option<u64>,
    /// Seconds of writing at each rate in `latency`. Default: 30 (3 with
    /// `--quick`).
    #[arg(long, value_name = "S")]
    seconds: Option<u64>,
    /// Small sizes, to see that every scenario works.
    #[arg(long)]
    quick: bool,
    /// The relays' store keeps a published history (marks published
    /// records instead of deleting them), in `drain`, `hot-keys` and `soak`.
    #[arg(long)]
    keep_published: bool,
    /// Serve a mock cluster for the parent process (`broker::SERVE_FLAG`).
    #[arg(long = "serve-mock-cluster", hide = true)]
    serve_mock_cluster: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.serve_mock_cluster {
        return bench::serve_mock_cluster();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,librdkafka=off,rdkafka=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    bench::run(Options {
        scenarios: args.scenarios,
        database_urls: args.database_urls,
        brokers: args.brokers,
        json: args.json,
        events: args.events,
        seconds: args.seconds,
        quick: args.quick,
        keep_published: args.keep_published,
    })
    .await
}
