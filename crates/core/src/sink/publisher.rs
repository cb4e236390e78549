//! The JetStream publisher: pipelined publishes behind an ordering fence.
//!
//! In: [`Event`]s in WAL order, each with a tag the caller uses to credit its ack. Out: acks, in the order the events
//! were sent. See <https://docs.nats.io/using-nats/developer/develop_jetstream/model_deep_dive> (publish
//! expectations and deduplication).

use std::{collections::VecDeque, pin::Pin, time::Duration};

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use futures::{stream::FuturesOrdered, Future, StreamExt};

use crate::mapping::event::{header, header_wire_len, Event, Position};

/// A failure on the NATS side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// No NATS server answered (connection refused, timed out, unknown host): worth retrying.
    #[error("nats at {url} unreachable: {reason}; start nats-server with JetStream (nats-server -js), or set --nats-url / WALRELAY_NATS_URL")]
    Unreachable {
        /// Redacted URL.
        url: String,
        /// The client's message.
        reason: String,
    },
    /// The connection failed for another reason (e.g. closed during the handshake).
    #[error("nats at {url}: cannot connect: {reason}")]
    Connect {
        /// Redacted URL.
        url: String,
        /// The client's message.
        reason: String,
    },
    /// The server rejected the credentials (authorization violation, expired or revoked): permanent.
    #[error("nats at {url}: authentication failed (auth method: {method}): {reason}; {remedy}")]
    Authentication {
        /// Redacted URL.
        url: String,
        /// The auth method in use (user/password, token, nkey, creds, none).
        method: &'static str,
        /// The server's or client's message.
        reason: String,
        /// What to check.
        remedy: &'static str,
    },
    /// The TLS handshake failed (untrusted certificate, TLS against a plaintext server, ...): permanent.
    #[error("nats at {url}: TLS handshake failed: {reason}; {remedy}")]
    Tls {
        /// Redacted URL.
        url: String,
        /// The TLS library's message (names the certificate problem).
        reason: String,
        /// What to check.
        remedy: String,
    },
    /// The stream is missing and `--no-create` is set.
    #[error("stream {stream} does not exist and --no-create is set; run `walrelay setup` or drop --no-create")]
    MissingStream {
        /// Stream name.
        stream: String,
    },
    /// A stream request failed.
    #[error("stream {stream}: {reason}")]
    Stream {
        /// Stream name.
        stream: String,
        /// The server's or client's message.
        reason: String,
    },
    /// Publishes still in flight when the wait for their acks ended.
    #[error("{count} publishes not acked within {}", humantime::format_duration(*.timeout))]
    Unacked {
        /// How many.
        count: usize,
        /// How long we waited.
        timeout: Duration,
    },
    /// A publish failed or was not acked.
    #[error("publish of event {id} at {position} to {subject}: {reason}")]
    Publish {
        /// Event id.
        id: String,
        /// Subject.
        subject: String,
        /// Where the event is.
        position: Position,
        /// What happened.
        reason: String,
        /// Whether the client or the server refused this message (as opposed to a timeout or a lost connection,
        /// which say nothing about the message): the same publish is likely to be refused again.
        refused: bool,
    },
    /// The stream's sequence is not what the fence expected: a message was lost, duplicated or written by someone
    /// else. The relay re-reads the tail and resumes after it.
    #[error("ordering fence: event {id} expected stream sequence {expected}, stream answered {actual}")]
    Fence {
        /// Event id.
        id: String,
        /// Sequence the fence expected.
        expected: u64,
        /// What the server answered (or described).
        actual: String,
    },
}

impl PublishError {
    /// The one place that decides, for the NATS side, whether retrying (after a backoff) may help.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::MissingStream { .. } | Self::Authentication { .. } | Self::Tls { .. })
    }

    /// A failed publish of `event` (not a refusal of the message itself).
    pub fn publish(event: &Event, reason: String) -> Self {
        let (id, subject, position) = (event.id.clone(), event.subject.to_string(), event.position);
        Self::Publish { id, subject, position, reason, refused: false }
    }

    /// The id of the event this error is about, when the error says something about the event itself: the client
    /// or the server refused it, or the stream answered its publish with a fence violation. Timeouts and lost
    /// connections say nothing about the event (`None`). The relay treats such an error that repeats on the same
    /// event as permanent ([`crate::relay`]).
    pub fn refused_event(&self) -> Option<&str> {
        match self {
            Self::Publish { id, refused: true, .. } | Self::Fence { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// The most bytes a publisher adds to an event's wire size: the ordering fence `Nats-Expected-Last-Sequence: <u64>`
/// (20 digits at most) for `run`, or the `Outbox-Replayed-At: <RFC 3339 time>` marker for `replay`. The mapper keeps
/// this much room under `max_payload`, so the size it checks can never disagree with the size that is published.
pub const ADDED_HEADERS_MAX: usize = max(
    header_wire_len(header::EXPECTED_LAST_SEQUENCE.len(), 20),
    header_wire_len(header::REPLAYED_AT.len(), REPLAYED_AT_LEN),
);

/// Length of a replay marker's value, `2026-01-01T00:00:00.000000Z`.
pub const REPLAYED_AT_LEN: usize = 27;

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// Whether an async-nats publish error refuses the message itself: too large, an invalid subject or headers
/// (`Other`), no stream for its subject, or a JetStream API error. Timeouts, a broken connection and a full ack
/// window do not.
fn refuses_the_message(kind: PublishErrorKind) -> bool {
    !matches!(kind, PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending)
}

/// An ack credited to the tag the caller gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked<T> {
    /// The caller's tag.
    pub tag: T,
    /// The stream sequence the event got.
    pub sequence: u64,
}

type AckFuture<T> = Pin<Box<dyn Future<Output = Result<Acked<T>, PublishError>> + Send>>;

/// Publishes events to one stream, pipelined, in order.
///
/// Contract:
/// - **accepted**: [`Publisher::send`] returned `Ok`: the message is in the client's outgoing buffer and an ack
///   future waits for it. Nothing is durable yet.
/// - **acked**: [`Publisher::next_ack`] yielded it: JetStream stored it at exactly the sequence the fence expected.
///   Only acked events may move the checkpoint.
/// - **order**: every publish carries `Nats-Expected-Last-Sequence` = the sequence of the message sent before it, so
///   the stream can never store a later event after a lost earlier one. Acks are yielded in send order.
/// - **errors**: any error (timeout, broken connection, fence violation, duplicate) is returned once; the caller
///   stops sending, [`drain`](Publisher::drain)s what is in flight, re-reads the stream's tail and resumes after the
///   last stored message with a new publisher. A publisher that returned an error must not be used again.
pub struct Publisher<T> {
    js: jetstream::Context,
    last_sequence: u64,
    in_flight: FuturesOrdered<AckFuture<T>>,
    sizes: VecDeque<usize>,
    in_flight_bytes: usize,
}

impl<T: Send + 'static> Publisher<T> {
    /// A publisher that expects the stream's last sequence to be `last_sequence`.
    pub fn new(js: jetstream::Context, last_sequence: u64) -> Self {
        Self { js, last_sequence, in_flight: FuturesOrdered::new(), sizes: VecDeque::new(), in_flight_bytes: 0 }
    }

    /// Events sent and not yet acked.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Payload bytes sent and not yet acked.
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// Sends one event; its ack arrives later through [`next_ack`](Self::next_ack).
    pub async fn send(&mut self, event: Event, tag: T) -> Result<(), PublishError> {
        let expected_last = self.last_sequence;
        let size = event.payload.len();
        let Event { id, subject, headers, payload, position, .. } = event;
        let message = PublishMessage::build().payload(payload).headers(headers).expected_last_sequence(expected_last);
        let ack = match self.js.send_publish(subject.clone(), message).await {
            Ok(ack) => ack,
            Err(e) => {
                let refused = refuses_the_message(e.kind());
                let (subject, reason) = (subject.to_string(), e.to_string());
                return Err(PublishError::Publish { id, subject, position, reason, refused });
            }
        };
        self.last_sequence += 1;
        let expected = self.last_sequence;
        self.in_flight.push_back(Box::pin(async move {
            match ack.await {
                Ok(ack) if ack.duplicate => {
                    Err(PublishError::Fence { id, expected, actual: format!("duplicate of sequence {}", ack.sequence) })
                }
                Ok(ack) if ack.sequence != expected => {
                    Err(PublishError::Fence { id, expected, actual: ack.sequence.to_string() })
                }
                Ok(ack) => Ok(Acked { tag, sequence: ack.sequence }),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    Err(PublishError::Fence { id, expected, actual: e.to_string() })
                }
                Err(e) => {
                    let refused = refuses_the_message(e.kind());
                    let (subject, reason) = (subject.to_string(), e.to_string());
                    Err(PublishError::Publish { id, subject, position, reason, refused })
                }
            }
        }));
        self.sizes.push_back(size);
        self.in_flight_bytes += size;
        Ok(())
    }

    /// The next ack in send order; pending forever when nothing is in flight (use it behind a guard).
    pub async fn next_ack(&mut self) -> Result<Acked<T>, PublishError> {
        match self.in_flight.next().await {
            Some(result) => {
                if let Some(size) = self.sizes.pop_front() {
                    self.in_flight_bytes -= size;
                }
                result
            }
            None => std::future::pending().await,
        }
    }

    /// Waits (at most `timeout`) for everything in flight; returns the tags acked in order, stopping at the first
    /// failure (later acks cannot be trusted to be contiguous).
    pub async fn drain(&mut self, timeout: Duration) -> (Vec<T>, Option<PublishError>) {
        let mut acked = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, self.next_ack()).await {
                Ok(Ok(a)) => acked.push(a.tag),
                Ok(Err(e)) => {
                    self.in_flight = FuturesOrdered::new();
                    return (acked, Some(e));
                }
                Err(_) => {
                    let n = self.in_flight.len();
                    self.in_flight = FuturesOrdered::new();
                    return (acked, Some(PublishError::Unacked { count: n, timeout }));
                }
            }
        }
        (acked, None)
    }
}
