//! CloudEvents 1.0 over NATS (design.md §4e): the attributes of an outbox event and the two content modes of the
//! CloudEvents NATS protocol binding.
//!
//! In: the event the mapper has built (id, type, subject, commit time, payload and its kind) and the source of its
//! table. Out: either `ce-` headers added to the message with the payload untouched (binary mode), or the payload
//! replaced by the JSON event format envelope with `Content-Type: application/cloudevents+json` (structured mode).
//! Every other header (`Nats-Msg-Id`, `Outbox-*`, user headers, header columns) stays: restart reads `Outbox-*`.
//!
//! The binding (<https://github.com/cloudevents/spec/blob/main/cloudevents/bindings/nats-protocol-binding.md>, §3)
//! maps every attribute, `datacontenttype` included, to a `ce-<name>` header in binary mode; unlike the HTTP
//! binding it does not use `Content-Type` for `datacontenttype`, and a receiver takes a message whose `Content-Type`
//! is `application/cloudevents...` for structured mode and any other for binary mode. So binary mode adds no
//! `Content-Type`. Header values are percent-encoded as §3.1.3.2 requires: space, `"`, `%` and every character
//! outside printable ASCII (U+0021-U+007E, so also controls), as `%XY` per UTF-8 byte, upper-case hex.
//! `datacontenttype` `text/plain; charset=utf-8` is therefore sent as `text/plain;%20charset=utf-8` and decodes to
//! the attribute value. The JSON envelope follows the JSON event format
//! (<https://github.com/cloudevents/spec/blob/main/cloudevents/formats/json-format.md>): `data` holds a JSON payload
//! as JSON, a text payload as a JSON string, and `data_base64` holds a bytea payload in base64.

use std::{borrow::Cow, str::FromStr};

use async_nats::{header::HeaderName, HeaderMap, HeaderValue};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::mapping::event::header_value;

/// `--cloudevents`: how events are presented as CloudEvents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Plain messages (design.md §4).
    #[default]
    Off,
    /// Payload untouched, attributes as `ce-` headers.
    Binary,
    /// Payload replaced by the JSON envelope, `Content-Type: application/cloudevents+json`.
    Structured,
}

impl Mode {
    /// The option's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Binary => "binary",
            Self::Structured => "structured",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "binary" => Ok(Self::Binary),
            "structured" => Ok(Self::Structured),
            other => Err(format!("expected `off`, `binary` or `structured`, got `{other}`")),
        }
    }
}

/// The CloudEvents spec version walrelay speaks.
pub const SPEC_VERSION: &str = "1.0";
/// The structured mode's `Content-Type`.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// `Content-Type`, set in structured mode.
pub const CONTENT_TYPE: &str = "Content-Type";

/// Header names of the binary mode (lower case, as the binding writes them).
pub mod header {
    /// `specversion`.
    pub const SPECVERSION: &str = "ce-specversion";
    /// `id`: the event id.
    pub const ID: &str = "ce-id";
    /// `source`: `--cloudevents-source`.
    pub const SOURCE: &str = "ce-source";
    /// `type`: the event type.
    pub const TYPE: &str = "ce-type";
    /// `subject`: the aggregate id.
    pub const SUBJECT: &str = "ce-subject";
    /// `time`: the commit time.
    pub const TIME: &str = "ce-time";
    /// `datacontenttype`: from the payload column's type.
    pub const DATACONTENTTYPE: &str = "ce-datacontenttype";
}

/// Whether a header name belongs to CloudEvents (`ce-*`, or `Content-Type`), case-insensitively: such headers are
/// walrelay's in a CloudEvents mode and are left out of dead-letter records, which are no CloudEvents.
pub fn is_cloudevents_header(name: &str) -> bool {
    name.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("ce-")) || name.eq_ignore_ascii_case(CONTENT_TYPE)
}

/// What the payload is, from the payload column's type: it decides `datacontenttype` and how structured mode
/// embeds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// json or jsonb (and a logical message's payload, any JSON value): `application/json`.
    Json,
    /// text and any other text-output type: `text/plain; charset=utf-8`.
    Text,
    /// bytea: `application/octet-stream`.
    Bytes,
}

impl DataKind {
    /// The `datacontenttype` attribute.
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Text => "text/plain; charset=utf-8",
            Self::Bytes => "application/octet-stream",
        }
    }
}

/// Percent-encodes a header value as the NATS binding requires (§3.1.3.2): borrowed when nothing needs encoding.
pub fn percent_encode(value: &str) -> Cow<'_, str> {
    let plain = |b: u8| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%';
    if value.bytes().all(plain) {
        return Cow::Borrowed(value);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len() + 16);
    for b in value.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    Cow::Owned(out)
}

/// A percent-encoded header value (always valid: the encoding leaves only printable ASCII).
fn encoded(value: &str) -> HeaderValue {
    header_value(&percent_encode(value)).unwrap_or_default()
}

/// The attributes of one event.
#[derive(Debug)]
pub struct Attributes<'a> {
    /// `id`: the event id (never empty).
    pub id: &'a str,
    /// `source`.
    pub source: &'a str,
    /// `type`: the event type (never empty).
    pub event_type: &'a str,
    /// `subject`: the aggregate id, when there is one (an empty one is left out: the attribute must not be empty).
    pub subject: Option<&'a str>,
    /// `time`: the commit time, RFC 3339 (structured mode).
    pub time: &'a str,
    /// The `time` header value (binary mode), shared by the transaction's events: ASCII without space, so the
    /// `Outbox-Commit-Time` value serves as is.
    pub time_value: &'a HeaderValue,
    /// What the payload is.
    pub kind: DataKind,
}

/// Binary mode: adds the `ce-` headers; the payload stays as it is.
pub fn binary(attributes: &Attributes<'_>, source_value: &HeaderValue, headers: &mut HeaderMap) {
    let a = attributes;
    let fixed = &*FIXED_VALUES;
    headers.insert(HeaderName::from_static(header::SPECVERSION), fixed.specversion.clone());
    headers.insert(HeaderName::from_static(header::ID), encoded(a.id));
    headers.insert(HeaderName::from_static(header::SOURCE), source_value.clone());
    headers.insert(HeaderName::from_static(header::TYPE), encoded(a.event_type));
    if let Some(subject) = a.subject.filter(|s| !s.is_empty()) {
        headers.insert(HeaderName::from_static(header::SUBJECT), encoded(subject));
    }
    headers.insert(HeaderName::from_static(header::TIME), a.time_value.clone());
    let content_type = match a.kind {
        DataKind::Json => &fixed.json,
        DataKind::Text => &fixed.text,
        DataKind::Bytes => &fixed.bytes,
    };
    headers.insert(HeaderName::from_static(header::DATACONTENTTYPE), content_type.clone());
}

/// The binary mode's header values that never change, checked once (cloning one is cheaper than checking it again
/// per event): `ce-specversion` and each `ce-datacontenttype`, percent-encoded.
struct FixedValues {
    specversion: HeaderValue,
    json: HeaderValue,
    text: HeaderValue,
    bytes: HeaderValue,
}

static FIXED_VALUES: std::sync::LazyLock<FixedValues> = std::sync::LazyLock::new(|| FixedValues {
    specversion: encoded(SPEC_VERSION),
    json: encoded(DataKind::Json.content_type()),
    text: encoded(DataKind::Text.content_type()),
    bytes: encoded(DataKind::Bytes.content_type()),
});

/// The binary mode's `ce-source` value for a source, encoded once per table.
pub fn source_value(source: &str) -> HeaderValue {
    encoded(source)
}

/// Structured mode: the JSON envelope that replaces the payload, and `Content-Type`. `Err` names why a JSON
/// payload cannot be embedded as JSON (Postgres' `json` type accepts text JSON parsers refuse, e.g. a lone
/// surrogate escape).
pub fn structured(attributes: &Attributes<'_>, payload: &[u8], headers: &mut HeaderMap) -> Result<Bytes, String> {
    let a = attributes;
    let mut out = Vec::with_capacity(payload.len() + 256);
    let string = |out: &mut Vec<u8>, key: &str, value: &str| {
        out.push(if out.is_empty() { b'{' } else { b',' });
        // Writing JSON strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, value);
    };
    string(&mut out, "specversion", SPEC_VERSION);
    string(&mut out, "id", a.id);
    string(&mut out, "source", a.source);
    string(&mut out, "type", a.event_type);
    if let Some(subject) = a.subject.filter(|s| !s.is_empty()) {
        string(&mut out, "subject", subject);
    }
    string(&mut out, "time", a.time);
    string(&mut out, "datacontenttype", a.kind.content_type());
    match a.kind {
        DataKind::Json => {
            let raw = std::str::from_utf8(payload)
                .ok()
                .filter(|text| serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok())
                .ok_or("payload is not JSON that a CloudEvents envelope can hold as `data`")?;
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(raw.trim().as_bytes());
        }
        DataKind::Text => string(&mut out, "data", &String::from_utf8_lossy(payload)),
        DataKind::Bytes => string(&mut out, "data_base64", &base64::engine::general_purpose::STANDARD.encode(payload)),
    }
    out.push(b'}');
    headers.insert(HeaderName::from_static("Content-Type"), header_value(STRUCTURED_CONTENT_TYPE).unwrap_or_default());
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_follows_the_binding() {
        // The binding's own example.
        assert_eq!(percent_encode("Euro \u{20AC} \u{1F600}"), "Euro%20%E2%82%AC%20%F0%9F%98%80");
        assert!(matches!(percent_encode("order-1/x:y"), Cow::Borrowed("order-1/x:y")));
        assert_eq!(percent_encode("a\"b%c\td\u{7f}"), "a%22b%25c%09d%7F");
        assert_eq!(percent_encode(""), "");
    }

    #[test]
    fn modes_parse() {
        assert_eq!("binary".parse::<Mode>(), Ok(Mode::Binary));
        assert_eq!("structured".parse::<Mode>(), Ok(Mode::Structured));
        assert_eq!("off".parse::<Mode>(), Ok(Mode::Off));
        assert!("Binary".parse::<Mode>().is_err());
    }

    #[test]
    fn cloudevents_headers_are_recognised_case_insensitively() {
        for name in ["ce-id", "CE-Type", "Ce-x", "content-type", "Content-Type"] {
            assert!(is_cloudevents_header(name), "{name}");
        }
        for name in ["c", "cex", "Outbox-Index", "traceparent", "ç-a"] {
            assert!(!is_cloudevents_header(name), "{name}");
        }
    }
}
