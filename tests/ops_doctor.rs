//! `walrelay doctor` on real servers: each broken prerequisite fails with its exact remedy, and applying the remedy
//! makes the check pass.

use walrelay_tests::ops as support;

use support::{Env, Output, TestResult};
use walrelay_testkit::{free_port, Nats, Postgres};

/// The line of a check, asserting the output has exactly one.
fn line<'a>(out: &'a Output, check: &str) -> &'a str {
    let lines: Vec<&str> =
        out.stdout.lines().filter(|l| l.split_whitespace().nth(1) == Some(&format!("{check}:"))).collect();
    assert_eq!(lines.len(), 1, "expected one `{check}` line in:\n{}", out.stdout);
    lines[0]
}

fn assert_well_formed(out: &Output) {
    for l in out.stdout.lines().filter(|l| !l.is_empty()) {
        let ok = l.starts_with("ok   ") || l.starts_with("warn ") || l.starts_with("fail ") || l.contains(" failed, ");
        assert!(ok, "unexpected doctor line: {l}");
        if l.starts_with("fail ") {
            assert!(l.contains("; remedy: "), "failure without remedy: {l}");
        }
    }
}

#[test]
fn doctor_names_the_remedy_for_each_failure() -> TestResult {
    let env = Env::start()?;
    assert_eq!(env.walrelay(&["setup"])?.code, 0);
    let healthy = env.walrelay(&["doctor", "--nats-sync-interval", "2m"])?;
    assert_well_formed(&healthy);
    assert_eq!(healthy.code, 0, "{healthy:?}");
    assert!(!healthy.stdout.contains("\nfail "), "{}", healthy.stdout);
    for check in [
        "wal_level",
        "role",
        "table",
        "primary_key",
        "publication",
        "slot",
        "nats",
        "jetstream",
        "stream",
        "stream_subjects",
        "durability",
    ] {
        assert!(line(&healthy, check).starts_with("ok "), "{}", healthy.stdout);
    }
    // Durability (design.md §4d): the default interval covers a server's default sync; `always` cannot be promised
    // without seeing the servers' setting (a plain account cannot ask the system account).
    assert_eq!(
        line(&healthy, "durability"),
        "ok   durability: --nats-sync-interval 2m, file storage, 1 replica, the servers' sync_interval is not visible \
         to this account: the slot keeps the last 2m of acked events in the WAL: an OS crash of a NATS server loses \
         nothing walrelay cannot re-send (if the servers sync at least every 2m: nats-server's default sync_interval \
         is 2m)"
    );
    let always = env.walrelay(&["doctor", "--nats-sync-interval", "always"])?;
    assert_well_formed(&always);
    assert_eq!(always.code, 0, "{always:?}");
    let durability = line(&always, "durability");
    assert!(
        durability.starts_with("warn durability: --nats-sync-interval always, file storage, 1 replica"),
        "{durability}"
    );
    assert!(durability.ends_with("; remedy: --nats-sync-interval 2m (nats-server's default sync_interval), or make sure every server runs with jetstream { sync_interval: always }"), "{durability}");

    // A missing publication.
    env.sql("DROP PUBLICATION walrelay")?;
    let out = env.walrelay(&["doctor"])?;
    assert_well_formed(&out);
    assert_eq!(out.code, 1, "{out:?}");
    let remedy = "CREATE PUBLICATION \"walrelay\" FOR TABLE \"public\".\"outbox\" WITH (publish = 'insert');";
    assert_eq!(
        line(&out, "publication"),
        format!("fail publication: walrelay does not exist; remedy: walrelay setup, or: {remedy}")
    );
    env.sql(remedy)?;
    let fixed = env.walrelay(&["doctor"])?;
    assert_eq!(fixed.code, 0, "{fixed:?}");

    // A table without a primary key.
    env.sql(
        "CREATE TABLE public.nopk (id uuid DEFAULT gen_random_uuid(), aggregate_type text, aggregate_id text, \
         event_type text, payload jsonb); CREATE PUBLICATION nopk FOR TABLE public.nopk WITH (publish = 'insert')",
    )?;
    let nopk = ["doctor", "--table", "public.nopk", "--publication", "nopk"];
    let out = env.walrelay(&nopk)?;
    assert_well_formed(&out);
    // run relays such a table, so doctor does not fail it: a warning with the remedy.
    assert_eq!(out.code, 0, "{out:?}");
    let remedy = "ALTER TABLE \"public\".\"nopk\" ADD PRIMARY KEY (\"id\");";
    assert_eq!(
        line(&out, "primary_key"),
        format!(
            "warn primary_key: public.nopk has no primary key (run relays it; nothing keeps the ids that become \
             Nats-Msg-Id unique); remedy: {remedy}"
        )
    );
    env.sql(remedy)?;
    let out = env.walrelay(&nopk)?;
    assert!(line(&out, "primary_key").starts_with("ok "), "{}", out.stdout);
    assert_eq!(out.code, 0, "{out:?}");

    // A role without REPLICATION.
    env.sql("CREATE ROLE app LOGIN")?;
    let app_url = env.pg_url.replacen("postgres://postgres@", "postgres://app@", 1);
    assert_ne!(app_url, env.pg_url);
    let out = env.walrelay(&["doctor", "--pg-url", &app_url])?;
    assert_well_formed(&out);
    assert_eq!(out.code, 1, "{out:?}");
    let remedy = "ALTER ROLE \"app\" WITH REPLICATION;";
    assert_eq!(line(&out, "role"), format!("fail role: app lacks REPLICATION; remedy: {remedy}"));
    env.sql(remedy)?;
    let out = env.walrelay(&["doctor", "--pg-url", &app_url])?;
    assert!(line(&out, "role").starts_with("ok   role: app has LOGIN and REPLICATION"), "{}", out.stdout);

    // An absent stream.
    let out = env.walrelay(&["doctor", "--stream", "ABSENT"])?;
    assert_well_formed(&out);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        line(&out, "stream"),
        "fail stream: ABSENT does not exist; remedy: walrelay setup, or: nats stream add ABSENT \
         --subjects 'outbox.*.*' --subjects 'outbox.dead-letter' --storage file --dupe-window 20m --defaults"
    );

    // An unreachable NATS.
    let unreachable = format!("nats://127.0.0.1:{}", free_port());
    let out = env.walrelay(&["doctor", "--nats-url", &unreachable])?;
    assert_well_formed(&out);
    assert_eq!(out.code, 1, "{out:?}");
    let nats = line(&out, "nats");
    assert!(nats.starts_with("fail nats: nats at nats://127.0.0.1:"), "{nats}");
    assert!(
        nats.ends_with(&format!(
            "; remedy: start nats-server with JetStream (nats-server -js), or set --nats-url / WALRELAY_NATS_URL (now {unreachable})"
        )),
        "{nats}"
    );
    assert!(!out.stdout.contains("jetstream:"), "{}", out.stdout);
    Ok(())
}

#[test]
fn doctor_fails_on_wal_level_replica() -> TestResult {
    let pg = Postgres::builder().setting("wal_level", "replica").start()?;
    let env = Env::with(pg, Nats::start()?)?;
    let out = env.walrelay(&["doctor"])?;
    assert_well_formed(&out);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        line(&out, "wal_level"),
        "fail wal_level: replica, logical replication needs logical; remedy: ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL"
    );
    Ok(())
}

/// design.md §4g: a table that does not exist is one `fail table` line with its remedy (no owner `?`, no SELECT
/// warning, no publication line about it); a replay slot a running relay keeps with `--replay-retention` is not
/// reported as kept by nothing, while one that nothing advances still is.
#[test]
fn doctor_on_a_missing_table_and_a_replay_slot_kept_by_a_relay() -> TestResult {
    let env = Env::start()?;
    assert_eq!(env.walrelay(&["setup"])?.code, 0);
    let out = env.walrelay(&["doctor", "--table", "public.nosuch"])?;
    assert_well_formed(&out);
    assert_eq!(out.code, 1, "{out:?}");
    let about: Vec<&str> = out.stdout.lines().filter(|l| l.contains("nosuch")).collect();
    assert_eq!(about.len(), 1, "{}", out.stdout);
    assert!(about[0].starts_with("fail table: public.nosuch does not exist; remedy: CREATE TABLE"), "{}", out.stdout);
    assert!(!out.stdout.contains("owned by ?"), "{}", out.stdout);

    let relay = env.start_relay_with_history(&[])?;
    let out = env.walrelay(&["doctor"])?;
    assert_well_formed(&out);
    assert!(
        line(&out, "replay_slot").starts_with("ok   replay_slot: walrelay_replay from ")
            && line(&out, "replay_slot").ends_with("kept by a running relay with --replay-retention"),
        "{}",
        out.stdout
    );
    support::stop_relay(relay)?;
    let out = env.walrelay(&["doctor"])?;
    assert!(
        line(&out, "replay_slot")
            .starts_with("warn replay_slot: walrelay_replay exists but --replay-retention is not set"),
        "{}",
        out.stdout
    );
    Ok(())
}
