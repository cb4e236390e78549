//! The replication session: a pgoutput stream from one slot, through `pgwire-replication`.
//!
//! In: the slot, the publication, where to start, and which position is already durable downstream. Out: a running
//! [`ReplicationClient`] (protocol v1, streaming and two-phase off per design.md rule 5) that yields Begin/Commit
//! boundaries, raw pgoutput messages and keepalives, and sends standby status updates on its own.
//! See <https://www.postgresql.org/docs/current/protocol-replication.html#PROTOCOL-REPLICATION-START-REPLICATION-SLOT-LOGICAL>.

use std::time::Duration;

use pgoutput::Lsn;
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, TlsConfig};
use tokio_postgres::config::{Host, SslMode};

use crate::{config::PgUrl, source::SourceError};

/// Where and how a session starts.
#[derive(Debug, Clone, Copy)]
pub struct StartAt {
    /// `START_REPLICATION ... LOGICAL <start>`.
    pub start: Lsn,
    /// The position reported as flushed until the relay confirms something (design.md rule 8): never beyond what
    /// is durable in the stream.
    pub ack: Lsn,
    /// Standby status cadence: min(1 s, wal_sender_timeout / 2).
    pub status_interval: Duration,
    /// Stop at this LSN (replay and peek), if any.
    pub stop: Option<Lsn>,
}

/// Opens a replication session on `slot` and waits until the server accepted `START_REPLICATION`.
pub async fn open(url: &PgUrl, slot: &str, publication: &str, at: StartAt) -> Result<ReplicationClient, SourceError> {
    let cfg = url.config();
    let (host, port) = match (cfg.get_hosts().first(), cfg.get_ports().first()) {
        (Some(Host::Tcp(h)), port) => (h.clone(), port.copied().unwrap_or(5432)),
        (Some(Host::Unix(p)), port) => (p.display().to_string(), port.copied().unwrap_or(5432)),
        (None, _) => ("localhost".to_owned(), 5432),
    };
    let password = cfg.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
    let tls = match cfg.get_ssl_mode() {
        SslMode::Require => TlsConfig::require(),
        _ => TlsConfig::disabled(),
    };
    let mut rc = ReplicationConfig::new(host, url.user(), password, url.dbname(), slot, publication)
        .with_port(port)
        .with_tls(tls)
        .with_start_lsn(pgwire_replication::Lsn(at.start.0))
        .with_ack_lsn(pgwire_replication::Lsn(at.ack.0))
        .with_status_interval(at.status_interval)
        .with_wakeup_interval(at.status_interval)
        .with_buffer_size(4096)
        .with_application_name(format!("walrelay:{slot}"));
    if let Some(stop) = at.stop {
        rc = rc.with_stop_lsn(pgwire_replication::Lsn(stop.0));
    }
    let mut client = ReplicationClient::connect(rc).await.map_err(|e| classify(e, slot, publication, url))?;
    client.wait_started().await.map_err(|e| classify(e, slot, publication, url))?;
    Ok(client)
}

/// Turns a transport error into a [`SourceError`] that says what it means for the relay.
pub fn classify(err: PgWireError, slot: &str, publication: &str, url: &PgUrl) -> SourceError {
    let text = err.to_string();
    let lower = text.to_ascii_lowercase();
    if err.is_auth() || lower.contains("password authentication failed") || lower.contains("28p01") {
        return SourceError::Auth { user: url.user(), reason: text };
    }
    if lower.contains("replication slot") && lower.contains("does not exist") {
        return SourceError::MissingSlot { slot: slot.to_owned(), detail: String::new() };
    }
    if lower.contains("is active for pid") {
        let pid = lower
            .split("is active for pid")
            .nth(1)
            .and_then(|s| s.trim().split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        return SourceError::SlotActive { slot: slot.to_owned(), pid };
    }
    if lower.contains("can no longer get changes") || lower.contains("has been invalidated") {
        return SourceError::SlotLost { slot: slot.to_owned(), wal_status: "lost".into() };
    }
    if lower.contains("publication") && lower.contains("does not exist") {
        return SourceError::MissingPublication { publication: publication.to_owned(), table: "<outbox table>".into() };
    }
    if lower.contains("must be superuser or replication role") || lower.contains("permission denied to start") {
        return SourceError::Query {
            context: "starting replication".into(),
            reason: format!("{text}; grant it with: ALTER ROLE {} WITH REPLICATION", url.user()),
            code: Some("42501".into()),
        };
    }
    let transient = err.is_transient()
        || err.is_server()
        || lower.contains("connection")
        || lower.contains("eof")
        || lower.contains("shutting down")
        || lower.contains("starting up");
    SourceError::Replication { reason: text, transient }
}
