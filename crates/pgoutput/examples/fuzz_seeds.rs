//! Writes the seed corpus of the `decode` fuzz target (`fuzz/corpus/decode`): valid sessions with every message
//! kind, for every protocol version, plus a few invalid sequences.
//!
//! File format (what `fuzz/fuzz_targets/decode.rs` reads): one mode byte (`protocol version - 1` in the low two
//! bits), then frames of a big-endian `u16` length followed by that many bytes of one pgoutput message.
//!
//! ```text
//! cargo run -p pgoutput --features encode --example fuzz_seeds -- fuzz/corpus/decode
//! ```

use std::path::PathBuf;

use bytes::Bytes;
use pgoutput::encode::encode;
use pgoutput::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("usage: fuzz_seeds <corpus dir>")?);
    std::fs::create_dir_all(&dir)?;
    for (name, version, messages) in seeds() {
        let mut file = vec![u8::try_from(version - 1)?];
        for message in &messages {
            let data = encode(message)?;
            file.extend_from_slice(&u16::try_from(data.len())?.to_be_bytes());
            file.extend_from_slice(&data);
        }
        std::fs::write(dir.join(name), file)?;
    }
    Ok(())
}

fn text(value: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(value.as_bytes()))
}

fn column(name: &str, type_oid: u32, key: bool) -> RelationColumn {
    RelationColumn { flags: u8::from(key), name: name.into(), type_oid, type_modifier: -1 }
}

fn relation(xid: Option<u32>) -> Message {
    Message::Relation(Relation {
        xid,
        id: 16_385,
        namespace: "public".into(),
        name: "outbox".into(),
        replica_identity: b'd',
        columns: vec![
            column("id", oid::UUID, true),
            column("aggregate_type", oid::TEXT, false),
            column("payload", oid::JSONB, false),
            column("created_at", oid::TIMESTAMPTZ, false),
        ],
    })
}

fn row(id: &str) -> Tuple {
    Tuple(vec![text(id), text("order"), text(r#"{"total": 12.5}"#), text("2024-03-01 12:34:56.789+00")])
}

/// Every type `convert` knows, as text.
fn typed() -> (Message, Tuple) {
    let columns = [
        ("b", oid::BOOL, "t"),
        ("i2", oid::INT2, "-32768"),
        ("i4", oid::INT4, "2147483647"),
        ("i8", oid::INT8, "-9223372036854775808"),
        ("f4", oid::FLOAT4, "1.5"),
        ("f8", oid::FLOAT8, "-Infinity"),
        ("n", oid::NUMERIC, "-123.4500"),
        ("t", oid::TEXT, "héllo"),
        ("vc", oid::VARCHAR, "v"),
        ("bp", oid::BPCHAR, "ab  "),
        ("nm", oid::NAME, "pg"),
        ("u", oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("j", oid::JSON, "[1, 2]"),
        ("by", oid::BYTEA, "\\xdeadbeef"),
        ("d", oid::DATE, "0044-03-15 BC"),
        ("ts", oid::TIMESTAMP, "infinity"),
        ("tz", oid::TIMESTAMPTZ, "1900-01-01 00:00:00+00:09:21"),
        ("pt", 600, "(1,2)"),
    ];
    let relation = Relation {
        xid: None,
        id: 20_000,
        namespace: String::new(),
        name: "typed".into(),
        replica_identity: b'f',
        columns: columns.iter().map(|(name, type_oid, _)| column(name, *type_oid, false)).collect(),
    };
    let tuple = Tuple(columns.iter().map(|(_, _, value)| text(value)).collect());
    (Message::Relation(relation), tuple)
}

fn begin(lsn: u64) -> Message {
    Message::Begin(Begin { final_lsn: Lsn(lsn), commit_time: 762_000_000_000_000, xid: 740 })
}

fn commit(lsn: u64) -> Message {
    Message::Commit(Commit {
        flags: 0,
        commit_lsn: Lsn(lsn),
        end_lsn: Lsn(lsn + 0x30),
        commit_time: 762_000_000_000_000,
    })
}

fn transaction(lsn: u64, body: Vec<Message>) -> Vec<Message> {
    let mut messages = vec![begin(lsn), relation(None)];
    messages.extend(body);
    messages.push(commit(lsn));
    messages
}

const ID: &str = "6f1b3c2a-0000-4000-8000-000000000001";

fn insert(xid: Option<u32>, new: Tuple) -> Message {
    Message::Insert(Insert { xid, relation_id: 16_385, new })
}

fn stream(version: u32, end: Message) -> Vec<Message> {
    vec![
        Message::StreamStart(StreamStart { xid: 900, first_segment: true }),
        relation(Some(900)),
        insert(Some(900), row(ID)),
        insert(Some(901), row(ID)),
        Message::Message(LogicalMessage {
            xid: Some(901),
            transactional: true,
            lsn: Lsn(0x100),
            prefix: "p".into(),
            content: Bytes::from_static(b"x"),
        }),
        Message::StreamStop,
        Message::StreamStart(StreamStart { xid: 900, first_segment: false }),
        Message::Truncate(Truncate { xid: Some(900), options: 0, relation_ids: vec![16_385] }),
        Message::StreamStop,
    ]
    .into_iter()
    .chain([end])
    .chain((version >= 3).then(|| Message::Origin(Origin { commit_lsn: Lsn(1), name: "o".into() })))
    .collect()
}

fn prepared(outcome: Message) -> Vec<Message> {
    let lsn = Lsn(0x2000);
    let gid = "pg_gid_1".to_owned();
    vec![
        Message::BeginPrepare(BeginPrepare {
            prepare_lsn: lsn,
            end_lsn: Lsn(0x2040),
            prepare_time: 1,
            xid: 77,
            gid: gid.clone(),
        }),
        relation(None),
        insert(None, row(ID)),
        Message::Prepare(Prepare { flags: 0, prepare_lsn: lsn, end_lsn: Lsn(0x2040), prepare_time: 1, xid: 77, gid }),
        outcome,
    ]
}

fn seeds() -> Vec<(&'static str, u32, Vec<Message>)> {
    let (typed_relation, typed_tuple) = typed();
    let binary = Tuple(vec![
        TupleValue::Binary(Bytes::from_static(&[0xa0; 16])),
        TupleValue::Binary(Bytes::from_static(b"order")),
        TupleValue::Binary(Bytes::from_static(b"\x01{}")),
        TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 7])),
    ]);
    let with_toast = Tuple(vec![text(ID), text("order"), TupleValue::UnchangedToast, TupleValue::Null]);
    let gid = || "pg_gid_1".to_owned();
    vec![
        ("v1_insert", 1, transaction(0x1000, vec![insert(None, row(ID))])),
        (
            "v1_update_key_changed",
            1,
            transaction(
                0x1000,
                vec![Message::Update(Update {
                    xid: None,
                    relation_id: 16_385,
                    old_key: Some(Tuple(vec![text(ID), TupleValue::Null, TupleValue::Null, TupleValue::Null])),
                    old: None,
                    new: row("6f1b3c2a-0000-4000-8000-000000000002"),
                })],
            ),
        ),
        (
            "v1_update_full_old_unchanged_toast",
            1,
            transaction(
                0x1000,
                vec![Message::Update(Update {
                    xid: None,
                    relation_id: 16_385,
                    old_key: None,
                    old: Some(row(ID)),
                    new: with_toast,
                })],
            ),
        ),
        (
            "v1_delete_key",
            1,
            transaction(
                0x1000,
                vec![Message::Delete(Delete {
                    xid: None,
                    relation_id: 16_385,
                    old_key: Some(Tuple(vec![text(ID), TupleValue::Null, TupleValue::Null, TupleValue::Null])),
                    old: None,
                })],
            ),
        ),
        (
            "v1_delete_full",
            1,
            transaction(
                0x1000,
                vec![Message::Delete(Delete { xid: None, relation_id: 16_385, old_key: None, old: Some(row(ID)) })],
            ),
        ),
        (
            "v1_truncate",
            1,
            transaction(
                0x1000,
                vec![Message::Truncate(Truncate {
                    xid: None,
                    options: Truncate::CASCADE | Truncate::RESTART_IDENTITY,
                    relation_ids: vec![16_385, 16_390],
                })],
            ),
        ),
        (
            "v1_messages",
            1,
            vec![
                Message::Message(LogicalMessage {
                    xid: None,
                    transactional: false,
                    lsn: Lsn(0x900),
                    prefix: "walrelay".into(),
                    content: Bytes::from_static(b"hello"),
                }),
                begin(0x1000),
                Message::Message(LogicalMessage {
                    xid: None,
                    transactional: true,
                    lsn: Lsn(0x990),
                    prefix: "walrelay".into(),
                    content: Bytes::from_static(b"\x00\xff"),
                }),
                commit(0x1000),
            ],
        ),
        (
            "v1_origin_type",
            1,
            transaction(
                0x1000,
                vec![
                    Message::Origin(Origin { commit_lsn: Lsn(0x77), name: "node_a".into() }),
                    Message::Type(TypeMessage {
                        xid: None,
                        type_oid: 16_400,
                        namespace: "public".into(),
                        name: "mood".into(),
                    }),
                ],
            ),
        ),
        ("v1_typed_values", 1, vec![begin(0x1000), typed_relation, insert_into(20_000, typed_tuple), commit(0x1000)]),
        ("v1_binary_values", 1, transaction(0x1000, vec![insert(None, binary)])),
        (
            "v1_two_transactions",
            1,
            [transaction(0x1000, vec![insert(None, row(ID))]), transaction(0x2000, vec![])].concat(),
        ),
        ("v1_commit_lsn_mismatch", 1, vec![begin(0x1000), commit(0x1008)]),
        ("v1_begin_inside_transaction", 1, vec![begin(0x1000), begin(0x2000)]),
        (
            "v2_stream_commit",
            2,
            stream(
                2,
                Message::StreamCommit(StreamCommit {
                    xid: 900,
                    flags: 0,
                    commit_lsn: Lsn(0x3000),
                    end_lsn: Lsn(0x3030),
                    commit_time: 5,
                }),
            ),
        ),
        ("v2_stream_abort", 2, stream(2, Message::StreamAbort(StreamAbort { xid: 900, subxid: 901, abort: None }))),
        (
            "v3_commit_prepared",
            3,
            prepared(Message::CommitPrepared(CommitPrepared {
                flags: 0,
                commit_lsn: Lsn(0x2100),
                end_lsn: Lsn(0x2140),
                commit_time: 2,
                xid: 77,
                gid: gid(),
            })),
        ),
        (
            "v3_rollback_prepared",
            3,
            prepared(Message::RollbackPrepared(RollbackPrepared {
                flags: 0,
                prepare_end_lsn: Lsn(0x2040),
                rollback_end_lsn: Lsn(0x2140),
                prepare_time: 1,
                rollback_time: 2,
                xid: 77,
                gid: gid(),
            })),
        ),
        (
            "v3_stream_prepare",
            3,
            stream(
                3,
                Message::StreamPrepare(StreamPrepare {
                    flags: 0,
                    prepare_lsn: Lsn(0x3000),
                    end_lsn: Lsn(0x3030),
                    prepare_time: 3,
                    xid: 900,
                    gid: gid(),
                }),
            ),
        ),
        (
            "v4_stream_abort_parallel",
            4,
            stream(
                4,
                Message::StreamAbort(StreamAbort {
                    xid: 900,
                    subxid: 900,
                    abort: Some(StreamAbortInfo { lsn: Lsn(0x3100), time: 9 }),
                }),
            ),
        ),
    ]
}

fn insert_into(relation_id: u32, new: Tuple) -> Message {
    Message::Insert(Insert { xid: None, relation_id, new })
}
