//! Streamed in-progress transactions (protocol version 2 and later, `streaming` option).
//!
//! In: Stream Start / Stop / Commit / Abort messages. Out: their typed form. Between Stream Start and Stream Stop,
//! Relation, Type, Insert, Update, Delete, Truncate and Message carry the (sub)transaction id as an extra leading
//! field; the [`crate::Decoder`] tracks that block. Formats:
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.

use crate::reader::Reader;
use crate::{DecodeError, Lsn};

/// `S`: start of a block of changes of an in-progress transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// Top-level transaction id.
    pub xid: u32,
    /// Whether this is the first block for this transaction.
    pub first_segment: bool,
}

/// `c`: a streamed transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    /// Transaction id.
    pub xid: u32,
    /// Flags; currently unused (0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the transaction.
    pub end_lsn: Lsn,
    /// Commit timestamp, microseconds since 2000-01-01 00:00 UTC.
    pub commit_time: i64,
}

/// `A`: a streamed (sub)transaction aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    /// Top-level transaction id.
    pub xid: u32,
    /// Id of the aborted subtransaction (equals `xid` for the top-level transaction).
    pub subxid: u32,
    /// Abort LSN and time: protocol version 4 sends them with `streaming = parallel`.
    pub abort: Option<StreamAbortInfo>,
}

/// Extra fields of [`StreamAbort`] in protocol version 4 with parallel streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAbortInfo {
    /// LSN of the abort record.
    pub lsn: Lsn,
    /// Abort timestamp, microseconds since 2000-01-01 00:00 UTC.
    pub time: i64,
}

impl StreamStart {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(StreamStart { xid: r.u32()?, first_segment: r.u8()? != 0 })
    }
}

impl StreamCommit {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(StreamCommit {
            xid: r.u32()?,
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: r.i64()?,
        })
    }
}

impl StreamAbort {
    pub(crate) fn read(r: &mut Reader, protocol_version: u32) -> Result<Self, DecodeError> {
        let xid = r.u32()?;
        let subxid = r.u32()?;
        let abort = if protocol_version >= 4 && r.remaining() > 0 {
            Some(StreamAbortInfo { lsn: r.lsn()?, time: r.i64()? })
        } else {
            None
        };
        Ok(StreamAbort { xid, subxid, abort })
    }
}
