//! The replication session: a pgoutput stream from one slot, through `pgwire-replication`.
//!
//! In: the slot, the publication, where to start, and which position is already durable downstream. Out: a running
//! [`ReplicationClient`] (protocol v1, streaming and two-phase off per design.md rule 5) that yields Begin/Commit
//! boundaries, raw pgoutput messages and keepalives, and sends standby status updates on its own.
//! See <https://www.postgresql.org/docs/current/protocol-replication.html#PROTOCOL-REPLICATION-START-REPLICATION-SLOT-LOGICAL>.

use std::time::Duration;

use std::future::Future;

use pgoutput::Lsn;
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent};

use crate::source::{
    sqlstate::{self, Doing},
    PgHost, PgUrl, SourceError,
};

/// What the relay's loop needs of a replication session: the next message, and a way to report the confirmed
/// position (sent with the next standby status update). [`ReplicationClient`] in production; an in-memory script in
/// the relay's unit tests.
pub trait ReplicationStream: Send {
    /// The next message; `None` when the stream ended. Cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Result<Option<ReplicationEvent>, PgWireError>> + Send;

    /// Reports `lsn` as flushed and applied.
    fn update_applied_lsn(&self, lsn: Lsn);
}

impl ReplicationStream for ReplicationClient {
    async fn recv(&mut self) -> Result<Option<ReplicationEvent>, PgWireError> {
        ReplicationClient::recv(self).await
    }

    fn update_applied_lsn(&self, lsn: Lsn) {
        ReplicationClient::update_applied_lsn(self, pgwire_replication::Lsn(lsn.0));
    }
}

/// Messages the replication client may read ahead of the relay (its channel's capacity). Measured in
/// docs/benchmarks.md: 256 to 16,384 give the same drain rate and CPU per event, while the relay's peak RSS grows
/// with it (about 21.5 MiB at 1,024, up to 29 MiB at 16,384). It counts messages, not bytes: with wide rows its worst
/// case is this many rows.
const BUFFER_EVENTS: usize = 1024;

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

/// Opens a replication session on `slot` at `host` (the server the session's SQL connection chose, see
/// [`crate::source::connect_host`]) and waits until the server accepted `START_REPLICATION`. Same user, password,
/// database and TLS settings as the SQL connections.
pub async fn open(
    url: &PgUrl,
    host: &PgHost,
    slot: &str,
    publication: &str,
    at: StartAt,
) -> Result<ReplicationClient, SourceError> {
    let mut rc = replication_config(url, host, slot, publication)
        .await
        .with_start_lsn(pgwire_replication::Lsn(at.start.0))
        .with_ack_lsn(pgwire_replication::Lsn(at.ack.0))
        .with_status_interval(at.status_interval)
        .with_wakeup_interval(at.status_interval)
        .with_buffer_size(BUFFER_EVENTS);
    if let Some(stop) = at.stop {
        rc = rc.with_stop_lsn(pgwire_replication::Lsn(stop.0));
    }
    let on_host = |e: PgWireError| match classify(e, slot, publication, url) {
        SourceError::Tls { reason, .. } => SourceError::Tls { host: host.to_string(), reason },
        other => other,
    };
    let mut client = ReplicationClient::connect(rc).await.map_err(on_host)?;
    client.wait_started().await.map_err(on_host)?;
    Ok(client)
}

/// Marks `slot` as a failover slot (PostgreSQL 17+) with `ALTER_REPLICATION_SLOT slot (FAILOVER true)`, a
/// replication command that has no SQL function, on a replication session to `host` that never starts streaming.
/// See <https://www.postgresql.org/docs/current/protocol-replication.html#PROTOCOL-REPLICATION-ALTER-REPLICATION-SLOT>.
pub async fn alter_failover(url: &PgUrl, host: &PgHost, slot: &str, publication: &str) -> Result<(), SourceError> {
    let config = replication_config(url, host, slot, publication).await;
    let mut client = ReplicationClient::connect_gated(config).await.map_err(|e| classify(e, slot, publication, url))?;
    let sql = format!("ALTER_REPLICATION_SLOT {} ( FAILOVER true )", crate::config::quote_ident(slot));
    let result = client.simple_query(&sql).await.map(|_| ()).map_err(|e| SourceError::Query {
        context: format!("altering slot {slot} to failover = true"),
        reason: e.to_string(),
        code: None,
    });
    client.abort();
    result
}

/// A temporary logical slot created together with an exported snapshot (design.md §4f), on a replication session
/// that stays open, and must, for as long as another session imports the snapshot (`SET TRANSACTION SNAPSHOT`):
/// the snapshot and the slot end with the session.
pub struct ExportedSnapshot {
    client: ReplicationClient,
    /// The slot's consistent point: transactions whose commit record starts here or later are streamed by the slot,
    /// every earlier one is visible in the snapshot.
    pub consistent_point: Lsn,
    /// The snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub snapshot: String,
}

impl ExportedSnapshot {
    /// Ends the session: the temporary slot and the snapshot go with it.
    pub fn close(mut self) {
        self.client.abort();
    }
}

/// Creates the temporary pgoutput slot `slot` with an exported snapshot on a replication session to `host`
/// (`CREATE_REPLICATION_SLOT ... TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')`, or `EXPORT_SNAPSHOT` below
/// PostgreSQL 15), with the same user, password, database and TLS settings as the SQL connections.
/// See <https://www.postgresql.org/docs/current/protocol-replication.html#PROTOCOL-REPLICATION-CREATE-REPLICATION-SLOT>.
pub async fn create_exported(
    url: &PgUrl,
    host: &PgHost,
    major: u32,
    slot: &str,
    publication: &str,
) -> Result<ExportedSnapshot, SourceError> {
    let config = replication_config(url, host, slot, publication).await;
    let mut client = ReplicationClient::connect_gated(config).await.map_err(|e| classify(e, slot, publication, url))?;
    let name = crate::config::quote_ident(slot);
    let sql = if major >= 15 {
        format!("CREATE_REPLICATION_SLOT {name} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')")
    } else {
        format!("CREATE_REPLICATION_SLOT {name} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT")
    };
    let context = format!("creating slot {slot} with an exported snapshot");
    let rows = match client.simple_query(&sql).await {
        Ok(rows) => rows,
        Err(err) => {
            client.abort();
            return Err(match err {
                PgWireError::Server(text) => {
                    let code = sqlstate::pgwire_code(&text).map(|(code, _)| code.to_owned());
                    SourceError::Query { context, reason: text, code }
                }
                other => classify(other, slot, publication, url),
            });
        }
    };
    // slot_name, consistent_point, snapshot_name, output_plugin.
    let column = |i: usize| {
        rows.first()
            .and_then(|row| row.get(i))
            .and_then(|v| v.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    match (column(1).and_then(|l| l.parse::<Lsn>().ok()), column(2)) {
        (Some(consistent_point), Some(snapshot)) => Ok(ExportedSnapshot { client, consistent_point, snapshot }),
        _ => {
            client.abort();
            Err(SourceError::Query {
                context,
                reason: "the server returned no consistent point or snapshot".into(),
                code: None,
            })
        }
    }
}

/// The replication connection's settings for `host`: the user, password, database and TLS of `url` (the same as
/// the SQL connections'), for `slot` and `publication`. Every replication connection is built from this.
pub async fn replication_config(url: &PgUrl, host: &PgHost, slot: &str, publication: &str) -> ReplicationConfig {
    let password = url.config().get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
    ReplicationConfig::new(host.name.clone(), url.user(), password, url.dbname(), slot, publication)
        .with_port(host.port)
        .with_tls(url.tls().replication_for(&host.name, host.port).await)
        .with_application_name(format!("walrelay:{slot}"))
}

/// Turns a transport error into a [`SourceError`] that says what it means for the relay: server errors by their
/// SQLSTATE (in [`sqlstate`]), the rest by the transport's error kind.
pub fn classify(err: PgWireError, slot: &str, publication: &str, url: &PgUrl) -> SourceError {
    let reason = err.to_string();
    match &err {
        PgWireError::Server(text) => match sqlstate::pgwire_code(text) {
            Some((code, message)) => {
                sqlstate::classify(code, message, Doing::Replicating { slot, publication }, Some(url))
            }
            // An ErrorResponse without a code: treat like a broken session.
            None => SourceError::Replication { reason, transient: true },
        },
        // The client could not authenticate the way the server asked (e.g. SCRAM verification failed).
        PgWireError::Auth(text) => SourceError::Auth {
            user: url.user(),
            reason: text.clone(),
            remedy: "check the user and password in --pg-url / WALRELAY_PG_URL or --pg-password-file, and the \
                     pg_hba.conf method (scram-sha-256, md5, password or cert)"
                .into(),
        },
        PgWireError::Tls(text) => SourceError::Tls {
            host: url.hosts().first().map(ToString::to_string).unwrap_or_default(),
            reason: text.clone(),
        },
        PgWireError::MessageTooLarge { .. } => SourceError::Replication { reason, transient: false },
        // I/O, a protocol hiccup (a cut connection), the worker task: a new session may succeed.
        _ => SourceError::Replication { reason, transient: true },
    }
}
