//! `replay` into the stream `run` writes (issue 9): replayed messages carry `Outbox-Replayed-At` and the tail read
//! skips them, so after any replay a restart of `run` neither re-publishes nor skips anything, whatever the
//! duplicate window.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use walrelay_tests::{insert_events, stream_messages, wait_for, wait_stream_count, Env, Stored};

const LONG: Duration = Duration::from_secs(120);

fn stop(relay: &walrelay_tests::walrelay_testkit::Process) {
    relay.sigterm().unwrap();
    let status = relay.wait_timeout(LONG).unwrap().expect("relay exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", relay.output_tail(30));
}

/// Lets the stream's 1 s duplicate window pass, so nothing is dropped as a duplicate any more.
async fn let_the_duplicate_window_pass() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_into_the_live_stream_then_restart_run_after_the_window_neither_duplicates_nor_skips() {
    let env = Env::start();
    let opts = ["--duplicate-window", "1s", "--replay-retention", "1h"];
    let relay = env.spawn_run(&opts);
    wait_for("replay slot", LONG, || async {
        env.pg.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walrelay_replay'").unwrap().trim()
            == "1"
    })
    .await;
    let pg = env.client().await;
    let a = insert_events(&pg, "a", 0, 3).await;
    let b = insert_events(&pg, "b", 0, 2).await;
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 5, LONG).await;
    let first = stream_messages(&js, &env.stream).await;
    stop(&relay);
    let_the_duplicate_window_pass().await;

    // Replay only a's transaction: the stream's last message is now a replayed copy of an older event.
    let from = first[0].header("Outbox-Commit-Lsn").to_owned();
    let out = env.walrelay(&["replay", "--from", &from, "--to", &from]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("3 stored, 0 dropped"), "{stderr}");
    let c = insert_events(&pg, "c", 0, 2).await;
    let_the_duplicate_window_pass().await;

    let relay = env.spawn_run(&opts);
    wait_stream_count(&js, &env.stream, 5 + 3 + 2, LONG).await;
    // Settled: the relay confirmed past c, so anything it would re-publish has been published.
    let c_lsn = stream_messages(&js, &env.stream).await.last().unwrap().commit_lsn();
    wait_for("slot confirmed past c", LONG, || async { env.confirmed_flush() > c_lsn }).await;
    stop(&relay);
    let got = stream_messages(&js, &env.stream).await;
    let (replayed, relayed): (Vec<&Stored>, Vec<&Stored>) =
        got.iter().partition(|m| m.headers.contains_key("Outbox-Replayed-At"));
    let ids = |ms: &[&Stored]| ms.iter().map(|m| m.id().to_owned()).collect::<Vec<_>>();
    assert_eq!(ids(&relayed), [a.clone(), b, c].concat(), "run: every event once, in order, none skipped");
    assert_eq!(ids(&replayed), a, "what replay added: one marked copy of each replayed event");
    assert_eq!(got.len(), 10);
}

/// Starts `run <opts>` and waits until its replay slot exists.
async fn run_with_replay_slot(env: &Env, opts: &[&str]) -> walrelay_tests::walrelay_testkit::Process {
    let relay = env.spawn_run(opts);
    wait_for("replay slot", LONG, || async {
        env.pg.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walrelay_replay'").unwrap().trim()
            == "1"
    })
    .await;
    relay
}

/// A purged stream holds no message of run's, so replay cannot read a high-water mark from it: it replays only what
/// the main slot confirmed and leaves the pending events to run, which then relays them as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_into_a_purged_stream_leaves_the_pending_events_to_run() {
    let env = Env::start();
    let relay = run_with_replay_slot(&env, &["--duplicate-window", "1s", "--replay-retention", "1h"]).await;
    let pg = env.client().await;
    let a = insert_events(&pg, "a", 0, 2).await;
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 2, LONG).await;
    let from = stream_messages(&js, &env.stream).await[0].header("Outbox-Commit-Lsn").to_owned();
    stop(&relay);
    js.get_stream(&env.stream).await.unwrap().purge().await.unwrap();
    let b = insert_events(&pg, "b", 0, 2).await;
    let_the_duplicate_window_pass().await;

    let out = env.walrelay(&["replay", "--from", &from]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("replay stopped at event") && stderr.contains("2 stored, 0 dropped"), "{stderr}");
    let relay = env.spawn_run(&[]);
    wait_stream_count(&js, &env.stream, 4, LONG).await;
    stop(&relay);
    let got = stream_messages(&js, &env.stream).await;
    let (replayed, relayed): (Vec<&Stored>, Vec<&Stored>) =
        got.iter().partition(|m| m.headers.contains_key("Outbox-Replayed-At"));
    let ids = |ms: &[&Stored]| ms.iter().map(|m| m.id().to_owned()).collect::<Vec<_>>();
    assert_eq!((ids(&replayed), ids(&relayed)), (a, b), "replay re-sent a; run relayed b, none refused");
}

/// An invalid event that `skip` passed reached the stream as its dead-letter record; a replay over it sends that
/// record (to stdout here) and goes on, instead of stopping with a remedy that no longer applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_over_a_skipped_event_sends_its_dead_letter_record() {
    let env = Env::start();
    let relay = run_with_replay_slot(&env, &["--replay-retention", "1h"]).await;
    let pg = env.client().await;
    let a = insert_events(&pg, "a", 0, 1).await;
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 1, LONG).await;
    pg.batch_execute(
        r#"INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
           VALUES ('order', 'x', 'bad', '{}', '{"k": "a\r\nb"}')"#,
    )
    .await
    .unwrap();
    let status = relay.wait_timeout(LONG).unwrap();
    let output = relay.output();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "run stops on the invalid event: {output}");
    let through = output.split("walrelay skip --through ").nth(1).and_then(|s| s.split('`').next()).unwrap();
    let out = env.walrelay(&["skip", "--through", through]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let b = insert_events(&pg, "b", 0, 1).await;
    let relay = env.spawn_run(&["--replay-retention", "1h"]);
    wait_stream_count(&js, &env.stream, 3, LONG).await;
    stop(&relay);
    let stored: Vec<String> = stream_messages(&js, &env.stream).await.iter().map(|m| m.id().to_owned()).collect();

    let from = stream_messages(&js, &env.stream).await[0].header("Outbox-Commit-Lsn").to_owned();
    let out = env.walrelay(&["replay", "--from", &from, "--stdout"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(printed, stored, "what the stream holds, the dead-letter record included");
    assert!(stored[1].starts_with("dead-letter:") && [&stored[0], &stored[2]] == [&a[0], &b[0]], "{stored:?}");
}
