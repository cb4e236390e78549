//! `walrelay status`: where the slot stands and how far behind it is.
//!
//! In: the settings and the output options. Out: the slot's row of `pg_replication_slots`, the server's WAL position,
//! lag (current − confirmed_flush) and retained WAL (current − restart) in bytes and human units, and, when NATS
//! answers, the stream's message count and the commit LSN of its last message. `--json` prints one object
//! (design.md §4), `--watch` refreshes until stopped. Against a standby (design.md §4b) `current_wal_lsn` is the last
//! replayed LSN, so lag is what the standby's slot has left to decode; `in_recovery`, `conflicting`,
//! `invalidation_reason`, `failover` and `synced` say where the slot lives and whether it survives a failover
//! (null where the server's version lacks the column: `conflicting` below 16, the others below 17).
//!
//! `--check` and `--max-lag` make it a monitoring check: exit code 3 whenever anything a relay needs is not healthy
//! (the slot lost or invalidated, no relay streaming from it, Postgres unreachable, the stream missing, NATS
//! unreachable, and with `--max-lag` the lag above the bound), each reason printed and listed in `problems`
//! (design.md §4g). A lag bound alone would stay silent exactly when data is at risk: a lost slot has no meaningful
//! lag, and a stopped relay, or one that cannot reach NATS, lets lag grow only slowly. "No relay" is the slot's
//! `active` flag, not its lag: a healthy relay that holds acked events back for `--nats-sync-interval` keeps the
//! slot active while its lag grows, and only `--max-lag` bounds lag. Every sample names the server it asked
//! (`server`, `host:port/database`), so a status from the wrong server (a default URL, another local cluster) shows.
//! See <https://www.postgresql.org/docs/current/view-pg-replication-slots.html>.

use std::{io::IsTerminal, time::Duration};

use bytesize::ByteSize;
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    config::Settings,
    relay::RelayError,
    sink::stream,
    source::slot,
    source::{self, SourceError},
};

/// Exit code of a failed `--check` / `--max-lag`.
const EXIT_CHECK: u8 = 3;

/// How `status` reports.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// One JSON object (per refresh with `--watch`).
    pub json: bool,
    /// Refresh until the shutdown watch fires.
    pub watch: bool,
    /// Refresh interval for `watch`.
    pub interval: Duration,
    /// Exit 3 when `lag_bytes` exceeds this many bytes, or when any problem is found (implies `check`).
    pub max_lag: Option<u64>,
    /// Exit 3 when any problem is found.
    pub check: bool,
}

/// The trailing replay slot's position.
#[derive(Debug, Clone, Serialize)]
pub struct ReplaySlotStatus {
    /// `<slot>_replay`.
    pub slot: String,
    /// Oldest replayable commit LSN.
    pub confirmed_flush_lsn: Option<String>,
    /// WAL it retains (current − restart).
    pub retained_bytes: u64,
}

/// One status sample, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Slot name.
    pub slot: String,
    /// The server asked, `host:port/database`.
    pub server: String,
    /// Output plugin.
    pub plugin: Option<String>,
    /// Whether a walsender holds the slot.
    pub active: bool,
    /// That walsender's pid.
    pub active_pid: Option<i32>,
    /// Position the relay confirmed, `X/Y`.
    pub confirmed_flush_lsn: Option<String>,
    /// Oldest WAL the slot retains, `X/Y`.
    pub restart_lsn: Option<String>,
    /// The server's WAL position, `X/Y`.
    pub current_wal_lsn: String,
    /// current − confirmed_flush.
    pub lag_bytes: u64,
    /// current − restart.
    pub retained_bytes: u64,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Bytes that can still be written before the slot is in danger (null: unlimited).
    pub safe_wal_size: Option<i64>,
    /// The replay slot, when it exists.
    pub replay_slot: Option<ReplaySlotStatus>,
    /// Stream name.
    pub stream: String,
    /// Messages in the stream (null when NATS did not answer).
    pub stream_messages: Option<u64>,
    /// Commit LSN of the stream's last relayed message.
    pub stream_last_commit_lsn: Option<String>,
    /// Its commit time (`Outbox-Commit-Time`, RFC 3339): rows created after it were never relayed (the lost-slot
    /// procedure of docs/operations.md).
    pub stream_last_commit_time: Option<String>,
    /// Why the stream figures are missing.
    pub nats_error: Option<String>,
    /// Everything that keeps a relay from delivering, one sentence each with its remedy; empty when healthy.
    pub problems: Vec<String>,
    // Replicas and failover (design.md §4b).
    /// Whether the server is a standby (`pg_is_in_recovery()`).
    pub in_recovery: bool,
    /// Whether the slot was invalidated by a recovery conflict (null below PostgreSQL 16).
    pub conflicting: Option<bool>,
    /// Why the slot was invalidated (null when it was not, and below PostgreSQL 17).
    pub invalidation_reason: Option<String>,
    /// Whether the slot is a failover slot (null below PostgreSQL 17).
    pub failover: Option<bool>,
    /// Whether the slot is a standby's synchronized copy (null below PostgreSQL 17).
    pub synced: Option<bool>,
}

impl Status {
    /// Fills [`Status::problems`] from the sample (and the lag bound, if any).
    fn diagnose(&mut self, max_lag: Option<u64>) {
        let mut problems = Vec::new();
        if self.wal_status.as_deref() == Some("lost") {
            problems.push(format!(
                "slot {} is lost (wal_status = lost): the WAL it needed was removed; see docs/operations.md \"a lost slot\"",
                self.slot
            ));
        }
        match (&self.invalidation_reason, self.conflicting) {
            (Some(reason), _) if reason != "wal_removed" => problems.push(format!(
                "slot {} was invalidated ({reason}): it cannot be read any more; see docs/replicas.md",
                self.slot
            )),
            (None, Some(true)) => problems.push(format!(
                "slot {} was invalidated by a recovery conflict (conflicting = true); keep hot_standby_feedback = on and a physical slot to the primary, see docs/replicas.md",
                self.slot
            )),
            _ => {}
        }
        // A lost or invalidated slot is the problem; that nothing streams from it follows.
        if !self.active && problems.is_empty() {
            problems.push(format!(
                "slot {} is not active: no relay streams from it on {}; start `walrelay run` (or check why it stopped)",
                self.slot, self.server
            ));
        }
        if let Some(reason) = &self.nats_error {
            problems.push(reason.clone());
        }
        if let Some(max) = max_lag {
            if self.lag_bytes > max {
                problems.push(format!(
                    "lag {} exceeds --max-lag {}: is the relay running (walrelay status shows active)?",
                    human(self.lag_bytes),
                    human(max)
                ));
            }
        }
        self.problems = problems;
    }
}

/// Prints the status (once, or until shutdown with `watch`); returns 0, or 3 when checking and the last sample
/// had a problem.
pub async fn run(
    settings: &Settings,
    opts: &StatusOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<u8, RelayError> {
    let check = opts.check || opts.max_lag.is_some();
    let (control, host) = match source::connect_host(&settings.pg_url).await {
        Ok(connected) => connected,
        // A check's finding: the relay cannot read from a server it cannot reach. Wrong credentials or TLS settings
        // stay errors of the command (exit 1).
        Err(err) if check && err.is_transient() => return Ok(unreachable(settings, opts, &err)),
        Err(err) => return Err(err.into()),
    };
    let server = settings.pg_url.server_at(&host);
    let nats = match tokio::time::timeout(Duration::from_secs(3), stream::connect(settings)).await {
        Ok(Ok((client, js))) => Ok((client, js)),
        // A permanent failure (e.g. authentication) is an error of the command, not a health finding.
        Ok(Err(err)) if !err.is_transient() => return Err(err.into()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("nats at {} did not answer within 3s", settings.nats.url())),
    };
    let tty = std::io::stdout().is_terminal();
    let mut drawn_lines = 0usize;
    loop {
        let status = collect(&control, settings, &server, nats.as_ref().map(|(_, js)| js)).await?;
        let mut status = match (&nats, status) {
            (Err(reason), s) => Status { nats_error: Some(reason.clone()), ..s },
            (Ok(_), s) => s,
        };
        status.diagnose(opts.max_lag);
        let code = exit_code(check, &status);
        let failed = code == EXIT_CHECK;
        if opts.json {
            println!("{}", serde_json::to_string(&status).unwrap_or_default());
        } else if opts.watch && !tty {
            println!("{}", one_line(&status));
        } else {
            let text = block(&status);
            if opts.watch && drawn_lines > 0 {
                // Move the cursor up over the previous block and clear to the end of the screen.
                print!("\x1b[{drawn_lines}F\x1b[J");
            }
            drawn_lines = text.lines().count();
            print!("{text}");
        }
        if failed && !opts.watch {
            for problem in &status.problems {
                eprintln!("problem: {problem}");
            }
        }
        if !opts.watch {
            return Ok(code);
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Ok(code),
        }
    }
}

/// `--check` against a Postgres that cannot be reached: the problem on stderr (and as the `problems` of a JSON
/// object naming the servers tried), exit 3.
fn unreachable(settings: &Settings, opts: &StatusOptions, err: &SourceError) -> u8 {
    let problem = format!(
        "postgres at {} cannot be reached: {}; no relay can read the slot",
        settings.pg_url.servers(),
        source::error_chain(err)
    );
    if opts.json {
        let object = serde_json::json!({
            "slot": settings.slot,
            "server": settings.pg_url.servers(),
            "problems": [problem],
        });
        println!("{object}");
    }
    eprintln!("problem: {problem}");
    EXIT_CHECK
}

/// Reads one sample; a missing slot is an error (exit 1).
async fn collect(
    control: &tokio_postgres::Client,
    settings: &Settings,
    server: &str,
    js: Result<&async_nats::jetstream::Context, &String>,
) -> Result<Status, RelayError> {
    let info = slot::info(control, &settings.slot).await?.ok_or_else(|| SourceError::MissingSlot {
        slot: settings.slot.clone(),
        server: server.to_owned(),
        detail: " (create it with `walrelay setup`)".into(),
    })?;
    let current = slot::current_wal_lsn(control).await?;
    let in_recovery = slot::server(control).await?.in_recovery;
    let confirmed = info.confirmed_flush_lsn.or(info.restart_lsn).unwrap_or(current);
    let restart = info.restart_lsn.unwrap_or(current);
    let replay_slot = match slot::info(control, &settings.replay_slot()).await? {
        Some(r) => Some(ReplaySlotStatus {
            slot: r.name,
            confirmed_flush_lsn: r.confirmed_flush_lsn.map(|l| l.to_string()),
            retained_bytes: current.0.saturating_sub(r.restart_lsn.unwrap_or(current).0),
        }),
        None => None,
    };
    let mut status = Status {
        slot: info.name,
        server: server.to_owned(),
        plugin: info.plugin,
        active: info.active,
        active_pid: info.active_pid,
        confirmed_flush_lsn: info.confirmed_flush_lsn.map(|l| l.to_string()),
        restart_lsn: info.restart_lsn.map(|l| l.to_string()),
        current_wal_lsn: current.to_string(),
        lag_bytes: current.0.saturating_sub(confirmed.0),
        retained_bytes: current.0.saturating_sub(restart.0),
        wal_status: info.wal_status,
        safe_wal_size: info.safe_wal_size,
        replay_slot,
        stream: settings.stream.clone(),
        stream_messages: None,
        stream_last_commit_lsn: None,
        stream_last_commit_time: None,
        nats_error: None,
        problems: Vec::new(),
        in_recovery,
        conflicting: info.conflicting,
        invalidation_reason: info.invalidation_reason,
        failover: info.failover,
        synced: info.synced,
    };
    if let Ok(js) = js {
        if let Err(err) = js.get_stream(&settings.stream).await {
            status.nats_error = Some(if stream::is_stream_not_found(&err) {
                format!(
                    "stream {} does not exist: nothing can be delivered; run `walrelay setup` to create it",
                    settings.stream
                )
            } else {
                format!("stream {}: {err}", settings.stream)
            });
            return Ok(status);
        }
        match tokio::time::timeout(Duration::from_secs(3), stream::high_water(js, &settings.stream)).await {
            Ok(Ok(hw)) => {
                status.stream_messages = Some(hw.messages);
                status.stream_last_commit_lsn = hw.position.map(|p| p.commit_lsn.to_string());
                status.stream_last_commit_time = last_commit_time(js, settings, hw.last_sequence).await;
            }
            Ok(Err(err)) => status.nats_error = Some(err.to_string()),
            Err(_) => status.nats_error = Some("stream info did not arrive within 3s".into()),
        }
    }
    Ok(status)
}

/// The commit time of the stream's last message, when it is a relayed event.
async fn last_commit_time(js: &async_nats::jetstream::Context, settings: &Settings, sequence: u64) -> Option<String> {
    let stream = js.get_stream(&settings.stream).await.ok()?;
    let message = stream.get_raw_message(sequence).await.ok()?;
    let time = message.headers.get(crate::mapping::event::header::COMMIT_TIME)?;
    Some(time.as_str().to_owned())
}

fn human(bytes: u64) -> String {
    ByteSize::b(bytes).display().si().to_string()
}

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// Standby or primary, and the slot's failover state where the server has it.
fn server_line(s: &Status) -> String {
    let mut line =
        if s.in_recovery { "standby (current_wal_lsn is the replay position)" } else { "primary" }.to_owned();
    if let Some(failover) = s.failover {
        line.push_str(&format!(", failover slot {}", if failover { "yes" } else { "no" }));
    }
    if s.synced == Some(true) {
        line.push_str(", synchronized from the primary");
    }
    if let Some(reason) = &s.invalidation_reason {
        line.push_str(&format!(", invalidated ({reason})"));
    }
    line
}

/// The multi-line human report.
fn block(s: &Status) -> String {
    let active = match (s.active, s.active_pid) {
        (true, Some(pid)) => format!("yes (pid {pid})"),
        (true, None) => "yes".to_owned(),
        (false, _) => "no".to_owned(),
    };
    let safe = match s.safe_wal_size {
        _ if s.wal_status.as_deref() == Some("lost") => "- (slot lost)".to_owned(),
        Some(n) => format!("{n} bytes ({})", human(u64::try_from(n).unwrap_or(0))),
        None => "unlimited".to_owned(),
    };
    let mut out = format!(
        "postgres             {}\n\
         slot                 {} ({})\n\
         active               {active}\n\
         confirmed_flush_lsn  {}\n\
         restart_lsn          {}\n\
         current_wal_lsn      {}\n\
         lag                  {} bytes ({})\n\
         retained WAL         {} bytes ({})\n\
         wal_status           {}\n\
         safe_wal_size        {safe}\n\
         server               {}\n",
        s.server,
        s.slot,
        or_dash(&s.plugin),
        or_dash(&s.confirmed_flush_lsn),
        or_dash(&s.restart_lsn),
        s.current_wal_lsn,
        s.lag_bytes,
        human(s.lag_bytes),
        s.retained_bytes,
        human(s.retained_bytes),
        or_dash(&s.wal_status),
        server_line(s),
    );
    if let Some(r) = &s.replay_slot {
        out.push_str(&format!(
            "replay slot          {} from {}, retains {} bytes ({})\n",
            r.slot,
            or_dash(&r.confirmed_flush_lsn),
            r.retained_bytes,
            human(r.retained_bytes)
        ));
    }
    match (&s.stream_messages, &s.nats_error) {
        (Some(n), _) => out.push_str(&format!(
            "stream               {}: {n} messages, last commit LSN {} at {}\n",
            s.stream,
            or_dash(&s.stream_last_commit_lsn),
            or_dash(&s.stream_last_commit_time)
        )),
        (None, Some(err)) => out.push_str(&format!("stream               {}: unknown ({err})\n", s.stream)),
        (None, None) => {}
    }
    for problem in &s.problems {
        out.push_str(&format!("problem              {problem}\n"));
    }
    out
}

/// One line per sample for `--watch` on a pipe.
fn one_line(s: &Status) -> String {
    format!(
        "{} server={} slot={} active={} confirmed_flush_lsn={} current_wal_lsn={} lag_bytes={} ({}) retained_bytes={} ({}) wal_status={}{}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        s.server,
        s.slot,
        s.active,
        or_dash(&s.confirmed_flush_lsn),
        s.current_wal_lsn,
        s.lag_bytes,
        human(s.lag_bytes),
        s.retained_bytes,
        human(s.retained_bytes),
        or_dash(&s.wal_status),
        s.stream_messages.map(|n| format!(" stream_messages={n}")).unwrap_or_default(),
    )
}

/// The exit code of `status`: [`EXIT_CHECK`] when a check was asked for (`--check` or `--max-lag`) and found a
/// problem, 0 otherwise (design.md §4).
fn exit_code(check: bool, status: &Status) -> u8 {
    if check && !status.problems.is_empty() {
        EXIT_CHECK
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A healthy sample of slot `walrelay` on a standby: every problem below comes from the fields a case sets.
    fn sample() -> Status {
        Status {
            slot: "walrelay".into(),
            server: "db:5432/app".into(),
            plugin: Some("pgoutput".into()),
            active: true,
            active_pid: Some(4242),
            confirmed_flush_lsn: Some("0/1000".into()),
            restart_lsn: Some("0/1000".into()),
            current_wal_lsn: "0/1000".into(),
            lag_bytes: 0,
            retained_bytes: 0,
            wal_status: Some("reserved".into()),
            safe_wal_size: None,
            replay_slot: None,
            stream: "OUTBOX".into(),
            stream_messages: Some(0),
            stream_last_commit_lsn: None,
            stream_last_commit_time: None,
            nats_error: None,
            problems: Vec::new(),
            in_recovery: true,
            conflicting: Some(false),
            invalidation_reason: None,
            failover: Some(false),
            synced: Some(false),
        }
    }

    fn problems(f: impl FnOnce(&mut Status), max_lag: Option<u64>) -> Vec<String> {
        let mut s = sample();
        f(&mut s);
        s.diagnose(max_lag);
        s.problems
    }

    const CONFLICT: &str = "slot walrelay was invalidated by a recovery conflict (conflicting = true); keep \
                            hot_standby_feedback = on and a physical slot to the primary, see docs/replicas.md";

    #[test]
    fn a_healthy_slot_has_no_problems() {
        assert_eq!(problems(|_| {}, None), Vec::<String>::new());
        assert_eq!(problems(|s| s.conflicting = None, Some(1)), Vec::<String>::new(), "PostgreSQL 15: null");
    }

    /// PostgreSQL 16 knows `conflicting` only; 17+ also names the reason (`rows_removed`, `wal_level_insufficient`,
    /// `idle_timeout`), which then says it all; `wal_removed` is a lost slot, reported once as such.
    #[test]
    fn a_conflicting_or_invalidated_slot_is_a_problem_naming_the_slot_and_the_remedy() {
        assert_eq!(problems(|s| s.conflicting = Some(true), None), [CONFLICT]);
        for reason in ["rows_removed", "wal_level_insufficient", "idle_timeout"] {
            let got = problems(
                |s| {
                    s.conflicting = Some(reason != "idle_timeout");
                    s.invalidation_reason = Some(reason.into());
                },
                None,
            );
            assert_eq!(
                got,
                [format!("slot walrelay was invalidated ({reason}): it cannot be read any more; see docs/replicas.md")]
            );
        }
        let lost = problems(
            |s| {
                s.wal_status = Some("lost".into());
                s.invalidation_reason = Some("wal_removed".into());
            },
            None,
        );
        assert_eq!(
            lost,
            ["slot walrelay is lost (wal_status = lost): the WAL it needed was removed; see docs/operations.md \
              \"a lost slot\""]
        );
    }

    /// Every finding is listed, in a fixed order: the slot, NATS, the lag bound.
    #[test]
    fn problems_are_listed_together_in_order() {
        let got = problems(
            |s| {
                s.conflicting = Some(true);
                s.nats_error = Some("nats at nats://localhost:4222 did not answer within 3s".into());
                s.lag_bytes = 2_000_000;
            },
            Some(1_000_000),
        );
        assert_eq!(
            got,
            [
                CONFLICT,
                "nats at nats://localhost:4222 did not answer within 3s",
                "lag 2.0 MB exceeds --max-lag 1.0 MB: is the relay running (walrelay status shows active)?",
            ]
        );
        assert_eq!(EXIT_CHECK, 3, "design.md §4: a failed check exits 3");
    }

    /// design.md §4g: no relay streaming from the slot is a problem (a lost or invalidated slot says more, once);
    /// lag alone is not, whatever a healthy relay holds back for `--nats-sync-interval`: only `--max-lag` bounds it.
    #[test]
    fn an_inactive_slot_is_a_problem_and_lag_without_a_bound_is_not() {
        let stopped = |s: &mut Status| {
            s.active = false;
            s.active_pid = None;
        };
        assert_eq!(
            problems(stopped, None),
            ["slot walrelay is not active: no relay streams from it on db:5432/app; start `walrelay run` (or check \
              why it stopped)"]
        );
        let lost = problems(
            |s| {
                stopped(s);
                s.wal_status = Some("lost".into());
            },
            None,
        );
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].contains("is lost"), "{lost:?}");
        assert_eq!(problems(|s| s.lag_bytes = 500_000_000, None), Vec::<String>::new());
    }

    #[test]
    fn a_check_with_problems_exits_3_and_nothing_else_does() {
        let mut status = sample();
        status.diagnose(None);
        assert_eq!(exit_code(true, &status), 0);
        status.problems.push(CONFLICT.into());
        assert_eq!(exit_code(true, &status), 3);
        assert_eq!(exit_code(false, &status), 0, "without --check or --max-lag, problems are only shown");
    }
}
