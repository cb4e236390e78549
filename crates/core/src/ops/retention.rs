//! The trailing replay slot kept by `run --replay-retention DURATION`.
//!
//! In: the settings (main slot, retention) and the relay's shutdown signal. Out: a slot `<slot>_replay` whose
//! `confirmed_flush_lsn` lags the main slot's by about the retention, so the WAL `replay` needs stays on disk.
//! The task creates the slot (a copy of the main one, at its position) when missing, samples the main slot's
//! confirmed position every few seconds into a small time → LSN history, and advances the replay slot
//! (`pg_replication_slot_advance`) to the position the main slot had `retention` ago, never past where the main slot
//! is now. After a restart the history starts empty, so the replay slot keeps its place until a full retention has
//! been observed again: it may hold more than the retention, never less.
//! See <https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-REPLICATION>.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use pgoutput::Lsn;
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::{
    config::{quote_literal, Settings},
    source::slot,
    source::{self, SourceError},
};

/// How often the slot is advanced once it exists: a quarter of the retention, between 0.5 s and 10 s.
fn tick(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_millis(500), Duration::from_secs(10))
}
/// How often a missing main or replay slot is looked for.
const RETRY: Duration = Duration::from_secs(1);

/// The `application_name` of the session that keeps `replay_slot`, so that `doctor` can tell a replay slot a running
/// relay keeps from one nothing advances (Postgres truncates names to 63 bytes; compare with `left(.., 63)`).
pub(crate) fn keeper_name(replay_slot: &str) -> String {
    format!("walrelay-retention:{replay_slot}")
}

/// Starts the task; `None` when `--replay-retention` is not set.
pub fn spawn(settings: &Settings, shutdown: watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>> {
    let retention = settings.replay_retention?;
    let settings = settings.clone();
    Some(crate::spawn_named("replay-retention", keep(settings, retention, shutdown)))
}

/// Samples of the main slot's confirmed position, oldest first; consecutive equal positions keep the first time.
#[derive(Debug, Default)]
struct History {
    samples: VecDeque<(Instant, Lsn)>,
}

impl History {
    fn record(&mut self, at: Instant, lsn: Lsn) {
        match self.samples.back() {
            Some(&(_, last)) if last >= lsn => {}
            _ => self.samples.push_back((at, lsn)),
        }
    }

    /// The main slot's position `retention` before `now` (the newest sample at or before then), dropping samples
    /// older than it.
    fn horizon(&mut self, now: Instant, retention: Duration) -> Option<Lsn> {
        let cutoff = now.checked_sub(retention)?;
        let newest_old = self.samples.iter().rposition(|&(t, _)| t <= cutoff)?;
        self.samples.drain(..newest_old);
        self.samples.front().map(|&(_, lsn)| lsn)
    }
}

async fn keep(settings: Settings, retention: Duration, mut shutdown: watch::Receiver<bool>) {
    let replay_slot = settings.replay_slot();
    let mut history = History::default();
    let mut control: Option<Client> = None;
    tracing::info!(slot = %replay_slot, retention = %humantime::format_duration(retention), "keeping a replay slot");
    loop {
        if control.as_ref().is_none_or(|c| c.is_closed()) {
            control = match source::connect(&settings.pg_url).await {
                Ok(c) => {
                    let mark = format!("SET application_name = {}", quote_literal(&keeper_name(&replay_slot)));
                    if let Err(err) = c.batch_execute(&mark).await {
                        tracing::debug!(error = %err, "replay slot: cannot set application_name");
                    }
                    Some(c)
                }
                Err(err) => {
                    tracing::warn!(error = %err, "replay slot: cannot connect, retrying");
                    None
                }
            };
        }
        let next = match &control {
            Some(c) => match step(c, &settings, &replay_slot, retention, &mut history).await {
                Ok(next) => next,
                Err(err) => {
                    tracing::warn!(slot = %replay_slot, error = %err, "replay slot: update failed, retrying");
                    RETRY.max(tick(retention) / 2)
                }
            },
            None => tick(retention),
        };
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// One round: create the replay slot if missing, otherwise advance it. Returns when to look again.
async fn step(
    control: &Client,
    settings: &Settings,
    replay_slot: &str,
    retention: Duration,
    history: &mut History,
) -> Result<Duration, SourceError> {
    let Some(main) = slot::info(control, &settings.slot).await? else {
        tracing::debug!(slot = %settings.slot, "replay slot: main slot not there yet");
        return Ok(RETRY);
    };
    let Some(confirmed) = main.confirmed_flush_lsn else {
        return Ok(RETRY);
    };
    let now = Instant::now();
    history.record(now, confirmed);
    let Some(replay) = slot::info(control, replay_slot).await? else {
        slot::copy(control, &settings.slot, replay_slot, false).await?;
        tracing::info!(slot = %replay_slot, lsn = %confirmed, "replay slot created");
        return Ok(tick(retention));
    };
    if replay.is_lost() {
        tracing::error!(slot = %replay_slot, "replay slot is lost; drop it (SELECT pg_drop_replication_slot('{replay_slot}')) and it is recreated");
        return Ok(tick(retention));
    }
    let Some(target) = history.horizon(now, retention) else {
        return Ok(tick(retention));
    };
    let target = target.min(confirmed);
    let current = replay.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
    if target > current && !replay.active {
        slot::advance(control, replay_slot, target).await?;
        tracing::debug!(slot = %replay_slot, from = %current, to = %target, "replay slot advanced");
    }
    Ok(tick(retention))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizon_is_the_position_retention_ago() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = History::default();
        h.record(t0, Lsn(10));
        h.record(t0 + s(10), Lsn(20));
        h.record(t0 + s(20), Lsn(20));
        h.record(t0 + s(30), Lsn(40));
        // Not a full retention observed yet.
        assert_eq!(h.horizon(t0 + s(50), s(60)), None);
        assert_eq!(h.horizon(t0 + s(65), s(60)), Some(Lsn(10)));
        // At t0+25 the position was 20 (first seen at t0+10).
        assert_eq!(h.horizon(t0 + s(85), s(60)), Some(Lsn(20)));
        assert_eq!(h.samples.len(), 2);
        assert_eq!(h.horizon(t0 + s(1000), s(60)), Some(Lsn(40)));
        // A regressed sample (confirmed_flush after a crash) is not recorded.
        h.record(t0 + s(1001), Lsn(30));
        assert_eq!(h.samples.len(), 1);
    }
}
