//! walrelay's relay library: replication source, outbox mapping, JetStream publisher, ack tracking, configuration,
//! and the operator commands built on them. The data path is drawn in [`relay`].

pub mod checkpoint;
pub mod config;
pub mod health;
pub mod mapping;
pub mod ops;
pub mod relay;
pub mod sink;
pub mod source;
pub mod stats;

/// Spawns a task inside a span named after it, so its logs say which task wrote them.
pub fn spawn_named<F>(name: &'static str, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument;
    tokio::spawn(future.instrument(tracing::info_span!("task", task = name)))
}

/// Resolves once the shutdown watch turns true (never, if its sender is gone without a stop).
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        let stop = *rx.borrow_and_update();
        if stop {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
