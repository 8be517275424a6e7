//! The NATS sink passes the sink conformance suite against a JetStream
//! server.

mod common;

use async_trait::async_trait;
use common::TestNats;
use outbox_engine::OutboxRecord;
use outbox_engine::testkit::sink::{Destination, Message};
use outbox_nats::NatsSink;

/// A fresh stream of the test server.
struct Stream {
    nats: TestNats,
    topic: String,
    stream: String,
}

#[async_trait(?Send)]
impl Destination for Stream {
    fn topic(&self) -> String {
        self.topic.clone()
    }

    /// Larger than the server's `max_payload`.
    fn fail_permanently(&self, record: &mut OutboxRecord) {
        record.payload = "x".repeat(self.nats.client.server_info().max_payload + 1);
    }

    async fn messages(&self) -> Vec<Message> {
        self.nats
            .read(&self.stream)
            .await
            .iter()
            .map(|message| Message {
                key: common::key(message),
                event_id: common::event_id(message),
                payload: String::from_utf8(message.payload.to_vec()).expect("UTF-8 payload"),
            })
            .collect()
    }
}

async fn nats_sink() -> Option<(NatsSink, Stream)> {
    let nats = TestNats::connect("sink conformance").await?;
    let (topic, stream) = nats.topic().await;
    Some((
        nats.sink(),
        Stream {
            nats,
            topic,
            stream,
        },
    ))
}

outbox_engine::sink_conformance_tests!(nats_sink);
