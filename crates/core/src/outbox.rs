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
    event::{header, Event, Position},
    source::SourceError,
    subject::SubjectTemplate,
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
    pub fn map(
        &mut self,
        relation_id: u32,
        tuple: &Tuple,
        commit_lsn: Lsn,
        commit_time_micros: i64,
        index: u32,
    ) -> Result<Event, MapError> {
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
        let commit_time = commit_time_rfc3339(commit_time_micros);
        let fallback_id = format!("{commit_lsn}:{index}");
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
        base.push((header::COMMIT_LSN.to_owned(), commit_lsn.to_string()));
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
        let subject = match self.template.render(|c| text(layout.template.get(c).copied())) {
            Ok(s) => s,
            Err(reason) => return Err(MapError::Invalid(Box::new(invalid(reason, &base, payload.len())))),
        };
        headers.push((header::MSG_ID.to_owned(), id.clone()));
        headers.extend(base.iter().cloned());
        if let Some(json) = text(layout.headers) {
            if let Err(reason) = self.user_headers(&json, &mut headers) {
                return Err(MapError::Invalid(Box::new(invalid(reason, &base, payload.len()))));
            }
        }
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
                    &base,
                    size,
                ))));
            }
        }
        Ok(event)
    }

    /// Appends the keys of the `headers` JSON object.
    fn user_headers(&mut self, json: &str, out: &mut Vec<(String, String)>) -> Result<(), String> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("headers column is not valid JSON: {e}"))?;
        let map = match value {
            serde_json::Value::Null => return Ok(()),
            serde_json::Value::Object(map) => map,
            _ => return Err("headers column is not a JSON object".into()),
        };
        for (key, value) in map {
            let lower = key.to_ascii_lowercase();
            if lower.starts_with("nats-") || lower.starts_with("outbox-") {
                if self.warned_keys.insert(key.clone()) {
                    tracing::warn!(key = %key, "user header cannot override Nats-*/Outbox-* headers, dropped");
                }
                continue;
            }
            if key.is_empty() || key.chars().any(|c| c == ':' || c.is_whitespace() || c.is_control()) {
                return Err(format!("header key {key:?} cannot be carried by NATS (empty, or has `:` or whitespace)"));
            }
            let value = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            if value.contains(['\r', '\n']) {
                return Err(format!("header {key} value contains CR or LF"));
            }
            out.push((key, value));
        }
        Ok(())
    }
}
