//! Replication slots: inspect, create and drop the pgoutput slot the relay reads from.
//!
//! In: a control-plane SQL connection. Out: [`SlotInfo`] as `pg_replication_slots` shows it, and the server's
//! current WAL position (the replay position on a standby).
//! See <https://www.postgresql.org/docs/current/view-pg-replication-slots.html>.

use pgoutput::Lsn;
use tokio_postgres::Client;

use crate::{
    config::quote_literal,
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
}

impl SlotInfo {
    /// Whether the slot can no longer be used.
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }

    /// The one check of a slot the relay reads from (run, setup, peek, replay): a pgoutput logical slot that is
    /// not lost.
    pub fn check(&self) -> Result<(), SourceError> {
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
                    safe_wal_size, temporary \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| SourceError::query(format!("reading slot {slot}"), e))?;
    Ok(row.map(|row| SlotInfo {
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
    }))
}

/// Creates a logical slot with the pgoutput plugin; returns its consistent point.
pub async fn create(client: &Client, slot: &str) -> Result<Lsn, SourceError> {
    let row = client
        .query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
        .await
        .map_err(|e| SourceError::decoding(format!("creating slot {slot}"), e))?;
    Ok(lsn_col(&row, "lsn").unwrap_or(Lsn::ZERO))
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
