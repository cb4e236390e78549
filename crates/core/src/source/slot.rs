//! Replication slots: inspect, create and drop the pgoutput slot the relay reads from.
//!
//! In: a control-plane SQL connection. Out: [`SlotInfo`] as `pg_replication_slots` shows it, the [`Server`] it
//! lives on (version, standby or primary, timeline), and the server's current WAL position (the replay position on
//! a standby). See <https://www.postgresql.org/docs/current/view-pg-replication-slots.html>.
//!
//! On a standby (PostgreSQL 16+) a logical slot can only be created once the standby has replayed a running-xacts
//! record written by the primary after creation began; the primary writes one every 15 s at most, and only when
//! something happened since the last one, so on an idle primary creation waits indefinitely. [`create`] therefore
//! calls `pg_log_standby_snapshot()` on the primary while it waits when it has a connection to it (`--primary-url`),
//! and otherwise says every 10 s what it waits for. Failover slots (PostgreSQL 17+) are created with
//! `failover = true` on the primary, or altered to it with `ALTER_REPLICATION_SLOT` on a replication connection;
//! see <https://www.postgresql.org/docs/current/logicaldecoding-explanation.html#LOGICALDECODING-REPLICATION-SLOTS-SYNCHRONIZATION>.

use std::time::Duration;

use pgoutput::Lsn;
use tokio_postgres::Client;

use crate::{
    config::{quote_literal, Settings},
    source::{lsn_col, SourceError},
};

/// One row of `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Slot name.
    pub name: String,
    /// Output plugin (`pgoutput`), `None` for a physical slot.
    pub plugin: Option<String>,
    /// `logical` or `physical`.
    pub slot_type: String,
    /// Database of a logical slot.
    pub database: Option<String>,
    /// Whether a walsender holds the slot.
    pub active: bool,
    /// That walsender's pid.
    pub active_pid: Option<i32>,
    /// Position the consumer confirmed.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// Oldest WAL the slot retains.
    pub restart_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Bytes that can still be written before the slot is in danger of being lost (`None`: unlimited).
    pub safe_wal_size: Option<i64>,
    /// Whether the slot is temporary.
    pub temporary: bool,
    // Replicas and failover (design.md §4b); `None` where the server's version lacks the column.
    /// Whether the slot was invalidated by a recovery conflict (PostgreSQL 16+).
    pub conflicting: Option<bool>,
    /// Why the slot was invalidated, e.g. `wal_removed` or `rows_removed` (PostgreSQL 17+).
    pub invalidation_reason: Option<String>,
    /// Whether the slot is synchronized to standbys that sync slots (PostgreSQL 17+).
    pub failover: Option<bool>,
    /// Whether the slot is a standby's copy synchronized from the primary (PostgreSQL 17+).
    pub synced: Option<bool>,
}

impl SlotInfo {
    /// Whether the slot can no longer be used.
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }

    /// The one check of a slot the relay reads from (run, setup, peek, replay): a pgoutput logical slot that is
    /// not lost.
    pub fn check(&self) -> Result<(), SourceError> {
        if let Some(reason) = self.invalidation_reason.as_deref().filter(|r| *r != "wal_removed") {
            return Err(SourceError::SlotInvalidated { slot: self.name.clone(), reason: reason.to_owned() });
        }
        if self.conflicting == Some(true) {
            return Err(SourceError::SlotInvalidated { slot: self.name.clone(), reason: "rows_removed".into() });
        }
        if self.is_lost() {
            return Err(SourceError::SlotLost { slot: self.name.clone(), wal_status: "lost".into() });
        }
        if self.plugin.as_deref() != Some("pgoutput") {
            return Err(SourceError::WrongPlugin {
                slot: self.name.clone(),
                plugin: self.plugin.clone().unwrap_or_else(|| "none (physical)".into()),
            });
        }
        Ok(())
    }
}

/// Reads a slot, `None` when it does not exist.
pub async fn info(client: &Client, slot: &str) -> Result<Option<SlotInfo>, SourceError> {
    let row = client
        .query_opt(
            "SELECT slot_name::text, plugin::text, slot_type, database::text, active, active_pid, \
                    confirmed_flush_lsn::text AS confirmed, restart_lsn::text AS restart, wal_status, \
                    safe_wal_size, temporary, to_jsonb(s)::text AS extra \
             FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| SourceError::query(format!("reading slot {slot}"), e))?;
    Ok(row.map(|row| {
        // Columns added after PostgreSQL 15, read by name so one query serves every version.
        let extra: serde_json::Value =
            row.get::<_, Option<String>>("extra").and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default();
        SlotInfo {
            name: row.get(0),
            plugin: row.get(1),
            slot_type: row.get(2),
            database: row.get(3),
            active: row.get(4),
            active_pid: row.get(5),
            confirmed_flush_lsn: lsn_col(&row, "confirmed"),
            restart_lsn: lsn_col(&row, "restart"),
            wal_status: row.get(8),
            safe_wal_size: row.get(9),
            temporary: row.get(10),
            conflicting: extra.get("conflicting").and_then(serde_json::Value::as_bool),
            invalidation_reason: extra.get("invalidation_reason").and_then(|v| v.as_str()).map(str::to_owned),
            failover: extra.get("failover").and_then(serde_json::Value::as_bool),
            synced: extra.get("synced").and_then(serde_json::Value::as_bool),
        }
    }))
}

/// The server a connection reached: what decides how slots and publications are handled there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// `server_version_num`, e.g. 180001.
    pub version_num: u32,
    /// Whether it is a standby (`pg_is_in_recovery()`).
    pub in_recovery: bool,
    /// The timeline it writes (primary) or receives (standby), when readable.
    pub timeline: Option<u32>,
    /// `pg_control_system().system_identifier`, shared by a primary and its physical standbys.
    pub system_id: Option<String>,
}

impl Server {
    /// The major version, e.g. 18.
    pub fn major(&self) -> u32 {
        self.version_num / 10000
    }
}

/// Reads what [`Server`] holds.
pub async fn server(client: &Client) -> Result<Server, SourceError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int, pg_is_in_recovery()", &[])
        .await
        .map_err(|e| SourceError::query("reading the server version", e))?;
    let version_num = u32::try_from(row.get::<_, i32>(0)).unwrap_or(0);
    let in_recovery: bool = row.get(1);
    // The timeline: of the WAL file being written on a primary, of the WAL being received on a standby (or of its
    // last checkpoint). pg_control_* may be revoked from the role; the timeline is then unknown, not an error.
    let timeline_sql = if in_recovery {
        "SELECT COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), \
                         (SELECT timeline_id FROM pg_control_checkpoint()))::bigint"
    } else {
        "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint"
    };
    let timeline = match client.query_one(timeline_sql, &[]).await {
        Ok(row) => row.get::<_, Option<i64>>(0).and_then(|t| u32::try_from(t).ok()),
        Err(err) => {
            tracing::debug!(error = %err, "cannot read the timeline");
            None
        }
    };
    let system_id = match client.query_one("SELECT system_identifier::text FROM pg_control_system()", &[]).await {
        Ok(row) => row.get(0),
        Err(_) => None,
    };
    Ok(Server { version_num, in_recovery, timeline, system_id })
}

/// How a slot is created.
#[derive(Debug, Clone, Copy)]
pub struct CreateOptions<'a> {
    /// `failover = true` (PostgreSQL 17+, on a primary).
    pub failover: bool,
    /// The primary, when `control` is a standby and `--primary-url` is set.
    pub primary: Option<&'a Client>,
}

/// How often creation on a standby says what it waits for.
const STANDBY_WAIT_LOG: Duration = Duration::from_secs(10);
/// How often `pg_log_standby_snapshot()` is called on the primary while a standby creates a slot.
const SNAPSHOT_NUDGE: Duration = Duration::from_millis(500);

/// The statement that lets `role` call `pg_log_standby_snapshot()` on the primary (superuser-only by default, so a
/// least-privilege `--primary-url` role needs it): named by `doctor` and by slot creation on a standby.
pub fn snapshot_grant(role: &str) -> String {
    format!("GRANT EXECUTE ON FUNCTION pg_log_standby_snapshot() TO {};", crate::config::quote_ident(role))
}

/// Creates a logical pgoutput slot on `server` (a primary, or a standby on 16+) and returns its consistent point.
/// On a standby it waits for the primary's next running-xacts record, hurrying it along through `opts.primary`
/// or logging every 10 s what it waits for (module documentation).
pub async fn create(client: &Client, server: &Server, slot: &str, opts: CreateOptions<'_>) -> Result<Lsn, SourceError> {
    check_versions(server, opts.failover)?;
    let creation = async {
        if server.major() >= 17 {
            let sql = "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', false, false, $2)";
            client.query_one(sql, &[&slot, &opts.failover]).await
        } else {
            client.query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot]).await
        }
    };
    let row = if server.in_recovery {
        tokio::pin!(creation);
        let started = std::time::Instant::now();
        let mut log = tokio::time::interval(STANDBY_WAIT_LOG);
        log.tick().await;
        let mut nudge = tokio::time::interval(SNAPSHOT_NUDGE);
        // Cleared at the first failed call (said once, with the remedy): then the wait is as without --primary-url.
        let mut nudging = opts.primary.is_some();
        let mut refused: Option<String> = None;
        loop {
            tokio::select! {
                biased;
                row = &mut creation => break row,
                _ = nudge.tick(), if nudging => {
                    if let Some(primary) = opts.primary {
                        if let Err(err) = primary.execute("SELECT pg_log_standby_snapshot()", &[]).await {
                            nudging = false;
                            let err = SourceError::query("calling pg_log_standby_snapshot() on the primary", err);
                            let remedy = match &err {
                                SourceError::Privilege { .. } => {
                                    let role = primary
                                        .query_one("SELECT current_user::text", &[])
                                        .await
                                        .map_or_else(|_| "<role>".to_owned(), |row| row.get(0));
                                    format!("the --primary-url role may not call it; on the primary: {}", snapshot_grant(&role))
                                }
                                _ => "check --primary-url".to_owned(),
                            };
                            tracing::warn!(
                                error = %super::error_chain(&err),
                                remedy = %remedy,
                                "cannot call pg_log_standby_snapshot() on the primary (--primary-url): waiting for \
                                 the primary's next running-xacts record instead"
                            );
                            refused = Some(remedy);
                        }
                    }
                }
                _ = log.tick() => match &refused {
                    Some(remedy) => tracing::info!(
                        slot,
                        waited_secs = started.elapsed().as_secs(),
                        remedy = %remedy,
                        "creating the slot on a standby: waiting for the primary's next running-xacts record (it \
                         writes one within 15 s once it is busy); `SELECT pg_log_standby_snapshot();` on the \
                         primary ends the wait"
                    ),
                    None if opts.primary.is_none() => tracing::info!(
                        slot,
                        waited_secs = started.elapsed().as_secs(),
                        "creating the slot on a standby: waiting for the primary's next running-xacts record (it \
                         writes one within 15 s once it is busy); `SELECT pg_log_standby_snapshot();` on the primary \
                         ends the wait, and --primary-url lets walrelay do that"
                    ),
                    None => tracing::info!(
                        slot,
                        waited_secs = started.elapsed().as_secs(),
                        "creating the slot on a standby: waiting for the primary's next running-xacts record \
                         (pg_log_standby_snapshot() is called on the primary every 500 ms)"
                    ),
                },
            }
        }
    } else {
        creation.await
    };
    let row = row.map_err(|e| SourceError::decoding(format!("creating slot {slot}"), e))?;
    Ok(lsn_col(&row, "lsn").unwrap_or(Lsn::ZERO))
}

/// Logical decoding on a standby needs 16+; failover slots need 17+ and are made on the primary.
pub fn check_versions(server: &Server, failover: bool) -> Result<(), SourceError> {
    if server.in_recovery && server.major() < 16 {
        return Err(SourceError::NeedsVersion {
            what: "logical decoding on a standby".into(),
            needed: 16,
            actual: server.major(),
            remedy: "point --pg-url at the primary, or upgrade the standby and primary to PostgreSQL 16 or later"
                .into(),
        });
    }
    if failover && server.major() < 17 {
        return Err(SourceError::NeedsVersion {
            what: "--failover (failover slots)".into(),
            needed: 17,
            actual: server.major(),
            remedy: "upgrade to PostgreSQL 17 or later, or run without --failover".into(),
        });
    }
    if failover && server.in_recovery {
        return Err(SourceError::FailoverOnStandby);
    }
    Ok(())
}

/// Creates a logical slot as a copy of another (same position), e.g. a temporary one to peek without consuming.
pub async fn copy(client: &Client, source: &str, target: &str, temporary: bool) -> Result<(), SourceError> {
    client
        .execute("SELECT pg_copy_logical_replication_slot($1, $2, $3)", &[&source, &target, &temporary])
        .await
        .map_err(|e| SourceError::decoding(format!("copying slot {source} to {target}"), e))?;
    Ok(())
}

/// Drops a slot; a missing slot is not an error.
pub async fn drop(client: &Client, slot: &str) -> Result<bool, SourceError> {
    let sql = format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {}",
        quote_literal(slot)
    );
    let n = client.execute(&sql, &[]).await.map_err(|e| SourceError::query(format!("dropping slot {slot}"), e))?;
    Ok(n > 0)
}

/// Moves a slot's confirmed position forward (never backward) without decoding.
pub async fn advance(client: &Client, slot: &str, to: Lsn) -> Result<(), SourceError> {
    client
        .execute("SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)", &[&slot, &to.to_string()])
        .await
        .map_err(|e| SourceError::query(format!("advancing slot {slot} to {to}"), e))?;
    Ok(())
}

/// The server's current WAL position: insert position on a primary, replay position on a standby.
pub async fn current_wal_lsn(client: &Client) -> Result<Lsn, SourceError> {
    let row = client
        .query_one(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text AS lsn",
            &[],
        )
        .await
        .map_err(|e| SourceError::query("reading the current WAL position", e))?;
    Ok(lsn_col(&row, "lsn").unwrap_or(Lsn::ZERO))
}

/// A server setting as text (`SHOW`).
pub async fn setting(client: &Client, name: &str) -> Result<String, SourceError> {
    let row = client
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .map_err(|e| SourceError::query(format!("reading setting {name}"), e))?;
    Ok(row.get(0))
}

/// Checks `wal_level = logical`.
pub async fn check_wal_level(client: &Client) -> Result<(), SourceError> {
    let level = setting(client, "wal_level").await?;
    if level != "logical" {
        return Err(SourceError::WalLevel { actual: level });
    }
    Ok(())
}

/// `wal_sender_timeout` in milliseconds (0 = disabled).
pub async fn wal_sender_timeout_ms(client: &Client) -> Result<u64, SourceError> {
    let row = client
        .query_one(
            "SELECT setting::bigint * CASE unit WHEN 's' THEN 1000 WHEN 'min' THEN 60000 ELSE 1 END \
             FROM pg_settings WHERE name = 'wal_sender_timeout'",
            &[],
        )
        .await
        .map_err(|e| SourceError::query("reading wal_sender_timeout", e))?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// With `--failover`, makes an existing slot a failover slot if it is not one yet (PostgreSQL 17+, on a primary).
pub async fn ensure_failover(
    settings: &Settings,
    host: &super::PgHost,
    server: &Server,
    info: &SlotInfo,
) -> Result<(), SourceError> {
    if !settings.failover || info.failover == Some(true) {
        return Ok(());
    }
    check_versions(server, true)?;
    super::replication::alter_failover(&settings.pg_url, host, &info.name, &settings.publication).await?;
    tracing::info!(slot = %info.name, "slot altered to failover = true");
    Ok(())
}
