//! `walrelay verify` on real servers (design.md §4d): an exact stream exits 0 with every committed event checked; a
//! lost tail (messages deleted, then a NATS restart, as an OS crash loses an unsynced tail) exits 3 naming the missing
//! ids and the replay command, and that command, run as printed, makes the stream exact again; a copy at an event's
//! position is a duplicate and a message at a position nothing committed at is unexpected; without the replay slot,
//! or before what it retains, verify cannot check (exit 1); a malformed LSN is a usage error (exit 2). Neither slot
//! moves and no slot copy is left behind.

use walrelay_tests::ops as support;

use std::time::{Duration, Instant};

use support::{stop_relay, Env, Output, TestResult};
use walrelay_tests::{ids, lsn, Stored};

/// Runs `f` with a JetStream context on the env's NATS, on a runtime of its own.
fn with_js<T, F, Fut>(env: &Env, f: F) -> Result<T, support::Error>
where
    F: FnOnce(async_nats::jetstream::Context) -> Fut,
    Fut: std::future::Future<Output = Result<T, support::Error>>,
{
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = async_nats::connect(env.nats_url.as_str()).await?;
        f(async_nats::jetstream::new(client)).await
    })
}

/// Publishes a message with `headers` (name, value) to `subject`, waiting for the stream's ack.
fn publish(env: &Env, subject: &str, headers: &[(&str, &str)]) -> TestResult {
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, *value);
    }
    let subject = subject.to_owned();
    with_js(env, |js| async move {
        js.publish_with_headers(subject, map, "{}".into()).await?.await?;
        Ok(())
    })
}

/// `verify --json`: the exit code and the object.
fn verify_json(env: &Env) -> Result<(Output, serde_json::Value), support::Error> {
    let out = env.walrelay(&["verify", "--json"])?;
    let v = serde_json::from_str(out.stdout.trim()).map_err(|e| format!("not JSON ({e}): {out:?}"))?;
    Ok((out, v))
}

/// A JSON list of strings.
fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

/// Waits until the main slot confirmed every stored message's transaction.
fn wait_confirmed(env: &Env, stored: &[Stored]) -> TestResult {
    let last = stored.iter().map(Stored::commit_lsn).max().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lsn(&env.confirmed_flush("walrelay")?) <= last {
        assert!(Instant::now() < deadline, "the slot did not confirm the events");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn verify_finds_a_lost_tail_that_its_replay_command_heals_then_duplicates_and_unexpected() -> TestResult {
    let mut env = Env::start()?;
    assert_eq!(env.walrelay(&["setup"])?.code, 0);
    let relay = env.start_relay_with_history(&["--nats-sync-interval", "always"])?;
    let txns = [
        env.insert_txn(&[("created", r#"{"n": 0}"#)])?,
        env.insert_txn(&[("created", r#"{"n": 1}"#), ("paid", r#"{"n": 2}"#)])?,
        env.insert_txn(&[("shipped", r#"{"n": 3}"#), ("closed", r#"{"n": 4}"#)])?,
    ];
    let all = txns.concat();
    let stored = env.wait_for_messages("OUTBOX", 5)?;
    assert_eq!(ids(&stored), all);
    wait_confirmed(&env, &stored)?;

    // Exact: every committed event checked, nothing listed.
    let (out, v) = verify_json(&env)?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(v["checked"], 5, "{v}");
    assert_eq!(v["exact"], true, "{v}");
    for list in ["missing", "duplicates", "out_of_order", "unexpected"] {
        assert_eq!(v[list], serde_json::json!([]), "{list}: {v}");
    }
    assert_eq!(v["replay_command"], serde_json::Value::Null);
    let text = env.walrelay(&["verify"])?;
    assert_eq!(text.code, 0, "{text:?}");
    assert!(text.stdout.contains("5 committed events checked: exact"), "{}", text.stdout);
    stop_relay(relay)?;
    let (main, replay) = (env.confirmed_flush("walrelay")?, env.confirmed_flush("walrelay_replay")?);

    // Lose the last transaction's messages as an OS crash loses an unsynced tail: gone from the store, and after the
    // restart not in the duplicate window either.
    let tail: Vec<u64> = stored[3..].iter().map(|m| m.sequence).collect();
    with_js(&env, |js| async move {
        let s = js.get_stream("OUTBOX").await?;
        for seq in tail {
            s.delete_message(seq).await?;
        }
        Ok(())
    })?;
    env.nats.restart()?;
    assert_eq!(ids(&env.stream_messages("OUTBOX")?), txns[..2].concat());

    let lost_at = stored[3].header("Outbox-Commit-Lsn").to_owned();
    let (out, v) = verify_json(&env)?;
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(v["checked"], 5, "{v}");
    assert_eq!(strings(&v["missing"]), txns[2], "{v}");
    for list in ["duplicates", "out_of_order", "unexpected"] {
        assert_eq!(v[list], serde_json::json!([]), "{list}: {v}");
    }
    assert_eq!(v["missing_tail"], true, "{v}");
    let command = format!("walrelay replay --from {lost_at} --to {lost_at}");
    assert_eq!(v["replay_command"].as_str(), Some(command.as_str()), "{v}");
    let text = env.walrelay(&["verify"])?;
    assert_eq!(text.code, 3, "{text:?}");
    assert!(text.stdout.contains("5 committed events checked: 2 missing, 0 duplicated"), "{}", text.stdout);
    for id in &txns[2] {
        assert!(text.stdout.contains(&format!("missing      {id} commit_lsn {lost_at} index")), "{}", text.stdout);
    }
    assert!(text.stdout.contains(&format!("  {command}\n")), "{}", text.stdout);

    // The printed command, as printed: the tail comes back after the surviving messages, and verify is satisfied.
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    let replayed = env.walrelay(&args)?;
    assert_eq!(replayed.code, 0, "{replayed:?}");
    assert!(replayed.stderr.contains("2 stored, 0 dropped"), "{}", replayed.stderr);
    assert_eq!(ids(&env.stream_messages("OUTBOX")?), all);
    let (out, v) = verify_json(&env)?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!((v["checked"].as_u64(), v["replayed"].as_u64()), (Some(5), Some(2)), "{v}");

    // A copy of an event under another id is a duplicate; a message where nothing committed is unexpected.
    let copied = &stored[2];
    let copy_headers: Vec<(&str, &str)> = copied
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), if k == "Nats-Msg-Id" { "copy-of-paid" } else { v.as_str() }))
        .collect();
    publish(&env, &copied.subject, &copy_headers)?;
    let at = copied.header("Outbox-Commit-Lsn");
    publish(
        &env,
        "outbox.order.forged",
        &[("Nats-Msg-Id", "forged"), ("Outbox-Commit-Lsn", at), ("Outbox-Index", "7")],
    )?;
    let (out, v) = verify_json(&env)?;
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(strings(&v["duplicates"]), [copied.id()], "{v}");
    assert_eq!(strings(&v["unexpected"]), ["forged"], "{v}");
    assert_eq!((v["missing"].clone(), v["out_of_order"].clone()), (serde_json::json!([]), serde_json::json!([])));
    let text = env.walrelay(&["verify"])?;
    assert!(text.stdout.contains(&format!("duplicate    {} commit_lsn {at} index 1", copied.id())), "{}", text.stdout);
    assert!(text.stdout.contains("(also as copy-of-paid)"), "{}", text.stdout);
    assert!(text.stdout.contains(&format!("unexpected   forged commit_lsn {at} index 7")), "{}", text.stdout);

    // Neither slot moved, no copy left behind.
    assert_eq!((env.confirmed_flush("walrelay")?, env.confirmed_flush("walrelay_replay")?), (main, replay));
    assert_eq!(env.slots()?, ["walrelay", "walrelay_replay"]);
    Ok(())
}

#[test]
fn verify_cannot_check_without_history_and_refuses_malformed_lsns() -> TestResult {
    let env = Env::start()?;
    assert_eq!(env.walrelay(&["setup"])?.code, 0);

    // Usage errors before connecting.
    for args in [
        &["verify", "--from", "yesterday"][..],
        &["verify", "--to", "0/XYZ"],
        &["verify", "--from", "0/10", "--to", "0/5"],
    ] {
        let out = env.walrelay(args)?;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }

    // No replay slot: nothing to check against.
    let out = env.walrelay(&["verify"])?;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("slot walrelay_replay does not exist"), "{}", out.stderr);
    assert!(out.stderr.contains("--replay-retention"), "{}", out.stderr);
    assert_eq!(env.slots()?, ["walrelay"]);

    // With a replay slot: before what it retains is refused; its default range (empty here) is exact.
    env.sql("SELECT pg_copy_logical_replication_slot('walrelay', 'walrelay_replay')")?;
    let oldest = env.confirmed_flush("walrelay_replay")?;
    let out = env.walrelay(&["verify", "--from", "0/1"])?;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("cannot verify from 0/1: the WAL kept by slot walrelay_replay starts at {oldest}")),
        "{}",
        out.stderr
    );
    let (out, v) = verify_json(&env)?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(v["checked"], 0, "{v}");
    assert_eq!(env.slots()?, ["walrelay", "walrelay_replay"]);
    Ok(())
}
