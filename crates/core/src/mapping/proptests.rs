//! Property tests of the mapper and its header-map construction: arbitrary column values (any unicode, control
//! characters, NULLs, empty and very long strings, invalid UTF-8) and arbitrary `headers` JSON (any keys, values and
//! nesting, or not JSON at all) give either a message async-nats accepts as is, or an invalid event with a reason,
//! whose dead-letter record async-nats accepts too. Never a panic.

use pgoutput::{oid, Lsn};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

use crate::config::{RawSettings, Settings};
use crate::mapping::fixture::{assert_wire_ready, outbox_relation, tuple, RELATION_ID};
use crate::mapping::outbox::{MapError, OutboxMapper, TxnStamp};

/// Strings that matter for headers and subjects: any unicode, ASCII with separators and controls, long runs.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,12}",
        "[a-zA-Z0-9 :\\r\\n\\t\\x00\\x7f.*>é-]{0,12}",
        (1usize..5000).prop_map(|n| "x".repeat(n)),
        Just(String::new()),
    ]
}

fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            btree_map(text(), inner, 0..4).prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The `headers` column: usually an object with arbitrary keys, sometimes any JSON value or arbitrary text.
fn headers_column() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        4 => btree_map(text(), json(), 0..6)
            .prop_map(|m| Some(serde_json::Value::Object(m.into_iter().collect()).to_string().into_bytes())),
        1 => json().prop_map(|v| Some(v.to_string().into_bytes())),
        1 => text().prop_map(|s| Some(s.into_bytes())),
        1 => Just(None),
    ]
}

fn column() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        6 => text().prop_map(|s| Some(s.into_bytes())),
        1 => vec(any::<u8>(), 0..40).prop_map(Some),
        1 => Just(None),
    ]
}

fn settings(dead_letter: bool) -> Settings {
    let raw = RawSettings { on_invalid: if dead_letter { "dead-letter" } else { "stop" }.into(), ..Default::default() };
    Settings::validate(raw).expect("valid settings")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_row_maps_to_a_wire_ready_message_or_an_invalid_event(
        values in vec(column(), 4),
        payload in column(),
        headers in headers_column(),
        bytea in any::<bool>(),
        max_payload in prop_oneof![Just(1024usize * 1024), 300usize..6000],
        index in any::<u32>(),
        commit_lsn in any::<u64>(),
        commit_time in any::<i64>(),
    ) {
        let mut values = values;
        values.push(payload);
        values.push(headers);
        let row = tuple(&values);
        let txn = TxnStamp::new(Lsn(commit_lsn), commit_time);
        for dead_letter in [false, true] {
            let mut mapper = OutboxMapper::new(&settings(dead_letter)).expect("mapper");
            mapper.relation(&outbox_relation(if bytea { oid::BYTEA } else { oid::JSONB })).expect("relation");
            mapper.set_max_payload(max_payload);
            match mapper.map(RELATION_ID, &row, &txn, index) {
                Ok(event) => assert_wire_ready(&event, max_payload),
                Err(MapError::Invalid(invalid)) => {
                    prop_assert!(!invalid.reason.is_empty());
                    match mapper.on_invalid(invalid) {
                        Ok(record) => {
                            prop_assert!(dead_letter && record.dead_letter);
                            assert_wire_ready(&record, max_payload);
                        }
                        Err(invalid) => prop_assert!(
                            !dead_letter || (max_payload < 1024 && invalid.reason.contains("dead-letter record")),
                            "{}", invalid.reason
                        ),
                    }
                }
                Err(MapError::Source(e)) => prop_assert!(false, "stream error for a well-formed tuple: {e}"),
            }
        }
    }
}
