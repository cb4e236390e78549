//! Mapping: where a row becomes a message.
//!
//! In: decoded outbox inserts (a relation and its tuple) with their position in the transaction. Out: an [`event::Event`]
//! with the subject (from the parsed [`subject::SubjectTemplate`]), the headers and the payload that go on the wire, or an
//! [`outbox::InvalidEvent`] naming why it cannot be published as is. The output options of design.md §4e (CloudEvents,
//! header columns, partitioned subjects) are options of this one mapper, not second mapping paths.

pub mod cloudevents;
pub mod event;
#[cfg(any(test, feature = "testing"))]
pub mod fixture;
pub mod header_columns;
pub mod outbox;
pub mod subject;

#[cfg(test)]
mod proptests;
