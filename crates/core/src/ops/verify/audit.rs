//! The comparison behind `walrelay verify`: the events Postgres committed in a range against the stream messages
//! that carry a position in it. Pure: no I/O, so every rule below has a unit test.
//!
//! In: the committed events in commit order (id and position, from the WAL) and the stream's messages whose
//! `Outbox-Commit-Lsn`/`Outbox-Index` fall in the range, in stream-sequence order. Out: a [`Report`] naming every
//! difference. A message stands for the event at its position when its `Nats-Msg-Id` is the event's id, or when it is
//! a dead-letter record (`dead-letter:…`): `run --on-invalid dead-letter` and `walrelay skip` publish such a record in
//! place of an event that cannot be published, so for the stream it *is* that event. A copy `replay` published
//! (marked `Outbox-Replayed-At`) stands for its event only when no unmarked message does: beside the original it is
//! the documented marked copy (docs/operations.md), not a duplicate; alone it is how a lost event was re-sent.
//!
//! - missing: no message stands for the event;
//! - duplicate: besides the message that stands for it, another unmarked message does, or a message with another id
//!   sits at its position;
//! - out of order: its message comes after the message of a later event (commit order is stream order);
//! - unexpected: a message at a position no event in the range committed at (or with another id at the position of
//!   a missing event).

use std::collections::HashMap;

use crate::mapping::event::Position;

/// Prefix of a dead-letter record's `Nats-Msg-Id` (design.md §4).
const DEAD_LETTER_PREFIX: &str = "dead-letter:";

/// One event Postgres committed in the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Its id (`Nats-Msg-Id` as `run` publishes it).
    pub id: String,
    /// Where it sits in the WAL.
    pub position: Position,
}

/// One stream message carrying a position in the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Stream sequence.
    pub sequence: u64,
    /// Its `Nats-Msg-Id`, if any.
    pub id: Option<String>,
    /// Its `Outbox-Commit-Lsn` and `Outbox-Index`.
    pub position: Position,
    /// Whether `replay` published it (`Outbox-Replayed-At`).
    pub replayed: bool,
}

impl Stored {
    /// The message's id for a report: its `Nats-Msg-Id`, or its sequence when it has none.
    pub fn label(&self) -> String {
        self.id.clone().unwrap_or_else(|| format!("(no Nats-Msg-Id, sequence {})", self.sequence))
    }

    fn is_dead_letter(&self) -> bool {
        self.id.as_deref().is_some_and(|id| id.starts_with(DEAD_LETTER_PREFIX))
    }
}

/// What kind of difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A committed event no message stands for.
    Missing,
    /// A committed event more than one message stands for.
    Duplicate,
    /// A committed event whose message comes after a later event's.
    OutOfOrder,
    /// A message for no event committed in the range.
    Unexpected,
}

/// One difference: the event (or, for [`Kind::Unexpected`], the message) and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// What is wrong.
    pub kind: Kind,
    /// The event's id (the message's, for an unexpected one).
    pub id: String,
    /// Its position.
    pub position: Position,
    /// The stream sequences involved: the event's messages (a duplicate's all, an out-of-order event's own and the
    /// later event's it follows), the unexpected message's.
    pub sequences: Vec<u64>,
    /// More facts for the reader, e.g. the other ids at a duplicate's position.
    pub note: Option<String>,
}

/// The outcome of a comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Committed events compared.
    pub checked: usize,
    /// Events present only as copies `replay` published.
    pub replayed: usize,
    /// Events present as their dead-letter record.
    pub dead_lettered: usize,
    /// Every difference, missing first, then duplicates, out of order and unexpected, each in commit order.
    pub differences: Vec<Difference>,
}

impl Report {
    /// Whether the stream holds each committed event once, in commit order, and nothing else in the range.
    pub fn exact(&self) -> bool {
        self.differences.is_empty()
    }

    /// The differences of one kind.
    pub fn of(&self, kind: Kind) -> impl Iterator<Item = &Difference> {
        self.differences.iter().filter(move |d| d.kind == kind)
    }

    /// The missing events, when they are all later than every event the stream holds (a lost tail): replaying them
    /// appends them in commit order. `None` when nothing is missing or a later event is present.
    pub fn missing_tail(&self, delivered_max: Option<Position>) -> Option<(Position, Position)> {
        let mut missing = self.of(Kind::Missing).map(|d| d.position);
        let first = missing.next()?;
        let last = missing.last().unwrap_or(first);
        delivered_max.is_none_or(|max| max < first).then_some((first, last))
    }
}

/// Compares `committed` (commit order) with `stored` (sequence order). Also returns the position of the latest
/// event some message stands for, for [`Report::missing_tail`].
pub fn compare(committed: &[Committed], stored: &[Stored]) -> (Report, Option<Position>) {
    let index: HashMap<Position, usize> = committed.iter().enumerate().map(|(i, c)| (c.position, i)).collect();
    // Per event: the messages standing for it, and the messages with another id at its position.
    let mut standing: Vec<Vec<&Stored>> = vec![Vec::new(); committed.len()];
    let mut foreign: Vec<Vec<&Stored>> = vec![Vec::new(); committed.len()];
    let mut unexpected: Vec<&Stored> = Vec::new();
    for msg in stored {
        match index.get(&msg.position) {
            Some(&i) if msg.id.as_deref() == Some(committed[i].id.as_str()) || msg.is_dead_letter() => {
                standing[i].push(msg)
            }
            Some(&i) => foreign[i].push(msg),
            None => unexpected.push(msg),
        }
    }

    let mut report = Report { checked: committed.len(), ..Report::default() };
    let mut missing = Vec::new();
    let mut duplicates = Vec::new();
    // The one message that delivers each present event: its first unmarked one, else its first replayed copy.
    let mut delivered: Vec<(u64, usize)> = Vec::new();
    for (i, event) in committed.iter().enumerate() {
        let primary = standing[i].iter().find(|m| !m.replayed).or_else(|| standing[i].first());
        let Some(primary) = primary else {
            missing.push(Difference {
                kind: Kind::Missing,
                id: event.id.clone(),
                position: event.position,
                sequences: Vec::new(),
                note: None,
            });
            // A message with another id at a missing event's position does not stand for it.
            unexpected.extend(foreign[i].iter().copied());
            continue;
        };
        delivered.push((primary.sequence, i));
        report.replayed += usize::from(primary.replayed);
        report.dead_lettered += usize::from(primary.is_dead_letter());
        // Replayed copies beside the original are by design; further unmarked messages and other ids are not.
        let extra: Vec<&Stored> = standing[i]
            .iter()
            .copied()
            .filter(|m| m.sequence != primary.sequence && !m.replayed)
            .chain(foreign[i].iter().copied())
            .collect();
        if !extra.is_empty() {
            let mut sequences: Vec<u64> =
                std::iter::once(primary.sequence).chain(extra.iter().map(|m| m.sequence)).collect();
            sequences.sort_unstable();
            let others: Vec<String> = extra.iter().filter(|m| m.id != primary.id).map(|m| m.label()).collect();
            duplicates.push(Difference {
                kind: Kind::Duplicate,
                id: event.id.clone(),
                position: event.position,
                sequences,
                note: (!others.is_empty()).then(|| format!("also as {}", others.join(", "))),
            });
        }
    }

    // Order: walking the delivering messages by sequence, an event that comes after a later one is out of order.
    delivered.sort_unstable();
    let mut out_of_order = Vec::new();
    let mut latest: Option<(Position, u64)> = None;
    for &(sequence, i) in &delivered {
        let position = committed[i].position;
        match latest {
            Some((max, max_sequence)) if position < max => out_of_order.push(Difference {
                kind: Kind::OutOfOrder,
                id: committed[i].id.clone(),
                position,
                sequences: vec![sequence, max_sequence],
                note: Some(format!("after the event at {max} (sequence {max_sequence})")),
            }),
            _ => latest = Some((position, sequence)),
        }
    }
    out_of_order.sort_by_key(|d| d.position);
    unexpected.sort_by_key(|m| (m.position, m.sequence));

    report.differences.extend(missing);
    report.differences.extend(duplicates);
    report.differences.extend(out_of_order);
    report.differences.extend(unexpected.into_iter().map(|m| Difference {
        kind: Kind::Unexpected,
        id: m.label(),
        position: m.position,
        sequences: vec![m.sequence],
        note: m.replayed.then(|| "a replayed copy".to_owned()),
    }));
    let delivered_max = delivered.iter().map(|&(_, i)| committed[i].position).max();
    (report, delivered_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgoutput::Lsn;

    fn at(lsn: u64, index: u32) -> Position {
        Position { commit_lsn: Lsn(lsn), index }
    }

    fn event(id: &str, lsn: u64, index: u32) -> Committed {
        Committed { id: id.into(), position: at(lsn, index) }
    }

    fn msg(sequence: u64, id: &str, lsn: u64, index: u32) -> Stored {
        Stored { sequence, id: Some(id.into()), position: at(lsn, index), replayed: false }
    }

    fn replayed(sequence: u64, id: &str, lsn: u64, index: u32) -> Stored {
        Stored { replayed: true, ..msg(sequence, id, lsn, index) }
    }

    fn ids(report: &Report, kind: Kind) -> Vec<&str> {
        report.of(kind).map(|d| d.id.as_str()).collect()
    }

    fn committed() -> Vec<Committed> {
        vec![event("a", 10, 0), event("b", 10, 1), event("c", 20, 0), event("d", 30, 0)]
    }

    #[test]
    fn an_exact_stream_has_no_difference() {
        let stored = [msg(5, "a", 10, 0), msg(6, "b", 10, 1), msg(7, "c", 20, 0), msg(8, "d", 30, 0)];
        let (report, max) = compare(&committed(), &stored);
        assert!(report.exact(), "{report:?}");
        assert_eq!((report.checked, report.replayed, report.dead_lettered), (4, 0, 0));
        assert_eq!(max, Some(at(30, 0)));
        assert_eq!(report.missing_tail(max), None);
    }

    #[test]
    fn a_lost_tail_is_missing_and_replayable_in_order() {
        let stored = [msg(5, "a", 10, 0), msg(6, "b", 10, 1)];
        let (report, max) = compare(&committed(), &stored);
        assert_eq!(ids(&report, Kind::Missing), ["c", "d"]);
        assert_eq!(report.differences.len(), 2);
        assert_eq!(report.missing_tail(max), Some((at(20, 0), at(30, 0))));
        // Re-sent by replay (marked copies after the surviving tail): exact, counted as replayed.
        let healed = [stored[0].clone(), stored[1].clone(), replayed(9, "c", 20, 0), replayed(10, "d", 30, 0)];
        let (report, _) = compare(&committed(), &healed);
        assert!(report.exact(), "{report:?}");
        assert_eq!(report.replayed, 2);
    }

    #[test]
    fn a_gap_before_a_present_event_is_not_a_tail() {
        let stored = [msg(5, "a", 10, 0), msg(6, "b", 10, 1), msg(8, "d", 30, 0)];
        let (report, max) = compare(&committed(), &stored);
        assert_eq!(ids(&report, Kind::Missing), ["c"]);
        assert_eq!(report.missing_tail(max), None);
    }

    #[test]
    fn a_second_message_at_a_position_is_a_duplicate_a_replayed_copy_is_not() {
        let stored = [
            msg(5, "a", 10, 0),
            msg(6, "b", 10, 1),
            msg(7, "c", 20, 0),
            msg(8, "d", 30, 0),
            msg(9, "c-copy", 20, 0),
            replayed(10, "a", 10, 0),
        ];
        let (report, _) = compare(&committed(), &stored);
        assert_eq!(ids(&report, Kind::Duplicate), ["c"]);
        let dup = report.of(Kind::Duplicate).next().cloned();
        assert_eq!(dup.as_ref().map(|d| d.sequences.clone()), Some(vec![7, 9]));
        assert_eq!(dup.and_then(|d| d.note), Some("also as c-copy".to_owned()));
        assert_eq!(report.differences.len(), 1, "{report:?}");
        assert_eq!(report.replayed, 0, "the original delivers a");
    }

    #[test]
    fn a_later_event_first_makes_the_earlier_out_of_order() {
        let stored = [msg(5, "a", 10, 0), msg(6, "c", 20, 0), msg(7, "d", 30, 0), msg(8, "b", 10, 1)];
        let (report, _) = compare(&committed(), &stored);
        assert_eq!(ids(&report, Kind::OutOfOrder), ["b"]);
        let d = report.of(Kind::OutOfOrder).next().cloned();
        assert_eq!(d.map(|d| d.sequences), Some(vec![8, 7]));
        assert_eq!(report.differences.len(), 1);
    }

    #[test]
    fn a_message_no_event_committed_at_is_unexpected() {
        let stored = [
            msg(5, "a", 10, 0),
            msg(6, "b", 10, 1),
            msg(7, "c", 20, 0),
            msg(8, "fake", 25, 0),
            msg(9, "d", 30, 0),
            Stored { sequence: 10, id: None, position: at(10, 7), replayed: false },
        ];
        let (report, _) = compare(&committed(), &stored);
        assert_eq!(ids(&report, Kind::Unexpected), ["(no Nats-Msg-Id, sequence 10)", "fake"]);
        assert_eq!(report.differences.len(), 2);
    }

    #[test]
    fn another_id_at_a_missing_events_position_is_unexpected_and_the_event_missing() {
        let stored = [msg(5, "a", 10, 0), msg(6, "b", 10, 1), msg(7, "x", 20, 0), msg(8, "d", 30, 0)];
        let (report, _) = compare(&committed(), &stored);
        assert_eq!(ids(&report, Kind::Missing), ["c"]);
        assert_eq!(ids(&report, Kind::Unexpected), ["x"]);
    }

    #[test]
    fn a_dead_letter_record_stands_for_its_event() {
        let stored = [
            msg(5, "a", 10, 0),
            msg(6, "dead-letter:b", 10, 1),
            msg(7, "c", 20, 0),
            msg(8, "dead-letter:0/1E:0", 30, 0),
        ];
        let (report, _) = compare(&committed(), &stored);
        assert!(report.exact(), "{report:?}");
        assert_eq!(report.dead_lettered, 2);
        // Both the event and its record: a duplicate.
        let both = [
            msg(5, "a", 10, 0),
            msg(6, "dead-letter:b", 10, 1),
            msg(7, "b", 10, 1),
            msg(8, "c", 20, 0),
            msg(9, "dead-letter:0/1E:0", 30, 0),
        ];
        let (report, _) = compare(&committed(), &both);
        assert_eq!(ids(&report, Kind::Duplicate), ["b"]);
    }

    #[test]
    fn an_empty_range_is_exact() {
        let (report, max) = compare(&[], &[]);
        assert!(report.exact());
        assert_eq!((report.checked, max), (0, None));
    }
}
