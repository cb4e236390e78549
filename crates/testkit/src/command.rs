//! Running short helper commands (initdb, pg_ctl, psql, ipcrm) to completion with a deadline, capturing their
//! output, optionally as another user.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid};

use crate::KitError;

/// The user a server and its helper commands run as.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    pub(crate) uid: Uid,
    pub(crate) gid: Gid,
}

impl RunAs {
    /// Makes `cmd` switch to this user (the caller must be root).
    pub(crate) fn apply(self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        cmd.uid(self.uid.as_raw()).gid(self.gid.as_raw());
    }
}

/// What a finished command produced.
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// `program arg arg ...` for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error just ends the capture; the exit status tells what happened.
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `cmd` to completion, feeding it `stdin`, and kills it after `timeout` ([`KitError::Timeout`]).
///
/// A non-zero exit is not an error here; callers decide what a failure means.
pub(crate) fn run(cmd: &mut Command, stdin: Option<&str>, timeout: Duration) -> Result<Output, KitError> {
    let line = describe(cmd);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|err| KitError::io(format!("cannot run `{line}`"), err))?;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let feeder = match (child.stdin.take(), stdin) {
        (Some(mut pipe), Some(text)) => {
            let text = text.to_owned();
            // A write error means the command exited early; its status and stderr explain why.
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            }))
        }
        _ => None,
    };
    let status = wait_deadline(&mut child, timeout, &line)?;
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    let collect = |handle: Option<JoinHandle<String>>| handle.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok(Output { status, stdout: collect(stdout), stderr: collect(stderr) })
}

/// Waits for `child` to exit, killing it after `timeout`.
pub(crate) fn wait_deadline(child: &mut Child, timeout: Duration, what: &str) -> Result<ExitStatus, KitError> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(KitError::Timeout { what: format!("`{what}` to finish"), waited: start.elapsed() });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => return Err(KitError::io(format!("cannot wait for `{what}`"), err)),
        }
    }
}

/// Runs `cmd` and turns a non-zero exit into [`KitError::CommandFailed`].
pub(crate) fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<Output, KitError> {
    let output = run(cmd, None, timeout)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(KitError::CommandFailed {
            command: describe(cmd),
            status: output.status.to_string(),
            stderr: format!("{}{}", output.stderr.trim(), tail_of(&output.stdout, 20)),
        })
    }
}

/// The last `lines` lines of `text`, prefixed with a newline when not empty.
fn tail_of(text: &str, lines: usize) -> String {
    let kept: Vec<&str> = text.lines().rev().take(lines).collect();
    if kept.is_empty() {
        String::new()
    } else {
        let mut out = String::from("\n");
        out.push_str(&kept.into_iter().rev().collect::<Vec<_>>().join("\n"));
        out
    }
}
