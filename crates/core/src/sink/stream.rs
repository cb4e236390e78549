//! The JetStream side: connect, make sure the stream exists, and read its tail (the high-water mark).
//!
//! In: `--nats-url`, `--stream`, the subject template. Out: a JetStream context, a stream with file storage and a
//! duplicate window, and the [`HighWater`] mark: the stream's last sequence (for the ordering fence) and the commit
//! LSN and index of the last relayed event (for restart, design.md rule 8).
//! See <https://docs.nats.io/nats-concepts/jetstream/streams> and
//! <https://docs.nats.io/using-nats/developer/develop_jetstream/model_deep_dive#message-deduplication>.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use pgoutput::Lsn;

use crate::{
    config::Settings, mapping::event::header, mapping::subject::SubjectTemplate, sink::publisher::PublishError,
};

/// Connects to NATS (comma-separated URLs for a cluster) and returns a JetStream context.
pub async fn connect(settings: &Settings) -> Result<(async_nats::Client, jetstream::Context), PublishError> {
    let urls: Vec<async_nats::ServerAddr> =
        settings.nats_url.split(',').filter_map(|u| u.trim().parse().ok()).collect();
    let client = async_nats::ConnectOptions::new()
        .name("walrelay")
        .connection_timeout(Duration::from_secs(5))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ignore_discovered_servers()
        .connect(urls)
        .await
        .map_err(|e| PublishError::Connect {
            url: crate::config::redact_url(&settings.nats_url),
            reason: e.to_string(),
        })?;
    // With retry_on_initial_connect the call returns at once; wait (bounded) for the first connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            return Err(PublishError::Connect {
                url: crate::config::redact_url(&settings.nats_url),
                reason: "no connection within 5s".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let js = jetstream::ContextBuilder::new()
        .timeout(settings.publish_timeout)
        .max_ack_inflight(settings.max_in_flight.saturating_mul(2).max(64))
        .backpressure_on_inflight(true)
        .build(client.clone());
    Ok((client, js))
}

/// The subjects the stream must cover: the template's filter and the dead-letter subject (unless already covered).
pub fn stream_subjects(settings: &Settings) -> Vec<String> {
    let mut subjects = Vec::new();
    if let Ok(t) = SubjectTemplate::parse(&settings.subject) {
        subjects.push(t.filter());
    }
    if !subjects.iter().any(|f| crate::mapping::subject::filter_matches(f, &settings.dead_letter_subject)) {
        subjects.push(settings.dead_letter_subject.clone());
    }
    subjects
}

/// The stream configuration walrelay creates.
pub fn stream_config(settings: &Settings) -> stream::Config {
    stream::Config {
        name: settings.stream.clone(),
        subjects: stream_subjects(settings),
        storage: stream::StorageType::File,
        duplicate_window: settings.duplicate_window,
        num_replicas: settings.stream_replicas,
        description: Some("walrelay outbox events".into()),
        ..Default::default()
    }
}

/// Gets the stream, creating it when missing (unless `create` is false). Returns whether it was created.
pub async fn ensure(
    js: &jetstream::Context,
    settings: &Settings,
    create: bool,
) -> Result<(stream::Stream, bool), PublishError> {
    match js.get_stream(&settings.stream).await {
        Ok(s) => {
            let info = s.cached_info();
            let missing: Vec<String> = stream_subjects(settings)
                .into_iter()
                .filter(|want| {
                    !info
                        .config
                        .subjects
                        .iter()
                        .any(|have| crate::mapping::subject::filter_matches(have, want) || have == want)
                })
                .collect();
            if !missing.is_empty() {
                tracing::warn!(stream = %settings.stream, subjects = ?missing, "stream does not cover these subjects; publishes to them will fail");
            }
            Ok((s, false))
        }
        Err(err) if is_stream_not_found(&err) => {
            if !create {
                return Err(PublishError::MissingStream { stream: settings.stream.clone() });
            }
            let s = js
                .create_stream(stream_config(settings))
                .await
                .map_err(|e| PublishError::Stream { stream: settings.stream.clone(), reason: e.to_string() })?;
            tracing::info!(stream = %settings.stream, subjects = ?stream_subjects(settings), "stream created");
            Ok((s, true))
        }
        Err(err) => Err(PublishError::Stream { stream: settings.stream.clone(), reason: err.to_string() }),
    }
}

/// Whether a get-stream error says the stream does not exist.
pub fn is_stream_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// Where the stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HighWater {
    /// The stream's last sequence (0 when empty); the ordering fence expects the next message after it.
    pub last_sequence: u64,
    /// Number of messages in the stream.
    pub messages: u64,
    /// Commit LSN and index of the last relayed event in the stream, if any.
    pub position: Option<(Lsn, u32)>,
}

/// Reads the stream's tail: its last sequence and the position of the last relayed event.
pub async fn high_water(js: &jetstream::Context, stream_name: &str) -> Result<HighWater, PublishError> {
    let mut s = js
        .get_stream(stream_name)
        .await
        .map_err(|e| PublishError::Stream { stream: stream_name.to_owned(), reason: e.to_string() })?;
    let state = s
        .info()
        .await
        .map_err(|e| PublishError::Stream { stream: stream_name.to_owned(), reason: e.to_string() })?
        .state
        .clone();
    let mut hw = HighWater { last_sequence: state.last_sequence, messages: state.messages, position: None };
    if state.messages == 0 {
        return Ok(hw);
    }
    // Walk back from the last sequence to the newest message that carries our headers (skipping deleted ones).
    let mut seq = state.last_sequence;
    let floor = state.first_sequence.max(state.last_sequence.saturating_sub(1000));
    while seq >= floor && seq > 0 {
        match s.get_raw_message(seq).await {
            Ok(msg) => {
                let lsn = msg.headers.get(header::COMMIT_LSN).and_then(|v| v.as_str().parse::<Lsn>().ok());
                let index = msg.headers.get(header::INDEX).and_then(|v| v.as_str().parse::<u32>().ok());
                if let (Some(lsn), Some(index)) = (lsn, index) {
                    hw.position = Some((lsn, index));
                    return Ok(hw);
                }
                tracing::warn!(
                    stream = stream_name,
                    sequence = seq,
                    "stream message without Outbox-Commit-Lsn/Outbox-Index headers; looking further back"
                );
            }
            Err(err) if err.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
            Err(err) => {
                return Err(PublishError::Stream { stream: stream_name.to_owned(), reason: err.to_string() });
            }
        }
        seq -= 1;
    }
    Ok(hw)
}
