//! Operator commands on real servers, where an operator can lose data or get stuck: teardown refuses to drop
//! unrelayed events and a running relay never recreates what teardown removed; `skip` passes exactly the event run
//! stopped on, as its error says; separate streams never overlap on the dead-letter subject, and an overlap names
//! the subject and the option; setup rejects a subject template naming a missing column; fatal errors print once.

use walrelay_tests::ops as support;

use std::time::Duration;

use support::{stop_relay, Env, TestResult};
use walrelay_testkit::wait_until;

#[test]
fn teardown_refuses_unrelayed_events_and_a_relay_never_recreates_what_it_removed() -> TestResult {
    let env = Env::start()?;
    assert_eq!(env.walrelay(&["setup"])?.code, 0);
    let ids: Vec<String> =
        (0..3).flat_map(|i| env.insert_txn(&[("created", &format!("{{\"n\": {i}}}"))]).unwrap_or_default()).collect();
    assert_eq!(ids.len(), 3);

    // Three events were never relayed: plain teardown refuses and says what would be lost.
    let refused = env.walrelay(&["teardown"])?;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("3 pending events"), "{}", refused.stderr);
    assert!(refused.stderr.contains("bytes of WAL"), "{}", refused.stderr);
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    assert_eq!(env.slots()?, ["walrelay"], "nothing dropped, no copy left behind");

    // Relayed: teardown has nothing to lose. Set up again for the next part.
    let relay = env.start_relay(&[])?;
    let messages = env.wait_for_messages("OUTBOX", 3)?;
    assert_eq!(messages.iter().map(|m| m.id().to_owned()).collect::<Vec<_>>(), ids);
    stop_relay(relay)?;
    let out = env.walrelay(&["teardown"])?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("slot walrelay: dropped"), "{}", out.stdout);
    assert!(env.slots()?.is_empty());

    // Pending events and --force: dropped.
    assert_eq!(env.walrelay(&["setup"])?.code, 0);
    env.insert_txn(&[("created", r#"{"n": 9}"#)])?;
    assert_eq!(env.walrelay(&["teardown"])?.code, 1);
    let forced = env.walrelay(&["teardown", "--force"])?;
    assert_eq!(forced.code, 0, "{forced:?}");
    assert!(env.slots()?.is_empty());

    // A running relay, `teardown --all --force`: the relay stops naming the teardown and recreates nothing.
    assert_eq!(env.walrelay(&["setup"])?.code, 0);
    let relay = env.start_relay(&[])?;
    wait_until("slot active", Duration::from_secs(30), || {
        (env.sql("SELECT active FROM pg_replication_slots WHERE slot_name = 'walrelay'").ok()? == "t").then_some(())
    })?;
    let forced = env.walrelay(&["teardown", "--all", "--force"])?;
    assert_eq!(forced.code, 0, "{forced:?}");
    let status = relay.wait_timeout(Duration::from_secs(60))?.ok_or("relay did not stop after the teardown")?;
    assert_eq!(status.code(), Some(1), "{}", relay.output_tail(20));
    assert!(relay.output().contains("walrelay teardown"), "{}", relay.output_tail(20));
    assert!(env.slots()?.is_empty(), "no slot recreated");
    assert_eq!(env.sql("SELECT count(*) FROM pg_publication")?, "0", "no publication recreated");
    assert!(env.stream_messages("OUTBOX")?.is_empty());
    let info = env.walrelay(&["status", "--json", "--check"])?;
    assert_eq!(info.code, 1, "the slot is gone: {info:?}");
    assert!(stream_names(&env)?.is_empty(), "no stream recreated");
    Ok(())
}

#[test]
fn separate_streams_never_overlap_and_an_overlap_names_the_subject() -> TestResult {
    let env = Env::start()?;
    let out = env.walrelay(&["setup"])?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("subjects outbox.*.*, outbox.dead-letter"), "{}", out.stdout);

    // A second stream with its own subject space: its dead-letter subject follows the template.
    let out = env.walrelay(&[
        "setup",
        "--slot",
        "second",
        "--stream",
        "REPLAY_X",
        "--subject",
        "replay.{aggregate_type}.{event_type}",
    ])?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("subjects replay.*.*, replay.dead-letter"), "{}", out.stdout);

    // The same subjects as OUTBOX: the error names the subject, the stream holding it and the option.
    let out = env.walrelay(&["setup", "--slot", "third", "--stream", "NEW"])?;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("outbox.*.* (stream OUTBOX holds outbox.*.*)"), "{}", out.stderr);
    assert!(out.stderr.contains("--subject"), "{}", out.stderr);

    // Only the dead-letter subject clashes: the remedy is --dead-letter-subject.
    let out = env.walrelay(&[
        "setup",
        "--slot",
        "fourth",
        "--stream",
        "OTHER",
        "--subject",
        "other.{aggregate_type}.{event_type}",
        "--dead-letter-subject",
        "outbox.dead-letter",
    ])?;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("outbox.dead-letter (stream OUTBOX holds outbox.dead-letter)"), "{}", out.stderr);
    assert!(out.stderr.contains("--dead-letter-subject"), "{}", out.stderr);
    let mut names = stream_names(&env)?;
    names.sort();
    assert_eq!(names, ["OUTBOX", "REPLAY_X"]);
    Ok(())
}

#[test]
fn setup_rejects_a_template_naming_a_missing_column() -> TestResult {
    let env = Env::start()?;
    let out = env.walrelay(&["setup", "--subject", "outbox.{tenant}.{event_type}"])?;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("has no column tenant"), "{}", out.stderr);
    assert!(out.stderr.contains("--subject"), "{}", out.stderr);
    assert!(env.slots()?.is_empty(), "nothing created before the check");
    Ok(())
}

#[test]
fn a_fatal_error_is_printed_once_and_as_json_with_json_logs() -> TestResult {
    let env = Env::start()?;
    let out = env.walrelay(&["setup", "--table", "public.nosuch", "--log", "info"])?;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stderr.matches("table public.nosuch does not exist").count(), 1, "{}", out.stderr);
    assert!(!out.stderr.contains("walrelay stopped"), "{}", out.stderr);

    let out = env.walrelay(&["setup", "--table", "public.nosuch", "--log", "info", "--log-format", "json"])?;
    assert_eq!(out.code, 1, "{out:?}");
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{e}: {}", out.stderr))?;
    let errors: Vec<&serde_json::Value> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert_eq!(errors[0]["fields"]["command"], "setup", "{}", out.stderr);
    assert!(
        errors[0]["fields"]["error"].as_str().is_some_and(|e| e.contains("table public.nosuch does not exist")),
        "{}",
        out.stderr
    );
    Ok(())
}

#[test]
fn skip_passes_exactly_the_event_run_stopped_on() -> TestResult {
    let env = Env::with(
        walrelay_testkit::Postgres::start()?,
        walrelay_testkit::Nats::builder().max_payload(64 * 1024).start()?,
    )?;
    assert_eq!(env.walrelay(&["setup"])?.code, 0);
    let before = env.insert_txn(&[("created", r#"{"n": 0}"#), ("created", r#"{"n": 1}"#)])?;
    let big = env.sql(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) SELECT 'doc', 'big', 'stored', \
         jsonb_build_object('blob', string_agg(md5(g::text), '')) FROM generate_series(1, 3000) g RETURNING id",
    )?;
    let after = env.insert_txn(&[("created", r#"{"n": 2}"#), ("created", r#"{"n": 3}"#)])?;

    // run stops on the oversize event and names the remedy with the event's position.
    let relay = env.start_relay(&[])?;
    let status = relay.wait_timeout(Duration::from_secs(60))?.ok_or("relay did not stop on the invalid event")?;
    assert_eq!(status.code(), Some(1), "{}", relay.output_tail(20));
    let output = relay.output();
    let through = output
        .split("walrelay skip --through ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '`').next())
        .ok_or_else(|| format!("no skip remedy in: {output}"))?
        .to_owned();
    assert!(through.ends_with(":0"), "{through}");
    assert!(output.contains("--on-invalid dead-letter"), "{output}");
    assert!(output.contains(big.trim()), "{output}");

    // Malformed: exit 2. Another position: refused, naming the next one. Nothing published by either.
    assert_eq!(env.walrelay(&["skip", "--through", "soon"])?.code, 2);
    let wrong = env.walrelay(&["skip", "--through", "0/1:0"])?;
    assert_eq!(wrong.code, 1, "{wrong:?}");
    assert!(wrong.stderr.contains(&format!("use --through {through}")), "{}", wrong.stderr);
    assert_eq!(env.stream_messages("OUTBOX")?.len(), 2);

    // The remedy as printed: a dead-letter record for exactly that event; run goes on after it.
    let out = env.walrelay(&["skip", "--through", &through])?;
    assert_eq!(out.code, 0, "{out:?}");
    let relay = env.start_relay(&[])?;
    let messages = env.wait_for_messages("OUTBOX", 5)?;
    stop_relay(relay)?;
    let mut expected = before.clone();
    expected.push(format!("dead-letter:{}", big.trim()));
    expected.extend(after);
    assert_eq!(messages.iter().map(|m| m.id().to_owned()).collect::<Vec<_>>(), expected);
    assert_eq!(messages[2].subject, "outbox.dead-letter");
    assert!(messages[2].header("Outbox-Error").contains("max_payload"), "{:?}", messages[2].header("Outbox-Error"));
    assert_eq!(format!("{}:{}", messages[2].header("Outbox-Commit-Lsn"), messages[2].header("Outbox-Index")), through);

    // Nothing left to skip.
    let again = env.walrelay(&["skip", "--through", &through])?;
    assert_eq!(again.code, 1, "{again:?}");
    assert_eq!(env.stream_messages("OUTBOX")?.len(), 5);
    Ok(())
}

#[test]
fn permanent_postgres_conditions_stop_run_at_once_with_a_remedy() -> TestResult {
    let env = Env::start()?;
    let within = Duration::from_secs(30);
    let run_until_exit = |url: &str| -> Result<(Option<i32>, String, Duration), support::Error> {
        let mut cmd = env.command(&["run"])?;
        cmd.env("WALRELAY_PG_URL", url).env("WALRELAY_LOG", "info");
        let started = std::time::Instant::now();
        let relay = walrelay_testkit::Process::spawn(cmd)?;
        let status = relay.wait_timeout(within)?.ok_or("run kept retrying a permanent condition")?;
        Ok((status.code(), relay.output(), started.elapsed()))
    };

    // An unknown database (3D000): not "unreachable", no retry loop.
    let (code, output, took) = run_until_exit(&env.pg_url.replace("/app", "/nodb"))?;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("database nodb does not exist"), "{output}");
    assert!(output.contains("remedy"), "{output}");
    assert!(!output.contains("retrying"), "{output}");
    assert!(took < within, "{took:?}");

    // An unknown role: an authentication failure naming the user.
    let (code, output, _) = run_until_exit(&env.pg_url.replacen("postgres@", "ghost@", 1))?;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("authentication") && output.contains("ghost"), "{output}");
    assert!(!output.contains("retrying"), "{output}");

    // Logical decoding on a PostgreSQL 15 standby (0A000): a remedy, and nothing created on NATS first.
    let standby = env.pg.start_standby("standby15", &[])?;
    let standby_url = standby.url("app");
    let (code, output, _) = run_until_exit(&standby_url)?;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("PostgreSQL 16"), "{output}");
    assert!(!output.contains("retrying"), "{output}");
    assert!(stream_names(&env)?.is_empty(), "no stream created by a run that cannot decode");
    Ok(())
}

/// Names of the streams on the server.
fn stream_names(env: &Env) -> Result<Vec<String>, support::Error> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        use futures::TryStreamExt;
        let client = async_nats::connect(env.nats_url.as_str()).await?;
        let js = async_nats::jetstream::new(client);
        let names: Vec<String> = js.stream_names().try_collect().await?;
        Ok(names)
    })
}

/// `walrelay <args>` connecting to Postgres as `role` (which trusts it: no password).
fn as_role(env: &Env, role: &str, args: &[&str]) -> Result<support::Output, support::Error> {
    let url = env.pg_url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url, env.pg_url, "{}", env.pg_url);
    let mut cmd = env.command(args)?;
    cmd.env("WALRELAY_PG_URL", &url);
    support::run(cmd)
}

#[test]
fn a_least_privilege_role_runs_setup_and_run() -> TestResult {
    let env = Env::start()?;
    // LOGIN and REPLICATION only: doctor names what is missing for setup, with the statements that fix it.
    env.sql("CREATE ROLE relay LOGIN REPLICATION")?;
    let as_relay = |args: &[&str]| as_role(&env, "relay", args);
    let out = as_relay(&["doctor"])?;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("fail publication_privilege"), "{}", out.stdout);
    assert!(out.stdout.contains("not the owner of public.outbox (owned by postgres)"), "{}", out.stdout);
    assert!(out.stdout.contains("CREATE PUBLICATION \"walrelay\" FOR TABLE \"public\".\"outbox\""), "{}", out.stdout);
    let out = as_relay(&["setup"])?;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("CREATE PUBLICATION"), "the error gives the statement for the owner: {}", out.stderr);
    assert!(out.stderr.contains("not the owner of public.outbox"), "the error names the table: {}", out.stderr);

    // The documented least-privilege setup: the table's owner creates the publication. Relaying needs no SELECT
    // on the table (pgoutput sends the rows); doctor warns about it with the GRANT.
    env.sql("CREATE PUBLICATION walrelay FOR TABLE public.outbox WITH (publish = 'insert')")?;
    let out = as_relay(&["doctor"])?;
    assert!(out.stdout.contains("warn table_privilege: relay has no SELECT on public.outbox"), "{}", out.stdout);
    assert!(out.stdout.contains("GRANT SELECT ON \"public\".\"outbox\" TO \"relay\";"), "{}", out.stdout);
    let failing: Vec<&str> = out.stdout.lines().filter_map(|l| l.strip_prefix("fail ")?.split(':').next()).collect();
    assert_eq!(failing, ["slot", "stream"], "only what setup creates is missing: {}", out.stdout);
    let out = as_relay(&["setup"])?;
    assert_eq!(out.code, 0, "{out:?}");
    let mut cmd = env.command(&["run"])?;
    cmd.env("WALRELAY_PG_URL", env.pg_url.replacen("postgres@", "relay@", 1)).env("WALRELAY_LOG", "info");
    let relay = walrelay_testkit::Process::spawn(cmd)?;
    let ids = env.insert_txn(&[("created", r#"{"n": 0}"#), ("paid", r#"{"n": 1}"#)])?;
    let messages = env.wait_for_messages("OUTBOX", 2)?;
    assert_eq!(messages.iter().map(|m| m.id().to_owned()).collect::<Vec<_>>(), ids);
    let out = as_relay(&["status", "--check"])?;
    assert_eq!(out.code, 0, "{out:?}");
    stop_relay(relay)?;

    // design.md §4g: teardown is all or nothing. The publication is postgres's: `teardown --all` as relay names
    // the statement its owner runs and drops nothing (not the slot, which relay could drop, nor the stream).
    let out = as_relay(&["teardown", "--all"])?;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("nothing was dropped"), "{}", out.stderr);
    assert!(out.stderr.contains("publication walrelay (owned by postgres"), "{}", out.stderr);
    assert!(out.stderr.contains("DROP PUBLICATION \"walrelay\";"), "{}", out.stderr);
    assert_eq!(env.slots()?, ["walrelay"]);
    assert_eq!(env.sql("SELECT count(*) FROM pg_publication")?, "1");
    assert_eq!(env.stream_messages("OUTBOX")?.len(), 2, "the stream is still there");
    // A role without REPLICATION cannot drop the slot: named with the statement, nothing dropped.
    env.sql("CREATE ROLE viewer LOGIN")?;
    let out = as_role(&env, "viewer", &["teardown", "--keep-slot", "--drop-replay-slot"])?;
    assert_eq!(out.code, 0, "no replay slot: nothing to drop: {out:?}");
    let out = as_role(&env, "viewer", &["teardown", "--force"])?;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("SELECT pg_drop_replication_slot('walrelay');"), "{}", out.stderr);
    assert_eq!(env.slots()?, ["walrelay"]);
    // What relay owns, it removes.
    let out = as_relay(&["teardown", "--drop-stream"])?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(env.slots()?.is_empty());
    Ok(())
}

#[test]
fn a_messages_only_setup_names_the_missing_create_privilege() -> TestResult {
    let env = Env::start()?;
    // A publication of no table needs only CREATE on the database, which a LOGIN REPLICATION role lacks.
    env.sql("CREATE ROLE relay LOGIN REPLICATION")?;
    let as_relay =
        |args: &[&str]| as_role(&env, "relay", &[args, &["--table", "", "--message-prefix", "outbox"]].concat());
    let out = as_relay(&["doctor"])?;
    assert_eq!(out.code, 1, "{out:?}");
    let line = out.stdout.lines().find(|l| l.starts_with("fail publication_privilege")).unwrap_or_default();
    assert!(line.contains("relay cannot create it (no CREATE on database app)"), "{}", out.stdout);
    assert!(!line.contains("owner"), "no table, so no owner to ask for: {line}");
    assert!(out.stdout.contains("CREATE PUBLICATION \"walrelay\" WITH (publish = 'insert')"), "{}", out.stdout);
    let out = as_relay(&["setup"])?;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("no CREATE on database app"), "{}", out.stderr);
    assert!(out.stderr.contains("GRANT CREATE ON DATABASE \"app\" TO \"relay\""), "{}", out.stderr);

    env.sql("GRANT CREATE ON DATABASE app TO relay")?;
    let out = as_relay(&["setup"])?;
    assert_eq!(out.code, 0, "{out:?}");
    let out = as_relay(&["doctor"])?;
    assert!(
        out.stdout.lines().any(|l| l.starts_with("ok") && l.ends_with("publication_table: no table: messages only")),
        "{}",
        out.stdout
    );
    Ok(())
}
