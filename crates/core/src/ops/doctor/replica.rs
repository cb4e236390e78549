//! `doctor` checks for replicas and failover (design.md §4b): what PostgreSQL documents for logical decoding on a
//! standby (16+: `hot_standby_feedback`, a physical slot to the primary via `primary_slot_name`, `wal_level =
//! logical` on the primary) and for failover slots (17+: the slot's `failover`, the primary's
//! `synchronized_standby_slots`, the standby's `sync_replication_slots`), each with its remedy. See
//! <https://www.postgresql.org/docs/current/logicaldecoding-explanation.html#LOGICALDECODING-REPLICATION-SLOTS> and
//! <https://www.postgresql.org/docs/current/logical-replication-failover.html>.

use tokio_postgres::Client;

use super::Checks;
use crate::{
    config::{quote_literal, Settings},
    source::{self, slot, slot::Server, SourceError},
};

const RELOAD: &str = "SELECT pg_reload_conf();";

/// The standby and failover checks for the server `control` reached.
pub(super) async fn checks(
    control: &Client,
    server: &Server,
    settings: &Settings,
    slot_info: Option<&slot::SlotInfo>,
    checks: &mut Checks,
) -> Result<(), SourceError> {
    let target = Target { control, server, settings, slot_info };
    if server.in_recovery {
        standby_checks(&target, checks).await?;
    } else if settings.primary_url.is_some() {
        checks.ok("primary_url", "--pg-url is a primary, --primary-url is not needed");
    }
    let failover_wanted = settings.failover || slot_info.is_some_and(|s| s.failover == Some(true));
    if failover_wanted && !server.in_recovery {
        failover_checks(&target, checks).await?;
    }
    Ok(())
}

/// What every check here looks at: the server `control` reached, what it is, the settings and the slot's row.
struct Target<'a> {
    control: &'a Client,
    server: &'a Server,
    settings: &'a Settings,
    slot_info: Option<&'a slot::SlotInfo>,
}

impl Target<'_> {
    /// A server setting (`current_setting`).
    async fn setting(&self, name: &str) -> Result<String, SourceError> {
        slot::setting(self.control, name).await
    }

    /// Whether the server runs PostgreSQL `major` or later; if not, fails `check` (the detail and remedy say what
    /// needs it) and the caller skips the checks that assume it.
    fn requires(&self, major: u32, checks: &mut Checks, check: &str, detail: String, remedy: &str) -> bool {
        if self.server.major() >= major {
            return true;
        }
        checks.fail(check, detail, remedy);
        false
    }
}

async fn standby_checks(target: &Target<'_>, checks: &mut Checks) -> Result<(), SourceError> {
    let Target { server, settings, slot_info, .. } = *target;
    if !target.requires(
        16,
        checks,
        "standby",
        format!(
            "--pg-url is a standby running PostgreSQL {}; logical decoding on a standby needs PostgreSQL 16 or later",
            server.major()
        ),
        "point --pg-url at the primary, or upgrade primary and standby to PostgreSQL 16 or later",
    ) {
        return Ok(());
    }
    checks.ok(
        "standby",
        format!("--pg-url is a standby (PostgreSQL {}), current_wal_lsn is its replay position", server.major()),
    );
    if target.setting("hot_standby_feedback").await? == "on" {
        checks.ok("hot_standby_feedback", "on");
    } else {
        checks.fail(
            "hot_standby_feedback",
            "off: the primary may remove catalog rows the standby's logical slot needs, which invalidates it (rows_removed)",
            format!("on the standby: ALTER SYSTEM SET hot_standby_feedback = on; {RELOAD}"),
        );
    }
    let primary_slot = target.setting("primary_slot_name").await?;
    if primary_slot.is_empty() {
        checks.fail(
            "primary_slot_name",
            "not set: without a physical slot on the primary, hot_standby_feedback is lost whenever the standby disconnects and the primary may remove what the logical slot needs",
            format!(
                "on the primary: SELECT pg_create_physical_replication_slot('standby1'); on the standby: ALTER SYSTEM SET primary_slot_name = 'standby1'; {RELOAD}"
            ),
        );
    } else {
        checks.ok("primary_slot_name", primary_slot);
    }
    match settings.primary_url.as_ref() {
        Some(url) => match source::connect(url).await {
            Ok(primary) => {
                // Slot creation on the standby calls pg_log_standby_snapshot() there (superuser-only by default).
                let row = primary
                    .query_one(
                        "SELECT current_user::text, has_function_privilege('pg_log_standby_snapshot()', 'EXECUTE')",
                        &[],
                    )
                    .await
                    .map_err(|e| SourceError::query("checking EXECUTE on pg_log_standby_snapshot() on the primary", e))?;
                let (role, may): (String, bool) = (row.get(0), row.get(1));
                if may {
                    checks.ok("primary_snapshot", format!("{role} may call pg_log_standby_snapshot() on the primary"));
                } else {
                    checks.warn(
                        "primary_snapshot",
                        format!(
                            "{role} may not call pg_log_standby_snapshot() on the primary (--primary-url): creating \
                             a slot on the standby then waits for the primary's next running-xacts record"
                        ),
                        format!("on the primary: {}", slot::snapshot_grant(&role)),
                    );
                }
                let level = slot::setting(&primary, "wal_level").await?;
                if level == "logical" {
                    checks.ok("primary_wal_level", "logical on the primary (--primary-url)");
                } else {
                    checks.fail(
                        "primary_wal_level",
                        format!("{level} on the primary; decoding on a standby reads the primary's WAL, which must be logical"),
                        "on the primary: ALTER SYSTEM SET wal_level = logical; then restart the primary",
                    );
                }
            }
            Err(err) => checks.fail("primary_url", err.to_string(), "check --primary-url / WALRELAY_PRIMARY_URL"),
        },
        None => checks.warn(
            "primary_wal_level",
            "not checked: --primary-url is not set; the primary's wal_level must be logical, and without --primary-url \
             a missing publication must be created on the primary by hand and slot creation waits for the primary's \
             next running-xacts record",
            "pass --primary-url (or WALRELAY_PRIMARY_URL), or check `SHOW wal_level;` on the primary",
        ),
    }
    if settings.failover {
        checks.fail(
            "failover",
            "--failover with --pg-url a standby: failover slots are created on the primary",
            "point --pg-url at the primary (multi-host: postgres://h1,h2/db?target_session_attrs=read-write)",
        );
    }
    if slot_info.is_some_and(|s| s.synced == Some(true)) {
        checks.warn(
            "slot_synced",
            format!(
                "{} is synchronized from the primary: it cannot be read on the standby until it is promoted",
                settings.slot
            ),
            "read the primary (the slot's origin), or promote this standby",
        );
    }
    if server.major() >= 17 {
        let sync = target.setting("sync_replication_slots").await?;
        if sync == "on" {
            checks.ok("sync_replication_slots", "on: the primary's failover slots are synchronized here");
        }
    }
    Ok(())
}

async fn failover_checks(target: &Target<'_>, checks: &mut Checks) -> Result<(), SourceError> {
    let Target { server, settings, slot_info, .. } = *target;
    if !target.requires(
        17,
        checks,
        "failover",
        format!("--failover needs PostgreSQL 17 or later (failover slots), the server runs {}", server.major()),
        "upgrade to PostgreSQL 17 or later, or run without --failover",
    ) {
        return Ok(());
    }
    match slot_info.map(|s| s.failover) {
        Some(Some(true)) => checks.ok("slot_failover", format!("{} is a failover slot", settings.slot)),
        Some(_) => checks.fail(
            "slot_failover",
            format!("{} is not a failover slot; standbys do not synchronize it", settings.slot),
            "walrelay setup --failover (alters it with ALTER_REPLICATION_SLOT ... (FAILOVER true))",
        ),
        None => {}
    }
    let gate = target.setting("synchronized_standby_slots").await?;
    if gate.is_empty() {
        checks.warn(
            "synchronized_standby_slots",
            "empty: the relay may receive (and publish) commits a standby has not yet received, which a failover to it loses",
            format!(
                "on the primary: ALTER SYSTEM SET synchronized_standby_slots = {}; {RELOAD} (the standbys' physical slots)",
                quote_literal("standby1")
            ),
        );
    } else {
        checks.ok("synchronized_standby_slots", gate);
    }
    checks.ok(
        "sync_replication_slots",
        "set sync_replication_slots = on (and hot_standby_feedback = on, primary_slot_name, a dbname in primary_conninfo) on each standby that may take over; `walrelay doctor --pg-url <standby>` checks it there",
    );
    Ok(())
}
