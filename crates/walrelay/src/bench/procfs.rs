//! What other processes spent: CPU time and peak memory from `/proc` (see proc(5): `/proc/<pid>/stat` fields 14
//! and 15, `utime` and `stime` in clock ticks, summed over all threads; `/proc/<pid>/status` `VmHWM`, the peak
//! resident set size; `/proc/stat`, the whole machine's busy time), and the per-event figures of a measured window
//! between two [`Mark`]s. On a shared machine the busy time of everything else tells how much the figures were
//! disturbed.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde::{ser::SerializeMap, Serialize, Serializer};

/// A process whose CPU a phase reports, by role (`relay`, `walsender`, `nats_server`, ...).
#[derive(Debug, Clone, Copy)]
pub(super) struct Watched {
    /// The role, as printed and as the JSON key.
    pub role: &'static str,
    /// Its pid.
    pub pid: u32,
}

impl Watched {
    /// `role` if its pid is known.
    pub fn some(role: &'static str, pid: Option<u32>) -> Option<Self> {
        pid.map(|pid| Self { role, pid })
    }

    /// This process (the bench itself, e.g. as the publisher of the raw ceiling).
    pub fn this(role: &'static str) -> Self {
        Self { role, pid: std::process::id() }
    }
}

/// A moment in a measured phase: when, how many events were done, and each watched process's CPU time so far.
#[derive(Debug, Clone)]
pub(super) struct Mark {
    at: Instant,
    done: u64,
    cpu: Vec<(&'static str, Option<Duration>)>,
    machine_busy: Option<Duration>,
}

impl Mark {
    /// Now, with `done` events done.
    pub fn take(watched: &[Watched], done: u64) -> Self {
        let cpu = watched.iter().map(|w| (w.role, cpu_time(w.pid))).collect();
        Self { at: Instant::now(), done, cpu, machine_busy: machine_busy() }
    }

    /// The instant of the mark.
    pub fn at(&self) -> Instant {
        self.at
    }
}

/// Events per second and CPU µs per event between two marks.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Throughput {
    /// Events done between the marks.
    pub events: u64,
    /// Seconds between the marks.
    pub secs: f64,
    /// `events / secs`.
    pub per_sec: f64,
    /// CPU (user + system) µs per event of each watched process.
    pub cpu_us_per_event: CpuPerEvent,
    /// CPU the rest of the machine was busy with meanwhile (other processes, including other users'), in cores.
    pub other_cpu_cores: Option<f64>,
}

impl Throughput {
    /// The window from `first` to `last` (taken with the same watched processes).
    pub fn between(first: &Mark, last: &Mark) -> Self {
        let events = last.done.saturating_sub(first.done);
        let secs = last.at.duration_since(first.at).as_secs_f64();
        let spent = |a: Option<Duration>, b: Option<Duration>| b?.checked_sub(a?);
        let pairs = || first.cpu.iter().zip(&last.cpu);
        let cpu = pairs()
            .filter_map(|((role, a), (_, b))| {
                let us = spent(*a, *b)?.as_secs_f64() * 1e6;
                (events > 0).then(|| (*role, us / events as f64))
            })
            .collect();
        let watched: Duration = pairs().filter_map(|((_, a), (_, b))| spent(*a, *b)).sum();
        let other_cpu_cores = spent(first.machine_busy, last.machine_busy)
            .filter(|_| secs > 0.0)
            .map(|busy| busy.saturating_sub(watched).as_secs_f64() / secs);
        let per_sec = if secs > 0.0 { events as f64 / secs } else { 0.0 };
        Self { events, secs, per_sec, cpu_us_per_event: CpuPerEvent(cpu), other_cpu_cores }
    }

    /// `relay 18.2 µs, walsender 9.0 µs, ...; rest of the machine 0.40 cores busy meanwhile`.
    pub fn cpu_text(&self) -> String {
        let per_event: Vec<String> =
            self.cpu_us_per_event.0.iter().map(|(role, us)| format!("{} {us:.1} µs", role.replace('_', "-"))).collect();
        let mut text = per_event.join(", ");
        if let Some(cores) = self.other_cpu_cores {
            text.push_str(&format!("; rest of the machine {cores:.2} cores busy meanwhile"));
        }
        text
    }
}

/// CPU µs per event by role, in the order the roles were watched (a JSON object).
#[derive(Debug, Clone, Default)]
pub(super) struct CpuPerEvent(Vec<(&'static str, f64)>);

impl Serialize for CpuPerEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (role, us) in &self.0 {
            map.serialize_entry(role, us)?;
        }
        map.end()
    }
}

/// User + system CPU time of process `pid` so far, from `/proc/<pid>/stat`.
pub(super) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count fields after its closing parenthesis,
    // where field 3 (state) comes first, so utime (14) and stime (15) are the 12th and 13th.
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) as f64 / clock_ticks() as f64))
}

/// Time the whole machine's CPUs were busy so far (`/proc/stat`: user, nice, system, irq, softirq, steal; guest
/// time is part of user).
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line.split_whitespace().map_while(|f| f.parse().ok()).collect();
    let ticks: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| fields.get(i)).sum();
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// Clock ticks per second (`getconf CLK_TCK`, i.e. sysconf(_SC_CLK_TCK)); 100 if that cannot be run.
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// Peak resident set size of process `pid` in KiB (`VmHWM`).
pub(super) fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`).
pub(super) fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(cpu_time(std::process::id()).is_some());
        assert!(peak_rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
        assert!(machine_busy().is_some());
    }

    #[test]
    fn a_window_divides_by_the_events_between_the_marks() {
        let at = Instant::now();
        let mark = |secs: u64, done: u64, relay_ms: u64, machine_ms: u64| Mark {
            at: at + Duration::from_secs(secs),
            done,
            cpu: vec![("relay", Some(Duration::from_millis(relay_ms)))],
            machine_busy: Some(Duration::from_millis(machine_ms)),
        };
        let t = Throughput::between(&mark(0, 100, 10, 500), &mark(2, 1100, 30, 1520));
        assert_eq!(t.events, 1000);
        assert_eq!(t.per_sec, 500.0);
        assert_eq!(t.cpu_us_per_event.0.len(), 1);
        assert_eq!(t.cpu_text(), "relay 20.0 µs; rest of the machine 0.50 cores busy meanwhile");
    }
}
