//! A clean stop (issue 9): SIGTERM while the transaction being read is fully published waits for its acks and
//! confirms it, so the slot holds nothing to re-decode afterwards.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use walrelay_tests::{stream_messages, wait_stream_count, Env};

const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_after_the_last_event_of_a_transaction_confirms_its_commit() {
    let env = Env::start();
    env.pg.psql("CREATE TABLE filler (n int)").unwrap();
    env.setup();
    let relay = env.spawn_run(&[]);
    // Three outbox rows, then many rows of a table outside the publication: Postgres sends the three events, then
    // decodes the rest for a while before it sends the Commit. The stop lands in that gap.
    let pg = env.client().await;
    pg.batch_execute(
        "BEGIN; \
         INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
           SELECT 'order', g::text, 'created', '{}' FROM generate_series(1, 3) g; \
         INSERT INTO filler SELECT generate_series(1, 1000000); \
         COMMIT",
    )
    .await
    .unwrap();
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 3, LONG).await;
    relay.sigterm().unwrap();
    let status = relay.wait_timeout(LONG).unwrap().expect("relay exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", relay.output_tail(30));
    let commit_lsn = stream_messages(&js, &env.stream).await[2].commit_lsn();
    let confirmed = env.confirmed_flush();
    assert!(
        confirmed > commit_lsn,
        "confirmed {confirmed:X} must pass the commit at {commit_lsn:X}:\n{}",
        relay.output_tail(30)
    );
    // Nothing to re-decode: the slot holds no change any more.
    let pending = env
        .pg
        .psql(&format!(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('{}', NULL, NULL, 'proto_version', '1', \
             'publication_names', 'walrelay')",
            env.slot
        ))
        .unwrap();
    assert_eq!(pending.trim(), "0", "{}", relay.output_tail(30));
}
