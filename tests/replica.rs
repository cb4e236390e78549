//! Replicas and failover on PostgreSQL 18 (design.md §4b, issue 10): a relay reading a hot standby's slot, peek,
//! replay and status against the standby, promotion of that standby with producers running, failover slots
//! synchronized to a standby that takes over after the primary crashed, and a promoted standby without the slot.
//!
//! Every test checks the stream's exact content against the outbox of the server that survived: the same set of
//! ids, each once, in commit order (strictly increasing `Outbox-Commit-Lsn`/`Outbox-Index`), and per producer in
//! the order it committed.
#![allow(clippy::unwrap_used, missing_docs)]

use std::{
    collections::{HashMap, HashSet},
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;
use walrelay_testkit::{walrelay_bin, Nats};
use walrelay_tests::{
    stream_count, stream_messages, walrelay_testkit::Postgres, walrelay_testkit::Process, Stored, OUTBOX_DDL,
};

use walrelay_tests::walrelay_testkit;

/// A PG18 primary with a streaming standby (physical slot `standby1`), the outbox on both, and a nats-server.
struct Replicas {
    primary: Postgres,
    standby: Postgres,
    nats: Nats,
}

impl Replicas {
    fn start(standby_settings: &[(&str, &str)]) -> Replicas {
        // Built (or found) before any timing starts.
        walrelay_bin().expect("walrelay binary");
        let primary = Postgres::builder().pg18().expect("pg18").start().expect("start pg18 primary");
        primary.psql(OUTBOX_DDL).expect("create outbox");
        let standby = primary.start_standby("standby1", standby_settings).expect("start standby");
        standby.wait_replayed(&primary, Duration::from_secs(30)).expect("outbox replayed");
        Replicas { primary, standby, nats: Nats::start().expect("start nats") }
    }

    /// Both servers, primary first, read-write only: the URL producers (and a failover relay) use.
    fn read_write_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
            self.primary.port(),
            self.standby.port()
        )
    }

    /// `walrelay <args>` against `pg_url`, with this environment's NATS.
    fn walrelay(&self, pg_url: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(walrelay_bin().expect("walrelay binary"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("WALRELAY_PG_URL", pg_url)
            .env("WALRELAY_NATS_URL", self.nats.url())
            .env("WALRELAY_NATS_SYNC_INTERVAL", "always")
            .env("WALRELAY_LOG", "info,walrelay_core=debug")
            .env("WALRELAY_PROGRESS_INTERVAL", "1s");
        cmd
    }

    fn run_ok(&self, pg_url: &str, args: &[&str]) -> String {
        let out = self.walrelay(pg_url, args).output().expect("run walrelay");
        assert!(out.status.success(), "walrelay {args:?} failed: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`Replicas::run_ok`], returning stdout and stderr together.
    fn run_ok_all(&self, pg_url: &str, args: &[&str]) -> String {
        let out = self.walrelay(pg_url, args).output().expect("run walrelay");
        assert!(out.status.success(), "walrelay {args:?} failed: {}", text(&out));
        text(&out)
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Blocking test-kit work off the async runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

// ---------------------------------------------------------------------------------------------------------------
// Producers: each commits batches of its own sequence numbers, reconnecting (to whichever server is read-write)
// when the connection breaks; a batch whose commit outcome is unknown is never reused, the survivor's table says.

struct Producers {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    handles: Vec<JoinHandle<()>>,
}

const INSERT: &str = "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
     SELECT 'order', $1, 'created', jsonb_build_object('producer', $1::text, 'seq', g) \
     FROM generate_series($2::bigint, $3::bigint) g ORDER BY g";

impl Producers {
    /// `n` producers writing `per_producer` rows each in transactions of 1..=`max_batch` rows, pausing `pause`
    /// after each.
    fn start(url: &str, n: usize, per_producer: u64, max_batch: u64, pause: Duration) -> Producers {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let handles = (0..n)
            .map(|i| {
                let (url, stop, committed) = (url.to_owned(), Arc::clone(&stop), Arc::clone(&committed));
                tokio::spawn(async move {
                    let name = format!("p{i}");
                    let mut client = connect_retrying(&url).await;
                    let mut seq = 0u64;
                    let mut failing_since: Option<Instant> = None;
                    while seq < per_producer && !stop.load(Ordering::SeqCst) {
                        let batch = 1 + (seq * 7 + i as u64 * 13) % max_batch;
                        let batch = batch.min(per_producer - seq);
                        let last = (seq + batch) as i64 - 1;
                        let result = async {
                            let tx = client.transaction().await?;
                            tx.execute(INSERT, &[&name, &(seq as i64), &last]).await?;
                            tx.commit().await
                        }
                        .await;
                        seq += batch;
                        match result {
                            Ok(()) => {
                                failing_since = None;
                                committed.fetch_add(batch, Ordering::Relaxed);
                                if !pause.is_zero() {
                                    tokio::time::sleep(pause).await;
                                }
                            }
                            Err(err) => {
                                let since = *failing_since.get_or_insert_with(Instant::now);
                                assert!(
                                    since.elapsed() < Duration::from_secs(90),
                                    "{name}: postgres keeps failing: {err}"
                                );
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                client = connect_retrying(&url).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Producers { stop, committed, handles }
    }

    fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    async fn wait_committed(&self, n: u64, timeout: Duration) {
        walrelay_tests::wait_counter(&self.committed, n, timeout).await;
    }

    async fn finish(self) {
        for h in self.handles {
            h.await.expect("producer task");
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.finish().await;
    }
}

async fn connect_retrying(url: &str) -> tokio_postgres::Client {
    let started = Instant::now();
    loop {
        match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                return client;
            }
            Err(err) => {
                assert!(started.elapsed() < Duration::from_secs(90), "postgres unreachable: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The stream against the surviving server's outbox.

/// Every outbox row of `pg` as (id, producer, seq).
fn table_rows(pg: &Postgres) -> Vec<(String, String, u64)> {
    let out = pg.psql("SELECT id, payload->>'producer', payload->>'seq' FROM outbox").expect("read outbox");
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut parts = l.split('|');
            let id = parts.next().unwrap().to_owned();
            let producer = parts.next().unwrap().to_owned();
            let seq = parts.next().unwrap().parse().unwrap();
            (id, producer, seq)
        })
        .collect()
}

/// The stream holds exactly the rows of the survivor's outbox: same ids, each once, in commit order, and per
/// producer in increasing sequence (each producer commits its sequence in order).
fn assert_exact(label: &str, messages: &[Stored], rows: &[(String, String, u64)]) {
    let stored: Vec<&str> = messages.iter().map(Stored::id).collect();
    let unique: HashSet<&str> = stored.iter().copied().collect();
    assert_eq!(unique.len(), stored.len(), "{label}: the stream holds duplicates");
    let expected: HashSet<&str> = rows.iter().map(|(id, _, _)| id.as_str()).collect();
    let missing: Vec<&&str> = expected.difference(&unique).take(5).collect();
    let extra: Vec<&&str> = unique.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{label}: stream and outbox differ: {} stored, {} rows; missing e.g. {missing:?}, not in the outbox e.g. {extra:?}",
        stored.len(),
        rows.len()
    );
    let position = |m: &Stored| (m.commit_lsn(), m.header("Outbox-Index").parse::<u32>().unwrap());
    for pair in messages.windows(2) {
        assert!(
            position(&pair[0]) < position(&pair[1]),
            "{label}: not in commit order at sequence {}: {:?} then {:?}",
            pair[1].sequence,
            position(&pair[0]),
            position(&pair[1])
        );
    }
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    for m in messages {
        let json = m.json();
        let (producer, seq) = (json["producer"].as_str().unwrap().to_owned(), json["seq"].as_u64().unwrap());
        if let Some(prev) = last_seq.insert(producer.clone(), seq) {
            assert!(seq > prev, "{label}: producer {producer} out of order: {seq} after {prev}");
        }
    }
    eprintln!("{label}: stream exact, {} events", stored.len());
}

async fn wait_stream_rows(
    js: &async_nats::jetstream::Context,
    stream: &str,
    n: u64,
    timeout: Duration,
    relay: &Process,
) {
    let started = Instant::now();
    loop {
        let c = stream_count(js, stream).await;
        assert!(c <= n, "stream holds {c} messages, more than the {n} rows");
        if c == n {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out: stream holds {c} of {n}\n--- relay ---\n{}",
            relay.output_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn status_json(env: &Replicas, pg_url: &str) -> serde_json::Value {
    let out = env.run_ok(pg_url, &["status", "--json"]);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"))
}

fn lsn_of(v: &serde_json::Value) -> u64 {
    walrelay_tests::lsn(v.as_str().unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------------------------

/// Standby slot: setup on an idle primary within 10 s; peek, replay and status against the standby; 4 producers'
/// 10,000 events exactly once in commit order; an idle outbox does not pin WAL while another table writes 100 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_slot_relays_exactly_and_does_not_pin_wal() {
    let env = blocking(|| Replicas::start(&[])).await;
    let standby_url = env.standby.url("postgres");
    let primary_url = env.primary.url("postgres");

    // setup against the standby on an idle primary: the publication goes to the primary, the slot creation is
    // hurried along with pg_log_standby_snapshot() there.
    let started = Instant::now();
    let out = env.run_ok_all(&standby_url, &["setup", "--primary-url", &primary_url]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "setup against the standby took {took:?}: {out}");
    assert!(out.contains("publication walrelay: created") && out.contains("slot walrelay: created"), "{out}");
    eprintln!("setup against the standby took {took:?}");
    assert_eq!(env.primary.psql("SELECT count(*) FROM pg_publication WHERE pubname = 'walrelay'").unwrap(), "1");
    assert_eq!(env.primary.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'").unwrap(), "0");
    // Idempotent, and without --primary-url an existing publication is fine.
    let again = env.run_ok(&standby_url, &["setup"]);
    assert!(again.contains("publication walrelay: exists") && again.contains("slot walrelay: exists"), "{again}");

    // status --json against the standby: the §4b fields.
    let status = status_json(&env, &standby_url);
    assert_eq!(status["in_recovery"], true, "{status}");
    assert_eq!(status["conflicting"], false, "{status}");
    assert!(status["invalidation_reason"].is_null(), "{status}");
    assert_eq!(status["failover"], false, "{status}");
    assert_eq!(status["synced"], false, "{status}");
    let replayed = walrelay_tests::lsn(&env.standby.psql("SELECT pg_last_wal_replay_lsn()").unwrap());
    let current = lsn_of(&status["current_wal_lsn"]);
    assert!(current <= replayed && current > 0, "current_wal_lsn {status} vs replay {replayed:X}");
    assert_eq!(status["lag_bytes"].as_u64().unwrap(), current - lsn_of(&status["confirmed_flush_lsn"]), "{status}");

    // peek and replay against the standby, before anything is relayed: exactly the pending events, no write on the
    // standby (it cannot write) and none on the primary.
    let client = walrelay_tests::connect(&primary_url).await;
    let mut first = Vec::new();
    for t in 0..3i64 {
        let rows = client
            .query(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                 SELECT 'order', 'early', 'created', jsonb_build_object('producer', 'early', 'seq', $1::bigint * 2 + g) \
                 FROM generate_series(0, 1) g ORDER BY g RETURNING id::text",
                &[&t],
            )
            .await
            .unwrap();
        first.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    let primary_wal_before = env.primary.psql("SELECT pg_current_wal_lsn()").unwrap();
    {
        let (standby, primary) = (&env.standby, &env.primary);
        standby.wait_replayed(primary, Duration::from_secs(30)).unwrap();
    }
    let peek = env.run_ok(&standby_url, &["peek", "--json", "--limit", "100"]);
    let lines: Vec<serde_json::Value> = peek.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<&str> = lines.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, first.iter().map(String::as_str).collect::<Vec<_>>(), "peek against the standby: {peek}");
    let second_txn = lines[2]["commit_lsn"].as_str().unwrap().to_owned();
    let replay = env.run_ok(&standby_url, &["replay", "--from", &second_txn, "--stdout"]);
    let replayed_ids: Vec<String> = replay
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(replayed_ids, first[2..].to_vec(), "replay --from {second_txn} against the standby: {replay}");
    assert_eq!(
        env.primary.psql("SELECT pg_current_wal_lsn()").unwrap(),
        primary_wal_before,
        "peek/replay against the standby wrote on the primary"
    );
    assert_eq!(
        env.standby.psql("SELECT count(*) FROM pg_replication_slots").unwrap(),
        "1",
        "peek/replay left a slot copy behind"
    );

    // The relay reads the standby; 4 producers commit 10,000 events on the primary.
    let relay = blocking({
        let env_url = standby_url.clone();
        let cmd = env.walrelay(&env_url, &["run"]);
        move || {
            let p = Process::spawn(cmd).expect("spawn run");
            p.wait_for_output("relay started", Duration::from_secs(60)).expect("relay started");
            p
        }
    })
    .await;
    let producers = Producers::start(&primary_url, 4, 2500, 50, Duration::ZERO);
    producers.finish().await;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    let rows = table_rows(&env.primary);
    assert_eq!(rows.len(), 10_006);
    wait_stream_rows(&js, "OUTBOX", rows.len() as u64, Duration::from_secs(120), &relay).await;
    let messages = stream_messages(&js, "OUTBOX").await;
    assert_exact("standby slot", &messages, &rows);
    assert_eq!(messages.iter().take(6).map(|m| m.id().to_owned()).collect::<Vec<_>>(), first);

    // Idle outbox, 100 MB written to another table on the primary: the standby slot follows within 15 s.
    env.primary.psql("CREATE TABLE filler (id bigint, pad text)").unwrap();
    let before = walrelay_tests::lsn(&env.primary.psql("SELECT pg_current_wal_lsn()").unwrap());
    for _ in 0..4 {
        env.primary
            .psql("INSERT INTO filler SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 100000) g")
            .unwrap();
    }
    let written = walrelay_tests::lsn(&env.primary.psql("SELECT pg_current_wal_lsn()").unwrap()) - before;
    assert!(written >= 100_000_000, "only {written} bytes of WAL written");
    let load_stopped = Instant::now();
    let mut last = serde_json::Value::Null;
    loop {
        let status = status_json(&env, &standby_url);
        let lag = status["lag_bytes"].as_u64().unwrap();
        let caught_up = lsn_of(&status["current_wal_lsn"]) >= before + written;
        if caught_up && lag < 1_000_000 {
            eprintln!("standby slot lag {lag} bytes {:?} after {written} bytes of WAL", load_stopped.elapsed());
            break;
        }
        last = status;
        assert!(
            load_stopped.elapsed() < Duration::from_secs(15),
            "standby slot lag not under 1 MB 15 s after the load: {last}\n--- relay ---\n{}",
            relay.output_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = last;
    // Nothing pending any more.
    let peek = env.run_ok(&standby_url, &["peek"]);
    assert!(peek.contains("no pending events"), "{peek}");
    relay.sigterm().unwrap();
    assert!(relay.wait_timeout(Duration::from_secs(30)).unwrap().is_some_and(|s| s.success()));
    assert_eq!(stream_count(&js, "OUTBOX").await, rows.len() as u64);
}

/// Promotion with producers running: the primary is stopped, the standby promoted; the producers continue on it,
/// the relay reading the standby's slot carries on on the promoted server; the stream is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promotion_of_the_standby_the_relay_reads() {
    let mut env = blocking(|| Replicas::start(&[])).await;
    let standby_url = env.standby.url("postgres");
    env.run_ok(&standby_url, &["setup", "--primary-url", &env.primary.url("postgres")]);
    let relay = blocking({
        let cmd = env.walrelay(&standby_url, &["run"]);
        move || {
            let p = Process::spawn(cmd).expect("spawn run");
            p.wait_for_output("relay started", Duration::from_secs(60)).expect("relay started");
            p
        }
    })
    .await;
    let producers = Producers::start(&env.read_write_url(), 4, 1_000_000, 20, Duration::from_millis(20));
    producers.wait_committed(2_000, Duration::from_secs(60)).await;
    // A fast shutdown sends all WAL to the standby before the primary exits.
    env.primary.stop().unwrap();
    env.standby.promote().unwrap();
    let at_promotion = producers.committed();
    producers.wait_committed(at_promotion + 2_000, Duration::from_secs(90)).await;
    producers.stop().await;
    let rows = table_rows(&env.standby);
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    wait_stream_rows(&js, "OUTBOX", rows.len() as u64, Duration::from_secs(120), &relay).await;
    let messages = stream_messages(&js, "OUTBOX").await;
    assert_exact("promotion", &messages, &rows);
    assert!(rows.len() as u64 >= at_promotion + 2_000);
    // (Seen on 18.6: the standby's walsender streams on across the promotion, so the relay needs no new session.)
    relay.sigterm().unwrap();
    assert!(relay.wait_timeout(Duration::from_secs(30)).unwrap().is_some_and(|s| s.success()));
}

/// A promoted standby without a synchronized copy of the slot: the relay (on a two-host read-write URL, no
/// --failover) reconnects to it after the primary crashed and exits 1 naming the cause and the remedy; a new `run`
/// against it does the same; no slot is created there (that would skip every event committed since).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_standby_without_the_slot_exits_1() {
    let mut env = blocking(|| Replicas::start(&[])).await;
    let url = env.read_write_url();
    env.run_ok(&url, &["setup"]);
    let relay = blocking({
        let cmd = env.walrelay(&url, &["run"]);
        move || {
            let p = Process::spawn(cmd).expect("spawn run");
            p.wait_for_output("relay started", Duration::from_secs(60)).expect("relay started");
            p
        }
    })
    .await;
    let client = walrelay_tests::connect(&env.primary.url("postgres")).await;
    walrelay_tests::insert_events(&client, "p0", 0, 10).await;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    wait_stream_rows(&js, "OUTBOX", 10, Duration::from_secs(60), &relay).await;
    env.primary.crash_immediate().unwrap();
    env.standby.promote().unwrap();
    let status = blocking({
        let relay = relay;
        move || (relay.wait_timeout(Duration::from_secs(60)).unwrap(), relay.output())
    })
    .await;
    let (status, all) = status;
    assert_eq!(status.and_then(|s| s.code()), Some(1), "the relay did not exit 1 on the promoted standby: {all}");
    for needed in [
        "replication slot walrelay does not exist",
        "was promoted (timeline 2)",
        "not synchronized",
        "--failover",
        "sync_replication_slots",
    ] {
        assert!(all.contains(needed), "{needed:?} missing: {all}");
    }
    let out = env.walrelay(&env.standby.url("postgres"), &["run"]).output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("was promoted (timeline 2)") && all.contains("not synchronized"), "{all}");
    assert_eq!(env.standby.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'").unwrap(), "0");
    assert_eq!(stream_count(&js, "OUTBOX").await, 10);
}

/// Failover slot: the relay on the primary with --failover and a two-host read-write URL, a standby syncing slots
/// (sync_replication_slots = on) and gating the relay (the primary's synchronized_standby_slots names its physical
/// slot). The primary is crashed mid-stream and the standby promoted: the relay reconnects to it and continues from
/// the synced slot; the stream holds exactly the rows the new primary holds, once each, in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_slot_survives_a_primary_crash() {
    let mut env = blocking(|| Replicas::start(&[("sync_replication_slots", "on")])).await;
    env.primary.psql("ALTER SYSTEM SET synchronized_standby_slots = 'standby1'; SELECT pg_reload_conf();").unwrap();
    let url = env.read_write_url();
    let out = env.run_ok(&url, &["setup", "--failover"]);
    assert!(out.contains("slot walrelay: created"), "{out}");
    assert_eq!(
        env.primary.psql("SELECT failover FROM pg_replication_slots WHERE slot_name = 'walrelay'").unwrap(),
        "t"
    );
    let status = status_json(&env, &url);
    assert_eq!((status["failover"].as_bool(), status["synced"].as_bool()), (Some(true), Some(false)), "{status}");
    let doctor = text(&env.walrelay(&url, &["doctor", "--failover"]).output().unwrap());
    assert!(
        doctor.contains("ok   slot_failover") && doctor.contains("ok   synchronized_standby_slots: standby1"),
        "{doctor}"
    );

    let relay = blocking({
        let cmd = env.walrelay(&url, &["run", "--failover"]);
        move || {
            let p = Process::spawn(cmd).expect("spawn run");
            p.wait_for_output("relay started", Duration::from_secs(60)).expect("relay started");
            p
        }
    })
    .await;
    let producers = Producers::start(&url, 4, 1_000_000, 20, Duration::from_millis(20));
    producers.wait_committed(2_000, Duration::from_secs(60)).await;
    // The standby's slot sync worker copies the slot; the copy survives a promotion only once it is persisted
    // (temporary = false), which needs the primary's slot to have moved past the standby's first copy of it.
    let sql = "SELECT synced AND NOT temporary FROM pg_replication_slots WHERE slot_name = 'walrelay'";
    walrelay_testkit::wait_until("the slot to be synchronized to the standby", Duration::from_secs(60), || {
        (env.standby.psql(sql).ok()? == "t").then_some(())
    })
    .unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    let before_crash = stream_count(&js, "OUTBOX").await;
    assert!(before_crash > 0, "nothing relayed before the crash");
    env.primary.crash_immediate().unwrap();
    env.standby.promote().unwrap();
    let at_promotion = producers.committed();
    producers.wait_committed(at_promotion + 2_000, Duration::from_secs(90)).await;
    producers.stop().await;
    let rows = table_rows(&env.standby);
    wait_stream_rows(&js, "OUTBOX", rows.len() as u64, Duration::from_secs(120), &relay).await;
    let messages = stream_messages(&js, "OUTBOX").await;
    assert_exact("failover", &messages, &rows);
    relay.wait_for_output("postgres server changed since the last session", Duration::from_secs(5)).unwrap();
    let output = relay.output();
    assert!(output.contains("timeline=2"), "{output}");
    relay.sigterm().unwrap();
    assert!(relay.wait_timeout(Duration::from_secs(30)).unwrap().is_some_and(|s| s.success()));
}

/// Against a standby without --primary-url: a missing publication exits 1 with the SQL to run on the primary;
/// slot creation waits, saying every 10 s what for and that pg_log_standby_snapshot() on the primary ends the wait.
/// doctor checks the standby's prerequisites; --failover on a standby exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_without_primary_url_setup_and_doctor() {
    let env = blocking(|| Replicas::start(&[])).await;
    let standby_url = env.standby.url("postgres");
    let out = env.walrelay(&standby_url, &["setup"]).output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("run on the primary: CREATE PUBLICATION \"walrelay\" FOR TABLE \"public\".\"outbox\" WITH (publish = 'insert');"), "{all}");
    assert!(all.contains("--primary-url"), "{all}");
    // doctor's remedy says where to run it (design.md §4g).
    let out = env.walrelay(&standby_url, &["doctor"]).output().unwrap();
    let all = text(&out);
    assert!(
        all.contains("fail publication: walrelay does not exist; remedy: on the primary run: CREATE PUBLICATION"),
        "{all}"
    );

    let out = env.walrelay(&standby_url, &["setup", "--failover"]).output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("--failover") && all.contains("cannot be created on a standby"), "{all}");

    env.primary.psql("CREATE PUBLICATION walrelay FOR TABLE outbox WITH (publish = 'insert')").unwrap();
    env.standby.wait_replayed(&env.primary, Duration::from_secs(30)).unwrap();
    // With replay paused no running-xacts record can arrive: the wait is certain, and its message observable.
    env.standby.psql("SELECT pg_wal_replay_pause()").unwrap();
    let setup = Process::spawn(env.walrelay(&standby_url, &["setup"])).unwrap();
    setup.wait_for_output("SELECT pg_log_standby_snapshot();", Duration::from_secs(15)).unwrap();
    assert!(setup.output().contains("waiting for the primary's next running-xacts record"), "{}", setup.output());
    assert!(setup.exit_status().is_none(), "setup ended while replay was paused: {}", setup.output());
    env.standby.psql("SELECT pg_wal_replay_resume()").unwrap();
    env.primary.psql("SELECT pg_log_standby_snapshot()").unwrap();
    let status = setup.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(status.is_some_and(|s| s.success()), "setup did not finish: {}", setup.output());
    assert!(setup.output().contains("slot walrelay: created"), "{}", setup.output());

    let out = env.walrelay(&standby_url, &["doctor"]).output().unwrap();
    let all = text(&out);
    assert!(all.contains("ok   standby:"), "{all}");
    assert!(all.contains("ok   hot_standby_feedback: on"), "{all}");
    assert!(all.contains("ok   primary_slot_name: standby1"), "{all}");
    assert!(all.contains("warn primary_wal_level: not checked") && all.contains("remedy: pass --primary-url"), "{all}");
    let out = env.walrelay(&standby_url, &["doctor", "--primary-url", &env.primary.url("postgres")]).output().unwrap();
    let all = text(&out);
    assert!(all.contains("ok   primary_wal_level: logical on the primary"), "{all}");

    // A least-privilege --primary-url role may not call pg_log_standby_snapshot() (design.md §4g): doctor names the
    // GRANT; setup says so once, with the GRANT, and waits as without --primary-url.
    env.primary.psql("CREATE ROLE relay LOGIN REPLICATION").unwrap();
    env.standby.wait_replayed(&env.primary, Duration::from_secs(30)).unwrap();
    let as_relay = |url: String| url.replacen("postgres@", "relay@", 1);
    let (relay_standby, relay_primary) = (as_relay(standby_url.clone()), as_relay(env.primary.url("postgres")));
    let grant = "GRANT EXECUTE ON FUNCTION pg_log_standby_snapshot() TO \"relay\";";
    let out = env.walrelay(&relay_standby, &["doctor", "--primary-url", &relay_primary]).output().unwrap();
    let all = text(&out);
    assert!(all.contains("warn primary_snapshot: relay may not call pg_log_standby_snapshot()"), "{all}");
    assert!(all.contains(&format!("remedy: on the primary: {grant}")), "{all}");
    env.standby.psql("SELECT pg_wal_replay_pause()").unwrap();
    let setup = Process::spawn(env.walrelay(
        &relay_standby,
        &["setup", "--slot", "relay_slot", "--primary-url", &relay_primary, "--log", "info"],
    ))
    .unwrap();
    setup.wait_for_output(grant, Duration::from_secs(30)).unwrap();
    let said = setup.output();
    assert_eq!(said.matches("cannot call pg_log_standby_snapshot()").count(), 1, "{said}");
    assert!(said.contains("permission denied") && !said.contains("lets walrelay do that"), "{said}");
    env.standby.psql("SELECT pg_wal_replay_resume()").unwrap();
    env.primary.psql("SELECT pg_log_standby_snapshot()").unwrap();
    let status = setup.wait_timeout(Duration::from_secs(30)).unwrap();
    assert!(status.is_some_and(|s| s.success()), "setup did not finish: {}", setup.output());
    assert!(setup.output().contains("slot relay_slot: created"), "{}", setup.output());
    env.standby.psql("SELECT pg_drop_replication_slot('relay_slot')").unwrap();

    env.standby.psql("ALTER SYSTEM SET hot_standby_feedback = off; SELECT pg_reload_conf();").unwrap();
    walrelay_testkit::wait_until("hot_standby_feedback off", Duration::from_secs(10), || {
        (env.standby.psql("SHOW hot_standby_feedback").ok()? == "off").then_some(())
    })
    .unwrap();
    let out = env.walrelay(&standby_url, &["doctor"]).output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("fail hot_standby_feedback: off") && all.contains("ALTER SYSTEM SET hot_standby_feedback = on"),
        "{all}"
    );
}

/// On a PostgreSQL 15 standby, logical decoding is impossible: doctor and setup say that it needs 16+.
#[test]
fn pg15_standby_needs_16() {
    walrelay_bin().expect("walrelay binary");
    let primary = Postgres::start().expect("start pg15");
    if primary.version().unwrap() >= 16 {
        eprintln!("the default PostgreSQL is 16+; nothing to check");
        return;
    }
    primary.psql(OUTBOX_DDL).unwrap();
    primary.psql("CREATE PUBLICATION walrelay FOR TABLE outbox WITH (publish = 'insert')").unwrap();
    let standby = primary.start_standby("standby1", &[]).unwrap();
    standby.wait_replayed(&primary, Duration::from_secs(30)).unwrap();
    let nats = Nats::start().unwrap();
    let walrelay = |args: &[&str]| {
        Command::new(walrelay_bin().unwrap())
            .args(args)
            .env_clear()
            .env("WALRELAY_PG_URL", standby.url("postgres"))
            .env("WALRELAY_NATS_URL", nats.url())
            .output()
            .unwrap()
    };
    let out = walrelay(&["doctor"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("fail standby:") && all.contains("needs PostgreSQL 16 or later"), "{all}");
    let out = walrelay(&["setup"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("logical decoding on a standby needs PostgreSQL 16 or later"), "{all}");
}

/// `--failover` on an existing slot alters it (ALTER_REPLICATION_SLOT ... FAILOVER) on PostgreSQL 17+; below 17 it
/// exits 1 naming the version requirement.
#[test]
fn failover_flag_alters_an_existing_slot_and_needs_17() {
    walrelay_bin().expect("walrelay binary");
    let nats = Nats::start().unwrap();
    let walrelay = |pg: &Postgres, args: &[&str]| {
        Command::new(walrelay_bin().unwrap())
            .args(args)
            .env_clear()
            .env("WALRELAY_PG_URL", pg.url("postgres"))
            .env("WALRELAY_NATS_URL", nats.url())
            .output()
            .unwrap()
    };
    let pg18 = Postgres::builder().pg18().unwrap().start().unwrap();
    pg18.psql(OUTBOX_DDL).unwrap();
    let out = walrelay(&pg18, &["setup"]);
    assert!(out.status.success(), "{}", text(&out));
    let failover = "SELECT failover FROM pg_replication_slots WHERE slot_name = 'walrelay'";
    assert_eq!(pg18.psql(failover).unwrap(), "f");
    let out = walrelay(&pg18, &["setup", "--failover"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(pg18.psql(failover).unwrap(), "t", "{}", text(&out));

    let pg15 = Postgres::start().unwrap();
    if pg15.version().unwrap() >= 17 {
        return;
    }
    pg15.psql(OUTBOX_DDL).unwrap();
    let out = walrelay(&pg15, &["setup", "--failover"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("--failover (failover slots) needs PostgreSQL 17 or later"), "{all}");
    assert_eq!(pg15.psql("SELECT count(*) FROM pg_replication_slots").unwrap(), "0", "{all}");
}
