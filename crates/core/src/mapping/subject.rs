//! Subject templates: `outbox.{aggregate_type}.{event_type}` → `outbox.order.created`.
//!
//! In: the `--subject` template and a row's column values. Out: a NATS subject, or the reason the row cannot have one
//! (an empty token, or a value with whitespace, `.`, `*` or `>` that would change the subject's shape). Also derives
//! the stream's subject filter, each placeholder token becoming `*`.
//! See <https://docs.nats.io/nats-concepts/subjects>.

use std::{borrow::Cow, collections::BTreeSet};

/// One piece of a subject template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Column(String),
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
            let column = tail.get(1..close).unwrap_or_default();
            if column.is_empty() || column.contains(['{', '.', ' ']) {
                return Err(format!("bad placeholder `{{{column}}}`; expected `{{column_name}}`"));
            }
            pieces.push(Piece::Column(column.to_owned()));
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
                Piece::Column(c) if seen.insert(c.as_str()) => Some(c.as_str()),
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
                Piece::Column(c) => {
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
                Piece::Column(_) => marker,
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
    fn wildcard_matching() {
        assert!(filter_matches("outbox.*.*", "outbox.a.b"));
        assert!(!filter_matches("outbox.*.*", "outbox.dead-letter"));
        assert!(filter_matches("outbox.*", "outbox.dead-letter"));
        assert!(filter_matches("outbox.>", "outbox.a.b"));
        assert!(!filter_matches("outbox.>", "outbox"));
    }
}
