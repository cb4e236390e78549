//! `--message-prefix` (design.md §4c, issue 12.1): transactional logical decoding messages become events through
//! the row path, interleaved with table rows in commit order with one Outbox-Index sequence per transaction;
//! rolled-back and non-transactional messages are absent; invalid messages follow --on-invalid.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use walrelay_tests::{stream_messages, wait_stream_count, Env};

const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_rows_share_transactions_order_and_index() {
    let env = Env::start();
    env.setup();
    let relay = env.spawn_run(&["--message-prefix", "outbox", "--on-invalid", "dead-letter"]);
    let producers = [env.client().await, env.client().await];
    // (id, index) in commit order; each transaction: a row, 25 messages, a row (2 producers x 20 txns x 25 = 1,000).
    let mut expected: Vec<(String, u32)> = Vec::new();
    for t in 0..20 {
        for (p, client) in producers.iter().enumerate() {
            client.batch_execute("BEGIN").await.unwrap();
            let row = |tag: &str| {
                format!(
                    "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                     VALUES ('row', 'p{p}', '{tag}', '{{}}') RETURNING id::text"
                )
            };
            let first: String = client.query_one(&row("first"), &[]).await.unwrap().get(0);
            client
                .batch_execute(&format!(
                    "SELECT pg_logical_emit_message(true, 'outbox', json_build_object('id', 'm-{p}-{t}-' || g, \
                       'aggregate_type', 'msg', 'aggregate_id', 'p{p}', 'event_type', 'sent', \
                       'payload', json_build_object('g', g), 'headers', json_build_object('trace', 't' || g))::text) \
                     FROM generate_series(0, 24) g ORDER BY g; \
                     SELECT pg_logical_emit_message(true, 'other-prefix', 'ignored'); \
                     SELECT pg_logical_emit_message(false, 'outbox', '{{\"id\": \"nontx-{p}-{t}\"}}');"
                ))
                .await
                .unwrap();
            let last: String = client.query_one(&row("last"), &[]).await.unwrap().get(0);
            client.batch_execute("COMMIT").await.unwrap();
            expected.push((first, 0));
            expected.extend((0..25).map(|g| (format!("m-{p}-{t}-{g}"), g + 1)));
            expected.push((last, 26));
            // A rolled-back transaction's messages never arrive.
            client
                .batch_execute(&format!(
                    "BEGIN; SELECT pg_logical_emit_message(true, 'outbox', '{{\"id\": \"rolled-back-{p}-{t}\"}}'); ROLLBACK"
                ))
                .await
                .unwrap();
        }
    }
    // Invalid messages: not a JSON object, and an object without id; dead-lettered in place.
    producers[0]
        .batch_execute(
            "BEGIN; SELECT pg_logical_emit_message(true, 'outbox', 'not json'); \
             SELECT pg_logical_emit_message(true, 'outbox', '{\"aggregate_type\": \"msg\", \"payload\": 1}'); COMMIT",
        )
        .await
        .unwrap();
    let total = expected.len() as u64 + 2;
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, total, LONG).await;
    let got = stream_messages(&js, &env.stream).await;
    assert_eq!(got.len() as u64, total);
    for (m, (id, index)) in got.iter().zip(&expected) {
        assert_eq!(m.id(), id, "commit order, rows and messages interleaved");
        assert_eq!(m.header("Outbox-Index"), index.to_string());
        if id.starts_with("m-") {
            assert_eq!(m.subject, "outbox.msg.sent");
            let g: u32 = index - 1;
            assert_eq!(m.json(), serde_json::json!({"g": g}));
            assert_eq!(m.header("trace"), format!("t{g}"));
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
