//! Events: one outbox row, mapped and ready to publish.
//!
//! In: nothing (a plain data type). Out: what the publisher sends and what `peek`/`replay --stdout` print.
//! The header names are part of the product contract (design.md §4).

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

/// One event ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The deduplication id (`Nats-Msg-Id`).
    pub id: String,
    /// Subject.
    pub subject: String,
    /// Headers in order: `Nats-Msg-Id`, the `Outbox-*` ones, then the row's own.
    pub headers: Vec<(String, String)>,
    /// Message data.
    pub payload: Bytes,
    /// Position in the WAL.
    pub position: Position,
    /// Commit time, RFC 3339 UTC.
    pub commit_time: String,
    /// The table it came from (`schema.table`).
    pub table: String,
    /// Whether this is a dead-letter record standing in for an invalid event.
    pub dead_letter: bool,
}

impl Event {
    /// Bytes this message takes against the server's `max_payload` (payload plus encoded headers).
    pub fn wire_size(&self) -> usize {
        // "NATS/1.0\r\n" + "key: value\r\n"... + "\r\n"
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        self.payload.len() + headers + 12
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}
