//! Commit→stored latency: for each live event, JetStream's store time minus the transaction's commit time (the
//! `Outbox-Commit-Time` header, Postgres' commit timestamp in µs). Both clocks are this machine's.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use walrelay_core::mapping::event::header;

use super::stored::StoredMessage;

/// Latency percentiles of the live run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Latency {
    /// Events whose latency was measured.
    pub events: usize,
    /// Milliseconds.
    pub p50_ms: f64,
    /// Milliseconds.
    pub p99_ms: f64,
    /// Milliseconds.
    pub p999_ms: f64,
    /// Milliseconds.
    pub max_ms: f64,
}

impl Latency {
    /// The latencies of `messages`; fails if a message lacks a readable commit time.
    pub fn of(messages: &[StoredMessage]) -> anyhow::Result<Self> {
        let mut latencies = messages.iter().map(commit_to_stored).collect::<anyhow::Result<Vec<_>>>()?;
        latencies.sort();
        let pct = |p: f64| {
            let rank = ((latencies.len() as f64 - 1.0) * p).round() as usize;
            latencies.get(rank).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        Ok(Self { events: latencies.len(), p50_ms: pct(0.5), p99_ms: pct(0.99), p999_ms: pct(0.999), max_ms: pct(1.0) })
    }
}

/// Store time minus commit time (zero if the store time is earlier, which the clocks' resolutions allow).
fn commit_to_stored(message: &StoredMessage) -> anyhow::Result<Duration> {
    let text = message
        .header(header::COMMIT_TIME)
        .ok_or_else(|| anyhow::anyhow!("a stored message has no {} header", header::COMMIT_TIME))?;
    let commit: SystemTime = humantime::parse_rfc3339(text)?;
    Ok(message.stored_at.duration_since(commit).unwrap_or_default())
}
