//! Running against a hot standby (PostgreSQL 16+): what differs from a primary before streaming starts.
//!
//! In: the settings and the [`Server`] that `--pg-url` reached. Out: a connection to the primary when `--pg-url`
//! is a standby and `--primary-url` is set, and the publication made sure of where it can be written. A standby is
//! read-only: the publication (a catalog object) must be created on the primary and reaches the standby through
//! WAL; the slot itself is created on the standby ([`super::slot::create`]). See
//! <https://www.postgresql.org/docs/current/logicaldecoding-explanation.html#LOGICALDECODING-REPLICATION-SLOTS>.

use std::time::Duration;

use tokio_postgres::Client;

use crate::{
    config::Settings,
    source::{self, publication, slot, slot::Server, SourceError},
};

/// How long a publication created on the primary may take to be replayed on the standby.
const PUBLICATION_REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to the primary (`--primary-url`), when `server` is a standby; `None` on a primary or without
/// `--primary-url`. The primary's `wal_level` must be logical too (standby decoding reads the primary's WAL).
pub async fn connect_primary(settings: &Settings, server: &Server) -> Result<Option<Client>, SourceError> {
    let Some(url) = settings.primary_url.as_ref() else {
        return Ok(None);
    };
    if !server.in_recovery {
        tracing::debug!("--pg-url is a primary; --primary-url is not used");
        return Ok(None);
    }
    let primary = source::connect(url).await?;
    let level = slot::setting(&primary, "wal_level").await?;
    if level != "logical" {
        return Err(SourceError::WalLevel { actual: format!("{level} on the primary (--primary-url)") });
    }
    Ok(Some(primary))
}

/// Makes sure the publication exists where `--pg-url` reads: created on the primary when `control` is a standby
/// (through `primary`), on `control` itself otherwise; `create = false` (`--no-create`) only checks. Returns whether
/// it was created.
pub async fn ensure_publication(
    settings: &Settings,
    control: &Client,
    server: &Server,
    primary: Option<&Client>,
    create: bool,
) -> Result<bool, SourceError> {
    let missing = || SourceError::MissingPublication {
        publication: settings.publication.clone(),
        table: settings.table.quoted(),
    };
    if !server.in_recovery {
        if !create {
            return publication::info(control, &settings.publication, &settings.table)
                .await?
                .map(|_| false)
                .ok_or_else(missing);
        }
        return publication::ensure(control, &settings.publication, &settings.table).await;
    }
    if publication::info(control, &settings.publication, &settings.table).await?.is_some() {
        return Ok(false);
    }
    let (Some(primary), true) = (primary, create) else {
        if !create {
            return Err(missing());
        }
        return Err(SourceError::StandbyPublication {
            publication: settings.publication.clone(),
            sql: format!("{};", publication::create_statement(&settings.publication, &settings.table.quoted())),
        });
    };
    let created = publication::ensure(primary, &settings.publication, &settings.table).await?;
    // The standby sees the publication once it replayed the primary's commit of it.
    let deadline = tokio::time::Instant::now() + PUBLICATION_REPLAY_TIMEOUT;
    while publication::info(control, &settings.publication, &settings.table).await?.is_none() {
        if tokio::time::Instant::now() > deadline {
            return Err(SourceError::Query {
                context: format!("waiting for the standby to replay publication {}", settings.publication),
                reason: format!("it did not appear on the standby within {PUBLICATION_REPLAY_TIMEOUT:?}; is the standby streaming from the primary?"),
                code: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(created)
}

/// What `setup` and the start of `run` need of Postgres, checked in one place in this order: the server (chosen by
/// the URL's hosts), its version against `--failover` and a standby, `wal_level`, the primary (`--primary-url`, on
/// a standby) and the outbox tables.
pub struct Checked {
    /// The SQL connection to the chosen server.
    pub control: Client,
    /// Which host it is.
    pub host: source::PgHost,
    /// Its version, role and timeline.
    pub server: Server,
    /// The primary, when the server is a standby and `--primary-url` is set.
    pub primary: Option<Client>,
}

/// Connects and runs the checks of [`Checked`].
pub async fn check_server(settings: &Settings) -> Result<Checked, SourceError> {
    let (control, host) = source::connect_host(&settings.pg_url).await?;
    let server = slot::server(&control).await?;
    slot::check_versions(&server, settings.failover)?;
    slot::check_wal_level(&control).await?;
    let primary = connect_primary(settings, &server).await?;
    publication::check_table(&control, settings).await?;
    Ok(Checked { control, host, server, primary })
}
