//! The pgoutput message enum, plus the small messages that belong to no other module (Origin, Type, Message).
//!
//! In: one decoded XLogData payload. Out: a [`Message`]. Formats:
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.

use bytes::Bytes;

use crate::reader::Reader;
use crate::{
    Begin, BeginPrepare, Commit, CommitPrepared, DecodeError, Delete, Insert, Lsn, Prepare, Relation, RollbackPrepared,
    StreamAbort, StreamCommit, StreamPrepare, StreamStart, Truncate, Update,
};

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `B`: transaction start.
    Begin(Begin),
    /// `C`: transaction end.
    Commit(Commit),
    /// `O`: the transaction came from another node (replication origin).
    Origin(Origin),
    /// `R`: table description.
    Relation(Relation),
    /// `Y`: description of a non-built-in type.
    Type(TypeMessage),
    /// `I`: row inserted.
    Insert(Insert),
    /// `U`: row updated.
    Update(Update),
    /// `D`: row deleted.
    Delete(Delete),
    /// `T`: tables truncated.
    Truncate(Truncate),
    /// `M`: `pg_logical_emit_message` (with the `messages` option).
    Message(LogicalMessage),
    /// `S`: start of a streamed block (protocol 2+).
    StreamStart(StreamStart),
    /// `E`: end of a streamed block (protocol 2+).
    StreamStop,
    /// `c`: streamed transaction committed (protocol 2+).
    StreamCommit(StreamCommit),
    /// `A`: streamed (sub)transaction aborted (protocol 2+).
    StreamAbort(StreamAbort),
    /// `b`: start of a prepared transaction (protocol 3+).
    BeginPrepare(BeginPrepare),
    /// `P`: prepared transaction's changes end (protocol 3+).
    Prepare(Prepare),
    /// `K`: prepared transaction committed (protocol 3+).
    CommitPrepared(CommitPrepared),
    /// `r`: prepared transaction rolled back (protocol 3+).
    RollbackPrepared(RollbackPrepared),
    /// `p`: streamed transaction prepared (protocol 3+).
    StreamPrepare(StreamPrepare),
}

impl Message {
    /// The message's tag byte on the wire.
    pub fn tag(&self) -> u8 {
        match self {
            Message::Begin(_) => b'B',
            Message::Commit(_) => b'C',
            Message::Origin(_) => b'O',
            Message::Relation(_) => b'R',
            Message::Type(_) => b'Y',
            Message::Insert(_) => b'I',
            Message::Update(_) => b'U',
            Message::Delete(_) => b'D',
            Message::Truncate(_) => b'T',
            Message::Message(_) => b'M',
            Message::StreamStart(_) => b'S',
            Message::StreamStop => b'E',
            Message::StreamCommit(_) => b'c',
            Message::StreamAbort(_) => b'A',
            Message::BeginPrepare(_) => b'b',
            Message::Prepare(_) => b'P',
            Message::CommitPrepared(_) => b'K',
            Message::RollbackPrepared(_) => b'r',
            Message::StreamPrepare(_) => b'p',
        }
    }
}

/// `O`: replication origin of the transaction being sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// Origin name.
    pub name: String,
}

impl Origin {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Origin { commit_lsn: r.lsn()?, name: r.string("origin name")? })
    }
}

/// `Y`: describes a type that is not built in, before a Relation that uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    /// Transaction id, only inside a stream block.
    pub xid: Option<u32>,
    /// Type OID.
    pub type_oid: u32,
    /// Schema name; empty means `pg_catalog`.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

impl TypeMessage {
    pub(crate) fn read(r: &mut Reader, xid: Option<u32>) -> Result<Self, DecodeError> {
        Ok(TypeMessage { xid, type_oid: r.u32()?, namespace: r.string("namespace")?, name: r.string("type name")? })
    }
}

/// `M`: a message written by `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Transaction id, only inside a stream block.
    pub xid: Option<u32>,
    /// Whether the message was emitted as part of its transaction (else it was sent immediately).
    pub transactional: bool,
    /// LSN of the message.
    pub lsn: Lsn,
    /// The message prefix.
    pub prefix: String,
    /// The message content (a slice of the input).
    pub content: Bytes,
}

impl LogicalMessage {
    /// Flag bit: transactional message.
    pub const TRANSACTIONAL: u8 = 1;

    pub(crate) fn read(r: &mut Reader, xid: Option<u32>) -> Result<Self, DecodeError> {
        let transactional = r.u8()? & Self::TRANSACTIONAL != 0;
        let lsn = r.lsn()?;
        let prefix = r.string("prefix")?;
        let len = r.u32()?;
        let content = r.take(usize::try_from(len).unwrap_or(usize::MAX))?;
        Ok(LogicalMessage { xid, transactional, lsn, prefix, content })
    }
}
