//! The NATS options, read and checked once at configuration time: server addresses, authentication and TLS.
//!
//! In: `--nats-url` (credentials in its userinfo are taken out here and passed on explicitly: async-nats ignores
//! them), `--nats-creds`, `--nats-nkey`, `--nats-token-file`, `--nats-tls-ca`, `--nats-tls-cert`/`--nats-tls-key`,
//! `--nats-tls-first`. Out: [`NatsOptions`] (in [`Settings`](crate::config::Settings)), with every file read and
//! parsed, so a missing or malformed file is a usage error (exit code 2) before any connection is made;
//! [`crate::sink::connect`] turns them into an `async_nats::ConnectOptions` per connection.
//! See <https://docs.nats.io/using-nats/developer/connecting/security> and
//! <https://docs.nats.io/running-a-nats-service/configuration/securing_nats/tls>.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
};

use async_nats::ServerAddr;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};

use super::ConfigError;

/// How walrelay authenticates to NATS.
#[derive(Clone)]
pub enum NatsAuth {
    /// No credentials.
    None,
    /// `user:password@` in `--nats-url`.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: SecretString,
    },
    /// `token@` in `--nats-url`, or `--nats-token-file`.
    Token(SecretString),
    /// `--nats-nkey`: an nkey seed; the server knows its public key.
    Nkey {
        /// The seed (`SU...`).
        seed: SecretString,
        /// Its public key (`U...`), safe to show.
        public: String,
    },
    /// `--nats-creds`: a user JWT and its nkey seed (operator mode).
    Creds {
        /// The user JWT.
        jwt: SecretString,
        /// The user's nkey seed.
        seed: SecretString,
    },
}

impl NatsAuth {
    /// The method's name as messages and `doctor` show it.
    pub fn method(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::UserPassword { .. } => "user/password",
            Self::Token(_) => "token",
            Self::Nkey { .. } => "nkey",
            Self::Creds { .. } => "creds",
        }
    }

    /// What to check when the server rejects this method.
    pub fn remedy(&self) -> &'static str {
        match self {
            Self::None => {
                "the server requires credentials: put user:password@ or token@ in --nats-url, or set --nats-token-file, \
                 --nats-nkey or --nats-creds"
            }
            Self::UserPassword { .. } => {
                "check the user and password in --nats-url (nats://user:password@host:4222) against the server's \
                 authorization block"
            }
            Self::Token(_) => "check the token (--nats-token-file or token@ in --nats-url) against the server's authorization token",
            Self::Nkey { .. } => {
                "check --nats-nkey: the seed's public key must be listed in the server's authorization users (nkey: U...)"
            }
            Self::Creds { .. } => {
                "check --nats-creds: the user JWT may be expired or revoked, or its account unknown to the server's \
                 resolver; issue new credentials (nsc generate creds)"
            }
        }
    }
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UserPassword { user, .. } => write!(f, "user/password (user {user})"),
            Self::Nkey { public, .. } => write!(f, "nkey ({public})"),
            other => f.write_str(other.method()),
        }
    }
}

/// Where the server's certificate is verified against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustRoots {
    /// The operating system's trust store.
    System,
    /// The certificates in `--nats-tls-ca`.
    CaFile(PathBuf),
}

impl fmt::Display for TrustRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("the system trust store"),
            Self::CaFile(path) => write!(f, "CA file {}", path.display()),
        }
    }
}

/// TLS settings, with the PEM files already read and parsed.
#[derive(Clone)]
pub struct NatsTls {
    /// TLS even when the server does not ask for it (`tls://`, `--nats-tls-ca`, a client certificate, TLS first).
    pub required: bool,
    /// `--nats-tls-first`: the TLS handshake comes before the server's INFO line.
    pub first: bool,
    /// What the server certificate is verified against (always verified when TLS is on).
    pub roots: TrustRoots,
    /// `--nats-tls-cert`, when a client certificate is presented.
    pub client_cert: Option<PathBuf>,
    ca: Vec<CertificateDer<'static>>,
    client: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

impl fmt::Debug for NatsTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsTls")
            .field("required", &self.required)
            .field("first", &self.first)
            .field("roots", &self.roots)
            .field("client_cert", &self.client_cert)
            .finish_non_exhaustive()
    }
}

impl NatsTls {
    /// The rustls configuration: the trust roots, the client certificate if any, and an explicit crypto provider
    /// (the dependency tree enables two, so rustls cannot pick a process default by itself).
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        match self.roots {
            TrustRoots::CaFile(_) => {
                for cert in &self.ca {
                    roots.add(cert.clone()).map_err(|e| format!("CA certificate rejected: {e}"))?;
                }
            }
            TrustRoots::System => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        match &self.client {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs.clone(), key.clone_key())
                .map_err(|e| format!("client certificate rejected: {e}")),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// async-nats' default subscription capacity (its command channel's default is 2,048).
pub const DEFAULT_CAPACITY: usize = 64 * 1024;

/// Everything needed to connect to NATS, validated before any connection is made.
#[derive(Clone)]
pub struct NatsOptions {
    pub(crate) servers: Vec<ServerAddr>,
    pub(crate) url: String,
    /// How walrelay authenticates.
    pub auth: NatsAuth,
    /// TLS settings.
    pub tls: NatsTls,
    /// Capacity of the client's command channel and of each subscription's buffer. Both must exceed the publishes
    /// in flight: every ack arrives on one subscription, which drops what does not fit (see
    /// [`crate::sink::transport`]), and while the client reconnects nothing drains its command channel, so a full
    /// one would hold a publish, and with it the relay's loop, until NATS is back.
    pub capacity: usize,
}

impl fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsOptions").field("url", &self.url).field("auth", &self.auth).field("tls", &self.tls).finish()
    }
}

/// The NATS options as layered, before validation (file options are paths).
#[derive(Debug, Clone, Default)]
#[allow(missing_docs)]
pub struct RawNats<'a> {
    pub url: &'a str,
    pub creds: Option<&'a str>,
    pub nkey: Option<&'a str>,
    pub token_file: Option<&'a str>,
    pub tls_ca: Option<&'a str>,
    pub tls_cert: Option<&'a str>,
    pub tls_key: Option<&'a str>,
    pub tls_first: bool,
}

impl NatsOptions {
    /// Parses the URLs, takes credentials out of them, reads and checks every file (exit code 2 on any problem).
    pub fn parse(raw: &RawNats<'_>) -> Result<Self, ConfigError> {
        let url = redact(raw.url);
        let mut servers = Vec::new();
        let mut url_auth: Option<NatsAuth> = None;
        let mut tls_scheme = false;
        for part in raw.url.split(',').map(str::trim) {
            let invalid = |reason: String| ConfigError::Invalid { option: "--nats-url", value: redact(part), reason };
            let (addr, auth) = split_userinfo(part).map_err(&invalid)?;
            let addr = ServerAddr::from_str(&addr).map_err(|err| {
                invalid(format!("{err}; expected e.g. nats://localhost:4222 (comma-separated for a cluster)"))
            })?;
            tls_scheme |= addr.tls_required();
            if let Some(auth) = auth {
                if url_auth.as_ref().is_some_and(|have| !same_auth(have, &auth)) {
                    return Err(invalid("the URLs carry different credentials; use the same on every URL".into()));
                }
                url_auth = Some(auth);
            }
            servers.push(addr);
        }
        let mut chosen: Vec<(&'static str, NatsAuth)> = Vec::new();
        if let Some(auth) = url_auth {
            chosen.push(("--nats-url", auth));
        }
        if let Some(path) = raw.token_file {
            let text = read_file("--nats-token-file", path)?;
            let token = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
            if token.is_empty() {
                return Err(file_error("--nats-token-file", path, "the file is empty"));
            }
            chosen.push(("--nats-token-file", NatsAuth::Token(SecretString::from(token.to_owned()))));
        }
        if let Some(path) = raw.nkey {
            let text = read_file("--nats-nkey", path)?;
            let seed = text
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("SU"))
                .ok_or_else(|| file_error("--nats-nkey", path, "no user nkey seed (a line starting with SU)"))?;
            let pair = nkeys::KeyPair::from_seed(seed)
                .map_err(|_| file_error("--nats-nkey", path, "the seed is not a valid nkey seed"))?;
            chosen.push((
                "--nats-nkey",
                NatsAuth::Nkey { seed: SecretString::from(seed.to_owned()), public: pair.public_key() },
            ));
        }
        if let Some(path) = raw.creds {
            let text = read_file("--nats-creds", path)?;
            let (jwt, seed) = parse_creds(&text).map_err(|reason| file_error("--nats-creds", path, reason))?;
            nkeys::KeyPair::from_seed(&seed)
                .map_err(|_| file_error("--nats-creds", path, "the nkey seed is not a valid nkey seed"))?;
            chosen.push((
                "--nats-creds",
                NatsAuth::Creds { jwt: SecretString::from(jwt), seed: SecretString::from(seed) },
            ));
        }
        if chosen.len() > 1 {
            let names: Vec<&str> = chosen.iter().map(|(option, _)| *option).collect();
            return Err(ConfigError::Invalid {
                option: names[1],
                value: "(set)".into(),
                reason: format!("choose one NATS authentication method; set are: {}", names.join(", ")),
            });
        }
        let auth = chosen.pop().map(|(_, auth)| auth).unwrap_or(NatsAuth::None);
        let tls = parse_tls(raw, tls_scheme)?;
        Ok(Self { servers, url, auth, tls, capacity: DEFAULT_CAPACITY })
    }

    /// The URL(s) with credentials masked, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether every server is on a loopback address (`localhost`, `127.0.0.0/8`, `::1`).
    pub fn is_loopback(&self) -> bool {
        self.servers.iter().all(|s| {
            let host = s.host().trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        })
    }
}

fn parse_tls(raw: &RawNats<'_>, tls_scheme: bool) -> Result<NatsTls, ConfigError> {
    let mut ca = Vec::new();
    let roots = match raw.tls_ca {
        Some(path) => {
            ca = read_certs("--nats-tls-ca", path)?;
            TrustRoots::CaFile(PathBuf::from(path))
        }
        None => TrustRoots::System,
    };
    let client = match (raw.tls_cert, raw.tls_key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::Invalid {
                option: "--nats-tls-key",
                value: String::new(),
                reason: "--nats-tls-cert needs --nats-tls-key (the client certificate's private key)".into(),
            })
        }
        (None, Some(_)) => {
            return Err(ConfigError::Invalid {
                option: "--nats-tls-cert",
                value: String::new(),
                reason: "--nats-tls-key needs --nats-tls-cert (the client certificate)".into(),
            })
        }
        (Some(cert), Some(key)) => {
            let certs = read_certs("--nats-tls-cert", cert)?;
            let text = read_file("--nats-tls-key", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(text.as_bytes())
                .map_err(|_| file_error("--nats-tls-key", key, "no PEM private key in the file"))?;
            Some((certs, Arc::new(key_der)))
        }
    };
    Ok(NatsTls {
        required: tls_scheme || raw.tls_ca.is_some() || client.is_some() || raw.tls_first,
        first: raw.tls_first,
        roots,
        client_cert: raw.tls_cert.map(PathBuf::from),
        ca,
        client,
    })
}

fn read_certs(option: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let text = read_file(option, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(option, path, &format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(file_error(option, path, "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file"));
    }
    Ok(certs)
}

fn read_file(option: &'static str, path: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(Path::new(path)).map_err(|err| file_error(option, path, &format!("cannot read it: {err}")))
}

fn file_error(option: &'static str, path: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid { option, value: path.to_owned(), reason: reason.to_owned() }
}

/// A `.creds` file: the first decorated block is the user JWT, the second the user's nkey seed.
fn parse_creds(text: &str) -> Result<(String, String), &'static str> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line.starts_with("---") && line.contains("BEGIN") {
            if let Some(value) = lines.by_ref().find(|l| !l.is_empty()) {
                blocks.push(value.to_owned());
            }
        }
    }
    let mut blocks = blocks.into_iter();
    let jwt = blocks
        .next()
        .filter(|j| j.split('.').count() == 3)
        .ok_or("no user JWT block (-----BEGIN NATS USER JWT-----)")?;
    let seed =
        blocks.next().filter(|s| s.starts_with('S')).ok_or("no nkey seed block (-----BEGIN USER NKEY SEED-----)")?;
    Ok((jwt, seed))
}

/// Splits `scheme://userinfo@host:port` into the address without credentials and the credentials it carried.
fn split_userinfo(url: &str) -> Result<(String, Option<NatsAuth>), String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return Ok((url.to_owned(), None));
    };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let auth = match userinfo.split_once(':') {
        Some((user, password)) if !user.is_empty() => {
            NatsAuth::UserPassword { user: decode(user), password: SecretString::from(decode(password)) }
        }
        Some(_) => return Err("user info `:password@` without a user".into()),
        None if userinfo.is_empty() => return Err("empty user info before `@`".into()),
        None => NatsAuth::Token(SecretString::from(decode(userinfo))),
    };
    let stripped = match scheme {
        Some(scheme) => format!("{scheme}://{host}"),
        None => host.to_owned(),
    };
    Ok((stripped, Some(auth)))
}

fn same_auth(a: &NatsAuth, b: &NatsAuth) -> bool {
    match (a, b) {
        (NatsAuth::UserPassword { user: u1, password: p1 }, NatsAuth::UserPassword { user: u2, password: p2 }) => {
            u1 == u2 && p1.expose_secret() == p2.expose_secret()
        }
        (NatsAuth::Token(t1), NatsAuth::Token(t2)) => t1.expose_secret() == t2.expose_secret(),
        _ => false,
    }
}

/// `--nats-url` with any credentials masked: `nats://user:***@host`, `nats://***@host` (a token).
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            let (prefix, rest) = match url.split_once("://") {
                Some((scheme, rest)) => (format!("{scheme}://"), rest),
                None => (String::new(), url),
            };
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => {
                    let masked = match rest[..at].split_once(':') {
                        Some((user, _)) => format!("{user}:***"),
                        None => "***".to_owned(),
                    };
                    format!("{prefix}{masked}{}", &rest[at..])
                }
                None => url.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<NatsOptions, ConfigError> {
        NatsOptions::parse(&RawNats { url, ..RawNats::default() })
    }

    #[test]
    fn url_credentials_are_taken_out_of_the_address() {
        let o = parse("nats://relay:p%40ss@127.0.0.1:4222").ok();
        let o = o.as_ref();
        assert_eq!(o.map(|o| o.auth.method()), Some("user/password"));
        assert!(matches!(o.map(|o| &o.auth), Some(NatsAuth::UserPassword { user, password })
            if user == "relay" && password.expose_secret() == "p@ss"));
        assert_eq!(o.map(|o| o.servers[0].as_url_str().contains('@')), Some(false));
        assert_eq!(o.map(|o| o.url()), Some("nats://relay:***@127.0.0.1:4222"));
        let o = parse("tls://s3cr3t@nats.example:4222,tls://s3cr3t@nats2.example:4222").ok();
        assert!(matches!(o.as_ref().map(|o| &o.auth), Some(NatsAuth::Token(t)) if t.expose_secret() == "s3cr3t"));
        assert_eq!(o.as_ref().map(|o| o.tls.required), Some(true));
        assert!(!format!("{:?}", o).contains("s3cr3t"));
        assert_eq!(o.as_ref().map(|o| o.url()), Some("tls://***@nats.example:4222,tls://***@nats2.example:4222"));
        assert_eq!(
            parse("nats://localhost:4222").ok().map(|o| (o.auth.method(), o.tls.required)),
            Some(("none", false))
        );
    }

    #[test]
    fn conflicting_credentials_are_rejected() {
        assert!(parse("nats://a:b@h1:4222,nats://a:c@h2:4222").is_err());
        assert!(parse("nats://:b@h1:4222").is_err());
        let dir = std::env::temp_dir().join(format!("walrelay-nats-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let token = dir.join("token");
        std::fs::write(&token, "tok\n").ok();
        let path = token.to_string_lossy().into_owned();
        let both =
            NatsOptions::parse(&RawNats { url: "nats://a:b@h:4222", token_file: Some(&path), ..Default::default() });
        assert!(matches!(both, Err(ConfigError::Invalid { option: "--nats-token-file", .. })));
        let one = NatsOptions::parse(&RawNats { url: "nats://h:4222", token_file: Some(&path), ..Default::default() });
        assert!(matches!(one.map(|o| o.auth), Ok(NatsAuth::Token(t)) if t.expose_secret() == "tok"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn missing_files_name_the_option_and_path() {
        for (option, raw) in [
            (
                "--nats-creds",
                RawNats { url: "nats://h:4222", creds: Some("/nonexistent/u.creds"), ..Default::default() },
            ),
            ("--nats-nkey", RawNats { url: "nats://h:4222", nkey: Some("/nonexistent/u.nk"), ..Default::default() }),
            (
                "--nats-tls-ca",
                RawNats { url: "nats://h:4222", tls_ca: Some("/nonexistent/ca.pem"), ..Default::default() },
            ),
        ] {
            match NatsOptions::parse(&raw) {
                Err(ConfigError::Invalid { option: o, value, .. }) => {
                    assert_eq!(o, option);
                    assert!(value.starts_with("/nonexistent/"), "{value}");
                }
                other => panic!("{option}: {other:?}"),
            }
        }
    }

    #[test]
    fn creds_blocks() {
        let creds =
            "-----BEGIN NATS USER JWT-----\naaa.bbb.ccc\n------END NATS USER JWT------\n\n*** IMPORTANT ***\n\n\
                     -----BEGIN USER NKEY SEED-----\nSUXYZ\n------END USER NKEY SEED------\n";
        assert_eq!(parse_creds(creds), Ok(("aaa.bbb.ccc".to_owned(), "SUXYZ".to_owned())));
        assert!(parse_creds("nothing here").is_err());
    }

    #[test]
    fn loopback_servers() {
        let loopback = |url: &str| parse(url).map(|o| o.is_loopback()).ok();
        assert_eq!(loopback("nats://localhost:4222,nats://127.0.0.2:4222"), Some(true));
        assert_eq!(loopback("nats://[::1]:4222"), Some(true));
        assert_eq!(loopback("nats://127.0.0.1:4222,nats://nats.example:4222"), Some(false));
        assert_eq!(loopback("tls://10.0.0.5:4222"), Some(false));
    }

    #[test]
    fn redaction_masks_userinfo() {
        assert_eq!(redact("nats://tok@h:1"), "nats://***@h:1");
        assert_eq!(redact("nats://u:p@h:1, nats://h2:2"), "nats://u:***@h:1,nats://h2:2");
        assert_eq!(redact("h:4222"), "h:4222");
    }
}
