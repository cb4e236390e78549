//! `walrelay doctor` (stub until written).
use crate::{config::Settings, relay::RelayError};

/// Runs `doctor`.
pub async fn run(_settings: &Settings) -> Result<u8, RelayError> {
    Ok(1)
}
