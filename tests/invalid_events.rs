//! Rows NATS cannot carry as they are (issue 9): header keys and values outside what NATS accepts, and events at the
//! edge of the server's `max_payload` (4096 here). With `--on-invalid stop` the relay exits 1 naming the row; with
//! `dead-letter` each gives its record and every later event arrives once, in order. Also: what the mapper accepts,
//! nats-server stores.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use walrelay_core::{
    config::{RawSettings, Settings},
    mapping::fixture::{outbox_relation, tuple, RELATION_ID},
    mapping::outbox::{OutboxMapper, TxnStamp},
    sink::publisher::{Publisher, ADDED_HEADERS_MAX},
};
use walrelay_tests::{
    ids, stream_messages, wait_stream_count,
    walrelay_testkit::{Nats, Postgres},
    Env,
};

const LONG: Duration = Duration::from_secs(120);
const MAX_PAYLOAD: usize = 4096;

/// One outbox row of this test: its id, aggregate id, payload padding and headers JSON.
struct Row {
    id: String,
    aggregate_id: &'static str,
    pad: usize,
    headers: Option<&'static str>,
}

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn row(n: u32, headers: Option<&'static str>) -> Row {
    Row { id: uuid(n), aggregate_id: "a", pad: 0, headers }
}

/// Wire size of a row's message (no headers column value) as the mapper measures it, for a commit LSN text of
/// `lsn_len` characters and index 0: the header block (`NATS/1.0\r\n`, `<name>: <value>\r\n` each, `\r\n`) plus
/// the jsonb payload `{"p": "<pad>"}`.
fn wire_size(aggregate_id: &str, pad: usize, lsn_len: usize) -> usize {
    let h = |name: &str, value: usize| name.len() + 2 + value + 2;
    12 + h("Nats-Msg-Id", 36)
        + h("Outbox-Aggregate-Type", 5)
        + h("Outbox-Aggregate-Id", aggregate_id.len())
        + h("Outbox-Event-Type", 7)
        + h("Outbox-Commit-Lsn", lsn_len)
        + h("Outbox-Commit-Time", 27)
        + h("Outbox-Index", 1)
        + 9
        + pad
}

/// A row whose message is `size` bytes on the wire (before the headers the publisher adds).
fn sized(n: u32, size: usize, lsn_len: usize) -> Row {
    let pad = size - wire_size("a", 0, lsn_len);
    Row { id: uuid(n), aggregate_id: "a", pad, headers: None }
}

/// Inserts each row in its own transaction, in order.
async fn insert(env: &Env, rows: &[Row]) {
    let pg = env.client().await;
    for r in rows {
        pg.execute(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, headers) \
             VALUES ($1::text::uuid, 'order', $2, 'created', jsonb_build_object('p', repeat('x', $3)), $4::text::jsonb)",
            &[&r.id, &r.aggregate_id, &(r.pad as i32), &r.headers],
        )
        .await
        .unwrap();
    }
}

fn lsn_len(env: &Env) -> usize {
    env.pg.psql("SELECT pg_current_wal_lsn()").unwrap().trim().len()
}

fn servers() -> Env {
    let nats = Nats::builder().max_payload(MAX_PAYLOAD as u64).start().expect("start nats");
    Env::with(Postgres::start().expect("start postgres"), nats)
}

/// The invalid rows of issue 9, each with the words the stop message must contain. The last two are sized to hit
/// max_payload exactly: with the fence header as it will be sent (expected last sequence 1: 32 bytes), and without.
fn invalid_cases(lsn_len: usize) -> Vec<(Row, &'static str)> {
    vec![
        (row(101, Some(r#"{"café": "x"}"#)), "header key `café`"),
        (row(102, Some(r#"{"trace": "a\rb"}"#)), "header `trace` value contains CR"),
        (row(103, Some(r#"{"bad key": "v"}"#)), "header key `bad key`"),
        (sized(104, MAX_PAYLOAD - 32, lsn_len), "max_payload of 4096"),
        (sized(105, MAX_PAYLOAD, lsn_len), "max_payload of 4096"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_invalid_stop_exits_1_naming_the_row() {
    let mut env = servers();
    let js = env.js().await;
    let len = lsn_len(&env);
    for (n, (bad, words)) in invalid_cases(len).into_iter().enumerate() {
        env.slot = format!("stop_{n}");
        env.stream = format!("STOP_{n}");
        env.setup();
        let bad_id = bad.id.clone();
        insert(&env, &[row(n as u32, None), bad, row(900 + n as u32, None)]).await;
        let relay = env.spawn_run(&["--on-invalid", "stop"]);
        let status = relay.wait_timeout(LONG).unwrap().expect("relay stops on the invalid row");
        let out = relay.output();
        assert_eq!(status.code(), Some(1), "case {n}:\n{}", relay.output_tail(30));
        for needle in ["invalid event", bad_id.as_str(), "public.outbox", "commit LSN", words] {
            assert!(out.contains(needle), "case {n}: output lacks {needle}:\n{}", relay.output_tail(30));
        }
        let got = stream_messages(&js, &env.stream).await;
        assert_eq!(ids(&got), [uuid(n as u32)], "case {n}: only the row before the invalid one");
        // The next case's stream covers the same subjects.
        js.delete_stream(&env.stream).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_invalid_dead_letter_gives_records_and_every_later_event_once_in_order() {
    let env = servers();
    env.setup();
    let len = lsn_len(&env);
    // good, invalid, good, invalid, ...; then one sized to fit exactly with the most the publisher adds.
    let mut rows = Vec::new();
    let mut expected = Vec::new();
    let cases = invalid_cases(len);
    let mut sizes = Vec::new();
    for (n, (bad, _)) in cases.into_iter().enumerate() {
        rows.push(row(n as u32, None));
        expected.push(uuid(n as u32));
        expected.push(format!("dead-letter:{}", bad.id));
        sizes.push((format!("dead-letter:{}", bad.id), bad.pad));
        rows.push(bad);
    }
    rows.push(sized(200, MAX_PAYLOAD - ADDED_HEADERS_MAX, len));
    expected.push(uuid(200));
    rows.push(row(201, None));
    expected.push(uuid(201));
    insert(&env, &rows).await;
    let relay = env.spawn_run(&["--on-invalid", "dead-letter"]);
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, expected.len() as u64, LONG).await;
    let got = stream_messages(&js, &env.stream).await;
    assert_eq!(ids(&got), expected, "exact ids, order and count:\n{}", relay.output_tail(30));
    for m in &got {
        if let Some(original) = m.id().strip_prefix("dead-letter:") {
            assert_eq!(m.subject, "outbox.dead-letter");
            let body = m.json();
            assert_eq!(body["id"], original);
            assert_eq!(body["table"], "public.outbox");
            assert_eq!(body["commit_lsn"], m.header("Outbox-Commit-Lsn"));
            assert_eq!(body["index"], 0);
            assert!(!m.header("Outbox-Error").is_empty());
            assert_eq!(body["reason"].as_str().map(str::trim), Some(m.header("Outbox-Error")));
        }
    }
    // The sized ones: their records name the size the mapper measured, which must be what this test computed.
    for (id, pad) in sizes.iter().filter(|(_, pad)| *pad > 0) {
        let m = got.iter().find(|m| m.id() == id).unwrap();
        let lsn = m.header("Outbox-Commit-Lsn").len();
        assert_eq!(m.json()["size"], wire_size("a", *pad, lsn), "{id}");
    }
    let fits = got.iter().find(|m| m.id() == uuid(200)).unwrap();
    assert_eq!(fits.payload.len(), 9 + MAX_PAYLOAD - ADDED_HEADERS_MAX - wire_size("a", 0, len));
    relay.sigterm().unwrap();
    assert_eq!(relay.wait_timeout(LONG).unwrap().and_then(|s| s.code()), Some(0));
}

/// A refusal that repeats on the same event is permanent: a stream that does not cover an event's subject (no
/// stream answers its publish) ends the relay with exit 1 naming the event, instead of retrying for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_refused_the_same_way_again_and_again_is_permanent() {
    let env = servers();
    let js = env.js().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: env.stream.clone(),
        subjects: vec!["outbox.order.*".into(), "outbox.dead-letter".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    env.setup();
    let pg = env.client().await;
    pg.batch_execute(&format!(
        "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('{}', 'order', 'a',          'created', '{{}}'); INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('{}',          'invoice', 'a', 'created', '{{}}')",
        uuid(1),
        uuid(2)
    ))
    .await
    .unwrap();
    let relay = env.spawn_run(&[]);
    let status = relay.wait_timeout(LONG).unwrap().expect("the relay gives up on the event");
    assert_eq!(status.code(), Some(1), "{}", relay.output_tail(30));
    let out = relay.output();
    for needle in [uuid(2).as_str(), "outbox.invoice.created", "3 times in a row"] {
        assert!(out.contains(needle), "output lacks {needle}:\n{}", relay.output_tail(30));
    }
    assert_eq!(ids(&stream_messages(&js, &env.stream).await), [uuid(1)]);
}

/// What the mapper accepts, nats-server stores: hard rows mapped by the mapper, published by the relay's publisher,
/// read back with the same subject, headers (as a NATS client parses them: values trimmed) and payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_mapper_accepts_nats_server_stores() {
    let nats = Nats::builder().max_payload(MAX_PAYLOAD as u64).start().expect("start nats");
    let raw = RawSettings { nats_url: nats.url(), stream: "MAPPED".into(), ..Default::default() };
    let settings = Settings::validate(raw).unwrap();
    let (client, js) = walrelay_core::sink::stream::connect(&settings).await.unwrap();
    walrelay_core::sink::stream::ensure(&js, &settings, true).await.unwrap();
    let mut mapper = OutboxMapper::new(&settings).unwrap();
    mapper.relation(&outbox_relation(pgoutput::oid::JSONB)).unwrap();
    mapper.set_max_payload(client.server_info().max_payload);
    let long = "é".repeat(1500);
    let headers = [
        r#"{"k": "café ☕ 🚀", "tab": "a\tb", "nul": "a\u0000b", "empty": "", "obj": {"deep": [1, {"x": null}]}}"#,
        r#"{"~!#$%&'*+-.^_`|": "punct", "UPPER": "1", "upper": "2", "n": 1.50, "b": true, "z": null}"#,
        r#"{"pad": "  spaced  ", "ctl": "\u0001\u001f\u007f"}"#,
    ];
    let aggregate_ids = ["agg \t id ☕", "", long.as_str()];
    let mut sent = Vec::new();
    let mut publisher = Publisher::fenced(&client, 0, Duration::from_secs(10)).await.unwrap();
    for (i, (h, agg)) in headers.iter().zip(aggregate_ids).enumerate() {
        let t = tuple(&[
            Some(format!("id-{i} ☕")),
            Some("order".into()),
            Some(agg.to_owned()),
            Some("created".into()),
            Some(format!(r#"{{"i": {i}, "s": "é\u0000"}}"#)),
            Some((*h).to_owned()),
        ]);
        let event = mapper.map(RELATION_ID, &t, &TxnStamp::new(pgoutput::Lsn(0x10), 0), i as u32).expect("a message");
        sent.push(event.clone());
        publisher.send(event, ()).await.unwrap();
    }
    let (acked, err) = publisher.drain(Duration::from_secs(10)).await;
    assert!(err.is_none() && acked.len() == sent.len());
    let got = stream_messages(&js, "MAPPED").await;
    assert_eq!(got.len(), sent.len());
    for (m, e) in got.iter().zip(&sent) {
        assert_eq!(m.subject, e.subject.as_str());
        assert_eq!(m.payload, e.payload);
        let want: std::collections::BTreeMap<String, String> =
            e.sorted_headers().into_iter().map(|(k, v)| (k.to_owned(), v.trim().to_owned())).collect();
        assert_eq!(m.headers, want);
    }
}
