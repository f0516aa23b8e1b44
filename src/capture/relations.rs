//! The tables capture knows: pgoutput `Relation` messages (or the catalog, for
//! snapshots) resolved into column kinds, key columns and topic names.
//!
//! ```text
//!  Relation / Type msg ──► Relations::apply ──► Table { columns: [Kind …], topic }
//!                               │ unknown type oids
//!                               └──► pg_type lookup (enums, domains, arrays)
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use super::error::CaptureError;
use super::pgoutput::{Cell, RelationBody};
use super::values::{self, Kind};
use crate::config::NumericEncoding;
use crate::kafka::Topics;

/// One captured table as events need it.
#[derive(Debug)]
pub struct Table {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub topic: String,
    pub columns: Vec<Column>,
    /// Indexes of the replica-identity (key) columns.
    pub key_columns: Vec<usize>,
}

#[derive(Debug)]
pub struct Column {
    pub name: String,
    /// `"name":`, JSON-escaped once.
    pub json_label: Vec<u8>,
    pub kind: Kind,
}

impl Table {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// What to do with an unchanged TOAST cell: the JSON of the last image, or
/// `None` to list the column as unavailable.
pub type ToastFill<'a> = &'a mut dyn FnMut(usize) -> Option<Arc<[u8]>>;

/// Writes a row image as a JSON object. Unchanged TOAST cells are filled by
/// `fill` or left out and their column index pushed to `unavailable`.
pub fn write_row(
    out: &mut Vec<u8>,
    table: &Table,
    cells: &[Cell],
    numeric: NumericEncoding,
    fill: ToastFill<'_>,
    unavailable: &mut Vec<usize>,
) {
    out.push(b'{');
    let mut first = true;
    for (i, (col, cell)) in table.columns.iter().zip(cells).enumerate() {
        let fill_value;
        let text: Option<&[u8]> = match cell {
            Cell::Null => None,
            Cell::Text(b) | Cell::Binary(b) => Some(b),
            Cell::UnchangedToast => match fill(i) {
                Some(v) => {
                    fill_value = v;
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(&col.json_label);
                    out.extend_from_slice(&fill_value);
                    continue;
                }
                None => {
                    unavailable.push(i);
                    continue;
                }
            },
        };
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(&col.json_label);
        match text {
            None => out.extend_from_slice(b"null"),
            Some(t) => values::write_value(out, &col.kind, t, numeric),
        }
    }
    out.push(b'}');
}

/// Writes the key columns of a row as a JSON object; `false` when the table
/// has no key or a key cell is missing.
pub fn write_key(
    out: &mut Vec<u8>,
    table: &Table,
    cells: &[Cell],
    numeric: NumericEncoding,
) -> bool {
    if table.key_columns.is_empty() {
        return false;
    }
    out.push(b'{');
    for (n, &i) in table.key_columns.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&table.columns[i].json_label);
        match cells.get(i) {
            Some(Cell::Text(t)) | Some(Cell::Binary(t)) => {
                values::write_value(out, &table.columns[i].kind, t, numeric)
            }
            Some(Cell::Null) => out.extend_from_slice(b"null"),
            _ => return false,
        }
    }
    out.push(b'}');
    true
}

fn json_label(name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len() + 3);
    values::write_str(&mut v, name.as_bytes());
    v.push(b':');
    v
}

/// Resolves type OIDs to kinds, asking `pg_type` for non-built-in types.
#[derive(Default)]
pub struct TypeKinds {
    known: HashMap<u32, Kind>,
}

impl TypeKinds {
    pub async fn resolve(
        &mut self,
        sql: &tokio_postgres::Client,
        oids: &[u32],
    ) -> Result<(), CaptureError> {
        let mut todo: Vec<u32> = oids
            .iter()
            .copied()
            .filter(|o| values::builtin_kind(*o).is_none() && !self.known.contains_key(o))
            .collect();
        // Element and base types are resolved first (depth is small).
        for _ in 0..4 {
            if todo.is_empty() {
                break;
            }
            let rows = sql
                .query(
                    "SELECT oid, typtype::text, typcategory::text, typelem, typbasetype, typdelim::text \
                     FROM pg_type WHERE oid = ANY($1)",
                    &[&todo],
                )
                .await
                .map_err(|e| CaptureError::sql("looking up column types", e))?;
            let mut next = Vec::new();
            let mut pending = Vec::new();
            for r in rows {
                let oid: u32 = r.get(0);
                let typtype = r.get::<_, String>(1).bytes().next().unwrap_or(b'b');
                let category = r.get::<_, String>(2).bytes().next().unwrap_or(b'U');
                let elem: u32 = r.get(3);
                let base: u32 = r.get(4);
                let delim = r.get::<_, String>(5).bytes().next().unwrap_or(b',');
                for dep in [elem, base] {
                    if dep != 0 && self.kind_of(dep).is_none() {
                        next.push(dep);
                    }
                }
                pending.push((oid, typtype, category, elem, base, delim));
            }
            if !next.is_empty() {
                // Resolve dependencies first, then these again.
                let deps: Vec<u32> = next;
                Box::pin(self.resolve(sql, &deps)).await?;
            }
            for (oid, typtype, category, elem, base, delim) in pending {
                let k = values::catalog_kind(
                    typtype,
                    category,
                    self.kind_of(elem),
                    self.kind_of(base),
                    delim,
                );
                self.known.insert(oid, k);
            }
            todo.retain(|o| !self.known.contains_key(o));
        }
        for o in todo {
            self.known.insert(o, Kind::Text);
        }
        Ok(())
    }

    pub fn kind_of(&self, oid: u32) -> Option<Kind> {
        values::builtin_kind(oid).or_else(|| self.known.get(&oid).cloned())
    }
}

/// The relation cache of one replication session.
pub struct Relations {
    topics: Topics,
    tables: HashMap<u32, Arc<Table>>,
    pub types: TypeKinds,
}

impl Relations {
    pub fn new(topics: Topics) -> Self {
        Self {
            topics,
            tables: HashMap::new(),
            types: TypeKinds::default(),
        }
    }

    pub fn get(&self, oid: u32) -> Option<&Arc<Table>> {
        self.tables.get(&oid)
    }

    /// Applies a `Relation` message: later rows of the table use this shape.
    pub async fn apply(
        &mut self,
        sql: &tokio_postgres::Client,
        body: RelationBody,
    ) -> Result<Arc<Table>, CaptureError> {
        let oids: Vec<u32> = body.columns.iter().map(|c| c.type_oid).collect();
        self.types.resolve(sql, &oids).await?;
        // The Kafka key is the primary key; the replica identity only when
        // there is none (REPLICA IDENTITY FULL marks every column).
        let pk: Vec<String> = sql
            .query(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
                 ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1 AND i.indisprimary",
                &[&body.oid],
            )
            .await
            .map_err(|e| CaptureError::sql("reading the primary key", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let table = Arc::new(
            self.build(
                body.oid,
                body.schema,
                body.table,
                body.columns
                    .into_iter()
                    .map(|c| {
                        let key = if pk.is_empty() {
                            c.key
                        } else {
                            pk.contains(&c.name)
                        };
                        (c.name, c.type_oid, key)
                    })
                    .collect(),
            ),
        );
        self.tables.insert(table.oid, table.clone());
        Ok(table)
    }

    /// A table from catalog columns `(name, type oid, is key)`; types must be resolved.
    pub fn build(
        &self,
        oid: u32,
        schema: String,
        name: String,
        cols: Vec<(String, u32, bool)>,
    ) -> Table {
        let mut key_columns = Vec::new();
        let columns = cols
            .into_iter()
            .enumerate()
            .map(|(i, (cname, type_oid, key))| {
                if key {
                    key_columns.push(i);
                }
                Column {
                    json_label: json_label(&cname),
                    kind: self.types.kind_of(type_oid).unwrap_or(Kind::Text),
                    name: cname,
                }
            })
            .collect();
        Table {
            oid,
            topic: self.topics.cdc(&schema, &name),
            schema,
            name,
            columns,
            key_columns,
        }
    }
}
