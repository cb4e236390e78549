//! `walrelay teardown` (stub until written).
use crate::{config::Settings, relay::RelayError};

/// Options of `teardown`.
#[derive(Debug, Clone, Default)]
pub struct TeardownOptions {
    /// Drop even while active.
    pub force: bool,
    /// Also the replay slot.
    pub replay_slot: bool,
    /// Also the publication.
    pub publication: bool,
    /// Also the stream.
    pub stream: bool,
}

/// Runs `teardown`.
pub async fn run(_settings: &Settings, _opts: &TeardownOptions) -> Result<(), RelayError> {
    Ok(())
}
