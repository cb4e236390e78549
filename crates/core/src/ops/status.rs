//! `walrelay status` (stub until written).
use std::time::Duration;

use crate::{config::Settings, relay::RelayError};

/// Options of `status`.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// One JSON object.
    pub json: bool,
    /// Refresh until interrupted.
    pub watch: bool,
    /// Refresh interval.
    pub interval: Duration,
    /// Exit 3 above this lag.
    pub max_lag: Option<u64>,
}

/// Runs `status`.
pub async fn run(_settings: &Settings, _opts: &StatusOptions, _shutdown: tokio::sync::watch::Receiver<bool>) -> Result<u8, RelayError> {
    Ok(1)
}
