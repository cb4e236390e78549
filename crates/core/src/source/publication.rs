//! Publications and the outbox table: make sure the slot will see the outbox's inserts, and only those.
//!
//! In: a control-plane SQL connection and the configured tables. Out: a publication
//! `FOR TABLE <outbox> WITH (publish = 'insert')` ([`create_statement`]), and the tables' columns for validating the
//! mapping. With `--table ''` (messages only) the publication holds no table: pgoutput still sends the logical
//! decoding messages of its transactions (`messages 'true'`), which is all there is to relay.
//! See <https://www.postgresql.org/docs/current/sql-createpublication.html>.

use tokio_postgres::Client;

use crate::{
    config::{quote_ident, TableName, Tables},
    source::SourceError,
};

/// A column of the outbox table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumn {
    /// Column name.
    pub name: String,
    /// Type name as `format_type` prints it.
    pub type_name: String,
    /// Whether it is part of the primary key.
    pub primary_key: bool,
}

/// The table's columns in order, or `MissingTable`.
pub async fn table_columns(client: &Client, table: &TableName) -> Result<Vec<TableColumn>, SourceError> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    COALESCE(a.attnum = ANY(i.indkey), false) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
             ORDER BY a.attnum",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(|e| SourceError::query(format!("reading columns of {table}"), e))?;
    if rows.is_empty() {
        return Err(SourceError::MissingTable { table: table.to_string() });
    }
    Ok(rows.iter().map(|r| TableColumn { name: r.get(0), type_name: r.get(1), primary_key: r.get(2) }).collect())
}

/// What a publication holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationInfo {
    /// Whether it publishes inserts.
    pub inserts: bool,
    /// Whether it is `FOR ALL TABLES`.
    pub all_tables: bool,
    /// Whether it contains every outbox table.
    pub has_table: bool,
}

/// Reads a publication, `None` when it does not exist.
pub async fn info(client: &Client, publication: &str, tables: &Tables) -> Result<Option<PublicationInfo>, SourceError> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let row = client
        .query_opt(
            "SELECT p.pubinsert, p.puballtables, (SELECT count(*) FROM pg_publication_tables t \
                 WHERE t.pubname = p.pubname AND (t.schemaname::text, t.tablename::text) IN \
                 (SELECT * FROM unnest($2::text[], $3::text[]))) = cardinality($2::text[]) \
             FROM pg_publication p WHERE p.pubname = $1",
            &[&publication, &schemas, &names],
        )
        .await
        .map_err(|e| SourceError::query(format!("reading publication {publication}"), e))?;
    Ok(row.map(|r| PublicationInfo { inserts: r.get(0), all_tables: r.get(1), has_table: r.get(2) }))
}

/// Creates the publication if missing (inserts only, every outbox table); returns whether it was created.
pub async fn ensure(client: &Client, publication: &str, tables: &Tables) -> Result<bool, SourceError> {
    match info(client, publication, tables).await? {
        Some(p) => {
            if !p.has_table {
                tracing::warn!(publication, table = %tables, "publication does not contain every outbox table; the events of those missing will not be relayed");
            }
            if !p.inserts {
                tracing::warn!(publication, "publication does not publish inserts; nothing will be relayed");
            }
            Ok(false)
        }
        None => {
            if let Some(rights) = lacking_for_create(&all_rights(client, tables).await?) {
                return Err(SourceError::Query {
                    context: format!("creating publication {publication}"),
                    reason: format!(
                        "{} cannot create it ({}); {}",
                        rights.role,
                        rights.missing_for_publication().join(", "),
                        create_remedy(publication, tables, rights)
                    ),
                    code: Some("42501".into()),
                });
            }
            let sql = create_statement(publication, &tables.quoted());
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| SourceError::query(format!("creating publication {publication}"), e))?;
            Ok(true)
        }
    }
}

/// The one `CREATE PUBLICATION` statement walrelay runs or tells an operator to run: inserts only, of `tables`
/// (SQL-quoted and comma-separated, as [`Tables::quoted`] gives them), or of no table when `tables` is empty.
pub fn create_statement(publication: &str, tables: &str) -> String {
    let for_tables = if tables.is_empty() { String::new() } else { format!(" FOR TABLE {tables}") };
    format!("CREATE PUBLICATION {}{for_tables} WITH (publish = 'insert')", quote_ident(publication))
}

/// What the connected role may do with the outbox table (design: `docs/security.md`, least-privilege role).
#[derive(Debug, Clone)]
pub struct Rights {
    /// The role (`current_user`).
    pub role: String,
    /// The database.
    pub database: String,
    /// The table these rights are on (`None`: the role's own, for a publication of no table).
    pub table: Option<TableName>,
    /// The table's owner, when the table exists.
    pub owner: Option<String>,
    /// Superuser.
    pub superuser: bool,
    /// CREATE on the database (needed to create a publication).
    pub create_on_database: bool,
    /// Owns the table, directly or through a role it is a member of (needed to add it to a publication); true when
    /// there is no table.
    pub owns_table: bool,
    /// SELECT on the table.
    pub select: bool,
}

impl Rights {
    /// Whether `CREATE PUBLICATION ... FOR TABLE` would be allowed.
    pub fn can_create_publication(&self) -> bool {
        self.superuser || (self.create_on_database && self.owns_table)
    }

    /// The rights `CREATE PUBLICATION` lacks, in words.
    pub fn missing_for_publication(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if !self.superuser && !self.create_on_database {
            missing.push(format!("no CREATE on database {}", self.database));
        }
        if !self.superuser && !self.owns_table {
            let table = self.table.as_ref().map_or_else(|| "the table".to_owned(), ToString::to_string);
            missing.push(format!("not the owner of {table} (owned by {})", self.owner.as_deref().unwrap_or("?")));
        }
        missing
    }
}

/// The role's rights on each outbox table, or its own rights once for a messages-only publication (no table).
pub async fn all_rights(client: &Client, tables: &Tables) -> Result<Vec<Rights>, SourceError> {
    if tables.is_empty() {
        return Ok(vec![rights(client, None).await?]);
    }
    let mut all = Vec::new();
    for table in tables.iter() {
        all.push(rights(client, Some(table)).await?);
    }
    Ok(all)
}

/// Of [`all_rights`], those that keep `CREATE PUBLICATION` from being allowed, if any: the one decision of setup
/// and doctor.
pub fn lacking_for_create(all: &[Rights]) -> Option<&Rights> {
    all.iter().find(|r| !r.can_create_publication())
}

/// Reads what the connected role may do with `table` (`None`: no table, only the role's own rights).
pub async fn rights(client: &Client, table: Option<&TableName>) -> Result<Rights, SourceError> {
    let (schema, name) = table.map_or(("", ""), |t| (t.schema.as_str(), t.name.as_str()));
    let qualified = table.map(TableName::quoted).unwrap_or_default();
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text,                     (SELECT tableowner::text FROM pg_tables WHERE schemaname = $1 AND tablename = $2),                     (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),                     has_database_privilege(current_database(), 'CREATE'),                     COALESCE((SELECT pg_has_role(tableowner, 'USAGE') FROM pg_tables                               WHERE schemaname = $1 AND tablename = $2), false),                     COALESCE((SELECT has_table_privilege(c.oid, 'SELECT') FROM pg_class c                               WHERE c.oid = to_regclass(NULLIF($3, ''))), false)",
            &[&schema, &name, &qualified],
        )
        .await
        .map_err(|e| SourceError::query("reading the role's privileges", e))?;
    Ok(Rights {
        role: row.get(0),
        database: row.get(1),
        table: table.cloned(),
        owner: row.get(2),
        superuser: row.get::<_, Option<bool>>(3).unwrap_or(false),
        create_on_database: row.get(4),
        owns_table: table.is_none() || row.get::<_, bool>(5),
        select: row.get(6),
    })
}

/// How to get the publication created without giving the relay's role more rights: the table's owner creates it
/// (with no table: a role with CREATE on the database).
pub fn create_remedy(publication: &str, tables: &Tables, rights: &Rights) -> String {
    let statement = create_statement(publication, &tables.quoted());
    let (database, role) = (quote_ident(&rights.database), quote_ident(&rights.role));
    match rights.table {
        None => format!(
            "have a superuser or a role with CREATE on database {} run: {statement}; (or GRANT CREATE ON DATABASE \
             {database} TO {role}), then run walrelay setup again",
            rights.database
        ),
        Some(_) => format!(
            "have the table's owner ({}) or a superuser run: {statement}; (or GRANT CREATE ON DATABASE {database} \
             TO {role} and make {role} the table's owner), then run walrelay setup again",
            rights.owner.as_deref().unwrap_or("?"),
        ),
    }
}

/// Drops the publication if it exists.
pub async fn drop(client: &Client, publication: &str) -> Result<(), SourceError> {
    let sql = format!("DROP PUBLICATION IF EXISTS {}", quote_ident(publication));
    client.batch_execute(&sql).await.map_err(|e| SourceError::query(format!("dropping publication {publication}"), e))
}

/// The one check of the outbox tables (run, setup): each exists and has the payload column, every column the
/// subject template names and every `--header-columns` column.
pub async fn check_table(
    control: &tokio_postgres::Client,
    settings: &crate::config::Settings,
) -> Result<(), SourceError> {
    for table in settings.table.iter() {
        check_one_table(control, settings, table).await?;
    }
    Ok(())
}

async fn check_one_table(
    control: &tokio_postgres::Client,
    settings: &crate::config::Settings,
    table: &TableName,
) -> Result<(), SourceError> {
    let columns = table_columns(control, table).await?;
    let has = |name: &str| columns.iter().any(|c| c.name == name);
    let missing = |column: &str, purpose: &str, option: &str| SourceError::MissingColumn {
        table: table.to_string(),
        column: column.to_owned(),
        purpose: purpose.to_owned(),
        option: option.to_owned(),
    };
    if !has(&settings.columns.payload) {
        return Err(missing(&settings.columns.payload, "the message data", "--payload-column"));
    }
    for column in settings.subject.columns() {
        if !has(column) {
            return Err(missing(column, "the subject template", "--subject"));
        }
    }
    for h in &settings.header_columns {
        if !has(&h.column) {
            return Err(missing(&h.column, "a header column", "--header-columns"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::create_statement;
    use crate::config::Tables;

    #[test]
    fn create_statement_names_the_tables_or_none() {
        let tables = Tables::parse("public.outbox, billing.outbox").ok().map(|t| t.quoted()).unwrap_or_default();
        assert_eq!(
            create_statement("walrelay", &tables),
            r#"CREATE PUBLICATION "walrelay" FOR TABLE "public"."outbox", "billing"."outbox" WITH (publish = 'insert')"#
        );
        let none = Tables::parse("").ok().map(|t| t.quoted());
        assert_eq!(none.as_deref(), Some(""));
        assert_eq!(create_statement("walrelay", ""), r#"CREATE PUBLICATION "walrelay" WITH (publish = 'insert')"#);
    }
}
