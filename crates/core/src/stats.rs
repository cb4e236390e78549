//! The relay's counters: one place that both keeps them for the caller (progress logs, `demo`, `bench`) and emits
//! them as metrics (`metrics` facade; `run --metrics-addr` exposes them for Prometheus).
//!
//! In: calls from the relay's main loop as events are published, acked, skipped or dead-lettered and as the
//! confirmed LSN moves; the slot's row of `pg_replication_slots`, read by the relay every progress interval; the
//! readiness, read when `/metrics` is scraped. Out: atomics readable from any task, and counters, gauges and one
//! histogram named `walrelay_*`, each with its `# HELP` text from [`METRICS`] (the one table of names; the
//! exporter's text format: <https://prometheus.io/docs/instrumenting/exposition_formats/>).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use pgoutput::Lsn;

/// `walrelay_durability_pending_events`.
const DURABILITY_PENDING: &str = "walrelay_durability_pending_events";

/// What a metric is, for its `# TYPE` and `# HELP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution (buckets, sum, count).
    Histogram,
}

/// `walrelay_commit_to_ack_seconds`: from a transaction's commit time to the JetStream ack of each of its events.
pub const COMMIT_TO_ACK_SECONDS: &str = "walrelay_commit_to_ack_seconds";
/// `walrelay_ready`: 1 while `/readyz` answers 200.
pub const READY: &str = "walrelay_ready";
/// `walrelay_nats_connected`: 1 while the streaming session's NATS connection is up.
pub const NATS_CONNECTED: &str = "walrelay_nats_connected";
/// `walrelay_slot_safe_wal_size_bytes`, absent while `safe_wal_size` is NULL (no `max_slot_wal_keep_size`).
pub const SLOT_SAFE_WAL_SIZE_BYTES: &str = "walrelay_slot_safe_wal_size_bytes";

/// Every metric walrelay exports: name, kind, help text. Registered (described) once in [`Stats::new`].
pub const METRICS: &[(&str, Kind, &str)] = &[
    ("walrelay_events_published_total", Kind::Counter, "Events sent to JetStream (dead-letter records included)."),
    ("walrelay_events_acked_total", Kind::Counter, "Events JetStream acked (stored)."),
    ("walrelay_events_skipped_total", Kind::Counter, "Events not sent because the stream already held them."),
    (
        "walrelay_events_dead_lettered_total",
        Kind::Counter,
        "Dead-letter records published in place of invalid events (--on-invalid dead-letter).",
    ),
    ("walrelay_sessions_total", Kind::Counter, "Replication sessions started (a rise means reconnects)."),
    ("walrelay_confirmed_lsn", Kind::Gauge, "LSN confirmed to the slot (confirmed_flush_lsn), as a number."),
    (
        "walrelay_acked_lsn",
        Kind::Gauge,
        "Commit LSN of the transaction of the last event JetStream acked, as a number.",
    ),
    ("walrelay_in_flight_events", Kind::Gauge, "Events published and not yet acked."),
    ("walrelay_lag_bytes", Kind::Gauge, "Bytes between the server's WAL end and the confirmed LSN."),
    (
        "walrelay_slot_retained_bytes",
        Kind::Gauge,
        "WAL the slot keeps on the server: current WAL position minus the slot's restart_lsn.",
    ),
    (
        SLOT_SAFE_WAL_SIZE_BYTES,
        Kind::Gauge,
        "Bytes that can still be written before the slot is in danger of being lost (safe_wal_size); absent when \
         max_slot_wal_keep_size is unlimited.",
    ),
    (
        "walrelay_slot_invalidated",
        Kind::Gauge,
        "1 when the slot is lost (wal_status lost), conflicting or invalidated: it cannot be read any more.",
    ),
    (READY, Kind::Gauge, "1 while /readyz answers 200 (a session streams and NATS is connected)."),
    (NATS_CONNECTED, Kind::Gauge, "1 while the streaming session's NATS connection is up."),
    (
        COMMIT_TO_ACK_SECONDS,
        Kind::Histogram,
        "Seconds from a transaction's commit time to the JetStream ack, one observation per event.",
    ),
    ("walrelay_build_info", Kind::Gauge, "Always 1; the label version is walrelay's version."),
    ("walrelay_rows_pruned_total", Kind::Counter, "Outbox rows deleted by --prune-after."),
    (
        DURABILITY_PENDING,
        Kind::Gauge,
        "Events JetStream acked that wait for --nats-sync-interval before the slot confirms them.",
    ),
    (
        "walrelay_batched_publishes_total",
        Kind::Counter,
        "Events published in fast batches (nats-server 2.14+ with allow_batched; one cumulative ack per flow window).",
    ),
];

/// The buckets of [`COMMIT_TO_ACK_SECONDS`], in seconds: from a millisecond (a relay keeping up) to ten minutes (one
/// that was stopped or fell far behind).
pub const COMMIT_TO_ACK_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0];

/// Gives every metric of [`METRICS`] its `# HELP` text (with the installed recorder; a no-op without one).
pub fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, metrics::Unit::Seconds, help),
        }
    }
}

/// Seconds between the Unix epoch and Postgres' (2000-01-01 UTC), in which commit times count microseconds.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// A commit time in microseconds since the Postgres epoch, as the Unix time it is.
fn pg_time(commit_time_micros: i64) -> SystemTime {
    let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    let offset = Duration::from_micros(commit_time_micros.unsigned_abs());
    if commit_time_micros >= 0 {
        pg_epoch + offset
    } else {
        pg_epoch - offset
    }
}

/// The slot's figures the relay reads every progress interval (design.md §4g).
#[derive(Debug, Clone, Copy, Default)]
pub struct SlotFigures {
    /// Current WAL position minus `restart_lsn`.
    pub retained_bytes: u64,
    /// `safe_wal_size`; `None` when unlimited.
    pub safe_wal_size: Option<i64>,
    /// Lost, conflicting or invalidated.
    pub invalidated: bool,
}

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
    // Durability (design.md §4d).
    durability_pending: metrics::Gauge,
    acked_lsn: metrics::Gauge,
    commit_to_ack: metrics::Histogram,
    slot_retained: metrics::Gauge,
    slot_invalidated: metrics::Gauge,
    /// Registered at the first limited `safe_wal_size`, so the metric is absent while it is unlimited.
    slot_safe_wal_size: OnceLock<metrics::Gauge>,
    // Fast-batch publishing (sink::batch).
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
            durability_pending: metrics::gauge!(DURABILITY_PENDING),
            acked_lsn: metrics::gauge!("walrelay_acked_lsn"),
            commit_to_ack: metrics::histogram!(COMMIT_TO_ACK_SECONDS),
            slot_retained: metrics::gauge!("walrelay_slot_retained_bytes"),
            slot_invalidated: metrics::gauge!("walrelay_slot_invalidated"),
            slot_safe_wal_size: OnceLock::new(),
            batched: metrics::counter!("walrelay_batched_publishes_total"),
        };
        describe();
        metrics::gauge!("walrelay_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        metrics::gauge!(READY).set(0.0);
        metrics::gauge!(NATS_CONNECTED).set(0.0);
        metrics.batched.absolute(0);
        for counter in [&metrics.published, &metrics.acked, &metrics.skipped, &metrics.dead_lettered, &metrics.sessions]
        {
            counter.absolute(0);
        }
        metrics.durability_pending.set(0.0);
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

    /// An event of the transaction that began at `commit_lsn` and committed at `commit_time_micros` (Postgres
    /// epoch) was acked: the acked LSN and one observation of the commit-to-ack latency (no allocation).
    pub fn acked_at(&self, commit_lsn: Lsn, commit_time_micros: i64, now: SystemTime) {
        self.metrics.acked_lsn.set(commit_lsn.0 as f64);
        let latency = now.duration_since(pg_time(commit_time_micros)).unwrap_or(Duration::ZERO);
        self.metrics.commit_to_ack.record(latency.as_secs_f64());
    }

    /// The slot's figures, read from `pg_replication_slots` (`safe_wal_size` NaN once limited and now unlimited).
    pub fn slot(&self, figures: SlotFigures) {
        self.metrics.slot_retained.set(figures.retained_bytes as f64);
        self.metrics.slot_invalidated.set(if figures.invalidated { 1.0 } else { 0.0 });
        match figures.safe_wal_size {
            Some(bytes) => self
                .metrics
                .slot_safe_wal_size
                .get_or_init(|| metrics::gauge!(SLOT_SAFE_WAL_SIZE_BYTES))
                .set(bytes as f64),
            None => {
                if let Some(gauge) = self.metrics.slot_safe_wal_size.get() {
                    gauge.set(f64::NAN);
                }
            }
        }
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

    /// Acked events waiting for `--nats-sync-interval`.
    pub fn durability_pending(&self, events: u64) {
        self.metrics.durability_pending.set(events as f64);
    }

    /// Periodic gauges: events in flight and bytes between the server's WAL end and the confirmed LSN.
    pub fn progress(&self, in_flight: usize, lag_bytes: u64) {
        self.metrics.in_flight.set(in_flight as f64);
        self.metrics.lag_bytes.set(lag_bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_once_and_commit_times_count_from_2000() {
        let mut names: Vec<&str> = METRICS.iter().map(|(name, _, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "a metric is listed twice");
        assert!(METRICS.iter().all(|(name, _, help)| name.starts_with("walrelay_") && !help.is_empty()));
        assert_eq!(pg_time(0), UNIX_EPOCH + Duration::from_secs(946_684_800));
        assert_eq!(pg_time(-1_000_000), UNIX_EPOCH + Duration::from_secs(946_684_799));
    }
}
