//! `walrelay demo`: the whole flow on throwaway local servers.
//!
//! Starts PostgreSQL and nats-server from the installed binaries, creates an outbox, runs the relay (with
//! `--message-prefix outbox`), writes a few business transactions (one rolled back, one with a logical decoding
//! message beside its outbox row), reads the events back from JetStream, prints them with their commit→store latency
//! and the slot's lag, checks each arrived exactly once, and cleans up.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use walrelay_core::{config::RawSettings, config::Settings, relay, source, source::slot};
use walrelay_testkit::{Nats, Postgres};

const SCHEMA: &str = "
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer text NOT NULL, total_cents bigint NOT NULL, status text NOT NULL);
";

/// The `--message-prefix` of the demo's relay: the prefix of the logical decoding messages in [`TRANSACTIONS`].
const MESSAGE_PREFIX: &str = "outbox";

/// The business transactions the demo writes: (description, SQL, committed?, logical messages it emits).
const TRANSACTIONS: &[(&str, &str, bool, u64)] = &[
    (
        "order 1001 placed",
        "INSERT INTO orders VALUES (1001, 'ada', 4200, 'placed');
         INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
         VALUES ('order', '1001', 'placed', '{\"order_id\":1001,\"customer\":\"ada\",\"total_cents\":4200}', '{\"trace-id\":\"7f3a9c\"}');",
        true,
        0,
    ),
    (
        "order 1002 placed and paid in one transaction",
        "INSERT INTO orders VALUES (1002, 'grace', 1999, 'paid');
         INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ('order', '1002', 'placed', '{\"order_id\":1002,\"customer\":\"grace\",\"total_cents\":1999}'),
                ('payment', '1002', 'captured', '{\"order_id\":1002,\"amount_cents\":1999}');",
        true,
        0,
    ),
    (
        "order 1003 placed, then rolled back (must not be published)",
        "INSERT INTO orders VALUES (1003, 'linus', 500, 'placed');
         INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ('order', '1003', 'placed', '{\"order_id\":1003}');",
        false,
        0,
    ),
    (
        "order 1001 shipped, its tracking event as a logical message (no outbox row)",
        "UPDATE orders SET status = 'shipped' WHERE id = 1001;
         INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ('order', '1001', 'shipped', '{\"order_id\":1001,\"carrier\":\"dhl\"}');
         SELECT pg_logical_emit_message(true, 'outbox', '{\"id\":\"1001-tracking\",\"aggregate_type\":\"shipment\",
           \"aggregate_id\":\"1001\",\"event_type\":\"tracked\",\"payload\":{\"order_id\":1001,\"tracking\":\"JD014600\"}}');",
        true,
        1,
    ),
];

/// Runs the demo; returns the exit code.
pub async fn run() -> anyhow::Result<u8> {
    println!("walrelay demo: starting throwaway PostgreSQL and nats-server ...");
    let (pg, nats) = tokio::task::spawn_blocking(|| -> anyhow::Result<(Postgres, Nats)> {
        let pg = Postgres::start().context("starting PostgreSQL")?;
        let nats = Nats::start().context("starting nats-server")?;
        Ok((pg, nats))
    })
    .await??;
    println!("  postgres  {}  (PostgreSQL {})", pg.url("postgres"), pg.version().unwrap_or(0));
    println!("  nats      {}", nats.url());
    pg.psql(walrelay_core::mapping::outbox::DEFAULT_TABLE_DDL).context("creating the outbox table")?;
    pg.psql(SCHEMA).context("creating the orders table")?;

    let raw = RawSettings {
        pg_url: pg.url("postgres"),
        nats_url: nats.url(),
        stream: "DEMO".into(),
        progress_interval: "1h".into(),
        message_prefix: Some(MESSAGE_PREFIX.into()),
        // The demo shows the slot confirming right behind the acks, on a throwaway nats-server whose loss costs
        // nothing; a production relay keeps the default (design.md §4d).
        nats_sync_interval: "always".into(),
        ..RawSettings::default()
    };
    let settings = Settings::validate(raw)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stats = Arc::new(walrelay_core::stats::Stats::default());
    let relay_settings = settings.clone();
    let relay_stats = stats.clone();
    let relay_task =
        walrelay_core::spawn_named("relay", async move { relay::run(&relay_settings, stop_rx, relay_stats).await });

    // The slot must exist before the application writes events.
    let control = source::connect(&settings.pg_url).await?;
    wait_for(Duration::from_secs(15), "the relay to create its slot", || async {
        matches!(slot::info(&control, &settings.slot).await, Ok(Some(info)) if info.active)
    })
    .await?;

    println!("\nwriting business transactions:");
    for (what, sql, commit, _) in TRANSACTIONS {
        let end = if *commit { "COMMIT" } else { "ROLLBACK" };
        control.batch_execute(&format!("BEGIN; {sql} {end};")).await?;
        println!("  {} {what}", if *commit { "committed  " } else { "rolled back" });
    }
    let rows: std::collections::HashSet<String> =
        control.query("SELECT id::text FROM outbox", &[]).await?.iter().map(|r| r.get(0)).collect();
    let messages: u64 = TRANSACTIONS.iter().filter(|t| t.2).map(|t| t.3).sum();
    let expected_events = rows.len() as u64 + messages;

    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    wait_for(Duration::from_secs(15), "the events to arrive in the stream", || async {
        stats.acked.load(std::sync::atomic::Ordering::Relaxed) >= expected_events
    })
    .await?;

    println!(
        "\nevents in stream DEMO ({expected_events} expected: {} outbox rows and {messages} logical message; the \
         rolled-back one absent):",
        rows.len()
    );
    let stream = js.get_stream("DEMO").await?;
    for seq in 1..=expected_events {
        let msg = stream.get_raw_message(seq).await?;
        let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
        let commit_time = humantime::parse_rfc3339(&header("Outbox-Commit-Time")).ok();
        let stored: std::time::SystemTime = msg.time.into();
        let latency = commit_time
            .and_then(|c| stored.duration_since(c).ok())
            .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "-".into());
        let id = header("Nats-Msg-Id");
        let source = if rows.contains(&id) { "outbox row" } else { "logical message" };
        println!("  #{seq} {}  id={id}  ({source})  commit→ack {latency}", msg.subject);
        let mut names: Vec<String> = msg.headers.iter().map(|(k, _)| k.to_string()).collect();
        names.sort();
        for name in names {
            if !name.starts_with("Nats-") {
                println!("      {name}: {}", header(&name));
            }
        }
        println!("      data: {}", String::from_utf8_lossy(&msg.payload));
    }

    // Let the confirmation reach Postgres, then show the lag.
    let current = slot::current_wal_lsn(&control).await?;
    let _ = wait_for(Duration::from_secs(5), "the slot to confirm", || async {
        matches!(slot::info(&control, &settings.slot).await, Ok(Some(i)) if i.confirmed_flush_lsn.is_some_and(|c| c >= current))
    })
    .await;
    if let Some(info) = slot::info(&control, &settings.slot).await? {
        let current = slot::current_wal_lsn(&control).await?;
        let confirmed = info.confirmed_flush_lsn.unwrap_or_default();
        println!(
            "\nslot {}: confirmed_flush_lsn {confirmed}, current WAL {current}, lag {} bytes",
            info.name,
            current.0.saturating_sub(confirmed.0)
        );
    }

    let _ = stop_tx.send(true);
    let result = tokio::time::timeout(Duration::from_secs(15), relay_task).await;
    match result {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => anyhow::bail!("relay failed: {err}"),
        Ok(Err(err)) => anyhow::bail!("relay task failed: {err}"),
        Err(_) => anyhow::bail!("relay did not stop within 15s"),
    }
    let count = js.get_stream("DEMO").await?.info().await?.state.messages;
    if count != expected_events {
        anyhow::bail!("stream DEMO holds {count} events, {expected_events} expected");
    }
    drop(js);
    tokio::task::spawn_blocking(move || {
        drop(pg);
        drop(nats);
    })
    .await?;
    println!("\ndone: {count} events relayed exactly once, in commit order; servers removed.");
    Ok(0)
}

/// Polls `check` until it holds or `timeout` passes.
async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
