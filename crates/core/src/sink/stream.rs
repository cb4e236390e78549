//! The JetStream side: connect, make sure the stream exists, and read its tail (the high-water mark).
//!
//! In: `--nats-url`, `--stream`, the subject template. Out: a JetStream context, a stream with file storage and a
//! duplicate window, and the [`HighWater`] mark: the stream's last sequence (for the ordering fence) and the commit
//! LSN and index of the last relayed event (for restart, design.md rule 8).
//! See <https://docs.nats.io/nats-concepts/jetstream/streams> and
//! <https://docs.nats.io/using-nats/developer/develop_jetstream/model_deep_dive#message-deduplication>.

use async_nats::jetstream::{self, stream};
use pgoutput::Lsn;

use crate::{
    config::Settings,
    mapping::event::{header, Position},
    sink::{connect::Rejection, publisher::PublishError},
};

/// Connects to NATS (comma-separated URLs for a cluster) with the configured authentication and TLS, and returns a
/// JetStream context. Every command connects through here; a failure is classified by
/// [`NatsOptions::connect`](crate::config::nats::NatsOptions::connect).
pub async fn connect(settings: &Settings) -> Result<(async_nats::Client, jetstream::Context), PublishError> {
    connect_watched(settings).await.map(|(client, js, _)| (client, js))
}

/// [`connect`], and a [`Rejection`] that resolves if the server later rejects the credentials (for `run`, which stays
/// connected).
pub async fn connect_watched(
    settings: &Settings,
) -> Result<(async_nats::Client, jetstream::Context, Rejection), PublishError> {
    let (client, rejection) = settings.nats.connect_watched().await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(settings.publish_timeout)
        .max_ack_inflight(settings.max_in_flight.saturating_mul(2).max(64))
        .backpressure_on_inflight(true)
        .build(client.clone());
    Ok((client, js, rejection))
}

/// The subjects the stream must cover: the template's filter and the dead-letter subject (unless already covered).
pub fn stream_subjects(settings: &Settings) -> Vec<String> {
    let mut subjects = vec![settings.subject.filter()];
    if !subjects.iter().any(|f| crate::mapping::subject::filter_matches(f, &settings.dead_letter_subject)) {
        subjects.push(settings.dead_letter_subject.clone());
    }
    subjects
}

/// The stream configuration walrelay creates on a server of `server_version`: with `allow_batched` (fast-batch
/// publishing, [`super::batch`]) where the server has it and `--nats-batch` is not `off`.
pub fn stream_config(settings: &Settings, server_version: &str) -> stream::Config {
    stream::Config {
        allow_batch_publish: settings.nats_batch == crate::config::NatsBatch::Auto
            && super::batch::server_supports(server_version),
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
            let version = js.client().server_info().version;
            let s = match js.create_stream(stream_config(settings, &version)).await {
                Ok(s) => s,
                Err(err)
                    if matches!(err.kind(), jetstream::context::CreateStreamErrorKind::JetStream(e)
                        if e.error_code() == jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP) =>
                {
                    return Err(overlap(js, settings).await);
                }
                Err(err) => {
                    return Err(PublishError::Stream { stream: settings.stream.clone(), reason: err.to_string() })
                }
            };
            let allow_batched = s.cached_info().config.allow_batch_publish;
            tracing::info!(stream = %settings.stream, subjects = ?stream_subjects(settings), allow_batched, "stream created");
            Ok((s, true))
        }
        Err(err) => Err(PublishError::Stream { stream: settings.stream.clone(), reason: err.to_string() }),
    }
}

/// Explains a subject overlap (JetStream error 10065): which subject of ours another stream already covers, and
/// which option moves it.
async fn overlap(js: &jetstream::Context, settings: &Settings) -> PublishError {
    use futures::TryStreamExt;
    let ours = stream_subjects(settings);
    let others = js.streams().try_collect::<Vec<_>>().await.unwrap_or_default();
    let clashes: Vec<(&String, &str, &String)> = others
        .iter()
        .flat_map(|other| other.config.subjects.iter().map(move |theirs| (other.config.name.as_str(), theirs)))
        .flat_map(|(name, theirs)| {
            ours.iter().filter(|mine| subjects_overlap(mine, theirs)).map(move |mine| (mine, name, theirs))
        })
        .collect();
    let what = if clashes.is_empty() {
        ours.join(", ")
    } else {
        let named: Vec<String> =
            clashes.iter().map(|(mine, name, theirs)| format!("{mine} (stream {name} holds {theirs})")).collect();
        named.join(", ")
    };
    let remedy = if clashes.iter().any(|(mine, ..)| **mine == settings.dead_letter_subject) {
        "choose another --dead-letter-subject, e.g. one under this stream's own --subject prefix"
    } else {
        "choose a --subject whose subjects no other stream holds, or relay into that stream with --stream"
    };
    PublishError::Stream {
        stream: settings.stream.clone(),
        reason: format!("its subjects overlap with an existing stream's: {what}; {remedy}"),
    }
}

/// Whether two subject filters can match a common subject.
fn subjects_overlap(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (a.split('.'), b.split('.'));
    loop {
        match (x.next(), y.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(p), Some(q)) if p == "*" || q == "*" || p == q => {}
            (None, None) => return true,
            _ => return false,
        }
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
    /// Position (commit LSN and index) of the last event `run` relayed into the stream, if any.
    pub position: Option<Position>,
    /// The stream sequence of the message at `position` (0 when there is none).
    pub sequence: u64,
    /// Whether that last event is a backfilled row (`Outbox-Backfill`, design.md §4f): its position is the slot's
    /// consistent point and its rank, not a streamed transaction's.
    pub backfill: bool,
}

impl HighWater {
    /// Whether the event at `p` is already in the stream: at or before the high-water mark. The one "already in
    /// the stream" test, used by `run` (which skips such events after a restart, design.md rule 8) and `peek`.
    ///
    /// After a backfill the mark is (consistent point, rank). The slot streams only transactions whose commit
    /// record starts at or after its consistent point (the walsender skips those that start before
    /// `confirmed_flush`), and one can start exactly there (the record right after the one that made the snapshot
    /// consistent), so no streamed event is held by a backfilled mark: `p <= hw` would drop the first transaction's
    /// first events.
    pub fn holds(&self, p: Position) -> bool {
        match self.position {
            Some(hw) if self.backfill => p.commit_lsn < hw.commit_lsn,
            Some(hw) => p <= hw,
            None => false,
        }
    }
}

/// Where the event a stream message carries sits in the WAL (its `Outbox-Commit-Lsn` and `Outbox-Index`), if it
/// carries both.
pub(crate) fn message_position(headers: &async_nats::HeaderMap) -> Option<Position> {
    let commit_lsn = headers.get(header::COMMIT_LSN)?.as_str().parse::<Lsn>().ok()?;
    let index = headers.get(header::INDEX)?.as_str().parse::<u32>().ok()?;
    Some(Position { commit_lsn, index })
}

/// The position of the event stream message `sequence` carries: `Ok(None)` when it carries none or is gone.
pub async fn position_at(
    js: &jetstream::Context,
    stream_name: &str,
    sequence: u64,
) -> Result<Option<Position>, PublishError> {
    let failed = |e: String| PublishError::Stream { stream: stream_name.to_owned(), reason: e };
    let s = js.get_stream(stream_name).await.map_err(|e| failed(e.to_string()))?;
    match s.get_raw_message(sequence).await {
        Ok(msg) => Ok(message_position(&msg.headers)),
        Err(err) if err.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(err) => Err(failed(err.to_string())),
    }
}

/// A message as a durability check sees it: its `Nats-Msg-Id` and when the stream stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldMessage {
    /// Its `Nats-Msg-Id`, if it has one.
    pub id: Option<String>,
    /// When the stream stored it (the server's clock).
    pub stored_at: std::time::SystemTime,
    /// The message is gone but the stream's last sequence still reaches it: removed on purpose (a limit such as
    /// `max_age`, a work-queue or interest ack, a purge or delete), not lost with an unsynced tail, which takes the
    /// last sequence down with it. Such a check passes: the message was stored, and a lost tail would show.
    pub removed: bool,
}

impl HeldMessage {
    /// Whether this is the message the relay stored as `id` (async-nats trims header values it reads back, so the
    /// id is compared trimmed), or one removed on purpose after it was stored.
    pub fn is(&self, id: &str) -> bool {
        self.removed || self.id.as_deref() == Some(id.trim())
    }
}

/// Reads which message a stream holds at a sequence: the I/O half of `--nats-sync-interval` (design.md §4d), which
/// the relay's session runs beside its loop (a `'static` future, so the loop goes on while it waits). The in-memory
/// stream implements it too, for the loop's unit tests.
pub trait Probe: Send + Sync {
    /// The message at `sequence`: `Ok(None)` when the stream holds none there (deleted, or beyond its last
    /// sequence).
    fn message_at(
        &self,
        sequence: u64,
    ) -> futures::future::BoxFuture<'static, Result<Option<HeldMessage>, PublishError>>;
}

/// [`Probe`] over a JetStream stream: one `STREAM.MSG.GET` request per check.
pub struct StreamProbe {
    stream: stream::Stream,
}

impl StreamProbe {
    /// A probe of `stream` (as [`ensure`] returned it).
    pub fn new(stream: stream::Stream) -> Self {
        Self { stream }
    }
}

impl Probe for StreamProbe {
    fn message_at(
        &self,
        sequence: u64,
    ) -> futures::future::BoxFuture<'static, Result<Option<HeldMessage>, PublishError>> {
        let s = self.stream.clone();
        Box::pin(async move {
            match s.get_raw_message(sequence).await {
                Ok(msg) => Ok(Some(HeldMessage {
                    id: msg.headers.get(header::MSG_ID).map(|v| v.as_str().to_owned()),
                    stored_at: msg.time.into(),
                    removed: false,
                })),
                Err(err) if err.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                    // Lost with a tail, or removed on purpose? The last sequence tells (one more request, only here).
                    let mut s = s;
                    match s.info().await {
                        Ok(info) if info.state.last_sequence >= sequence => {
                            Ok(Some(HeldMessage { id: None, stored_at: std::time::SystemTime::now(), removed: true }))
                        }
                        Ok(_) => Ok(None),
                        Err(err) => Err(PublishError::Stream {
                            stream: s.cached_info().config.name.clone(),
                            reason: err.to_string(),
                        }),
                    }
                }
                Err(err) => {
                    Err(PublishError::Stream { stream: s.cached_info().config.name.clone(), reason: err.to_string() })
                }
            }
        })
    }
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
    let mut hw = HighWater {
        last_sequence: state.last_sequence,
        messages: state.messages,
        position: None,
        sequence: 0,
        backfill: false,
    };
    if state.messages == 0 {
        return Ok(hw);
    }
    // Walk back from the last sequence to the newest message `run` published (skipping deleted ones, at most 1000
    // foreign ones, and every message `replay` published: a replay must not move run's high-water mark backwards).
    let mut seq = state.last_sequence;
    let mut foreign = 0u32;
    while seq >= state.first_sequence && seq > 0 && foreign <= 1000 {
        match s.get_raw_message(seq).await {
            Ok(msg) if msg.headers.get(header::REPLAYED_AT).is_some() => {}
            Ok(msg) => {
                if let Some(position) = message_position(&msg.headers) {
                    hw.position = Some(position);
                    hw.sequence = seq;
                    hw.backfill = msg.headers.get(header::BACKFILL).is_some();
                    return Ok(hw);
                }
                foreign += 1;
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

#[cfg(test)]
mod tests {
    use super::{subjects_overlap, HeldMessage, HighWater, Lsn, Position};

    #[test]
    fn a_durability_check_matches_the_trimmed_id_or_a_message_removed_on_purpose() {
        let held = |id: Option<&str>, removed| HeldMessage {
            id: id.map(str::to_owned),
            stored_at: std::time::SystemTime::now(),
            removed,
        };
        // async-nats trims header values it reads back: an id published with padding is still this message.
        assert!(held(Some("a1"), false).is("a1  "));
        assert!(held(Some("a1"), false).is("a1"));
        assert!(!held(Some("b2"), false).is("a1"), "another message at the sequence is a loss");
        assert!(!held(None, false).is("a1"));
        // Gone while the stream's last sequence still reaches it: max_age, a work-queue ack, a purge.
        assert!(held(None, true).is("a1"));
    }

    #[test]
    fn a_backfilled_mark_holds_no_streamed_event() {
        let at = |lsn: u64, index: u32| Position { commit_lsn: Lsn(lsn), index };
        let backfilled =
            HighWater { last_sequence: 5, messages: 5, position: Some(at(0x100, 4)), sequence: 5, backfill: true };
        // A transaction whose commit record starts at the consistent point itself is streamed, and new.
        assert!(!backfilled.holds(at(0x100, 0)));
        assert!(!backfilled.holds(at(0x100, 7)));
        assert!(!backfilled.holds(at(0x180, 0)));
        assert!(backfilled.holds(at(0xFF, 9)));
        // A streamed mark holds what is at or before it.
        let streamed = HighWater { backfill: false, ..backfilled };
        assert!(streamed.holds(at(0x100, 4)));
        assert!(!streamed.holds(at(0x100, 5)));
    }

    #[test]
    fn overlapping_filters() {
        assert!(subjects_overlap("outbox.*.*", "outbox.order.*"));
        assert!(subjects_overlap("outbox.dead-letter", "outbox.>"));
        assert!(subjects_overlap("outbox.dead-letter", "outbox.dead-letter"));
        assert!(!subjects_overlap("outbox.dead-letter", "outbox.*.*"));
        assert!(!subjects_overlap("replay.*.*", "outbox.*.*"));
    }
}
