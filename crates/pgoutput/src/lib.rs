//! A pure, panic-free decoder for PostgreSQL's `pgoutput` logical replication protocol, versions 1 to 4.
//!
//! ```text
//! XLogData payload (Bytes) ──▶ Decoder::decode ──▶ Message (Begin / Relation / Insert / ... / Commit)
//!                                                      │ Relation ──▶ RelationCache
//!                                                      │ Insert / Update / Delete tuples
//!                                                      ▼
//!                          RelationCache::row(relation_id, &tuple) ──▶ Row ──▶ Row::value(name) ──▶ Value
//! ```
//!
//! The crate does no I/O: feed it the payload of each XLogData message of a replication session started with
//! `pgoutput`, in order. [`Decoder`] checks lengths and the order of transaction boundaries (a Begin inside a
//! transaction, a Commit that does not match its Begin, a change outside a transaction are errors); nothing in it
//! panics on any input. Column values are zero-copy slices of the input [`bytes::Bytes`].
//!
//! Message formats: <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.

mod change;
mod datetime;
mod decoder;
#[cfg(any(test, feature = "encode"))]
pub mod encode;
mod error;
mod lsn;
mod message;
pub mod oid;
mod prepare;
mod reader;
mod relation;
mod stream;
mod transaction;
mod tuple;
mod value;

pub use change::{Delete, Insert, Truncate, Update};
pub use datetime::{Date, Timestamp};
pub use decoder::{Decoder, MAX_PROTOCOL_VERSION, MIN_PROTOCOL_VERSION};
pub use error::DecodeError;
pub use lsn::{Lsn, LsnParseError};
pub use message::{LogicalMessage, Message, Origin, TypeMessage};
pub use prepare::{BeginPrepare, CommitPrepared, Prepare, RollbackPrepared, StreamPrepare};
pub use relation::{Relation, RelationCache, RelationColumn, Row};
pub use stream::{StreamAbort, StreamAbortInfo, StreamCommit, StreamStart};
pub use transaction::{Begin, Commit, OpenTransaction, TransactionGuard};
pub use tuple::{Tuple, TupleValue};
pub use value::{convert, Uuid, Value};

#[cfg(test)]
mod proptests;
