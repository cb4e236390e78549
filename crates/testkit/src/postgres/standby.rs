//! Streaming standbys: a copy of a running server made with `pg_basebackup -R`, replicating from it through a
//! physical slot with `hot_standby_feedback = on`, so logical slots on the standby (PostgreSQL 16+) keep the catalog
//! rows they need; and promotion. See <https://www.postgresql.org/docs/current/warm-standby.html> and
//! <https://www.postgresql.org/docs/current/logicaldecoding-explanation.html#LOGICALDECODING-REPLICATION-SLOTS>.
//!
//! The standby inherits the primary's `postgresql.conf` (so `wal_level = logical` and the kit's settings) and its
//! `postgresql.auto.conf`; it gets its own port and socket directory. Stop, crash, restart and SIGKILL work on a
//! standby as on any [`Postgres`].

use std::time::Duration;

use super::{quote, Postgres, SUPERUSER, TOOL_TIMEOUT};
use crate::{command, net, wait_until, KitError};

/// How long a new standby may take to connect to its primary and stream.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(60);

impl Postgres {
    /// Starts a streaming standby of this server (which must run): creates the physical slot `physical_slot` here
    /// (if missing), takes a base backup with `pg_basebackup -R -S physical_slot`, and starts it with
    /// `hot_standby_feedback = on` plus `settings` (e.g. `("sync_replication_slots", "on")`). Returns once the
    /// standby streams from this server. `primary_conninfo` names database `postgres`, as slot synchronization needs.
    pub fn start_standby(&self, physical_slot: &str, settings: &[(&str, &str)]) -> Result<Postgres, KitError> {
        let version = self.version()?;
        self.psql(&format!(
            "SELECT pg_create_physical_replication_slot({0}) WHERE NOT EXISTS \
             (SELECT 1 FROM pg_replication_slots WHERE slot_name = {0})",
            quote(physical_slot)
        ))?;
        let mut standby = Postgres::new(self.bin_dir.clone())?;
        let conninfo = format!("host={} port={} user={SUPERUSER} dbname=postgres", net::HOST, self.port);
        let mut cmd = standby.tool("pg_basebackup");
        cmd.arg("-D").arg(&standby.data_dir).args(["-d", &conninfo, "-R", "-S", physical_slot]);
        cmd.args(["-X", "stream", "-c", "fast", "--no-sync"]);
        command::run_ok(&mut cmd, TOOL_TIMEOUT)?;
        let socket_dir = standby.dir.path().display().to_string();
        let mut all: Vec<(String, String)> = vec![
            ("port".into(), standby.port.to_string()),
            ("unix_socket_directories".into(), socket_dir),
            ("hot_standby".into(), "on".into()),
            ("hot_standby_feedback".into(), "on".into()),
        ];
        if version >= 17 {
            // A primary's list of standbys that must confirm WAL first would make this server wait on itself once
            // promoted; a test sets it on the standby explicitly if it wants it.
            all.push(("synchronized_standby_slots".into(), String::new()));
        }
        all.extend(settings.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())));
        standby.append_settings(&all)?;
        standby.spawn_first()?;
        let slot = quote(physical_slot);
        wait_until(&format!("the standby on port {} to stream", standby.port), STREAMING_TIMEOUT, || {
            let sql = format!("SELECT active FROM pg_replication_slots WHERE slot_name = {slot}");
            (self.psql(&sql).ok()?.trim() == "t").then_some(())
        })?;
        tracing::debug!(port = standby.port, primary = self.port, "standby streaming");
        Ok(standby)
    }

    /// Whether the server is in recovery (a standby that was not promoted).
    pub fn in_recovery(&self) -> Result<bool, KitError> {
        Ok(self.psql("SELECT pg_is_in_recovery()")?.trim() == "t")
    }

    /// Promotes a standby (`pg_ctl promote -w`) and returns once it accepts writes.
    pub fn promote(&self) -> Result<(), KitError> {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("promote").arg("-D").arg(&self.data_dir).args(["-w", "-t", "60"]);
        command::run_ok(&mut cmd, TOOL_TIMEOUT)?;
        wait_until(&format!("postgres on port {} to leave recovery", self.port), STREAMING_TIMEOUT, || {
            (!self.in_recovery().ok()?).then_some(())
        })
    }

    /// Waits until this standby has replayed everything `primary` has written so far.
    pub fn wait_replayed(&self, primary: &Postgres, timeout: Duration) -> Result<(), KitError> {
        let target = primary.psql("SELECT pg_current_wal_lsn()")?;
        let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{}'::pg_lsn", target.trim());
        wait_until(&format!("the standby on port {} to replay {}", self.port, target.trim()), timeout, || {
            (self.psql(&sql).ok()?.trim() == "t").then_some(())
        })
    }
}
