//! `walrelay`: relay a PostgreSQL transactional outbox to NATS JetStream through logical replication.
//!
//! This binary parses the command line, layers the configuration (flag > env > file > default), sets up logging and
//! signals, and hands over to `walrelay_core`. It holds no relay logic.

mod bench;
mod demo;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Serialize;
use walrelay_core::{
    config::{parse_lsn, parse_size, ConfigError, Settings},
    ops,
    relay::{self, RelayError},
};

/// Exit code for a usage or configuration error found before connecting.
const EXIT_USAGE: u8 = 2;
/// Exit code for a runtime failure.
const EXIT_FAILURE: u8 = 1;

#[derive(Debug, Parser)]
#[command(name = "walrelay", version, about = "Relay a PostgreSQL transactional outbox to NATS JetStream through logical replication", long_about = None)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every command accepts (each also an environment variable and a config-file key).
#[derive(Debug, Args, Serialize)]
struct GlobalArgs {
    /// PostgreSQL connection URL [default: postgres://postgres@localhost:5432/postgres]
    #[arg(long, env = "WALRELAY_PG_URL", global = true, help_heading = "Postgres", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pg_url: Option<String>,
    /// Logical replication slot [default: walrelay]
    #[arg(long, env = "WALRELAY_SLOT", global = true, help_heading = "Postgres")]
    #[serde(skip_serializing_if = "Option::is_none")]
    slot: Option<String>,
    /// Publication holding the outbox table [default: walrelay]
    #[arg(long, env = "WALRELAY_PUBLICATION", global = true, help_heading = "Postgres")]
    #[serde(skip_serializing_if = "Option::is_none")]
    publication: Option<String>,
    /// Outbox table(s), schema-qualified, comma-separated (same columns; one slot, one commit order) [default: public.outbox]
    #[arg(long, env = "WALRELAY_TABLE", global = true, help_heading = "Postgres")]
    #[serde(skip_serializing_if = "Option::is_none")]
    table: Option<String>,
    /// NATS server URL(s), comma-separated [default: nats://localhost:4222]
    #[arg(long, env = "WALRELAY_NATS_URL", global = true, help_heading = "NATS", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_url: Option<String>,
    /// JetStream stream [default: OUTBOX]
    #[arg(long, env = "WALRELAY_STREAM", global = true, help_heading = "NATS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<String>,
    /// Subject template with {column} placeholders [default: outbox.{aggregate_type}.{event_type}]
    #[arg(long, env = "WALRELAY_SUBJECT", global = true, help_heading = "Mapping")]
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    /// Column holding the event id (Nats-Msg-Id) [default: id]
    #[arg(long, env = "WALRELAY_ID_COLUMN", global = true, help_heading = "Mapping")]
    #[serde(skip_serializing_if = "Option::is_none")]
    id_column: Option<String>,
    /// Column holding the message data [default: payload]
    #[arg(long, env = "WALRELAY_PAYLOAD_COLUMN", global = true, help_heading = "Mapping")]
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_column: Option<String>,
    /// Column holding extra headers as a JSON object [default: headers]
    #[arg(long, env = "WALRELAY_HEADERS_COLUMN", global = true, help_heading = "Mapping")]
    #[serde(skip_serializing_if = "Option::is_none")]
    headers_column: Option<String>,
    /// Column for Outbox-Aggregate-Type [default: aggregate_type]
    #[arg(long, env = "WALRELAY_AGGREGATE_TYPE_COLUMN", global = true, help_heading = "Mapping")]
    #[serde(skip_serializing_if = "Option::is_none")]
    aggregate_type_column: Option<String>,
    /// Column for Outbox-Aggregate-Id [default: aggregate_id]
    #[arg(long, env = "WALRELAY_AGGREGATE_ID_COLUMN", global = true, help_heading = "Mapping")]
    #[serde(skip_serializing_if = "Option::is_none")]
    aggregate_id_column: Option<String>,
    /// Column for Outbox-Event-Type [default: event_type]
    #[arg(long, env = "WALRELAY_EVENT_TYPE_COLUMN", global = true, help_heading = "Mapping")]
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type_column: Option<String>,
    /// What to do with an event that cannot be published: stop | dead-letter [default: stop]
    #[arg(long, env = "WALRELAY_ON_INVALID", global = true, help_heading = "Mapping")]
    #[serde(skip_serializing_if = "Option::is_none")]
    on_invalid: Option<String>,
    /// Subject of dead-letter records [default: <first token of --subject>.dead-letter, e.g. outbox.dead-letter]
    #[arg(long, env = "WALRELAY_DEAD_LETTER_SUBJECT", global = true, help_heading = "Mapping")]
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letter_subject: Option<String>,
    /// Most events published and not yet acked [default: 1024]
    #[arg(long, env = "WALRELAY_MAX_IN_FLIGHT", global = true, help_heading = "Run")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_in_flight: Option<usize>,
    /// How long to wait for a JetStream ack [default: 10s]
    #[arg(long, value_name = "DURATION", env = "WALRELAY_PUBLISH_TIMEOUT", global = true, help_heading = "Run")]
    #[serde(skip_serializing_if = "Option::is_none")]
    publish_timeout: Option<String>,
    /// How long a stop waits for in-flight acks [default: 10s]
    #[arg(long, value_name = "DURATION", env = "WALRELAY_SHUTDOWN_TIMEOUT", global = true, help_heading = "Run")]
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_timeout: Option<String>,
    /// Duplicate window of a stream walrelay creates [default: 20m]
    #[arg(long, value_name = "DURATION", env = "WALRELAY_DUPLICATE_WINDOW", global = true, help_heading = "NATS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate_window: Option<String>,
    /// Replicas of a stream walrelay creates [default: 1]
    #[arg(long, env = "WALRELAY_STREAM_REPLICAS", global = true, help_heading = "NATS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_replicas: Option<usize>,
    /// Never create the publication, slot or stream; fail instead
    #[arg(long, env = "WALRELAY_NO_CREATE", global = true, help_heading = "Run", value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    no_create: bool,
    /// Keep a trailing slot `<slot>_replay` about this far behind, so `replay` can re-send that much history
    #[arg(long, value_name = "DURATION", env = "WALRELAY_REPLAY_RETENTION", global = true, help_heading = "Run")]
    #[serde(skip_serializing_if = "Option::is_none")]
    replay_retention: Option<String>,
    /// How often `run` logs progress [default: 10s]
    #[arg(long, value_name = "DURATION", env = "WALRELAY_PROGRESS_INTERVAL", global = true, help_heading = "Run")]
    #[serde(skip_serializing_if = "Option::is_none")]
    progress_interval: Option<String>,
    /// Serve `run`'s Prometheus /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9187)
    #[arg(long, env = "WALRELAY_METRICS_ADDR", global = true, help_heading = "Run")]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_addr: Option<String>,
    /// TOML config file; its keys are the long option names with `_` (e.g. `pg_url = "..."`).
    #[arg(long, env = "WALRELAY_CONFIG", global = true, help_heading = "Logging and config")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Log filter, e.g. debug or info,walrelay_core=debug [default: info,async_nats=warn,tokio_postgres=warn,pgwire_replication=off]
    #[arg(long, env = "WALRELAY_LOG", global = true, help_heading = "Logging and config")]
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<String>,
    /// Log format: text | json [default: text]
    #[arg(long, env = "WALRELAY_LOG_FORMAT", global = true, help_heading = "Logging and config")]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<String>,
    // Postgres credentials (design.md §4a).
    /// File holding the Postgres password (one trailing newline dropped); wins over a password in --pg-url
    #[arg(long, env = "WALRELAY_PG_PASSWORD_FILE", global = true, help_heading = "Postgres")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pg_password_file: Option<PathBuf>,
    // NATS authentication and TLS (design.md §4a).
    /// NATS JWT credentials file (.creds: user JWT and nkey seed)
    #[arg(long, env = "WALRELAY_NATS_CREDS", global = true, help_heading = "NATS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_creds: Option<String>,
    /// NATS nkey seed file
    #[arg(long, env = "WALRELAY_NATS_NKEY", global = true, help_heading = "NATS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_nkey: Option<String>,
    /// File holding the NATS token (one trailing newline dropped)
    #[arg(long, env = "WALRELAY_NATS_TOKEN_FILE", global = true, help_heading = "NATS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_token_file: Option<String>,
    /// PEM CA file to verify the NATS server's certificate (TLS then required)
    #[arg(long, env = "WALRELAY_NATS_TLS_CA", global = true, help_heading = "NATS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_tls_ca: Option<String>,
    /// PEM client certificate for NATS (with --nats-tls-key)
    #[arg(long, env = "WALRELAY_NATS_TLS_CERT", global = true, help_heading = "NATS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_tls_cert: Option<String>,
    /// PEM private key of the NATS client certificate
    #[arg(long, env = "WALRELAY_NATS_TLS_KEY", global = true, help_heading = "NATS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_tls_key: Option<String>,
    /// TLS handshake before the server's INFO line (server `handshake_first`)
    #[arg(long, env = "WALRELAY_NATS_TLS_FIRST", global = true, help_heading = "NATS", value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    nats_tls_first: bool,
    // Replicas and failover (design.md §4b).
    /// The primary when --pg-url is a standby: the publication is created there, and slot creation on the standby
    /// asks it for a snapshot (pg_log_standby_snapshot)
    #[arg(long, env = "WALRELAY_PRIMARY_URL", global = true, help_heading = "Postgres", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_url: Option<String>,
    /// Create the slot as a failover slot (PostgreSQL 17+), or alter an existing one to it, so standbys that
    /// sync slots can take over
    #[arg(long, env = "WALRELAY_FAILOVER", global = true, help_heading = "Postgres", value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    failover: bool,
    // Logical decoding messages as events (design.md §4c).
    /// Also relay transactional pg_logical_emit_message(true, PREFIX, content) messages whose content is a JSON
    /// object {"id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers"}
    #[arg(long, env = "WALRELAY_MESSAGE_PREFIX", global = true, help_heading = "Mapping")]
    #[serde(skip_serializing_if = "Option::is_none")]
    message_prefix: Option<String>,
    // Pruning (design.md §4c).
    /// `run` deletes outbox rows older than this (by --created-at-column), in small batches, on the primary
    #[arg(long, value_name = "DURATION", env = "WALRELAY_PRUNE_AFTER", global = true, help_heading = "Run")]
    #[serde(skip_serializing_if = "Option::is_none")]
    prune_after: Option<String>,
    /// Column holding the row's creation time, for --prune-after [default: created_at]
    #[arg(long, env = "WALRELAY_CREATED_AT_COLUMN", global = true, help_heading = "Mapping")]
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at_column: Option<String>,
    // Durability (design.md §4d).
    /// The slot passes an event only once JetStream acked it at least this long ago and the stream still holds it
    /// (nats-server's jetstream.sync_interval); `always` confirms on the ack [default: 2m]
    #[arg(
        long,
        value_name = "DURATION|always",
        env = "WALRELAY_NATS_SYNC_INTERVAL",
        global = true,
        help_heading = "NATS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_sync_interval: Option<String>,
    // Backfill (design.md §4f).
    /// With `setup --backfill`: SQL for the WHERE clause choosing the waiting rows to publish, e.g.
    /// "processed_at IS NULL" [default: every row]
    #[arg(long, env = "WALRELAY_BACKFILL_WHERE", global = true, help_heading = "Setup")]
    #[serde(skip_serializing_if = "Option::is_none")]
    backfill_where: Option<String>,
    /// With `setup --backfill`: the column(s), comma-separated, ordering the rows of each table [default: the id
    /// column]
    #[arg(long, env = "WALRELAY_BACKFILL_ORDER", global = true, help_heading = "Setup")]
    #[serde(skip_serializing_if = "Option::is_none")]
    backfill_order: Option<String>,
    // Interoperability (design.md §4e).
    /// CloudEvents 1.0 over NATS: off, binary (ce- headers, payload untouched) or structured (JSON envelope,
    /// Content-Type: application/cloudevents+json) [default: off]
    #[arg(long, env = "WALRELAY_CLOUDEVENTS", global = true, help_heading = "Mapping")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cloudevents: Option<String>,
    /// The CloudEvents source attribute (a URI-reference) [default: /<database>/<schema>.<table>, /<database>/messages
    /// for logical messages]
    #[arg(long, env = "WALRELAY_CLOUDEVENTS_SOURCE", global = true, help_heading = "Mapping")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cloudevents_source: Option<String>,
    /// More outbox columns (or logical-message fields) as headers: COL[:Header-Name],... e.g.
    /// traceparent,tracestate,tenant_id:Tenant; a NULL column adds no header
    #[arg(long, env = "WALRELAY_HEADER_COLUMNS", global = true, help_heading = "Mapping")]
    #[serde(skip_serializing_if = "Option::is_none")]
    header_columns: Option<String>,
    // Fast-batch publishing (design.md §4, issue 21).
    /// JetStream publish mode: auto (fast-batch publishing when nats-server 2.14+ and the stream's allow_batched
    /// allow it, per-message acks otherwise) | off (always per-message acks) [default: auto]
    #[arg(long, env = "WALRELAY_NATS_BATCH", global = true, help_heading = "NATS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_batch: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Relay the outbox to JetStream (the service)
    Run,
    /// Create the publication, slot and stream if missing (idempotent)
    Setup(SetupArgs),
    /// Show the slot's position and lag
    Status(StatusArgs),
    /// Check prerequisites and print the remedy for each failure
    Doctor,
    /// Show pending events without consuming them
    Peek(PeekArgs),
    /// Re-publish every event of the transactions committed at or after an LSN
    Replay(ReplayArgs),
    /// Publish a dead-letter record for the one event `run` stopped on, so `run` goes on after it
    Skip(SkipArgs),
    /// Audit the stream against the committed events in the WAL kept by `run --replay-retention`
    Verify(VerifyArgs),
    /// Drop the slot (and optionally the replay slot, publication and stream)
    Teardown(TeardownArgs),
    /// Run the whole flow on throwaway local servers
    Demo,
    /// Measure throughput and latency on throwaway local servers
    Bench(bench::BenchArgs),
}

#[derive(Debug, Args)]
struct SetupArgs {
    /// Create the slot with an exported snapshot and publish the rows already in the table(s) before anything the
    /// slot streams (--backfill-where, --backfill-order); an interrupted backfill completes when run again
    #[arg(long)]
    backfill: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Print one JSON object
    #[arg(long)]
    json: bool,
    /// Refresh until interrupted
    #[arg(long)]
    watch: bool,
    /// Refresh interval for --watch
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    interval: String,
    /// Exit 3 when lag_bytes exceeds this size (e.g. 256MB) or on any problem --check finds
    #[arg(long, value_name = "SIZE")]
    max_lag: Option<String>,
    /// Exit 3 when the slot is lost, the stream is missing or NATS is unreachable (each reason printed)
    #[arg(long)]
    check: bool,
}

#[derive(Debug, Args)]
struct PeekArgs {
    /// Most events to show
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Print one JSON object per event
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// First commit LSN to include (X/Y)
    #[arg(long)]
    from: String,
    /// Last commit LSN to include (X/Y)
    #[arg(long)]
    to: Option<String>,
    /// Print NDJSON instead of publishing
    #[arg(long)]
    stdout: bool,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// First commit LSN to check (X/Y) [default: the replay slot's confirmed_flush_lsn]
    #[arg(long)]
    from: Option<String>,
    /// Check transactions committing before this LSN (X/Y) [default: the slot's confirmed_flush_lsn]
    #[arg(long)]
    to: Option<String>,
    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct SkipArgs {
    /// The event's position <commit_lsn>:<index>, as the error of `run` names it
    #[arg(long)]
    through: String,
}

#[derive(Debug, Args)]
struct TeardownArgs {
    /// Drop the slot even while it is active (terminates its walsender) or holds events not yet relayed (pending
    /// events are then lost)
    #[arg(long)]
    force: bool,
    /// Also drop the replay slot `<slot>_replay`
    #[arg(long)]
    drop_replay_slot: bool,
    /// Also drop the publication
    #[arg(long)]
    drop_publication: bool,
    /// Also delete the JetStream stream (and its messages)
    #[arg(long)]
    drop_stream: bool,
    /// All of the above drops
    #[arg(long)]
    all: bool,
    /// Keep the main slot: drop only what the other options name (e.g. `--keep-slot --drop-stream` to rebuild the
    /// stream)
    #[arg(long)]
    keep_slot: bool,
}

fn main() -> ExitCode {
    match try_main() {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn try_main() -> anyhow::Result<u8> {
    let cli = match Cli::from_arg_matches(&command_line().get_matches()) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    // Configuration is parsed and validated before the runtime starts: exit 2 on any usage error.
    let settings = match Settings::load(cli.global.config.as_ref(), &cli.global) {
        Ok(s) => s,
        Err(err) => return Ok(usage_error(&err)),
    };
    let quiet = matches!(cli.command, Command::Demo | Command::Bench(_)) && cli.global.log.is_none();
    init_logging(if quiet { "warn" } else { &settings.log }, &settings.log_format);
    let prepared = match prepare_command(&cli.command) {
        Ok(p) => p,
        Err(err) => return Ok(usage_error(&err)),
    };
    // One thread: the relay loop, the NATS connection and the replication reader hand each event on through
    // channels, and on one thread a hand-over is a queue push instead of a wake-up of another thread (a futex call).
    // It cut the relay's CPU per event and raised the drain rate (docs/benchmarks.md); blocking work goes to
    // `spawn_blocking`.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(dispatch(cli.command, prepared, settings))
}

/// How durations and sizes are written, under every command's `--help`.
const FORMATS: &str = "Durations: a number and a unit, e.g. 500ms, 90s, 10m, 1h, 7d. Sizes: bytes, or KB/MB/GB \
(powers of 1000) and KiB/MiB/GiB (powers of 1024), e.g. 256MB. Every option is also a WALRELAY_* environment \
variable and a config-file key (--config, the long name with _ for -): flag > env > file > default. Every command \
accepts every option; a command's --help lists those it uses.";

/// The option groups (`help_heading`s) a command uses, for its `--help`; `None`: all of them.
fn used_headings(command: &str) -> Option<&'static [&'static str]> {
    match command {
        "run" | "doctor" => None,
        "setup" | "peek" | "replay" | "skip" => Some(&["Postgres", "NATS", "Mapping", "Logging and config"]),
        "status" | "teardown" => Some(&["Postgres", "NATS", "Logging and config"]),
        _ => Some(&["Logging and config"]),
    }
}

/// Options outside a command's groups that it uses too: (command, option id).
const ALSO_USED: &[(&str, &str)] = &[
    ("bench", "cloudevents"),
    ("bench", "nats_batch"),
    ("replay", "max_in_flight"),
    ("replay", "publish_timeout"),
    ("skip", "publish_timeout"),
    ("status", "table"),
];

/// The command line: the derived parser, with each command's `--help` listing only the global options it uses
/// (the others stay accepted: design.md §4, "every command accepts all of them"), the duration and size formats under
/// each, and `[env: NAME]` without the variable's value (and without a stray `=` when it is unset).
///
/// A subcommand that does not use a global option gets its own hidden copy of it: clap then does not propagate the
/// visible one there, and the value still lands under the same id (hiding clap's propagated copy after `build` would
/// reorder its arguments under the parser's feet).
fn command_line() -> clap::Command {
    let mut cmd = Cli::command().mut_args(|arg| arg.hide_env_values(true));
    let globals: Vec<clap::Arg> = cmd.get_arguments().filter(|a| a.is_global_set()).cloned().collect();
    let names: Vec<String> = cmd.get_subcommands().map(|sc| sc.get_name().to_owned()).collect();
    for name in names {
        let used = used_headings(&name);
        cmd = cmd.mut_subcommand(&name, |mut sc| {
            for arg in &globals {
                let unused = used.is_some_and(|used| arg.get_help_heading().is_some_and(|h| !used.contains(&h)))
                    && !ALSO_USED.contains(&(name.as_str(), arg.get_id().as_str()));
                // A command's own option of the same name (bench's --max-in-flight) stands in for the global one.
                let own = sc.get_arguments().any(|a| a.get_id() == arg.get_id());
                if unused && !own {
                    sc = sc.arg(arg.clone().hide(true));
                }
            }
            sc.after_help(FORMATS)
        });
    }
    cmd.after_help(FORMATS)
}

fn usage_error(err: &ConfigError) -> u8 {
    eprintln!("error: {err}");
    EXIT_USAGE
}

/// Command arguments that must be validated before connecting.
#[derive(Debug, Default)]
struct Prepared {
    max_lag: Option<u64>,
    interval: Option<std::time::Duration>,
    from: Option<pgoutput::Lsn>,
    to: Option<pgoutput::Lsn>,
    through: Option<walrelay_core::mapping::event::Position>,
}

fn prepare_command(command: &Command) -> Result<Prepared, ConfigError> {
    let mut p = Prepared::default();
    match command {
        Command::Status(a) => {
            p.max_lag = a.max_lag.as_deref().map(|s| parse_size("--max-lag", s)).transpose()?;
            let interval = walrelay_core::config::parse_duration("--interval", &a.interval)?;
            if interval < std::time::Duration::from_millis(100) {
                return Err(ConfigError::Invalid {
                    option: "--interval",
                    value: a.interval.clone(),
                    reason: "must be at least 100ms".into(),
                });
            }
            p.interval = Some(interval);
        }
        Command::Replay(a) => {
            p.from = Some(parse_lsn("--from", &a.from)?);
            p.to = a.to.as_deref().map(|s| parse_lsn("--to", s)).transpose()?;
        }
        Command::Verify(a) => {
            p.from = a.from.as_deref().map(|s| parse_lsn("--from", s)).transpose()?;
            p.to = a.to.as_deref().map(|s| parse_lsn("--to", s)).transpose()?;
            if let (Some(from), Some(to)) = (p.from, p.to) {
                if to < from {
                    return Err(ConfigError::Invalid {
                        option: "--to",
                        value: to.to_string(),
                        reason: format!("must not be before --from {from}"),
                    });
                }
            }
        }
        Command::Skip(a) => p.through = Some(walrelay_core::config::parse_position("--through", &a.through)?),
        Command::Bench(a) => a.validate()?,
        _ => {}
    }
    Ok(p)
}

async fn dispatch(command: Command, prepared: Prepared, settings: Settings) -> anyhow::Result<u8> {
    let name = command.name();
    let json_logs = settings.log_format == "json";
    let result: Result<u8, RelayError> = match command {
        Command::Run => {
            let shutdown = shutdown_signal();
            // The recorder first, so the relay's metric handles register with it.
            let endpoint = match settings.metrics_addr {
                Some(addr) => Some(HttpEndpoint::bind(addr).await?),
                None => None,
            };
            let stats = Arc::new(walrelay_core::stats::Stats::default());
            if let Some(endpoint) = endpoint {
                endpoint.spawn(stats.health.clone(), shutdown.clone());
            }
            let retention = ops::retention::spawn(&settings, shutdown.clone());
            let prune = ops::prune::spawn(&settings, shutdown.clone());
            let result = relay::run(&settings, shutdown, stats).await.map(|()| 0);
            for task in [retention, prune].into_iter().flatten() {
                task.abort();
            }
            result
        }
        Command::Setup(args) if args.backfill => ops::backfill::run(&settings).await.map(|()| 0),
        Command::Setup(_) => ops::setup::run(&settings).await.map(|()| 0),
        Command::Status(a) => {
            let opts = ops::status::StatusOptions {
                json: a.json,
                watch: a.watch,
                interval: prepared.interval.unwrap_or(std::time::Duration::from_secs(2)),
                max_lag: prepared.max_lag,
                check: a.check,
            };
            ops::status::run(&settings, &opts, shutdown_signal()).await
        }
        Command::Doctor => ops::doctor::run(&settings).await,
        Command::Peek(a) => ops::peek::run(&settings, a.limit, a.json).await.map(|()| 0),
        Command::Replay(a) => {
            let Some(from) = prepared.from else {
                return Ok(EXIT_USAGE);
            };
            ops::replay::run(&settings, from, prepared.to, a.stdout).await.map(|()| 0)
        }
        Command::Verify(a) => {
            let opts = ops::verify::VerifyOptions { from: prepared.from, to: prepared.to, json: a.json };
            ops::verify::run(&settings, &opts).await
        }
        Command::Skip(_) => {
            let Some(through) = prepared.through else {
                return Ok(EXIT_USAGE);
            };
            ops::skip::run(&settings, through).await.map(|()| 0)
        }
        Command::Teardown(a) => {
            let opts = ops::teardown::TeardownOptions {
                force: a.force,
                slot: !a.keep_slot,
                replay_slot: a.drop_replay_slot || a.all,
                publication: a.drop_publication || a.all,
                stream: a.drop_stream || a.all,
            };
            ops::teardown::run(&settings, &opts).await.map(|()| 0)
        }
        Command::Demo => return demo::run().await,
        Command::Bench(a) => return bench::run(&a, &settings).await,
    };
    match result {
        Ok(code) => Ok(code),
        Err(err) => {
            // Printed once: as a log event when logs are JSON (one machine-readable stream), else as plain text.
            let err = err.naming_pg_user(&settings.pg_url.user());
            let error = walrelay_core::source::error_chain(&err);
            if json_logs {
                if name == "run" {
                    tracing::error!(command = name, error = %error, "relay stopped");
                } else {
                    tracing::error!(command = name, error = %error, "command failed");
                }
            } else {
                eprintln!("error: {error}");
            }
            Ok(EXIT_FAILURE)
        }
    }
}

impl Command {
    /// The subcommand's name, for logs.
    fn name(&self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Setup(_) => "setup",
            Self::Status(_) => "status",
            Self::Doctor => "doctor",
            Self::Peek(_) => "peek",
            Self::Replay(_) => "replay",
            Self::Skip(_) => "skip",
            Self::Verify(_) => "verify",
            Self::Teardown(_) => "teardown",
            Self::Demo => "demo",
            Self::Bench(_) => "bench",
        }
    }
}

/// `--metrics-addr`: the bound listener and the installed Prometheus recorder, before the relay starts.
struct HttpEndpoint {
    addr: std::net::SocketAddr,
    listener: tokio::net::TcpListener,
    handle: metrics_exporter_prometheus::PrometheusHandle,
}

impl HttpEndpoint {
    async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr} (--metrics-addr): {e}"))?;
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(walrelay_core::stats::COMMIT_TO_ACK_SECONDS.into()),
                walrelay_core::stats::COMMIT_TO_ACK_BUCKETS,
            )
            .map_err(|e| anyhow::anyhow!("cannot set the histogram buckets: {e}"))?
            .install_recorder()
            .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
        Ok(Self { addr, listener, handle })
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` (design.md §4c) until shutdown.
    fn spawn(self, health: Arc<walrelay_core::health::Health>, shutdown: tokio::sync::watch::Receiver<bool>) {
        let upkeep = self.handle.clone();
        walrelay_core::spawn_named("metrics-upkeep", async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        let handle = self.handle;
        let render: walrelay_core::health::RenderMetrics = Arc::new(move || handle.render());
        walrelay_core::spawn_named("http", walrelay_core::health::serve(self.listener, health, render, shutdown));
        tracing::info!(addr = %self.addr, "serving /metrics, /healthz and /readyz");
    }
}

/// A watch that turns true at the first SIGTERM or SIGINT.
fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    walrelay_core::spawn_named("signals", async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "stop requested"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "stop requested"),
        }
        let _ = tx.send(true);
    });
    rx
}

fn init_logging(filter: &str, format: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
