//! Encodes [`Message`]s back into pgoutput bytes: the inverse of [`crate::Decoder::decode`], for tests, property
//! tests and fuzz seeds (cargo feature `encode`).
//!
//! In: a message. Out: its bytes as a walsender would send them. Messages carrying `xid: Some(..)` are encoded with
//! the stream-block transaction id prefix; decode them inside a stream block. Formats:
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{Lsn, Message, Tuple, TupleValue};

/// Why a message cannot be represented on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A string contains a NUL byte, which would end it early.
    #[error("{field} contains a NUL byte")]
    InteriorNul {
        /// The field.
        field: &'static str,
    },
    /// An Update has both `old_key` and `old`, or a Delete has neither or both.
    #[error("{message} needs {expected} of old_key and old")]
    OldTuple {
        /// The message.
        message: &'static str,
        /// What the message needs ("exactly one", "at most one").
        expected: &'static str,
    },
    /// A count or length does not fit its wire field.
    #[error("{field} is too long ({len})")]
    TooLong {
        /// The field.
        field: &'static str,
        /// The length or count.
        len: usize,
    },
}

/// Encodes one message.
pub fn encode(message: &Message) -> Result<Bytes, EncodeError> {
    let mut w = Writer(BytesMut::new());
    w.0.put_u8(message.tag());
    match message {
        Message::Begin(m) => {
            w.lsn(m.final_lsn);
            w.0.put_i64(m.commit_time);
            w.0.put_u32(m.xid);
        }
        Message::Commit(m) => {
            w.0.put_u8(m.flags);
            w.lsn(m.commit_lsn);
            w.lsn(m.end_lsn);
            w.0.put_i64(m.commit_time);
        }
        Message::Origin(m) => {
            w.lsn(m.commit_lsn);
            w.string(&m.name, "origin name")?;
        }
        Message::Relation(m) => {
            w.xid(m.xid);
            w.0.put_u32(m.id);
            w.string(&m.namespace, "namespace")?;
            w.string(&m.name, "relation name")?;
            w.0.put_u8(m.replica_identity);
            w.0.put_u16(count_u16(m.columns.len(), "columns")?);
            for column in &m.columns {
                w.0.put_u8(column.flags);
                w.string(&column.name, "column name")?;
                w.0.put_u32(column.type_oid);
                w.0.put_i32(column.type_modifier);
            }
        }
        Message::Type(m) => {
            w.xid(m.xid);
            w.0.put_u32(m.type_oid);
            w.string(&m.namespace, "namespace")?;
            w.string(&m.name, "type name")?;
        }
        Message::Insert(m) => {
            w.xid(m.xid);
            w.0.put_u32(m.relation_id);
            w.0.put_u8(b'N');
            w.tuple(&m.new)?;
        }
        Message::Update(m) => {
            w.xid(m.xid);
            w.0.put_u32(m.relation_id);
            if m.old_key.is_some() && m.old.is_some() {
                return Err(EncodeError::OldTuple { message: "Update", expected: "at most one" });
            }
            w.old(m.old_key.as_ref(), m.old.as_ref())?;
            w.0.put_u8(b'N');
            w.tuple(&m.new)?;
        }
        Message::Delete(m) => {
            w.xid(m.xid);
            w.0.put_u32(m.relation_id);
            if m.old_key.is_some() == m.old.is_some() {
                return Err(EncodeError::OldTuple { message: "Delete", expected: "exactly one" });
            }
            w.old(m.old_key.as_ref(), m.old.as_ref())?;
        }
        Message::Truncate(m) => {
            w.xid(m.xid);
            w.0.put_u32(count_u32(m.relation_ids.len(), "relation ids")?);
            w.0.put_u8(m.options);
            for id in &m.relation_ids {
                w.0.put_u32(*id);
            }
        }
        Message::Message(m) => {
            w.xid(m.xid);
            w.0.put_u8(u8::from(m.transactional));
            w.lsn(m.lsn);
            w.string(&m.prefix, "prefix")?;
            w.0.put_u32(count_u32(m.content.len(), "content")?);
            w.0.put_slice(&m.content);
        }
        Message::StreamStart(m) => {
            w.0.put_u32(m.xid);
            w.0.put_u8(u8::from(m.first_segment));
        }
        Message::StreamStop => {}
        Message::StreamCommit(m) => {
            w.0.put_u32(m.xid);
            w.0.put_u8(m.flags);
            w.lsn(m.commit_lsn);
            w.lsn(m.end_lsn);
            w.0.put_i64(m.commit_time);
        }
        Message::StreamAbort(m) => {
            w.0.put_u32(m.xid);
            w.0.put_u32(m.subxid);
            if let Some(abort) = m.abort {
                w.lsn(abort.lsn);
                w.0.put_i64(abort.time);
            }
        }
        Message::BeginPrepare(m) => {
            w.lsn(m.prepare_lsn);
            w.lsn(m.end_lsn);
            w.0.put_i64(m.prepare_time);
            w.0.put_u32(m.xid);
            w.string(&m.gid, "gid")?;
        }
        Message::Prepare(m) => w.prepare(m.flags, m.prepare_lsn, m.end_lsn, m.prepare_time, m.xid, &m.gid)?,
        Message::CommitPrepared(m) => w.prepare(m.flags, m.commit_lsn, m.end_lsn, m.commit_time, m.xid, &m.gid)?,
        Message::RollbackPrepared(m) => {
            w.0.put_u8(m.flags);
            w.lsn(m.prepare_end_lsn);
            w.lsn(m.rollback_end_lsn);
            w.0.put_i64(m.prepare_time);
            w.0.put_i64(m.rollback_time);
            w.0.put_u32(m.xid);
            w.string(&m.gid, "gid")?;
        }
        Message::StreamPrepare(m) => w.prepare(m.flags, m.prepare_lsn, m.end_lsn, m.prepare_time, m.xid, &m.gid)?,
    }
    Ok(w.0.freeze())
}

struct Writer(BytesMut);

impl Writer {
    fn lsn(&mut self, lsn: Lsn) {
        self.0.put_u64(lsn.0);
    }

    fn xid(&mut self, xid: Option<u32>) {
        if let Some(xid) = xid {
            self.0.put_u32(xid);
        }
    }

    fn string(&mut self, text: &str, field: &'static str) -> Result<(), EncodeError> {
        if text.as_bytes().contains(&0) {
            return Err(EncodeError::InteriorNul { field });
        }
        self.0.put_slice(text.as_bytes());
        self.0.put_u8(0);
        Ok(())
    }

    fn tuple(&mut self, tuple: &Tuple) -> Result<(), EncodeError> {
        self.0.put_u16(count_u16(tuple.len(), "tuple columns")?);
        for value in tuple {
            match value {
                TupleValue::Null => self.0.put_u8(b'n'),
                TupleValue::UnchangedToast => self.0.put_u8(b'u'),
                TupleValue::Text(data) | TupleValue::Binary(data) => {
                    self.0.put_u8(if matches!(value, TupleValue::Text(_)) { b't' } else { b'b' });
                    self.0.put_u32(count_u32(data.len(), "column value")?);
                    self.0.put_slice(data);
                }
            }
        }
        Ok(())
    }

    fn old(&mut self, old_key: Option<&Tuple>, old: Option<&Tuple>) -> Result<(), EncodeError> {
        if let Some(key) = old_key {
            self.0.put_u8(b'K');
            self.tuple(key)?;
        }
        if let Some(old) = old {
            self.0.put_u8(b'O');
            self.tuple(old)?;
        }
        Ok(())
    }

    /// The layout shared by Prepare, Commit Prepared and Stream Prepare.
    fn prepare(
        &mut self,
        flags: u8,
        lsn: Lsn,
        end_lsn: Lsn,
        time: i64,
        xid: u32,
        gid: &str,
    ) -> Result<(), EncodeError> {
        self.0.put_u8(flags);
        self.lsn(lsn);
        self.lsn(end_lsn);
        self.0.put_i64(time);
        self.0.put_u32(xid);
        self.string(gid, "gid")
    }
}

fn count_u16(len: usize, field: &'static str) -> Result<u16, EncodeError> {
    u16::try_from(len).map_err(|_| EncodeError::TooLong { field, len })
}

fn count_u32(len: usize, field: &'static str) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| EncodeError::TooLong { field, len })
}
