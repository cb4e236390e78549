//! Subject templates: `outbox.{aggregate_type}.{event_type}` → `outbox.order.created`.
//!
//! In: the `--subject` template and a row's column values. Out: a NATS subject, or the reason the row cannot have one
//! (an empty token, or a value with whitespace, `.`, `*` or `>` that would change the subject's shape). Also derives
//! the stream's subject filter, each placeholder token becoming `*`.
//! See <https://docs.nats.io/nats-concepts/subjects>.
//!
//! `{column|partition:N}` (design.md §4e) renders the partition number `0..N-1` of the column's value instead of the
//! value: FNV-1a 32-bit over the value's UTF-8 bytes (its Postgres text form), mod N. That is exactly what
//! nats-server's `partition(N, k)` subject mapping computes for a subject whose token `k` holds the value
//! (`getHashPartition` in nats-server's `server/subject_transform.go` hashes the bytes of the named tokens, joined
//! without separator, with Go's `hash/fnv` `New32a`), so a consumer and a server-side mapping agree on where a key
//! lands. The rule is part of the product contract: changing it moves keys between partitions.

use std::{borrow::Cow, collections::BTreeSet};

/// One piece of a subject template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    /// `{column}`, or `{column|partition:N}` when `partitions` is set.
    Column {
        name: String,
        partitions: Option<u32>,
    },
}

/// FNV-1a 32-bit (<http://www.isthe.com/chongo/tech/comp/fnv/>): offset basis 2166136261, prime 16777619, each
/// byte XORed in before the multiplication. The same as Go's `hash/fnv.New32a`, which nats-server's `partition()`
/// mapping uses.
pub const fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    hash
}

/// The partition (`0..partitions`) of a value: [`fnv1a32`] of its UTF-8 bytes, mod `partitions` (at least 1).
pub fn partition(value: &str, partitions: u32) -> u32 {
    fnv1a32(value.as_bytes()) % partitions.max(1)
}

/// Parses the inside of a placeholder: `column` or `column|partition:N` (N from 1 to 2^31-1, nats-server's limit).
fn placeholder(inside: &str) -> Result<Piece, String> {
    let bad = || format!("bad placeholder `{{{inside}}}`; expected `{{column_name}}` or `{{column_name|partition:N}}`");
    let (name, function) = match inside.split_once('|') {
        Some((name, function)) => (name, Some(function)),
        None => (inside, None),
    };
    if name.is_empty() || name.contains(['{', '.', ' ', '|', ':']) {
        return Err(bad());
    }
    let partitions = match function {
        None => None,
        Some(function) => {
            let n = function.strip_prefix("partition:").ok_or_else(bad)?;
            match n.parse::<u32>() {
                Ok(n) if (1..=i32::MAX as u32).contains(&n) => Some(n),
                _ => {
                    return Err(format!(
                        "bad placeholder `{{{inside}}}`: the number of partitions must be a whole number from 1 to \
                         {}, e.g. `{{{name}|partition:16}}`",
                        i32::MAX
                    ))
                }
            }
        }
    };
    Ok(Piece::Column { name: name.to_owned(), partitions })
}

/// A parsed `--subject` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    source: String,
    pieces: Vec<Piece>,
}

impl SubjectTemplate {
    /// Parses a template; `{column}` placeholders must fill whole tokens or parts of tokens.
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let (lit, tail) = rest.split_at(open);
            if !lit.is_empty() {
                pieces.push(Piece::Literal(lit.to_owned()));
            }
            let close = tail.find('}').ok_or("unclosed `{` in subject template")?;
            pieces.push(placeholder(tail.get(1..close).unwrap_or_default())?);
            rest = tail.get(close + 1..).unwrap_or_default();
        }
        if rest.contains('}') {
            return Err("unmatched `}` in subject template".into());
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        let t = Self { source: template.to_owned(), pieces };
        // Check the shape with a harmless value in every placeholder.
        let sample = t.render(|_| Some(Cow::Borrowed("x"))).map_err(|e| format!("template: {e}"))?;
        validate_literal_subject(&sample)?;
        Ok(t)
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The columns the template reads, in order of first use.
    pub fn columns(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Column { name, .. } if seen.insert(name.as_str()) => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Renders the subject; `value(column)` returns the column's text, `None` for NULL.
    pub fn render<'v>(&self, mut value: impl FnMut(&str) -> Option<Cow<'v, str>>) -> Result<String, String> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => out.push_str(l),
                Piece::Column { name: c, partitions: Some(n) } => {
                    // Any value has a partition (the empty string too); only NULL has none.
                    let v = value(c).ok_or_else(|| format!("subject column `{c}` is NULL"))?;
                    out.push_str(itoa::Buffer::new().format(partition(&v, *n)));
                }
                Piece::Column { name: c, partitions: None } => {
                    let v = value(c).ok_or_else(|| format!("subject column `{c}` is NULL"))?;
                    if v.is_empty() {
                        return Err(format!("subject column `{c}` is empty"));
                    }
                    if let Some(bad) =
                        v.chars().find(|ch| ch.is_whitespace() || ch.is_control() || matches!(ch, '.' | '*' | '>'))
                    {
                        return Err(format!(
                            "subject column `{c}` value contains `{}`, which cannot appear in a subject token",
                            bad.escape_debug()
                        ));
                    }
                    out.push_str(&v);
                }
            }
        }
        validate_literal_subject(&out)?;
        Ok(out)
    }

    /// The dead-letter subject when `--dead-letter-subject` is not given: `<first token>.dead-letter` when the
    /// template's first token is literal (`outbox.dead-letter` for the default template), so it stays inside the
    /// stream's own subject space and separate streams never overlap; `dead-letter` otherwise.
    pub fn default_dead_letter_subject(&self) -> String {
        match self.filter().split('.').next() {
            Some(first) if first != "*" && !first.is_empty() => format!("{first}.dead-letter"),
            _ => "dead-letter".to_owned(),
        }
    }

    /// The stream filter covering every subject the template can render: placeholder tokens become `*`.
    pub fn filter(&self) -> String {
        let marker = "\u{1}";
        let rendered: String = self
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Literal(l) => l.as_str(),
                Piece::Column { .. } => marker,
            })
            .collect();
        rendered.split('.').map(|tok| if tok.contains(marker) { "*" } else { tok }).collect::<Vec<_>>().join(".")
    }
}

/// Checks a concrete subject: non-empty tokens, no whitespace, no wildcards.
pub fn validate_literal_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("subject is empty".into());
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return Err(format!("subject `{subject}` has an empty token"));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("subject `{subject}` contains whitespace"));
        }
        if token == "*" || token == ">" || token.contains(['*', '>']) {
            return Err(format!("subject `{subject}` contains a wildcard"));
        }
    }
    Ok(())
}

/// Whether NATS subject filter `filter` (with `*`/`>` wildcards) matches subject `subject`.
pub fn filter_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_subject_follows_the_template() {
        let dl = |t: &str| SubjectTemplate::parse(t).map(|t| t.default_dead_letter_subject());
        assert_eq!(dl("outbox.{aggregate_type}.{event_type}").as_deref(), Ok("outbox.dead-letter"));
        assert_eq!(dl("replay.{aggregate_type}.{event_type}").as_deref(), Ok("replay.dead-letter"));
        assert_eq!(dl("{aggregate_type}.{event_type}").as_deref(), Ok("dead-letter"));
        assert_eq!(dl("v1-{event_type}.x").as_deref(), Ok("dead-letter"));
    }

    #[test]
    fn renders_and_filters() {
        let t = SubjectTemplate::parse("outbox.{aggregate_type}.{event_type}").expect("parse");
        assert_eq!(t.columns(), vec!["aggregate_type", "event_type"]);
        assert_eq!(t.filter(), "outbox.*.*");
        let s = t.render(|c| Some(Cow::Borrowed(if c == "aggregate_type" { "order" } else { "created" })));
        assert_eq!(s.as_deref(), Ok("outbox.order.created"));
        let t = SubjectTemplate::parse("events.v1-{event_type}").expect("parse");
        assert_eq!(t.filter(), "events.*");
    }

    #[test]
    fn rejects_bad_tokens() {
        let t = SubjectTemplate::parse("outbox.{a}").expect("parse");
        for bad in ["", "a.b", "a b", "*", ">", "x\ny"] {
            assert!(t.render(|_| Some(Cow::Borrowed(bad))).is_err(), "{bad:?}");
        }
        assert!(t.render(|_| None).is_err());
        assert!(SubjectTemplate::parse("outbox.{a").is_err());
        assert!(SubjectTemplate::parse("outbox..{a}").is_err());
        assert!(SubjectTemplate::parse("outbox.*").is_err());
    }

    #[test]
    fn fnv1a32_matches_the_reference_vectors() {
        // The FNV reference vectors (Go's hash/fnv tests use the same): "", "a", "ab", "abc", "foobar".
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"ab"), 0x4d25_05ca);
        assert_eq!(fnv1a32(b"abc"), 0x1a47_e90b);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        // UTF-8 bytes, not characters: "é" is 0xC3 0xA9.
        assert_eq!(fnv1a32("é".as_bytes()), fnv1a32(&[0xc3, 0xa9]));
        assert_eq!(partition("foobar", 16), 0xbf9c_f968 % 16);
        assert_eq!(partition("a", 1), 0);
    }

    #[test]
    fn partition_placeholders_render_the_partition_number() {
        let t = SubjectTemplate::parse("outbox.{aggregate_type}.{aggregate_id|partition:16}").expect("parse");
        assert_eq!(t.columns(), vec!["aggregate_type", "aggregate_id"]);
        assert_eq!(t.filter(), "outbox.*.*");
        let render = |id: Option<&'static str>| {
            t.render(|c| if c == "aggregate_id" { id.map(Cow::Borrowed) } else { Some(Cow::Borrowed("order")) })
        };
        // 0x4d2505ca % 16 = 10; values a token could not hold still have a partition.
        assert_eq!(render(Some("ab")).as_deref(), Ok("outbox.order.10"));
        assert_eq!(render(Some("a b.*")).as_deref(), Ok(format!("outbox.order.{}", partition("a b.*", 16)).as_str()));
        assert_eq!(render(Some("")).as_deref(), Ok("outbox.order.5"), "0x811c9dc5 % 16");
        assert!(render(None).is_err_and(|e| e.contains("NULL")));
        for bad in [
            "o.{a|partition:0}",
            "o.{a|partition:}",
            "o.{a|partition:x}",
            "o.{a|partition:-1}",
            "o.{a|hash:4}",
            "o.{a|}",
            "o.{|partition:4}",
            "o.{a|partition:2147483648}",
        ] {
            assert!(SubjectTemplate::parse(bad).is_err(), "{bad}");
        }
        assert!(SubjectTemplate::parse("o.{a|partition:2147483647}").is_ok());
    }

    #[test]
    fn wildcard_matching() {
        assert!(filter_matches("outbox.*.*", "outbox.a.b"));
        assert!(!filter_matches("outbox.*.*", "outbox.dead-letter"));
        assert!(filter_matches("outbox.*", "outbox.dead-letter"));
        assert!(filter_matches("outbox.>", "outbox.a.b"));
        assert!(!filter_matches("outbox.>", "outbox"));
    }
}
