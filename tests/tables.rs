//! `--table` with several outbox tables (design.md §4c, issue 12): one publication, one slot, one commit order
//! across tables in two schemas, written in the same and in separate transactions; setup, doctor and peek handle
//! every listed table.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use walrelay_tests::{stream_messages, wait_stream_count, Env, Stored, OUTBOX_DDL};

const LONG: Duration = Duration::from_secs(120);
const TABLES: &str = "billing.outbox,shipping.events";

fn index(m: &Stored) -> u32 {
    m.header("Outbox-Index").parse().unwrap()
}

/// Inserts one event into `table` in the open transaction; returns its id.
async fn insert(tx: &tokio_postgres::Transaction<'_>, table: &str, agg: &str, seq: i64) -> String {
    let sql = format!(
        "INSERT INTO {table} (aggregate_type, aggregate_id, event_type, payload) \
         VALUES ($1, 'a-' || $2::bigint::text, 'created', jsonb_build_object('seq', $2::bigint)) RETURNING id::text"
    );
    tx.query_one(&sql, &[&agg, &seq]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tables_in_two_schemas_share_one_commit_order() {
    let env = Env::start();
    for (schema, table) in [("billing", "outbox"), ("shipping", "events")] {
        env.pg
            .psql(&format!(
                "CREATE SCHEMA {schema}; {}",
                OUTBOX_DDL.replace("public.outbox", &format!("{schema}.{table}"))
            ))
            .unwrap();
    }
    let out = env.walrelay(&["setup", "--table", TABLES]).output().unwrap();
    assert!(out.status.success(), "setup: {}", String::from_utf8_lossy(&out.stderr));
    let published = env
        .pg
        .psql(
            "SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY schemaname) FROM pg_publication_tables \
             WHERE pubname = 'walrelay'",
        )
        .unwrap();
    assert_eq!(published.trim(), "billing.outbox,shipping.events", "one publication holds both tables");
    let doctor = env.walrelay(&["doctor", "--table", TABLES]).output().unwrap();
    let report = String::from_utf8_lossy(&doctor.stdout).to_string();
    assert!(doctor.status.success(), "doctor: {report}{}", String::from_utf8_lossy(&doctor.stderr));
    assert!(report.contains("billing.outbox has") && report.contains("shipping.events has"), "{report}");

    // (table, id, transaction, index) in commit order.
    let mut expected: Vec<(&str, String, u32, u32)> = Vec::new();
    let mut pg = env.client().await;
    for txn in 0..20u32 {
        let tx = pg.transaction().await.unwrap();
        // Even transactions write both tables interleaved; odd ones one table each, alternating.
        let plan: Vec<&str> = if txn % 2 == 0 {
            vec!["billing.outbox", "shipping.events", "billing.outbox", "shipping.events", "shipping.events"]
        } else if txn % 4 == 1 {
            vec!["billing.outbox", "billing.outbox"]
        } else {
            vec!["shipping.events"]
        };
        for (i, table) in plan.iter().enumerate() {
            let id =
                insert(&tx, table, if table.starts_with("billing") { "invoice" } else { "parcel" }, i as i64).await;
            expected.push((table, id, txn, i as u32));
        }
        tx.commit().await.unwrap();
    }
    // Peek sees both tables' pending events, in commit order, each naming its table.
    let peek = env.walrelay(&["peek", "--json", "--limit", "1000", "--table", TABLES]).output().unwrap();
    assert!(peek.status.success(), "peek: {}", String::from_utf8_lossy(&peek.stderr));
    let peeked: Vec<(String, String)> = String::from_utf8_lossy(&peek.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["table"].as_str().unwrap().to_owned(), v["id"].as_str().unwrap().to_owned())
        })
        .collect();
    let want: Vec<(String, String)> = expected.iter().map(|(t, id, _, _)| (t.to_string(), id.clone())).collect();
    assert_eq!(peeked, want, "peek shows every listed table's events in commit order");

    let relay = env.spawn_run(&["--table", TABLES]);
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, expected.len() as u64, LONG).await;
    let got = stream_messages(&js, &env.stream).await;
    assert_eq!(got.len(), expected.len());
    let mut lsn_of_txn = std::collections::HashMap::new();
    let mut last = 0;
    for (m, (table, id, txn, i)) in got.iter().zip(&expected) {
        assert_eq!(m.id(), id, "commit order across both tables");
        assert_eq!(index(m), *i, "Outbox-Index runs over both tables in a transaction");
        let agg = if table.starts_with("billing") { "invoice" } else { "parcel" };
        assert_eq!(m.subject, format!("outbox.{agg}.created"));
        let lsn = m.commit_lsn();
        assert!(lsn >= last);
        last = lsn;
        assert_eq!(*lsn_of_txn.entry(*txn).or_insert(lsn), lsn, "one commit LSN per transaction");
    }
    assert_eq!(lsn_of_txn.len(), 20);
    relay.sigterm().unwrap();
    let status = relay.wait_timeout(Duration::from_secs(30)).unwrap().expect("relay exits");
    assert_eq!(status.code(), Some(0), "{}", relay.output_tail(30));
}
