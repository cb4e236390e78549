//! `walrelay peek`, `replay` and `teardown` on real servers: peek shows exactly the pending events without moving
//! the slot; replay from a stored `Outbox-Commit-Lsn` re-sends exactly that transaction and every later one, with the
//! original ids, to an empty stream or as NDJSON; an LSN before the replay slot's horizon is refused; teardown
//! refuses an active slot unless forced. With `--message-prefix`, peek, run and replay show logical messages between
//! the rows of their transactions, with the same ids, order and `Outbox-Index`.

use walrelay_tests::ops as support;

use std::time::Duration;

use support::{stop_relay, Env, TestResult};
use walrelay_testkit::wait_until;
use walrelay_tests::Stored;

/// Asserts an NDJSON event line equals what the relay stored, and names `table` (`message:<prefix>` for a logical
/// message).
fn assert_same_event(line: &serde_json::Value, stored: &Stored, table: &str) {
    assert_eq!(line["id"].as_str(), Some(stored.id()), "{line}");
    assert_eq!(line["table"], table, "{line}");
    assert_eq!(line["subject"].as_str(), Some(stored.subject.as_str()), "{line}");
    assert_eq!(line["commit_lsn"].as_str(), Some(stored.header("Outbox-Commit-Lsn")), "{line}");
    assert_eq!(line["index"].to_string(), stored.header("Outbox-Index"), "{line}");
    assert_eq!(line["commit_time"].as_str(), Some(stored.header("Outbox-Commit-Time")), "{line}");
    let headers: std::collections::BTreeMap<String, String> = line["headers"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default();
    assert_eq!(headers, stored.headers, "{line}");
    let payload: serde_json::Value = serde_json::from_slice(&stored.payload).unwrap_or_default();
    assert_eq!(line["payload"], payload, "{line}");
}

/// Asserts a stream that replay wrote holds exactly `want` (what run stored), in order.
fn assert_replayed(got: &[Stored], want: &[Stored]) {
    assert_eq!(got.len(), want.len());
    for (got, want) in got.iter().zip(want) {
        // Replay marks what it publishes (so run's tail read skips it) and adds nothing else.
        let mut headers = got.headers.clone();
        let marker = headers.remove("Outbox-Replayed-At").expect("replayed messages are marked");
        assert!(humantime::parse_rfc3339(&marker).is_ok(), "{marker}");
        assert_eq!((&got.subject, &headers, &got.payload), (&want.subject, &want.headers, &want.payload));
    }
}

#[test]
fn peek_shows_pending_events_without_consuming_them() -> TestResult {
    let env = Env::start()?;
    assert_eq!(env.walrelay(&["setup"])?.code, 0);
    let empty = env.walrelay(&["peek"])?;
    assert_eq!(empty.code, 0, "{empty:?}");
    assert!(empty.stdout.contains("no pending events"), "{}", empty.stdout);

    let mut ids = env.insert_txn(&[("created", r#"{"n": 0}"#), ("paid", r#"{"n": 1}"#)])?;
    env.sql("CREATE TABLE other (x int); INSERT INTO other VALUES (1)")?;
    ids.extend(env.insert_txn(&[("shipped", r#"{"n": 2}"#)])?);
    env.sql("BEGIN; INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', 'x', 'lost', '{}'); ROLLBACK")?;
    ids.extend(env.insert_txn(&[("closed", r#""just text""#)])?);
    let before = env.confirmed_flush("walrelay")?;

    let out = env.walrelay(&["peek", "--json"])?;
    assert_eq!(out.code, 0, "{out:?}");
    let lines = out.json_lines()?;
    let got: Vec<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
    assert_eq!(got, ids);
    let indexes: Vec<u64> = lines.iter().filter_map(|l| l["index"].as_u64()).collect();
    assert_eq!(indexes, [0, 1, 0, 0]);
    assert_eq!(lines[0]["commit_lsn"], lines[1]["commit_lsn"]);
    assert_ne!(lines[1]["commit_lsn"], lines[2]["commit_lsn"]);
    assert_eq!(lines[1]["subject"], "outbox.order.paid");
    assert_eq!(lines[1]["payload"]["n"], 1);
    assert_eq!(lines[3]["payload"], "just text");
    assert_eq!(lines[0]["headers"]["trace"], "t-0");
    assert_eq!(env.confirmed_flush("walrelay")?, before, "peek moved the slot");
    assert_eq!(env.slots()?, ["walrelay"], "peek left a slot behind");

    let limited = env.walrelay(&["peek", "--json", "--limit", "2"])?;
    assert_eq!(limited.json_lines()?.len(), 2, "{limited:?}");
    let human = env.walrelay(&["peek"])?;
    assert_eq!(human.code, 0, "{human:?}");
    assert!(human.stdout.contains("4 pending events"), "{}", human.stdout);
    assert!(human.stdout.contains(&format!("id={}", ids[2])), "{}", human.stdout);
    assert_eq!(env.confirmed_flush("walrelay")?, before, "peek moved the slot");

    // What peek showed is exactly what run publishes.
    let relay = env.start_relay(&[])?;
    let stored = env.wait_for_messages("OUTBOX", 4)?;
    assert_eq!(stored.len(), 4);
    for (line, msg) in lines.iter().zip(&stored) {
        assert_same_event(line, msg, "public.outbox");
    }
    // Peek while run holds the slot: nothing pending, the relay keeps the slot.
    let pid = wait_until("slot active", Duration::from_secs(30), || {
        let pid =
            env.sql("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'walrelay' AND active").ok()?;
        (!pid.is_empty()).then_some(pid)
    })?;
    wait_until("nothing pending", Duration::from_secs(30), || {
        let out = env.walrelay(&["peek", "--json"]).ok()?;
        (out.code == 0 && out.stdout.trim().is_empty()).then_some(())
    })?;
    let after = env.sql("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'walrelay' AND active")?;
    assert_eq!(after, pid);
    stop_relay(relay)?;
    assert_eq!(env.slots()?, ["walrelay"]);
    Ok(())
}

#[test]
fn replay_resends_from_a_stored_commit_lsn_and_teardown_cleans_up() -> TestResult {
    let env = Env::start()?;
    assert_eq!(env.walrelay(&["setup"])?.code, 0);
    let relay = env.start_relay_with_history(&[])?;
    let txns: Vec<Vec<String>> = vec![
        env.insert_txn(&[("created", r#"{"n": 0}"#)])?,
        env.insert_txn(&[("created", r#"{"n": 1}"#), ("paid", r#"{"n": 2}"#)])?,
        env.insert_txn(&[("shipped", r#"{"n": 3}"#)])?,
        env.insert_txn(&[("closed", r#"{"n": 4}"#)])?,
    ];
    let stored = env.wait_for_messages("OUTBOX", 5)?;
    let ids: Vec<&str> = stored.iter().map(Stored::id).collect();
    assert_eq!(ids, txns.concat());
    stop_relay(relay)?;
    let main_confirmed = env.confirmed_flush("walrelay")?;

    // Event k = the first of the second transaction; its stored Outbox-Commit-Lsn is the replay start.
    let from = stored[1].header("Outbox-Commit-Lsn").to_owned();
    let expected = &stored[1..];

    let out = env.walrelay(&["replay", "--from", &from, "--stdout"])?;
    assert_eq!(out.code, 0, "{out:?}");
    let lines = out.json_lines()?;
    assert_eq!(lines.len(), expected.len(), "{}", out.stdout);
    for (line, msg) in lines.iter().zip(expected) {
        assert_same_event(line, msg, "public.outbox");
    }

    // --to bounds the range by commit LSN (inclusive).
    let to = stored[3].header("Outbox-Commit-Lsn").to_owned();
    let out = env.walrelay(&["replay", "--from", &from, "--to", &to, "--stdout"])?;
    let got: Vec<String> = out.json_lines()?.iter().filter_map(|l| l["id"].as_str().map(str::to_owned)).collect();
    assert_eq!(got, txns[1..3].concat(), "{out:?}");

    // Into an empty stream: exactly the events of k's transaction and every later one, in order, original ids.
    env.delete_stream("OUTBOX")?;
    let out = env.walrelay(&["replay", "--from", &from])?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("4 stored, 0 dropped as duplicates"), "{}", out.stderr);
    assert_replayed(&env.stream_messages("OUTBOX")?, expected);
    // Again, within the duplicate window: nothing new is stored.
    let again = env.walrelay(&["replay", "--from", &from])?;
    assert!(again.stderr.contains("0 stored, 4 dropped as duplicates"), "{}", again.stderr);
    assert_eq!(env.stream_messages("OUTBOX")?.len(), 4);

    // Before the horizon: refused, naming the oldest replayable LSN.
    let oldest = env.confirmed_flush("walrelay_replay")?;
    let out = env.walrelay(&["replay", "--from", "0/1", "--stdout"])?;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(
        out.stderr.contains(&format!("cannot replay from 0/1: the oldest replayable LSN is {oldest}")),
        "{}",
        out.stderr
    );

    // Neither slot moved, no copy left behind.
    assert_eq!(env.confirmed_flush("walrelay")?, main_confirmed);
    assert_eq!(env.slots()?, ["walrelay", "walrelay_replay"]);

    // Teardown refuses an active slot, --force takes it down with everything else.
    let relay = env.start_relay(&[])?;
    wait_until("slot active", Duration::from_secs(30), || {
        let active = env.sql("SELECT active FROM pg_replication_slots WHERE slot_name = 'walrelay'").ok()?;
        (active == "t").then_some(())
    })?;
    let refused = env.walrelay(&["teardown", "--all"])?;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    assert_eq!(env.slots()?, ["walrelay", "walrelay_replay"]);
    let forced = env.walrelay(&["teardown", "--all", "--force"])?;
    assert_eq!(forced.code, 0, "{forced:?}");
    assert!(forced.stdout.contains("slot walrelay: dropped"), "{}", forced.stdout);
    assert!(forced.stdout.contains("slot walrelay_replay: dropped"), "{}", forced.stdout);
    assert!(forced.stdout.contains("publication walrelay: dropped"), "{}", forced.stdout);
    assert!(forced.stdout.contains("stream OUTBOX: deleted"), "{}", forced.stdout);
    assert!(env.slots()?.is_empty());
    assert_eq!(env.sql("SELECT count(*) FROM pg_publication")?, "0");
    drop(relay);
    Ok(())
}

#[test]
fn replay_slot_trails_the_main_slot_by_the_retention() -> TestResult {
    let env = Env::start()?;
    assert_eq!(env.walrelay(&["setup"])?.code, 0);
    let relay = env.start_relay(&["--replay-retention", "3s"])?;
    wait_until("replay slot", Duration::from_secs(30), || {
        env.slots().ok().filter(|s| s.iter().any(|n| n == "walrelay_replay"))
    })?;
    let created_at = lsn(&env.confirmed_flush("walrelay_replay")?);
    env.insert_txn(&[("created", r#"{"n": 0}"#)])?;
    env.wait_for_messages("OUTBOX", 1)?;
    let target = lsn(&env.sql("SELECT pg_current_wal_lsn()")?);
    wait_until("main slot confirms the event", Duration::from_secs(30), || {
        (lsn(&env.confirmed_flush("walrelay").ok()?) >= target).then_some(())
    })?;
    let main_reached = std::time::Instant::now();
    // Right after the main slot moved, the replay slot still holds the older WAL.
    assert!(lsn(&env.confirmed_flush("walrelay_replay")?) < target, "replay slot must trail the main slot");
    wait_until("replay slot follows after the retention", Duration::from_secs(30), || {
        (lsn(&env.confirmed_flush("walrelay_replay").ok()?) >= target).then_some(())
    })?;
    let waited = main_reached.elapsed();
    assert!(waited >= Duration::from_secs(2), "replay slot followed after only {waited:?}");
    assert!(lsn(&env.confirmed_flush("walrelay_replay")?) > created_at);
    stop_relay(relay)
}

fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.trim().split_once('/').unwrap_or(("0", "0"));
    (u64::from_str_radix(hi, 16).unwrap_or(0) << 32) | u64::from_str_radix(lo, 16).unwrap_or(0)
}

/// `--message-prefix outbox`, for every command of the message test.
const MESSAGES: &[&str] = &["--message-prefix", "outbox"];

/// An outbox row with id `id` and payload `{"n": n}`, as SQL.
fn row_sql(id: &str, n: u32) -> String {
    format!(
        "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, headers) \
         VALUES ('{id}', 'order', 'o-{n}', 'created', '{{\"n\": {n}}}', '{{\"trace\": \"t-{n}\"}}');"
    )
}

/// A logical decoding message with the fields of an outbox row, id `id` and payload `{"n": n}`, as SQL.
fn message_sql(transactional: bool, prefix: &str, id: &str, n: u32) -> String {
    format!(
        "SELECT pg_logical_emit_message({transactional}, '{prefix}', '{{\"id\": \"{id}\", \"aggregate_type\": \"note\", \
         \"aggregate_id\": \"o-{n}\", \"event_type\": \"sent\", \"payload\": {{\"n\": {n}}}, \"headers\": {{\"trace\": \"t-{n}\"}}}}');"
    )
}

/// (id, table, index) of each NDJSON line.
fn summary(lines: &[serde_json::Value]) -> Vec<(String, String, u64)> {
    lines
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap_or("?").to_owned(),
                l["table"].as_str().unwrap_or("?").to_owned(),
                l["index"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

#[test]
fn peek_and_replay_show_messages_between_rows() -> TestResult {
    let env = Env::start()?;
    assert_eq!(env.walrelay(&[&["setup"], MESSAGES].concat())?.code, 0);
    // The replay slot must exist before the events are written; the relay that makes it stops, so they stay pending.
    stop_relay(env.start_relay_with_history(MESSAGES)?)?;

    // Three transactions of rows (true) and messages (false) interleaved, with what must never show beside them: a
    // non-transactional message, a message of another prefix, and a rolled-back transaction.
    let uuid = |n: u32| format!("00000000-0000-4000-8000-{n:012}");
    let plan: [&[(bool, u32)]; 3] =
        [&[(true, 0), (false, 1), (true, 2)], &[(false, 3), (false, 4)], &[(true, 5), (false, 6)]];
    let mut expected: Vec<(String, String, u64)> = Vec::new();
    for (t, txn) in plan.iter().enumerate() {
        let mut sql = String::from("BEGIN;");
        for (index, &(is_row, n)) in txn.iter().enumerate() {
            let (id, table) = if is_row {
                sql += &row_sql(&uuid(n), n);
                (uuid(n), "public.outbox")
            } else {
                sql += &message_sql(true, "outbox", &format!("m-{n}"), n);
                (format!("m-{n}"), "message:outbox")
            };
            expected.push((id, table.to_owned(), index as u64));
            if index == 0 {
                sql += &message_sql(false, "outbox", &format!("nontx-{t}"), 90);
                sql += &message_sql(true, "other", &format!("other-{t}"), 91);
            }
        }
        env.sql(&(sql + "COMMIT;"))?;
    }
    env.sql(&format!(
        "BEGIN; {} {} ROLLBACK;",
        row_sql(&uuid(92), 92),
        message_sql(true, "outbox", "rolled-back", 93)
    ))?;

    // Peek: exactly those, in commit order, one index sequence per transaction over rows and messages.
    let out = env.walrelay(&[&["peek", "--json"], MESSAGES].concat())?;
    assert_eq!(out.code, 0, "{out:?}");
    let peeked = out.json_lines()?;
    assert_eq!(summary(&peeked), expected);
    let lsns: Vec<&str> = peeked.iter().map(|l| l["commit_lsn"].as_str().unwrap_or("?")).collect();
    assert_eq!([lsns[0], lsns[1]], [lsns[2], lsns[2]], "one commit LSN per transaction");
    assert_eq!([lsns[3], lsns[5]], [lsns[4], lsns[6]], "one commit LSN per transaction");
    assert!(lsns[0] != lsns[3] && lsns[3] != lsns[5], "{lsns:?}");
    assert_eq!(peeked[1]["subject"], "outbox.note.sent");
    assert_eq!(
        (&peeked[1]["payload"], &peeked[1]["headers"]["trace"]),
        (&serde_json::json!({"n": 1}), &serde_json::json!("t-1"))
    );

    // Run publishes exactly what peek showed.
    let relay = env.start_relay(MESSAGES)?;
    env.wait_for_messages("OUTBOX", expected.len())?;
    stop_relay(relay)?;
    let stored = env.stream_messages("OUTBOX")?;
    assert_eq!(stored.len(), expected.len());
    for ((line, msg), (_, table, _)) in peeked.iter().zip(&stored).zip(&expected) {
        assert_same_event(line, msg, table);
    }

    // Replay from the second transaction's stored Outbox-Commit-Lsn: it and the third, as NDJSON and into a stream.
    let from = stored[3].header("Outbox-Commit-Lsn").to_owned();
    let out = env.walrelay(&[&["replay", "--from", &from, "--stdout"], MESSAGES].concat())?;
    assert_eq!(out.code, 0, "{out:?}");
    let replayed = out.json_lines()?;
    assert_eq!(summary(&replayed), expected[3..]);
    for ((line, msg), (_, table, _)) in replayed.iter().zip(&stored[3..]).zip(&expected[3..]) {
        assert_same_event(line, msg, table);
    }
    env.delete_stream("OUTBOX")?;
    let out = env.walrelay(&[&["replay", "--from", &from], MESSAGES].concat())?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("4 stored, 0 dropped as duplicates"), "{}", out.stderr);
    assert_replayed(&env.stream_messages("OUTBOX")?, &stored[3..]);
    Ok(())
}

/// Runs a walrelay command whose stdout reader is gone before it prints anything (`peek | head` once `head` has its
/// lines): it must end with exit 0, no panic, and drop the slot copy it made.
fn run_with_closed_stdout(env: &Env, args: &[&str]) -> Result<support::Output, Box<dyn std::error::Error>> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = env.command(args)?.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    drop(child.stdout.take());
    let mut err_pipe = child.stderr.take().ok_or("no stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let status = wait_until("walrelay to end", support::COMMAND_TIMEOUT, || child.try_wait().ok().flatten())?;
    let stderr = reader.join().unwrap_or_default();
    Ok(support::Output { code: status.code().unwrap_or(-1), stdout: String::new(), stderr })
}

/// design.md §4g: `peek | head` and `replay --stdout | head` stop quietly (exit 0) and drop their slot copy; a copy
/// a killed command left (its SQL session gone) is reported by doctor with the statement and dropped by the next
/// command that copies the same slot, while a copy whose session lives on (a concurrent peek) is kept.
#[test]
fn closed_output_and_killed_commands_leave_no_slot_copy() -> TestResult {
    let env = Env::start()?;
    assert_eq!(env.walrelay(&["setup"])?.code, 0);
    let relay = env.start_relay_with_history(&[])?;
    env.insert_txn(&[("created", r#"{"n": 0}"#), ("paid", r#"{"n": 1}"#)])?;
    env.insert_txn(&[("shipped", r#"{"n": 2}"#)])?;
    let stored = env.wait_for_messages("OUTBOX", 3)?;
    stop_relay(relay)?;
    env.insert_txn(&[("closed", r#"{"n": 3}"#)])?;
    env.insert_txn(&[("archived", r#"{"n": 4}"#)])?;
    let both = ["walrelay", "walrelay_replay"];

    let from = stored[0].header("Outbox-Commit-Lsn").to_owned();
    for args in [&["peek", "--json"][..], &["peek"], &["replay", "--from", &from, "--stdout"]] {
        let out = run_with_closed_stdout(&env, args)?;
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        assert!(!out.stderr.contains("panicked") && !out.stderr.contains("Broken pipe"), "{args:?}: {out:?}");
        assert_eq!(env.slots()?, both, "{args:?} left a slot copy behind");
    }

    // Copies as a killed peek and a killed replay leave them: named by a server process that has ended.
    env.sql("SELECT pg_copy_logical_replication_slot('walrelay', 'walrelay_peek_' || pg_backend_pid(), false)")?;
    env.sql(
        "SELECT pg_copy_logical_replication_slot('walrelay_replay', 'walrelay_replay_copy_' || pg_backend_pid(), false)",
    )?;
    let dead: Vec<String> = env.slots()?.into_iter().filter(|s| !both.contains(&s.as_str())).collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    // A concurrent peek's copy: its session is alive.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let live_session = rt.block_on(walrelay_tests::connect(&env.pg_url));
    let live: String = rt.block_on(async {
        let row = live_session
            .query_one(
                "SELECT slot_name::text FROM pg_copy_logical_replication_slot('walrelay', 'walrelay_peek_' || \
                 pg_backend_pid(), false)",
                &[],
            )
            .await
            .expect("copy");
        row.get(0)
    });

    let doctor = env.walrelay(&["doctor"])?;
    for name in &dead {
        assert!(
            doctor.stdout.contains(&format!("SELECT pg_drop_replication_slot('{name}')")),
            "{name}: {}",
            doctor.stdout
        );
    }
    assert!(!doctor.stdout.contains(&live), "a live copy reported: {}", doctor.stdout);

    // peek copies walrelay: it drops the dead copy of walrelay, not the live one, nor the replay slot's copy.
    let peek = env.walrelay(&["peek", "--json"])?;
    assert_eq!(peek.code, 0, "{peek:?}");
    assert_eq!(peek.json_lines()?.len(), 2, "{peek:?}");
    let replay_copy = dead.iter().find(|n| n.starts_with("walrelay_replay_copy_")).ok_or("no replay copy")?;
    let mut want = vec!["walrelay".to_owned(), live.clone(), "walrelay_replay".to_owned(), replay_copy.clone()];
    want.sort();
    assert_eq!(env.slots()?, want);
    // replay copies walrelay_replay: it drops that one.
    let replay = env.walrelay(&["replay", "--from", &from, "--stdout"])?;
    assert_eq!(replay.code, 0, "{replay:?}");
    assert_eq!(replay.json_lines()?.len(), 5, "{replay:?}");
    let mut want = vec!["walrelay".to_owned(), live.clone(), "walrelay_replay".to_owned()];
    want.sort();
    assert_eq!(env.slots()?, want);
    drop(live_session);
    drop(rt);
    let out = wait_until("the live copy's owner gone, peek drops it", Duration::from_secs(30), || {
        let out = env.walrelay(&["peek", "--json"]).ok()?;
        (env.slots().ok()? == both).then_some(out)
    })?;
    assert_eq!(out.code, 0, "{out:?}");
    Ok(())
}
