//! The NATS server the tests run against (`NATS_URL`, by default
//! `nats://127.0.0.1:4222`; `none` when scripts/test could not start one),
//! fresh streams, and reading them back with a JetStream consumer.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, Context};
use futures::StreamExt;
use outbox_nats::{EVENT_ID_HEADER, KEY_HEADER, NatsSink};
use uuid::Uuid;

/// A connection to the test server, and the streams a test made.
pub(crate) struct TestNats {
    pub(crate) client: async_nats::Client,
    pub(crate) js: Context,
}

/// The server's URL.
pub(crate) fn url() -> String {
    std::env::var("NATS_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned())
}

impl TestNats {
    /// Connects, or returns `None` after saying loudly that the test is
    /// skipped; with `CI=true` a server that cannot be reached fails the
    /// test instead.
    pub(crate) async fn connect(test: &str) -> Option<Self> {
        let url = url();
        if url == "none" {
            return skip(
                test,
                "scripts/test could not start nats-server (see target/nats.log)",
            );
        }
        let connecting = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(&url);
        let error = match tokio::time::timeout(Duration::from_secs(10), connecting).await {
            Ok(Ok(client)) => {
                let js = jetstream::new(client.clone());
                return Some(Self { client, js });
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => "no answer within 10 s".to_owned(),
        };
        let message = format!(
            "no NATS server at {url} ({error}); start one with `nats-server -js` and set \
             NATS_URL, or run scripts/test"
        );
        skip(test, &message)
    }

    /// A sink with the default options.
    pub(crate) fn sink(&self) -> NatsSink {
        NatsSink::new(self.js.clone())
    }

    /// A fresh topic, with a memory stream that takes its subjects (`topic`
    /// and `topic.>`); returns the topic and the stream's name.
    pub(crate) async fn topic(&self) -> (String, String) {
        let id = Uuid::now_v7().simple().to_string();
        let topic = format!("outbox-test-{id}");
        let stream = format!("OUTBOX_TEST_{id}");
        self.js
            .create_stream(stream::Config {
                name: stream.clone(),
                subjects: vec![topic.clone(), format!("{topic}.>")],
                storage: StorageType::Memory,
                max_age: Duration::from_secs(600),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("creating stream {stream}: {e}"));
        (topic, stream)
    }

    /// Every message of `stream`, in stream order, read with an ephemeral
    /// pull consumer from the first message.
    pub(crate) async fn read(&self, stream: &str) -> Vec<jetstream::Message> {
        let mut handle = self
            .js
            .get_stream(stream)
            .await
            .unwrap_or_else(|e| panic!("stream {stream}: {e}"));
        let count = handle.info().await.expect("stream info").state.messages;
        if count == 0 {
            return Vec::new();
        }
        let consumer = handle
            .create_consumer(consumer::pull::Config {
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut messages = consumer.messages().await.expect("message stream");
        let mut read = Vec::new();
        while read.len() < count as usize {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .unwrap_or_else(|_| panic!("read {} of {count} messages of {stream}", read.len()));
            read.push(next.expect("message stream ended").expect("message"));
        }
        read
    }
}

/// Says loudly that `test` is skipped, or fails it when `CI=true`.
fn skip<T>(test: &str, why: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{test}: {why}");
    }
    eprintln!("\n!!!!!!!!!! SKIPPED {test}: {why} !!!!!!!!!!\n");
    None
}

/// A header of `message`.
pub(crate) fn header<'m>(message: &'m jetstream::Message, name: &str) -> Option<&'m str> {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(name))
        .map(|value| value.as_str())
}

/// The event id a message carries.
pub(crate) fn event_id(message: &jetstream::Message) -> Uuid {
    header(message, EVENT_ID_HEADER)
        .expect("an outbox message has an event id")
        .parse()
        .expect("a UUID")
}

/// The key a message carries.
pub(crate) fn key(message: &jetstream::Message) -> Option<String> {
    header(message, KEY_HEADER).map(str::to_owned)
}
