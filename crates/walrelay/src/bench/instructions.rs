//! Instructions per event, the repeatable figure: the relay drains a backlog of N events under
//! `valgrind --tool=callgrind` (which counts every instruction it executes, in all threads, whatever else runs on
//! the machine), then a fresh relay drains a backlog of 2N the same way; the difference divided by N leaves out
//! startup, connection and shutdown work. With `--callgrind-dir` the two callgrind files are kept there, for
//! `callgrind_annotate`. See <https://valgrind.org/docs/manual/cl-manual.html>.

use serde::Serialize;

use super::{
    drain,
    lab::{temp_path, Lab, MAIN_SLOT},
    workload, BenchArgs,
};

/// One relay run under callgrind.
#[derive(Debug, Clone, Serialize)]
pub(super) struct CallgrindRun {
    /// Events the relay drained.
    pub events: u64,
    /// Instructions it executed (callgrind's `Ir` total).
    pub instructions: u64,
}

/// The figure and the runs it comes from.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Instructions {
    /// The runs, N then 2N events.
    pub runs: Vec<CallgrindRun>,
    /// (instructions(2N) − instructions(N)) / N.
    pub per_event: f64,
}

/// Runs the relay under callgrind over `--instructions-events` and twice as many events.
pub(super) async fn measure(lab: &Lab, args: &BenchArgs) -> anyhow::Result<Instructions> {
    let mut runs = Vec::new();
    let mut before = 0;
    let writer = workload::Writer::new(&lab.control, args.payload_bytes);
    for events in [args.instructions_events, 2 * args.instructions_events] {
        writer.backlog(before, events, args.tx_size).await?;
        let name = format!("callgrind-{events}-events.out");
        let out = args.callgrind_dir.as_ref().map_or_else(|| temp_path(&name), |dir| dir.join(&name));
        let wrapper = ["valgrind".into(), "--tool=callgrind".into(), format!("--callgrind-out-file={}", out.display())];
        let relay = lab.spawn_relay(MAIN_SLOT, &wrapper)?;
        drain::watch(lab, &relay, MAIN_SLOT, (before, events), drain::Poll::Backlog).await?;
        relay.stop().await?;
        let text = std::fs::read_to_string(&out);
        if args.callgrind_dir.is_none() {
            let _ = std::fs::remove_file(&out);
        }
        let instructions = total(&text?).ok_or_else(|| anyhow::anyhow!("no total in {}", out.display()))?;
        runs.push(CallgrindRun { events, instructions });
        before += events;
    }
    let per_event = match runs.as_slice() {
        [small, large] => {
            (large.instructions as f64 - small.instructions as f64) / (large.events - small.events) as f64
        }
        _ => anyhow::bail!("expected two callgrind runs"),
    };
    Ok(Instructions { runs, per_event })
}

/// The instruction total of a callgrind output file (its `totals:` line, or `summary:`).
fn total(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .or_else(|| text.lines().find_map(|l| l.strip_prefix("summary:")))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_total() {
        assert_eq!(super::total("events: Ir\nsummary: 1234\nfn=main\n1 5\ntotals: 1234\n"), Some(1234));
        assert_eq!(super::total("events: Ir\nsummary: 99\n"), Some(99));
        assert_eq!(super::total("events: Ir\n"), None);
    }
}
