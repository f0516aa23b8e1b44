//! The simulator's in-memory CRM: contacts, companies and deals, their
//! properties, the system timestamps HubSpot maintains on every write, the
//! unique contact email, and the validation rules tests can configure.
//!
//! ```text
//!  objects / batch handlers ──create / update / upsert / archive──► Store ──► Applied (webhooks, written log)
//!  search handler ──────────read-only view (by id, by modified time)──►   │
//! ```

mod clock;
mod object_type;
mod record;
mod table;
mod validation;
mod view;

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

use table::{Table, modified_key};

pub use clock::Clock;
pub use object_type::ObjectType;
pub use record::{Record, Selection, iso_millis, parse_millis};
pub use table::{Applied, ChangeKind, tie_rank};
pub use validation::{PropertyError, Rule, Schema};
pub use view::TableView;

/// First id handed out; HubSpot ids are numeric strings.
const FIRST_ID: u64 = 10_001;

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteError {
    Validation(Vec<PropertyError>),
    /// A contact with this email exists already.
    Conflict {
        existing: u64,
    },
    NotFound(String),
}

/// All records of one portal.
pub struct Store {
    next_id: AtomicU64,
    tables: [RwLock<Table>; 3],
    pub clock: Clock,
}

impl Default for Store {
    fn default() -> Self {
        let table = |ty: ObjectType| {
            RwLock::new(Table {
                schema: Schema {
                    required: ty.default_required(),
                    ..Schema::default()
                },
                ..Table::default()
            })
        };
        Store {
            next_id: AtomicU64::new(FIRST_ID),
            tables: [
                table(ObjectType::Contacts),
                table(ObjectType::Companies),
                table(ObjectType::Deals),
            ],
            clock: Clock::default(),
        }
    }
}

impl Store {
    fn table(&self, ty: ObjectType) -> &RwLock<Table> {
        &self.tables[ty.index()]
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn create(
        &self,
        ty: ObjectType,
        input: &Map<String, Value>,
    ) -> Result<Applied, WriteError> {
        let mut t = self.table(ty).write().expect("store lock");
        let props = t.validate(ty, input, true)?;
        let now = self.clock.now_ms();
        let id = self.new_id();
        t.insert(ty, id, props, now)
    }

    /// Updates the live record whose `id_property` is `id` (`hs_object_id` by default).
    pub fn update(
        &self,
        ty: ObjectType,
        id: &str,
        id_property: Option<&str>,
        input: &Map<String, Value>,
    ) -> Result<Applied, WriteError> {
        let mut t = self.table(ty).write().expect("store lock");
        let found = t
            .find_by(ty, id_property.unwrap_or("hs_object_id"), id)
            .ok_or_else(|| WriteError::NotFound(id.to_string()))?;
        let props = t.validate(ty, input, false)?;
        let now = self.clock.now_ms();
        t.apply(ty, found, props, now)
    }

    /// Creates or updates by a unique property; `Applied::kind` tells which.
    pub fn upsert(
        &self,
        ty: ObjectType,
        id_property: &str,
        id_value: &str,
        input: &Map<String, Value>,
    ) -> Result<Applied, WriteError> {
        let mut t = self.table(ty).write().expect("store lock");
        let now = self.clock.now_ms();
        match t.find_by(ty, id_property, id_value) {
            Some(found) => {
                let props = t.validate(ty, input, false)?;
                t.apply(ty, found, props, now)
            }
            None => {
                if id_property == "hs_object_id" {
                    return Err(WriteError::NotFound(id_value.to_string()));
                }
                let mut full = input.clone();
                full.insert(id_property.to_string(), Value::String(id_value.to_string()));
                let props = t.validate(ty, &full, true)?;
                let id = self.new_id();
                t.insert(ty, id, props, now)
            }
        }
    }

    /// Archives a live record; `None` if there is none (HubSpot still answers 204).
    pub fn archive(&self, ty: ObjectType, id: &str) -> Option<Applied> {
        let mut t = self.table(ty).write().expect("store lock");
        let id = t.find_by(ty, "hs_object_id", id)?;
        let now = self.clock.now_ms();
        let rec = t.records.get_mut(&id)?;
        let key = modified_key(rec);
        rec.archived = true;
        rec.updated_ms = now;
        let rec = rec.clone();
        t.by_modified.remove(&key);
        if let Some(email) = rec.props.get("email") {
            t.by_email.remove(&email.to_lowercase());
        }
        Some(Applied {
            ty,
            record: rec,
            kind: ChangeKind::Deletion,
            changed: vec![],
        })
    }

    /// A record by `id_property` (default `hs_object_id`); archived ones only when asked.
    pub fn get(
        &self,
        ty: ObjectType,
        id: &str,
        id_property: Option<&str>,
        archived: bool,
    ) -> Option<Record> {
        let t = self.table(ty).read().expect("store lock");
        if archived {
            let id = id.parse::<u64>().ok()?;
            return t.records.get(&id).filter(|r| r.archived).cloned();
        }
        let id = t.find_by(ty, id_property.unwrap_or("hs_object_id"), id)?;
        t.records.get(&id).cloned()
    }

    /// The records of `ty`, read-locked until the view is dropped.
    pub fn view(&self, ty: ObjectType) -> TableView<'_> {
        TableView(self.table(ty).read().expect("store lock"))
    }

    /// Records with id greater than `after`, in id order, at most `limit`.
    pub fn page(
        &self,
        ty: ObjectType,
        after: u64,
        limit: usize,
        archived: bool,
    ) -> (Vec<Record>, bool) {
        let t = self.table(ty).read().expect("store lock");
        let mut it = t
            .records
            .range(after.saturating_add(1)..)
            .map(|(_, r)| r)
            .filter(|r| r.archived == archived);
        let page: Vec<Record> = it.by_ref().take(limit).cloned().collect();
        let more = it.next().is_some();
        (page, more)
    }

    pub fn known_property(&self, ty: ObjectType, name: &str) -> bool {
        self.table(ty).read().expect("store lock").known(ty, name)
    }

    /// Adds custom properties, replaces the required list and rules when given.
    pub fn configure(
        &self,
        ty: ObjectType,
        add_properties: &[String],
        required: Option<Vec<String>>,
        rules: Option<Vec<Rule>>,
    ) {
        let mut t = self.table(ty).write().expect("store lock");
        t.schema
            .custom_properties
            .extend(add_properties.iter().cloned());
        if let Some(r) = required {
            t.schema.required = r;
        }
        if let Some(r) = rules {
            t.schema.rules = r;
        }
    }

    pub fn count(&self, ty: ObjectType) -> usize {
        let t = self.table(ty).read().expect("store lock");
        t.records.values().filter(|r| !r.archived).count()
    }
}
