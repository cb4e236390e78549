//! Row changes: Insert, Update, Delete and Truncate.
//!
//! In: the change messages of a transaction. Out: typed changes that refer to their table by relation id and carry
//! [`Tuple`]s; combine them with the [`crate::RelationCache`] to get named, typed columns. Inside a stream block
//! each change carries its (sub)transaction id in `xid`. Formats:
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.

use crate::reader::Reader;
use crate::{DecodeError, Tuple};

/// `I`: a row was inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Transaction id, only inside a stream block.
    pub xid: Option<u32>,
    /// Relation id (see [`crate::Relation::id`]).
    pub relation_id: u32,
    /// The new row.
    pub new: Tuple,
}

/// `U`: a row was updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Transaction id, only inside a stream block.
    pub xid: Option<u32>,
    /// Relation id.
    pub relation_id: u32,
    /// `K`: the old replica identity key columns, when the key changed (other columns are null).
    pub old_key: Option<Tuple>,
    /// `O`: the whole old row, with `REPLICA IDENTITY FULL`.
    pub old: Option<Tuple>,
    /// The new row; unchanged TOASTed columns are [`crate::TupleValue::UnchangedToast`].
    pub new: Tuple,
}

/// `D`: a row was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Transaction id, only inside a stream block.
    pub xid: Option<u32>,
    /// Relation id.
    pub relation_id: u32,
    /// `K`: the replica identity key columns of the deleted row (other columns are null).
    pub old_key: Option<Tuple>,
    /// `O`: the whole deleted row, with `REPLICA IDENTITY FULL`.
    pub old: Option<Tuple>,
}

/// `T`: tables were truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Transaction id, only inside a stream block.
    pub xid: Option<u32>,
    /// Bit set of [`Truncate::CASCADE`] and [`Truncate::RESTART_IDENTITY`].
    pub options: u8,
    /// Relation ids of the truncated tables.
    pub relation_ids: Vec<u32>,
}

impl Truncate {
    /// Option bit: `TRUNCATE ... CASCADE`.
    pub const CASCADE: u8 = 1;
    /// Option bit: `TRUNCATE ... RESTART IDENTITY`.
    pub const RESTART_IDENTITY: u8 = 2;

    pub(crate) fn read(r: &mut Reader, xid: Option<u32>) -> Result<Self, DecodeError> {
        let count = r.u32()?;
        let options = r.u8()?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        let needed = count.saturating_mul(4);
        if needed > r.remaining() {
            return Err(DecodeError::Truncated { message: r.message(), needed, available: r.remaining() });
        }
        let mut relation_ids = Vec::with_capacity(count);
        for _ in 0..count {
            relation_ids.push(r.u32()?);
        }
        Ok(Truncate { xid, options, relation_ids })
    }
}

impl Insert {
    pub(crate) fn read(r: &mut Reader, xid: Option<u32>) -> Result<Self, DecodeError> {
        let relation_id = r.u32()?;
        expect_marker(r, b'N')?;
        Ok(Insert { xid, relation_id, new: Tuple::read(r)? })
    }
}

impl Update {
    pub(crate) fn read(r: &mut Reader, xid: Option<u32>) -> Result<Self, DecodeError> {
        let relation_id = r.u32()?;
        let (mut old_key, mut old) = (None, None);
        match r.u8()? {
            b'K' => {
                old_key = Some(Tuple::read(r)?);
                expect_marker(r, b'N')?;
            }
            b'O' => {
                old = Some(Tuple::read(r)?);
                expect_marker(r, b'N')?;
            }
            b'N' => {}
            marker => return Err(DecodeError::UnexpectedTupleMarker { message: r.message(), marker }),
        }
        Ok(Update { xid, relation_id, old_key, old, new: Tuple::read(r)? })
    }
}

impl Delete {
    pub(crate) fn read(r: &mut Reader, xid: Option<u32>) -> Result<Self, DecodeError> {
        let relation_id = r.u32()?;
        let (mut old_key, mut old) = (None, None);
        match r.u8()? {
            b'K' => old_key = Some(Tuple::read(r)?),
            b'O' => old = Some(Tuple::read(r)?),
            marker => return Err(DecodeError::UnexpectedTupleMarker { message: r.message(), marker }),
        }
        Ok(Delete { xid, relation_id, old_key, old })
    }
}

fn expect_marker(r: &mut Reader, expected: u8) -> Result<(), DecodeError> {
    match r.u8()? {
        marker if marker == expected => Ok(()),
        marker => Err(DecodeError::UnexpectedTupleMarker { message: r.message(), marker }),
    }
}
