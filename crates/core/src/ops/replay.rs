//! `walrelay replay --from LSN [--to LSN] [--stdout]`: re-send the events of every transaction whose commit LSN is
//! ≥ from (and ≤ to).
//!
//! In: the settings and the range; the history comes from the trailing slot `<slot>_replay` kept by
//! `run --replay-retention` (or, without it, from the main slot, which only holds what is not yet confirmed).
//! Out: the events, with the ids, subjects and headers `run` gave them, published to the stream in commit order, or
//! printed as NDJSON (design.md §4). Neither slot moves: a throwaway copy is read (see [`super::history`]).
//!
//! JetStream drops a message whose `Nats-Msg-Id` it saw within the stream's duplicate window, so a replay into the
//! stream that already holds the events only stores those older than the window; replay into an empty (or new)
//! stream, or after the window has passed. Every replayed message carries `Outbox-Replayed-At`, which the tail read
//! of `run` skips, and into a stream replay re-sends only what `run` already relayed, so `run`'s high-water mark
//! never moves backwards and nothing pending is published by both. See
//! <https://docs.nats.io/using-nats/developer/develop_jetstream/model_deep_dive#message-deduplication>.

use std::{io::IsTerminal, time::SystemTime};

use async_nats::{header::HeaderName, HeaderValue};
use pgoutput::Lsn;

use crate::{
    config::{OnInvalid, Settings},
    mapping::event::{header, header_value, Event, Position},
    mapping::outbox::{commit_time_rfc3339, pg_micros},
    relay::RelayError,
    sink::publisher::Publisher,
    sink::stream,
    source::slot,
    source::transaction::Assembler,
    source::{self, SourceError},
};

use super::history::{self, HistoryReader, Item, Output, Range, SlotCopy};

/// Replays `[from, to]` to the stream, or to stdout as NDJSON.
pub async fn run(settings: &Settings, from: Lsn, to: Option<Lsn>, stdout: bool) -> Result<(), RelayError> {
    let (control, host) = source::connect_host(&settings.pg_url).await?;
    let replay_slot = settings.replay_slot();
    let (source_slot, info) = match slot::info(&control, &replay_slot).await? {
        Some(info) => (replay_slot, info),
        None => {
            let info = slot::info(&control, &settings.slot).await?.ok_or_else(|| SourceError::MissingSlot {
                slot: replay_slot.clone(),
                server: settings.pg_url.server_at(&host),
                detail: format!(
                    " (nor does {}; replay needs the slot kept by `walrelay run --replay-retention`)",
                    settings.slot
                ),
            })?;
            tracing::warn!(slot = %replay_slot, "no replay slot (start run with --replay-retention); only unconfirmed history of the main slot can be replayed");
            (settings.slot.clone(), info)
        }
    };
    info.check()?;
    let oldest = info.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
    if from < oldest {
        return Err(SourceError::ReplayOutOfRange { from, oldest, slot: source_slot }.into());
    }
    let copy = SlotCopy::create(&control, &host, &source_slot, "copy").await?;
    if from < copy.confirmed_flush {
        let oldest = copy.confirmed_flush;
        copy.remove(&control).await;
        return Err(SourceError::ReplayOutOfRange { from, oldest, slot: source_slot }.into());
    }
    let result = tokio::select! {
        result = replay(settings, &control, &copy, from, to, stdout) => result,
        () = history::stop_requested() => {
            eprintln!("replay interrupted");
            Ok(())
        }
    };
    copy.remove(&control).await;
    result
}

async fn replay(
    settings: &Settings,
    control: &tokio_postgres::Client,
    copy: &SlotCopy,
    from: Lsn,
    to: Option<Lsn>,
    stdout: bool,
) -> Result<(), RelayError> {
    let end = history::end_marker(control).await?;
    // An invalid event reached the stream as its dead-letter record (`run --on-invalid dead-letter` or `skip`
    // published it): replay sends that record, whatever this invocation's --on-invalid says.
    let mut assembler = Assembler::new(&Settings { on_invalid: OnInvalid::DeadLetter, ..settings.clone() })?;
    // Into a stream `run` writes, replay re-sends only what run already relayed: events the stream holds from run
    // (its high-water mark, replayed copies skipped) or that the main slot confirmed. Later ones are run's to publish;
    // a replayed copy of one would be dropped as a duplicate of run's publish and wedge its ordering fence.
    let mut relayed = None;
    let mut sink = if stdout {
        Sink::Stdout(Output::default())
    } else {
        let (client, js) = stream::connect(settings).await?;
        stream::ensure(&js, settings, !settings.no_create).await?;
        assembler.set_max_payload(client.server_info().max_payload);
        let hw = stream::high_water(&js, &settings.stream).await?.position;
        let confirmed = slot::info(control, &settings.slot).await?.and_then(|i| i.confirmed_flush_lsn);
        relayed = Some(Relayed { hw, confirmed });
        Sink::Stream(Box::new(StreamSink {
            // Without the fence: the stream may hold messages of others, and `run` may be writing to it.
            publisher: Publisher::unfenced(&client, settings.publish_timeout).await?,
            window: settings.max_in_flight,
            replayed_at: header_value(&commit_time_rfc3339(pg_micros(SystemTime::now()))).unwrap_or_default(),
            stored: 0,
            duplicates: 0,
            _client: client,
        }))
    };
    let range = Range { start: from, last_commit: to, end };
    let mut reader = HistoryReader::open(settings, copy, range, assembler).await?;
    let progress = progress_bar(end.0.saturating_sub(from.0));
    let mut count = 0u64;
    let mut pending_from = None;
    let result = async {
        while let Some(item) = reader.next(settings).await? {
            let event = match item {
                Item::Event(event) => *event,
                Item::Invalid(invalid) => return Err(RelayError::Invalid(invalid)),
            };
            if relayed.as_ref().is_some_and(|r| !r.covers(event.position)) {
                pending_from = Some(event.position);
                break;
            }
            let at = event.position.commit_lsn;
            if !sink.send(event).await? {
                // The reader of stdout went away (`replay --stdout | head`): a quiet end.
                break;
            }
            count += 1;
            if let Some(bar) = &progress {
                bar.set_position(reader.position.0.saturating_sub(from.0));
                bar.set_message(format!("{count} events, at {at}"));
            }
        }
        sink.finish().await
    }
    .await;
    reader.close().await;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    result?;
    let bound = to.map(|t| format!(" to {t}")).unwrap_or_default();
    if let Some(at) = pending_from {
        eprintln!(
            "replay stopped at event {at}: it and later events are not relayed yet (not in this stream from run, nor \
             confirmed by slot {}); `walrelay run` publishes them (replay only re-sends what run already relayed)",
            settings.slot
        );
    }
    if count == 0 && pending_from.is_none() && !matches!(&sink, Sink::Stdout(out) if out.closed()) {
        eprintln!("{}", empty_range_hint(from, to, end, &copy.source, copy.confirmed_flush));
    }
    match &sink {
        Sink::Stdout(out) if out.closed() => {
            tracing::debug!(count, "stdout closed by its reader; replay ends there");
        }
        Sink::Stdout(_) => eprintln!("replayed {count} events from {from}{bound}"),
        Sink::Stream(s) => eprintln!(
            "replayed {count} events from {from}{bound} into stream {}: {} stored, {} dropped as duplicates (Nats-Msg-Id seen within the duplicate window)",
            settings.stream, s.stored, s.duplicates
        ),
    }
    Ok(())
}

/// Why a replay found nothing, and where to look for an LSN that holds events.
fn empty_range_hint(from: Lsn, to: Option<Lsn>, end: Lsn, source: &str, oldest: Lsn) -> String {
    format!(
        "hint: no transaction with an outbox event commits between {from} and {}; --from and --to take commit LSNs, \
         as the Outbox-Commit-Lsn header of every relayed message shows them (`walrelay status` shows the stream's \
         last one); slot {source} holds history from {oldest} on",
        to.map_or_else(|| format!("{end} (the server's WAL position)"), |t| t.to_string())
    )
}

/// What `run` already relayed, as far as replay can tell before it starts.
struct Relayed {
    /// The stream's high-water mark (the last message run published).
    hw: Option<Position>,
    /// The main slot's `confirmed_flush_lsn`: transactions whose commit starts below it are done.
    confirmed: Option<Lsn>,
}

impl Relayed {
    /// Whether `p` may be replayed: only what `run` relayed (the stream's high-water mark, or the main slot's
    /// confirmed position), never what it has still to publish.
    fn covers(&self, p: Position) -> bool {
        match self.hw {
            // No message of run's in the stream (new, purged or aged out, or only replayed copies): what the main
            // slot confirmed, or everything when there is no main slot (no run to publish anything).
            None => self.confirmed.is_none_or(|c| p.commit_lsn < c),
            Some(hw) => p <= hw || self.confirmed.is_some_and(|c| p.commit_lsn < c),
        }
    }
}

/// A progress bar on stderr when it is a terminal.
fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total.max(1));
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {binary_bytes}/{binary_total_bytes} of WAL  {msg}")
    {
        bar.set_style(style);
    }
    Some(bar)
}

/// Where replayed events go.
enum Sink {
    Stdout(Output),
    Stream(Box<StreamSink>),
}

/// The publisher, marking every message `Outbox-Replayed-At`, with `--max-in-flight` acks outstanding at most.
struct StreamSink {
    publisher: Publisher<()>,
    window: usize,
    /// The `Outbox-Replayed-At` marker every replayed message carries.
    replayed_at: HeaderValue,
    stored: u64,
    duplicates: u64,
    _client: async_nats::Client,
}

impl Sink {
    /// Sends one event; false when stdout's reader went away (nothing more can be printed).
    async fn send(&mut self, mut event: Event) -> Result<bool, RelayError> {
        match self {
            Self::Stdout(out) => Ok(out.line(&history::event_json(&event))),
            Self::Stream(s) => {
                if s.publisher.in_flight() >= s.window {
                    s.take_ack().await?;
                }
                event.headers.insert(HeaderName::from_static(header::REPLAYED_AT), s.replayed_at.clone());
                s.publisher.send(event, ()).await?;
                Ok(true)
            }
        }
    }

    async fn finish(&mut self) -> Result<(), RelayError> {
        if let Self::Stream(s) = self {
            while s.publisher.in_flight() > 0 {
                s.take_ack().await?;
            }
        }
        Ok(())
    }
}

impl StreamSink {
    async fn take_ack(&mut self) -> Result<(), RelayError> {
        if self.publisher.next_ack().await?.duplicate {
            self.duplicates += 1;
        } else {
            self.stored += 1;
        }
        Ok(())
    }
}
