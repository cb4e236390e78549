//! Feeds arbitrary bytes to the pgoutput decoder: as a session of messages (with the relation cache and value
//! conversion), and each message alone against every protocol version and decoder state. Decoding must never
//! panic, and whatever decodes must re-encode and decode to the same message.
//!
//! Input: one mode byte (`protocol version - 1` in the low two bits), then frames of a big-endian `u16` length and
//! that many bytes (a short last frame takes the rest). See `crates/pgoutput/examples/fuzz_seeds.rs`.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgoutput::encode::encode;
use pgoutput::{convert, oid, Decoder, Message, RelationCache, Tuple};

const KNOWN_TYPES: [u32; 18] = [
    oid::BOOL,
    oid::BYTEA,
    oid::NAME,
    oid::INT8,
    oid::INT2,
    oid::INT4,
    oid::TEXT,
    oid::JSON,
    oid::FLOAT4,
    oid::FLOAT8,
    oid::BPCHAR,
    oid::VARCHAR,
    oid::DATE,
    oid::TIMESTAMP,
    oid::TIMESTAMPTZ,
    oid::NUMERIC,
    oid::UUID,
    oid::JSONB,
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let version = u32::from(mode & 3) + 1;
    let frames = frames(rest);

    // A session: one decoder, relations cached, rows converted.
    let mut decoder = Decoder::new(version).expect("versions 1 to 4 are supported");
    let mut cache = RelationCache::new();
    for frame in &frames {
        let before = decoder.clone();
        if let Ok(message) = decoder.decode(Bytes::copy_from_slice(frame)) {
            check_roundtrip(before, &message);
            exercise(&mut cache, &message);
        }
    }

    // Each frame, and the whole input, alone against every version and state.
    for version in 1..=4 {
        for frame in frames.iter().copied().chain([rest]) {
            for mut decoder in decoders(version) {
                let _ = decoder.decode(Bytes::copy_from_slice(frame));
            }
        }
    }
});

fn frames(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    while let Some((len, after)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len));
        let (frame, next) = after.split_at(len.min(after.len()));
        frames.push(frame);
        rest = next;
    }
    frames
}

fn check_roundtrip(mut decoder: Decoder, message: &Message) {
    let data = encode(message).expect("a decoded message encodes");
    assert_eq!(
        decoder.decode(data).as_ref(),
        Ok(message),
        "re-encoded message decodes to itself"
    );
}

fn exercise(cache: &mut RelationCache, message: &Message) {
    let (relation_id, tuples): (u32, Vec<&Tuple>) = match message {
        Message::Relation(relation) => {
            cache.insert(relation.clone());
            return;
        }
        Message::Insert(m) => (m.relation_id, vec![&m.new]),
        Message::Update(m) => (
            m.relation_id,
            [m.old_key.as_ref(), m.old.as_ref(), Some(&m.new)]
                .into_iter()
                .flatten()
                .collect(),
        ),
        Message::Delete(m) => (
            m.relation_id,
            [m.old_key.as_ref(), m.old.as_ref()]
                .into_iter()
                .flatten()
                .collect(),
        ),
        _ => return,
    };
    for tuple in tuples {
        if let Ok(row) = cache.row(relation_id, tuple) {
            for (column, _) in row.iter() {
                let _ = row.value(&column.name);
                let _ = row.get(&column.name);
            }
        }
        for value in tuple.iter() {
            for type_oid in KNOWN_TYPES {
                let _ = convert(type_oid, value);
            }
        }
    }
}

fn decoders(version: u32) -> Vec<Decoder> {
    let fresh = Decoder::new(version).expect("versions 1 to 4 are supported");
    let mut in_transaction = fresh.clone();
    let _ = in_transaction.decode(Bytes::from_static(
        b"B\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0\0\0\0\x01",
    ));
    let mut in_stream = fresh.clone();
    let _ = in_stream.decode(Bytes::from_static(b"S\0\0\0\x01\x01"));
    let mut in_prepare = fresh.clone();
    let _ = in_prepare.decode(Bytes::from_static(
        b"b\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0\0\0\0\0\x01g\0",
    ));
    vec![fresh, in_transaction, in_stream, in_prepare]
}
