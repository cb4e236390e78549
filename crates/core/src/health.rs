//! Liveness and readiness of `walrelay run`, and the HTTP endpoint that serves them with the metrics
//! (design.md §4c).
//!
//! In: the relay's phase, set by the relay loop ([`Health::streaming`] once `START_REPLICATION` succeeded,
//! [`Health::standing_by`] while another relay holds the slot, [`Health::retrying`] during a backoff), and the
//! NATS client of the streaming session, whose connection state async-nats keeps current. Out: on `--metrics-addr`,
//! `/healthz` (200 while the process runs), `/readyz` (200 while a session streams and NATS is connected, else 503
//! with a one-line reason), `/standbyz` (200 also while standing by) and `/metrics` (the Prometheus text the caller
//! renders, with `walrelay_ready` and `walrelay_nats_connected` set from the same readiness at each scrape).
//!
//! `/standbyz` exists for Kubernetes' readiness probe with two replicas (docs/deploy.md): the standing-by replica
//! must count as ready there, or a rolling update waits forever for a new pod that stands by behind the old one. A
//! standing-by relay has just connected to Postgres and NATS and found the slot held (it retries every second), so
//! it is a healthy member of the pair; a relay that cannot connect is not, and stops the rollout. `/readyz` keeps
//! telling which replica is the active one.
//!
//! Readiness is computed when asked, from the phase and the client's state at that moment: a stopped nats-server
//! makes `/readyz` 503 as soon as async-nats notices the closed connection, without waiting for a publish to fail.
//! Kubernetes' probe semantics: <https://kubernetes.io/docs/concepts/configuration/liveness-readiness-startup-probes/>.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex, PoisonError},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Method, Request, Response, StatusCode};
use tokio::{net::TcpListener, sync::watch};

/// Where the relay stands, as readiness sees it.
#[derive(Debug, Clone, Default)]
enum Phase {
    /// Before the first session streams.
    #[default]
    Connecting,
    /// Another relay holds the slot.
    StandingBy,
    /// A replication session is streaming, publishing through this client.
    Streaming(async_nats::Client),
    /// Between sessions, after an error; the reason is one line.
    Retrying(String),
    /// A stop was requested.
    Stopping,
}

/// The relay's readiness, shared between the relay loop (writer) and the HTTP endpoint (reader).
#[derive(Debug, Default)]
pub struct Health {
    phase: Mutex<Phase>,
}

impl Health {
    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase;
    }

    /// A session is being set up (connecting to Postgres and NATS, checking the slot).
    pub fn connecting(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        // Standing by and retrying keep their more precise reason while the next attempt connects.
        if matches!(*phase, Phase::Streaming(_)) {
            *phase = Phase::Connecting;
        }
    }

    /// `START_REPLICATION` succeeded: the session streams and publishes through `client`.
    pub fn streaming(&self, client: &async_nats::Client) {
        self.set(Phase::Streaming(client.clone()));
    }

    /// Another relay holds the slot; this one waits for it.
    pub fn standing_by(&self) {
        self.set(Phase::StandingBy);
    }

    /// The session ended with a transient error; the relay retries after a backoff.
    pub fn retrying(&self, reason: &str) {
        let line = reason.split_whitespace().collect::<Vec<_>>().join(" ");
        self.set(Phase::Retrying(line));
    }

    /// A stop was requested, or the relay ended.
    pub fn stopping(&self) {
        self.set(Phase::Stopping);
    }

    /// `/standbyz`: `Ok("ready")` while streaming (as [`Health::readiness`]), `Ok("standing by")` while another
    /// relay holds the slot, else the one-line reason.
    pub fn standby_readiness(&self) -> Result<&'static str, String> {
        let standing_by = matches!(*self.phase.lock().unwrap_or_else(PoisonError::into_inner), Phase::StandingBy);
        if standing_by {
            return Ok("standing by");
        }
        self.readiness().map(|()| "ready")
    }

    /// `Ok` when ready, else the one-line reason.
    pub fn readiness(&self) -> Result<(), String> {
        let phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match phase {
            Phase::Streaming(client) => match client.connection_state() {
                async_nats::connection::State::Connected => Ok(()),
                async_nats::connection::State::Disconnected => Err("nats disconnected".into()),
                async_nats::connection::State::Pending => Err("nats connecting".into()),
            },
            Phase::Connecting => Err("connecting".into()),
            Phase::StandingBy => Err("standing by: slot is in use".into()),
            Phase::Retrying(reason) => Err(format!("retrying: {reason}")),
            Phase::Stopping => Err("stopping".into()),
        }
    }
}

impl Health {
    /// Whether the streaming session's NATS connection is up (false between sessions).
    pub fn nats_connected(&self) -> bool {
        let phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        matches!(&*phase, Phase::Streaming(client) if client.connection_state() == async_nats::connection::State::Connected)
    }

    /// Sets `walrelay_ready` and `walrelay_nats_connected` to what `/readyz` answers at this moment: called before
    /// `/metrics` is rendered, so a scrape and a probe agree.
    pub fn export(&self) {
        let ready = self.readiness().is_ok();
        metrics::gauge!(crate::stats::READY).set(f64::from(u8::from(ready)));
        metrics::gauge!(crate::stats::NATS_CONNECTED).set(f64::from(u8::from(self.nats_connected())));
    }
}

/// Renders the Prometheus exposition text for `/metrics`.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `/healthz`, `/readyz`, `/standbyz` and `/metrics` on `listener` (HTTP/1.1) until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: RenderMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept a metrics connection");
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => return,
        };
        let health = health.clone();
        let metrics = metrics.clone();
        crate::spawn_named("http", async move {
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&req, &health, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(err) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!(peer = %peer, error = %err, "metrics connection ended");
            }
        });
    }
}

/// The response to one request.
fn respond(req: &Request<Incoming>, health: &Health, metrics: &RenderMetrics) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match health.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
        "/standbyz" => match health.standby_readiness() {
            Ok(state) => text(StatusCode::OK, format!("{state}\n")),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
        "/metrics" => {
            health.export();
            let mut response = text(StatusCode::OK, metrics());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found: /healthz, /readyz, /standbyz, /metrics\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_the_phase() {
        let health = Health::default();
        assert_eq!(health.readiness(), Err("connecting".to_owned()));
        health.standing_by();
        assert_eq!(health.readiness(), Err("standing by: slot is in use".to_owned()));
        health.connecting();
        assert_eq!(health.readiness(), Err("standing by: slot is in use".to_owned()), "keeps the precise reason");
        health.retrying("cannot connect\n  to postgres");
        assert_eq!(health.readiness(), Err("retrying: cannot connect to postgres".to_owned()));
        health.stopping();
        assert_eq!(health.readiness(), Err("stopping".to_owned()));
    }

    #[test]
    fn standing_by_is_ready_for_standbyz_only() {
        let health = Health::default();
        assert_eq!(health.standby_readiness(), Err("connecting".to_owned()));
        health.standing_by();
        assert_eq!(health.standby_readiness(), Ok("standing by"));
        assert!(health.readiness().is_err());
        health.retrying("cannot connect to postgres");
        assert_eq!(health.standby_readiness(), Err("retrying: cannot connect to postgres".to_owned()));
        health.stopping();
        assert_eq!(health.standby_readiness(), Err("stopping".to_owned()));
    }
}
