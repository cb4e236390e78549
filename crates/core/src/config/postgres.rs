//! `--pg-url`: a libpq connection URL or keyword string, read once into what every connection needs.
//!
//! In: the text of `--pg-url` (and the password of `--pg-password-file`). Out: a [`PgUrl`] holding the
//! tokio-postgres configuration, the [`PgTls`] settings, the host list and `target_session_attrs`. libpq
//! parameters that tokio-postgres does not parse (`sslmode=verify-ca|verify-full`, `sslrootcert`, `sslcert`,
//! `sslkey`, `target_session_attrs=read-only`) are taken out here, before the rest reaches tokio-postgres; walrelay
//! then applies them identically to its SQL and replication connections. See
//! <https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING>.

pub mod tls;

use std::{fmt, str::FromStr};

use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::config::Host;

use super::{redact_url, ConfigError};
use tls::{PgTls, TlsParams};

/// `target_session_attrs`: which of several hosts qualifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionAttrs {
    /// The first host that accepts the connection.
    #[default]
    Any,
    /// The first that accepts writes (`transaction_read_only = off`): a primary.
    ReadWrite,
    /// The first that does not (`transaction_read_only = on`): a standby.
    ReadOnly,
}

impl SessionAttrs {
    fn parse(value: &str) -> Result<Self, ConfigError> {
        match value {
            "any" => Ok(Self::Any),
            "read-write" => Ok(Self::ReadWrite),
            "read-only" => Ok(Self::ReadOnly),
            other => Err(ConfigError::Invalid {
                option: "--pg-url",
                value: format!("target_session_attrs={other}"),
                reason: "target_session_attrs must be any, read-write or read-only".into(),
            }),
        }
    }

    /// The libpq name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
            Self::ReadOnly => "read-only",
        }
    }
}

/// A PostgreSQL connection string, kept secret: it may hold a password.
#[derive(Clone)]
pub struct PgUrl {
    secret: SecretString,
    parsed: tokio_postgres::Config,
    tls: PgTls,
    attrs: SessionAttrs,
    password_from_file: bool,
}

/// The parameters walrelay reads itself.
const OWN_PARAMS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "target_session_attrs"];

impl PgUrl {
    /// Parses a `postgres://` URL or a `key=value` connection string.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid { option: "--pg-url", value: redact_url(url), reason };
        let (rest, own) = split_params(url).map_err(|reason| invalid(reason.into()))?;
        let get = |key: &str| own.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let tls = PgTls::from_params(&TlsParams {
            sslmode: get("sslmode"),
            sslrootcert: get("sslrootcert"),
            sslcert: get("sslcert"),
            sslkey: get("sslkey"),
        })?;
        let attrs = get("target_session_attrs").as_deref().map(SessionAttrs::parse).transpose()?.unwrap_or_default();
        let mut parsed = tokio_postgres::Config::from_str(&rest)
            .map_err(|err| invalid(format!("{err}; expected e.g. postgres://user:password@host:5432/dbname")))?;
        if parsed.get_hosts().is_empty() {
            return Err(invalid("no host; expected e.g. postgres://user@host:5432/dbname".into()));
        }
        let (hosts, ports) = (parsed.get_hosts().len(), parsed.get_ports().len());
        if ports > 1 && ports != hosts {
            return Err(invalid(format!("{hosts} hosts but {ports} ports; give one port, or one per host")));
        }
        parsed.ssl_mode(tls.driver_mode());
        Ok(Self { secret: SecretString::from(url.to_owned()), parsed, tls, attrs, password_from_file: false })
    }

    /// The same URL with `password` (from `--pg-password-file`) instead of any password it holds.
    pub fn with_password(mut self, password: Option<&SecretString>) -> Self {
        if let Some(password) = password {
            self.parsed.password(password.expose_secret().as_bytes());
            self.password_from_file = true;
        }
        self
    }

    /// The parsed connection settings (holds the password; never log it).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.parsed
    }

    /// The TLS settings.
    pub fn tls(&self) -> &PgTls {
        &self.tls
    }

    /// `target_session_attrs`.
    pub fn session_attrs(&self) -> SessionAttrs {
        self.attrs
    }

    /// Whether the password comes from `--pg-password-file`.
    pub fn password_from_file(&self) -> bool {
        self.password_from_file
    }

    /// Whether a password is set at all.
    pub fn has_password(&self) -> bool {
        self.parsed.get_password().is_some()
    }

    /// The URL as given, for handing to a child process. Never log it. Without the `--pg-password-file` password.
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    /// The database name (defaults to the user name, as libpq does).
    pub fn dbname(&self) -> String {
        self.parsed.get_dbname().or(self.parsed.get_user()).unwrap_or("postgres").to_owned()
    }

    /// The server a session on `host` asks, as messages name it: `host:port/database` (no user, no password), so
    /// that an answer from the wrong server (another local cluster, a default URL) is obvious.
    pub fn server_at(&self, host: &PgHost) -> String {
        format!("{host}/{}", self.dbname())
    }

    /// The servers the URL names, as [`PgUrl::server_at`] names one: `h1:p1,h2:p2/database`.
    pub fn servers(&self) -> String {
        let hosts: Vec<String> = self.hosts().iter().map(ToString::to_string).collect();
        format!("{}/{}", hosts.join(","), self.dbname())
    }

    /// The user name (defaults to `postgres`).
    pub fn user(&self) -> String {
        self.parsed.get_user().unwrap_or("postgres").to_owned()
    }

    /// The hosts in the order they are tried.
    pub fn hosts(&self) -> Vec<PgHost> {
        let ports = self.parsed.get_ports();
        self.parsed
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match host {
                    Host::Tcp(name) => PgHost { name: name.clone(), port, unix: false },
                    Host::Unix(path) => PgHost { name: path.display().to_string(), port, unix: true },
                }
            })
            .collect()
    }

    /// The settings for one connection to `host` alone.
    pub(crate) fn config_for(&self, host: &PgHost) -> tokio_postgres::Config {
        let base = &self.parsed;
        let mut c = tokio_postgres::Config::new();
        if let Some(user) = base.get_user() {
            c.user(user);
        }
        if let Some(password) = base.get_password() {
            c.password(password);
        }
        if let Some(db) = base.get_dbname() {
            c.dbname(db);
        }
        if let Some(options) = base.get_options() {
            c.options(options);
        }
        c.application_name(base.get_application_name().unwrap_or("walrelay"));
        c.ssl_mode(base.get_ssl_mode());
        c.channel_binding(base.get_channel_binding());
        if let Some(t) = base.get_connect_timeout() {
            c.connect_timeout(*t);
        }
        if let Some(t) = base.get_tcp_user_timeout() {
            c.tcp_user_timeout(*t);
        }
        c.keepalives(base.get_keepalives()).keepalives_idle(base.get_keepalives_idle());
        if let Some(i) = base.get_keepalives_interval() {
            c.keepalives_interval(i);
        }
        if let Some(r) = base.get_keepalives_retries() {
            c.keepalives_retries(r);
        }
        if host.unix {
            c.host_path(&host.name);
        } else {
            c.host(&host.name);
        }
        c.port(host.port);
        c
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", redact_url(self.secret.expose_secret()))
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", redact_url(self.secret.expose_secret()))
    }
}

/// One server of `--pg-url`: the one a session's SQL and replication connections both go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgHost {
    /// Host name or address, or the socket directory.
    pub name: String,
    /// Port.
    pub port: u16,
    /// Whether `name` is a Unix socket directory.
    pub unix: bool,
}

impl PgHost {
    /// Whether the connection stays on this machine (a loopback address, `localhost` or a socket).
    pub fn is_loopback(&self) -> bool {
        self.unix
            || self.name.eq_ignore_ascii_case("localhost")
            || self.name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for PgHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.contains(':') && !self.unix {
            write!(f, "[{}]:{}", self.name, self.port)
        } else {
            write!(f, "{}:{}", self.name, self.port)
        }
    }
}

/// Splits walrelay's own parameters ([`OWN_PARAMS`]) out of a URL or keyword string; returns the rest (for
/// tokio-postgres) and the taken `(key, value)` pairs, values decoded.
fn split_params(conn: &str) -> Result<(String, Params), &'static str> {
    let mut own = Vec::new();
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let Some((base, query)) = conn.split_once('?') else {
            return Ok((conn.to_owned(), own));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k)?;
            if OWN_PARAMS.contains(&key.as_str()) {
                own.push((key, percent_decode(v)?));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        return Ok((rest, own));
    }
    let mut kept = Vec::new();
    for (k, v) in keywords(conn)? {
        if OWN_PARAMS.contains(&k.as_str()) {
            own.push((k, v));
        } else {
            kept.push(format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")));
        }
    }
    Ok((kept.join(" "), own))
}

/// `(key, value)` pairs of a connection string.
type Params = Vec<(String, String)>;

/// `%XX` decoding of a URL query part.
fn percent_decode(s: &str) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("invalid %-escape in the URL")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a URL parameter is not UTF-8")
}

/// The `key = value` pairs of a libpq keyword string (values may be single-quoted with `\` escapes).
fn keywords(s: &str) -> Result<Params, &'static str> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err("expected key=value pairs in the connection string");
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or("unterminated quoted value")?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err("unterminated quoted value"),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or("dangling backslash")?);
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_parameters_are_taken_out_of_urls() {
        let (rest, own) = split_params(
            "postgres://u:p@h1:5432,h2:5433/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap_or_default();
        assert_eq!(rest, "postgres://u:p@h1:5432,h2:5433/db?application_name=x");
        assert_eq!(
            own,
            vec![
                ("sslmode".to_owned(), "verify-full".to_owned()),
                ("sslrootcert".to_owned(), "/tmp/ca.pem".to_owned())
            ]
        );
    }

    #[test]
    fn own_parameters_are_taken_out_of_keyword_strings() {
        let (rest, own) =
            split_params("host=db user=alice password='it\\'s' sslmode = verify-ca dbname=app").unwrap_or_default();
        assert_eq!(own, vec![("sslmode".to_owned(), "verify-ca".to_owned())]);
        assert!(rest.contains("host='db'") && rest.contains("dbname='app'"), "{rest}");
        let (_, own) = split_params(r"sslrootcert='/a b/c\'d.pem'").unwrap_or_default();
        assert_eq!(own, vec![("sslrootcert".to_owned(), "/a b/c'd.pem".to_owned())]);
    }

    #[test]
    fn multi_host_urls_list_hosts_in_order() {
        let url = PgUrl::parse("postgres://u@h1:5432,h2:5433/db?target_session_attrs=read-only&sslmode=disable");
        let url = url.ok();
        let hosts: Vec<String> =
            url.as_ref().map(|u| u.hosts().iter().map(ToString::to_string).collect()).unwrap_or_default();
        assert_eq!(hosts, vec!["h1:5432", "h2:5433"]);
        assert_eq!(url.map(|u| u.session_attrs()), Some(SessionAttrs::ReadOnly));
        assert!(PgUrl::parse("postgres://u@h1/db?target_session_attrs=primaryish").is_err());
        assert!(PgUrl::parse("postgres://u@h1/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").is_err());
    }

    #[test]
    fn password_file_wins() {
        let url = PgUrl::parse("postgres://u:inurl@h/db?sslmode=disable").ok();
        let url = url.map(|u| u.with_password(Some(&SecretString::from("fromfile"))));
        assert_eq!(url.as_ref().and_then(|u| u.config().get_password()), Some(&b"fromfile"[..]));
        assert!(!format!("{url:?}").contains("inurl"));
    }
}
