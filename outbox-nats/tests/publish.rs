//! What a message looks like in JetStream, and how failures are reported.

mod common;

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use common::{TestNats, header};
use outbox_engine::testkit::record_on;
use outbox_engine::{OutboxRecord, Outcome, Sink};
use outbox_nats::{
    EVENT_ID_HEADER, EVENT_TYPE_HEADER, Error, KEY_HEADER, NatsSink, SCHEMA_VERSION_HEADER,
    TRACEPARENT_HEADER,
};
use uuid::Uuid;

/// Record `id` of `topic` and `key`, its payload carrying `n`.
fn record(id: i64, topic: &str, key: Option<&str>, n: u32) -> OutboxRecord {
    OutboxRecord::from_new(id, record_on(topic, key, n))
}

/// This crate's error inside an outcome.
fn error_of(outcome: &Outcome) -> &Error {
    outcome
        .error()
        .expect("not delivered")
        .downcast_ref::<Error>()
        .expect("an outbox_nats::Error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_has_its_subject_headers_and_message_id() {
    let Some(nats) = TestNats::connect("a_message_has_its_subject_headers_and_message_id").await
    else {
        return;
    };
    let (topic, stream) = nats.topic().await;
    let mut keyed = record(1, &topic, Some("user@example.com"), 1);
    keyed.event_type = "test.OrderPlaced".into();
    keyed.schema_version = 2;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    keyed
        .headers
        .insert(TRACEPARENT_HEADER.into(), traceparent.into());
    keyed.headers.insert("x-tenant".into(), "acme".into());
    let keyless = record(2, &topic, None, 2);
    let outcomes = nats.sink().publish(&[keyed.clone(), keyless.clone()]).await;
    assert!(outcomes.iter().all(Outcome::is_delivered), "{outcomes:?}");

    let messages = nats.read(&stream).await;
    assert_eq!(messages.len(), 2);
    let by_id = |record: &OutboxRecord| {
        messages
            .iter()
            .find(|m| common::event_id(m) == record.event_id)
            .expect("the record's message")
    };
    let message = by_id(&keyed);
    assert_eq!(
        message.subject.as_str(),
        format!("{topic}.user%40example%2Ecom")
    );
    let event_id = keyed.event_id.to_string();
    assert_eq!(header(message, "Nats-Msg-Id"), Some(event_id.as_str()));
    assert_eq!(header(message, EVENT_ID_HEADER), Some(event_id.as_str()));
    assert_eq!(header(message, EVENT_TYPE_HEADER), Some("test.OrderPlaced"));
    assert_eq!(header(message, SCHEMA_VERSION_HEADER), Some("2"));
    assert_eq!(header(message, KEY_HEADER), Some("user@example.com"));
    assert_eq!(header(message, TRACEPARENT_HEADER), Some(traceparent));
    assert_eq!(header(message, "x-tenant"), Some("acme"));
    assert_eq!(&message.payload[..], br#"{"n":1}"#);

    let message = by_id(&keyless);
    assert_eq!(message.subject.as_str(), topic);
    assert_eq!(header(message, KEY_HEADER), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_is_dropped_by_the_duplicate_window() {
    let Some(nats) =
        TestNats::connect("a_redelivered_event_is_dropped_by_the_duplicate_window").await
    else {
        return;
    };
    let (topic, stream) = nats.topic().await;
    let sink = nats.sink();
    let records = [record(1, &topic, Some("k"), 1), record(2, &topic, None, 2)];
    for _ in 0..2 {
        let outcomes = sink.publish(&records).await;
        assert!(outcomes.iter().all(Outcome::is_delivered), "{outcomes:?}");
    }
    let messages = nats.read(&stream).await;
    assert_eq!(messages.len(), 2, "JetStream kept one copy of each event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_no_stream_takes_is_retriable_unless_configured_permanent() {
    let Some(nats) = TestNats::connect("a_subject_no_stream_takes_is_retriable").await else {
        return;
    };
    let topic = format!("outbox-test-nowhere-{}", Uuid::now_v7().simple());
    let records = [
        record(1, &topic, Some("k"), 1),
        record(2, &topic, Some("k"), 2),
    ];

    let outcomes = nats.sink().publish(&records).await;
    assert!(
        matches!(outcomes[0], Outcome::Retriable(_)),
        "{}",
        outcomes[0]
    );
    match error_of(&outcomes[0]) {
        Error::Publish { kind, .. } => assert_eq!(*kind, PublishErrorKind::StreamNotFound),
        other => panic!("{other:?}"),
    }
    assert!(error_of(&outcomes[0]).to_string().contains("create one"));
    assert!(matches!(outcomes[1], Outcome::Retriable(_)), "held back");

    let strict = NatsSink::builder(nats.js.clone())
        .missing_stream_is_permanent(true)
        .build()
        .unwrap();
    let outcomes = strict.publish(&records).await;
    assert!(
        matches!(outcomes[0], Outcome::Permanent(_)),
        "{}",
        outcomes[0]
    );
    assert!(matches!(outcomes[1], Outcome::Retriable(_)), "held back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_record_is_permanent_and_the_others_go_through() {
    let Some(nats) = TestNats::connect("an_oversized_record_is_permanent").await else {
        return;
    };
    let (topic, stream) = nats.topic().await;
    let mut too_large = record(1, &topic, Some("a"), 1);
    too_large.payload = "x".repeat(nats.client.server_info().max_payload + 1);
    let records = [too_large, record(2, &topic, Some("b"), 2)];
    let outcomes = nats.sink().publish(&records).await;
    assert!(
        matches!(outcomes[0], Outcome::Permanent(_)),
        "{}",
        outcomes[0]
    );
    let error = error_of(&outcomes[0]);
    assert!(matches!(
        error,
        Error::Publish {
            kind: PublishErrorKind::MaxPayloadExceeded,
            ..
        }
    ));
    assert!(error.to_string().contains("max_payload"), "{error}");
    assert!(outcomes[1].is_delivered(), "{}", outcomes[1]);
    let messages = nats.read(&stream).await;
    assert_eq!(messages.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_makes_records_retriable_and_a_bad_subject_permanent() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    let sink = NatsSink::builder(async_nats::jetstream::new(client))
        .publish_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let records = [
        record(1, "orders", Some("k"), 1),
        record(2, "orders", Some("k"), 2),
        record(3, "bad topic", None, 3),
    ];
    let outcomes = sink.publish(&records).await;
    assert!(
        matches!(outcomes[0], Outcome::Retriable(_)),
        "{}",
        outcomes[0]
    );
    assert!(error_of(&outcomes[0]).is_retriable());
    assert!(matches!(outcomes[1], Outcome::Retriable(_)), "held back");
    assert!(
        matches!(outcomes[2], Outcome::Permanent(_)),
        "{}",
        outcomes[2]
    );
    assert!(matches!(
        error_of(&outcomes[2]),
        Error::InvalidSubject { .. }
    ));
}

#[test]
fn a_bad_configuration_fails_at_build() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        for bad in [
            NatsSink::builder(js.clone())
                .publish_timeout(Duration::ZERO)
                .build(),
            NatsSink::builder(js.clone()).subject_prefix("a b.").build(),
            NatsSink::builder(js.clone()).subject_prefix("a.*.").build(),
        ] {
            assert!(matches!(bad, Err(Error::Config(_))), "{bad:?}");
        }
    });
}
