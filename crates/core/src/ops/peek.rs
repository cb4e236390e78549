//! `walrelay peek`: the next pending events, decoded and mapped exactly as `run` would publish them, without
//! consuming them.
//!
//! In: the settings, a limit. Out: one line per event (human or NDJSON per design.md §4); like `run`, events the
//! stream already holds are not pending, and the NATS server's max_payload applies. The events are read from a
//! throwaway copy of the slot (see [`super::history`]) up to the WAL position at the time of the call, so the slot's
//! `confirmed_flush_lsn` is unchanged, also while `run` holds it. A reader that goes away (`peek | head`) ends the
//! output quietly (exit 0), and the copy is dropped on that path too.

use crate::{
    config::Settings,
    relay::RelayError,
    sink::stream,
    source::slot,
    source::transaction::Assembler,
    source::{self, SourceError},
};

use super::history::{self, HistoryReader, Item, Output, Range, SlotCopy};

/// Prints up to `limit` pending events.
pub async fn run(settings: &Settings, limit: usize, json: bool) -> Result<(), RelayError> {
    let (control, host) = source::connect_host(&settings.pg_url).await?;
    let info = slot::info(&control, &settings.slot).await?.ok_or_else(|| SourceError::MissingSlot {
        slot: settings.slot.clone(),
        server: settings.pg_url.server_at(&host),
        detail: String::new(),
    })?;
    info.check()?;
    let copy = SlotCopy::create(&control, &host, &settings.slot, "peek").await?;
    let result = tokio::select! {
        result = show(settings, &control, &copy, limit, json) => result,
        () = history::stop_requested() => Ok(()),
    };
    copy.remove(&control).await;
    result
}

async fn show(
    settings: &Settings,
    control: &tokio_postgres::Client,
    copy: &SlotCopy,
    limit: usize,
    json: bool,
) -> Result<(), RelayError> {
    let mut shown = 0usize;
    let mut out = Output::default();
    if limit > 0 {
        pending(settings, control, copy, Stream::IfReachable, |item| {
            if !out.line(&item_line(item, json)) {
                // The reader went away (`peek | head`): a quiet end, the copy is dropped by the caller.
                return false;
            }
            shown += 1;
            shown < limit
        })
        .await?;
    }
    if !json && !out.closed() {
        out.line(&match shown {
            0 => format!("no pending events (slot {} confirmed at {})", settings.slot, copy.confirmed_flush),
            n if n >= limit => format!("{n} pending events shown; there may be more (raise --limit)"),
            n => format!("{n} pending event{}", if n == 1 { "" } else { "s" }),
        });
    }
    Ok(())
}

/// How [`pending`] treats NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stream {
    /// Checks what the stream holds when NATS answers; an unreachable server or a failed tail read only skips
    /// that check (`peek`, `teardown`).
    IfReachable,
    /// What the stream holds must be known: any NATS failure ends the command (`skip`, which must not pass an
    /// event the stream already holds a record for).
    Required,
}

/// Visits the pending events of a slot copy in commit order, up to the WAL position of the call, until `visit`
/// returns false. Like `run`: events the stream already holds are not pending, and the server's max_payload
/// applies (both only when NATS answers, unless `stream` is [`Stream::Required`]).
pub(super) async fn pending(
    settings: &Settings,
    control: &tokio_postgres::Client,
    copy: &SlotCopy,
    stream_check: Stream,
    mut visit: impl FnMut(Item) -> bool,
) -> Result<(), RelayError> {
    let end = history::end_marker(control).await?;
    if end <= copy.confirmed_flush {
        return Ok(());
    }
    let range = Range { start: copy.confirmed_flush, last_commit: None, end };
    let mut assembler = Assembler::new(settings)?;
    let mut stored = stream::HighWater::default();
    match stream::connect(settings).await {
        Ok((client, js)) => {
            assembler.set_max_payload(client.server_info().max_payload);
            stored = match stream::high_water(&js, &settings.stream).await {
                Ok(hw) => hw,
                Err(err) if stream_check == Stream::Required => return Err(err.into()),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the stream's tail: not checking what it already holds");
                    stream::HighWater::default()
                }
            };
        }
        // Rejected credentials or a failed TLS handshake end the command; an unreachable server only this check.
        Err(err) if !err.is_transient() || stream_check == Stream::Required => return Err(err.into()),
        Err(err) => tracing::warn!(error = %err, "nats not connected: not checking what the stream already holds"),
    }
    let mut reader = HistoryReader::open(settings, copy, range, assembler).await?;
    let result = async {
        while let Some(item) = reader.next(settings).await? {
            let position = match &item {
                Item::Event(e) => e.position,
                Item::Invalid(i) => i.position,
            };
            if stored.holds(position) {
                continue;
            }
            if !visit(item) {
                break;
            }
        }
        Ok::<_, RelayError>(())
    }
    .await;
    reader.close().await;
    result
}

/// The line `peek` prints for an item.
fn item_line(item: Item, json: bool) -> String {
    let event = match item {
        Item::Event(event) => *event,
        Item::Invalid(invalid) if json => return history::invalid_json(&invalid),
        Item::Invalid(invalid) => {
            return format!(
                "{} #{} {} INVALID id={}: {} (run stops here: `walrelay skip --through {}:{}`, or --on-invalid dead-letter)",
                invalid.position.commit_lsn,
                invalid.position.index,
                invalid.commit_time,
                invalid.id,
                invalid.reason,
                invalid.position.commit_lsn,
                invalid.position.index
            )
        }
    };
    if json {
        return history::event_json(&event);
    }
    let payload = String::from_utf8_lossy(&event.payload);
    let payload: String = if payload.chars().count() > 120 {
        payload.chars().take(117).chain("...".chars()).collect()
    } else {
        payload.into_owned()
    };
    format!(
        "{} #{} {} {} id={} {}",
        event.position.commit_lsn,
        event.position.index,
        event.commit_time(),
        event.subject,
        event.id,
        payload
    )
}
