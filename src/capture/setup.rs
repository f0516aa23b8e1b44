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
use crate::sql::{quote_ident, quote_table};

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
        quote_table(&self.schema, &self.name)
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
    let mut problems = Vec::new();
    let wal: String = sql
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(failed("reading wal_level"))?
        .get(0);
    problems.extend(check_wal_level(&wal));
    let role = Role::read(sql).await?;
    problems.extend(role.replication_problem());
    problems.extend(selection_problems(s));

    let found = find_tables(sql, s, &mut problems).await?;
    let publication = Publication::read(sql, &s.publication).await?;
    let mut tables = Vec::with_capacity(found.len());
    for f in found {
        problems.extend(f.problems(&role, &publication, s));
        tables.push(f.table);
    }
    if !publication.exists && !role.may_create() {
        problems.push(problem(
            format!("publication {}", s.publication),
            format!(
                "does not exist and role {} may not create it: {}",
                role.name,
                role.grant_create()
            ),
        ));
    }
    let state_exists = sql
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&STATE_SCHEMA],
        )
        .await
        .map_err(failed("reading the state schema"))?
        .is_some();
    if !state_exists && !role.may_create() {
        problems.push(problem(
            format!("schema {STATE_SCHEMA}"),
            format!(
                "holds snapshot progress and role {} may not create it: {}",
                role.name,
                role.grant_create()
            ),
        ));
    }
    let (slot, reader) = read_slot(sql, s, &role.database, &mut problems).await?;
    if !problems.is_empty() {
        return Err(CaptureError::Setup(problems));
    }
    if let Some(pid) = reader {
        return Err(CaptureError::SlotInUse {
            slot: s.slot.clone(),
            pid,
        });
    }

    publish(sql, s, &publication, &tables).await?;
    create_state_schema(sql).await?;
    Ok(Plan {
        database: role.database,
        tables,
        slot,
    })
}

/// Maps an SQL error to a capture error saying what was being done.
fn failed(ctx: &'static str) -> impl Fn(tokio_postgres::Error) -> CaptureError {
    move |err| CaptureError::sql(ctx, err)
}

/// The connecting role and what it may do.
struct Role {
    name: String,
    database: String,
    replication: bool,
    superuser: bool,
    can_create: bool,
}

impl Role {
    async fn read(sql: &Client) -> Result<Role, CaptureError> {
        let row = sql
            .query_one(
                "SELECT current_user::text, current_database()::text, r.rolreplication, r.rolsuper, \
                        has_database_privilege(current_database(), 'CREATE') \
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await
            .map_err(failed("reading the role"))?;
        Ok(Role {
            name: row.get(0),
            database: row.get(1),
            replication: row.get(2),
            superuser: row.get(3),
            can_create: row.get(4),
        })
    }

    fn replication_problem(&self) -> Option<SetupProblem> {
        (!self.replication && !self.superuser).then(|| problem(
            format!("role {}", self.name),
            format!("lacks the REPLICATION attribute needed to stream changes: run ALTER ROLE {} WITH REPLICATION;", quote_ident(&self.name)),
        ))
    }

    /// May create schemas and publications in the database.
    fn may_create(&self) -> bool {
        self.can_create || self.superuser
    }

    /// The statement that lets the role create them.
    fn grant_create(&self) -> String {
        format!(
            "run GRANT CREATE ON DATABASE {} TO {};",
            quote_ident(&self.database),
            quote_ident(&self.name)
        )
    }
}

/// Problems of the configured selection itself.
fn selection_problems(s: &Settings) -> Vec<SetupProblem> {
    let mut problems = Vec::new();
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
    problems
}

/// A table to capture, with what the checks need.
struct FoundTable {
    table: CapturedTable,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    identity: String,
    can_select: bool,
    owned: bool,
    has_pk: bool,
}

impl FoundTable {
    fn from_row(r: &tokio_postgres::Row) -> FoundTable {
        FoundTable {
            table: CapturedTable {
                oid: r.get(0),
                schema: r.get(1),
                name: r.get(2),
            },
            identity: r.get(3),
            can_select: r.get(4),
            owned: r.get(5),
            has_pk: r.get(6),
        }
    }

    /// What keeps the table from being captured: reading, replica identity,
    /// joining the publication.
    fn problems(&self, role: &Role, publication: &Publication, s: &Settings) -> Vec<SetupProblem> {
        let t = &self.table;
        let subject = || format!("table {}", t.qualified());
        let q = t.quoted();
        let mut problems = Vec::new();
        if !self.can_select {
            problems.push(problem(
                subject(),
                format!("role {} cannot read it (needed for the snapshot): run GRANT SELECT ON {q} TO {};", role.name, quote_ident(&role.name)),
            ));
        }
        match self.identity.as_str() {
            "n" => problems.push(problem(
                subject(),
                format!("has REPLICA IDENTITY NOTHING: updates and deletes can't be captured; run ALTER TABLE {q} REPLICA IDENTITY DEFAULT; (with a primary key) or ALTER TABLE {q} REPLICA IDENTITY FULL;"),
            )),
            "d" if !self.has_pk => problems.push(problem(
                subject(),
                format!("has no primary key and no replica identity: updates and deletes can't be captured; add a primary key or run ALTER TABLE {q} REPLICA IDENTITY FULL;"),
            )),
            _ => {}
        }
        if !publication.has(t) && !self.owned && !role.superuser {
            problems.push(problem(
                subject(),
                format!(
                    "must be added to publication {} but role {} does not own it: have its owner run ALTER PUBLICATION {} ADD TABLE {q}; (or CREATE PUBLICATION … FOR TABLE {q})",
                    s.publication,
                    role.name,
                    quote_ident(&s.publication)
                ),
            ));
        }
        problems
    }
}

/// The configured tables and the tables of the configured schemas; one that
/// does not exist is a problem.
async fn find_tables(
    sql: &Client,
    s: &Settings,
    problems: &mut Vec<SetupProblem>,
) -> Result<Vec<FoundTable>, CaptureError> {
    let query = "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text, \
                        has_table_privilege(c.oid, 'SELECT'), pg_has_role(c.relowner, 'USAGE'), \
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND ";
    let mut found = Vec::new();
    for (schema, table) in &s.tables {
        let rows = sql
            .query(
                &format!("{query} n.nspname = $1 AND c.relname = $2"),
                &[schema, table],
            )
            .await
            .map_err(failed("looking up tables"))?;
        if rows.is_empty() {
            problems.push(problem(
                format!("table {schema}.{table}"),
                "does not exist: create it or remove it from postgres.tables",
            ));
        }
        found.extend(rows.iter().map(FoundTable::from_row));
    }
    for schema in &s.schemas {
        let exists = sql
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[schema])
            .await
            .map_err(failed("looking up schemas"))?
            .is_some();
        if !exists {
            problems.push(problem(
                format!("schema {schema}"),
                "does not exist: create it or remove it from postgres.schemas",
            ));
            continue;
        }
        let rows = sql
            .query(
                &format!("{query} n.nspname = $1 ORDER BY c.relname"),
                &[schema],
            )
            .await
            .map_err(failed("listing tables"))?;
        found.extend(rows.iter().map(FoundTable::from_row));
    }
    Ok(found)
}

/// The publication as found: whether it exists, and its tables.
struct Publication {
    exists: bool,
    tables: Vec<(String, String)>,
}

impl Publication {
    async fn read(sql: &Client, name: &str) -> Result<Publication, CaptureError> {
        let exists = sql
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
            .await
            .map_err(failed("reading the publication"))?
            .is_some();
        let tables = sql
            .query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1", &[&name])
            .await
            .map_err(failed("reading the publication"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(Publication { exists, tables })
    }

    fn has(&self, t: &CapturedTable) -> bool {
        self.tables
            .iter()
            .any(|(schema, name)| *schema == t.schema && *name == t.name)
    }
}

/// The slot as found: its position, when it exists, and the process
/// reading it, when one is. A slot of another kind or database, one that
/// lost WAL it needed, or no free slot to create is a problem.
async fn read_slot(
    sql: &Client,
    s: &Settings,
    database: &str,
    problems: &mut Vec<SetupProblem>,
) -> Result<(Option<SlotState>, Option<i32>), CaptureError> {
    let subject = || format!("replication slot {}", s.slot);
    let row = sql
        .query_opt(
            "SELECT plugin::text, database::text, active_pid, confirmed_flush_lsn::text, wal_status
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&s.slot],
        )
        .await
        .map_err(failed("reading the replication slot"))?;
    let Some(r) = row else {
        let r = sql
            .query_one(
                "SELECT (SELECT count(*) FROM pg_replication_slots), current_setting('max_replication_slots')::bigint",
                &[],
            )
            .await
            .map_err(failed("counting replication slots"))?;
        let (used, max): (i64, i64) = (r.get(0), r.get(1));
        if used >= max {
            problems.push(problem(
                subject(),
                format!("cannot be created: all {max} slots are used; drop unused ones or raise max_replication_slots and restart PostgreSQL"),
            ));
        }
        return Ok((None, None));
    };
    let plugin: Option<String> = r.get(0);
    let db: Option<String> = r.get(1);
    let pid: Option<i32> = r.get(2);
    let flush: Option<String> = r.get(3);
    let wal_status: Option<String> = r.get(4);
    if plugin.as_deref() != Some("pgoutput") || db.as_deref() != Some(database) {
        problems.push(problem(
            subject(),
            format!(
                "exists but is not a pgoutput slot of database {database} (plugin {}, database {}): drop it with SELECT pg_drop_replication_slot('{}'); or set postgres.slot to another name",
                plugin.as_deref().unwrap_or("none"),
                db.as_deref().unwrap_or("none"),
                s.slot
            ),
        ));
    } else if wal_status.as_deref() == Some("lost") {
        problems.push(problem(
            subject(),
            format!(
                "lost WAL it needed (it fell more than max_slot_wal_keep_size behind), so changes made since {} were not captured: drop it with SELECT pg_drop_replication_slot('{}'); and start again, which takes a new initial snapshot",
                flush.as_deref().unwrap_or("its last position"),
                s.slot
            ),
        ));
    }
    let position = flush
        .as_deref()
        .and_then(parse_lsn)
        .map(|confirmed_flush| SlotState { confirmed_flush });
    Ok((position, pid))
}

/// Creates the publication, or adds the tables it lacks.
async fn publish(
    sql: &Client,
    s: &Settings,
    publication: &Publication,
    tables: &[CapturedTable],
) -> Result<(), CaptureError> {
    let name = quote_ident(&s.publication);
    if !publication.exists {
        let target = if !s.schemas.is_empty() {
            let schemas: Vec<String> = s.schemas.iter().map(|x| quote_ident(x)).collect();
            format!("TABLES IN SCHEMA {}", schemas.join(", "))
        } else {
            let names: Vec<String> = tables.iter().map(CapturedTable::quoted).collect();
            format!("TABLE {}", names.join(", "))
        };
        sql.batch_execute(&format!("CREATE PUBLICATION {name} FOR {target}"))
            .await
            .map_err(failed("creating the publication"))?;
        tracing::info!(publication = %s.publication, tables = tables.len(), "created publication");
        return Ok(());
    }
    for t in tables.iter().filter(|t| !publication.has(t)) {
        sql.batch_execute(&format!(
            "ALTER PUBLICATION {name} ADD TABLE {}",
            t.quoted()
        ))
        .await
        .map_err(failed("adding a table to the publication"))?;
        tracing::info!(publication = %s.publication, table = %t.qualified(), "added table to publication");
    }
    Ok(())
}

/// Creates the state schema and its snapshot progress table when missing.
async fn create_state_schema(sql: &Client) -> Result<(), CaptureError> {
    // The lock is taken in its own statement so that the DDL below runs in a
    // transaction that starts after the lock holder committed; inside one
    // transaction the catalog could still miss a schema created meanwhile.
    let lock = crate::store::MIGRATION_LOCK;
    sql.execute("SELECT pg_advisory_lock($1)", &[&lock])
        .await
        .map_err(failed("locking the state schema"))?;
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
        .map_err(failed("unlocking the state schema"))?;
    created.map_err(failed("creating the state schema"))
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
