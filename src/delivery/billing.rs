//! The billing writer: applies [`BillingWrite`]s to the billing database in
//! one transaction per batch, tagged with extsync's replication origin so
//! capture drops them (no loops), and guarded by the row's version column so
//! an older change never overwrites a newer one.
//!
//! ```text
//!  BillingWrite* ─► check tables/columns against the catalog (all or nothing)
//!               ─► pg_replication_origin_session_setup(origin)
//!               ─► BEGIN; per write: UPDATE … SET col = ($n::text)::<type>, updated_at = as_of
//!                                   WHERE key AND (updated_at IS NULL OR updated_at <= as_of)
//!               ─► COMMIT ─► pg_replication_origin_session_reset()
//! ```
//!
//! Values are always bound as parameters, in their text form (JSON text for
//! `json`/`jsonb` columns, array elements for array columns), and cast to
//! the column's type by the server. Identifiers are quoted. The updates of
//! a batch are pipelined on the connection; when a value is rejected (a data
//! or constraint error) the batch is rolled back and applied again one write
//! at a time under savepoints, so that write alone fails and the rest commits.
//!
//! PostgreSQL 15 lets one session at a time use an origin, so the writer
//! holds it only for the length of a batch; writers in other processes wait
//! their turn (up to [`BillingWriterConfig::origin_wait`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};

use super::intent::{BillingWrite, DeliveryOutcome, OutcomeKind};
use super::metrics;
use crate::config::DEFAULT_ORIGIN;
use crate::connectors::ErrorClass;

/// Default version column.
pub const DEFAULT_VERSION_COLUMN: &str = "updated_at";
/// Default time to wait for an origin held by another writer.
pub const DEFAULT_ORIGIN_WAIT: Duration = Duration::from_secs(30);
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 512;

/// Settings of the billing writer.
#[derive(Debug, Clone)]
pub struct BillingWriterConfig {
    /// Replication origin that tags the writes (capture drops it).
    pub origin: String,
    /// Column holding a row's last change time; compared with `as_of` and
    /// set to it.
    pub version_column: String,
    /// How long to wait for the origin while another session holds it.
    pub origin_wait: Duration,
}

impl Default for BillingWriterConfig {
    fn default() -> Self {
        BillingWriterConfig {
            origin: DEFAULT_ORIGIN.to_string(),
            version_column: DEFAULT_VERSION_COLUMN.to_string(),
            origin_wait: DEFAULT_ORIGIN_WAIT,
        }
    }
}

/// Why a batch of billing writes was not applied. Nothing of it was written.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("table name {table:?} is not of the form schema.table")]
    InvalidTable { table: String },
    #[error("table {table} does not exist in the billing database")]
    UnknownTable { table: String },
    #[error("table {table} has no column {column:?}")]
    UnknownColumn { table: String, column: String },
    #[error(
        "table {table} has no version column {column:?} (set the billing writer's version column)"
    )]
    NoVersionColumn { table: String, column: String },
    #[error("write to {table} names no key columns")]
    NoKey { table: String },
    #[error("column {column:?} of {table} is generated and cannot be written")]
    Generated { table: String, column: String },
    #[error("replication origin {origin:?} stayed in use by another session for {waited:?}")]
    OriginBusy { origin: String, waited: Duration },
    #[error("billing database: {context}")]
    Postgres {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

fn pg(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> BillingError {
    move |source| BillingError::Postgres { context, source }
}

/// One column as the catalog describes it.
#[derive(Debug, Clone)]
struct Column {
    /// `format_type` of the column, valid in a cast.
    sql_type: String,
    form: ValueForm,
    generated: bool,
}

/// How a JSON value is turned into the text the column's type parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueForm {
    Scalar,
    Json,
    Array,
}

#[derive(Debug)]
struct Table {
    /// `"schema"."table"`.
    quoted: String,
    columns: HashMap<String, Column>,
}

struct Session {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// Applies billing writes over one connection.
pub struct BillingWriter {
    url: String,
    config: BillingWriterConfig,
    session: Mutex<Option<Session>>,
    tables: Mutex<HashMap<String, Arc<Table>>>,
}

impl BillingWriter {
    /// Connects to `url` and creates the origin when it does not exist.
    pub async fn connect(url: &str, config: BillingWriterConfig) -> Result<Self, BillingError> {
        let writer = BillingWriter {
            url: url.to_string(),
            config,
            session: Mutex::new(None),
            tables: Mutex::new(HashMap::new()),
        };
        {
            let mut guard = writer.session.lock().await;
            let session = writer.session(&mut guard).await?;
            ensure_origin(&session.client, &writer.config.origin).await?;
        }
        Ok(writer)
    }

    pub fn config(&self) -> &BillingWriterConfig {
        &self.config
    }

    async fn session<'a>(
        &self,
        guard: &'a mut Option<Session>,
    ) -> Result<&'a mut Session, BillingError> {
        if guard.as_ref().is_none_or(|s| s.client.is_closed()) {
            let (client, conn) = tokio_postgres::connect(&self.url, NoTls)
                .await
                .map_err(pg("connecting"))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %e, "billing writer connection closed");
                }
            });
            *guard = Some(Session {
                client,
                statements: HashMap::new(),
            });
        }
        Ok(guard.as_mut().expect("session just set"))
    }

    /// Applies `writes` in one transaction and answers one outcome per
    /// write, in input order: `Updated`, `Skipped` (the row is newer than
    /// `as_of`), or `Failed` (no such row, or a value the column refuses).
    /// Every table and column is checked first; on an error nothing of the
    /// batch is written.
    pub async fn write(
        &self,
        writes: &[BillingWrite],
    ) -> Result<Vec<DeliveryOutcome>, BillingError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut guard = self.session.lock().await;
        let session = self.session(&mut guard).await?;
        let mut plans = Vec::with_capacity(writes.len());
        for w in writes {
            let table = self.table(&session.client, &w.table, w).await?;
            plans.push(self.plan(&table, w)?);
        }
        let started = Instant::now();
        self.acquire_origin(&session.client).await?;
        let result = apply(session, writes, &plans).await;
        let reset = session
            .client
            .batch_execute("SELECT pg_catalog.pg_replication_origin_session_reset()")
            .await;
        if let Err(e) = reset {
            // The origin stays with this session until it ends; end it.
            *guard = None;
            result?;
            return Err(pg("releasing the replication origin")(e));
        }
        let outcomes = result?;
        ::metrics::histogram!(metrics::BILLING_BATCH_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let mut counted: HashMap<(&str, &'static str), u64> = HashMap::new();
        for (w, o) in writes.iter().zip(&outcomes) {
            *counted
                .entry((w.table.as_str(), metrics::outcome_label(o.kind)))
                .or_default() += 1;
        }
        for ((table, outcome), n) in counted {
            ::metrics::counter!(metrics::BILLING_WRITES_TOTAL,
                "table" => table.to_string(),
                "outcome" => outcome)
            .increment(n);
        }
        tracing::debug!(writes = writes.len(), "billing writes committed");
        Ok(outcomes)
    }

    async fn acquire_origin(&self, client: &Client) -> Result<(), BillingError> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(5);
        loop {
            let r = client
                .execute(
                    "SELECT pg_catalog.pg_replication_origin_session_setup($1)",
                    &[&self.config.origin],
                )
                .await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
                    if started.elapsed() >= self.config.origin_wait {
                        return Err(BillingError::OriginBusy {
                            origin: self.config.origin.clone(),
                            waited: started.elapsed(),
                        });
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(200));
                }
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {
                    ensure_origin(client, &self.config.origin).await?;
                }
                Err(e) => return Err(pg("setting the replication origin")(e)),
            }
        }
    }

    /// The catalog entry of `name`, read once and again when a write names
    /// a column it does not know (the table may have changed).
    async fn table(
        &self,
        client: &Client,
        name: &str,
        w: &BillingWrite,
    ) -> Result<Arc<Table>, BillingError> {
        let mut tables = self.tables.lock().await;
        if let Some(t) = tables.get(name) {
            let known = w
                .key
                .keys()
                .chain(w.columns.keys())
                .all(|c| t.columns.contains_key(c));
            if known {
                return Ok(t.clone());
            }
        }
        let (schema, table) = name
            .split_once('.')
            .filter(|(s, t)| !s.is_empty() && !t.is_empty())
            .ok_or_else(|| BillingError::InvalidTable {
                table: name.to_string(),
            })?;
        let rows = client
            .query(
                "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                        t.typname::text, t.typcategory::text, a.attgenerated::text <> '' \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
                   AND a.attnum > 0 AND NOT a.attisdropped",
                &[&schema, &table],
            )
            .await
            .map_err(pg("reading the table catalog"))?;
        if rows.is_empty() {
            return Err(BillingError::UnknownTable {
                table: name.to_string(),
            });
        }
        let columns = rows
            .iter()
            .map(|r| {
                let typname: String = r.get(2);
                let category: String = r.get(3);
                let form = if typname == "json" || typname == "jsonb" {
                    ValueForm::Json
                } else if category == "A" {
                    ValueForm::Array
                } else {
                    ValueForm::Scalar
                };
                (
                    r.get::<_, String>(0),
                    Column {
                        sql_type: r.get(1),
                        form,
                        generated: r.get(4),
                    },
                )
            })
            .collect();
        let t = Arc::new(Table {
            quoted: format!("{}.{}", quote_ident(schema), quote_ident(table)),
            columns,
        });
        tables.insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// The statement and parameters of one write, after checking every
    /// name it uses.
    fn plan(&self, table: &Table, w: &BillingWrite) -> Result<Plan, BillingError> {
        let column = |name: &str| {
            table
                .columns
                .get(name)
                .ok_or_else(|| BillingError::UnknownColumn {
                    table: w.table.clone(),
                    column: name.to_string(),
                })
        };
        let version_name = self.config.version_column.as_str();
        let version =
            table
                .columns
                .get(version_name)
                .ok_or_else(|| BillingError::NoVersionColumn {
                    table: w.table.clone(),
                    column: version_name.to_string(),
                })?;
        if w.key.is_empty() {
            return Err(BillingError::NoKey {
                table: w.table.clone(),
            });
        }
        let mut params: Vec<Option<String>> = Vec::new();
        let mut sets = Vec::new();
        for (name, value) in &w.columns {
            let c = column(name)?;
            if c.generated {
                return Err(BillingError::Generated {
                    table: w.table.clone(),
                    column: name.clone(),
                });
            }
            if name == version_name {
                continue;
            }
            params.push(text_form(value, c.form));
            sets.push(format!("{} = {}", quote_ident(name), cast(params.len(), c)));
        }
        params.push(Some(w.as_of.to_rfc3339()));
        let as_of = cast(params.len(), version);
        let quoted_version = quote_ident(version_name);
        sets.push(format!("{quoted_version} = {as_of}"));
        let mut conds = Vec::new();
        let mut exists_conds = Vec::new();
        for (i, (name, value)) in w.key.iter().enumerate() {
            let c = column(name)?;
            params.push(text_form(value, c.form));
            conds.push(format!("{} = {}", quote_ident(name), cast(params.len(), c)));
            exists_conds.push(format!("{} = {}", quote_ident(name), cast(i + 1, c)));
        }
        let key_cond = conds.join(" AND ");
        let update = format!(
            "UPDATE {table} SET {sets} WHERE {key_cond} \
             AND ({quoted_version} IS NULL OR {quoted_version} <= {as_of}) RETURNING 1",
            table = table.quoted,
            sets = sets.join(", "),
        );
        let exists = format!(
            "SELECT 1 FROM {} WHERE {}",
            table.quoted,
            exists_conds.join(" AND ")
        );
        Ok(Plan {
            update,
            exists,
            params,
            billing_id: key_text(&w.key),
        })
    }
}

struct Plan {
    update: String,
    /// Whether the key's row exists (asked when the update changed nothing).
    exists: String,
    params: Vec<Option<String>>,
    billing_id: String,
}

async fn apply(
    session: &mut Session,
    writes: &[BillingWrite],
    plans: &[Plan],
) -> Result<Vec<DeliveryOutcome>, BillingError> {
    if session.statements.len() >= STATEMENT_CACHE {
        session.statements.clear();
    }
    for p in plans {
        for sql in [&p.update, &p.exists] {
            if !session.statements.contains_key(sql) {
                let st = session
                    .client
                    .prepare(sql)
                    .await
                    .map_err(pg("preparing a billing write"))?;
                session.statements.insert(sql.clone(), st);
            }
        }
    }
    match apply_pipelined(session, writes, plans).await? {
        Some(outcomes) => Ok(outcomes),
        None => apply_isolated(session, writes, plans).await,
    }
}

fn params(p: &Plan) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    p.params
        .iter()
        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

/// Whether the key's row exists, for a write whose guarded update changed nothing.
async fn skipped_or_missing(
    tx: &tokio_postgres::Transaction<'_>,
    exists: &Statement,
    w: &BillingWrite,
    p: &Plan,
) -> Result<DeliveryOutcome, BillingError> {
    let all = params(p);
    let found = tx
        .query(exists, &all[all.len() - w.key.len()..])
        .await
        .map_err(pg("checking a row's existence"))?;
    Ok(if found.is_empty() {
        outcome(
            p,
            OutcomeKind::Failed,
            None,
            Some((
                ErrorClass::NotFound,
                format!("{}: no row with this key", w.table),
            )),
        )
    } else {
        outcome(p, OutcomeKind::Skipped, None, None)
    })
}

/// The common case: every update sent at once (pipelined on the
/// connection), one round trip for the batch. `None` when a value was
/// refused: the transaction is rolled back and the batch goes through
/// [`apply_isolated`] instead.
async fn apply_pipelined(
    session: &mut Session,
    writes: &[BillingWrite],
    plans: &[Plan],
) -> Result<Option<Vec<DeliveryOutcome>>, BillingError> {
    let tx = session
        .client
        .transaction()
        .await
        .map_err(pg("starting the transaction"))?;
    let all_params: Vec<_> = plans.iter().map(params).collect();
    let answers = futures::future::join_all(
        plans
            .iter()
            .zip(&all_params)
            .map(|(p, ps)| tx.query(&session.statements[&p.update], ps)),
    )
    .await;
    let mut updated = Vec::with_capacity(plans.len());
    for answer in answers {
        match answer {
            Ok(rows) => updated.push(!rows.is_empty()),
            Err(e) if is_value_error(&e) => {
                tx.rollback()
                    .await
                    .map_err(pg("rolling back a refused batch"))?;
                return Ok(None);
            }
            Err(e) => return Err(pg("applying a billing write")(e)),
        }
    }
    let mut outcomes = Vec::with_capacity(plans.len());
    for ((w, p), updated) in writes.iter().zip(plans).zip(updated) {
        outcomes.push(if updated {
            outcome(p, OutcomeKind::Updated, Some(w.as_of), None)
        } else {
            skipped_or_missing(&tx, &session.statements[&p.exists], w, p).await?
        });
    }
    tx.commit().await.map_err(pg("committing"))?;
    Ok(Some(outcomes))
}

/// One write at a time, each under a savepoint, so a refused value fails
/// only its own write.
async fn apply_isolated(
    session: &mut Session,
    writes: &[BillingWrite],
    plans: &[Plan],
) -> Result<Vec<DeliveryOutcome>, BillingError> {
    let tx = session
        .client
        .transaction()
        .await
        .map_err(pg("starting the transaction"))?;
    let mut outcomes = Vec::with_capacity(plans.len());
    for (w, p) in writes.iter().zip(plans) {
        let update = &session.statements[&p.update];
        let params = params(p);
        tx.batch_execute("SAVEPOINT extsync_write")
            .await
            .map_err(pg("setting a savepoint"))?;
        let outcome = match tx.query(update, &params).await {
            Ok(rows) if !rows.is_empty() => outcome(p, OutcomeKind::Updated, Some(w.as_of), None),
            Ok(_) => skipped_or_missing(&tx, &session.statements[&p.exists], w, p).await?,
            Err(e) if is_value_error(&e) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT extsync_write")
                    .await
                    .map_err(pg("rolling back a refused write"))?;
                let message = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string());
                outcome(
                    p,
                    OutcomeKind::Failed,
                    None,
                    Some((
                        ErrorClass::FieldValidation,
                        format!("{}: {message}", w.table),
                    )),
                )
            }
            Err(e) => return Err(pg("applying a billing write")(e)),
        };
        tx.batch_execute("RELEASE SAVEPOINT extsync_write")
            .await
            .map_err(pg("releasing a savepoint"))?;
        outcomes.push(outcome);
    }
    tx.commit().await.map_err(pg("committing"))?;
    Ok(outcomes)
}

/// Data exceptions (class 22) and integrity violations (class 23): the
/// value, not the database, is at fault.
fn is_value_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

fn outcome(
    p: &Plan,
    kind: OutcomeKind,
    version: Option<DateTime<Utc>>,
    error: Option<(ErrorClass, String)>,
) -> DeliveryOutcome {
    DeliveryOutcome {
        billing_id: p.billing_id.clone(),
        kind,
        external_id: None,
        version: version.map(|v| v.to_rfc3339()),
        error,
    }
}

async fn ensure_origin(client: &Client, origin: &str) -> Result<(), BillingError> {
    let row = client
        .query_one(
            "SELECT pg_catalog.pg_replication_origin_oid($1) IS NOT NULL",
            &[&origin],
        )
        .await
        .map_err(pg("looking up the replication origin"))?;
    if row.get::<_, bool>(0) {
        return Ok(());
    }
    match client
        .execute(
            "SELECT pg_catalog.pg_replication_origin_create($1)",
            &[&origin],
        )
        .await
    {
        Ok(_) => {
            tracing::info!(origin, "created replication origin");
            Ok(())
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(()),
        Err(e) => Err(pg("creating the replication origin")(e)),
    }
}

/// `"name"`, with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `$n` cast to the column's type.
fn cast(n: usize, c: &Column) -> String {
    match c.form {
        ValueForm::Array => format!(
            "(CASE WHEN ${n}::text IS NULL THEN NULL \
             ELSE ARRAY(SELECT pg_catalog.jsonb_array_elements_text(${n}::text::jsonb)) END)::{}",
            c.sql_type
        ),
        _ => format!("(${n}::text)::{}", c.sql_type),
    }
}

/// The text the column's type parses for `value`; `None` is SQL NULL.
fn text_form(value: &Value, form: ValueForm) -> Option<String> {
    match (value, form) {
        (Value::Null, _) => None,
        (v, ValueForm::Json) => Some(v.to_string()),
        (Value::String(s), ValueForm::Array) => {
            Some(Value::Array(vec![s.clone().into()]).to_string())
        }
        (v @ Value::Array(_), ValueForm::Array) => Some(v.to_string()),
        (Value::String(s), _) => Some(s.clone()),
        (Value::Bool(b), _) => Some(b.to_string()),
        (Value::Number(n), _) => Some(n.to_string()),
        (v, _) => Some(v.to_string()),
    }
}

/// The key's values as one id: the value itself for a one-column key,
/// `col=value` pairs otherwise.
fn key_text(key: &Map<String, Value>) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if key.len() == 1 {
        return key.values().next().map(text).unwrap_or_default();
    }
    key.iter()
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("name"), "\"name\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn values_take_the_text_form_of_their_column() {
        assert_eq!(
            text_form(&json!("x"), ValueForm::Scalar).as_deref(),
            Some("x")
        );
        assert_eq!(
            text_form(&json!("x"), ValueForm::Json).as_deref(),
            Some("\"x\"")
        );
        assert_eq!(
            text_form(&json!(1.5), ValueForm::Scalar).as_deref(),
            Some("1.5")
        );
        assert_eq!(
            text_form(&json!({"a": 1}), ValueForm::Json).as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(
            text_form(&json!(["a", "b"]), ValueForm::Array).as_deref(),
            Some("[\"a\",\"b\"]")
        );
        assert_eq!(text_form(&Value::Null, ValueForm::Json), None);
    }

    #[test]
    fn key_text_names_the_record() {
        let one: Map<String, Value> = [("id".to_string(), json!(42))].into_iter().collect();
        assert_eq!(key_text(&one), "42");
        let two: Map<String, Value> = [("a".to_string(), json!("x")), ("b".to_string(), json!(1))]
            .into_iter()
            .collect();
        assert_eq!(key_text(&two), "a=x,b=1");
    }
}
