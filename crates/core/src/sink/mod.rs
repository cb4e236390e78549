//! The sink: JetStream.
//!
//! In: mapped events, in commit order. Out: acks, in the same order. [`connect`] reaches the server (authentication,
//! TLS), [`stream`] makes sure the stream exists and reads its tail (the high-water mark); [`publisher`] pipelines
//! publishes (behind the ordering fence for `run`) over a [`transport`], or in fast batches ([`batch`], nats-server 2.14+).
//! See <https://docs.nats.io/nats-concepts/jetstream/streams>.

pub mod batch;
pub mod connect;
#[cfg(test)]
pub mod memory;
pub mod publisher;
pub mod stream;
pub mod transport;
