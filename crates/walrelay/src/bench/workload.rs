//! The events the bench commits: outbox rows `('order', <n>, 'created', {"n": <n>, "pad": "xx..."})` of about
//! `--payload-bytes` (the jsonb text), either as a backlog of fixed-size transactions or one per transaction at a
//! fixed rate.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Bytes of `{"n": <n>, "pad": ""}` around the padding (with a 6-digit n).
const PAYLOAD_FRAME: usize = 24;

/// What was committed.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Written {
    /// Events.
    pub events: u64,
    /// Events per transaction.
    pub tx_size: u64,
    /// Seconds the commits took.
    pub write_secs: f64,
}

/// Writes outbox rows with payloads of one size.
pub(super) struct Writer<'a> {
    control: &'a tokio_postgres::Client,
    pad: String,
}

impl<'a> Writer<'a> {
    /// Rows with payloads of about `payload_bytes`, written through `control`.
    pub fn new(control: &'a tokio_postgres::Client, payload_bytes: usize) -> Self {
        Self { control, pad: "x".repeat(payload_bytes.saturating_sub(PAYLOAD_FRAME)) }
    }

    /// Commits `events` rows in transactions of `tx_size`, numbered from `first`, as fast as one connection can.
    pub async fn backlog(&self, first: u64, events: u64, tx_size: u64) -> anyhow::Result<Written> {
        let started = Instant::now();
        let mut written = 0;
        while written < events {
            let n = tx_size.min(events - written);
            self.control.batch_execute(&insert(first + written, n, &self.pad)).await?;
            written += n;
        }
        Ok(Written { events, tx_size, write_secs: started.elapsed().as_secs_f64() })
    }

    /// Commits `events` rows, one per transaction, at `rate` per second (tokio's timer fires at most every
    /// millisecond, so at 2,000/s commits go out in pairs); returns the rate achieved.
    pub async fn paced(&self, first: u64, events: u64, rate: u64) -> anyhow::Result<f64> {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        for i in 0..events {
            ticker.tick().await;
            self.control.batch_execute(&insert(first + i, 1, &self.pad)).await?;
        }
        Ok(events as f64 / started.elapsed().as_secs_f64())
    }
}

/// One transaction of `n` rows numbered from `first`.
fn insert(first: u64, n: u64, pad: &str) -> String {
    format!(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
         SELECT 'order', g::text, 'created', jsonb_build_object('n', g, 'pad', '{pad}') \
         FROM generate_series({first}::bigint, {last}::bigint) g",
        last = first + n - 1
    )
}
