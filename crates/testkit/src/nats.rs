//! Throwaway nats-server instances with JetStream: a config file, a store directory and a log in a temporary
//! directory, a free client port and a free monitoring port on `127.0.0.1`, and the faults walrelay's tests inject
//! (stop, SIGKILL, SIGSTOP). Readiness is the monitoring endpoint `/healthz`, which also checks JetStream
//! (<https://docs.nats.io/running-a-nats-service/nats_admin/monitoring#health>).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::command;
use crate::{locate, logfile, net, proctree, wait_until, KitError};

/// How long to wait for a node to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful stop may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a first start is retried on other ports when a chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// The clustering part of a node's configuration (set by [`crate::NatsCluster`]).
#[derive(Debug, Clone)]
pub(crate) struct ClusterSpec {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) routes: Vec<u16>,
}

/// Configures a throwaway nats-server before [`NatsBuilder::start`].
#[derive(Debug, Clone, Default)]
pub struct NatsBuilder {
    bin: Option<PathBuf>,
    max_payload: Option<u64>,
    server_name: Option<String>,
    extra_config: Vec<String>,
    pub(crate) cluster: Option<ClusterSpec>,
}

impl NatsBuilder {
    /// Sets the server's `max_payload` (largest message in bytes; the default is 1 MiB, the limit 64 MiB).
    pub fn max_payload(mut self, bytes: u64) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// Uses this nats-server executable instead of searching for one (see [`crate::locate::nats_server`]).
    pub fn bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.bin = Some(path.into());
        self
    }

    /// Sets the `server_name` (default `walrelay-test-<port>`).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Appends raw text to the generated configuration file (nats-server config syntax), e.g.
    /// `"max_pending: 128MB"`. Later settings override earlier ones.
    pub fn extra_config(mut self, text: impl Into<String>) -> Self {
        self.extra_config.push(text.into());
        self
    }

    /// Starts the server; returns once it accepts clients and JetStream is healthy.
    pub fn start(self) -> Result<Nats, KitError> {
        let mut nats = self.prepare()?;
        let mut attempt = 1;
        loop {
            match nats.spawn().and_then(|()| nats.wait_ready()) {
                Err(err) if attempt < PORT_ATTEMPTS && nats.port_was_taken() => {
                    tracing::debug!(port = nats.port, error = %err, "nats port taken, retrying on another");
                    nats.port = net::free_port();
                    nats.monitor_port = net::free_port();
                    nats.write_config()?;
                    attempt += 1;
                }
                result => break result?,
            }
        }
        tracing::debug!(port = nats.port, name = %nats.name, "nats-server started");
        Ok(nats)
    }

    /// Creates the directory and configuration without starting the server.
    pub(crate) fn prepare(self) -> Result<Nats, KitError> {
        let bin = locate::nats_server(self.bin.as_deref())?;
        let dir = tempfile::Builder::new()
            .prefix("walrelay-nats-")
            .tempdir()
            .map_err(|err| KitError::io("cannot create a temporary directory for nats-server", err))?;
        let port = net::free_port();
        let nats = Nats {
            bin,
            port,
            monitor_port: net::free_port(),
            name: self.server_name.clone().unwrap_or_else(|| format!("walrelay-test-{port}")),
            config_path: dir.path().join("nats.conf"),
            log_path: dir.path().join("nats.log"),
            store_dir: dir.path().join("store"),
            builder: self,
            child: None,
            paused: AtomicBool::new(false),
            dir,
        };
        nats.write_config()?;
        Ok(nats)
    }
}

/// A nats-server with JetStream in a temporary directory, listening on `127.0.0.1` on a free port.
///
/// Dropping it kills the server and removes its store, also when the test panics.
#[derive(Debug)]
pub struct Nats {
    bin: PathBuf,
    port: u16,
    monitor_port: u16,
    name: String,
    config_path: PathBuf,
    log_path: PathBuf,
    store_dir: PathBuf,
    builder: NatsBuilder,
    child: Option<Child>,
    paused: AtomicBool,
    // Last, so the directory goes only after the server is killed by `Drop`.
    dir: TempDir,
}

impl Nats {
    /// Starts a single server with JetStream and default settings.
    pub fn start() -> Result<Nats, KitError> {
        NatsBuilder::default().start()
    }

    /// A builder to set `max_payload`, the executable or extra configuration.
    pub fn builder() -> NatsBuilder {
        NatsBuilder::default()
    }

    /// The client URL: `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", net::HOST, self.port)
    }

    /// The client port (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (`/varz`, `/jsz`, `/healthz`, ...).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The `server_name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The temporary directory holding the configuration, log and store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The JetStream store directory (kept across restarts).
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The generated configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        logfile::tail(&self.log_path, lines)
    }

    /// `GET path` on the monitoring port; the body when the status is 200.
    pub fn monitor(&self, path: &str) -> Result<String, KitError> {
        let response = net::http_get(self.monitor_port, path)
            .map_err(|err| KitError::io(format!("GET {path} from {}", self.name), err))?;
        if response.status == 200 {
            Ok(response.body)
        } else {
            Err(KitError::CommandFailed {
                command: format!("GET {path} from {}", self.name),
                status: format!("HTTP {}", response.status),
                stderr: response.body,
            })
        }
    }

    /// Stops the server gracefully (SIGTERM, then SIGKILL after 10 s) and waits until it has exited.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.paused.swap(false, Ordering::SeqCst) {
            let _ = proctree::send(child.id(), Signal::SIGCONT);
        }
        let _ = proctree::send(child.id(), Signal::SIGTERM);
        if command::wait_deadline(&mut child, STOP_TIMEOUT, "nats-server to stop").is_err() {
            tracing::warn!(name = %self.name, "nats-server ignored SIGTERM, killed it");
        }
    }

    /// Starts the server again after [`stop`](Self::stop) or [`kill9`](Self::kill9), with the same port,
    /// configuration and store, and waits until it is healthy. Does nothing when it is running.
    pub fn start_again(&mut self) -> Result<(), KitError> {
        if let Some(child) = self.child.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(());
            }
            self.child = None;
        }
        self.spawn()?;
        self.wait_ready()
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again).
    pub fn restart(&mut self) -> Result<(), KitError> {
        self.stop();
        self.start_again()
    }

    /// SIGKILLs the server and waits until it has exited.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Freezes the server with SIGSTOP (returns once it is stopped): connections stay open but nothing answers.
    pub fn pause(&self) -> Result<(), KitError> {
        let pid = self.pid().ok_or_else(|| self.not_running())?;
        self.paused.store(true, Ordering::SeqCst);
        proctree::stop(pid)
    }

    /// Undoes [`pause`](Self::pause) with SIGCONT.
    pub fn resume(&self) -> Result<(), KitError> {
        let pid = self.pid().ok_or_else(|| self.not_running())?;
        self.paused.store(false, Ordering::SeqCst);
        proctree::send(pid, Signal::SIGCONT)
    }

    fn not_running(&self) -> KitError {
        KitError::NotRunning { server: format!("nats-server {} on port {}", self.name, self.port) }
    }

    fn write_config(&self) -> Result<(), KitError> {
        let b = &self.builder;
        let host = net::HOST;
        let mut text = format!(
            "# generated by walrelay-testkit\nserver_name: \"{}\"\nlisten: \"{host}:{}\"\nhttp: \"{host}:{}\"\n\
             jetstream {{\n  store_dir: \"{}\"\n}}\n",
            self.name,
            self.port,
            self.monitor_port,
            self.store_dir.display()
        );
        if let Some(bytes) = b.max_payload {
            text.push_str(&format!("max_payload: {bytes}\n"));
        }
        if let Some(cluster) = &b.cluster {
            let routes: Vec<String> =
                cluster.routes.iter().map(|port| format!("\"nats-route://{host}:{port}\"")).collect();
            text.push_str(&format!(
                "cluster {{\n  name: \"{}\"\n  listen: \"{host}:{}\"\n  routes: [{}]\n}}\n",
                cluster.name,
                cluster.port,
                routes.join(", ")
            ));
        }
        for extra in &b.extra_config {
            text.push_str(extra);
            text.push('\n');
        }
        std::fs::write(&self.config_path, text)
            .map_err(|err| KitError::io(format!("cannot write {}", self.config_path.display()), err))
    }

    pub(crate) fn spawn(&mut self) -> Result<(), KitError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|err| KitError::io(format!("cannot open {}", self.log_path.display()), err))?;
        let log_err = log.try_clone().map_err(|err| KitError::io("cannot duplicate the log file handle", err))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c").arg(&self.config_path).stdin(Stdio::null()).stdout(log).stderr(log_err);
        let child =
            cmd.spawn().map_err(|err| KitError::io(format!("cannot run `{}`", command::describe(&cmd)), err))?;
        self.child = Some(child);
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Waits until the client port accepts connections and `/healthz` answers 200; kills the server on failure.
    pub(crate) fn wait_ready(&mut self) -> Result<(), KitError> {
        let mut exited = None;
        let (port, monitor_port) = (self.port, self.monitor_port);
        let ready = wait_until("nats-server to become healthy", START_TIMEOUT, || {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                exited = Some(status);
                return Some(false);
            }
            let healthy = net::port_is_open(port)
                && net::http_get(monitor_port, "/healthz").is_ok_and(|response| response.status == 200);
            healthy.then_some(true)
        });
        let reason = match (ready, exited) {
            (Ok(true), _) => return Ok(()),
            (_, Some(status)) => format!("nats-server exited ({status})"),
            (Err(err), None) => err.to_string(),
            (Ok(false), None) => "nats-server exited".to_owned(),
        };
        self.kill9();
        Err(KitError::StartFailed {
            server: format!("nats-server {} on port {}", self.name, self.port),
            reason,
            log: self.log_path.clone(),
            log_tail: self.log_tail(30),
        })
    }

    fn port_was_taken(&self) -> bool {
        self.log_tail(10).contains("address already in use")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill9();
    }
}
