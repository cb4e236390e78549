//! Transaction boundaries (Begin, Commit) and the state machine that validates them (design rule 10).
//!
//! In: Begin and Commit messages, and the changes between them. Out: the typed messages, or an error when the
//! sequence is impossible: a Begin inside an open transaction, a Commit without Begin or whose LSN differs from the
//! Begin's final LSN, a change outside a transaction. Formats: `Begin` and `Commit` in
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.

use crate::reader::Reader;
use crate::{DecodeError, Lsn};

/// `B`: start of a transaction (sent when the transaction has committed; pgoutput sends whole transactions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record; the matching Commit carries it as `commit_lsn`.
    pub final_lsn: Lsn,
    /// Commit timestamp, microseconds since 2000-01-01 00:00 UTC.
    pub commit_time: i64,
    /// Transaction id.
    pub xid: u32,
}

/// `C`: end of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Flags; currently unused (0).
    pub flags: u8,
    /// LSN of the commit record (equals [`Begin::final_lsn`]).
    pub commit_lsn: Lsn,
    /// End LSN of the transaction: the position to confirm once the transaction is processed.
    pub end_lsn: Lsn,
    /// Commit timestamp, microseconds since 2000-01-01 00:00 UTC.
    pub commit_time: i64,
}

impl Begin {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Begin { final_lsn: r.lsn()?, commit_time: r.i64()?, xid: r.u32()? })
    }
}

impl Commit {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Commit { flags: r.u8()?, commit_lsn: r.lsn()?, end_lsn: r.lsn()?, commit_time: r.i64()? })
    }
}

/// The transaction a [`TransactionGuard`] has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenTransaction {
    /// Final (commit) LSN announced by the Begin.
    pub final_lsn: Lsn,
    /// Transaction id from the Begin.
    pub xid: u32,
}

/// Validates the order of transaction boundaries: Begin, changes, Commit with the same LSN.
///
/// Usable on its own by code that receives Begin and Commit already parsed. A failed call leaves the state unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransactionGuard {
    open: Option<OpenTransaction>,
}

impl TransactionGuard {
    /// A guard with no transaction open.
    pub const fn new() -> Self {
        TransactionGuard { open: None }
    }

    /// Opens a transaction; fails with [`DecodeError::BeginInsideTransaction`] if one is open.
    pub fn begin(&mut self, final_lsn: Lsn, xid: u32) -> Result<(), DecodeError> {
        if let Some(open) = self.open {
            return Err(DecodeError::BeginInsideTransaction { open: open.final_lsn, new: final_lsn });
        }
        self.open = Some(OpenTransaction { final_lsn, xid });
        Ok(())
    }

    /// Closes the open transaction and returns it; fails with [`DecodeError::CommitWithoutBegin`] or
    /// [`DecodeError::CommitLsnMismatch`].
    pub fn commit(&mut self, commit_lsn: Lsn) -> Result<OpenTransaction, DecodeError> {
        let open = self.open.ok_or(DecodeError::CommitWithoutBegin)?;
        if open.final_lsn != commit_lsn {
            return Err(DecodeError::CommitLsnMismatch { begin_final_lsn: open.final_lsn, commit_lsn });
        }
        self.open = None;
        Ok(open)
    }

    /// Checks that a change may arrive now; fails with [`DecodeError::ChangeOutsideTransaction`].
    pub fn change(&self) -> Result<(), DecodeError> {
        self.open.map(|_| ()).ok_or(DecodeError::ChangeOutsideTransaction)
    }

    /// Whether a transaction is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The open transaction, if any.
    pub fn current(&self) -> Option<OpenTransaction> {
        self.open
    }

    /// Forgets any open transaction (after the replication connection was re-established).
    pub fn reset(&mut self) {
        self.open = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_change_commit() {
        let mut guard = TransactionGuard::new();
        assert_eq!(guard.change(), Err(DecodeError::ChangeOutsideTransaction));
        guard.begin(Lsn(100), 7).expect("begin");
        assert!(guard.is_open());
        guard.change().expect("change inside");
        assert_eq!(guard.commit(Lsn(100)), Ok(OpenTransaction { final_lsn: Lsn(100), xid: 7 }));
        assert!(!guard.is_open());
    }

    #[test]
    fn rejects_begin_inside_transaction() {
        let mut guard = TransactionGuard::new();
        guard.begin(Lsn(100), 7).expect("begin");
        assert_eq!(
            guard.begin(Lsn(200), 8),
            Err(DecodeError::BeginInsideTransaction { open: Lsn(100), new: Lsn(200) })
        );
        assert_eq!(guard.current(), Some(OpenTransaction { final_lsn: Lsn(100), xid: 7 }));
    }

    #[test]
    fn rejects_bad_commits() {
        let mut guard = TransactionGuard::new();
        assert_eq!(guard.commit(Lsn(1)), Err(DecodeError::CommitWithoutBegin));
        guard.begin(Lsn(100), 7).expect("begin");
        assert_eq!(
            guard.commit(Lsn(101)),
            Err(DecodeError::CommitLsnMismatch { begin_final_lsn: Lsn(100), commit_lsn: Lsn(101) })
        );
        assert!(guard.is_open(), "a failed commit leaves the transaction open");
        guard.reset();
        assert!(!guard.is_open());
    }
}
