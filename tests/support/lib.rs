//! Shared helpers for walrelay's integration tests: a PostgreSQL + NATS pair with an outbox table, the walrelay
//! binary driven as users drive it, and readers that return the stream's exact content. [`Env`] serves the async
//! tests; [`ops`] the synchronous operator-command tests.
#![allow(clippy::unwrap_used, missing_docs)]

use std::{
    collections::BTreeMap,
    future::Future,
    process::Command,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use walrelay_testkit::{walrelay_bin, KitError, Nats, Postgres, Process};

pub use walrelay_testkit;

pub mod ops;

/// The default outbox table of design.md §4.
pub use walrelay_core::mapping::outbox::DEFAULT_TABLE_DDL as OUTBOX_DDL;

/// One PostgreSQL, one nats-server, an outbox table, and the names a relay uses.
pub struct Env {
    pub pg: Postgres,
    pub nats: Nats,
    pub stream: String,
    pub slot: String,
}

impl Env {
    /// Fresh servers with the default outbox table.
    pub fn start() -> Env {
        Self::with(Postgres::start().expect("start postgres"), Nats::start().expect("start nats"))
    }

    /// Given servers; creates the default outbox table.
    pub fn with(pg: Postgres, nats: Nats) -> Env {
        pg.psql(OUTBOX_DDL).expect("create outbox");
        Env { pg, nats, stream: "OUTBOX".into(), slot: "walrelay".into() }
    }

    pub fn pg_url(&self) -> String {
        self.pg.url("postgres")
    }

    /// `walrelay <args>` with this environment's servers in `WALRELAY_*` variables.
    pub fn walrelay(&self, args: &[&str]) -> Command {
        let mut cmd = walrelay_command(args, &self.pg_url(), &self.nats.url()).expect("walrelay binary");
        cmd.env("WALRELAY_STREAM", &self.stream)
            .env("WALRELAY_SLOT", &self.slot)
            .env("WALRELAY_LOG", "info,walrelay_core=debug")
            .env("WALRELAY_PROGRESS_INTERVAL", "1s");
        cmd
    }

    /// Starts `walrelay run <extra>` and waits until it holds the slot.
    pub fn spawn_run(&self, extra: &[&str]) -> Process {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        let p = Process::spawn(self.walrelay(&args)).expect("spawn walrelay run");
        p.wait_for_output("relay started", Duration::from_secs(60)).expect("relay started");
        p
    }

    /// Runs `walrelay setup` and asserts success.
    pub fn setup(&self) {
        let out = self.walrelay(&["setup"]).output().expect("run setup");
        assert!(out.status.success(), "setup failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.pg_url()).await
    }

    pub async fn js(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(self.nats.url()).await.expect("connect nats"))
    }

    /// confirmed_flush_lsn of the slot as a number.
    pub fn confirmed_flush(&self) -> u64 {
        lsn(&slot_confirmed_flush(&self.pg, &self.slot).expect("read slot"))
    }

    pub fn current_lsn(&self) -> u64 {
        lsn(&self.pg.psql("SELECT pg_current_wal_lsn()").expect("read wal lsn"))
    }
}

/// `walrelay <args>` against these servers, in a clean environment (only `PATH` and the `WALRELAY_PG_URL`,
/// `WALRELAY_NATS_URL` variables, and `WALRELAY_NATS_SYNC_INTERVAL=always`: most tests assert that the slot confirms
/// right after the ack; a test of the interval passes `--nats-sync-interval`, which wins over the variable).
pub fn walrelay_command(args: &[&str], pg_url: &str, nats_url: &str) -> Result<Command, KitError> {
    let mut cmd = Command::new(walrelay_bin()?);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("WALRELAY_PG_URL", pg_url)
        .env("WALRELAY_NATS_URL", nats_url)
        // The tests assert confirmation right after the ack; those of --nats-sync-interval pass the flag.
        .env("WALRELAY_NATS_SYNC_INTERVAL", "always");
    Ok(cmd)
}

/// The slot's `confirmed_flush_lsn` as psql prints it (empty when the slot does not exist).
pub fn slot_confirmed_flush(pg: &Postgres, slot: &str) -> Result<String, KitError> {
    pg.psql(&format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"))
}

/// `GET path` over HTTP/1.0 from `addr` (`host:port`): the status code and the body, or None when it cannot be read.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((code, body))
}

/// Parses `X/Y` into a number (0 for empty).
pub fn lsn(s: &str) -> u64 {
    let s = s.trim();
    match s.split_once('/') {
        Some((hi, lo)) => (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap(),
        None => 0,
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect postgres");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A message as stored in the stream: its headers (the first value of each) without the `Nats-Expected-*`
/// publish expectations (the relay's ordering fence), which are stored with the message but are not part of the
/// event.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub sequence: u64,
    pub subject: String,
    pub headers: BTreeMap<String, String>,
    pub payload: Bytes,
}

impl Stored {
    /// A stored message from what the server returned.
    pub fn new(sequence: u64, subject: &str, headers: Option<&HeaderMap>, payload: Bytes) -> Stored {
        let headers = headers
            .into_iter()
            .flat_map(|h| h.iter())
            .filter(|(name, _)| !name.to_string().starts_with("Nats-Expected-"))
            .filter_map(|(name, values)| Some((name.to_string(), values.first()?.as_str().to_owned())))
            .collect();
        Stored { sequence, subject: subject.to_owned(), headers, payload }
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
    pub fn id(&self) -> &str {
        self.header("Nats-Msg-Id")
    }
    pub fn commit_lsn(&self) -> u64 {
        lsn(self.header("Outbox-Commit-Lsn"))
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("payload is json")
    }
}

/// Number of messages in the stream (0 if it does not exist).
pub async fn stream_count(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every message of the stream, in sequence order (empty when the stream does not exist).
pub async fn stream_messages(js: &jetstream::Context, stream: &str) -> Vec<Stored> {
    let Ok(mut s) = js.get_stream(stream).await else { return Vec::new() };
    let total = s.info().await.expect("stream info").state.messages;
    if total == 0 {
        return Vec::new();
    }
    let consumer = s
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::with_capacity(total as usize);
    while (out.len() as u64) < total {
        let msg = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("stream read timed out")
            .expect("stream ended")
            .expect("message");
        let sequence = msg.info().expect("message info").stream_sequence;
        out.push(Stored::new(sequence, &msg.subject, msg.headers.as_ref(), msg.payload.clone()));
    }
    out
}

/// Waits until `counter` (rows committed by a test's producers) reaches `n`.
pub async fn wait_counter(counter: &std::sync::Arc<std::sync::atomic::AtomicU64>, n: u64, timeout: Duration) {
    let c = std::sync::Arc::clone(counter);
    wait_for(&format!("producers to commit {n} rows"), timeout, || {
        let c = std::sync::Arc::clone(&c);
        async move { c.load(std::sync::atomic::Ordering::Relaxed) >= n }
    })
    .await;
}

/// Polls `check` every 25 ms until it returns true, for at most `timeout`; panics naming `what`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the stream holds exactly `n` messages (panics if it exceeds `n`).
pub async fn wait_stream_count(js: &jetstream::Context, stream: &str, n: u64, timeout: Duration) {
    let start = Instant::now();
    loop {
        let c = stream_count(js, stream).await;
        assert!(c <= n, "stream {stream} holds {c} messages, more than the {n} expected");
        if c == n {
            return;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?}: stream {stream} holds {c} of {n} messages");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Inserts `n` events in one transaction; payload `{"producer": p, "seq": i}`, aggregate_id `p`; returns their ids.
pub async fn insert_events(client: &tokio_postgres::Client, producer: &str, from: u64, n: u64) -> Vec<String> {
    let rows = client
        .query(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'order', $1, 'created', jsonb_build_object('producer', $1::text, 'seq', g) \
             FROM generate_series($2::bigint, $3::bigint) g ORDER BY g RETURNING id::text",
            &[&producer, &(from as i64), &((from + n) as i64 - 1)],
        )
        .await
        .expect("insert events");
    rows.iter().map(|r| r.get(0)).collect()
}

/// The `Nats-Msg-Id` of each message, in the messages' order.
pub fn ids(messages: &[Stored]) -> Vec<String> {
    messages.iter().map(|m| m.id().to_owned()).collect()
}
