//! A clean stop (issue 9, design.md §4 "Stopping"): SIGTERM between the last event of a transaction and its Commit
//! reads on to the Commit, waits for the acks and confirms the transaction's end, so the slot holds nothing to
//! re-decode afterwards and a restart re-sends nothing. The last line says `stopped` with the confirmed LSN.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use walrelay_tests::{
    http_get, ids, lsn, stream_messages, wait_for, wait_stream_count, walrelay_testkit::free_port, Env,
};

const LONG: Duration = Duration::from_secs(120);
/// The relay's line when the stop landed between the last event of a transaction and its Commit.
const FINISHED: &str = "stopping: the open transaction is fully published";

/// The value of `name` in a `/metrics` body.
fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_after_the_last_event_of_a_transaction_confirms_its_commit() {
    let env = Env::start();
    env.pg.psql("CREATE TABLE filler (n int, pad text)").unwrap();
    env.setup();
    let relay = env.spawn_run(&["--shutdown-timeout", "90s"]);
    // Three outbox rows, then three million rows of a table outside the publication, in one transaction. Postgres
    // decodes a transaction at its commit: it sends the three events at once, then goes through the filler changes
    // (spilled to disk) for seconds before it sends the Commit. The events are published and acked long before
    // that: the stop lands between the last event and the Commit (the log line below proves it did).
    let pg = env.client().await;
    pg.batch_execute(
        "BEGIN; \
         INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
           SELECT 'order', g::text, 'created', '{}' FROM generate_series(1, 3) g; \
         INSERT INTO filler SELECT g, 'x' FROM generate_series(1, 3000000) g; \
         COMMIT",
    )
    .await
    .unwrap();
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 3, LONG).await;
    relay.sigterm().unwrap();
    let status = relay.wait_timeout(LONG).unwrap().expect("relay exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", relay.output_tail(30));
    let out = relay.output();
    let line = out.lines().find(|l| l.contains(FINISHED));
    let end_lsn = line
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("end_lsn=")))
        .map(lsn)
        .unwrap_or_else(|| panic!("the stop did not read on to the Commit (no `{FINISHED}`):\n{out}"));
    let stored = stream_messages(&js, &env.stream).await;
    let first = ids(&stored);
    let commit_lsn = stored[2].commit_lsn();
    assert!(end_lsn > commit_lsn, "end {end_lsn:X} after the commit record's start {commit_lsn:X}");
    let confirmed = env.confirmed_flush();
    assert!(confirmed >= end_lsn, "confirmed {confirmed:X} must reach the commit end {end_lsn:X}:\n{out}");
    // The last line says the relay stopped, and where the slot stands (issue 19).
    let last = out.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let said = last.split_whitespace().find_map(|w| w.strip_prefix("confirmed_lsn=")).map(lsn);
    assert!(last.contains(" stopped"), "the last line is not `stopped, confirmed_lsn=...`: {last:?}\n{out}");
    assert_eq!(said, Some(confirmed), "the last line names the slot's confirmed_flush_lsn: {last:?}");
    // Nothing to re-decode: the slot holds no change any more.
    let pending = env
        .pg
        .psql(&format!(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('{}', NULL, NULL, 'proto_version', '1', \
             'publication_names', 'walrelay')",
            env.slot
        ))
        .unwrap();
    assert_eq!(pending.trim(), "0", "{out}");

    // A restart re-sends nothing: after one more event, the new process published exactly that one and skipped
    // none (a transaction Postgres sent again would be skipped against the stream's tail).
    let addr = format!("127.0.0.1:{}", free_port());
    let relay = env.spawn_run(&["--metrics-addr", &addr]);
    pg.batch_execute(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', '4', 'created', '{}')",
    )
    .await
    .unwrap();
    wait_stream_count(&js, &env.stream, 4, LONG).await;
    let acked = |body: &str| metric(body, "walrelay_events_acked_total");
    let mut body = String::new();
    wait_for("the restarted relay's ack", LONG, || {
        body = http_get(&addr, "/metrics").map(|(_, b)| b).unwrap_or_default();
        std::future::ready(acked(&body) == Some(1))
    })
    .await;
    assert_eq!(metric(&body, "walrelay_events_published_total"), Some(1), "{body}");
    assert_eq!(metric(&body, "walrelay_events_skipped_total"), Some(0), "{body}");
    let stored = stream_messages(&js, &env.stream).await;
    assert_eq!(ids(&stored)[..3], first[..], "the first three stay as they were");
    assert_eq!(stored[3].header("Outbox-Aggregate-Id"), "4");
    relay.sigterm().unwrap();
    let status = relay.wait_timeout(LONG).unwrap().expect("relay exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", relay.output_tail(30));
}
