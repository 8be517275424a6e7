//! The Kafka side: a real broker (`--brokers`) or librdkafka's mock
//! cluster, run in a child process of this program so that the messages it
//! keeps in memory count neither in the relay's CPU nor in its RSS.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Partitions of every topic.
pub(crate) const PARTITIONS: i32 = 6;

/// Brokers of the mock cluster. With one, each producer keeps one
/// connection, as it would to a small real cluster from one host; the
/// mock answers without the disk and replication work of a real broker,
/// so its figures are an upper bound of what the relay can do.
const MOCK_BROKERS: i32 = 1;

/// The hidden flag that makes this program serve a mock cluster (the
/// `bench` program's `serve_mock_cluster` argument).
const SERVE_FLAG: &str = "--serve-mock-cluster";

/// Where records go.
pub(crate) struct Broker {
    bootstrap: String,
    kind: Kind,
    topics: AtomicU32,
}

enum Kind {
    /// The child serving the mock cluster, and its pipes: a line
    /// `topic NAME PARTITIONS` in, `ok` or an error out.
    Mock(Mutex<(Child, ChildStdin, BufReader<ChildStdout>)>),
    Kafka(AdminClient<DefaultClientContext>),
}

impl Broker {
    /// The broker at `brokers`, or a mock cluster in a child process.
    pub(crate) fn start(brokers: Option<&str>) -> Result<Self, String> {
        if let Some(bootstrap) = brokers {
            let admin = client_config(bootstrap)
                .create()
                .map_err(|e| format!("cannot make a Kafka admin client for {bootstrap}: {e}"))?;
            return Ok(Self {
                bootstrap: bootstrap.to_owned(),
                kind: Kind::Kafka(admin),
                topics: AtomicU32::new(0),
            });
        }
        let program = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(program)
            .arg(SERVE_FLAG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the mock cluster's process: {e}"))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut bootstrap = String::new();
        stdout
            .read_line(&mut bootstrap)
            .map_err(|e| format!("the mock cluster's process did not start: {e}"))?;
        let bootstrap = bootstrap.trim().to_owned();
        if bootstrap.is_empty() {
            let _ = child.kill();
            return Err("the mock cluster's process did not start".to_owned());
        }
        Ok(Self {
            bootstrap,
            kind: Kind::Mock(Mutex::new((child, stdin, stdout))),
            topics: AtomicU32::new(0),
        })
    }

    /// `mock` or `kafka`, for the figures.
    pub(crate) fn label(&self) -> &'static str {
        match self.kind {
            Kind::Mock(_) => "mock",
            Kind::Kafka(_) => "kafka",
        }
    }

    /// What the output's header says about the broker.
    pub(crate) fn describe(&self) -> String {
        match self.kind {
            Kind::Mock(_) => format!(
                "librdkafka mock cluster of {MOCK_BROKERS} broker(s) in a child process at {}",
                self.bootstrap
            ),
            Kind::Kafka(_) => format!("Kafka at {}", self.bootstrap),
        }
    }

    /// A client configuration with the bootstrap servers only.
    pub(crate) fn config(&self) -> ClientConfig {
        client_config(&self.bootstrap)
    }

    /// A new topic of [`PARTITIONS`] partitions, named after `what`.
    pub(crate) async fn new_topic(&self, what: &str) -> Result<String, String> {
        let name = format!(
            "bench-{}-{what}-{}",
            std::process::id(),
            self.topics.fetch_add(1, Ordering::Relaxed)
        );
        match &self.kind {
            Kind::Mock(child) => {
                let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
                let (_, stdin, stdout) = &mut *child;
                writeln!(stdin, "topic {name} {PARTITIONS}")
                    .and_then(|()| stdin.flush())
                    .map_err(|e| format!("the mock cluster's process is gone: {e}"))?;
                let mut answer = String::new();
                stdout
                    .read_line(&mut answer)
                    .map_err(|e| format!("the mock cluster's process is gone: {e}"))?;
                if answer.trim() != "ok" {
                    return Err(format!("creating topic {name}: {}", answer.trim()));
                }
            }
            Kind::Kafka(admin) => {
                let topic = NewTopic::new(&name, PARTITIONS, TopicReplication::Fixed(1));
                let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
                let results = admin
                    .create_topics([&topic], &options)
                    .await
                    .map_err(|e| format!("creating topic {name} on {}: {e}", self.bootstrap))?;
                for result in results {
                    result.map_err(|(topic, code)| format!("creating topic {topic}: {code}"))?;
                }
            }
        }
        Ok(name)
    }

    /// Reads `topic` from the start of every partition, handing each
    /// message to `each`, until `each` has returned `true` (done) or
    /// `within` has passed.
    pub(crate) fn read(
        &self,
        topic: &str,
        within: Duration,
        mut each: impl FnMut(&BorrowedMessage<'_>) -> Result<bool, String>,
    ) -> Result<(), String> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", format!("{topic}-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| e.to_string())?;
        // Assigned, not subscribed: no group rebalance to wait for.
        let mut partitions = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            partitions
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&partitions).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.map_err(|e| format!("reading {topic}: {e}"))?;
            if each(&message)? {
                return Ok(());
            }
        }
        Err(format!("reading {topic} did not finish within {within:?}"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Kind::Mock(child) = &mut self.kind {
            let (child, _, _) = child.get_mut().unwrap_or_else(|e| e.into_inner());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// Serves a mock cluster: prints its bootstrap servers, then creates the
/// topics asked for on stdin (`topic NAME PARTITIONS`), answering `ok` or
/// the error, until stdin closes (the parent is gone).
pub(crate) fn serve_mock_cluster() -> ExitCode {
    let mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext> =
        match MockCluster::new(MOCK_BROKERS) {
            Ok(mock) => mock,
            Err(error) => {
                eprintln!("cannot start a mock cluster: {error}");
                return ExitCode::FAILURE;
            }
        };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{}", mock.bootstrap_servers())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    let mut created = HashSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["topic", name, partitions] => match partitions.parse() {
                Ok(partitions) if created.insert(name.to_owned()) => mock
                    .create_topic(name, partitions, 1)
                    .map(|()| "ok".to_owned())
                    .unwrap_or_else(|e| e.to_string()),
                Ok(_) => format!("topic {name} exists"),
                Err(_) => format!("not a partition count: {partitions}"),
            },
            _ => format!("not understood: {line}"),
        };
        if writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// The payload of `message`, as text.
pub(crate) fn payload<'m>(message: &'m BorrowedMessage<'_>) -> Result<&'m str, String> {
    message
        .payload_view::<str>()
        .unwrap_or(Ok(""))
        .map_err(|e| format!("a payload is not UTF-8: {e}"))
}
