//! Throwaway PostgreSQL clusters: `initdb` into a temporary directory, a postmaster configured for logical
//! replication on a free loopback port, and the faults walrelay's tests inject (fast restart, immediate stop,
//! SIGKILL, SIGSTOP).
//!
//! The postmaster is spawned directly as a child of the test process (not through `pg_ctl start`, which would
//! orphan it): that way it is always reaped, a killed postmaster never lingers as a zombie whose pid blocks the next
//! start, and its output goes straight to `postgres.log` in the directory. `pg_ctl` is still used to stop it, so
//! shutdown modes behave exactly as documented in <https://www.postgresql.org/docs/current/app-pg-ctl.html> and
//! <https://www.postgresql.org/docs/current/server-shutdown.html>.
//!
//! When the test process runs as root, initdb and the server run as the `postgres` system user (initdb refuses
//! root), or `nobody` where there is no `postgres` user, in a directory under `/tmp` owned by that user. That user
//! must reach the binaries: [`crate::locate`] hands out their directory with links resolved.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Uid, User};
use tempfile::TempDir;

mod standby;

use crate::command::{self, RunAs};
use crate::{locate, logfile, net, proctree, wait_until, KitError};

/// How long to wait for the postmaster to accept connections (crash recovery included).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `initdb` and `pg_ctl` may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// The hard limit on one [`Postgres::psql`] call (its connection attempt gives up after 10 s).
pub const PSQL_TIMEOUT: Duration = Duration::from_secs(600);
/// The database superuser created by initdb.
pub const SUPERUSER: &str = "postgres";
/// The unprivileged user the server runs as when we are root and there is no `postgres` user.
const FALLBACK_USER: &str = "nobody";
/// How many times a first start is retried on another port when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// Configures a throwaway PostgreSQL server before [`PostgresBuilder::start`].
#[derive(Debug, Clone, Default)]
pub struct PostgresBuilder {
    bin_dir: Option<PathBuf>,
    settings: Vec<(String, String)>,
    tls: Option<ServerTls>,
    hba: Option<Vec<String>>,
}

/// TLS material for a server (PEM texts), written into its data directory: `ssl = on` with this certificate and
/// key, and `ssl_ca_file` (the CA that client certificates must chain to) when given.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server certificate (chain), PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// CA certificates for client certificates, PEM.
    pub client_ca_pem: Option<String>,
}

impl PostgresBuilder {
    /// Sets a `postgresql.conf` parameter, overriding the kit's default for it (e.g. `("wal_level", "replica")`).
    /// The value is written quoted, so any type of parameter works.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Turns TLS on with the given certificate and key (see [`ServerTls`]).
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Replaces `pg_hba.conf` with these lines, after one `local all all trust` line that the kit's own
    /// [`Postgres::psql`] uses (it then connects through the Unix socket, so TCP clients see only `lines`).
    pub fn hba(mut self, lines: &[&str]) -> Self {
        self.hba = Some(lines.iter().map(|l| (*l).to_owned()).collect());
        self
    }

    /// Uses the PostgreSQL binaries in `dir` instead of searching for them (see [`crate::locate::pg_bin_dir`]).
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Uses PostgreSQL 18 (see [`crate::locate::pg18_bin_dir`]) instead of the default installation, for what
    /// needs 16+ (logical decoding on a standby) or 17+ (failover slots).
    pub fn pg18(self) -> Result<Self, KitError> {
        Ok(self.bin_dir(locate::pg18_bin_dir()?))
    }

    /// Runs initdb and starts the server; returns once it accepts connections.
    pub fn start(self) -> Result<Postgres, KitError> {
        let mut pg = Postgres::new(locate::pg_bin_dir(self.bin_dir.as_deref())?)?;
        pg.initdb(&self.settings)?;
        if let Some(tls) = &self.tls {
            pg.write_tls(tls)?;
        }
        if let Some(lines) = &self.hba {
            let mut text = String::from("local all all trust\n");
            for line in lines {
                text.push_str(line);
                text.push('\n');
            }
            pg.write_owned("pg_hba.conf", &text, 0o600)?;
            pg.psql_host = pg.dir.path().display().to_string();
        }
        pg.spawn_first()?;
        Ok(pg)
    }
}

impl Postgres {
    /// A server object in a fresh directory on a free port, not yet initialised or started.
    fn new(bin_dir: PathBuf) -> Result<Postgres, KitError> {
        let psql = locate::psql(&bin_dir)?;
        let run_as = server_user()?;
        let dir = make_dir(run_as)?;
        Ok(Postgres {
            data_dir: dir.path().join("data"),
            log_path: dir.path().join("postgres.log"),
            bin_dir,
            psql,
            port: net::free_port(),
            run_as,
            postmaster: None,
            paused: AtomicBool::new(false),
            psql_host: net::HOST.to_owned(),
            dir,
        })
    }

    /// The first start of a new server, retried on another port when the chosen one was taken meanwhile.
    fn spawn_first(&mut self) -> Result<(), KitError> {
        let pg = self;
        let mut attempt = 1;
        loop {
            match pg.spawn_and_wait() {
                Err(err) if attempt < PORT_ATTEMPTS && pg.port_was_taken() => {
                    tracing::debug!(port = pg.port, error = %err, "postgres port taken, retrying on another");
                    pg.port = net::free_port();
                    pg.append_settings(&[("port".into(), pg.port.to_string())])?;
                    attempt += 1;
                }
                result => break result?,
            }
        }
        tracing::debug!(port = pg.port, data_dir = %pg.data_dir.display(), "postgres started");
        Ok(())
    }
}

/// The user to run initdb and the server as: when we are root, `postgres` (Debian's package creates it), else
/// `nobody` (a machine with only the servers `scripts/install-servers` installs has no `postgres` user); else
/// ourselves (`None`).
fn server_user() -> Result<Option<RunAs>, KitError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let mut reasons = Vec::new();
    for name in [SUPERUSER, FALLBACK_USER] {
        match User::from_name(name) {
            Ok(Some(user)) => return Ok(Some(RunAs { uid: user.uid, gid: user.gid })),
            Ok(None) => reasons.push(format!("{name}: no such user")),
            Err(err) => reasons.push(format!("{name}: {err}")),
        }
    }
    Err(KitError::UserNotFound {
        name: format!("{SUPERUSER} or {FALLBACK_USER}"),
        purpose: "run initdb and postgres, which refuse to run as root".into(),
        reason: format!("{} (`apt-get install postgresql` creates {SUPERUSER})", reasons.join("; ")),
    })
}

/// A fresh directory for one server, owned by the user the server runs as.
fn make_dir(run_as: Option<RunAs>) -> Result<TempDir, KitError> {
    // A foreign user must be able to reach the directory, so not under a private TMPDIR.
    let parent = if run_as.is_some() { PathBuf::from("/tmp") } else { std::env::temp_dir() };
    let dir = tempfile::Builder::new()
        .prefix("walrelay-pg-")
        .tempdir_in(&parent)
        .map_err(|err| KitError::io(format!("cannot create a directory in {}", parent.display()), err))?;
    if let Some(user) = run_as {
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).map_err(|err| {
            KitError::io(format!("cannot chown {} to the postgres user", dir.path().display()), err.into())
        })?;
    }
    Ok(dir)
}

/// `value` as a quoted `postgresql.conf` string.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A PostgreSQL server in a temporary directory, listening on `127.0.0.1` on a free port, with `wal_level=logical`
/// and trust authentication for the superuser `postgres` (also for replication connections).
///
/// Dropping it stops the server immediately and removes the directory, also when the test panics.
#[derive(Debug)]
pub struct Postgres {
    data_dir: PathBuf,
    log_path: PathBuf,
    bin_dir: PathBuf,
    psql: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    postmaster: Option<Child>,
    paused: AtomicBool,
    /// Where the kit's psql connects: `127.0.0.1`, or the socket directory under a custom `pg_hba.conf`.
    psql_host: String,
    // Last, so the directory goes only after the server is stopped by `Drop`.
    dir: TempDir,
}

impl Postgres {
    /// Starts a server with the default settings (see [`PostgresBuilder`]).
    pub fn start() -> Result<Postgres, KitError> {
        PostgresBuilder::default().start()
    }

    /// A builder to override settings or the binaries.
    pub fn builder() -> PostgresBuilder {
        PostgresBuilder::default()
    }

    /// The TCP port the server listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: `127.0.0.1`.
    pub fn host(&self) -> &str {
        net::HOST
    }

    /// A connection URL for database `db` as the superuser: `postgres://postgres@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@{}:{}/{db}", net::HOST, self.port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory holding the data directory, the log and the Unix socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The directory of the PostgreSQL binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The postmaster's pid while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.as_ref().map(Child::id)
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        logfile::tail(&self.log_path, lines)
    }

    /// Runs `sql` (one or more statements) with psql on database `postgres`; see [`Postgres::psql_db`].
    pub fn psql(&self, sql: &str) -> Result<String, KitError> {
        self.psql_db("postgres", sql)
    }

    /// Runs `sql` with `psql -XAtq -v ON_ERROR_STOP=1` on database `db` and returns its output, trimmed: one line
    /// per row, columns separated by `|`. Statements run one by one (so `CREATE DATABASE` works in a script).
    /// A failing statement gives [`KitError::Psql`] with the server's message.
    pub fn psql_db(&self, db: &str, sql: &str) -> Result<String, KitError> {
        self.psql_timeout(db, sql, PSQL_TIMEOUT)
    }

    /// Like [`Postgres::psql_db`], but psql is killed after `timeout` ([`KitError::Timeout`]) and its connection
    /// attempt is limited to `timeout` too (libpq's minimum is 2 s).
    pub fn psql_timeout(&self, db: &str, sql: &str, timeout: Duration) -> Result<String, KitError> {
        let connect_timeout = timeout.as_secs().clamp(2, 10);
        let conninfo = format!(
            "host={} port={} user={SUPERUSER} dbname={db} connect_timeout={connect_timeout}",
            self.psql_host, self.port
        );
        let mut cmd = Command::new(&self.psql);
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", &conninfo, "-f", "-"])
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE");
        let output = command::run(&mut cmd, Some(sql), timeout)?;
        if output.status.success() {
            Ok(output.stdout.trim().to_owned())
        } else {
            let mut shown: String = sql.chars().take(200).collect();
            if shown.len() < sql.len() {
                shown.push_str("...");
            }
            Err(KitError::Psql {
                db: db.to_owned(),
                sql: shown,
                status: output.status.to_string(),
                stderr: output.stderr.trim().to_owned(),
            })
        }
    }

    /// Creates database `name` (owned by the superuser).
    pub fn create_database(&self, name: &str) -> Result<(), KitError> {
        self.psql(&format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""))).map(drop)
    }

    /// The server's major version (`server_version_num / 10000`, e.g. 15).
    pub fn version(&self) -> Result<u32, KitError> {
        let text = self.psql("SHOW server_version_num")?;
        text.parse::<u32>().map(|num| num / 10000).map_err(|_| KitError::CommandFailed {
            command: "SHOW server_version_num".into(),
            status: "unexpected output".into(),
            stderr: text,
        })
    }

    /// Stops the server with `pg_ctl stop -m fast` (disconnects clients, checkpoints) and waits until it is gone.
    pub fn stop(&mut self) -> Result<(), KitError> {
        self.pg_ctl_stop("fast")
    }

    /// Starts the server again after [`stop`](Self::stop), [`crash_immediate`](Self::crash_immediate) or
    /// [`kill9`](Self::kill9), on the same port and data directory (running crash recovery if needed), and waits
    /// until it accepts connections. Does nothing when it is running.
    pub fn start_again(&mut self) -> Result<(), KitError> {
        if self.running()? {
            return Ok(());
        }
        self.spawn_and_wait()
    }

    /// Restarts like `pg_ctl restart -m fast`: a fast shutdown, then a start on the same port; returns once the
    /// server accepts connections again.
    pub fn restart_fast(&mut self) -> Result<(), KitError> {
        self.stop()?;
        self.spawn_and_wait()
    }

    /// Stops the server with `pg_ctl stop -m immediate`: every process quits without a checkpoint, as in a crash,
    /// so the next [`start_again`](Self::start_again) runs crash recovery.
    pub fn crash_immediate(&mut self) -> Result<(), KitError> {
        self.pg_ctl_stop("immediate")
    }

    /// SIGKILLs the postmaster and waits until its former children have exited (they notice the postmaster's death;
    /// stragglers are SIGKILLed after 10 s) and the port is closed. Shared memory and `postmaster.pid` stay behind,
    /// as after a real kill; [`start_again`](Self::start_again) cleans up and recovers.
    pub fn kill9(&mut self) -> Result<(), KitError> {
        let Some(mut postmaster) = self.postmaster.take() else {
            return Err(self.not_running());
        };
        let pid = postmaster.id();
        let children = proctree::descendants(pid);
        proctree::send(pid, Signal::SIGKILL)?;
        let _ = postmaster.wait();
        if self.paused.swap(false, Ordering::SeqCst) {
            // Stopped children would never notice the postmaster's death.
            for &child in &children {
                proctree::send(child, Signal::SIGKILL)?;
            }
        }
        let all_gone = || children.iter().all(|&child| !proctree::is_alive(child)).then_some(());
        if wait_until("postgres children to exit after SIGKILL of the postmaster", Duration::from_secs(10), all_gone)
            .is_err()
        {
            for &child in children.iter().filter(|&&child| proctree::is_alive(child)) {
                proctree::send(child, Signal::SIGKILL)?;
            }
            wait_until("postgres children to exit after SIGKILL", Duration::from_secs(10), all_gone)?;
        }
        let port = self.port;
        wait_until(&format!("port {port} to close"), Duration::from_secs(10), || {
            (!net::port_is_open(port)).then_some(())
        })
    }

    /// Freezes the server: SIGSTOP to the postmaster, then to all its children; returns once all are stopped. Connections stay open but nothing
    /// answers, like a stalled host.
    pub fn pause(&self) -> Result<(), KitError> {
        let pid = self.pid().ok_or_else(|| self.not_running())?;
        self.paused.store(true, Ordering::SeqCst);
        proctree::pause_tree(pid)
    }

    /// Undoes [`pause`](Self::pause) with SIGCONT.
    pub fn resume(&self) -> Result<(), KitError> {
        let pid = self.pid().ok_or_else(|| self.not_running())?;
        self.paused.store(false, Ordering::SeqCst);
        proctree::resume_tree(pid)
    }

    fn not_running(&self) -> KitError {
        KitError::NotRunning { server: format!("postgres on port {}", self.port) }
    }

    /// Whether the postmaster runs; reaps it when it exited on its own.
    fn running(&mut self) -> Result<bool, KitError> {
        let Some(postmaster) = self.postmaster.as_mut() else {
            return Ok(false);
        };
        match postmaster.try_wait() {
            Ok(None) => Ok(true),
            Ok(Some(_)) => {
                self.postmaster = None;
                Ok(false)
            }
            Err(err) => Err(KitError::io("cannot check the postmaster", err)),
        }
    }

    /// A command for one of the server's own tools, run as the server's user from its directory.
    fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(name));
        cmd.current_dir(self.dir.path()).env("LC_ALL", "C").env_remove("PGDATA");
        if let Some(user) = self.run_as {
            user.apply(&mut cmd);
        }
        cmd
    }

    fn initdb(&self, settings: &[(String, String)]) -> Result<(), KitError> {
        let mut cmd = self.tool("initdb");
        cmd.arg("-D").arg(&self.data_dir).args(["-U", SUPERUSER, "--auth=trust", "--no-sync", "-E", "UTF8"]);
        cmd.arg("--locale=C");
        command::run_ok(&mut cmd, TOOL_TIMEOUT)?;
        let socket_dir = self.dir.path().display().to_string();
        let mut all: Vec<(String, String)> = [
            ("listen_addresses", net::HOST.to_owned()),
            ("port", self.port.to_string()),
            ("unix_socket_directories", socket_dir),
            ("wal_level", "logical".into()),
            ("max_replication_slots", "20".into()),
            ("max_wal_senders", "20".into()),
            ("max_connections", "100".into()),
            ("shared_buffers", "64MB".into()),
            ("fsync", "off".into()),
            ("full_page_writes", "off".into()),
            ("logging_collector", "off".into()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        all.extend_from_slice(settings);
        self.append_settings(&all)
    }

    /// Writes the certificate files into the data directory and turns `ssl` on.
    fn write_tls(&self, tls: &ServerTls) -> Result<(), KitError> {
        self.write_owned("server.crt", &tls.cert_pem, 0o644)?;
        self.write_owned("server.key", &tls.key_pem, 0o600)?;
        let mut settings = vec![
            ("ssl".to_owned(), "on".to_owned()),
            ("ssl_cert_file".to_owned(), "server.crt".to_owned()),
            ("ssl_key_file".to_owned(), "server.key".to_owned()),
        ];
        if let Some(ca) = &tls.client_ca_pem {
            self.write_owned("client-ca.crt", ca, 0o644)?;
            settings.push(("ssl_ca_file".to_owned(), "client-ca.crt".to_owned()));
        }
        self.append_settings(&settings)
    }

    /// Writes `name` in the data directory, owned by the server's user, with `mode`.
    fn write_owned(&self, name: &str, text: &str, mode: u32) -> Result<(), KitError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data_dir.join(name);
        let io = |err| KitError::io(format!("cannot write {}", path.display()), err);
        std::fs::write(&path, text).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        if let Some(user) = self.run_as {
            nix::unistd::chown(&path, Some(user.uid), Some(user.gid)).map_err(|err| io(err.into()))?;
        }
        Ok(())
    }

    /// Appends `name = 'value'` lines to `postgresql.conf`; the last line for a name wins.
    fn append_settings(&self, settings: &[(String, String)]) -> Result<(), KitError> {
        let path = self.data_dir.join("postgresql.conf");
        let mut text = String::from("\n# walrelay-testkit\n");
        for (name, value) in settings {
            text.push_str(&format!("{name} = {}\n", quote(value)));
        }
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|err| KitError::io(format!("cannot write {}", path.display()), err))
    }

    /// Spawns the postmaster and waits until `postmaster.pid` says it is ready for connections.
    fn spawn_and_wait(&mut self) -> Result<(), KitError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|err| KitError::io(format!("cannot open {}", self.log_path.display()), err))?;
        let log_err = log.try_clone().map_err(|err| KitError::io("cannot duplicate the log file handle", err))?;
        let mut cmd = self.tool("postgres");
        cmd.arg("-D").arg(&self.data_dir).stdin(Stdio::null()).stdout(log).stderr(log_err);
        let postmaster =
            cmd.spawn().map_err(|err| KitError::io(format!("cannot run `{}`", command::describe(&cmd)), err))?;
        let pid = postmaster.id();
        self.postmaster = Some(postmaster);
        self.paused.store(false, Ordering::SeqCst);
        let pid_file = self.data_dir.join("postmaster.pid");
        let mut exited = None;
        let ready = wait_until("postgres to accept connections", START_TIMEOUT, || {
            if let Some(status) = self.postmaster.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                exited = Some(status);
                return Some(false);
            }
            let text = std::fs::read_to_string(&pid_file).ok()?;
            let lines: Vec<&str> = text.lines().collect();
            let ours = lines.first().is_some_and(|line| line.trim() == pid.to_string());
            let status = lines.get(7).map(|line| line.trim());
            (ours && matches!(status, Some("ready" | "standby"))).then_some(true)
        });
        let reason = match (ready, exited) {
            (Ok(true), _) => return Ok(()),
            (_, Some(status)) => format!("postgres exited ({status})"),
            (Err(err), None) => err.to_string(),
            (Ok(false), None) => "postgres exited".to_owned(),
        };
        if let Some(mut postmaster) = self.postmaster.take() {
            let _ = postmaster.kill();
            let _ = postmaster.wait();
        }
        Err(KitError::StartFailed {
            server: format!("postgres on port {}", self.port),
            reason,
            log: self.log_path.clone(),
            log_tail: self.log_tail(30),
        })
    }

    /// Whether the last start failed because the port was in use.
    fn port_was_taken(&self) -> bool {
        let tail = self.log_tail(10);
        tail.contains("could not bind") || tail.contains("Address already in use")
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> Result<(), KitError> {
        if !self.running()? {
            return Err(self.not_running());
        }
        if self.paused.swap(false, Ordering::SeqCst) {
            if let Some(pid) = self.pid() {
                proctree::resume_tree(pid)?;
            }
        }
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("stop").arg("-D").arg(&self.data_dir).args(["-m", mode, "-w", "-t", "60"]);
        command::run_ok(&mut cmd, TOOL_TIMEOUT)?;
        if let Some(mut postmaster) = self.postmaster.take() {
            command::wait_deadline(&mut postmaster, Duration::from_secs(30), "postmaster exit")?;
        }
        Ok(())
    }

    /// After a SIGKILL the postmaster's System V shared memory segment outlives it; remove it (its id is in
    /// `postmaster.pid`) so repeated test runs do not exhaust `kernel.shmmni`.
    fn release_orphaned_shared_memory(&self) {
        let Ok(text) = std::fs::read_to_string(self.data_dir.join("postmaster.pid")) else {
            return;
        };
        let shmid = text.lines().nth(6).and_then(|line| line.split_whitespace().nth(1));
        if let Some(shmid) = shmid.filter(|id| id.parse::<u64>().is_ok()) {
            let _ = command::run(Command::new("ipcrm").args(["-m", shmid]), None, Duration::from_secs(10));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut postmaster) = self.postmaster.take() {
            let pid = postmaster.id();
            if self.paused.load(Ordering::SeqCst) {
                let _ = proctree::resume_tree(pid);
            }
            let children = proctree::descendants(pid);
            let mut cmd = self.tool("pg_ctl");
            cmd.arg("stop").arg("-D").arg(&self.data_dir).args(["-m", "immediate", "-w", "-t", "20"]);
            let stopped = command::run(&mut cmd, None, Duration::from_secs(30)).is_ok_and(|out| out.status.success());
            if !stopped {
                let _ = proctree::send(pid, Signal::SIGKILL);
                for child in children {
                    let _ = proctree::send(child, Signal::SIGKILL);
                }
            }
            let _ = command::wait_deadline(&mut postmaster, Duration::from_secs(10), "postmaster exit");
        }
        self.release_orphaned_shared_memory();
    }
}
