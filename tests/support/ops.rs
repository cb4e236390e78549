//! Helpers of the operator-command tests (`ops_*.rs`, `runbook.rs`, `nats_auth.rs`), which drive walrelay
//! synchronously: fresh servers with an outbox table in database `app`, the real binary run to completion with a
//! deadline, and the stream's messages read back (through the crate's one stream reader).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use walrelay_testkit::{wait_until, Nats, Postgres, Process};

use crate::{slot_confirmed_flush, walrelay_command, Stored, OUTBOX_DDL};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;
pub type Error = Box<dyn std::error::Error>;

/// How long one walrelay command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// How long to wait for the relay to deliver.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// A finished walrelay command.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The stdout lines parsed as JSON.
    pub fn json_lines(&self) -> Result<Vec<serde_json::Value>, Error> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("not JSON ({e}): {l}").into()))
            .collect()
    }
}

/// Servers, a database with the outbox table, and how to call walrelay against them.
pub struct Env {
    pub pg: Postgres,
    pub nats: Nats,
    pub db: String,
    pub pg_url: String,
    pub nats_url: String,
}

impl Env {
    /// Fresh PostgreSQL and NATS, database `app` with `public.outbox`.
    pub fn start() -> Result<Env, Error> {
        let pg = Postgres::start()?;
        let nats = Nats::start()?;
        Env::with(pg, nats)
    }

    /// Uses the given servers.
    pub fn with(pg: Postgres, nats: Nats) -> Result<Env, Error> {
        pg.create_database("app")?;
        pg.psql_db("app", OUTBOX_DDL)?;
        let pg_url = pg.url("app");
        let nats_url = nats.url();
        Ok(Env { pg, nats, db: "app".into(), pg_url, nats_url })
    }

    /// SQL in the app database.
    pub fn sql(&self, sql: &str) -> Result<String, Error> {
        Ok(self.pg.psql_db(&self.db, sql)?)
    }

    /// A walrelay command with the servers' URLs in the environment.
    pub fn command(&self, args: &[&str]) -> Result<Command, Error> {
        let mut cmd = walrelay_command(args, &self.pg_url, &self.nats_url)?;
        cmd.env("WALRELAY_LOG", "warn").env("WALRELAY_PROGRESS_INTERVAL", "1h");
        Ok(cmd)
    }

    /// Runs a walrelay command to completion (at most [`COMMAND_TIMEOUT`]).
    pub fn walrelay(&self, args: &[&str]) -> Result<Output, Error> {
        run(self.command(args)?)
    }

    /// Starts `walrelay run` with extra arguments.
    pub fn start_relay(&self, args: &[&str]) -> Result<Process, Error> {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        let mut cmd = self.command(&all)?;
        cmd.env("WALRELAY_LOG", "info");
        Ok(Process::spawn(cmd)?)
    }

    /// Inserts one transaction of events (`event_type`, `payload` JSON text); returns their ids in insert order.
    pub fn insert_txn(&self, events: &[(&str, &str)]) -> Result<Vec<String>, Error> {
        let values: Vec<String> = events
            .iter()
            .enumerate()
            .map(|(i, (event_type, payload))| {
                format!("('order', 'o-{i}', '{event_type}', '{payload}'::jsonb, '{{\"trace\": \"t-{i}\"}}'::jsonb)")
            })
            .collect();
        // One statement with a multi-row VALUES keeps insert order and is one transaction.
        let out = self.sql(&format!(
            "WITH ins AS (INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload, headers) \
             VALUES {} RETURNING id, created_at, ctid) SELECT id FROM ins",
            values.join(", ")
        ))?;
        Ok(out.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect())
    }

    /// The slot's `confirmed_flush_lsn`.
    pub fn confirmed_flush(&self, slot: &str) -> Result<String, Error> {
        Ok(slot_confirmed_flush(&self.pg, slot)?)
    }

    /// Names of all replication slots, sorted.
    pub fn slots(&self) -> Result<Vec<String>, Error> {
        let out = self.sql("SELECT slot_name FROM pg_replication_slots ORDER BY slot_name")?;
        Ok(out.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect())
    }

    /// Messages of a stream (empty when it does not exist), in sequence order.
    pub fn stream_messages(&self, stream: &str) -> Result<Vec<Stored>, Error> {
        self.with_js(|js| async move { Ok(crate::stream_messages(&js, stream).await) })
    }

    /// Waits until the stream holds at least `n` messages; returns them all.
    pub fn wait_for_messages(&self, stream: &str, n: usize) -> Result<Vec<Stored>, Error> {
        wait_until(&format!("{n} messages in {stream}"), DELIVERY_TIMEOUT, || {
            let count = self.with_js(|js| async move { Ok(crate::stream_count(&js, stream).await) }).ok()?;
            (count >= n as u64).then_some(())
        })?;
        self.stream_messages(stream)
    }

    /// Starts `walrelay run --replay-retention 1h <extra>` and waits until it made the replay slot.
    pub fn start_relay_with_history(&self, extra: &[&str]) -> Result<Process, Error> {
        let relay = self.start_relay(&[&["--replay-retention", "1h"], extra].concat())?;
        wait_until("replay slot", Duration::from_secs(30), || {
            self.slots().ok().filter(|s| s.iter().any(|n| n == "walrelay_replay"))
        })?;
        Ok(relay)
    }

    /// Makes the (inactive) slot `walrelay` lost: `max_slot_wal_keep_size` of 1MB, then WAL switches and
    /// checkpoints until Postgres removed the WAL it needs.
    pub fn lose_slot(&self) -> TestResult {
        self.sql("CREATE TABLE IF NOT EXISTS churn (id bigserial PRIMARY KEY, pad text)")?;
        self.sql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")?;
        self.sql("SELECT pg_reload_conf()")?;
        wait_until("slot wal_status = lost", Duration::from_secs(60), || {
            self.sql("INSERT INTO churn (pad) VALUES ('x')").ok()?;
            self.sql("SELECT pg_switch_wal()").ok()?;
            self.sql("CHECKPOINT").ok()?;
            let s = self.sql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walrelay'").ok()?;
            (s.trim() == "lost").then_some(())
        })?;
        Ok(())
    }

    /// Deletes a stream.
    pub fn delete_stream(&self, stream: &str) -> Result<(), Error> {
        self.with_js(|js| async move {
            js.delete_stream(stream).await?;
            Ok(())
        })
    }

    /// Runs `f` with a JetStream context on these servers, on a runtime of its own (these tests are synchronous).
    fn with_js<'a, T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce(async_nats::jetstream::Context) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>> + 'a,
    {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let client = async_nats::connect(self.nats_url.as_str()).await?;
            f(async_nats::jetstream::new(client)).await
        })
    }
}

/// Stops a relay with SIGTERM and asserts it exits 0.
pub fn stop_relay(relay: Process) -> TestResult {
    relay.sigterm()?;
    let status = relay.wait_timeout(Duration::from_secs(30))?.ok_or("relay did not stop")?;
    assert!(status.success(), "relay exited with {status}: {}", relay.output_tail(30));
    Ok(())
}

/// Runs a command to completion with a deadline, capturing stdout and stderr separately.
pub fn run(mut cmd: Command) -> Result<Output, Error> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut out_pipe = child.stdout.take().ok_or("no stdout")?;
    let mut err_pipe = child.stderr.take().ok_or("no stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let status = wait_until("walrelay command to finish", COMMAND_TIMEOUT, || child.try_wait().ok().flatten());
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.into());
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output { code: status.code().unwrap_or(-1), stdout, stderr })
}

/// Whether `s` looks like an LSN in Postgres `X/Y` upper-hex form.
pub fn is_lsn(s: &str) -> bool {
    s.split_once('/').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && (a.chars().chain(b.chars())).all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))
    })
}
