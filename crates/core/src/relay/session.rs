//! One replication session's main loop: replication messages in, publishes out, acks back into the checkpoint,
//! confirmed LSNs back to Postgres.
//!
//! In: a [`ReplicationStream`] (the pgoutput session, or an in-memory one in tests), a [`Publisher`] over any
//! [`Transport`] (JetStream, or an in-memory stream in tests), the stream's high-water mark and the slot's confirmed
//! position. Out: events in the stream in WAL order, and standby status updates that never pass what is acked
//! (design.md rules 1-3). The loop is one `select!` whose branches are numbered by priority; everything it decides is
//! reachable from unit tests with in-memory fakes (see the tests below), beside the real-server tests.

use std::{
    collections::VecDeque,
    sync::atomic::Ordering,
    time::{Duration, Instant, SystemTime},
};

use pgoutput::Lsn;
use pgwire_replication::ReplicationEvent;
use tokio::sync::watch;

use super::RelayError;
use crate::{
    checkpoint::{Checkpoint, Mark, TxnTag},
    config::Settings,
    mapping::event::header,
    sink::{
        connect::Rejection,
        publisher::{PublishError, Publisher},
        stream::{HeldMessage, HighWater, Probe},
        transport::Transport,
    },
    source::{
        self,
        replication::{self, ReplicationStream},
        transaction::{Assembled, Assembler},
        SourceError,
    },
    stats::Stats,
};

/// How a session ended without error.
pub(super) enum SessionEnd {
    /// Shutdown was requested.
    Stopped,
}

/// State of one session's main loop.
pub(super) struct Session<'a, X> {
    pub(super) settings: &'a Settings,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) stats: &'a Stats,
    pub(super) publisher: Publisher<TxnTag, X>,
    pub(super) checkpoint: Checkpoint,
    pub(super) assembler: Assembler,
    pub(super) open_tag: Option<TxnTag>,
    pub(super) hw: HighWater,
    pub(super) wal_end: Lsn,
    /// Reads the stream for the durability checks of `--nats-sync-interval`.
    pub(super) probe: &'a dyn Probe,
    pub(super) commit_times: CommitTimes,
}

/// A durability check in flight: the message looked for, when the check was issued, and what the stream holds.
type Check = futures::future::BoxFuture<'static, (Mark, std::time::Instant, Result<Option<HeldMessage>, PublishError>)>;

/// How often the loop checks, while acked events wait for `interval`, that the stream still holds them: often
/// enough that a due transaction is confirmed (and a lost tail noticed) within a small part of the interval, at
/// most one request per second.
pub(super) fn check_period(interval: Duration) -> Duration {
    (interval / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// The commit LSN and time of each transaction with events in flight, oldest first: acks come in send order, so the
/// acked event's transaction is at the front. Feeds `walrelay_acked_lsn` and `walrelay_commit_to_ack_seconds`
/// (one entry per transaction, none per event).
#[derive(Debug, Default)]
pub(super) struct CommitTimes {
    open: (Lsn, i64),
    in_flight: VecDeque<(TxnTag, Lsn, i64)>,
}

impl CommitTimes {
    fn begin(&mut self, commit_lsn: Lsn, commit_time_micros: i64) {
        self.open = (commit_lsn, commit_time_micros);
    }

    fn published(&mut self, tag: TxnTag) {
        if self.in_flight.back().map(|&(t, ..)| t) != Some(tag) {
            self.in_flight.push_back((tag, self.open.0, self.open.1));
        }
    }

    fn acked(&mut self, tag: TxnTag) -> Option<(Lsn, i64)> {
        while self.in_flight.front().is_some_and(|&(t, ..)| t < tag) {
            self.in_flight.pop_front();
        }
        self.in_flight.front().filter(|&&(t, ..)| t == tag).map(|&(_, lsn, time)| (lsn, time))
    }
}

/// While idle, the relay logs one line every this many progress intervals (and at the first idle one).
const IDLE_LOG_TICKS: u32 = 30;

/// Upper bound on payload bytes in flight, besides the event count.
const MAX_IN_FLIGHT_BYTES: usize = 64 * 1024 * 1024;

impl<X: Transport> Session<'_, X> {
    /// Runs until shutdown (after reading on to the open transaction's commit) or the first error.
    pub(super) async fn main_loop(
        &mut self,
        repl: &mut impl ReplicationStream,
        rejection: &mut Rejection,
    ) -> Result<SessionEnd, RelayError> {
        let settings = self.settings;
        let mut shutdown = self.shutdown.clone();
        let mut progress = tokio::time::interval(settings.progress_interval);
        progress.tick().await;
        let mut last_acked = self.stats.acked.load(Ordering::Relaxed);
        let mut last_tick = Instant::now();
        let mut idle_ticks = 0u32;
        let mut durability = tokio::time::interval(check_period(settings.nats_sync_interval.unwrap_or_default()));
        durability.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check: Option<Check> = None;
        loop {
            let has_room = self.publisher.in_flight() < settings.max_in_flight
                && self.publisher.in_flight_bytes() < MAX_IN_FLIGHT_BYTES;
            tokio::select! {
                biased;
                // 1. shutdown
                _ = crate::stopped(&mut shutdown) => {
                    self.stats.health.stopping();
                    if let Err(err) = self.finish_open_transaction(repl).await {
                        tracing::warn!(error = %source::error_chain(&err), "stopping: could not read the open transaction's commit");
                    }
                    tracing::info!(in_flight = self.publisher.in_flight(), "stopping: waiting for in-flight acks");
                    return Ok(SessionEnd::Stopped);
                }
                // 1b. NATS rejected the credentials of the open connection (revoked, expired): permanent
                err = rejection.rejected() => return Err(err.into()),
                // 2. completed acks
                ack = self.publisher.next_ack(), if self.publisher.in_flight() > 0 => {
                    let ack = ack?;
                    self.stats.acked();
                    self.observe_ack(ack.tag);
                    self.checkpoint.acked(ack.tag, ack.sequence, ack.id, now());
                    self.report(repl);
                }
                // 2b. a durability check answered: confirm what is durable, or start over when the stream lost it
                checked = futures::future::OptionFuture::from(check.as_mut()), if check.is_some() => {
                    check = None;
                    if let Some((mark, issued, held)) = checked {
                        self.on_checked(mark, issued, held, repl)?;
                    }
                }
                // 2c. time for a durability check (with --nats-sync-interval, while acked events wait)
                _ = durability.tick(), if settings.nats_sync_interval.is_some() && check.is_none() => {
                    self.stats.durability_pending(self.checkpoint.waiting_events());
                    if let Some(mark) = self.checkpoint.to_check().cloned() {
                        let (issued, probe) = (now(), self.probe.message_at(mark.sequence));
                        check = Some(Box::pin(async move { (mark, issued, probe.await) }));
                    }
                }
                // 3. progress / status deadline
                _ = progress.tick() => {
                    let acked = self.stats.acked.load(Ordering::Relaxed);
                    let rate = (acked - last_acked) as f64 / last_tick.elapsed().as_secs_f64().max(0.001);
                    let moved = acked != last_acked || self.publisher.in_flight() > 0;
                    last_acked = acked;
                    last_tick = Instant::now();
                    let confirmed = self.checkpoint.confirmed();
                    let lag_bytes = self.wal_end.0.saturating_sub(confirmed.0);
                    self.stats.progress(self.publisher.in_flight(), lag_bytes);
                    // Progress when something moved; while idle, one line every IDLE_LOG_TICKS intervals.
                    idle_ticks = if moved { 0 } else { idle_ticks.saturating_add(1) };
                    if !moved {
                        if idle_ticks % IDLE_LOG_TICKS == 1 {
                            tracing::info!(acked, confirmed_lsn = %confirmed, lag_bytes, "idle, no events");
                        }
                        continue;
                    }
                    tracing::info!(
                        events_per_sec = rate.round(),
                        acked,
                        in_flight = self.publisher.in_flight(),
                        confirmed_lsn = %confirmed,
                        lag_bytes,
                        "progress"
                    );
                }
                // 4. next replication message, while the in-flight window has room
                event = repl.recv(), if has_room => {
                    let event = event.map_err(|e| replication::classify(e, &settings.slot, &settings.publication, &settings.pg_url))?;
                    match event {
                        Some(event) => self.on_event(event, repl).await?,
                        None => {
                            return Err(SourceError::Replication { reason: "replication stream ended".into(), transient: true }.into());
                        }
                    }
                }
            }
        }
    }

    /// On a stop (design.md §4): when every event of the transaction being read is published, its Commit is what
    /// comes next on the wire (changes of other tables may come before it); read on to it, bounded by
    /// `--shutdown-timeout`, so the transaction is confirmed once its acks arrive and a clean stop leaves nothing to
    /// re-decode. Another outbox row means it is not fully published: it stays unconfirmed (the next start
    /// publishes it).
    async fn finish_open_transaction(&mut self, repl: &mut impl ReplicationStream) -> Result<(), RelayError> {
        let settings = self.settings;
        let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
        while let Some(tag) = self.open_tag {
            let event = match tokio::time::timeout_at(deadline, repl.recv()).await {
                Ok(event) => event
                    .map_err(|e| replication::classify(e, &settings.slot, &settings.publication, &settings.pg_url))?,
                Err(_) => return Ok(()),
            };
            let Some(event) = event else { return Ok(()) };
            match self.assembler.push(event)? {
                Assembled::Commit { end_lsn, .. } => {
                    self.open_tag = None;
                    self.wal_end = self.wal_end.max(end_lsn);
                    self.checkpoint.commit(tag, end_lsn);
                    tracing::info!(end_lsn = %end_lsn, "stopping: the open transaction is fully published");
                    self.report(repl);
                }
                Assembled::Row { .. } => return Ok(()),
                _ => {}
            }
        }
        Ok(())
    }

    /// The outcome of a durability check issued at `issued` for `mark`: the stream still holds it (what is due is
    /// confirmed), a check that failed (tried again at the next tick), or a stream that lost it (the session ends,
    /// transient: the next one starts from the slot, which has not passed the lost events).
    fn on_checked(
        &mut self,
        mark: Mark,
        issued: std::time::Instant,
        held: Result<Option<HeldMessage>, PublishError>,
        repl: &impl ReplicationStream,
    ) -> Result<(), RelayError> {
        let found = match held {
            Ok(Some(held)) if held.is(&mark.id) => {
                if self.checkpoint.release(&mark, issued) {
                    self.report(repl);
                }
                self.stats.durability_pending(self.checkpoint.waiting_events());
                return Ok(());
            }
            Ok(Some(HeldMessage { id: Some(id), .. })) => format!("holds another message ({id})"),
            Ok(Some(HeldMessage { id: None, .. })) => "holds a message without a Nats-Msg-Id".to_owned(),
            Ok(None) => "holds no message there".to_owned(),
            Err(err) => {
                // A check that keeps failing (e.g. a NATS user without STREAM.MSG.GET) would pin the slot for ever
                // with only a warning: once the oldest waiting entry is overdue by a whole interval, end the session.
                let interval = self.settings.nats_sync_interval.unwrap_or_default();
                if self.checkpoint.due(issued.checked_sub(interval).unwrap_or(issued)) {
                    return Err(err.into());
                }
                tracing::warn!(error = %err, sequence = mark.sequence, "durability check failed, trying again");
                return Ok(());
            }
        };
        let (stream, sequence, id) = (self.settings.stream.clone(), mark.sequence, mark.id);
        Err(PublishError::Lost { stream, sequence, id, found }.into())
    }

    /// The acked LSN and the commit-to-ack latency of an acked event of transaction `tag`.
    fn observe_ack(&mut self, tag: TxnTag) {
        if let Some((commit_lsn, commit_time_micros)) = self.commit_times.acked(tag) {
            self.stats.acked_at(commit_lsn, commit_time_micros, SystemTime::now());
        }
    }

    /// Tells the replication session about a newly confirmed LSN.
    fn report(&mut self, repl: &impl ReplicationStream) {
        if let Some(lsn) = self.checkpoint.take_new_confirmed() {
            repl.update_applied_lsn(lsn);
            self.stats.confirmed(lsn);
        }
    }

    async fn on_event(&mut self, event: ReplicationEvent, repl: &impl ReplicationStream) -> Result<(), RelayError> {
        match self.assembler.push(event)? {
            Assembled::KeepAlive { wal_end, idle } => {
                self.wal_end = self.wal_end.max(wal_end);
                if idle && self.checkpoint.idle(wal_end) {
                    self.report(repl);
                }
            }
            Assembled::Begin { commit_lsn, commit_time_micros } => {
                self.open_tag = Some(self.checkpoint.begin());
                self.commit_times.begin(commit_lsn, commit_time_micros);
            }
            Assembled::Commit { end_lsn, .. } => {
                self.wal_end = self.wal_end.max(end_lsn);
                if let Some(tag) = self.open_tag.take() {
                    self.checkpoint.commit(tag, end_lsn);
                    self.report(repl);
                }
            }
            Assembled::Row { position, event } => {
                let Some(tag) = self.open_tag else {
                    return Ok(());
                };
                if self.hw.holds(position) {
                    self.stats.skipped();
                    self.checkpoint.held(tag);
                    return Ok(());
                }
                let event = event.map_err(RelayError::Invalid)?;
                if event.dead_letter {
                    tracing::warn!(id = %event.id, commit_lsn = %position.commit_lsn, index = position.index, reason = %event.header(header::ERROR).unwrap_or_default(), "invalid event, publishing a dead-letter record");
                    self.stats.dead_lettered();
                }
                self.publisher.send(event, tag).await?;
                self.checkpoint.published(tag);
                self.commit_times.published(tag);
                self.stats.published();
                if self.publisher.transport().last_batched() {
                    self.stats.batched();
                }
            }
            Assembled::Nothing | Assembled::Stopped { .. } => {}
        }
        Ok(())
    }

    /// Waits (bounded) for in-flight acks, credits them, forgets an unfinished transaction; returns the confirmable
    /// LSN.
    pub(super) async fn settle(&mut self) -> Lsn {
        let settings = self.settings;
        let timeout = settings.shutdown_timeout.min(settings.publish_timeout.max(Duration::from_secs(1)));
        let (acked, err) = self.publisher.drain(timeout).await;
        for ack in acked {
            self.stats.acked();
            self.observe_ack(ack.tag);
            self.checkpoint.acked(ack.tag, ack.sequence, ack.id, now());
        }
        // A stop does not wait for the interval: what waits stays unconfirmed, is read again at the next start and
        // skipped where the stream holds it (design.md §4d).
        self.stats.durability_pending(0);
        if let Some(err) = err {
            tracing::warn!(error = %err, "in-flight publishes not acked; they stay unconfirmed and are published after the next start");
        }
        self.checkpoint.abandon_open();
        self.checkpoint.confirmed()
    }
}

/// The loop's clock: tokio's, so tests with a paused clock can move it.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests;
