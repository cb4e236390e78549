//! Table descriptions (Relation messages) and the cache that gives tuples their column names and types.
//!
//! In: Relation messages, sent before the first change of a table in a session and again after its schema changed.
//! Out: a [`RelationCache`] keyed by relation id, and [`Row`]s that pair a change's [`Tuple`] with its columns after
//! checking the column count. Format: `Relation` in
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.

use std::collections::HashMap;

use crate::reader::Reader;
use crate::value::{convert, Value};
use crate::{DecodeError, Tuple, TupleValue};

/// `R`: the description of a published table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Transaction id, only inside a stream block.
    pub xid: Option<u32>,
    /// Relation id (the table's OID).
    pub id: u32,
    /// Schema name; empty means `pg_catalog`.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// `relreplident`: `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Published columns, in tuple order.
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Bit set; [`RelationColumn::KEY`] marks a replica identity key column.
    pub flags: u8,
    /// Column name.
    pub name: String,
    /// Type OID (see [`crate::oid`]).
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// Flag bit: the column is part of the replica identity key.
    pub const KEY: u8 = 1;

    /// Whether the column is part of the replica identity key.
    pub fn is_key(&self) -> bool {
        self.flags & Self::KEY != 0
    }
}

impl Relation {
    /// `namespace.name`, with `pg_catalog` for the empty namespace.
    pub fn qualified_name(&self) -> String {
        let namespace = if self.namespace.is_empty() { "pg_catalog" } else { &self.namespace };
        format!("{namespace}.{}", self.name)
    }

    /// Position of the column called `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|column| column.name == name)
    }

    pub(crate) fn read(r: &mut Reader, xid: Option<u32>) -> Result<Self, DecodeError> {
        let id = r.u32()?;
        let namespace = r.string("namespace")?;
        let name = r.string("relation name")?;
        let replica_identity = r.u8()?;
        let count = r.u16()?;
        let mut columns = Vec::with_capacity(usize::from(count).min(r.remaining()));
        for _ in 0..count {
            columns.push(RelationColumn {
                flags: r.u8()?,
                name: r.string("column name")?,
                type_oid: r.u32()?,
                type_modifier: r.i32()?,
            });
        }
        Ok(Relation { xid, id, namespace, name, replica_identity, columns })
    }
}

/// The latest [`Relation`] seen for each relation id.
#[derive(Debug, Clone, Default)]
pub struct RelationCache {
    relations: HashMap<u32, Relation>,
}

impl RelationCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `relation`, replacing (and returning) an earlier description with the same id.
    pub fn insert(&mut self, relation: Relation) -> Option<Relation> {
        self.relations.insert(relation.id, relation)
    }

    /// The description of relation `id`.
    pub fn get(&self, id: u32) -> Option<&Relation> {
        self.relations.get(&id)
    }

    /// Forgets relation `id`.
    pub fn remove(&mut self, id: u32) -> Option<Relation> {
        self.relations.remove(&id)
    }

    /// Forgets all relations (after the replication connection was re-established).
    pub fn clear(&mut self) {
        self.relations.clear();
    }

    /// Number of known relations.
    pub fn len(&self) -> usize {
        self.relations.len()
    }

    /// Whether no relation is known.
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }

    /// Pairs `tuple` with the columns of relation `relation_id`.
    ///
    /// Fails with [`DecodeError::UnknownRelation`] or [`DecodeError::ColumnCountMismatch`].
    pub fn row<'a>(&'a self, relation_id: u32, tuple: &'a Tuple) -> Result<Row<'a>, DecodeError> {
        let relation = self.get(relation_id).ok_or(DecodeError::UnknownRelation(relation_id))?;
        if relation.columns.len() != tuple.len() {
            return Err(DecodeError::ColumnCountMismatch {
                relation: relation.qualified_name(),
                expected: relation.columns.len(),
                actual: tuple.len(),
            });
        }
        Ok(Row { relation, tuple })
    }
}

/// A tuple together with the relation that names and types its columns (same length, checked).
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    relation: &'a Relation,
    tuple: &'a Tuple,
}

impl<'a> Row<'a> {
    /// The relation the row belongs to.
    pub fn relation(&self) -> &'a Relation {
        self.relation
    }

    /// The raw tuple.
    pub fn tuple(&self) -> &'a Tuple {
        self.tuple
    }

    /// Iterates over `(column, value)` pairs in column order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a RelationColumn, &'a TupleValue)> + 'a {
        self.relation.columns.iter().zip(self.tuple.iter())
    }

    /// The raw value of the column called `name`.
    pub fn get(&self, name: &str) -> Option<&'a TupleValue> {
        self.iter().find(|(column, _)| column.name == name).map(|(_, value)| value)
    }

    /// The value of the column called `name`, converted by its type ([`convert`]); `Ok(None)` when there is no
    /// such column.
    pub fn value(&self, name: &str) -> Result<Option<Value>, DecodeError> {
        let Some((column, value)) = self.iter().find(|(column, _)| column.name == name) else {
            return Ok(None);
        };
        match convert(column.type_oid, value) {
            Ok(value) => Ok(Some(value)),
            Err(DecodeError::InvalidValue { type_oid, reason, .. }) => {
                Err(DecodeError::InvalidValue { column: Some(column.name.clone()), type_oid, reason })
            }
            Err(other) => Err(other),
        }
    }
}

impl<'a> IntoIterator for &Row<'a> {
    type Item = (&'a RelationColumn, &'a TupleValue);
    type IntoIter = std::iter::Zip<std::slice::Iter<'a, RelationColumn>, std::slice::Iter<'a, TupleValue>>;

    fn into_iter(self) -> Self::IntoIter {
        self.relation.columns.iter().zip(self.tuple.iter())
    }
}
