//! The one error type of the test kit: every variant names the binary, command or server involved and carries what
//! a developer needs to see why a throwaway server did not do what the test expected.

use std::path::PathBuf;
use std::time::Duration;

/// Why a test-kit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A required executable is not installed (or not where the environment says it is).
    #[error("{what} not found ({searched}); {install}")]
    BinaryNotFound {
        /// What was looked for, e.g. `"PostgreSQL server binaries (initdb, postgres, pg_ctl)"`.
        what: String,
        /// Where it was looked for.
        searched: String,
        /// How to install it.
        install: String,
    },
    /// A system user needed to run a server could not be found.
    #[error("system user {name:?} is needed to {purpose} but {reason}")]
    UserNotFound {
        /// The user name.
        name: String,
        /// Why the user is needed.
        purpose: String,
        /// What went wrong looking it up.
        reason: String,
    },
    /// A filesystem or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the kit was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A helper command (initdb, pg_ctl, cargo, ...) exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// The exit status as text, e.g. `exit status: 1`.
        status: String,
        /// The tail of its standard error (and output, where useful).
        stderr: String,
    },
    /// `psql` reported an error for a statement.
    #[error("psql on database {db:?} failed ({status}) running {sql:?}: {stderr}")]
    Psql {
        /// The database the statement ran on.
        db: String,
        /// The SQL (shortened when long).
        sql: String,
        /// psql's exit status as text.
        status: String,
        /// psql's standard error (the server's message).
        stderr: String,
    },
    /// A server did not come up.
    #[error("{server} did not start: {reason}\n--- log tail ({log}) ---\n{log_tail}")]
    StartFailed {
        /// Which server, e.g. `"postgres on port 40123"`.
        server: String,
        /// What was observed, e.g. the exit status or a timeout.
        reason: String,
        /// The log file.
        log: PathBuf,
        /// The last lines of the server's log.
        log_tail: String,
    },
    /// An operation needs a running server but it is stopped.
    #[error("{server} is not running")]
    NotRunning {
        /// Which server.
        server: String,
    },
    /// Sending a signal failed.
    #[error("sending {signal} to pid {pid} failed: {source}")]
    Signal {
        /// The signal name.
        signal: String,
        /// The target process.
        pid: u32,
        /// The error from `kill(2)`.
        #[source]
        source: nix::Error,
    },
    /// A condition was not met before its deadline.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// The condition, as passed to [`crate::wait_until`] or named by the kit.
        what: String,
        /// How long the kit waited.
        waited: Duration,
    },
    /// A spawned [`crate::Process`] exited while a test waited for something from it.
    #[error("{process} exited ({status}) before {waiting_for}\n--- output tail ---\n{output_tail}")]
    Exited {
        /// The command line of the process.
        process: String,
        /// Its exit status as text.
        status: String,
        /// What the test waited for.
        waiting_for: String,
        /// The last lines of its output.
        output_tail: String,
    },
    /// Building the `walrelay` binary failed.
    #[error("building walrelay with `{command}` failed ({status}):\n{stderr}")]
    Build {
        /// The cargo command line.
        command: String,
        /// Its exit status or the reason it did not produce a binary.
        status: String,
        /// The tail of cargo's output.
        stderr: String,
    },
}

impl KitError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        KitError::Io { context: context.into(), source }
    }
}
