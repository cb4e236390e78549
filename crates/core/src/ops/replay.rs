//! `walrelay replay` (stub until written).
use pgoutput::Lsn;

use crate::{config::Settings, relay::RelayError};

/// Runs `replay`.
pub async fn run(_settings: &Settings, _from: Lsn, _to: Option<Lsn>, _stdout: bool) -> Result<(), RelayError> {
    Ok(())
}
