//! `--message-prefix` (design.md §4c, issue 12.1): transactional logical decoding messages become events through
//! the row path, interleaved with table rows in commit order with one Outbox-Index sequence per transaction;
//! rolled-back and non-transactional messages are absent; invalid messages follow --on-invalid. With `--table ''`
//! only messages are relayed, and every command works without a table. `walrelay demo` shows one message.
#![allow(clippy::unwrap_used, missing_docs)]

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::Barrier;
use walrelay_tests::{stream_messages, wait_stream_count, Env};

const LONG: Duration = Duration::from_secs(120);
/// Transactions per producer.
const ROUNDS: usize = 20;
/// Messages per transaction, between its two rows.
const MESSAGES: u32 = 25;

/// One committed transaction of a producer: its xid and its events as (id, Outbox-Index).
struct Txn {
    xid: u64,
    events: Vec<(String, u32)>,
}

/// One producer on its own connection: [`ROUNDS`] transactions of a row, [`MESSAGES`] messages and a row, each
/// waiting at `barrier` while open so that the other producer's transaction is open too (their changes interleave
/// in the WAL and their commits race); beside each, messages that must never arrive (another prefix,
/// non-transactional, rolled back).
async fn produce(p: usize, client: tokio_postgres::Client, barrier: Arc<Barrier>) -> Vec<Txn> {
    let row = |tag: &str| {
        format!(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             VALUES ('row', 'p{p}', '{tag}', '{{}}') RETURNING id::text"
        )
    };
    let mut txns = Vec::new();
    for t in 0..ROUNDS {
        client.batch_execute("BEGIN").await.unwrap();
        let first: String = client.query_one(&row("first"), &[]).await.unwrap().get(0);
        // The xid as test_decoding prints it (32 bits).
        let xid: i64 =
            client.query_one("SELECT pg_current_xact_id()::text::bigint & 4294967295", &[]).await.unwrap().get(0);
        client
            .batch_execute(&format!(
                "SELECT pg_logical_emit_message(true, 'outbox', json_build_object('id', 'm-{p}-{t}-' || g, \
                   'aggregate_type', 'msg', 'aggregate_id', 'p{p}', 'event_type', 'sent', \
                   'payload', json_build_object('g', g), 'headers', json_build_object('trace', 't' || g))::text) \
                 FROM generate_series(0, {last}) g ORDER BY g; \
                 SELECT pg_logical_emit_message(true, 'other-prefix', 'ignored'); \
                 SELECT pg_logical_emit_message(false, 'outbox', '{{\"id\": \"nontx-{p}-{t}\"}}');",
                last = MESSAGES - 1
            ))
            .await
            .unwrap();
        tokio::time::timeout(LONG, barrier.wait()).await.expect("the other producer reached the barrier");
        let last: String = client.query_one(&row("last"), &[]).await.unwrap().get(0);
        client.batch_execute("COMMIT").await.unwrap();
        let mut events = vec![(first, 0)];
        events.extend((0..MESSAGES).map(|g| (format!("m-{p}-{t}-{g}"), g + 1)));
        events.push((last, MESSAGES + 1));
        txns.push(Txn { xid: xid as u64, events });
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_logical_emit_message(true, 'outbox', '{{\"id\": \"rolled-back-{p}-{t}\"}}'); ROLLBACK"
            ))
            .await
            .unwrap();
    }
    txns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_rows_share_transactions_order_and_index() {
    let env = Env::start();
    env.setup();
    // Postgres' own record of the commit order, independent of walrelay: a test_decoding slot made before any write.
    env.pg.psql("SELECT pg_create_logical_replication_slot('commit_order', 'test_decoding')").unwrap();
    let relay = env.spawn_run(&["--message-prefix", "outbox", "--on-invalid", "dead-letter"]);
    // 2 producers x 20 transactions x 25 messages = 1,000 messages, plus 2 rows per transaction.
    let barrier = Arc::new(Barrier::new(2));
    let mut tasks = Vec::new();
    for p in 0..2 {
        let client = env.client().await;
        tasks.push(tokio::spawn(produce(p, client, barrier.clone())));
    }
    let mut by_xid: HashMap<u64, Txn> = HashMap::new();
    for task in tasks {
        by_xid.extend(task.await.unwrap().into_iter().map(|txn| (txn.xid, txn)));
    }
    assert_eq!(by_xid.len(), 2 * ROUNDS);
    // Invalid messages: not a JSON object, and an object without id; dead-lettered in place.
    env.client()
        .await
        .batch_execute(
            "BEGIN; SELECT pg_logical_emit_message(true, 'outbox', 'not json'); \
             SELECT pg_logical_emit_message(true, 'outbox', '{\"aggregate_type\": \"msg\", \"payload\": 1}'); COMMIT",
        )
        .await
        .unwrap();
    let commits = env
        .pg
        .psql("SELECT data FROM pg_logical_slot_peek_changes('commit_order', NULL, NULL) WHERE data LIKE 'COMMIT %'")
        .unwrap();
    let order: Vec<&Txn> = commits
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COMMIT ")?.parse::<u64>().ok())
        .filter_map(|xid| by_xid.get(&xid))
        .collect();
    assert_eq!(order.len(), 2 * ROUNDS, "test_decoding saw every producer transaction commit:\n{commits}");
    let expected: Vec<&(String, u32)> = order.iter().flat_map(|txn| &txn.events).collect();
    assert_eq!(expected.len(), 2 * ROUNDS * (MESSAGES as usize + 2));

    let total = expected.len() as u64 + 2;
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, total, LONG).await;
    let got = stream_messages(&js, &env.stream).await;
    assert_eq!(got.len() as u64, total);
    let ids: Vec<&str> = got[..expected.len()].iter().map(|m| m.id()).collect();
    let want: Vec<&str> = expected.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, want, "exactly once, in Postgres' commit order, rows and messages interleaved");
    let mut last_lsn = 0;
    for (txn, stored) in order.iter().zip(got.chunks(MESSAGES as usize + 2)) {
        let lsn = stored[0].commit_lsn();
        assert!(lsn > last_lsn, "each transaction commits after the one before it");
        last_lsn = lsn;
        for (m, (_, index)) in stored.iter().zip(&txn.events) {
            assert_eq!(m.commit_lsn(), lsn, "one Outbox-Commit-Lsn per transaction");
            assert_eq!(m.header("Outbox-Index"), index.to_string());
            if m.id().starts_with("m-") {
                assert_eq!(m.subject, "outbox.msg.sent");
                let g: u32 = index - 1;
                assert_eq!(m.json(), serde_json::json!({"g": g}));
                assert_eq!(m.header("trace"), format!("t{g}"));
            } else {
                assert_eq!(m.subject, "outbox.row.".to_owned() + if *index == 0 { "first" } else { "last" });
            }
        }
    }
    let dead: Vec<_> = got[expected.len()..].iter().collect();
    assert!(
        dead.iter().all(|m| m.subject == "outbox.dead-letter"),
        "{:?}",
        dead.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    assert!(dead[0].header("Outbox-Error").contains("not a JSON object"), "{}", dead[0].header("Outbox-Error"));
    assert!(dead[1].header("Outbox-Error").contains("NULL"), "{}", dead[1].header("Outbox-Error"));
    assert_eq!(dead.iter().map(|m| m.header("Outbox-Index").to_owned()).collect::<Vec<_>>(), ["0", "1"]);
    assert!(relay.output().contains("non-transactional logical message not relayed"));
    assert_eq!(relay.output().matches("non-transactional logical message not relayed").count(), 1, "warned once");
    relay.sigterm().unwrap();
    assert_eq!(relay.wait_timeout(Duration::from_secs(30)).unwrap().and_then(|s| s.code()), Some(0));
}

/// Runs `walrelay <args>` to completion: (exit code, stdout, stderr).
fn walrelay(env: &Env, args: &[&str]) -> (Option<i32>, String, String) {
    let out = env.walrelay(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Two messages with one id: the stream drops the second as a duplicate. Nothing is lost silently: with
/// `--on-invalid dead-letter` a dead-letter record stands in for it and the relay goes on; with `stop` the relay
/// exits 1 naming the event, the reason and `walrelay skip`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_message_id_is_an_invalid_event() {
    let env = Env::start();
    env.setup();
    let client = env.client().await;
    let emit = |id: &str| {
        format!(
            "SELECT pg_logical_emit_message(true, 'outbox', json_build_object('id', '{id}', 'aggregate_type', 'msg', \
             'aggregate_id', 'a', 'event_type', 'sent', 'payload', 1)::text)"
        )
    };
    for id in ["m1", "m1", "m2"] {
        client.batch_execute(&emit(id)).await.unwrap();
    }
    let relay = env.spawn_run(&["--message-prefix", "outbox", "--on-invalid", "dead-letter"]);
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 3, LONG).await;
    let messages = stream_messages(&js, &env.stream).await;
    let ids: Vec<&str> = messages.iter().map(|m| m.id()).collect();
    assert_eq!(ids, ["m1", "dead-letter:m1", "m2"]);
    assert!(messages[1].header("Outbox-Error").contains("already in the stream (sequence 1)"), "{:?}", messages[1]);
    assert!(relay.exit_status().is_none(), "{}", relay.output_tail(20));
    relay.sigterm().unwrap();
    assert_eq!(relay.wait_timeout(Duration::from_secs(30)).unwrap().and_then(|s| s.code()), Some(0));

    client.batch_execute(&emit("m2")).await.unwrap();
    let relay = env.spawn_run(&["--message-prefix", "outbox", "--on-invalid", "stop"]);
    let status = relay.wait_timeout(LONG).unwrap();
    let output = relay.output();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{output}");
    assert!(output.contains("invalid event m2") && output.contains("already in the stream (sequence 3)"), "{output}");
    assert!(output.contains("start run once with --on-invalid dead-letter"), "{output}");
    assert!(!output.contains("walrelay skip --through"), "skip cannot pass a valid row: {output}");
    assert_eq!(stream_messages(&js, &env.stream).await.len(), 3, "nothing more was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_only_without_a_table() {
    let env = Env::start();
    env.pg.psql("DROP TABLE outbox").unwrap();
    // No table and no prefix relays nothing; no table leaves nothing to prune: usage errors before connecting.
    let (code, _, err) = walrelay(&env, &["setup", "--table", ""]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--table") && err.contains("--message-prefix"), "{err}");
    let (code, _, err) = walrelay(&env, &["run", "--table", "", "--message-prefix", "outbox", "--prune-after", "1s"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--prune-after"), "{err}");
    let from_env = env.walrelay(&["doctor"]).env("WALRELAY_TABLE", "").output().unwrap();
    assert_eq!(from_env.status.code(), Some(2), "WALRELAY_TABLE='' is no table too");

    let only = |args: &[&'static str]| [args, &["--table", "", "--message-prefix", "outbox"]].concat();
    let (code, out, err) = walrelay(&env, &only(&["setup"]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("publication walrelay: created"), "{out}");
    let published = env
        .pg
        .psql("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'walrelay'; SELECT count(*) FROM pg_publication")
        .unwrap();
    assert_eq!(published.lines().collect::<Vec<_>>(), ["0", "1"], "the publication holds no table");
    let (code, out, err) = walrelay(&env, &only(&["doctor"]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("ok   table: no table: messages only (--message-prefix outbox)"), "{out}");
    assert!(out.contains("ok   publication_table: no table: messages only"), "{out}");

    let client = env.client().await;
    let mut expected = Vec::new();
    for t in 0..5 {
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_logical_emit_message(true, 'outbox', json_build_object('id', 'm-{t}-' || g, \
                   'aggregate_type', 'msg', 'aggregate_id', 'a{t}', 'event_type', 'sent', 'payload', g)::text) \
                 FROM generate_series(0, 9) g ORDER BY g; COMMIT; \
                 BEGIN; SELECT pg_logical_emit_message(true, 'outbox', '{{\"id\": \"rolled-back-{t}\"}}'); ROLLBACK;"
            ))
            .await
            .unwrap();
        expected.extend((0..10).map(|g| (format!("m-{t}-{g}"), g.to_string())));
    }
    // Peek shows them pending; run relays exactly those.
    let (code, out, err) = walrelay(&env, &only(&["peek", "--json", "--limit", "1000"]));
    assert_eq!(code, Some(0), "{out}{err}");
    let peeked: Vec<(String, String)> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["id"].as_str().unwrap().to_owned(), v["index"].to_string()))
        .collect();
    assert_eq!(peeked, expected);
    assert!(out.lines().all(|l| l.contains(r#""table":"message:outbox""#)), "{out}");
    let relay = env.spawn_run(&only(&[]));
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, expected.len() as u64, LONG).await;
    let got: Vec<(String, String)> = stream_messages(&js, &env.stream)
        .await
        .iter()
        .map(|m| (m.id().to_owned(), m.header("Outbox-Index").to_owned()))
        .collect();
    assert_eq!(got, expected, "every message exactly once, in commit order");
    let (code, out, err) = walrelay(&env, &only(&["status", "--json"]));
    assert_eq!(code, Some(0), "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&status["slot"], &status["active"]), (&serde_json::json!("walrelay"), &serde_json::json!(true)));
    relay.sigterm().unwrap();
    assert_eq!(relay.wait_timeout(Duration::from_secs(30)).unwrap().and_then(|s| s.code()), Some(0));

    let (code, out, err) = walrelay(&env, &only(&["teardown", "--all"]));
    assert_eq!(code, Some(0), "{out}{err}");
    for line in ["slot walrelay: dropped", "publication walrelay: dropped", "stream OUTBOX: deleted"] {
        assert!(out.contains(line), "{out}");
    }
    assert_eq!(env.pg.psql("SELECT count(*) FROM pg_publication").unwrap(), "0");
}

#[test]
fn demo_shows_one_logical_message() {
    let out = std::process::Command::new(walrelay_tests::walrelay_testkit::walrelay_bin().unwrap())
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("(logical message)").count(), 1, "{stdout}");
    assert_eq!(stdout.matches("(outbox row)").count(), 4, "{stdout}");
    assert!(stdout.contains("id=1001-tracking  (logical message)"), "{stdout}");
    assert!(stdout.contains("done: 5 events relayed exactly once"), "{stdout}");
}
