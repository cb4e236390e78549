//! `walrelay verify [--from LSN] [--to LSN] [--json]`: audits the stream against Postgres' own account of what
//! committed (design.md §4d).
//!
//! In: the settings and a range of commit LSNs, `[--from, --to)`: by default from the replay slot's
//! `confirmed_flush_lsn` (the oldest history the WAL still holds) to the main slot's (what the relay claims it
//! delivered). Out: a summary and every difference (missing, duplicated, out of order, unexpected) with ids and
//! positions, and for missing events the `walrelay replay` command that re-sends them; exit 0 when the stream is
//! exact over the range, 3 when it differs, 1 when it cannot check.
//!
//! Why the WAL: a JetStream ack is not a promise that the message survives (nats-server syncs its file store every
//! `sync_interval`), so the stream cannot be its own witness. The WAL kept by the trailing slot of
//! `run --replay-retention` (`<slot>_replay`) is Postgres' record of every committed outbox row. It is read the way
//! `replay` reads it ([`super::history`]: a throwaway copy of the slot, dropped on every exit, so neither slot moves)
//! and mapped by the relay's own mapper, so ids and positions are exactly those `run` publishes. The stream side is
//! read by position ([`stored`]), and [`audit`] compares the two.

mod audit;
mod stored;

use std::io::Write;

use pgoutput::Lsn;
use serde::Serialize;

use crate::{
    config::{OnInvalid, RawSettings, Settings},
    relay::RelayError,
    sink::stream,
    source::slot,
    source::transaction::Assembler,
    source::{self, SourceError},
};

use super::history::{self, HistoryReader, Item, Range, SlotCopy};
use audit::{Committed, Kind, Report};

/// Exit code when the stream differs from what committed.
pub const EXIT_DIFFERENT: u8 = 3;
/// Exit code when the check could not be made (also when it was interrupted: exit 0 would claim an exact stream).
const EXIT_CANNOT_CHECK: u8 = 1;

/// What `verify` was asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// First commit LSN to check; default: the replay slot's `confirmed_flush_lsn`.
    pub from: Option<Lsn>,
    /// Check transactions committing before it; default: the main slot's `confirmed_flush_lsn`.
    pub to: Option<Lsn>,
    /// One JSON object instead of text.
    pub json: bool,
}

/// Runs the audit; returns the exit code (0 exact, 3 different), or the error that kept it from checking.
pub async fn run(settings: &Settings, opts: &VerifyOptions) -> Result<u8, RelayError> {
    let (control, host) = source::connect_host(&settings.pg_url).await?;
    let replay_slot = settings.replay_slot();
    let info = slot::info(&control, &replay_slot)
        .await?
        .ok_or_else(|| SourceError::NoReplaySlot { slot: replay_slot.clone() })?;
    info.check()?;
    let to = match opts.to {
        Some(to) => to,
        None => slot::info(&control, &settings.slot)
            .await?
            .ok_or_else(|| SourceError::MissingSlot {
                slot: settings.slot.clone(),
                server: settings.pg_url.server_at(&host),
                detail: " (verify checks up to its confirmed_flush_lsn by default; give --to LSN to check without it)"
                    .into(),
            })?
            .confirmed_flush_lsn
            .unwrap_or(Lsn::ZERO),
    };
    let copy = SlotCopy::create(&control, &host, &replay_slot, "verify").await?;
    let from = opts.from.unwrap_or(copy.confirmed_flush);
    if from < copy.confirmed_flush {
        let oldest = copy.confirmed_flush;
        copy.remove(&control).await;
        return Err(SourceError::VerifyOutOfRange { from, oldest, slot: replay_slot }.into());
    }
    let result = tokio::select! {
        result = audit(settings, &control, &copy, from, to) => result.map(Some),
        () = history::stop_requested() => Ok(None),
    };
    copy.remove(&control).await;
    let Some(outcome) = result? else {
        eprintln!("verify interrupted before it finished: nothing was checked");
        return Ok(EXIT_CANNOT_CHECK);
    };
    if opts.json {
        say(&outcome.json(settings));
    } else {
        outcome.print(settings);
    }
    Ok(if outcome.report.exact() { 0 } else { EXIT_DIFFERENT })
}

/// The audit's facts and result.
struct Outcome {
    slot: String,
    from: Lsn,
    to: Lsn,
    report: Report,
    /// Missing events that form the range's tail: the first and last position.
    tail: Option<(crate::mapping::event::Position, crate::mapping::event::Position)>,
    facts: stored::StreamFacts,
}

async fn audit(
    settings: &Settings,
    control: &tokio_postgres::Client,
    copy: &SlotCopy,
    from: Lsn,
    to: Lsn,
) -> Result<Outcome, RelayError> {
    // NATS first: an unreachable server ends the command before the WAL is read.
    let (_client, js) = stream::connect(settings).await?;
    let committed = committed(settings, control, copy, from, to).await?;
    let (stored, facts) = stored::in_range(&js, &settings.stream, from, to).await?;
    let (report, delivered_max) = audit::compare(&committed, &stored);
    let tail = report.missing_tail(delivered_max);
    Ok(Outcome { slot: settings.replay_slot(), from, to, report, tail, facts })
}

/// The events of the transactions committed in `[from, to)`, in commit order, mapped as `run` maps them. An event
/// that cannot be published is one too: the stream holds its dead-letter record in its place.
async fn committed(
    settings: &Settings,
    control: &tokio_postgres::Client,
    copy: &SlotCopy,
    from: Lsn,
    to: Lsn,
) -> Result<Vec<Committed>, RelayError> {
    let end = history::end_marker(control).await?;
    if to <= from || from >= end {
        return Ok(Vec::new());
    }
    // Its own id for an invalid event (not its record's), whatever this invocation's --on-invalid says.
    let assembler = Assembler::new(&Settings { on_invalid: OnInvalid::Stop, ..settings.clone() })?;
    let range = Range { start: from, last_commit: Some(Lsn(to.0 - 1)), end };
    let mut reader = HistoryReader::open(settings, copy, range, assembler).await?;
    let mut out = Vec::new();
    let result = async {
        while let Some(item) = reader.next(settings).await? {
            out.push(match item {
                Item::Event(e) => Committed { id: e.id, position: e.position },
                Item::Invalid(i) => Committed { id: i.id, position: i.position },
            });
        }
        Ok::<_, RelayError>(())
    }
    .await;
    reader.close().await;
    result.map(|()| out)
}

/// Writes one line to stdout; a closed stdout (`verify | head`) ends the output quietly, not the command.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// The `walrelay replay` command that re-sends the events from `first` to `last` (commit LSNs, inclusive), naming the
/// slot and stream when they are not the defaults.
fn replay_command(settings: &Settings, first: Lsn, last: Lsn) -> String {
    let defaults = RawSettings::default();
    let mut cmd = String::from("walrelay replay");
    if settings.slot != defaults.slot {
        cmd.push_str(&format!(" --slot {}", settings.slot));
    }
    if settings.stream != defaults.stream {
        cmd.push_str(&format!(" --stream {}", settings.stream));
    }
    cmd.push_str(&format!(" --from {first} --to {last}"));
    cmd
}

impl Outcome {
    fn ids(&self, kind: Kind) -> Vec<&str> {
        self.report.of(kind).map(|d| d.id.as_str()).collect()
    }

    /// The first and last commit LSN of the missing events.
    fn missing_span(&self) -> Option<(Lsn, Lsn)> {
        let mut missing = self.report.of(Kind::Missing).map(|d| d.position.commit_lsn);
        let first = missing.next()?;
        Some((first, missing.last().unwrap_or(first)))
    }

    fn print(&self, settings: &Settings) {
        let r = &self.report;
        say(&format!(
            "verify stream {} against the WAL kept by slot {}: transactions committed from {} up to (not including) {}",
            settings.stream, self.slot, self.from, self.to
        ));
        let count = |kind| r.of(kind).count();
        if r.exact() {
            say(&format!("{} committed events checked: exact (each in the stream once, in commit order)", r.checked));
        } else {
            say(&format!(
                "{} committed events checked: {} missing, {} duplicated, {} out of order, {} unexpected",
                r.checked,
                count(Kind::Missing),
                count(Kind::Duplicate),
                count(Kind::OutOfOrder),
                count(Kind::Unexpected)
            ));
        }
        if r.replayed > 0 {
            say(&format!(
                "{} events are in the stream only as copies `walrelay replay` published (Outbox-Replayed-At)",
                r.replayed
            ));
        }
        if r.dead_lettered > 0 {
            say(&format!("{} events are in the stream as their dead-letter record", r.dead_lettered));
        }
        for d in &r.differences {
            let label = match d.kind {
                Kind::Missing => "missing     ",
                Kind::Duplicate => "duplicate   ",
                Kind::OutOfOrder => "out of order",
                Kind::Unexpected => "unexpected  ",
            };
            let sequences: Vec<String> = d.sequences.iter().map(u64::to_string).collect();
            let at = match d.kind {
                Kind::Missing => String::new(),
                Kind::Unexpected => format!(", sequence {}, never committed in the range", sequences.join(", ")),
                _ => format!(", sequences {}", sequences.join(", ")),
            };
            let note = d.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
            say(&format!("{label} {} commit_lsn {} index {}{at}{note}", d.id, d.position.commit_lsn, d.position.index));
        }
        if let Some((first, last)) = self.missing_span() {
            let cmd = replay_command(settings, first, last);
            if self.tail.is_some() {
                say("the missing events are the tail of the range: re-send them, in commit order, after what the stream holds:");
            } else {
                say("the missing events lie before events the stream holds: replay re-sends them after those, out of commit order:");
            }
            say(&format!("  {cmd}"));
            if self.tail.is_none() {
                say("  to restore commit order instead, rebuild the stream (docs/operations.md, \"Replay after a consumer lost data\")");
            }
            say(&format!(
                "  replay drops ids the stream saw within its duplicate window ({}); after a NATS restart that lost them \
                 they are not remembered, but messages deleted by hand are: replay those once the window has passed",
                humantime::format_duration(self.facts.duplicate_window)
            ));
        }
    }

    fn json(&self, settings: &Settings) -> String {
        let r = &self.report;
        let differences: Vec<DifferenceJson<'_>> = r
            .differences
            .iter()
            .map(|d| DifferenceJson {
                kind: d.kind,
                id: &d.id,
                commit_lsn: d.position.commit_lsn.to_string(),
                index: d.position.index,
                sequences: &d.sequences,
                note: d.note.as_deref(),
            })
            .collect();
        let out = VerifyJson {
            stream: &settings.stream,
            slot: &self.slot,
            from: self.from.to_string(),
            to: self.to.to_string(),
            checked: r.checked,
            exact: r.exact(),
            missing: self.ids(Kind::Missing),
            duplicates: self.ids(Kind::Duplicate),
            out_of_order: self.ids(Kind::OutOfOrder),
            unexpected: self.ids(Kind::Unexpected),
            replayed: r.replayed,
            dead_lettered: r.dead_lettered,
            missing_tail: self.tail.is_some(),
            replay_command: self.missing_span().map(|(first, last)| replay_command(settings, first, last)),
            stream_messages: self.facts.messages,
            stream_last_sequence: self.facts.last_sequence,
            duplicate_window_secs: self.facts.duplicate_window.as_secs(),
            differences,
        };
        serde_json::to_string(&out).unwrap_or_default()
    }
}

/// `verify --json` (design.md §4d): `checked` and the four lists of ids, then the details.
#[derive(Serialize)]
struct VerifyJson<'a> {
    stream: &'a str,
    slot: &'a str,
    from: String,
    to: String,
    checked: usize,
    exact: bool,
    missing: Vec<&'a str>,
    duplicates: Vec<&'a str>,
    out_of_order: Vec<&'a str>,
    unexpected: Vec<&'a str>,
    /// Events present only as replayed copies.
    replayed: usize,
    /// Events present as their dead-letter record.
    dead_lettered: usize,
    /// Whether the missing events are the range's tail (replaying them keeps commit order).
    missing_tail: bool,
    /// The command that re-sends the missing events (null when none is missing).
    replay_command: Option<String>,
    stream_messages: u64,
    stream_last_sequence: u64,
    duplicate_window_secs: u64,
    differences: Vec<DifferenceJson<'a>>,
}

#[derive(Serialize)]
struct DifferenceJson<'a> {
    kind: Kind,
    id: &'a str,
    commit_lsn: String,
    index: u32,
    sequences: &'a [u64],
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
}
