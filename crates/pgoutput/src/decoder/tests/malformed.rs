//! Malformed input and impossible message sequences: each is an error, never a panic, and leaves the state
//! unchanged.

use super::*;

#[test]
fn commit_must_match_begin() {
    let mut decoder = in_transaction(1);
    assert_eq!(
        decoder.decode(commit_bytes(FINAL_LSN + 8)),
        Err(DecodeError::CommitLsnMismatch { begin_final_lsn: Lsn(FINAL_LSN), commit_lsn: Lsn(FINAL_LSN + 8) })
    );
    assert!(decoder.transaction().is_some(), "state unchanged by the failed Commit");
    assert!(decoder.decode(commit_bytes(FINAL_LSN)).is_ok());
    assert_eq!(decoder.decode(commit_bytes(FINAL_LSN)), Err(DecodeError::CommitWithoutBegin));
}

#[test]
fn begin_inside_transaction() {
    let mut decoder = in_transaction(1);
    let second = wire(&[b"B", &(FINAL_LSN + 64).to_be_bytes(), &TIME.to_be_bytes(), &1235_u32.to_be_bytes()]);
    assert_eq!(
        decoder.decode(second),
        Err(DecodeError::BeginInsideTransaction { open: Lsn(FINAL_LSN), new: Lsn(FINAL_LSN + 64) })
    );
}

#[test]
fn changes_outside_transaction() {
    let mut decoder = Decoder::new(1).expect("v1");
    let delete = wire(&[b"D", &16_385_u32.to_be_bytes(), b"K", TUPLE]);
    let update = wire(&[b"U", &16_385_u32.to_be_bytes(), b"N", TUPLE]);
    let truncate = wire(&[b"T", &1_u32.to_be_bytes(), &[0], &16_385_u32.to_be_bytes()]);
    for data in [insert_bytes(), update, delete, truncate] {
        assert_eq!(decoder.decode(data), Err(DecodeError::ChangeOutsideTransaction));
    }
    assert!(decoder.decode(relation_bytes()).is_ok(), "Relation is not a change");
}

#[test]
fn stream_block_errors() {
    let mut decoder = in_stream(2);
    assert_eq!(
        decoder.decode(wire(&[b"S", &901_u32.to_be_bytes(), &[0]])),
        Err(DecodeError::StreamStartInsideStream { open_xid: 900, new_xid: 901 })
    );
    assert_eq!(decoder.decode(begin_bytes()), Err(DecodeError::UnexpectedInStream { message: "Begin" }));
    assert_eq!(decoder.decode(commit_bytes(1)), Err(DecodeError::UnexpectedInStream { message: "Commit" }));
    let abort = wire(&[b"A", &900_u32.to_be_bytes(), &900_u32.to_be_bytes()]);
    assert_eq!(decoder.decode(abort), Err(DecodeError::UnexpectedInStream { message: "Stream Abort" }));
    decoder.decode(wire(&[b"E"])).expect("stop");
    assert_eq!(decoder.decode(wire(&[b"E"])), Err(DecodeError::StreamStopWithoutStart));
    let mut decoder = in_transaction(2);
    assert_eq!(
        decoder.decode(wire(&[b"S", &901_u32.to_be_bytes(), &[0]])),
        Err(DecodeError::UnexpectedInTransaction { message: "Stream Start" })
    );
}

#[test]
fn messages_outside_their_protocol_version() {
    let mut decoder = Decoder::new(1).expect("v1");
    assert_eq!(
        decoder.decode(wire(&[b"S", &900_u32.to_be_bytes(), &[1]])),
        Err(DecodeError::MessageNotInProtocol { tag: b'S', protocol_version: 1 })
    );
    let mut decoder = Decoder::new(2).expect("v2");
    assert_eq!(
        decoder.decode(wire(&[b"K", &[0; 29], b"\0"])),
        Err(DecodeError::MessageNotInProtocol { tag: b'K', protocol_version: 2 })
    );
}

#[test]
fn unknown_tag_and_empty_message() {
    let mut decoder = Decoder::new(4).expect("v4");
    assert_eq!(decoder.decode(wire(&[b"Z", &[0; 8]])), Err(DecodeError::UnknownTag(b'Z')));
    assert_eq!(decoder.decode(wire(&[b"k"])), Err(DecodeError::UnknownTag(b'k')), "keepalive is not pgoutput");
    assert_eq!(
        decoder.decode(Bytes::new()),
        Err(DecodeError::Truncated { message: "message tag", needed: 1, available: 0 })
    );
}

#[test]
fn trailing_bytes() {
    let mut decoder = Decoder::new(1).expect("v1");
    let mut data = begin_bytes().to_vec();
    data.push(0);
    assert_eq!(decoder.decode(Bytes::from(data)), Err(DecodeError::TrailingBytes { message: "Begin", count: 1 }));
    assert_eq!(decoder.transaction(), None);
}

#[test]
fn invalid_utf8_in_names() {
    let mut decoder = Decoder::new(1).expect("v1");
    let data = wire(&[b"R", &1_u32.to_be_bytes(), b"public\0", b"out\xffbox\0", b"d", &0_u16.to_be_bytes()]);
    assert_eq!(
        decoder.decode(data),
        Err(DecodeError::InvalidUtf8 { message: "Relation", field: "relation name", valid_up_to: 3 })
    );
    let column =
        wire(&[b"R", &1_u32.to_be_bytes(), b"\0", b"t\0", b"d", &1_u16.to_be_bytes(), &[0], b"\xc3\0", &[0; 8]]);
    assert!(matches!(decoder.decode(column), Err(DecodeError::InvalidUtf8 { field: "column name", .. })));
    let prefix = wire(&[b"M", &[0], &[0; 8], b"\xe2\x82\0", &0_u32.to_be_bytes()]);
    assert!(matches!(
        decoder.decode(prefix),
        Err(DecodeError::InvalidUtf8 { message: "Message", field: "prefix", .. })
    ));
}

#[test]
fn missing_nul_and_unknown_column_kind() {
    let mut decoder = in_transaction(1);
    assert_eq!(decoder.decode(wire(&[b"O", &[0; 8], b"node"])), Err(DecodeError::MissingNul));
    let data = wire(&[b"I", &1_u32.to_be_bytes(), b"N", &1_u16.to_be_bytes(), b"x"]);
    assert_eq!(decoder.decode(data), Err(DecodeError::UnknownColumnKind { message: "Insert", kind: b'x' }));
    let long = wire(&[b"I", &1_u32.to_be_bytes(), b"N", &1_u16.to_be_bytes(), b"t", &u32::MAX.to_be_bytes(), b"ab"]);
    assert!(matches!(decoder.decode(long), Err(DecodeError::Truncated { message: "Insert", .. })));
}

#[test]
fn row_checks_relation_and_column_count() {
    let mut cache = RelationCache::new();
    assert_eq!(cache.row(16_385, &tuple()).err(), Some(DecodeError::UnknownRelation(16_385)));
    assert!(cache.insert(relation()).is_none());
    let short = Tuple(vec![TupleValue::Null]);
    assert_eq!(
        cache.row(16_385, &short).err(),
        Some(DecodeError::ColumnCountMismatch { relation: "public.outbox".into(), expected: 2, actual: 1 })
    );
    let full = tuple();
    let row = cache.row(16_385, &full).expect("row");
    assert_eq!(row.relation().name, "outbox");
    assert_eq!(row.get("payload"), Some(&TupleValue::Text(Bytes::from_static(b"hi"))));
    assert_eq!(row.get("nope"), None);
    assert_eq!(row.value("id"), Ok(Some(crate::Value::Int4(42))));
    assert_eq!(row.value("payload"), Ok(Some(crate::Value::Text("hi".into()))));
    assert_eq!(row.value("nope"), Ok(None));
    let names: Vec<&str> = row.iter().map(|(column, _)| column.name.as_str()).collect();
    assert_eq!(names, ["id", "payload"]);
    let bad = Tuple(vec![TupleValue::Text(Bytes::from_static(b"x")), TupleValue::Null]);
    let row = cache.row(16_385, &bad).expect("row");
    assert!(matches!(
        row.value("id"),
        Err(DecodeError::InvalidValue { column: Some(c), type_oid: 23, .. }) if c == "id"
    ));
    let replaced = Relation { columns: vec![], ..relation() };
    assert!(cache.insert(replaced).is_some(), "insert replaces");
    assert!(matches!(cache.row(16_385, &full), Err(DecodeError::ColumnCountMismatch { expected: 0, .. })));
}
