//! The outbox mapper: one inserted row → one [`Event`] (subject, headers, payload), or the reason it cannot be one.
//!
//! In: the table's Relation message (once per relation id, to resolve column positions) and each inserted tuple with
//! its transaction's commit LSN, commit time and index. Out: an [`Event`] following design.md §4, or an
//! [`InvalidEvent`] that `--on-invalid` ([`OutboxMapper::on_invalid`], the one place deciding it) turns into a stop
//! or a dead-letter record. The event is the message exactly as it goes on the wire: every header name and value is
//! checked against what NATS (and async-nats, which panics on anything else) accepts, and the `max_payload` check
//! is made on its measured wire size plus the most the publisher adds (the fence header or the replay marker), so a
//! message the mapper accepts is never refused for its size.
//! The options of design.md §4e are options of this mapper: header columns join the headers, `{column|partition:N}`
//! is rendered by the subject template, and `--cloudevents` adds the `ce-` headers or wraps the payload in the JSON
//! envelope ([`super::cloudevents`]) before the size check, so `max_payload` counts the envelope. Dead-letter records
//! are walrelay's own records, not CloudEvents: they carry no `ce-` headers and no `Content-Type`.
//! Text values arrive in Postgres text output format:
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html#PROTOCOL-LOGICALREP-MESSAGE-FORMATS-TUPLEDATA>.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::{header::HeaderName, HeaderMap, HeaderValue, Subject};
use bytes::Bytes;
use pgoutput::{Lsn, Relation, Tuple, TupleValue};

use crate::{
    config::{Columns, OnInvalid, Settings, Tables},
    mapping::cloudevents::{self, DataKind},
    mapping::event::{header, header_name, header_value, message_headers, number_value, wire_size, Event, Position},
    mapping::header_columns::HeaderColumn,
    mapping::subject::SubjectTemplate,
    sink::publisher::ADDED_HEADERS_MAX,
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

/// 9999-12-31T23:59:59.999999Z in µs since the Unix epoch.
const RFC3339_MAX_MICROS: u64 = 253_402_300_799_999_999;

/// Formats a Postgres timestamp (µs since 2000-01-01) as RFC 3339 UTC.
pub fn commit_time_rfc3339(pg_micros: i64) -> String {
    let base = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_OFFSET_SECS);
    let t = if pg_micros >= 0 {
        base + Duration::from_micros(pg_micros.unsigned_abs())
    } else {
        base.checked_sub(Duration::from_micros(pg_micros.unsigned_abs())).unwrap_or(UNIX_EPOCH)
    };
    // RFC 3339 ends at year 9999 (humantime's Display fails beyond it); Postgres' timestamps reach 294276.
    // humantime also panics before 1970; commit times are never that old.
    let t = t.clamp(UNIX_EPOCH, UNIX_EPOCH + Duration::from_micros(RFC3339_MAX_MICROS));
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
    commit_lsn_value: HeaderValue,
    commit_time_value: HeaderValue,
    /// Whether the events are backfilled rows (design.md §4f): they carry `Outbox-Backfill: true`.
    backfill: bool,
}

impl TxnStamp {
    /// Stamps a transaction from its Begin message.
    pub fn new(commit_lsn: Lsn, commit_time_micros: i64) -> Self {
        let commit_lsn_text = commit_lsn.to_string();
        let commit_time = commit_time_rfc3339(commit_time_micros);
        // `X/Y` and RFC 3339 text never hold CR or LF.
        Self {
            commit_lsn_value: header_value(&commit_lsn_text).unwrap_or_default(),
            commit_time_value: header_value(&commit_time).unwrap_or_default(),
            commit_lsn,
            commit_lsn_text,
            commit_time,
            backfill: false,
        }
    }

    /// Stamps the rows `setup --backfill` reads from the slot's exported snapshot (design.md §4f): `commit_lsn` is
    /// the slot's consistent point, the time the snapshot's, and every event carries `Outbox-Backfill: true`.
    pub fn backfill(consistent_point: Lsn, snapshot_time_micros: i64) -> Self {
        Self { backfill: true, ..Self::new(consistent_point, snapshot_time_micros) }
    }

    /// Whether the events are backfilled rows.
    pub fn is_backfill(&self) -> bool {
        self.backfill
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
    /// The `Outbox-*` headers it would have had, then the row's own headers that NATS can carry (values as the row
    /// has them: they may hold CR/LF).
    pub headers: Vec<(String, String)>,
    /// Commit time, RFC 3339.
    pub commit_time: String,
    /// Why it cannot be published.
    pub reason: String,
    /// Its size in bytes (payload plus headers), as far as known.
    pub size: usize,
    /// Whether mapping the row again shows it invalid, so that `walrelay skip` can pass it. Not so for an id found
    /// taken only when the event was published.
    pub skippable: bool,
}

impl InvalidEvent {
    /// What an operator can do about it (after the reason in run's error).
    pub fn remedy(&self) -> String {
        if self.skippable {
            format!(
                "the insert is in the WAL, so changing the row does not help: publish a dead-letter record for just \
                 this event with `walrelay skip --through {}` and start run again, or run with --on-invalid \
                 dead-letter to do so for every invalid event",
                self.position
            )
        } else {
            "start run once with --on-invalid dead-letter: it publishes a dead-letter record for this event and goes \
             on (`walrelay skip` cannot pass it: the row itself is valid)"
                .to_owned()
        }
    }

    /// A mapped event that turned out invalid for `reason` (e.g. its id is already in the stream for another
    /// message): what its dead-letter record needs, from the event's own headers.
    pub fn from_event(event: &Event, reason: String) -> Self {
        let headers = event
            .sorted_headers()
            .into_iter()
            .filter(|(name, _)| *name != header::MSG_ID)
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        Self {
            id: event.id.clone(),
            table: event.table.to_string(),
            position: event.position,
            headers,
            commit_time: event.commit_time().to_owned(),
            reason,
            size: event.wire_size(),
            skippable: false,
        }
    }
}

/// Longest id and reason a minimal dead-letter record carries.
const MINIMAL_RECORD_TEXT: usize = 128;

impl InvalidEvent {
    /// The dead-letter record standing in for this event (design.md §4), at most `limit` bytes on the wire when
    /// that is possible: a record too large with the row's headers drops them, then shrinks to the position headers
    /// and a shortened id and reason.
    pub fn dead_letter(&self, subject: &Subject, limit: Option<usize>) -> Event {
        let full = self.record(subject, true, usize::MAX);
        match limit {
            Some(limit) if full.wire_size() > limit => {
                let bare = self.record(subject, false, usize::MAX);
                if bare.wire_size() <= limit {
                    bare
                } else {
                    self.record(subject, false, MINIMAL_RECORD_TEXT)
                }
            }
            _ => full,
        }
    }

    fn record(&self, subject: &Subject, row_headers: bool, text_max: usize) -> Event {
        let minimal = text_max != usize::MAX;
        let id = if minimal {
            format!("dead-letter:{}:{}", self.position.commit_lsn, self.position.index)
        } else {
            format!("dead-letter:{}", sanitize_header_value(&self.id))
        };
        let reason = shorten(&self.reason, text_max);
        let mut headers = message_headers();
        headers.insert(HeaderName::from_static(header::MSG_ID), header_value(&id).unwrap_or_default());
        for (k, v) in &self.headers {
            let ours = k.starts_with("Outbox-");
            // A backfilled row's record keeps `Outbox-Backfill` even when minimal: the tail read needs it to tell
            // its position (the consistent point) from a streamed transaction's (sink::stream::HighWater).
            let position =
                [header::COMMIT_LSN, header::COMMIT_TIME, header::INDEX, header::BACKFILL].contains(&k.as_str());
            if !(position || (ours && !minimal) || row_headers) || cloudevents::is_cloudevents_header(k) {
                continue;
            }
            if let Some(name) = header_name(k) {
                headers.insert(name, header_value(&sanitize_header_value(v)).unwrap_or_default());
            }
        }
        headers.insert(
            HeaderName::from_static(header::ERROR),
            header_value(&sanitize_header_value(reason)).unwrap_or_default(),
        );
        let body = serde_json::json!({
            "id": shorten(&self.id, text_max),
            "table": self.table,
            "commit_lsn": self.position.commit_lsn.to_string(),
            "index": self.position.index,
            "reason": reason,
            "size": self.size,
        });
        Event {
            id,
            subject: subject.clone(),
            headers,
            payload: Bytes::from(body.to_string()),
            position: self.position,
            table: Arc::from(self.table.as_str()),
            dead_letter: true,
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn shorten(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn sanitize_header_value(s: &str) -> String {
    s.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).collect()
}

/// What the payload column holds, from its type: json/jsonb, bytea (sent as its raw bytes) or other text (sent as
/// UTF-8 text, like json).
fn data_kind(type_oid: Option<u32>) -> DataKind {
    match type_oid {
        Some(pgoutput::oid::BYTEA) => DataKind::Bytes,
        Some(pgoutput::oid::JSON | pgoutput::oid::JSONB) => DataKind::Json,
        _ => DataKind::Text,
    }
}

/// Column positions of one relation, resolved once from its Relation message.
#[derive(Debug, Clone)]
struct Layout {
    id: Option<usize>,
    payload: usize,
    payload_kind: DataKind,
    headers: Option<usize>,
    aggregate_type: Option<usize>,
    aggregate_id: Option<usize>,
    event_type: Option<usize>,
    /// The template's columns and their positions (a handful: a list beats hashing them per row).
    template: Vec<(String, usize)>,
    /// `--header-columns`: each header and its column's position.
    header_columns: Vec<(HeaderName, usize)>,
    /// The CloudEvents `source` of this relation's events, and its binary-mode header value.
    ce_source: Arc<str>,
    ce_source_value: HeaderValue,
    columns: usize,
    /// The relation's `schema.table`, as events name it.
    label: Arc<str>,
}

/// The relation id under which logical decoding messages are mapped (0 is no valid OID, so no table has it).
const MESSAGE_RELATION: u32 = 0;

/// Maps outbox rows to events.
#[derive(Debug)]
pub struct OutboxMapper {
    tables: Tables,
    columns: Columns,
    template: SubjectTemplate,
    layouts: HashMap<u32, Layout>,
    max_payload: Option<usize>,
    warned_keys: HashSet<String>,
    on_invalid: OnInvalid,
    dead_letter_subject: Subject,
    /// The JSON keys of a logical message, in the column order of its relation ([`MESSAGE_RELATION`]).
    message_keys: Vec<String>,
    /// `--header-columns`.
    header_columns: Vec<HeaderColumn>,
    /// `--cloudevents`.
    cloudevents: cloudevents::Mode,
    /// `--cloudevents-source`, or `None` for the default `/<database>/...`.
    cloudevents_source: Option<String>,
    /// The database the events come from (for the default CloudEvents source), from the Postgres connection.
    database: String,
}

/// A column's text (`None` for NULL, unchanged TOAST or a missing column); borrowed when it is valid UTF-8.
fn text(tuple: &Tuple, idx: Option<usize>) -> Option<Cow<'_, str>> {
    match tuple.0.get(idx?)? {
        // The common case first: `from_utf8` is much cheaper than the lossy decoder's chunking.
        TupleValue::Text(b) | TupleValue::Binary(b) => match std::str::from_utf8(b) {
            Ok(s) => Some(Cow::Borrowed(s)),
            Err(_) => Some(String::from_utf8_lossy(b)),
        },
        _ => None,
    }
}

impl OutboxMapper {
    /// A mapper for the configured table, columns, subject template and `--on-invalid`.
    pub fn new(settings: &Settings) -> Result<Self, SourceError> {
        let mut mapper = Self {
            tables: settings.table.clone(),
            columns: settings.columns.clone(),
            template: settings.subject.clone(),
            layouts: HashMap::new(),
            max_payload: None,
            warned_keys: HashSet::new(),
            on_invalid: settings.on_invalid,
            dead_letter_subject: Subject::from(settings.dead_letter_subject.as_str()),
            message_keys: Vec::new(),
            header_columns: settings.header_columns.clone(),
            cloudevents: settings.cloudevents,
            cloudevents_source: settings.cloudevents_source.clone(),
            database: settings.pg_url.dbname(),
        };
        if let Some(prefix) = &settings.message_prefix {
            let source = mapper.ce_source("messages");
            let (keys, layout) =
                message_layout(&mapper.columns, &mapper.template, &mapper.header_columns, prefix, source);
            mapper.message_keys = keys;
            mapper.layouts.insert(MESSAGE_RELATION, layout);
        }
        Ok(mapper)
    }

    /// The CloudEvents `source` of events from `what` (`schema.table`, or `messages`): `--cloudevents-source`, or
    /// `/<database>/<what>`.
    fn ce_source(&self, what: &str) -> Arc<str> {
        match &self.cloudevents_source {
            Some(source) => Arc::from(source.as_str()),
            None => Arc::from(format!("/{}/{what}", self.database)),
        }
    }

    /// Sets the server's `max_payload`: an event whose wire size plus [`ADDED_HEADERS_MAX`] exceeds it is invalid.
    pub fn set_max_payload(&mut self, max: usize) {
        self.max_payload = Some(max);
    }

    /// The largest wire size an event may have (before the headers a publisher adds), if a server is known.
    pub fn size_limit(&self) -> Option<usize> {
        self.max_payload.map(|max| max.saturating_sub(ADDED_HEADERS_MAX))
    }

    /// What `--on-invalid` makes of an event that cannot be published: the one place that decides it, for `run`,
    /// `peek` and `replay`. `Ok` is the dead-letter record to publish in its place (`dead-letter`); `Err` gives the
    /// event back to stop on (`stop`, or a record that cannot fit a tiny `max_payload`).
    pub fn on_invalid(&self, invalid: Box<InvalidEvent>) -> Result<Event, Box<InvalidEvent>> {
        match self.on_invalid {
            OnInvalid::Stop => Err(invalid),
            OnInvalid::DeadLetter => {
                let limit = self.size_limit();
                let record = invalid.dead_letter(&self.dead_letter_subject, limit);
                match limit {
                    Some(limit) if record.wire_size() > limit => {
                        let mut invalid = invalid;
                        invalid.reason = format!(
                            "{}; its dead-letter record of {} bytes does not fit max_payload either",
                            invalid.reason,
                            record.wire_size()
                        );
                        Err(invalid)
                    }
                    _ => Ok(record),
                }
            }
        }
    }

    /// Whether a relation is the outbox table.
    pub fn is_outbox(&self, relation: &Relation) -> bool {
        let ns = if relation.namespace.is_empty() { "pg_catalog" } else { relation.namespace.as_str() };
        self.tables.contains(ns, &relation.name)
    }

    /// Records a Relation message of the outbox table, resolving column positions; fails when a needed column is
    /// missing.
    pub fn relation(&mut self, relation: &Relation) -> Result<(), SourceError> {
        let find = |name: &str| relation.columns.iter().position(|c| c.name == name);
        let ns = if relation.namespace.is_empty() { "pg_catalog" } else { relation.namespace.as_str() };
        let label: Arc<str> = Arc::from(format!("{ns}.{}", relation.name));
        let missing = |column: &str, purpose: &str, option: &str| SourceError::MissingColumn {
            table: label.to_string(),
            column: column.to_owned(),
            purpose: purpose.to_owned(),
            option: option.to_owned(),
        };
        let payload = find(&self.columns.payload)
            .ok_or_else(|| missing(&self.columns.payload, "the message data", "--payload-column"))?;
        let payload_kind = data_kind(relation.columns.get(payload).map(|c| c.type_oid));
        let mut template = Vec::new();
        for column in self.template.columns() {
            let idx = find(column).ok_or_else(|| missing(column, "the subject template", "--subject"))?;
            template.push((column.to_owned(), idx));
        }
        let mut header_columns = Vec::new();
        for h in &self.header_columns {
            let idx = find(&h.column).ok_or_else(|| missing(&h.column, "a header column", "--header-columns"))?;
            header_columns.push((h.header.clone(), idx));
        }
        let ce_source = self.ce_source(&label);
        let layout = Layout {
            id: find(&self.columns.id),
            payload,
            payload_kind,
            headers: find(&self.columns.headers),
            aggregate_type: find(&self.columns.aggregate_type),
            aggregate_id: find(&self.columns.aggregate_id),
            event_type: find(&self.columns.event_type),
            template,
            header_columns,
            ce_source_value: cloudevents::source_value(&ce_source),
            ce_source,
            columns: relation.columns.len(),
            label: label.clone(),
        };
        self.layouts.insert(relation.id, layout);
        Ok(())
    }

    /// Maps the content of a transactional logical decoding message (`--message-prefix`, design.md §4c) through the
    /// same path as a row: the JSON object's fields `id`, `aggregate_type`, `aggregate_id`, `event_type`, `payload`
    /// (any JSON value, sent as its JSON text), `headers` and any column the subject template names become the
    /// columns of a row of the message "relation", which [`map`](Self::map) then maps like any outbox row.
    pub fn map_message(&mut self, content: &[u8], txn: &TxnStamp, index: u32) -> Result<Event, MapError> {
        let object = match serde_json::from_slice::<serde_json::Value>(content) {
            Ok(serde_json::Value::Object(object)) => Some(object),
            _ => None,
        };
        let value = |key: &String| match object.as_ref().and_then(|o| o.get(key.as_str())) {
            None | Some(serde_json::Value::Null) => TupleValue::Null,
            Some(serde_json::Value::String(s)) if key != "payload" && key != "headers" => {
                TupleValue::Text(Bytes::from(s.clone()))
            }
            Some(other) => TupleValue::Text(Bytes::from(other.to_string())),
        };
        let tuple = Tuple(self.message_keys.iter().map(value).collect());
        match self.map(MESSAGE_RELATION, &tuple, txn, index) {
            Err(MapError::Invalid(mut invalid)) if object.is_none() => {
                invalid.reason = "message content is not a JSON object".into();
                Err(MapError::Invalid(invalid))
            }
            other => other,
        }
    }

    /// Whether the relation id belongs to the outbox table (a Relation message for it was seen).
    pub fn knows(&self, relation_id: u32) -> bool {
        self.layouts.contains_key(&relation_id)
    }

    /// Maps one inserted row into the message as it goes on the wire.
    ///
    /// Errors: [`MapError::Invalid`] for a row that cannot be published (handled by `--on-invalid`): an id, header
    /// name or value NATS cannot carry, a subject it cannot have, or a size over the server's `max_payload`;
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
                    relation: layout.label.to_string(),
                    expected: layout.columns,
                    actual: tuple.0.len(),
                },
            }));
        }
        let position = Position { commit_lsn, index };
        let payload: Bytes = match tuple.0.get(layout.payload) {
            Some(TupleValue::Text(b)) if layout.payload_kind != DataKind::Bytes => b.clone(),
            Some(v @ TupleValue::Text(_)) => match pgoutput::convert(pgoutput::oid::BYTEA, v) {
                Ok(pgoutput::Value::Bytea(bytes)) => Bytes::from(bytes),
                _ => Bytes::new(),
            },
            Some(TupleValue::Binary(b)) => b.clone(),
            _ => Bytes::new(),
        };
        let table = &layout.label.clone();
        let invalid = |reason: String, built: &HeaderMap, size: usize| {
            MapError::Invalid(Box::new(invalid_event(layout, table, tuple, txn, index, reason, built, size)))
        };
        let no_headers = HeaderMap::new();
        let id = match layout.id {
            None => format!("{}:{index}", txn.commit_lsn_text),
            Some(_) => match text(tuple, layout.id) {
                Some(id) if !id.is_empty() && !id.contains(['\r', '\n']) => id.into_owned(),
                Some(_) => return Err(invalid("id is empty or contains CR/LF".into(), &no_headers, payload.len())),
                None => {
                    return Err(invalid(format!("id column {} is NULL", self.columns.id), &no_headers, payload.len()))
                }
            },
        };
        let mut headers = message_headers();
        headers.insert(HeaderName::from_static(header::MSG_ID), header_value(&id).unwrap_or_default());
        for (name, idx) in [
            (header::AGGREGATE_TYPE, layout.aggregate_type),
            (header::AGGREGATE_ID, layout.aggregate_id),
            (header::EVENT_TYPE, layout.event_type),
        ] {
            if let Some(v) = text(tuple, idx) {
                let Some(value) = header_value(&v) else {
                    return Err(invalid(format!("header {name} value contains CR or LF"), &no_headers, payload.len()));
                };
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        headers.insert(HeaderName::from_static(header::COMMIT_LSN), txn.commit_lsn_value.clone());
        headers.insert(HeaderName::from_static(header::COMMIT_TIME), txn.commit_time_value.clone());
        headers.insert(HeaderName::from_static(header::INDEX), number_value(u64::from(index)));
        if txn.backfill {
            headers.insert(HeaderName::from_static(header::BACKFILL), HeaderValue::from("true"));
        }
        // The row's own headers, so a record standing in for an invalid event can carry them.
        if let Some(json) = text(tuple, layout.headers) {
            if let Err(reason) = user_headers(&mut self.warned_keys, &json, &mut headers) {
                return Err(invalid(reason, &headers, payload.len()));
            }
        }
        // Header columns after the `headers` object's keys: a column wins over a key of the same name.
        for (name, idx) in &layout.header_columns {
            if let Some(v) = text(tuple, Some(*idx)) {
                let Some(value) = header_value(&v) else {
                    return Err(invalid(
                        format!("header column {name} value contains CR or LF"),
                        &headers,
                        payload.len(),
                    ));
                };
                headers.insert(name.clone(), value);
            }
        }
        let column = |c: &str| layout.template.iter().find(|(name, _)| name == c).map(|&(_, idx)| idx);
        let subject = match self.template.render(|c| text(tuple, column(c))) {
            Ok(s) => s,
            Err(reason) => return Err(invalid(reason, &headers, payload.len())),
        };
        let payload = match self.cloudevents {
            cloudevents::Mode::Off => payload,
            mode => {
                let event_type = text(tuple, layout.event_type).filter(|t| !t.is_empty());
                let Some(event_type) = event_type else {
                    let reason = format!(
                        "CloudEvents need a type: the event type column {} is NULL, empty or missing",
                        self.columns.event_type
                    );
                    return Err(invalid(reason, &headers, payload.len()));
                };
                let subject = text(tuple, layout.aggregate_id);
                let attributes = cloudevents::Attributes {
                    id: &id,
                    source: &layout.ce_source,
                    event_type: &event_type,
                    subject: subject.as_deref(),
                    time: &txn.commit_time,
                    time_value: &txn.commit_time_value,
                    kind: layout.payload_kind,
                };
                if mode == cloudevents::Mode::Binary {
                    cloudevents::binary(&attributes, &layout.ce_source_value, &mut headers);
                    payload
                } else {
                    match cloudevents::structured(&attributes, &payload, &mut headers) {
                        Ok(envelope) => envelope,
                        Err(reason) => return Err(invalid(reason.to_owned(), &headers, payload.len())),
                    }
                }
            }
        };
        // Measured on the message itself: what async-nats and the server will count, less what the publisher adds.
        let size = wire_size(&headers, payload.len());
        if let (Some(max), Some(limit)) = (self.max_payload, self.size_limit()) {
            if size > limit {
                let reason = format!(
                    "message of {size} bytes exceeds the {limit} bytes available under the NATS server's \
                     max_payload of {max} bytes ({ADDED_HEADERS_MAX} are kept for the headers the publisher adds)"
                );
                return Err(invalid(reason, &headers, size));
            }
        }
        Ok(Event {
            id,
            subject: Subject::from(subject),
            headers,
            payload,
            position,
            table: table.clone(),
            dead_letter: false,
        })
    }
}

/// The "relation" of logical messages (`--message-prefix`), built once: the JSON key of each of its columns and its
/// layout. Its columns are the outbox columns (named as configured, filled from the fixed keys `id`,
/// `aggregate_type`, ...) and any other column the subject template names (filled from the key of that name).
fn message_layout(
    columns: &Columns,
    template: &SubjectTemplate,
    header_columns: &[HeaderColumn],
    prefix: &str,
    ce_source: Arc<str>,
) -> (Vec<String>, Layout) {
    let mut names: Vec<(String, String)> = [
        (&columns.id, "id"),
        (&columns.aggregate_type, "aggregate_type"),
        (&columns.aggregate_id, "aggregate_id"),
        (&columns.event_type, "event_type"),
        (&columns.payload, "payload"),
        (&columns.headers, "headers"),
    ]
    .into_iter()
    .map(|(column, key)| (column.clone(), key.to_owned()))
    .collect();
    let mut position = |column: &str| match names.iter().position(|(n, _)| n == column) {
        Some(idx) => idx,
        None => {
            names.push((column.to_owned(), column.to_owned()));
            names.len() - 1
        }
    };
    let positions: Vec<(String, usize)> =
        template.columns().into_iter().map(|column| (column.to_owned(), position(column))).collect();
    let header_positions = header_columns.iter().map(|h| (h.header.clone(), position(&h.column))).collect();
    let layout = Layout {
        id: Some(0),
        payload: 4,
        // A message's payload is any JSON value, sent as its JSON text.
        payload_kind: DataKind::Json,
        headers: Some(5),
        aggregate_type: Some(1),
        aggregate_id: Some(2),
        event_type: Some(3),
        template: positions,
        header_columns: header_positions,
        ce_source_value: cloudevents::source_value(&ce_source),
        ce_source,
        columns: names.len(),
        label: Arc::from(format!("message:{prefix}")),
    };
    (names.into_iter().map(|(_, key)| key).collect(), layout)
}

/// The invalid event for a row: its id (or position), the `Outbox-*` headers it would have had and the row's own
/// headers among those `built` so far.
#[allow(clippy::too_many_arguments)]
fn invalid_event(
    layout: &Layout,
    table: &str,
    tuple: &Tuple,
    txn: &TxnStamp,
    index: u32,
    reason: String,
    built: &HeaderMap,
    size: usize,
) -> InvalidEvent {
    let mut headers = Vec::with_capacity(8);
    for (name, idx) in [
        (header::AGGREGATE_TYPE, layout.aggregate_type),
        (header::AGGREGATE_ID, layout.aggregate_id),
        (header::EVENT_TYPE, layout.event_type),
    ] {
        if let Some(v) = text(tuple, idx) {
            headers.push((name.to_owned(), v.into_owned()));
        }
    }
    headers.push((header::COMMIT_LSN.to_owned(), txn.commit_lsn_text.clone()));
    headers.push((header::COMMIT_TIME.to_owned(), txn.commit_time.clone()));
    headers.push((header::INDEX.to_owned(), index.to_string()));
    if txn.backfill {
        headers.push((header::BACKFILL.to_owned(), "true".to_owned()));
    }
    // The row's own headers: every name but ours.
    let mut row: Vec<(String, String)> = built
        .iter()
        .filter(|(k, _)| {
            let k = <HeaderName as AsRef<str>>::as_ref(k);
            !(k.starts_with("Nats-") || k.starts_with("Outbox-"))
        })
        .flat_map(|(k, vs)| {
            let k = <HeaderName as AsRef<str>>::as_ref(k).to_owned();
            vs.iter().map(move |v| (k.clone(), v.as_str().to_owned()))
        })
        .collect();
    row.sort();
    headers.extend(row);
    let id = match text(tuple, layout.id) {
        Some(id) if layout.id.is_some() && !id.is_empty() => id.into_owned(),
        _ => format!("{}:{index}", txn.commit_lsn_text),
    };
    InvalidEvent {
        id,
        table: table.to_owned(),
        position: Position { commit_lsn: txn.commit_lsn, index },
        headers,
        commit_time: txn.commit_time.clone(),
        reason,
        size,
        skippable: true,
    }
}

/// Adds the keys of the `headers` JSON object, each checked against what NATS can carry.
fn user_headers(warned_keys: &mut HashSet<String>, json: &str, out: &mut HeaderMap) -> Result<(), String> {
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
                tracing::warn!(key = %key.escape_debug(), "user header cannot override Nats-*/Outbox-* headers, dropped");
            }
            continue;
        }
        let Some(name) = header_name(&key) else {
            return Err(format!(
                "header key `{}` cannot be carried by NATS (a key must be non-empty printable ASCII without `:` or \
                 whitespace)",
                key.escape_debug()
            ));
        };
        let text = match serde_json::from_str::<String>(value.get()) {
            Ok(s) => Cow::Owned(s),
            Err(_) => Cow::Borrowed(value.get()),
        };
        let Some(value) = header_value(&text) else {
            return Err(format!("header `{}` value contains CR or LF", key.escape_debug()));
        };
        out.insert(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawSettings;
    use crate::mapping::fixture::{relation, tuple, OUTBOX_COLUMNS, RELATION_ID};
    use pgoutput::oid;

    fn settings(f: impl FnOnce(&mut RawSettings)) -> Settings {
        let mut raw = RawSettings::default();
        f(&mut raw);
        Settings::validate(raw).expect("valid settings")
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
    fn maps_a_logical_message_through_the_row_path_with_its_own_template_columns() {
        let s = settings(|r| {
            r.message_prefix = Some("outbox".into());
            r.subject = "events.{tenant}.{event_type}".into();
        });
        let mut m = OutboxMapper::new(&s).expect("mapper");
        let content = br#"{"id": "m1", "event_type": "created", "tenant": "acme", "payload": {"a": 1}}"#;
        for index in [4, 5] {
            let e = m.map_message(content, &TxnStamp::new(Lsn(0x30), 0), index).expect("event");
            assert_eq!((e.id.as_str(), e.subject.as_str()), ("m1", "events.acme.created"));
            assert_eq!(&e.payload[..], br#"{"a":1}"#);
            assert_eq!(e.header(header::INDEX), Some(index.to_string().as_str()));
            assert_eq!(&*e.table, "message:outbox");
        }
        let not_json = m.map_message(b"nope", &TxnStamp::new(Lsn(0x30), 0), 6);
        assert_eq!(invalid(not_json).reason, "message content is not a JSON object");
    }

    #[test]
    fn maps_a_row_to_subject_headers_and_payload() {
        let s = settings(|_| {});
        let mut m = mapper(&s, &OUTBOX_COLUMNS);
        let t = tuple(&[
            Some(ID),
            Some("order"),
            Some("1001"),
            Some("created"),
            Some(r#"{"a": 1}"#),
            Some(r#"{"trace": "x", "n": 2, "obj": {"k": true}, "big": 123456789012345678901234567890, "d": 1.50}"#),
        ]);
        let e = m.map(RELATION_ID, &t, &TxnStamp::new(Lsn(0x1_0000_00AB), 0), 3).expect("event");
        assert_eq!(e.id, ID);
        assert_eq!(e.subject.as_str(), "outbox.order.created");
        assert_eq!(&e.payload[..], br#"{"a": 1}"#);
        let h: Vec<(&str, &str)> = e.sorted_headers().into_iter().collect();
        assert_eq!(
            h,
            [
                ("Nats-Msg-Id", ID),
                ("Outbox-Aggregate-Id", "1001"),
                ("Outbox-Aggregate-Type", "order"),
                ("Outbox-Commit-Lsn", "1/AB"),
                ("Outbox-Commit-Time", "2000-01-01T00:00:00.000000Z"),
                ("Outbox-Event-Type", "created"),
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
        let e = m
            .map(RELATION_ID, &tuple(&[Some("ping"), Some("\\x00ff10")]), &TxnStamp::new(Lsn(0x20), 0), 7)
            .expect("event");
        assert_eq!(e.id, "0/20:7");
        assert_eq!(e.subject.as_str(), "events.ping");
        assert_eq!(&e.payload[..], &[0x00, 0xff, 0x10]);
        assert!(e.header("Outbox-Aggregate-Type").is_none());
    }

    #[test]
    fn rows_that_cannot_be_messages_are_invalid_with_a_reason() {
        let s = settings(|_| {});
        let mut m = mapper(&s, &OUTBOX_COLUMNS);
        let base = |id: Option<&'static str>, agg: &'static str, headers: Option<&'static str>| {
            tuple(&[id, Some(agg), Some("1"), Some("created"), Some("{}"), headers])
        };
        let cases: Vec<(Tuple, &str)> = vec![
            (base(None, "order", None), "NULL"),
            (base(Some(ID), "", None), "empty"),
            (base(Some(ID), "or.der", None), "`.`"),
            (base(Some(ID), "or der", None), "` `"),
            (base(Some(ID), "*", None), "`*`"),
            (base(Some(ID), ">", None), "`>`"),
            (base(Some(ID), "order", Some(r#"{"bad key": "v"}"#)), "header key `bad key` cannot be carried"),
            (base(Some(ID), "order", Some(r#"{"k:v": "v"}"#)), "header key `k:v` cannot be carried"),
            (base(Some(ID), "order", Some(r#"{"café": "x"}"#)), "header key `café` cannot be carried"),
            (base(Some(ID), "order", Some(r#"{"": "x"}"#)), "header key `` cannot be carried"),
            (base(Some(ID), "order", Some(r#"{"k": "cr\rhere"}"#)), "header `k` value contains CR or LF"),
            (base(Some(ID), "or\rder", None), "Outbox-Aggregate-Type value contains CR or LF"),
            (base(Some(ID), "order", Some(r#"{"k": "line\r\nbreak"}"#)), "CR or LF"),
            (base(Some(ID), "order", Some("[1, 2]")), "not a JSON object"),
        ];
        for (tuple, reason) in cases {
            let i = invalid(m.map(RELATION_ID, &tuple, &TxnStamp::new(Lsn(0x30), 0), 0));
            assert!(i.reason.contains(reason), "{} does not mention {reason}", i.reason);
            assert_eq!(i.table, "public.outbox");
            assert_eq!(i.position, Position { commit_lsn: Lsn(0x30), index: 0 });
            assert!(i.headers.iter().any(|(k, v)| k == header::COMMIT_LSN && v == "0/30"));
        }
        // A NULL id falls back to the position for the dead-letter record.
        let i = invalid(m.map(RELATION_ID, &base(None, "order", None), &TxnStamp::new(Lsn(0x30), 0), 4));
        assert_eq!(i.id, "0/30:4");
        let dl = i.dead_letter(&Subject::from("outbox.dead-letter"), None);
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
        let mut m = mapper(&s, &OUTBOX_COLUMNS);
        m.set_max_payload(100);
        let big = format!(r#"{{"blob": "{}"}}"#, "x".repeat(200));
        let t = tuple(&[Some(ID), Some("order"), Some("1"), Some("created"), Some(&big), Some(r#"{"u": "1"}"#)]);
        let i = invalid(m.map(RELATION_ID, &t, &TxnStamp::new(Lsn(1), 0), 0));
        assert!(i.reason.contains("max_payload of 100"), "{}", i.reason);
        assert!(i.headers.contains(&("u".to_owned(), "1".to_owned())), "the record keeps the row's headers");
        assert!(i.dead_letter(&Subject::from("dl"), None).header("u") == Some("1"));
        assert!(i.size > 200);
        let mut m = mapper(&s, &OUTBOX_COLUMNS);
        let t = tuple(&[
            Some(ID),
            Some("order"),
            Some("1"),
            Some("created"),
            Some("{}"),
            Some(r#"{"Nats-Msg-Id": "x", "outbox-index": "9", "ok": "y"}"#),
        ]);
        let e = m.map(RELATION_ID, &t, &TxnStamp::new(Lsn(1), 0), 0).expect("event");
        assert_eq!(e.header("Nats-Msg-Id"), Some(ID));
        assert_eq!(e.header("Outbox-Index"), Some("0"));
        assert_eq!(e.header("ok"), Some("y"));
        assert_eq!(e.sorted_headers().len(), 8);
    }

    #[test]
    fn max_payload_counts_every_header_and_keeps_room_for_the_publishers() {
        let s = settings(|_| {});
        let row_with = |n: usize| {
            let payload = format!(r#"{{"p": "{}"}}"#, "x".repeat(n));
            tuple(&[Some(ID), Some("order"), Some("1"), Some("created"), Some(&payload), Some(r#"{"k": "v"}"#)])
        };
        let mut m = mapper(&s, &OUTBOX_COLUMNS);
        let size = m.map(RELATION_ID, &row_with(0), &TxnStamp::new(Lsn(1), 0), 0).expect("event").wire_size();
        // A server whose max_payload this event hits exactly with the publisher's headers: it is published.
        let max = size + ADDED_HEADERS_MAX;
        m.set_max_payload(max);
        let e = m.map(RELATION_ID, &row_with(0), &TxnStamp::new(Lsn(1), 0), 0).expect("fits exactly");
        assert_eq!(e.wire_size() + ADDED_HEADERS_MAX, max);
        // One byte more is invalid, naming the sizes.
        let i = invalid(m.map(RELATION_ID, &row_with(1), &TxnStamp::new(Lsn(1), 0), 0));
        assert_eq!(i.size, size + 1);
        assert!(i.reason.contains(&format!("max_payload of {max} bytes")), "{}", i.reason);
        // An event that hits max_payload exactly without the publisher's headers is invalid too.
        let i = invalid(m.map(RELATION_ID, &row_with(ADDED_HEADERS_MAX), &TxnStamp::new(Lsn(1), 0), 0));
        assert_eq!(i.size, max);
    }

    #[test]
    fn dead_letter_records_are_wire_ready_whatever_the_row_holds() {
        let s = settings(|r| r.on_invalid = "dead-letter".into());
        let mut m = mapper(&s, &OUTBOX_COLUMNS);
        m.set_max_payload(1024);
        let long_id = "i".repeat(2000);
        let rows = [
            tuple(&[Some("a\r\nb"), Some("or\rder"), Some("1"), Some("created"), Some("{}"), None]),
            tuple(&[Some(ID), Some("or\nder"), Some("1\r"), Some("created"), Some("{}"), Some(r#"{"café": "x"}"#)]),
            tuple(&[
                Some(long_id.as_str()),
                Some("order"),
                Some("1"),
                Some("created"),
                Some("x".repeat(5000).as_str()),
                None,
            ]),
        ];
        for (n, t) in rows.iter().enumerate() {
            let i = invalid(m.map(RELATION_ID, t, &TxnStamp::new(Lsn(0x40), 0), n as u32));
            let record = m.on_invalid(Box::new(i.clone())).expect("a record");
            assert!(record.dead_letter);
            assert_eq!(record.subject.as_str(), "outbox.dead-letter");
            assert!(record.wire_size() + ADDED_HEADERS_MAX <= 1024, "{}", record.wire_size());
            assert_eq!(record.header(header::COMMIT_LSN), Some("0/40"));
            assert_eq!(record.header(header::INDEX), Some(n.to_string().as_str()));
            for (_, values) in record.headers.iter() {
                assert!(values.iter().all(|v| !v.as_str().contains(['\r', '\n'])));
            }
        }
        let stop = mapper(&settings(|_| {}), &OUTBOX_COLUMNS);
        let i = invalid(m.map(RELATION_ID, &rows[0], &TxnStamp::new(Lsn(0x40), 0), 0));
        assert!(stop.on_invalid(Box::new(i)).is_err(), "--on-invalid stop gives the event back");
    }

    /// The default table with a text column `traceparent` and a bigint `tenant` after the six outbox columns.
    fn traced_columns() -> Vec<(&'static str, u32)> {
        [&OUTBOX_COLUMNS[..], &[("traceparent", oid::TEXT), ("tenant", oid::INT8)]].concat()
    }
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn header_columns_add_headers_skip_nulls_and_refuse_what_nats_cannot_carry() {
        let s = settings(|r| r.header_columns = Some("traceparent,tenant:Tenant".into()));
        let mut m = mapper(&s, &traced_columns());
        let row = |trace: Option<&str>, tenant: Option<&str>, headers: Option<&str>| {
            tuple(&[Some(ID), Some("order"), Some("1"), Some("created"), Some("{}"), headers, trace, tenant])
        };
        let txn = TxnStamp::new(Lsn(0x30), 0);
        let e = m.map(RELATION_ID, &row(Some(TRACEPARENT), Some("42"), None), &txn, 0).expect("event");
        assert_eq!(e.header("traceparent"), Some(TRACEPARENT));
        assert_eq!(e.header("Tenant"), Some("42"));
        assert_eq!(e.sorted_headers().len(), 9);
        let e = m.map(RELATION_ID, &row(None, None, None), &txn, 0).expect("event");
        assert_eq!((e.header("traceparent"), e.header("Tenant"), e.sorted_headers().len()), (None, None, 7));
        // A column wins over a `headers` key of the same name.
        let e = m.map(RELATION_ID, &row(Some("col"), None, Some(r#"{"traceparent": "key"}"#)), &txn, 0).expect("e");
        assert_eq!(e.header("traceparent"), Some("col"));
        let i = invalid(m.map(RELATION_ID, &row(Some("a\r\nb"), None, None), &txn, 2));
        assert_eq!(i.reason, "header column traceparent value contains CR or LF");
        assert_eq!(i.position.index, 2);
        // An unknown column fails the relation, naming the option.
        let mut m = OutboxMapper::new(&s).expect("mapper");
        match m.relation(&relation(&OUTBOX_COLUMNS)) {
            Err(SourceError::MissingColumn { column, option, .. }) => {
                assert_eq!((column.as_str(), option.as_str()), ("traceparent", "--header-columns"))
            }
            other => panic!("expected a missing column, got {other:?}"),
        }
    }

    #[test]
    fn header_columns_and_partitions_of_logical_messages() {
        let s = settings(|r| {
            r.message_prefix = Some("outbox".into());
            r.subject = "events.{aggregate_id|partition:4}.{event_type}".into();
            r.header_columns = Some("traceparent,tenant:Tenant".into());
        });
        let mut m = OutboxMapper::new(&s).expect("mapper");
        let content = format!(
            r#"{{"id": "m1", "aggregate_id": "foobar", "event_type": "created", "traceparent": "{TRACEPARENT}",
                "tenant": 7, "payload": 1}}"#
        );
        let e = m.map_message(content.as_bytes(), &TxnStamp::new(Lsn(0x30), 0), 0).expect("event");
        // FNV-1a 32 of "foobar" is 0xbf9cf968, which is 0 mod 4.
        assert_eq!(e.subject.as_str(), "events.0.created");
        assert_eq!(e.header("traceparent"), Some(TRACEPARENT));
        assert_eq!(e.header("Tenant"), Some("7"));
        let e =
            m.map_message(br#"{"id": "m2", "aggregate_id": "ab", "event_type": "x"}"#, &TxnStamp::new(Lsn(1), 0), 1);
        let e = e.expect("event");
        assert_eq!((e.subject.as_str(), e.header("traceparent")), ("events.2.x", None), "0x4d2505ca % 4 = 2");
        let i = invalid(m.map_message(br#"{"id": "m3", "event_type": "x"}"#, &TxnStamp::new(Lsn(1), 0), 2));
        assert!(i.reason.contains("NULL"), "{}", i.reason);
    }

    fn cloudevents_mapper(mode: &str, payload_type: u32) -> OutboxMapper {
        let s = settings(|r| {
            r.cloudevents = mode.into();
            r.pg_url = "postgres://u@localhost/shop".into();
            // Event types with a space are fine for CloudEvents, not in a subject token.
            r.subject = "outbox.{aggregate_type}".into();
        });
        mapper(
            &s,
            &crate::mapping::fixture::outbox_relation(payload_type)
                .columns
                .iter()
                .map(|c| (c.name.as_str(), c.type_oid))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn cloudevents_binary_adds_percent_encoded_attributes_and_keeps_the_payload() {
        let txn = TxnStamp::new(Lsn(0x30), 1_000_000);
        let row = |agg_id: Option<&str>, payload: &str| {
            tuple(&[Some(ID), Some("order"), agg_id, Some("order created"), Some(payload), Some(r#"{"u": "1"}"#)])
        };
        let mut m = cloudevents_mapper("binary", oid::JSONB);
        let e = m.map(RELATION_ID, &row(Some("Zoë \"1\" 100%"), r#"{"a": 1}"#), &txn, 0).expect("event");
        assert_eq!(&e.payload[..], br#"{"a": 1}"#);
        let h = e.sorted_headers();
        let ce: Vec<(&str, &str)> = h.iter().filter(|(k, _)| k.starts_with("ce-")).map(|(k, v)| (*k, *v)).collect();
        assert_eq!(
            ce,
            [
                ("ce-datacontenttype", "application/json"),
                ("ce-id", ID),
                ("ce-source", "/shop/public.outbox"),
                ("ce-specversion", "1.0"),
                ("ce-subject", "Zo%C3%AB%20%221%22%20100%25"),
                ("ce-time", "2000-01-01T00:00:01.000000Z"),
                ("ce-type", "order%20created"),
            ]
        );
        assert_eq!(h.len(), 8 + 7, "Nats-Msg-Id, 6 Outbox-*, the user header and 7 ce-");
        assert_eq!(e.header("Content-Type"), None, "the NATS binding's binary mode has no Content-Type");
        // No aggregate id: no subject attribute; text and bytea payloads name their content types.
        let e = m.map(RELATION_ID, &row(None, "{}"), &txn, 0).expect("event");
        assert_eq!(e.header("ce-subject"), None);
        let mut m = cloudevents_mapper("binary", oid::TEXT);
        let e = m.map(RELATION_ID, &row(Some("1"), "hello"), &txn, 0).expect("event");
        assert_eq!(e.header("ce-datacontenttype"), Some("text/plain;%20charset=utf-8"));
        let mut m = cloudevents_mapper("binary", oid::BYTEA);
        let e = m.map(RELATION_ID, &row(Some("1"), "\\x00ff"), &txn, 0).expect("event");
        assert_eq!(
            (e.header("ce-datacontenttype"), &e.payload[..]),
            (Some("application/octet-stream"), &[0, 0xff][..])
        );
        // Without a type there is no CloudEvent: the event is invalid; its record carries no ce- header.
        let no_type = tuple(&[Some(ID), Some("order"), Some("1"), None, Some("{}"), None]);
        let i = invalid(m.map(RELATION_ID, &no_type, &txn, 3));
        assert!(i.reason.contains("CloudEvents need a type"), "{}", i.reason);
    }

    #[test]
    fn cloudevents_structured_wraps_the_payload_and_counts_the_envelope() {
        let txn = TxnStamp::new(Lsn(0x30), 0);
        let row = |payload: &str| {
            tuple(&[Some(ID), Some("order"), Some("1001"), Some("created"), Some(payload), Some(r#"{"u": "1"}"#)])
        };
        let envelope = |e: &Event| serde_json::from_slice::<serde_json::Value>(&e.payload).expect("json envelope");
        let mut m = cloudevents_mapper("structured", oid::JSONB);
        let e = m.map(RELATION_ID, &row(r#"{"a": [1, 2.50]}"#), &txn, 0).expect("event");
        assert_eq!(e.header("Content-Type"), Some("application/cloudevents+json"));
        assert_eq!(e.header("Outbox-Event-Type"), Some("created"));
        assert_eq!(e.header("u"), Some("1"));
        assert!(e.sorted_headers().keys().all(|k| !k.starts_with("ce-")));
        assert_eq!(
            std::str::from_utf8(&e.payload).ok(),
            Some(format!(
                r#"{{"specversion":"1.0","id":"{ID}","source":"/shop/public.outbox","type":"created","subject":"1001","time":"2000-01-01T00:00:00.000000Z","datacontenttype":"application/json","data":{{"a": [1, 2.50]}}}}"#
            ).as_str())
        );
        let mut m = cloudevents_mapper("structured", oid::TEXT);
        let e = m.map(RELATION_ID, &row("line \"one\"\ttwo"), &txn, 0).expect("event");
        assert_eq!(envelope(&e)["data"], "line \"one\"\ttwo");
        assert_eq!(envelope(&e)["datacontenttype"], "text/plain; charset=utf-8");
        let mut m = cloudevents_mapper("structured", oid::BYTEA);
        let e = m.map(RELATION_ID, &row("\\x00ff10"), &txn, 0).expect("event");
        assert_eq!(envelope(&e)["data_base64"], "AP8Q");
        assert!(envelope(&e).get("data").is_none());
        // max_payload counts the envelope: a payload that fits plain does not fit wrapped.
        let plain = mapper(&settings(|_| {}), &OUTBOX_COLUMNS)
            .map(RELATION_ID, &row("{}"), &txn, 0)
            .expect("event")
            .wire_size();
        let mut m = cloudevents_mapper("structured", oid::JSONB);
        m.set_max_payload(plain + ADDED_HEADERS_MAX);
        let i = invalid(m.map(RELATION_ID, &row("{}"), &txn, 0));
        assert!(i.reason.contains("max_payload"), "{}", i.reason);
        assert!(i.size > plain);
        let mut m = cloudevents_mapper("structured", oid::JSONB);
        m.set_max_payload(1 << 20);
        let record = m.on_invalid(Box::new(i)).expect_err("stop gives the event back");
        let dl = record.dead_letter(&Subject::from("outbox.dead-letter"), None);
        assert!(dl.sorted_headers().keys().all(|k| !crate::mapping::cloudevents::is_cloudevents_header(k)));
        assert_eq!(dl.header("u"), Some("1"));
    }

    #[test]
    fn cloudevents_source_is_configurable_and_messages_have_their_own() {
        let s = settings(|r| {
            r.cloudevents = "binary".into();
            r.cloudevents_source = Some("https://shop.example/orders".into());
        });
        let mut m = mapper(&s, &OUTBOX_COLUMNS);
        let row = tuple(&[Some(ID), Some("order"), Some("1"), Some("created"), Some("{}"), None]);
        let e = m.map(RELATION_ID, &row, &TxnStamp::new(Lsn(1), 0), 0).expect("event");
        assert_eq!(e.header("ce-source"), Some("https://shop.example/orders"));
        let s = settings(|r| {
            r.cloudevents = "structured".into();
            r.message_prefix = Some("outbox".into());
            r.pg_url = "postgres://u@localhost/shop".into();
        });
        let mut m = OutboxMapper::new(&s).expect("mapper");
        let e = m
            .map_message(
                br#"{"id": "m1", "aggregate_type": "a", "event_type": "t", "payload": [1]}"#,
                &TxnStamp::new(Lsn(1), 0),
                0,
            )
            .expect("event");
        let envelope: serde_json::Value = serde_json::from_slice(&e.payload).expect("json");
        assert_eq!(
            (envelope["source"].as_str(), envelope["data"].clone()),
            (Some("/shop/messages"), serde_json::json!([1]))
        );
        assert_eq!(envelope["datacontenttype"], "application/json");
    }

    #[test]
    fn wrong_relation_or_column_count_is_a_stream_error() {
        let s = settings(|_| {});
        let mut m = mapper(&s, &OUTBOX_COLUMNS);
        assert!(matches!(
            m.map(7, &tuple::<&str>(&[]), &TxnStamp::new(Lsn(1), 0), 0),
            Err(MapError::Source(SourceError::Decode { .. }))
        ));
        assert!(matches!(
            m.map(RELATION_ID, &tuple(&[Some(ID)]), &TxnStamp::new(Lsn(1), 0), 0),
            Err(MapError::Source(SourceError::Decode { .. }))
        ));
        let mut m = OutboxMapper::new(&s).expect("mapper");
        assert!(matches!(m.relation(&relation(&[("id", oid::UUID)])), Err(SourceError::MissingColumn { .. })));
    }
}
