//! Typed column values: converts a [`TupleValue`] by its column's type OID.
//!
//! In: a tuple value in text format (the default) or binary format (`binary` option) and the type OID from the
//! Relation message. Out: a [`Value`]; types without a conversion stay as text ([`Value::Other`]) or raw bytes
//! ([`Value::Binary`]). Text output formats assume the server defaults (`DateStyle` ISO, `bytea_output` hex, escape
//! also accepted). Formats: <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html> and
//! <https://www.postgresql.org/docs/current/datatype.html>.

use std::fmt;

use bytes::Bytes;

use crate::datetime::{Date, Timestamp};
use crate::{oid, DecodeError, TupleValue};

/// A column value converted by its type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value that was not sent.
    UnchangedToast,
    /// `bool`
    Bool(bool),
    /// `int2`
    Int2(i16),
    /// `int4`
    Int4(i32),
    /// `int8`
    Int8(i64),
    /// `float4` (also NaN and the infinities)
    Float4(f32),
    /// `float8` (also NaN and the infinities)
    Float8(f64),
    /// `numeric`, as its exact text (`-12.3400`, `NaN`, `Infinity`).
    Numeric(String),
    /// `text`, `varchar`, `bpchar` (with its padding) and `name`.
    Text(String),
    /// `uuid`
    Uuid(Uuid),
    /// `json` and `jsonb`, as JSON text.
    Json(String),
    /// `bytea`
    Bytea(Vec<u8>),
    /// `date`
    Date(Date),
    /// `timestamp` (without time zone)
    Timestamp(Timestamp),
    /// `timestamptz`, in UTC.
    TimestampTz(Timestamp),
    /// A text-format value of a type without a conversion.
    Other {
        /// The column's type OID.
        type_oid: u32,
        /// The value's text output.
        text: String,
    },
    /// A binary-format value of a type without a conversion.
    Binary {
        /// The column's type OID.
        type_oid: u32,
        /// The value's binary send format.
        data: Bytes,
    },
}

/// A UUID; displays in canonical lowercase hyphenated form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// Parses the canonical hyphenated form (`a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11`, any case).
    pub fn parse(text: &str) -> Option<Uuid> {
        let bytes = text.as_bytes();
        if bytes.len() != 36 {
            return None;
        }
        let mut out = [0_u8; 16];
        let mut hex = bytes.iter().enumerate().filter(|(index, _)| ![8, 13, 18, 23].contains(index));
        if [8, 13, 18, 23].iter().any(|&index| bytes.get(index) != Some(&b'-')) {
            return None;
        }
        for byte in &mut out {
            let (_, &high) = hex.next()?;
            let (_, &low) = hex.next()?;
            *byte = hex_value(high)? << 4 | hex_value(low)?;
        }
        Some(Uuid(out))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, byte) in self.0.iter().enumerate() {
            if matches!(index, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).and_then(|value| u8::try_from(value).ok())
}

/// Converts `value` of a column of type `type_oid`.
///
/// Fails with [`DecodeError::InvalidValue`] (without a column name; [`crate::Row::value`] adds it) when the value
/// does not match its type.
pub fn convert(type_oid: u32, value: &TupleValue) -> Result<Value, DecodeError> {
    let invalid = |reason: &str| DecodeError::InvalidValue { column: None, type_oid, reason: reason.to_owned() };
    match value {
        TupleValue::Null => Ok(Value::Null),
        TupleValue::UnchangedToast => Ok(Value::UnchangedToast),
        TupleValue::Text(bytes) => {
            let text = std::str::from_utf8(bytes).map_err(|_| invalid("text value is not valid UTF-8"))?;
            from_text(type_oid, text).map_err(&invalid)
        }
        TupleValue::Binary(bytes) => from_binary(type_oid, bytes).map_err(&invalid),
    }
}

fn from_text(type_oid: u32, text: &str) -> Result<Value, &'static str> {
    Ok(match type_oid {
        oid::BOOL => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => return Err("bool is neither 't' nor 'f'"),
        },
        oid::INT2 => Value::Int2(text.parse().map_err(|_| "not an int2")?),
        oid::INT4 => Value::Int4(text.parse().map_err(|_| "not an int4")?),
        oid::INT8 => Value::Int8(text.parse().map_err(|_| "not an int8")?),
        oid::FLOAT4 => Value::Float4(text.parse().map_err(|_| "not a float4")?),
        oid::FLOAT8 => Value::Float8(text.parse().map_err(|_| "not a float8")?),
        oid::NUMERIC if is_numeric_text(text) => Value::Numeric(text.to_owned()),
        oid::NUMERIC => return Err("not a numeric"),
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => Value::Text(text.to_owned()),
        oid::UUID => Value::Uuid(Uuid::parse(text).ok_or("not a uuid")?),
        oid::JSON | oid::JSONB => Value::Json(text.to_owned()),
        oid::BYTEA => Value::Bytea(parse_bytea(text).ok_or("not bytea hex or escape output")?),
        oid::DATE => Value::Date(Date::parse_text(text).ok_or("not an ISO date")?),
        oid::TIMESTAMP => Value::Timestamp(Timestamp::parse_text(text, false).ok_or("not an ISO timestamp")?),
        oid::TIMESTAMPTZ => Value::TimestampTz(Timestamp::parse_text(text, true).ok_or("not an ISO timestamptz")?),
        _ => Value::Other { type_oid, text: text.to_owned() },
    })
}

fn is_numeric_text(text: &str) -> bool {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return true;
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    !integer.is_empty() && all_digits(integer) && all_digits(fraction) && !unsigned.ends_with('.')
}

/// `\x0123ab` (hex output) or escape output (`abc\\\000`).
fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    if let Some(hex) = text.strip_prefix("\\x") {
        let pairs = hex.as_bytes().chunks(2);
        return pairs
            .map(|pair| match pair {
                [high, low] => Some(hex_value(*high)? << 4 | hex_value(*low)?),
                _ => None,
            })
            .collect();
    }
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.as_bytes().iter();
    while let Some(&byte) = bytes.next() {
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        match bytes.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(&first @ b'0'..=b'3') => {
                let second = bytes.next().filter(|b| (b'0'..=b'7').contains(b))?;
                let third = bytes.next().filter(|b| (b'0'..=b'7').contains(b))?;
                out.push((first - b'0') << 6 | (second - b'0') << 3 | (third - b'0'));
            }
            _ => return None,
        }
    }
    Some(out)
}

fn from_binary(type_oid: u32, data: &Bytes) -> Result<Value, &'static str> {
    let utf8 = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| "text value is not valid UTF-8");
    Ok(match type_oid {
        oid::BOOL => match data.as_ref() {
            [byte] => Value::Bool(*byte != 0),
            _ => return Err("binary bool is not 1 byte"),
        },
        oid::INT2 => Value::Int2(i16::from_be_bytes(fixed(data)?)),
        oid::INT4 => Value::Int4(i32::from_be_bytes(fixed(data)?)),
        oid::INT8 => Value::Int8(i64::from_be_bytes(fixed(data)?)),
        oid::FLOAT4 => Value::Float4(f32::from_be_bytes(fixed(data)?)),
        oid::FLOAT8 => Value::Float8(f64::from_be_bytes(fixed(data)?)),
        oid::NUMERIC => Value::Numeric(numeric_from_binary(data)?),
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => Value::Text(utf8(data)?),
        oid::UUID => Value::Uuid(Uuid(fixed(data)?)),
        oid::JSON => Value::Json(utf8(data)?),
        oid::JSONB => match data.split_first() {
            Some((1, json)) => Value::Json(utf8(json)?),
            _ => return Err("binary jsonb is not version 1"),
        },
        oid::BYTEA => Value::Bytea(data.to_vec()),
        oid::DATE => Value::Date(Date(i32::from_be_bytes(fixed(data)?))),
        oid::TIMESTAMP => Value::Timestamp(Timestamp(i64::from_be_bytes(fixed(data)?))),
        oid::TIMESTAMPTZ => Value::TimestampTz(Timestamp(i64::from_be_bytes(fixed(data)?))),
        _ => Value::Binary { type_oid, data: data.clone() },
    })
}

fn fixed<const N: usize>(data: &[u8]) -> Result<[u8; N], &'static str> {
    <[u8; N]>::try_from(data).map_err(|_| "binary value has the wrong length")
}

/// The binary `numeric` send format (base-10000 digits) to its exact text output.
fn numeric_from_binary(data: &[u8]) -> Result<String, &'static str> {
    const INVALID: &str = "malformed binary numeric";
    let (header, rest) = data.split_at_checked(8).ok_or(INVALID)?;
    let word = |index: usize| -> Result<u16, &'static str> {
        let bytes = header.get(index * 2..index * 2 + 2).ok_or(INVALID)?;
        Ok(u16::from_be_bytes(fixed(bytes)?))
    };
    let (ndigits, weight, sign, dscale) = (word(0)?, word(1)? as i16, word(2)?, word(3)?);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => return Err(INVALID),
    }
    if ndigits > 0x7FFF || dscale > 0x3FFF || rest.len() != usize::from(ndigits) * 2 {
        return Err(INVALID);
    }
    let digits: Vec<u16> = rest.chunks(2).map(|pair| fixed(pair).map(u16::from_be_bytes)).collect::<Result<_, _>>()?;
    if digits.iter().any(|&digit| digit > 9999) {
        return Err(INVALID);
    }
    let digit = |position: i32| -> u16 {
        usize::try_from(position).ok().and_then(|index| digits.get(index)).copied().unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for position in 0..=i32::from(weight) {
            if position == 0 {
                out.push_str(&digit(position).to_string());
            } else {
                out.push_str(&format!("{:04}", digit(position)));
            }
        }
    }
    let scale = usize::from(dscale);
    if scale > 0 {
        let mut fraction = String::with_capacity(scale + 4);
        let mut position = i32::from(weight) + 1;
        while fraction.len() < scale {
            fraction.push_str(&format!("{:04}", digit(position)));
            position += 1;
        }
        fraction.truncate(scale);
        out.push('.');
        out.push_str(&fraction);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(type_oid: u32, text: &str) -> Result<Value, DecodeError> {
        convert(type_oid, &TupleValue::Text(Bytes::copy_from_slice(text.as_bytes())))
    }

    fn binary(type_oid: u32, data: &[u8]) -> Result<Value, DecodeError> {
        convert(type_oid, &TupleValue::Binary(Bytes::copy_from_slice(data)))
    }

    #[test]
    fn text_values() {
        assert_eq!(text(oid::BOOL, "t"), Ok(Value::Bool(true)));
        assert_eq!(text(oid::BOOL, "f"), Ok(Value::Bool(false)));
        assert_eq!(text(oid::INT2, "-32768"), Ok(Value::Int2(i16::MIN)));
        assert_eq!(text(oid::INT4, "42"), Ok(Value::Int4(42)));
        assert_eq!(text(oid::INT8, "9223372036854775807"), Ok(Value::Int8(i64::MAX)));
        assert_eq!(text(oid::FLOAT4, "1.5"), Ok(Value::Float4(1.5)));
        assert_eq!(text(oid::FLOAT8, "-Infinity"), Ok(Value::Float8(f64::NEG_INFINITY)));
        assert!(matches!(text(oid::FLOAT8, "NaN"), Ok(Value::Float8(x)) if x.is_nan()));
        assert_eq!(text(oid::NUMERIC, "-12.3400"), Ok(Value::Numeric("-12.3400".into())));
        assert_eq!(text(oid::NUMERIC, "NaN"), Ok(Value::Numeric("NaN".into())));
        assert_eq!(text(oid::BPCHAR, "ab  "), Ok(Value::Text("ab  ".into())));
        assert_eq!(text(oid::JSONB, r#"{"a": 1}"#), Ok(Value::Json(r#"{"a": 1}"#.into())));
        assert_eq!(text(oid::BYTEA, "\\xdeadBEEF"), Ok(Value::Bytea(vec![0xde, 0xad, 0xbe, 0xef])));
        assert_eq!(text(oid::BYTEA, "a\\\\\\000\\377"), Ok(Value::Bytea(vec![b'a', b'\\', 0, 255])));
        assert_eq!(text(oid::DATE, "infinity"), Ok(Value::Date(Date::INFINITY)));
        assert_eq!(text(oid::TIMESTAMP, "2000-01-01 00:00:00"), Ok(Value::Timestamp(Timestamp(0))));
        assert_eq!(text(oid::TIMESTAMPTZ, "2000-01-01 01:00:00+01"), Ok(Value::TimestampTz(Timestamp(0))));
        assert_eq!(text(600, "(1,2)"), Ok(Value::Other { type_oid: 600, text: "(1,2)".into() }));
        let uuid = text(oid::UUID, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11");
        assert!(matches!(&uuid, Ok(Value::Uuid(u)) if u.to_string() == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
        assert_eq!(convert(oid::INT4, &TupleValue::Null), Ok(Value::Null));
        assert_eq!(convert(oid::TEXT, &TupleValue::UnchangedToast), Ok(Value::UnchangedToast));
    }

    #[test]
    fn invalid_text_values() {
        for (type_oid, bad) in [
            (oid::BOOL, "true"),
            (oid::INT2, "40000"),
            (oid::INT4, "1.0"),
            (oid::FLOAT8, "one"),
            (oid::NUMERIC, "1e5"),
            (oid::NUMERIC, "1."),
            (oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"),
            (oid::UUID, "a0eebc99x9c0b-4ef8-bb6d-6bb9bd380a11"),
            (oid::BYTEA, "\\xabc"),
            (oid::BYTEA, "\\9"),
            (oid::DATE, "01/02/2024"),
            (oid::TIMESTAMPTZ, "2024-01-01 00:00:00"),
        ] {
            assert!(
                matches!(text(type_oid, bad), Err(DecodeError::InvalidValue { column: None, type_oid: t, .. }) if t == type_oid),
                "{type_oid} {bad:?}"
            );
        }
        let invalid_utf8 = convert(oid::TEXT, &TupleValue::Text(Bytes::from_static(b"\xff")));
        assert!(matches!(invalid_utf8, Err(DecodeError::InvalidValue { .. })));
    }

    #[test]
    fn binary_values() {
        assert_eq!(binary(oid::BOOL, &[1]), Ok(Value::Bool(true)));
        assert_eq!(binary(oid::INT8, &7_i64.to_be_bytes()), Ok(Value::Int8(7)));
        assert_eq!(binary(oid::JSONB, b"\x01{}"), Ok(Value::Json("{}".into())));
        assert_eq!(binary(oid::UUID, &[0xab; 16]), Ok(Value::Uuid(Uuid([0xab; 16]))));
        assert_eq!(binary(oid::TIMESTAMPTZ, &5_i64.to_be_bytes()), Ok(Value::TimestampTz(Timestamp(5))));
        assert_eq!(binary(600, &[1, 2]), Ok(Value::Binary { type_oid: 600, data: Bytes::from_static(&[1, 2]) }));
        assert!(matches!(binary(oid::INT4, &[1, 2]), Err(DecodeError::InvalidValue { .. })));
        assert!(matches!(binary(oid::JSONB, b"{}"), Err(DecodeError::InvalidValue { .. })));
    }

    #[test]
    fn binary_numeric() {
        let numeric = |ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]| {
            let mut data = Vec::new();
            for word in [ndigits, weight as u16, sign, dscale].iter().chain(digits) {
                data.extend_from_slice(&word.to_be_bytes());
            }
            binary(oid::NUMERIC, &data)
        };
        let value = |s: &str| Ok(Value::Numeric(s.into()));
        assert_eq!(numeric(0, 0, 0, 0, &[]), value("0"));
        assert_eq!(numeric(2, 1, 0x4000, 4, &[12, 3400]), value("-123400.0000"));
        assert_eq!(numeric(3, 0, 0, 6, &[1, 2345, 6700]), value("1.234567"));
        assert_eq!(numeric(1, -2, 0, 8, &[12]), value("0.00000012"));
        assert_eq!(numeric(0, 0, 0xC000, 0, &[]), value("NaN"));
        assert_eq!(numeric(0, 0, 0xF000, 0, &[]), value("-Infinity"));
        assert!(matches!(numeric(1, 0, 0, 0, &[10000]), Err(DecodeError::InvalidValue { .. })));
        assert!(matches!(numeric(2, 0, 0, 0, &[1]), Err(DecodeError::InvalidValue { .. })));
    }
}
