//! docs/operations.md as written: every shell block marked `<!-- runbook: NAME -->` is extracted from the document and
//! run with bash against real servers, and the outcome is checked exactly (ids, order, count), so the runbook cannot
//! drift from the binary. Procedures: monitoring, replay into a separate stream, rebuilding a stream, moving to a new
//! stream, re-sending the gap after a lost slot, verifying the stream and re-sending a lost tail.

use walrelay_tests::ops as support;

use std::{collections::BTreeMap, process::Command};

use support::{stop_relay, Env, Output, TestResult};
use walrelay_testkit::walrelay_bin;
use walrelay_tests::ids;

/// The runbook's shell blocks by name.
fn blocks() -> Result<BTreeMap<String, String>, support::Error> {
    blocks_in("operations.md")
}

/// The shell blocks of `docs/<doc>` by name.
fn blocks_in(doc: &str) -> Result<BTreeMap<String, String>, support::Error> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs").join(doc);
    let text = std::fs::read_to_string(&path)?;
    let mut out = BTreeMap::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("<!-- runbook: ") {
        rest = &rest[at + "<!-- runbook: ".len()..];
        let (name, tail) = rest.split_once(" -->").ok_or("unclosed runbook marker")?;
        let body =
            tail.trim_start().strip_prefix("```sh\n").ok_or_else(|| format!("runbook {name}: no ```sh block"))?;
        let (code, _) = body.split_once("\n```").ok_or_else(|| format!("runbook {name}: unclosed block"))?;
        out.insert(name.to_owned(), code.to_owned());
        rest = tail;
    }
    Ok(out)
}

/// Runs one runbook block with bash, as an operator with the documented environment would.
fn run_block(env: &Env, name: &str, vars: &[(&str, &str)]) -> Result<Output, support::Error> {
    run_block_in(env, "operations.md", name, vars)
}

/// Runs one shell block of `docs/<doc>` like [`run_block`].
fn run_block_in(env: &Env, doc: &str, name: &str, vars: &[(&str, &str)]) -> Result<Output, support::Error> {
    let blocks = blocks_in(doc)?;
    let code = blocks.get(name).ok_or_else(|| format!("docs/{doc} has no runbook block {name}"))?;
    let bin_dir = walrelay_bin()?.parent().ok_or("walrelay has no directory")?.to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", code])
        .env_remove("WALRELAY_CONFIG")
        .env("PATH", path)
        .env("WALRELAY_PG_URL", &env.pg_url)
        .env("WALRELAY_NATS_URL", &env.nats_url)
        .env("WALRELAY_LOG", "warn");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    support::run(cmd)
}

#[test]
fn runbook_blocks_are_all_tested() -> TestResult {
    let names: Vec<String> = blocks()?.into_keys().collect();
    assert_eq!(names, ["lost-slot", "monitor", "new-stream", "rebuild-stream", "replay-separate", "verify-tail"]);
    let names: Vec<String> = blocks_in("migrating.md")?.into_keys().collect();
    assert_eq!(names, ["backfill"]);
    Ok(())
}

/// docs/migrating.md as written: the rows a polling worker left waiting are published once, in id order, then `run`
/// relays what was committed since; the rows the worker already processed are not published.
#[test]
fn migrating_from_a_polling_worker_as_written() -> TestResult {
    let env = Env::start()?;
    env.sql("ALTER TABLE public.outbox ADD COLUMN processed_at timestamptz")?;
    let mut all = Vec::new();
    for t in 0..4 {
        all.extend(env.insert_txn(&[("created", &format!("{{\"t\": {t}}}")), ("paid", r#"{"x": 1}"#)])?);
    }
    // The worker sent the first transaction's rows.
    env.sql(&format!("UPDATE public.outbox SET processed_at = now() WHERE id IN ('{}', '{}')", all[0], all[1]))?;
    let waiting = env.sql("SELECT id FROM public.outbox WHERE processed_at IS NULL ORDER BY id")?;
    let waiting: Vec<String> = waiting.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect();
    assert_eq!(waiting.len(), 6);

    let out = run_block_in(&env, "migrating.md", "backfill", &[])?;
    assert_eq!(out.code, 0, "{out:?}");
    let stored = env.stream_messages("OUTBOX")?;
    assert_eq!(ids(&stored), waiting);
    assert!(stored.iter().all(|m| m.header("Outbox-Backfill") == "true"));

    let relay = env.start_relay(&[])?;
    let later = env.insert_txn(&[("shipped", r#"{"x": 2}"#)])?;
    let mut expected = waiting.clone();
    expected.extend(later);
    assert_eq!(ids(&env.wait_for_messages("OUTBOX", expected.len())?), expected);
    stop_relay(relay)?;
    assert_eq!(ids(&env.stream_messages("OUTBOX")?), expected);
    Ok(())
}

#[test]
fn monitor_replay_rebuild_and_move_as_written() -> TestResult {
    let env = Env::start()?;
    assert_eq!(env.walrelay(&["setup"])?.code, 0);
    let relay = env.start_relay_with_history(&[])?;
    let mut events = Vec::new();
    for t in 0..3 {
        events.extend(env.insert_txn(&[("created", &format!("{{\"t\": {t}}}")), ("paid", r#"{"x": 1}"#)])?);
    }
    let stored = env.wait_for_messages("OUTBOX", 6)?;
    assert_eq!(ids(&stored), events);
    let from = stored[0].header("Outbox-Commit-Lsn").to_owned();

    // Monitoring: healthy is 0.
    let out = run_block(&env, "monitor", &[])?;
    assert_eq!(out.code, 0, "{out:?}");

    // Replay into a separate stream: exactly the events, in order, under its own subjects, once the slot confirmed
    // them (replay takes only what run relayed).
    let last = stored.last().map(|m| m.commit_lsn()).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while walrelay_tests::lsn(&env.confirmed_flush("walrelay")?) <= last {
        assert!(std::time::Instant::now() < deadline, "the slot did not confirm the events");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = run_block(&env, "replay-separate", &[("FROM_LSN", &from)])?;
    assert_eq!(out.code, 0, "{out:?}");
    let replayed = env.stream_messages("REPLAY_X")?;
    assert_eq!(ids(&replayed), events);
    assert!(replayed.iter().all(|m| m.subject.starts_with("replay.order.")), "{replayed:?}");
    assert_eq!(ids(&env.stream_messages("OUTBOX")?), events, "the live stream is untouched");

    // Rebuild the live stream (run stopped): the same events once, then run goes on without duplicates.
    stop_relay(relay)?;
    let out = run_block(&env, "rebuild-stream", &[("FROM_LSN", &from)])?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(ids(&env.stream_messages("OUTBOX")?), events);
    let relay = env.start_relay(&[])?;
    let later = env.insert_txn(&[("shipped", r#"{"x": 2}"#)])?;
    let mut expected = events.clone();
    expected.extend(later);
    assert_eq!(ids(&env.wait_for_messages("OUTBOX", 7)?), expected);
    stop_relay(relay)?;

    // Move to a new stream: new events go there, the old stream keeps what it had.
    let out = run_block(&env, "new-stream", &[])?;
    assert_eq!(out.code, 0, "{out:?}");
    let relay = env.start_relay(&["--stream", "NEW", "--subject", "new.{aggregate_type}.{event_type}"])?;
    let moved = env.insert_txn(&[("refunded", r#"{"x": 3}"#)])?;
    let in_new = env.wait_for_messages("NEW", 1)?;
    assert_eq!(ids(&in_new), moved);
    assert_eq!(in_new[0].subject, "new.order.refunded");
    stop_relay(relay)?;
    assert_eq!(ids(&env.stream_messages("OUTBOX")?), expected);
    Ok(())
}

#[test]
fn lost_slot_gap_is_resent_as_written() -> TestResult {
    let env = Env::start()?;
    assert_eq!(env.walrelay(&["setup"])?.code, 0);
    let relay = env.start_relay(&[])?;
    let mut relayed = env.insert_txn(&[("created", r#"{"n": 0}"#)])?;
    relayed.extend(env.insert_txn(&[("created", r#"{"n": 1}"#)])?);
    assert_eq!(ids(&env.wait_for_messages("OUTBOX", 2)?), relayed);
    stop_relay(relay)?;

    // Events committed while the relay is down, then the slot is lost.
    let mut gap = env.insert_txn(&[("created", r#"{"n": 2}"#), ("paid", r#"{"n": 3}"#)])?;
    gap.extend(env.insert_txn(&[("created", r#"{"n": 4}"#)])?);
    env.lose_slot()?;
    let out = run_block(&env, "monitor", &[])?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("slot walrelay is lost"), "{}", out.stderr);

    // The procedure as written, then run: the gap once, in creation order, after what was relayed.
    let out = run_block(&env, "lost-slot", &[])?;
    assert_eq!(out.code, 0, "{out:?}");
    let relay = env.start_relay(&[])?;
    let mut expected = relayed.clone();
    expected.extend(gap);
    assert_eq!(ids(&env.wait_for_messages("OUTBOX", expected.len())?), expected);
    // Nothing more arrives: a later marker event is relayed next, with nothing between (the relay publishes in
    // commit order, so anything sent again would come before it).
    expected.extend(env.insert_txn(&[("created", r#"{"n": "marker"}"#)])?);
    let stored = env.wait_for_messages("OUTBOX", expected.len())?;
    // Healthy again while the relay streams (a stopped relay is itself an alert, design.md §4g).
    assert_eq!(run_block(&env, "monitor", &[])?.code, 0, "healthy again");
    stop_relay(relay)?;
    assert_eq!(ids(&stored), expected, "the gap once, then the marker, nothing more");
    assert_eq!(ids(&env.stream_messages("OUTBOX")?), expected);
    Ok(())
}

#[test]
fn verify_finds_and_resends_a_lost_tail_as_written() -> TestResult {
    let mut env = Env::start()?;
    assert_eq!(env.walrelay(&["setup"])?.code, 0);
    let relay = env.start_relay_with_history(&["--nats-sync-interval", "always"])?;
    let kept = env.insert_txn(&[("created", r#"{"n": 0}"#), ("paid", r#"{"n": 1}"#)])?;
    let lost = env.insert_txn(&[("shipped", r#"{"n": 2}"#)])?;
    let stored = env.wait_for_messages("OUTBOX", 3)?;
    let all = [kept.clone(), lost.clone()].concat();
    assert_eq!(ids(&stored), all);
    let last = stored.last().map(|m| m.commit_lsn()).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while walrelay_tests::lsn(&env.confirmed_flush("walrelay")?) <= last {
        assert!(std::time::Instant::now() < deadline, "the slot did not confirm the events");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    stop_relay(relay)?;

    // Exact: the block prints the report and exits 0.
    let out = run_block(&env, "verify-tail", &[])?;
    assert_eq!(out.code, 0, "{out:?}");
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!((report["checked"].as_u64(), report["exact"].as_bool()), (Some(3), Some(true)), "{report}");

    // NATS loses the newest message (deleted, then a restart forgets its id): the block re-sends it, exact again.
    let seq = stored[2].sequence;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(env.nats_url.as_str()).await?);
        js.get_stream("OUTBOX").await?.delete_message(seq).await?;
        Ok::<_, support::Error>(())
    })?;
    env.nats.restart()?;
    assert_eq!(ids(&env.stream_messages("OUTBOX")?), kept);
    let out = run_block(&env, "verify-tail", &[])?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("1 stored, 0 dropped as duplicates"), "{}", out.stderr);
    assert!(out.stdout.contains("3 committed events checked: exact"), "{}", out.stdout);
    assert_eq!(ids(&env.stream_messages("OUTBOX")?), all, "the lost event once, after the surviving ones");

    // A difference the block does not repair: reported, exit 3.
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(env.nats_url.as_str()).await?);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "forged");
        headers.insert("Outbox-Commit-Lsn", stored[0].header("Outbox-Commit-Lsn"));
        headers.insert("Outbox-Index", "9");
        js.publish_with_headers("outbox.order.forged", headers, "{}".into()).await?.await?;
        Ok::<_, support::Error>(())
    })?;
    let out = run_block(&env, "verify-tail", &[])?;
    assert_eq!(out.code, 3, "{out:?}");
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(report["unexpected"], serde_json::json!(["forged"]), "{report}");
    Ok(())
}
