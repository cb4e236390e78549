//! The relay's counters: one place that both keeps them for the caller (progress logs, `demo`, `bench`) and emits
//! them as metrics (`metrics` facade; `run --metrics-addr` exposes them for Prometheus).
//!
//! In: calls from the relay's main loop as events are published, acked, skipped or dead-lettered and as the
//! confirmed LSN moves. Out: atomics readable from any task, and counters/gauges named `walrelay_*`.

use std::sync::atomic::{AtomicU64, Ordering};

use pgoutput::Lsn;

/// Counters shared with the caller.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events sent to JetStream.
    pub published: AtomicU64,
    /// Events acked by JetStream.
    pub acked: AtomicU64,
    /// Events skipped because the stream already held them.
    pub skipped: AtomicU64,
    /// Dead-letter records published.
    pub dead_lettered: AtomicU64,
    /// The last confirmed LSN.
    pub confirmed: AtomicU64,
    /// Sessions started.
    pub sessions: AtomicU64,
}

impl Stats {
    /// An event was sent.
    pub fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("walrelay_events_published_total").increment(1);
    }

    /// An event was acked by JetStream.
    pub fn acked(&self) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("walrelay_events_acked_total").increment(1);
    }

    /// An event was skipped because the stream already held it.
    pub fn skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("walrelay_events_skipped_total").increment(1);
    }

    /// A dead-letter record replaced an invalid event.
    pub fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("walrelay_events_dead_lettered_total").increment(1);
    }

    /// The confirmed LSN moved.
    pub fn confirmed(&self, lsn: Lsn) {
        self.confirmed.store(lsn.0, Ordering::Relaxed);
        metrics::gauge!("walrelay_confirmed_lsn").set(lsn.0 as f64);
    }

    /// A replication session started.
    pub fn session_started(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("walrelay_sessions_total").increment(1);
    }

    /// Periodic gauges: events in flight and bytes between the server's WAL end and the confirmed LSN.
    pub fn progress(&self, in_flight: usize, lag_bytes: u64) {
        metrics::gauge!("walrelay_in_flight_events").set(in_flight as f64);
        metrics::gauge!("walrelay_lag_bytes").set(lag_bytes as f64);
    }
}
