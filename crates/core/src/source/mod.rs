//! The Postgres side: ordinary SQL connections and the errors of everything that talks to Postgres.
//!
//! In: the `--pg-url` settings. Out: a `tokio_postgres::Client` for control-plane SQL (slots, publications, lag),
//! and [`SourceError`], which says what failed on the Postgres side and whether retrying can help.
//! The replication stream itself is opened in [`replication`]; [`slot`] and [`publication`] check and create the
//! server-side objects; [`transaction`] assembles decoded messages into outbox transactions.

mod connect;
pub mod publication;
pub mod replication;
pub mod slot;
pub(crate) mod sqlstate;
pub mod standby;
pub mod transaction;

use pgoutput::Lsn;

pub use crate::config::postgres::{PgHost, PgUrl, SessionAttrs};
pub use connect::{connect, connect_host};

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
    /// The server refused our credentials (SQLSTATE 28P01 or 28000: wrong password, unknown role, no pg_hba.conf
    /// line), or the client could not authenticate as the server asked.
    #[error("postgres authentication failed for user {user}: {reason}; remedy: {remedy}")]
    Auth {
        /// The role.
        user: String,
        /// The server's message.
        reason: String,
        /// What to check.
        remedy: String,
    },
    /// The database in `--pg-url` does not exist (3D000).
    #[error("postgres database {database} does not exist: {reason}; remedy: create it (CREATE DATABASE ...) or fix the database name in --pg-url")]
    UnknownDatabase {
        /// The database.
        database: String,
        /// The server's message.
        reason: String,
    },
    /// The role lacks a privilege (42501).
    #[error("postgres: {context}: insufficient privilege{}: {reason}; remedy: {remedy}", user.as_deref().map(|u| format!(" for user {u}")).unwrap_or_default())]
    Privilege {
        /// The role, when known (a statement's error does not say; see [`SourceError::naming_user`]).
        user: Option<String>,
        /// What we were doing.
        context: String,
        /// The server's message.
        reason: String,
        /// The GRANT or ALTER ROLE that fixes it.
        remedy: String,
    },
    /// Logical decoding is not available (0A000): the server is in recovery and older than PostgreSQL 16.
    #[error("logical decoding is not available on this server: {reason}; remedy: a standby can decode only from PostgreSQL 16 on: point --pg-url at the primary, or upgrade the standby to PostgreSQL 16 or later")]
    DecodingUnavailable {
        /// The server's message.
        reason: String,
    },
    /// The TLS handshake failed or the server has no TLS while the sslmode demands it.
    #[error("postgres TLS connection to {host} failed: {reason}; remedy: check sslmode and sslrootcert (the CA that signed the server certificate, which must name the host for verify-full) in --pg-url, and that the server has ssl = on")]
    Tls {
        /// The host.
        host: String,
        /// The TLS library's message.
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
    #[error("publication {publication} does not exist; run `walrelay setup` or: {}", publication::create_statement(.publication, .table))]
    MissingPublication {
        /// Publication name.
        publication: String,
        /// The tables, SQL-quoted and comma-separated (empty: messages only).
        table: String,
    },
    /// The slot is missing and may not be created (it existed before, or creation is off).
    #[error("replication slot {slot} does not exist on {server}{detail}; events committed since it was dropped cannot be relayed. Run `walrelay setup` to create a new slot (accepting that gap), or restore from a backup")]
    MissingSlot {
        /// Slot name.
        slot: String,
        /// The server asked, `host:port/database` ([`PgUrl::server_at`]).
        server: String,
        /// Extra facts (e.g. the stream's high-water mark).
        detail: String,
    },
    /// The stream's newest relayed event lies beyond this server's WAL: the stream was written from another WAL
    /// history (a restored or rebuilt cluster, or a failover that lost the old primary's last WAL). Resuming would
    /// count every new event up to that position as already relayed.
    #[error("stream {stream} holds events up to commit LSN {high_water}, beyond this server's WAL position {wal}: the stream was written from another WAL history (a restored or rebuilt cluster, or a failover that lost the old primary's last WAL), so relaying would skip every new event up to {high_water} as already stored; relay into a new stream (`walrelay setup --stream NEW --subject ...`, docs/operations.md \"Moving the relay\"), or delete this one if its events are not needed")]
    StreamAhead {
        /// The stream.
        stream: String,
        /// The commit LSN of the stream's newest relayed event.
        high_water: Lsn,
        /// This server's WAL position.
        wal: Lsn,
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
    // Replicas and failover (design.md §4b).
    /// The slot was invalidated for a reason other than removed WAL (a recovery conflict, wal_level, idle timeout).
    #[error("replication slot {slot} was invalidated ({reason}): {}; drop it (walrelay teardown --force) and run `walrelay setup`; events committed since it stopped advancing must be re-sent from the source", invalidation_cause(.reason))]
    SlotInvalidated {
        /// Slot name.
        slot: String,
        /// `invalidation_reason` of pg_replication_slots.
        reason: String,
    },
    /// The server is too old for what was asked.
    #[error("{what} needs PostgreSQL {needed} or later, the server runs PostgreSQL {actual}; {remedy}")]
    NeedsVersion {
        /// The feature, e.g. `--failover (failover slots)`.
        what: String,
        /// The major version needed.
        needed: u32,
        /// The server's major version.
        actual: u32,
        /// What to do.
        remedy: String,
    },
    /// `--failover` while `--pg-url` is a standby.
    #[error("--failover: a failover slot is created on the primary and synchronized to standbys (sync_replication_slots = on), it cannot be created on a standby; point --pg-url at the primary (e.g. postgres://h1,h2/db?target_session_attrs=read-write), or drop --failover to use a standby slot")]
    FailoverOnStandby,
    /// The publication is missing on a standby, which cannot create it.
    #[error("publication {publication} does not exist, and --pg-url is a standby, where it cannot be created; run on the primary: {sql}; or pass --primary-url so walrelay creates it there")]
    StandbyPublication {
        /// Publication name.
        publication: String,
        /// The statement to run on the primary.
        sql: String,
    },
    /// The pgoutput stream made no sense.
    #[error("pgoutput decode at {lsn}: {source}")]
    Decode {
        /// Where.
        lsn: Lsn,
        /// The decoder's error.
        #[source]
        source: pgoutput::DecodeError,
    }, // Auditing the stream (design.md §4d).
    /// `verify` reads the committed events from the WAL the replay slot keeps, and there is no replay slot.
    #[error("slot {slot} does not exist: verify reads the committed events from the WAL kept by the trailing slot of `walrelay run --replay-retention DURATION`; start run with it (e.g. --replay-retention 24h) and verify what commits from then on")]
    NoReplaySlot {
        /// The replay slot's name.
        slot: String,
    },
    /// `verify --from` is below what the replay slot still retains.
    #[error("cannot verify from {from}: the WAL kept by slot {slot} starts at {oldest}; verify from {oldest} or later (the default), and keep more history with `walrelay run --replay-retention DURATION`")]
    VerifyOutOfRange {
        /// The requested start.
        from: Lsn,
        /// The oldest commit LSN the replay slot still holds.
        oldest: Lsn,
        /// The replay slot.
        slot: String,
    },
}

impl SourceError {
    /// Whether retrying (after a backoff) may help.
    /// Authentication, unknown database, missing privileges, TLS failures and unavailable decoding are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::SlotActive { .. } => true,
            Self::Replication { transient, .. } => *transient,
            // A statement error without a SQLSTATE is a broken connection; with one, see sqlstate.
            Self::Query { code, .. } => code.as_deref().is_none_or(sqlstate::is_transient_code),
            _ => false,
        }
    }

    /// The same error, naming `user` where the server's message did not (the role of `--pg-url`).
    pub fn naming_user(self, user: &str) -> Self {
        match self {
            Self::Privilege { user: None, context, reason, remedy } => {
                let remedy = remedy.replace("<role>", &crate::config::quote_ident(user));
                Self::Privilege { user: Some(user.to_owned()), context, reason, remedy }
            }
            other => other,
        }
    }

    /// Wraps a driver error from a statement (classified by SQLSTATE in [`sqlstate`]).
    pub fn query(context: impl Into<String>, err: tokio_postgres::Error) -> Self {
        let context = context.into();
        match err.as_db_error() {
            Some(db) => sqlstate::classify(db.code().code(), db.message(), sqlstate::Doing::Statement(&context), None),
            None => Self::Query { context, reason: error_chain(&err), code: None },
        }
    }

    /// Wraps a driver error from a statement of logical decoding (creating or copying a slot), where 0A000 means
    /// the server cannot decode (in recovery, below PostgreSQL 16).
    pub fn decoding(context: impl Into<String>, err: tokio_postgres::Error) -> Self {
        let context = context.into();
        match err.as_db_error() {
            Some(db) => sqlstate::classify(db.code().code(), db.message(), sqlstate::Doing::Decoding(&context), None),
            None => Self::Query { context, reason: error_chain(&err), code: None },
        }
    }
}

/// What an `invalidation_reason` of `pg_replication_slots` means (PostgreSQL 17+ names).
fn invalidation_cause(reason: &str) -> &'static str {
    match reason {
        "rows_removed" => "the primary removed catalog rows it still needed; on a standby keep hot_standby_feedback = on and a physical slot (primary_slot_name) to the primary",
        "wal_level_insufficient" => "the primary's wal_level is no longer logical; set wal_level = logical on the primary",
        "idle_timeout" => "it stayed inactive longer than idle_replication_slot_timeout",
        "wal_removed" => "the WAL it needed was removed (max_slot_wal_keep_size)",
        _ => "see invalidation_reason in pg_replication_slots",
    }
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
