//! A secured Kafka of the tests' own: tansu brokers (with SASL SCRAM when
//! asked), a TLS listener in front of them (socat) and certificates made
//! with openssl. Shared by the Kafka sink's and the `outbox` command's
//! tests.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A program, or a loud skip (a failure in CI).
pub(crate) fn program(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain(std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin")))
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    if found.is_none() {
        let message = format!("{name} is not installed: the secured-Kafka tests need it");
        assert!(!in_ci(), "{message} (CI=true)");
        eprintln!("\n*** SKIPPED: {message} ***\n");
    }
    found
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed on drop.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tansu broker listening on `port`, telling clients to connect to
/// `advertised` (host:port), storing in `storage` (a SQLite file is named
/// relative to `dir`, where tansu runs).
pub(crate) fn tansu(
    bin: &Path,
    dir: &Path,
    port: u16,
    advertised: &str,
    storage: &str,
    auth: bool,
) -> Running {
    let mut command = Command::new(bin);
    command
        .current_dir(dir)
        .args(["broker", "--listener-url"])
        .arg(format!("tcp://127.0.0.1:{port}"))
        .arg("--advertised-listener-url")
        .arg(format!("tcp://{advertised}"))
        .args(["--storage-engine", storage])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if auth {
        command.arg("--authentication");
    }
    let child = Running(command.spawn().expect("tansu starts"));
    wait_listening(port);
    child
}

pub(crate) fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA (`<name>-ca.pem`) and a certificate it signs for `localhost`
/// (`<name>-cert.pem`, `<name>-key.pem`), made with openssl.
pub(crate) fn certificates(dir: &Path, name: &str) {
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    let key = format!("{name}-key.pem");
    let csr = format!("{name}.csr");
    let cert = format!("{name}-cert.pem");
    let subject = format!("/CN={name} test CA");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", &ca_key,
            "-out", &ca, "-subj", &subject,
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &cert,
            "-extfile",
            "san.ext",
        ],
    );
}

/// socat terminating TLS on `port` for tansu on `to`, with `server`'s
/// certificate; with `client_ca`, it asks clients for a certificate that
/// CA signed.
pub(crate) fn tls_proxy(dir: &Path, port: u16, to: u16, client_ca: Option<&str>) -> Running {
    let verify = match client_ca {
        Some(ca) => format!("verify=1,cafile={}", dir.join(ca).display()),
        None => "verify=0".to_owned(),
    };
    let listen = format!(
        "OPENSSL-LISTEN:{port},reuseaddr,fork,cert={},key={},{verify}",
        dir.join("server-cert.pem").display(),
        dir.join("server-key.pem").display()
    );
    let child = Command::new("socat")
        .arg(listen)
        .arg(format!("TCP:127.0.0.1:{to}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat starts");
    wait_listening(port);
    Running(child)
}

/// A client configuration for `brokers` with `settings`.
pub(crate) fn config(brokers: &str, settings: &[(&str, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "4000");
    for (key, value) in settings {
        config.set(*key, value);
    }
    config
}

pub(crate) async fn create_topic(config: &ClientConfig, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = config.create().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(
            [&NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .expect("topic created");
    for result in results {
        result.expect("topic created");
    }
}

/// A tansu broker (in memory) behind a TLS listener with `server`'s
/// certificate (see [`certificates`]), telling clients to connect to the
/// TLS port. Stopped on drop.
pub(crate) struct TlsBroker {
    /// `localhost:<TLS port>`, for `bootstrap.servers`.
    pub(crate) brokers: String,
    /// The plaintext port tansu listens on, for more listeners in front.
    pub(crate) plain: u16,
    /// The CA file that signed the listener's certificate.
    pub(crate) ca: String,
    _tls: Running,
    _broker: Running,
}

pub(crate) fn tls_broker(bin: &Path, dir: &Path) -> TlsBroker {
    let (plain, secured) = (free_port(), free_port());
    let broker = tansu(
        bin,
        dir,
        plain,
        &format!("localhost:{secured}"),
        "memory://tansu/",
        false,
    );
    let tls = tls_proxy(dir, secured, plain, None);
    TlsBroker {
        brokers: format!("localhost:{secured}"),
        plain,
        ca: dir.join("server-ca.pem").display().to_string(),
        _tls: tls,
        _broker: broker,
    }
}
