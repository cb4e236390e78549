//! Fuzz target `map`: arbitrary outbox rows through the outbox mapper and the header-map construction, as `run`,
//! `peek` and `replay` do it. Input: one flags byte (bit 0: bytea payload, bit 1: `--on-invalid dead-letter`; the
//! high bits pick max_payload), then six columns (id, aggregate_type, aggregate_id, event_type, payload, headers),
//! each a big-endian `u16` length (0xFFFF: NULL) and that many bytes. Every row must give either a message that
//! async-nats accepts as is (valid header names and values, within max_payload with room for the publisher's
//! headers) or an invalid event with a reason, whose dead-letter record is as valid. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgoutput::{oid, Lsn};
use walrelay_core::{
    config::{RawSettings, Settings},
    mapping::fixture::{assert_wire_ready, outbox_relation, tuple, RELATION_ID},
    mapping::outbox::{MapError, OutboxMapper, TxnStamp},
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let mut values: Vec<Option<&[u8]>> = Vec::with_capacity(6);
    for _ in 0..6 {
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
    let raw = RawSettings { on_invalid: if dead_letter { "dead-letter" } else { "stop" }.into(), ..Default::default() };
    let Ok(settings) = Settings::validate(raw) else { return };
    let Ok(mut mapper) = OutboxMapper::new(&settings) else { return };
    if mapper.relation(&outbox_relation(if flags & 1 != 0 { oid::BYTEA } else { oid::JSONB })).is_err() {
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
