//! The JetStream publisher: pipelined publishes, optionally behind an ordering fence; the one publisher of `run`,
//! `replay`, `skip` and the benchmark.
//!
//! In: [`Event`]s in WAL order, each with a tag the caller uses to credit its ack. Out: acks, in the order the events
//! were sent. The in-flight events' metadata waits in a `VecDeque` beside the transport's replies (matched by token),
//! with one timer for the oldest: no future, box or timer per event. See <https://docs.nats.io/using-nats/developer/develop_jetstream/model_deep_dive> (publish
//! expectations and deduplication).

use std::{collections::VecDeque, pin::Pin, time::Duration};

use async_nats::{header::HeaderName, Subject};
use tokio::time::{Instant, Sleep};

use super::transport::{NatsTransport, Refusal, Reply, Stored, Transport, WRONG_LAST_SEQUENCE};
use crate::mapping::event::{header, header_wire_len, number_value, Event, Position};

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
    /// The stream answered a fenced publish as a duplicate: it holds another message with this event's
    /// `Nats-Msg-Id` (the relay never re-sends what the stream holds, so two events share the id). The relay
    /// resumes, and `--on-invalid` decides about the event when it comes again.
    #[error("event {id} at {position}: the stream already holds a message with this Nats-Msg-Id (sequence {sequence}), so JetStream dropped this one as a duplicate")]
    Duplicate {
        /// Event id.
        id: String,
        /// Where the event is.
        position: Position,
        /// The stream sequence of the message that holds the id.
        sequence: u64,
    },
    /// A durability check (`--nats-sync-interval`, design.md §4d) found that the stream no longer holds a message it
    /// acked: the NATS server lost acked writes (an OS crash before its sync, a restart from older files, a leader
    /// without the unsynced tail). The slot has not passed those events: the relay starts over from the slot and
    /// publishes them again after the stream's surviving tail.
    #[error("stream {stream} lost acked messages: sequence {sequence} should hold event {id} but {found}; the NATS server lost writes it had acked (e.g. an OS crash before its sync, or a restart from older files); the events the slot has not confirmed are published again after the stream's surviving tail")]
    Lost {
        /// Stream name.
        stream: String,
        /// The sequence checked (the newest acked message waiting for the interval).
        sequence: u64,
        /// The id the relay stored there.
        id: String,
        /// What the stream holds there instead.
        found: String,
    },
    /// The stream's sequence is not what the fence expected: a message was lost or written by someone else. The
    /// relay re-reads the tail and resumes after it.
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
            Self::Publish { id, refused: true, .. } | Self::Fence { id, .. } | Self::Duplicate { id, .. } => Some(id),
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

/// An ack credited to the tag the caller gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked<T> {
    /// The caller's tag.
    pub tag: T,
    /// The stream sequence the event got (for a duplicate: the sequence of the message it duplicates).
    pub sequence: u64,
    /// The event's id (its `Nats-Msg-Id`), for the durability check of `--nats-sync-interval`.
    pub id: String,
    /// The stream dropped it as a duplicate of a message with the same `Nats-Msg-Id` (never with the fence on,
    /// where a duplicate is a [`PublishError::Fence`]).
    pub duplicate: bool,
}

/// One event sent and not yet acked.
struct Pending<T> {
    tag: T,
    id: String,
    subject: Subject,
    position: Position,
    size: usize,
    sent: Instant,
    /// The stream sequence the fence expects it to get.
    expected: Option<u64>,
    reply: Option<Result<Stored, Refusal>>,
}

/// Publishes events to one stream, pipelined, in order.
///
/// Contract:
/// - **accepted**: [`Publisher::send`] returned `Ok`: the message is in the client's outgoing buffer and waits for
///   its ack. Nothing is durable yet.
/// - **acked**: [`Publisher::next_ack`] yielded it: JetStream stored it (with the fence: at exactly the sequence the
///   fence expected). Only acked events may move the checkpoint.
/// - **order**: with the fence ([`Publisher::fenced`], `run`), every publish carries `Nats-Expected-Last-Sequence`
///   = the sequence of the message sent before it, so the stream can never store a later event after a lost
///   earlier one. Acks are yielded in send order, whatever order the replies come in.
/// - **errors**: any error (no ack within the publish timeout, a closed connection, a refusal, a fence violation or
///   duplicate) is returned once; the caller stops sending, [`drain`](Publisher::drain)s what is in flight, re-reads
///   the stream's tail and resumes after the last stored message with a new publisher. A publisher that returned an
///   error must not be used again.
pub struct Publisher<T, X = NatsTransport> {
    transport: X,
    /// With the fence: the sequence of the last message sent.
    fence: Option<u64>,
    timeout: Duration,
    in_flight: VecDeque<Pending<T>>,
    /// The token of `in_flight[0]`; tokens count up from 0 per publisher.
    first_token: u64,
    in_flight_bytes: usize,
    /// Fires at the oldest event's deadline (reset lazily: when it fires early, to the new oldest's deadline).
    timer: Pin<Box<Sleep>>,
}

impl<T> Publisher<T, NatsTransport> {
    /// A publisher with the ordering fence over `client`, expecting the stream's last sequence to be `last_sequence`
    /// (`run` and `skip`).
    pub async fn fenced(
        client: &async_nats::Client,
        last_sequence: u64,
        timeout: Duration,
    ) -> Result<Self, PublishError> {
        Ok(Self::new(transport(client).await?, Some(last_sequence), timeout))
    }

    /// A publisher without the fence over `client`: for a stream that others may write to (`replay`).
    pub async fn unfenced(client: &async_nats::Client, timeout: Duration) -> Result<Self, PublishError> {
        Ok(Self::new(transport(client).await?, None, timeout))
    }
}

/// The transport over `client`; a failed subscription to the acks is a connection error naming the server.
pub(super) async fn transport(client: &async_nats::Client) -> Result<NatsTransport, PublishError> {
    NatsTransport::new(client).await.map_err(|e| {
        let info = client.server_info();
        let url = format!("nats://{}:{}", info.host, info.port);
        PublishError::Connect { url, reason: format!("subscribing to the publish acks: {e}") }
    })
}

impl<T, X: Transport> Publisher<T, X> {
    /// A publisher over `transport`; `fence` is the stream's last sequence when the ordering fence is on. An event
    /// not acked within `timeout` of its send fails the publisher.
    pub fn new(transport: X, fence: Option<u64>, timeout: Duration) -> Self {
        Self {
            transport,
            fence,
            timeout,
            in_flight: VecDeque::new(),
            first_token: 0,
            in_flight_bytes: 0,
            timer: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    /// Events sent and not yet acked.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Payload bytes sent and not yet acked.
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// The transport (for tests that look at what was sent).
    pub fn transport(&self) -> &X {
        &self.transport
    }

    /// Sends one event; its ack arrives later through [`next_ack`](Self::next_ack).
    pub async fn send(&mut self, event: Event, tag: T) -> Result<(), PublishError> {
        let Event { id, subject, mut headers, payload, position, .. } = event;
        let expected = self.fence.map(|last| {
            headers.insert(HeaderName::from_static(header::EXPECTED_LAST_SEQUENCE), number_value(last));
            last + 1
        });
        let size = payload.len();
        let token = self.first_token + self.in_flight.len() as u64;
        // Bounded like the ack: a connection that takes no message (a full command channel) must not hold the caller.
        // The timer is set up only when the connection does not take the message at once (never, normally).
        let publish = self.transport.publish(token, subject.clone(), headers, payload);
        tokio::pin!(publish);
        let handed = match futures::poll!(&mut publish) {
            std::task::Poll::Ready(result) => Ok(result),
            std::task::Poll::Pending => tokio::time::timeout(self.timeout, publish).await,
        };
        let failed = match handed {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some((e.reason, e.refused)),
            Err(_) => {
                Some((format!("NATS took no message within {}", humantime::format_duration(self.timeout)), false))
            }
        };
        if let Some((reason, refused)) = failed {
            return Err(PublishError::Publish { id, subject: subject.to_string(), position, reason, refused });
        }
        if expected.is_some() {
            self.fence = expected;
        }
        let sent = Instant::now();
        if self.in_flight.is_empty() {
            self.timer.as_mut().reset(sent + self.timeout);
        }
        self.in_flight.push_back(Pending { tag, id, subject, position, size, sent, expected, reply: None });
        self.in_flight_bytes += size;
        Ok(())
    }

    /// The next ack in send order; pending forever when nothing is in flight (use it behind a guard). Cancel-safe.
    pub async fn next_ack(&mut self) -> Result<Acked<T>, PublishError> {
        loop {
            match self.in_flight.front() {
                None => return std::future::pending().await,
                Some(front) if front.reply.is_some() => return self.complete_front(),
                Some(_) => {}
            }
            tokio::select! {
                biased;
                reply = self.transport.next_reply() => match reply {
                    Some(reply) => self.record(reply),
                    None => return Err(self.fail_front("the NATS connection closed before the ack".into())),
                },
                () = &mut self.timer => {
                    let Some(deadline) = self.in_flight.front().map(|p| p.sent + self.timeout) else { continue };
                    if Instant::now() >= deadline {
                        let reason = format!("no ack within {}", humantime::format_duration(self.timeout));
                        return Err(self.fail_front(reason));
                    }
                    self.timer.as_mut().reset(deadline);
                }
            }
        }
    }

    /// Files a reply with its event; a reply for no event in flight (a late one) is dropped.
    fn record(&mut self, reply: Reply) {
        let slot = reply.token.checked_sub(self.first_token).and_then(|i| self.in_flight.get_mut(i as usize));
        if let Some(pending) = slot {
            pending.reply = Some(reply.outcome);
        }
    }

    /// Takes the front event out of flight: the next reply token belongs to the event after it.
    fn pop_front(&mut self) -> Option<Pending<T>> {
        let p = self.in_flight.pop_front()?;
        self.first_token += 1;
        self.in_flight_bytes -= p.size;
        Some(p)
    }

    /// The front event failed without an answer about it (timeout, closed connection).
    fn fail_front(&mut self, reason: String) -> PublishError {
        match self.pop_front() {
            Some(p) => PublishError::Publish {
                id: p.id,
                subject: p.subject.to_string(),
                position: p.position,
                reason,
                refused: false,
            },
            None => PublishError::Unacked { count: 0, timeout: self.timeout },
        }
    }

    /// Takes the answered front event: an ack, or the error its reply means.
    fn complete_front(&mut self) -> Result<Acked<T>, PublishError> {
        let Some(p) = self.pop_front() else {
            return Err(PublishError::Unacked { count: 0, timeout: self.timeout });
        };
        let Pending { tag, id, subject, position, expected, reply, .. } = p;
        match (reply, expected) {
            (Some(Ok(stored)), Some(_)) if stored.duplicate => {
                Err(PublishError::Duplicate { id, position, sequence: stored.sequence })
            }
            (Some(Ok(stored)), Some(expected)) if stored.sequence != expected => {
                Err(PublishError::Fence { id, expected, actual: stored.sequence.to_string() })
            }
            (Some(Ok(Stored { sequence, duplicate })), _) => Ok(Acked { tag, sequence, id, duplicate }),
            (Some(Err(refusal)), Some(expected)) if refusal.code == WRONG_LAST_SEQUENCE => {
                Err(PublishError::Fence { id, expected, actual: refusal.reason })
            }
            (Some(Err(refusal)), _) => {
                let subject = subject.to_string();
                Err(PublishError::Publish { id, subject, position, reason: refusal.reason, refused: true })
            }
            (None, _) => Err(PublishError::Unacked { count: 1, timeout: self.timeout }),
        }
    }

    /// Waits (at most `timeout`) for everything in flight; returns the acks in order, stopping at the first failure
    /// (later acks cannot be trusted to be contiguous). Nothing is in flight afterwards.
    pub async fn drain(&mut self, timeout: Duration) -> (Vec<Acked<T>>, Option<PublishError>) {
        let mut acked = Vec::new();
        let deadline = Instant::now() + timeout;
        let mut failure = None;
        while !self.in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, self.next_ack()).await {
                Ok(Ok(a)) => acked.push(a),
                Ok(Err(e)) => {
                    failure = Some(e);
                    break;
                }
                Err(_) => {
                    failure = Some(PublishError::Unacked { count: self.in_flight.len(), timeout });
                    break;
                }
            }
        }
        // What is left will not be waited for: a late reply to it must not be filed under a later event.
        while self.pop_front().is_some() {}
        (acked, failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{memory::MemoryStream, transport::SendError};
    use async_nats::HeaderMap;
    use pgoutput::Lsn;

    fn event(id: &str, index: u32) -> Event {
        let mut headers = HeaderMap::new();
        headers.insert(header::MSG_ID, id);
        Event {
            id: id.into(),
            subject: Subject::from("outbox.a.b"),
            headers,
            payload: bytes::Bytes::from_static(b"{}"),
            position: Position { commit_lsn: Lsn(0x100), index },
            table: "public.outbox".into(),
            dead_letter: false,
        }
    }

    #[tokio::test]
    async fn acks_come_out_in_send_order_whatever_order_the_replies_take() {
        let stream = MemoryStream::default();
        stream.state().reorder = true;
        let mut p = Publisher::new(stream.transport(), Some(0), Duration::from_secs(5));
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            p.send(event(id, i as u32), i).await.expect("sent");
        }
        assert_eq!(p.in_flight(), 3);
        let mut acks = Vec::new();
        for _ in 0..3 {
            let ack = p.next_ack().await.expect("acked");
            acks.push((ack.tag, ack.sequence));
        }
        assert_eq!(acks, [(0, 1), (1, 2), (2, 3)]);
        assert_eq!((p.in_flight(), p.in_flight_bytes()), (0, 0));
    }

    #[tokio::test]
    async fn a_missing_ack_fails_after_the_publish_timeout() {
        let stream = MemoryStream::default();
        stream.state().answer = Some(1);
        let mut p = Publisher::new(stream.transport(), Some(0), Duration::from_millis(100));
        p.send(event("a", 0), ()).await.expect("sent");
        p.send(event("b", 1), ()).await.expect("sent");
        assert!(p.next_ack().await.is_ok());
        let started = Instant::now();
        match p.next_ack().await {
            Err(PublishError::Publish { id, refused: false, .. }) => assert_eq!(id, "b"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_duplicate_is_counted_without_the_fence_and_is_an_error_with_it() {
        let stream = MemoryStream::default();
        let mut p = Publisher::new(stream.transport(), None, Duration::from_secs(5));
        p.send(event("a", 0), ()).await.expect("sent");
        p.send(event("a", 0), ()).await.expect("sent");
        assert!(!p.next_ack().await.expect("stored").duplicate);
        let dup = p.next_ack().await.expect("duplicate");
        assert!(dup.duplicate && dup.sequence == 1);
        let mut fenced = Publisher::new(stream.transport(), Some(1), Duration::from_secs(5));
        fenced.send(event("a", 0), ()).await.expect("sent");
        match fenced.next_ack().await {
            Err(e @ PublishError::Duplicate { sequence: 1, .. }) => assert_eq!(e.refused_event(), Some("a")),
            other => panic!("expected a duplicate, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_refused_message_names_the_event() {
        let stream = MemoryStream::default();
        stream.state().refuse_id = Some("b".into());
        let mut p = Publisher::new(stream.transport(), None, Duration::from_secs(5));
        p.send(event("a", 0), ()).await.expect("sent");
        p.send(event("b", 1), ()).await.expect("sent");
        let (acked, err) = p.drain(Duration::from_secs(5)).await;
        assert_eq!(acked.len(), 1);
        match err {
            Some(e @ PublishError::Publish { refused: true, .. }) => assert_eq!(e.refused_event(), Some("b")),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(p.in_flight(), 0);
    }

    /// A transport whose replies the test hands in, each when it likes.
    #[derive(Clone, Default)]
    struct Manual {
        replies: std::sync::Arc<std::sync::Mutex<VecDeque<Reply>>>,
        notify: std::sync::Arc<tokio::sync::Notify>,
    }

    impl Manual {
        fn answer(&self, token: u64, outcome: Result<Stored, Refusal>) {
            self.replies.lock().expect("replies").push_back(Reply { token, outcome });
            self.notify.notify_one();
        }
    }

    impl Transport for Manual {
        async fn publish(&mut self, _: u64, _: Subject, _: HeaderMap, _: bytes::Bytes) -> Result<(), SendError> {
            Ok(())
        }

        async fn next_reply(&mut self) -> Option<Reply> {
            loop {
                if let Some(reply) = self.replies.lock().expect("replies").pop_front() {
                    return Some(reply);
                }
                self.notify.notified().await;
            }
        }
    }

    fn stored(sequence: u64) -> Result<Stored, Refusal> {
        Ok(Stored { sequence, duplicate: false })
    }

    /// Tags and sequences of acks.
    fn tagged(acked: &[Acked<usize>]) -> Vec<(usize, u64)> {
        acked.iter().map(|a| (a.tag, a.sequence)).collect()
    }

    #[tokio::test]
    async fn after_a_timeout_each_reply_is_still_filed_with_its_own_event() {
        for fence in [Some(0), None] {
            let t = Manual::default();
            let mut p = Publisher::new(t.clone(), fence, Duration::from_millis(100));
            for (i, id) in ["a", "b", "c", "d", "d2"].into_iter().enumerate() {
                p.send(event(id, i as u32), i).await.expect("sent");
            }
            // a's ack is lost (it was stored at 1): the front times out, and leaves the flight.
            assert!(matches!(p.next_ack().await, Err(PublishError::Publish { ref id, .. }) if id == "a"));
            assert_eq!((p.in_flight(), p.in_flight_bytes()), (4, 8), "{fence:?}");
            // a's late ack, b's and c's: each for its own event.
            t.answer(0, stored(1));
            t.answer(1, stored(2));
            t.answer(2, stored(3));
            assert_eq!(tagged(&[p.next_ack().await.expect("b"), p.next_ack().await.expect("c")]), [(1, 2), (2, 3)]);
            // d times out in a drain, which gives up d2 too; their late acks must not be taken for e's.
            let (acked, err) = p.drain(Duration::from_secs(1)).await;
            assert!(acked.is_empty() && err.is_some_and(|e| e.to_string().contains("d")), "{fence:?}");
            assert_eq!((p.in_flight(), p.in_flight_bytes()), (0, 0));
            p.send(event("e", 5), 5).await.expect("sent");
            t.answer(3, stored(4));
            t.answer(4, stored(5));
            t.answer(5, Err(Refusal { code: 10000, reason: "e refused".into() }));
            match p.next_ack().await {
                Err(e @ PublishError::Publish { refused: true, .. }) => assert_eq!(e.refused_event(), Some("e")),
                other => panic!("{fence:?}: e's own reply is a refusal, got {other:?}"),
            }
        }
    }

    /// A connection that takes no message (async-nats' command channel full while it reconnects).
    struct Stuck;

    impl Transport for Stuck {
        async fn publish(&mut self, _: u64, _: Subject, _: HeaderMap, _: bytes::Bytes) -> Result<(), SendError> {
            std::future::pending().await
        }

        async fn next_reply(&mut self) -> Option<Reply> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_publish_the_connection_does_not_take_fails_after_the_publish_timeout() {
        let mut p = Publisher::new(Stuck, Some(0), Duration::from_millis(100));
        let sent = tokio::time::timeout(Duration::from_secs(5), p.send(event("a", 0), 0)).await;
        match sent.expect("send returns within the publish timeout") {
            Err(PublishError::Publish { id, reason, refused: false, .. }) => {
                assert_eq!((id.as_str(), reason.as_str()), ("a", "NATS took no message within 100ms"));
            }
            other => panic!("expected a publish error, got {other:?}"),
        }
        assert_eq!(p.in_flight(), 0);
    }
}
