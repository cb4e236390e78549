//! Fuzz target `map`: arbitrary outbox rows through the outbox mapper and the header-map construction, as `run`,
//! `peek` and `replay` do it. Input: one flags byte (bit 0: bytea payload, bit 1: `--on-invalid dead-letter`; the
//! high bits pick max_payload), then six columns (id, aggregate_type, aggregate_id, event_type, payload, headers),
//! each a big-endian `u16` length (0xFFFF: NULL) and that many bytes. Every row must give either a message that
//! async-nats accepts as is (valid header names and values, within max_payload with room for the publisher's
//! headers) or an invalid event with a reason, whose dead-letter record is as valid. Never a panic.
#![no_main]

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgoutput::{oid, Lsn, Relation, RelationColumn, Tuple, TupleValue};
use walrelay_core::{
    config::{RawSettings, Settings},
    mapping::event::{header_name, header_value, Event},
    mapping::outbox::{MapError, OutboxMapper, TxnStamp},
    sink::publisher::ADDED_HEADERS_MAX,
};

fn relation(bytea: bool) -> Relation {
    let columns = ["id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers"];
    Relation {
        xid: None,
        id: 1,
        namespace: "public".into(),
        name: "outbox".into(),
        replica_identity: b'd',
        columns: columns
            .iter()
            .map(|name| RelationColumn {
                flags: 0,
                name: (*name).into(),
                type_oid: match *name {
                    "payload" if bytea => oid::BYTEA,
                    "payload" | "headers" => oid::JSONB,
                    _ => oid::TEXT,
                },
                type_modifier: -1,
            })
            .collect(),
    }
}

fn check(event: &Event, max_payload: usize) {
    assert!(!event.subject.is_empty() && !event.subject.contains([' ', '\t', '\r', '\n']));
    for (name, values) in event.headers.iter() {
        let name: &str = name.as_ref();
        assert!(header_name(name).is_some(), "header name {}", name.escape_debug());
        for value in values {
            assert!(header_value(value.as_str()).is_some());
        }
    }
    assert!(event.wire_size() + ADDED_HEADERS_MAX <= max_payload);
    let _ = PublishMessage::build()
        .payload(event.payload.clone())
        .headers(event.headers.clone())
        .expected_last_sequence(u64::MAX);
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let mut values = Vec::with_capacity(6);
    for _ in 0..6 {
        let value = match rest {
            [0xFF, 0xFF, tail @ ..] => {
                rest = tail;
                TupleValue::Null
            }
            [hi, lo, tail @ ..] => {
                let n = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
                let (v, tail) = tail.split_at(n);
                rest = tail;
                TupleValue::Text(Bytes::copy_from_slice(v))
            }
            _ => TupleValue::Null,
        };
        values.push(value);
    }
    let max_payload = [1024 * 1024, 4096, 1024, 600][usize::from(flags >> 6)];
    let dead_letter = flags & 2 != 0;
    let raw = RawSettings { on_invalid: if dead_letter { "dead-letter" } else { "stop" }.into(), ..Default::default() };
    let Ok(settings) = Settings::validate(raw) else { return };
    let Ok(mut mapper) = OutboxMapper::new(&settings) else { return };
    if mapper.relation(&relation(flags & 1 != 0)).is_err() {
        return;
    }
    mapper.set_max_payload(max_payload);
    let txn = TxnStamp::new(Lsn(u64::from(flags) << 24 | 0x1234), i64::from(flags) * 1_000_000_007);
    match mapper.map(1, &Tuple(values), &txn, u32::from(flags)) {
        Ok(event) => check(&event, max_payload),
        Err(MapError::Invalid(invalid)) => {
            assert!(!invalid.reason.is_empty());
            match mapper.on_invalid(invalid) {
                Ok(record) => check(&record, max_payload),
                Err(invalid) => assert!(!dead_letter || invalid.reason.contains("dead-letter record")),
            }
        }
        Err(MapError::Source(e)) => panic!("stream error for a well-formed tuple: {e}"),
    }
});
