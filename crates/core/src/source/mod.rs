//! The Postgres side: ordinary SQL connections and the errors of everything that talks to Postgres.
//!
//! In: the `--pg-url` settings. Out: a `tokio_postgres::Client` for control-plane SQL (slots, publications, lag),
//! and [`SourceError`], which says what failed on the Postgres side and whether retrying can help.
//! The replication stream itself is opened in [`replication`]; [`slot`] and [`publication`] check and create the
//! server-side objects; [`transaction`] assembles decoded messages into outbox transactions.

pub mod publication;
pub mod replication;
pub mod slot;
pub mod transaction;

use std::time::Duration;

use pgoutput::Lsn;

use crate::config::PgUrl;

/// A failure on the Postgres side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Could not connect or the connection broke.
    #[error("postgres at {url} unreachable: {reason}")]
    Connect {
        /// Redacted URL.
        url: String,
        /// The driver's message.
        reason: String,
    },
    /// The server refused our credentials.
    #[error("postgres authentication failed for user {user}: {reason}; check the user and password in --pg-url / WALRELAY_PG_URL")]
    Auth {
        /// The role.
        user: String,
        /// The server's message.
        reason: String,
    },
    /// A statement failed.
    #[error("postgres: {context}: {reason}")]
    Query {
        /// What we were doing.
        context: String,
        /// The server's message (with SQLSTATE where known).
        reason: String,
        /// SQLSTATE code, if any.
        code: Option<String>,
    },
    /// `wal_level` is not `logical`.
    #[error("wal_level is {actual}, logical replication needs wal_level = logical; set it in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL")]
    WalLevel {
        /// The server's setting.
        actual: String,
    },
    /// The outbox table does not exist.
    #[error(
        "table {table} does not exist; create it (see docs/configuration.md) or point --table at your outbox table"
    )]
    MissingTable {
        /// The table.
        table: String,
    },
    /// A required column is missing from the outbox table.
    #[error("table {table} has no column {column} (needed for {purpose}); add it or set {option}")]
    MissingColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Why it is needed.
        purpose: String,
        /// The option that renames it.
        option: String,
    },
    /// The publication is missing and creation is off.
    #[error("publication {publication} does not exist; run `walrelay setup` or: CREATE PUBLICATION {publication} FOR TABLE {table} WITH (publish = 'insert')")]
    MissingPublication {
        /// Publication name.
        publication: String,
        /// Table.
        table: String,
    },
    /// The slot is missing and may not be created (it existed before, or creation is off).
    #[error("replication slot {slot} does not exist{detail}; events committed since it was dropped cannot be relayed. Run `walrelay setup` to create a new slot (accepting that gap), or restore from a backup")]
    MissingSlot {
        /// Slot name.
        slot: String,
        /// Extra facts (e.g. the stream's high-water mark).
        detail: String,
    },
    /// The slot exists but is unusable.
    #[error("replication slot {slot} is lost (wal_status = {wal_status}): the WAL it needed was removed; drop it (walrelay teardown) and run `walrelay setup`; events in the lost range must be re-sent from the source")]
    SlotLost {
        /// Slot name.
        slot: String,
        /// What pg_replication_slots says.
        wal_status: String,
    },
    /// The slot uses another output plugin or is physical.
    #[error("replication slot {slot} uses plugin {plugin}, walrelay needs a logical slot with pgoutput; drop it or choose another --slot")]
    WrongPlugin {
        /// Slot name.
        slot: String,
        /// Its plugin.
        plugin: String,
    },
    /// Another process holds the slot.
    #[error("replication slot {slot} is active for pid {pid}")]
    SlotActive {
        /// Slot name.
        slot: String,
        /// The walsender's pid.
        pid: i32,
    },
    /// The replication stream failed.
    #[error("replication stream: {reason}")]
    Replication {
        /// The transport's message.
        reason: String,
        /// Whether retrying may help.
        transient: bool,
    },
    /// `replay --from` is below what the slot it reads from still retains.
    #[error("cannot replay from {from}: the oldest replayable LSN is {oldest} (confirmed position of slot {slot}); replay from {oldest} or later, and keep more history with `walrelay run --replay-retention DURATION`")]
    ReplayOutOfRange {
        /// The requested start.
        from: Lsn,
        /// The oldest commit LSN that can still be replayed.
        oldest: Lsn,
        /// The slot replay reads from (a copy of it).
        slot: String,
    },
    /// An operator command refuses to do what would lose data, unless forced.
    #[error("{action} refused: {reason}")]
    Refused {
        /// What was refused, e.g. `teardown of slot walrelay`.
        action: String,
        /// Why, and how to go on.
        reason: String,
    },
    /// The pgoutput stream made no sense.
    #[error("pgoutput decode at {lsn}: {source}")]
    Decode {
        /// Where.
        lsn: Lsn,
        /// The decoder's error.
        #[source]
        source: pgoutput::DecodeError,
    },
}

impl SourceError {
    /// Whether retrying (after a backoff) may help.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::SlotActive { .. } => true,
            Self::Replication { transient, .. } => *transient,
            Self::Query { code, .. } => {
                // Connection and operator-intervention classes (08, 57) and "cannot connect now".
                code.as_deref().is_none_or(|c| c.starts_with("08") || c.starts_with("57") || c == "53300")
            }
            _ => false,
        }
    }

    /// Wraps a driver error from a statement.
    pub fn query(context: impl Into<String>, err: tokio_postgres::Error) -> Self {
        let code = err.code().map(|c| c.code().to_owned());
        let reason = match err.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => err.to_string(),
        };
        Self::Query { context: context.into(), reason, code }
    }
}

/// Opens an ordinary SQL connection; the connection task is spawned and named.
pub async fn connect(url: &PgUrl) -> Result<tokio_postgres::Client, SourceError> {
    let mut config = url.config().clone();
    config.application_name("walrelay");
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|err| {
        let reason = match err.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => error_chain(&err),
        };
        let auth = err.code().is_some_and(|c| c.code() == "28P01" || c.code() == "28000");
        if auth {
            SourceError::Auth { user: url.user(), reason }
        } else {
            SourceError::Connect { url: url.to_string(), reason }
        }
    })?;
    crate::spawn_named("postgres-connection", async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "postgres connection closed");
        }
    });
    Ok(client)
}

/// Formats an error with its causes, `a: b: c`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// Parses an LSN column (text) from a query.
pub(crate) fn lsn_col(row: &tokio_postgres::Row, idx: &str) -> Option<Lsn> {
    row.try_get::<_, Option<String>>(idx).ok().flatten().and_then(|s| s.parse().ok())
}
