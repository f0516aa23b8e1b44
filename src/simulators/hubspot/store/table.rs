//! One object type's records with the store's indexes (contact email,
//! last-modified time), and how a validated write lands in them: the
//! record created or changed and the [`Applied`] change that webhooks and
//! the written log report.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::{ObjectType, Record, Schema, WriteError};

/// A stable order for records modified in the same millisecond, unrelated
/// to their ids (HubSpot promises nothing there either); a bijection, so
/// `(updated_ms, tie_rank(id))` is unique.
pub fn tie_rank(id: u64) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

/// An entry of the modification-time index: `(updated_ms, tie_rank(id), id)`.
pub(super) type ModifiedKey = (i64, u64, u64);

pub(super) fn modified_key(rec: &Record) -> ModifiedKey {
    (rec.updated_ms, tie_rank(rec.id), rec.id)
}

#[derive(Default)]
pub(super) struct Table {
    pub(super) records: BTreeMap<u64, Record>,
    pub(super) by_email: HashMap<String, u64>,
    /// Live records in search order of the last-modified date.
    pub(super) by_modified: BTreeSet<ModifiedKey>,
    pub(super) schema: Schema,
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

impl Table {
    fn email_owner(&self, email: &str) -> Option<u64> {
        self.by_email.get(&email.to_lowercase()).copied()
    }

    /// Fails when `props` give a contact an email another contact holds
    /// (`id` is the record's own id on update).
    fn check_email_free(
        &self,
        ty: ObjectType,
        props: &BTreeMap<String, String>,
        id: Option<u64>,
    ) -> Result<(), WriteError> {
        if ty == ObjectType::Contacts
            && let Some(email) = props.get("email").filter(|e| !e.is_empty())
            && let Some(owner) = self.email_owner(email)
            && Some(owner) != id
        {
            return Err(WriteError::Conflict { existing: owner });
        }
        Ok(())
    }

    /// Applies validated `props` to record `id` (which must exist).
    pub(super) fn apply(
        &mut self,
        ty: ObjectType,
        id: u64,
        props: BTreeMap<String, String>,
        now: i64,
    ) -> Result<Applied, WriteError> {
        self.check_email_free(ty, &props, Some(id))?;
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

    /// Inserts record `id` with validated `props`.
    pub(super) fn insert(
        &mut self,
        ty: ObjectType,
        id: u64,
        props: BTreeMap<String, String>,
        now: i64,
    ) -> Result<Applied, WriteError> {
        self.check_email_free(ty, &props, None)?;
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

    pub(super) fn find_by(&self, ty: ObjectType, prop: &str, value: &str) -> Option<u64> {
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
