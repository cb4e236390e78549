//! Property tests: random valid message sequences roundtrip through the encoder and the decoder, for protocol
//! versions 1 to 4 with and without stream blocks; arbitrary and mutated bytes never panic.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::Union;

use crate::encode::encode;
use crate::*;

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn name() -> impl Strategy<Value = String> {
    vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 0..12).prop_map(String::from_iter)
}

fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn tuple() -> impl Strategy<Value = Tuple> {
    let value = prop_oneof![
        Just(TupleValue::Null),
        Just(TupleValue::UnchangedToast),
        bytes().prop_map(TupleValue::Text),
        bytes().prop_map(TupleValue::Binary),
    ];
    vec(value, 0..6).prop_map(Tuple)
}

fn relation(xid: Option<u32>) -> impl Strategy<Value = Message> {
    let column = (any::<u8>(), name(), any::<u32>(), any::<i32>())
        .prop_map(|(flags, name, type_oid, type_modifier)| RelationColumn { flags, name, type_oid, type_modifier });
    (any::<u32>(), name(), name(), any::<u8>(), vec(column, 0..6)).prop_map(
        move |(id, namespace, name, replica_identity, columns)| {
            Message::Relation(Relation { xid, id, namespace, name, replica_identity, columns })
        },
    )
}

/// A message that may appear inside a transaction body; `xid` is the stream-block prefix (`None` outside).
fn body_message(xid: impl Strategy<Value = Option<u32>> + Clone + 'static) -> BoxedStrategy<Message> {
    let x = || xid.clone();
    prop_oneof![
        x().prop_flat_map(relation),
        (x(), any::<u32>(), name(), name()).prop_map(|(xid, type_oid, namespace, name)| {
            Message::Type(TypeMessage { xid, type_oid, namespace, name })
        }),
        (lsn(), name()).prop_map(|(commit_lsn, name)| Message::Origin(Origin { commit_lsn, name })),
        (x(), any::<u32>(), tuple()).prop_map(|(xid, relation_id, new)| Message::Insert(Insert {
            xid,
            relation_id,
            new
        })),
        (x(), any::<u32>(), 0..3_u8, tuple(), tuple()).prop_map(|(xid, relation_id, old_kind, old, new)| {
            let (old_key, old) = match old_kind {
                0 => (None, None),
                1 => (Some(old), None),
                _ => (None, Some(old)),
            };
            Message::Update(Update { xid, relation_id, old_key, old, new })
        }),
        (x(), any::<u32>(), any::<bool>(), tuple()).prop_map(|(xid, relation_id, key, old)| {
            let (old_key, old) = if key { (Some(old), None) } else { (None, Some(old)) };
            Message::Delete(Delete { xid, relation_id, old_key, old })
        }),
        (x(), any::<u8>(), vec(any::<u32>(), 0..5))
            .prop_map(|(xid, options, relation_ids)| { Message::Truncate(Truncate { xid, options, relation_ids }) }),
        (x(), any::<bool>(), lsn(), name(), bytes()).prop_map(|(xid, transactional, lsn, prefix, content)| {
            Message::Message(LogicalMessage { xid, transactional, lsn, prefix, content })
        }),
    ]
    .boxed()
}

fn transaction() -> impl Strategy<Value = Vec<Message>> {
    (lsn(), lsn(), any::<i64>(), any::<u32>(), any::<u8>(), vec(body_message(Just(None)), 0..6)).prop_map(
        |(final_lsn, end_lsn, commit_time, xid, flags, body)| {
            let mut messages = vec![Message::Begin(Begin { final_lsn, commit_time, xid })];
            messages.extend(body);
            messages.push(Message::Commit(Commit { flags, commit_lsn: final_lsn, end_lsn, commit_time }));
            messages
        },
    )
}

fn stream_end(version: u32, xid: u32) -> BoxedStrategy<Option<Message>> {
    let commit =
        (any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(move |(flags, commit_lsn, end_lsn, commit_time)| {
            Some(Message::StreamCommit(StreamCommit { xid, flags, commit_lsn, end_lsn, commit_time }))
        });
    let info = if version >= 4 {
        proptest::option::of((lsn(), any::<i64>()).prop_map(|(lsn, time)| StreamAbortInfo { lsn, time })).boxed()
    } else {
        Just(None).boxed()
    };
    let abort = (any::<u32>(), info)
        .prop_map(move |(subxid, abort)| Some(Message::StreamAbort(StreamAbort { xid, subxid, abort })));
    let mut ends = vec![Just(None).boxed(), commit.boxed(), abort.boxed()];
    if version >= 3 {
        ends.push(
            (any::<u8>(), lsn(), lsn(), any::<i64>(), name())
                .prop_map(move |(flags, prepare_lsn, end_lsn, prepare_time, gid)| {
                    Some(Message::StreamPrepare(StreamPrepare { flags, prepare_lsn, end_lsn, prepare_time, xid, gid }))
                })
                .boxed(),
        );
    }
    Union::new(ends).boxed()
}

fn stream_block(version: u32) -> impl Strategy<Value = Vec<Message>> {
    (any::<u32>(), any::<bool>()).prop_flat_map(move |(xid, first_segment)| {
        (vec(body_message(any::<u32>().prop_map(Some)), 0..6), stream_end(version, xid)).prop_map(move |(body, end)| {
            let mut messages = vec![Message::StreamStart(StreamStart { xid, first_segment })];
            messages.extend(body);
            messages.push(Message::StreamStop);
            messages.extend(end);
            messages
        })
    })
}

fn prepared_transaction() -> impl Strategy<Value = Vec<Message>> {
    let outcome = prop_oneof![
        Just(None),
        (any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(|(flags, commit_lsn, end_lsn, commit_time)| Some((
            0,
            flags,
            commit_lsn,
            end_lsn,
            commit_time
        ))),
        (any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(|(flags, a, b, time)| Some((1, flags, a, b, time))),
    ];
    (lsn(), lsn(), any::<i64>(), any::<u32>(), name(), vec(body_message(Just(None)), 0..6), outcome).prop_map(
        |(prepare_lsn, end_lsn, prepare_time, xid, gid, body, outcome)| {
            let mut messages =
                vec![Message::BeginPrepare(BeginPrepare { prepare_lsn, end_lsn, prepare_time, xid, gid: gid.clone() })];
            messages.extend(body);
            messages.push(Message::Prepare(Prepare {
                flags: 0,
                prepare_lsn,
                end_lsn,
                prepare_time,
                xid,
                gid: gid.clone(),
            }));
            match outcome {
                Some((0, flags, commit_lsn, end_lsn, commit_time)) => {
                    messages.push(Message::CommitPrepared(CommitPrepared {
                        flags,
                        commit_lsn,
                        end_lsn,
                        commit_time,
                        xid,
                        gid,
                    }))
                }
                Some((_, flags, prepare_end_lsn, rollback_end_lsn, rollback_time)) => {
                    messages.push(Message::RollbackPrepared(RollbackPrepared {
                        flags,
                        prepare_end_lsn,
                        rollback_end_lsn,
                        prepare_time,
                        rollback_time,
                        xid,
                        gid,
                    }))
                }
                None => {}
            }
            messages
        },
    )
}

/// A valid session for `version`: transactions, non-transactional messages and, from version 2 and 3, stream
/// blocks and prepared transactions.
fn session(version: u32, streams: bool) -> impl Strategy<Value = Vec<Message>> {
    let outside = (lsn(), name(), bytes()).prop_map(|(lsn, prefix, content)| {
        vec![Message::Message(LogicalMessage { xid: None, transactional: false, lsn, prefix, content })]
    });
    let mut blocks = vec![transaction().boxed(), outside.boxed()];
    if streams && version >= 2 {
        blocks.push(stream_block(version).boxed());
    }
    if version >= 3 {
        blocks.push(prepared_transaction().boxed());
    }
    vec(Union::new(blocks), 1..6).prop_map(|blocks| blocks.into_iter().flatten().collect())
}

fn roundtrip(version: u32, messages: &[Message]) -> Result<(), TestCaseError> {
    let mut decoder = Decoder::new(version).map_err(|err| TestCaseError::fail(err.to_string()))?;
    for message in messages {
        let data = encode(message).map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(decoder.decode(data), Ok(message.clone()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn roundtrip_v1(messages in session(1, false)) {
        roundtrip(1, &messages)?;
    }

    #[test]
    fn roundtrip_v2(messages in session(2, false)) {
        roundtrip(2, &messages)?;
    }

    #[test]
    fn roundtrip_v2_streams(messages in session(2, true)) {
        roundtrip(2, &messages)?;
    }

    #[test]
    fn roundtrip_v3(messages in session(3, false)) {
        roundtrip(3, &messages)?;
    }

    #[test]
    fn roundtrip_v3_streams(messages in session(3, true)) {
        roundtrip(3, &messages)?;
    }

    #[test]
    fn roundtrip_v4_streams(messages in session(4, true)) {
        roundtrip(4, &messages)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..128), version in 1..=4_u32) {
        for mut decoder in decoders(version) {
            let _ = decoder.decode(Bytes::from(data.clone()));
        }
    }

    #[test]
    fn tagged_arbitrary_bytes_never_panic(tag in proptest::sample::select(b"BCORYIUDTMSEcAbPKrp".to_vec()),
                                          rest in vec(any::<u8>(), 0..96), version in 1..=4_u32) {
        let mut data = vec![tag];
        data.extend(rest);
        for mut decoder in decoders(version) {
            if let Ok(Message::Relation(relation)) = decoder.decode(Bytes::from(data.clone())) {
                let mut cache = RelationCache::new();
                cache.insert(relation);
            }
        }
    }

    #[test]
    fn mutated_sessions_never_panic(messages in session(4, true), position in any::<prop::sample::Index>(),
                                    byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut decoder = Decoder::new(4).map_err(|err| TestCaseError::fail(err.to_string()))?;
        let target = position.index(messages.len());
        for (index, message) in messages.iter().enumerate() {
            let mut data = encode(message).map_err(|err| TestCaseError::fail(err.to_string()))?.to_vec();
            if index == target {
                let at = cut.index(data.len());
                if let Some(slot) = data.get_mut(at) { *slot = byte; }
                data.truncate(cut.index(data.len() + 1).max(at));
            }
            let _ = decoder.decode(Bytes::from(data));
        }
    }

    #[test]
    fn rows_and_values_never_panic(type_oids in vec(any::<u32>(), 0..4), tuple in tuple(),
                                   known in vec(proptest::sample::select(vec![16_u32, 17, 20, 21, 23, 25, 114, 700, 701,
                                       1042, 1043, 1082, 1114, 1184, 1700, 2950, 3802]), 0..4)) {
        let columns: Vec<RelationColumn> = type_oids.iter().chain(&known).enumerate().map(|(index, &type_oid)| {
            RelationColumn { flags: 0, name: format!("c{index}"), type_oid, type_modifier: -1 }
        }).collect();
        let mut cache = RelationCache::new();
        cache.insert(Relation { xid: None, id: 1, namespace: String::new(), name: "t".into(), replica_identity: b'd', columns });
        if let Ok(row) = cache.row(1, &tuple) {
            for (column, value) in row.iter() {
                let _ = convert(column.type_oid, value);
                let _ = row.value(&column.name);
            }
        }
    }

    #[test]
    fn lsn_text_roundtrip(raw in any::<u64>()) {
        prop_assert_eq!(Lsn(raw).to_string().parse::<Lsn>(), Ok(Lsn(raw)));
        prop_assert_eq!(Lsn(raw).to_string().to_lowercase().parse::<Lsn>(), Ok(Lsn(raw)));
    }

    #[test]
    fn date_text_roundtrip(days in -2_451_545_i32..2_000_000_000) {
        // Postgres prints astronomical year y <= 0 as `(1 - y) BC`.
        let date = Date(days);
        if let Some((year, month, day)) = date.ymd() {
            let text = if year <= 0 { format!("{:04}-{month:02}-{day:02} BC", 1 - year) }
                       else { format!("{year:04}-{month:02}-{day:02}") };
            prop_assert_eq!(Date::parse_text(&text), Some(date));
        }
    }
}

/// Fresh, inside-a-transaction and inside-a-stream-block decoders of `version`.
fn decoders(version: u32) -> Vec<Decoder> {
    let Ok(fresh) = Decoder::new(version) else {
        return Vec::new();
    };
    let mut in_transaction = fresh.clone();
    let begin = Message::Begin(Begin { final_lsn: Lsn(1), commit_time: 0, xid: 1 });
    let _ = encode(&begin).map(|data| in_transaction.decode(data));
    let mut in_stream = fresh.clone();
    let start = Message::StreamStart(StreamStart { xid: 1, first_segment: true });
    let _ = encode(&start).map(|data| in_stream.decode(data));
    vec![fresh, in_transaction, in_stream]
}
