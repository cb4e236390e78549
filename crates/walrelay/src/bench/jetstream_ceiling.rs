//! The raw JetStream ceiling: how fast the relay's own publisher, with the relay's window, stores the messages the
//! relay sent when nothing else runs. The messages are rebuilt from the stream before the clock starts: the same
//! subjects, payloads and headers (names and values; the ordering fence header is the publisher's own) and the same
//! `Nats-Msg-Id`s, into a new stream with the same configuration. Messages beyond those the relay sent (the ceiling
//! uses at least [`MIN_MESSAGES`]) and the warm-up get fresh UUIDs, so deduplication never kicks in.

use std::sync::Arc;

use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use serde::Serialize;
use walrelay_core::{
    config::Settings,
    mapping::event::{header, Event, Position},
    sink::{
        batch::{self, BatchOptions},
        publisher::Publisher,
        stream,
    },
};

use super::{
    lab::{Lab, PublishMode, STREAM},
    procfs::{Mark, Throughput, Watched},
    stored::StoredMessage,
};

/// The stream the ceiling publishes into.
const RAW_STREAM: &str = "BENCH_RAW";
/// Fewest timed messages: below this, connection warm-up and the first acks dominate.
const MIN_MESSAGES: u64 = 50_000;

/// The ceiling's figures.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Ceiling {
    /// Untimed messages published (and acked) first.
    pub warmup: u64,
    /// The publisher's window (the relay's `--max-in-flight`).
    pub window: usize,
    /// How it published: as the relay did in the drain.
    pub mode: PublishMode,
    /// The timed part: messages, seconds, msgs/s, CPU of this process (the publisher) and nats-server per message.
    #[serde(flatten)]
    pub throughput: Throughput,
}

/// A message as the relay sent it.
struct WireMessage {
    id: String,
    subject: Subject,
    headers: HeaderMap,
    payload: Bytes,
}

impl WireMessage {
    /// `stored` without the fence header, with `fresh_id` as its `Nats-Msg-Id` when given.
    fn rebuild(stored: &StoredMessage, fresh_id: Option<&String>) -> anyhow::Result<Self> {
        let id = match fresh_id {
            Some(id) => id.clone(),
            None => stored.header(header::MSG_ID).ok_or_else(|| anyhow::anyhow!("a stored message has no id"))?.into(),
        };
        let mut headers = HeaderMap::new();
        for (name, values) in stored.headers.iter() {
            match <_ as AsRef<str>>::as_ref(name) {
                header::EXPECTED_LAST_SEQUENCE => {}
                header::MSG_ID => headers.insert(header::MSG_ID, id.as_str()),
                _ => values.iter().for_each(|value| headers.append(name.clone(), value.clone())),
            }
        }
        Ok(Self { id, subject: stored.subject.clone(), headers, payload: stored.payload.clone() })
    }
}

/// Measures the ceiling with the messages the relay `sent` (in stream order). Deletes the relay's stream first:
/// JetStream streams cannot share subjects.
pub(super) async fn measure(lab: &Lab, sent: &[StoredMessage], mode: PublishMode) -> anyhow::Result<Ceiling> {
    anyhow::ensure!(!sent.is_empty(), "no relayed messages to rebuild");
    let len = sent.len() as u64;
    let count = len.max(MIN_MESSAGES);
    let warmup = count / 10;
    let fresh = fresh_uuids(&lab.control, warmup + count - len).await?;
    let mut fresh = fresh.iter();
    let nth = |i: u64| &sent[usize::try_from(i % len).unwrap_or_default()];
    let mut messages = Vec::with_capacity(usize::try_from(warmup + count)?);
    for i in 0..warmup {
        messages.push(WireMessage::rebuild(nth(i), fresh.next())?);
    }
    for i in 0..count {
        messages.push(WireMessage::rebuild(nth(i), if i < len { None } else { fresh.next() })?);
    }

    lab.js.delete_stream(STREAM).await?;
    let mut raw = lab.settings.clone();
    raw.stream = RAW_STREAM.into();
    stream::ensure(&lab.js, &raw, true).await?;
    let watched: Vec<Watched> = [Some(Watched::this("publisher")), Watched::some("nats_server", lab.nats_pid())]
        .into_iter()
        .flatten()
        .collect();
    let window = raw.max_in_flight;
    let (first, last) = publish(&lab.nats_client, &raw, messages, warmup, &watched, mode).await?;
    let stored = lab.stream_count(RAW_STREAM).await;
    anyhow::ensure!(stored == warmup + count, "stream {RAW_STREAM} holds {stored} messages, {} sent", warmup + count);
    lab.js.delete_stream(RAW_STREAM).await?;
    Ok(Ceiling { warmup, window, mode, throughput: Throughput::between(&first, &last) })
}

/// Publishes `messages` through the relay's [`Publisher`] (fenced, as `run` publishes, in fast batches when `mode`
/// says so) with the relay's window and publish timeout from `settings`; the first `warmup` are sent and acked before the first mark. Returns the marks
/// around the timed part. The one place that knows the publisher's API.
async fn publish(
    client: &async_nats::Client,
    settings: &Settings,
    messages: Vec<WireMessage>,
    warmup: u64,
    watched: &[Watched],
    mode: PublishMode,
) -> anyhow::Result<(Mark, Mark)> {
    let table: Arc<str> = Arc::from("public.outbox");
    let position = Position { commit_lsn: pgoutput::Lsn::ZERO, index: 0 };
    let events: Vec<Event> = messages
        .into_iter()
        .map(|m| Event {
            id: m.id,
            subject: m.subject,
            headers: m.headers,
            payload: m.payload,
            position,
            table: table.clone(),
            dead_letter: false,
        })
        .collect();
    let total = events.len() as u64;
    let window = settings.max_in_flight;
    let options =
        BatchOptions { enabled: mode == PublishMode::FastBatch, flow: batch::flow_for(window), per_message_first: 0 };
    let mut publisher = Publisher::fast_batch(client, 0, settings.publish_timeout, options).await?;
    let mut first = None;
    for (i, event) in (0u64..).zip(events) {
        if i == warmup {
            while publisher.in_flight() > 0 {
                publisher.next_ack().await?;
            }
            first = Some(Mark::take(watched, 0));
        }
        while publisher.in_flight() >= window {
            publisher.next_ack().await?;
        }
        publisher.send(event, ()).await?;
    }
    while publisher.in_flight() > 0 {
        publisher.next_ack().await?;
    }
    let last = Mark::take(watched, total - warmup);
    Ok((first.ok_or_else(|| anyhow::anyhow!("nothing to time after the warm-up"))?, last))
}

/// `n` UUIDs from Postgres' `gen_random_uuid()`, the relay's ids' kind.
async fn fresh_uuids(control: &tokio_postgres::Client, n: u64) -> anyhow::Result<Vec<String>> {
    let n = i64::try_from(n)?;
    let rows = control.query("SELECT gen_random_uuid()::text FROM generate_series(1, $1::bigint)", &[&n]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
