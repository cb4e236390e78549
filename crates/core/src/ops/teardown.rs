//! `walrelay teardown`: drop the slot, and on request the replay slot, the publication and the stream.
//!
//! In: the settings and which objects to drop. Out: a line per object (dropped / not found). An active slot (a relay
//! is running) is refused unless `--force`, which terminates its walsender (`pg_terminate_backend`) and drops the
//! slot once it is released. Copies left behind by an interrupted `peek` or `replay` are dropped with the slot.
//!
//! All or nothing (design.md §4g): before anything is dropped, every part asked for is checked to be removable by
//! this role (a slot: the REPLICATION attribute or superuser; the publication: its owner, a member of the owning
//! role, or a superuser; the stream: it answers, or does not exist). A part it cannot remove is named with the
//! statement its owner runs, and nothing is dropped: a half-done teardown leaves a slot pinning WAL or a stream
//! without its slot. NATS permissions cannot be checked without trying, so a stream's delete can still be refused
//! after the Postgres parts are gone; it is the last step.
//! See <https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-REPLICATION>.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::history::SlotCopy;
use crate::{
    config::{quote_ident, quote_literal, Settings},
    relay::RelayError,
    sink::publisher::PublishError,
    sink::stream,
    source::publication,
    source::slot,
    source::{self, PgHost, SourceError},
};

/// Which objects to drop besides the slot.
#[derive(Debug, Clone, Copy)]
pub struct TeardownOptions {
    /// Drop even while active, terminating the walsender.
    pub force: bool,
    /// Drop the main slot (the default; `--keep-slot` turns it off).
    pub slot: bool,
    /// Also drop `<slot>_replay`.
    pub replay_slot: bool,
    /// Also drop the publication.
    pub publication: bool,
    /// Also delete the stream and its messages.
    pub stream: bool,
}

/// How long `--force` keeps terminating and retrying before giving up.
const FORCE_TIMEOUT: Duration = Duration::from_secs(15);

/// Drops what the options say.
pub async fn run(settings: &Settings, opts: &TeardownOptions) -> Result<(), RelayError> {
    let (control, host) = source::connect_host(&settings.pg_url).await?;
    let mut slots = Vec::new();
    if opts.slot {
        slots.push(settings.slot.clone());
    }
    if opts.replay_slot {
        slots.push(settings.replay_slot());
    }
    // Connect to NATS before dropping anything, so a rejected credential leaves everything in place.
    let nats = if opts.stream { Some(stream::connect(settings).await?) } else { None };
    check_rights(&control, settings, opts, &slots, nats.as_ref().map(|(_, js)| js)).await?;
    // Refuse before dropping anything.
    if !opts.force && opts.slot {
        refuse_pending(settings, &control, &host).await?;
        for name in &slots {
            if let Some(info) = slot::info(&control, name).await? {
                if info.active {
                    return Err(SourceError::Refused {
                        action: format!("teardown of slot {name}"),
                        reason: format!(
                            "it is active for pid {} (a relay is running); stop the relay first, or pass --force to terminate it",
                            info.active_pid.unwrap_or(0)
                        ),
                    }
                    .into());
                }
            }
        }
    }
    for name in &slots {
        let dropped = drop_slot(&control, name, opts.force).await?;
        println!("slot {name}: {}", if dropped { "dropped" } else { "not found" });
    }
    if opts.slot && super::backfill::drop_leftover(&control, settings).await? {
        println!("backfill staging table of slot {}: dropped (the backfill was not finished)", settings.slot);
    }
    for name in super::history::leftover_copies(&control, &[&settings.slot, &settings.replay_slot()]).await? {
        if slot::drop(&control, &name).await.is_ok() {
            println!("slot {name}: dropped (left behind by peek or replay)");
        }
    }
    if opts.publication {
        let existed = publication::info(&control, &settings.publication, &settings.table).await?.is_some();
        publication::drop(&control, &settings.publication).await?;
        println!("publication {}: {}", settings.publication, if existed { "dropped" } else { "not found" });
    }
    if let Some((_client, js)) = nats {
        let result = match js.delete_stream(&settings.stream).await {
            Ok(_) => "deleted",
            Err(err)
                if matches!(err.kind(), async_nats::jetstream::context::DeleteStreamErrorKind::JetStream(e)
                    if e.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                "not found"
            }
            Err(err) => {
                return Err(PublishError::Stream { stream: settings.stream.clone(), reason: err.to_string() }.into())
            }
        };
        println!("stream {}: {result}", settings.stream);
    }
    Ok(())
}

/// Refuses when this role cannot remove a part it was asked to remove, naming each such part with the statement its
/// owner runs; nothing has been dropped yet.
async fn check_rights(
    control: &Client,
    settings: &Settings,
    opts: &TeardownOptions,
    slots: &[String],
    js: Option<&async_nats::jetstream::Context>,
) -> Result<(), RelayError> {
    let row = control
        .query_one(
            "SELECT current_user::text, rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| SourceError::query("reading the role's attributes", e))?;
    let (user, may_drop_slots): (String, bool) = (row.get(0), row.get(1));
    let mut cannot = Vec::new();
    if !may_drop_slots {
        for name in slots {
            if slot::info(control, name).await?.is_some() {
                cannot.push(format!(
                    "slot {name} (dropping a slot needs the REPLICATION attribute: a superuser runs `SELECT \
                     pg_drop_replication_slot({});`, or `ALTER ROLE {} REPLICATION;`)",
                    quote_literal(name),
                    quote_ident(&user)
                ));
            }
        }
    }
    if opts.publication {
        let owner = control
            .query_opt(
                "SELECT pg_get_userbyid(pubowner)::text, pg_has_role(current_user, pubowner, 'USAGE') \
                 FROM pg_publication WHERE pubname = $1",
                &[&settings.publication],
            )
            .await
            .map_err(|e| SourceError::query("reading the publication's owner", e))?;
        if let Some(row) = owner {
            let (owner, owns): (String, bool) = (row.get(0), row.get(1));
            if !owns {
                cannot.push(format!(
                    "publication {} (owned by {owner}: {owner} or a superuser runs `DROP PUBLICATION {};`)",
                    settings.publication,
                    quote_ident(&settings.publication)
                ));
            }
        }
    }
    if let Some(js) = js {
        match js.get_stream(&settings.stream).await {
            Ok(_) => {}
            Err(err) if stream::is_stream_not_found(&err) => {}
            Err(err) => cannot.push(format!("stream {} (it does not answer: {err})", settings.stream)),
        }
    }
    if cannot.is_empty() {
        return Ok(());
    }
    Err(SourceError::Refused {
        action: "teardown".into(),
        reason: format!("nothing was dropped: role {user} cannot remove {}", cannot.join("; ")),
    }
    .into())
}

/// Refuses (without `--force`) to drop the main slot while it holds events that were never relayed: they would be
/// lost, since nothing else can read them. A lost slot holds nothing that can still be read.
async fn refuse_pending(settings: &Settings, control: &Client, host: &PgHost) -> Result<(), RelayError> {
    let Some(info) = slot::info(control, &settings.slot).await? else {
        return Ok(());
    };
    if info.is_lost() {
        return Ok(());
    }
    let lag = slot::current_wal_lsn(control).await?.0.saturating_sub(info.confirmed_flush_lsn.map_or(0, |l| l.0));
    if lag == 0 {
        return Ok(());
    }
    let copy = SlotCopy::create(control, host, &settings.slot, "teardown").await?;
    let mut events = 0u64;
    let counted = super::peek::pending(settings, control, &copy, super::peek::Stream::IfReachable, |_| {
        events += 1;
        true
    })
    .await;
    copy.remove(control).await;
    counted?;
    if events == 0 {
        return Ok(());
    }
    Err(SourceError::Refused {
        action: format!("teardown of slot {}", settings.slot),
        reason: format!(
            "it holds {events} pending event{} ({lag} bytes of WAL behind it) that were never relayed and would be \
             lost; run `walrelay run` until `walrelay status` shows lag near 0 (`walrelay peek` lists them), or pass \
             --force to drop them",
            if events == 1 { "" } else { "s" }
        ),
    }
    .into())
}

/// Drops a slot; with `force`, terminates whoever holds it until the drop succeeds.
async fn drop_slot(control: &Client, name: &str, force: bool) -> Result<bool, SourceError> {
    let deadline = Instant::now() + FORCE_TIMEOUT;
    loop {
        let Some(info) = slot::info(control, name).await? else {
            return Ok(false);
        };
        if info.active && force {
            if let Some(pid) = info.active_pid {
                tracing::info!(slot = name, pid, "terminating the walsender holding the slot");
                control
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(|e| SourceError::query(format!("terminating pid {pid}"), e))?;
            }
        }
        match slot::drop(control, name).await {
            Ok(dropped) => return Ok(dropped),
            // 55006: object in use (the slot is active): wait until the terminated walsender let go, or a relay
            // that reconnected is terminated again.
            Err(SourceError::Query { code: Some(code), .. })
                if code == "55006" && force && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err),
        }
    }
}
