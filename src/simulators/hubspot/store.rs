//! The simulator's in-memory CRM: contacts, companies and deals, their
//! properties, the system timestamps HubSpot maintains on every write, the
//! unique contact email, and the validation rules tests can configure.
//!
//! ```text
//!  objects / batch handlers ──create / update / upsert / archive──► Store ──► Applied (webhooks, written log)
//!  search handler ──────────read-only view (by id, by modified time)──►   │
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// First id handed out; HubSpot ids are numeric strings.
const FIRST_ID: u64 = 10_001;

/// The CRM object types the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectType {
    Contacts,
    Companies,
    Deals,
}

impl ObjectType {
    pub const ALL: [ObjectType; 3] = [
        ObjectType::Contacts,
        ObjectType::Companies,
        ObjectType::Deals,
    ];

    /// The path segment, by name or by HubSpot's object type id.
    pub fn from_path(s: &str) -> Option<Self> {
        match s {
            "contacts" | "contact" | "0-1" => Some(ObjectType::Contacts),
            "companies" | "company" | "0-2" => Some(ObjectType::Companies),
            "deals" | "deal" | "0-3" => Some(ObjectType::Deals),
            _ => None,
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            ObjectType::Contacts => "contacts",
            ObjectType::Companies => "companies",
            ObjectType::Deals => "deals",
        }
    }

    /// Prefix of webhook subscription types (`contact.creation`).
    pub fn singular(self) -> &'static str {
        match self {
            ObjectType::Contacts => "contact",
            ObjectType::Companies => "company",
            ObjectType::Deals => "deal",
        }
    }

    /// As HubSpot names it in error messages (`CONTACT`).
    pub fn upper(self) -> &'static str {
        match self {
            ObjectType::Contacts => "CONTACT",
            ObjectType::Companies => "COMPANY",
            ObjectType::Deals => "DEAL",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Properties every portal has for this type (writable).
    pub fn standard_properties(self) -> &'static [&'static str] {
        match self {
            ObjectType::Contacts => &[
                "email",
                "firstname",
                "lastname",
                "phone",
                "company",
                "address",
                "city",
                "state",
                "zip",
                "country",
                "website",
                "jobtitle",
                "lifecyclestage",
            ],
            ObjectType::Companies => &[
                "name",
                "domain",
                "phone",
                "address",
                "city",
                "state",
                "zip",
                "country",
                "industry",
                "description",
            ],
            ObjectType::Deals => &[
                "dealname",
                "amount",
                "dealstage",
                "pipeline",
                "closedate",
                "description",
            ],
        }
    }

    /// Properties returned when a request names none.
    pub fn default_properties(self) -> &'static [&'static str] {
        match self {
            ObjectType::Contacts => &[
                "createdate",
                "email",
                "firstname",
                "hs_object_id",
                "lastmodifieddate",
                "lastname",
            ],
            ObjectType::Companies => &[
                "createdate",
                "domain",
                "hs_lastmodifieddate",
                "hs_object_id",
                "name",
            ],
            ObjectType::Deals => &[
                "amount",
                "closedate",
                "createdate",
                "dealname",
                "dealstage",
                "hs_lastmodifieddate",
                "hs_object_id",
                "pipeline",
            ],
        }
    }

    /// Properties HubSpot maintains itself.
    pub fn system_properties(self) -> &'static [&'static str] {
        match self {
            ObjectType::Contacts => &[
                "hs_object_id",
                "createdate",
                "hs_lastmodifieddate",
                "lastmodifieddate",
            ],
            _ => &["hs_object_id", "createdate", "hs_lastmodifieddate"],
        }
    }

    /// Properties holding a datetime (compared as epoch milliseconds).
    pub fn is_date_property(name: &str) -> bool {
        matches!(
            name,
            "createdate" | "hs_lastmodifieddate" | "lastmodifieddate" | "closedate"
        )
    }

    fn default_required(self) -> Vec<String> {
        match self {
            ObjectType::Contacts => vec![],
            ObjectType::Companies => vec!["name".into()],
            ObjectType::Deals => vec!["dealname".into()],
        }
    }
}

/// Epoch milliseconds as HubSpot writes datetimes: `2024-05-01T10:00:00.123Z`.
pub fn iso_millis(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A filter value or stored date as epoch milliseconds (`1714557600123` or RFC 3339).
pub fn parse_millis(s: &str) -> Option<i64> {
    s.parse::<i64>().ok().or_else(|| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|d| d.timestamp_millis())
    })
}

/// One CRM record.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: u64,
    pub props: BTreeMap<String, String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub archived: bool,
}

/// Which properties a response carries.
#[derive(Debug, Clone, Copy)]
pub enum Selection<'a> {
    /// Everything set, plus the system properties (write responses).
    All,
    /// The type's default properties.
    Default,
    /// Exactly these (missing ones as `null`).
    Only(&'a [String]),
}

impl Record {
    /// A property's value, system properties included.
    pub fn property(&self, ty: ObjectType, name: &str) -> Option<String> {
        match name {
            "hs_object_id" => Some(self.id.to_string()),
            "createdate" => Some(iso_millis(self.created_ms)),
            "hs_lastmodifieddate" => Some(iso_millis(self.updated_ms)),
            "lastmodifieddate" if ty == ObjectType::Contacts => Some(iso_millis(self.updated_ms)),
            _ => self.props.get(name).cloned(),
        }
    }

    /// A property as a number for comparisons: dates as epoch ms, ids and amounts as numbers.
    pub fn property_millis(&self, ty: ObjectType, name: &str) -> Option<i64> {
        match name {
            "hs_object_id" => Some(self.id as i64),
            "createdate" => Some(self.created_ms),
            "hs_lastmodifieddate" => Some(self.updated_ms),
            "lastmodifieddate" if ty == ObjectType::Contacts => Some(self.updated_ms),
            _ => self.props.get(name).and_then(|v| parse_millis(v)),
        }
    }

    /// The `SimplePublicObject` form.
    pub fn to_json(&self, ty: ObjectType, sel: Selection<'_>) -> Value {
        let mut props = Map::new();
        let mut put = |name: &str| {
            let v = self
                .property(ty, name)
                .map(Value::String)
                .unwrap_or(Value::Null);
            props.insert(name.to_string(), v);
        };
        match sel {
            Selection::All => {
                for name in self.props.keys() {
                    put(name);
                }
                for name in ty.system_properties() {
                    put(name);
                }
            }
            Selection::Default => {
                for name in ty.default_properties() {
                    put(name);
                }
            }
            Selection::Only(names) => {
                for name in names {
                    put(name);
                }
                for name in ["hs_object_id", "createdate", "hs_lastmodifieddate"] {
                    put(name);
                }
            }
        }
        let mut out = json!({
            "id": self.id.to_string(),
            "properties": props,
            "createdAt": iso_millis(self.created_ms),
            "updatedAt": iso_millis(self.updated_ms),
            "archived": self.archived,
        });
        if self.archived {
            out["archivedAt"] = Value::String(iso_millis(self.updated_ms));
        }
        out
    }
}

/// A property-level validation failure, as HubSpot lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyError {
    pub name: String,
    /// HubSpot's code: `PROPERTY_DOESNT_EXIST`, `INVALID_EMAIL`, `READ_ONLY_VALUE`, …
    pub code: String,
    pub message: String,
}

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

/// A custom validation rule, configured through `/__admin/schema`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub property: String,
    /// Longest accepted value, in characters.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Accepted values (enumeration properties).
    #[serde(default)]
    pub allowed: Option<Vec<String>>,
    /// The value must be a number.
    #[serde(default)]
    pub numeric: bool,
    /// Message shown instead of the default one.
    #[serde(default)]
    pub message: Option<String>,
}

/// Per-type schema: extra (custom) properties, required ones and rules.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub custom_properties: HashSet<String>,
    pub required: Vec<String>,
    pub rules: Vec<Rule>,
}

/// A stable order for records modified in the same millisecond, unrelated
/// to their ids (HubSpot promises nothing there either); a bijection, so
/// `(updated_ms, tie_rank(id))` is unique.
pub fn tie_rank(id: u64) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

/// An entry of the modification-time index: `(updated_ms, tie_rank(id), id)`.
type ModifiedKey = (i64, u64, u64);

fn modified_key(rec: &Record) -> ModifiedKey {
    (rec.updated_ms, tie_rank(rec.id), rec.id)
}

#[derive(Default)]
struct Table {
    records: BTreeMap<u64, Record>,
    by_email: HashMap<String, u64>,
    /// Live records in search order of the last-modified date.
    by_modified: BTreeSet<ModifiedKey>,
    schema: Schema,
}

/// What one write did, for webhooks and the written log.
#[derive(Debug, Clone)]
pub struct Applied {
    pub ty: ObjectType,
    pub record: Record,
    pub kind: ChangeKind,
    /// Properties whose value changed (name, new value).
    pub changed: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Creation,
    Update,
    Deletion,
}

/// A clock that tests can freeze, so that many writes share one timestamp.
#[derive(Debug)]
pub struct Clock {
    frozen: AtomicI64,
}

const NOT_FROZEN: i64 = i64::MIN;

impl Default for Clock {
    fn default() -> Self {
        Clock {
            frozen: AtomicI64::new(NOT_FROZEN),
        }
    }
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        match self.frozen.load(Ordering::Relaxed) {
            NOT_FROZEN => Utc::now().timestamp_millis(),
            ms => ms,
        }
    }

    /// Freezes record timestamps at `ms`, or lets them run again with `None`.
    pub fn freeze(&self, ms: Option<i64>) {
        self.frozen
            .store(ms.unwrap_or(NOT_FROZEN), Ordering::SeqCst);
    }

    pub fn frozen(&self) -> Option<i64> {
        match self.frozen.load(Ordering::Relaxed) {
            NOT_FROZEN => None,
            ms => Some(ms),
        }
    }
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

/// A JSON property value as HubSpot stores it (always a string).
fn value_string(name: &str, v: &Value) -> Result<String, PropertyError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        _ => Err(PropertyError {
            name: name.to_string(),
            code: "INVALID_PROPERTY_VALUE".into(),
            message: format!("Property \"{name}\" has an invalid value type"),
        }),
    }
}

fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
}

impl Table {
    fn known(&self, ty: ObjectType, name: &str) -> bool {
        ty.standard_properties().contains(&name)
            || ty.system_properties().contains(&name)
            || self.schema.custom_properties.contains(name)
    }

    /// Checks and normalizes `input`; `creating` enforces required properties.
    fn validate(
        &self,
        ty: ObjectType,
        input: &Map<String, Value>,
        creating: bool,
    ) -> Result<BTreeMap<String, String>, WriteError> {
        let mut errors = Vec::new();
        let mut out = BTreeMap::new();
        for (name, v) in input {
            if !self.known(ty, name) {
                errors.push(PropertyError {
                    name: name.clone(),
                    code: "PROPERTY_DOESNT_EXIST".into(),
                    message: format!("Property \"{name}\" does not exist"),
                });
                continue;
            }
            if matches!(
                name.as_str(),
                "hs_object_id" | "hs_lastmodifieddate" | "lastmodifieddate"
            ) {
                errors.push(PropertyError {
                    name: name.clone(),
                    code: "READ_ONLY_VALUE".into(),
                    message: format!(
                        "\"{name}\" is a read only property; its value cannot be set."
                    ),
                });
                continue;
            }
            let value = match value_string(name, v) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if ty == ObjectType::Contacts
                && name == "email"
                && !value.is_empty()
                && !valid_email(&value)
            {
                errors.push(PropertyError {
                    name: name.clone(),
                    code: "INVALID_EMAIL".into(),
                    message: format!("Email address {value} is invalid"),
                });
                continue;
            }
            for rule in self.schema.rules.iter().filter(|r| &r.property == name) {
                if value.is_empty() {
                    continue;
                }
                let broken = rule.max_length.is_some_and(|m| value.chars().count() > m)
                    || rule.allowed.as_ref().is_some_and(|a| !a.contains(&value))
                    || (rule.numeric && value.parse::<f64>().is_err());
                if broken {
                    let code = if rule.allowed.is_some() {
                        "INVALID_OPTION"
                    } else {
                        "INVALID_PROPERTY_VALUE"
                    };
                    errors.push(PropertyError {
                        name: name.clone(),
                        code: code.into(),
                        message: rule.message.clone().unwrap_or_else(|| {
                            format!("{value} was not a valid value for property \"{name}\"")
                        }),
                    });
                }
            }
            out.insert(name.clone(), value);
        }
        if creating {
            for req in &self.schema.required {
                if out.get(req).is_none_or(|v| v.is_empty()) {
                    errors.push(PropertyError {
                        name: req.clone(),
                        code: "MISSING_REQUIRED_PROPERTY".into(),
                        message: format!("Property \"{req}\" is required"),
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(WriteError::Validation(errors))
        }
    }

    fn email_owner(&self, email: &str) -> Option<u64> {
        self.by_email.get(&email.to_lowercase()).copied()
    }

    /// Applies validated `props` to record `id` (which must exist).
    fn apply(
        &mut self,
        ty: ObjectType,
        id: u64,
        props: BTreeMap<String, String>,
        now: i64,
    ) -> Result<Applied, WriteError> {
        if ty == ObjectType::Contacts
            && let Some(email) = props.get("email").filter(|e| !e.is_empty())
            && let Some(owner) = self.email_owner(email)
            && owner != id
        {
            return Err(WriteError::Conflict { existing: owner });
        }
        let rec = self.records.get_mut(&id).expect("record exists");
        self.by_modified.remove(&modified_key(rec));
        let mut changed = Vec::new();
        for (name, value) in props {
            let old = rec.props.get(&name);
            if old.map(String::as_str).unwrap_or("") == value {
                continue;
            }
            if ty == ObjectType::Contacts && name == "email" {
                if let Some(old) = old {
                    self.by_email.remove(&old.to_lowercase());
                }
                if !value.is_empty() {
                    self.by_email.insert(value.to_lowercase(), id);
                }
            }
            if value.is_empty() {
                rec.props.remove(&name);
            } else {
                rec.props.insert(name.clone(), value.clone());
            }
            changed.push((name, value));
        }
        rec.updated_ms = now;
        self.by_modified.insert(modified_key(rec));
        Ok(Applied {
            ty,
            record: rec.clone(),
            kind: ChangeKind::Update,
            changed,
        })
    }

    fn insert(
        &mut self,
        ty: ObjectType,
        id: u64,
        props: BTreeMap<String, String>,
        now: i64,
    ) -> Result<Applied, WriteError> {
        if ty == ObjectType::Contacts
            && let Some(email) = props.get("email").filter(|e| !e.is_empty())
            && let Some(owner) = self.email_owner(email)
        {
            return Err(WriteError::Conflict { existing: owner });
        }
        let props: BTreeMap<String, String> =
            props.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        if ty == ObjectType::Contacts
            && let Some(email) = props.get("email")
        {
            self.by_email.insert(email.to_lowercase(), id);
        }
        let changed = props.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let rec = Record {
            id,
            props,
            created_ms: now,
            updated_ms: now,
            archived: false,
        };
        self.by_modified.insert(modified_key(&rec));
        self.records.insert(id, rec.clone());
        Ok(Applied {
            ty,
            record: rec,
            kind: ChangeKind::Creation,
            changed,
        })
    }

    fn find_by(&self, ty: ObjectType, prop: &str, value: &str) -> Option<u64> {
        match prop {
            "hs_object_id" => value
                .parse::<u64>()
                .ok()
                .filter(|id| self.records.get(id).is_some_and(|r| !r.archived)),
            "email" if ty == ObjectType::Contacts => self.email_owner(value),
            _ => self
                .records
                .values()
                .find(|r| !r.archived && r.props.get(prop).is_some_and(|v| v == value))
                .map(|r| r.id),
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

/// One type's records under the read lock, for queries: every record in id
/// order, and live ones by last-modified date.
pub struct TableView<'a>(RwLockReadGuard<'a, Table>);

impl TableView<'_> {
    /// Every record, archived ones included, in id order.
    pub fn all(&self) -> impl DoubleEndedIterator<Item = &Record> {
        self.0.records.values()
    }

    /// Records (archived ones included) whose id is in `ids`, in id order.
    pub fn by_id(&self, ids: RangeInclusive<u64>) -> impl DoubleEndedIterator<Item = &Record> {
        let (lo, hi) = ids.into_inner();
        (lo <= hi)
            .then(|| self.0.records.range(lo..=hi))
            .into_iter()
            .flatten()
            .map(|(_, r)| r)
    }

    /// Live records last modified within `ms`, by date then [`tie_rank`].
    pub fn by_modified(&self, ms: RangeInclusive<i64>) -> impl DoubleEndedIterator<Item = &Record> {
        self.modified_keys(ms)
            .map(|(_, _, id)| self.0.records.get(id).expect("indexed record exists"))
    }

    /// How many live records were last modified within `ms`.
    pub fn count_modified(&self, ms: RangeInclusive<i64>) -> usize {
        self.modified_keys(ms).count()
    }

    fn modified_keys(
        &self,
        ms: RangeInclusive<i64>,
    ) -> impl DoubleEndedIterator<Item = &ModifiedKey> {
        let (lo, hi) = ms.into_inner();
        let range = (lo <= hi).then_some((lo, 0, 0)..=(hi, u64::MAX, u64::MAX));
        range.into_iter().flat_map(|r| self.0.by_modified.range(r))
    }
}
