//! The stateful pgoutput decoder: bytes of one message in, a validated [`Message`] out.
//!
//! In: the payload of each XLogData message of a logical replication stream started with the `pgoutput` plugin,
//! in order. Out: typed [`Message`]s whose column values are zero-copy slices of the input. The decoder tracks the
//! state the format depends on (inside a stream block, changes carry a transaction id) and rejects impossible
//! sequences (design rule 10) and malformed buffers with a [`DecodeError`]; it never panics. A failed call leaves
//! the state unchanged. Formats: <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.

use bytes::Bytes;

use crate::reader::Reader;
use crate::transaction::OpenTransaction;
use crate::{
    Begin, BeginPrepare, Commit, CommitPrepared, DecodeError, Delete, Insert, LogicalMessage, Lsn, Message, Origin,
    Prepare, Relation, RollbackPrepared, StreamAbort, StreamCommit, StreamPrepare, StreamStart, TransactionGuard,
    Truncate, TypeMessage, Update,
};

/// Oldest protocol version the decoder understands.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Newest protocol version the decoder understands (PostgreSQL 16+).
pub const MAX_PROTOCOL_VERSION: u32 = 4;

/// Decodes the pgoutput messages of one replication session, in order.
#[derive(Debug, Clone)]
pub struct Decoder {
    protocol_version: u32,
    transaction: TransactionGuard,
    prepared: Option<OpenPrepared>,
    stream_xid: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct OpenPrepared {
    prepare_lsn: Lsn,
}

impl Decoder {
    /// A decoder for `proto_version` 1 to 4; fails with [`DecodeError::UnsupportedProtocolVersion`] otherwise.
    pub fn new(protocol_version: u32) -> Result<Decoder, DecodeError> {
        if !(MIN_PROTOCOL_VERSION..=MAX_PROTOCOL_VERSION).contains(&protocol_version) {
            return Err(DecodeError::UnsupportedProtocolVersion(protocol_version));
        }
        Ok(Decoder { protocol_version, transaction: TransactionGuard::new(), prepared: None, stream_xid: None })
    }

    /// The protocol version given to [`Decoder::new`].
    pub fn protocol_version(&self) -> u32 {
        self.protocol_version
    }

    /// The transaction id of the open stream block (between Stream Start and Stream Stop), if any.
    pub fn stream_xid(&self) -> Option<u32> {
        self.stream_xid
    }

    /// The open (Begin without Commit yet) transaction, if any.
    pub fn transaction(&self) -> Option<OpenTransaction> {
        self.transaction.current()
    }

    /// Forgets all open blocks (after the replication connection was re-established).
    pub fn reset(&mut self) {
        self.transaction.reset();
        self.prepared = None;
        self.stream_xid = None;
    }

    /// Decodes one message (an XLogData payload) and checks it may follow the previous ones.
    pub fn decode(&mut self, data: Bytes) -> Result<Message, DecodeError> {
        let mut r = Reader::new(data, "message tag");
        let tag = r.u8()?;
        let (name, since_version) = describe(tag).ok_or(DecodeError::UnknownTag(tag))?;
        if since_version > self.protocol_version {
            return Err(DecodeError::MessageNotInProtocol { tag, protocol_version: self.protocol_version });
        }
        r.rename(name);
        let xid = match (self.stream_xid, tag) {
            (Some(_), b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M') => Some(r.u32()?),
            _ => None,
        };
        let message = match tag {
            b'B' => Message::Begin(Begin::read(&mut r)?),
            b'C' => Message::Commit(Commit::read(&mut r)?),
            b'O' => Message::Origin(Origin::read(&mut r)?),
            b'R' => Message::Relation(Relation::read(&mut r, xid)?),
            b'Y' => Message::Type(TypeMessage::read(&mut r, xid)?),
            b'I' => Message::Insert(Insert::read(&mut r, xid)?),
            b'U' => Message::Update(Update::read(&mut r, xid)?),
            b'D' => Message::Delete(Delete::read(&mut r, xid)?),
            b'T' => Message::Truncate(Truncate::read(&mut r, xid)?),
            b'M' => Message::Message(LogicalMessage::read(&mut r, xid)?),
            b'S' => Message::StreamStart(StreamStart::read(&mut r)?),
            b'E' => Message::StreamStop,
            b'c' => Message::StreamCommit(StreamCommit::read(&mut r)?),
            b'A' => Message::StreamAbort(StreamAbort::read(&mut r, self.protocol_version)?),
            b'b' => Message::BeginPrepare(BeginPrepare::read(&mut r)?),
            b'P' => Message::Prepare(Prepare::read(&mut r)?),
            b'K' => Message::CommitPrepared(CommitPrepared::read(&mut r)?),
            b'r' => Message::RollbackPrepared(RollbackPrepared::read(&mut r)?),
            b'p' => Message::StreamPrepare(StreamPrepare::read(&mut r)?),
            _ => return Err(DecodeError::UnknownTag(tag)),
        };
        r.finish()?;
        self.transition(&message, name)?;
        Ok(message)
    }

    /// Checks `message` against the open blocks and updates them; on error nothing changes.
    fn transition(&mut self, message: &Message, name: &'static str) -> Result<(), DecodeError> {
        match message {
            Message::Begin(begin) => {
                self.outside_stream(name)?;
                if let Some(prepared) = self.prepared {
                    return Err(DecodeError::BeginInsideTransaction {
                        open: prepared.prepare_lsn,
                        new: begin.final_lsn,
                    });
                }
                self.transaction.begin(begin.final_lsn, begin.xid)
            }
            Message::Commit(commit) => {
                self.outside_stream(name)?;
                if self.prepared.is_some() {
                    return Err(DecodeError::UnexpectedInTransaction { message: name });
                }
                self.transaction.commit(commit.commit_lsn).map(drop)
            }
            Message::Origin(_) | Message::Relation(_) | Message::Type(_) => Ok(()),
            Message::Insert(_) | Message::Update(_) | Message::Delete(_) | Message::Truncate(_) => self.change(),
            Message::Message(message) if message.transactional => self.change(),
            Message::Message(_) => Ok(()),
            Message::StreamStart(start) => {
                if let Some(open_xid) = self.stream_xid {
                    return Err(DecodeError::StreamStartInsideStream { open_xid, new_xid: start.xid });
                }
                self.outside_transaction(name)?;
                self.stream_xid = Some(start.xid);
                Ok(())
            }
            Message::StreamStop => self.stream_xid.take().map(drop).ok_or(DecodeError::StreamStopWithoutStart),
            Message::StreamCommit(_)
            | Message::StreamAbort(_)
            | Message::StreamPrepare(_)
            | Message::CommitPrepared(_)
            | Message::RollbackPrepared(_) => {
                self.outside_stream(name)?;
                self.outside_transaction(name)
            }
            Message::BeginPrepare(begin) => {
                self.outside_stream(name)?;
                let open = self.transaction.current().map(|open| open.final_lsn);
                if let Some(open) = open.or(self.prepared.map(|prepared| prepared.prepare_lsn)) {
                    return Err(DecodeError::BeginInsideTransaction { open, new: begin.prepare_lsn });
                }
                self.prepared = Some(OpenPrepared { prepare_lsn: begin.prepare_lsn });
                Ok(())
            }
            Message::Prepare(prepare) => {
                self.outside_stream(name)?;
                if self.transaction.is_open() {
                    return Err(DecodeError::UnexpectedInTransaction { message: name });
                }
                let open = self.prepared.ok_or(DecodeError::PrepareWithoutBegin)?;
                if open.prepare_lsn != prepare.prepare_lsn {
                    return Err(DecodeError::PrepareLsnMismatch {
                        begin_prepare_lsn: open.prepare_lsn,
                        prepare_lsn: prepare.prepare_lsn,
                    });
                }
                self.prepared = None;
                Ok(())
            }
        }
    }

    fn change(&self) -> Result<(), DecodeError> {
        if self.stream_xid.is_some() || self.prepared.is_some() {
            Ok(())
        } else {
            self.transaction.change()
        }
    }

    fn outside_stream(&self, message: &'static str) -> Result<(), DecodeError> {
        match self.stream_xid {
            Some(_) => Err(DecodeError::UnexpectedInStream { message }),
            None => Ok(()),
        }
    }

    fn outside_transaction(&self, message: &'static str) -> Result<(), DecodeError> {
        if self.transaction.is_open() || self.prepared.is_some() {
            Err(DecodeError::UnexpectedInTransaction { message })
        } else {
            Ok(())
        }
    }
}

/// Name and first protocol version of each message tag.
fn describe(tag: u8) -> Option<(&'static str, u32)> {
    Some(match tag {
        b'B' => ("Begin", 1),
        b'C' => ("Commit", 1),
        b'O' => ("Origin", 1),
        b'R' => ("Relation", 1),
        b'Y' => ("Type", 1),
        b'I' => ("Insert", 1),
        b'U' => ("Update", 1),
        b'D' => ("Delete", 1),
        b'T' => ("Truncate", 1),
        b'M' => ("Message", 1),
        b'S' => ("Stream Start", 2),
        b'E' => ("Stream Stop", 2),
        b'c' => ("Stream Commit", 2),
        b'A' => ("Stream Abort", 2),
        b'b' => ("Begin Prepare", 3),
        b'P' => ("Prepare", 3),
        b'K' => ("Commit Prepared", 3),
        b'r' => ("Rollback Prepared", 3),
        b'p' => ("Stream Prepare", 3),
        _ => return None,
    })
}

/// For transports that parse Begin and Commit themselves (e.g. `pgwire-replication` hands them over as typed
/// events and forwards only the other messages): record the boundaries so the decoder's rule-10 checks still hold.
impl Decoder {
    /// A Begin was received outside this decoder.
    pub fn begin_transaction(&mut self, final_lsn: Lsn, xid: u32) -> Result<(), DecodeError> {
        self.transaction.begin(final_lsn, xid)
    }

    /// A Commit was received outside this decoder.
    pub fn commit_transaction(&mut self, commit_lsn: Lsn) -> Result<OpenTransaction, DecodeError> {
        self.transaction.commit(commit_lsn)
    }
}

#[cfg(test)]
mod tests;
