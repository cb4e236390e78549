//! `walrelay setup --backfill`: adopt an outbox that already holds waiting rows (design.md §4f).
//!
//! In: the settings (`--table`, `--backfill-where`, `--backfill-order`, the mapping options). Out: the slot, created
//! at one exact moment, and in the stream every matching row that was visible at that moment, once, in order,
//! before anything the slot streams; `run` then relays what was committed after it.
//!
//! **The moment.** A logical slot created with an exported snapshot
//! (`CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')`, see
//! <https://www.postgresql.org/docs/current/protocol-replication.html#PROTOCOL-REPLICATION-CREATE-REPLICATION-SLOT>)
//! splits the rows exactly: a transaction whose commit record starts before the slot's consistent point is visible
//! in the snapshot and never streamed; every later one is streamed and invisible in the snapshot. The snapshot
//! lives only as long as the replication session that exported it, so an interrupted backfill cannot read it again.
//!
//! **Exact across interruption: stage, then publish.** While the snapshot lives, one transaction that imported it
//! (`SET TRANSACTION SNAPSHOT`) copies the matching rows, ranked, into a staging table
//! `<schema of the first table>.walrelay_backfill_<slot>` whose comment records the consistent point, the snapshot's
//! time and the row count; it commits, and only then is the slot made permanent, as a copy of the temporary slot
//! that exported the snapshot (`pg_copy_logical_replication_slot`: same consistent point). So the permanent slot
//! never exists without its staged rows, and:
//! - killed before the copy: no slot; the temporary slot died with its session; a staging table, if committed, is
//!   stale and dropped by the next run, which starts over (nothing was published yet);
//! - killed while publishing: the slot and the staging table exist; the rerun reads the stream's tail (the last
//!   backfilled message's `Outbox-Index` is its rank) and publishes the ranks after it, through the fenced
//!   publisher, so the stream's duplicate window plays no part;
//! - killed after the last ack: the rerun finds nothing left to publish;
//! - the staging table is dropped once every row is acked: a slot without it is a completed setup, and
//!   `--backfill` then refuses (a backfill is only exact at the slot's creation). `run` refuses to start while a
//!   staging table of its slot exists, so it never publishes streamed events before the backfill ends.
//!
//! Rejected alternatives: recording the snapshot's xmin/xip and re-selecting rows by `xmin` on a rerun loses rows
//! deleted or changed since (a poller still finishing, pruning) and misjudges frozen or wrapped-around xids; a
//! marker message in the stream would reach consumers. The price of staging is a copy of the waiting rows for the
//! duration of the backfill (it is WAL-logged, so it also survives a Postgres crash).
//!
//! **Rows become events through the one mapper.** Each staged row is read back in text format (the types' output
//! functions, as pgoutput sends them) as the tuple of a relation with the table's columns, and mapped by
//! [`OutboxMapper`] with a [`TxnStamp::backfill`] stamp: `Outbox-Commit-Lsn` is the consistent point,
//! `Outbox-Index` the 0-based rank, `Outbox-Commit-Time` the snapshot's time, plus `Outbox-Backfill: true`; subject,
//! headers, `--on-invalid` and the size check are `run`'s. Several tables: one snapshot, ranked table by table in
//! `--table` order, each by `--backfill-order` (default the id column); ranks continue across tables.
//!
//! **Standby: refused.** The staging table is a write, which a standby cannot take; point `--pg-url` at the primary
//! for the backfill (the slot is then on the primary).

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use bytes::Bytes;
use pgoutput::{Lsn, Relation, RelationColumn, Tuple, TupleValue};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::{
    config::{quote_ident, quote_literal, Settings},
    mapping::outbox::{MapError, OutboxMapper, TxnStamp},
    relay::RelayError,
    sink::{publisher::Publisher, stream},
    source::{replication, slot, standby, SourceError},
};

/// Rows read from the staging table per query (keyset pages: memory stays bounded whatever the table holds).
const PAGE: usize = 1000;
/// How often progress is printed on stderr when it is not a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The staging table's own columns, before the outbox columns.
const RANK: &str = "walrelay_rank";
const TABLE: &str = "walrelay_table";

/// What the staging table's comment records: everything a rerun needs besides the rows.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Plan {
    /// The slot's consistent point, `X/Y`.
    consistent_point: String,
    /// The snapshot's time, µs since the Postgres epoch.
    snapshot_time: i64,
    /// Rows staged.
    rows: u64,
    /// The tables, `schema.table`, in `--table` order (`walrelay_table` indexes this list).
    tables: Vec<(String, String)>,
}

/// Runs `setup --backfill`.
pub async fn run(settings: &Settings) -> Result<(), RelayError> {
    let standby::Checked { control, host, server, primary } = standby::check_server(settings).await?;
    let refused = |reason: String| SourceError::Refused { action: "setup --backfill".into(), reason };
    if server.in_recovery {
        return Err(refused(
            "--pg-url is a standby: the backfill stages the waiting rows in a table beside the outbox, which a \
             standby cannot write; run setup --backfill against the primary"
                .into(),
        )
        .into());
    }
    if settings.table.is_empty() {
        return Err(refused("--table is empty: there are no rows to backfill".into()).into());
    }
    let created = standby::ensure_publication(settings, &control, &server, primary.as_ref(), true).await?;
    println!("publication {}: {}", settings.publication, if created { "created" } else { "exists" });
    let staging = staging_name(settings);
    let plan = match (slot::info(&control, &settings.slot).await?, read_plan(&control, &staging).await?) {
        (Some(info), Some(plan)) => {
            info.check()?;
            println!(
                "slot {}: exists (consistent point {}), its backfill was interrupted: resuming",
                settings.slot, plan.consistent_point
            );
            plan
        }
        (Some(_), None) => {
            return Err(refused(format!(
                "slot {} already exists from a completed setup, and a backfill is only exact at the slot's \
                 creation; to start over: `walrelay teardown` (with --drop-stream to empty the stream), then \
                 `walrelay setup --backfill`",
                settings.slot
            ))
            .into())
        }
        (None, stale) => {
            if stale.is_some() {
                tracing::info!(table = %staging, "dropping the staging table of a backfill interrupted before its slot existed");
                drop_staging(&control, &staging).await?;
            }
            let plan = stage(settings, &control, &host, server.major(), &staging).await?;
            println!(
                "slot {}: created at {} with an exported snapshot; {} rows staged for the backfill",
                settings.slot, plan.consistent_point, plan.rows
            );
            plan
        }
    };
    if let Some(info) = slot::info(&control, &settings.slot).await? {
        slot::ensure_failover(settings, &host, &server, &info).await?;
    }
    let (client, js) = super::setup::ensure_stream(settings).await?;
    let published = publish(settings, &control, &client, &js, &staging, &plan).await?;
    drop_staging(&control, &staging).await?;
    println!(
        "backfill: {} rows in stream {} at commit LSN {} ({published} published now); `walrelay run` relays what was \
         committed since",
        plan.rows, settings.stream, plan.consistent_point
    );
    Ok(())
}

/// Refuses `run` while a backfill of its slot is unfinished: streamed events would land before backfilled rows.
pub async fn check_finished(control: &Client, settings: &Settings) -> Result<(), SourceError> {
    if settings.table.is_empty() {
        return Ok(());
    }
    let staging = staging_name(settings);
    match read_plan(control, &staging).await? {
        None => Ok(()),
        Some(plan) => Err(SourceError::Refused {
            action: "run".into(),
            reason: format!(
                "the backfill of slot {} is not finished ({} rows staged in {staging}): run `walrelay setup --backfill` \
                 again to complete it, then start run",
                settings.slot, plan.rows
            ),
        }),
    }
}

/// Drops the staging table of an unfinished backfill (teardown); whether there was one.
pub async fn drop_leftover(control: &Client, settings: &Settings) -> Result<bool, SourceError> {
    if settings.table.is_empty() {
        return Ok(false);
    }
    let staging = staging_name(settings);
    let exists = read_plan(control, &staging).await?.is_some();
    if exists {
        drop_staging(control, &staging).await?;
    }
    Ok(exists)
}

/// `"<schema>"."walrelay_backfill_<slot>"`, in the first table's schema (cut to Postgres' 63-byte names).
fn staging_name(settings: &Settings) -> String {
    let schema = settings.table.iter().next().map(|t| t.schema.as_str()).unwrap_or("public");
    let mut name = format!("walrelay_backfill_{}", settings.slot);
    while name.len() > 63 {
        name.pop();
    }
    format!("{}.{}", quote_ident(schema), quote_ident(&name))
}

/// The plan in the staging table's comment, `None` when there is no staging table.
async fn read_plan(control: &Client, staging: &str) -> Result<Option<Plan>, SourceError> {
    let row = control
        .query_one(
            "SELECT c.oid IS NOT NULL, obj_description(c.oid, 'pg_class') FROM (SELECT to_regclass($1) AS oid) c",
            &[&staging],
        )
        .await
        .map_err(|e| SourceError::query(format!("looking for the backfill staging table {staging}"), e))?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    let comment: Option<String> = row.get(1);
    let plan =
        comment.as_deref().and_then(|c| serde_json::from_str::<Plan>(c).ok()).ok_or_else(|| SourceError::Refused {
            action: "setup --backfill".into(),
            reason: format!("table {staging} exists but is not a walrelay backfill staging table; drop or rename it"),
        })?;
    Ok(Some(plan))
}

async fn drop_staging(control: &Client, staging: &str) -> Result<(), SourceError> {
    control
        .batch_execute(&format!("DROP TABLE IF EXISTS {staging}"))
        .await
        .map_err(|e| SourceError::query(format!("dropping the backfill staging table {staging}"), e))
}

/// Creates the slot with an exported snapshot and stages the matching rows read in that snapshot (module
/// documentation): a temporary slot exports the snapshot, one transaction copies the rows, and once it committed
/// the temporary slot is copied to the permanent one.
async fn stage(
    settings: &Settings,
    control: &Client,
    host: &crate::source::PgHost,
    major: u32,
    staging: &str,
) -> Result<Plan, SourceError> {
    let mut temporary = settings.slot.clone();
    temporary.truncate(40);
    let temporary = format!("{temporary}_snapshot_{}", std::process::id());
    let exported =
        replication::create_exported(&settings.pg_url, host, major, &temporary, &settings.publication).await?;
    let staged = stage_in_snapshot(settings, control, staging, &exported).await;
    let plan = match staged {
        Ok(plan) => plan,
        Err(err) => {
            let _ = control.batch_execute("ROLLBACK").await;
            exported.close();
            return Err(err);
        }
    };
    let copied = slot::copy(control, &temporary, &settings.slot, false).await;
    exported.close();
    copied?;
    Ok(plan)
}

async fn stage_in_snapshot(
    settings: &Settings,
    control: &Client,
    staging: &str,
    exported: &replication::ExportedSnapshot,
) -> Result<Plan, SourceError> {
    let context = "staging the rows to backfill (--table, --backfill-where, --backfill-order)";
    control
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT {}",
            quote_literal(&exported.snapshot)
        ))
        .await
        .map_err(|e| SourceError::query("importing the slot's exported snapshot", e))?;
    let columns = table_columns(control, &settings.table.iter().next().map(|t| t.quoted()).unwrap_or_default()).await?;
    let list = columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
    let filter = settings.backfill_where.as_deref().map(|w| format!(" WHERE ({w})")).unwrap_or_default();
    let selects: Vec<String> = settings
        .table
        .iter()
        .enumerate()
        .map(|(i, t)| format!("SELECT {i} AS {TABLE}, {list} FROM {}{filter}", t.quoted()))
        .collect();
    let order = if settings.backfill_order.is_empty() {
        quote_ident(&settings.columns.id)
    } else {
        settings.backfill_order.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
    };
    let create = format!(
        "CREATE TABLE {staging} AS SELECT (row_number() OVER (ORDER BY {TABLE}, {order}) - 1)::bigint AS {RANK}, u.* \
         FROM ({}) u; ALTER TABLE {staging} ADD PRIMARY KEY ({RANK})",
        selects.join(" UNION ALL ")
    );
    control.batch_execute(&create).await.map_err(|e| SourceError::query(context, e))?;
    let row = control
        .query_one(
            &format!(
                "SELECT count(*)::bigint, \
                 (extract(epoch FROM now() - '2000-01-01 00:00:00+00'::timestamptz) * 1000000)::bigint FROM {staging}"
            ),
            &[],
        )
        .await
        .map_err(|e| SourceError::query(context, e))?;
    let plan = Plan {
        consistent_point: exported.consistent_point.to_string(),
        snapshot_time: row.get::<_, i64>(1),
        rows: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        tables: settings.table.iter().map(|t| (t.schema.clone(), t.name.clone())).collect(),
    };
    let comment = serde_json::to_string(&plan).unwrap_or_default();
    control
        .batch_execute(&format!("COMMENT ON TABLE {staging} IS {}; COMMIT", quote_literal(&comment)))
        .await
        .map_err(|e| SourceError::query(context, e))?;
    Ok(plan)
}

/// The columns pgoutput sends for a table (not dropped, not generated), in order.
async fn table_columns(control: &Client, table: &str) -> Result<Vec<RelationColumn>, SourceError> {
    let rows = control
        .query(
            "SELECT attname::text, atttypid::oid, atttypmod FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '' \
             ORDER BY attnum",
            &[&table],
        )
        .await
        .map_err(|e| SourceError::query(format!("reading the columns of {table}"), e))?;
    Ok(rows
        .iter()
        .map(|r| RelationColumn { flags: 0, name: r.get(0), type_oid: r.get(1), type_modifier: r.get(2) })
        .collect())
}

/// Publishes the staged rows after the last one the stream holds; returns how many it published.
async fn publish(
    settings: &Settings,
    control: &Client,
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    staging: &str,
    plan: &Plan,
) -> Result<u64, RelayError> {
    let consistent_point: Lsn = plan.consistent_point.parse().map_err(|_| SourceError::Refused {
        action: "setup --backfill".into(),
        reason: format!("the staging table {staging} names no valid consistent point"),
    })?;
    let hw = stream::high_water(js, &settings.stream).await?;
    let from = match hw.position {
        Some(p) if hw.backfill && p.commit_lsn == consistent_point => u64::from(p.index) + 1,
        Some(p) if p.commit_lsn >= consistent_point => {
            return Err(SourceError::Refused {
                action: "setup --backfill".into(),
                reason: format!(
                    "stream {} already holds events committed after the slot's creation (up to {p}), so the \
                     remaining backfilled rows can no longer come first; start over: `walrelay teardown \
                     --drop-stream`, then `walrelay setup --backfill`",
                    settings.stream
                ),
            }
            .into())
        }
        _ => 0,
    };
    // The staging table's columns after rank and table: the outbox columns, as each table's relation.
    let columns: Vec<RelationColumn> = table_columns(control, staging).await?.into_iter().skip(2).collect();
    let mut mapper = OutboxMapper::new(settings)?;
    mapper.set_max_payload(client.server_info().max_payload);
    for (i, (namespace, name)) in plan.tables.iter().enumerate() {
        mapper.relation(&Relation {
            xid: None,
            id: relation_id(i),
            namespace: namespace.clone(),
            name: name.clone(),
            replica_identity: b'd',
            columns: columns.clone(),
        })?;
    }
    let stamp = TxnStamp::backfill(consistent_point, plan.snapshot_time);
    let mut publisher = Publisher::fenced(client, hw.last_sequence, settings.publish_timeout).await?;
    let mut progress = Progress::new(plan.rows, from);
    let list = columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
    let mut next = from;
    let mut published = 0u64;
    while next < plan.rows {
        let sql = format!(
            "SELECT {RANK}, {TABLE}, {list} FROM {staging} WHERE {RANK} >= {next} ORDER BY {RANK} LIMIT {PAGE}"
        );
        let messages =
            control.simple_query(&sql).await.map_err(|e| SourceError::query("reading the staged rows", e))?;
        let mut read = 0usize;
        for message in messages {
            let SimpleQueryMessage::Row(row) = message else { continue };
            read += 1;
            let number = |i: usize| row.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let (rank, table) = (number(0), number(1));
            let index = u32::try_from(rank).map_err(|_| SourceError::Refused {
                action: "setup --backfill".into(),
                reason: "more than 4,294,967,295 rows to backfill".into(),
            })?;
            let tuple = Tuple(
                (2..row.len())
                    .map(|i| {
                        row.get(i).map_or(TupleValue::Null, |v| TupleValue::Text(Bytes::copy_from_slice(v.as_bytes())))
                    })
                    .collect(),
            );
            let event = match mapper.map(relation_id(usize::try_from(table).unwrap_or(0)), &tuple, &stamp, index) {
                Ok(event) => event,
                Err(MapError::Invalid(invalid)) => mapper.on_invalid(invalid).map_err(RelayError::Invalid)?,
                Err(MapError::Source(err)) => return Err(err.into()),
            };
            while publisher.in_flight() >= settings.max_in_flight.max(1) {
                publisher.next_ack().await?;
                published += 1;
                progress.acked(1);
            }
            publisher.send(event, ()).await?;
            next = rank + 1;
        }
        if read == 0 {
            break;
        }
    }
    while publisher.in_flight() > 0 {
        publisher.next_ack().await?;
        published += 1;
        progress.acked(1);
    }
    progress.finish();
    Ok(published)
}

/// The relation id a table's rows are mapped under (its index in the plan; 0 is the mapper's logical messages).
fn relation_id(table: usize) -> u32 {
    u32::try_from(table).unwrap_or(u32::MAX - 1).saturating_add(1)
}

/// Rows published / total on stderr: a bar on a terminal, a line every few seconds otherwise.
struct Progress {
    total: u64,
    done: u64,
    bar: Option<indicatif::ProgressBar>,
    printed: Instant,
}

impl Progress {
    fn new(total: u64, done: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total.max(1));
            if let Ok(style) = indicatif::ProgressStyle::with_template("backfill {bar:40} {pos}/{len} rows  {per_sec}")
            {
                bar.set_style(style);
            }
            bar.set_position(done);
            bar
        });
        if bar.is_none() && done < total {
            eprintln!("backfill: {done}/{total} rows published, publishing the rest");
        }
        Self { total, done, bar, printed: Instant::now() }
    }

    fn acked(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.set_position(self.done),
            None if self.printed.elapsed() >= PROGRESS_EVERY => {
                eprintln!("backfill: {}/{} rows published", self.done, self.total);
                self.printed = Instant::now();
            }
            None => {}
        }
    }

    fn finish(self) {
        match self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!("backfill: {}/{} rows published", self.done, self.total),
        }
    }
}
