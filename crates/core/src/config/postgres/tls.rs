//! TLS for every Postgres connection: libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`.
//!
//! In: those parameters, read from `--pg-url` by [`super`] ([`PgUrl`](super::PgUrl)). Out: one [`PgTls`], built once when the
//! settings are validated (so a missing or unreadable file is a usage error, exit 2), from which both kinds of
//! connection take their TLS: the SQL connections get its rustls `ClientConfig` through [`PgTls::connector`], the
//! replication connection gets the same mode, trust anchors and client identity as a `pgwire_replication::TlsConfig`
//! ([`PgTls::replication`]; that crate builds its rustls configuration from file paths, so it is handed the same
//! files, `system` included, resolved to the OS bundle file).
//!
//! Modes follow <https://www.postgresql.org/docs/current/libpq-ssl.html#LIBPQ-SSL-PROTECTION>: `disable` never uses
//! TLS; `prefer` (the default) tries TLS and falls back to plaintext when the server has none; `require` insists on
//! TLS without checking the certificate (unless a root certificate is given: then, as in libpq, it is `verify-ca`);
//! `verify-ca` checks the chain against the trust anchors; `verify-full` also checks that the certificate names the
//! host (an IP host against an IP SAN).

use std::{
    fmt, io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::config::ConfigError;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, unverified; plaintext otherwise.
    Prefer,
    /// TLS, certificate not checked.
    Require,
    /// TLS, certificate chain checked against the trust anchors.
    VerifyCa,
    /// TLS, chain and host name checked.
    VerifyFull,
}

impl SslMode {
    const ALL: [SslMode; 5] = [Self::Disable, Self::Prefer, Self::Require, Self::VerifyCa, Self::VerifyFull];

    fn parse(value: &str) -> Result<Self, ConfigError> {
        // libpq's `allow` (plaintext first, then TLS) is served as `prefer`.
        let name = if value == "allow" { "prefer" } else { value };
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == name)
            .ok_or_else(|| invalid(value, "sslmode must be disable, prefer, require, verify-ca or verify-full".into()))
    }

    /// The libpq name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Whether the server certificate is checked.
    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }
}

/// What the server certificate is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustAnchors {
    /// `sslrootcert=<file>` (or libpq's default `~/.postgresql/root.crt`).
    CaFile(PathBuf),
    /// `sslrootcert=system`: the operating system's trust store, this bundle file.
    System(PathBuf),
}

impl TrustAnchors {
    fn path(&self) -> &Path {
        match self {
            Self::CaFile(p) | Self::System(p) => p,
        }
    }
}

impl fmt::Display for TrustAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CaFile(p) => write!(f, "CA file {}", p.display()),
            Self::System(p) => write!(f, "the system trust store ({})", p.display()),
        }
    }
}

/// The TLS parameters of `--pg-url`, as libpq names them.
#[derive(Debug, Default, Clone)]
pub struct TlsParams {
    /// `sslmode`.
    pub sslmode: Option<String>,
    /// `sslrootcert`.
    pub sslrootcert: Option<String>,
    /// `sslcert`.
    pub sslcert: Option<String>,
    /// `sslkey`.
    pub sslkey: Option<String>,
}

/// The TLS settings of every Postgres connection of this process, parsed and loaded once.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    anchors: Option<TrustAnchors>,
    client_cert: Option<(PathBuf, PathBuf)>,
    config: Arc<ClientConfig>,
    /// The chain-and-name verifier of the trust anchors (when certificates are verified).
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("anchors", &self.anchors)
            .field("client_cert", &self.client_cert)
            .finish_non_exhaustive()
    }
}

fn invalid(value: &str, reason: String) -> ConfigError {
    ConfigError::Invalid { option: "--pg-url", value: value.to_owned(), reason }
}

/// A file named by a URL parameter: missing or unreadable is a usage error naming the parameter and the path.
fn read_file(param: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|err| {
        invalid(&format!("{param}={}", path.display()), format!("cannot read {param} file {}: {err}", path.display()))
    })
}

/// The certificates of the PEM file named by a URL parameter (`what` names the file's kind in the error).
fn read_certs(param: &str, path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read_file(param, path)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|err| invalid(param, format!("{} is not a {what}: {err}", path.display())))
}

impl PgTls {
    /// Builds the settings from the URL's parameters, loading every file they name.
    pub fn from_params(params: &TlsParams) -> Result<Self, ConfigError> {
        let mut mode = params.sslmode.as_deref().map(SslMode::parse).transpose()?.unwrap_or(SslMode::Prefer);
        let home_file = |name: &str| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".postgresql").join(name));
        let anchors = match params.sslrootcert.as_deref() {
            Some("system") => Some(TrustAnchors::System(system_bundle()?)),
            Some(path) => {
                // libpq: with a root certificate given, `require` behaves like `verify-ca`.
                if mode == SslMode::Require {
                    mode = SslMode::VerifyCa;
                }
                Some(TrustAnchors::CaFile(PathBuf::from(path)))
            }
            None if mode.verifies() => match home_file("root.crt").filter(|p| p.exists()) {
                Some(path) => Some(TrustAnchors::CaFile(path)),
                None => {
                    return Err(invalid(
                        &format!("sslmode={}", mode.as_str()),
                        "no root certificate to verify the server against: set sslrootcert=<CA file> (or \
                         sslrootcert=system for the operating system's trust store) in the URL, or use \
                         ~/.postgresql/root.crt"
                            .into(),
                    ))
                }
            },
            None => None,
        };
        let client_cert = match (params.sslcert.as_deref(), params.sslkey.as_deref()) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "sslcert/sslkey",
                    "a client certificate needs both sslcert and sslkey (PEM files)".into(),
                ))
            }
        };
        let (config, webpki) = build_config(mode, anchors.as_ref(), client_cert.as_ref())?;
        Ok(Self { mode, anchors, client_cert, config: Arc::new(config), webpki })
    }

    /// The effective `sslmode`.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// What the server certificate is checked against, when it is.
    pub fn anchors(&self) -> Option<&TrustAnchors> {
        self.anchors.as_ref().filter(|_| self.mode.verifies())
    }

    /// Whether a client certificate is presented.
    pub fn has_client_cert(&self) -> bool {
        self.client_cert.is_some()
    }

    /// The `sslmode` tokio-postgres negotiates with (verification is in the rustls configuration).
    pub(crate) fn driver_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        }
    }

    /// The TLS connector of the SQL connections.
    pub(crate) fn connector(&self) -> MakeRustls {
        MakeRustls { config: Arc::clone(&self.config) }
    }

    /// The same settings for pgwire-replication's connection to `host`:`port`.
    ///
    /// `verify-ca` needs help: pgwire-replication's chain-only verifier forgives a name mismatch only as rustls'
    /// older `NotValidForName` error, while rustls 0.23 reports it as `NotValidForNameContext`, so its verify-ca
    /// still checks the host name. For `verify-ca`, [`name_in_certificate`] reads the server's certificate first
    /// (its chain verified as the SQL connections verify it) and, when it names another host, the replication
    /// connection asks for that name: it then checks the chain and a name the certificate holds, which is what
    /// verify-ca promises (any certificate the trust anchors signed). `verify-full` is left as it is.
    pub(crate) async fn replication_for(&self, host: &str, port: u16) -> pgwire_replication::TlsConfig {
        let mut tls = self.replication(host);
        if self.mode == SslMode::VerifyCa {
            match self.name_in_certificate(host, port).await {
                Ok(Some(name)) => {
                    tracing::debug!(host, name = %name, "verify-ca: the certificate names another host; the replication connection checks the chain with that name");
                    tls.sni_hostname = Some(name);
                }
                Ok(None) => {}
                // The replication connection meets the same failure and reports it.
                Err(err) => tracing::debug!(host, error = %err, "cannot read the server certificate ahead"),
            }
        }
        tls
    }

    /// For `verify-ca`: a name the server's certificate holds when it does not name `host`, `None` when it does
    /// (or the server has no TLS). The handshake verifies the chain ([`ChainOnly`]), so a certificate the trust
    /// anchors did not sign ends here with the TLS error.
    async fn name_in_certificate(&self, host: &str, port: u16) -> io::Result<Option<String>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Some(webpki) = &self.webpki else {
            return Ok(None);
        };
        let mut tcp = tokio::net::TcpStream::connect((host, port)).await?;
        // SSLRequest: length 8, code 80877103; the server answers one byte, `S` for TLS.
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        if answer[0] != b'S' {
            return Ok(None);
        }
        let name = ServerName::try_from(host.to_owned()).map_err(io::Error::other)?;
        let mut stream = tokio_rustls::TlsConnector::from(Arc::clone(&self.config)).connect(name.clone(), tcp).await?;
        let certs = stream.get_ref().1.peer_certificates().map(<[CertificateDer<'_>]>::to_vec).unwrap_or_default();
        let _ = stream.shutdown().await;
        let Some((end_entity, intermediates)) = certs.split_first() else {
            return Ok(None);
        };
        match webpki.verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now()) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
                presented,
                ..
            })) => Ok(presented.iter().find_map(|p| presented_name(p))),
            _ => Ok(None),
        }
    }

    /// The same settings for pgwire-replication's connection to `host`, without reading the certificate ahead.
    fn replication(&self, host: &str) -> pgwire_replication::TlsConfig {
        use pgwire_replication::SslMode as M;
        let mode = match self.mode {
            SslMode::Disable => M::Disable,
            SslMode::Prefer => M::Prefer,
            SslMode::Require => M::Require,
            SslMode::VerifyCa => M::VerifyCa,
            SslMode::VerifyFull => M::VerifyFull,
        };
        let mut tls = pgwire_replication::TlsConfig {
            mode,
            ca_pem_path: self.anchors.as_ref().map(|a| a.path().to_owned()),
            ..Default::default()
        };
        // pgwire-replication refuses verify-full with an IP host unless a server name is set; the name it then
        // verifies is that IP, against the certificate's IP SANs, as libpq does.
        if self.mode == SslMode::VerifyFull && host.parse::<std::net::IpAddr>().is_ok() {
            tls.sni_hostname = Some(host.to_owned());
        }
        if let Some((cert, key)) = &self.client_cert {
            tls = tls.with_client_cert(cert.clone(), key.clone());
        }
        tls
    }
}

/// The OS trust store as one PEM bundle file (`SSL_CERT_FILE` or the distribution's bundle).
fn system_bundle() -> Result<PathBuf, ConfigError> {
    if let Some(file) = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from).filter(|p| p.is_file()) {
        return Ok(file);
    }
    openssl_probe::probe().cert_file.filter(|p| p.is_file()).ok_or_else(|| {
        invalid(
            "sslrootcert=system",
            "no system trust store found (looked for the distribution's CA bundle and SSL_CERT_FILE); install \
             ca-certificates or give sslrootcert=<CA file>"
                .into(),
        )
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A name as rustls reports the names a certificate presents (`DnsName("db.example")`, `IpAddress(10.0.0.5)`), as a
/// server name to ask for; a wildcard `*.example` gives a name under it.
fn presented_name(presented: &str) -> Option<String> {
    let name = if let Some(dns) = presented.strip_prefix("DnsName(\"").and_then(|r| r.strip_suffix("\")")) {
        match dns.strip_prefix("*.") {
            Some(domain) => format!("walrelay.{domain}"),
            None => dns.to_owned(),
        }
    } else {
        let ip = presented.strip_prefix("IpAddress(").and_then(|r| r.strip_suffix(')'))?;
        ip.parse::<std::net::IpAddr>().ok()?.to_string()
    };
    ServerName::try_from(name.clone()).ok().map(|_| name)
}

type Built = (ClientConfig, Option<Arc<rustls::client::WebPkiServerVerifier>>);

fn build_config(
    mode: SslMode,
    anchors: Option<&TrustAnchors>,
    client_cert: Option<&(PathBuf, PathBuf)>,
) -> Result<Built, ConfigError> {
    let mut roots = RootCertStore::empty();
    if let Some(anchors) = anchors {
        let certs = read_certs("sslrootcert", anchors.path(), "PEM certificate file")?;
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(invalid("sslrootcert", format!("{} holds no usable CA certificate", anchors.path().display())));
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| invalid("sslmode", format!("TLS setup failed: {err}")))?;
    let roots = Arc::new(roots);
    let mut kept = None;
    let verifier: Arc<dyn ServerCertVerifier> = if mode.verifies() {
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .map_err(|err| invalid("sslrootcert", format!("cannot use the root certificates: {err}")))?;
        kept = Some(Arc::clone(&webpki));
        if mode == SslMode::VerifyFull {
            webpki
        } else {
            Arc::new(ChainOnly { inner: webpki })
        }
    } else {
        Arc::new(NoVerification { schemes: provider().signature_verification_algorithms.supported_schemes() })
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    match client_cert {
        Some((cert_path, key_path)) => {
            let chain = read_certs("sslcert", cert_path, "PEM certificate")?;
            if chain.is_empty() {
                return Err(invalid("sslcert", format!("{} holds no certificate", cert_path.display())));
            }
            let key_pem = read_file("sslkey", key_path)?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|err| invalid("sslkey", format!("{} is not a PEM private key: {err}", key_path.display())))?;
            let config = builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| invalid("sslcert", format!("the client certificate and key do not fit: {err}")))?;
            Ok((config, kept))
        }
        None => Ok((builder.with_no_client_auth(), kept)),
    }
}

/// `verify-ca`: the chain must lead to a trust anchor; the name in the certificate is not checked.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(NotValidForName | NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `prefer` and `require`: encryption without authentication of the server, as libpq does in these modes.
#[derive(Debug)]
struct NoVerification {
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// tokio-postgres' TLS hook over rustls.
#[derive(Clone)]
pub(crate) struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        let name = ServerName::try_from(domain.to_owned())?;
        Ok(RustlsConnect { config: Arc::clone(&self.config), name })
    }
}

/// One TLS handshake.
pub(crate) struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<RustlsStream<S>>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = tokio_rustls::TlsConnector::from(self.config).connect(self.name, stream).await?;
            Ok(RustlsStream(stream))
        })
    }
}

/// A TLS stream to the server.
pub(crate) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding (`n` flag): always accepted, and needs no guess of the certificate's hash.
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Whether a driver error is a TLS failure: a rustls error somewhere in its causes, or tokio-postgres' own TLS
/// error kind (e.g. "server does not support TLS" under `require`), which it reports only through its display text
/// (a fixed client-side string, not a server message).
pub(crate) fn is_tls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()) {
                return true;
            }
        }
        cur = e.source();
    }
    err.downcast_ref::<tokio_postgres::Error>().is_some_and(|e| e.to_string().starts_with("error performing TLS"))
}
