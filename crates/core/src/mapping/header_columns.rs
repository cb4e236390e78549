//! Header columns (design.md §4e): `--header-columns COL[:Header-Name],...`, more outbox columns (or logical-message
//! fields) carried as headers, e.g. `traceparent,tracestate,tenant_id:Tenant` for W3C trace context.
//!
//! In: the option's text. Out: the list of (column, header name) pairs, checked once before connecting: a header
//! name NATS cannot carry, or one that collides (case-insensitively) with walrelay's own `Nats-*`, `Outbox-*` or
//! CloudEvents `ce-*` headers, is a usage error (exit 2). The mapper resolves the columns per relation (an unknown
//! column fails like an unknown subject-template column) and adds a header per non-NULL value, in the column's text
//! form; a value NATS cannot carry (CR or LF) makes the event invalid (`--on-invalid`).

use async_nats::header::HeaderName;

use crate::mapping::event::header_name;

/// One `--header-columns` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderColumn {
    /// The outbox column (or logical-message field).
    pub column: String,
    /// The header it becomes (the column's name unless renamed).
    pub header: HeaderName,
}

/// Parses `COL[:Header-Name],...` (blanks around entries ignored; an empty text is no column).
pub fn parse(text: &str) -> Result<Vec<HeaderColumn>, String> {
    let mut out: Vec<HeaderColumn> = Vec::new();
    for entry in text.split(',').map(str::trim) {
        if entry.is_empty() {
            if text.trim().is_empty() {
                continue;
            }
            return Err("an entry is empty; expected COL[:Header-Name],... e.g. traceparent,tenant_id:Tenant".into());
        }
        let (column, name) = match entry.split_once(':') {
            Some((column, name)) => (column.trim(), name.trim()),
            None => (entry, entry),
        };
        if column.is_empty() || column.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("`{entry}`: the column name must be non-empty, without whitespace"));
        }
        let header = header_name(name).ok_or_else(|| {
            format!(
                "`{entry}`: header name `{name}` cannot be carried by NATS (non-empty printable ASCII without `:` or \
                 whitespace)"
            )
        })?;
        let lower = name.to_ascii_lowercase();
        if let Some(prefix) = ["nats-", "outbox-", "ce-"].into_iter().find(|p| lower.starts_with(p)) {
            return Err(format!(
                "`{entry}`: header name `{name}` collides with walrelay's own `{}*` headers; rename it, e.g. \
                 `{column}:X-{name}`",
                &name[..prefix.len()]
            ));
        }
        if out.iter().any(|h| <HeaderName as AsRef<str>>::as_ref(&h.header).eq_ignore_ascii_case(name)) {
            return Err(format!("`{entry}`: header `{name}` is named twice"));
        }
        out.push(HeaderColumn { column: column.to_owned(), header });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Result<Vec<(String, String)>, String> {
        parse(text).map(|cols| {
            cols.into_iter().map(|c| (c.column, <HeaderName as AsRef<str>>::as_ref(&c.header).to_owned())).collect()
        })
    }

    #[test]
    fn columns_and_renames() {
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            names("traceparent, tracestate,tenant_id:Tenant"),
            Ok(vec![pair("traceparent", "traceparent"), pair("tracestate", "tracestate"), pair("tenant_id", "Tenant")])
        );
        assert_eq!(names(""), Ok(vec![]));
        assert_eq!(names("  "), Ok(vec![]));
    }

    #[test]
    fn collisions_and_bad_names_are_usage_errors() {
        for bad in [
            "nats-msg-id",
            "x:Nats-Expected-Last-Sequence",
            "x:OUTBOX-Index",
            "ce-id",
            "x:CE-Source",
            "a,,b",
            "a,",
            "x:bad name",
            "x:",
            ":Name",
            "a:T,b:t",
        ] {
            assert!(names(bad).is_err(), "{bad}");
        }
        assert!(names("x:Cex-Id").is_ok(), "only the ce- prefix is reserved");
    }
}
