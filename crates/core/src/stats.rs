//! The relay's counters: one place that both keeps them for the caller (progress logs, `demo`, `bench`) and emits
//! them as metrics (`metrics` facade; `run --metrics-addr` exposes them for Prometheus).
//!
//! In: calls from the relay's main loop as events are published, acked, skipped or dead-lettered and as the
//! confirmed LSN moves. Out: atomics readable from any task, and counters/gauges named `walrelay_*`.

use std::sync::atomic::{AtomicU64, Ordering};

use pgoutput::Lsn;

/// Counters shared with the caller, and the metric handles they feed.
///
/// The handles are registered once, when the stats are made (after the metrics exporter is installed), so every
/// counter is exported from the start at 0 and no event pays for a registry lookup.
#[derive(Debug)]
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
    /// Readiness, as `/readyz` reports it.
    pub health: std::sync::Arc<crate::health::Health>,
    metrics: Handles,
}

/// The registered metrics.
#[derive(Debug)]
struct Handles {
    published: metrics::Counter,
    acked: metrics::Counter,
    skipped: metrics::Counter,
    dead_lettered: metrics::Counter,
    sessions: metrics::Counter,
    confirmed_lsn: metrics::Gauge,
    in_flight: metrics::Gauge,
    lag_bytes: metrics::Gauge,
    // Fast-batch publishing (issue 21).
    batched: metrics::Counter,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Zeroed counters; registers every metric with the installed recorder (a no-op without one).
    pub fn new() -> Self {
        let metrics = Handles {
            published: metrics::counter!("walrelay_events_published_total"),
            acked: metrics::counter!("walrelay_events_acked_total"),
            skipped: metrics::counter!("walrelay_events_skipped_total"),
            dead_lettered: metrics::counter!("walrelay_events_dead_lettered_total"),
            sessions: metrics::counter!("walrelay_sessions_total"),
            confirmed_lsn: metrics::gauge!("walrelay_confirmed_lsn"),
            in_flight: metrics::gauge!("walrelay_in_flight_events"),
            lag_bytes: metrics::gauge!("walrelay_lag_bytes"),
            batched: metrics::counter!("walrelay_batched_publishes_total"),
        };
        metrics::describe_counter!(
            "walrelay_batched_publishes_total",
            "Events published in fast batches (nats-server 2.14+ with allow_batched; one cumulative ack per flow window)"
        );
        metrics.batched.absolute(0);
        for counter in [&metrics.published, &metrics.acked, &metrics.skipped, &metrics.dead_lettered, &metrics.sessions]
        {
            counter.absolute(0);
        }
        Self {
            published: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            health: std::sync::Arc::default(),
            metrics,
        }
    }

    /// An event was sent.
    pub fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.metrics.published.increment(1);
    }

    /// An event was sent in a fast batch (besides [`Stats::published`]).
    pub fn batched(&self) {
        self.metrics.batched.increment(1);
    }

    /// An event was acked by JetStream.
    pub fn acked(&self) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        self.metrics.acked.increment(1);
    }

    /// An event was skipped because the stream already held it.
    pub fn skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        self.metrics.skipped.increment(1);
    }

    /// A dead-letter record replaced an invalid event.
    pub fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.metrics.dead_lettered.increment(1);
    }

    /// The confirmed LSN moved.
    pub fn confirmed(&self, lsn: Lsn) {
        self.confirmed.store(lsn.0, Ordering::Relaxed);
        self.metrics.confirmed_lsn.set(lsn.0 as f64);
    }

    /// A replication session started.
    pub fn session_started(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.metrics.sessions.increment(1);
    }

    /// Periodic gauges: events in flight and bytes between the server's WAL end and the confirmed LSN.
    pub fn progress(&self, in_flight: usize, lag_bytes: u64) {
        self.metrics.in_flight.set(in_flight as f64);
        self.metrics.lag_bytes.set(lag_bytes as f64);
    }
}
