//! Configuration: every option has a flag, an environment variable and a config-file key.
//!
//! In: the options the binary collected from flags and `WALRELAY_*` variables (clap merges those two, flag first),
//! an optional TOML file (`--config`), and the defaults below. Out: a validated [`Settings`], built before any
//! connection is made, so every usage error ends the process with exit code 2 before it touches a server.
//! Precedence, per `design.md` §4: flag > env > file > default. Layering is done with `figment`.

pub mod nats;
pub mod postgres;

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use figment::{
    providers::{Format, Serialized, Toml},
    Figment,
};
use pgoutput::Lsn;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// A configuration problem found before connecting (exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read or parsed, or holds an unknown key or a value of the wrong type.
    #[error("{0}")]
    File(String),
    /// An option's value is malformed.
    #[error("invalid {option} {value:?}: {reason}")]
    Invalid {
        /// The option's flag name, e.g. `--pg-url`.
        option: &'static str,
        /// The offending value (never a secret).
        value: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

/// What to do with an event that cannot be published as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnInvalid {
    /// Stop the relay before the event, with an error naming it (exit code 1).
    #[default]
    Stop,
    /// Publish a small dead-letter record in its place and carry on.
    DeadLetter,
}

/// `--nats-batch`: how the publisher talks to JetStream (design.md §4, issue 21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NatsBatch {
    /// Fast-batch publishing (ADR-50) when the server (2.14+) and the stream (`allow_batched`) allow it,
    /// per-message acks otherwise.
    #[default]
    Auto,
    /// Always one publish ack per message.
    Off,
}

impl NatsBatch {
    /// The option's value, as `--nats-batch` takes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Off => "off",
        }
    }
}

impl FromStr for NatsBatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            other => Err(format!("expected `auto` or `off`, got `{other}`")),
        }
    }
}

impl FromStr for OnInvalid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stop" => Ok(Self::Stop),
            "dead-letter" => Ok(Self::DeadLetter),
            other => Err(format!("expected `stop` or `dead-letter`, got `{other}`")),
        }
    }
}

/// The raw, layered options as strings and numbers, before validation. Keys are the config-file keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawSettings {
    pub pg_url: String,
    pub slot: String,
    pub publication: String,
    pub table: String,
    pub nats_url: String,
    pub stream: String,
    pub subject: String,
    pub id_column: String,
    pub payload_column: String,
    pub headers_column: String,
    pub aggregate_type_column: String,
    pub aggregate_id_column: String,
    pub event_type_column: String,
    pub on_invalid: String,
    pub dead_letter_subject: Option<String>,
    pub max_in_flight: usize,
    pub publish_timeout: String,
    pub shutdown_timeout: String,
    pub duplicate_window: String,
    pub stream_replicas: usize,
    pub no_create: bool,
    pub replay_retention: Option<String>,
    pub progress_interval: String,
    pub metrics_addr: Option<String>,
    pub log: String,
    pub log_format: String,
    // Postgres credentials and connections (design.md §4a).
    pub pg_password_file: Option<PathBuf>,
    // NATS authentication and TLS (design.md §4a); the files are read and checked by sink::connect.
    pub nats_creds: Option<String>,
    pub nats_nkey: Option<String>,
    pub nats_token_file: Option<String>,
    pub nats_tls_ca: Option<String>,
    pub nats_tls_cert: Option<String>,
    pub nats_tls_key: Option<String>,
    pub nats_tls_first: bool,
    // Replicas and failover (design.md §4b).
    pub primary_url: Option<String>,
    pub failover: bool,
    // Logical decoding messages as events (design.md §4c).
    pub message_prefix: Option<String>,
    // Pruning (design.md §4c).
    pub prune_after: Option<String>,
    pub created_at_column: String,
    // Durability (design.md §4d).
    pub nats_sync_interval: String,
    // Backfill (design.md §4f).
    pub backfill_where: Option<String>,
    pub backfill_order: Option<String>,
    // Interoperability (design.md §4e).
    pub cloudevents: String,
    pub cloudevents_source: Option<String>,
    pub header_columns: Option<String>,
    // Fast-batch publishing (design.md §4, issue 21).
    pub nats_batch: String,
}

impl Default for RawSettings {
    fn default() -> Self {
        Self {
            pg_url: "postgres://postgres@localhost:5432/postgres".into(),
            slot: "walrelay".into(),
            publication: "walrelay".into(),
            table: "public.outbox".into(),
            nats_url: "nats://localhost:4222".into(),
            stream: "OUTBOX".into(),
            subject: "outbox.{aggregate_type}.{event_type}".into(),
            id_column: "id".into(),
            payload_column: "payload".into(),
            headers_column: "headers".into(),
            aggregate_type_column: "aggregate_type".into(),
            aggregate_id_column: "aggregate_id".into(),
            event_type_column: "event_type".into(),
            on_invalid: "stop".into(),
            dead_letter_subject: None,
            max_in_flight: 1024,
            publish_timeout: "10s".into(),
            shutdown_timeout: "10s".into(),
            duplicate_window: "20m".into(),
            stream_replicas: 1,
            no_create: false,
            replay_retention: None,
            progress_interval: "10s".into(),
            metrics_addr: None,
            // pgwire-replication logs its worker's end at ERROR (a Postgres fast stop, too); the same error reaches
            // the relay through the stream, which reports it once, with its meaning and whether it retries.
            log: "info,async_nats=warn,tokio_postgres=warn,pgwire_replication=off".into(),
            log_format: "text".into(),
            pg_password_file: None,
            nats_creds: None,
            nats_nkey: None,
            nats_token_file: None,
            nats_tls_ca: None,
            nats_tls_cert: None,
            nats_tls_key: None,
            nats_tls_first: false,
            primary_url: None,
            failover: false,
            message_prefix: None,
            prune_after: None,
            created_at_column: "created_at".into(),
            nats_sync_interval: "2m".into(),
            backfill_where: None,
            backfill_order: None,
            cloudevents: "off".into(),
            cloudevents_source: None,
            header_columns: None,
            nats_batch: "auto".into(),
        }
    }
}

pub use postgres::PgUrl;

/// Removes a password from a URL or `key=value` connection string, for logs and errors.
pub fn redact_url(url: &str) -> String {
    if let Ok(mut parsed) = url::Url::parse(url) {
        if parsed.password().is_some() {
            let _ = parsed.set_password(Some("***"));
        }
        let redacted: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") { "***".to_owned() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        if !redacted.is_empty() {
            parsed.query_pairs_mut().clear().extend_pairs(redacted);
        }
        return parsed.to_string();
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        // Not a valid URL, but shaped like one: mask whatever follows the user name in the user info.
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if let Some(at) = authority.rfind('@') {
            let (userinfo, host) = authority.split_at(at);
            let user = userinfo.split(':').next().unwrap_or_default();
            let masked = if userinfo.contains(':') { format!("{user}:***") } else { user.to_owned() };
            let tail = if tail.to_ascii_lowercase().contains("password=") { "/***" } else { tail };
            return format!("{scheme}://{masked}{host}{tail}");
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(
            |kv| {
                if kv.to_ascii_lowercase().starts_with("password=") {
                    "password=***".to_owned()
                } else {
                    kv.to_owned()
                }
            },
        )
        .collect::<Vec<_>>()
        .join(" ")
}

/// A schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// Schema, `public` when not given.
    pub schema: String,
    /// Table name.
    pub name: String,
}

impl TableName {
    /// Parses `schema.table` or `table`; double quotes around a part are removed.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let invalid =
            |reason: &str| ConfigError::Invalid { option: "--table", value: s.to_owned(), reason: reason.to_owned() };
        let unquote = |p: &str| p.trim().trim_matches('"').to_owned();
        let (schema, name) = match s.split_once('.') {
            Some((schema, name)) => (unquote(schema), unquote(name)),
            None => ("public".to_owned(), unquote(s)),
        };
        if schema.is_empty() || name.is_empty() || name.contains('.') {
            return Err(invalid("expected `schema.table`, e.g. public.outbox"));
        }
        Ok(Self { schema, name })
    }

    /// The name quoted for SQL, e.g. `"public"."outbox"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// `--table`: one or more outbox tables with the same columns, relayed through one publication and one slot in
/// one commit order (design.md §4c); or none (`--table ''`), when only logical messages are relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables(Vec<TableName>);

impl Tables {
    /// Parses a comma-separated list of `schema.table` names (duplicates removed); an empty (or blank) string is
    /// no table at all, which [`Settings::validate`] accepts only with `--message-prefix`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        if s.trim().is_empty() {
            return Ok(Self(Vec::new()));
        }
        let mut tables: Vec<TableName> = Vec::new();
        for part in s.split(',') {
            let table = TableName::parse(part.trim())?;
            if !tables.contains(&table) {
                tables.push(table);
            }
        }
        Ok(Self(tables))
    }

    /// The tables, in the order given.
    pub fn iter(&self) -> std::slice::Iter<'_, TableName> {
        self.0.iter()
    }

    /// How many tables.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no table is configured: `--table ''`, only logical messages are relayed (the publication holds no
    /// table, there are no table checks and nothing to prune). The one test of that case.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `schema.name` is one of the tables.
    pub fn contains(&self, schema: &str, name: &str) -> bool {
        self.0.iter().any(|t| t.schema == schema && t.name == name)
    }

    /// The tables quoted for SQL and comma-separated, e.g. for `CREATE PUBLICATION ... FOR TABLE <this>`.
    pub fn quoted(&self) -> String {
        self.0.iter().map(TableName::quoted).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for Tables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no table (messages only)");
        }
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&names.join(", "))
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The outbox table's column names.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct Columns {
    pub id: String,
    pub payload: String,
    pub headers: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
}

/// Validated settings shared by every command.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct Settings {
    pub pg_url: PgUrl,
    pub slot: String,
    pub publication: String,
    /// `--table`: the outbox tables.
    pub table: Tables,
    /// `--nats-url` and the NATS authentication and TLS options, validated (credentials are secret).
    pub nats: nats::NatsOptions,
    pub stream: String,
    /// `--subject`, parsed once.
    pub subject: crate::mapping::subject::SubjectTemplate,
    pub columns: Columns,
    pub on_invalid: OnInvalid,
    pub dead_letter_subject: String,
    pub max_in_flight: usize,
    pub publish_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub duplicate_window: Duration,
    pub stream_replicas: usize,
    pub no_create: bool,
    pub replay_retention: Option<Duration>,
    pub progress_interval: Duration,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub log: String,
    pub log_format: String,
    // Postgres credentials (design.md §4a): the `--pg-password-file` password, already applied to `pg_url`; apply it
    // to any other Postgres URL with [`Settings::with_pg_password`].
    pub pg_password: Option<SecretString>,
    // Replicas and failover (design.md §4b).
    /// The primary, used when `pg_url` is a standby (publication, `pg_log_standby_snapshot()`).
    pub primary_url: Option<PgUrl>,
    /// Create (or alter) the slot with `failover = true`.
    pub failover: bool,
    // Logical decoding messages as events (design.md §4c).
    /// `--message-prefix`: transactional `pg_logical_emit_message` messages with this prefix are relayed too.
    pub message_prefix: Option<String>,
    // Pruning (design.md §4c).
    /// `--prune-after`: `run` deletes outbox rows whose `created_at_column` is older than this.
    pub prune_after: Option<std::time::Duration>,
    /// `--created-at-column`.
    pub created_at_column: String,
    // Durability (design.md §4d).
    /// `--nats-sync-interval`: how long after its ack an event must still be in the stream before the slot passes
    /// it; `None` (`always`, `0s`) confirms on the ack.
    pub nats_sync_interval: Option<Duration>,
    // Backfill (design.md §4f).
    /// `--backfill-where`: SQL for the WHERE clause choosing the rows `setup --backfill` publishes (all when unset).
    pub backfill_where: Option<String>,
    /// `--backfill-order`: the columns ordering the backfilled rows of each table (empty: the id column).
    pub backfill_order: Vec<String>,
    // Interoperability (design.md §4e).
    /// `--cloudevents`.
    pub cloudevents: crate::mapping::cloudevents::Mode,
    /// `--cloudevents-source`; `None`: `/<database>/<schema>.<table>` (`/<database>/messages` for messages).
    pub cloudevents_source: Option<String>,
    /// `--header-columns`, parsed.
    pub header_columns: Vec<crate::mapping::header_columns::HeaderColumn>,
    // Fast-batch publishing (design.md §4, issue 21).
    /// `--nats-batch`: fast-batch publishing when the server and stream allow it (`auto`), or never (`off`).
    pub nats_batch: NatsBatch,
}

impl Settings {
    /// Layers defaults < file < overrides (flags and env, already merged by the caller), then validates.
    ///
    /// `overrides` is any serializable value whose `Some` fields use the config-file keys.
    pub fn load<T: Serialize>(file: Option<&PathBuf>, overrides: &T) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(RawSettings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::File(format!(
                    "config file {} does not exist; check --config / WALRELAY_CONFIG",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Serialized::defaults(overrides));
        let raw: RawSettings = figment.extract().map_err(|err| file_error(file, err))?;
        Self::validate(raw)
    }

    /// Validates raw settings.
    pub fn validate(raw: RawSettings) -> Result<Self, ConfigError> {
        let name = |option: &'static str, value: &str| -> Result<String, ConfigError> {
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::Invalid {
                    option,
                    value: value.to_owned(),
                    reason: "must be a non-empty name without whitespace".into(),
                });
            }
            Ok(value.to_owned())
        };
        let slot = name("--slot", &raw.slot)?;
        if !slot.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') || slot.len() > 63 {
            return Err(ConfigError::Invalid {
                option: "--slot",
                value: slot,
                reason: "a replication slot name may contain only lower-case letters, digits and `_` (at most 63)"
                    .into(),
            });
        }
        let stream = name("--stream", &raw.stream)?;
        if stream.contains(['.', '*', '>', '/', '\\']) {
            return Err(ConfigError::Invalid {
                option: "--stream",
                value: stream,
                reason: "a stream name may not contain `.`, `*`, `>`, `/` or `\\`".into(),
            });
        }
        // Ranges: a value out of range is a usage error, never silently clamped.
        in_range("--max-in-flight", raw.max_in_flight, 1, MAX_IN_FLIGHT_LIMIT)?;
        in_range("--stream-replicas", raw.stream_replicas, 1, 5)?;
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&raw.log) {
            return Err(ConfigError::Invalid {
                option: "--log",
                value: raw.log.clone(),
                reason: format!("{err}; expected a filter like info or info,walrelay_core=debug"),
            });
        }
        let publish_timeout = at_least("--publish-timeout", &raw.publish_timeout, Duration::from_millis(1))?;
        let progress_interval = at_least("--progress-interval", &raw.progress_interval, Duration::from_millis(1))?;
        let replay_retention = raw
            .replay_retention
            .as_deref()
            .map(|d| at_least("--replay-retention", d, Duration::from_secs(1)))
            .transpose()?;
        let subject = crate::mapping::subject::SubjectTemplate::parse(&raw.subject)
            .map_err(|reason| ConfigError::Invalid { option: "--subject", value: raw.subject.clone(), reason })?;
        let dead_letter_subject = raw.dead_letter_subject.unwrap_or_else(|| subject.default_dead_letter_subject());
        crate::mapping::subject::validate_literal_subject(&dead_letter_subject).map_err(|reason| {
            ConfigError::Invalid { option: "--dead-letter-subject", value: dead_letter_subject.clone(), reason }
        })?;
        let mut nats = nats::NatsOptions::parse(&nats::RawNats {
            url: &raw.nats_url,
            creds: raw.nats_creds.as_deref(),
            nkey: raw.nats_nkey.as_deref(),
            token_file: raw.nats_token_file.as_deref(),
            tls_ca: raw.nats_tls_ca.as_deref(),
            tls_cert: raw.nats_tls_cert.as_deref(),
            tls_key: raw.nats_tls_key.as_deref(),
            tls_first: raw.nats_tls_first,
        })?;
        // Room for every publish in flight, in the command channel and in the one subscription their acks arrive on.
        nats.capacity = nats.capacity.max(raw.max_in_flight.saturating_add(1024));
        let on_invalid = raw.on_invalid.parse().map_err(|reason| ConfigError::Invalid {
            option: "--on-invalid",
            value: raw.on_invalid.clone(),
            reason,
        })?;
        let nats_batch = raw.nats_batch.parse().map_err(|reason| ConfigError::Invalid {
            option: "--nats-batch",
            value: raw.nats_batch.clone(),
            reason,
        })?;
        let duplicate_window = parse_duration("--duplicate-window", &raw.duplicate_window)?;
        if duplicate_window < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                option: "--duplicate-window",
                value: raw.duplicate_window,
                reason: "must be at least 1s (10m or more recommended)".into(),
            });
        }
        let pg_password = raw.pg_password_file.as_deref().map(read_password_file).transpose()?;
        let table = Tables::parse(&raw.table)?;
        let message_prefix = raw.message_prefix.filter(|p| !p.is_empty());
        let prune_after = raw.prune_after.as_deref().map(|d| parse_duration("--prune-after", d)).transpose()?;
        check_sources(&table, message_prefix.as_deref(), raw.prune_after.as_deref())?;
        let nats_sync_interval = parse_sync_interval(&raw.nats_sync_interval)?;
        let backfill_order = match raw.backfill_order.as_deref().map(str::trim).filter(|o| !o.is_empty()) {
            None => Vec::new(),
            Some(order) => {
                order.split(',').map(|column| name("--backfill-order", column.trim())).collect::<Result<Vec<_>, _>>()?
            }
        };
        let backfill_where = raw.backfill_where.filter(|w| !w.trim().is_empty());
        let cloudevents = raw.cloudevents.parse().map_err(|reason| ConfigError::Invalid {
            option: "--cloudevents",
            value: raw.cloudevents.clone(),
            reason,
        })?;
        let cloudevents_source = raw.cloudevents_source.map(check_cloudevents_source).transpose()?;
        let header_columns = crate::mapping::header_columns::parse(raw.header_columns.as_deref().unwrap_or_default())
            .map_err(|reason| ConfigError::Invalid {
            option: "--header-columns",
            value: raw.header_columns.clone().unwrap_or_default(),
            reason,
        })?;
        // With CloudEvents on, Content-Type is walrelay's: it tells a receiver which content mode a message uses.
        if cloudevents != crate::mapping::cloudevents::Mode::Off {
            if let Some(h) = header_columns.iter().find(|h| {
                <async_nats::header::HeaderName as AsRef<str>>::as_ref(&h.header).eq_ignore_ascii_case("content-type")
            }) {
                return Err(ConfigError::Invalid {
                    option: "--header-columns",
                    value: raw.header_columns.clone().unwrap_or_default(),
                    reason: format!(
                        "header `Content-Type` (from column {}) decides the CloudEvents content mode, which walrelay \
                         sets with --cloudevents; rename it, e.g. {}:X-Content-Type",
                        h.column, h.column
                    ),
                });
            }
        }
        Ok(Self {
            pg_url: PgUrl::parse(&raw.pg_url)?.with_password(pg_password.as_ref()),
            slot,
            publication: name("--publication", &raw.publication)?,
            table,
            nats,
            stream,
            subject,
            columns: Columns {
                id: name("--id-column", &raw.id_column)?,
                payload: name("--payload-column", &raw.payload_column)?,
                headers: name("--headers-column", &raw.headers_column)?,
                aggregate_type: name("--aggregate-type-column", &raw.aggregate_type_column)?,
                aggregate_id: name("--aggregate-id-column", &raw.aggregate_id_column)?,
                event_type: name("--event-type-column", &raw.event_type_column)?,
            },
            on_invalid,
            dead_letter_subject,
            max_in_flight: raw.max_in_flight,
            publish_timeout,
            shutdown_timeout: parse_duration("--shutdown-timeout", &raw.shutdown_timeout)?,
            duplicate_window,
            stream_replicas: raw.stream_replicas,
            no_create: raw.no_create,
            replay_retention,
            progress_interval,
            metrics_addr: raw
                .metrics_addr
                .as_deref()
                .map(|a| {
                    a.parse().map_err(|_| ConfigError::Invalid {
                        option: "--metrics-addr",
                        value: a.to_owned(),
                        reason: "expected an address and port, e.g. 127.0.0.1:9187".into(),
                    })
                })
                .transpose()?,
            log: raw.log,
            primary_url: raw
                .primary_url
                .as_deref()
                .map(|url| {
                    PgUrl::parse(url).map(|u| u.with_password(pg_password.as_ref())).map_err(|err| match err {
                        ConfigError::Invalid { value, reason, .. } => {
                            ConfigError::Invalid { option: "--primary-url", value, reason }
                        }
                        other => other,
                    })
                })
                .transpose()?,
            failover: raw.failover,
            message_prefix,
            prune_after,
            created_at_column: raw.created_at_column,
            nats_sync_interval,
            backfill_where,
            backfill_order,
            cloudevents,
            cloudevents_source,
            header_columns,
            log_format: match raw.log_format.as_str() {
                "text" | "json" => raw.log_format,
                other => {
                    return Err(ConfigError::Invalid {
                        option: "--log-format",
                        value: other.to_owned(),
                        reason: "expected `text` or `json`".into(),
                    })
                }
            },
            pg_password,
            nats_batch,
        })
    }

    /// `url` with the `--pg-password-file` password, when one is set (it wins over a password in the URL).
    pub fn with_pg_password(&self, url: PgUrl) -> PgUrl {
        url.with_password(self.pg_password.as_ref())
    }

    /// The name of the trailing replay slot kept by `run --replay-retention`.
    pub fn replay_slot(&self) -> String {
        format!("{}_replay", self.slot)
    }
}

/// A config-file error in the user's terms: the file, the key and what it takes, not the deserializer's internals
/// (flags and variables are typed by the command line, so a wrong key or type comes from the file).
fn file_error(file: Option<&PathBuf>, err: figment::Error) -> ConfigError {
    let source = file.map_or_else(|| "options".to_owned(), |path| format!("config file {}", path.display()));
    let reasons: Vec<String> = err
        .into_iter()
        .map(|e| {
            let key = e.path.last().cloned().unwrap_or_default();
            match &e.kind {
                figment::error::Kind::UnknownField(name, _) => format!(
                    "unknown key \"{name}\"; the keys are the long option names with _ for - (e.g. pg_url), listed in \
                     docs/configuration.md and deploy/walrelay.example.toml"
                ),
                figment::error::Kind::InvalidType(actual, expected)
                | figment::error::Kind::InvalidValue(actual, expected) => {
                    format!("key \"{key}\" takes {}, not {actual}", plain_type(expected))
                }
                figment::error::Kind::Message(message) => message.trim().to_owned(),
                other => format!("key \"{key}\": {other}"),
            }
        })
        .collect();
    ConfigError::File(format!("{source}: {}", reasons.join("; ")))
}

/// serde's name of an expected type, as a config file says it.
fn plain_type(expected: &str) -> &str {
    match expected {
        "usize" | "u64" | "u32" | "u16" | "u8" | "i64" | "i32" => "a whole number (e.g. 1024)",
        "a boolean" => "true or false",
        "a string" => "a string in quotes (e.g. \"10s\")",
        other => other,
    }
}

/// What an empty `--table` list allows: relaying logical messages only, so it needs `--message-prefix`, and leaves
/// no table for `--prune-after` to prune.
fn check_sources(table: &Tables, message_prefix: Option<&str>, prune_after: Option<&str>) -> Result<(), ConfigError> {
    if !table.is_empty() {
        return Ok(());
    }
    if message_prefix.is_none() {
        return Err(ConfigError::Invalid {
            option: "--table",
            value: String::new(),
            reason: "no table and no --message-prefix: nothing would be relayed; name the outbox table(s), or set \
                     --message-prefix PREFIX to relay only logical messages (--table '' --message-prefix outbox)"
                .into(),
        });
    }
    if let Some(after) = prune_after {
        return Err(ConfigError::Invalid {
            option: "--prune-after",
            value: after.to_owned(),
            reason: "with --table '' (messages only) there is no outbox table to prune; drop --prune-after or name \
                     the outbox table(s) with --table"
                .into(),
        });
    }
    Ok(())
}

/// `--cloudevents-source`: a URI-reference (the CloudEvents `source` attribute must be a non-empty one); the mapper
/// percent-encodes it for the binary mode's header, so any text without whitespace or control characters is accepted.
fn check_cloudevents_source(source: String) -> Result<String, ConfigError> {
    if source.is_empty() || source.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::Invalid {
            option: "--cloudevents-source",
            value: source,
            reason: "expected a non-empty URI-reference without whitespace, e.g. /shop/public.outbox or \
                     https://shop.example.com/orders"
                .into(),
        });
    }
    Ok(source)
}

/// Reads `--pg-password-file`: the whole file, one trailing newline (`\n` or `\r\n`) dropped.
fn read_password_file(path: &std::path::Path) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Invalid {
        option: "--pg-password-file",
        value: path.display().to_string(),
        reason: format!("cannot read the password file {}: {err}", path.display()),
    })?;
    let password = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    Ok(SecretString::from(password.to_owned()))
}

/// The largest `--max-in-flight` (the client's ack window is twice it).
const MAX_IN_FLIGHT_LIMIT: usize = 1_000_000;

/// `value` must lie in `min..=max`.
fn in_range(option: &'static str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(ConfigError::Invalid { option, value: value.to_string(), reason: format!("must be from {min} to {max}") })
}

/// A duration of at least `min`.
fn at_least(option: &'static str, value: &str, min: Duration) -> Result<Duration, ConfigError> {
    let d = parse_duration(option, value)?;
    if d < min {
        return Err(ConfigError::Invalid {
            option,
            value: value.to_owned(),
            reason: format!("must be at least {}", humantime::format_duration(min)),
        });
    }
    Ok(d)
}

/// The longest duration any option takes (100 years of 365.25 days, as humantime counts `100y`): far beyond it a
/// deadline would overflow the clock.
const MAX_DURATION: Duration = Duration::from_secs(36_525 * 24 * 3600);

/// Parses a duration like `90s`, `10m`, `1h`, `500ms` (at most 100 years).
pub fn parse_duration(option: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { option, value: value.to_owned(), reason };
    let d = humantime::parse_duration(value.trim())
        .map_err(|err| invalid(format!("{err}; expected a duration like 90s, 10m or 1h")))?;
    if d > MAX_DURATION {
        return Err(invalid("must be at most 100 years".into()));
    }
    Ok(d)
}

/// Parses a size: `KB/MB/GB` are powers of 1000, `KiB/MiB/GiB` powers of 1024, a bare number is bytes.
pub fn parse_size(option: &'static str, value: &str) -> Result<u64, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid { option, value: value.to_owned(), reason: reason.to_owned() };
    let s = value.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid("expected a size like 64MB, 512KiB or 1GB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "mb" | "m" => 1000 * 1000,
        "gb" | "g" => 1000 * 1000 * 1000,
        "tb" | "t" => 1000 * 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(invalid("unknown unit; use B, KB, MB, GB (1000) or KiB, MiB, GiB (1024)")),
    };
    let bytes = number * factor as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(invalid("out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Parses `--nats-sync-interval`: `always` (or a zero duration) is `None`, confirm on the ack; otherwise the
/// duration (design.md §4d).
pub fn parse_sync_interval(value: &str) -> Result<Option<Duration>, ConfigError> {
    if value.trim().eq_ignore_ascii_case("always") {
        return Ok(None);
    }
    let d = parse_duration("--nats-sync-interval", value).map_err(|_| ConfigError::Invalid {
        option: "--nats-sync-interval",
        value: value.to_owned(),
        reason: "expected `always` or a duration like 2m (nats-server's jetstream sync_interval)".into(),
    })?;
    Ok((!d.is_zero()).then_some(d))
}

/// Parses an LSN in Postgres `X/Y` form.
pub fn parse_lsn(option: &'static str, value: &str) -> Result<Lsn, ConfigError> {
    value.trim().parse::<Lsn>().map_err(|_| ConfigError::Invalid {
        option,
        value: value.to_owned(),
        reason: "expected an LSN in Postgres form X/Y (hex), e.g. 0/1A2B3C4".into(),
    })
}

/// Parses an event position `<commit_lsn>:<index>` (as `Outbox-Commit-Lsn` and `Outbox-Index` show it).
pub fn parse_position(option: &'static str, value: &str) -> Result<crate::mapping::event::Position, ConfigError> {
    value.parse().map_err(|reason| ConfigError::Invalid { option, value: value.to_owned(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_decimal_and_binary_units() {
        assert_eq!(parse_size("--max-lag", "64MB").ok(), Some(64_000_000));
        assert_eq!(parse_size("--max-lag", "1KiB").ok(), Some(1024));
        assert_eq!(parse_size("--max-lag", "2 GiB").ok(), Some(2 << 30));
        assert_eq!(parse_size("--max-lag", "100").ok(), Some(100));
        assert!(matches!(parse_size("--max-lag", "12 parsecs"), Err(ConfigError::Invalid { .. })));
        assert!(matches!(parse_size("--max-lag", "MB"), Err(ConfigError::Invalid { .. })));
    }

    #[test]
    fn nats_batch_is_auto_by_default_or_off() {
        let batch =
            |value: &str| Settings::validate(RawSettings { nats_batch: value.into(), ..RawSettings::default() });
        assert_eq!(Settings::validate(RawSettings::default()).ok().map(|s| s.nats_batch), Some(NatsBatch::Auto));
        assert_eq!(batch("off").ok().map(|s| s.nats_batch), Some(NatsBatch::Off));
        assert!(matches!(batch("on"), Err(ConfigError::Invalid { option: "--nats-batch", .. })));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("--x", "90s").ok(), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("--x", "10m").ok(), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("--x", "1h").ok(), Some(Duration::from_secs(3600)));
        assert!(parse_duration("--x", "soon").is_err());
        assert_eq!(parse_duration("--x", "100y").ok(), Some(Duration::from_secs(3_155_760_000)));
        for too_long in ["101y", "500000000000y"] {
            let err = parse_duration("--publish-timeout", too_long).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("--publish-timeout") && err.contains("at most 100 years"), "{too_long}: {err}");
        }
    }

    #[test]
    fn sync_interval_always_or_a_duration() {
        assert_eq!(parse_sync_interval("2m").ok(), Some(Some(Duration::from_secs(120))));
        assert_eq!(parse_sync_interval("always").ok(), Some(None));
        assert_eq!(parse_sync_interval("0s").ok(), Some(None));
        let err = parse_sync_interval("sometimes").err();
        assert!(matches!(err, Some(ConfigError::Invalid { option: "--nats-sync-interval", .. })), "{err:?}");
        let default = Settings::validate(RawSettings::default()).ok().and_then(|s| s.nats_sync_interval);
        assert_eq!(default, Some(Duration::from_secs(120)));
    }

    #[test]
    fn passwords_are_redacted() {
        let r = redact_url("postgres://alice:s3cret@db:5432/app");
        assert!(!r.contains("s3cret"), "{r}");
        assert!(r.contains("alice"));
        let r = redact_url("host=db user=alice password=s3cret");
        assert!(!r.contains("s3cret"), "{r}");
        let r = redact_url("postgres://db/app?password=s3cret");
        assert!(!r.contains("s3cret"), "{r}");
        let r = redact_url("postgres://alice:s3cret@:x127.0.0.1:notaport/app");
        assert!(!r.contains("s3cret") && r.contains("alice"), "{r}");
    }

    #[test]
    fn table_names() {
        let t = TableName::parse("public.outbox").ok();
        assert_eq!(t.map(|t| t.quoted()), Some("\"public\".\"outbox\"".to_owned()));
        assert_eq!(TableName::parse("events").ok().map(|t| t.schema), Some("public".to_owned()));
        let list = Tables::parse("a.outbox, b.outbox,a.outbox").ok();
        assert_eq!(list.as_ref().map(Tables::len), Some(2), "duplicates removed");
        assert_eq!(list.map(|l| l.quoted()), Some(r#""a"."outbox", "b"."outbox""#.to_owned()));
        assert!(Tables::parse("a.outbox,").is_err(), "an empty name is an error");
        assert_eq!(Tables::parse(" ").map(|t| t.is_empty()).ok(), Some(true), "blank: no table");
        assert!(TableName::parse("a.b.c").is_err());
    }

    #[test]
    fn no_table_needs_a_message_prefix_and_prunes_nothing() {
        let raw = |prefix: Option<&str>, prune: Option<&str>| RawSettings {
            table: String::new(),
            message_prefix: prefix.map(str::to_owned),
            prune_after: prune.map(str::to_owned),
            ..RawSettings::default()
        };
        let option = |r: Result<Settings, ConfigError>| match r {
            Err(ConfigError::Invalid { option, .. }) => Some(option),
            _ => None,
        };
        assert_eq!(option(Settings::validate(raw(None, None))), Some("--table"));
        assert_eq!(option(Settings::validate(raw(Some(""), None))), Some("--table"), "an empty prefix is none");
        assert_eq!(option(Settings::validate(raw(Some("outbox"), Some("1h")))), Some("--prune-after"));
        let ok = Settings::validate(raw(Some("outbox"), None)).ok();
        assert_eq!(ok.map(|s| s.table.is_empty()), Some(true));
        let with_table = RawSettings { prune_after: Some("1h".into()), ..RawSettings::default() };
        assert!(Settings::validate(with_table).is_ok(), "a table and no prefix stays valid");
    }

    #[test]
    fn interoperability_options_are_checked_before_connecting() {
        let option = |f: fn(&mut RawSettings)| {
            let mut raw = RawSettings::default();
            f(&mut raw);
            match Settings::validate(raw) {
                Err(ConfigError::Invalid { option, .. }) => Some(option),
                _ => None,
            }
        };
        assert_eq!(option(|r| r.cloudevents = "json".into()), Some("--cloudevents"));
        assert_eq!(option(|r| r.cloudevents_source = Some(String::new())), Some("--cloudevents-source"));
        assert_eq!(option(|r| r.cloudevents_source = Some("/a b".into())), Some("--cloudevents-source"));
        assert_eq!(option(|r| r.header_columns = Some("trace:Nats-Trace".into())), Some("--header-columns"));
        assert_eq!(option(|r| r.header_columns = Some("ce-id".into())), Some("--header-columns"));
        assert_eq!(option(|r| r.subject = "o.{aggregate_id|partition:0}".into()), Some("--subject"));
        let content_type = |r: &mut RawSettings| r.header_columns = Some("ct:content-type".into());
        assert_eq!(option(content_type), None, "Content-Type is free without CloudEvents");
        assert_eq!(
            option(|r| {
                r.header_columns = Some("ct:content-type".into());
                r.cloudevents = "binary".into();
            }),
            Some("--header-columns")
        );
        let mut raw = RawSettings {
            cloudevents: "structured".into(),
            header_columns: Some("traceparent,tenant_id:Tenant".into()),
            subject: "o.{aggregate_id|partition:16}".into(),
            ..RawSettings::default()
        };
        let s = Settings::validate(raw.clone()).ok();
        assert_eq!(s.as_ref().map(|s| s.cloudevents), Some(crate::mapping::cloudevents::Mode::Structured));
        assert_eq!(s.map(|s| s.header_columns.len()), Some(2));
        raw.cloudevents_source = Some("urn:shop:orders".into());
        assert_eq!(Settings::validate(raw).ok().and_then(|s| s.cloudevents_source).as_deref(), Some("urn:shop:orders"));
    }

    #[test]
    fn layering_file_then_overrides() {
        let dir = std::env::temp_dir().join(format!("walrelay-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let path = dir.join("w.toml");
        std::fs::write(&path, "slot = \"from_file\"\nstream = \"FILE\"\n").ok();
        #[derive(Serialize)]
        struct Over {
            stream: Option<String>,
        }
        let s = Settings::load(Some(&path), &Over { stream: Some("FLAG".into()) });
        let s = s.ok();
        assert_eq!(s.as_ref().map(|s| s.slot.as_str()), Some("from_file"));
        assert_eq!(s.as_ref().map(|s| s.stream.as_str()), Some("FLAG"));
        std::fs::write(&path, "bogus_key = 1\n").ok();
        let err = Settings::load(Some(&path), &Over { stream: None }).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with(&format!("config file {}: unknown key \"bogus_key\";", path.display())), "{err}");
        assert!(err.contains("docs/configuration.md") && !err.contains("default.") && !err.contains('`'), "{err}");
        std::fs::write(&path, "max_in_flight = \"many\"\n").ok();
        let err = Settings::load(Some(&path), &Over { stream: None }).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("key \"max_in_flight\" takes a whole number (e.g. 1024), not string \"many\""), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The config-file keys: [`RawSettings`]' field names, as serde sees them (a deserializer that only records the
    /// fields it is asked for).
    fn config_keys() -> Vec<&'static str> {
        struct Fields(Vec<&'static str>);
        impl<'de> serde::Deserializer<'de> for &mut Fields {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(serde::de::Error::custom("fields only"))
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0.extend_from_slice(fields);
                Err(serde::de::Error::custom("fields only"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
                unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
            }
        }
        let mut fields = Fields(Vec::new());
        let _ = RawSettings::deserialize(&mut fields);
        fields.0
    }

    /// `deploy/walrelay.example.toml` loads, names every config key (commented out or not) and no other, and shows
    /// each key's default where it has one.
    #[test]
    fn the_example_config_file_names_every_key_with_its_default() {
        let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/walrelay.example.toml"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(!text.is_empty(), "cannot read {}", path.display());
        #[derive(Serialize)]
        struct NoOverrides {}
        if let Err(err) = Settings::load(Some(&path), &NoOverrides {}) {
            panic!("{} does not load: {err}", path.display());
        }
        // `key = value` lines, commented out or not, as TOML.
        let entries: Vec<(String, String)> = text
            .lines()
            .filter_map(|line| {
                let line = line.trim_start_matches('#').trim();
                let (key, _) = line.split_once('=')?;
                let key = key.trim();
                let is_key = !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_');
                is_key.then(|| (key.to_owned(), line.to_owned()))
            })
            .collect();
        let named: std::collections::BTreeSet<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        let keys = config_keys();
        let missing: Vec<&str> = keys.iter().copied().filter(|k| !named.contains(k)).collect();
        assert!(
            missing.is_empty(),
            "{} does not name the config key(s) {missing:?}: add each, commented out, with its default and a line \
             saying what it does",
            path.display()
        );
        let unknown: Vec<&str> = named.iter().copied().filter(|k| !keys.contains(k)).collect();
        assert!(unknown.is_empty(), "{} names unknown key(s) {unknown:?}", path.display());
        let defaults = Figment::from(Serialized::defaults(RawSettings::default()));
        for (key, line) in &entries {
            let default = defaults.extract_inner::<serde_json::Value>(key).unwrap_or_default();
            if default.is_null() {
                continue; // off by default: the line shows an example
            }
            let shown = Figment::from(Toml::string(line)).extract_inner::<serde_json::Value>(key);
            assert_eq!(shown.ok(), Some(default), "{}: `{line}` is not the default of {key}", path.display());
        }
    }
}
