//! Log sequence numbers: positions in the write-ahead log.
//!
//! Every pgoutput message that marks a transaction boundary carries LSNs (see
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>). Postgres prints them as two
//! upper-case hex halves, `X/Y` (`pg_lsn` output), and that is the only form this type prints or parses.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log (`XLogRecPtr`).
///
/// Displays (and debug-prints) as Postgres does: `0/1931F50`, `16/B374D848`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid/zero LSN, `0/0`.
    pub const ZERO: Lsn = Lsn(0);

    /// The raw 64-bit position.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

impl From<Lsn> for u64 {
    fn from(value: Lsn) -> Self {
        value.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text given to [`Lsn::from_str`] is not of the form `X/Y` with 1 to 8 hex digits on each side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: expected X/Y with 1 to 8 hex digits on each side, e.g. 16/B374D848")]
pub struct LsnParseError {
    /// The rejected input.
    pub input: String,
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || LsnParseError { input: s.to_owned() };
        let (high, low) = s.split_once('/').ok_or_else(error)?;
        let part = |text: &str| -> Option<u64> {
            let valid = (1..=8).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit());
            if valid {
                u64::from_str_radix(text, 16).ok()
            } else {
                None
            }
        };
        match (part(high), part(low)) {
            (Some(high), Some(low)) => Ok(Lsn((high << 32) | low)),
            _ => Err(error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_postgres() {
        assert_eq!(Lsn(0x1931F50).to_string(), "0/1931F50");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(format!("{:?}", Lsn(0x16_B374_D848)), "16/B374D848");
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_postgres_text() {
        assert_eq!("0/1931F50".parse(), Ok(Lsn(0x1931F50)));
        assert_eq!("16/b374d848".parse(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse(), Ok(Lsn(u64::MAX)));
        assert_eq!("00000000/00000001".parse(), Ok(Lsn(1)));
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in
            ["", "/", "0/", "/0", "0", "0/0/0", "1FFFFFFFF/0", "0/123456789", "+1/0", "-1/0", "0/x", " 0/1", "0/1 "]
        {
            assert_eq!(bad.parse::<Lsn>(), Err(LsnParseError { input: bad.to_owned() }), "{bad:?}");
        }
    }

    #[test]
    fn orders_by_position() {
        assert!(Lsn(1) < Lsn(2));
        assert!("1/0".parse::<Lsn>().ok() > "0/FFFFFFFF".parse::<Lsn>().ok());
    }
}
