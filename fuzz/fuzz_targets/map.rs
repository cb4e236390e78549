//! Fuzz target `map`: arbitrary outbox rows through the outbox mapper and the header-map construction, as `run`,
//! `peek` and `replay` do it. Input: one flags byte (bit 0: bytea payload, bit 1: `--on-invalid dead-letter`, bits 2-3:
//! `--cloudevents` off/binary/structured/structured, bit 4: `--header-columns traceparent,tenant:Tenant` and a
//! `{aggregate_id|partition:7}` subject, bit 5: a text (not jsonb) payload; the high bits pick max_payload), then
//! eight columns (id, aggregate_type, aggregate_id, event_type, payload, headers, traceparent, tenant), each a
//! big-endian `u16` length (0xFFFF: NULL) and that many bytes (missing columns are NULL). Every row must give either a message that
//! async-nats accepts as is (valid header names and values, within max_payload with room for the publisher's
//! headers) or an invalid event with a reason, whose dead-letter record is as valid. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgoutput::{oid, Lsn};
use walrelay_core::{
    config::{RawSettings, Settings},
    mapping::fixture::{assert_wire_ready, relation, tuple, OUTBOX_COLUMNS, RELATION_ID},
    mapping::outbox::{MapError, OutboxMapper, TxnStamp},
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let mut values: Vec<Option<&[u8]>> = Vec::with_capacity(8);
    for _ in 0..8 {
        let value = match rest {
            [0xFF, 0xFF, tail @ ..] => {
                rest = tail;
                None
            }
            [hi, lo, tail @ ..] => {
                let n = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
                let (v, tail) = tail.split_at(n);
                rest = tail;
                Some(v)
            }
            _ => None,
        };
        values.push(value);
    }
    let max_payload = [1024 * 1024, 4096, 1024, 600][usize::from(flags >> 6)];
    let dead_letter = flags & 2 != 0;
    let interop = flags & 16 != 0;
    let raw = RawSettings {
        on_invalid: if dead_letter { "dead-letter" } else { "stop" }.into(),
        cloudevents: ["off", "binary", "structured", "structured"][usize::from(flags >> 2 & 3)].into(),
        header_columns: interop.then(|| "traceparent,tenant:Tenant".into()),
        subject: if interop {
            "outbox.{aggregate_type}.{aggregate_id|partition:7}".into()
        } else {
            RawSettings::default().subject
        },
        ..Default::default()
    };
    let Ok(settings) = Settings::validate(raw) else { return };
    let Ok(mut mapper) = OutboxMapper::new(&settings) else { return };
    let mut columns: Vec<(&str, u32)> = OUTBOX_COLUMNS.to_vec();
    columns[4].1 = match flags {
        f if f & 1 != 0 => oid::BYTEA,
        f if f & 32 != 0 => oid::TEXT,
        _ => oid::JSONB,
    };
    columns.extend([("traceparent", oid::TEXT), ("tenant", oid::TEXT)]);
    if mapper.relation(&relation(&columns)).is_err() {
        return;
    }
    mapper.set_max_payload(max_payload);
    let txn = TxnStamp::new(Lsn(u64::from(flags) << 24 | 0x1234), i64::from(flags) * 1_000_000_007);
    match mapper.map(RELATION_ID, &tuple(&values), &txn, u32::from(flags)) {
        Ok(event) => assert_wire_ready(&event, max_payload),
        Err(MapError::Invalid(invalid)) => {
            assert!(!invalid.reason.is_empty());
            match mapper.on_invalid(invalid) {
                Ok(record) => assert_wire_ready(&record, max_payload),
                Err(invalid) => assert!(!dead_letter || invalid.reason.contains("dead-letter record")),
            }
        }
        Err(MapError::Source(e)) => panic!("stream error for a well-formed tuple: {e}"),
    }
});
