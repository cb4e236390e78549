//! The trailing replay slot (stub until written).
use crate::config::Settings;

/// Spawns the retention task when `--replay-retention` is set.
pub fn spawn(_settings: &Settings, _shutdown: tokio::sync::watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>> {
    None
}
