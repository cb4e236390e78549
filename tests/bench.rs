//! `walrelay bench` end to end at a small scale: one run measures every phase and `--json` prints exactly one
//! object with every figure (the figures' values are not asserted: no timed tests). Usage errors exit 2.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::{Command, Output};

use serde_json::Value;
use walrelay_tests::walrelay_testkit::walrelay_bin;

fn bench(args: &[&str]) -> Output {
    let mut cmd = Command::new(walrelay_bin().unwrap());
    cmd.arg("bench").args(args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd.output().unwrap()
}

/// The keys of a JSON object, sorted.
fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

#[test]
fn one_run_prints_every_phase_as_one_json_object() {
    let args = ["--json", "--events", "3000", "--latency-events", "300", "--latency-rate", "1000"];
    let out = bench(&[&args[..], &["--big-txn-rows", "2000"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON line, got:\n{stdout}");
    let r: Value = serde_json::from_str(&stdout).unwrap();

    assert_eq!(r["environment"]["profile"], if cfg!(debug_assertions) { "debug" } else { "release" });
    assert!(r["environment"]["cores"].as_u64().unwrap() >= 1);
    // With no --relay, the relay measured is this executable.
    let relay = std::path::PathBuf::from(r["environment"]["relay"].as_str().unwrap());
    assert_eq!(relay.canonicalize().unwrap(), walrelay_bin().unwrap().canonicalize().unwrap());
    assert_eq!((&r["backlog"]["events"], &r["backlog"]["tx_size"]), (&Value::from(3000), &Value::from(100)));
    let payload = r["backlog"]["payload_bytes"].as_f64().unwrap();
    assert!((190.0..=210.0).contains(&payload), "payload {payload}");

    // The drain's window runs from the first ack seen to the last: at most all events, at least one.
    let drained = r["drain"]["events"].as_u64().unwrap();
    assert!((1..3000).contains(&drained), "{drained}");
    assert_eq!(keys(&r["drain"]["cpu_us_per_event"]), ["nats_server", "relay", "walsender"]);
    // Every inserted row but the first (where the window starts) of the same WAL.
    assert_eq!(r["walsender_ceiling"]["events"], 2999);
    assert_eq!(keys(&r["walsender_ceiling"]["cpu_us_per_event"]), ["reader", "walsender"]);
    // At least 50,000 timed messages after a tenth as many warm-up ones, in the relay's window.
    let ceiling = &r["jetstream_ceiling"];
    assert_eq!(
        (&ceiling["events"], &ceiling["warmup"], &ceiling["window"]),
        (&50000.into(), &5000.into(), &1024.into())
    );
    assert_eq!(keys(&ceiling["cpu_us_per_event"]), ["nats_server", "publisher"]);
    for ratio in ["drain_to_jetstream_ceiling", "drain_to_walsender_ceiling"] {
        assert!(r["ratios"][ratio].as_f64().unwrap() > 0.0, "{ratio}");
    }

    let live = &r["live"];
    assert_eq!(live["events"], 300);
    let [p50, p99, p999, max] = ["p50_ms", "p99_ms", "p999_ms", "max_ms"].map(|k| live[k].as_f64().unwrap());
    assert!(0.0 <= p50 && p50 <= p99 && p99 <= p999 && p999 <= max, "{live}");
    assert!(r["relay_peak_rss_kib"].as_u64().unwrap() > 1000);

    let big = &r["big_txn"];
    assert_eq!(big["rows"], 2000);
    assert!((1..2000).contains(&big["drain"]["events"].as_u64().unwrap()), "{big}");
    assert!(big["relay_peak_rss_kib"].as_u64().unwrap() > 1000);
    assert_eq!(r["instructions"], Value::Null);
    // The tests' nats-server (Debian's 2.9.10 unless WALRELAY_NATS_SERVER, cleared here, names another) has no fast
    // batch: per-message acks, in the drain and the ceiling alike.
    assert_eq!((&r["environment"]["publish_mode"], &ceiling["mode"]), (&"per-message".into(), &"per-message".into()));
}

/// `--nats-server` picks the server: a current one (2.14+) gets fast-batch publishing, in the drain and the JetStream
/// ceiling alike, and the human lines say so.
#[test]
fn a_current_nats_server_is_benchmarked_in_fast_batch_mode() {
    let server = walrelay_tests::walrelay_testkit::locate::nats_server_new().unwrap();
    let server = server.to_str().unwrap();
    let args = ["--events", "2000", "--latency-events", "0", "--big-txn-rows", "0", "--nats-server", server];
    let out = bench(&[&args[..], &["--json"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["environment"]["nats_server"].as_str().unwrap().starts_with("2.1"), "{}", r["environment"]);
    assert_eq!(r["environment"]["publish_mode"], "fast-batch");
    assert_eq!(r["jetstream_ceiling"]["mode"], "fast-batch");
    let out = bench(&args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().next().unwrap().ends_with(", publish mode: fast batch"), "{text}");
    assert!(text.contains("its publisher (fast batch) and window 1024"), "{text}");
    let out = bench(&["--nats-server", "/nonexistent/nats-server"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nats-server"));
}

#[test]
fn zero_counts_are_usage_errors() {
    for option in ["--events", "--tx-size", "--latency-rate", "--instructions-events"] {
        let out = bench(&[option, "0"]);
        assert_eq!(out.status.code(), Some(2), "{option}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(option), "{option}");
    }
    let out = bench(&["--relay", "/nonexistent/walrelay"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--relay") && stderr.contains("/nonexistent/walrelay"), "{stderr}");
}
