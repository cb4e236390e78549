//! `walrelay status` on real servers: lag while the relay is stopped and after it caught up, `--max-lag` exit codes,
//! an absent slot, an unreachable NATS, and `--watch` on a pipe.

use walrelay_tests::ops as support;

use std::time::Duration;

use support::{is_lsn, stop_relay, Env, TestResult, DELIVERY_TIMEOUT};
use walrelay_testkit::{free_port, wait_until, Process};

fn status_json(env: &Env, extra: &[&str]) -> Result<serde_json::Value, support::Error> {
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(extra);
    let out = env.walrelay(&args)?;
    assert_eq!(out.code, 0, "status failed: {out:?}");
    let mut lines = out.json_lines()?;
    assert_eq!(lines.len(), 1, "status --json must print one object: {}", out.stdout);
    Ok(lines.remove(0))
}

#[test]
fn status_reports_lag_until_the_relay_catches_up() -> TestResult {
    let env = Env::start()?;
    let setup = env.walrelay(&["setup"])?;
    assert_eq!(setup.code, 0, "{setup:?}");

    let mut last_ids = Vec::new();
    for i in 0..20 {
        last_ids = env.insert_txn(&[("created", &format!("{{\"n\": {i}, \"pad\": \"{}\"}}", "x".repeat(200)))])?;
    }

    // Stopped relay, pending events: lag > 0, slot inactive.
    let s = status_json(&env, &[])?;
    assert_eq!(s["slot"], "walrelay");
    assert_eq!(s["plugin"], "pgoutput");
    assert_eq!(s["active"], false);
    assert!(s["active_pid"].is_null(), "{s}");
    for field in ["confirmed_flush_lsn", "restart_lsn", "current_wal_lsn"] {
        assert!(s[field].as_str().is_some_and(is_lsn), "{field}: {s}");
    }
    let lag = s["lag_bytes"].as_u64().ok_or("lag_bytes is not an integer")?;
    assert!(lag > 4000, "lag_bytes {lag} with 20 pending events");
    assert!(s["retained_bytes"].as_u64().ok_or("retained_bytes is not an integer")? >= lag);
    assert!(s["wal_status"].is_string(), "{s}");
    assert!(s.get("safe_wal_size").is_some(), "{s}");
    assert_eq!(s["stream_messages"], 0, "{s}");
    assert!(s["stream_last_commit_lsn"].is_null(), "{s}");

    let over = env.walrelay(&["status", "--max-lag", "100"])?;
    assert_eq!(over.code, 3, "{over:?}");
    assert!(over.stdout.contains(&format!("{lag} bytes")) || over.stdout.contains(" bytes ("), "{}", over.stdout);
    assert!(over.stderr.contains("exceeds --max-lag"), "{}", over.stderr);
    let json_over = env.walrelay(&["status", "--json", "--max-lag", "1KB"])?;
    assert_eq!(json_over.code, 3, "{json_over:?}");
    // Under the bound, but no relay streams from the slot (design.md §4g): still exit 3, for that reason only.
    let under = env.walrelay(&["status", "--max-lag", "1GB"])?;
    assert_eq!(under.code, 3, "{under:?}");
    assert!(under.stderr.contains("is not active") && !under.stderr.contains("exceeds"), "{}", under.stderr);

    // The relay catches up: lag near 0, slot active with the walsender's pid.
    let relay = env.start_relay(&[])?;
    let messages = env.wait_for_messages("OUTBOX", 20)?;
    assert_eq!(messages.len(), 20);
    assert_eq!(messages[19].id(), last_ids[0]);
    let caught_up = wait_until("lag near 0 while the relay runs", DELIVERY_TIMEOUT, || {
        let s = status_json(&env, &[]).ok()?;
        (s["active"] == true && s["lag_bytes"].as_u64()? < 1024).then_some(s)
    })?;
    assert!(caught_up["active_pid"].as_i64().is_some_and(|p| p > 0), "{caught_up}");
    assert_eq!(caught_up["stream_messages"], 20);
    assert_eq!(caught_up["stream_last_commit_lsn"].as_str(), Some(messages[19].header("Outbox-Commit-Lsn")));
    let ok = env.walrelay(&["status", "--max-lag", "64KB"])?;
    assert_eq!(ok.code, 0, "{ok:?}");
    let caught_up_at = lsn_value(caught_up["confirmed_flush_lsn"].as_str().unwrap_or_default());
    stop_relay(relay)?;

    // Once stopped, the slot keeps what the relay confirmed: its lag only counts WAL written since (other
    // activity, e.g. checkpoints), never the relayed events again.
    let s = status_json(&env, &[])?;
    assert_eq!(s["active"], false);
    let confirmed = lsn_value(s["confirmed_flush_lsn"].as_str().unwrap_or_default());
    assert!(confirmed >= caught_up_at, "confirmed_flush moved back after the stop: {s}");
    let current = lsn_value(s["current_wal_lsn"].as_str().unwrap_or_default());
    assert_eq!(s["lag_bytes"].as_u64(), Some(current - confirmed), "{s}");
    Ok(())
}

#[test]
fn status_of_an_absent_slot_fails_and_nats_down_does_not() -> TestResult {
    let env = Env::start()?;
    let missing = env.walrelay(&["status", "--slot", "nosuch"])?;
    assert_eq!(missing.code, 1, "{missing:?}");
    // design.md §4g: the message names the server asked, so an answer from the wrong server shows.
    let server = format!("127.0.0.1:{}/app", env.pg.port());
    assert!(
        missing.stderr.contains(&format!("replication slot nosuch does not exist on {server}")),
        "{}",
        missing.stderr
    );
    assert!(missing.stderr.contains("walrelay setup"), "{}", missing.stderr);

    assert_eq!(env.walrelay(&["setup"])?.code, 0);
    let unreachable = format!("nats://127.0.0.1:{}", free_port());
    let out = env.walrelay(&["status", "--json", "--nats-url", &unreachable])?;
    assert_eq!(out.code, 0, "{out:?}");
    let s = &out.json_lines()?[0];
    assert_eq!(s["server"], server.as_str(), "{s}");
    assert!(s["stream_messages"].is_null(), "{s}");
    assert!(s["nats_error"].is_string(), "{s}");
    assert!(s["lag_bytes"].is_u64(), "{s}");

    // --watch on a pipe: plain lines until SIGTERM, exit 0.
    let watch = Process::spawn(env.command(&["status", "--watch", "--interval", "200ms"])?)?;
    wait_until("two status lines", Duration::from_secs(30), || {
        (watch.output().matches("slot=walrelay").count() >= 2).then_some(())
    })?;
    assert!(!watch.output().contains('\x1b'), "no ANSI escapes on a pipe: {}", watch.output());
    watch.sigterm()?;
    let status = watch.wait_timeout(Duration::from_secs(10))?.ok_or("status --watch did not stop")?;
    assert!(status.success(), "{status}");
    Ok(())
}

/// The problems a `status --json` sample lists.
fn problems(s: &serde_json::Value) -> Vec<String> {
    s["problems"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[test]
fn status_check_fires_on_what_loses_data() -> TestResult {
    let env = Env::start()?;
    assert_eq!(env.walrelay(&["setup"])?.code, 0);

    // No relay streams from the slot (design.md §4g): --check and --max-lag fire, naming the reason.
    let not_active = "slot walrelay is not active: no relay streams from it";
    let out = env.walrelay(&["status", "--check"])?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains(not_active), "{}", out.stderr);
    let out = env.walrelay(&["status", "--json", "--max-lag", "1GB"])?;
    assert_eq!(out.code, 3, "{out:?}");
    let p = problems(&out.json_lines()?[0]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with(not_active), "{p:?}");

    // Healthy: a relay streams; --check and a generous --max-lag pass, `problems` is empty.
    let relay = env.start_relay(&[])?;
    wait_until("slot active", DELIVERY_TIMEOUT, || {
        (env.sql("SELECT active FROM pg_replication_slots WHERE slot_name = 'walrelay'").ok()? == "t").then_some(())
    })?;
    let healthy = env.walrelay(&["status", "--check"])?;
    assert_eq!(healthy.code, 0, "{healthy:?}");
    assert_eq!(env.walrelay(&["status", "--max-lag", "1GB"])?.code, 0);
    let s = status_json(&env, &["--check"])?;
    assert!(problems(&s).is_empty(), "{s}");
    stop_relay(relay)?;

    // Postgres cannot be reached: exit 3 naming it (without a check, an error: exit 1).
    let down = format!("postgres://postgres@127.0.0.1:{}/app", free_port());
    let out = env.walrelay(&["status", "--check", "--pg-url", &down])?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("cannot be reached") && out.stderr.contains("127.0.0.1:"), "{}", out.stderr);
    let out = env.walrelay(&["status", "--json", "--max-lag", "1GB", "--pg-url", &down])?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(problems(&out.json_lines()?[0])[0].contains("cannot be reached"), "{out:?}");
    assert_eq!(env.walrelay(&["status", "--pg-url", &down])?.code, 1);

    // The stream is missing: nothing can be delivered.
    env.delete_stream("OUTBOX")?;
    let out = env.walrelay(&["status", "--max-lag", "1GB"])?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("stream OUTBOX does not exist"), "{}", out.stderr);
    let out = env.walrelay(&["status", "--json", "--check"])?;
    assert_eq!(out.code, 3, "{out:?}");
    let p = problems(&out.json_lines()?[0]);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].starts_with(not_active) && p[1].contains("walrelay setup"), "{p:?}");
    // Without a check, status only reports.
    assert_eq!(env.walrelay(&["status"])?.code, 0);
    assert_eq!(env.walrelay(&["setup"])?.code, 0);

    // NATS unreachable.
    let unreachable = format!("nats://127.0.0.1:{}", free_port());
    let out = env.walrelay(&["status", "--max-lag", "1GB", "--nats-url", &unreachable])?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("nats"), "{}", out.stderr);
    assert_eq!(env.walrelay(&["status", "--check", "--nats-url", &unreachable])?.code, 3);

    // The slot is lost: its WAL was removed past max_slot_wal_keep_size.
    env.lose_slot()?;
    let out = env.walrelay(&["status", "--max-lag", "1GB"])?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("slot walrelay is lost"), "{}", out.stderr);
    let s = &env.walrelay(&["status", "--json", "--check"])?.json_lines()?[0];
    assert_eq!(s["wal_status"], "lost", "{s}");
    assert_eq!(problems(s).len(), 1, "{s}");
    Ok(())
}

/// An `X/Y` LSN as a number.
fn lsn_value(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap_or(("0", "0"));
    (u64::from_str_radix(hi, 16).unwrap_or(0) << 32) | u64::from_str_radix(lo, 16).unwrap_or(0)
}
