//! `doctor`'s checks of the Postgres connection itself: which host was chosen, whether TLS is on and verified (and
//! against what), and how the client authenticated, as far as a client can tell (design.md §4a).
//!
//! In: the open SQL connection, the host it chose, the settings. Out: the `postgres_host`, `postgres_tls` and
//! `postgres_auth` lines; a warning when a connection that leaves the machine is not TLS-verified, or uses neither a
//! password nor a certificate.

use tokio_postgres::Client;

use super::Checks;
use crate::{
    config::{postgres::tls::SslMode, Settings},
    source::{PgHost, PgUrl, SessionAttrs, SourceError},
};

/// What the server says about this session's TLS (`pg_stat_ssl`).
struct SessionTls {
    on: bool,
    version: Option<String>,
    client_dn: Option<String>,
}

/// Runs the connection checks.
pub(super) async fn check(control: &Client, host: &PgHost, settings: &Settings, checks: &mut Checks) {
    let url = &settings.pg_url;
    let hosts = url.hosts();
    if hosts.len() > 1 || url.session_attrs() != SessionAttrs::Any {
        checks.ok(
            "postgres_host",
            format!(
                "{host} (host {} of {}, target_session_attrs={})",
                hosts.iter().position(|h| h == host).map_or(0, |i| i + 1),
                hosts.len(),
                url.session_attrs().as_str()
            ),
        );
    }
    let session = match session_tls(control).await {
        Ok(s) => s,
        Err(err) => {
            checks.warn("postgres_tls", format!("cannot read pg_stat_ssl: {err}"), "run doctor as a role that can");
            return;
        }
    };
    let (level, detail, remedy) = tls_verdict(url, host, &session);
    report(checks, "postgres_tls", level, detail, remedy);
    let (level, detail, remedy) = auth_verdict(url, host, &session);
    report(checks, "postgres_auth", level, detail, remedy);
}

fn report(checks: &mut Checks, name: &str, level: Level, detail: String, remedy: Option<String>) {
    match (level, remedy) {
        (Level::Warn, Some(remedy)) => checks.warn(name, detail, remedy),
        _ => checks.ok(name, detail),
    }
}

async fn session_tls(control: &Client) -> Result<SessionTls, SourceError> {
    let row = control
        .query_one("SELECT ssl, version, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .map_err(|e| SourceError::query("reading pg_stat_ssl", e))?;
    let get = |i| row.try_get::<_, Option<String>>(i).ok().flatten();
    Ok(SessionTls { on: row.try_get::<_, bool>(0).unwrap_or(false), version: get(1), client_dn: get(2) })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
}

const VERIFY_REMEDY: &str = "add sslmode=verify-full&sslrootcert=<CA file> (or sslrootcert=system) to --pg-url";

fn tls_verdict(url: &PgUrl, host: &PgHost, session: &SessionTls) -> (Level, String, Option<String>) {
    let tls = url.tls();
    let mode = tls.mode().as_str();
    if !session.on {
        let detail = format!("off (sslmode={mode}): the connection is not encrypted");
        return if host.is_loopback() {
            (Level::Ok, format!("{detail}, it stays on this machine"), None)
        } else {
            (
                Level::Warn,
                format!("{detail} and leaves this machine"),
                Some(format!("turn ssl on in the server and {VERIFY_REMEDY}")),
            )
        };
    }
    let version = session.version.as_deref().unwrap_or("TLS");
    let verified = match (tls.mode(), tls.anchors()) {
        (SslMode::VerifyFull, Some(anchors)) => format!("verified against {anchors}, host name checked"),
        (SslMode::VerifyCa, Some(anchors)) => format!("chain verified against {anchors}, host name not checked"),
        _ => "not verified".to_owned(),
    };
    let detail = format!("on ({version}, sslmode={mode}), certificate {verified}");
    if tls.mode().verifies() || host.is_loopback() {
        (Level::Ok, detail, None)
    } else {
        (
            Level::Warn,
            format!("{detail}: a man in the middle could read and change the stream"),
            Some(VERIFY_REMEDY.to_owned()),
        )
    }
}

fn auth_verdict(url: &PgUrl, host: &PgHost, session: &SessionTls) -> (Level, String, Option<String>) {
    let user = url.user();
    if let Some(dn) = session.client_dn.as_deref().filter(|_| url.tls().has_client_cert()) {
        let with_password = if url.has_password() { ", and a password" } else { "" };
        return (Level::Ok, format!("user {user}: client certificate ({dn}){with_password}"), None);
    }
    if url.has_password() {
        let source = if url.password_from_file() { "--pg-password-file" } else { "--pg-url" };
        return (
            Level::Ok,
            format!("user {user}: password from {source} (SCRAM-SHA-256 or MD5, as pg_hba.conf asks)"),
            None,
        );
    }
    let detail = format!("user {user}: no password and no client certificate (the server trusts this connection)");
    if host.is_loopback() {
        (Level::Ok, detail, None)
    } else {
        (
            Level::Warn,
            detail,
            Some("require scram-sha-256 or cert in pg_hba.conf; give the password with --pg-password-file".to_owned()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> PgUrl {
        PgUrl::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn host(name: &str) -> PgHost {
        PgHost { name: name.to_owned(), port: 5432, unix: false }
    }

    #[test]
    fn unverified_tls_warns_only_when_leaving_the_machine() {
        let on = SessionTls { on: true, version: Some("TLSv1.3".into()), client_dn: None };
        let u = url("postgres://u:p@db.example.com/app?sslmode=require");
        assert_eq!(tls_verdict(&u, &host("db.example.com"), &on).0, Level::Warn);
        assert_eq!(tls_verdict(&u, &host("127.0.0.1"), &on).0, Level::Ok);
        let off = SessionTls { on: false, version: None, client_dn: None };
        let u = url("postgres://u:p@db.example.com/app?sslmode=disable");
        let (level, detail, _) = tls_verdict(&u, &host("db.example.com"), &off);
        assert_eq!(level, Level::Warn);
        assert!(detail.starts_with("off"), "{detail}");
        assert_eq!(tls_verdict(&u, &host("localhost"), &off).0, Level::Ok);
    }

    #[test]
    fn auth_method_as_the_client_sees_it() {
        let off = SessionTls { on: false, version: None, client_dn: None };
        let (level, detail, _) = auth_verdict(&url("postgres://u:p@db/app?sslmode=disable"), &host("db"), &off);
        assert_eq!(level, Level::Ok);
        assert!(detail.contains("password from --pg-url"), "{detail}");
        let (level, _, _) = auth_verdict(&url("postgres://u@db/app?sslmode=disable"), &host("db"), &off);
        assert_eq!(level, Level::Warn);
    }
}
