//! Fault-injection suite (issue 4): every scenario runs concurrent producers while it breaks something, then asserts
//! the stream's exact content against what committed in Postgres (design.md §1):
//! - the exact multiset of ids (no duplicates, none missing; or, where the stream itself was lost, an exact
//!   contiguous suffix of each producer's commits that holds everything committed after the loss),
//! - each producer's events in its commit order,
//! - `Outbox-Commit-Lsn` non-decreasing along the stream,
//! - `Outbox-Index` 0..n-1 over exactly the rows of each committed transaction, in insert order.
//!
//! Run alone with `cargo test -p walrelay-tests --test faults` (see docs/testing.md). Randomness comes from a seed
//! printed by each test; set `FAULTS_SEED` to replay one.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    collections::{HashMap, HashSet},
    ops::RangeInclusive,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use async_nats::jetstream;
use tokio::task::JoinHandle;
use walrelay_testkit::{walrelay_bin, Nats, NatsCluster, Postgres, Process};
use walrelay_tests::{stream_count, stream_messages, wait_for, Env, Stored, OUTBOX_DDL};

/// Publish ack timeout given to every relay: short, so a stalled broker is noticed quickly.
const PUBLISH_TIMEOUT: &str = "2s";
/// How long a scenario may take to drain the stream after the fault.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------------------------
// Randomness with a printed seed.

/// splitmix64: enough randomness for fault timing and batch sizes, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Rng {
        let seed = std::env::var("FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("{test}: FAULTS_SEED={seed}");
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, r: RangeInclusive<u64>) -> u64 {
        r.start() + self.next_u64() % (r.end() - r.start() + 1)
    }

    fn millis(&mut self, r: RangeInclusive<u64>) -> Duration {
        Duration::from_millis(self.range(r))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Producers: concurrent tasks with their own connections, recording what committed.

/// One committed transaction of a producer.
#[derive(Debug, Clone)]
struct Batch {
    /// Row ids in insert order.
    ids: Vec<String>,
    /// The test's phase when the transaction began (see [`Producers::phase`]).
    phase: u64,
}

/// What one producer committed, in its commit order.
#[derive(Debug)]
struct ProducerLog {
    name: String,
    batches: Vec<Batch>,
}

/// How the producers write.
#[derive(Debug, Clone)]
struct Load {
    producers: usize,
    /// Rows per transaction.
    batch: RangeInclusive<u64>,
    /// Stop after this many rows per producer (or when stopped).
    per_producer: u64,
    /// Pause after each transaction, per row written (paces the load so it spans the fault).
    pause_per_row: Duration,
}

/// Running producers.
struct Producers {
    stop: Arc<AtomicBool>,
    /// Bumped by the test at a fault; each transaction records the phase it began in.
    phase: Arc<AtomicU64>,
    committed: Arc<AtomicU64>,
    handles: Vec<JoinHandle<ProducerLog>>,
}

const INSERT: &str = "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
     SELECT 'order', $1, 'created', jsonb_build_object('producer', $1::text, 'seq', g) \
     FROM generate_series($2::bigint, $3::bigint) g ORDER BY g RETURNING id::text";

impl Producers {
    fn start(pg_url: &str, load: &Load, rng: &mut Rng) -> Producers {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU64::new(0));
        let committed = Arc::new(AtomicU64::new(0));
        let handles = (0..load.producers)
            .map(|i| {
                let ctx = ProducerCtx {
                    name: format!("p{i}"),
                    url: pg_url.to_owned(),
                    load: load.clone(),
                    stop: Arc::clone(&stop),
                    phase: Arc::clone(&phase),
                    committed: Arc::clone(&committed),
                    rng: Rng(rng.next_u64()),
                };
                tokio::spawn(ctx.run())
            })
            .collect();
        Producers { stop, phase, committed, handles }
    }

    fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Marks the start of a new phase: transactions that begin from now on record it.
    fn next_phase(&self) -> u64 {
        self.phase.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Waits until the producers have committed `n` rows in total.
    async fn wait_committed(&self, n: u64, timeout: Duration) {
        walrelay_tests::wait_counter(&self.committed, n, timeout).await;
    }

    /// Stops the producers (or lets them finish their quota) and returns their logs.
    async fn finish(self, stop: bool) -> Vec<ProducerLog> {
        if stop {
            self.stop.store(true, Ordering::SeqCst);
        }
        let mut logs = Vec::new();
        for h in self.handles {
            logs.push(h.await.expect("producer task"));
        }
        logs
    }
}

struct ProducerCtx {
    name: String,
    url: String,
    load: Load,
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU64>,
    committed: Arc<AtomicU64>,
    rng: Rng,
}

/// How long a producer keeps trying to reach Postgres before the test fails.
const PRODUCER_RECONNECT: Duration = Duration::from_secs(90);

impl ProducerCtx {
    async fn connect(&self) -> tokio_postgres::Client {
        let started = Instant::now();
        loop {
            match tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await {
                Ok((client, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    return client;
                }
                Err(err) => {
                    assert!(started.elapsed() < PRODUCER_RECONNECT, "{}: postgres unreachable: {err}", self.name);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Whether a transaction whose COMMIT result was lost did commit (all of its rows or none).
    async fn resolve(&self, client: &tokio_postgres::Client, ids: &[String]) -> Result<bool, tokio_postgres::Error> {
        let n: i64 = client.query_one("SELECT count(*) FROM outbox WHERE id::text = ANY($1)", &[&ids]).await?.get(0);
        assert!(n == 0 || n as usize == ids.len(), "{}: transaction half committed ({n} of {})", self.name, ids.len());
        Ok(n > 0)
    }

    async fn run(mut self) -> ProducerLog {
        let mut log = ProducerLog { name: self.name.clone(), batches: Vec::new() };
        let mut client = self.connect().await;
        let mut unknown: Option<Batch> = None;
        let mut next_seq: u64 = 0;
        let mut failures_since = None::<Instant>;
        loop {
            if let Some(batch) = unknown.take() {
                match self.resolve(&client, &batch.ids).await {
                    Ok(true) => {
                        self.committed.fetch_add(batch.ids.len() as u64, Ordering::Relaxed);
                        log.batches.push(batch);
                    }
                    Ok(false) => {}
                    Err(_) => {
                        unknown = Some(batch);
                        client = self.connect().await;
                        continue;
                    }
                }
            }
            if self.stop.load(Ordering::SeqCst) || next_seq >= self.load.per_producer {
                break;
            }
            let n = self.rng.range(self.load.batch.clone()).min(self.load.per_producer - next_seq);
            let phase = self.phase.load(Ordering::SeqCst);
            let last = (next_seq + n) as i64 - 1;
            let outcome = async {
                let tx = client.transaction().await.map_err(|e| (e, None))?;
                let rows = tx.query(INSERT, &[&self.name, &(next_seq as i64), &last]).await.map_err(|e| (e, None))?;
                let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                tx.commit().await.map_err(|e| (e, Some(ids.clone())))?;
                Ok::<_, (tokio_postgres::Error, Option<Vec<String>>)>(ids)
            }
            .await;
            match outcome {
                Ok(ids) => {
                    failures_since = None;
                    next_seq += n;
                    self.committed.fetch_add(ids.len() as u64, Ordering::Relaxed);
                    log.batches.push(Batch { ids, phase });
                    if !self.load.pause_per_row.is_zero() {
                        tokio::time::sleep(self.load.pause_per_row * n as u32).await;
                    }
                }
                Err((err, ids)) => {
                    let since = *failures_since.get_or_insert_with(Instant::now);
                    assert!(since.elapsed() < PRODUCER_RECONNECT, "{}: postgres keeps failing: {err}", self.name);
                    // The sequence numbers of a failed transaction are never reused: its rows may have committed.
                    next_seq += n;
                    unknown = ids.map(|ids| Batch { ids, phase });
                    if client.is_closed() || unknown.is_some() {
                        client = self.connect().await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        log
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The stream's exact content against the producers' logs.

/// What the stream must hold.
enum Expect<'a> {
    /// Every committed row, exactly once.
    All,
    /// The stream was lost at some point: per producer a contiguous suffix of its commits that includes every
    /// transaction begun in phase `from_phase` or later, plus `extra` (rows committed outside the producers).
    /// The stream was deleted and recreated: per producer a contiguous suffix of its commits that includes every
    /// transaction begun in phase `from_phase` or later and `extra`; every row it lacks is in `earlier` (the deleted
    /// stream's content), so nothing was confirmed to Postgres before JetStream stored it.
    SuffixFrom { from_phase: u64, extra: &'a [String], earlier: &'a [Stored] },
    /// A stream that was deleted: per producer a contiguous prefix of its commits; its last transaction may be cut.
    Prefix,
}

/// Where a committed row is: producer, batch, and position in the producer's sequence.
#[derive(Debug, Clone, Copy)]
struct Origin {
    producer: usize,
    batch: usize,
    ordinal: usize,
}

/// Asserts the stream content. `sentinel` is a final single-row transaction committed after the producers stopped.
fn verify(label: &str, messages: &[Stored], logs: &[ProducerLog], sentinel: &[String], expect: Expect<'_>) {
    let mut logs_all: Vec<&ProducerLog> = logs.iter().collect();
    let sentinel_log =
        ProducerLog { name: "sentinel".into(), batches: vec![Batch { ids: sentinel.to_vec(), phase: u64::MAX }] };
    logs_all.push(&sentinel_log);
    let mut origin: HashMap<&str, Origin> = HashMap::new();
    let mut total = 0usize;
    for (p, log) in logs_all.iter().enumerate() {
        let mut ordinal = 0;
        for (b, batch) in log.batches.iter().enumerate() {
            for id in &batch.ids {
                assert!(
                    origin.insert(id, Origin { producer: p, batch: b, ordinal }).is_none(),
                    "{label}: id {id} committed twice"
                );
                ordinal += 1;
                total += 1;
            }
        }
    }

    // 1. Every message is a committed row, and no row appears twice.
    let mut seen: HashSet<&str> = HashSet::new();
    for m in messages {
        let id = m.id();
        assert!(origin.contains_key(id), "{label}: stream seq {} holds id {id:?}, which never committed", m.sequence);
        assert!(seen.insert(id), "{label}: duplicate id {id} at stream seq {}", m.sequence);
    }

    // 2. Per producer: its rows in its commit order, contiguous (no gap), and the expected extent.
    let mut per_producer: Vec<Vec<usize>> = vec![Vec::new(); logs_all.len()];
    for m in messages {
        let o = origin[m.id()];
        per_producer[o.producer].push(o.ordinal);
    }
    for (p, ordinals) in per_producer.iter().enumerate() {
        let log = logs_all[p];
        let committed: usize = log.batches.iter().map(|b| b.ids.len()).sum();
        let first = match expect {
            Expect::All => 0,
            Expect::SuffixFrom { .. } => ordinals.first().copied().unwrap_or(committed),
            Expect::Prefix => 0,
        };
        let end = match expect {
            Expect::Prefix => ordinals.len(),
            _ => committed,
        };
        let want: Vec<usize> = (first..end).collect();
        if *ordinals != want {
            let missing = want.iter().filter(|o| !ordinals.contains(o)).count();
            panic!(
                "{label}: producer {} has {} rows in the stream, expected its rows {first}..{end} in commit order \
                 ({missing} missing; first divergence at stream position {:?})",
                log.name,
                ordinals.len(),
                ordinals.iter().zip(&want).position(|(a, b)| a != b)
            );
        }
        if let Expect::SuffixFrom { from_phase, earlier, .. } = expect {
            // What the new stream lacks, the deleted one held: nothing was confirmed before it was stored.
            let held: HashSet<&str> = earlier.iter().map(Stored::id).collect();
            let ids = log.batches.iter().flat_map(|b| b.ids.iter());
            if let Some(lost) = ids.take(first).find(|id| !held.contains(id.as_str())) {
                panic!("{label}: producer {} row {lost} is in neither the deleted nor the new stream", log.name);
            }
            // Everything begun after the loss must be there.
            let mut ord = 0;
            for batch in &log.batches {
                if batch.phase >= from_phase && batch.phase != u64::MAX {
                    assert!(
                        ord >= first,
                        "{label}: producer {} lost rows committed after the fault (from its row {ord})",
                        log.name
                    );
                }
                ord += batch.ids.len();
            }
        }
    }
    match expect {
        Expect::All => {
            assert_eq!(messages.len(), total, "{label}: stream holds {} rows, {total} committed", messages.len())
        }
        Expect::Prefix => {}
        Expect::SuffixFrom { extra, .. } => {
            for id in extra {
                assert!(seen.contains(id.as_str()), "{label}: row {id} committed after the fault is missing");
            }
        }
    }

    // 3. Commit LSNs never go back; each transaction is whole, consecutive, with Outbox-Index 0..n-1 in insert order.
    let mut i = 0;
    let mut last_lsn = 0u64;
    while i < messages.len() {
        let m = &messages[i];
        let lsn = m.commit_lsn();
        assert!(lsn > 0, "{label}: stream seq {} has no Outbox-Commit-Lsn", m.sequence);
        assert!(
            lsn > last_lsn || i == 0,
            "{label}: Outbox-Commit-Lsn goes back or repeats a transaction at stream seq {} ({} after {:X})",
            m.sequence,
            m.header("Outbox-Commit-Lsn"),
            last_lsn
        );
        let o = origin[m.id()];
        let batch = &logs_all[o.producer].batches[o.batch];
        assert_eq!(
            m.header("Outbox-Index"),
            "0",
            "{label}: transaction at stream seq {} starts at Outbox-Index {}",
            m.sequence,
            m.header("Outbox-Index")
        );
        for (k, id) in batch.ids.iter().enumerate() {
            let Some(mk) = messages.get(i + k) else {
                if matches!(expect, Expect::Prefix) {
                    break;
                }
                panic!("{label}: stream ends inside a transaction of {} rows", batch.ids.len())
            };
            assert_eq!(
                mk.id(),
                id,
                "{label}: stream seq {}: transaction rows out of order or interleaved",
                mk.sequence
            );
            assert_eq!(mk.commit_lsn(), lsn, "{label}: stream seq {}: one transaction, two commit LSNs", mk.sequence);
            assert_eq!(
                mk.header("Outbox-Index"),
                k.to_string(),
                "{label}: stream seq {}: wrong Outbox-Index",
                mk.sequence
            );
            assert_eq!(mk.json()["producer"], logs_all[o.producer].name.as_str(), "{label}: payload of {id}");
        }
        last_lsn = lsn;
        i += batch.ids.len();
    }
    eprintln!("{label}: verified {} messages ({total} committed)", messages.len());
}

/// Asserts that the producers' logs are exactly what Postgres holds (the ground truth the stream is checked against).
async fn assert_logs_match_table(pg_url: &str, logs: &[ProducerLog], sentinel: &[String]) {
    let client = walrelay_tests::connect(pg_url).await;
    let rows = client.query("SELECT id::text FROM outbox", &[]).await.expect("read outbox");
    let table: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let logged: HashSet<String> = logs
        .iter()
        .flat_map(|l| l.batches.iter().flat_map(|b| b.ids.iter().cloned()))
        .chain(sentinel.iter().cloned())
        .collect();
    assert_eq!(table.len(), logged.len(), "the outbox table and the producers disagree on what committed");
    assert!(table == logged, "the outbox table and the producers disagree on what committed");
}

/// Commits one final row after the producers stopped and waits until it is the stream's last message: then every
/// earlier commit must be in the stream (order is part of the promise). Returns the sentinel's ids.
async fn commit_sentinel_and_drain(
    pg_url: &str,
    js: &jetstream::Context,
    stream: &str,
    relay: &[&Process],
) -> Vec<String> {
    let client = walrelay_tests::connect(pg_url).await;
    let ids = walrelay_tests::insert_events(&client, "sentinel", 0, 1).await;
    let want = ids[0].clone();
    let started = Instant::now();
    loop {
        if last_message_id(js, stream).await.as_deref() == Some(want.as_str()) {
            return ids;
        }
        if started.elapsed() > DRAIN_TIMEOUT {
            let tails: Vec<String> = relay.iter().map(|p| p.output_tail(40)).collect();
            panic!(
                "timed out waiting for the sentinel event to reach the stream; relay output:\n{}",
                tails.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `Nats-Msg-Id` of the stream's last message.
async fn last_message_id(js: &jetstream::Context, stream: &str) -> Option<String> {
    let mut s = js.get_stream(stream).await.ok()?;
    let last = s.info().await.ok()?.state.last_sequence;
    let msg = s.get_raw_message(last).await.ok()?;
    msg.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned())
}

/// The stream's message count, waiting (bounded) for an answer while the broker recovers.
async fn count(js: &jetstream::Context, stream: &str) -> u64 {
    let started = Instant::now();
    loop {
        if let Ok(mut s) = js.get_stream(stream).await {
            if let Ok(info) = s.info().await {
                return info.state.messages;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "stream {stream} does not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message of the stream by direct gets, retrying while the cluster recovers (an ordered consumer cannot be
/// placed while a node is down).
async fn messages_by_get(js: &jetstream::Context, stream: &str) -> Vec<Stored> {
    let started = Instant::now();
    let retry = |what: String| {
        assert!(started.elapsed() < Duration::from_secs(60), "reading stream {stream}: {what}");
        tokio::time::sleep(Duration::from_millis(100))
    };
    let (s, first, last) = loop {
        match js.get_stream(stream).await {
            Ok(mut s) => match s.info().await {
                Ok(info) => {
                    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
                    break (s, first, last);
                }
                Err(e) => retry(e.to_string()).await,
            },
            Err(e) => retry(e.to_string()).await,
        }
    };
    let mut out = Vec::new();
    let mut seq = first;
    while seq <= last && last > 0 {
        match s.get_raw_message(seq).await {
            Ok(msg) => {
                out.push(Stored::new(seq, &msg.subject, Some(&msg.headers), msg.payload));
                seq += 1;
            }
            Err(e) => retry(e.to_string()).await,
        }
    }
    out
}

/// Deletes the stream at a moment whose content is known exactly: the relay is frozen (SIGSTOP) so nothing more
/// reaches the stream, the stream is read once its last sequence stands still, deleted, and the relay thawed.
/// Returns the deleted stream's content.
async fn delete_stream_frozen(js: &jetstream::Context, stream: &str, relay: &Process) -> Vec<Stored> {
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &relay.pid().to_string()]).status().expect("kill").success();
        assert!(ok, "kill {sig} relay");
    };
    signal("-STOP");
    // Publishes already on the wire land within milliseconds; wait until the tail stands still for 300 ms.
    let mut last = (u64::MAX, Instant::now());
    let started = Instant::now();
    loop {
        let seq = js.get_stream(stream).await.expect("stream").info().await.expect("info").state.last_sequence;
        if seq != last.0 {
            last = (seq, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(300) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "stream tail never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = stream_messages(js, stream).await;
    assert_eq!(old.last().map(|m| m.sequence), Some(last.0), "the frozen stream changed while read");
    js.delete_stream(stream).await.expect("delete stream");
    signal("-CONT");
    old
}

/// Waits until the stream has grown by at least `by` messages past `from` (the relay flows).
async fn wait_growth(js: &jetstream::Context, stream: &str, from: u64, by: u64, timeout: Duration, relay: &Process) {
    let started = Instant::now();
    loop {
        let c = stream_count(js, stream).await;
        if c >= from + by {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "stream {stream} stuck at {c} (waiting for {}); relay output:\n{}",
            from + by,
            relay.output_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A moderate load for the single-fault scenarios: three producers, small transactions, paced.
fn light_load() -> Load {
    Load { producers: 3, batch: 1..=20, per_producer: u64::MAX, pause_per_row: Duration::from_micros(500) }
}

/// What the scenarios that check the publish mode add to the relay's options: a sync interval, without which the relay
/// does not publish in fast batches (`--nats-sync-interval always`, the test support's default, keeps per-message
/// acks: sink::batch::Mode::SyncAlways). One second keeps the scenarios quick.
const FAST_BATCH: &[&str] = &["--nats-sync-interval", "1s"];

/// Fast-batch publishing (issue 21) is in use exactly when the server has it: the relay's start line says which
/// publish mode its session runs (run these scenarios with WALRELAY_NATS_SERVER naming a 2.14+ nats-server to cover
/// fast batch).
fn assert_publish_mode(label: &str, js: &jetstream::Context, relay: &Process) {
    let version = js.client().server_info().version;
    let fast = relay.output().contains("publish_mode=\"fast-batch\"");
    eprintln!("{label}: nats-server {version}, publish mode: {}", if fast { "fast batch" } else { "per-message acks" });
    assert_eq!(fast, walrelay_core::sink::batch::server_supports(&version), "{label}: publish mode");
}

fn run_args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec!["--publish-timeout", PUBLISH_TIMEOUT];
    args.extend_from_slice(extra);
    args
}

/// The end of a scenario that keeps every event: the producers stop, a sentinel commits and reaches the stream
/// through `relay`, and the stream must hold exactly what committed, each event once, in commit order.
async fn finish_exact(label: &str, env: &Env, js: &jetstream::Context, producers: Producers, relay: &Process) {
    let logs = producers.finish(true).await;
    let sentinel = commit_sentinel_and_drain(&env.pg_url(), js, &env.stream, &[relay]).await;
    assert_logs_match_table(&env.pg_url(), &logs, &sentinel).await;
    let messages = stream_messages(js, &env.stream).await;
    verify(label, &messages, &logs, &sentinel, Expect::All);
}

/// The common shape: relay and producers running, `fault` injected once the stream flows, then the stream must
/// flow again, the producers stop, and the stream must hold exactly what committed.
async fn single_fault<F>(label: &str, env: &mut Env, must_interrupt: bool, fault: F)
where
    F: AsyncFnOnce(&mut Env, &Process),
{
    let mut rng = Rng::seeded(label);
    let relay = env.spawn_run(&run_args(FAST_BATCH));
    let js = env.js().await;
    assert_publish_mode(label, &js, &relay);
    let producers = Producers::start(&env.pg_url(), &light_load(), &mut rng);
    wait_growth(&js, &env.stream, 0, 300, Duration::from_secs(60), &relay).await;
    tokio::time::sleep(rng.millis(0..=500)).await;
    let before = relay.output().len();
    let fault_at = Instant::now();
    fault(env, &relay).await;
    let at = producers.committed();
    producers.wait_committed(at + 300, Duration::from_secs(60)).await;
    let now = count(&js, &env.stream).await;
    wait_growth(&js, &env.stream, now, 300, Duration::from_secs(60), &relay).await;
    let interruptions = relay.output()[before..].matches("relay interrupted").count();
    eprintln!(
        "{label}: flowing again {:?} after the fault; {interruptions} session(s) interrupted",
        fault_at.elapsed()
    );
    assert!(
        !must_interrupt || interruptions > 0,
        "{label}: the fault did not reach the relay:\n{}",
        relay.output_tail(40)
    );
    finish_exact(label, env, &js, producers, &relay).await;
    assert!(relay.exit_status().is_none(), "{label}: the relay exited:\n{}", relay.output_tail(40));
}

// ---------------------------------------------------------------------------------------------------------------
// Scenarios.

/// kill -9 of the relay at 20 random moments while 4 producers commit 100,000 rows in transactions of 50–200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_at_20_random_moments_during_100k_events() {
    let label = "relay_kill9_x20";
    let mut rng = Rng::seeded(label);
    let t0 = Instant::now();
    let env = Env::start();
    env.setup();
    eprintln!("{label}: servers ready in {:?}", t0.elapsed());
    let js = env.js().await;
    let load = Load { producers: 4, batch: 50..=200, per_producer: 25_000, pause_per_row: Duration::from_micros(800) };
    let mut relay = env.spawn_run(&run_args(FAST_BATCH));
    assert_publish_mode(label, &js, &relay);
    let producers = Producers::start(&env.pg_url(), &load, &mut rng);
    let started = Instant::now();
    for kill in 1..=20 {
        tokio::time::sleep(rng.millis(150..=1200)).await;
        blocking(|| relay.kill9()).expect("kill -9 relay");
        eprintln!(
            "{label}: kill {kill} at {:?}, stream holds {}",
            started.elapsed(),
            stream_count(&js, &env.stream).await
        );
        relay = blocking(|| env.spawn_run(&run_args(FAST_BATCH)));
    }
    let logs = producers.finish(false).await;
    eprintln!("{label}: producers done at {:?}", started.elapsed());
    let sentinel = commit_sentinel_and_drain(&env.pg_url(), &js, &env.stream, &[&relay]).await;
    walrelay_tests::wait_stream_count(&js, &env.stream, 100_001, DRAIN_TIMEOUT).await;
    eprintln!("{label}: stream drained at {:?}", started.elapsed());
    assert_logs_match_table(&env.pg_url(), &logs, &sentinel).await;
    let messages = stream_messages(&js, &env.stream).await;
    eprintln!("{label}: stream read at {:?}", started.elapsed());
    verify(label, &messages, &logs, &sentinel, Expect::All);
}

/// nats-server stopped and started again (same port and store) while events flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_mid_stream() {
    let mut env = Env::start();
    single_fault("nats_restart", &mut env, false, async |env: &mut Env, _relay: &Process| {
        blocking(|| env.nats.restart()).expect("restart nats");
    })
    .await;
}

/// nats-server frozen with SIGSTOP for longer than the relay's publish ack timeout, then resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_paused_longer_than_publish_timeout() {
    let mut env = Env::start();
    single_fault("nats_pause", &mut env, true, async |env: &mut Env, relay: &Process| {
        env.nats.pause().expect("pause nats");
        // Longer than --publish-timeout: in-flight acks time out while the server holds the connection.
        let held = Instant::now();
        let out = relay.output().len();
        wait_for("the relay to notice the stalled broker", Duration::from_secs(30), || {
            let noticed = relay.output()[out..].contains("relay interrupted");
            async move { noticed }
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(held.elapsed() > Duration::from_secs(2));
        env.nats.resume().expect("resume nats");
    })
    .await;
}

/// nats-server down while more events wait than async-nats' command channel holds by default (2,048), with a window
/// above that: a publish must never hold the relay's loop, so the acks time out, the session ends, and SIGTERM stops
/// the relay at once; with NATS back, a new relay delivers every event exactly once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_with_a_window_above_the_client_channel() {
    let mut env = Env::start();
    env.setup();
    let js = env.js().await;
    let args = run_args(&["--max-in-flight", "8192"]);
    let relay = env.spawn_run(&args);
    let client = env.client().await;
    let mut ids = walrelay_tests::insert_events(&client, "p", 0, 1).await;
    walrelay_tests::wait_stream_count(&js, &env.stream, 1, Duration::from_secs(30)).await;
    drop(js);
    blocking(|| env.nats.stop());
    ids.extend(walrelay_tests::insert_events(&client, "p", 1, 10_000).await);
    blocking(|| relay.wait_for_output("relay interrupted", Duration::from_secs(60)))
        .unwrap_or_else(|e| panic!("{e}: the acks never timed out:\n{}", relay.output_tail(30)));
    relay.sigterm().unwrap();
    let status = blocking(|| relay.wait_timeout(Duration::from_secs(30))).unwrap();
    assert!(status.is_some(), "SIGTERM did not stop the relay:\n{}", relay.output_tail(30));

    blocking(|| env.nats.start_again()).expect("start nats again");
    let js = env.js().await;
    let relay = env.spawn_run(&args);
    walrelay_tests::wait_stream_count(&js, &env.stream, 10_001, DRAIN_TIMEOUT).await;
    let messages = stream_messages(&js, &env.stream).await;
    assert_eq!(walrelay_tests::ids(&messages), ids, "every event once, in commit and insert order");
    assert!(relay.exit_status().is_none(), "{}", relay.output_tail(30));
}

/// PostgreSQL restarted with `pg_ctl restart -m fast` (confirmed_flush may regress on 15/16, design rule 9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_fast_mid_stream() {
    let mut env = Env::start();
    single_fault("pg_restart_fast", &mut env, true, async |env: &mut Env, _relay: &Process| {
        blocking(|| env.pg.restart_fast()).expect("restart postgres");
    })
    .await;
}

/// PostgreSQL crashed with `pg_ctl stop -m immediate`, then started (crash recovery; confirmed_flush regresses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_immediate_mid_stream() {
    let mut env = Env::start();
    single_fault("pg_crash_immediate", &mut env, true, async |env: &mut Env, _relay: &Process| {
        blocking(|| env.pg.crash_immediate()).expect("crash postgres");
        tokio::time::sleep(Duration::from_millis(300)).await;
        blocking(|| env.pg.start_again()).expect("start postgres again");
    })
    .await;
}

/// A 3-node NATS cluster with an R3 stream: the stream's leader is killed with SIGKILL mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_cluster_stream_leader_killed() {
    let label = "nats_leader_kill";
    let mut rng = Rng::seeded(label);
    let pg = Postgres::start().expect("start postgres");
    pg.psql(OUTBOX_DDL).expect("create outbox");
    let mut cluster = NatsCluster::start(3).expect("start nats cluster");
    let (pg_url, nats_url, stream) = (pg.url("postgres"), cluster.urls(), "OUTBOX".to_owned());
    let relay_cmd = |args: &[&str]| {
        let mut cmd = Command::new(walrelay_bin().expect("walrelay binary"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("WALRELAY_PG_URL", &pg_url)
            .env("WALRELAY_NATS_URL", &nats_url)
            .env("WALRELAY_STREAM", &stream)
            .env("WALRELAY_LOG", "info,walrelay_core=debug")
            .env("WALRELAY_PROGRESS_INTERVAL", "1s");
        cmd
    };
    let relay = Process::spawn(relay_cmd(&["run", "--stream-replicas", "3", "--publish-timeout", PUBLISH_TIMEOUT]))
        .expect("spawn relay");
    relay.wait_for_output("relay started", Duration::from_secs(60)).expect("relay started");
    let js = jetstream::new(async_nats::connect(cluster.url_list().as_slice()).await.expect("connect nats cluster"));
    assert_publish_mode(label, &js, &relay);
    let producers = Producers::start(&pg_url, &light_load(), &mut rng);
    wait_growth(&js, &stream, 0, 300, Duration::from_secs(60), &relay).await;
    tokio::time::sleep(rng.millis(0..=500)).await;
    let info = js.get_stream(&stream).await.expect("stream").info().await.expect("stream info").clone();
    assert_eq!(info.config.num_replicas, 3, "the relay created an R3 stream");
    let leader = info.cluster.and_then(|c| c.leader).expect("stream leader");
    let index = cluster.nodes.iter().position(|n| n.name() == leader).expect("leader is a node");
    eprintln!("{label}: killing stream leader {leader}");
    blocking(|| cluster.node(index).kill9());
    let at = producers.committed();
    producers.wait_committed(at + 300, Duration::from_secs(60)).await;
    let now = count(&js, &stream).await;
    wait_growth(&js, &stream, now, 300, Duration::from_secs(90), &relay).await;
    let new_leader = js
        .get_stream(&stream)
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .cluster
        .clone()
        .and_then(|c| c.leader);
    assert!(
        new_leader.is_some() && new_leader.as_deref() != Some(leader.as_str()),
        "a new leader took over: {new_leader:?}"
    );
    let logs = producers.finish(true).await;
    let sentinel = commit_sentinel_and_drain(&pg_url, &js, &stream, &[&relay]).await;
    assert_logs_match_table(&pg_url, &logs, &sentinel).await;
    let messages = messages_by_get(&js, &stream).await;
    verify(label, &messages, &logs, &sentinel, Expect::All);
    assert!(relay.exit_status().is_none(), "{label}: the relay exited:\n{}", relay.output_tail(40));
}

/// Two relays on one slot: the standby logs that it stands by, the active one is killed, the standby takes over
/// within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_relay_takes_over_after_active_is_killed() {
    let label = "standby_takeover";
    let mut rng = Rng::seeded(label);
    let env = Env::start();
    let active = env.spawn_run(&run_args(&[]));
    let standby = Process::spawn(env.walrelay(&["run", "--publish-timeout", PUBLISH_TIMEOUT])).expect("spawn standby");
    standby.wait_for_output("slot is in use, standing by", Duration::from_secs(30)).expect("standby waits");
    assert!(!standby.output().contains("relay started"), "the standby started while the slot was held");
    let js = env.js().await;
    let producers = Producers::start(&env.pg_url(), &light_load(), &mut rng);
    wait_growth(&js, &env.stream, 0, 300, Duration::from_secs(60), &active).await;
    tokio::time::sleep(rng.millis(0..=500)).await;
    blocking(|| active.kill9()).expect("kill -9 active relay");
    let killed = Instant::now();
    blocking(|| standby.wait_for_output("relay started", Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("{label}: the standby did not take over within 10 s: {e}"));
    eprintln!("{label}: standby took over after {:?}", killed.elapsed());
    assert!(standby.output().contains("slot acquired, taking over"));
    let now = count(&js, &env.stream).await;
    wait_growth(&js, &env.stream, now, 300, Duration::from_secs(60), &standby).await;
    finish_exact(label, &env, &js, producers, &standby).await;
}

/// The stream is deleted under a running relay started with `--no-create`: it exits 1 naming the remedy; following
/// the remedy (`walrelay setup`, run again) relays everything from the slot's position on, exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_deleted_with_no_create_exits_1_with_remedy() {
    let label = "stream_deleted_no_create";
    let mut rng = Rng::seeded(label);
    let env = Env::start();
    env.setup();
    let relay = env.spawn_run(&run_args(&["--no-create"]));
    let js = env.js().await;
    let producers = Producers::start(&env.pg_url(), &light_load(), &mut rng);
    wait_growth(&js, &env.stream, 0, 300, Duration::from_secs(60), &relay).await;
    tokio::time::sleep(rng.millis(0..=500)).await;
    let old = delete_stream_frozen(&js, &env.stream, &relay).await;
    let phase = producers.next_phase();
    let status = blocking(|| relay.wait_timeout(Duration::from_secs(30))).expect("wait relay");
    let status = status.unwrap_or_else(|| {
        panic!("{label}: relay still runs after the stream was deleted:\n{}", relay.output_tail(40))
    });
    assert_eq!(status.code(), Some(1), "{label}: exit code; output:\n{}", relay.output_tail(40));
    let out = relay.output();
    assert!(
        out.contains(&format!("stream {} does not exist and --no-create is set", env.stream))
            && out.contains("walrelay setup"),
        "{label}: the error names the stream and the remedy:\n{}",
        relay.output_tail(20)
    );
    assert_eq!(stream_count(&js, &env.stream).await, 0);
    // The remedy.
    blocking(|| env.setup());
    let relay = blocking(|| env.spawn_run(&run_args(&["--no-create"])));
    wait_growth(&js, &env.stream, 0, 300, Duration::from_secs(60), &relay).await;
    let logs = producers.finish(true).await;
    let sentinel = commit_sentinel_and_drain(&env.pg_url(), &js, &env.stream, &[&relay]).await;
    assert_logs_match_table(&env.pg_url(), &logs, &sentinel).await;
    verify(&format!("{label} (deleted stream)"), &old, &logs, &[], Expect::Prefix);
    let messages = stream_messages(&js, &env.stream).await;
    verify(
        label,
        &messages,
        &logs,
        &sentinel,
        Expect::SuffixFrom { from_phase: phase, extra: &sentinel, earlier: &old },
    );
}

/// The stream is deleted under a running relay without `--no-create`: it recreates the stream and carries on. The
/// new stream holds, per producer, a contiguous suffix of its commits starting at or before the slot's confirmed
/// position (what the deleted stream held beyond it is published again) and everything committed after the
/// deletion, exactly once, in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_deleted_without_no_create_is_recreated() {
    let label = "stream_deleted_recreate";
    let mut rng = Rng::seeded(label);
    let env = Env::start();
    let relay = env.spawn_run(&run_args(&[]));
    let js = env.js().await;
    let producers = Producers::start(&env.pg_url(), &light_load(), &mut rng);
    wait_growth(&js, &env.stream, 0, 300, Duration::from_secs(60), &relay).await;
    tokio::time::sleep(rng.millis(0..=500)).await;
    let out = relay.output().len();
    let old = delete_stream_frozen(&js, &env.stream, &relay).await;
    let phase = producers.next_phase();
    wait_for("the relay to recreate the stream", Duration::from_secs(30), || {
        let created = relay.output()[out..].contains("stream created");
        async move { created }
    })
    .await;
    wait_growth(&js, &env.stream, 0, 300, Duration::from_secs(60), &relay).await;
    let logs = producers.finish(true).await;
    let sentinel = commit_sentinel_and_drain(&env.pg_url(), &js, &env.stream, &[&relay]).await;
    assert_logs_match_table(&env.pg_url(), &logs, &sentinel).await;
    verify(&format!("{label} (deleted stream)"), &old, &logs, &[], Expect::Prefix);
    let messages = stream_messages(&js, &env.stream).await;
    verify(
        label,
        &messages,
        &logs,
        &sentinel,
        Expect::SuffixFrom { from_phase: phase, extra: &sentinel, earlier: &old },
    );
    assert!(relay.exit_status().is_none(), "{label}: the relay exited:\n{}", relay.output_tail(40));
}

/// The slot is dropped while the relay is stopped; starting it fails with exit 1 and a clear message, the slot is not
/// recreated, and the stream keeps exactly what was relayed before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_dropped_while_stopped_is_not_recreated() {
    let label = "slot_dropped";
    let mut rng = Rng::seeded(label);
    let env = Env::start();
    let relay = env.spawn_run(&run_args(&[]));
    let js = env.js().await;
    let load = Load { producers: 3, batch: 1..=20, per_producer: 300, pause_per_row: Duration::ZERO };
    let producers = Producers::start(&env.pg_url(), &load, &mut rng);
    let logs = producers.finish(false).await;
    let sentinel = commit_sentinel_and_drain(&env.pg_url(), &js, &env.stream, &[&relay]).await;
    relay.sigterm().expect("sigterm");
    let status = blocking(|| relay.wait_timeout(Duration::from_secs(30))).expect("wait").expect("relay stopped");
    assert_eq!(status.code(), Some(0), "{label}: a requested stop exits 0");
    env.pg.psql(&format!("SELECT pg_drop_replication_slot('{}')", env.slot)).expect("drop slot");
    // Committed while no slot exists: cannot be relayed, must not appear.
    let client = env.client().await;
    let lost = walrelay_tests::insert_events(&client, "after-drop", 0, 5).await;
    let again = Process::spawn(env.walrelay(&["run", "--publish-timeout", PUBLISH_TIMEOUT])).expect("spawn relay");
    let status = blocking(|| again.wait_timeout(Duration::from_secs(30))).expect("wait");
    let status =
        status.unwrap_or_else(|| panic!("{label}: relay still runs without its slot:\n{}", again.output_tail(40)));
    assert_eq!(status.code(), Some(1), "{label}: exit code; output:\n{}", again.output_tail(40));
    let out = again.output();
    assert!(
        out.contains(&format!("replication slot {} does not exist", env.slot)) && out.contains("walrelay setup"),
        "{label}: the error names the slot and the remedy:\n{}",
        again.output_tail(20)
    );
    let slots = env
        .pg
        .psql(&format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'", env.slot))
        .expect("slots");
    assert_eq!(slots, "0", "{label}: the slot was recreated");
    let messages = stream_messages(&js, &env.stream).await;
    assert!(
        messages.iter().all(|m| !lost.iter().any(|id| id == m.id())),
        "{label}: an event committed without a slot was published"
    );
    let client_rows: i64 =
        client.query_one("SELECT count(*) FROM outbox WHERE aggregate_id = 'after-drop'", &[]).await.unwrap().get(0);
    assert_eq!(client_rows, 5);
    verify(label, &messages, &logs, &sentinel, Expect::All);
}

// ---------------------------------------------------------------------------------------------------------------
// Durable beyond the broker's ack (design.md §4d, issue 18).

/// The stream's messages once it answers with exactly `n` of them (retrying while the server recovers).
async fn messages_once(
    js: &jetstream::Context,
    stream: &str,
    n: usize,
    timeout: Duration,
    relay: &Process,
) -> Vec<Stored> {
    let started = Instant::now();
    loop {
        let messages = messages_by_get(js, stream).await;
        if messages.len() == n {
            return messages;
        }
        assert!(
            messages.len() < n && started.elapsed() < timeout,
            "stream {stream} holds {} messages, waiting for {n}; relay output:\n{}",
            messages.len(),
            relay.output_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Copies a directory tree (`cp -a`).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let ok = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("cp").success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// A copy of a NATS server's store, as it was when taken.
struct StoreCopy(tempfile::TempDir);

impl StoreCopy {
    /// Stops the server (a clean stop flushes, so the copy is consistent), copies its store and starts it again.
    fn take(nats: &mut Nats) -> StoreCopy {
        let copy = StoreCopy(tempfile::tempdir().expect("snapshot dir"));
        blocking(|| {
            nats.stop();
            copy_tree(nats.store_dir(), &copy.store());
            nats.start_again()
        })
        .expect("nats up again");
        copy
    }

    /// The server crashes (kill -9) and comes back with this older store: what it acked since is lost, as after an
    /// OS crash before its sync.
    fn crash_back_to(&self, nats: &mut Nats) {
        blocking(|| {
            nats.kill9();
            std::fs::remove_dir_all(nats.store_dir()).expect("remove store");
            copy_tree(&self.store(), nats.store_dir());
            nats.start_again()
        })
        .expect("nats restarted from the older store");
    }

    /// The copied store directory.
    fn store(&self) -> std::path::PathBuf {
        self.0.path().join("store")
    }
}

/// A NATS server loses acked messages the way an OS crash before its sync does: its store goes back to a copy
/// older than the acks. With `--nats-sync-interval 10s` the slot has not passed them; the relay notices on its own
/// (no new event is written) and publishes them again from the slot after the surviving tail, so the stream is exact
/// again within the interval plus a few seconds; then new events follow exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_losing_acked_messages_is_healed_from_the_slot() {
    const INTERVAL: Duration = Duration::from_secs(10);
    let label = "lost_acked_tail";
    let mut env = Env::start();
    env.setup();
    let js = env.js().await;
    let client = env.client().await;
    let relay = env.spawn_run(&run_args(&["--nats-sync-interval", "10s"]));
    // A: 3 transactions, relayed; then a consistent copy of the store holding exactly A (a clean stop flushes).
    let mut a = Vec::new();
    for t in 0..3 {
        a.extend(walrelay_tests::insert_events(&client, "a", t * 10, 10).await);
    }
    walrelay_tests::wait_stream_count(&js, &env.stream, 30, Duration::from_secs(60)).await;
    let copy = StoreCopy::take(&mut env.nats);
    // B: 4 more transactions, acked by the server, which then crashes and comes back with the older store.
    let mut b = Vec::new();
    for t in 0..4 {
        b.extend(walrelay_tests::insert_events(&client, "b", t * 5, 5).await);
    }
    let before = messages_once(&js, &env.stream, 50, Duration::from_secs(60), &relay).await;
    let first_b = before[30].commit_lsn();
    let confirmed = env.confirmed_flush();
    assert!(confirmed < first_b, "{label}: the slot passed B ({confirmed:X} >= {first_b:X}) before its interval");
    copy.crash_back_to(&mut env.nats);
    let lost_at = Instant::now();
    assert_eq!(count(&js, &env.stream).await, 30, "{label}: the restored store holds A only");
    // Nothing more is written. Until the stream holds B again, the slot must not pass B.
    let healed = loop {
        let messages = messages_by_get(&js, &env.stream).await;
        let confirmed = env.confirmed_flush();
        let ids = walrelay_tests::ids(&messages);
        if ids.len() == 50 && ids[..] == walrelay_tests::ids(&before)[..] {
            break messages;
        }
        assert!(confirmed < first_b, "{label}: the slot passed lost events ({confirmed:X} >= {first_b:X})");
        assert!(ids.len() <= 50, "{label}: the stream holds {} messages: {ids:?}", ids.len());
        assert!(
            lost_at.elapsed() < INTERVAL + Duration::from_secs(30),
            "{label}: not healed after {:?}; stream holds {}; relay output:\n{}",
            lost_at.elapsed(),
            ids.len(),
            relay.output_tail(60)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("{label}: stream exact again {:?} after the loss", lost_at.elapsed());
    assert!(relay.output().contains("lost acked messages"), "{label}: the relay did not notice the loss itself");
    // Exact content: the healed stream is the stream before the loss, message for message (headers, payload).
    for (was, is) in before.iter().zip(&healed) {
        assert_eq!((&was.subject, &was.headers, &was.payload), (&is.subject, &is.headers, &is.payload), "{label}");
    }
    assert_eq!(walrelay_tests::ids(&healed), [a.clone(), b.clone()].concat());
    // New events follow exactly, and the slot passes everything once the interval is over (an idle outbox never
    // pins WAL).
    let c = walrelay_tests::insert_events(&client, "c", 0, 7).await;
    let all = messages_once(&js, &env.stream, 57, Duration::from_secs(60), &relay).await;
    assert_eq!(walrelay_tests::ids(&all), [a, b, c].concat());
    let current = env.current_lsn();
    wait_for(&format!("{label}: the slot to confirm past {current:X}"), INTERVAL + Duration::from_secs(60), || async {
        env.confirmed_flush() >= current
    })
    .await;
    assert!(relay.exit_status().is_none(), "{label}: the relay exited:\n{}", relay.output_tail(40));
}

/// kill -9 of the relay twice under a 30 s interval while producers run: each restart re-reads up to the interval
/// of WAL and skips what the stream holds; every event is in the stream once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_twice_under_a_30s_sync_interval() {
    let label = "relay_kill9_sync_interval";
    let mut rng = Rng::seeded(label);
    let env = Env::start();
    env.setup();
    let js = env.js().await;
    let args = run_args(&["--nats-sync-interval", "30s"]);
    let mut relay = env.spawn_run(&args);
    let producers = Producers::start(&env.pg_url(), &light_load(), &mut rng);
    wait_growth(&js, &env.stream, 0, 300, Duration::from_secs(60), &relay).await;
    for kill in 1..=2 {
        tokio::time::sleep(rng.millis(500..=2000)).await;
        blocking(|| relay.kill9()).expect("kill -9 relay");
        let held = stream_count(&js, &env.stream).await;
        eprintln!("{label}: kill {kill}, stream holds {held}, slot at {:X}", env.confirmed_flush());
        relay = blocking(|| env.spawn_run(&args));
        wait_growth(&js, &env.stream, held, 300, Duration::from_secs(60), &relay).await;
    }
    finish_exact(label, &env, &js, producers, &relay).await;
    assert!(relay.output().contains("relay started"), "{label}");
}

/// A loss larger than the slot holds: the stream loses events the slot had already passed (here: its store goes back
/// to a copy older than events confirmed after the interval). They cannot come from the slot again; the relay says
/// so, naming the lost sequence and the remedy (the replay slot of `--replay-retention` still holds their WAL), and
/// relays what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_beyond_the_slot_is_reported_with_its_remedy() {
    let label = "lost_beyond_slot";
    let mut env = Env::start();
    env.setup();
    let js = env.js().await;
    let client = env.client().await;
    // The store as it is before any event: the stream exists and is empty.
    let copy = StoreCopy::take(&mut env.nats);
    let relay = env.spawn_run(&run_args(&["--nats-sync-interval", "1s", "--replay-retention", "1h"]));
    let a = walrelay_tests::insert_events(&client, "a", 0, 10).await;
    let stored = messages_once(&js, &env.stream, 10, Duration::from_secs(60), &relay).await;
    let commit = stored[0].commit_lsn();
    wait_for(&format!("{label}: the slot to pass A"), Duration::from_secs(60), || async {
        env.confirmed_flush() > commit
    })
    .await;
    copy.crash_back_to(&mut env.nats);
    // The next event finds the stream shorter (the fence), the next session finds A gone.
    let b = walrelay_tests::insert_events(&client, "b", 0, 3).await;
    let after = messages_once(&js, &env.stream, 3, Duration::from_secs(60), &relay).await;
    assert_eq!(walrelay_tests::ids(&after), b, "{label}");
    let out = relay.output();
    assert!(out.contains("the stream lost events that the slot had already passed"), "{label}:\n{out}");
    assert!(out.contains("lost_sequence=10") && out.contains("walrelay replay --from"), "{label}:\n{out}");
    assert!(!a.is_empty());
}
