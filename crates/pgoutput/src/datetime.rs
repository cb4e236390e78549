//! Dates and timestamps as Postgres stores them: days or microseconds since 2000-01-01, with the extreme values
//! standing for `-infinity` and `infinity`.
//!
//! In: text output in the default `ISO` DateStyle (`2024-03-01`, `2024-03-01 12:34:56.789+01`, `... BC`,
//! `infinity`) or the binary send format. Out: [`Date`] and [`Timestamp`], which print as ISO 8601 and convert to
//! Unix time. Ranges and formats: <https://www.postgresql.org/docs/current/datatype-datetime.html>.

use std::fmt;

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;
/// Days from 1970-01-01 (Unix epoch) to 2000-01-01 (Postgres epoch).
const UNIX_TO_POSTGRES_DAYS: i64 = 10_957;

/// A `date`: days since 2000-01-01; `i32::MIN` is `-infinity`, `i32::MAX` is `infinity` (as in Postgres).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Date(pub i32);

/// A `timestamp` or `timestamptz` (then in UTC): microseconds since 2000-01-01 00:00:00; `i64::MIN` is
/// `-infinity`, `i64::MAX` is `infinity` (as in Postgres). Also the type of commit times in messages.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamp(pub i64);

impl Date {
    /// `-infinity`
    pub const NEG_INFINITY: Date = Date(i32::MIN);
    /// `infinity`
    pub const INFINITY: Date = Date(i32::MAX);

    /// Whether the date is neither `infinity` nor `-infinity`.
    pub fn is_finite(self) -> bool {
        self != Self::NEG_INFINITY && self != Self::INFINITY
    }

    /// The date of a proleptic Gregorian (astronomical: 0 is 1 BC) year, month and day, if valid and finite.
    pub fn from_ymd(year: i32, month: u32, day: u32) -> Option<Date> {
        let days = days_from_civil(i64::from(year), month, day)? - UNIX_TO_POSTGRES_DAYS;
        let days = i32::try_from(days).ok()?;
        Some(Date(days)).filter(|date| date.is_finite())
    }

    /// Year (astronomical), month and day; `None` for the infinities.
    pub fn ymd(self) -> Option<(i64, u32, u32)> {
        self.is_finite().then(|| civil_from_days(i64::from(self.0) + UNIX_TO_POSTGRES_DAYS))
    }

    /// Parses Postgres `ISO` text output: `2024-03-01`, `0044-03-15 BC`, `infinity`, `-infinity`.
    pub fn parse_text(text: &str) -> Option<Date> {
        match text {
            "infinity" => return Some(Self::INFINITY),
            "-infinity" => return Some(Self::NEG_INFINITY),
            _ => {}
        }
        let (text, bc) = strip_bc(text);
        let (year, month, day) = parse_ymd(text, bc)?;
        Date::from_ymd(year, month, day)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ymd() {
            None if *self == Self::INFINITY => f.write_str("infinity"),
            None => f.write_str("-infinity"),
            Some((year, month, day)) => {
                write_year(f, year)?;
                write!(f, "-{month:02}-{day:02}")
            }
        }
    }
}

impl Timestamp {
    /// `-infinity`
    pub const NEG_INFINITY: Timestamp = Timestamp(i64::MIN);
    /// `infinity`
    pub const INFINITY: Timestamp = Timestamp(i64::MAX);

    /// Whether the timestamp is neither `infinity` nor `-infinity`.
    pub fn is_finite(self) -> bool {
        self != Self::NEG_INFINITY && self != Self::INFINITY
    }

    /// Microseconds since 1970-01-01 00:00:00; `None` for the infinities (or on overflow).
    pub fn unix_micros(self) -> Option<i64> {
        let offset = UNIX_TO_POSTGRES_DAYS * MICROS_PER_DAY;
        self.is_finite().then(|| self.0.checked_add(offset)).flatten()
    }

    /// The timestamp `micros` microseconds after 1970-01-01 00:00:00, unless that overflows.
    pub fn from_unix_micros(micros: i64) -> Option<Timestamp> {
        let since_2000 = micros.checked_sub(UNIX_TO_POSTGRES_DAYS * MICROS_PER_DAY)?;
        Some(Timestamp(since_2000)).filter(|timestamp| timestamp.is_finite())
    }

    /// RFC 3339 in UTC (`2024-03-01T12:34:56.789Z`); `None` for the infinities and years outside 0000 to 9999.
    pub fn to_rfc3339(self) -> Option<String> {
        let (year, ..) = self.parts()?;
        (0..=9999).contains(&year).then(|| format!("{}Z", self.iso("T")))
    }

    /// Parses Postgres `ISO` text output: `2024-03-01 12:34:56.789` (`timestamp`) or, with `with_zone`,
    /// `2024-03-01 12:34:56.789+01` / `-03:30` (`timestamptz`, converted to UTC); also `... BC` and the infinities.
    pub fn parse_text(text: &str, with_zone: bool) -> Option<Timestamp> {
        match text {
            "infinity" => return Some(Self::INFINITY),
            "-infinity" => return Some(Self::NEG_INFINITY),
            _ => {}
        }
        let (text, bc) = strip_bc(text);
        let (date, time) = text.split_once(' ')?;
        let (year, month, day) = parse_ymd(date, bc)?;
        let (time, offset_seconds) = if with_zone {
            let sign_at = time.find(['+', '-'])?;
            let (time, offset) = time.split_at_checked(sign_at)?;
            (time, parse_offset(offset)?)
        } else {
            (time, 0)
        };
        let time_micros = parse_time(time)?;
        let days = days_from_civil(i64::from(year), month, day)? - UNIX_TO_POSTGRES_DAYS;
        let micros = days
            .checked_mul(MICROS_PER_DAY)?
            .checked_add(time_micros)?
            .checked_sub(offset_seconds.checked_mul(MICROS_PER_SECOND)?)?;
        Some(Timestamp(micros)).filter(|timestamp| timestamp.is_finite())
    }

    fn parts(self) -> Option<(i64, u32, u32, i64)> {
        if !self.is_finite() {
            return None;
        }
        let days = self.0.div_euclid(MICROS_PER_DAY);
        let micros_of_day = self.0.rem_euclid(MICROS_PER_DAY);
        let (year, month, day) = civil_from_days(days + UNIX_TO_POSTGRES_DAYS);
        Some((year, month, day, micros_of_day))
    }

    fn iso(self, separator: &str) -> String {
        let Some((year, month, day, micros)) = self.parts() else {
            return if self == Self::INFINITY { "infinity".into() } else { "-infinity".into() };
        };
        let seconds = micros / MICROS_PER_SECOND;
        let fraction = micros % MICROS_PER_SECOND;
        let mut out = String::new();
        let _ = write_year(&mut out, year);
        out.push_str(&format!(
            "-{month:02}-{day:02}{separator}{:02}:{:02}:{:02}",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        ));
        if fraction != 0 {
            let digits = format!("{fraction:06}");
            out.push('.');
            out.push_str(digits.trim_end_matches('0'));
        }
        out
    }
}

impl fmt::Display for Timestamp {
    /// ISO 8601 without a zone (`2024-03-01T12:34:56.789`), `infinity` or `-infinity`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.iso("T"))
    }
}

fn write_year(out: &mut impl fmt::Write, year: i64) -> fmt::Result {
    if year < 0 {
        write!(out, "-{:04}", year.unsigned_abs())
    } else {
        write!(out, "{year:04}")
    }
}

fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

fn digits(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `YYYY-MM-DD` (year of any length), BC years converted to astronomical numbering.
fn parse_ymd(text: &str, bc: bool) -> Option<(i32, u32, u32)> {
    let mut parts = text.split('-');
    let (year, month, day) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || month.len() != 2 || day.len() != 2 {
        return None;
    }
    let year = i32::try_from(digits(year)?).ok()?;
    let year = if bc {
        if year == 0 {
            return None;
        }
        1 - year
    } else {
        year
    };
    Some((year, digits(month)?, digits(day)?))
}

/// `HH:MM:SS[.ffffff]` to microseconds.
fn parse_time(text: &str) -> Option<i64> {
    let (clock, fraction) = match text.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (text, None),
    };
    let mut parts = clock.split(':');
    let (hour, minute, second) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || [hour, minute, second].iter().any(|part| part.len() != 2) {
        return None;
    }
    let (hour, minute, second) = (digits(hour)?, digits(minute)?, digits(second)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let micros = match fraction {
        None => 0,
        Some(fraction) if (1..=6).contains(&fraction.len()) => {
            let scale = 10_u32.pow(6 - u32::try_from(fraction.len()).ok()?);
            digits(fraction)? * scale
        }
        Some(_) => return None,
    };
    Some((i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)) * MICROS_PER_SECOND + i64::from(micros))
}

/// `+HH[:MM[:SS]]` or `-...` to seconds east of UTC.
fn parse_offset(text: &str) -> Option<i64> {
    let (sign, rest) = match text.split_at_checked(1)? {
        ("+", rest) => (1, rest),
        ("-", rest) => (-1, rest),
        _ => return None,
    };
    let mut seconds = 0_i64;
    let mut count = 0;
    for (index, part) in rest.split(':').enumerate() {
        if index > 2 || part.len() != 2 {
            return None;
        }
        let value = i64::from(digits(part)?);
        seconds = seconds * 60 + value;
        count += 1;
    }
    for _ in count..3 {
        seconds *= 60;
    }
    Some(sign * seconds)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm); `None` if the date is invalid.
fn days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > month_days || year.unsigned_abs() > 10_000_000 {
        return None;
    }
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    Some(era * 146_097 + day_of_era - 719_468)
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, u32::try_from(month).unwrap_or(0), u32::try_from(day).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(Date::parse_text("2000-01-01"), Some(Date(0)));
        assert_eq!(Date::parse_text("1999-12-31"), Some(Date(-1)));
        assert_eq!(Date::parse_text("2024-02-29").map(|d| d.to_string()), Some("2024-02-29".into()));
        assert_eq!(Date::parse_text("2023-02-29"), None);
        assert_eq!(Date::parse_text("0044-03-15 BC").and_then(Date::ymd), Some((-43, 3, 15)));
        assert_eq!(Date::parse_text("0001-01-01 BC").map(|d| d.to_string()), Some("0000-01-01".into()));
        assert_eq!(Date::parse_text("5874897-12-31").and_then(Date::ymd), Some((5_874_897, 12, 31)));
        assert_eq!(Date::parse_text("infinity"), Some(Date::INFINITY));
        assert_eq!(Date::parse_text("-infinity").map(|d| d.to_string()), Some("-infinity".into()));
        for bad in ["", "2024-1-01", "2024-01-01x", "x-01-01", "2024-13-01", "0000-01-01 BC", "+2024-01-01"] {
            assert_eq!(Date::parse_text(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(Timestamp::parse_text("2000-01-01 00:00:00", false), Some(Timestamp(0)));
        assert_eq!(Timestamp::parse_text("2000-01-01 00:00:01.5", false), Some(Timestamp(1_500_000)));
        let ts = Timestamp::parse_text("2024-03-01 12:34:56.789+01", true).expect("parses");
        assert_eq!(ts.to_rfc3339().as_deref(), Some("2024-03-01T11:34:56.789Z"));
        assert_eq!(ts.unix_micros(), Some(1_709_292_896_789_000));
        assert_eq!(Timestamp::from_unix_micros(1_709_292_896_789_000), Some(ts));
        let ts = Timestamp::parse_text("2024-03-01 00:00:00-03:30", true).expect("parses");
        assert_eq!(ts.to_string(), "2024-03-01T03:30:00");
        let ts = Timestamp::parse_text("1900-01-01 00:00:00+00:09:21", true).expect("parses");
        assert_eq!(ts.to_string(), "1899-12-31T23:50:39");
        let bc = Timestamp::parse_text("0044-03-15 12:00:00+00 BC", true).expect("parses");
        assert_eq!(bc.to_string(), "-0043-03-15T12:00:00");
        assert_eq!(bc.to_rfc3339(), None);
        assert_eq!(Timestamp::parse_text("infinity", true), Some(Timestamp::INFINITY));
        assert_eq!(Timestamp::INFINITY.unix_micros(), None);
        assert_eq!(Timestamp::NEG_INFINITY.to_string(), "-infinity");
        for bad in ["2024-03-01", "2024-03-01 24:00:00", "2024-03-01 12:00", "2024-03-01 12:00:00.1234567"] {
            assert_eq!(Timestamp::parse_text(bad, false), None, "{bad:?}");
        }
        assert_eq!(Timestamp::parse_text("2024-03-01 12:00:00", true), None, "zone required");
        assert_eq!(Timestamp::parse_text("300000-01-01 00:00:00", false), None, "out of range");
    }

    #[test]
    fn civil_roundtrip() {
        for days in (-3_000_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), Some(days));
        }
    }
}
