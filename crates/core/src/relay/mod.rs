//! The relay: `walrelay run`.
//!
//! ```text
//!  Postgres walsender ──pgoutput──▶ replication session (pgwire-replication, proto v1, streaming off)
//!                                         │ raw messages: Begin / Relation / Insert / ... / Commit / Keepalive
//!                                         ▼
//!                                   pgoutput decoder (pure, no I/O, never panics)
//!                                         │ typed messages + relation cache
//!                                         ▼
//!                                   transaction assembler ── outbox mapper (row → subject, headers, payload)
//!                                         │ Event { id, subject, headers, payload, commit_lsn, end_lsn, index }
//!                                         ▼
//!                                   JetStream publisher (pipelined, bounded in-flight, ordering fence)
//!                                         │ acks, in order
//!                                         ▼
//!                                   ack tracker ──▶ confirmed LSN ──▶ standby status update (flush = applied)
//! ```
//!
//! In: the settings and a shutdown signal. Out: events in the stream, the slot confirmed behind them. A supervisor
//! loop runs sessions; a session reads the stream's high-water mark, starts replication there (design.md rule 8),
//! and runs the main loop until shutdown or an error. Transient errors start a new session after a capped,
//! jittered backoff; permanent ones end the relay with a message naming the remedy.

use std::{
    convert::Infallible,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use pgoutput::Lsn;
use tokio::sync::watch;

use crate::{
    checkpoint::{Checkpoint, Mark},
    config::Settings,
    mapping::event::Position,
    mapping::outbox::InvalidEvent,
    sink::stream::{self, HighWater, Probe, StreamProbe},
    sink::{
        batch::{self, BatchOptions},
        publisher::{PublishError, Publisher},
    },
    source::replication::{self, ReplicationStream, StartAt},
    source::slot,
    source::standby,
    source::transaction::Assembler,
    source::{self, PgHost, SourceError},
    stats::{SlotFigures, Stats},
};

mod session;

use session::{Session, SessionEnd};

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Postgres side.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// NATS side.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// An event cannot be published and `--on-invalid stop` is set.
    #[error("invalid event {} in table {} at commit LSN {} (index {}): {}; {}", .0.id, .0.table, .0.position.commit_lsn, .0.position.index, .0.reason, .0.remedy())]
    Invalid(Box<InvalidEvent>),
    /// The publish of one event failed the same way on consecutive attempts: retrying will not help.
    #[error("{error}; the publish of this event failed the same way {attempts} times in a row, so walrelay stops instead of retrying it for ever: check that the stream covers its subject and accepts its size")]
    Repeated {
        /// Consecutive attempts that failed.
        attempts: u32,
        /// The failure.
        error: PublishError,
    },
}

/// After this many consecutive publishes of the same event that failed the same way, the failure is permanent.
pub const REPEATS_PERMANENT: u32 = 3;

impl RelayError {
    /// The same error, naming the Postgres `user` where the server's message did not.
    pub fn naming_pg_user(self, user: &str) -> Self {
        match self {
            Self::Source(e) => Self::Source(e.naming_user(user)),
            other => other,
        }
    }

    /// The one place that decides: retry after a backoff (`true`) or stop with the message (`false`).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Source(e) => e.is_transient(),
            Self::Publish(e) => e.is_transient(),
            Self::Invalid(_) | Self::Repeated { .. } => false,
        }
    }
}

/// Counts consecutive failures of the same event that fail the same way (see [`PublishError::refused_event`]).
#[derive(Debug, Default)]
struct Repeats {
    last: Option<(String, String)>,
    count: u32,
}

impl Repeats {
    /// Records a session's error; returns it as [`RelayError::Repeated`] once it is permanent.
    fn record(&mut self, err: RelayError) -> RelayError {
        let RelayError::Publish(e) = &err else {
            return err;
        };
        let Some(id) = e.refused_event() else {
            return err;
        };
        let key = (id.to_owned(), e.to_string());
        self.count = if self.last.as_ref() == Some(&key) { self.count + 1 } else { 1 };
        self.last = Some(key);
        match err {
            RelayError::Publish(error) if self.count >= REPEATS_PERMANENT => {
                RelayError::Repeated { attempts: self.count, error }
            }
            other => other,
        }
    }
}

/// Everything a session needs that outlives it.
struct Relay<'a> {
    settings: &'a Settings,
    shutdown: watch::Receiver<bool>,
    stats: Arc<Stats>,
    status_interval: Duration,
    standing_by: bool,
    /// The server the last session streamed from, to notice a promotion or failover on reconnect.
    server: Option<slot::Server>,
    /// The last event whose id the stream already held for another message, and why it is invalid: the next
    /// sessions hand it to `--on-invalid` when they reach it.
    reused_id: Option<(Position, String)>,
    /// An event the stream was found to hold (the message at this sequence) although its tail read did not show it
    /// (e.g. behind more than 1000 foreign messages): later sessions count it as relayed while the stream still
    /// reaches that sequence.
    held: Option<(Position, u64)>,
    /// The newest message a session confirmed after a durability check (`--nats-sync-interval`): a later session
    /// that finds the stream without it reports events lost beyond what the slot holds.
    durable: Option<Mark>,
    /// Events the next session publishes with per-message acks before it uses fast batches again: after a session
    /// that failed while publishing in fast batches, so that a duplicate or refusal the batch could not pin to its
    /// event shows up exactly, as without fast batch (sink::batch).
    per_message_first: usize,
}

/// Runs the relay until shutdown (Ok) or a permanent error. A stop ends with one line, `stopped`, naming the LSN
/// confirmed to the slot (design.md §4: what is not confirmed is published after the next start).
pub async fn run(settings: &Settings, shutdown: watch::Receiver<bool>, stats: Arc<Stats>) -> Result<(), RelayError> {
    let result = supervise(settings, shutdown, Arc::clone(&stats)).await;
    if result.is_ok() {
        let confirmed = Lsn(stats.confirmed.load(Ordering::Relaxed));
        tracing::info!(slot = %settings.slot, confirmed_lsn = %confirmed, "stopped");
    }
    result
}

/// The supervisor: sessions one after the other, with backoff between them, until a stop or a permanent error.
async fn supervise(settings: &Settings, shutdown: watch::Receiver<bool>, stats: Arc<Stats>) -> Result<(), RelayError> {
    let mut attempt: u32 = 0;
    let status_interval = loop {
        match prepare(settings).await {
            Ok(interval) => break interval,
            Err(err) if err.is_transient() => {
                attempt = attempt.saturating_add(1);
                let delay = backoff(attempt);
                let error = source::error_chain(&err);
                stats.health.retrying(&error);
                tracing::warn!(error = %error, retry_in = ?delay, attempt, "cannot start yet, retrying");
                let mut shutdown = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = crate::stopped(&mut shutdown) => return Ok(()),
                }
            }
            Err(err) => {
                stats.health.stopping();
                return Err(err);
            }
        }
    };
    let mut relay = Relay {
        settings,
        shutdown,
        stats,
        status_interval,
        standing_by: false,
        server: None,
        reused_id: None,
        held: None,
        durable: None,
        per_message_first: 0,
    };
    attempt = 0;
    let mut repeats = Repeats::default();
    loop {
        let started = Instant::now();
        let acked_before = relay.stats.acked.load(Ordering::Relaxed);
        let err = match relay.session().await {
            Ok(SessionEnd::Stopped) => {
                relay.stats.health.stopping();
                return Ok(());
            }
            Err(err) => repeats.record(err),
        };
        if !err.is_transient() || *relay.shutdown.borrow() {
            relay.stats.health.stopping();
            return if err.is_transient() { Ok(()) } else { Err(err) };
        }
        let progressed =
            relay.stats.acked.load(Ordering::Relaxed) > acked_before || started.elapsed() > Duration::from_secs(30);
        attempt = if progressed { 1 } else { attempt.saturating_add(1) };
        let delay = match &err {
            RelayError::Source(SourceError::SlotActive { slot, pid }) => {
                if !relay.standing_by {
                    tracing::info!(slot = %slot, pid = *pid, "slot is in use, standing by");
                    relay.standing_by = true;
                }
                relay.stats.health.standing_by();
                attempt = 0;
                Duration::from_secs(1)
            }
            _ => {
                let delay = backoff(attempt);
                let error = source::error_chain(&err);
                relay.stats.health.retrying(&error);
                tracing::warn!(error = %error, retry_in = ?delay, attempt, "relay interrupted, retrying");
                delay
            }
        };
        let mut shutdown = relay.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = crate::stopped(&mut shutdown) => return Ok(()),
        }
    }
}

/// For a session that ended because the stream answered an event as a duplicate: where that event is, and why it is
/// invalid (another message holds its id), for `--on-invalid` when the next session reaches it.
pub(crate) fn reused_id(err: &RelayError) -> Option<(Position, String)> {
    let RelayError::Publish(PublishError::Duplicate { position, sequence, .. }) = err else {
        return None;
    };
    let reason = format!(
        "its Nats-Msg-Id is already in the stream (sequence {sequence}) for another message: JetStream drops a \
         message whose id it has seen within the stream's duplicate window, so ids must be unique"
    );
    Some((*position, reason))
}

/// Capped exponential backoff with full jitter: 200 ms doubling to 10 s.
fn backoff(attempt: u32) -> Duration {
    let cap_ms = 200u64.saturating_mul(1u64 << attempt.min(6)).min(10_000);
    let ms = rand::random_range(cap_ms / 2..=cap_ms);
    Duration::from_millis(ms)
}

/// One-time checks and creation of what is missing (unless `--no-create`). Returns the status-update interval.
async fn prepare(settings: &Settings) -> Result<Duration, RelayError> {
    let standby::Checked { control, host, server, primary } = standby::check_server(settings).await?;
    if standby::ensure_publication(settings, &control, &server, primary.as_ref(), !settings.no_create).await? {
        tracing::info!(publication = %settings.publication, table = %settings.table, "publication created");
    }
    let (_client, js) = stream::connect(settings).await?;
    stream::ensure(&js, settings, !settings.no_create).await?;
    let hw = stream::high_water(&js, &settings.stream).await?;
    crate::ops::backfill::check_finished(&control, settings).await?;
    match slot::info(&control, &settings.slot).await? {
        Some(info) => {
            info.check()?;
            slot::ensure_failover(settings, &host, &server, &info).await?;
        }
        None if settings.no_create => {
            return Err(SourceError::MissingSlot {
                slot: settings.slot.clone(),
                server: settings.pg_url.server_at(&host),
                detail: " and --no-create is set".into(),
            }
            .into())
        }
        None => {
            if hw.position.is_some() {
                return Err(missing_slot(settings, &host, &server, Some(&hw)).into());
            }
            let opts = slot::CreateOptions { failover: settings.failover, primary: primary.as_ref() };
            let at = slot::create(&control, &server, &settings.slot, opts).await?;
            tracing::info!(slot = %settings.slot, lsn = %at, standby = server.in_recovery, failover = settings.failover, "slot created");
        }
    }
    let wst = slot::wal_sender_timeout_ms(&control).await?;
    let mut interval = Duration::from_secs(1);
    if wst > 0 {
        interval = interval.min(Duration::from_millis(wst / 2).max(Duration::from_millis(100)));
    }
    Ok(interval)
}

/// The slot is missing although the stream holds relayed events: it existed. Says why that may be, and never
/// creates a new slot (events committed since it went away would be skipped silently).
fn missing_slot(settings: &Settings, host: &PgHost, server: &slot::Server, hw: Option<&HighWater>) -> SourceError {
    let promoted = match server.timeline {
        Some(tli) if tli > 1 && !server.in_recovery => format!(
            "; this server was promoted (timeline {tli}), and the slot was not synchronized to it before the \
             failover: create it with --failover on the primary, with sync_replication_slots = on on the standby and \
             the standby's physical slot in the primary's synchronized_standby_slots (docs/replicas.md)"
        ),
        _ => String::new(),
    };
    let held = match hw.and_then(|hw| hw.position) {
        Some(Position { commit_lsn, index }) => {
            format!(
                "stream {} already holds relayed events (up to commit LSN {commit_lsn}, index {index})",
                settings.stream
            )
        }
        None => "walrelay read from it before".to_owned(),
    };
    SourceError::MissingSlot {
        slot: settings.slot.clone(),
        server: settings.pg_url.server_at(host),
        detail: format!(", but {held}, so it existed and was dropped or lost{promoted}"),
    }
}

impl Relay<'_> {
    /// One replication session: from the stream's high-water mark until shutdown or an error.
    async fn session(&mut self) -> Result<SessionEnd, RelayError> {
        let settings = self.settings;
        self.stats.health.connecting();
        let (control, host) = source::connect_host(&settings.pg_url).await?;
        // The slot first: when it is gone (e.g. `walrelay teardown` ran), stop before recreating anything that the
        // teardown removed, such as the stream.
        let server = slot::server(&control).await?;
        let Some(info) = slot::info(&control, &settings.slot).await? else {
            return Err(match &self.server {
                Some(last) if server_changed(last, &server) || server.timeline > last.timeline => {
                    missing_slot(settings, &host, &server, None)
                }
                _ => SourceError::MissingSlot {
                    slot: settings.slot.clone(),
                    server: settings.pg_url.server_at(&host),
                    detail: " (it was dropped while walrelay ran, e.g. by `walrelay teardown`)".into(),
                },
            }
            .into());
        };
        info.check()?;
        let (client, js, mut rejection) = stream::connect_watched(settings).await?;
        let (handle, _) = stream::ensure(&js, settings, !settings.no_create).await?;
        let batch = BatchOptions {
            enabled: batch::enabled(settings, &client, &handle.cached_info().config),
            flow: batch::flow_for(settings.max_in_flight),
            per_message_first: std::mem::take(&mut self.per_message_first),
        };
        let probe = StreamProbe::new(handle);
        let mut hw = stream::high_water(&js, &settings.stream).await?;
        if let Some((position, sequence)) = self.held.filter(|&(_, sequence)| hw.last_sequence >= sequence) {
            // A held event is a streamed one: it passes a backfilled mark from the consistent point on.
            let newer = match hw.position {
                Some(p) if hw.backfill => position.commit_lsn >= p.commit_lsn,
                Some(p) => position > p,
                None => true,
            };
            if newer {
                hw.position = Some(position);
                hw.sequence = sequence;
                hw.backfill = false;
            }
            tracing::debug!(held = %position, sequence, "counting an event the stream holds behind its tail as relayed");
        }
        if let (true, Some(pid)) = (info.active, info.active_pid) {
            return Err(SourceError::SlotActive { slot: settings.slot.clone(), pid }.into());
        }
        let wal = slot::current_wal_lsn(&control).await?;
        if let Some(p) = hw.position.filter(|p| wal > Lsn::ZERO && p.commit_lsn > wal) {
            let (stream, high_water) = (settings.stream.clone(), p.commit_lsn);
            return Err(SourceError::StreamAhead { stream, high_water, wal }.into());
        }
        let confirmed = info.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
        self.check_durable(&control, &probe, &hw, confirmed).await?;
        let checkpoint = held_since(settings, &probe, &hw).await?;
        self.stats.confirmed(confirmed);
        let start = hw.position.map(|p| p.commit_lsn).unwrap_or(Lsn::ZERO).max(confirmed);
        let at = StartAt { start, ack: confirmed, status_interval: self.status_interval, stop: None };
        let mut repl = replication::open(&settings.pg_url, &host, &settings.slot, &settings.publication, at).await?;
        if self.standing_by {
            tracing::info!(slot = %settings.slot, "slot acquired, taking over");
            self.standing_by = false;
        }
        self.stats.session_started();
        self.stats.health.streaming(&client);
        let pg_version = slot::setting(&control, "server_version").await.unwrap_or_default();
        let mut assembler = Assembler::new(settings)?;
        assembler.set_max_payload(client.server_info().max_payload);
        if let Some((position, reason)) = &self.reused_id {
            assembler.reject(*position, reason.clone());
        }
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            slot = %settings.slot,
            confirmed_flush_lsn = %confirmed,
            start_lsn = %start,
            stream = %settings.stream,
            stream_last_sequence = hw.last_sequence,
            high_water = %hw.position.map(|p| p.to_string()).unwrap_or_else(|| "none".into()),
            postgres_version = %pg_version,
            nats_version = %client.server_info().version,
            standby = server.in_recovery,
            timeline = server.timeline.unwrap_or(0),
            publish_mode = if batch.enabled { "fast-batch" } else { "per-message" },
            "relay started"
        );
        self.log_resume(&server, confirmed, &hw);
        let mut session = Session {
            settings,
            shutdown: self.shutdown.clone(),
            stats: &self.stats,
            publisher: Publisher::fast_batch(&client, hw.last_sequence, settings.publish_timeout, batch).await?,
            checkpoint: checkpoint.confirmed_from(confirmed),
            assembler,
            open_tag: None,
            hw,
            wal_end: start,
            probe: &probe,
            commit_times: Default::default(),
        };
        let result = tokio::select! {
            result = session.main_loop(&mut repl, &mut rejection) => result,
            never = watch_slot(&control, &settings.slot, settings.progress_interval, &self.stats) => match never {},
        };
        if result.is_err() && session.publisher.transport().batched_total() > 0 {
            self.per_message_first = settings.max_in_flight;
        }
        // Whatever happened: collect what is acked, confirm it, and end the replication session.
        let confirmed = session.settle().await;
        if let Some(mark) = session.checkpoint.durable() {
            self.durable = Some(mark.clone());
        }
        ReplicationStream::update_applied_lsn(&repl, confirmed);
        let _ = tokio::time::timeout(Duration::from_secs(5), repl.shutdown()).await;
        repl.abort();
        final_confirm(&control, &settings.slot, confirmed).await;
        self.stats.confirmed(confirmed);
        if let Err(err) = &result {
            self.note_reused_id(&js, err).await;
        }
        result
    }
}

/// The tracker of a session starting at the stream's tail `hw`: with `--nats-sync-interval`, events the session
/// skips because the stream holds them count as acked when the stream stored its tail message (design.md §4d), so a
/// restart neither waits the interval again nor confirms before it. (Use [`HeldSince::confirmed_from`].)
async fn held_since(settings: &Settings, probe: &StreamProbe, hw: &HighWater) -> Result<HeldSince, RelayError> {
    let Some(interval) = settings.nats_sync_interval else { return Ok(HeldSince(None)) };
    if hw.position.is_none() {
        return Ok(HeldSince(Some((interval, None))));
    }
    let Some(held) = probe.message_at(hw.sequence).await? else {
        // Gone since the tail read: the stream is changing under us; read it again.
        let reason =
            format!("the message at sequence {} disappeared while the relay read the stream's tail", hw.sequence);
        return Err(PublishError::Stream { stream: settings.stream.clone(), reason }.into());
    };
    // The server's clock says when it stored the message; as an age on our clock (a time in the future: now).
    let age = std::time::SystemTime::now().duration_since(held.stored_at).unwrap_or_default();
    let now = tokio::time::Instant::now().into_std();
    let stored_at = now.checked_sub(age).unwrap_or(now);
    let mark = Mark { sequence: hw.sequence, id: held.id.unwrap_or_default() };
    Ok(HeldSince(Some((interval, Some((mark, stored_at))))))
}

/// The interval and the stream's tail message with its stored time, for a session's [`Checkpoint`].
struct HeldSince(Option<(Duration, Option<(Mark, Instant)>)>);

impl HeldSince {
    /// The tracker, confirmed at `confirmed` (the slot's position).
    fn confirmed_from(self, confirmed: Lsn) -> Checkpoint {
        match self.0 {
            None => Checkpoint::new(confirmed, None),
            Some((interval, None)) => Checkpoint::new(confirmed, Some(interval)),
            Some((interval, Some((mark, at)))) => Checkpoint::new(confirmed, Some(interval)).with_held(mark, at),
        }
    }
}

impl Relay<'_> {
    /// A loss the slot cannot heal: the stream no longer holds a message whose event an earlier session confirmed
    /// after its durability check (the NATS server lost more than `--nats-sync-interval` of acked writes, or its
    /// store was restored from an older backup). The slot has passed those events; where the replay slot of
    /// `--replay-retention` still holds them, the error names the `walrelay replay` that re-sends them. Reported
    /// once, as an error; the relay goes on with what the slot holds.
    async fn check_durable(
        &mut self,
        control: &tokio_postgres::Client,
        probe: &StreamProbe,
        hw: &HighWater,
        confirmed: Lsn,
    ) -> Result<(), RelayError> {
        let Some(mark) = self.durable.clone() else { return Ok(()) };
        let held = match probe.message_at(mark.sequence).await? {
            Some(held) => held.is(&mark.id),
            None => false,
        };
        if held {
            return Ok(());
        }
        self.durable = None;
        let settings = self.settings;
        let tail = hw.position.map(|p| p.to_string()).unwrap_or_else(|| "none".into());
        let from = hw.position.map(|p| p.commit_lsn);
        let replay = slot::info(control, &settings.replay_slot()).await?.and_then(|i| i.confirmed_flush_lsn);
        let remedy = match (replay, from) {
            (Some(oldest), Some(from)) if oldest <= from => format!(
                "re-send them with `walrelay replay --from {from}` (the replay slot {} still holds that WAL), then check \
                 the stream with `walrelay verify`",
                settings.replay_slot()
            ),
            (Some(oldest), None) => format!(
                "the stream holds no event of run's any more; `walrelay replay --from {oldest}` re-sends what the replay \
                 slot {} still holds, then check the stream with `walrelay verify`",
                settings.replay_slot()
            ),
            (Some(oldest), Some(_)) => format!(
                "the replay slot {} reaches back only to {oldest}: re-send what it holds with `walrelay replay --from \
                 {oldest}` and restore the older events from a backup of the stream or from the outbox table",
                settings.replay_slot()
            ),
            (None, _) => "no replay slot holds their WAL (run with --replay-retention to keep one): restore them from a \
                 backup of the stream or from the outbox table"
                .to_owned(),
        };
        tracing::error!(
            stream = %settings.stream,
            stream_last_sequence = hw.last_sequence,
            lost_sequence = mark.sequence,
            surviving_tail = %tail,
            last_lost_id = %mark.id,
            slot_confirmed_flush_lsn = %confirmed,
            remedy = %remedy,
            "the stream lost events that the slot had already passed (more than --nats-sync-interval of acked writes, \
             or a store restored from an older backup): walrelay cannot publish them again from the slot"
        );
        Ok(())
    }

    /// After a session ended on a duplicate answer: unless the message holding the id is this very event (the
    /// stream has it, and the relay re-sent it because the tail read could not see it), another message holds the
    /// id, and the next sessions hand the event to `--on-invalid`.
    async fn note_reused_id(&mut self, js: &async_nats::jetstream::Context, err: &RelayError) {
        let RelayError::Publish(PublishError::Duplicate { position, sequence, .. }) = err else { return };
        match stream::position_at(js, &self.settings.stream, *sequence).await {
            Ok(Some(held)) if held == *position => {
                tracing::warn!(position = %position, sequence, "the stream already holds this event; resuming after it");
                self.held = Some((held, *sequence));
            }
            _ => self.reused_id = reused_id(err),
        }
    }

    /// After a promotion or failover (another server, or a new timeline), says where the relay resumes: the
    /// slot's position on the new server against the stream's high-water mark. Events up to the mark are skipped
    /// (they are stored), so a synchronized slot that lags the old primary's causes no duplicates.
    fn log_resume(&mut self, server: &slot::Server, confirmed: Lsn, hw: &HighWater) {
        if let Some(last) = self.server.as_ref().filter(|last| server_changed(last, server)) {
            let high_water = hw.position.map(|p| p.commit_lsn).unwrap_or(Lsn::ZERO);
            let relation = if confirmed < high_water {
                "slot behind the stream: events up to the high-water mark are skipped"
            } else {
                "slot at or past the stream's high-water mark"
            };
            tracing::warn!(
                slot = %self.settings.slot,
                previous_timeline = last.timeline.unwrap_or(0),
                timeline = server.timeline.unwrap_or(0),
                previous_standby = last.in_recovery,
                standby = server.in_recovery,
                confirmed_flush_lsn = %confirmed,
                high_water = %hw.position.map(|p| p.to_string()).unwrap_or_else(|| "none".into()),
                "postgres server changed since the last session (promotion or failover), resuming: {relation}"
            );
        }
        self.server = Some(server.clone());
    }
}

/// For `/metrics`, every progress interval while the session streams: the slot's retained WAL, `safe_wal_size` and
/// whether it was invalidated, read on the session's control connection (the query `status` makes). A failed read is
/// logged at debug level and tried again at the next interval; the session itself notices a broken connection.
async fn watch_slot(control: &tokio_postgres::Client, slot_name: &str, every: Duration, stats: &Stats) -> Infallible {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match slot_figures(control, slot_name).await {
            Ok(Some(figures)) => stats.slot(figures),
            Ok(None) => {}
            Err(err) => tracing::debug!(slot = slot_name, error = %err, "cannot read the slot's figures for /metrics"),
        }
    }
}

/// The slot's figures from `pg_replication_slots` and the server's WAL position; `None` when the slot is gone.
async fn slot_figures(control: &tokio_postgres::Client, slot_name: &str) -> Result<Option<SlotFigures>, SourceError> {
    let Some(info) = slot::info(control, slot_name).await? else { return Ok(None) };
    let wal = slot::current_wal_lsn(control).await?;
    Ok(Some(SlotFigures {
        retained_bytes: info.restart_lsn.map_or(0, |restart| wal.0.saturating_sub(restart.0)),
        safe_wal_size: info.safe_wal_size,
        invalidated: info.is_lost() || info.conflicting == Some(true) || info.invalidation_reason.is_some(),
    }))
}

/// Whether the relay now talks to another server or timeline than before (a promotion or failover).
fn server_changed(last: &slot::Server, now: &slot::Server) -> bool {
    last.timeline != now.timeline || last.system_id != now.system_id || last.in_recovery != now.in_recovery
}

/// Makes sure the slot's `confirmed_flush_lsn` reaches `confirmed` after the walsender let go of it: the last
/// standby status update may not have been sent before the session closed.
async fn final_confirm(control: &tokio_postgres::Client, slot_name: &str, confirmed: Lsn) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match slot::info(control, slot_name).await {
            Ok(Some(info)) if info.confirmed_flush_lsn.is_some_and(|c| c >= confirmed) => return,
            Ok(Some(info)) if !info.active => {
                match slot::advance(control, slot_name, confirmed).await {
                    Ok(()) => {
                        tracing::debug!(slot = slot_name, lsn = %confirmed, "slot advanced to the confirmed position")
                    }
                    Err(err) => {
                        tracing::warn!(slot = slot_name, error = %err, "could not advance slot after stopping")
                    }
                }
                return;
            }
            Ok(Some(_)) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::event::Position;

    fn refused(id: &str, refused: bool) -> RelayError {
        RelayError::Publish(PublishError::Publish {
            id: id.into(),
            subject: "outbox.a.b".into(),
            position: Position { commit_lsn: Lsn(1), index: 0 },
            reason: "no stream found for given subject".into(),
            refused,
        })
    }

    #[test]
    fn the_same_refusal_of_the_same_event_becomes_permanent() {
        let mut r = Repeats::default();
        for _ in 1..REPEATS_PERMANENT {
            assert!(r.record(refused("a", true)).is_transient());
        }
        let err = r.record(refused("a", true));
        assert!(matches!(err, RelayError::Repeated { attempts: REPEATS_PERMANENT, .. }), "{err}");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("event a"), "{err}");
        // Another event, or errors that say nothing about the event (timeouts), start over or never count.
        let mut r = Repeats::default();
        for n in 0..10 {
            assert!(r.record(refused("a", false)).is_transient());
            assert!(r.record(refused(&format!("e{n}"), true)).is_transient());
        }
    }

    fn server(timeline: u32, in_recovery: bool) -> slot::Server {
        slot::Server { version_num: 180000, in_recovery, timeline: Some(timeline), system_id: Some("7".into()) }
    }

    #[test]
    fn a_promotion_or_failover_changes_the_server() {
        assert!(!server_changed(&server(1, false), &server(1, false)));
        assert!(server_changed(&server(1, true), &server(2, false)), "promotion: new timeline, out of recovery");
        let other_system = slot::Server { system_id: Some("8".into()), ..server(1, false) };
        assert!(server_changed(&server(1, false), &other_system));
    }
}
