//! Start-up of capture: check that the database can be captured, then create
//! what is missing — the publication, the state schema `extsync` — and read
//! the replication slot's position.
//!
//! ```text
//!  pipeline.postgres ──► checks (wal_level, role, tables, identity, slot) ──► Plan
//!                           └─ every problem: one line naming the fix
//! ```

use std::str::FromStr;

use tokio_postgres::{Client, NoTls};

use super::error::{CaptureError, SetupProblem};
use super::values::SESSION_SETTINGS;
use crate::config::{NumericEncoding, OwnWrites, Pipeline};
use crate::kafka::Topics;

/// Schema holding capture's own state in the captured database.
pub const STATE_SCHEMA: &str = "extsync";

/// Resolved capture settings of one pipeline.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pipeline: String,
    pub url: String,
    pub tables: Vec<(String, String)>,
    pub schemas: Vec<String>,
    pub publication: String,
    pub slot: String,
    pub origin: String,
    pub own_writes: OwnWrites,
    pub numeric: NumericEncoding,
    pub snapshot: bool,
    pub heartbeat_secs: u64,
    pub transaction_events: bool,
    pub max_in_flight_bytes: u64,
    pub topics: Topics,
    /// Partitions of the table topics capture creates.
    pub partitions: i32,
}

/// `extsync_<name>` with characters slot names do not allow replaced.
pub fn default_object_name(pipeline: &str) -> String {
    format!("extsync_{}", pipeline.replace('-', "_"))
}

impl Settings {
    pub fn from_pipeline(p: &Pipeline) -> Result<Self, CaptureError> {
        let pg = &p.postgres;
        Ok(Settings {
            pipeline: p.name.as_str().to_string(),
            url: pg.url.resolve()?,
            tables: pg
                .tables
                .iter()
                .map(|t| (t.schema().to_string(), t.table().to_string()))
                .collect(),
            schemas: pg.schemas.clone(),
            publication: pg
                .publication
                .clone()
                .unwrap_or_else(|| default_object_name(p.name.as_str())),
            slot: pg
                .slot
                .clone()
                .unwrap_or_else(|| default_object_name(p.name.as_str())),
            origin: pg.origin.clone(),
            own_writes: pg.own_writes,
            numeric: pg.numeric,
            snapshot: pg.snapshot,
            heartbeat_secs: pg.heartbeat_secs,
            transaction_events: pg.transaction_events,
            max_in_flight_bytes: pg.max_in_flight_bytes,
            topics: Topics::new(p.kafka.topic_prefix.clone()),
            partitions: i32::from(p.kafka.partitions),
        })
    }
}

/// A table that capture publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedTable {
    pub oid: u32,
    pub schema: String,
    pub name: String,
}

impl CapturedTable {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// The replication slot as found at start.
#[derive(Debug, Clone, Copy)]
pub struct SlotState {
    pub confirmed_flush: u64,
}

/// What start-up found and prepared.
#[derive(Debug)]
pub struct Plan {
    pub database: String,
    pub tables: Vec<CapturedTable>,
    pub slot: Option<SlotState>,
}

/// `"name"` with inner quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Parses PostgreSQL's `X/Y` LSN text.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Opens an SQL connection with capture's session settings.
pub async fn connect(url: &str) -> Result<Client, CaptureError> {
    let cfg = tokio_postgres::Config::from_str(url).map_err(CaptureError::Url)?;
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .map_err(|e| CaptureError::sql("connecting to PostgreSQL", e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    let set: String = SESSION_SETTINGS
        .iter()
        .map(|(k, v)| format!("SET {k} = '{v}';"))
        .collect();
    client
        .batch_execute(&set)
        .await
        .map_err(|e| CaptureError::sql("applying session settings", e))?;
    Ok(client)
}

/// The `wal_level` problem, if any.
pub fn check_wal_level(value: &str) -> Option<SetupProblem> {
    (value != "logical").then(|| SetupProblem {
        subject: "wal_level".into(),
        message: format!(
            "is '{value}', logical replication needs 'logical': run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL"
        ),
    })
}

fn problem(subject: impl Into<String>, message: impl Into<String>) -> SetupProblem {
    SetupProblem {
        subject: subject.into(),
        message: message.into(),
    }
}

/// Checks the database, creates the publication and state schema when
/// missing, and reads the slot. Collects every problem before failing.
pub async fn prepare(sql: &Client, s: &Settings) -> Result<Plan, CaptureError> {
    let e = |ctx| move |err| CaptureError::sql(ctx, err);
    let mut problems = Vec::new();

    let wal: String = sql
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(e("reading wal_level"))?
        .get(0);
    problems.extend(check_wal_level(&wal));

    let row = sql
        .query_one(
            "SELECT current_user::text, current_database()::text, r.rolreplication, r.rolsuper, \
                    has_database_privilege(current_database(), 'CREATE') \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(e("reading the role"))?;
    let (role, database): (String, String) = (row.get(0), row.get(1));
    let (replication, superuser, can_create): (bool, bool, bool) =
        (row.get(2), row.get(3), row.get(4));
    if !replication && !superuser {
        problems.push(problem(
            format!("role {role}"),
            format!("lacks the REPLICATION attribute needed to stream changes: run ALTER ROLE {} WITH REPLICATION;", quote_ident(&role)),
        ));
    }

    if s.tables.is_empty() && s.schemas.is_empty() {
        problems.push(problem(
            "postgres",
            "tables and schemas are both empty: list tables (schema.table) or schemas to capture",
        ));
    }
    if s.schemas.iter().any(|x| x == STATE_SCHEMA) {
        problems.push(problem(
            format!("schema {STATE_SCHEMA}"),
            "holds capture's own state and cannot be captured: remove it from postgres.schemas",
        ));
    }

    // The tables to capture, with what the checks need.
    let mut found = Vec::new();
    let query = "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text, \
                        has_table_privilege(c.oid, 'SELECT'), pg_has_role(c.relowner, 'USAGE'), \
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND ";
    for (schema, table) in &s.tables {
        let rows = sql
            .query(
                &format!("{query} n.nspname = $1 AND c.relname = $2"),
                &[schema, table],
            )
            .await
            .map_err(e("looking up tables"))?;
        if rows.is_empty() {
            problems.push(problem(
                format!("table {schema}.{table}"),
                "does not exist: create it or remove it from postgres.tables",
            ));
        }
        found.extend(rows);
    }
    for schema in &s.schemas {
        let exists = sql
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[schema])
            .await
            .map_err(e("looking up schemas"))?
            .is_some();
        if !exists {
            problems.push(problem(
                format!("schema {schema}"),
                "does not exist: create it or remove it from postgres.schemas",
            ));
            continue;
        }
        found.extend(
            sql.query(
                &format!("{query} n.nspname = $1 ORDER BY c.relname"),
                &[schema],
            )
            .await
            .map_err(e("listing tables"))?,
        );
    }

    let pub_exists = sql
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&s.publication],
        )
        .await
        .map_err(e("reading the publication"))?
        .is_some();
    let published: Vec<(String, String)> = sql
        .query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1", &[&s.publication])
        .await
        .map_err(e("reading the publication"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    let mut tables = Vec::new();
    for r in found {
        let t = CapturedTable {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
        };
        let identity: String = r.get(3);
        let (select, owner, has_pk): (bool, bool, bool) = (r.get(4), r.get(5), r.get(6));
        let q = t.quoted();
        if !select {
            problems.push(problem(
                format!("table {}", t.qualified()),
                format!("role {role} cannot read it (needed for the snapshot): run GRANT SELECT ON {q} TO {};", quote_ident(&role)),
            ));
        }
        match identity.as_str() {
            "n" => problems.push(problem(
                format!("table {}", t.qualified()),
                format!("has REPLICA IDENTITY NOTHING: updates and deletes can't be captured; run ALTER TABLE {q} REPLICA IDENTITY DEFAULT; (with a primary key) or ALTER TABLE {q} REPLICA IDENTITY FULL;"),
            )),
            "d" if !has_pk => problems.push(problem(
                format!("table {}", t.qualified()),
                format!("has no primary key and no replica identity: updates and deletes can't be captured; add a primary key or run ALTER TABLE {q} REPLICA IDENTITY FULL;"),
            )),
            _ => {}
        }
        let in_pub = published
            .iter()
            .any(|(a, b)| *a == t.schema && *b == t.name);
        if !in_pub && !owner && !superuser {
            problems.push(problem(
                format!("table {}", t.qualified()),
                format!(
                    "must be added to publication {} but role {role} does not own it: have its owner run ALTER PUBLICATION {} ADD TABLE {q}; (or CREATE PUBLICATION … FOR TABLE {q})",
                    s.publication,
                    quote_ident(&s.publication)
                ),
            ));
        }
        tables.push(t);
    }
    if !pub_exists && !can_create && !superuser {
        problems.push(problem(
            format!("publication {}", s.publication),
            format!("does not exist and role {role} may not create it: run GRANT CREATE ON DATABASE {} TO {};", quote_ident(&database), quote_ident(&role)),
        ));
    }
    let state_exists = sql
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&STATE_SCHEMA],
        )
        .await
        .map_err(e("reading the state schema"))?
        .is_some();
    if !state_exists && !can_create && !superuser {
        problems.push(problem(
            format!("schema {STATE_SCHEMA}"),
            format!("holds snapshot progress and role {role} may not create it: run GRANT CREATE ON DATABASE {} TO {};", quote_ident(&database), quote_ident(&role)),
        ));
    }

    let slot_row = sql
        .query_opt(
            "SELECT plugin::text, database::text, active_pid, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&s.slot],
        )
        .await
        .map_err(e("reading the replication slot"))?;
    let mut slot = None;
    match slot_row {
        Some(r) => {
            let plugin: Option<String> = r.get(0);
            let db: Option<String> = r.get(1);
            let pid: Option<i32> = r.get(2);
            let flush: Option<String> = r.get(3);
            if plugin.as_deref() != Some("pgoutput") || db.as_deref() != Some(database.as_str()) {
                problems.push(problem(
                    format!("replication slot {}", s.slot),
                    format!(
                        "exists but is not a pgoutput slot of database {database} (plugin {}, database {}): drop it with SELECT pg_drop_replication_slot('{}'); or set postgres.slot to another name",
                        plugin.as_deref().unwrap_or("none"),
                        db.as_deref().unwrap_or("none"),
                        s.slot
                    ),
                ));
            } else if let Some(pid) = pid {
                problems.push(problem(
                    format!("replication slot {}", s.slot),
                    format!("is in use by process {pid} (another capture of this pipeline?): stop it first; a slot has one reader"),
                ));
            }
            slot = flush
                .as_deref()
                .and_then(parse_lsn)
                .map(|confirmed_flush| SlotState { confirmed_flush });
        }
        None => {
            let r = sql
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_replication_slots), current_setting('max_replication_slots')::bigint",
                    &[],
                )
                .await
                .map_err(e("counting replication slots"))?;
            let (used, max): (i64, i64) = (r.get(0), r.get(1));
            if used >= max {
                problems.push(problem(
                    format!("replication slot {}", s.slot),
                    format!("cannot be created: all {max} slots are used; drop unused ones or raise max_replication_slots and restart PostgreSQL"),
                ));
            }
        }
    }

    if !problems.is_empty() {
        return Err(CaptureError::Setup(problems));
    }

    // Create what is missing.
    if !pub_exists {
        let target = if !s.schemas.is_empty() {
            format!(
                "TABLES IN SCHEMA {}",
                s.schemas
                    .iter()
                    .map(|x| quote_ident(x))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!(
                "TABLE {}",
                tables
                    .iter()
                    .map(CapturedTable::quoted)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        sql.batch_execute(&format!(
            "CREATE PUBLICATION {} FOR {target}",
            quote_ident(&s.publication)
        ))
        .await
        .map_err(e("creating the publication"))?;
        tracing::info!(publication = %s.publication, tables = tables.len(), "created publication");
    } else {
        for t in &tables {
            if !published
                .iter()
                .any(|(a, b)| *a == t.schema && *b == t.name)
            {
                sql.batch_execute(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(&s.publication),
                    t.quoted()
                ))
                .await
                .map_err(e("adding a table to the publication"))?;
                tracing::info!(publication = %s.publication, table = %t.qualified(), "added table to publication");
            }
        }
    }
    // The lock is taken in its own statement so that the DDL below runs in a
    // transaction that starts after the lock holder committed; inside one
    // transaction the catalog could still miss a schema created meanwhile.
    let lock = crate::store::MIGRATION_LOCK;
    sql.execute("SELECT pg_advisory_lock($1)", &[&lock])
        .await
        .map_err(e("locking the state schema"))?;
    let created = sql
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA};
         CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.capture_snapshots (
             slot_name  text NOT NULL,
             table_name text NOT NULL,
             status     text NOT NULL CHECK (status IN ('pending', 'done')),
             last_key   text[],
             rows       bigint NOT NULL DEFAULT 0,
             updated_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (slot_name, table_name));"
        ))
        .await;
    sql.execute("SELECT pg_advisory_unlock($1)", &[&lock])
        .await
        .map_err(e("unlocking the state schema"))?;
    created.map_err(e("creating the state schema"))?;

    Ok(Plan {
        database,
        tables,
        slot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_level_problem_names_the_fix() {
        assert!(check_wal_level("logical").is_none());
        let p = check_wal_level("replica").unwrap();
        assert!(
            p.to_string()
                .contains("ALTER SYSTEM SET wal_level = logical"),
            "{p}"
        );
    }

    #[test]
    fn lsn_roundtrip() {
        assert_eq!(parse_lsn("1/A0"), Some(0x1_0000_00A0));
        assert_eq!(parse_lsn("x"), None);
    }
}
