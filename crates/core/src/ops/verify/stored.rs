//! The stream side of `walrelay verify`: every message whose `Outbox-Commit-Lsn` lies in the range, with its
//! sequence, `Nats-Msg-Id`, position and replay mark.
//!
//! `run` stores events in commit order, so the first of its messages at or after the range's start is found by
//! bisecting over sequences (a few dozen single-message gets, however long the stream), and the stream is read from
//! there with an ordered consumer that delivers headers only, up to the last sequence the stream had when the read
//! began. The read goes on past the range's end: an event stored out of order, or a copy `replay` appended later,
//! sits after it. Only the messages in the range are kept.
//! See <https://docs.nats.io/nats-concepts/jetstream/consumers> and
//! <https://docs.nats.io/reference/reference-protocols/nats_api_reference#stream-message-get>.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream::RawMessageErrorKind};
use futures::StreamExt;
use pgoutput::Lsn;

use super::audit::Stored;
use crate::{
    mapping::event::{header, Position},
    sink::{publisher::PublishError, stream as sink_stream},
};

/// How long the ordered consumer may deliver nothing before the stream is asked whether anything is left to read.
const IDLE: Duration = Duration::from_secs(5);
/// How many idle rounds in a row, with messages still to read, before the read is declared stalled.
const IDLE_ROUNDS: u32 = 6;
/// How many messages without a position (foreign, or replayed copies) a bisection probe steps over before it gives
/// up on that point (and the read starts earlier, which is only slower).
const PROBE_STEPS: u32 = 100;

/// What the stream is, for the report and the doctor-like notes.
#[derive(Debug, Clone)]
pub struct StreamFacts {
    /// Messages in the stream when the read began.
    pub messages: u64,
    /// Its last sequence then.
    pub last_sequence: u64,
    /// The sequence the read started at.
    pub read_from: u64,
    /// Its duplicate window: ids JetStream saw within it are dropped when published again.
    pub duplicate_window: Duration,
}

/// Reads the messages of `stream_name` whose position's commit LSN is in `[from, to)`, in sequence order.
pub async fn in_range(
    js: &jetstream::Context,
    stream_name: &str,
    from: Lsn,
    to: Lsn,
) -> Result<(Vec<Stored>, StreamFacts), PublishError> {
    let failed = |reason: String| PublishError::Stream { stream: stream_name.to_owned(), reason };
    let mut s = match js.get_stream(stream_name).await {
        Ok(s) => s,
        Err(err) if sink_stream::is_stream_not_found(&err) => {
            return Err(PublishError::MissingStream { stream: stream_name.to_owned() })
        }
        Err(err) => return Err(failed(err.to_string())),
    };
    let info = s.info().await.map_err(|e| failed(e.to_string()))?;
    let (state, duplicate_window) = (info.state.clone(), info.config.duplicate_window);
    let mut facts = StreamFacts {
        messages: state.messages,
        last_sequence: state.last_sequence,
        read_from: state.last_sequence.saturating_add(1),
        duplicate_window,
    };
    if state.messages == 0 || to <= from {
        return Ok((Vec::new(), facts));
    }
    let last = state.last_sequence;
    facts.read_from = first_at_or_after(&s, state.first_sequence, last, from).await.map_err(failed)?;
    let mut out = Vec::new();
    if facts.read_from > last {
        return Ok((out, facts));
    }
    let consumer = s
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: facts.read_from },
            headers_only: true,
            ..Default::default()
        })
        .await
        .map_err(|e| failed(format!("cannot create an ordered consumer to read the stream: {e}")))?;
    let mut messages = consumer.messages().await.map_err(|e| failed(e.to_string()))?;
    let mut next = facts.read_from;
    let mut idle = 0u32;
    while next <= last {
        match tokio::time::timeout(IDLE, messages.next()).await {
            Ok(Some(Ok(msg))) => {
                idle = 0;
                let (sequence, pending) = match msg.info() {
                    Ok(info) => (info.stream_sequence, info.pending),
                    Err(err) => return Err(failed(format!("a message without JetStream metadata: {err}"))),
                };
                if let Some(stored) = in_range_message(msg.headers.as_ref(), sequence, from, to) {
                    out.push(stored);
                }
                next = sequence.saturating_add(1);
                if pending == 0 {
                    break;
                }
            }
            Ok(Some(Err(err))) => return Err(failed(format!("reading the stream at sequence {next}: {err}"))),
            Ok(None) => return Err(failed(format!("the ordered consumer ended before sequence {last}"))),
            Err(_) => {
                // Nothing delivered: messages may have been deleted since the read began.
                match next_sequence(&s, next).await.map_err(failed)? {
                    Some(seq) if seq <= last => {
                        idle += 1;
                        if idle >= IDLE_ROUNDS {
                            return Err(failed(format!(
                                "no message delivered for {:?} while sequence {seq} is there to read",
                                IDLE * IDLE_ROUNDS
                            )));
                        }
                    }
                    _ => break,
                }
            }
        }
    }
    Ok((out, facts))
}

/// The message as [`Stored`] when it carries a position whose commit LSN is in `[from, to)`.
fn in_range_message(headers: Option<&async_nats::HeaderMap>, sequence: u64, from: Lsn, to: Lsn) -> Option<Stored> {
    let headers = headers?;
    let position = sink_stream::message_position(headers)?;
    if position.commit_lsn < from || position.commit_lsn >= to {
        return None;
    }
    Some(Stored {
        sequence,
        id: headers.get(header::MSG_ID).map(|v| v.as_str().to_owned()),
        position,
        replayed: headers.get(header::REPLAYED_AT).is_some(),
    })
}

/// The sequence of the first message at or after `sequence`, if any.
async fn next_sequence(s: &jetstream::stream::Stream, sequence: u64) -> Result<Option<u64>, String> {
    match s.get_first_raw_message_by_subject(">", sequence).await {
        Ok(msg) => Ok(Some(msg.sequence)),
        Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(err) => Err(err.to_string()),
    }
}

/// The first message of `run` (unmarked, with a position) at or after `sequence` and at most `last`: its sequence
/// and position. `None` when there is none, or when more than [`PROBE_STEPS`] other messages come first.
async fn probe(s: &jetstream::stream::Stream, mut sequence: u64, last: u64) -> Result<Option<(u64, Position)>, String> {
    for _ in 0..PROBE_STEPS {
        let msg = match s.get_first_raw_message_by_subject(">", sequence).await {
            Ok(msg) if msg.sequence <= last => msg,
            Ok(_) => return Ok(None),
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(err) => return Err(err.to_string()),
        };
        if msg.headers.get(header::REPLAYED_AT).is_none() {
            if let Some(position) = sink_stream::message_position(&msg.headers) {
                return Ok(Some((msg.sequence, position)));
            }
        }
        sequence = msg.sequence.saturating_add(1);
    }
    Ok(None)
}

/// Where to start reading: the lowest sequence such that every message of `run` before it is for a transaction
/// committed before `from`, found by bisection (`run` stores in commit order). Where a probe cannot tell, the
/// search goes left: an earlier start only reads more.
async fn first_at_or_after(s: &jetstream::stream::Stream, first: u64, last: u64, from: Lsn) -> Result<u64, String> {
    let (mut lo, mut hi) = (first.max(1), last.saturating_add(1));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match probe(s, mid, last).await? {
            Some((sequence, position)) if position.commit_lsn < from => lo = sequence.saturating_add(1).min(hi),
            _ => hi = mid,
        }
    }
    Ok(lo)
}
