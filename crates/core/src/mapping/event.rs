//! Events: one outbox row, mapped into the message exactly as it goes on the wire.
//!
//! In: nothing (a plain data type, built by the mapper). Out: what the publisher sends (subject, an async-nats
//! [`HeaderMap`], payload bytes) and what `peek`/`replay --stdout` print. The header names are part of the product
//! contract (design.md §4). Every header in the map was validated when it was inserted (see [`header_name`] and
//! [`header_value`]), so handing the map to async-nats can never hit its header assertions, and
//! [`Event::wire_size`] is measured on that map: it is the size async-nats and nats-server check against
//! `max_payload`. See <https://github.com/nats-io/nats-architecture-and-design/blob/main/adr/ADR-4.md> (headers).

use std::{collections::BTreeMap, str::FromStr, sync::Arc};

use async_nats::{header::HeaderName, HeaderMap, HeaderValue, Subject};
use bytes::Bytes;
use pgoutput::Lsn;

/// Header names set by walrelay.
pub mod header {
    /// Deduplication id (the row's id, or `<commit_lsn>:<index>`).
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// The row's aggregate type.
    pub const AGGREGATE_TYPE: &str = "Outbox-Aggregate-Type";
    /// The row's aggregate id.
    pub const AGGREGATE_ID: &str = "Outbox-Aggregate-Id";
    /// The row's event type.
    pub const EVENT_TYPE: &str = "Outbox-Event-Type";
    /// Start of the transaction's commit record, `X/Y`.
    pub const COMMIT_LSN: &str = "Outbox-Commit-Lsn";
    /// Commit time, RFC 3339 UTC.
    pub const COMMIT_TIME: &str = "Outbox-Commit-Time";
    /// 0-based position of the event in its transaction.
    pub const INDEX: &str = "Outbox-Index";
    /// Reason an event was dead-lettered.
    pub const ERROR: &str = "Outbox-Error";
    /// Set by `replay` on every message it publishes (the time the replay started, RFC 3339 UTC). The tail read that
    /// finds `run`'s high-water mark skips such messages, so a replay never moves it backwards.
    pub const REPLAYED_AT: &str = "Outbox-Replayed-At";
    /// The ordering fence's header, added by the publisher of `run` (design.md rule 7).
    pub const EXPECTED_LAST_SEQUENCE: &str = "Nats-Expected-Last-Sequence";
    // Backfill (design.md §4f).
    /// `true` on a row `setup --backfill` published from the slot's exported snapshot (not from the WAL); its
    /// `Outbox-Commit-Lsn` is the slot's consistent point and its `Outbox-Index` its rank in the backfill.
    pub const BACKFILL: &str = "Outbox-Backfill";
}

/// Bytes a header takes on the wire: `<name>: <value>\r\n`.
pub const fn header_wire_len(name: usize, value: usize) -> usize {
    name + 2 + value + 2
}

/// The header block's fixed framing: `NATS/1.0\r\n` before the headers and `\r\n` after them.
pub const HEADER_FRAMING: usize = 10 + 2;

/// Headers a message's map holds before its hash table has to grow: [`message_headers`] makes room for them.
pub const HEADER_ROOM: usize = 28;

/// A header map for one message, holding only `Nats-Msg-Id` (empty: the caller sets it first) and room for
/// [`HEADER_ROOM`] headers. async-nats' [`HeaderMap`] has no `with_capacity`, and one that starts empty grows its
/// table three times on the way to a CloudEvents message's 15 headers, rehashing every header each time (a quarter
/// of the relay's instructions per event, measured with `walrelay bench --instructions`). The room comes from the one
/// constructor that sizes the table (serde's, which reserves what the input announces: here `HEADER_ROOM` entries of
/// the same key); cloning keeps the table's size.
pub fn message_headers() -> HeaderMap {
    static ROOMY: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(|| {
        let entry = format!("\"{}\":[\"\"]", header::MSG_ID);
        let json = format!("{{{}}}", vec![entry; HEADER_ROOM].join(","));
        serde_json::from_str(&json).unwrap_or_default()
    });
    ROOMY.clone()
}

/// A header name NATS can carry: exactly what async-nats accepts (printable ASCII without `:`; no whitespace, no
/// control characters), and not empty. `None` otherwise.
pub fn header_name(name: &str) -> Option<HeaderName> {
    if name.is_empty() {
        return None;
    }
    HeaderName::from_str(name).ok()
}

/// A header value NATS can carry: exactly what async-nats accepts (no CR, no LF). `None` otherwise.
pub fn header_value(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(value).ok()
}

/// A number as a header value, without the formatting machinery (per event: the index, the fence).
pub fn number_value(n: u64) -> HeaderValue {
    header_value(itoa::Buffer::new().format(n)).unwrap_or_default()
}

/// Where an event sits in the WAL: its transaction's commit LSN and its index there. Orders events totally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Begin's final LSN: where the commit record starts.
    pub commit_lsn: Lsn,
    /// 0-based index in the transaction (counting outbox inserts only).
    pub index: u32,
}

impl std::fmt::Display for Position {
    /// `<commit_lsn>:<index>`, e.g. `0/1A2B3C4:2`: the form `walrelay skip --through` takes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.commit_lsn, self.index)
    }
}

impl std::str::FromStr for Position {
    type Err = String;

    /// Parses `<commit_lsn>:<index>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (lsn, index) = s.trim().rsplit_once(':').ok_or("expected <commit_lsn>:<index>, e.g. 0/1A2B3C4:0")?;
        let commit_lsn = lsn.parse::<Lsn>().map_err(|_| format!("`{lsn}` is not an LSN in Postgres form X/Y"))?;
        let index = index.parse::<u32>().map_err(|_| format!("`{index}` is not an index (0, 1, ...)"))?;
        Ok(Self { commit_lsn, index })
    }
}

/// One event, ready to publish as is.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The deduplication id (also the `Nats-Msg-Id` header).
    pub id: String,
    /// Subject.
    pub subject: Subject,
    /// Headers: `Nats-Msg-Id`, the `Outbox-*` ones, then the row's own; every name and value valid for NATS.
    pub headers: HeaderMap,
    /// Message data.
    pub payload: Bytes,
    /// Position in the WAL.
    pub position: Position,
    /// The table it came from (`schema.table`).
    pub table: Arc<str>,
    /// Whether this is a dead-letter record standing in for an invalid event.
    pub dead_letter: bool,
}

impl Event {
    /// Bytes this message takes against the server's `max_payload`: payload plus the encoded header block, counted
    /// as async-nats serialises it (`NATS/1.0\r\n`, `<name>: <value>\r\n` per header, `\r\n`). Headers a publisher
    /// adds on top (the fence, the replay marker) are not included; see `sink::publisher::ADDED_HEADERS_MAX`.
    pub fn wire_size(&self) -> usize {
        wire_size(&self.headers, self.payload.len())
    }

    /// A header's value (`None` also for a name NATS cannot carry).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(header_name(name)?).map(HeaderValue::as_str)
    }

    /// Commit time, RFC 3339 UTC (the `Outbox-Commit-Time` header).
    pub fn commit_time(&self) -> &str {
        self.header(header::COMMIT_TIME).unwrap_or_default()
    }

    /// The headers sorted by name, first value of each (for NDJSON output).
    pub fn sorted_headers(&self) -> BTreeMap<&str, &str> {
        self.headers
            .iter()
            .filter_map(|(k, vs)| Some((<HeaderName as AsRef<str>>::as_ref(k), vs.first()?.as_str())))
            .collect()
    }
}

/// The wire size of a message with these headers and a payload of `payload` bytes, as async-nats checks it against
/// `max_payload` (an empty header map sends no header block).
pub fn wire_size(headers: &HeaderMap, payload: usize) -> usize {
    let mut block = 0;
    for (name, values) in headers.iter() {
        let name = <HeaderName as AsRef<str>>::as_ref(name).len();
        block += values.iter().map(|v| header_wire_len(name, v.as_str().len())).sum::<usize>();
    }
    if block == 0 {
        return payload;
    }
    payload + HEADER_FRAMING + block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_follow_async_nats() {
        for ok in ["a", "Trace-Id", "x_y.z", "~!#$%&'*+^`|"] {
            assert!(header_name(ok).is_some(), "{ok}");
        }
        for bad in ["", "café", "a b", "a:b", "a\tb", "a\r", "\u{7f}", "\u{0}"] {
            assert!(header_name(bad).is_none(), "{}", bad.escape_debug());
        }
        assert!(header_value("").is_some());
        assert!(header_value("café \t \u{0} ok").is_some());
        for bad in ["a\rb", "a\n", "\r\n"] {
            assert!(header_value(bad).is_none(), "{}", bad.escape_debug());
        }
    }

    #[test]
    fn a_message_map_holds_only_the_id_to_set() {
        let mut h = message_headers();
        assert_eq!(h.len(), 1);
        assert_eq!(h.get(header::MSG_ID).map(HeaderValue::as_str), Some(""));
        h.insert(HeaderName::from_static(header::MSG_ID), HeaderValue::from_str("abc").expect("value"));
        assert_eq!(h.len(), 1, "the id set by name replaces the empty one");
        assert_eq!(h.iter().map(|(_, v)| v.len()).sum::<usize>(), 1);
        assert_eq!(message_headers().len(), 1, "each message gets its own map");
    }

    #[test]
    fn wire_size_counts_the_header_block() {
        let mut h = HeaderMap::new();
        assert_eq!(wire_size(&h, 5), 5);
        h.insert(HeaderName::from_static("Nats-Msg-Id"), HeaderValue::from_str("abc").expect("value"));
        h.insert(HeaderName::from_static("k"), HeaderValue::from_str("").expect("value"));
        // NATS/1.0\r\n + "Nats-Msg-Id: abc\r\n" + "k: \r\n" + \r\n
        assert_eq!(wire_size(&h, 5), 5 + 10 + 18 + 5 + 2);
    }
}
