//! Reading history without consuming it: what `peek` shows and what `replay` re-sends.
//!
//! In: a slot (the main one for `peek`, `<slot>_replay` for `replay`), a start LSN and an end. Out: the events of
//! the transactions committed in that range, decoded and mapped exactly as `run` publishes them (same ids, subjects,
//! headers, indexes), in commit order.
//!
//! The slot itself is never read: a throwaway copy is made with `pg_copy_logical_replication_slot` (same
//! `restart_lsn` and `confirmed_flush_lsn`), read over its own replication session and dropped afterwards, so the
//! original's `confirmed_flush_lsn` does not move, also while `run` holds it. The copy is not temporary: a temporary
//! slot belongs to the SQL session that created it and a replication session could not acquire it.
//! On a primary the end of the range is marked with a non-transactional logical message (`pg_logical_emit_message`),
//! which the walsender delivers in WAL order; everything committed before it has been sent when it arrives. A
//! standby cannot write WAL, and peek and replay write nothing on the server they read (design.md §4b): there the
//! end is the last replayed LSN (`pg_last_wal_replay_lsn()`), everything committed before it has been replayed, and
//! the read ends at the first transaction committing at or after it, or, on an idle stream, at the first keepalive
//! whose `wal_end` reaches it (the walsender decodes up to the replay position and pings with it while waiting).
//! See <https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-REPLICATION>.

use std::time::Duration;

use pgoutput::Lsn;
use pgwire_replication::{ReplicationClient, ReplicationEvent};
use tokio_postgres::Client;

use crate::{
    config::Settings,
    mapping::event::Event,
    mapping::outbox::InvalidEvent,
    relay::RelayError,
    source::replication::{self, StartAt},
    source::slot,
    source::transaction::{Assembled, Assembler},
    source::{PgHost, SourceError},
};

/// Longest wait for the next replication message before the read is declared stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Prefix of the logical message that marks the end of the range.
const END_MARKER_PREFIX: &str = "walrelay.end-marker";

/// The purposes a slot copy is made for; its name is `<source>_<purpose>_<owner>`.
const COPY_PURPOSES: [&str; 5] = ["peek", "copy", "skip", "teardown", "verify"];

/// A throwaway copy of a slot, named `<source>_<purpose>_<owner>`, where `<owner>` is the server process id
/// (`pg_backend_pid()`) of the SQL session that made it and holds it for its whole life. Drop it with
/// [`SlotCopy::remove`] on every path. A process killed before that (kill -9) leaves the copy behind, inactive, and its
/// SQL session ends with it: the next command that makes a copy of the same slot drops such copies first
/// ([`leftover_copies`]: our naming scheme, inactive, owner gone), and `doctor` and `teardown` report or drop them.
/// The owner is the server's process id, not ours, so that the check needs no access to the machine the other
/// command ran on: a concurrent `peek` (here or elsewhere) keeps its session open, and so its copy.
#[derive(Debug)]
pub(crate) struct SlotCopy {
    /// The copy's name.
    pub name: String,
    /// The slot it copies.
    pub source: String,
    /// The source's `confirmed_flush_lsn` at copy time: the oldest commit LSN the copy can deliver.
    pub confirmed_flush: Lsn,
    /// The server holding it (where `control` is connected): the replication connection goes there too.
    pub host: PgHost,
}

impl SlotCopy {
    /// Copies `source` to a new persistent slot, after dropping copies of `source` that killed commands left.
    pub async fn create(control: &Client, host: &PgHost, source: &str, purpose: &str) -> Result<Self, SourceError> {
        for name in leftover_copies(control, &[source]).await? {
            match slot::drop(control, &name).await {
                Ok(_) => {
                    tracing::info!(slot = %name, "dropped a slot copy left behind by a killed peek, replay, skip or teardown")
                }
                Err(err) => tracing::warn!(slot = %name, error = %err, "cannot drop a leftover slot copy"),
            }
        }
        let owner: i32 = control
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(|e| SourceError::query("reading the session's process id", e))?
            .get(0);
        let suffix = format!("_{purpose}_{owner}");
        let keep = 63usize.saturating_sub(suffix.len()).min(source.len());
        let name = format!("{}{suffix}", source.get(..keep).unwrap_or(source));
        slot::copy(control, source, &name, false).await?;
        let confirmed_flush = match slot::info(control, &name).await {
            Ok(info) => info.and_then(|i| i.confirmed_flush_lsn).unwrap_or(Lsn::ZERO),
            Err(err) => {
                let _ = slot::drop(control, &name).await;
                return Err(err);
            }
        };
        tracing::debug!(slot = %name, source, confirmed_flush_lsn = %confirmed_flush, "slot copy created");
        Ok(Self { name, source: source.to_owned(), confirmed_flush, host: host.clone() })
    }

    /// Drops the copy (waiting briefly for its walsender to let go).
    pub async fn remove(self, control: &Client) {
        for _ in 0..100 {
            match slot::drop(control, &self.name).await {
                Ok(_) => return,
                Err(SourceError::Query { code: Some(code), .. }) if code == "55006" => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => {
                    tracing::warn!(slot = %self.name, error = %err, "could not drop the slot copy; drop it with SELECT pg_drop_replication_slot('{}')", self.name);
                    return;
                }
            }
        }
        tracing::warn!(slot = %self.name, "slot copy still active; drop it later with `walrelay teardown` or pg_drop_replication_slot");
    }
}

/// The end of the range: on a standby its last replayed LSN (nothing is written); on a primary an end-of-range marker
/// is written and its LSN returned, falling back to the current WAL position when the marker cannot be written.
pub(crate) async fn end_marker(control: &Client) -> Result<Lsn, SourceError> {
    if slot::server(control).await?.in_recovery {
        return slot::current_wal_lsn(control).await;
    }
    match control.query_one("SELECT pg_logical_emit_message(false, $1, '')::text AS lsn", &[&END_MARKER_PREFIX]).await {
        Ok(row) => Ok(crate::source::lsn_col(&row, "lsn").unwrap_or(Lsn::ZERO)),
        Err(err) => {
            tracing::debug!(error = %err, "cannot write an end marker, using the current WAL position");
            slot::current_wal_lsn(control).await
        }
    }
}

/// One mapped outbox row.
#[derive(Debug)]
pub(crate) enum Item {
    /// Ready to publish.
    Event(Box<Event>),
    /// Cannot be published as is, and `--on-invalid stop` is set.
    Invalid(Box<InvalidEvent>),
}

/// Which transactions to deliver.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Range {
    /// `START_REPLICATION` position: transactions whose commit record starts at or after it.
    pub start: Lsn,
    /// The last commit LSN to include, if bounded.
    pub last_commit: Option<Lsn>,
    /// The end marker: nothing that commits after it.
    pub end: Lsn,
}

/// A pull-based reader of mapped events from a slot copy, on the relay's own [`Assembler`].
pub(crate) struct HistoryReader {
    repl: ReplicationClient,
    assembler: Assembler,
    range: Range,
    /// Whether the open transaction is in the range.
    included: bool,
    /// Highest position seen, for progress.
    pub position: Lsn,
    done: bool,
}

impl HistoryReader {
    /// Starts replication on `copy` at `range.start`.
    pub async fn open(
        settings: &Settings,
        copy: &SlotCopy,
        range: Range,
        assembler: Assembler,
    ) -> Result<Self, RelayError> {
        let at = StartAt {
            start: range.start,
            ack: range.start,
            status_interval: Duration::from_secs(1),
            stop: Some(range.end),
        };
        let repl = replication::open(&settings.pg_url, &copy.host, &copy.name, &settings.publication, at).await?;
        Ok(Self { repl, assembler, range, included: false, position: range.start, done: false })
    }

    /// The next event in commit order, `None` at the end of the range.
    pub async fn next(&mut self, settings: &Settings) -> Result<Option<Item>, RelayError> {
        while !self.done {
            let event = match tokio::time::timeout(STALL_TIMEOUT, self.repl.recv()).await {
                Ok(event) => event
                    .map_err(|e| replication::classify(e, &settings.slot, &settings.publication, &settings.pg_url))?,
                Err(_) => {
                    return Err(SourceError::Replication {
                        reason: format!(
                            "no replication message for {STALL_TIMEOUT:?} before reaching {}",
                            self.range.end
                        ),
                        transient: false,
                    }
                    .into())
                }
            };
            let Some(event) = event else {
                self.done = true;
                break;
            };
            // The end marker is a non-transactional logical message; the assembler ignores messages.
            if let ReplicationEvent::Message { lsn, prefix, transactional: false, .. } = &event {
                if prefix == END_MARKER_PREFIX && Lsn(lsn.0) >= self.range.end {
                    self.done = true;
                    break;
                }
            }
            match self.assembler.push(event)? {
                Assembled::KeepAlive { wal_end, idle } => {
                    self.position = self.position.max(wal_end);
                    if idle && wal_end >= self.range.end {
                        self.done = true;
                    }
                }
                Assembled::Begin { commit_lsn, .. } => {
                    self.position = self.position.max(commit_lsn);
                    let past_last = self.range.last_commit.is_some_and(|last| commit_lsn > last);
                    if past_last || commit_lsn >= self.range.end {
                        self.done = true;
                    }
                    self.included = !self.done && commit_lsn >= self.range.start;
                }
                Assembled::Commit { end_lsn, .. } => {
                    self.position = self.position.max(end_lsn);
                    self.included = false;
                }
                Assembled::Row { event, .. } if self.included => {
                    return Ok(Some(match event {
                        Ok(event) => Item::Event(Box::new(event)),
                        Err(invalid) => Item::Invalid(invalid),
                    }));
                }
                Assembled::Stopped { .. } => self.done = true,
                Assembled::Row { .. } | Assembled::Nothing => {}
            }
        }
        Ok(None)
    }

    /// Ends the replication session without confirming anything.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.repl.shutdown()).await;
        self.repl.abort();
    }
}

/// An event as one NDJSON object (design.md §4): `{"id", "table", "subject", "headers", "payload", "commit_lsn",
/// "index", "commit_time"}`; the payload as a JSON value, or a string when it is not JSON.
pub(crate) fn event_json(event: &Event) -> String {
    let line = EventLine {
        id: &event.id,
        table: &event.table,
        subject: Some(&event.subject),
        headers: event.sorted_headers(),
        payload: payload_json(&event.payload),
        commit_lsn: event.position.commit_lsn.to_string(),
        index: event.position.index,
        commit_time: event.commit_time(),
        invalid: None,
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// The NDJSON line of an event that cannot be published: the same fields (subject and payload null, the headers it
/// would have had) and `invalid` with the reason.
pub(crate) fn invalid_json(invalid: &crate::mapping::outbox::InvalidEvent) -> String {
    let headers: std::collections::BTreeMap<&str, &str> =
        invalid.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let line = EventLine {
        id: &invalid.id,
        table: &invalid.table,
        subject: None,
        headers,
        payload: Payload::Null,
        commit_lsn: invalid.position.commit_lsn.to_string(),
        index: invalid.position.index,
        commit_time: &invalid.commit_time,
        invalid: Some(&invalid.reason),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// One NDJSON line of `peek --json` and `replay --stdout` (design.md §4).
#[derive(serde::Serialize)]
struct EventLine<'a> {
    id: &'a str,
    table: &'a str,
    subject: Option<&'a str>,
    headers: std::collections::BTreeMap<&'a str, &'a str>,
    payload: Payload<'a>,
    commit_lsn: String,
    index: u32,
    commit_time: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    invalid: Option<&'a str>,
}

/// The payload as its JSON text unchanged (numbers keep their precision), or as a string when it is not JSON.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Payload<'a> {
    Json(&'a serde_json::value::RawValue),
    Text(std::borrow::Cow<'a, str>),
    Null,
}

fn payload_json(payload: &[u8]) -> Payload<'_> {
    match std::str::from_utf8(payload).ok().and_then(|s| serde_json::from_str::<&serde_json::value::RawValue>(s).ok()) {
        Some(raw) => Payload::Json(raw),
        None => Payload::Text(String::from_utf8_lossy(payload)),
    }
}

/// A requested stop (SIGINT or SIGTERM), for the commands that hold a slot copy and must drop it before exiting.
pub(crate) async fn stop_requested() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Copies of the slots `sources` that a killed command left behind: named `<source>_<purpose>_<owner>`
/// ([`SlotCopy`]), inactive, and whose owner, the server process of the SQL session that made the copy, is gone.
/// A copy a running command holds (inactive only while it starts or ends reading) is never one of them.
pub(crate) async fn leftover_copies(control: &Client, sources: &[&str]) -> Result<Vec<String>, SourceError> {
    let mut names = Vec::new();
    for source in sources {
        // Slot names hold only lower-case letters, digits and underscores: nothing to escape in the pattern.
        let pattern = format!("^{source}_({})_([0-9]{{1,9}})$", COPY_PURPOSES.join("|"));
        let rows = control
            .query(
                "SELECT slot_name::text FROM pg_replication_slots s \
                 WHERE NOT active AND slot_name::text ~ $1 \
                 AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a \
                                 WHERE a.pid = (regexp_match(s.slot_name::text, $1))[2]::int) \
                 ORDER BY 1",
                &[&pattern],
            )
            .await
            .map_err(|e| SourceError::query("looking for leftover slot copies", e))?;
        names.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    Ok(names)
}

/// Where `peek` and `replay --stdout` print: stdout, written line by line, where a reader that went away (`| head`)
/// is the end of the output rather than an error (Rust ignores SIGPIPE, so the write fails with `BrokenPipe`, and
/// `println!` would panic and leave the slot copy behind).
#[derive(Debug, Default)]
pub(crate) struct Output {
    closed: bool,
}

impl Output {
    /// Writes one line; false when the reader is gone (then and after, nothing is written).
    pub fn line(&mut self, text: &str) -> bool {
        use std::io::Write;
        if self.closed {
            return false;
        }
        let mut out = std::io::stdout().lock();
        match writeln!(out, "{text}").and_then(|()| out.flush()) {
            Ok(()) => true,
            Err(err) => {
                if err.kind() != std::io::ErrorKind::BrokenPipe {
                    tracing::warn!(error = %err, "cannot write to stdout; stopping");
                }
                self.closed = true;
                false
            }
        }
    }

    /// Whether the reader went away.
    pub fn closed(&self) -> bool {
        self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_has_the_contract_fields() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "a");
        headers.insert("Outbox-Commit-Time", "2024-01-01T00:00:00.000000Z");
        let event = Event {
            id: "a".into(),
            subject: "outbox.order.created".into(),
            headers,
            payload: bytes::Bytes::from_static(b"{\"n\":1}"),
            position: crate::mapping::event::Position { commit_lsn: Lsn(0x1_0000_00FF), index: 2 },
            table: "public.outbox".into(),
            dead_letter: false,
        };
        let v: serde_json::Value = serde_json::from_str(&event_json(&event)).expect("json line");
        assert_eq!(v["payload"]["n"], 1);
        assert_eq!(v["commit_lsn"], "1/FF");
        assert_eq!(v["index"], 2);
        assert_eq!(v["headers"]["Nats-Msg-Id"], "a");
        assert_eq!(v["commit_time"], "2024-01-01T00:00:00.000000Z");
        let text = Event { payload: bytes::Bytes::from_static(b"not json"), ..event };
        let t: serde_json::Value = serde_json::from_str(&event_json(&text)).expect("json line");
        assert_eq!(t["payload"], "not json");
        let exact = Event {
            payload: bytes::Bytes::from_static(b"{\"big\": 123456789012345678901234567890, \"d\": 1.50}"),
            ..text
        };
        assert!(event_json(&exact).contains("\"payload\":{\"big\": 123456789012345678901234567890, \"d\": 1.50}"));
    }
}
