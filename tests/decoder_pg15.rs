//! The pgoutput decoder against a real PostgreSQL 15: a workload covering every change kind pgoutput v1 sends
//! (inserts with many column types and NULLs, updates with a changed key, with `REPLICA IDENTITY FULL` and with an
//! unchanged TOASTed value, deletes, truncate, transactional and non-transactional logical messages, an enum type)
//! is captured with `pg_logical_slot_peek_binary_changes` and decoded; the exact message sequence and the typed
//! values are asserted. The same changes captured with `binary = true` must convert to the same typed values.

use bytes::Bytes;
use pgoutput::{
    Begin, Commit, Date, Decoder, Delete, Insert, LogicalMessage, Lsn, Message, Relation, RelationCache,
    RelationColumn, Timestamp, Truncate, Tuple, TupleValue, TypeMessage, Update, Uuid, Value,
};
use walrelay_testkit::Postgres;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SCHEMA: &str = "
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE typed (
    id int4 PRIMARY KEY, b bool, i2 int2, i8 int8, f4 float4, f8 float8, n numeric(10,3), t text,
    vc varchar(10), bp char(4), u uuid, j json, jb jsonb, by bytea, d date, ts timestamp, tz timestamptz,
    m mood, big text);
CREATE TABLE full_ident (id int4 PRIMARY KEY, note text);
ALTER TABLE full_ident REPLICA IDENTITY FULL;
CREATE PUBLICATION p FOR TABLE typed, full_ident;
SELECT 'created' FROM pg_create_logical_replication_slot('s', 'pgoutput');
";

/// Eight transactions and two non-transactional messages, in this order.
const WORKLOAD: &str = r#"
BEGIN;
INSERT INTO typed VALUES (1, true, -32768, 9223372036854775807, 1.5, '-Infinity', 12.5, 'héllo', 'vc', 'ab',
    'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '{"a":1}', '{"b":[1,2]}', '\xdeadbeef', '2024-02-29',
    '2024-03-01 12:34:56.789', '2024-03-01 12:34:56.789+00', 'happy', 'small');
INSERT INTO typed (id, d, ts) VALUES (2, 'infinity', '-infinity');
COMMIT;
INSERT INTO typed (id, b, t, big)
    SELECT 3, false, 'before', string_agg(md5(i::text), '') FROM generate_series(1, 16000) AS i;
UPDATE typed SET t = 'changed' WHERE id = 3;
UPDATE typed SET id = 20 WHERE id = 2;
BEGIN;
INSERT INTO full_ident VALUES (1, 'a');
UPDATE full_ident SET note = 'b';
DELETE FROM full_ident;
SELECT 'emitted' FROM pg_logical_emit_message(true, 'walrelay', 'in tx');
COMMIT;
SELECT 'emitted' FROM pg_logical_emit_message(false, 'walrelay', '\x00ff'::bytea);
DELETE FROM typed WHERE id = 1;
TRUNCATE full_ident RESTART IDENTITY;
"#;

/// One row of `pg_logical_slot_peek_binary_changes`.
struct Change {
    lsn: Lsn,
    xid: u32,
    data: Bytes,
}

fn capture(pg: &Postgres, binary: bool) -> Result<Vec<Change>, Box<dyn std::error::Error>> {
    let output = pg.psql(&format!(
        "SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'ISO, MDY';
         SELECT lsn, xid, encode(data, 'hex') FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL,
             'proto_version', '1', 'publication_names', 'p', 'messages', 'true', 'binary', '{binary}')"
    ))?;
    output
        .lines()
        .map(|line| {
            let mut fields = line.split('|');
            let (Some(lsn), Some(xid), Some(hex), None) = (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(format!("unexpected row {line:?}").into());
            };
            Ok(Change { lsn: lsn.parse()?, xid: xid.parse()?, data: Bytes::from(unhex(hex)?) })
        })
        .collect()
}

fn unhex(hex: &str) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let digits = hex.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return Err("odd hex length".into());
    }
    digits.chunks(2).map(|pair| Ok(u8::from_str_radix(std::str::from_utf8(pair)?, 16)?)).collect()
}

/// Decodes a captured session, checks what the capture's own columns and the clock say about the server-assigned
/// fields (LSNs, xids, commit times), then zeroes those fields so the sequence can be compared exactly.
fn decode(changes: &[Change], clock: (i64, i64)) -> Result<Vec<Message>, Box<dyn std::error::Error>> {
    let mut decoder = Decoder::new(1)?;
    let mut open: Option<Begin> = None;
    let mut last_end = Lsn::ZERO;
    let mut messages = Vec::new();
    for change in changes {
        let mut message = decoder.decode(change.data.clone())?;
        match &mut message {
            Message::Begin(begin) => {
                assert_eq!(begin.xid, change.xid, "Begin carries the row's xid");
                assert!(begin.final_lsn > last_end, "transactions in commit order");
                assert!((clock.0..=clock.1).contains(&begin.commit_time), "commit time {}", begin.commit_time);
                open = Some(begin.clone());
                *begin = Begin { final_lsn: Lsn::ZERO, commit_time: 0, xid: 0 };
            }
            Message::Commit(commit) => {
                let begin = open.take().ok_or("Commit without Begin")?;
                assert_eq!(commit.commit_lsn, begin.final_lsn);
                assert_eq!(commit.end_lsn, change.lsn, "the row's LSN is the transaction's end");
                assert!(commit.end_lsn > commit.commit_lsn);
                assert_eq!(commit.commit_time, begin.commit_time);
                last_end = commit.end_lsn;
                *commit = Commit { flags: 0, commit_lsn: Lsn::ZERO, end_lsn: Lsn::ZERO, commit_time: 0 };
            }
            Message::Message(logical) => {
                assert_eq!(logical.lsn, change.lsn, "the row's LSN is the message's");
                logical.lsn = Lsn::ZERO;
            }
            _ => {}
        }
        messages.push(message);
    }
    assert!(open.is_none(), "session ends outside a transaction");
    Ok(messages)
}

fn t(text: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(text.as_bytes()))
}

/// A `typed` row: `id`, then the given columns, NULL elsewhere.
fn typed_row(id: &str, values: &[(usize, TupleValue)]) -> Tuple {
    let mut tuple = vec![TupleValue::Null; 19];
    tuple[0] = t(id);
    for (index, value) in values {
        tuple[*index] = value.clone();
    }
    Tuple(tuple)
}

fn column(flags: u8, name: &str, type_oid: u32, type_modifier: i32) -> RelationColumn {
    RelationColumn { flags, name: name.into(), type_oid, type_modifier }
}

fn begin() -> Message {
    Message::Begin(Begin { final_lsn: Lsn::ZERO, commit_time: 0, xid: 0 })
}

fn commit() -> Message {
    Message::Commit(Commit { flags: 0, commit_lsn: Lsn::ZERO, end_lsn: Lsn::ZERO, commit_time: 0 })
}

#[allow(clippy::too_many_lines)]
fn expected(typed: u32, full: u32, mood: u32, big: &str) -> Vec<Message> {
    use pgoutput::oid::*;
    let typed_relation = Relation {
        xid: None,
        id: typed,
        namespace: "public".into(),
        name: "typed".into(),
        replica_identity: b'd',
        columns: vec![
            column(1, "id", INT4, -1),
            column(0, "b", BOOL, -1),
            column(0, "i2", INT2, -1),
            column(0, "i8", INT8, -1),
            column(0, "f4", FLOAT4, -1),
            column(0, "f8", FLOAT8, -1),
            column(0, "n", NUMERIC, (10 << 16 | 3) + 4),
            column(0, "t", TEXT, -1),
            column(0, "vc", VARCHAR, 10 + 4),
            column(0, "bp", BPCHAR, 4 + 4),
            column(0, "u", UUID, -1),
            column(0, "j", JSON, -1),
            column(0, "jb", JSONB, -1),
            column(0, "by", BYTEA, -1),
            column(0, "d", DATE, -1),
            column(0, "ts", TIMESTAMP, -1),
            column(0, "tz", TIMESTAMPTZ, -1),
            column(0, "m", mood, -1),
            column(0, "big", TEXT, -1),
        ],
    };
    let full_relation = Relation {
        xid: None,
        id: full,
        namespace: "public".into(),
        name: "full_ident".into(),
        replica_identity: b'f',
        columns: vec![column(1, "id", INT4, -1), column(1, "note", TEXT, -1)],
    };
    let row1 = Tuple(
        [
            "1",
            "t",
            "-32768",
            "9223372036854775807",
            "1.5",
            "-Infinity",
            "12.500",
            "héllo",
            "vc",
            "ab  ",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            r#"{"a":1}"#,
            r#"{"b": [1, 2]}"#,
            "\\xdeadbeef",
            "2024-02-29",
            "2024-03-01 12:34:56.789",
            "2024-03-01 18:04:56.789+05:30",
            "happy",
            "small",
        ]
        .map(t)
        .to_vec(),
    );
    let row2 = |id| typed_row(id, &[(14, t("infinity")), (15, t("-infinity"))]);
    let full_row = |note| Tuple(vec![t("1"), t(note)]);
    let insert = |relation_id, new| Message::Insert(Insert { xid: None, relation_id, new });
    vec![
        begin(),
        Message::Type(TypeMessage { xid: None, type_oid: mood, namespace: "public".into(), name: "mood".into() }),
        Message::Relation(typed_relation),
        insert(typed, row1),
        insert(typed, row2("2")),
        commit(),
        begin(),
        insert(typed, typed_row("3", &[(1, t("f")), (7, t("before")), (18, t(big))])),
        commit(),
        begin(),
        Message::Update(Update {
            xid: None,
            relation_id: typed,
            old_key: None,
            old: None,
            new: typed_row("3", &[(1, t("f")), (7, t("changed")), (18, TupleValue::UnchangedToast)]),
        }),
        commit(),
        begin(),
        Message::Update(Update {
            xid: None,
            relation_id: typed,
            old_key: Some(typed_row("2", &[])),
            old: None,
            new: row2("20"),
        }),
        commit(),
        begin(),
        Message::Relation(full_relation.clone()),
        insert(full, full_row("a")),
        Message::Update(Update {
            xid: None,
            relation_id: full,
            old_key: None,
            old: Some(full_row("a")),
            new: full_row("b"),
        }),
        Message::Delete(Delete { xid: None, relation_id: full, old_key: None, old: Some(full_row("b")) }),
        Message::Message(LogicalMessage {
            xid: None,
            transactional: true,
            lsn: Lsn::ZERO,
            prefix: "walrelay".into(),
            content: Bytes::from_static(b"in tx"),
        }),
        commit(),
        Message::Message(LogicalMessage {
            xid: None,
            transactional: false,
            lsn: Lsn::ZERO,
            prefix: "walrelay".into(),
            content: Bytes::from_static(b"\x00\xff"),
        }),
        begin(),
        Message::Delete(Delete { xid: None, relation_id: typed, old_key: Some(typed_row("1", &[])), old: None }),
        commit(),
        begin(),
        // TRUNCATE gives the table a new relfilenode; the relcache invalidation makes pgoutput describe it again.
        Message::Relation(full_relation),
        Message::Truncate(Truncate { xid: None, options: Truncate::RESTART_IDENTITY, relation_ids: vec![full] }),
        commit(),
    ]
}

/// Typed values of every Insert and Update's new row, by column, via the relation cache.
/// Column name and typed value, in column order.
type TypedRow = Vec<(String, Value)>;

fn typed_rows(messages: &[Message]) -> Result<Vec<TypedRow>, Box<dyn std::error::Error>> {
    let mut cache = RelationCache::new();
    let mut rows = Vec::new();
    for message in messages {
        let (relation_id, tuple) = match message {
            Message::Relation(relation) => {
                cache.insert(relation.clone());
                continue;
            }
            Message::Insert(insert) => (insert.relation_id, &insert.new),
            Message::Update(update) => (update.relation_id, &update.new),
            _ => continue,
        };
        let row = cache.row(relation_id, tuple)?;
        let mut values = Vec::new();
        for (column, _) in row.iter() {
            values.push((column.name.clone(), row.value(&column.name)?.ok_or("column exists")?));
        }
        rows.push(values);
    }
    Ok(rows)
}

/// With `WALRELAY_WRITE_FUZZ_SEEDS=<dir>`, writes the capture as a seed of the `decode` fuzz target (format in
/// `fuzz/fuzz_targets/decode.rs`; messages over 4 KiB, i.e. the TOASTed value, are left out).
fn write_fuzz_seed(name: &str, changes: &[Change]) -> TestResult {
    let Some(dir) = std::env::var_os("WALRELAY_WRITE_FUZZ_SEEDS") else {
        return Ok(());
    };
    let mut seed = vec![0_u8]; // protocol version 1
    for change in changes.iter().filter(|change| change.data.len() <= 4096) {
        seed.extend_from_slice(&u16::try_from(change.data.len())?.to_be_bytes());
        seed.extend_from_slice(&change.data);
    }
    std::fs::write(std::path::Path::new(&dir).join(name), seed)?;
    Ok(())
}

fn server_clock(pg: &Postgres) -> Result<i64, Box<dyn std::error::Error>> {
    let micros = pg.psql(
        "SELECT (extract(epoch FROM clock_timestamp() - '2000-01-01 00:00:00+00'::timestamptz) * 1000000)::int8",
    )?;
    Ok(micros.parse()?)
}

#[test]
fn decodes_a_real_postgres_15_session() -> TestResult {
    let pg = Postgres::start()?;
    assert_eq!(pg.version()?, 15, "this test pins PostgreSQL 15's output");
    pg.psql(SCHEMA)?;
    let before = server_clock(&pg)?;
    pg.psql(WORKLOAD)?;
    let after = server_clock(&pg)?;
    let ids = pg.psql("SELECT 'typed'::regclass::oid, 'full_ident'::regclass::oid, 'mood'::regtype::oid")?;
    let ids: Vec<u32> = ids.split('|').map(str::parse).collect::<Result<_, _>>()?;
    let [typed, full, mood] = ids[..] else {
        return Err(format!("unexpected oids {ids:?}").into());
    };
    let big = pg.psql("SELECT big FROM typed WHERE id = 3")?;
    assert_eq!(big.len(), 512_000);
    let toasted = pg.psql("SELECT pg_relation_size(reltoastrelid) > 500000 FROM pg_class WHERE relname = 'typed'")?;
    assert_eq!(toasted, "t", "the big value is stored out of line");

    let text_capture = capture(&pg, false)?;
    write_fuzz_seed("pg15_text_session", &text_capture)?;
    let text = decode(&text_capture, (before, after))?;
    let expected = expected(typed, full, mood, &big);
    for (index, (actual, expected)) in text.iter().zip(&expected).enumerate() {
        assert_eq!(actual, expected, "message {index}");
    }
    assert_eq!(text.len(), expected.len(), "{:#?}", text.get(expected.len()..));

    let rows = typed_rows(&text)?;
    let row1: Vec<Value> = rows.first().ok_or("row 1")?.iter().map(|(_, value)| value.clone()).collect();
    let uuid = Uuid::parse("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").ok_or("uuid")?;
    let timestamp = Timestamp::parse_text("2024-03-01 12:34:56.789", false).ok_or("timestamp")?;
    assert_eq!(
        row1,
        vec![
            Value::Int4(1),
            Value::Bool(true),
            Value::Int2(i16::MIN),
            Value::Int8(i64::MAX),
            Value::Float4(1.5),
            Value::Float8(f64::NEG_INFINITY),
            Value::Numeric("12.500".into()),
            Value::Text("héllo".into()),
            Value::Text("vc".into()),
            Value::Text("ab  ".into()),
            Value::Uuid(uuid),
            Value::Json(r#"{"a":1}"#.into()),
            Value::Json(r#"{"b": [1, 2]}"#.into()),
            Value::Bytea(vec![0xde, 0xad, 0xbe, 0xef]),
            Value::Date(Date::from_ymd(2024, 2, 29).ok_or("date")?),
            Value::Timestamp(timestamp),
            Value::TimestampTz(timestamp),
            Value::Other { type_oid: mood, text: "happy".into() },
            Value::Text("small".into()),
        ]
    );
    let Value::TimestampTz(tz) = &row1[16] else {
        return Err("timestamptz".into());
    };
    assert_eq!(tz.to_rfc3339().as_deref(), Some("2024-03-01T12:34:56.789Z"));
    let row2 = rows.get(1).ok_or("row 2")?;
    assert_eq!(row2[14], ("d".into(), Value::Date(Date::INFINITY)));
    assert_eq!(row2[15], ("ts".into(), Value::Timestamp(Timestamp::NEG_INFINITY)));
    assert_eq!(row2[16], ("tz".into(), Value::Null));
    let update = rows.get(3).ok_or("update of row 3")?;
    assert_eq!(update[18], ("big".into(), Value::UnchangedToast));

    // The same changes in the binary format convert to the same values (the enum stays raw bytes).
    let binary_capture = capture(&pg, true)?;
    write_fuzz_seed("pg15_binary_session", &binary_capture)?;
    let binary = decode(&binary_capture, (before, after))?;
    let Some(Message::Insert(first)) = binary.get(3) else {
        return Err("binary insert".into());
    };
    assert_eq!(first.new.0.first(), Some(&TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 1]))));
    let binary_rows = typed_rows(&binary)?;
    assert_eq!(binary_rows.len(), rows.len());
    for (text_row, binary_row) in rows.iter().zip(&binary_rows) {
        for (text_value, binary_value) in text_row.iter().zip(binary_row) {
            match (&text_value.1, &binary_value.1) {
                (Value::Other { type_oid, .. }, Value::Binary { type_oid: binary_oid, data }) => {
                    assert_eq!((type_oid, data.as_ref()), (binary_oid, &b"happy"[..]));
                }
                _ => assert_eq!(text_value, binary_value),
            }
        }
    }
    Ok(())
}
