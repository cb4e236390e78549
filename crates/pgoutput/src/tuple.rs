//! Row images (`TupleData`) inside Insert, Update and Delete messages.
//!
//! In: the `TupleData` part of a change message. Out: a [`Tuple`] whose text and binary values are zero-copy slices of
//! the message buffer. Column names and types come separately, from the Relation message
//! ([`crate::RelationCache::row`]). Format: `TupleData` in
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.

use bytes::Bytes;

use crate::reader::Reader;
use crate::DecodeError;

/// One row image: a value per column, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<TupleValue>);

/// One column of a [`Tuple`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an unchanged TOASTed value that Postgres did not send (its value is whatever it was before).
    UnchangedToast,
    /// `t`: the value in the type's text output format.
    Text(Bytes),
    /// `b`: the value in the type's binary send format (only with the `binary` option).
    Binary(Bytes),
}

impl Tuple {
    /// Number of columns.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the tuple has no columns.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates over the columns in order.
    pub fn iter(&self) -> std::slice::Iter<'_, TupleValue> {
        self.0.iter()
    }

    pub(crate) fn read(r: &mut Reader) -> Result<Tuple, DecodeError> {
        let count = r.u16()?;
        let mut values = Vec::with_capacity(usize::from(count).min(r.remaining()));
        for _ in 0..count {
            let value = match r.u8()? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = r.u32()?;
                    TupleValue::Text(r.take(len_to_usize(len, r)?)?)
                }
                b'b' => {
                    let len = r.u32()?;
                    TupleValue::Binary(r.take(len_to_usize(len, r)?)?)
                }
                kind => return Err(DecodeError::UnknownColumnKind { message: r.message(), kind }),
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }
}

fn len_to_usize(len: u32, r: &Reader) -> Result<usize, DecodeError> {
    usize::try_from(len).map_err(|_| DecodeError::Truncated {
        message: r.message(),
        needed: usize::MAX,
        available: r.remaining(),
    })
}

impl<'a> IntoIterator for &'a Tuple {
    type Item = &'a TupleValue;
    type IntoIter = std::slice::Iter<'a, TupleValue>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl TupleValue {
    /// Whether this is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, TupleValue::Null)
    }

    /// The text-format bytes, if this is a text value.
    pub fn as_text_bytes(&self) -> Option<&Bytes> {
        match self {
            TupleValue::Text(bytes) => Some(bytes),
            _ => None,
        }
    }
}
