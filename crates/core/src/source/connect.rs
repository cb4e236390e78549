//! Choosing a server and opening an SQL connection to it.
//!
//! In: a [`PgUrl`] with one or more hosts and its `target_session_attrs`. Out: a `tokio_postgres::Client` and the
//! [`PgHost`] it is connected to, so the session's replication connection ([`super::replication::open`]) goes to the
//! same server. As libpq does, every (re)connection tries the hosts in order and takes the first that accepts the
//! connection and qualifies (`read-write`: `transaction_read_only` is off; `read-only`: it is on); a host that is
//! down or does not qualify is skipped, while an authentication failure or an unknown database ends the attempt
//! (<https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-MULTIPLE-HOSTS>).

use std::time::Duration;

use tokio_postgres::Client;

use super::{
    error_chain,
    sqlstate::{self, Doing},
    SourceError,
};
use crate::config::postgres::{tls::is_tls_error, PgHost, PgUrl, SessionAttrs};

/// How long one host may take to accept a connection unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens an ordinary SQL connection to the first qualifying host; the connection task is spawned and named.
pub async fn connect(url: &PgUrl) -> Result<Client, SourceError> {
    connect_host(url).await.map(|(client, _)| client)
}

/// Like [`connect`], and says which host it chose: open the session's replication connection there.
pub async fn connect_host(url: &PgUrl) -> Result<(Client, PgHost), SourceError> {
    let hosts = url.hosts();
    let several = hosts.len() > 1;
    let mut failures: Vec<(PgHost, SourceError)> = Vec::new();
    for host in hosts {
        let result = match connect_one(url, &host).await {
            Ok(client) => qualifies(&client, url.session_attrs()).await.map(|ok| ok.then_some(client)),
            Err(err) => Err(err),
        };
        match result {
            Ok(Some(client)) => return Ok((client, host)),
            Ok(None) => {
                let reason = format!("{host} is not {} (target_session_attrs)", url.session_attrs().as_str());
                tracing::debug!(host = %host, "postgres host does not qualify, trying the next");
                failures.push((host, SourceError::Connect { url: url.to_string(), reason }));
            }
            // Wrong credentials or database are wrong on every host: stop, as libpq does.
            Err(err) if !err.is_transient() && !matches!(err, SourceError::Tls { .. }) => return Err(err),
            Err(err) => {
                if several {
                    tracing::debug!(host = %host, error = %error_chain(&err), "postgres host unavailable, trying the next");
                }
                failures.push((host, err));
            }
        }
    }
    if failures.len() == 1 {
        if let Some((_, err)) = failures.pop() {
            return Err(err);
        }
    }
    // A TLS failure is a configuration problem, whatever the other hosts did.
    if let Some(i) = failures.iter().position(|(_, e)| matches!(e, SourceError::Tls { .. })) {
        return Err(failures.swap_remove(i).1);
    }
    let reason = failures.iter().map(|(h, e)| format!("{h}: {}", error_chain(e))).collect::<Vec<_>>().join("; ");
    Err(SourceError::Connect { url: url.to_string(), reason: format!("no host qualifies ({reason})") })
}

async fn connect_one(url: &PgUrl, host: &PgHost) -> Result<Client, SourceError> {
    let mut config = url.config_for(host);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let (client, connection) = config.connect(url.tls().connector()).await.map_err(|err| {
        if let Some(db) = err.as_db_error() {
            return sqlstate::classify(db.code().code(), db.message(), Doing::Connecting, Some(url));
        }
        if is_tls_error(&err) {
            return SourceError::Tls { host: host.to_string(), reason: error_chain(&err) };
        }
        SourceError::Connect { url: url.to_string(), reason: format!("{host}: {}", error_chain(&err)) }
    })?;
    crate::spawn_named("postgres-connection", async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "postgres connection closed");
        }
    });
    Ok(client)
}

/// Whether a connected server fits `target_session_attrs`.
async fn qualifies(client: &Client, attrs: SessionAttrs) -> Result<bool, SourceError> {
    if attrs == SessionAttrs::Any {
        return Ok(true);
    }
    let row = client
        .query_one("SHOW transaction_read_only", &[])
        .await
        .map_err(|e| SourceError::query("reading transaction_read_only", e))?;
    let read_only =
        row.try_get::<_, String>(0).map_err(|e| SourceError::query("reading transaction_read_only", e))? == "on";
    Ok(read_only == (attrs == SessionAttrs::ReadOnly))
}
