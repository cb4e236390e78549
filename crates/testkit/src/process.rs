//! A spawned child process (typically `walrelay run` or `walrelay demo`) whose stdout and stderr are collected into
//! one buffer by reader threads, so tests can wait for log lines and send it signals.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::{command, proctree, wait_until, KitError};

/// A child process with captured output; dropping it kills the process.
#[derive(Debug)]
pub struct Process {
    child: Mutex<Child>,
    pid: u32,
    command: String,
    output: Arc<Mutex<Vec<u8>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Appends whole lines from `pipe` to `buffer` until the pipe closes.
fn collect(pipe: impl Read + Send + 'static, buffer: Arc<Mutex<Vec<u8>>>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            lock(&buffer).extend_from_slice(&line);
            line.clear();
        }
    });
}

impl Process {
    /// Spawns `cmd` with stdin closed and stdout and stderr captured.
    pub fn spawn(mut cmd: Command) -> Result<Process, KitError> {
        let command = command::describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| KitError::io(format!("cannot run `{command}`"), err))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        if let Some(stdout) = child.stdout.take() {
            collect(stdout, Arc::clone(&output));
        }
        if let Some(stderr) = child.stderr.take() {
            collect(stderr, Arc::clone(&output));
        }
        let pid = child.id();
        Ok(Process { child: Mutex::new(child), pid, command, output })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the process wrote to stdout and stderr so far (lines interleaved as they arrived).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&lock(&self.output)).into_owned()
    }

    /// The last `lines` lines of [`output`](Self::output).
    pub fn output_tail(&self, lines: usize) -> String {
        let output = self.output();
        let kept: Vec<&str> = output.lines().rev().take(lines).collect();
        kept.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Waits until the output contains `needle`. Fails early with [`KitError::Exited`] when the process exits
    /// without printing it, and with [`KitError::Timeout`] (naming the needle and showing the output) after
    /// `timeout`.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> Result<(), KitError> {
        let waiting_for = format!("printing {needle:?}");
        let mut exited = None;
        let found = wait_until(&waiting_for, timeout, || {
            if self.output().contains(needle) {
                return Some(true);
            }
            if let Ok(Some(status)) = lock(&self.child).try_wait() {
                // Let the reader threads catch up with the last lines before giving up.
                std::thread::sleep(Duration::from_millis(100));
                exited = Some(status);
                return Some(self.output().contains(needle));
            }
            None
        });
        match (found, exited) {
            (Ok(true), _) => Ok(()),
            (_, Some(status)) => Err(KitError::Exited {
                process: self.command.clone(),
                status: status.to_string(),
                waiting_for,
                output_tail: self.output_tail(40),
            }),
            (Ok(false), None) => Err(KitError::Exited {
                process: self.command.clone(),
                status: "unknown".into(),
                waiting_for,
                output_tail: self.output_tail(40),
            }),
            (Err(_), None) => Err(KitError::Timeout {
                what: format!("{} {waiting_for}; output tail:\n{}", self.command, self.output_tail(40)),
                waited: timeout,
            }),
        }
    }

    /// Sends SIGTERM (graceful shutdown request).
    pub fn sigterm(&self) -> Result<(), KitError> {
        proctree::send(self.pid, Signal::SIGTERM)
    }

    /// Sends SIGINT (as Ctrl-C would).
    pub fn sigint(&self) -> Result<(), KitError> {
        proctree::send(self.pid, Signal::SIGINT)
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill9(&self) -> Result<(), KitError> {
        let mut child = lock(&self.child);
        proctree::send(self.pid, Signal::SIGKILL)?;
        child.wait().map(drop).map_err(|err| KitError::io(format!("cannot wait for `{}`", self.command), err))
    }

    /// Waits up to `timeout` for the process to exit: `Some(status)` if it did, `None` if it still runs.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>, KitError> {
        let mut error = None;
        let status = wait_until("process exit", timeout, || match lock(&self.child).try_wait() {
            Ok(status) => status,
            Err(err) => {
                error = Some(err);
                Some(ExitStatus::default())
            }
        });
        match (status, error) {
            (_, Some(err)) => Err(KitError::io(format!("cannot wait for `{}`", self.command), err)),
            (Ok(status), None) => Ok(Some(status)),
            (Err(_), None) => Ok(None),
        }
    }

    /// The exit status if the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let mut child = lock(&self.child);
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
