//! Handwritten byte fixtures for every message kind, and malformed input.

use bytes::Bytes;

use super::*;
use crate::{RelationCache, RelationColumn, StreamAbortInfo, Tuple, TupleValue};

mod malformed;

/// Concatenates wire fields into one message.
fn wire(parts: &[&[u8]]) -> Bytes {
    Bytes::from(parts.concat())
}

const FINAL_LSN: u64 = 0x16_B374_D848;
const END_LSN: u64 = 0x16_B374_D8A0;
const TIME: i64 = 777_777_777_000_000;

fn begin_bytes() -> Bytes {
    wire(&[b"B", &FINAL_LSN.to_be_bytes(), &TIME.to_be_bytes(), &1234_u32.to_be_bytes()])
}

fn commit_bytes(commit_lsn: u64) -> Bytes {
    wire(&[b"C", &[0], &commit_lsn.to_be_bytes(), &END_LSN.to_be_bytes(), &TIME.to_be_bytes()])
}

fn relation_bytes() -> Bytes {
    wire(&[
        b"R",
        &16_385_u32.to_be_bytes(),
        b"public\0",
        b"outbox\0",
        b"d",
        &2_u16.to_be_bytes(),
        &[1],
        b"id\0",
        &23_u32.to_be_bytes(),
        &(-1_i32).to_be_bytes(),
        &[0],
        b"payload\0",
        &1043_u32.to_be_bytes(),
        &68_i32.to_be_bytes(),
    ])
}

fn relation() -> Relation {
    Relation {
        xid: None,
        id: 16_385,
        namespace: "public".into(),
        name: "outbox".into(),
        replica_identity: b'd',
        columns: vec![
            RelationColumn { flags: 1, name: "id".into(), type_oid: 23, type_modifier: -1 },
            RelationColumn { flags: 0, name: "payload".into(), type_oid: 1043, type_modifier: 68 },
        ],
    }
}

/// Tuple `(42, 'hi')` as `TupleData`.
const TUPLE: &[u8] = b"\x00\x02t\x00\x00\x00\x0242t\x00\x00\x00\x02hi";

fn tuple() -> Tuple {
    Tuple(vec![TupleValue::Text(Bytes::from_static(b"42")), TupleValue::Text(Bytes::from_static(b"hi"))])
}

fn insert_bytes() -> Bytes {
    wire(&[b"I", &16_385_u32.to_be_bytes(), b"N", TUPLE])
}

/// A decoder with a Begin already decoded.
fn in_transaction(version: u32) -> Decoder {
    let mut decoder = Decoder::new(version).expect("valid version");
    decoder.decode(begin_bytes()).expect("begin");
    decoder
}

/// A decoder inside a stream block of xid 900.
fn in_stream(version: u32) -> Decoder {
    let mut decoder = Decoder::new(version).expect("valid version");
    decoder.decode(wire(&[b"S", &900_u32.to_be_bytes(), &[1]])).expect("stream start");
    decoder
}

#[test]
fn protocol_versions() {
    for version in 1..=4 {
        assert_eq!(Decoder::new(version).map(|d| d.protocol_version()), Ok(version));
    }
    assert_eq!(Decoder::new(0).err(), Some(DecodeError::UnsupportedProtocolVersion(0)));
    assert_eq!(Decoder::new(5).err(), Some(DecodeError::UnsupportedProtocolVersion(5)));
}

#[test]
fn begin_and_commit() {
    let mut decoder = Decoder::new(1).expect("v1");
    assert_eq!(
        decoder.decode(begin_bytes()),
        Ok(Message::Begin(Begin { final_lsn: Lsn(FINAL_LSN), commit_time: TIME, xid: 1234 }))
    );
    assert_eq!(decoder.transaction(), Some(OpenTransaction { final_lsn: Lsn(FINAL_LSN), xid: 1234 }));
    assert_eq!(
        decoder.decode(commit_bytes(FINAL_LSN)),
        Ok(Message::Commit(Commit { flags: 0, commit_lsn: Lsn(FINAL_LSN), end_lsn: Lsn(END_LSN), commit_time: TIME }))
    );
    assert_eq!(decoder.transaction(), None);
}

#[test]
fn origin() {
    let mut decoder = in_transaction(1);
    let data = wire(&[b"O", &0x10_u64.to_be_bytes(), b"node_a\0"]);
    assert_eq!(decoder.decode(data), Ok(Message::Origin(Origin { commit_lsn: Lsn(0x10), name: "node_a".into() })));
}

#[test]
fn relation_message() {
    let mut decoder = in_transaction(1);
    let decoded = decoder.decode(relation_bytes());
    assert_eq!(decoded, Ok(Message::Relation(relation())));
    assert_eq!(relation().qualified_name(), "public.outbox");
    assert!(relation().columns.first().is_some_and(RelationColumn::is_key));
}

#[test]
fn type_message() {
    let mut decoder = in_transaction(1);
    let data = wire(&[b"Y", &16_400_u32.to_be_bytes(), b"public\0", b"mood\0"]);
    assert_eq!(
        decoder.decode(data),
        Ok(Message::Type(TypeMessage { xid: None, type_oid: 16_400, namespace: "public".into(), name: "mood".into() }))
    );
}

#[test]
fn insert_with_every_column_kind() {
    let mut decoder = in_transaction(1);
    let data = wire(&[
        b"I",
        &7_u32.to_be_bytes(),
        b"N",
        b"\x00\x04",
        b"n",
        b"u",
        b"t\x00\x00\x00\x03abc",
        b"b\x00\x00\x00\x01\xff",
    ]);
    let expected = Tuple(vec![
        TupleValue::Null,
        TupleValue::UnchangedToast,
        TupleValue::Text(Bytes::from_static(b"abc")),
        TupleValue::Binary(Bytes::from_static(b"\xff")),
    ]);
    assert_eq!(decoder.decode(data), Ok(Message::Insert(Insert { xid: None, relation_id: 7, new: expected })));
}

#[test]
fn insert_values_are_slices_of_the_input() {
    let mut decoder = in_transaction(1);
    let data = insert_bytes();
    let range = data.as_ptr_range();
    let Ok(Message::Insert(insert)) = decoder.decode(data) else { panic!("insert expected") };
    let Some(TupleValue::Text(value)) = insert.new.0.first() else { panic!("text expected") };
    assert!(range.contains(&value.as_ptr()), "zero-copy");
}

#[test]
fn updates() {
    let mut decoder = in_transaction(1);
    let plain = wire(&[b"U", &16_385_u32.to_be_bytes(), b"N", TUPLE]);
    let update = |old_key, old| Update { xid: None, relation_id: 16_385, old_key, old, new: tuple() };
    assert_eq!(decoder.decode(plain), Ok(Message::Update(update(None, None))));
    let with_key = wire(&[b"U", &16_385_u32.to_be_bytes(), b"K", TUPLE, b"N", TUPLE]);
    assert_eq!(decoder.decode(with_key), Ok(Message::Update(update(Some(tuple()), None))));
    let with_old = wire(&[b"U", &16_385_u32.to_be_bytes(), b"O", TUPLE, b"N", TUPLE]);
    assert_eq!(decoder.decode(with_old), Ok(Message::Update(update(None, Some(tuple())))));
    let bad = wire(&[b"U", &16_385_u32.to_be_bytes(), b"X", TUPLE]);
    assert_eq!(decoder.decode(bad), Err(DecodeError::UnexpectedTupleMarker { message: "Update", marker: b'X' }));
    let missing_new = wire(&[b"U", &16_385_u32.to_be_bytes(), b"K", TUPLE, b"K", TUPLE]);
    assert_eq!(
        decoder.decode(missing_new),
        Err(DecodeError::UnexpectedTupleMarker { message: "Update", marker: b'K' })
    );
}

#[test]
fn deletes() {
    let mut decoder = in_transaction(1);
    let with_key = wire(&[b"D", &16_385_u32.to_be_bytes(), b"K", TUPLE]);
    assert_eq!(
        decoder.decode(with_key),
        Ok(Message::Delete(Delete { xid: None, relation_id: 16_385, old_key: Some(tuple()), old: None }))
    );
    let with_old = wire(&[b"D", &16_385_u32.to_be_bytes(), b"O", TUPLE]);
    assert_eq!(
        decoder.decode(with_old),
        Ok(Message::Delete(Delete { xid: None, relation_id: 16_385, old_key: None, old: Some(tuple()) }))
    );
    let without_old = wire(&[b"D", &16_385_u32.to_be_bytes(), b"N", TUPLE]);
    assert_eq!(
        decoder.decode(without_old),
        Err(DecodeError::UnexpectedTupleMarker { message: "Delete", marker: b'N' })
    );
}

#[test]
fn truncate() {
    let mut decoder = in_transaction(1);
    let data = wire(&[b"T", &2_u32.to_be_bytes(), &[3], &10_u32.to_be_bytes(), &11_u32.to_be_bytes()]);
    assert_eq!(
        decoder.decode(data),
        Ok(Message::Truncate(Truncate {
            xid: None,
            options: Truncate::CASCADE | Truncate::RESTART_IDENTITY,
            relation_ids: vec![10, 11]
        }))
    );
    let huge = wire(&[b"T", &u32::MAX.to_be_bytes(), &[0], &10_u32.to_be_bytes()]);
    assert!(matches!(decoder.decode(huge), Err(DecodeError::Truncated { message: "Truncate", .. })));
}

#[test]
fn logical_messages() {
    let mut decoder = Decoder::new(1).expect("v1");
    let non_transactional = wire(&[b"M", &[0], &0x20_u64.to_be_bytes(), b"walrelay\0", &3_u32.to_be_bytes(), b"a\0b"]);
    let expected = |transactional| LogicalMessage {
        xid: None,
        transactional,
        lsn: Lsn(0x20),
        prefix: "walrelay".into(),
        content: Bytes::from_static(b"a\0b"),
    };
    assert_eq!(decoder.decode(non_transactional), Ok(Message::Message(expected(false))), "allowed outside");
    let transactional = wire(&[b"M", &[1], &0x20_u64.to_be_bytes(), b"walrelay\0", &3_u32.to_be_bytes(), b"a\0b"]);
    assert_eq!(decoder.decode(transactional.clone()), Err(DecodeError::ChangeOutsideTransaction));
    let mut decoder = in_transaction(1);
    assert_eq!(decoder.decode(transactional), Ok(Message::Message(expected(true))));
}

#[test]
fn stream_block_messages_carry_xids() {
    let mut decoder = Decoder::new(2).expect("v2");
    assert_eq!(
        decoder.decode(wire(&[b"S", &900_u32.to_be_bytes(), &[1]])),
        Ok(Message::StreamStart(StreamStart { xid: 900, first_segment: true }))
    );
    assert_eq!(decoder.stream_xid(), Some(900));
    let mut relation_in_stream = relation_bytes().to_vec();
    relation_in_stream.splice(1..1, 901_u32.to_be_bytes());
    assert_eq!(
        decoder.decode(Bytes::from(relation_in_stream)),
        Ok(Message::Relation(Relation { xid: Some(901), ..relation() }))
    );
    let insert = wire(&[b"I", &901_u32.to_be_bytes(), &16_385_u32.to_be_bytes(), b"N", TUPLE]);
    assert_eq!(
        decoder.decode(insert),
        Ok(Message::Insert(Insert { xid: Some(901), relation_id: 16_385, new: tuple() })),
        "no Begin needed inside a stream block"
    );
    let truncate = wire(&[b"T", &901_u32.to_be_bytes(), &1_u32.to_be_bytes(), &[0], &16_385_u32.to_be_bytes()]);
    assert_eq!(
        decoder.decode(truncate),
        Ok(Message::Truncate(Truncate { xid: Some(901), options: 0, relation_ids: vec![16_385] }))
    );
    assert_eq!(decoder.decode(wire(&[b"E"])), Ok(Message::StreamStop));
    assert_eq!(decoder.stream_xid(), None);
    let commit = wire(&[
        b"c",
        &900_u32.to_be_bytes(),
        &[0],
        &FINAL_LSN.to_be_bytes(),
        &END_LSN.to_be_bytes(),
        &TIME.to_be_bytes(),
    ]);
    assert_eq!(
        decoder.decode(commit),
        Ok(Message::StreamCommit(StreamCommit {
            xid: 900,
            flags: 0,
            commit_lsn: Lsn(FINAL_LSN),
            end_lsn: Lsn(END_LSN),
            commit_time: TIME
        }))
    );
}

#[test]
fn stream_abort_per_version() {
    let short = wire(&[b"A", &900_u32.to_be_bytes(), &901_u32.to_be_bytes()]);
    let long =
        wire(&[b"A", &900_u32.to_be_bytes(), &901_u32.to_be_bytes(), &END_LSN.to_be_bytes(), &TIME.to_be_bytes()]);
    let abort = |abort| Ok(Message::StreamAbort(StreamAbort { xid: 900, subxid: 901, abort }));
    let mut v2 = Decoder::new(2).expect("v2");
    assert_eq!(v2.decode(short.clone()), abort(None));
    assert_eq!(v2.decode(long.clone()), Err(DecodeError::TrailingBytes { message: "Stream Abort", count: 16 }));
    let mut v4 = Decoder::new(4).expect("v4");
    assert_eq!(v4.decode(short), abort(None));
    assert_eq!(v4.decode(long), abort(Some(StreamAbortInfo { lsn: Lsn(END_LSN), time: TIME })));
}

#[test]
fn two_phase_messages() {
    let mut decoder = Decoder::new(3).expect("v3");
    let xid = 555_u32.to_be_bytes();
    let begin = wire(&[b"b", &FINAL_LSN.to_be_bytes(), &END_LSN.to_be_bytes(), &TIME.to_be_bytes(), &xid, b"gid-1\0"]);
    assert_eq!(
        decoder.decode(begin),
        Ok(Message::BeginPrepare(BeginPrepare {
            prepare_lsn: Lsn(FINAL_LSN),
            end_lsn: Lsn(END_LSN),
            prepare_time: TIME,
            xid: 555,
            gid: "gid-1".into()
        }))
    );
    assert!(decoder.decode(insert_bytes()).is_ok(), "changes allowed inside a prepared transaction");
    let prepare =
        wire(&[b"P", &[0], &FINAL_LSN.to_be_bytes(), &END_LSN.to_be_bytes(), &TIME.to_be_bytes(), &xid, b"gid-1\0"]);
    assert_eq!(
        decoder.decode(prepare),
        Ok(Message::Prepare(Prepare {
            flags: 0,
            prepare_lsn: Lsn(FINAL_LSN),
            end_lsn: Lsn(END_LSN),
            prepare_time: TIME,
            xid: 555,
            gid: "gid-1".into()
        }))
    );
    let commit =
        wire(&[b"K", &[0], &0x30_u64.to_be_bytes(), &0x40_u64.to_be_bytes(), &TIME.to_be_bytes(), &xid, b"gid-1\0"]);
    assert_eq!(
        decoder.decode(commit),
        Ok(Message::CommitPrepared(CommitPrepared {
            flags: 0,
            commit_lsn: Lsn(0x30),
            end_lsn: Lsn(0x40),
            commit_time: TIME,
            xid: 555,
            gid: "gid-1".into()
        }))
    );
    let rollback = wire(&[
        b"r",
        &[0],
        &0x30_u64.to_be_bytes(),
        &0x40_u64.to_be_bytes(),
        &TIME.to_be_bytes(),
        &(TIME + 1).to_be_bytes(),
        &xid,
        b"gid-2\0",
    ]);
    assert_eq!(
        decoder.decode(rollback),
        Ok(Message::RollbackPrepared(RollbackPrepared {
            flags: 0,
            prepare_end_lsn: Lsn(0x30),
            rollback_end_lsn: Lsn(0x40),
            prepare_time: TIME,
            rollback_time: TIME + 1,
            xid: 555,
            gid: "gid-2".into()
        }))
    );
    let stream_prepare =
        wire(&[b"p", &[0], &FINAL_LSN.to_be_bytes(), &END_LSN.to_be_bytes(), &TIME.to_be_bytes(), &xid, b"gid-3\0"]);
    assert_eq!(
        decoder.decode(stream_prepare),
        Ok(Message::StreamPrepare(StreamPrepare {
            flags: 0,
            prepare_lsn: Lsn(FINAL_LSN),
            end_lsn: Lsn(END_LSN),
            prepare_time: TIME,
            xid: 555,
            gid: "gid-3".into()
        }))
    );
}

#[test]
fn prepare_must_match_begin_prepare() {
    let mut decoder = Decoder::new(3).expect("v3");
    let prepare = |lsn: u64| {
        wire(&[b"P", &[0], &lsn.to_be_bytes(), &END_LSN.to_be_bytes(), &TIME.to_be_bytes(), &[0; 4], b"g\0"])
    };
    assert_eq!(decoder.decode(prepare(FINAL_LSN)), Err(DecodeError::PrepareWithoutBegin));
    let begin = wire(&[b"b", &FINAL_LSN.to_be_bytes(), &END_LSN.to_be_bytes(), &TIME.to_be_bytes(), &[0; 4], b"g\0"]);
    decoder.decode(begin.clone()).expect("begin prepare");
    assert_eq!(
        decoder.decode(begin),
        Err(DecodeError::BeginInsideTransaction { open: Lsn(FINAL_LSN), new: Lsn(FINAL_LSN) })
    );
    assert_eq!(
        decoder.decode(begin_bytes()),
        Err(DecodeError::BeginInsideTransaction { open: Lsn(FINAL_LSN), new: Lsn(FINAL_LSN) })
    );
    assert_eq!(
        decoder.decode(prepare(FINAL_LSN + 1)),
        Err(DecodeError::PrepareLsnMismatch { begin_prepare_lsn: Lsn(FINAL_LSN), prepare_lsn: Lsn(FINAL_LSN + 1) })
    );
    assert!(decoder.decode(prepare(FINAL_LSN)).is_ok());
}

/// Builds a decoder of a protocol version in the state a fixture needs.
type Setup = fn(u32) -> Decoder;

/// Every valid fixture, with the version and the setup it needs.
fn fixtures() -> Vec<(u32, Setup, Bytes)> {
    let fresh: Setup = |version| Decoder::new(version).expect("valid version");
    let xid = 555_u32.to_be_bytes();
    let gid: &[u8] = b"gid\0";
    vec![
        (1, fresh, begin_bytes()),
        (1, in_transaction, commit_bytes(FINAL_LSN)),
        (1, in_transaction, wire(&[b"O", &[0; 8], b"node\0"])),
        (1, in_transaction, relation_bytes()),
        (1, in_transaction, wire(&[b"Y", &[0; 4], b"public\0", b"mood\0"])),
        (1, in_transaction, insert_bytes()),
        (1, in_transaction, wire(&[b"U", &[0; 4], b"K", TUPLE, b"N", TUPLE])),
        (1, in_transaction, wire(&[b"U", &[0; 4], b"O", TUPLE, b"N", TUPLE])),
        (1, in_transaction, wire(&[b"D", &[0; 4], b"O", TUPLE])),
        (1, in_transaction, wire(&[b"T", &2_u32.to_be_bytes(), &[0], &[0; 8]])),
        (1, in_transaction, wire(&[b"M", &[1], &[0; 8], b"p\0", &2_u32.to_be_bytes(), b"hi"])),
        (2, fresh, wire(&[b"S", &xid, &[1]])),
        (2, in_stream, wire(&[b"E"])),
        (2, in_stream, wire(&[b"I", &xid, &[0; 4], b"N", TUPLE])),
        (2, fresh, wire(&[b"c", &xid, &[0], &[0; 24]])),
        (2, fresh, wire(&[b"A", &xid, &xid])),
        (3, fresh, wire(&[b"b", &[0; 24], &xid, gid])),
        (3, fresh, wire(&[b"K", &[0], &[0; 24], &xid, gid])),
        (3, fresh, wire(&[b"r", &[0], &[0; 32], &xid, gid])),
        (3, fresh, wire(&[b"p", &[0], &[0; 24], &xid, gid])),
        (4, fresh, wire(&[b"A", &xid, &xid, &[0; 16]])),
    ]
}

#[test]
fn fixtures_are_valid() {
    for (version, setup, data) in fixtures() {
        assert!(setup(version).decode(data.clone()).is_ok(), "{data:?}");
    }
}

#[test]
fn truncated_at_every_offset_is_an_error() {
    for (version, setup, data) in fixtures() {
        for len in 0..data.len() {
            let is_v4_abort_without_info = version == 4 && data.first() == Some(&b'A') && len == 9;
            if is_v4_abort_without_info {
                continue; // the abort LSN and time are optional
            }
            let mut decoder = setup(version);
            let before = (decoder.transaction(), decoder.stream_xid());
            let result = decoder.decode(data.slice(..len));
            assert!(result.is_err(), "prefix of {len} bytes of {data:?} decoded as {result:?}");
            assert_eq!((decoder.transaction(), decoder.stream_xid()), before, "state unchanged");
        }
    }
}
