//! `run --prune-after`: deletes old outbox rows (design.md §4c).
//!
//! In: the settings. Out: outbox rows whose `--created-at-column` is older than `--prune-after` deleted, in batches
//! of [`BATCH`] rows (each its own short transaction, so no lock is held long), on the primary: `--primary-url`
//! when `--pg-url` is a standby. Safe for delivery: events are read from WAL, not from the table, so a row deleted
//! before the relay read it is still relayed. A log line and the `walrelay_rows_pruned_total` counter per pass.

use std::time::Duration;

use tokio::sync::watch;

use crate::{config::Settings, source};

/// Rows deleted per statement.
const BATCH: i64 = 1000;

/// Starts the pruning task when `--prune-after` is set.
pub fn spawn(settings: &Settings, shutdown: watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>> {
    let after = settings.prune_after?;
    let settings = settings.clone();
    Some(crate::spawn_named("prune", prune(settings, after, shutdown)))
}

async fn prune(settings: Settings, after: Duration, mut shutdown: watch::Receiver<bool>) {
    let pruned = metrics::counter!("walrelay_rows_pruned_total");
    pruned.absolute(0);
    let every = after.clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        match pass(&settings, after).await {
            Ok(rows) => {
                pruned.increment(rows);
                tracing::info!(rows, older_than = ?after, "pruned outbox rows");
            }
            Err(err) => {
                tracing::warn!(error = %source::error_chain(&err), "cannot prune outbox rows, retrying at the next pass")
            }
        }
    }
}

/// One pass: batches until a batch deletes fewer than [`BATCH`] rows; returns the rows deleted.
async fn pass(settings: &Settings, after: Duration) -> Result<u64, source::SourceError> {
    let control = source::connect(&settings.pg_url).await?;
    let server = source::slot::server(&control).await?;
    let primary = match (server.in_recovery, settings.primary_url.as_ref()) {
        (true, Some(url)) => source::connect(url).await?,
        (true, None) => return Ok(0),
        (false, _) => control,
    };
    let seconds = after.as_secs_f64();
    let mut total = 0;
    for table in settings.table.iter() {
        let sql = format!(
            "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE {c} < now() - make_interval(secs => $1) \
             LIMIT {BATCH}))",
            t = table.quoted(),
            c = crate::config::quote_ident(&settings.created_at_column),
        );
        loop {
            let n = primary
                .execute(&sql, &[&seconds])
                .await
                .map_err(|e| source::SourceError::query(format!("pruning {table}"), e))?;
            total += n;
            if n < BATCH as u64 {
                break;
            }
        }
    }
    Ok(total)
}
