//! How walrelay reaches NATS with the [`NatsOptions`] of the configuration, and the one place that turns a failed
//! connection into a [`PublishError`] a user can act on.
//!
//! In: [`NatsOptions`] (server addresses, authentication and TLS, already read and checked by
//! [`crate::config::nats`]). Out: a connected `async_nats::Client` and a [`Rejection`] that fires if the server later
//! rejects the credentials.
//!
//! Why the first connection is made without `retry_on_initial_connect`: with it, async-nats loops on an
//! authorization violation forever and the caller only sees "not connected yet". Made once, the attempt returns the
//! error's kind, so a rejected credential or a failed TLS handshake is reported at once and never retried
//! ([`PublishError::is_transient`]); an unreachable server is retried by the caller with backoff. After the first
//! connection async-nats reconnects by itself; if the server then rejects the credentials (revoked, expired), the
//! event callback reports it through [`Rejection`] and `run` stops with the permanent error.
//! See <https://docs.nats.io/using-nats/developer/connecting/security> and
//! <https://docs.nats.io/running-a-nats-service/configuration/securing_nats/tls>.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_nats::ConnectErrorKind;
use secrecy::ExposeSecret;

use crate::{
    config::nats::{NatsAuth, NatsOptions, NatsTls, TrustRoots},
    sink::publisher::PublishError,
};

/// How long one connection attempt (TCP, TLS, INFO/CONNECT) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl NatsOptions {
    /// Connects once to the first server that answers (no retry: the caller decides, see [`PublishError`]).
    pub async fn connect(&self) -> Result<async_nats::Client, PublishError> {
        self.connect_watched().await.map(|(client, _)| client)
    }

    /// [`connect`](Self::connect), and a [`Rejection`] that resolves if the server later rejects the credentials.
    pub async fn connect_watched(&self) -> Result<(async_nats::Client, Rejection), PublishError> {
        let tls_config = self.tls.client_config().map_err(|reason| PublishError::Tls {
            url: self.url.clone(),
            reason,
            remedy: tls_remedy(&self.tls, None),
        })?;
        let url = self.url.clone();
        let method = self.auth.method();
        let remedy = self.auth.remedy();
        let (rejected_tx, rejected_rx) = tokio::sync::watch::channel(None);
        let rejected_tx = Arc::new(rejected_tx);
        let failures = Arc::new(Mutex::new(Failures::default()));
        let mut options = async_nats::ConnectOptions::new()
            .name("walrelay")
            .connection_timeout(CONNECT_TIMEOUT)
            .max_reconnects(None)
            .ignore_discovered_servers()
            .subscription_capacity(self.capacity)
            .client_capacity(self.capacity)
            .require_tls(self.tls.required)
            .tls_client_config(tls_config)
            .event_callback(move |event| {
                let (url, rejected, failures) = (url.clone(), rejected_tx.clone(), failures.clone());
                async move {
                    if log_event(&event, &url, method, remedy, &failures) {
                        let _ = rejected.send(Some(event.to_string()));
                    }
                }
            });
        if self.tls.first {
            options = options.tls_first();
        }
        options = match &self.auth {
            NatsAuth::None => options,
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.expose_secret().to_owned())
            }
            NatsAuth::Token(token) => options.token(token.expose_secret().to_owned()),
            NatsAuth::Nkey { seed, .. } => options.nkey(seed.expose_secret().to_owned()),
            NatsAuth::Creds { jwt, seed } => {
                let pair = nkeys::KeyPair::from_seed(seed.expose_secret()).map(Arc::new).map_err(|_| {
                    PublishError::Authentication {
                        url: self.url.clone(),
                        method,
                        reason: "the creds file's nkey seed is invalid".into(),
                        remedy,
                    }
                })?;
                options.jwt(jwt.expose_secret().to_owned(), move |nonce| {
                    let pair = pair.clone();
                    async move { pair.sign(&nonce).map_err(async_nats::AuthError::new) }
                })
            }
        };
        let client = options.connect(self.servers.clone()).await.map_err(|err| self.classify(&err))?;
        let rejection = Rejection { rx: rejected_rx, url: self.url.clone(), method, remedy };
        Ok((client, rejection))
    }

    /// The one place that decides what a failed connection means: rejected credentials and TLS failures are
    /// permanent, a server that cannot be reached (refused, timed out, unknown host) is worth retrying.
    fn classify(&self, err: &async_nats::ConnectError) -> PublishError {
        let url = self.url.clone();
        let reason = crate::source::error_chain(err);
        match err.kind() {
            ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                PublishError::Authentication { url, method: self.auth.method(), reason, remedy: self.auth.remedy() }
            }
            ConnectErrorKind::Tls => {
                PublishError::Tls { url, reason, remedy: tls_remedy(&self.tls, rustls_error(err)) }
            }
            ConnectErrorKind::TimedOut | ConnectErrorKind::Dns => PublishError::Unreachable { url, reason },
            _ if rustls_error(err).is_some() => {
                PublishError::Tls { url, reason, remedy: tls_remedy(&self.tls, rustls_error(err)) }
            }
            _ if io_kind(err).is_some_and(|kind| {
                use std::io::ErrorKind::*;
                matches!(kind, ConnectionRefused | TimedOut | HostUnreachable | NetworkUnreachable | AddrNotAvailable)
            }) =>
            {
                PublishError::Unreachable { url, reason }
            }
            _ => PublishError::Connect { url, reason },
        }
    }
}

/// Resolves when the server rejects the credentials of a connection that was accepted before (revoked, expired or
/// changed credentials): async-nats would go on reconnecting and failing, so the relay stops with the error instead.
#[derive(Debug, Clone)]
pub struct Rejection {
    rx: tokio::sync::watch::Receiver<Option<String>>,
    url: String,
    method: &'static str,
    remedy: &'static str,
}

impl Rejection {
    /// A rejection that never comes (for tests of the loop without a server).
    pub fn never() -> Self {
        let (_, rx) = tokio::sync::watch::channel(None);
        Self { rx, url: String::new(), method: "none", remedy: "" }
    }

    /// Waits for the rejection (forever, if it never comes) and returns it as a permanent error.
    pub async fn rejected(&mut self) -> PublishError {
        loop {
            if let Some(reason) = self.rx.borrow_and_update().clone() {
                return PublishError::Authentication {
                    url: self.url.clone(),
                    method: self.method,
                    reason,
                    remedy: self.remedy,
                };
            }
            if self.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The same connection problem reported again and again: while the server is down async-nats reports every failed
/// reconnect attempt (several a second at first), so [`log_event`] logs the first, then one line each time the count
/// doubles, and one line with the count when the connection is back.
#[derive(Debug, Default)]
struct Failures {
    last: String,
    count: u32,
}

/// Logs what async-nats reports after the first connection; a rejected credential is an error with its remedy.
/// Returns whether the event was a rejected credential.
fn log_event(event: &async_nats::Event, url: &str, method: &str, remedy: &str, failures: &Mutex<Failures>) -> bool {
    use async_nats::{ClientError, Event, ServerError};
    let auth_failure = match event {
        Event::ServerError(ServerError::AuthorizationViolation) => true,
        // The server's words for credentials it no longer accepts, and async-nats' for a failed reconnect.
        Event::ServerError(ServerError::Other(text)) | Event::ClientError(ClientError::Other(text)) => {
            let text = text.to_ascii_lowercase();
            text.contains("authorization violation")
                || text.contains("authentication expired")
                || text.contains("authentication revoked")
                || text.contains("failed signing nonce")
        }
        _ => false,
    };
    if auth_failure {
        tracing::error!(url, auth = method, event = %event, "nats authentication failed; {remedy}");
    } else if matches!(event, Event::Disconnected) {
        tracing::warn!(url, "nats connection lost, reconnecting");
    } else if matches!(event, Event::Connected) {
        let mut failures = failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.count > 0 {
            tracing::info!(url, failed_attempts = failures.count, "nats reconnected");
        }
        *failures = Failures::default();
    } else if matches!(event, Event::ServerError(_) | Event::ClientError(_)) {
        let text = event.to_string();
        let mut failures = failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.last == text {
            failures.count = failures.count.saturating_add(1);
        } else {
            *failures = Failures { last: text, count: 1 };
        }
        if failures.count.is_power_of_two() {
            tracing::warn!(url, event = %event, attempts = failures.count, "nats connection problem");
        } else {
            tracing::debug!(url, event = %event, attempts = failures.count, "nats connection problem, again");
        }
    }
    auth_failure
}

/// The remedy for a failed TLS handshake with these settings (and the TLS library's error, when there is one).
fn tls_remedy(tls: &NatsTls, error: Option<&rustls::Error>) -> String {
    let certificate = match &tls.roots {
        TrustRoots::System => "the server's certificate must be trusted: pass its CA with --nats-tls-ca".to_owned(),
        TrustRoots::CaFile(path) => format!(
            "check that {} signed the server's certificate and that it names the host in --nats-url",
            path.display()
        ),
    };
    let plaintext = "the server does not speak TLS on this port: enable tls { cert_file, key_file } on the server, or \
                     connect without TLS (nats:// and no --nats-tls-* options)";
    let mut remedy = match error {
        Some(rustls::Error::InvalidCertificate(_)) => certificate,
        Some(rustls::Error::InvalidMessage(_)) => plaintext.to_owned(),
        Some(rustls::Error::AlertReceived(_)) => "the server refused the handshake: if it verifies clients \
                                                   (tls { verify: true }), pass --nats-tls-cert and --nats-tls-key \
                                                   with a certificate its CA signed"
            .to_owned(),
        _ => format!("{certificate}; or {plaintext}"),
    };
    if tls.first {
        remedy.push_str("; --nats-tls-first needs the server's tls { handshake_first: true } (nats-server 2.10.4+)");
    }
    remedy
}

/// The rustls error somewhere in a connection error's chain (tokio-rustls wraps it in an `io::Error`).
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// The kind of the first `io::Error` in a connection error's chain.
fn io_kind(err: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = e.source();
    }
    None
}
