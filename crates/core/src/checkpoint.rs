//! The ack tracker: which LSN may be confirmed to Postgres.
//!
//! In: transaction boundaries (Begin, Commit with its `end_lsn`), one `published` per event sent, one `acked` per
//! JetStream ack, and idle keepalives. Out: the confirmed LSN, which only ever moves forward and only over a
//! contiguous prefix of transactions whose events are all acked (design.md rules 1–3).
//! See <https://www.postgresql.org/docs/current/protocol-replication.html> (Standby status update).

use std::collections::VecDeque;

use pgoutput::Lsn;

/// Identifies a transaction inside the tracker.
pub type TxnTag = u64;

#[derive(Debug)]
struct Txn {
    tag: TxnTag,
    end_lsn: Option<Lsn>,
    pending: u64,
}

/// Tracks unacked events per transaction and derives the confirmable LSN.
#[derive(Debug, Default)]
pub struct Checkpoint {
    txns: VecDeque<Txn>,
    next_tag: TxnTag,
    confirmed: Lsn,
    reported: Lsn,
}

impl Checkpoint {
    /// A tracker whose confirmed position starts at `confirmed` (the slot's `confirmed_flush_lsn`).
    pub fn new(confirmed: Lsn) -> Self {
        Self { confirmed, reported: confirmed, ..Self::default() }
    }

    /// A transaction begins; returns its tag.
    pub fn begin(&mut self) -> TxnTag {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.txns.push_back(Txn { tag, end_lsn: None, pending: 0 });
        tag
    }

    /// An event of the open transaction was sent.
    pub fn published(&mut self, tag: TxnTag) {
        if let Some(t) = self.txns.iter_mut().rev().find(|t| t.tag == tag) {
            t.pending += 1;
        }
    }

    /// An event of transaction `tag` was acked.
    pub fn acked(&mut self, tag: TxnTag) {
        if let Some(t) = self.txns.iter_mut().find(|t| t.tag == tag) {
            t.pending = t.pending.saturating_sub(1);
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

    /// A keepalive while nothing is open or unacked: confirm the server's position (rule 3).
    /// Returns whether it applied.
    pub fn idle(&mut self, wal_end: Lsn) -> bool {
        if self.txns.is_empty() && wal_end > self.confirmed {
            self.confirmed = wal_end;
            return true;
        }
        false
    }

    /// Whether no transaction is open or waiting for acks.
    pub fn is_idle(&self) -> bool {
        self.txns.is_empty()
    }

    /// Events sent but not yet acked.
    pub fn unacked(&self) -> u64 {
        self.txns.iter().map(|t| t.pending).sum()
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

    fn advance(&mut self) {
        while let Some(front) = self.txns.front() {
            match front.end_lsn {
                Some(end) if front.pending == 0 => {
                    if end > self.confirmed {
                        self.confirmed = end;
                    }
                    self.txns.pop_front();
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_only_contiguous_acked_prefix() {
        let mut c = Checkpoint::new(Lsn(100));
        let a = c.begin();
        c.published(a);
        c.published(a);
        c.commit(a, Lsn(200));
        let b = c.begin();
        c.published(b);
        c.commit(b, Lsn(300));
        assert_eq!(c.confirmed(), Lsn(100));
        c.acked(a);
        assert_eq!(c.confirmed(), Lsn(100), "half of a acked");
        c.acked(b); // out of order relative to a's second event
        assert_eq!(c.confirmed(), Lsn(100), "b acked but a is not complete");
        c.acked(a);
        assert_eq!(c.confirmed(), Lsn(300));
        assert_eq!(c.take_new_confirmed(), Some(Lsn(300)));
        assert_eq!(c.take_new_confirmed(), None);
    }

    #[test]
    fn open_transaction_blocks_confirmation_and_idle() {
        let mut c = Checkpoint::new(Lsn(100));
        let a = c.begin();
        c.published(a);
        c.acked(a);
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
        let mut c = Checkpoint::new(Lsn(0));
        let a = c.begin();
        c.commit(a, Lsn(50));
        assert_eq!(c.confirmed(), Lsn(50));
        let b = c.begin();
        c.published(b);
        c.abandon_open();
        assert!(c.is_idle());
        assert_eq!(c.confirmed(), Lsn(50));
    }
}
