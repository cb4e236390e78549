//! The loop against in-memory fakes: a scripted replication stream and an in-memory JetStream stream. What the
//! real-server tests cannot force (a stop between the last event and the Commit, a lost ack, a foreign write that
//! breaks the fence, a restart behind the high-water mark) is forced here.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use pgoutput::{oid, Insert, Lsn, Message, Relation};
use pgwire_replication::{PgWireError, ReplicationEvent};
use tokio::sync::watch;

use super::{Session, SessionEnd};
use crate::{
    checkpoint::{Checkpoint, Mark},
    config::{RawSettings, Settings},
    mapping::{
        event::{header, Position},
        fixture,
    },
    relay::RelayError,
    sink::{
        connect::Rejection,
        memory::{MemoryStream, MemoryTransport},
        publisher::{PublishError, Publisher},
        stream::HighWater,
    },
    source::{replication::ReplicationStream, transaction::Assembler},
    stats::Stats,
};

/// A replication stream that plays a script; at `stop_at` it requests shutdown and waits, then plays on (what the
/// walsender sends after the stop). Records every confirmed LSN it is told.
struct Script {
    events: VecDeque<ReplicationEvent>,
    played: usize,
    stop_at: Option<usize>,
    stop: watch::Sender<bool>,
    applied: Arc<Mutex<Vec<Lsn>>>,
}

impl ReplicationStream for Script {
    async fn recv(&mut self) -> Result<Option<ReplicationEvent>, PgWireError> {
        if self.stop_at == Some(self.played) {
            self.stop_at = None;
            let _ = self.stop.send(true);
            std::future::pending::<()>().await;
        }
        match self.events.pop_front() {
            Some(event) => {
                self.played += 1;
                Ok(Some(event))
            }
            // The walsender is idle: nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn update_applied_lsn(&self, lsn: Lsn) {
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).push(lsn);
    }
}

const OUTBOX: u32 = 16384;
const OTHER: u32 = 16999;

/// A Relation message of the default outbox table's columns, under another id and name.
fn relation(id: u32, name: &str) -> ReplicationEvent {
    let relation = Relation { id, name: name.into(), ..fixture::outbox_relation(oid::JSONB) };
    xlog(Message::Relation(relation))
}

fn insert(relation_id: u32, id: Option<&str>) -> ReplicationEvent {
    let new = fixture::tuple(&[id, Some("order"), Some("1"), Some("created"), Some(r#"{"n": 1}"#), None]);
    xlog(Message::Insert(Insert { xid: None, relation_id, new }))
}

fn xlog(message: Message) -> ReplicationEvent {
    let data = pgoutput::encode::encode(&message).expect("encodable");
    ReplicationEvent::XLogData {
        wal_start: pgwire_replication::Lsn(0),
        wal_end: pgwire_replication::Lsn(0),
        server_time_micros: 0,
        data,
    }
}

/// A transaction whose commit record starts at `commit` and ends 8 bytes later, holding `rows` (outbox row ids,
/// `None` for an invalid row) after the Relation messages.
fn txn(commit: u64, rows: &[Option<&str>]) -> Vec<ReplicationEvent> {
    let lsn = pgwire_replication::Lsn;
    let mut events =
        vec![ReplicationEvent::Begin { final_lsn: lsn(commit), xid: commit as u32, commit_time_micros: 0 }];
    events.push(relation(OUTBOX, "outbox"));
    events.push(relation(OTHER, "other"));
    for row in rows {
        events.push(insert(OTHER, Some("not-an-event")));
        events.push(insert(OUTBOX, *row));
    }
    events.push(ReplicationEvent::Commit { lsn: lsn(commit), end_lsn: lsn(commit + 8), commit_time_micros: 0 });
    events
}

struct Harness {
    settings: Settings,
    stats: Stats,
    stream: MemoryStream,
    applied: Arc<Mutex<Vec<Lsn>>>,
}

/// What one session did.
struct Outcome {
    result: Result<SessionEnd, RelayError>,
    confirmed: Lsn,
}

impl Harness {
    fn new(configure: impl FnOnce(&mut RawSettings)) -> Self {
        // Confirm on the ack unless a test sets an interval (design.md §4d).
        let mut raw = RawSettings {
            publish_timeout: "300ms".into(),
            nats_sync_interval: "always".into(),
            ..RawSettings::default()
        };
        configure(&mut raw);
        let settings = Settings::validate(raw).expect("valid settings");
        Self { settings, stats: Stats::default(), stream: MemoryStream::default(), applied: Arc::default() }
    }

    /// Runs a session over `script` from the stream's current tail, with the slot confirmed at `confirmed`, until
    /// the script's stop (or an error, or `deadline`); settles like the relay does.
    async fn session(&self, script: Vec<ReplicationEvent>, stop_at: Option<usize>, confirmed: Lsn) -> Outcome {
        let (stop, shutdown) = watch::channel(false);
        let mut repl = Script { events: script.into(), played: 0, stop_at, stop, applied: self.applied.clone() };
        let mut session = self.new_session(self.high_water(), confirmed, shutdown);
        let mut rejection = Rejection::never();
        let result = tokio::time::timeout(Duration::from_secs(10), session.main_loop(&mut repl, &mut rejection))
            .await
            .expect("the session ends");
        let confirmed = session.settle().await;
        Outcome { result, confirmed }
    }

    /// A session as `Relay::session` builds one: the publisher fenced at the tail `hw` read.
    fn new_session(
        &self,
        hw: HighWater,
        confirmed: Lsn,
        shutdown: watch::Receiver<bool>,
    ) -> Session<'_, MemoryTransport> {
        Session {
            settings: &self.settings,
            shutdown,
            stats: &self.stats,
            publisher: Publisher::new(self.stream.transport(), Some(hw.last_sequence), self.settings.publish_timeout),
            checkpoint: self.checkpoint(&hw, confirmed),
            assembler: Assembler::new(&self.settings).expect("assembler"),
            open_tag: None,
            hw,
            wal_end: confirmed,
            probe: &self.stream,
            commit_times: Default::default(),
        }
    }

    /// The tracker as `Relay::session` builds it: events the stream holds count as stored now (the in-memory stream
    /// stores at once).
    fn checkpoint(&self, hw: &HighWater, confirmed: Lsn) -> Checkpoint {
        let checkpoint = Checkpoint::new(confirmed, self.settings.nats_sync_interval);
        let state = self.stream.state();
        match state.messages.iter().find(|m| hw.position.is_some() && m.sequence == hw.sequence) {
            Some(m) => {
                let id = m.header(header::MSG_ID).unwrap_or_default().to_owned();
                checkpoint.with_held(Mark { sequence: m.sequence, id }, tokio::time::Instant::now().into_std())
            }
            None => checkpoint,
        }
    }

    /// The stream's tail as the relay reads it: last sequence and the last event's position.
    fn high_water(&self) -> HighWater {
        let state = self.stream.state();
        let position = state.messages.last().map(|m| Position {
            commit_lsn: m.header(header::COMMIT_LSN).and_then(|v| v.parse().ok()).unwrap_or(Lsn::ZERO),
            index: m.header(header::INDEX).and_then(|v| v.parse().ok()).unwrap_or(0),
        });
        let (last_sequence, messages) = (state.messages.len() as u64, state.messages.len() as u64);
        let sequence = state.messages.last().map(|m| m.sequence).unwrap_or(0);
        HighWater { last_sequence, messages, position, sequence, backfill: false }
    }

    fn applied(&self) -> Vec<Lsn> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn script(txns: &[(u64, &[Option<&str>])]) -> Vec<ReplicationEvent> {
    txns.iter().flat_map(|(commit, rows)| txn(*commit, rows)).collect()
}

#[tokio::test]
async fn publishes_in_wal_order_behind_the_fence_and_confirms_each_commit_end() {
    let h = Harness::new(|_| {});
    let events = script(&[(0x100, &[Some("a"), Some("b")]), (0x200, &[Some("c")]), (0x300, &[])]);
    let played = events.len();
    let out = h.session(events, Some(played), Lsn(0x10)).await;
    assert!(matches!(out.result, Ok(SessionEnd::Stopped)));
    assert_eq!(h.stream.ids(), ["a", "b", "c"]);
    let state = h.stream.state();
    let fence: Vec<_> = state.messages.iter().map(|m| m.header(header::EXPECTED_LAST_SEQUENCE)).collect();
    assert_eq!(fence, [Some("0"), Some("1"), Some("2")], "each publish expects the one before it");
    let index: Vec<_> = state.messages.iter().map(|m| m.header(header::INDEX)).collect();
    assert_eq!(index, [Some("0"), Some("1"), Some("0")]);
    assert_eq!(state.messages[2].header(header::COMMIT_LSN), Some("0/200"));
    drop(state);
    // Confirmed: each commit's end, in order, never backwards; the empty transaction's end too.
    assert_eq!(out.confirmed, Lsn(0x308));
    let applied = h.applied();
    assert!(applied.windows(2).all(|w| w[0] <= w[1]), "{applied:?}");
    assert!(applied.contains(&Lsn(0x108)) && applied.contains(&Lsn(0x208)), "{applied:?}");
    assert_eq!(h.stats.acked.load(std::sync::atomic::Ordering::Relaxed), 3);
}

#[tokio::test]
async fn an_unacked_event_holds_back_its_transaction_and_a_restart_skips_what_the_stream_holds() {
    let h = Harness::new(|_| {});
    // The stream stores everything but answers only the first publish: the second ack is lost.
    h.stream.state().answer = Some(1);
    let events = script(&[(0x100, &[Some("a")]), (0x200, &[Some("b")]), (0x300, &[Some("c")])]);
    let out = h.session(events.clone(), None, Lsn(0x10)).await;
    match &out.result {
        Err(RelayError::Publish(PublishError::Publish { id, refused: false, reason, .. })) => {
            assert_eq!(id, "b");
            assert!(reason.contains("no ack"), "{reason}");
        }
        other => panic!("expected a timeout of event b, got {:?}", other.as_ref().err()),
    }
    assert_eq!(out.confirmed, Lsn(0x108), "only the acked transaction is confirmed");
    assert_eq!(h.stream.ids(), ["a", "b", "c"], "b and c were stored although unacked");
    // The next session starts at the slot's position (0x108) and skips what the stream holds: nothing twice.
    h.stream.state().answer = None;
    let restart = script(&[(0x200, &[Some("b")]), (0x300, &[Some("c")]), (0x400, &[Some("d")])]);
    let played = restart.len();
    let out = h.session(restart, Some(played), out.confirmed).await;
    assert!(matches!(out.result, Ok(SessionEnd::Stopped)));
    assert_eq!(h.stream.ids(), ["a", "b", "c", "d"]);
    assert_eq!(h.stream.state().received, ["a", "b", "c", "d"], "b and c were not published again");
    assert_eq!(out.confirmed, Lsn(0x408));
    assert_eq!(h.stats.skipped.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_foreign_write_breaks_the_fence_and_nothing_is_confirmed() {
    let h = Harness::new(|_| {});
    let events = script(&[(0x100, &[Some("a"), Some("b")])]);
    // Someone writes to the stream after the relay read its tail.
    let (stop, shutdown) = watch::channel(false);
    let hw = h.high_water();
    h.stream.foreign_write("intruder");
    let mut repl = Script { events: events.into(), played: 0, stop_at: None, stop, applied: h.applied.clone() };
    let mut session = h.new_session(hw, Lsn(0x10), shutdown);
    let result = session.main_loop(&mut repl, &mut Rejection::never()).await;
    match result {
        Err(RelayError::Publish(PublishError::Fence { id, expected: 1, .. })) => assert_eq!(id, "a"),
        other => panic!("expected a fence violation on a, got {:?}", other.err()),
    }
    assert_eq!(session.settle().await, Lsn(0x10));
    assert_eq!(h.stream.ids(), ["intruder"], "the fence kept a and b out of the stream");
}

#[tokio::test]
async fn a_stop_after_the_last_event_reads_on_to_the_commit_and_confirms_it() {
    let h = Harness::new(|_| {});
    let events = script(&[(0x100, &[Some("a")]), (0x200, &[Some("b"), Some("c")])]);
    // Stop right after c's insert: the Commit (after another table's change) is still to come.
    let stop_at = events.len() - 1;
    let out = h.session(events, Some(stop_at), Lsn(0x10)).await;
    assert!(matches!(out.result, Ok(SessionEnd::Stopped)));
    assert_eq!(h.stream.ids(), ["a", "b", "c"]);
    assert_eq!(out.confirmed, Lsn(0x208), "the open transaction was fully published: its commit is confirmed");
}

#[tokio::test]
async fn a_stop_inside_a_transaction_with_rows_to_come_confirms_only_the_one_before() {
    let h = Harness::new(|_| {});
    let events = script(&[(0x100, &[Some("a")]), (0x200, &[Some("b"), Some("c")])]);
    // Stop right after b's insert: c is next, so the transaction is not fully published and stays unconfirmed.
    let b = events.iter().position(|e| matches!(e, ReplicationEvent::Begin { final_lsn, .. } if final_lsn.0 == 0x200));
    let stop_at = b.expect("second begin") + 5;
    let out = h.session(events, Some(stop_at), Lsn(0x10)).await;
    assert!(matches!(out.result, Ok(SessionEnd::Stopped)));
    assert_eq!(h.stream.ids(), ["a", "b"]);
    assert_eq!(out.confirmed, Lsn(0x108));
}

#[tokio::test]
async fn an_invalid_row_becomes_a_dead_letter_record_in_line_behind_the_fence() {
    let h = Harness::new(|raw| raw.on_invalid = "dead-letter".into());
    let events = script(&[(0x100, &[Some("a"), None, Some("c")])]);
    let played = events.len();
    let out = h.session(events, Some(played), Lsn(0x10)).await;
    assert!(matches!(out.result, Ok(SessionEnd::Stopped)));
    let state = h.stream.state();
    let subjects: Vec<_> = state.messages.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(subjects, ["outbox.order.created", "outbox.dead-letter", "outbox.order.created"]);
    assert!(state.messages[1].header(header::ERROR).is_some_and(|e| e.contains("NULL")));
    let fence: Vec<_> = state.messages.iter().map(|m| m.header(header::EXPECTED_LAST_SEQUENCE)).collect();
    assert_eq!(fence, [Some("0"), Some("1"), Some("2")]);
    drop(state);
    assert_eq!(out.confirmed, Lsn(0x108));
}

#[tokio::test]
async fn under_stop_an_invalid_row_ends_the_session_before_it_is_published() {
    let h = Harness::new(|_| {});
    let events = script(&[(0x100, &[Some("a")]), (0x200, &[Some("b"), None])]);
    let out = h.session(events, None, Lsn(0x10)).await;
    match out.result {
        Err(RelayError::Invalid(invalid)) => {
            assert_eq!(invalid.position, Position { commit_lsn: Lsn(0x200), index: 1 });
        }
        other => panic!("expected the invalid event, got {:?}", other.err()),
    }
    assert_eq!(h.stream.ids(), ["a", "b"]);
    assert_eq!(out.confirmed, Lsn(0x108));
}

#[tokio::test]
async fn an_id_the_stream_already_holds_goes_to_on_invalid_when_the_next_session_reaches_it() {
    for on_invalid in ["dead-letter", "stop"] {
        let h = Harness::new(|raw| raw.on_invalid = on_invalid.into());
        // Two events share the id "a" (e.g. two logical messages with one id).
        let events = script(&[(0x100, &[Some("a")]), (0x200, &[Some("a")]), (0x300, &[Some("b")])]);
        let out = h.session(events.clone(), None, Lsn(0x10)).await;
        let err = out.result.err().expect("the duplicate ends the session");
        assert!(matches!(&err, RelayError::Publish(PublishError::Duplicate { sequence: 1, .. })), "{err}");
        assert!(err.is_transient(), "the relay resumes: {err}");
        assert_eq!((h.stream.ids(), out.confirmed), (vec!["a".to_owned()], Lsn(0x108)));

        let (position, reason) = crate::relay::reused_id(&err).expect("a reused id");
        assert_eq!(position, Position { commit_lsn: Lsn(0x200), index: 0 });
        let (stop, shutdown) = watch::channel(false);
        // Stop once the whole script is played: a session that goes on ends only then.
        let stop_at = Some(events.len());
        let mut repl = Script { events: events.into(), played: 0, stop_at, stop, applied: h.applied.clone() };
        let mut session = h.new_session(h.high_water(), out.confirmed, shutdown);
        session.assembler.reject(position, reason);
        let mut rejection = Rejection::never();
        let run = session.main_loop(&mut repl, &mut rejection);
        let result = tokio::time::timeout(Duration::from_secs(10), run).await.expect("the session ends");
        let confirmed = session.settle().await;
        match on_invalid {
            "dead-letter" => {
                assert!(matches!(result, Ok(SessionEnd::Stopped)), "the session went on past the record to the stop");
                assert_eq!(h.stream.ids(), ["a", "dead-letter:a", "b"]);
                let state = h.stream.state();
                let record = &state.messages[1];
                assert!(record.header(header::ERROR).is_some_and(|e| e.contains("already in the stream")));
                assert_eq!(record.header(header::COMMIT_LSN), Some("0/200"));
                drop(state);
                assert_eq!(confirmed, Lsn(0x308));
            }
            _ => {
                let err = result.err().expect("an invalid event");
                assert!(matches!(&err, RelayError::Invalid(invalid) if invalid.id == "a"), "{err}");
                let text = err.to_string();
                assert!(text.contains("already in the stream (sequence 1)"), "{text}");
                assert!(
                    text.contains("once with --on-invalid dead-letter") && !text.contains("skip --through"),
                    "{text}"
                );
                assert_eq!((h.stream.ids(), confirmed), (vec!["a".to_owned()], Lsn(0x108)));
            }
        }
    }
}

/// A durable-interval session over `script`: runs until `until` (paused clock) or an error; returns the result (None:
/// still running at `until`) and what it confirmed.
async fn run_for(
    h: &Harness,
    script: Vec<ReplicationEvent>,
    confirmed: Lsn,
    until: Duration,
    during: impl std::future::Future<Output = ()>,
) -> (Option<Result<SessionEnd, RelayError>>, Lsn) {
    let (stop, shutdown) = watch::channel(false);
    let mut repl = Script { events: script.into(), played: 0, stop_at: None, stop, applied: h.applied.clone() };
    let mut session = h.new_session(h.high_water(), confirmed, shutdown);
    let mut rejection = Rejection::never();
    let run = tokio::time::timeout(until, session.main_loop(&mut repl, &mut rejection));
    let (result, ()) = tokio::join!(run, during);
    let confirmed = session.settle().await;
    (result.ok(), confirmed)
}

#[tokio::test(start_paused = true)]
async fn with_a_sync_interval_acked_events_are_confirmed_only_after_it_and_a_stop_does_not_wait() {
    let h = Harness::new(|raw| raw.nats_sync_interval = "5s".into());
    let events = script(&[(0x100, &[Some("a"), Some("b")]), (0x200, &[Some("c")]), (0x300, &[])]);
    // A stop right after the last event: acked, not yet durable, nothing confirmed; the stop does not wait.
    let played = events.len();
    let started = tokio::time::Instant::now();
    let out = h.session(events.clone(), Some(played), Lsn(0x10)).await;
    assert!(matches!(out.result, Ok(SessionEnd::Stopped)));
    assert!(started.elapsed() < Duration::from_secs(5), "the stop waited for the interval");
    assert_eq!((h.stream.ids(), out.confirmed), (vec!["a".to_owned(), "b".into(), "c".into()], Lsn(0x10)));
    assert_eq!(h.stats.acked.load(std::sync::atomic::Ordering::Relaxed), 3);

    // The next session skips what the stream holds (stored "now") and confirms it once the interval passed.
    let (result, confirmed) = run_for(&h, events.clone(), Lsn(0x10), Duration::from_millis(4500), async {}).await;
    assert!(result.is_none(), "still running");
    assert_eq!(confirmed, Lsn(0x10), "4.5 s after the stream stored them: not yet");
    let (result, confirmed) = run_for(&h, events, Lsn(0x10), Duration::from_secs(7), async {}).await;
    assert!(result.is_none(), "still running");
    assert_eq!(confirmed, Lsn(0x308), "after the interval, the stream still holding them: confirmed");
    assert_eq!(h.stream.state().received, ["a", "b", "c"], "nothing published twice");
    let applied = h.applied();
    assert!(applied.windows(2).all(|w| w[0] <= w[1]), "{applied:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_loses_acked_events_is_noticed_without_new_events_and_healed_from_the_slot() {
    let h = Harness::new(|raw| raw.nats_sync_interval = "5s".into());
    let events = script(&[(0x100, &[Some("a"), Some("b")]), (0x200, &[Some("c")])]);
    // Acked at once; 1 s later the server "restarts from older files": only a survives. No event comes after that.
    let lose = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.stream.lose_after(1);
    };
    let started = tokio::time::Instant::now();
    let (result, confirmed) = run_for(&h, events.clone(), Lsn(0x10), Duration::from_secs(60), lose).await;
    match result {
        Some(Err(err @ RelayError::Publish(PublishError::Lost { sequence: 3, .. }))) => {
            assert!(err.is_transient(), "{err}");
            assert!(err.to_string().contains("event c"), "{err}");
        }
        other => panic!("expected the loss of c at sequence 3, got {:?}", other.map(|r| r.err())),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "noticed within the interval: {:?}", started.elapsed());
    assert_eq!(confirmed, Lsn(0x10), "nothing lost was confirmed");
    assert_eq!(h.stream.ids(), ["a"]);

    // The next session starts from the slot, skips a (the surviving tail) and publishes b and c again, in order.
    let (result, confirmed) = run_for(&h, events, confirmed, Duration::from_secs(7), async {}).await;
    assert!(result.is_none(), "still running");
    assert_eq!(h.stream.ids(), ["a", "b", "c"]);
    assert_eq!(h.stream.state().received, ["a", "b", "c", "b", "c"]);
    assert_eq!(confirmed, Lsn(0x208));
}
