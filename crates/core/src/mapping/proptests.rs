//! Property tests of the mapper and its header-map construction: arbitrary column values (any unicode, control
//! characters, NULLs, empty and very long strings, invalid UTF-8) and arbitrary `headers` JSON (any keys, values and
//! nesting, or not JSON at all) give either a message async-nats accepts as is, or an invalid event with a reason,
//! whose dead-letter record async-nats accepts too. Never a panic. The same holds with the output options of design.md
//! §4e: every `--cloudevents` mode (a structured envelope counts against max_payload), header columns with any value
//! and a partitioned subject.

use pgoutput::{oid, Lsn};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

use crate::config::{RawSettings, Settings};
use crate::mapping::fixture::{assert_wire_ready, relation, tuple, OUTBOX_COLUMNS, RELATION_ID};
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

/// The output options of design.md §4e a case runs with.
#[derive(Debug, Clone)]
struct Output {
    cloudevents: &'static str,
    header_columns: bool,
    partitioned: bool,
}

fn output() -> impl Strategy<Value = Output> {
    (prop_oneof![Just("off"), Just("binary"), Just("structured")], any::<bool>(), any::<bool>())
        .prop_map(|(cloudevents, header_columns, partitioned)| Output { cloudevents, header_columns, partitioned })
}

fn settings(dead_letter: bool, output: &Output) -> Settings {
    let raw = RawSettings {
        on_invalid: if dead_letter { "dead-letter" } else { "stop" }.into(),
        cloudevents: output.cloudevents.into(),
        header_columns: output.header_columns.then(|| "traceparent,tenant:Tenant".into()),
        subject: if output.partitioned {
            "outbox.{aggregate_type}.{aggregate_id|partition:7}".into()
        } else {
            RawSettings::default().subject
        },
        ..Default::default()
    };
    Settings::validate(raw).expect("valid settings")
}

/// The outbox table with the payload type given and two more text columns (the header columns' sources).
fn outbox_relation(payload_type: u32) -> pgoutput::Relation {
    let mut columns: Vec<(&str, u32)> = OUTBOX_COLUMNS.to_vec();
    columns[4].1 = payload_type;
    columns.extend([("traceparent", oid::TEXT), ("tenant", oid::TEXT)]);
    relation(&columns)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_row_maps_to_a_wire_ready_message_or_an_invalid_event(
        values in vec(column(), 4),
        payload in column(),
        headers in headers_column(),
        extra in vec(column(), 2),
        payload_type in prop_oneof![Just(oid::JSONB), Just(oid::JSON), Just(oid::TEXT), Just(oid::BYTEA)],
        output in output(),
        max_payload in prop_oneof![Just(1024usize * 1024), 300usize..6000],
        index in any::<u32>(),
        commit_lsn in any::<u64>(),
        commit_time in any::<i64>(),
    ) {
        let mut values = values;
        values.push(payload);
        values.push(headers);
        values.extend(extra);
        let row = tuple(&values);
        let txn = TxnStamp::new(Lsn(commit_lsn), commit_time);
        for dead_letter in [false, true] {
            let mut mapper = OutboxMapper::new(&settings(dead_letter, &output)).expect("mapper");
            mapper.relation(&outbox_relation(payload_type)).expect("relation");
            mapper.set_max_payload(max_payload);
            match mapper.map(RELATION_ID, &row, &txn, index) {
                Ok(event) => {
                    assert_wire_ready(&event, max_payload);
                    if output.cloudevents == "structured" {
                        // The envelope is JSON whatever the row held, with the id the stream deduplicates on.
                        // (Raw values: `data` is the row's JSON as Postgres validated it, numbers of any size.)
                        let envelope: std::collections::HashMap<String, Box<serde_json::value::RawValue>> =
                            serde_json::from_slice(&event.payload).expect("a JSON envelope");
                        let id = envelope.get("id").and_then(|id| serde_json::from_str::<String>(id.get()).ok());
                        prop_assert_eq!(id.as_deref(), Some(event.id.as_str()));
                    }
                }
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
