//! Interoperability (design.md §4e, issue 23) on real servers: `--cloudevents binary|structured|off`, `--header-columns`
//! and `{column|partition:N}`, each read back from the stream with exact content, order and count. The CloudEvents
//! are read with the official Rust SDK (`cloudevents-sdk`): structured messages through its JSON event format
//! deserializer, binary messages through its binary-mode message reader (`BinaryDeserializer` into the SDK's own
//! event builder, which parses and validates every attribute), fed by a reader of the NATS binding written here
//! from the binding's text (the SDK's NATS feature supports only structured mode, on the old `nats` crate).
//! The partition function is checked against nats-server 2.15's own `partition()` subject mapping.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use cloudevents::{
    event::SpecVersion,
    message::{BinaryDeserializer, BinarySerializer, MessageAttributeValue},
    AttributesReader, Data, Event, EventBuilder, EventBuilderV10,
};
use futures::StreamExt;
use walrelay_core::mapping::subject::partition;
use walrelay_testkit::{locate::nats_server_new, Nats};
use walrelay_tests::{stream_messages, wait_stream_count, Env, Stored};

const LONG: Duration = Duration::from_secs(120);
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE_OF_MESSAGE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
const ZOE: &str = "Zoë \"1\" 100%";

/// Percent-decoding of a NATS header value as the binding's §3.1.3.2 says a receiver must do it: `%XY` (either
/// case) per byte, and a byte sequence that is not UTF-8 rejected.
fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3).ok_or("truncated escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// A stored NATS message read as the CloudEvents NATS binding says (§3): structured mode when its `Content-Type`
/// starts with `application/cloudevents`, binary mode otherwise.
struct NatsMessage<'a>(&'a Stored);

impl NatsMessage<'_> {
    fn is_structured(&self) -> bool {
        self.0.header("Content-Type").to_ascii_lowercase().starts_with("application/cloudevents")
    }

    fn into_event(self) -> Event {
        if self.is_structured() {
            serde_json::from_slice::<Event>(&self.0.payload).expect("a JSON event format envelope")
        } else {
            BinaryDeserializer::into_event(self).expect("a binary-mode CloudEvent")
        }
    }
}

impl BinaryDeserializer for NatsMessage<'_> {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(self, visitor: V) -> cloudevents::message::Result<R> {
        let header = |name: &str| {
            let raw = self.0.headers.get(name).ok_or(cloudevents::message::Error::WrongEncoding {})?;
            percent_decode(raw).map_err(|e| cloudevents::message::Error::Other { source: e.into() })
        };
        let spec_version = SpecVersion::try_from(header("ce-specversion")?.as_str())?;
        let attributes = spec_version.attribute_names();
        let mut visitor = visitor.set_spec_version(spec_version)?;
        for name in self.0.headers.keys().filter(|k| k.starts_with("ce-") && *k != "ce-specversion") {
            let attribute = &name["ce-".len()..];
            let value = MessageAttributeValue::String(header(name)?);
            visitor = if attributes.contains(&attribute) {
                visitor.set_attribute(attribute, value)?
            } else {
                visitor.set_extension(attribute, value)?
            };
        }
        visitor.end_with_data(self.0.payload.to_vec())
    }
}

/// The options of every relay here: three tables whose payload columns are jsonb, text and bytea, logical
/// messages, a partitioned subject, two header columns and dead letters.
fn flags(mode: &'static str) -> Vec<&'static str> {
    vec![
        "--table",
        "public.outbox,public.outbox_text,public.outbox_bytes",
        "--message-prefix",
        "outbox",
        "--subject",
        "outbox.{aggregate_type}.{aggregate_id|partition:4}",
        "--header-columns",
        "traceparent,tenant_id:Tenant",
        "--on-invalid",
        "dead-letter",
        "--cloudevents",
        mode,
    ]
}

fn id(n: u32) -> String {
    format!("00000000-0000-0000-0000-{n:012}")
}

/// Relays one transaction of six events (design.md §4e's cases) in `mode`; returns the stream's messages.
async fn relay(mode: &'static str) -> (Env, Vec<Stored>) {
    let env = Env::start();
    env.pg
        .psql(
            "ALTER TABLE public.outbox ADD COLUMN traceparent text, ADD COLUMN tenant_id bigint; \
             CREATE TABLE public.outbox_text (LIKE public.outbox INCLUDING ALL); \
             ALTER TABLE public.outbox_text ALTER COLUMN payload TYPE text; \
             CREATE TABLE public.outbox_bytes (LIKE public.outbox INCLUDING ALL); \
             ALTER TABLE public.outbox_bytes ALTER COLUMN payload TYPE bytea USING payload::text::bytea",
        )
        .unwrap();
    let mut setup = vec!["setup"];
    setup.extend(flags(mode));
    let out = env.walrelay(&setup).output().unwrap();
    assert!(out.status.success(), "setup: {}", String::from_utf8_lossy(&out.stderr));
    let relay = env.spawn_run(&flags(mode));
    let client = env.client().await;
    // The W3C trace-context recipe: the application writes traceparent in the same transaction as the event.
    let sql = format!(
        "BEGIN; \
         INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, headers, traceparent, tenant_id) \
           VALUES ('{i1}', 'order', 'foobar', 'order.created', '{{\"n\": 1}}', '{{\"u\": \"x\"}}', '{TRACEPARENT}', 7); \
         INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) \
           VALUES ('{i2}', 'order', $zoe${ZOE}$zoe$, 'commandé payé', '[1, 2.50]'); \
         INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, traceparent) \
           VALUES ('{i3}', 'order', 'ab', 'order.bad', '{{}}', E'a\\r\\nb'); \
         INSERT INTO outbox_text (id, aggregate_type, aggregate_id, event_type, payload, tenant_id) \
           VALUES ('{i4}', 'note', 'ab', 'note.added', 'hello \"world\"', 8); \
         INSERT INTO outbox_bytes (id, aggregate_type, aggregate_id, event_type, payload) \
           VALUES ('{i5}', 'blob', 'abc', 'blob.stored', '\\x00ff10'); \
         SELECT pg_logical_emit_message(true, 'outbox', json_build_object('id', 'm1', 'aggregate_type', 'msg', \
           'aggregate_id', 'a', 'event_type', 'msg.sent', 'payload', json_build_object('k', json_build_array(1)), \
           'traceparent', '{TRACESTATE_OF_MESSAGE}', 'tenant_id', 9)::text); \
         COMMIT",
        i1 = id(1),
        i2 = id(2),
        i3 = id(3),
        i4 = id(4),
        i5 = id(5),
    );
    client.batch_execute(&sql).await.unwrap();
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 6, LONG).await;
    let messages = stream_messages(&js, &env.stream).await;
    relay.sigterm().unwrap();
    let status = relay.wait_timeout(LONG).unwrap().expect("run stopped after SIGTERM");
    assert!(status.success(), "run: {}", relay.output_tail(20));
    (env, messages)
}

/// What every relay publishes, whatever the mode: subjects (the partitions are the FNV-1a vectors: "foobar" 0,
/// "ab" 2, "abc" 3, "a" 0, mod 4), ids, header columns, and the dead-letter record in place of the invalid event.
fn assert_common(messages: &[Stored]) {
    let got: Vec<(&str, &str)> = messages.iter().map(|m| (m.subject.as_str(), m.id())).collect();
    let zoe = format!("outbox.order.{}", partition(ZOE, 4));
    let dead_letter = format!("dead-letter:{}", id(3));
    assert_eq!(
        got,
        [
            ("outbox.order.0", id(1).as_str()),
            (zoe.as_str(), id(2).as_str()),
            ("outbox.dead-letter", dead_letter.as_str()),
            ("outbox.note.2", id(4).as_str()),
            ("outbox.blob.3", id(5).as_str()),
            ("outbox.msg.0", "m1"),
        ],
        "exactly once, in commit order"
    );
    let index: Vec<&str> = messages.iter().map(|m| m.header("Outbox-Index")).collect();
    assert_eq!(index, ["0", "1", "2", "3", "4", "5"]);
    let header_columns: Vec<(Option<&String>, Option<&String>)> =
        messages.iter().map(|m| (m.headers.get("traceparent"), m.headers.get("Tenant"))).collect();
    let s = |v: &str| Some(v.to_owned());
    let (tp, tp_msg, seven, eight, nine) = (s(TRACEPARENT), s(TRACESTATE_OF_MESSAGE), s("7"), s("8"), s("9"));
    assert_eq!(
        header_columns,
        [
            (tp.as_ref(), seven.as_ref()),
            (None, None),
            (None, None),
            (None, eight.as_ref()),
            (None, None),
            (tp_msg.as_ref(), nine.as_ref()),
        ],
        "a NULL column adds no header; the dead-letter record drops the value NATS cannot carry"
    );
    let record = &messages[2];
    assert!(record.header("Outbox-Error").contains("header column traceparent value contains CR or LF"));
    assert!(
        record.headers.keys().all(|k| !k.starts_with("ce-") && k != "Content-Type"),
        "a dead-letter record is no CloudEvent: {:?}",
        record.headers
    );
    assert_eq!(record.json()["id"], id(3));
    assert_eq!(messages[0].header("u"), "x", "the headers column's keys stay");
}

/// The CloudEvent walrelay should have made of message `n` (0-based in the stream), from the table's source.
fn expected(m: &Stored, source: &str, ty: &str, subject: &str, data: (&str, Data)) -> Event {
    EventBuilderV10::new()
        .id(m.id())
        .source(source)
        .ty(ty)
        .subject(subject)
        .time(m.header("Outbox-Commit-Time"))
        .data(data.0, data.1)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_adds_ce_headers_that_the_sdk_reads_and_keeps_the_payload() {
    let (_env, messages) = relay("binary").await;
    assert_common(&messages);
    // Exact headers of the first event, as on the wire (percent-encoded where the binding requires it).
    let first: Vec<(&str, &str)> = messages[0].headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        first,
        [
            ("Nats-Msg-Id", id(1).as_str()),
            ("Outbox-Aggregate-Id", "foobar"),
            ("Outbox-Aggregate-Type", "order"),
            ("Outbox-Commit-Lsn", messages[0].header("Outbox-Commit-Lsn")),
            ("Outbox-Commit-Time", messages[0].header("Outbox-Commit-Time")),
            ("Outbox-Event-Type", "order.created"),
            ("Outbox-Index", "0"),
            ("Tenant", "7"),
            ("ce-datacontenttype", "application/json"),
            ("ce-id", id(1).as_str()),
            ("ce-source", "/postgres/public.outbox"),
            ("ce-specversion", "1.0"),
            ("ce-subject", "foobar"),
            ("ce-time", messages[0].header("Outbox-Commit-Time")),
            ("ce-type", "order.created"),
            ("traceparent", TRACEPARENT),
            ("u", "x"),
        ]
    );
    assert_eq!(messages[1].header("ce-subject"), "Zo%C3%AB%20%221%22%20100%25");
    assert_eq!(messages[1].header("ce-type"), "command%C3%A9%20pay%C3%A9");
    assert_eq!(messages[3].header("ce-datacontenttype"), "text/plain;%20charset=utf-8");
    // Payloads untouched.
    let payloads: Vec<&[u8]> = messages.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(payloads[0], br#"{"n": 1}"#);
    assert_eq!(payloads[1], b"[1, 2.50]");
    assert_eq!(payloads[3], br#"hello "world""#);
    assert_eq!(payloads[4], [0x00, 0xff, 0x10]);
    assert_eq!(payloads[5], br#"{"k":[1]}"#);
    // Read by the SDK: every attribute parsed and validated (time as a timestamp, source as a URI-reference).
    let events: Vec<Event> =
        messages.iter().filter(|m| m.header("Outbox-Error").is_empty()).map(|m| NatsMessage(m).into_event()).collect();
    let bin = |ct: &str, bytes: &[u8]| (ct.to_owned(), Data::Binary(bytes.to_vec()));
    let want = [
        (&messages[0], "/postgres/public.outbox", "order.created", "foobar", bin("application/json", payloads[0])),
        (&messages[1], "/postgres/public.outbox", "commandé payé", ZOE, bin("application/json", payloads[1])),
        (
            &messages[3],
            "/postgres/public.outbox_text",
            "note.added",
            "ab",
            bin("text/plain; charset=utf-8", payloads[3]),
        ),
        (
            &messages[4],
            "/postgres/public.outbox_bytes",
            "blob.stored",
            "abc",
            bin("application/octet-stream", payloads[4]),
        ),
        (&messages[5], "/postgres/messages", "msg.sent", "a", bin("application/json", payloads[5])),
    ];
    assert_eq!(events.len(), want.len());
    for (event, (m, source, ty, subject, (ct, data))) in events.iter().zip(want) {
        assert_eq!(event, &expected(m, source, ty, subject, (&ct, data)), "{}", m.id());
    }
    assert_eq!(events[1].subject(), Some(ZOE), "percent-decoded back to the aggregate id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_mode_sends_the_json_envelope_that_the_sdk_reads() {
    let (_env, messages) = relay("structured").await;
    assert_common(&messages);
    for (n, m) in messages.iter().enumerate() {
        let want = if n == 2 { "" } else { "application/cloudevents+json" };
        assert_eq!(m.header("Content-Type"), want, "{}", m.id());
        assert!(m.headers.keys().all(|k| !k.starts_with("ce-")), "no ce- headers in structured mode");
        assert!(m.header("Outbox-Commit-Lsn").contains('/'), "restart still reads the Outbox-* headers");
    }
    // The exact envelope of the first event: the jsonb payload as JSON `data`.
    assert_eq!(
        messages[0].json(),
        serde_json::json!({
            "specversion": "1.0", "id": id(1), "source": "/postgres/public.outbox", "type": "order.created",
            "subject": "foobar", "time": messages[0].header("Outbox-Commit-Time"),
            "datacontenttype": "application/json", "data": {"n": 1}
        })
    );
    let events: Vec<Event> =
        messages.iter().filter(|m| m.header("Outbox-Error").is_empty()).map(|m| NatsMessage(m).into_event()).collect();
    let json = |v: serde_json::Value| ("application/json".to_owned(), Data::Json(v));
    let want = [
        (&messages[0], "/postgres/public.outbox", "order.created", "foobar", json(serde_json::json!({"n": 1}))),
        (&messages[1], "/postgres/public.outbox", "commandé payé", ZOE, json(serde_json::json!([1, 2.50]))),
        (
            &messages[3],
            "/postgres/public.outbox_text",
            "note.added",
            "ab",
            ("text/plain; charset=utf-8".to_owned(), Data::String(r#"hello "world""#.into())),
        ),
        (
            &messages[4],
            "/postgres/public.outbox_bytes",
            "blob.stored",
            "abc",
            ("application/octet-stream".to_owned(), Data::Binary(vec![0x00, 0xff, 0x10])),
        ),
        (&messages[5], "/postgres/messages", "msg.sent", "a", json(serde_json::json!({"k": [1]}))),
    ];
    assert_eq!(events.len(), want.len());
    for (event, (m, source, ty, subject, (ct, data))) in events.iter().zip(want) {
        assert_eq!(event, &expected(m, source, ty, subject, (&ct, data)), "{}", m.id());
    }
    assert!(messages[4].json().get("data_base64").is_some(), "bytea travels as data_base64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_mode_keeps_plain_messages_with_header_columns_and_partitions() {
    let (_env, messages) = relay("off").await;
    assert_common(&messages);
    for m in &messages {
        assert!(m.headers.keys().all(|k| !k.starts_with("ce-") && k != "Content-Type"), "{:?}", m.headers);
    }
    assert_eq!(&messages[0].payload[..], br#"{"n": 1}"#);
}

/// nats-server's own `partition(4, 1)` mapping (2.15) sends `in.<key>` to `part.<n>.<key>`: n must be walrelay's
/// partition of the key, for keys with ASCII, UTF-8 and punctuation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_match_nats_server_partition_mapping() {
    let nats = Nats::builder()
        .bin(nats_server_new().unwrap())
        .extra_config("mappings = { \"in.*\": \"part.{{partition(4,1)}}.{{wildcard(1)}}\" }")
        .start()
        .unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = client.subscribe("part.>").await.unwrap();
    client.flush().await.unwrap();
    let keys = ["foobar", "ab", "abc", "a", "order-1001", "Zoë", "550e8400-e29b-41d4-a716-446655440000", "x_y-z"];
    for key in keys {
        client.publish(format!("in.{key}"), "".into()).await.unwrap();
    }
    client.flush().await.unwrap();
    let mut got = Vec::new();
    while got.len() < keys.len() {
        let m = tokio::time::timeout(LONG, sub.next()).await.expect("mapped message").expect("subscription");
        got.push(m.subject.to_string());
    }
    let want: Vec<String> = keys.iter().map(|k| format!("part.{}.{k}", partition(k, 4))).collect();
    assert_eq!(got, want);
    // And the FNV-1a vectors: "foobar" 0, "ab" 2, "abc" 3, "a" 0.
    assert_eq!(&got[..4], ["part.0.foobar", "part.2.ab", "part.3.abc", "part.0.a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_are_usage_errors_and_unknown_columns_are_named_with_a_remedy() {
    let env = Env::start();
    for args in [
        ["doctor", "--header-columns", "trace:Nats-Trace"],
        ["doctor", "--header-columns", "ce-id"],
        ["doctor", "--header-columns", "x:outbox-id"],
        ["doctor", "--subject", "outbox.{aggregate_id|partition:0}"],
        ["doctor", "--subject", "outbox.{aggregate_id|partition:four}"],
        ["doctor", "--cloudevents", "json"],
        ["doctor", "--cloudevents-source", "a b"],
    ] {
        let out = env.walrelay(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains(args[1]), "{args:?} names the option");
    }
    let env_var = env.walrelay(&["doctor"]).env("WALRELAY_HEADER_COLUMNS", "Nats-Msg-Id").output().unwrap();
    assert_eq!(env_var.status.code(), Some(2), "the env variable is read too");
    // An unknown column: doctor fails the table check with the remedy, setup and run exit 1 naming the option.
    let out = env.walrelay(&["doctor", "--header-columns", "traceparent"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with(
            "fail table: public.outbox has no column traceparent; remedy: ALTER \
             TABLE \"public\".\"outbox\" ADD COLUMN \"traceparent\" text; or set --header-columns"
        )),
        "{stdout}"
    );
    for command in ["setup", "run"] {
        let out = env.walrelay(&[command, "--header-columns", "traceparent"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
        assert!(stderr.contains("has no column traceparent (needed for a header column)"), "{command}: {stderr}");
        assert!(stderr.contains("--header-columns"), "{command}: {stderr}");
    }
    // With the column, doctor passes the table and reports the CloudEvents mode.
    env.pg.psql("ALTER TABLE public.outbox ADD COLUMN traceparent text").unwrap();
    let out = env.walrelay(&["doctor", "--header-columns", "traceparent", "--cloudevents", "binary"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok   table: public.outbox has"), "{stdout}");
    assert!(stdout.contains("ok   cloudevents: binary mode, type from public.outbox.event_type"), "{stdout}");
    let out = env.walrelay(&["doctor", "--cloudevents", "structured", "--event-type-column", "kind"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("fail cloudevents: public.outbox has no column kind"), "{stdout}");
}
