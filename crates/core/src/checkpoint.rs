//! The ack tracker: which LSN may be confirmed to Postgres.
//!
//! In: transaction boundaries (Begin, Commit with its `end_lsn`), one `published` per event sent, one `acked` per
//! JetStream ack (with the stream sequence and `Nats-Msg-Id` it got), one `held` per event skipped because the stream
//! already holds it, idle keepalives, and the outcome of durability checks. Out: the confirmed LSN, which only ever
//! moves forward and only over a contiguous prefix of transactions whose events are all acked (design.md rules 1–3)
//! and, with `--nats-sync-interval`, durable (§4d). See
//! <https://www.postgresql.org/docs/current/protocol-replication.html> (Standby status update).
//!
//! # Durable, not just acked
//!
//! JetStream acks a message once it is written, not once it is on disk: nats-server syncs its file store every
//! `jetstream.sync_interval` (two minutes by default), so an OS crash can lose what it acked. The WAL still holds an
//! event while the slot has not confirmed it, so a transaction whose events are all acked waits here until its newest
//! ack is at least the interval old **and** a check ([`Checkpoint::to_check`], done by the session, which owns the
//! I/O) found the stream still holding the newest message of the waiting transactions: same sequence, same
//! `Nats-Msg-Id`. Only then is its `end_lsn` confirmed. A stream that lost acked messages fails that check, and the
//! session starts over from the slot, which has not passed them (design.md rule 8 republishes them after the
//! surviving tail).
//!
//! Checking only the newest sequence covers every earlier one: with the ordering fence (rule 7) the relay's messages
//! sit at consecutive sequences it chose, one stream has one writer, and a store that loses unsynced writes (a
//! restart from older files, a leader without its unsynced tail) loses a *suffix* of its log, never a message in the
//! middle while keeping a later one: file-store blocks are appended in order and a RAFT follower's log is a prefix of
//! the leader's. So if sequence `n` still carries the id the relay stored there, every earlier message the relay
//! stored is there too; and if the stream lost the tail and someone (the relay after a restart) wrote other messages
//! at those sequences, the id at `n` differs. Deliberate removals (purge, `max_age`, a deleted message) are outside
//! this promise.
//!
//! What waits is kept per transaction, and consecutive transactions whose newest acks fall within one second share
//! one entry: memory is bounded by the interval in seconds, never by the event rate or a transaction's size (a
//! 1,000,000-row transaction is one counter while it is read, and one entry once it is acked). Events skipped because
//! the stream holds them (after a restart) count as acked when the stream stored them (the message's time), so a
//! restart neither extends the wait nor confirms early. Keepalives confirm only when nothing waits (rule 3 still
//! holds: an idle outbox never pins WAL for longer than the interval).

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use pgoutput::Lsn;

/// Identifies a transaction inside the tracker.
pub type TxnTag = u64;

/// Acks closer together than this share one waiting entry.
const COALESCE: Duration = Duration::from_secs(1);

/// A message the relay knows the stream stored: its sequence and `Nats-Msg-Id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Stream sequence.
    pub sequence: u64,
    /// `Nats-Msg-Id`.
    pub id: String,
}

/// When a message was stored, and which.
#[derive(Debug, Clone)]
struct Stamp {
    at: Instant,
    mark: Mark,
}

#[derive(Debug)]
struct Txn {
    tag: TxnTag,
    end_lsn: Option<Lsn>,
    pending: u64,
    /// Events acked or held by the stream (for the pending-events gauge).
    stored: u64,
    /// Its newest stored event (only with an interval).
    last: Option<Stamp>,
}

/// Contiguous committed transactions, all events acked, waiting for the interval.
#[derive(Debug)]
struct Wait {
    /// The first ack in it: transactions acked within [`COALESCE`] of it join it.
    first: Instant,
    /// Its newest ack: it is due at `newest.at + interval`.
    newest: Stamp,
    /// The end of its last transaction: what releasing it confirms.
    end_lsn: Lsn,
    /// Events in it.
    events: u64,
}

/// Tracks unacked events per transaction and derives the confirmable LSN.
#[derive(Debug, Default)]
pub struct Checkpoint {
    txns: VecDeque<Txn>,
    next_tag: TxnTag,
    confirmed: Lsn,
    reported: Lsn,
    /// `--nats-sync-interval`; `None` confirms on the ack.
    interval: Option<Duration>,
    waiting: VecDeque<Wait>,
    /// Events in `waiting`.
    waiting_events: u64,
    /// The newest message whose transaction was confirmed after a durability check.
    durable: Option<Mark>,
    /// What the stream held when the session started (its tail message and when it was stored), for held events.
    held: Option<Stamp>,
}

impl Checkpoint {
    /// A tracker whose confirmed position starts at `confirmed` (the slot's `confirmed_flush_lsn`), confirming
    /// transactions once acked (`interval` `None`) or once acked at least `interval` ago and found still in the
    /// stream.
    pub fn new(confirmed: Lsn, interval: Option<Duration>) -> Self {
        Self { confirmed, reported: confirmed, interval, ..Self::default() }
    }

    /// The stream's tail message when the session started and when the stream stored it: events skipped because
    /// the stream holds them ([`held`](Self::held)) count as acked then, at that sequence.
    ///
    /// What the previous session acked and did not confirm waits with that tail from the start: the new session
    /// re-reads only from the tail's transaction on, so a transaction before it is covered by nothing else, and a
    /// keepalive during the catch-up must not confirm past it before the interval (found by review).
    pub fn with_held(mut self, mark: Mark, stored_at: Instant) -> Self {
        let stamp = Stamp { at: stored_at, mark };
        if self.interval.is_some() {
            let end_lsn = self.confirmed;
            self.waiting.push_back(Wait { first: stored_at, newest: stamp.clone(), end_lsn, events: 0 });
        }
        self.held = Some(stamp);
        self
    }

    /// A transaction begins; returns its tag.
    pub fn begin(&mut self) -> TxnTag {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.txns.push_back(Txn { tag, end_lsn: None, pending: 0, stored: 0, last: None });
        tag
    }

    /// An event of the open transaction was sent.
    pub fn published(&mut self, tag: TxnTag) {
        if let Some(t) = self.txns.iter_mut().rev().find(|t| t.tag == tag) {
            t.pending += 1;
        }
    }

    /// An event of the open transaction was skipped because the stream already holds it (it is at or before the
    /// tail given to [`with_held`](Self::with_held)).
    pub fn held(&mut self, tag: TxnTag) {
        let interval = self.interval.is_some();
        let held = &self.held;
        if let Some(t) = self.txns.iter_mut().rev().find(|t| t.tag == tag) {
            t.stored += 1;
            if interval && t.last.is_none() {
                t.last = held.clone();
            }
        }
    }

    /// An event of transaction `tag` was acked at `at`, stored at stream `sequence` with `Nats-Msg-Id` `id`.
    /// Acks come in send order.
    pub fn acked(&mut self, tag: TxnTag, sequence: u64, id: String, at: Instant) {
        let interval = self.interval.is_some();
        if let Some(t) = self.txns.iter_mut().find(|t| t.tag == tag) {
            t.pending = t.pending.saturating_sub(1);
            t.stored += 1;
            if interval {
                t.last = Some(Stamp { at, mark: Mark { sequence, id } });
            }
        }
        self.advance();
    }

    /// The open transaction committed; its end is `end_lsn` (Commit.end_lsn, rule 1).
    pub fn commit(&mut self, tag: TxnTag, end_lsn: Lsn) {
        if let Some(t) = self.txns.iter_mut().rev().find(|t| t.tag == tag) {
            t.end_lsn = Some(end_lsn);
        }
        self.advance();
    }

    /// The open transaction was abandoned (session ended mid-transaction): it is forgotten, never confirmed.
    pub fn abandon_open(&mut self) {
        while self.txns.back().is_some_and(|t| t.end_lsn.is_none()) {
            self.txns.pop_back();
        }
    }

    /// A keepalive while nothing is open, unacked or waiting for the interval: confirm the server's position
    /// (rule 3). Returns whether it applied.
    pub fn idle(&mut self, wal_end: Lsn) -> bool {
        if self.is_idle() && wal_end > self.confirmed {
            self.confirmed = wal_end;
            return true;
        }
        false
    }

    /// Whether no transaction is open, waiting for acks or waiting for the interval.
    pub fn is_idle(&self) -> bool {
        self.txns.is_empty() && self.waiting.is_empty()
    }

    /// Events sent but not yet acked.
    pub fn unacked(&self) -> u64 {
        self.txns.iter().map(|t| t.pending).sum()
    }

    /// Acked events of complete transactions that wait for the interval or a durability check.
    pub fn waiting_events(&self) -> u64 {
        self.waiting_events
    }

    /// The message a durability check should look for: the newest waiting one (which covers every earlier one,
    /// see the module docs). `None` when nothing waits.
    pub fn to_check(&self) -> Option<&Mark> {
        self.waiting.back().map(|w| &w.newest.mark)
    }

    /// Whether a waiting transaction is due at `now` (acked at least the interval ago): a check would confirm it.
    pub fn due(&self, now: Instant) -> bool {
        match (self.interval, self.waiting.front()) {
            (Some(interval), Some(front)) => front.newest.at + interval <= now,
            _ => false,
        }
    }

    /// A durability check issued at `issued` found the stream holding `checked` (the message [`to_check`]
    /// returned): every waiting entry at or before it whose newest ack is at least the interval older than the
    /// check is durable, and its end is confirmed. Returns whether the confirmed position moved.
    ///
    /// [`to_check`]: Self::to_check
    pub fn release(&mut self, checked: &Mark, issued: Instant) -> bool {
        let Some(interval) = self.interval else { return false };
        let mut moved = false;
        while let Some(front) = self.waiting.front() {
            if front.newest.mark.sequence > checked.sequence || front.newest.at + interval > issued {
                break;
            }
            let Some(w) = self.waiting.pop_front() else { break };
            self.waiting_events = self.waiting_events.saturating_sub(w.events);
            if w.end_lsn > self.confirmed {
                self.confirmed = w.end_lsn;
                moved = true;
            }
            self.durable = Some(w.newest.mark);
        }
        moved
    }

    /// The newest message whose transaction this tracker confirmed after a durability check.
    pub fn durable(&self) -> Option<&Mark> {
        self.durable.as_ref()
    }

    /// The confirmable LSN.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// The confirmable LSN if it moved since the last call (for sending a status update).
    pub fn take_new_confirmed(&mut self) -> Option<Lsn> {
        (self.confirmed > self.reported).then(|| {
            self.reported = self.confirmed;
            self.confirmed
        })
    }

    /// Moves the contiguous prefix of complete transactions on: confirmed at once without an interval, else into
    /// the waiting entries.
    fn advance(&mut self) {
        while let Some(front) = self.txns.front() {
            let Some(end) = front.end_lsn.filter(|_| front.pending == 0) else { break };
            let Some(txn) = self.txns.pop_front() else { break };
            // Without an interval, or with no event of its own, a transaction waits only for what waits before it.
            let Some(stamp) = txn.last.filter(|_| self.interval.is_some()) else {
                match self.waiting.back_mut() {
                    Some(back) => back.end_lsn = back.end_lsn.max(end),
                    None if end > self.confirmed => self.confirmed = end,
                    None => {}
                }
                continue;
            };
            self.waiting_events += txn.stored;
            match self.waiting.back_mut() {
                Some(back) if stamp.at < back.first + COALESCE => {
                    back.end_lsn = back.end_lsn.max(end);
                    back.events += txn.stored;
                    if stamp.mark.sequence >= back.newest.mark.sequence {
                        let at = back.newest.at.max(stamp.at);
                        back.newest = Stamp { at, mark: stamp.mark };
                    }
                }
                _ => self.waiting.push_back(Wait { first: stamp.at, newest: stamp, end_lsn: end, events: txn.stored }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(c: &mut Checkpoint, tag: TxnTag, sequence: u64, at: Instant) {
        c.acked(tag, sequence, format!("e{sequence}"), at);
    }

    fn mark(sequence: u64) -> Mark {
        Mark { sequence, id: format!("e{sequence}") }
    }

    #[test]
    fn confirms_only_contiguous_acked_prefix() {
        let now = Instant::now();
        let mut c = Checkpoint::new(Lsn(100), None);
        let a = c.begin();
        c.published(a);
        c.published(a);
        c.commit(a, Lsn(200));
        let b = c.begin();
        c.published(b);
        c.commit(b, Lsn(300));
        assert_eq!(c.confirmed(), Lsn(100));
        ack(&mut c, a, 1, now);
        assert_eq!(c.confirmed(), Lsn(100), "half of a acked");
        ack(&mut c, b, 3, now); // out of order relative to a's second event
        assert_eq!(c.confirmed(), Lsn(100), "b acked but a is not complete");
        ack(&mut c, a, 2, now);
        assert_eq!(c.confirmed(), Lsn(300));
        assert_eq!(c.take_new_confirmed(), Some(Lsn(300)));
        assert_eq!(c.take_new_confirmed(), None);
        assert_eq!((c.waiting_events(), c.to_check()), (0, None), "always: nothing waits");
    }

    #[test]
    fn open_transaction_blocks_confirmation_and_idle() {
        let mut c = Checkpoint::new(Lsn(100), None);
        let a = c.begin();
        c.published(a);
        ack(&mut c, a, 1, Instant::now());
        assert_eq!(c.confirmed(), Lsn(100), "not committed yet");
        assert!(!c.idle(Lsn(500)), "keepalive inside a transaction must not confirm");
        c.commit(a, Lsn(200));
        assert_eq!(c.confirmed(), Lsn(200));
        assert!(c.idle(Lsn(500)));
        assert_eq!(c.confirmed(), Lsn(500));
        assert!(!c.idle(Lsn(400)), "never backward");
        assert_eq!(c.confirmed(), Lsn(500));
    }

    #[test]
    fn empty_transactions_confirm_at_commit() {
        for interval in [None, Some(Duration::from_secs(120))] {
            let mut c = Checkpoint::new(Lsn(0), interval);
            let a = c.begin();
            c.commit(a, Lsn(50));
            assert_eq!(c.confirmed(), Lsn(50), "{interval:?}: nothing to wait for");
            let b = c.begin();
            c.published(b);
            c.abandon_open();
            assert!(c.is_idle());
            assert_eq!(c.confirmed(), Lsn(50));
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn an_acked_transaction_waits_for_the_interval_and_a_check() {
        let t0 = Instant::now();
        let mut c = Checkpoint::new(Lsn(100), Some(MIN));
        let a = c.begin();
        c.published(a);
        c.published(a);
        c.commit(a, Lsn(200));
        ack(&mut c, a, 1, t0);
        ack(&mut c, a, 2, t0 + Duration::from_millis(10));
        assert_eq!((c.confirmed(), c.waiting_events()), (Lsn(100), 2), "acked is not durable yet");
        assert_eq!(c.to_check(), Some(&mark(2)), "the newest message is what a check looks for");
        assert!(!c.idle(Lsn(900)), "a keepalive must not pass what waits");
        assert!(!c.due(t0 + Duration::from_secs(59)));
        assert!(!c.release(&mark(2), t0 + Duration::from_secs(59)), "a check before the interval confirms nothing");
        assert!(c.due(t0 + MIN + Duration::from_millis(10)));
        assert!(!c.release(&mark(1), t0 + MIN + Duration::from_secs(1)), "a check of an older message is not enough");
        assert!(c.release(&mark(2), t0 + MIN + Duration::from_secs(1)));
        assert_eq!((c.confirmed(), c.waiting_events(), c.durable()), (Lsn(200), 0, Some(&mark(2))));
        assert!(c.idle(Lsn(900)), "nothing waits: keepalives confirm again");
        assert_eq!(c.confirmed(), Lsn(900));
    }

    #[test]
    fn waiting_entries_coalesce_per_second_and_release_in_order() {
        let t0 = Instant::now();
        let mut c = Checkpoint::new(Lsn(0), Some(MIN));
        // 10 transactions a second for 5 seconds: 5 entries, whatever the rate.
        let mut seq = 0;
        for n in 0..50u64 {
            let tag = c.begin();
            c.published(tag);
            c.commit(tag, Lsn(100 * (n + 1)));
            seq += 1;
            ack(&mut c, tag, seq, t0 + Duration::from_millis(100 * n));
            if n == 25 {
                // An empty transaction joins the entry before it.
                let empty = c.begin();
                c.commit(empty, Lsn(100 * (n + 1) + 50));
            }
        }
        assert_eq!((c.waiting.len(), c.waiting_events()), (5, 50));
        assert_eq!(c.to_check(), Some(&mark(50)));
        // At t0 + 62.5 s the entries whose newest ack is up to 2.5 s old are due: the first three seconds.
        assert!(c.release(&mark(50), t0 + MIN + Duration::from_millis(2500)));
        assert_eq!((c.confirmed(), c.waiting_events()), (Lsn(2000), 30), "transactions 1..=20 (up to 1.9 s)");
        assert!(c.release(&mark(50), t0 + MIN + Duration::from_millis(2950)));
        assert_eq!((c.confirmed(), c.waiting_events()), (Lsn(3000), 20));
        assert!(c.release(&mark(50), t0 + MIN + Duration::from_secs(5)));
        assert_eq!((c.confirmed(), c.waiting_events()), (Lsn(5000), 0));
    }

    #[test]
    fn a_large_transaction_is_one_entry() {
        let t0 = Instant::now();
        let mut c = Checkpoint::new(Lsn(0), Some(MIN));
        let tag = c.begin();
        // A million events acked over two minutes, 1024 in flight at a time: the tracker holds one transaction.
        for seq in 1..=1_000_000u64 {
            c.published(tag);
            ack(&mut c, tag, seq, t0 + Duration::from_micros(seq * 120));
        }
        assert_eq!((c.txns.len(), c.waiting.len()), (1, 0));
        c.commit(tag, Lsn(77));
        assert_eq!((c.waiting.len(), c.waiting_events()), (1, 1_000_000));
        assert!(!c.release(&mark(1_000_000), t0 + MIN), "its newest ack is what counts");
        assert!(c.release(&mark(1_000_000), t0 + MIN + Duration::from_secs(120)));
        assert_eq!(c.confirmed(), Lsn(77));
    }

    #[test]
    fn held_events_count_as_acked_when_the_stream_stored_them() {
        let t0 = Instant::now();
        let stored = t0 - Duration::from_secs(50);
        let mut c = Checkpoint::new(Lsn(100), Some(MIN)).with_held(mark(7), stored);
        let a = c.begin();
        c.held(a);
        c.held(a);
        c.commit(a, Lsn(200));
        // A transaction whose first event the stream holds and whose second one is published now.
        let b = c.begin();
        c.held(b);
        c.published(b);
        ack(&mut c, b, 8, t0);
        c.commit(b, Lsn(300));
        assert_eq!((c.waiting.len(), c.waiting_events()), (2, 4));
        assert!(!c.release(&mark(8), t0 + Duration::from_secs(9)), "stored 59 s ago: not yet");
        assert!(c.release(&mark(8), t0 + Duration::from_secs(10)), "stored 60 s ago, not a new wait from the restart");
        assert_eq!(c.confirmed(), Lsn(200));
        assert!(c.release(&mark(8), t0 + MIN));
        assert_eq!(c.confirmed(), Lsn(300));
    }

    #[test]
    fn after_a_restart_a_keepalive_does_not_pass_what_the_last_session_left_waiting() {
        // The last session acked a transaction before the tail's and stopped before its interval; the new one starts
        // at the tail's transaction, so nothing it reads covers the earlier one, and a keepalive during the catch-up
        // carries a position past it.
        let t0 = Instant::now();
        let mut c = Checkpoint::new(Lsn(100), Some(MIN)).with_held(mark(7), t0);
        assert!(!c.idle(Lsn(150)), "a keepalive must wait with the tail");
        assert_eq!(c.confirmed(), Lsn(100));
        assert!(!c.release(&mark(7), t0 + Duration::from_secs(59)));
        assert!(!c.idle(Lsn(150)));
        c.release(&mark(7), t0 + MIN);
        assert!(c.is_idle());
        assert!(c.idle(Lsn(150)), "once the tail is durable, keepalives confirm again");
        assert_eq!(c.confirmed(), Lsn(150));
    }
}
