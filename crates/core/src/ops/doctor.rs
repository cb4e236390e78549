//! `walrelay doctor`: check every prerequisite and say how to fix what is wrong.
//!
//! In: the settings. Out: one line per check, `ok|warn|fail <check>: <detail>`, and on each failing (or warning)
//! line the exact remedy (an SQL statement, a config line or a command). Exit code 1 when any check fails.
//! A check that cannot run because an earlier one failed (no connection) is left out.
//! See <https://www.postgresql.org/docs/current/logical-replication-config.html> and
//! <https://docs.nats.io/nats-concepts/jetstream/streams>.

mod connection;
mod durability;

use std::time::Duration;

use async_nats::jetstream;
use bytesize::ByteSize;
use tokio_postgres::Client;

use crate::{
    config::{quote_ident, quote_literal, Settings},
    mapping::subject::filter_matches,
    sink::{batch, publisher::PublishError, stream},
    source::publication,
    source::slot,
    source::{self, SourceError},
};

mod replica;

/// Smallest duplicate window that still covers a relay restart.
const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(60);

/// Collects check results and prints them as they come.
#[derive(Default)]
struct Checks {
    failed: usize,
    warned: usize,
}

impl Checks {
    fn ok(&mut self, check: &str, detail: impl AsRef<str>) {
        println!("ok   {check}: {}", detail.as_ref());
    }

    fn warn(&mut self, check: &str, detail: impl AsRef<str>, remedy: impl AsRef<str>) {
        self.warned += 1;
        println!("warn {check}: {}; remedy: {}", detail.as_ref(), remedy.as_ref());
    }

    fn fail(&mut self, check: &str, detail: impl AsRef<str>, remedy: impl AsRef<str>) {
        self.failed += 1;
        println!("fail {check}: {}; remedy: {}", detail.as_ref(), remedy.as_ref());
    }
}

/// Runs all checks; returns 0 when none failed (warnings allowed), 1 otherwise.
pub async fn run(settings: &Settings) -> Result<u8, crate::relay::RelayError> {
    let mut checks = Checks::default();
    match source::connect_host(&settings.pg_url).await {
        Ok((control, host)) => {
            checks.ok("postgres", format!("connected to {} as {}", settings.pg_url, settings.pg_url.user()));
            connection::check(&control, &host, settings, &mut checks).await;
            if let Err(err) = postgres_checks(&control, settings, &mut checks).await {
                fail_with(&mut checks, &err, "fix the error above and run `walrelay doctor` again");
            }
        }
        Err(err) => fail_with(
            &mut checks,
            &err,
            "check --pg-url / WALRELAY_PG_URL (host, port, user, password, database) and pg_hba.conf",
        ),
    }
    nats_checks(settings, &mut checks).await;
    println!("{} failed, {} warning{}", checks.failed, checks.warned, if checks.warned == 1 { "" } else { "s" });
    Ok(if checks.failed > 0 { 1 } else { 0 })
}

/// A Postgres error as one `fail postgres` line: its own remedy when it names one (authentication, TLS, a missing
/// database, a privilege), else `fallback`, so the line says `remedy:` once.
fn fail_with(checks: &mut Checks, err: &SourceError, fallback: &str) {
    let text = err.to_string();
    match text.split_once("; remedy: ") {
        Some((detail, remedy)) => checks.fail("postgres", detail, remedy),
        None => checks.fail("postgres", text, fallback),
    }
}

async fn postgres_checks(control: &Client, settings: &Settings, checks: &mut Checks) -> Result<(), SourceError> {
    let restart = "then restart PostgreSQL";
    // wal_level
    let level = slot::setting(control, "wal_level").await?;
    if level == "logical" {
        checks.ok("wal_level", "logical");
    } else {
        checks.fail(
            "wal_level",
            format!("{level}, logical replication needs logical"),
            format!("ALTER SYSTEM SET wal_level = logical; {restart}"),
        );
    }

    let slot_info = slot::info(control, &settings.slot).await?;
    let replay_info = slot::info(control, &settings.replay_slot()).await?;
    let db: String = query_one(control, "SELECT current_database()::text", "reading the database name").await?;

    // Free replication slots: the slot, the replay slot, and one for a peek/replay copy.
    let (max_slots, used_slots): (i32, i64) = query_two(
        control,
        "SELECT current_setting('max_replication_slots')::int, (SELECT count(*) FROM pg_replication_slots)",
        "counting replication slots",
    )
    .await?;
    let needed =
        i64::from(slot_info.is_none()) + i64::from(settings.replay_retention.is_some() && replay_info.is_none());
    let free = i64::from(max_slots) - used_slots;
    let want = needed + 1;
    let slots_remedy =
        format!("ALTER SYSTEM SET max_replication_slots = {}; {restart}", i64::from(max_slots) + want + 1);
    if free < needed {
        checks.fail("replication_slots", format!("{free} of {max_slots} free, {needed} needed"), slots_remedy);
    } else if free < want {
        checks.warn(
            "replication_slots",
            format!("{free} of {max_slots} free; peek and replay need one more for a temporary copy"),
            slots_remedy,
        );
    } else {
        checks.ok("replication_slots", format!("{free} of {max_slots} free"));
    }

    // Free WAL senders: the relay and one for a peek/replay.
    let (max_senders, used_senders): (i32, i64) = query_two(
        control,
        "SELECT current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication)",
        "counting wal senders",
    )
    .await?;
    let relay_running = slot_info.as_ref().is_some_and(|s| s.active);
    let free = i64::from(max_senders) - used_senders;
    let needed = i64::from(!relay_running);
    let senders_remedy = format!("ALTER SYSTEM SET max_wal_senders = {}; {restart}", i64::from(max_senders) + 2);
    if free < needed {
        checks.fail("wal_senders", format!("{free} of {max_senders} free, the relay needs one"), senders_remedy);
    } else if free < needed + 1 {
        checks.warn(
            "wal_senders",
            format!("{free} of {max_senders} free; peek and replay need one more"),
            senders_remedy,
        );
    } else {
        checks.ok("wal_senders", format!("{free} of {max_senders} free"));
    }

    // The role's rights.
    let role = control
        .query_one(
            "SELECT rolname::text, rolsuper, rolreplication, rolcanlogin FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| SourceError::query("reading the role's rights", e))?;
    let (name, superuser, replication, login): (String, bool, bool, bool) =
        (role.get(0), role.get(1), role.get(2), role.get(3));
    let mut missing = Vec::new();
    if !login {
        missing.push("LOGIN");
    }
    if !(replication || superuser) {
        missing.push("REPLICATION");
    }
    if missing.is_empty() {
        checks.ok("role", format!("{name} has {}", if superuser { "SUPERUSER" } else { "LOGIN and REPLICATION" }));
    } else {
        checks.fail(
            "role",
            format!("{name} lacks {}", missing.join(" and ")),
            format!("ALTER ROLE {} WITH {};", quote_ident(&name), missing.join(" ")),
        );
    }

    table_checks(control, settings, checks).await?;
    publication_checks(control, settings, checks).await?;

    // The slot.
    let create_slot = format!(
        "walrelay setup, or: SELECT pg_create_logical_replication_slot({}, 'pgoutput');",
        quote_literal(&settings.slot)
    );
    let drop_slot = |name: &str| format!("SELECT pg_drop_replication_slot({});", quote_literal(name));
    match &slot_info {
        None => checks.fail("slot", format!("{} does not exist", settings.slot), create_slot),
        Some(s) if s.plugin.as_deref() != Some("pgoutput") => checks.fail(
            "slot",
            format!("{} uses plugin {}, not pgoutput", s.name, s.plugin.as_deref().unwrap_or("none (physical)")),
            format!("{} then {create_slot} (or choose another --slot)", drop_slot(&s.name)),
        ),
        Some(s) if s.database.as_deref() != Some(db.as_str()) => checks.fail(
            "slot",
            format!("{} belongs to database {}, not {db}", s.name, s.database.as_deref().unwrap_or("-")),
            "point --pg-url at that database, or choose another --slot",
        ),
        Some(s) if s.is_lost() => checks.fail(
            "slot",
            format!(
                "{} is lost (its WAL was removed); events in the lost range must be re-sent from the source",
                s.name
            ),
            format!("walrelay teardown && walrelay setup (or: {} then {create_slot})", drop_slot(&s.name)),
        ),
        Some(s) => {
            let current = slot::current_wal_lsn(control).await?;
            let lag = s.confirmed_flush_lsn.map(|c| current.0.saturating_sub(c.0)).unwrap_or(0);
            let state = match s.active_pid {
                Some(pid) if s.active => format!("active (pid {pid})"),
                _ => "inactive".to_owned(),
            };
            let detail = format!(
                "{} pgoutput, {state}, confirmed_flush_lsn {}, lag {}",
                s.name,
                s.confirmed_flush_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                ByteSize::b(lag).display().si()
            );
            if s.wal_status.as_deref() == Some("unreserved") {
                checks.warn(
                    "slot",
                    format!("{detail}; wal_status unreserved: it will be lost at the next checkpoint unless the relay catches up"),
                    "start `walrelay run` now, or raise max_slot_wal_keep_size (ALTER SYSTEM SET max_slot_wal_keep_size = -1; SELECT pg_reload_conf();)",
                );
            } else {
                checks.ok("slot", detail);
            }
        }
    }

    // The replay slot. Without --replay-retention here, a running relay may still keep it (its retention session
    // names itself): only a replay slot that nothing keeps is worth a warning.
    let kept_by_relay = match (&replay_info, settings.replay_retention) {
        (Some(r), None) => control
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = left($1, 63))",
                &[&super::retention::keeper_name(&r.name)],
            )
            .await
            .map(|row| row.get::<_, bool>(0))
            .map_err(|e| SourceError::query("looking for the relay keeping the replay slot", e))?,
        _ => false,
    };
    match (&replay_info, settings.replay_retention) {
        (Some(r), None) if kept_by_relay => checks.ok(
            "replay_slot",
            format!(
                "{} from {}, kept by a running relay with --replay-retention",
                r.name,
                r.confirmed_flush_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into())
            ),
        ),
        (Some(r), Some(_)) if r.is_lost() => checks.fail(
            "replay_slot",
            format!("{} is lost", r.name),
            format!("{} (run recreates it)", drop_slot(&r.name)),
        ),
        (Some(r), Some(_)) => checks.ok(
            "replay_slot",
            format!("{} from {}", r.name, r.confirmed_flush_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into())),
        ),
        (None, Some(_)) => checks.warn(
            "replay_slot",
            format!("{} does not exist yet", settings.replay_slot()),
            "start `walrelay run --replay-retention ...`; it creates the slot at the relay's position",
        ),
        (Some(r), None) => checks.warn(
            "replay_slot",
            format!("{} exists but --replay-retention is not set, so nothing advances it and it retains WAL", r.name),
            format!("set --replay-retention, or {}", drop_slot(&r.name)),
        ),
        (None, None) => {}
    }

    // Standby and failover.
    let server = slot::server(control).await?;
    replica::checks(control, &server, settings, slot_info.as_ref(), checks).await?;

    // Copies left behind by an interrupted peek or replay.
    let leftovers = super::history::leftover_copies(control, &[&settings.slot, &settings.replay_slot()]).await?;
    for name in leftovers {
        checks.warn(
            "slot_copy",
            format!("{name} was left behind by an interrupted peek or replay and retains WAL"),
            drop_slot(&name),
        );
    }
    Ok(())
}

async fn table_checks(control: &Client, settings: &Settings, checks: &mut Checks) -> Result<(), SourceError> {
    if settings.table.is_empty() {
        let prefix = settings.message_prefix.as_deref().unwrap_or_default();
        checks.ok("table", format!("no table: messages only (--message-prefix {prefix})"));
    }
    for table in settings.table.iter() {
        one_table_checks(control, settings, table, checks).await?;
    }
    Ok(())
}

async fn one_table_checks(
    control: &Client,
    settings: &Settings,
    table: &crate::config::TableName,
    checks: &mut Checks,
) -> Result<(), SourceError> {
    let columns = match publication::table_columns(control, table).await {
        Ok(columns) => columns,
        Err(SourceError::MissingTable { .. }) => {
            let c = &settings.columns;
            checks.fail(
                "table",
                format!("{table} does not exist"),
                format!(
                    "CREATE TABLE {} ({} uuid PRIMARY KEY DEFAULT gen_random_uuid(), {} text NOT NULL, {} text NOT NULL, {} text NOT NULL, {} jsonb NOT NULL, {} jsonb, created_at timestamptz NOT NULL DEFAULT now()); or point --table at your outbox table",
                    table.quoted(),
                    quote_ident(&c.id),
                    quote_ident(&c.aggregate_type),
                    quote_ident(&c.aggregate_id),
                    quote_ident(&c.event_type),
                    quote_ident(&c.payload),
                    quote_ident(&c.headers),
                ),
            );
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    let has = |name: &str| columns.iter().any(|c| c.name == name);
    let mut needed: Vec<(String, &str)> = vec![(settings.columns.payload.clone(), "--payload-column")];
    needed.extend(settings.subject.columns().into_iter().map(|c| (c.to_owned(), "--subject")));
    needed.extend(settings.header_columns.iter().map(|h| (h.column.clone(), "--header-columns")));
    let missing: Vec<&(String, &str)> = needed.iter().filter(|(c, _)| !has(c)).collect();
    if missing.is_empty() {
        checks.ok("table", format!("{table} has {} columns, including {}", columns.len(), settings.columns.payload));
    } else {
        for (column, option) in missing {
            checks.fail(
                "table",
                format!("{table} has no column {column}"),
                format!(
                    "ALTER TABLE {} ADD COLUMN {} text{}; or set {option}",
                    table.quoted(),
                    quote_ident(column),
                    // A header column may be NULL (no header); the others must hold a value.
                    if *option == "--header-columns" { "" } else { " NOT NULL" }
                ),
            );
        }
    }
    // CloudEvents (design.md §4e): every event needs a type, taken from the event type column.
    if settings.cloudevents != crate::mapping::cloudevents::Mode::Off {
        let event_type = &settings.columns.event_type;
        if has(event_type) {
            checks.ok("cloudevents", format!("{} mode, type from {table}.{event_type}", settings.cloudevents.as_str()));
        } else {
            checks.fail(
                "cloudevents",
                format!("{table} has no column {event_type}: every event would be invalid without a CloudEvents type"),
                format!(
                    "ALTER TABLE {} ADD COLUMN {} text NOT NULL; or set --event-type-column, or --cloudevents off",
                    table.quoted(),
                    quote_ident(event_type)
                ),
            );
        }
    }
    let key: Vec<&str> = columns.iter().filter(|c| c.primary_key).map(|c| c.name.as_str()).collect();
    if key.is_empty() {
        let remedy = if has(&settings.columns.id) {
            format!("ALTER TABLE {} ADD PRIMARY KEY ({});", table.quoted(), quote_ident(&settings.columns.id))
        } else {
            format!(
                "ALTER TABLE {} ADD COLUMN {} uuid PRIMARY KEY DEFAULT gen_random_uuid();",
                table.quoted(),
                quote_ident(&settings.columns.id)
            )
        };
        // Not needed for relaying (pgoutput sends every column of an insert), so `run` relays it: a warning only.
        // A key is what makes the ids that become Nats-Msg-Id unique.
        checks.warn(
            "primary_key",
            format!("{table} has no primary key (run relays it; nothing keeps the ids that become Nats-Msg-Id unique)"),
            remedy,
        );
    } else {
        checks.ok("primary_key", format!("({})", key.join(", ")));
    }
    Ok(())
}

async fn publication_checks(control: &Client, settings: &Settings, checks: &mut Checks) -> Result<(), SourceError> {
    let (name, table) = (&settings.publication, &settings.table);
    // A table that does not exist has its one `fail table` line (table_checks): no rights to report on it.
    let (all, absent): (Vec<_>, Vec<_>) = publication::all_rights(control, table)
        .await?
        .into_iter()
        .partition(|r| r.table.is_none() || r.owner.is_some());
    let in_recovery = slot::server(control).await?.in_recovery;
    for rights in &all {
        let Some(one) = &rights.table else { continue };
        if rights.select {
            checks.ok("table_privilege", format!("{} may read {one}", rights.role));
        } else {
            checks.warn(
                "table_privilege",
                format!(
                    "{} has no SELECT on {one} (relaying does not need it; reading or pruning rows does)",
                    rights.role
                ),
                format!("GRANT SELECT ON {} TO {};", one.quoted(), quote_ident(&rights.role)),
            );
        }
    }
    match publication::info(control, name, table).await? {
        // Created with the table: its line says what to do first.
        None if !absent.is_empty() => {}
        // A standby cannot write: the publication is made on the primary, and reaches the standby by replication.
        None if in_recovery => checks.fail(
            "publication",
            format!("{name} does not exist"),
            format!(
                "on the primary run: {}; (or walrelay setup with --primary-url)",
                publication::create_statement(name, &table.quoted())
            ),
        ),
        None => match publication::lacking_for_create(&all) {
            Some(rights) => checks.fail(
                "publication_privilege",
                format!(
                    "{name} does not exist and {} cannot create it ({})",
                    rights.role,
                    rights.missing_for_publication().join(", ")
                ),
                publication::create_remedy(name, table, rights),
            ),
            None => checks.fail(
                "publication",
                format!("{name} does not exist"),
                format!("walrelay setup, or: {};", publication::create_statement(name, &table.quoted())),
            ),
        },
        Some(p) => {
            checks.ok("publication", format!("{name} exists{}", if p.all_tables { " (FOR ALL TABLES)" } else { "" }));
            if table.is_empty() {
                checks.ok("publication_table", "no table: messages only");
            } else if p.has_table {
                checks.ok("publication_table", format!("{name} contains {table}"));
            } else if !absent.is_empty() {
                // The table's own line says to create it first.
            } else {
                checks.fail(
                    "publication_table",
                    format!("{name} does not contain {table}"),
                    format!("ALTER PUBLICATION {} ADD TABLE {};", quote_ident(name), table.quoted()),
                );
            }
            if p.inserts {
                checks.ok("publication_inserts", format!("{name} publishes inserts"));
            } else {
                checks.fail(
                    "publication_inserts",
                    format!("{name} does not publish inserts"),
                    format!("ALTER PUBLICATION {} SET (publish = 'insert');", quote_ident(name)),
                );
            }
        }
    }
    Ok(())
}

async fn nats_checks(settings: &Settings, checks: &mut Checks) {
    let url = settings.nats.url();
    let connected = tokio::time::timeout(Duration::from_secs(8), stream::connect(settings)).await;
    let unreachable_remedy = format!(
        "start nats-server with JetStream (nats-server -js), or set --nats-url / WALRELAY_NATS_URL (now {url})"
    );
    let (client, js) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(err)) => {
            nats_connect_failed(&err, &unreachable_remedy, checks);
            return;
        }
        Err(_) => {
            checks.fail("nats", format!("nats at {url} did not answer within 8s"), unreachable_remedy);
            return;
        }
    };
    let info = client.server_info();
    checks.ok("nats", format!("connected to {url} (server {})", info.version));
    nats_security_checks(settings, &info, checks);
    let enable_js = "add `jetstream { store_dir: /var/lib/nats }` to nats-server.conf (or run nats-server -js) and restart nats-server";
    if !info.jetstream {
        checks.fail("jetstream", "JetStream is not enabled on the server", enable_js);
        return;
    }
    checks.ok("jetstream", "enabled");
    // No stream yet: the one walrelay creates.
    let (storage, replicas) = stream_checks(&js, settings, checks).await.unwrap_or(("file", settings.stream_replicas));
    let server = durability::server_sync(&client).await;
    let verdict = durability::verdict(settings.nats_sync_interval, storage, replicas, server);
    match verdict.level {
        durability::Level::Ok => checks.ok("durability", verdict.detail),
        durability::Level::Warn => checks.warn("durability", verdict.detail, verdict.remedy),
    }
    let max_payload = info.max_payload as u64;
    let detail = format!("{max_payload} bytes ({})", ByteSize::b(max_payload).display().si());
    if max_payload < 1024 * 1024 {
        checks.warn(
            "max_payload",
            format!("{detail}; larger events are invalid (--on-invalid)"),
            "max_payload: 8MB in nats-server.conf, if your events can be larger",
        );
    } else {
        checks.ok("max_payload", detail);
    }
}

/// A failed NATS connection: the check says what failed, the remedy fits the cause.
fn nats_connect_failed(err: &PublishError, unreachable_remedy: &str, checks: &mut Checks) {
    match err {
        PublishError::Authentication { url, method, reason, remedy } => checks.fail(
            "nats_auth",
            format!("nats at {url}: authentication failed (auth method: {method}): {reason}"),
            *remedy,
        ),
        PublishError::Tls { url, reason, remedy } => {
            checks.fail("nats_tls", format!("nats at {url}: TLS handshake failed: {reason}"), remedy)
        }
        PublishError::Unreachable { url, reason } => {
            checks.fail("nats", format!("nats at {url} unreachable: {reason}"), unreachable_remedy)
        }
        _ => checks.fail("nats", err.to_string(), "check --nats-url and the server's log"),
    }
}

/// TLS on or off and what the server certificate was verified against, and the auth method; a warning when a
/// connection beyond this machine is not TLS-verified.
fn nats_security_checks(settings: &Settings, info: &async_nats::ServerInfo, checks: &mut Checks) {
    let nats = &settings.nats;
    // walrelay never turns verification off: when TLS is on, the certificate was verified.
    let tls_on = nats.tls.required || info.tls_required;
    if tls_on {
        let first = if nats.tls.first { ", handshake first" } else { "" };
        let client = match &nats.tls.client_cert {
            Some(path) => format!(", client certificate {}", path.display()),
            None => String::new(),
        };
        checks.ok("nats_tls", format!("on, verified against {}{first}{client}", nats.tls.roots));
    } else if nats.is_loopback() {
        checks.ok("nats_tls", "off (loopback connection)");
    } else {
        checks.warn(
            "nats_tls",
            format!("off: the connection to {} is neither encrypted nor verified", nats.url()),
            "enable TLS on the server (tls { cert_file, key_file }) and use a tls:// URL or --nats-tls-ca",
        );
    }
    let method = nats.auth.method();
    match &nats.auth {
        crate::config::nats::NatsAuth::None => checks.ok("nats_auth", "none"),
        crate::config::nats::NatsAuth::UserPassword { user, .. } => {
            checks.ok("nats_auth", format!("{method} (user {user})"))
        }
        crate::config::nats::NatsAuth::Nkey { public, .. } => checks.ok("nats_auth", format!("{method} ({public})")),
        _ => checks.ok("nats_auth", method),
    }
}

/// The stream's checks; returns its storage (`file`/`memory`) and replicas when it exists.
async fn stream_checks(
    js: &jetstream::Context,
    settings: &Settings,
    checks: &mut Checks,
) -> Option<(&'static str, usize)> {
    let name = &settings.stream;
    let wanted = stream::stream_subjects(settings);
    let subject_flags =
        |subjects: &[String]| subjects.iter().map(|s| format!("--subjects '{s}'")).collect::<Vec<_>>().join(" ");
    let mut s = match js.get_stream(name).await {
        Ok(s) => s,
        Err(err) if stream::is_stream_not_found(&err) => {
            checks.fail(
                "stream",
                format!("{name} does not exist"),
                format!(
                    "walrelay setup, or: nats stream add {name} {} --storage file --dupe-window {} --defaults",
                    subject_flags(&wanted),
                    humantime::format_duration(settings.duplicate_window)
                ),
            );
            return None;
        }
        Err(err) => {
            checks.fail("stream", format!("{name}: {err}"), "check the NATS account's JetStream permissions");
            return None;
        }
    };
    let config = match s.info().await {
        Ok(info) => info.config.clone(),
        Err(err) => {
            checks.fail("stream", format!("{name}: {err}"), "check the NATS account's JetStream permissions");
            return None;
        }
    };
    let storage = match config.storage {
        async_nats::jetstream::stream::StorageType::File => "file",
        async_nats::jetstream::stream::StorageType::Memory => "memory",
    };
    checks.ok("stream", format!("{name} exists ({} replicas, {storage} storage)", config.num_replicas));
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|want| !config.subjects.iter().any(|have| have == *want || filter_matches(have, want)))
        .collect();
    if missing.is_empty() {
        checks.ok("stream_subjects", format!("{name} covers {}", wanted.join(", ")));
    } else {
        let all: Vec<String> = config.subjects.iter().cloned().chain(missing.iter().map(|s| (*s).clone())).collect();
        checks.fail(
            "stream_subjects",
            format!("{name} does not cover {}", missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
            format!("nats stream edit {name} {} --force", subject_flags(&all)),
        );
    }
    let window = config.duplicate_window;
    let detail = humantime::format_duration(window).to_string();
    if window < MIN_DUPLICATE_WINDOW {
        checks.warn(
            "duplicate_window",
            format!("{detail}: restarts and replays may store duplicates"),
            format!("nats stream edit {name} --dupe-window 20m --force"),
        );
    } else {
        checks.ok("duplicate_window", detail);
    }
    publish_mode_check(js, settings, config.allow_batch_publish, checks);
    Some((storage, config.num_replicas))
}

/// How `run` will publish to this stream ([`batch::mode`]: `--nats-batch`, the server's version, the stream's
/// `allow_batched`, which `setup` and `run` set only on streams they create, and `--nats-sync-interval`).
fn publish_mode_check(js: &jetstream::Context, settings: &Settings, allow_batched: bool, checks: &mut Checks) {
    let name = &settings.stream;
    match batch::mode(settings, &js.client().server_info().version, allow_batched) {
        batch::Mode::Batched => checks.ok("publish_mode", format!("fast batch: {name} has allow_batched")),
        batch::Mode::TurnedOff => checks.ok("publish_mode", "per-message acks (--nats-batch off)"),
        batch::Mode::OldServer(version) => checks.ok(
            "publish_mode",
            format!("per-message acks: nats-server {version} has no fast-batch publishing (2.14+)"),
        ),
        batch::Mode::SyncAlways => checks.ok(
            "publish_mode",
            "per-message acks: --nats-sync-interval always (fast batch needs the durability check of an interval)",
        ),
        batch::Mode::NotAllowed => checks.warn(
            "publish_mode",
            format!("per-message acks: {name} does not allow fast-batch publishing (allow_batched is off)"),
            format!(
                "set allow_batched on the stream (a JetStream stream update of {name} with \"allow_batched\": true, e.g. \
                 `nats stream edit {name} --config <file>`), or keep per-message acks with --nats-batch off"
            ),
        ),
    }
}

async fn query_one<T>(control: &Client, sql: &str, context: &str) -> Result<T, SourceError>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    let row = control.query_one(sql, &[]).await.map_err(|e| SourceError::query(context, e))?;
    row.try_get(0).map_err(|e| SourceError::query(context, e))
}

async fn query_two<A, B>(control: &Client, sql: &str, context: &str) -> Result<(A, B), SourceError>
where
    A: for<'a> tokio_postgres::types::FromSql<'a>,
    B: for<'a> tokio_postgres::types::FromSql<'a>,
{
    let row = control.query_one(sql, &[]).await.map_err(|e| SourceError::query(context, e))?;
    let a = row.try_get(0).map_err(|e| SourceError::query(context, e))?;
    let b = row.try_get(1).map_err(|e| SourceError::query(context, e))?;
    Ok((a, b))
}
