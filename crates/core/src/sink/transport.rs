//! JetStream as the publisher sees it: a message goes out with a reply token; its ack comes back with that token.
//!
//! In: wire-ready messages (subject, headers, payload) and a token per message. Out: the server's replies, each
//! parsed once into [`Reply`]. A JetStream publish is a core NATS publish to the stream's subject with a reply
//! subject; the server answers there with a publish ack (`{"stream":..,"seq":..,"duplicate":..}`) or an API error.
//! [`NatsTransport`] publishes with reply subjects `<inbox>.<token>` and reads every answer from one wildcard
//! subscription `<inbox>.*`: no per-message inbox, response channel, permit or timer, so the ack path costs one
//! message parse per event. The publisher ([`super::publisher`]) keeps the order, the fence and the timeouts; tests
//! drive it through [`Transport`] with an in-memory stream. See
//! <https://docs.nats.io/reference/reference-protocols/nats_api_reference> (publish acks) and
//! <https://docs.nats.io/using-nats/developer/develop_jetstream/model_deep_dive>.

use std::future::Future;

use async_nats::{client::PublishErrorKind, HeaderMap, StatusCode, Subject};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;

/// JetStream's error code for a failed `Nats-Expected-Last-Sequence` check.
pub const WRONG_LAST_SEQUENCE: u64 = 10071;

/// What the server answered to one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The token the message was published with.
    pub token: u64,
    /// Stored, or refused.
    pub outcome: Result<Stored, Refusal>,
}

/// The message is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Its stream sequence (for a duplicate: the sequence of the message it duplicates).
    pub sequence: u64,
    /// The stream saw its `Nats-Msg-Id` within the duplicate window and dropped it.
    pub duplicate: bool,
}

/// The server refused the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// JetStream's error code (0 when the server sent no API error, e.g. no stream for the subject).
    pub code: u64,
    /// The server's description.
    pub reason: String,
}

/// A message that could not be handed to the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    /// The client's message.
    pub reason: String,
    /// Whether the message itself was refused (too large, invalid subject) rather than the connection failing.
    pub refused: bool,
}

/// Sends messages and yields the server's replies. Replies may come in any order; the publisher matches them to its
/// messages by token.
pub trait Transport: Send {
    /// Hands one message to the connection, to be answered under `token`.
    fn publish(
        &mut self,
        token: u64,
        subject: Subject,
        headers: HeaderMap,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), SendError>> + Send;

    /// The next reply; `None` when no reply can come any more (the connection is closed). Cancel-safe.
    fn next_reply(&mut self) -> impl Future<Output = Option<Reply>> + Send;

    /// Whether the last message handed over went out in a fast batch ([`super::batch`]) rather than with its own ack.
    fn last_batched(&self) -> bool {
        false
    }

    /// How many messages went out in fast batches so far.
    fn batched(&self) -> u64 {
        0
    }
}

/// [`Transport`] over an async-nats connection: reply subjects `<inbox>.<token>`, one subscription for all replies.
pub struct NatsTransport {
    client: async_nats::Client,
    inbox: String,
    replies: async_nats::Subscriber,
}

impl NatsTransport {
    /// Subscribes to a fresh inbox for the replies.
    pub async fn new(client: &async_nats::Client) -> Result<Self, async_nats::SubscribeError> {
        let inbox = client.new_inbox();
        let replies = client.subscribe(format!("{inbox}.*")).await?;
        Ok(Self { client: client.clone(), inbox, replies })
    }
}

impl Transport for NatsTransport {
    async fn publish(
        &mut self,
        token: u64,
        subject: Subject,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), SendError> {
        let mut digits = itoa::Buffer::new();
        let token = digits.format(token);
        let mut reply = String::with_capacity(self.inbox.len() + 1 + token.len());
        reply.push_str(&self.inbox);
        reply.push('.');
        reply.push_str(token);
        let reply = Subject::from(reply);
        self.client.publish_with_reply_and_headers(subject, reply, headers, payload).await.map_err(|e| SendError {
            reason: e.to_string(),
            refused: matches!(e.kind(), PublishErrorKind::MaxPayloadExceeded | PublishErrorKind::InvalidSubject),
        })
    }

    async fn next_reply(&mut self) -> Option<Reply> {
        loop {
            let message = self.replies.next().await?;
            let token = message.subject.as_str().rsplit('.').next().and_then(|t| t.parse::<u64>().ok());
            if let Some(token) = token {
                return Some(Reply { token, outcome: parse_reply(message.status, &message.payload) });
            }
        }
    }
}

/// A publish ack or a JetStream API error, as the server sends it.
#[derive(Deserialize)]
struct AckBody {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    error: Option<ApiError>,
}

/// A JetStream API error in a reply (to a publish or a fast-batch message), as the server sends it.
#[derive(Deserialize)]
pub(super) struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal { code: e.err_code, reason: e.description }
    }
}

/// Parses one reply: a 503 status means no stream listens on the subject.
pub fn parse_reply(status: Option<StatusCode>, payload: &[u8]) -> Result<Stored, Refusal> {
    if status == Some(StatusCode::NO_RESPONDERS) {
        return Err(Refusal { code: 0, reason: "no stream found for the subject (no responders)".into() });
    }
    match serde_json::from_slice::<AckBody>(payload) {
        Ok(AckBody { error: Some(e), .. }) => Err(e.into()),
        Ok(AckBody { seq, duplicate, error: None }) if seq > 0 => Ok(Stored { sequence: seq, duplicate }),
        Ok(_) | Err(_) => Err(Refusal {
            code: 0,
            reason: format!("unexpected reply to a publish: {}", String::from_utf8_lossy(payload).escape_debug()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_acks_duplicates_and_errors() {
        assert_eq!(parse_reply(None, br#"{"stream":"S","seq":7}"#), Ok(Stored { sequence: 7, duplicate: false }));
        assert_eq!(
            parse_reply(None, br#"{"stream":"S","seq":3,"duplicate":true}"#),
            Ok(Stored { sequence: 3, duplicate: true })
        );
        let err =
            br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 4"},"stream":"S","seq":0}"#;
        assert_eq!(
            parse_reply(None, err),
            Err(Refusal { code: WRONG_LAST_SEQUENCE, reason: "wrong last sequence: 4".into() })
        );
        assert!(matches!(parse_reply(Some(StatusCode::NO_RESPONDERS), b""), Err(Refusal { code: 0, .. })));
        assert!(parse_reply(None, b"not json").is_err());
        assert!(parse_reply(None, br#"{"seq":0}"#).is_err());
    }
}
