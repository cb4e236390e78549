//! `walrelay run` against real PostgreSQL and NATS: exact content, order and count of what reaches the stream, and
//! where the slot's confirmed position stands (issue 3).
#![allow(clippy::unwrap_used, missing_docs)]

use std::{collections::HashMap, time::Duration};

use walrelay_tests::{
    connect, insert_events, lsn, stream_count, stream_messages, wait_for, wait_stream_count,
    walrelay_testkit::{Nats, Postgres, Process},
    Env, Stored,
};

const LONG: Duration = Duration::from_secs(120);

/// Stops a relay with SIGTERM and asserts exit code 0.
fn stop(relay: &Process) {
    relay.sigterm().unwrap();
    let status = relay.wait_timeout(Duration::from_secs(30)).unwrap().expect("relay exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "relay output:\n{}", relay.output_tail(40));
}

fn header_index(m: &Stored) -> u32 {
    m.header("Outbox-Index").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_in_100_transactions_arrive_exactly_in_order() {
    let env = Env::start();
    env.setup();
    let relay = env.spawn_run(&[]);
    let pg = env.client().await;
    let mut expected: Vec<(String, u64, u32)> = Vec::new(); // (id, txn, index)
    for txn in 0..100u64 {
        let rows = pg
            .query(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers) \
                 SELECT CASE WHEN g % 2 = 0 THEN 'order' ELSE 'invoice' END, 'agg-' || $1::bigint::text, \
                        CASE WHEN g % 3 = 0 THEN 'created' ELSE 'updated' END, \
                        jsonb_build_object('txn', $1::bigint, 'i', g), \
                        jsonb_build_object('trace-id', 't-' || $1::bigint::text || '-' || g, 'attempt', g % 4, 'Outbox-Index', 'spoof') \
                 FROM generate_series(0, 99) g ORDER BY g RETURNING id::text",
                &[&(txn as i64)],
            )
            .await
            .unwrap();
        for (i, r) in rows.iter().enumerate() {
            expected.push((r.get(0), txn, i as u32));
        }
    }
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 10_000, LONG).await;
    let got = stream_messages(&js, &env.stream).await;
    assert_eq!(got.len(), 10_000);
    let mut last_lsn = 0u64;
    let mut lsn_of_txn: HashMap<u64, u64> = HashMap::new();
    for (m, (id, txn, index)) in got.iter().zip(&expected) {
        let g = *index as u64;
        assert_eq!(m.id(), id, "order of ids");
        let agg_type = if g.is_multiple_of(2) { "order" } else { "invoice" };
        let ev_type = if g.is_multiple_of(3) { "created" } else { "updated" };
        assert_eq!(m.subject, format!("outbox.{agg_type}.{ev_type}"));
        assert_eq!(m.header("Outbox-Aggregate-Type"), agg_type);
        assert_eq!(m.header("Outbox-Aggregate-Id"), format!("agg-{txn}"));
        assert_eq!(m.header("Outbox-Event-Type"), ev_type);
        assert_eq!(header_index(m), *index, "index within transaction");
        assert_eq!(m.header("trace-id"), format!("t-{txn}-{g}"), "string user header as is");
        assert_eq!(m.header("attempt"), (g % 4).to_string(), "non-string user header as JSON text");
        assert!(humantime::parse_rfc3339(m.header("Outbox-Commit-Time")).is_ok(), "{}", m.header("Outbox-Commit-Time"));
        assert_eq!(m.json(), serde_json::json!({"txn": txn, "i": g}));
        let l = m.commit_lsn();
        assert!(m
            .header("Outbox-Commit-Lsn")
            .chars()
            .all(|c| c == '/' || c.is_ascii_digit() || c.is_ascii_uppercase()));
        assert!(l >= last_lsn, "commit LSNs never decrease");
        last_lsn = l;
        assert_eq!(*lsn_of_txn.entry(*txn).or_insert(l), l, "one commit LSN per transaction");
    }
    assert_eq!(lsn_of_txn.len(), 100);
    assert!(relay.output().contains("dropped"), "the spoofed Outbox-Index user header is dropped with a warning");
    // The slot confirms past the last transaction.
    wait_for("slot confirms the last commit", LONG, || async { env.confirmed_flush() > last_lsn }).await;
    stop(&relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_committed_outbox_inserts_are_published() {
    let env = Env::start();
    env.pg.psql("CREATE TABLE orders (id int PRIMARY KEY, note text)").unwrap();
    env.setup();
    let relay = env.spawn_run(&[]);
    let pg = env.client().await;
    let ins = "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', $1, 'created', '{}') RETURNING id::text";
    let mut expected = Vec::new();
    // 1. committed, with a row of another table in the same transaction
    pg.batch_execute("BEGIN").await.unwrap();
    pg.execute("INSERT INTO orders VALUES (1, 'a')", &[]).await.unwrap();
    expected.push(pg.query_one(ins, &[&"a1"]).await.unwrap().get::<_, String>(0));
    pg.batch_execute("COMMIT").await.unwrap();
    // 2. rolled back
    pg.batch_execute("BEGIN").await.unwrap();
    pg.query_one(ins, &[&"rolled-back"]).await.unwrap();
    pg.batch_execute("ROLLBACK").await.unwrap();
    // 3. another table only
    pg.execute("INSERT INTO orders VALUES (2, 'b')", &[]).await.unwrap();
    // 4. updates and deletes of outbox rows
    pg.execute("UPDATE outbox SET payload = '{\"changed\":true}'", &[]).await.unwrap();
    let kept: String = pg.query_one(ins, &[&"a2"]).await.unwrap().get(0);
    expected.push(kept.clone());
    pg.execute("DELETE FROM outbox WHERE id::text = $1", &[&kept]).await.unwrap();
    // 5. inserted and deleted in the same transaction: published once
    pg.batch_execute("BEGIN").await.unwrap();
    let gone: String = pg.query_one(ins, &[&"a3"]).await.unwrap().get(0);
    pg.execute("DELETE FROM outbox WHERE id::text = $1", &[&gone]).await.unwrap();
    pg.batch_execute("COMMIT").await.unwrap();
    expected.push(gone);
    // 6. a savepoint rolled back inside a committed transaction
    pg.batch_execute("BEGIN").await.unwrap();
    expected.push(pg.query_one(ins, &[&"a4"]).await.unwrap().get(0));
    pg.batch_execute("SAVEPOINT s").await.unwrap();
    pg.query_one(ins, &[&"rolled-back-savepoint"]).await.unwrap();
    pg.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    pg.batch_execute("COMMIT").await.unwrap();
    // A marker transaction last, so we know everything before it was read.
    expected.push(pg.query_one(ins, &[&"marker"]).await.unwrap().get(0));
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, expected.len() as u64, LONG).await;
    let got = stream_messages(&js, &env.stream).await;
    let ids: Vec<&str> = got.iter().map(|m| m.id()).collect();
    assert_eq!(ids, expected.iter().map(String::as_str).collect::<Vec<_>>());
    let aggs: Vec<&str> = got.iter().map(|m| m.header("Outbox-Aggregate-Id")).collect();
    assert_eq!(aggs, ["a1", "a2", "a3", "a4", "marker"]);
    assert!(got.iter().all(|m| m.json() == serde_json::json!({})), "updates are never published");
    stop(&relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_producers_keep_commit_order() {
    let env = Env::start();
    env.setup();
    let relay = env.spawn_run(&[]);
    let url = env.pg_url();
    let mut tasks = Vec::new();
    for p in 0..8u64 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await;
            let mut next = 0u64;
            for t in 0..40u64 {
                let n = 1 + (p + t) % 5;
                insert_events(&client, &format!("p{p}"), next, n).await;
                next += n;
            }
            next
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, total, LONG).await;
    let got = stream_messages(&js, &env.stream).await;
    let mut last = 0u64;
    let mut next_seq: HashMap<String, u64> = HashMap::new();
    for m in &got {
        assert!(m.commit_lsn() >= last, "Outbox-Commit-Lsn never decreases");
        last = m.commit_lsn();
        let v = m.json();
        let producer = v["producer"].as_str().unwrap().to_owned();
        let seq = v["seq"].as_u64().unwrap();
        let expected = next_seq.entry(producer.clone()).or_insert(0);
        assert_eq!(seq, *expected, "producer {producer}'s events in its order, none missing or repeated");
        *expected += 1;
    }
    assert_eq!(next_seq.len(), 8);
    stop(&relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toasted_500kb_payload_and_unicode_arrive_intact() {
    let env = Env::start();
    env.setup();
    let relay = env.spawn_run(&[]);
    let pg = env.client().await;
    let big: String = pg
        .query_one(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'doc', 'big', 'stored', jsonb_build_object('blob', string_agg(md5(g::text || random()::text), '')) \
             FROM generate_series(1, 16000) g RETURNING payload::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(big.len() > 500_000);
    let toasted: i32 = pg
        .query_one("SELECT pg_column_size(payload) FROM outbox WHERE aggregate_id = 'big'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(toasted > 0);
    let unicode: String = pg
        .query_one(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers) \
             VALUES ('greeting', 'Grüße-日本-🚀', 'said', '{\"text\": \"Grüße, 日本語, emoji 🚀, quote \\\" and tab \\t\"}', '{\"lang\": \"日本語\"}') \
             RETURNING payload::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 2, LONG).await;
    let got = stream_messages(&js, &env.stream).await;
    assert_eq!(got[0].payload.len(), big.len());
    assert_eq!(std::str::from_utf8(&got[0].payload).unwrap(), big, "500 KB jsonb byte for byte");
    assert_eq!(std::str::from_utf8(&got[1].payload).unwrap(), unicode);
    assert_eq!(got[1].header("Outbox-Aggregate-Id"), "Grüße-日本-🚀");
    assert_eq!(got[1].header("lang"), "日本語");
    assert_eq!(got[1].json()["text"], "Grüße, 日本語, emoji 🚀, quote \" and tab \t");
    stop(&relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_outbox_does_not_pin_wal_while_other_tables_churn() {
    let env = Env::start();
    env.pg.psql("CREATE TABLE noise (id bigserial PRIMARY KEY, body text)").unwrap();
    env.setup();
    let relay = env.spawn_run(&[]);
    let start = env.current_lsn();
    // About 100 MB of WAL in other tables, in many transactions.
    for _ in 0..20 {
        env.pg
            .psql("INSERT INTO noise (body) SELECT md5(g::text) || repeat('x', 1000) FROM generate_series(1, 5000) g")
            .unwrap();
    }
    let end = env.current_lsn();
    assert!(end - start > 100_000_000, "generated {} bytes of WAL", end - start);
    let t0 = std::time::Instant::now();
    wait_for("slot lag under 1 MB", Duration::from_secs(10), || async {
        env.current_lsn().saturating_sub(env.confirmed_flush()) < 1_000_000
    })
    .await;
    eprintln!("lag under 1 MB {:?} after the load stopped", t0.elapsed());
    let js = env.js().await;
    assert_eq!(stream_count(&js, &env.stream).await, 0);
    stop(&relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_midstream_with_stream_ahead_of_slot_then_restart() {
    let env = Env::start();
    env.setup();
    let pg = env.client().await;
    let mut expected = Vec::new();
    for t in 0..200u64 {
        expected.extend(insert_events(&pg, "p", t * 100, 100).await);
    }
    let js = env.js().await;
    let relay = env.spawn_run(&["--max-in-flight", "256"]);
    wait_for("some events stored", LONG, || async { stream_count(&js, &env.stream).await >= 3000 }).await;
    relay.kill9().unwrap();
    let stored = stream_messages(&js, &env.stream).await;
    let tail = stored.last().unwrap().commit_lsn();
    let confirmed = env.confirmed_flush();
    assert!(tail > confirmed, "the stream ({tail:X}) is ahead of the slot ({confirmed:X})");
    assert!(stored.len() < expected.len());
    let relay = env.spawn_run(&[]);
    wait_stream_count(&js, &env.stream, expected.len() as u64, LONG).await;
    let got = stream_messages(&js, &env.stream).await;
    assert_eq!(got.iter().map(|m| m.id().to_owned()).collect::<Vec<_>>(), expected);
    assert!(relay.output().contains("high_water"), "{}", relay.output_tail(20));
    stop(&relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_slot_ahead_of_stream_then_restart() {
    let env = Env::start();
    env.pg.psql("CREATE TABLE noise (id bigserial PRIMARY KEY, body text)").unwrap();
    env.setup();
    let pg = env.client().await;
    let mut expected = insert_events(&pg, "p", 0, 50).await;
    let js = env.js().await;
    let relay = env.spawn_run(&[]);
    wait_stream_count(&js, &env.stream, 50, LONG).await;
    // Other tables move the slot past the stream's last event (idle keepalives are confirmed).
    let tail = stream_messages(&js, &env.stream).await.last().unwrap().commit_lsn();
    env.pg.psql("INSERT INTO noise (body) SELECT repeat('y', 500) FROM generate_series(1, 20000)").unwrap();
    let target = env.current_lsn();
    wait_for("slot confirms past the noise", LONG, || async { env.confirmed_flush() >= target }).await;
    relay.kill9().unwrap();
    assert!(env.confirmed_flush() > tail, "slot ahead of the stream");
    // Events committed while no relay runs, then a mid-stream kill of the next relay.
    for t in 1..=40u64 {
        expected.extend(insert_events(&pg, "p", t * 50, 50).await);
    }
    let relay = env.spawn_run(&["--max-in-flight", "64"]);
    wait_for("some new events stored", LONG, || async { stream_count(&js, &env.stream).await >= 500 }).await;
    relay.kill9().unwrap();
    let relay = env.spawn_run(&[]);
    wait_stream_count(&js, &env.stream, expected.len() as u64, LONG).await;
    let got = stream_messages(&js, &env.stream).await;
    assert_eq!(got.iter().map(|m| m.id().to_owned()).collect::<Vec<_>>(), expected);
    stop(&relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_nats_holds_back_confirmation_until_acked() {
    let env = Env::start();
    env.setup();
    let relay = env.spawn_run(&["--publish-timeout", "30s"]);
    let pg = env.client().await;
    let js = env.js().await;
    let before = insert_events(&pg, "warm", 0, 10).await;
    wait_stream_count(&js, &env.stream, 10, LONG).await;
    let first_lsn = env.current_lsn();
    env.nats.pause().unwrap();
    let mut expected = before;
    for t in 0..10u64 {
        expected.extend(insert_events(&pg, "p", t * 100, 100).await);
    }
    let last_lsn = env.current_lsn();
    // For a few seconds, the slot must not confirm any of the 1,000 unacked events.
    let watch_until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < watch_until {
        let c = env.confirmed_flush();
        assert!(c <= first_lsn, "confirmed_flush_lsn {c:X} passed unacked events starting at {first_lsn:X}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.nats.resume().unwrap();
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 1010, LONG).await;
    let got = stream_messages(&js, &env.stream).await;
    assert_eq!(got.iter().map(|m| m.id().to_owned()).collect::<Vec<_>>(), expected);
    wait_for("slot catches up", LONG, || async { env.confirmed_flush() >= last_lsn }).await;
    stop(&relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_event_stops_then_dead_letters_on_restart() {
    let pg = Postgres::start().unwrap();
    let nats = Nats::builder().max_payload(64 * 1024).start().unwrap();
    let env = Env::with(pg, nats);
    env.setup();
    let client = env.client().await;
    let mut before = insert_events(&client, "a", 0, 3).await;
    let first_end = env.current_lsn();
    let big: String = client
        .query_one(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'doc', 'big', 'stored', jsonb_build_object('blob', string_agg(md5(g::text), '')) \
             FROM generate_series(1, 3000) g RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let after = insert_events(&client, "b", 0, 2).await;
    let relay = Process::spawn(env.walrelay(&["run"])).unwrap();
    let status = relay.wait_timeout(LONG).unwrap().expect("relay stops on the oversize event");
    assert_eq!(status.code(), Some(1), "{}", relay.output_tail(30));
    let out = relay.output();
    assert!(out.contains(&big), "error names the event id: {out}");
    assert!(out.contains("public.outbox") && out.contains("max_payload") && out.contains("commit LSN"), "{out}");
    let js = env.js().await;
    let got = stream_messages(&js, &env.stream).await;
    assert_eq!(got.iter().map(|m| m.id().to_owned()).collect::<Vec<_>>(), before, "events before it, nothing after");
    assert!(env.confirmed_flush() >= first_end, "earlier events are confirmed");
    // Restart with dead-lettering: the record and every later event, once, in order.
    let relay = env.spawn_run(&["--on-invalid", "dead-letter"]);
    wait_stream_count(&js, &env.stream, 6, LONG).await;
    let got = stream_messages(&js, &env.stream).await;
    let dl = &got[3];
    assert_eq!(dl.subject, "outbox.dead-letter");
    assert_eq!(dl.id(), format!("dead-letter:{big}"));
    assert_eq!(dl.header("Outbox-Aggregate-Id"), "big");
    assert_eq!(dl.header("Outbox-Index"), "0");
    assert!(dl.header("Outbox-Error").contains("max_payload"));
    let body = dl.json();
    assert_eq!(body["id"], big.as_str());
    assert_eq!(body["table"], "public.outbox");
    assert_eq!(body["index"], 0);
    assert_eq!(lsn(body["commit_lsn"].as_str().unwrap()), dl.commit_lsn());
    assert!(body["size"].as_u64().unwrap() > 64 * 1024);
    assert!(body["reason"].as_str().unwrap().contains("max_payload"));
    before.push(format!("dead-letter:{big}"));
    before.extend(after);
    assert_eq!(got.iter().map(|m| m.id().to_owned()).collect::<Vec<_>>(), before);
    stop(&relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_count_what_was_relayed() {
    use std::io::{Read, Write};
    let env = Env::start();
    env.setup();
    let addr = format!("127.0.0.1:{}", walrelay_tests::walrelay_testkit::free_port());
    let relay = env.spawn_run(&["--metrics-addr", &addr, "--progress-interval", "200ms"]);
    let pg = env.client().await;
    insert_events(&pg, "m", 0, 5).await;
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 5, LONG).await;
    let scrape = || {
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    };
    wait_for("metrics show 5 acked events and the lag gauge", LONG, || async {
        scrape().is_some_and(|b| {
            b.lines().any(|l| l == "walrelay_events_acked_total 5") && b.contains("walrelay_lag_bytes")
        })
    })
    .await;
    let body = scrape().unwrap();
    assert!(body.lines().any(|l| l == "walrelay_events_published_total 5"), "{body}");
    assert!(body.contains("walrelay_confirmed_lsn"), "{body}");
    assert!(body.contains("walrelay_lag_bytes"), "{body}");
    // Counters that never moved are exported from the start, at 0.
    assert!(body.lines().any(|l| l == "walrelay_events_skipped_total 0"), "{body}");
    assert!(body.lines().any(|l| l == "walrelay_events_dead_lettered_total 0"), "{body}");
    stop(&relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_broker_never_lets_wal_sender_timeout_kill_the_session() {
    let pg = Postgres::builder().setting("wal_sender_timeout", "2s").start().unwrap();
    let env = Env::with(pg, Nats::start().unwrap());
    env.setup();
    let relay = env.spawn_run(&["--publish-timeout", "60s", "--max-in-flight", "100"]);
    let client = env.client().await;
    let js = env.js().await;
    env.nats.pause().unwrap();
    let mut expected = Vec::new();
    // More than the in-flight window and the replication client's 4096-event buffer together.
    for t in 0..100u64 {
        expected.extend(insert_events(&client, "slow", t * 100, 100).await);
    }
    // Three wal_sender_timeouts with the in-flight window full and reading stopped.
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.nats.resume().unwrap();
    wait_stream_count(&js, &env.stream, 10_000, LONG).await;
    let got = stream_messages(&js, &env.stream).await;
    assert_eq!(got.iter().map(|m| m.id().to_owned()).collect::<Vec<_>>(), expected);
    let log = env.pg.log_tail(200);
    assert!(!log.contains("replication timeout"), "walsender timed out:\n{log}");
    assert!(!relay.output().contains("relay interrupted"), "{}", relay.output_tail(30));
    stop(&relay);
}

/// When a relay log line was written (its leading RFC 3339 timestamp), for each line containing `needle`.
fn logged_at(output: &str, needle: &str) -> Vec<std::time::SystemTime> {
    output
        .lines()
        .filter(|l| l.contains(needle))
        .map(|l| humantime::parse_rfc3339(l.split_whitespace().next().unwrap_or_default()).expect("timestamped line"))
        .collect()
}

/// Idle progress logging: an idle relay logs "idle, no events" at its first idle progress interval, then once per
/// 30 intervals, not at every one; an event ends the idle run (a "progress" line) and the next idle interval logs
/// again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_progress_is_logged_at_the_first_idle_interval_then_once_per_30() {
    const IDLE: &str = "idle, no events";
    let env = Env::start();
    env.setup();
    let relay = env.spawn_run(&["--progress-interval", "100ms"]);
    wait_for("two idle lines", LONG, || std::future::ready(logged_at(&relay.output(), IDLE).len() >= 2)).await;
    let idle = logged_at(&relay.output(), IDLE);
    let started = logged_at(&relay.output(), "relay started")[0];
    let first = idle[0].duration_since(started).unwrap();
    assert!(first < Duration::from_millis(1500), "first idle line {first:?} after the start");
    let gap = idle[1].duration_since(idle[0]).unwrap();
    // 30 intervals of 100 ms; a line at every interval (or every few) would come within a second.
    assert!(gap >= Duration::from_millis(2500), "idle lines {gap:?} apart:\n{}", relay.output_tail(20));

    let pg = env.client().await;
    insert_events(&pg, "p", 0, 1).await;
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 1, LONG).await;
    wait_for("an idle line after the event", LONG, || {
        let out = relay.output();
        let progress = logged_at(&out, ": progress ");
        std::future::ready(!progress.is_empty() && logged_at(&out, IDLE).iter().any(|t| t > &progress[0]))
    })
    .await;
    let out = relay.output();
    let progress = logged_at(&out, ": progress ")[0];
    let after: Vec<_> = logged_at(&out, IDLE).into_iter().filter(|t| t > &progress).collect();
    let wait = after[0].duration_since(progress).unwrap();
    assert!(wait < Duration::from_millis(1500), "first idle line {wait:?} after the progress line:\n{out}");
    stop(&relay);
}

/// The stream holds a pending event's message behind more than 1000 foreign ones, where the tail read gives up, so
/// `run` re-sends it and JetStream answers "duplicate". That message is this very event: the relay counts it as
/// relayed and goes on (no dead-letter record, no stop), and the next event follows it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_stream_holds_behind_foreign_messages_is_not_taken_for_a_reused_id() {
    let env = Env::start();
    env.setup();
    let pg = connect(&env.pg_url()).await;
    let c = insert_events(&pg, "c", 0, 1).await;
    // c as run would publish it, then 1001 messages of another writer.
    let out = env.walrelay(&["peek", "--json"]).output().unwrap();
    let peeked: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nats = async_nats::connect(env.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in peeked["headers"].as_object().unwrap() {
        headers.insert(name.as_str(), value.as_str().unwrap());
    }
    let subject = peeked["subject"].as_str().unwrap().to_owned();
    js.publish_with_headers(subject.clone(), headers, "{}".into()).await.unwrap().await.unwrap();
    for i in 0..1001 {
        let mut foreign = async_nats::HeaderMap::new();
        foreign.insert("Nats-Msg-Id", format!("foreign-{i}").as_str());
        js.publish_with_headers(subject.clone(), foreign, "{}".into()).await.unwrap().await.unwrap();
    }
    let relay = env.spawn_run(&["--on-invalid", "dead-letter"]);
    relay.wait_for_output("the stream already holds this event", LONG).unwrap();
    let d = insert_events(&pg, "d", 0, 1).await;
    wait_stream_count(&js, &env.stream, 1 + 1001 + 1, LONG).await;
    stop(&relay);
    let ids: Vec<String> = stream_messages(&js, &env.stream).await.iter().map(|m| m.id().to_owned()).collect();
    assert_eq!((&ids[0], &ids[1002..]), (&c[0], &d[..]), "c once (the copy already there), then d; nothing else");
    assert!(!ids.iter().any(|id| id.starts_with("dead-letter:")), "no dead-letter record");
}

/// A stream written from another WAL history (here: another cluster, whose WAL is behind the stream's newest event)
/// would make `run` count every new event up to that position as stored: it exits 1 naming the stream and both
/// positions instead, and publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ahead_of_the_servers_wal_stops_run_instead_of_skipping() {
    let env = Env::start();
    env.setup();
    // Move cluster A's WAL well past where a new cluster starts.
    for _ in 0..3 {
        env.pg
            .psql("CREATE TABLE IF NOT EXISTS filler (x int); INSERT INTO filler VALUES (1); SELECT pg_switch_wal()")
            .unwrap();
    }
    let relay = env.spawn_run(&[]);
    let pg = connect(&env.pg_url()).await;
    insert_events(&pg, "a", 0, 1).await;
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 1, LONG).await;
    stop(&relay);

    // Cluster B: a fresh server with the same table, whose WAL is behind the stream's newest event.
    let b = Postgres::start().unwrap();
    b.psql(walrelay_tests::OUTBOX_DDL).unwrap();
    let on_b = |args: &[&str]| {
        let mut cmd = env.walrelay(args);
        cmd.env("WALRELAY_PG_URL", b.url("postgres"));
        cmd
    };
    let out = on_b(&["setup"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "setup on b: {}", String::from_utf8_lossy(&out.stderr));
    let b_pg = connect(&b.url("postgres")).await;
    insert_events(&b_pg, "b", 0, 1).await;
    let relay = Process::spawn(on_b(&["run"])).unwrap();
    let status = relay.wait_timeout(LONG).unwrap();
    let output = relay.output();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{output}");
    assert!(output.contains("beyond this server's WAL position") && output.contains("stream OUTBOX"), "{output}");
    assert_eq!(stream_count(&js, &env.stream).await, 1, "nothing published");
}

/// The value of an unlabelled metric in a Prometheus scrape.
fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Fast-batch publishing (issue 21) on a current nats-server: the stream walrelay creates allows it, every event goes
/// out in a fast batch (`walrelay_batched_publishes_total` = the number of events), and the stream holds every event
/// once, in commit order, at the sequences the fence gave them; with `--nats-batch off` the same server gets
/// per-message acks and a stream without `allow_batched`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_batch_is_used_on_a_current_server_unless_turned_off() {
    use walrelay_tests::{http_get, walrelay_testkit::locate};
    for mode in ["auto", "off"] {
        let nats = Nats::builder().bin(locate::nats_server_new().unwrap()).start().unwrap();
        let env = Env::with(Postgres::start().unwrap(), nats);
        let mut setup = env.walrelay(&["setup", "--nats-batch", mode]);
        assert!(setup.output().unwrap().status.success(), "{mode}: setup");
        let addr = format!("127.0.0.1:{}", walrelay_tests::walrelay_testkit::free_port());
        // A sync interval: with `always` (the test support's default) the relay keeps per-message acks.
        let relay = env.spawn_run(&["--nats-batch", mode, "--nats-sync-interval", "1s", "--metrics-addr", &addr]);
        if mode == "auto" {
            relay.wait_for_output("publish_mode=\"fast-batch\"", LONG).unwrap();
        }
        let pg = env.client().await;
        // A burst (4 transactions of 1000) and then single events, which the quiet commit acks.
        let mut expected = Vec::new();
        for t in 0..4 {
            expected.extend(insert_events(&pg, "f", t * 1000, 1000).await);
        }
        let js = env.js().await;
        wait_stream_count(&js, &env.stream, 4000, LONG).await;
        for i in 0..3 {
            expected.extend(insert_events(&pg, "g", i, 1).await);
            wait_stream_count(&js, &env.stream, 4001 + i, LONG).await;
        }
        let n = expected.len() as u64;
        wait_for("every event acked", LONG, || async {
            http_get(&addr, "/metrics").is_some_and(|(_, b)| metric(&b, "walrelay_events_acked_total") == Some(n))
        })
        .await;
        let (_, body) = http_get(&addr, "/metrics").unwrap();
        let batched = metric(&body, "walrelay_batched_publishes_total");
        assert_eq!(metric(&body, "walrelay_events_published_total"), Some(n), "{mode}: {body}");
        assert_eq!(batched, Some(if mode == "auto" { n } else { 0 }), "{mode}: {body}");
        assert!(body.contains("# HELP walrelay_batched_publishes_total"), "{body}");
        let messages = stream_messages(&js, &env.stream).await;
        assert_eq!(messages.iter().map(|m| m.id().to_owned()).collect::<Vec<_>>(), expected, "{mode}");
        assert!(messages.iter().enumerate().all(|(i, m)| m.sequence == i as u64 + 1), "{mode}: sequences");
        let info = js.get_stream(&env.stream).await.unwrap().info().await.unwrap().clone();
        assert_eq!(info.config.allow_batch_publish, mode == "auto", "{mode}: allow_batched");
        stop(&relay);
    }
}
