//! The bench's throwaway servers and the relay under test, run as a child process.
//!
//! In: nothing (PostgreSQL and nats-server come from the test kit, design.md §5). Out: an outbox table, a
//! publication, slots, the stream `BENCH`, and [`Relay`]: `walrelay run` (this very executable) pointed at them, in
//! its own process so that its CPU time and memory are its own (read from `/proc`, see [`super::procfs`]).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context as _;
use async_nats::jetstream;
use walrelay_core::{
    config::{NatsBatch, RawSettings, Settings},
    sink::stream,
    source::{self, publication, slot, PgHost},
};
use walrelay_testkit::{Nats, Postgres, Process};

/// The stream the relay writes.
pub(super) const STREAM: &str = "BENCH";
/// The relay's slot for the backlog drain and the live run.
pub(super) const MAIN_SLOT: &str = "walrelay";

/// How long a walsender may take to exit after its session ended.
const SLOT_RELEASE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a relay may take to stop after SIGTERM (under valgrind it is slow).
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// Running servers with the outbox, the publication, the main slot and the stream in place.
pub(super) struct Lab {
    pg: Postgres,
    nats: Nats,
    /// SQL connection for writing events and reading slots.
    pub control: tokio_postgres::Client,
    /// The server `control` is connected to (replication sessions go there too).
    pub host: PgHost,
    /// Settings of the relay under test (slot [`MAIN_SLOT`], stream [`STREAM`], defaults otherwise).
    pub settings: Settings,
    /// A NATS connection for reading the stream.
    pub nats_client: async_nats::Client,
    /// JetStream on that connection.
    pub js: jetstream::Context,
    /// The walrelay executable run as the relay.
    pub relay: PathBuf,
}

impl Lab {
    /// Starts PostgreSQL and nats-server and creates the outbox, the publication, [`MAIN_SLOT`] and [`STREAM`]
    /// (the stream configuration `run` would create).
    pub async fn start(
        max_in_flight: usize,
        relay: PathBuf,
        nats_server: Option<PathBuf>,
        global: &Settings,
    ) -> anyhow::Result<Self> {
        let (pg, nats) = tokio::task::spawn_blocking(|| -> anyhow::Result<(Postgres, Nats)> {
            let mut nats = Nats::builder();
            if let Some(bin) = nats_server {
                nats = nats.bin(bin);
            }
            Ok((Postgres::start().context("starting PostgreSQL")?, nats.start().context("starting nats-server")?))
        })
        .await??;
        pg.psql(walrelay_core::mapping::outbox::DEFAULT_TABLE_DDL)?;
        let raw = RawSettings {
            pg_url: pg.url("postgres"),
            nats_url: nats.url(),
            slot: MAIN_SLOT.into(),
            stream: STREAM.into(),
            max_in_flight,
            cloudevents: global.cloudevents.as_str().into(),
            nats_batch: global.nats_batch.as_str().into(),
            ..RawSettings::default()
        };
        let settings = Settings::validate(raw)?;
        let (control, host) = source::connect_host(&settings.pg_url).await?;
        publication::ensure(&control, &settings.publication, &settings.table).await?;
        let (nats_client, js) = stream::connect(&settings).await?;
        stream::ensure(&js, &settings, true).await?;
        let lab = Self { pg, nats, control, host, settings, nats_client, js, relay };
        lab.create_slot(MAIN_SLOT).await?;
        Ok(lab)
    }

    /// Creates a pgoutput slot (as `setup` does): it sees everything committed from now on.
    pub async fn create_slot(&self, name: &str) -> anyhow::Result<()> {
        let server = slot::server(&self.control).await?;
        let opts = slot::CreateOptions { failover: false, primary: None };
        slot::create(&self.control, &server, name, opts).await?;
        Ok(())
    }

    /// Drops a slot that is no longer read, so it does not hold WAL or decoding work, once the walsender of the
    /// session that read it has exited.
    pub async fn drop_slot(&self, name: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + SLOT_RELEASE_TIMEOUT;
        while let Some(pid) = self.walsender_pid(name).await? {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "slot {name} still held by walsender {pid} after {SLOT_RELEASE_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slot::drop(&self.control, name).await?;
        Ok(())
    }

    /// The pid of the walsender serving `slot`, while a session holds it.
    pub async fn walsender_pid(&self, slot: &str) -> anyhow::Result<Option<u32>> {
        let row = self
            .control
            .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await?;
        Ok(row.and_then(|r| r.get::<_, Option<i32>>(0)).and_then(|pid| u32::try_from(pid).ok()))
    }

    /// Messages in `stream` (0 while it does not exist): one stream info request.
    pub async fn stream_count(&self, stream: &str) -> u64 {
        match self.js.get_stream(stream).await {
            Ok(s) => s.cached_info().state.messages,
            Err(_) => 0,
        }
    }

    /// The nats-server's pid.
    pub fn nats_pid(&self) -> Option<u32> {
        self.nats.pid()
    }

    /// `SHOW server_version` and the NATS server's version.
    pub async fn versions(&self) -> anyhow::Result<(String, String)> {
        let row = self.control.query_one("SHOW server_version", &[]).await?;
        Ok((row.get(0), self.nats_client.server_info().version))
    }

    /// Starts `walrelay run` on `slot` and the stream [`STREAM`] as a child process, through `wrapper` (e.g.
    /// valgrind) when given. The child gets every option as a flag and none of this process's `WALRELAY_*`
    /// variables, so nothing from the caller's environment changes what is measured.
    pub fn spawn_relay(&self, slot: &str, wrapper: &[String]) -> anyhow::Result<Relay> {
        let exe = &self.relay;
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("WALRELAY_") {
                cmd.env_remove(name);
            }
        }
        let (pg_url, nats_url) = (self.pg.url("postgres"), self.nats.url());
        cmd.args(["run", "--pg-url", &pg_url, "--nats-url", &nats_url, "--slot", slot, "--stream", STREAM]).args([
            "--publication",
            &self.settings.publication,
            "--progress-interval",
            "1h",
            "--max-in-flight",
            &self.settings.max_in_flight.to_string(),
            "--log",
            // The session's start line says which publish mode it runs (PublishMode).
            "warn,walrelay_core::relay=info",
        ]);
        // Only when asked for: a relay executable older than --cloudevents still runs the bench without it.
        if self.settings.cloudevents != walrelay_core::mapping::cloudevents::Mode::Off {
            cmd.args(["--cloudevents", self.settings.cloudevents.as_str()]);
        }
        if self.settings.nats_batch == NatsBatch::Off {
            cmd.args(["--nats-batch", self.settings.nats_batch.as_str()]);
        }
        let process = Process::spawn(cmd).with_context(|| format!("starting {}", exe.display()))?;
        Ok(Relay { process })
    }

    /// Closes the bench's connections, then stops the servers and removes their directories.
    pub async fn stop(self) {
        let Self { pg, nats, control, nats_client, js, .. } = self;
        drop((control, js));
        let _ = nats_client.drain().await;
        let _ = tokio::task::spawn_blocking(move || drop((pg, nats))).await;
    }
}

/// `walrelay run` in a child process; dropping it kills the process.
pub(super) struct Relay {
    process: Process,
}

impl Relay {
    /// Its pid (valgrind's when run under it: the same process).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The publish mode its session runs, from its `relay started` line (a build without fast batch does not name
    /// one: per-message acks).
    pub fn publish_mode(&self) -> PublishMode {
        if self.process.output_tail(200).contains("publish_mode=\"fast-batch\"") {
            PublishMode::FastBatch
        } else {
            PublishMode::PerMessage
        }
    }

    /// An error with the relay's last output if it exited.
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        match self.process.exit_status() {
            None => Ok(()),
            Some(status) => anyhow::bail!("the relay exited ({status}); its output:\n{}", self.process.output_tail(30)),
        }
    }

    /// Asks it to stop (SIGTERM) and waits until it has exited with status 0.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.process.sigterm()?;
        let process = self.process;
        tokio::task::spawn_blocking(move || {
            let status = process.wait_timeout(STOP_TIMEOUT)?;
            match status {
                Some(status) if status.success() => Ok(()),
                Some(status) => anyhow::bail!("the relay exited with {status}; output:\n{}", process.output_tail(30)),
                None => anyhow::bail!("the relay did not stop within {STOP_TIMEOUT:?} of SIGTERM"),
            }
        })
        .await?
    }
}

/// How the relay publishes to JetStream (`--nats-batch`, sink::batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum PublishMode {
    /// One publish ack per message.
    PerMessage,
    /// Fast-batch publishing (nats-server 2.14+, ADR-50).
    FastBatch,
}

impl std::fmt::Display for PublishMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PerMessage => "per-message acks",
            Self::FastBatch => "fast batch",
        })
    }
}

/// A file path for the bench's own output (callgrind files) in the temporary directory.
pub(super) fn temp_path(name: &str) -> std::path::PathBuf {
    Path::new(&std::env::temp_dir()).join(format!("walrelay-bench-{}-{name}", std::process::id()))
}
