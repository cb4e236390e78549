//! An in-memory JetStream stream behind [`Transport`], for unit tests of the publisher and the relay's loop.
//!
//! It keeps what a stream keeps and answers as JetStream does: a sequence per stored message, `Nats-Msg-Id`
//! deduplication, and the `Nats-Expected-Last-Sequence` check (error 10071). Tests can also make it refuse a message,
//! stop answering (lost acks), or let someone else write to the stream.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use tokio::sync::Notify;

use super::transport::{Refusal, Reply, SendError, Stored, Transport, WRONG_LAST_SEQUENCE};
use crate::mapping::event::header;

/// One stored message.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its stream sequence.
    pub sequence: u64,
    /// Subject.
    pub subject: String,
    /// Headers as published.
    pub headers: HeaderMap,
    /// Payload.
    pub payload: Bytes,
}

impl StoredMessage {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }
}

/// The stream's state, shared between the test and the transports it hands out.
#[derive(Debug, Default)]
pub struct StreamState {
    /// What the stream holds, in sequence order.
    pub messages: Vec<StoredMessage>,
    last_sequence: u64,
    ids: HashMap<String, u64>,
    replies: VecDeque<Reply>,
    /// Publishes still to answer before the stream goes silent (`None`: answer all).
    pub answer: Option<usize>,
    /// Refuse the message with this `Nats-Msg-Id` (error 10000).
    pub refuse_id: Option<String>,
    /// Every publish the stream received, stored or not (its `Nats-Msg-Id`).
    pub received: Vec<String>,
    /// Answer the latest publish first (replies out of order).
    pub reorder: bool,
}

/// An in-memory stream; clone it to hand a [`MemoryTransport`] to a publisher and keep looking at the stream.
#[derive(Debug, Clone, Default)]
pub struct MemoryStream {
    state: Arc<Mutex<StreamState>>,
    notify: Arc<Notify>,
}

impl MemoryStream {
    /// The state, to inspect or change.
    pub fn state(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A transport to this stream.
    pub fn transport(&self) -> MemoryTransport {
        MemoryTransport { stream: self.clone() }
    }

    /// Someone else stores a message (moves the last sequence).
    pub fn foreign_write(&self, id: &str) {
        let mut s = self.state();
        s.last_sequence += 1;
        let sequence = s.last_sequence;
        let mut headers = HeaderMap::new();
        headers.insert(header::MSG_ID, id);
        s.messages.push(StoredMessage { sequence, subject: "foreign".into(), headers, payload: Bytes::new() });
    }

    /// The ids of the stored messages, in order.
    pub fn ids(&self) -> Vec<String> {
        self.state().messages.iter().map(|m| m.header(header::MSG_ID).unwrap_or_default().to_owned()).collect()
    }

    /// The stream's last sequence.
    pub fn last_sequence(&self) -> u64 {
        self.state().last_sequence
    }
}

impl super::stream::Probe for MemoryStream {
    /// The message at `sequence`, stored "now" (tests that need stored times set them through the relay's clock).
    fn message_at(
        &self,
        sequence: u64,
    ) -> futures::future::BoxFuture<'static, Result<Option<super::stream::HeldMessage>, super::publisher::PublishError>>
    {
        let held = self.state().messages.iter().find(|m| m.sequence == sequence).map(|m| super::stream::HeldMessage {
            id: m.header(header::MSG_ID).map(str::to_owned),
            stored_at: std::time::SystemTime::now(),
            removed: false,
        });
        Box::pin(async move { Ok(held) })
    }
}

impl MemoryStream {
    /// The stream loses every message after `sequence`, as a server restarted from older files does.
    pub fn lose_after(&self, sequence: u64) {
        let mut s = self.state();
        s.messages.retain(|m| m.sequence <= sequence);
        s.last_sequence = sequence;
        let kept: HashMap<String, u64> = s.ids.drain().filter(|(_, seq)| *seq <= sequence).collect();
        s.ids = kept;
    }
}

impl StreamState {
    fn store(&mut self, subject: Subject, headers: HeaderMap, payload: Bytes) -> Result<Stored, Refusal> {
        let id = headers.get(header::MSG_ID).map(|v| v.as_str().to_owned()).unwrap_or_default();
        self.received.push(id.clone());
        if self.refuse_id.as_deref() == Some(id.as_str()) {
            return Err(Refusal { code: 10000, reason: format!("message {id} refused") });
        }
        if let Some(expected) = headers.get(header::EXPECTED_LAST_SEQUENCE) {
            if expected.as_str().parse::<u64>().ok() != Some(self.last_sequence) {
                let reason = format!("wrong last sequence: {}", self.last_sequence);
                return Err(Refusal { code: WRONG_LAST_SEQUENCE, reason });
            }
        }
        if let Some(&sequence) = self.ids.get(&id) {
            return Ok(Stored { sequence, duplicate: true });
        }
        self.last_sequence += 1;
        let sequence = self.last_sequence;
        self.ids.insert(id, sequence);
        self.messages.push(StoredMessage { sequence, subject: subject.to_string(), headers, payload });
        Ok(Stored { sequence, duplicate: false })
    }
}

/// [`Transport`] to a [`MemoryStream`]: every publish is answered at once (unless the stream is told not to).
#[derive(Debug)]
pub struct MemoryTransport {
    stream: MemoryStream,
}

impl Transport for MemoryTransport {
    async fn publish(
        &mut self,
        token: u64,
        subject: Subject,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), SendError> {
        let mut s = self.stream.state();
        let outcome = s.store(subject, headers, payload);
        match s.answer {
            Some(0) => return Ok(()),
            Some(n) => s.answer = Some(n - 1),
            None => {}
        }
        if s.reorder {
            s.replies.push_front(Reply { token, outcome });
        } else {
            s.replies.push_back(Reply { token, outcome });
        }
        drop(s);
        self.stream.notify.notify_one();
        Ok(())
    }

    async fn next_reply(&mut self) -> Option<Reply> {
        loop {
            if let Some(reply) = self.stream.state().replies.pop_front() {
                return Some(reply);
            }
            self.stream.notify.notified().await;
        }
    }
}
