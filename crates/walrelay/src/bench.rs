//! `walrelay bench`: throughput and latency on throwaway local servers.
//!
//! Backlog drain: N events of about `--payload-bytes` are committed while the relay is stopped; then the relay
//! starts and the rate from the first to the last ack is measured. Live latency: events are committed at a steady
//! rate while the relay runs; commit→store latency percentiles come from each stored message's commit time and
//! JetStream's store time. Peak memory is the process's VmHWM (relay and bench share the process).

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use clap::Args;
use walrelay_core::{
    config::{ConfigError, RawSettings, Settings},
    relay, source,
};
use walrelay_testkit::{Nats, Postgres};

/// Options of `walrelay bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Events in the backlog-drain run
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Events per transaction
    #[arg(long, default_value_t = 100)]
    tx_size: u64,
    /// Approximate payload size in bytes
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Events in the live-latency run (0 to skip)
    #[arg(long, default_value_t = 5_000)]
    latency_events: u64,
    /// Commit rate of the live-latency run, events per second
    #[arg(long, default_value_t = 2_000)]
    latency_rate: u64,
}

impl BenchArgs {
    /// Checks the numbers before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.events == 0 || self.tx_size == 0 || self.latency_rate == 0 {
            return Err(ConfigError::Invalid {
                option: "--events/--tx-size/--latency-rate",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: &BenchArgs) -> anyhow::Result<u8> {
    let (pg, nats) = tokio::task::spawn_blocking(|| -> anyhow::Result<(Postgres, Nats)> {
        Ok((Postgres::start().context("starting PostgreSQL")?, Nats::start().context("starting nats-server")?))
    })
    .await??;
    pg.psql(walrelay_core::mapping::outbox::DEFAULT_TABLE_DDL)?;
    let raw = RawSettings {
        pg_url: pg.url("postgres"),
        nats_url: nats.url(),
        stream: "BENCH".into(),
        progress_interval: "1h".into(),
        ..RawSettings::default()
    };
    let settings = Settings::validate(raw)?;
    walrelay_core::ops::setup::run(&settings).await?;
    let control = source::connect(&settings.pg_url).await?;

    // Backlog: commit everything first.
    let filler = "x".repeat(args.payload_bytes.saturating_sub(40));
    let t0 = Instant::now();
    let mut written = 0u64;
    while written < args.events {
        let n = args.tx_size.min(args.events - written);
        let sql = format!(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'order', g::text, 'created', jsonb_build_object('n', g, 'pad', '{filler}') \
             FROM generate_series({}, {}) g",
            written,
            written + n - 1
        );
        control.batch_execute(&sql).await?;
        written += n;
    }
    println!(
        "backlog: {} events of ~{} bytes in transactions of {} committed in {:.1}s",
        args.events,
        args.payload_bytes,
        args.tx_size,
        t0.elapsed().as_secs_f64()
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stats = Arc::new(walrelay_core::stats::Stats::default());
    let task = {
        let (settings, stats) = (settings.clone(), stats.clone());
        walrelay_core::spawn_named("relay", async move { relay::run(&settings, stop_rx, stats).await })
    };
    let started = Instant::now();
    let mut first_ack: Option<Instant> = None;
    loop {
        let acked = stats.acked.load(Ordering::Relaxed);
        if acked > 0 && first_ack.is_none() {
            first_ack = Some(Instant::now());
        }
        if acked >= args.events {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("backlog not drained within 600s ({acked} of {} acked)", args.events);
        }
        if task.is_finished() {
            anyhow::bail!("relay stopped during the benchmark");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let last_ack = Instant::now();
    let first = first_ack.unwrap_or(started);
    let secs = last_ack.duration_since(first).as_secs_f64().max(1e-6);
    println!(
        "backlog drain: {} events in {:.2}s from first to last ack = {:.0} events/s (start→first ack {:.0} ms)",
        args.events,
        secs,
        args.events as f64 / secs,
        first.duration_since(started).as_secs_f64() * 1000.0
    );

    if args.latency_events > 0 {
        live_latency(args, &control, &nats, &stats).await?;
    }
    raw_ceiling(args, &settings).await?;
    println!("peak memory (VmHWM, relay + bench in one process): {}", peak_rss());
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    tokio::task::spawn_blocking(move || {
        drop(pg);
        drop(nats);
    })
    .await?;
    Ok(0)
}

async fn live_latency(
    args: &BenchArgs,
    control: &tokio_postgres::Client,
    nats: &Nats,
    stats: &walrelay_core::stats::Stats,
) -> anyhow::Result<()> {
    let base = stats.acked.load(Ordering::Relaxed);
    let interval = Duration::from_secs_f64(1.0 / args.latency_rate as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let insert = control
        .prepare("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', $1, 'live', '{\"live\":true}')")
        .await?;
    let t0 = Instant::now();
    for i in 0..args.latency_events {
        ticker.tick().await;
        control.execute(&insert, &[&i.to_string()]).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.acked.load(Ordering::Relaxed) < base + args.latency_events {
        anyhow::ensure!(Instant::now() < deadline, "live events not acked within 60s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let offered = args.latency_events as f64 / t0.elapsed().as_secs_f64();
    // Read the live events back: commit time header vs JetStream store time.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let stream = js.get_stream("BENCH").await?;
    let mut latencies = Vec::with_capacity(args.latency_events as usize);
    for seq in base + 1..=base + args.latency_events {
        let msg = stream.get_raw_message(seq).await?;
        let commit = msg.headers.get("Outbox-Commit-Time").and_then(|v| humantime::parse_rfc3339(v.as_str()).ok());
        let stored: SystemTime = msg.time.into();
        if let Some(d) = commit.and_then(|c| stored.duration_since(c).ok()) {
            latencies.push(d);
        }
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .map(|d| format!("{:.2} ms", d.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "live: {} events at {:.0} events/s offered (one transaction each); commit→stored latency p50 {} p90 {} p99 {} max {}",
        latencies.len(),
        offered,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}

/// Fewest messages the ceiling is measured with: below this, connection warm-up and the first acks dominate and the
/// "ceiling" comes out below the relay's own figure.
const CEILING_MIN_MESSAGES: u64 = 50_000;

/// Messages of the backlog's size published straight to JetStream with the relay's publisher and window (at least
/// [`CEILING_MIN_MESSAGES`], and after a warm-up): the ceiling the relay is measured against.
async fn raw_ceiling(args: &BenchArgs, settings: &Settings) -> anyhow::Result<()> {
    let count = args.events.max(CEILING_MIN_MESSAGES);
    let warmup = count / 10;
    let mut raw = settings.clone();
    raw.stream = "BENCH_RAW".into();
    raw.subject = walrelay_core::mapping::subject::SubjectTemplate::parse("raw.{x}").map_err(anyhow::Error::msg)?;
    raw.dead_letter_subject = "raw.dead-letter".into();
    let (client, js) = walrelay_core::sink::stream::connect(&raw).await?;
    walrelay_core::sink::stream::ensure(&js, &raw, true).await?;
    let mut publisher = walrelay_core::sink::publisher::Publisher::fenced(&client, 0, raw.publish_timeout).await?;
    let payload =
        bytes::Bytes::from(format!("{{\"n\":0,\"pad\":\"{}\"}}", "x".repeat(args.payload_bytes.saturating_sub(40))));
    let mut t0 = Instant::now();
    let mut acked = 0u64;
    for i in 0..warmup + count {
        if i == warmup {
            while acked < warmup {
                publisher.next_ack().await?;
                acked += 1;
            }
            t0 = Instant::now();
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("raw-{i}"));
        headers.insert("Outbox-Aggregate-Type", "order");
        headers.insert("Outbox-Aggregate-Id", i.to_string());
        headers.insert("Outbox-Event-Type", "created");
        headers.insert("Outbox-Commit-Lsn", "0/1A2B3C4");
        headers.insert("Outbox-Commit-Time", "2026-01-01T00:00:00.000000Z");
        headers.insert("Outbox-Index", (i % 100).to_string());
        let event = walrelay_core::mapping::event::Event {
            id: format!("raw-{i}"),
            subject: "raw.x".into(),
            headers,
            payload: payload.clone(),
            position: walrelay_core::mapping::event::Position { commit_lsn: pgoutput::Lsn(0), index: 0 },
            table: "".into(),
            dead_letter: false,
        };
        while publisher.in_flight() >= raw.max_in_flight {
            publisher.next_ack().await?;
            acked += 1;
        }
        publisher.send(event, ()).await?;
    }
    while acked < warmup + count {
        publisher.next_ack().await?;
        acked += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "ceiling: {count} messages (after {warmup} warm-up) published straight to JetStream (same size, headers and \
         window) in {secs:.2}s = {:.0} msgs/s",
        count as f64 / secs
    );
    Ok(())
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}
