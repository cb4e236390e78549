//! Reading the tail of a server's log file for error messages and [`crate::Postgres::log_tail`].

use std::path::Path;

/// The last `lines` lines of the file at `path` (lossy UTF-8); empty when the file cannot be read.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let kept: Vec<&str> = text.lines().rev().take(lines).collect();
    kept.into_iter().rev().collect::<Vec<_>>().join("\n")
}
