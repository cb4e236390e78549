//! Reading back what the relay stored: subject, headers, payload and JetStream's store time of each message, through
//! an ordered pull consumer (<https://docs.nats.io/nats-concepts/jetstream/consumers>).

use std::time::{Duration, SystemTime};

use async_nats::{
    jetstream::{self, consumer},
    HeaderMap, Subject,
};
use bytes::Bytes;
use futures::StreamExt as _;

/// Longest wait for the next message of the read.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One stored message.
#[derive(Debug, Clone)]
pub(super) struct StoredMessage {
    /// Subject.
    pub subject: Subject,
    /// Headers as stored (the relay's, including its ordering fence header).
    pub headers: HeaderMap,
    /// Data.
    pub payload: Bytes,
    /// When JetStream stored it.
    pub stored_at: SystemTime,
}

impl StoredMessage {
    /// A header's first value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }
}

/// Messages `first..first + count` of `stream`, in sequence order.
pub(super) async fn read(
    js: &jetstream::Context,
    stream: &str,
    first: u64,
    count: u64,
) -> anyhow::Result<Vec<StoredMessage>> {
    let mut out = Vec::with_capacity(usize::try_from(count)?);
    if count == 0 {
        return Ok(out);
    }
    let consumer = js
        .get_stream(stream)
        .await?
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: first },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while (out.len() as u64) < count {
        let Ok(next) = tokio::time::timeout(READ_TIMEOUT, messages.next()).await else {
            anyhow::bail!("stream {stream}: read {} of {count} messages, then nothing for {READ_TIMEOUT:?}", out.len());
        };
        let msg = next
            .ok_or_else(|| anyhow::anyhow!("stream {stream}: the consumer ended"))?
            .map_err(|e| anyhow::anyhow!(e))?;
        let stored_at: SystemTime = msg.info().map_err(|e| anyhow::anyhow!(e))?.published.into();
        let async_nats::Message { subject, headers, payload, .. } = msg.message;
        out.push(StoredMessage { subject, headers: headers.unwrap_or_default(), payload, stored_at });
    }
    Ok(out)
}
