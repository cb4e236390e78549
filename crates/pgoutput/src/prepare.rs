//! Two-phase commit (protocol version 3 and later, `two_phase` option).
//!
//! In: Begin Prepare, Prepare, Commit Prepared, Rollback Prepared and Stream Prepare messages. Out: their typed form.
//! The changes of a prepared transaction arrive between Begin Prepare and Prepare; its outcome arrives later as
//! Commit Prepared or Rollback Prepared. Formats:
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.

use crate::reader::Reader;
use crate::{DecodeError, Lsn};

/// `b`: start of a prepared transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginPrepare {
    /// LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// End LSN of the prepared transaction.
    pub end_lsn: Lsn,
    /// Prepare timestamp, microseconds since 2000-01-01 00:00 UTC.
    pub prepare_time: i64,
    /// Transaction id.
    pub xid: u32,
    /// Global transaction identifier (`PREPARE TRANSACTION 'gid'`).
    pub gid: String,
}

/// `P`: end of a prepared transaction's changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    /// Flags; currently unused (0).
    pub flags: u8,
    /// LSN of the prepare record (equals [`BeginPrepare::prepare_lsn`]).
    pub prepare_lsn: Lsn,
    /// End LSN of the prepared transaction.
    pub end_lsn: Lsn,
    /// Prepare timestamp, microseconds since 2000-01-01 00:00 UTC.
    pub prepare_time: i64,
    /// Transaction id.
    pub xid: u32,
    /// Global transaction identifier.
    pub gid: String,
}

/// `K`: a prepared transaction was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    /// Flags; currently unused (0).
    pub flags: u8,
    /// LSN of the commit prepared record.
    pub commit_lsn: Lsn,
    /// End LSN of the commit prepared transaction.
    pub end_lsn: Lsn,
    /// Commit timestamp, microseconds since 2000-01-01 00:00 UTC.
    pub commit_time: i64,
    /// Transaction id.
    pub xid: u32,
    /// Global transaction identifier.
    pub gid: String,
}

/// `r`: a prepared transaction was rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    /// Flags; currently unused (0).
    pub flags: u8,
    /// End LSN of the prepared transaction.
    pub prepare_end_lsn: Lsn,
    /// End LSN of the rollback prepared transaction.
    pub rollback_end_lsn: Lsn,
    /// Prepare timestamp, microseconds since 2000-01-01 00:00 UTC.
    pub prepare_time: i64,
    /// Rollback timestamp, microseconds since 2000-01-01 00:00 UTC.
    pub rollback_time: i64,
    /// Transaction id.
    pub xid: u32,
    /// Global transaction identifier.
    pub gid: String,
}

/// `p`: a streamed transaction was prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPrepare {
    /// Flags; currently unused (0).
    pub flags: u8,
    /// LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// End LSN of the prepared transaction.
    pub end_lsn: Lsn,
    /// Prepare timestamp, microseconds since 2000-01-01 00:00 UTC.
    pub prepare_time: i64,
    /// Transaction id.
    pub xid: u32,
    /// Global transaction identifier.
    pub gid: String,
}

impl BeginPrepare {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(BeginPrepare {
            prepare_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            prepare_time: r.i64()?,
            xid: r.u32()?,
            gid: r.string("gid")?,
        })
    }
}

impl Prepare {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Prepare {
            flags: r.u8()?,
            prepare_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            prepare_time: r.i64()?,
            xid: r.u32()?,
            gid: r.string("gid")?,
        })
    }
}

impl CommitPrepared {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(CommitPrepared {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
            gid: r.string("gid")?,
        })
    }
}

impl RollbackPrepared {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(RollbackPrepared {
            flags: r.u8()?,
            prepare_end_lsn: r.lsn()?,
            rollback_end_lsn: r.lsn()?,
            prepare_time: r.i64()?,
            rollback_time: r.i64()?,
            xid: r.u32()?,
            gid: r.string("gid")?,
        })
    }
}

impl StreamPrepare {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(StreamPrepare {
            flags: r.u8()?,
            prepare_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            prepare_time: r.i64()?,
            xid: r.u32()?,
            gid: r.string("gid")?,
        })
    }
}
