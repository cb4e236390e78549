//! `walrelay bench`: the relay's throughput, CPU, latency and memory against the limits of the servers it sits
//! between, on throwaway local PostgreSQL and nats-server (see docs/benchmarks.md for how to read the figures).
//!
//! The relay under test is `walrelay run` (this executable) in a child process, so its CPU time and peak memory are
//! its own. One run, each phase alone (nothing else of the bench's making runs meanwhile):
//! 1. **backlog drain**: N events in fixed-size transactions are committed while no relay runs, then the relay
//!    starts; events/s and CPU µs per event (relay, its walsender, nats-server) from the first to the last ack.
//! 2. **live**: with the same relay running, events are committed one per transaction at a fixed rate; commit→stored
//!    latency percentiles, then the relay's peak RSS over both runs.
//! 3. **walsender ceiling**: the same WAL read from a second slot (created before the backlog) through the project's
//!    replication session and assembler, nothing published.
//! 4. **JetStream ceiling**: the messages the relay stored, rebuilt and published by the relay's publisher and
//!    window into a fresh stream with the same configuration, in the publish mode the drain ran (fast batch or
//!    per-message acks, [`lab::PublishMode`]).
//! 5. **big transaction**: one transaction of `--big-txn-rows` rows drained by a fresh relay; its peak RSS.
//!
//! `--instructions` instead counts the relay's instructions per event under callgrind ([`instructions`]).

mod drain;
mod instructions;
mod jetstream_ceiling;
mod lab;
mod latency;
mod procfs;
mod report;
mod stored;
mod walsender_ceiling;
mod workload;

use anyhow::Context as _;
use clap::Args;
use walrelay_core::config::ConfigError;

use drain::Poll;
use lab::{Lab, MAIN_SLOT, STREAM};
use report::{Backlog, BigTxn, Environment, Live, Report};

/// The second slot, read for the walsender ceiling.
const WALSENDER_SLOT: &str = "bench_walsender";
/// The slot of the big-transaction relay.
const BIG_TXN_SLOT: &str = "bench_big_txn";

/// Options of `walrelay bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Events in the backlog-drain run
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Events per transaction in the backlog
    #[arg(long, default_value_t = 100)]
    tx_size: u64,
    /// Approximate payload size in bytes
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Events in the live-latency run, one transaction each (0 to skip)
    #[arg(long, default_value_t = 10_000)]
    latency_events: u64,
    /// Commit rate of the live-latency run, events per second
    #[arg(long, default_value_t = 2_000)]
    latency_rate: u64,
    /// Rows of the single big transaction drained by a fresh relay (0 to skip)
    #[arg(long, default_value_t = 1_000_000)]
    big_txn_rows: u64,
    /// The relay's --max-in-flight (also the JetStream ceiling's window)
    #[arg(long, default_value_t = walrelay_core::config::RawSettings::default().max_in_flight)]
    max_in_flight: usize,
    /// Print one JSON object instead of the human lines
    #[arg(long)]
    json: bool,
    /// Only count the relay's instructions per event under valgrind --tool=callgrind (N and 2N events)
    #[arg(long)]
    instructions: bool,
    /// N for --instructions
    #[arg(long, default_value_t = 20_000)]
    instructions_events: u64,
    /// Keep the callgrind files of --instructions in this directory (for callgrind_annotate)
    #[arg(long)]
    callgrind_dir: Option<std::path::PathBuf>,
    /// The walrelay executable to measure as the relay (default: this one), e.g. an older build to compare with;
    /// it must take `run` with the flags of design.md §4
    #[arg(long, value_name = "PATH")]
    relay: Option<std::path::PathBuf>,
    /// The nats-server executable (default: the one the tests use: WALRELAY_NATS_SERVER, then PATH, /usr/sbin,
    /// /usr/local/bin); e.g. target/servers/bin/nats-server for a current one with fast-batch publishing
    #[arg(long, value_name = "PATH")]
    nats_server: Option<std::path::PathBuf>,
}

impl BenchArgs {
    /// Checks the numbers and the relay executable before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (option, path, what) in
            [("--relay", &self.relay, "walrelay"), ("--nats-server", &self.nats_server, "nats-server")]
        {
            if let Some(path) = path.as_ref().filter(|p| !p.is_file()) {
                return Err(ConfigError::Invalid {
                    option,
                    value: path.display().to_string(),
                    reason: format!("no such file: give the path of a {what} executable"),
                });
            }
        }
        let counts = [
            ("--events", self.events),
            ("--tx-size", self.tx_size),
            ("--latency-rate", self.latency_rate),
            ("--instructions-events", self.instructions_events),
        ];
        match counts.into_iter().find(|(_, value)| *value == 0) {
            Some((option, _)) => {
                Err(ConfigError::Invalid { option, value: "0".into(), reason: "must be at least 1".into() })
            }
            None => Ok(()),
        }
    }
}

/// Runs the benchmark and prints its figures. Of the global options, `--cloudevents` (design.md §4e) and
/// `--nats-batch` are passed on to the relay under test (only when not the default, so an older relay still runs),
/// so their cost can be measured against the default.
pub async fn run(args: &BenchArgs, global: &walrelay_core::config::Settings) -> anyhow::Result<u8> {
    let relay = match &args.relay {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("locating the walrelay executable")?,
    };
    let lab = Lab::start(args.max_in_flight, relay, args.nats_server.clone(), global).await?;
    let result = async {
        let mut report = Report::new(environment(&lab).await?);
        if args.instructions {
            progress(&format!(
                "instructions: relay under callgrind, {} then {} events",
                args.instructions_events,
                2 * args.instructions_events
            ));
            report.instructions = Some(instructions::measure(&lab, args).await?);
        } else {
            measure(&lab, args, &mut report).await?;
        }
        Ok::<_, anyhow::Error>(report)
    }
    .await;
    lab.stop().await;
    result?.print(args.json)?;
    Ok(0)
}

/// The phases of one run, in order (module documentation).
async fn measure(lab: &Lab, args: &BenchArgs, report: &mut Report) -> anyhow::Result<()> {
    let (events, live_events) = (args.events, args.latency_events);
    lab.create_slot(WALSENDER_SLOT).await?;
    progress(&format!("backlog: committing {events} events"));
    let writer = workload::Writer::new(&lab.control, args.payload_bytes);
    let written = writer.backlog(0, events, args.tx_size).await?;

    progress("backlog drain: relay started");
    let relay = lab.spawn_relay(MAIN_SLOT, &[])?;
    report.drain = Some(drain::watch(lab, &relay, MAIN_SLOT, (0, events), Poll::Backlog).await?);
    let mode = relay.publish_mode();
    report.environment.publish_mode = Some(mode);
    if live_events > 0 {
        progress(&format!("live: {live_events} events at {}/s", args.latency_rate));
        let (offered, acked) = tokio::join!(
            writer.paced(events, live_events, args.latency_rate),
            drain::watch(lab, &relay, MAIN_SLOT, (events, live_events), Poll::Live)
        );
        let live = stored::read(&lab.js, STREAM, events + 1, live_events).await?;
        report.live =
            Some(Live { offered_per_sec: offered?, latency: latency::Latency::of(&live)?, acked: acked?.throughput });
    }
    report.relay_peak_rss_kib = procfs::peak_rss_kib(relay.pid());
    relay.stop().await?;
    lab.drop_slot(MAIN_SLOT).await?;

    progress("walsender ceiling");
    report.walsender_ceiling = Some(walsender_ceiling::measure(lab, WALSENDER_SLOT, events).await?);
    lab.drop_slot(WALSENDER_SLOT).await?;

    progress("JetStream ceiling");
    let sent = stored::read(&lab.js, STREAM, 1, events).await?;
    let payload_bytes = sent.iter().map(|m| m.payload.len()).sum::<usize>() as f64 / sent.len().max(1) as f64;
    report.backlog = Some(Backlog { written, payload_bytes });
    report.jetstream_ceiling = Some(jetstream_ceiling::measure(lab, &sent, mode).await?);
    drop(sent);
    report.compute_ratios();

    if args.big_txn_rows > 0 {
        report.big_txn = Some(big_txn(lab, args).await?);
    }
    Ok(())
}

/// One transaction of `--big-txn-rows` rows, committed while no relay runs, drained by a fresh relay on its own slot.
async fn big_txn(lab: &Lab, args: &BenchArgs) -> anyhow::Result<BigTxn> {
    let rows = args.big_txn_rows;
    lab.create_slot(BIG_TXN_SLOT).await?;
    progress(&format!("big transaction: committing {rows} rows"));
    let first = args.events + args.latency_events;
    let written = workload::Writer::new(&lab.control, args.payload_bytes).backlog(first, rows, rows).await?;
    progress("big transaction: relay started");
    let base = lab.stream_count(STREAM).await;
    let relay = lab.spawn_relay(BIG_TXN_SLOT, &[])?;
    let drain = drain::watch(lab, &relay, BIG_TXN_SLOT, (base, rows), Poll::Backlog).await?;
    let relay_peak_rss_kib = procfs::peak_rss_kib(relay.pid());
    relay.stop().await?;
    lab.drop_slot(BIG_TXN_SLOT).await?;
    Ok(BigTxn { rows, write_secs: written.write_secs, drain, relay_peak_rss_kib })
}

async fn environment(lab: &Lab) -> anyhow::Result<Environment> {
    let (postgres, nats_server) = lab.versions().await?;
    Ok(Environment {
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        profile: if cfg!(debug_assertions) { "debug" } else { "release" },
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        load_average: procfs::load_average(),
        postgres,
        nats_server,
        relay: lab.relay.display().to_string(),
        publish_mode: None,
    })
}

/// What the bench is doing, on stderr (stdout carries only the figures).
fn progress(what: &str) {
    eprintln!("bench: {what}");
}
