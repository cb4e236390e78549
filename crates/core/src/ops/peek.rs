//! `walrelay peek` (stub until written).
use crate::{config::Settings, relay::RelayError};

/// Runs `peek`.
pub async fn run(_settings: &Settings, _limit: usize, _json: bool) -> Result<(), RelayError> {
    Ok(())
}
