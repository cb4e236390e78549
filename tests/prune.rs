//! `run --prune-after` (design.md §4c, issue 12.4): old outbox rows are deleted while the relay runs, and every
//! event still arrives exactly once, including rows deleted before the relay read them.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use walrelay_tests::{ids, insert_events, stream_messages, wait_for, wait_stream_count, Env};

const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_deletes_old_rows_and_loses_no_event() {
    let env = Env::start();
    env.setup();
    let pg = env.client().await;
    // Written before the relay runs: pruned before (or while) it reads them from WAL.
    let mut expected = insert_events(&pg, "before", 0, 50).await;
    let count = || async { env.pg.psql("SELECT count(*) FROM outbox").unwrap().trim().parse::<u64>().unwrap() };
    assert_eq!(count().await, 50);
    let relay = env.spawn_run(&["--prune-after", "1s"]);
    for t in 0..5 {
        expected.extend(insert_events(&pg, "during", t * 20, 20).await);
    }
    wait_for("every row pruned", LONG, || async { count().await == 0 }).await;
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, expected.len() as u64, LONG).await;
    assert_eq!(ids(&stream_messages(&js, &env.stream).await), expected, "exactly once, in order");
    assert!(relay.output().contains("pruned outbox rows"), "{}", relay.output_tail(20));
    relay.sigterm().unwrap();
    assert_eq!(relay.wait_timeout(Duration::from_secs(30)).unwrap().and_then(|s| s.code()), Some(0));
}
