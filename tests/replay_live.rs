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
