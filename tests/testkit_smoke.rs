//! Smoke tests of the test kit itself: real PostgreSQL and nats-server instances start, survive the faults other
//! tests inject (restart, immediate stop, SIGKILL, SIGSTOP), and leave no process or directory behind.

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use walrelay_testkit::{KitError, Nats, NatsCluster, Postgres, Process};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn assert_gone(pid: u32, dir: &Path) {
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} still exists");
    assert!(!dir.exists(), "{} still exists", dir.display());
}

/// The first bytes a NATS server sends to a new client (`INFO {...}`), if any arrive within `timeout`.
fn nats_greeting(port: u16, timeout: Duration) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn postgres_survives_restarts_and_crashes() -> TestResult {
    let started = Instant::now();
    let mut pg = Postgres::start()?;
    eprintln!("postgres started in {:?} on port {}", started.elapsed(), pg.port());
    assert!(pg.version()? >= 15);
    assert_eq!(pg.psql("SHOW wal_level")?, "logical");
    assert_eq!(pg.psql("SHOW synchronous_commit")?, "on");
    assert!(pg.url("app").starts_with("postgres://postgres@127.0.0.1:"));
    pg.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")?;
    pg.create_database("other")?;
    assert_eq!(pg.psql_db("other", "SELECT current_database()")?, "other");
    let err = pg.psql("SELECT * FROM missing");
    assert!(matches!(err, Err(KitError::Psql { ref stderr, .. }) if stderr.contains("missing")), "{err:?}");

    let port = pg.port();
    pg.restart_fast()?;
    pg.psql("INSERT INTO t VALUES (2)")?;
    pg.crash_immediate()?;
    assert!(pg.psql_timeout("postgres", "SELECT 1", Duration::from_secs(3)).is_err());
    pg.start_again()?;
    pg.psql("INSERT INTO t VALUES (3)")?;
    let started = Instant::now();
    pg.kill9()?;
    eprintln!("kill9 took {:?}", started.elapsed());
    pg.start_again()?;
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t")?, "1,2,3");
    assert!(pg.log_tail(50).contains("database system was interrupted"), "{}", pg.log_tail(50));

    let (pid, dir) = (pg.pid().ok_or("no pid")?, pg.dir().to_path_buf());
    drop(pg);
    assert_gone(pid, &dir);
    Ok(())
}

#[test]
fn postgres_pause_blocks_queries_until_resume() -> TestResult {
    let pg = Postgres::start()?;
    pg.pause()?;
    let started = Instant::now();
    let paused = pg.psql_timeout("postgres", "SELECT 1", Duration::from_secs(3));
    assert!(paused.is_err(), "query answered while paused: {paused:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    pg.resume()?;
    assert_eq!(pg.psql("SELECT 1")?, "1");
    Ok(())
}

#[test]
fn postgres_builder_overrides_settings_and_drop_cleans_up_after_kill() -> TestResult {
    let mut pg = Postgres::builder().setting("wal_level", "replica").setting("cluster_name", "it's").start()?;
    assert_eq!(pg.psql("SHOW wal_level")?, "replica");
    assert_eq!(pg.psql("SHOW cluster_name")?, "it's");
    let (pid, dir) = (pg.pid().ok_or("no pid")?, pg.dir().to_path_buf());
    pg.pause()?;
    pg.kill9()?;
    drop(pg);
    assert_gone(pid, &dir);
    Ok(())
}

#[test]
fn nats_stops_restarts_and_pauses() -> TestResult {
    let started = Instant::now();
    let mut nats = Nats::builder().max_payload(4 * 1024 * 1024).start()?;
    eprintln!("nats-server started in {:?}", started.elapsed());
    let port = nats.port();
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
    let info = nats_greeting(port, Duration::from_secs(2)).ok_or("no INFO")?;
    assert!(info.contains("\"max_payload\":4194304") && info.contains("\"jetstream\":true"), "{info}");

    nats.stop();
    assert!(nats.pid().is_none());
    assert!(nats_greeting(port, Duration::from_millis(500)).is_none());
    nats.start_again()?;
    assert_eq!(nats.port(), port);
    nats.restart()?;

    nats.pause()?;
    let greeting = nats_greeting(port, Duration::from_millis(500));
    assert!(greeting.is_none(), "paused server answered: {greeting:?}");
    nats.resume()?;
    assert!(nats_greeting(port, Duration::from_secs(2)).is_some());

    nats.kill9();
    nats.start_again()?;
    assert!(nats.monitor("/jsz")?.contains("\"config\""));

    let (pid, dir) = (nats.pid().ok_or("no pid")?, nats.dir().to_path_buf());
    drop(nats);
    assert_gone(pid, &dir);
    Ok(())
}

#[tokio::test]
async fn nats_cluster_forms_and_survives_a_killed_node() -> TestResult {
    use async_nats::jetstream;

    let started = Instant::now();
    let mut cluster = NatsCluster::start(3)?;
    eprintln!("3-node cluster formed in {:?}", started.elapsed());
    assert_eq!(cluster.urls().split(',').count(), 3);
    assert_eq!(cluster.node(2).name(), "n3");

    let client = async_nats::connect(cluster.url_list().as_slice()).await?;
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "SMOKE".into(),
        subjects: vec!["smoke.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await?;
    js.publish("smoke.1", "one".into()).await?.await?;

    cluster.node(0).kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt =
            async { js.publish("smoke.2", "two".into()).await?.await.map_err(Box::<dyn std::error::Error>::from) };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(_)) => break,
            _ if Instant::now() < deadline => continue,
            other => return Err(format!("publish after kill9 of n1 kept failing: {other:?}").into()),
        }
    }
    cluster.node(0).start_again()?;
    cluster.wait_formed(Duration::from_secs(30))?;
    let mut stream = js.get_stream("SMOKE").await?;
    assert_eq!(stream.info().await?.state.messages, 2);
    Ok(())
}

#[test]
fn process_captures_output_and_takes_signals() -> TestResult {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo ready; echo oops >&2; exec sleep 30"]);
    let process = Process::spawn(cmd)?;
    process.wait_for_output("oops", Duration::from_secs(5))?;
    assert!(process.output().contains("ready"));
    assert_eq!(process.wait_timeout(Duration::from_millis(100))?, None);
    process.sigterm()?;
    let status = process.wait_timeout(Duration::from_secs(5))?.ok_or("still running")?;
    assert!(!status.success());

    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo bye; exit 3"]);
    let process = Process::spawn(cmd)?;
    let err = process.wait_for_output("never printed", Duration::from_secs(5));
    assert!(matches!(err, Err(KitError::Exited { ref output_tail, .. }) if output_tail.contains("bye")), "{err:?}");
    Ok(())
}

#[test]
fn walrelay_binary_is_built() -> TestResult {
    let bin = walrelay_testkit::walrelay_bin()?;
    assert!(bin.is_file(), "{}", bin.display());
    let output = Command::new(&bin).arg("--help").output()?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

#[test]
fn missing_binaries_are_named_with_an_install_hint() {
    let err = Nats::builder().bin("/nonexistent/nats-server").start();
    assert!(
        matches!(err, Err(KitError::BinaryNotFound { ref install, .. }) if install.contains("apt-get install nats-server")),
        "{err:?}"
    );
    let err = Postgres::builder().bin_dir("/nonexistent").start();
    assert!(
        matches!(err, Err(KitError::BinaryNotFound { ref install, .. }) if install.contains("apt-get install postgresql")),
        "{err:?}"
    );
}

#[test]
fn pg18_standby_streams_stops_and_promotes() -> TestResult {
    let started = Instant::now();
    let mut primary = Postgres::builder().pg18()?.start()?;
    assert_eq!(primary.version()?, 18);
    primary.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")?;
    let mut standby = primary.start_standby("standby1", &[])?;
    eprintln!("pg18 primary + standby in {:?}", started.elapsed());
    assert!(standby.in_recovery()?);
    assert!(!primary.in_recovery()?);
    assert_eq!(standby.psql("SHOW hot_standby_feedback")?, "on");
    assert_eq!(standby.psql("SHOW wal_level")?, "logical");
    assert_eq!(standby.psql("SHOW primary_slot_name")?, "standby1");
    assert!(standby.psql("SHOW primary_conninfo")?.contains("dbname=postgres"));
    primary.psql("INSERT INTO t VALUES (2)")?;
    standby.wait_replayed(&primary, Duration::from_secs(30))?;
    assert_eq!(standby.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t")?, "1,2");
    assert!(standby.psql("INSERT INTO t VALUES (9)").is_err(), "a standby is read-only");
    // Either side stops and starts again, fast or as a crash.
    standby.crash_immediate()?;
    primary.psql("INSERT INTO t VALUES (3)")?;
    standby.start_again()?;
    standby.wait_replayed(&primary, Duration::from_secs(30))?;
    primary.stop()?;
    standby.promote()?;
    assert!(!standby.in_recovery()?);
    standby.psql("INSERT INTO t VALUES (4)")?;
    assert_eq!(standby.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t")?, "1,2,3,4");
    primary.start_again()?;
    assert_eq!(primary.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t")?, "1,2,3");
    eprintln!("pg18 standby test took {:?}", started.elapsed());
    Ok(())
}
