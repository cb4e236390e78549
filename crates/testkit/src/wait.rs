//! Waiting on conditions with deadlines, the way every test of walrelay waits (never a bare `sleep`).

use std::time::{Duration, Instant};

use crate::KitError;

/// How often [`wait_until`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Calls `f` every [`POLL_INTERVAL`] until it returns `Some`, for at most `timeout`.
///
/// `f` is always called at least once, and once more at the deadline. The error is [`KitError::Timeout`] naming
/// `what`, so a failing test says which condition it gave up on.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T, KitError> {
    let start = Instant::now();
    loop {
        if let Some(value) = f() {
            return Ok(value);
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(KitError::Timeout { what: what.to_owned(), waited });
        }
        std::thread::sleep(POLL_INTERVAL.min(timeout - waited));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value() {
        let mut calls = 0;
        let got = wait_until("third call", Duration::from_secs(5), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(got.ok(), Some(3));
    }

    #[test]
    fn times_out_naming_the_condition() {
        let err = wait_until("never", Duration::from_millis(60), || None::<()>);
        assert!(matches!(err, Err(KitError::Timeout { ref what, .. }) if what == "never"));
    }
}
