//! The bench's figures: one JSON object (`--json`), or one human line per figure. A phase that was skipped is
//! `null` in JSON and absent from the lines.

use serde::Serialize;

use super::{
    drain::Drained, instructions::Instructions, jetstream_ceiling::Ceiling, latency::Latency, procfs::Throughput,
    workload::Written,
};

/// Where the figures were measured.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Environment {
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// `release` or `debug` (a debug build's figures say little).
    pub profile: &'static str,
    /// When the bench started (UTC).
    pub date: String,
    /// 1/5/15-minute load averages at the start: other load on a shared machine.
    pub load_average: Option<String>,
    /// PostgreSQL's `server_version`.
    pub postgres: String,
    /// nats-server's version.
    pub nats_server: String,
    /// The walrelay executable measured as the relay.
    pub relay: String,
    /// How the relay published in the drain (the JetStream ceiling publishes the same way); null with
    /// `--instructions`.
    pub publish_mode: Option<super::lab::PublishMode>,
}

/// The backlog the drain starts from.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Backlog {
    /// What was committed (with no relay running).
    #[serde(flatten)]
    pub written: Written,
    /// Mean payload size of the stored messages, bytes.
    pub payload_bytes: f64,
}

/// The drain's rate over the ceilings'.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Ratios {
    /// drain events/s ÷ raw JetStream msgs/s.
    pub drain_to_jetstream_ceiling: f64,
    /// drain events/s ÷ walsender events/s.
    pub drain_to_walsender_ceiling: f64,
}

/// The live run at a fixed rate.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Live {
    /// Commits per second achieved.
    pub offered_per_sec: f64,
    /// Commit→stored latency.
    #[serde(flatten)]
    pub latency: Latency,
    /// From the first to the last live ack, with the CPU of the relay, walsender and nats-server per event.
    pub acked: Throughput,
}

/// One big transaction drained by a fresh relay.
#[derive(Debug, Clone, Serialize)]
pub(super) struct BigTxn {
    /// Rows in the transaction.
    pub rows: u64,
    /// Seconds its commit took.
    pub write_secs: f64,
    /// The drain, from the relay's start.
    pub drain: Drained,
    /// The relay's peak RSS, KiB.
    pub relay_peak_rss_kib: Option<u64>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Report {
    /// Where.
    pub environment: Environment,
    /// The backlog committed before the drain.
    pub backlog: Option<Backlog>,
    /// The relay draining the backlog.
    pub drain: Option<Drained>,
    /// The relay's publisher alone.
    pub jetstream_ceiling: Option<Ceiling>,
    /// The replication session alone.
    pub walsender_ceiling: Option<Throughput>,
    /// The drain against the ceilings.
    pub ratios: Option<Ratios>,
    /// The live run at a fixed rate.
    pub live: Option<Live>,
    /// The relay's peak RSS over the drain and the live run, KiB.
    pub relay_peak_rss_kib: Option<u64>,
    /// One big transaction.
    pub big_txn: Option<BigTxn>,
    /// `--instructions`: instructions per event under callgrind.
    pub instructions: Option<Instructions>,
}

impl Report {
    /// A report with only the environment.
    pub fn new(environment: Environment) -> Self {
        Self {
            environment,
            backlog: None,
            drain: None,
            jetstream_ceiling: None,
            walsender_ceiling: None,
            ratios: None,
            live: None,
            relay_peak_rss_kib: None,
            big_txn: None,
            instructions: None,
        }
    }

    /// Fills in the ratios once the drain and both ceilings are known.
    pub fn compute_ratios(&mut self) {
        if let (Some(d), Some(j), Some(w)) = (&self.drain, &self.jetstream_ceiling, &self.walsender_ceiling) {
            self.ratios = Some(Ratios {
                drain_to_jetstream_ceiling: d.throughput.per_sec / j.throughput.per_sec,
                drain_to_walsender_ceiling: d.throughput.per_sec / w.per_sec,
            });
        }
    }

    /// Prints the report: one JSON object, or the human lines.
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
        } else {
            for line in self.lines() {
                println!("{line}");
            }
        }
        Ok(())
    }

    fn lines(&self) -> Vec<String> {
        let e = &self.environment;
        let mut lines = vec![format!(
            "environment: {} cores (load average {} at start; other processes may share them), {} build, \
             PostgreSQL {}, nats-server {}, {}, relay {}{}",
            e.cores,
            e.load_average.as_deref().unwrap_or("unknown"),
            e.profile,
            e.postgres,
            e.nats_server,
            e.date,
            e.relay,
            e.publish_mode.map(|m| format!(", publish mode: {m}")).unwrap_or_default()
        )];
        if e.profile != "release" {
            lines.push(
                "warning: not a release build: these figures say little; run \
                 `cargo build --release -p walrelay && target/release/walrelay bench`"
                    .into(),
            );
        }
        if let Some(b) = &self.backlog {
            lines.push(format!(
                "backlog: {} events ({:.0}-byte payloads) in transactions of {}, committed in {:.1}s with no relay \
                 running",
                b.written.events, b.payload_bytes, b.written.tx_size, b.written.write_secs
            ));
        }
        if let Some(d) = &self.drain {
            lines.push(drain_line("backlog drain", d));
            lines.push(format!("backlog drain CPU per event: {}", d.throughput.cpu_text()));
        }
        if let Some(c) = &self.jetstream_ceiling {
            let t = &c.throughput;
            lines.push(format!(
                "JetStream ceiling: {} messages (after {} warm-up) with the relay's subjects, headers and ids, its \
                 publisher ({}) and window {}: {:.2}s = {:.0} msgs/s (CPU per message: {})",
                t.events,
                c.warmup,
                c.mode,
                c.window,
                t.secs,
                t.per_sec,
                t.cpu_text()
            ));
        }
        if let Some(w) = &self.walsender_ceiling {
            lines.push(format!(
                "walsender ceiling: {} events of the same WAL read through a replication session, decoded, not \
                 published: {:.2}s = {:.0} events/s (CPU per event: {})",
                w.events,
                w.secs,
                w.per_sec,
                w.cpu_text()
            ));
        }
        if let Some(r) = &self.ratios {
            lines.push(format!(
                "ratios: drain / JetStream ceiling {:.2}, drain / walsender ceiling {:.2}",
                r.drain_to_jetstream_ceiling, r.drain_to_walsender_ceiling
            ));
        }
        if let Some(l) = &self.live {
            let t = &l.latency;
            lines.push(format!(
                "live: {} events at {:.0} events/s offered (one transaction each): commit→stored p50 {:.2} ms, \
                 p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
                t.events, l.offered_per_sec, t.p50_ms, t.p99_ms, t.p999_ms, t.max_ms
            ));
            lines.push(format!("live CPU per event: {}", l.acked.cpu_text()));
        }
        if let Some(kib) = self.relay_peak_rss_kib {
            lines.push(format!("relay peak RSS (VmHWM), backlog drain + live: {}", mib(kib)));
        }
        if let Some(b) = &self.big_txn {
            let what =
                format!("one {}-row transaction (committed in {:.1}s with no relay running)", b.rows, b.write_secs);
            lines.push(drain_line(&what, &b.drain));
            lines.push(format!("one {}-row transaction CPU per event: {}", b.rows, b.drain.throughput.cpu_text()));
            lines.push(format!(
                "relay peak RSS (VmHWM), one {}-row transaction: {}",
                b.rows,
                b.relay_peak_rss_kib.map_or_else(|| "unknown".into(), mib)
            ));
        }
        if let Some(i) = &self.instructions {
            let runs: Vec<String> =
                i.runs.iter().map(|r| format!("{} events: {} instructions", r.events, r.instructions)).collect();
            lines.push(format!(
                "instructions per event: {:.0} (relay under callgrind; {})",
                i.per_event,
                runs.join(", ")
            ));
        }
        lines
    }
}

fn drain_line(what: &str, d: &Drained) -> String {
    let t = &d.throughput;
    format!(
        "{what}: {} events in {:.2}s from first to last ack = {:.0} events/s (relay start→first ack {:.0} ms)",
        t.events, t.secs, t.per_sec, d.start_to_first_ack_ms
    )
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB ({kib} KiB)", kib as f64 / 1024.0)
}
