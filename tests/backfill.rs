//! `setup --backfill` on real servers (design.md §4f): the rows waiting in the outbox when the slot is created are
//! published once, in order, with `Outbox-Backfill: true` at the slot's consistent point, and everything committed
//! later comes from the slot, once; also across kill -9 of the backfill, with a WHERE clause, over several tables;
//! `--backfill` over a completed setup refuses.

use walrelay_tests::ops as support;

use std::{collections::BTreeSet, time::Duration};

use support::{stop_relay, Env, TestResult};
use walrelay_testkit::{wait_until, Process};

/// The ids of `public.outbox` in the backfill's default order (the id column), optionally filtered.
fn ids_in_order(env: &Env, table: &str, filter: &str) -> Result<Vec<String>, support::Error> {
    let out = env.sql(&format!("SELECT id FROM {table} {filter} ORDER BY id"))?;
    Ok(out.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect())
}

fn ids(messages: &[walrelay_tests::Stored]) -> Vec<String> {
    messages.iter().map(|m| m.id().to_owned()).collect()
}

/// Inserts `n` rows in one transaction with a generated payload; `tag` distinguishes batches.
fn insert_rows(env: &Env, table: &str, tag: &str, n: u64) -> TestResult {
    env.sql(&format!(
        "INSERT INTO {table} (aggregate_type, aggregate_id, event_type, payload, headers) \
         SELECT 'order', 'o-' || g, 'created', jsonb_build_object('tag', '{tag}', 'n', g), \
                jsonb_build_object('trace', 't-' || g) \
         FROM generate_series(1, {n}) g"
    ))?;
    Ok(())
}

#[test]
fn waiting_rows_then_streamed_rows_each_once_with_the_backfill_headers() -> TestResult {
    let env = Env::start()?;
    for _ in 0..3 {
        env.insert_txn(&[("created", r#"{"waiting": true}"#), ("paid", r#"{"waiting": true}"#)])?;
    }
    let waiting = ids_in_order(&env, "public.outbox", "")?;
    assert_eq!(waiting.len(), 6);

    let out = env.walrelay(&["setup", "--backfill"])?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("6 rows staged"), "{}", out.stdout);
    let consistent_point = env.confirmed_flush("walrelay")?;
    assert!(support::is_lsn(&consistent_point), "{consistent_point}");
    assert_eq!(env.slots()?, ["walrelay"], "the temporary slot is gone");
    assert_eq!(env.sql("SELECT count(*) FROM pg_class WHERE relname LIKE 'walrelay_backfill%'")?, "0");

    let backfilled = env.stream_messages("OUTBOX")?;
    assert_eq!(ids(&backfilled), waiting, "every waiting row once, ordered by id");
    let snapshot_time = backfilled[0].header("Outbox-Commit-Time").to_owned();
    for (rank, m) in backfilled.iter().enumerate() {
        assert_eq!(m.header("Outbox-Backfill"), "true");
        assert_eq!(m.header("Outbox-Commit-Lsn"), consistent_point);
        assert_eq!(m.header("Outbox-Index"), rank.to_string());
        assert_eq!(m.header("Outbox-Commit-Time"), snapshot_time, "one snapshot time");
        assert_eq!(m.header("Outbox-Aggregate-Type"), "order");
        let event_type = m.header("Outbox-Event-Type").to_owned();
        assert!(event_type == "created" || event_type == "paid", "{event_type}");
        assert_eq!(m.subject, format!("outbox.order.{event_type}"));
        assert!(m.header("trace").starts_with("t-"), "the row's headers: {:?}", m.headers);
        assert_eq!(m.json(), serde_json::json!({"waiting": true}));
    }
    assert!(humantime::parse_rfc3339(&snapshot_time).is_ok(), "{snapshot_time}");

    // Committed after the slot: only from the slot, after the backfill.
    let later = env.insert_txn(&[("created", r#"{"waiting": false}"#), ("created", r#"{"waiting": false}"#)])?;
    let relay = env.start_relay(&[])?;
    env.wait_for_messages("OUTBOX", 8)?;
    stop_relay(relay)?;
    let all = env.stream_messages("OUTBOX")?;
    assert_eq!(ids(&all), [waiting.clone(), later].concat(), "exactly the waiting rows, then the new ones");
    for (i, m) in all[6..].iter().enumerate() {
        assert_eq!(m.header("Outbox-Backfill"), "", "a streamed event carries no backfill header");
        assert!(m.commit_lsn() >= walrelay_tests::lsn(&consistent_point));
        assert_eq!(m.header("Outbox-Index"), i.to_string());
    }

    // The setup is complete: --backfill again refuses and says how to start over; nothing changes.
    let again = env.walrelay(&["setup", "--backfill"])?;
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("teardown"), "{}", again.stderr);
    assert!(again.stderr.contains("setup --backfill"), "{}", again.stderr);
    assert_eq!(env.stream_messages("OUTBOX")?.len(), 8);
    Ok(())
}

#[test]
fn a_where_clause_selects_the_rows_and_an_invalid_one_publishes_nothing() -> TestResult {
    let env = Env::start()?;
    env.sql("ALTER TABLE public.outbox ADD COLUMN processed_at timestamptz")?;
    insert_rows(&env, "public.outbox", "a", 10)?;
    env.sql("UPDATE public.outbox SET processed_at = now() WHERE (payload->>'n')::int % 3 = 0")?;

    // Invalid SQL: exit 1 with Postgres' message, no slot, nothing published.
    let bad = env.walrelay(&["setup", "--backfill", "--backfill-where", "processed_at IS NUL"])?;
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("syntax error"), "{}", bad.stderr);
    assert!(env.slots()?.is_empty(), "no slot left behind: {:?}", env.slots()?);
    assert!(env.stream_messages("OUTBOX")?.is_empty());

    let out = env.command(&["setup", "--backfill"])?.env("WALRELAY_BACKFILL_WHERE", "processed_at IS NULL").output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = ids_in_order(&env, "public.outbox", "WHERE processed_at IS NULL")?;
    assert_eq!(expected.len(), 7);
    assert_eq!(ids(&env.stream_messages("OUTBOX")?), expected);
    Ok(())
}

#[test]
fn several_tables_one_snapshot_table_by_table_in_the_given_order() -> TestResult {
    let env = Env::start()?;
    env.sql("CREATE TABLE public.outbox_b (LIKE public.outbox INCLUDING ALL)")?;
    insert_rows(&env, "public.outbox", "a", 4)?;
    insert_rows(&env, "public.outbox_b", "b", 3)?;
    // Ordered by aggregate_id within each table: o-1, o-2, ...
    let tables = "public.outbox_b,public.outbox";
    let out = env.walrelay(&["setup", "--backfill", "--table", tables, "--backfill-order", "aggregate_id"])?;
    assert_eq!(out.code, 0, "{out:?}");
    let messages = env.stream_messages("OUTBOX")?;
    let got: Vec<(String, String)> = messages
        .iter()
        .map(|m| (m.json()["tag"].as_str().unwrap_or("").to_owned(), m.header("Outbox-Aggregate-Id").to_owned()))
        .collect();
    let want: Vec<(String, String)> = [("b", 1), ("b", 2), ("b", 3), ("a", 1), ("a", 2), ("a", 3), ("a", 4)]
        .iter()
        .map(|(t, n)| ((*t).to_owned(), format!("o-{n}")))
        .collect();
    assert_eq!(got, want);
    let ranks: Vec<String> = messages.iter().map(|m| m.header("Outbox-Index").to_owned()).collect();
    assert_eq!(ranks, (0..7).map(|i| i.to_string()).collect::<Vec<_>>(), "ranks continue across tables");

    // New rows in both tables come from the slot.
    insert_rows(&env, "public.outbox", "a2", 1)?;
    insert_rows(&env, "public.outbox_b", "b2", 1)?;
    let relay = env.start_relay(&["--table", tables])?;
    let all = env.wait_for_messages("OUTBOX", 9)?;
    stop_relay(relay)?;
    let tags: Vec<String> = all.iter().map(|m| m.json()["tag"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(tags, ["b", "b", "b", "a", "a", "a", "a", "a2", "b2"]);
    Ok(())
}

/// Spawns `setup --backfill` and returns it running.
fn spawn_backfill(env: &Env, extra: &[&str]) -> Result<Process, support::Error> {
    let mut cmd = env.command(&[&["setup", "--backfill"], extra].concat())?;
    cmd.env("WALRELAY_LOG", "info");
    Ok(Process::spawn(cmd)?)
}

#[test]
fn kill_9_during_a_100000_row_backfill_then_rerun_publishes_every_row_once() -> TestResult {
    let env = Env::start()?;
    const ROWS: u64 = 100_000;
    insert_rows(&env, "public.outbox", "w", ROWS)?;
    let expected = ids_in_order(&env, "public.outbox", "")?;

    // Killed once while publishing (after some messages are stored).
    let setup = spawn_backfill(&env, &[])?;
    wait_until("part of the backfill published", Duration::from_secs(120), || {
        let n = env.stream_messages("OUTBOX").ok()?.len();
        (n >= 5_000).then_some(())
    })?;
    // Committed during the backfill, after the slot's creation: from the slot, never backfilled.
    insert_rows(&env, "public.outbox", "during", 2)?;
    setup.kill9()?;
    setup.wait_timeout(Duration::from_secs(10))?;
    let partial = env.stream_messages("OUTBOX")?.len();
    assert!(partial < ROWS as usize, "killed before the end: {partial}");

    // `run` refuses while the backfill is unfinished.
    let refused = env.walrelay(&["run"])?;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("setup --backfill"), "{}", refused.stderr);

    // Committed while the backfill is interrupted: from the slot too.
    insert_rows(&env, "public.outbox", "after", 3)?;

    let out = env.walrelay(&["setup", "--backfill"])?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("resuming"), "{}", out.stdout);
    let messages = env.stream_messages("OUTBOX")?;
    assert_eq!(messages.len(), ROWS as usize, "every row once");
    assert_eq!(ids(&messages), expected, "in order");
    assert!(messages.iter().enumerate().all(|(i, m)| m.header("Outbox-Index") == i.to_string()));

    let relay = env.start_relay(&[])?;
    env.wait_for_messages("OUTBOX", ROWS as usize + 5)?;
    stop_relay(relay)?;
    let all = env.stream_messages("OUTBOX")?;
    assert_eq!(all.len(), ROWS as usize + 5);
    let tags: Vec<String> =
        all[ROWS as usize..].iter().map(|m| m.json()["tag"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(tags, ["during", "during", "after", "after", "after"]);
    let unique: BTreeSet<&str> = all.iter().map(|m| m.id()).collect();
    assert_eq!(unique.len(), all.len(), "no id twice");
    Ok(())
}
