//! The transaction assembler: replication events in, outbox events with their transaction boundaries out.
//!
//! In: what the replication session yields (typed Begin/Commit boundaries and keepalives from `pgwire-replication`,
//! raw pgoutput bytes for everything else). Out: [`Assembled`] steps: a transaction began, an outbox row became an
//! [`Event`] (or an [`InvalidEvent`]) at its (commit LSN, index) position, a transaction committed with its end LSN,
//! or the server reported its position while idle. Shared by `run`, `peek` and `replay`, so all three decode and
//! map rows identically. See
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.

use std::collections::HashSet;

use pgoutput::{Decoder, Lsn, Message};
use pgwire_replication::ReplicationEvent;

use crate::{
    config::Settings,
    mapping::event::{Event, Position},
    mapping::outbox::{InvalidEvent, MapError, OutboxMapper, TxnStamp},
    source::SourceError,
};

/// One step of the assembled stream.
#[derive(Debug)]
pub enum Assembled {
    /// Nothing for the caller (a Relation, another table's change, an update or delete, a logical message).
    Nothing,
    /// A transaction began; its commit record starts at `commit_lsn`.
    Begin {
        /// Begin's final LSN.
        commit_lsn: Lsn,
        /// The commit time, in microseconds since 2000-01-01 UTC (Postgres' epoch).
        commit_time_micros: i64,
    },
    /// An outbox insert, mapped, with `--on-invalid` applied ([`OutboxMapper::on_invalid`]).
    Row {
        /// Its position.
        position: Position,
        /// The message to publish (a dead-letter record when the row was invalid and `--on-invalid dead-letter` is
        /// set), or the invalid event to stop on (`--on-invalid stop`).
        event: Result<Event, Box<InvalidEvent>>,
    },
    /// The open transaction committed.
    Commit {
        /// Start of the commit record.
        commit_lsn: Lsn,
        /// End of the commit record: the LSN to confirm (design.md rule 1).
        end_lsn: Lsn,
    },
    /// A keepalive; `idle` when no transaction is open.
    KeepAlive {
        /// The server's WAL end.
        wal_end: Lsn,
        /// Whether no transaction is open.
        idle: bool,
    },
    /// The session reached its stop LSN.
    Stopped {
        /// Where it stopped.
        at: Lsn,
    },
}

struct OpenTxn {
    stamp: TxnStamp,
    next_index: u32,
}

/// Turns replication events into outbox events.
pub struct Assembler {
    decoder: Decoder,
    mapper: OutboxMapper,
    open: Option<OpenTxn>,
    other_relations: HashSet<u32>,
    /// `--message-prefix`.
    message_prefix: Option<String>,
    warned_non_transactional: bool,
    /// An event found invalid downstream, and why ([`reject`](Self::reject)).
    rejected: Option<(Position, String)>,
}

impl Assembler {
    /// An assembler for a new replication session (protocol v1).
    pub fn new(settings: &Settings) -> Result<Self, SourceError> {
        Ok(Self {
            decoder: Decoder::new(1).map_err(|e| SourceError::Decode { lsn: Lsn::ZERO, source: e })?,
            mapper: OutboxMapper::new(settings)?,
            open: None,
            other_relations: HashSet::new(),
            message_prefix: settings.message_prefix.clone(),
            warned_non_transactional: false,
            rejected: None,
        })
    }

    /// Treats the event at `position` as invalid for `reason`, found after it was mapped (its id is already in the
    /// stream for another message): when it comes, `--on-invalid` decides, as for any invalid event.
    pub fn reject(&mut self, position: Position, reason: String) {
        self.rejected = Some((position, reason));
    }

    /// A mapped row or message with `--on-invalid` applied: the one path for both.
    fn decide(
        &self,
        mapped: Result<Event, MapError>,
        position: Position,
    ) -> Result<Result<Event, Box<InvalidEvent>>, SourceError> {
        match mapped {
            Ok(event) => match &self.rejected {
                Some((at, reason)) if *at == position => {
                    Ok(self.mapper.on_invalid(Box::new(InvalidEvent::from_event(&event, reason.clone()))))
                }
                _ => Ok(Ok(event)),
            },
            Err(MapError::Invalid(invalid)) => Ok(self.mapper.on_invalid(invalid)),
            Err(MapError::Source(source)) => Err(source),
        }
    }

    /// Events larger than the NATS server's `max_payload` are invalid.
    pub fn set_max_payload(&mut self, max: usize) {
        self.mapper.set_max_payload(max);
    }

    /// Whether a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Processes one replication event.
    pub fn push(&mut self, event: ReplicationEvent) -> Result<Assembled, SourceError> {
        Ok(match event {
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                Assembled::KeepAlive { wal_end: Lsn(wal_end.0), idle: self.open.is_none() }
            }
            ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                let lsn = Lsn(final_lsn.0);
                self.decoder.begin_transaction(lsn, xid).map_err(|e| SourceError::Decode { lsn, source: e })?;
                self.open = Some(OpenTxn { stamp: TxnStamp::new(lsn, commit_time_micros), next_index: 0 });
                Assembled::Begin { commit_lsn: lsn, commit_time_micros }
            }
            ReplicationEvent::Commit { lsn, end_lsn, .. } => {
                let (lsn, end_lsn) = (Lsn(lsn.0), Lsn(end_lsn.0));
                self.decoder.commit_transaction(lsn).map_err(|e| SourceError::Decode { lsn, source: e })?;
                self.open = None;
                Assembled::Commit { commit_lsn: lsn, end_lsn }
            }
            ReplicationEvent::XLogData { data, wal_start, .. } => {
                let at = Lsn(wal_start.0);
                let message = self.decoder.decode(data).map_err(|e| SourceError::Decode { lsn: at, source: e })?;
                self.message(message, at)?
            }
            ReplicationEvent::StoppedAt { reached } => Assembled::Stopped { at: Lsn(reached.0) },
            ReplicationEvent::Message { transactional, prefix, content, lsn } => {
                self.logical_message(transactional, &prefix, &content, Lsn(lsn.0))?
            }
        })
    }

    /// A logical decoding message: with `--message-prefix`, a transactional one with that prefix is the next event
    /// of its transaction (same index sequence as rows); a non-transactional one is not relayed (warned once).
    fn logical_message(
        &mut self,
        transactional: bool,
        prefix: &str,
        content: &[u8],
        at: Lsn,
    ) -> Result<Assembled, SourceError> {
        if self.message_prefix.as_deref() != Some(prefix) {
            return Ok(Assembled::Nothing);
        }
        if !transactional {
            if !self.warned_non_transactional {
                tracing::warn!(prefix, lsn = %at, "non-transactional logical message not relayed: emit outbox messages with pg_logical_emit_message(true, ...)");
                self.warned_non_transactional = true;
            }
            return Ok(Assembled::Nothing);
        }
        let Some(open) = self.open.as_mut() else {
            return Err(SourceError::Decode { lsn: at, source: pgoutput::DecodeError::ChangeOutsideTransaction });
        };
        let index = open.next_index;
        open.next_index += 1;
        let position = Position { commit_lsn: open.stamp.commit_lsn, index };
        let mapped = self.mapper.map_message(content, &open.stamp, index);
        Ok(Assembled::Row { position, event: self.decide(mapped, position)? })
    }

    fn message(&mut self, message: Message, at: Lsn) -> Result<Assembled, SourceError> {
        match message {
            Message::Relation(rel) => {
                if self.mapper.is_outbox(&rel) {
                    self.mapper.relation(&rel)?;
                } else {
                    self.other_relations.insert(rel.id);
                }
                Ok(Assembled::Nothing)
            }
            Message::Insert(insert) => {
                if !self.mapper.knows(insert.relation_id) {
                    if self.other_relations.contains(&insert.relation_id) {
                        return Ok(Assembled::Nothing);
                    }
                    return Err(SourceError::Decode {
                        lsn: at,
                        source: pgoutput::DecodeError::UnknownRelation(insert.relation_id),
                    });
                }
                let Some(open) = self.open.as_mut() else {
                    return Err(SourceError::Decode {
                        lsn: at,
                        source: pgoutput::DecodeError::ChangeOutsideTransaction,
                    });
                };
                let index = open.next_index;
                open.next_index += 1;
                let position = Position { commit_lsn: open.stamp.commit_lsn, index };
                let mapped = self.mapper.map(insert.relation_id, &insert.new, &open.stamp, index);
                Ok(Assembled::Row { position, event: self.decide(mapped, position)? })
            }
            Message::Update(_)
            | Message::Delete(_)
            | Message::Truncate(_)
            | Message::Origin(_)
            | Message::Type(_)
            | Message::Message(_)
            | Message::Begin(_)
            | Message::Commit(_) => Ok(Assembled::Nothing),
            other => Err(SourceError::Replication {
                reason: format!(
                    "unexpected pgoutput message {:?} at {at}: streaming and two-phase must be off (protocol v1)",
                    other.tag() as char
                ),
                transient: false,
            }),
        }
    }
}
