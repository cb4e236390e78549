//! `/healthz`, `/readyz` and `/standbyz` of `walrelay run --metrics-addr` (design.md §4c, issues 12 and 22) against
//! real PostgreSQL and NATS: not ready before a session streams and while standing by, ready while relaying, not
//! ready within 5 s of nats-server stopping; live throughout. `/standbyz` (Kubernetes' readiness with a standby,
//! docs/deploy.md) is 200 on the active relay and on a healthy standby, 503 before the first session and on a
//! standby that cannot reach NATS. `/metrics` (design.md §4g): every metric with `# HELP`, readiness, NATS
//! connection, acked LSN, the slot's retained WAL and safe_wal_size, the commit-to-ack histogram and build info.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use walrelay_tests::{
    http_get, ids, insert_events, stream_messages, wait_for, wait_stream_count,
    walrelay_testkit::{free_port, Process},
    Env,
};

const LONG: Duration = Duration::from_secs(120);

/// Waits until `path` answers with `code`; returns the body.
async fn wait_code(addr: &str, path: &str, code: u16, timeout: Duration) -> String {
    let mut body = String::new();
    wait_for(&format!("{path} on {addr} answers {code}"), timeout, || {
        let got = http_get(addr, path);
        if let Some((c, b)) = &got {
            body = b.clone();
            return std::future::ready(*c == code);
        }
        std::future::ready(false)
    })
    .await;
    body
}

fn healthz(addr: &str) {
    assert_eq!(http_get(addr, "/healthz"), Some((200, "ok\n".to_owned())), "/healthz on {addr}");
}

fn stop(relay: &Process) {
    relay.sigterm().unwrap();
    let status = relay.wait_timeout(Duration::from_secs(30)).unwrap().expect("relay exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "relay output:\n{}", relay.output_tail(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_session_nats_and_standing_by() {
    let mut env = Env::start();
    env.setup();
    let a_addr = format!("127.0.0.1:{}", free_port());
    let b_addr = format!("127.0.0.1:{}", free_port());

    // Before any session streams (NATS down): live, not ready, with a reason.
    env.nats.stop();
    let a = Process::spawn(env.walrelay(&["run", "--metrics-addr", &a_addr])).unwrap();
    let body = wait_code(&a_addr, "/readyz", 503, LONG).await;
    assert!(body.starts_with("retrying: ") || body == "connecting\n", "{body:?}");
    assert_eq!(body.lines().count(), 1, "one-line reason: {body:?}");
    healthz(&a_addr);
    let (code, body) = http_get(&a_addr, "/standbyz").unwrap();
    assert_eq!(code, 503, "no session yet: not a healthy member of the pair either ({body:?})");
    assert!(body.starts_with("retrying: ") || body == "connecting\n", "{body:?}");

    env.nats.start_again().unwrap();
    a.wait_for_output("relay started", LONG).unwrap();
    assert_eq!(wait_code(&a_addr, "/readyz", 200, LONG).await, "ready\n");
    healthz(&a_addr);
    assert_eq!(http_get(&a_addr, "/standbyz"), Some((200, "ready\n".to_owned())));

    // A second relay on the same slot stands by: live, not ready.
    let b = Process::spawn(env.walrelay(&["run", "--metrics-addr", &b_addr])).unwrap();
    b.wait_for_output("standing by", LONG).unwrap();
    assert_eq!(http_get(&b_addr, "/readyz"), Some((503, "standing by: slot is in use\n".to_owned())));
    assert_eq!(http_get(&b_addr, "/standbyz"), Some((200, "standing by\n".to_owned())));
    healthz(&b_addr);
    assert_eq!(http_get(&a_addr, "/readyz").map(|r| r.0), Some(200), "the active relay stays ready");

    // Relaying while ready; /metrics is still served next to the probes.
    let pg = env.client().await;
    let mut expected = insert_events(&pg, "h", 0, 5).await;
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 5, LONG).await;
    assert_eq!(ids(&stream_messages(&js, &env.stream).await), expected);
    let (code, metrics) = http_get(&a_addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.lines().any(|l| l == "walrelay_events_published_total 5"), "{metrics}");

    // nats-server stops: not ready within 5 s, still live.
    env.nats.stop();
    let stopped = Instant::now();
    let body = wait_code(&a_addr, "/readyz", 503, Duration::from_secs(5)).await;
    assert!(stopped.elapsed() < Duration::from_secs(5));
    assert!(body == "nats disconnected\n" || body.starts_with("retrying: "), "{body:?}");
    let body = wait_code(&a_addr, "/standbyz", 503, LONG).await;
    assert!(body == "nats disconnected\n" || body.starts_with("retrying: "), "{body:?}");
    // The standby's next attempt (every second) cannot reach NATS: it could not take over, so it is not ready.
    let body = wait_code(&b_addr, "/standbyz", 503, LONG).await;
    assert!(body.starts_with("retrying: "), "{body:?}");
    healthz(&a_addr);
    healthz(&b_addr);

    // NATS back: ready again, the standby stands by again; it takes over when the active relay stops, and is ready.
    env.nats.start_again().unwrap();
    wait_code(&a_addr, "/readyz", 200, LONG).await;
    assert_eq!(wait_code(&b_addr, "/standbyz", 200, LONG).await, "standing by\n");
    stop(&a);
    b.wait_for_output("slot acquired, taking over", LONG).unwrap();
    assert_eq!(wait_code(&b_addr, "/readyz", 200, LONG).await, "ready\n");
    assert_eq!(http_get(&b_addr, "/standbyz"), Some((200, "ready\n".to_owned())));
    expected.extend(insert_events(&pg, "h", 5, 3).await);
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 8, LONG).await;
    assert_eq!(ids(&stream_messages(&js, &env.stream).await), expected, "exactly once, in order");
    stop(&b);
    assert!(http_get(&b_addr, "/healthz").is_none(), "nothing serves once the process ended");
}

/// The value of the sample named exactly `series` (name and labels as exported), if any.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Every `walrelay_*` sample belongs to a family with a `# HELP` line (a histogram's `_bucket`, `_sum` and `_count`
/// to the histogram's name).
fn assert_every_metric_has_help(metrics: &str) {
    let helped: Vec<&str> =
        metrics.lines().filter_map(|l| l.strip_prefix("# HELP ")?.split_whitespace().next()).collect();
    for line in metrics.lines().filter(|l| l.starts_with("walrelay_")) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| helped.contains(f)))
            .unwrap_or(name);
        assert!(helped.contains(&family), "no # HELP for {name}:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_help_and_what_operators_alert_on() {
    let mut env = Env::start();
    env.setup();
    let addr = format!("127.0.0.1:{}", free_port());
    let relay = env.spawn_run(&["--metrics-addr", &addr, "--progress-interval", "1s"]);
    relay.wait_for_output("relay started", LONG).unwrap();
    wait_code(&addr, "/readyz", 200, LONG).await;

    // Two transactions of 3 and 2 events: 5 observations of the commit-to-ack latency.
    let pg = env.client().await;
    insert_events(&pg, "m", 0, 3).await;
    insert_events(&pg, "m", 3, 2).await;
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 5, LONG).await;
    let last_commit_lsn = stream_messages(&js, &env.stream).await.last().map(|m| m.commit_lsn()).unwrap();

    let mut metrics = String::new();
    wait_for("the latency of 5 events and the slot's retained WAL on /metrics", LONG, || {
        metrics = http_get(&addr, "/metrics").map(|(_, body)| body).unwrap_or_default();
        let ok = sample(&metrics, "walrelay_commit_to_ack_seconds_count") == Some(5.0)
            && sample(&metrics, "walrelay_slot_retained_bytes").is_some_and(|b| b > 0.0);
        std::future::ready(ok)
    })
    .await;
    assert_every_metric_has_help(&metrics);
    assert_eq!(sample(&metrics, "walrelay_ready"), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "walrelay_nats_connected"), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "walrelay_slot_invalidated"), Some(0.0), "{metrics}");
    assert_eq!(sample(&metrics, "walrelay_acked_lsn"), Some(last_commit_lsn as f64), "{metrics}");
    let version = format!("walrelay_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(sample(&metrics, &version), Some(1.0), "{metrics}");
    assert!(metrics.contains("# TYPE walrelay_commit_to_ack_seconds histogram"), "{metrics}");
    let all = sample(&metrics, "walrelay_commit_to_ack_seconds_bucket{le=\"+Inf\"}");
    assert_eq!(all, Some(5.0), "{metrics}");
    assert!(!metrics.contains("walrelay_slot_safe_wal_size_bytes "), "absent while unlimited:\n{metrics}");

    // A WAL limit for slots: safe_wal_size appears.
    pg.batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'").await.unwrap();
    pg.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    wait_for("walrelay_slot_safe_wal_size_bytes on /metrics", LONG, || {
        metrics = http_get(&addr, "/metrics").map(|(_, body)| body).unwrap_or_default();
        let safe = sample(&metrics, "walrelay_slot_safe_wal_size_bytes");
        std::future::ready(safe.is_some_and(|b| b > 0.0 && b < 2.0 * 1_073_741_824.0))
    })
    .await;
    assert_every_metric_has_help(&metrics);

    // nats-server stops: neither ready nor connected.
    env.nats.stop();
    wait_for("walrelay_ready 0 and walrelay_nats_connected 0", LONG, || {
        metrics = http_get(&addr, "/metrics").map(|(_, body)| body).unwrap_or_default();
        let ok =
            sample(&metrics, "walrelay_ready") == Some(0.0) && sample(&metrics, "walrelay_nats_connected") == Some(0.0);
        std::future::ready(ok)
    })
    .await;
    env.nats.start_again().unwrap();
    stop(&relay);
}
