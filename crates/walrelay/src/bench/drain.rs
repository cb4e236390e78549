//! Watching the relay work: the stream's message count is polled (one JetStream stream info request each) until it
//! has grown by the expected number of events; the first poll that sees it grow is the first ack, the poll that
//! sees it complete the last. At both, the CPU time of the relay, the walsender serving its slot and nats-server is
//! read, so the CPU per event covers exactly the events acked in between. A backlog is polled every
//! [`Poll::Backlog`]; the live run every [`Poll::Live`], where a few thousand events take seconds and the polls'
//! own cost to nats-server would otherwise show in its CPU per event.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    lab::{Lab, Relay, STREAM},
    procfs::{Mark, Throughput, Watched},
};

/// How often the stream's message count is read.
#[derive(Debug, Clone, Copy)]
pub(super) enum Poll {
    /// Every 5 ms: a drain of 200,000 events takes a few seconds.
    Backlog,
    /// Every 50 ms: the live run takes seconds at 2,000 events/s.
    Live,
}

impl Poll {
    fn interval(self) -> Duration {
        match self {
            Self::Backlog => Duration::from_millis(5),
            Self::Live => Duration::from_millis(50),
        }
    }
}
/// Longest time without any new message before the run is declared stuck (a 1,000,000-row transaction is decoded
/// whole before its first event is sent; valgrind starts slowly).
const STALL_TIMEOUT: Duration = Duration::from_secs(300);

/// A drain, from the relay's start to its last ack.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Drained {
    /// From the first to the last ack.
    #[serde(flatten)]
    pub throughput: Throughput,
    /// From the start of the watch (the relay's start, for a backlog) to the first ack.
    pub start_to_first_ack_ms: f64,
}

/// Waits until [`STREAM`] holds `base + expected` messages, written by `relay` reading `slot`.
pub(super) async fn watch(
    lab: &Lab,
    relay: &Relay,
    slot: &str,
    (base, expected): (u64, u64),
    poll: Poll,
) -> anyhow::Result<Drained> {
    let started = Instant::now();
    let mut walsender = None;
    let mut first: Option<(Vec<Watched>, Mark)> = None;
    let (mut last_count, mut last_progress) = (base, Instant::now());
    loop {
        relay.ensure_running()?;
        if first.is_none() && walsender.is_none() {
            walsender = lab.walsender_pid(slot).await?;
        }
        let count = lab.stream_count(STREAM).await;
        let done = count.saturating_sub(base);
        if first.is_none() && done > 0 {
            let watched: Vec<Watched> = [
                Watched::some("relay", Some(relay.pid())),
                Watched::some("walsender", walsender),
                Watched::some("nats_server", lab.nats_pid()),
            ]
            .into_iter()
            .flatten()
            .collect();
            let mark = Mark::take(&watched, done);
            first = Some((watched, mark));
        }
        if let (true, Some((watched, first))) = (done >= expected, &first) {
            let last = Mark::take(watched, done);
            anyhow::ensure!(
                done == expected,
                "stream {STREAM} grew by {done} messages, {expected} expected (duplicates or foreign messages)"
            );
            let start_to_first_ack_ms = first.at().duration_since(started).as_secs_f64() * 1000.0;
            return Ok(Drained { throughput: Throughput::between(first, &last), start_to_first_ack_ms });
        }
        if count != last_count {
            (last_count, last_progress) = (count, Instant::now());
        }
        anyhow::ensure!(
            last_progress.elapsed() < STALL_TIMEOUT,
            "stream {STREAM} stuck at {done} of {expected} new messages for {STALL_TIMEOUT:?}"
        );
        tokio::time::sleep(poll.interval()).await;
    }
}
