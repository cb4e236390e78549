//! `walrelay skip --through <commit_lsn>:<index>`: let `run` go on past the one event it stopped on.
//!
//! In: the settings and the position of the event `run` named when it stopped (`--on-invalid stop`). Out: a
//! dead-letter record for exactly that event, published to the stream as the next message, as
//! `--on-invalid dead-letter` would have published it. The record carries the event's `Outbox-Commit-Lsn` and
//! `Outbox-Index`, so the next `run` starts after it (design.md rule 8) and relays everything that follows.
//!
//! Why not fix the row: the insert is in the WAL, and the WAL is what `run` reads; an UPDATE of the row changes
//! nothing that is relayed. Skipping is safe only for the first pending event: publishing a record for a later one
//! would move the stream's high-water mark past events that were never published, so any other position is
//! refused, naming the one that is next.

use async_nats::Subject;

use crate::{
    config::{OnInvalid, Settings},
    mapping::event::Position,
    relay::RelayError,
    sink::publisher::{Publisher, ADDED_HEADERS_MAX},
    sink::stream,
    source::slot,
    source::{self, SourceError},
};

use super::history::{Item, SlotCopy};

/// Publishes a dead-letter record for the pending event at `through`.
pub async fn run(settings: &Settings, through: Position) -> Result<(), RelayError> {
    let refused = |reason: String| SourceError::Refused { action: format!("skip --through {through}"), reason };
    let (control, host) = source::connect_host(&settings.pg_url).await?;
    let info = slot::info(&control, &settings.slot).await?.ok_or_else(|| SourceError::MissingSlot {
        slot: settings.slot.clone(),
        server: settings.pg_url.server_at(&host),
        detail: String::new(),
    })?;
    info.check()?;
    if let (true, Some(pid)) = (info.active, info.active_pid) {
        return Err(refused(format!("slot {} is active for pid {pid}: stop the relay first", settings.slot)).into());
    }
    let copy = SlotCopy::create(&control, &host, &settings.slot, "skip").await?;
    let mut first = None;
    // The event run stops on is the one `--on-invalid stop` stops on, whatever this command's setting.
    let stop = Settings { on_invalid: OnInvalid::Stop, ..settings.clone() };
    let found = super::peek::pending(&stop, &control, &copy, super::peek::Stream::Required, |item| {
        first = Some(item);
        false
    })
    .await;
    copy.remove(&control).await;
    found?;
    let invalid = match first {
        None => return Err(refused("there is no pending event; nothing to skip".into()).into()),
        Some(Item::Invalid(invalid)) if invalid.position == through => invalid,
        Some(Item::Invalid(invalid)) => {
            return Err(refused(format!(
                "the next pending event is {} (id {}); skip only passes the event run stops on: use --through {}",
                invalid.position, invalid.id, invalid.position
            ))
            .into())
        }
        Some(Item::Event(event)) if event.position == through => {
            return Err(refused(format!(
                "event {} (id {}) is valid and `walrelay run` relays it; skip is for an event run stopped on",
                event.position, event.id
            ))
            .into())
        }
        Some(Item::Event(event)) => {
            return Err(refused(format!(
                "the next pending event is {} (id {}) and it is valid: start `walrelay run`, and skip only what it \
                 stops on",
                event.position, event.id
            ))
            .into())
        }
    };
    let (client, js) = stream::connect(settings).await?;
    let limit = client.server_info().max_payload.saturating_sub(ADDED_HEADERS_MAX);
    let record = invalid.dead_letter(&Subject::from(settings.dead_letter_subject.as_str()), Some(limit));
    let subject = record.subject.clone();
    let hw = stream::high_water(&js, &settings.stream).await?;
    let mut publisher = Publisher::fenced(&client, hw.last_sequence, settings.publish_timeout).await?;
    publisher.send(record, ()).await?;
    let (_, err) = publisher.drain(settings.publish_timeout).await;
    if let Some(err) = err {
        return Err(err.into());
    }
    tracing::info!(id = %invalid.id, position = %through, subject = %subject, "event skipped");
    println!(
        "skipped event {} at {through} ({}): dead-letter record published to {}; start `walrelay run` to go on",
        invalid.id, invalid.reason, subject
    );
    Ok(())
}
