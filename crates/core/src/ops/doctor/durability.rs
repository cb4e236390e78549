//! Doctor's durability line (design.md §4d): what an OS crash of a NATS server could lose with these settings.
//!
//! A JetStream ack means the message was written, not synced: nats-server syncs its file store every
//! `jetstream.sync_interval` (2 minutes by default) unless it runs with `sync_interval: always`. The slot keeps an
//! acked event in the WAL for `--nats-sync-interval` after the ack, so an OS crash that loses up to the server's
//! interval of acked messages loses nothing walrelay cannot re-send as long as walrelay waits at least as long as
//! the servers take to sync. Memory storage is lost by any restart, whatever the interval.
//!
//! The servers' setting is read from the system account's `$SYS.REQ.SERVER.PING.VARZ` when the credentials may ask
//! (most may not: then the line states the assumption instead). See
//! <https://docs.nats.io/running-a-nats-service/configuration#jetstream> and
//! <https://docs.nats.io/running-a-nats-service/configuration/sys_accounts>.

use std::time::Duration;

/// nats-server's default `jetstream.sync_interval`.
const SERVER_DEFAULT_SYNC: Duration = Duration::from_secs(120);
/// How long to wait for the system account's answer.
const VARZ_TIMEOUT: Duration = Duration::from_secs(2);

/// How a NATS server syncs its file store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ServerSync {
    /// `sync_interval: always`: each write is synced before the ack.
    Always,
    /// Every this long.
    Every(Duration),
}

/// The check's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Ok,
    Warn,
}

/// The durability verdict: level, detail and (for a warning) the remedy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Verdict {
    pub level: Level,
    pub detail: String,
    pub remedy: String,
}

/// The servers' sync setting, when the system account answers (the first server to answer speaks for the stream's).
pub(super) async fn server_sync(client: &async_nats::Client) -> Option<ServerSync> {
    let request = client.request("$SYS.REQ.SERVER.PING.VARZ", bytes::Bytes::new());
    let reply = tokio::time::timeout(VARZ_TIMEOUT, request).await.ok()?.ok()?;
    let varz: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
    let config = varz.get("data")?.get("jetstream")?.get("config")?;
    if config.get("sync_always").and_then(serde_json::Value::as_bool) == Some(true) {
        return Some(ServerSync::Always);
    }
    let nanos = config.get("sync_interval").and_then(serde_json::Value::as_u64);
    Some(ServerSync::Every(nanos.filter(|n| *n > 0).map_or(SERVER_DEFAULT_SYNC, Duration::from_nanos)))
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The verdict for `--nats-sync-interval` (`None`: always), the stream's storage (`file`/`memory`) and replicas, and
/// the servers' sync setting if known.
pub(super) fn verdict(
    interval: Option<Duration>,
    storage: &str,
    replicas: usize,
    server: Option<ServerSync>,
) -> Verdict {
    let setting = interval.map_or_else(|| "always".to_owned(), human);
    let stream = format!("{storage} storage, {replicas} replica{}", if replicas == 1 { "" } else { "s" });
    let servers = match server {
        Some(ServerSync::Always) => "the server syncs always".to_owned(),
        Some(ServerSync::Every(d)) => format!("the server syncs every {}", human(d)),
        None => "the servers' sync_interval is not visible to this account".to_owned(),
    };
    let head = format!("--nats-sync-interval {setting}, {stream}, {servers}");
    let ok = |detail: String| Verdict { level: Level::Ok, detail, remedy: String::new() };
    let warn = |detail: String, remedy: String| Verdict { level: Level::Warn, detail, remedy };
    if storage == "memory" {
        let who = if replicas > 1 { "a restart of all its servers" } else { "a restart of its server" };
        return warn(
            format!(
                "{head}: {who} loses the whole stream, and the WAL keeps only the events acked within the interval"
            ),
            "relay into a stream with file storage (walrelay setup creates one; docs/operations.md, \"Moving the relay\")"
                .into(),
        );
    }
    match (interval, server) {
        (None, Some(ServerSync::Always)) => {
            ok(format!("{head}: each ack is on disk; an OS crash of a NATS server loses nothing acked"))
        }
        (None, Some(ServerSync::Every(d))) => warn(
            format!(
                "{head}: an OS crash of a NATS server can lose up to {} of acked events that the slot has already \
                 confirmed, which walrelay cannot re-send",
                human(d)
            ),
            format!("--nats-sync-interval {}, or jetstream {{ sync_interval: always }} on every server", human(d)),
        ),
        (None, None) => warn(
            format!(
                "{head}: `always` confirms on the ack, so unless every server runs with sync_interval: always an OS \
                 crash of a NATS server can lose acked events that walrelay can no longer re-send"
            ),
            format!(
                "--nats-sync-interval {} (nats-server's default sync_interval), or make sure every server runs with \
                 jetstream {{ sync_interval: always }}",
                human(SERVER_DEFAULT_SYNC)
            ),
        ),
        (Some(i), Some(ServerSync::Every(d))) if d > i => warn(
            format!(
                "{head}: an OS crash of a NATS server can lose up to {} of acked events that the slot no longer keeps",
                human(d.saturating_sub(i))
            ),
            format!("--nats-sync-interval {}", human(d)),
        ),
        (Some(i), server) => {
            let assumption = match server {
                None => format!(
                    " (if the servers sync at least every {}: nats-server's default sync_interval is {})",
                    human(i),
                    human(SERVER_DEFAULT_SYNC)
                ),
                Some(_) => String::new(),
            };
            ok(format!(
                "{head}: the slot keeps the last {} of acked events in the WAL: an OS crash of a NATS server loses \
                 nothing walrelay cannot re-send{assumption}",
                human(i)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_MIN: Duration = Duration::from_secs(120);

    #[test]
    fn the_default_interval_covers_the_default_server() {
        let v = verdict(Some(TWO_MIN), "file", 1, None);
        assert_eq!(v.level, Level::Ok);
        assert!(v.detail.starts_with("--nats-sync-interval 2m, file storage, 1 replica, "), "{}", v.detail);
        assert!(v.detail.contains("the slot keeps the last 2m of acked events in the WAL"), "{}", v.detail);
        assert_eq!(verdict(Some(TWO_MIN), "file", 3, Some(ServerSync::Every(TWO_MIN))).level, Level::Ok);
        assert_eq!(verdict(Some(TWO_MIN), "file", 3, Some(ServerSync::Always)).level, Level::Ok);
    }

    #[test]
    fn always_against_a_server_that_does_not_sync_always_warns() {
        let v = verdict(None, "file", 1, Some(ServerSync::Every(TWO_MIN)));
        assert_eq!(v.level, Level::Warn);
        assert!(v.detail.contains("can lose up to 2m of acked events"), "{}", v.detail);
        assert!(v.remedy.starts_with("--nats-sync-interval 2m"), "{}", v.remedy);
        assert_eq!(verdict(None, "file", 1, None).level, Level::Warn, "unknown server: cannot promise");
        assert_eq!(verdict(None, "file", 1, Some(ServerSync::Always)).level, Level::Ok);
    }

    #[test]
    fn a_server_slower_than_the_interval_warns() {
        let v = verdict(Some(TWO_MIN), "file", 1, Some(ServerSync::Every(Duration::from_secs(300))));
        assert_eq!(v.level, Level::Warn);
        assert!(v.detail.contains("can lose up to 3m"), "{}", v.detail);
        assert_eq!(v.remedy, "--nats-sync-interval 5m");
    }

    #[test]
    fn memory_storage_warns_whatever_the_interval() {
        for (interval, server) in [(Some(TWO_MIN), None), (None, Some(ServerSync::Always))] {
            let v = verdict(interval, "memory", 1, server);
            assert_eq!(v.level, Level::Warn);
            assert!(v.detail.contains("loses the whole stream"), "{}", v.detail);
        }
    }
}
