//! Signalling servers and their process trees, found by scanning `/proc` (see proc(5)): a postmaster's backends are
//! its children, and pausing or killing "the server" means all of them.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::KitError;

/// `(pid, parent pid, state)` of every process, from `/proc/<pid>/stat`.
fn processes() -> Vec<(u32, u32, char)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name is in parentheses and may contain spaces; the fields after it are plain.
            let (_, rest) = stat.rsplit_once(')')?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?.chars().next()?;
            let ppid = fields.next()?.parse().ok()?;
            Some((pid, ppid, state))
        })
        .collect()
}

/// All live descendants of `root` (children, their children, ...), parents before children.
pub(crate) fn descendants(root: u32) -> Vec<u32> {
    let all = processes();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid, state) in &all {
            if ppid == parent && state != 'Z' && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

/// Whether `pid` exists and is not a zombie (an exited process nobody reaped yet holds no resources).
pub(crate) fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub(crate) fn send(pid: u32, signal: Signal) -> Result<(), KitError> {
    let raw = i32::try_from(pid).map_err(|_| KitError::Signal {
        signal: signal.as_str().to_owned(),
        pid,
        source: nix::Error::EINVAL,
    })?;
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(source) => Err(KitError::Signal { signal: signal.as_str().to_owned(), pid, source }),
    }
}

/// Whether every thread of `pid` is stopped (or the process is gone): `kill(2)` returns before a busy
/// multi-threaded process has actually stopped.
fn is_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.filter_map(Result::ok).all(|task| {
        std::fs::read_to_string(task.path().join("stat")).map_or(true, |stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_none_or(|state| matches!(state, "T" | "t" | "Z" | "X"))
        })
    })
}

/// Sends SIGSTOP to `pid` and waits until all its threads are stopped.
pub(crate) fn stop(pid: u32) -> Result<(), KitError> {
    send(pid, Signal::SIGSTOP)?;
    crate::wait_until(&format!("pid {pid} to stop after SIGSTOP"), Duration::from_secs(5), || {
        is_stopped(pid).then_some(())
    })
}

/// Stops (`SIGSTOP`) `root` first, so it cannot start new children, then every descendant; returns once all of
/// them are stopped.
pub(crate) fn pause_tree(root: u32) -> Result<(), KitError> {
    stop(root)?;
    for pid in descendants(root) {
        stop(pid)?;
    }
    Ok(())
}

/// Continues (`SIGCONT`) every descendant of `root`, then `root` itself.
pub(crate) fn resume_tree(root: u32) -> Result<(), KitError> {
    for pid in descendants(root) {
        send(pid, Signal::SIGCONT)?;
    }
    send(root, Signal::SIGCONT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_child() -> Result<(), Box<dyn std::error::Error>> {
        let mut child = std::process::Command::new("sleep").arg("5").spawn()?;
        let me = std::process::id();
        assert!(descendants(me).contains(&child.id()));
        assert!(is_alive(child.id()));
        send(child.id(), Signal::SIGKILL)?;
        child.wait()?;
        assert!(!is_alive(child.id()));
        Ok(())
    }
}
