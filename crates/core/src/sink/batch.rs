//! Fast-batch publishing (nats-server 2.14+, ADR-50 "fast ingest"): the same fenced publishes as
//! [`NatsTransport`], acknowledged by one cumulative flow ack every `flow` messages instead of one ack per message.
//!
//! In: wire-ready messages with a token each, as for any [`Transport`]. Out: one [`Reply`] per token, in any order,
//! exactly as the per-message path gives them, so the [`Publisher`] (order, fence, timeouts) and the ack tracker
//! behind it take them unchanged: a flow ack for batch sequence `n` is expanded here into one `Stored` reply per
//! message it covers.
//!
//! The control data rides in the reply subject, `<inbox>.<batch id>.<flow>.fail.<batch seq>.<op>.$FI`
//! (op 0 starts a batch, 1 appends, 3 commits without storing the commit message). Why each message's stream
//! sequence is known without a per-message ack: every message still carries `Nats-Expected-Last-Sequence` (the
//! ordering fence, design.md rule 7) and the gap mode is `fail`, so the server stores message `k` only at the
//! sequence the fence names, and a flow ack for `n` means messages `1..=n` went through in order. The one thing a
//! flow ack cannot tell is a message JetStream dropped as a duplicate (`Nats-Msg-Id` seen before): the server skips it
//! silently, and only the next stored message's fence check (which then fails) or the batch's final pub ack (whose
//! stream sequence then falls short) shows it. So the message a flow ack ends on is held back until the next flow ack
//! or the final pub ack proves it, and a batch is committed (op 3) whenever the publisher has been quiet for
//! [`QUIET`] with messages unproven, which also acks a window the flow interval would not complete.
//! Known hole (found by review, not fixed): holding back one message covers a single reused id only. When two or
//! more ids in a row are reused and the server's flow ack lands after the first of them (it acks on a skipped
//! duplicate too), the next flow ack cannot tell either, and the messages before it are answered as stored at their
//! fenced sequences; the batch still fails on the message the last ack ends on, but after those answers. Only the
//! final pub ack's stream sequence proves what a batch stored (test
//! `two_reused_ids_across_a_flow_ack_are_not_acked_as_stored`, ignored). What keeps that from confirming an LSN past
//! an event the stream does not hold is the checkpoint's durability check (same sequence, same id), so fast batch is
//! only used with a sync interval ([`Mode::SyncAlways`]).
//!
//! Flow control: the server says how often it acks (`msgs`, at most the `flow` asked for) and the publisher never
//! has more than [`OUTSTANDING_ACKS`] flow windows unacked: [`Transport::publish`] waits for acks before sending more.
//! A new batch waits for the server's first reply (its flow settings) before its second message, as ADR-50 requires.
//!
//! Errors: a gap, a failed expected-header check, an abandoned or unknown batch, or a leader change end the batch
//! with a final pub ack (gap mode `fail`; after a leader change only once the batch's next message or commit comes,
//! which the new leader's flow ack triggers: see [`Ledger::flow_ack`]); every message it does not prove stored is
//! answered with a refusal, so the
//! publisher fails once, the relay drains, re-reads the stream's tail and resumes after it (rule 7). The relay's next
//! session sends its first events with per-message acks, so a duplicate shows up there with the sequence of the
//! message holding its id, as without fast batch.
//! See <https://github.com/nats-io/nats-architecture-and-design/blob/main/adr/ADR-50.md>.

use std::{collections::VecDeque, pin::Pin, time::Duration};

use async_nats::{jetstream::stream, HeaderMap, Subject};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio::time::{Instant, Sleep};

use super::{
    publisher::{PublishError, Publisher},
    transport::{ApiError, NatsTransport, Refusal, Reply, SendError, Stored, Transport},
};
use crate::{
    config::{NatsBatch, Settings},
    mapping::event::header,
};

/// Flow windows a publisher may have sent and not had acked before it waits (ADR-50: 2 keeps the server busy while
/// the client waits for the older window's ack).
pub const OUTSTANDING_ACKS: u64 = 2;

/// How long the publisher sends nothing before it commits the open batch to have its last messages acked.
pub const QUIET: Duration = Duration::from_millis(2);

/// The most messages per flow ack a client may ask for that the server grants (nats-server caps it at 500).
const MAX_FLOW: usize = 500;

/// The first nats-server version with fast-batch publishing.
const FIRST_VERSION: (u64, u64) = (2, 14);

/// Whether a server (its `INFO` version, e.g. `2.15.1`) speaks fast batch.
pub fn server_supports(version: &str) -> bool {
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= FIRST_VERSION
}

/// How `run` publishes to a stream, and why: the one decision `run` acts on and `doctor` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Fast batch: `--nats-batch auto`, a 2.14+ server, a stream with `allow_batched` and a sync interval.
    Batched,
    /// Per-message acks: `--nats-batch off`.
    TurnedOff,
    /// Per-message acks: the server (its version) has no fast-batch publishing.
    OldServer(String),
    /// Per-message acks: the stream does not allow batched publishes.
    NotAllowed,
    /// Per-message acks: `--nats-sync-interval always`. A flow ack cannot tell a stored message from one the server
    /// dropped as a duplicate (a reused `Nats-Msg-Id`; the module doc's known hole), and with `always` nothing else
    /// checks a message is in the stream before its LSN is confirmed; with an interval, the durability check (same
    /// sequence, same id) does.
    SyncAlways,
}

/// Decides [`Mode`] from the settings, the server's version and the stream's `allow_batched`.
pub fn mode(settings: &Settings, version: &str, allow_batched: bool) -> Mode {
    if settings.nats_batch == NatsBatch::Off {
        Mode::TurnedOff
    } else if !server_supports(version) {
        Mode::OldServer(version.to_owned())
    } else if !allow_batched {
        Mode::NotAllowed
    } else if settings.nats_sync_interval.is_none() {
        Mode::SyncAlways
    } else {
        Mode::Batched
    }
}

/// Whether `run` publishes in fast batches ([`mode`] is [`Mode::Batched`]).
pub fn enabled(settings: &Settings, client: &async_nats::Client, config: &stream::Config) -> bool {
    mode(settings, &client.server_info().version, config.allow_batch_publish) == Mode::Batched
}

/// The flow (messages per ack) to ask for: a quarter of the in-flight window, so that [`OUTSTANDING_ACKS`] windows
/// and the message held back fit in it and the relay never stalls on its own window while an ack is due.
pub fn flow_for(max_in_flight: usize) -> u16 {
    u16::try_from((max_in_flight / 4).clamp(1, MAX_FLOW)).unwrap_or(1)
}

/// How a [`FastBatch`] publishes.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Fast batch at all (otherwise every message goes with its own ack).
    pub enabled: bool,
    /// Messages per flow ack to ask for (the server may ack more often).
    pub flow: u16,
    /// Send this many messages with per-message acks first (after a session that failed in a batch).
    pub per_message_first: usize,
}

/// One message sent in a batch and not yet answered.
#[derive(Debug)]
struct Member {
    /// Its batch sequence.
    seq: u64,
    /// The publisher's token.
    token: u64,
    /// The stream sequence the fence gives it.
    expected: u64,
}

/// One fast batch.
#[derive(Debug)]
struct Batch {
    id: String,
    /// The last batch sequence sent.
    seq: u64,
    members: VecDeque<Member>,
    /// The server's first reply (its flow settings) came.
    started: bool,
    /// Messages per flow ack, as the server last said.
    flow: u64,
    /// The batch sequence of the last flow ack.
    acked: u64,
    /// The commit (op 3) went out; the final pub ack is due.
    committing: bool,
    /// The server's last flow ack calls for the commit to be sent (again): see [`Ledger::flow_ack`].
    commit_now: bool,
    /// Why the server is ending the batch (a gap or an error it reported before the final pub ack).
    failure: Option<Refusal>,
    /// The subject of the last message (the commit goes to it, so it reaches the stream).
    subject: Subject,
}

/// A reply on the batch inbox, as the server sends it: a flow ack, gap or error (`type`), or a (final) pub ack.
#[derive(Deserialize)]
struct Body {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    msgs: u64,
    #[serde(default)]
    last_seq: u64,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    error: Option<ApiError>,
}

/// What the server has said about the batches in flight, and the answers it makes: the pure part of [`FastBatch`].
#[derive(Debug, Default)]
struct Ledger {
    /// `<inbox>`; replies come on `<inbox>.>`.
    inbox: String,
    /// Open batch last; earlier ones are committing.
    batches: VecDeque<Batch>,
    /// Answers ready to hand out.
    ready: VecDeque<Reply>,
}

impl Ledger {
    /// Whether the open batch must wait for the server before it takes another message: for its first reply, or
    /// because [`OUTSTANDING_ACKS`] flow windows are unacked.
    fn must_wait(&self) -> bool {
        match self.batches.back() {
            Some(b) if !b.committing => {
                (b.seq >= 1 && !b.started) || (b.started && b.seq >= b.acked + b.flow * OUTSTANDING_ACKS)
            }
            _ => false,
        }
    }

    /// Whether the open batch has messages that only a commit will get acked now that the publisher is quiet.
    fn commit_due(&self) -> bool {
        self.batches.back().is_some_and(|b| !b.committing && b.started && !b.members.is_empty())
    }

    /// Files one message from the batch inbox.
    fn handle(&mut self, subject: &str, no_responders: bool, payload: &[u8]) {
        // `<inbox>.<id>.<flow>.<gap>.<seq>.<op>.$FI`: the batch, and the message the reply is about.
        let Some(rest) = subject.strip_prefix(self.inbox.as_str()).and_then(|r| r.strip_prefix('.')) else {
            return;
        };
        let mut tokens = rest.split('.');
        let id = tokens.next().unwrap_or_default();
        let about = tokens.nth(2).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let Some(index) = self.batches.iter().position(|b| b.id == id) else { return };
        if no_responders {
            let reason = "no stream found for the subject (no responders)".to_owned();
            return self.end(index, about, Err(Refusal { code: 0, reason }));
        }
        let body = match serde_json::from_slice::<Body>(payload) {
            Ok(body) => body,
            Err(_) => {
                let reason = format!(
                    "unexpected reply to a fast-batch publish: {}",
                    String::from_utf8_lossy(payload).escape_debug()
                );
                return self.end(index, about, Err(Refusal { code: 0, reason }));
            }
        };
        match (body.kind.as_deref(), body.error) {
            (Some("ack"), _) => self.flow_ack(index, body.seq, body.msgs),
            (Some("gap"), _) => {
                let reason = format!(
                    "fast batch: the server missed messages {} to {} of the batch (a gap: lost messages or a new \
                     stream leader)",
                    body.last_seq,
                    body.seq.saturating_sub(1)
                );
                self.batches[index].failure.get_or_insert(Refusal { code: 0, reason });
            }
            (Some("err"), Some(e)) => {
                let refusal = Refusal::from(e);
                // The error is about message `seq`; the final pub ack follows.
                if let Some(m) = self.batches[index].members.iter().position(|m| m.seq == body.seq) {
                    if let Some(member) = self.batches[index].members.remove(m) {
                        self.ready.push_back(Reply { token: member.token, outcome: Err(refusal.clone()) });
                    }
                }
                self.batches[index].failure.get_or_insert(refusal);
            }
            (_, Some(e)) => self.end(index, about, Err(e.into())),
            (_, None) if body.count.is_some() || body.seq > 0 => {
                let count = body.count.unwrap_or(about);
                self.end(index, count, Ok(Stored { sequence: body.seq, duplicate: body.duplicate }))
            }
            (_, None) => {
                let reason = format!(
                    "unexpected reply to a fast-batch publish: {}",
                    String::from_utf8_lossy(payload).escape_debug()
                );
                self.end(index, about, Err(Refusal { code: 0, reason }));
            }
        }
    }

    /// A flow ack for batch sequence `seq`: the server acks every `msgs` from now on. Answers the messages before
    /// `seq`; the one it ends on waits for the next proof (it could have been a skipped duplicate).
    ///
    /// A new stream leader resets the batch (nats-server `fastBatchReset`): it sends one flow ack for what it has,
    /// forgets a commit the old leader had, and finds a gap only in the next message of the batch. So a flow ack that
    /// leaves the open batch waiting, or that comes for a committing batch, has the commit sent (again): the server
    /// answers it with the final pub ack (after a gap report if messages were lost), or skips it while it is still
    /// committing. Without it the batch would wait for a reply that never comes until the publish timeout.
    fn flow_ack(&mut self, index: usize, seq: u64, msgs: u64) {
        let b = &mut self.batches[index];
        b.started = true;
        b.flow = msgs.max(1);
        if seq > b.acked {
            b.acked = seq;
            while b.members.front().is_some_and(|m| m.seq < seq) {
                if let Some(m) = b.members.pop_front() {
                    let stored = Stored { sequence: m.expected, duplicate: false };
                    self.ready.push_back(Reply { token: m.token, outcome: Ok(stored) });
                }
            }
        }
        b.commit_now = b.committing || b.seq >= b.acked + b.flow * OUTSTANDING_ACKS;
    }

    /// The batch ended: with its final pub ack (messages `1..=count` went through, the last stored at the stream
    /// sequence it names) or with an error about message `count`. Answers every message still waiting.
    fn end(&mut self, index: usize, count: u64, outcome: Result<Stored, Refusal>) {
        let Some(mut b) = self.batches.remove(index) else { return };
        let id = b.id.clone();
        let failure = b.failure.take();
        let mut members = std::mem::take(&mut b.members);
        if let Err(refusal) = &outcome {
            if let Some(m) = members.iter().position(|m| m.seq == count).and_then(|i| members.remove(i)) {
                self.ready.push_back(Reply { token: m.token, outcome: Err(refusal.clone()) });
            }
        }
        let mut members = members.into_iter().peekable();
        match outcome {
            // A one-message batch whose message was a duplicate: the server answers as a plain publish would.
            Ok(stored) if stored.duplicate => {
                if let Some(m) = members.next_if(|m| m.seq <= count) {
                    self.ready.push_back(Reply { token: m.token, outcome: Ok(stored) });
                }
            }
            Ok(Stored { sequence, .. }) => {
                while let Some(m) = members.next_if(|m| m.seq <= count && m.expected <= sequence) {
                    self.ready.push_back(Reply {
                        token: m.token,
                        outcome: Ok(Stored { sequence: m.expected, duplicate: false }),
                    });
                }
                if let Some(m) = members.next_if(|m| m.seq <= count) {
                    let reason = format!(
                        "fast batch {id} ended at stream sequence {sequence}, so the stream did not store this message \
                         at sequence {}: JetStream dropped it as a duplicate (its Nats-Msg-Id is in the stream)",
                        m.expected
                    );
                    self.ready.push_back(Reply { token: m.token, outcome: Err(Refusal { code: 0, reason }) });
                }
            }
            Err(refusal) => b.failure = Some(failure.clone().unwrap_or(refusal)),
        }
        // What the batch did not get to: the first gets the server's reason, the rest say the batch ended.
        let reason = b.failure.or(failure).map(|r| r.reason);
        for (i, m) in members.enumerate() {
            let reason = match (&reason, i) {
                (Some(r), 0) => r.clone(),
                (Some(r), _) => format!("fast batch {id} ended before this message: {r}"),
                (None, _) => format!("fast batch {id} ended before this message"),
            };
            self.ready.push_back(Reply { token: m.token, outcome: Err(Refusal { code: 0, reason }) });
        }
    }
}

/// [`Transport`] that publishes in fast batches (or, when told, with per-message acks through a [`NatsTransport`]).
pub struct FastBatch {
    plain: NatsTransport,
    client: async_nats::Client,
    replies: async_nats::Subscriber,
    options: BatchOptions,
    ledger: Ledger,
    next_id: u64,
    /// Fires [`QUIET`] after the last batched publish.
    quiet: Pin<Box<Sleep>>,
    last_batched: bool,
    batched: u64,
}

impl<T> Publisher<T, FastBatch> {
    /// A fenced publisher (as [`Publisher::fenced`]) that publishes in fast batches when `options.enabled`.
    pub async fn fast_batch(
        client: &async_nats::Client,
        last_sequence: u64,
        timeout: Duration,
        options: BatchOptions,
    ) -> Result<Self, PublishError> {
        Ok(Self::new(FastBatch::new(client, options).await?, Some(last_sequence), timeout))
    }
}

impl FastBatch {
    /// Subscribes to a fresh inbox for the batch replies (and one for per-message acks).
    pub async fn new(client: &async_nats::Client, options: BatchOptions) -> Result<Self, PublishError> {
        let plain = super::publisher::transport(client).await?;
        let inbox = client.new_inbox();
        let replies = client.subscribe(format!("{inbox}.>")).await.map_err(|e| {
            let info = client.server_info();
            let url = format!("nats://{}:{}", info.host, info.port);
            PublishError::Connect { url, reason: format!("subscribing to the fast-batch acks: {e}") }
        })?;
        Ok(Self {
            plain,
            client: client.clone(),
            replies,
            options,
            ledger: Ledger { inbox, ..Ledger::default() },
            next_id: 0,
            quiet: Box::pin(tokio::time::sleep(QUIET)),
            last_batched: false,
            batched: 0,
        })
    }

    /// `<inbox>.<id>.<flow>.fail.<seq>.<op>.$FI`, built without the formatting machinery (one per message).
    fn reply_subject(&self, id: &str, seq: u64, op: u8) -> Subject {
        let (mut flow_digits, mut seq_digits, mut op_digits) =
            (itoa::Buffer::new(), itoa::Buffer::new(), itoa::Buffer::new());
        let parts = [
            self.ledger.inbox.as_str(),
            ".",
            id,
            ".",
            flow_digits.format(self.options.flow),
            ".fail.",
            seq_digits.format(seq),
            ".",
            op_digits.format(op),
            ".$FI",
        ];
        Subject::from(parts.concat())
    }

    /// Commits batch `index` without storing the commit message (op 3); its final pub ack answers the rest.
    async fn commit(&mut self, index: usize) {
        let Some(b) = self.ledger.batches.get(index) else { return };
        let (subject, reply) = (b.subject.clone(), self.reply_subject(&b.id, b.seq + 1, 3));
        match self.client.publish_with_reply(subject, reply, Bytes::new()).await {
            Ok(()) => {
                if let Some(b) = self.ledger.batches.get_mut(index) {
                    b.committing = true;
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "could not send a fast-batch commit, retrying");
                self.quiet.as_mut().reset(Instant::now() + QUIET);
            }
        }
    }

    /// Files one reply, and sends the commits it calls for ([`Ledger::flow_ack`]).
    async fn receive(&mut self, message: &async_nats::Message) {
        let no_responders = message.status == Some(async_nats::StatusCode::NO_RESPONDERS);
        self.ledger.handle(message.subject.as_str(), no_responders, &message.payload);
        for index in 0..self.ledger.batches.len() {
            if self.ledger.batches.get(index).is_some_and(|b| b.commit_now) {
                self.commit(index).await;
                if let Some(b) = self.ledger.batches.get_mut(index) {
                    b.commit_now = false;
                }
            }
        }
    }

    /// Messages published in fast batches by this transport.
    pub fn batched_total(&self) -> u64 {
        self.batched
    }
}

impl Transport for FastBatch {
    async fn publish(
        &mut self,
        token: u64,
        subject: Subject,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), SendError> {
        let fence = headers.get(header::EXPECTED_LAST_SEQUENCE).and_then(|v| v.as_str().parse::<u64>().ok());
        let Some(last) = fence.filter(|_| self.options.enabled && self.options.per_message_first == 0) else {
            self.options.per_message_first = self.options.per_message_first.saturating_sub(1);
            self.last_batched = false;
            return self.plain.publish(token, subject, headers, payload).await;
        };
        if self.ledger.batches.back().is_none_or(|b| b.committing) {
            self.next_id += 1;
            let nuid = self.ledger.inbox.rsplit('.').next().unwrap_or_default();
            self.ledger.batches.push_back(Batch {
                id: format!("{nuid}{}", self.next_id),
                seq: 0,
                members: VecDeque::new(),
                started: false,
                flow: 1,
                acked: 0,
                committing: false,
                commit_now: false,
                failure: None,
                subject: subject.clone(),
            });
        }
        let open = self.ledger.batches.back().map(|b| b.id.clone());
        while self.ledger.must_wait() {
            match self.replies.next().await {
                Some(message) => self.receive(&message).await,
                None => return Err(SendError { reason: "the NATS connection closed".into(), refused: false }),
            }
        }
        // The batch ended while waiting (an error): this message goes on its own, answered on its own.
        let Some(b) = self.ledger.batches.back_mut().filter(|b| Some(&b.id) == open.as_ref() && !b.committing) else {
            self.last_batched = false;
            return self.plain.publish(token, subject, headers, payload).await;
        };
        let seq = b.seq + 1;
        let id = b.id.clone();
        let reply = self.reply_subject(&id, seq, if seq == 1 { 0 } else { 1 });
        self.client.publish_with_reply_and_headers(subject.clone(), reply, headers, payload).await.map_err(|e| {
            SendError {
                reason: e.to_string(),
                refused: matches!(
                    e.kind(),
                    async_nats::client::PublishErrorKind::MaxPayloadExceeded
                        | async_nats::client::PublishErrorKind::InvalidSubject
                ),
            }
        })?;
        if let Some(b) = self.ledger.batches.back_mut() {
            b.seq = seq;
            b.subject = subject;
            b.members.push_back(Member { seq, token, expected: last + 1 });
        }
        self.quiet.as_mut().reset(Instant::now() + QUIET);
        self.last_batched = true;
        self.batched += 1;
        Ok(())
    }

    async fn next_reply(&mut self) -> Option<Reply> {
        loop {
            if let Some(reply) = self.ledger.ready.pop_front() {
                return Some(reply);
            }
            let commit_due = self.ledger.commit_due();
            tokio::select! {
                biased;
                message = self.replies.next() => self.receive(&message?).await,
                reply = self.plain.next_reply() => return reply,
                () = &mut self.quiet, if commit_due => self.commit(self.ledger.batches.len().saturating_sub(1)).await,
            }
        }
    }

    fn last_batched(&self) -> bool {
        self.last_batched
    }

    fn batched(&self) -> u64 {
        self.batched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_batch_needs_auto_a_current_server_allow_batched_and_a_sync_interval() {
        let settings = |batch: &str, interval: &str| {
            let raw = crate::config::RawSettings {
                nats_batch: batch.into(),
                nats_sync_interval: interval.into(),
                ..crate::config::RawSettings::default()
            };
            Settings::validate(raw).expect("settings")
        };
        let auto = settings("auto", "2m");
        assert_eq!(mode(&auto, "2.15.1", true), Mode::Batched);
        assert_eq!(mode(&settings("off", "2m"), "2.15.1", true), Mode::TurnedOff);
        assert_eq!(mode(&auto, "2.9.10", true), Mode::OldServer("2.9.10".into()));
        assert_eq!(mode(&auto, "2.15.1", false), Mode::NotAllowed);
        assert_eq!(mode(&settings("auto", "always"), "2.15.1", true), Mode::SyncAlways);
        assert_eq!(mode(&settings("auto", "0s"), "2.15.1", true), Mode::SyncAlways);
    }

    #[test]
    fn versions_with_fast_batch() {
        assert!(server_supports("2.14.0"));
        assert!(server_supports("2.15.1"));
        assert!(server_supports("3.0.0"));
        assert!(server_supports("2.14.0-RC.1"));
        assert!(!server_supports("2.9.10"));
        assert!(!server_supports("2.12.1"));
        assert!(!server_supports(""));
    }

    const INBOX: &str = "_INBOX.abc";

    /// The server's error for batch message `seq` whose `Nats-Expected-Last-Sequence` check failed: the stream's last
    /// sequence is `last`.
    fn fence_failed(seq: u64, last: u64) -> String {
        format!(
            r#"{{"type":"err","seq":{seq},"error":{{"code":400,"err_code":10071,"description":"wrong last sequence: {last}"}}}}"#
        )
    }

    /// A ledger with one started batch `b1` of `n` messages sent (tokens 0.., batch sequences 1..), the fence
    /// starting at stream sequence `first`.
    fn ledger(n: u64, first: u64) -> Ledger {
        let mut l = Ledger { inbox: INBOX.into(), ..Ledger::default() };
        let members = (1..=n).map(|seq| Member { seq, token: seq - 1, expected: first + seq - 1 }).collect();
        l.batches.push_back(Batch {
            id: "b1".into(),
            seq: n,
            members,
            started: false,
            flow: 1,
            acked: 0,
            committing: false,
            commit_now: false,
            failure: None,
            subject: Subject::from("outbox.a.b"),
        });
        l
    }

    /// The server's reply about message `seq` of `b1`.
    fn reply(l: &mut Ledger, seq: u64, body: &str) {
        l.handle(&format!("{INBOX}.b1.256.fail.{seq}.1.$FI"), false, body.as_bytes());
    }

    /// (token, stored sequence or error code) of the answers so far.
    fn answers(l: &mut Ledger) -> Vec<(u64, Result<u64, u64>)> {
        l.ready.drain(..).map(|r| (r.token, r.outcome.map(|s| s.sequence).map_err(|e| e.code))).collect()
    }

    #[test]
    fn a_flow_ack_answers_the_messages_before_it_and_holds_back_its_own() {
        let mut l = ledger(6, 11);
        reply(&mut l, 1, r#"{"type":"ack","seq":0,"msgs":2}"#);
        assert!(l.batches[0].started && answers(&mut l).is_empty());
        reply(&mut l, 4, r#"{"type":"ack","seq":4,"msgs":4}"#);
        assert_eq!(answers(&mut l), [(0, Ok(11)), (1, Ok(12)), (2, Ok(13))]);
        assert_eq!((l.batches[0].acked, l.batches[0].flow), (4, 4));
        // An old ack again changes nothing.
        reply(&mut l, 2, r#"{"type":"ack","seq":2,"msgs":4}"#);
        assert!(answers(&mut l).is_empty());
        // The final pub ack of the commit (op 3 as message 7): the last message stored at its fenced sequence.
        l.handle(&format!("{INBOX}.b1.256.fail.7.3.$FI"), false, br#"{"stream":"S","seq":16,"batch":"b1","count":6}"#);
        assert_eq!(answers(&mut l), [(3, Ok(14)), (4, Ok(15)), (5, Ok(16))]);
        assert!(l.batches.is_empty());
    }

    #[test]
    fn a_final_pub_ack_short_of_the_fence_refuses_the_first_unstored_message() {
        // Messages 5 and 6 were dropped as duplicates: the stream ends at 14, not 16.
        let mut l = ledger(6, 11);
        reply(&mut l, 1, r#"{"type":"ack","seq":0,"msgs":2}"#);
        reply(&mut l, 7, r#"{"stream":"S","seq":14,"batch":"b1","count":6}"#);
        assert_eq!(answers(&mut l), [(0, Ok(11)), (1, Ok(12)), (2, Ok(13)), (3, Ok(14)), (4, Err(0)), (5, Err(0))]);
    }

    #[test]
    fn a_single_reused_id_on_a_flow_ack_is_exposed_by_the_next_message() {
        // nats-server (stream.go, processJetStreamFastBatchMsg): message 6 is dropped as a duplicate with nothing
        // pending, so the server moves its persisted sequence to 6 and sends the flow ack for 6; message 7's fence
        // then fails (the stream ends at 15, not 16): a BatchFlowErr, and the final pub ack for 1..=6 at 15.
        let mut l = ledger(7, 11);
        reply(&mut l, 1, r#"{"type":"ack","seq":0,"msgs":2}"#);
        reply(&mut l, 2, r#"{"type":"ack","seq":2,"msgs":4}"#);
        reply(&mut l, 6, r#"{"type":"ack","seq":6,"msgs":8}"#);
        assert_eq!(answers(&mut l), [(0, Ok(11)), (1, Ok(12)), (2, Ok(13)), (3, Ok(14)), (4, Ok(15))]);
        reply(&mut l, 7, &fence_failed(7, 15));
        reply(&mut l, 7, r#"{"stream":"S","seq":15,"batch":"b1","count":6}"#);
        assert_eq!(answers(&mut l), [(6, Err(super::super::transport::WRONG_LAST_SEQUENCE)), (5, Err(0))]);
    }

    /// Review finding (not fixed): a flow ack cannot tell a stored message from one the server dropped as a
    /// duplicate, so two reused ids in a row across a flow ack are answered as stored at their fenced sequences.
    #[test]
    #[ignore = "known hole: flow acks do not prove storage when a Nats-Msg-Id repeats (module doc)"]
    fn two_reused_ids_across_a_flow_ack_are_not_acked_as_stored() {
        // Another fast batch of the stream is open (ours, committing), so the server starts at one ack per message
        // and doubles: acks at 1, 3, 7, ... Message 1 is stored at 11; messages 2 and 3 reuse ids the stream holds.
        // Message 3, dropped with nothing pending, moves the persisted sequence to 3 and triggers the ack for 3
        // (stream.go: `if b.pending == 0 { b.pseq = batch.seq; b.checkFlowControl(..) }`); no error is sent for a
        // duplicate. The commit (op 3, message 4) then gets the final pub ack: stream sequence 11, count 3.
        let mut l = ledger(3, 11);
        reply(&mut l, 1, r#"{"type":"ack","seq":0,"msgs":1}"#);
        reply(&mut l, 1, r#"{"type":"ack","seq":1,"msgs":2}"#);
        reply(&mut l, 3, r#"{"type":"ack","seq":3,"msgs":4}"#);
        l.handle(&format!("{INBOX}.b1.256.fail.4.3.$FI"), false, br#"{"stream":"S","seq":11,"batch":"b1","count":3}"#);
        // Message 2 is not in the stream: it must not be answered as stored at 12.
        assert_eq!(answers(&mut l), [(0, Ok(11)), (1, Err(0)), (2, Err(0))]);
    }

    #[test]
    fn a_failed_fence_check_refuses_that_message_and_ends_the_batch() {
        let mut l = ledger(5, 1);
        reply(&mut l, 1, r#"{"type":"ack","seq":0,"msgs":10}"#);
        reply(&mut l, 3, &fence_failed(3, 1));
        assert_eq!(answers(&mut l), [(2, Err(super::super::transport::WRONG_LAST_SEQUENCE))]);
        reply(&mut l, 5, r#"{"stream":"S","seq":2,"batch":"b1","count":2}"#);
        assert_eq!(answers(&mut l), [(0, Ok(1)), (1, Ok(2)), (3, Err(0)), (4, Err(0))]);
        assert!(l.batches.is_empty());
    }

    #[test]
    fn a_gap_or_an_unknown_batch_ends_it_with_errors() {
        let mut l = ledger(3, 1);
        reply(&mut l, 1, r#"{"type":"ack","seq":0,"msgs":10}"#);
        reply(&mut l, 3, r#"{"type":"gap","last_seq":2,"seq":3}"#);
        reply(&mut l, 3, r#"{"stream":"S","seq":1,"batch":"b1","count":1}"#);
        let got = l.ready.drain(..).collect::<Vec<_>>();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].outcome, Ok(Stored { sequence: 1, duplicate: false }));
        assert!(got[1].outcome.as_ref().is_err_and(|e| e.reason.contains("gap")), "{got:?}");
        let mut l = ledger(3, 1);
        reply(
            &mut l,
            3,
            r#"{"error":{"code":400,"err_code":10208,"description":"batch publish ID unknown"},"stream":"S","seq":0}"#,
        );
        assert_eq!(answers(&mut l), [(2, Err(10208)), (0, Err(0)), (1, Err(0))]);
    }

    #[test]
    fn a_duplicate_first_message_is_answered_as_a_plain_publish_would_be() {
        let mut l = ledger(1, 8);
        reply(&mut l, 1, r#"{"stream":"S","seq":3,"duplicate":true,"batch":"b1","count":1}"#);
        let got = l.ready.pop_front().expect("answer");
        assert_eq!((got.token, got.outcome), (0, Ok(Stored { sequence: 3, duplicate: true })));
    }

    #[test]
    fn a_reused_id_in_the_first_message_is_refused_by_the_pub_ack_at_sequence_0() {
        // With op 0 (not a commit) nats-server skips a duplicate first message like any other (the plain-publish
        // answer with "duplicate" is only for a batch that commits with its first message, op 2); message 2's fence
        // fails, and the final pub ack names the batch's stored sequence, which was never set: 0.
        let mut l = ledger(3, 11);
        reply(&mut l, 1, r#"{"type":"ack","seq":0,"msgs":4}"#);
        reply(&mut l, 2, &fence_failed(2, 10));
        reply(&mut l, 2, r#"{"stream":"S","seq":0,"batch":"b1","count":1}"#);
        assert_eq!(answers(&mut l), [(1, Err(super::super::transport::WRONG_LAST_SEQUENCE)), (0, Err(0)), (2, Err(0))]);
        assert!(l.batches.is_empty());
    }

    #[test]
    fn waits_for_the_first_reply_and_at_most_two_flow_windows() {
        let mut l = ledger(7, 1);
        assert!(l.must_wait(), "before the first reply");
        reply(&mut l, 1, r#"{"type":"ack","seq":0,"msgs":4}"#);
        assert!(!l.must_wait());
        l.batches[0].seq = 8;
        assert!(l.must_wait(), "two windows of 4 unacked");
        reply(&mut l, 4, r#"{"type":"ack","seq":4,"msgs":4}"#);
        assert!(!l.must_wait() && l.commit_due());
    }

    #[test]
    fn after_a_leader_change_a_waiting_batch_is_committed_to_find_the_gap() {
        // nats-server's fastBatchReset: the new leader sends one flow ack for what it has (here: 1..=3, with the
        // ramp back at 1 while another batch is open) and detects the gap only in the batch's next message. The
        // relay waits (6 >= 3 + 2 * 1) and would send none: the ack must have the batch committed.
        let mut l = ledger(6, 1);
        l.batches[0].seq = 1;
        reply(&mut l, 1, r#"{"type":"ack","seq":0,"msgs":2}"#);
        l.batches[0].seq = 4;
        reply(&mut l, 2, r#"{"type":"ack","seq":2,"msgs":2}"#);
        assert!(!l.batches[0].commit_now && answers(&mut l) == [(0, Ok(1))]);
        l.batches[0].seq = 6;
        assert!(l.must_wait());
        reply(&mut l, 3, r#"{"type":"ack","seq":3,"msgs":1}"#);
        assert!(l.must_wait() && l.batches[0].commit_now, "the reset ack leaves the batch waiting");
        // The commit (op 3 as message 7): a gap (4..=6 lost), then the final pub ack for 1..=3.
        l.batches[0].committing = true;
        reply(&mut l, 7, r#"{"type":"gap","last_seq":4,"seq":7}"#);
        reply(&mut l, 7, r#"{"stream":"S","seq":3,"batch":"b1","count":3}"#);
        let got = l.ready.drain(..).map(|r| (r.token, r.outcome.map(|s| s.sequence).is_ok())).collect::<Vec<_>>();
        assert_eq!(got, [(1, true), (2, true), (3, false), (4, false), (5, false)]);
        assert!(l.batches.is_empty());
    }

    #[test]
    fn a_flow_ack_for_a_committing_batch_has_the_commit_sent_again() {
        // The commit went to the old leader, which forgot it with its leadership: the new leader's reset ack is all
        // that comes. The commit sent again gets the gap report and the final pub ack.
        let mut l = ledger(4, 1);
        reply(&mut l, 1, r#"{"type":"ack","seq":0,"msgs":4}"#);
        assert!(!l.batches[0].commit_now);
        l.batches[0].committing = true;
        reply(&mut l, 2, r#"{"type":"ack","seq":2,"msgs":1}"#);
        assert!(l.batches[0].commit_now);
        assert_eq!(answers(&mut l), [(0, Ok(1))]);
        reply(&mut l, 5, r#"{"type":"gap","last_seq":3,"seq":5}"#);
        reply(&mut l, 5, r#"{"stream":"S","seq":2,"batch":"b1","count":2}"#);
        let got = l.ready.drain(..).map(|r| (r.token, r.outcome.map(|s| s.sequence).is_ok())).collect::<Vec<_>>();
        assert_eq!(got, [(1, true), (2, false), (3, false)]);
    }

    #[test]
    fn flow_fits_the_window() {
        assert_eq!(flow_for(1024), 256);
        assert_eq!(flow_for(1), 1);
        assert_eq!(flow_for(100_000), 500);
    }
}
