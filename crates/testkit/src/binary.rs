//! The `walrelay` executable under test: `WALRELAY_BIN` if set, else built once per test process with cargo.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::{command, KitError};

/// Environment variable naming a prebuilt walrelay executable.
pub const WALRELAY_BIN_ENV: &str = "WALRELAY_BIN";
/// Environment variable that, when `1`, builds walrelay with `--release`.
pub const RELEASE_ENV: &str = "WALRELAY_TEST_RELEASE";

/// Builds can take a while on a cold cache.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);

/// The path of the `walrelay` executable.
///
/// If `WALRELAY_BIN` is set, that file. Otherwise the first call runs `$CARGO build -p walrelay --bin walrelay`
/// (`--release` when `WALRELAY_TEST_RELEASE=1`) in the workspace root; cargo honours `CARGO_TARGET_DIR`, and the
/// path is taken from cargo's own artifact report. Later calls in the same process reuse the result.
pub fn walrelay_bin() -> Result<PathBuf, KitError> {
    if let Some(path) = std::env::var_os(WALRELAY_BIN_ENV).map(PathBuf::from) {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(KitError::BinaryNotFound {
                what: "walrelay".into(),
                searched: format!("at {} (from {WALRELAY_BIN_ENV})", path.display()),
                install: "build it with `cargo build -p walrelay` or unset WALRELAY_BIN".into(),
            })
        };
    }
    static BUILT: OnceLock<Result<PathBuf, (String, String, String)>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(path) => Ok(path.clone()),
        Err((command, status, stderr)) => {
            Err(KitError::Build { command: command.clone(), status: status.clone(), stderr: stderr.clone() })
        }
    }
}

/// The workspace root: this crate lives in `<root>/crates/testkit`.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn build() -> Result<PathBuf, (String, String, String)> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "-p",
        "walrelay",
        "--bin",
        "walrelay",
        "--message-format=json-render-diagnostics",
    ]);
    if std::env::var(RELEASE_ENV).is_ok_and(|value| value == "1") {
        cmd.arg("--release");
    }
    let line = command::describe(&cmd);
    tracing::info!(command = %line, "building walrelay");
    let output =
        command::run(&mut cmd, None, BUILD_TIMEOUT).map_err(|err| (line.clone(), err.to_string(), String::new()))?;
    let stderr_tail = || {
        let kept: Vec<&str> = output.stderr.lines().rev().take(60).collect();
        kept.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    if !output.status.success() {
        return Err((line, output.status.to_string(), stderr_tail()));
    }
    output
        .stdout
        .lines()
        .filter_map(|message| serde_json::from_str::<serde_json::Value>(message).ok())
        .filter(|message| {
            message.get("reason").and_then(|r| r.as_str()) == Some("compiler-artifact")
                && message.pointer("/target/name").and_then(|n| n.as_str()) == Some("walrelay")
        })
        .find_map(|message| message.get("executable")?.as_str().map(PathBuf::from))
        .ok_or_else(|| (line, "cargo reported no walrelay executable".to_owned(), stderr_tail()))
}
