//! The trace context active at enqueue travels with the record. (Its own
//! test binary: the source is installed once per process.)

use std::cell::RefCell;

use outbox_engine::{NewRecord, OutboxEvent, TRACEPARENT, set_traceparent_source};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = id)]
struct Traced {
    id: u32,
}

thread_local! {
    static CURRENT: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn current() -> Option<String> {
    CURRENT.with(|current| current.borrow().clone())
}

#[test]
fn records_carry_the_traceparent_active_at_enqueue() {
    let untraced = NewRecord::from_event(&Traced { id: 1 }).unwrap();
    assert!(!untraced.headers.contains_key(TRACEPARENT), "no source yet");

    set_traceparent_source(current).unwrap();
    let untraced = NewRecord::from_event(&Traced { id: 2 }).unwrap();
    assert!(
        !untraced.headers.contains_key(TRACEPARENT),
        "no span active"
    );

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    CURRENT.with(|current| *current.borrow_mut() = Some(traceparent.to_owned()));
    let traced = NewRecord::from_event(&Traced { id: 3 }).unwrap();
    assert_eq!(
        traced.headers.get(TRACEPARENT).map(String::as_str),
        Some(traceparent)
    );

    let error = set_traceparent_source(current).unwrap_err();
    assert!(error.to_string().contains("already installed"), "{error}");
}
