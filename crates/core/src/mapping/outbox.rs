//! The outbox mapper: one inserted row → one [`Event`] (subject, headers, payload), or the reason it cannot be one.
//!
//! In: the table's Relation message (once per relation id, to resolve column positions) and each inserted tuple with
//! its transaction's commit LSN, commit time and index. Out: an [`Event`] following design.md §4, or an
//! [`InvalidEvent`] that `--on-invalid` turns into a stop or a dead-letter record.
//! Text values arrive in Postgres text output format:
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html#PROTOCOL-LOGICALREP-MESSAGE-FORMATS-TUPLEDATA>.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use pgoutput::{Lsn, Relation, Tuple, TupleValue};

use crate::{
    config::{Columns, Settings, TableName},
    mapping::event::{header, Event, Position},
    mapping::subject::SubjectTemplate,
    source::SourceError,
};

/// The default outbox table of design.md §4.
pub const DEFAULT_TABLE_DDL: &str = "CREATE TABLE public.outbox (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  aggregate_type text NOT NULL,
  aggregate_id   text NOT NULL,
  event_type     text NOT NULL,
  payload        jsonb NOT NULL,
  headers        jsonb,
  created_at     timestamptz NOT NULL DEFAULT now()
)";

/// Seconds from the Unix epoch to the Postgres epoch (2000-01-01).
const PG_EPOCH_OFFSET_SECS: u64 = 946_684_800;

/// Formats a Postgres timestamp (µs since 2000-01-01) as RFC 3339 UTC.
pub fn commit_time_rfc3339(pg_micros: i64) -> String {
    let base = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_OFFSET_SECS);
    let t = if pg_micros >= 0 {
        base + Duration::from_micros(pg_micros.unsigned_abs())
    } else {
        base.checked_sub(Duration::from_micros(pg_micros.unsigned_abs())).unwrap_or(UNIX_EPOCH)
    };
    humantime::format_rfc3339_micros(t).to_string()
}

/// Microseconds since the Postgres epoch for a wall-clock time (for latency figures).
pub fn pg_micros(t: SystemTime) -> i64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX) - (PG_EPOCH_OFFSET_SECS as i64) * 1_000_000
}

/// Why a row did not become an event.
#[derive(Debug)]
pub enum MapError {
    /// The row cannot be published as is (`--on-invalid` decides).
    Invalid(Box<InvalidEvent>),
    /// The replication stream makes no sense.
    Source(SourceError),
}

/// What every event of one transaction shares, formatted once at Begin instead of once per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnStamp {
    /// Begin's final LSN: where the commit record starts.
    pub commit_lsn: Lsn,
    /// `commit_lsn` as `X/Y`.
    pub commit_lsn_text: String,
    /// Commit time, RFC 3339 UTC.
    pub commit_time: String,
}

impl TxnStamp {
    /// Stamps a transaction from its Begin message.
    pub fn new(commit_lsn: Lsn, commit_time_micros: i64) -> Self {
        Self {
            commit_lsn,
            commit_lsn_text: commit_lsn.to_string(),
            commit_time: commit_time_rfc3339(commit_time_micros),
        }
    }
}

/// An event that cannot be published as is.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidEvent {
    /// The row's id, or `<commit_lsn>:<index>` when it has none.
    pub id: String,
    /// The table.
    pub table: String,
    /// Where it is.
    pub position: Position,
    /// The `Outbox-*` headers it would have had.
    pub headers: Vec<(String, String)>,
    /// Commit time, RFC 3339.
    pub commit_time: String,
    /// Why it cannot be published.
    pub reason: String,
    /// Its size in bytes (payload plus headers), as far as known.
    pub size: usize,
}

impl InvalidEvent {
    /// The dead-letter record standing in for this event (design.md §4).
    pub fn dead_letter(&self, subject: &str) -> Event {
        let mut headers = vec![(header::MSG_ID.to_owned(), format!("dead-letter:{}", self.id))];
        headers.extend(self.headers.iter().cloned());
        headers.push((header::ERROR.to_owned(), sanitize_header_value(&self.reason)));
        let body = serde_json::json!({
            "id": self.id,
            "table": self.table,
            "commit_lsn": self.position.commit_lsn.to_string(),
            "index": self.position.index,
            "reason": self.reason,
            "size": self.size,
        });
        Event {
            id: format!("dead-letter:{}", self.id),
            subject: subject.to_owned(),
            headers,
            payload: Bytes::from(body.to_string()),
            position: self.position,
            commit_time: self.commit_time.clone(),
            table: self.table.clone(),
            dead_letter: true,
        }
    }
}

fn sanitize_header_value(s: &str) -> String {
    s.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).collect()
}

/// How the payload column is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PayloadKind {
    /// json, jsonb, text, …: the text as UTF-8.
    Text,
    /// bytea: the raw bytes.
    Bytea,
}

/// Column positions of one relation, resolved once from its Relation message.
#[derive(Debug, Clone)]
struct Layout {
    id: Option<usize>,
    payload: usize,
    payload_kind: PayloadKind,
    headers: Option<usize>,
    aggregate_type: Option<usize>,
    aggregate_id: Option<usize>,
    event_type: Option<usize>,
    template: HashMap<String, usize>,
    columns: usize,
}

/// Maps outbox rows to events.
#[derive(Debug)]
pub struct OutboxMapper {
    table: TableName,
    table_label: String,
    columns: Columns,
    template: SubjectTemplate,
    layouts: HashMap<u32, Layout>,
    max_payload: Option<usize>,
    warned_keys: HashSet<String>,
}

impl OutboxMapper {
    /// A mapper for the configured table, columns and subject template.
    pub fn new(settings: &Settings) -> Result<Self, SourceError> {
        let template = SubjectTemplate::parse(&settings.subject).map_err(|reason| SourceError::Query {
            context: "subject template".into(),
            reason,
            code: None,
        })?;
        Ok(Self {
            table: settings.table.clone(),
            table_label: settings.table.to_string(),
            columns: settings.columns.clone(),
            template,
            layouts: HashMap::new(),
            max_payload: None,
            warned_keys: HashSet::new(),
        })
    }

    /// Sets the server's `max_payload`; larger events are invalid.
    pub fn set_max_payload(&mut self, max: usize) {
        self.max_payload = Some(max);
    }

    /// Whether a relation is the outbox table.
    pub fn is_outbox(&self, relation: &Relation) -> bool {
        let ns = if relation.namespace.is_empty() { "pg_catalog" } else { relation.namespace.as_str() };
        ns == self.table.schema && relation.name == self.table.name
    }

    /// Records a Relation message of the outbox table, resolving column positions; fails when a needed column is
    /// missing.
    pub fn relation(&mut self, relation: &Relation) -> Result<(), SourceError> {
        let find = |name: &str| relation.columns.iter().position(|c| c.name == name);
        let missing = |column: &str, purpose: &str, option: &str| SourceError::MissingColumn {
            table: self.table_label.clone(),
            column: column.to_owned(),
            purpose: purpose.to_owned(),
            option: option.to_owned(),
        };
        let payload = find(&self.columns.payload)
            .ok_or_else(|| missing(&self.columns.payload, "the message data", "--payload-column"))?;
        let payload_kind = match relation.columns.get(payload).map(|c| c.type_oid) {
            Some(pgoutput::oid::BYTEA) => PayloadKind::Bytea,
            _ => PayloadKind::Text,
        };
        let mut template = HashMap::new();
        for column in self.template.columns() {
            let idx = find(column).ok_or_else(|| missing(column, "the subject template", "--subject"))?;
            template.insert(column.to_owned(), idx);
        }
        let layout = Layout {
            id: find(&self.columns.id),
            payload,
            payload_kind,
            headers: find(&self.columns.headers),
            aggregate_type: find(&self.columns.aggregate_type),
            aggregate_id: find(&self.columns.aggregate_id),
            event_type: find(&self.columns.event_type),
            template,
            columns: relation.columns.len(),
        };
        self.layouts.insert(relation.id, layout);
        Ok(())
    }

    /// Whether the relation id belongs to the outbox table (a Relation message for it was seen).
    pub fn knows(&self, relation_id: u32) -> bool {
        self.layouts.contains_key(&relation_id)
    }

    /// Maps one inserted row.
    ///
    /// Errors: [`MapError::Invalid`] for a row that cannot be published (handled by `--on-invalid`),
    /// [`MapError::Source`] for a stream that makes no sense (unknown relation, wrong column count).
    pub fn map(&mut self, relation_id: u32, tuple: &Tuple, txn: &TxnStamp, index: u32) -> Result<Event, MapError> {
        let commit_lsn = txn.commit_lsn;
        let layout = self.layouts.get(&relation_id).ok_or(MapError::Source(SourceError::Decode {
            lsn: commit_lsn,
            source: pgoutput::DecodeError::UnknownRelation(relation_id),
        }))?;
        if tuple.0.len() != layout.columns {
            return Err(MapError::Source(SourceError::Decode {
                lsn: commit_lsn,
                source: pgoutput::DecodeError::ColumnCountMismatch {
                    relation: self.table_label.clone(),
                    expected: layout.columns,
                    actual: tuple.0.len(),
                },
            }));
        }
        let text = |idx: Option<usize>| -> Option<String> {
            match tuple.0.get(idx?)? {
                TupleValue::Text(b) | TupleValue::Binary(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            }
        };
        let position = Position { commit_lsn, index };
        let commit_time = &txn.commit_time;
        let fallback_id = format!("{}:{index}", txn.commit_lsn_text);
        let row_id = text(layout.id);
        let mut headers: Vec<(String, String)> = Vec::with_capacity(8);
        let mut base = Vec::with_capacity(7);
        if let Some(v) = text(layout.aggregate_type) {
            base.push((header::AGGREGATE_TYPE.to_owned(), v));
        }
        if let Some(v) = text(layout.aggregate_id) {
            base.push((header::AGGREGATE_ID.to_owned(), v));
        }
        if let Some(v) = text(layout.event_type) {
            base.push((header::EVENT_TYPE.to_owned(), v));
        }
        base.push((header::COMMIT_LSN.to_owned(), txn.commit_lsn_text.clone()));
        base.push((header::COMMIT_TIME.to_owned(), commit_time.clone()));
        base.push((header::INDEX.to_owned(), index.to_string()));
        let payload: Bytes = match tuple.0.get(layout.payload) {
            Some(TupleValue::Text(b)) if layout.payload_kind == PayloadKind::Text => b.clone(),
            Some(v @ TupleValue::Text(_)) => match pgoutput::convert(pgoutput::oid::BYTEA, v) {
                Ok(pgoutput::Value::Bytea(bytes)) => Bytes::from(bytes),
                _ => Bytes::new(),
            },
            Some(TupleValue::Binary(b)) => b.clone(),
            _ => Bytes::new(),
        };
        let table = self.table_label.clone();
        let invalid = |reason: String, base: &Vec<(String, String)>, size: usize| InvalidEvent {
            id: row_id.clone().unwrap_or_else(|| fallback_id.clone()),
            table: table.clone(),
            position,
            headers: base.clone(),
            commit_time: commit_time.clone(),
            reason,
            size,
        };
        // Fix the header values that must not carry CR/LF (they come from the row).
        for (k, v) in &base {
            if v.contains(['\r', '\n']) {
                return Err(MapError::Invalid(Box::new(invalid(
                    format!("header {k} value contains CR or LF"),
                    &base,
                    payload.len(),
                ))));
            }
        }
        let id = match (layout.id, row_id.clone()) {
            (None, _) => fallback_id.clone(),
            (Some(_), Some(id)) if !id.is_empty() && !id.contains(['\r', '\n']) => id,
            (Some(_), Some(_)) => {
                return Err(MapError::Invalid(Box::new(invalid(
                    "id is empty or contains CR/LF".into(),
                    &base,
                    payload.len(),
                ))))
            }
            (Some(_), None) => {
                return Err(MapError::Invalid(Box::new(invalid(
                    format!("id column {} is NULL", self.columns.id),
                    &base,
                    payload.len(),
                ))))
            }
        };
        // The row's own headers first, so a record standing in for an invalid event can carry them.
        let mut user = Vec::new();
        if let Some(json) = text(layout.headers) {
            if let Err(reason) = user_headers(&mut self.warned_keys, &json, &mut user) {
                return Err(MapError::Invalid(Box::new(invalid(reason, &base, payload.len()))));
            }
        }
        let mut with_user = base.clone();
        with_user.extend(user.iter().cloned());
        let subject = match self.template.render(|c| text(layout.template.get(c).copied())) {
            Ok(s) => s,
            Err(reason) => return Err(MapError::Invalid(Box::new(invalid(reason, &with_user, payload.len())))),
        };
        headers.push((header::MSG_ID.to_owned(), id.clone()));
        headers.extend(base.iter().cloned());
        headers.extend(user);
        let event = Event {
            id,
            subject,
            headers,
            payload,
            position,
            commit_time: commit_time.clone(),
            table: table.clone(),
            dead_letter: false,
        };
        if let Some(max) = self.max_payload {
            let size = event.wire_size();
            if size > max {
                return Err(MapError::Invalid(Box::new(invalid(
                    format!("message of {size} bytes exceeds the NATS server's max_payload of {max} bytes"),
                    &with_user,
                    size,
                ))));
            }
        }
        Ok(event)
    }
}

/// Appends the keys of the `headers` JSON object.
fn user_headers(warned_keys: &mut HashSet<String>, json: &str, out: &mut Vec<(String, String)>) -> Result<(), String> {
    use serde_json::value::RawValue;
    // Raw values keep Postgres' JSON text exactly (numbers keep their precision and spelling).
    let map: Option<std::collections::BTreeMap<String, &RawValue>> = match serde_json::from_str(json) {
        Ok(map) => map,
        Err(e) if serde_json::from_str::<&RawValue>(json).is_ok() => {
            return Err(format!("headers column is not a JSON object ({e})"))
        }
        Err(e) => return Err(format!("headers column is not valid JSON: {e}")),
    };
    for (key, value) in map.into_iter().flatten() {
        let lower = key.to_ascii_lowercase();
        if lower.starts_with("nats-") || lower.starts_with("outbox-") {
            if warned_keys.insert(key.clone()) {
                tracing::warn!(key = %key, "user header cannot override Nats-*/Outbox-* headers, dropped");
            }
            continue;
        }
        if key.is_empty() || key.chars().any(|c| c == ':' || c.is_whitespace() || c.is_control()) {
            return Err(format!("header key {key:?} cannot be carried by NATS (empty, or has `:` or whitespace)"));
        }
        let value = match serde_json::from_str::<String>(value.get()) {
            Ok(s) => s,
            Err(_) => value.get().to_owned(),
        };
        if value.contains(['\r', '\n']) {
            return Err(format!("header {key} value contains CR or LF"));
        }
        out.push((key, value));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawSettings;
    use pgoutput::{oid, RelationColumn};

    fn settings(f: impl FnOnce(&mut RawSettings)) -> Settings {
        let mut raw = RawSettings::default();
        f(&mut raw);
        Settings::validate(raw).expect("valid settings")
    }

    fn relation(columns: &[(&str, u32)]) -> Relation {
        Relation {
            xid: None,
            id: 42,
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

    const DEFAULT: &[(&str, u32)] = &[
        ("id", oid::UUID),
        ("aggregate_type", oid::TEXT),
        ("aggregate_id", oid::TEXT),
        ("event_type", oid::TEXT),
        ("payload", oid::JSONB),
        ("headers", oid::JSONB),
    ];

    fn row(values: &[Option<&str>]) -> Tuple {
        Tuple(
            values
                .iter()
                .map(|v| match v {
                    Some(s) => TupleValue::Text(Bytes::copy_from_slice(s.as_bytes())),
                    None => TupleValue::Null,
                })
                .collect(),
        )
    }

    fn mapper(s: &Settings, columns: &[(&str, u32)]) -> OutboxMapper {
        let mut m = OutboxMapper::new(s).expect("mapper");
        m.relation(&relation(columns)).expect("relation");
        m
    }

    fn invalid(result: Result<Event, MapError>) -> InvalidEvent {
        match result {
            Err(MapError::Invalid(i)) => *i,
            other => panic!("expected an invalid event, got {other:?}"),
        }
    }

    const ID: &str = "0b7d7d3e-6a43-4b5c-9b1e-1f6f9d0c2a11";

    #[test]
    fn maps_a_row_to_subject_headers_and_payload() {
        let s = settings(|_| {});
        let mut m = mapper(&s, DEFAULT);
        let t = row(&[
            Some(ID),
            Some("order"),
            Some("1001"),
            Some("created"),
            Some(r#"{"a": 1}"#),
            Some(r#"{"trace": "x", "n": 2, "obj": {"k": true}, "big": 123456789012345678901234567890, "d": 1.50}"#),
        ]);
        let e = m.map(42, &t, &TxnStamp::new(Lsn(0x1_0000_00AB), 0), 3).expect("event");
        assert_eq!(e.id, ID);
        assert_eq!(e.subject, "outbox.order.created");
        assert_eq!(&e.payload[..], br#"{"a": 1}"#);
        let h: Vec<(&str, &str)> = e.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            h,
            [
                ("Nats-Msg-Id", ID),
                ("Outbox-Aggregate-Type", "order"),
                ("Outbox-Aggregate-Id", "1001"),
                ("Outbox-Event-Type", "created"),
                ("Outbox-Commit-Lsn", "1/AB"),
                ("Outbox-Commit-Time", "2000-01-01T00:00:00.000000Z"),
                ("Outbox-Index", "3"),
                ("big", "123456789012345678901234567890"),
                ("d", "1.50"),
                ("n", "2"),
                ("obj", r#"{"k": true}"#),
                ("trace", "x"),
            ]
        );
    }

    #[test]
    fn table_without_id_headers_and_with_bytea_payload() {
        let s = settings(|r| r.subject = "events.{kind}".into());
        let mut m = mapper(&s, &[("kind", oid::TEXT), ("payload", oid::BYTEA)]);
        let e = m.map(42, &row(&[Some("ping"), Some("\\x00ff10")]), &TxnStamp::new(Lsn(0x20), 0), 7).expect("event");
        assert_eq!(e.id, "0/20:7");
        assert_eq!(e.subject, "events.ping");
        assert_eq!(&e.payload[..], &[0x00, 0xff, 0x10]);
        assert!(e.header("Outbox-Aggregate-Type").is_none());
    }

    #[test]
    fn rows_that_cannot_be_messages_are_invalid_with_a_reason() {
        let s = settings(|_| {});
        let mut m = mapper(&s, DEFAULT);
        let base = |id: Option<&'static str>, agg: &'static str, headers: Option<&'static str>| {
            row(&[id, Some(agg), Some("1"), Some("created"), Some("{}"), headers])
        };
        let cases: Vec<(Tuple, &str)> = vec![
            (base(None, "order", None), "NULL"),
            (base(Some(ID), "", None), "empty"),
            (base(Some(ID), "or.der", None), "'.'"),
            (base(Some(ID), "or der", None), "' '"),
            (base(Some(ID), "*", None), "'*'"),
            (base(Some(ID), ">", None), "'>'"),
            (base(Some(ID), "order", Some(r#"{"bad key": "v"}"#)), "cannot be carried"),
            (base(Some(ID), "order", Some(r#"{"k:v": "v"}"#)), "cannot be carried"),
            (base(Some(ID), "order", Some(r#"{"k": "line\r\nbreak"}"#)), "CR or LF"),
            (base(Some(ID), "order", Some("[1, 2]")), "not a JSON object"),
        ];
        for (tuple, reason) in cases {
            let i = invalid(m.map(42, &tuple, &TxnStamp::new(Lsn(0x30), 0), 0));
            assert!(i.reason.contains(reason), "{} does not mention {reason}", i.reason);
            assert_eq!(i.table, "public.outbox");
            assert_eq!(i.position, Position { commit_lsn: Lsn(0x30), index: 0 });
            assert!(i.headers.iter().any(|(k, v)| k == header::COMMIT_LSN && v == "0/30"));
        }
        // A NULL id falls back to the position for the dead-letter record.
        let i = invalid(m.map(42, &base(None, "order", None), &TxnStamp::new(Lsn(0x30), 0), 4));
        assert_eq!(i.id, "0/30:4");
        let dl = i.dead_letter("outbox.dead-letter");
        assert_eq!(dl.id, "dead-letter:0/30:4");
        assert_eq!(dl.header(header::MSG_ID), Some("dead-letter:0/30:4"));
        assert!(dl.header(header::ERROR).is_some_and(|e| e.contains("NULL")));
        let body: serde_json::Value = serde_json::from_slice(&dl.payload).expect("json body");
        assert_eq!(body["commit_lsn"], "0/30");
        assert_eq!(body["index"], 4);
    }

    #[test]
    fn oversize_and_reserved_header_keys() {
        let s = settings(|_| {});
        let mut m = mapper(&s, DEFAULT);
        m.set_max_payload(100);
        let big = format!(r#"{{"blob": "{}"}}"#, "x".repeat(200));
        let t = row(&[Some(ID), Some("order"), Some("1"), Some("created"), Some(&big), Some(r#"{"u": "1"}"#)]);
        let i = invalid(m.map(42, &t, &TxnStamp::new(Lsn(1), 0), 0));
        assert!(i.reason.contains("max_payload of 100"), "{}", i.reason);
        assert!(i.headers.contains(&("u".to_owned(), "1".to_owned())), "the record keeps the row's headers");
        assert!(i.dead_letter("dl").header("u") == Some("1"));
        assert!(i.size > 200);
        let mut m = mapper(&s, DEFAULT);
        let t = row(&[
            Some(ID),
            Some("order"),
            Some("1"),
            Some("created"),
            Some("{}"),
            Some(r#"{"Nats-Msg-Id": "x", "outbox-index": "9", "ok": "y"}"#),
        ]);
        let e = m.map(42, &t, &TxnStamp::new(Lsn(1), 0), 0).expect("event");
        assert_eq!(e.header("Nats-Msg-Id"), Some(ID));
        assert_eq!(e.header("Outbox-Index"), Some("0"));
        assert_eq!(e.header("ok"), Some("y"));
        assert_eq!(e.headers.len(), 8);
    }

    #[test]
    fn wrong_relation_or_column_count_is_a_stream_error() {
        let s = settings(|_| {});
        let mut m = mapper(&s, DEFAULT);
        assert!(matches!(
            m.map(7, &row(&[]), &TxnStamp::new(Lsn(1), 0), 0),
            Err(MapError::Source(SourceError::Decode { .. }))
        ));
        assert!(matches!(
            m.map(42, &row(&[Some(ID)]), &TxnStamp::new(Lsn(1), 0), 0),
            Err(MapError::Source(SourceError::Decode { .. }))
        ));
        let mut m = OutboxMapper::new(&s).expect("mapper");
        assert!(matches!(m.relation(&relation(&[("id", oid::UUID)])), Err(SourceError::MissingColumn { .. })));
    }
}
