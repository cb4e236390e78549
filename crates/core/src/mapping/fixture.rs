//! Test fixture for the outbox mapper: Relation and Tuple values as the pgoutput decoder hands them over, and the
//! check every message given to async-nats must pass. One place for the mapper's unit and property tests, the `map`
//! fuzz target and the integration tests that map rows without a server (cargo feature `testing`).

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use pgoutput::{oid, Relation, RelationColumn, Tuple, TupleValue};

use crate::mapping::event::{header_name, header_value, Event};
use crate::sink::publisher::ADDED_HEADERS_MAX;

/// The relation id of every fixture relation.
pub const RELATION_ID: u32 = 1;

/// The columns of the default outbox table (design.md §4) without `created_at`, in table order, with their type
/// oids. The mapper reads only the payload column's type (bytea or text-like).
pub const OUTBOX_COLUMNS: [(&str, u32); 6] = [
    ("id", oid::UUID),
    ("aggregate_type", oid::TEXT),
    ("aggregate_id", oid::TEXT),
    ("event_type", oid::TEXT),
    ("payload", oid::JSONB),
    ("headers", oid::JSONB),
];

/// A Relation message of table `public.outbox` (id [`RELATION_ID`]) with these columns (name, type oid).
pub fn relation(columns: &[(&str, u32)]) -> Relation {
    Relation {
        xid: None,
        id: RELATION_ID,
        namespace: "public".into(),
        name: "outbox".into(),
        replica_identity: b'd',
        columns: columns
            .iter()
            .map(|(name, type_oid)| RelationColumn {
                flags: 0,
                name: (*name).into(),
                type_oid: *type_oid,
                type_modifier: -1,
            })
            .collect(),
    }
}

/// The default outbox table ([`OUTBOX_COLUMNS`]) with a payload column of type `payload_type` (e.g. `oid::JSONB`
/// or `oid::BYTEA`).
pub fn outbox_relation(payload_type: u32) -> Relation {
    let mut columns = OUTBOX_COLUMNS;
    columns[4].1 = payload_type;
    relation(&columns)
}

/// A tuple of text-format values, `None` for NULL, in column order.
pub fn tuple<V: AsRef<[u8]>>(values: &[Option<V>]) -> Tuple {
    Tuple(
        values
            .iter()
            .map(|v| match v {
                Some(v) => TupleValue::Text(Bytes::copy_from_slice(v.as_ref())),
                None => TupleValue::Null,
            })
            .collect(),
    )
}

/// Panics unless the event is what every message handed to async-nats must be: a non-empty subject without
/// whitespace, header names and values async-nats accepts (it panics on others), a non-empty `Nats-Msg-Id`, a wire
/// size that fits `max_payload` with the most the publisher adds, and a publish message that builds.
pub fn assert_wire_ready(event: &Event, max_payload: usize) {
    assert!(!event.subject.is_empty() && !event.subject.contains([' ', '\t', '\r', '\n']), "{}", event.subject);
    for (name, values) in event.headers.iter() {
        let name: &str = name.as_ref();
        assert!(header_name(name).is_some(), "header name {}", name.escape_debug());
        for value in values {
            assert!(header_value(value.as_str()).is_some(), "header value {}", value.as_str().escape_debug());
        }
    }
    assert!(event.header("Nats-Msg-Id").is_some_and(|id| !id.is_empty()), "no Nats-Msg-Id");
    assert!(event.wire_size() + ADDED_HEADERS_MAX <= max_payload, "{} bytes", event.wire_size());
    let _ = PublishMessage::build()
        .payload(event.payload.clone())
        .headers(event.headers.clone())
        .expected_last_sequence(u64::MAX);
}
