//! Mapping: where a row becomes a message.
//!
//! In: decoded outbox inserts (a relation and its tuple) with their position in the transaction. Out: an [`event::Event`]
//! with the subject (from the parsed [`subject::SubjectTemplate`]), the headers and the payload that go on the wire, or an
//! [`outbox::InvalidEvent`] naming why it cannot be published as is.

pub mod event;
#[cfg(any(test, feature = "testing"))]
pub mod fixture;
pub mod outbox;
pub mod subject;

#[cfg(test)]
mod proptests;
