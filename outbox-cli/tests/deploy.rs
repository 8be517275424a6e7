//! The relay as it is deployed: the command line of `deploy/outbox-relay.service`
//! runs and its probes answer, the probes of `deploy/kubernetes.yaml` answer
//! on the port it names, and a relay whose database or brokers are not there
//! yet waits for them, not ready, without exiting, and publishes once they
//! come.

#[path = "../../outbox-sea-orm/tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use common::{Backend, TestDb};
use outbox_engine::{NewRecord, OutboxAdmin, OutboxEvent, OutboxStore};
use rdkafka::mocking::MockCluster;

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// `GET path` on `addr`: the status code and body, or `None` when nothing
/// answers.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: relay\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Some((code, body))
}

/// Polls `path` until it answers `code`, failing after `within`.
fn until_answers(addr: SocketAddr, path: &str, code: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some((got, body)) = get(addr, path)
            && got == code
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not answer {code} within {within:?} (last: {:?})",
            get(addr, path)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn terminate(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the relay did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A mock Kafka cluster with the topic the relay publishes to.
fn kafka() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("deployed", 1, 1).unwrap();
    mock
}

fn read(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_units_command_line_runs_and_its_probes_answer() {
    let Some(db) = TestDb::new(Backend::SqliteFile).await else {
        return;
    };
    let unit = read("deploy/outbox-relay.service");
    let exec = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/outbox"));
    let args: Vec<&str> = words.collect();
    assert_eq!(args.first(), Some(&"relay"), "{exec}");
    let stop_within: u64 = unit
        .lines()
        .find_map(|line| line.strip_prefix("TimeoutStopSec="))
        .expect("a TimeoutStopSec")
        .parse()
        .unwrap();
    let mock = kafka();
    let addr = free_port();
    let mut command = Command::cargo_bin("outbox").unwrap();
    command
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap());
    for line in unit.lines() {
        if let Some((key, value)) = line
            .strip_prefix("Environment=")
            .and_then(|kv| kv.split_once('='))
        {
            command.env(key, value);
        }
    }
    command
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BROKERS", mock.bootstrap_servers())
        .env("OUTBOX_HTTP_ADDR", addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    until_answers(addr, "/readyz", 200, Duration::from_secs(30));
    assert_eq!(get(addr, "/livez").map(|(code, _)| code), Some(200));
    assert!(
        get(addr, "/metrics").is_some_and(
            |(code, body)| code == 200 && body.contains("outbox_relay_consecutive_failures")
        ),
        "the metrics are served"
    );
    let status = terminate(&mut child, Duration::from_secs(stop_within));
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.lines().any(|line| line.starts_with('{')),
        "OUTBOX_LOG_FORMAT=json from the unit is used: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_probes_answer_on_the_port_the_manifest_names() {
    let Some(db) = TestDb::new(Backend::SqliteFile).await else {
        return;
    };
    let manifest = read("deploy/kubernetes.yaml");
    let value = |key: &str| -> Vec<String> {
        manifest
            .lines()
            .filter_map(|line| line.trim().strip_prefix(key))
            .map(|rest| rest.trim().to_owned())
            .collect()
    };
    let port = value("containerPort:");
    assert_eq!(port, ["9464"], "the relay's --http-addr port");
    assert!(
        value("value:").contains(&"0.0.0.0:9464".to_owned()),
        "OUTBOX_HTTP_ADDR matches the container port"
    );
    let probes: Vec<String> = manifest
        .lines()
        .filter_map(|line| line.split("path: ").nth(1))
        .filter_map(|rest| rest.split([',', '}']).next())
        .map(|path| path.trim().to_owned())
        .filter(|path| path.starts_with('/'))
        .collect();
    assert!(
        probes.contains(&"/livez".to_owned()) && probes.contains(&"/readyz".to_owned()),
        "{probes:?}"
    );
    let args: Vec<String> = value("args:")
        .first()
        .expect("the container's args")
        .trim_matches(['[', ']'])
        .split(',')
        .map(|arg| arg.trim().trim_matches('"').to_owned())
        .collect();
    let mock = kafka();
    let addr = free_port();
    let mut child = Command::cargo_bin("outbox")
        .unwrap()
        .args(&args)
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BROKERS", mock.bootstrap_servers())
        .env("OUTBOX_HTTP_ADDR", addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for path in &probes {
        until_answers(addr, path, 200, Duration::from_secs(30));
    }
    let grace: u64 = value("terminationGracePeriodSeconds:")[0].parse().unwrap();
    let status = terminate(&mut child, Duration::from_secs(grace));
    assert!(status.success(), "{status}");
}

/// Reads what a child wrote to stderr so far, without waiting for more.
fn spawn_reader(mut stderr: std::process::ChildStderr) -> std::sync::Arc<std::sync::Mutex<String>> {
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buffer) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_waits_for_its_database_and_brokers_not_ready_and_never_exits() {
    // A database without the outbox tables yet (the migration job has not
    // run), and brokers where nothing listens yet.
    let Some(db) = TestDb::without_outbox(Backend::SqliteFile).await else {
        return;
    };
    let nothing = free_port();
    let addr = free_port();
    let mut child = Command::cargo_bin("outbox")
        .unwrap()
        .args(["relay", "--broker-timeout", "1s"])
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BROKERS", nothing.to_string())
        .env("OUTBOX_HTTP_ADDR", addr.to_string())
        .env("RUST_LOG", "warn,librdkafka=off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = spawn_reader(child.stderr.take().unwrap());
    let reason = until_answers(addr, "/readyz", 503, Duration::from_secs(30));
    assert_eq!(get(addr, "/livez").map(|(code, _)| code), Some(200));
    // Several attempts go by (1 s, 2 s, 4 s apart): it is still there, and
    // said so once.
    std::thread::sleep(Duration::from_secs(4));
    assert!(child.try_wait().unwrap().is_none(), "the relay exited");
    let reason = get(addr, "/readyz").map(|(_, body)| body).unwrap_or(reason);
    assert!(
        reason.contains("waiting for the database") && reason.contains("outbox migrate"),
        "{reason}"
    );
    assert_eq!(
        log.lock()
            .unwrap()
            .matches("waiting for the database")
            .count(),
        1,
        "logged once per new reason: {}",
        log.lock().unwrap()
    );

    // The migration runs: the relay goes on, to the brokers.
    let migrated = Command::cargo_bin("outbox")
        .unwrap()
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(migrated.status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = get(addr, "/readyz")
            .map(|(_, body)| body)
            .unwrap_or_default();
        if body.contains("waiting for the Kafka brokers") {
            assert!(
                body.contains("bootstrap.servers"),
                "the reason names the setting: {body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "still: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(child.try_wait().unwrap().is_none(), "the relay exited");

    // The brokers come up where the relay looks for them: it becomes ready
    // and publishes what was enqueued meanwhile.
    let store = db.store();
    store
        .enqueue(&[NewRecord::from_event(&Deployed { n: 1 }).unwrap()])
        .await
        .unwrap();
    let mock = kafka();
    forward(nothing, mock.bootstrap_servers());
    until_answers(addr, "/readyz", 200, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.stats(chrono::Utc::now()).await.unwrap().pending > 0 {
        assert!(Instant::now() < deadline, "the record was not published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = terminate(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

#[derive(Debug, serde::Serialize, serde::Deserialize, OutboxEvent)]
#[outbox(topic = "deployed")]
struct Deployed {
    n: u32,
}

/// Listens on `at` from now on and forwards each connection to `to`, the
/// bootstrap address of brokers that came up elsewhere.
fn forward(at: SocketAddr, to: String) {
    let listener = TcpListener::bind(at).unwrap();
    std::thread::spawn(move || {
        for inbound in listener.incoming() {
            let Ok(inbound) = inbound else { return };
            let Ok(outbound) = TcpStream::connect(&to) else {
                continue;
            };
            for (mut from, mut into) in [
                (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                (outbound, inbound),
            ] {
                std::thread::spawn(move || {
                    std::io::copy(&mut from, &mut into).ok();
                    into.shutdown(std::net::Shutdown::Both).ok();
                });
            }
        }
    });
}

/// librdkafka properties from `OUTBOX_KAFKA_X`, `;`-separated, and from -X,
/// where a `;` inside a value stays part of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_properties_come_from_the_environment_and_from_x() {
    let Some(db) = TestDb::new(Backend::SqliteFile).await else {
        return;
    };
    let mock = kafka();
    let from_env = format!(
        "bootstrap.servers={};client.id=from-env",
        mock.bootstrap_servers()
    );
    let x = format!("bootstrap.servers={}", mock.bootstrap_servers());
    for (env, args) in [
        (Some(from_env.as_str()), vec!["relay"]),
        (None, vec!["relay", "-X", &x, "-X", "client.id=relay;one"]),
    ] {
        let addr = free_port();
        let mut command = Command::cargo_bin("outbox").unwrap();
        command
            .args(&args)
            .env("DATABASE_URL", &db.url)
            .env_remove("KAFKA_BROKERS")
            .env_remove("OUTBOX_KAFKA_X")
            .env("OUTBOX_HTTP_ADDR", addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(env) = env {
            command.env("OUTBOX_KAFKA_X", env);
        }
        let mut child = command.spawn().unwrap();
        until_answers(addr, "/readyz", 200, Duration::from_secs(30));
        let status = terminate(&mut child, Duration::from_secs(10));
        assert!(status.success(), "{args:?}: {status}");
    }
}
