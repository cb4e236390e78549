//! Everything that can go wrong while decoding: one enum for the decoder boundary.
//!
//! Each variant carries the facts needed to diagnose the stream (which message, which LSNs, which relation). Values
//! of user columns are never copied into errors, so errors are safe to log.

use crate::Lsn;

/// Why a pgoutput message (or a column value) could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The protocol version is not one of 1 to 4.
    #[error("unsupported pgoutput protocol version {0} (supported: 1 to 4)")]
    UnsupportedProtocolVersion(u32),

    /// The buffer ended before a field of the message could be read.
    #[error("truncated {message} message: needed {needed} more bytes, {available} available")]
    Truncated {
        /// The message (or message part) being read.
        message: &'static str,
        /// Bytes needed for the next field.
        needed: usize,
        /// Bytes left in the buffer.
        available: usize,
    },

    /// Bytes remained after the last field of a message.
    #[error("{count} unexpected trailing bytes after {message} message")]
    TrailingBytes {
        /// The message that was read.
        message: &'static str,
        /// How many bytes were left over.
        count: usize,
    },

    /// The first byte is not a known pgoutput message tag.
    #[error("unknown pgoutput message tag 0x{0:02X}")]
    UnknownTag(u8),

    /// The message exists in pgoutput, but not in the negotiated protocol version.
    #[error("message {:?} needs a newer protocol than version {protocol_version}", char::from(*.tag))]
    MessageNotInProtocol {
        /// The message tag.
        tag: u8,
        /// The protocol version the decoder was created with.
        protocol_version: u32,
    },

    /// A string field is not valid UTF-8.
    #[error("invalid UTF-8 in {field} of {message} message at byte {valid_up_to}")]
    InvalidUtf8 {
        /// The message being read.
        message: &'static str,
        /// The field being read.
        field: &'static str,
        /// Length of the valid prefix of the string.
        valid_up_to: usize,
    },

    /// A string field has no terminating NUL byte.
    #[error("string without terminating NUL byte")]
    MissingNul,

    /// A tuple column is neither `n`, `u`, `t` nor `b`.
    #[error("unknown tuple column kind {:?} (0x{kind:02X}) in {message} message", char::from(*.kind))]
    UnknownColumnKind {
        /// The message being read.
        message: &'static str,
        /// The column kind byte.
        kind: u8,
    },

    /// An Update or Delete has an unexpected tuple marker (expected `K`, `O` or `N`).
    #[error("unexpected tuple marker {:?} (0x{marker:02X}) in {message} message", char::from(*.marker))]
    UnexpectedTupleMarker {
        /// The message being read.
        message: &'static str,
        /// The marker byte found.
        marker: u8,
    },

    /// A change refers to a relation that no Relation message has described.
    #[error("unknown relation id {0}: no Relation message received for it")]
    UnknownRelation(u32),

    /// A tuple has a different number of columns than its Relation message announced.
    #[error("relation {relation} has {expected} columns but the tuple has {actual}")]
    ColumnCountMismatch {
        /// `namespace.name` of the relation.
        relation: String,
        /// Columns in the Relation message.
        expected: usize,
        /// Columns in the tuple.
        actual: usize,
    },

    /// A Begin arrived while a transaction was still open.
    #[error("Begin (final LSN {new}) inside the transaction with final LSN {open}")]
    BeginInsideTransaction {
        /// Final LSN of the transaction that is still open.
        open: Lsn,
        /// Final LSN of the new Begin.
        new: Lsn,
    },

    /// A Commit arrived with no open transaction.
    #[error("Commit without Begin")]
    CommitWithoutBegin,

    /// The Commit's LSN differs from the final LSN its Begin announced.
    #[error("Commit LSN {commit_lsn} does not match Begin's final LSN {begin_final_lsn}")]
    CommitLsnMismatch {
        /// Final LSN from the Begin message.
        begin_final_lsn: Lsn,
        /// Commit LSN from the Commit message.
        commit_lsn: Lsn,
    },

    /// A change (Insert, Update, Delete, Truncate, transactional Message) arrived outside any transaction.
    #[error("change outside a transaction")]
    ChangeOutsideTransaction,

    /// A Prepare arrived with no open Begin Prepare.
    #[error("Prepare without Begin Prepare")]
    PrepareWithoutBegin,

    /// The Prepare's LSN differs from the one its Begin Prepare announced.
    #[error("Prepare LSN {prepare_lsn} does not match Begin Prepare's LSN {begin_prepare_lsn}")]
    PrepareLsnMismatch {
        /// Prepare LSN from the Begin Prepare message.
        begin_prepare_lsn: Lsn,
        /// Prepare LSN from the Prepare message.
        prepare_lsn: Lsn,
    },

    /// A Stream Start arrived while a stream block was open.
    #[error("Stream Start for xid {new_xid} inside the open stream block of xid {open_xid}")]
    StreamStartInsideStream {
        /// Transaction of the open block.
        open_xid: u32,
        /// Transaction of the new Stream Start.
        new_xid: u32,
    },

    /// A Stream Stop arrived with no open stream block.
    #[error("Stream Stop without Stream Start")]
    StreamStopWithoutStart,

    /// A message that cannot appear between Stream Start and Stream Stop did.
    #[error("{message} message inside a stream block")]
    UnexpectedInStream {
        /// The message.
        message: &'static str,
    },

    /// A message that cannot appear inside a transaction (or prepared transaction) did.
    #[error("{message} message inside an open transaction")]
    UnexpectedInTransaction {
        /// The message.
        message: &'static str,
    },

    /// A column value could not be converted to its type.
    #[error("invalid value for column {} (type oid {type_oid}): {reason}", column.as_deref().unwrap_or("?"))]
    InvalidValue {
        /// The column name, when known.
        column: Option<String>,
        /// The column's type OID.
        type_oid: u32,
        /// What is wrong (never the value itself).
        reason: String,
    },
}
