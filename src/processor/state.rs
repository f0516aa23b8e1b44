//! The processor's durable state per billing record and integration — the
//! link to the external record, the merge base, the latest external image
//! and the version ledger used to recognise echoes — in `extsync.records`,
//! fronted by a bounded moka cache.
//!
//! ```text
//!  processor ──load_many──► cache ──miss──► unsaved ──miss──► extsync.records
//!            ──remember───► cache, unsaved ──save (while the next batch runs)──► extsync.records
//! ```
//!
//! A batch's states are remembered at once, so the next batch sees them,
//! and saved while that next batch is processed; until then they stay in
//! `unsaved`, which the cache's evictions cannot drop. Queries that read
//! links from `extsync.records` directly wait for [`StateStore::settled`].
//!
//! A restarted or newly assigned processor reads only the records it meets;
//! change topics are never replayed to rebuild state.

use std::sync::Arc;

use dashmap::DashMap;

use chrono::{DateTime, Utc};
use moka::future::Cache;
use serde_json::{Map, Value};
use tokio::sync::watch;

use super::merge::Base;
use crate::store::Db;

/// Identity of one synced record: integration, entity, billing id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    pub integration: String,
    pub entity: String,
    pub billing_id: String,
}

/// What the processor remembers about one record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordState {
    pub external_id: Option<String>,
    pub base: Base,
    /// Latest known external fields.
    pub external_image: Map<String, Value>,
    pub external_version: Option<String>,
    /// Hash of the external fields extsync last wrote.
    pub written_hash: Option<String>,
    pub billing_changed_at: Option<DateTime<Utc>>,
    pub external_changed_at: Option<DateTime<Utc>>,
    pub deleted: bool,
    /// When extsync last wrote each billing field (view path → time).
    pub billing_written: std::collections::BTreeMap<String, DateTime<Utc>>,
    /// When extsync last wrote each external field (billing view path → time).
    pub external_written: std::collections::BTreeMap<String, DateTime<Utc>>,
    /// A create was sent; it may have landed even if its answer was never
    /// recorded, so the record is looked up before creating it again.
    pub create_sent: bool,
}

impl RecordState {
    /// A copy holding `image` as the latest external fields (the current
    /// image is not copied).
    pub fn with_image(&self, image: Map<String, Value>) -> RecordState {
        RecordState {
            external_id: self.external_id.clone(),
            base: self.base.clone(),
            external_image: image,
            external_version: self.external_version.clone(),
            written_hash: self.written_hash.clone(),
            billing_changed_at: self.billing_changed_at,
            external_changed_at: self.external_changed_at,
            deleted: self.deleted,
            billing_written: self.billing_written.clone(),
            external_written: self.external_written.clone(),
            create_sent: self.create_sent,
        }
    }
}

/// Durable state with a bounded in-memory front.
#[derive(Clone)]
pub struct StateStore {
    db: Db,
    /// Where cache misses are read: a connection of their own keeps them
    /// from queueing behind the saves on `db`. Saved states are committed,
    /// and unsaved ones are answered from memory, so either sees the latest.
    reads: Db,
    cache: Cache<RecordKey, Arc<RecordState>>,
    /// External record → billing id, for the links this process has seen.
    links: Cache<ExternalKey, String>,
    /// Remembered states whose save has not finished, newest per key.
    unsaved: Arc<DashMap<RecordKey, Arc<RecordState>>>,
    /// Batches remembered and not yet saved (or abandoned).
    saving: Arc<watch::Sender<Saving>>,
    /// The integration whose processor holds this handle: forgetting only
    /// touches its records (see [`StateStore::scoped_to`]).
    scope: Option<Arc<str>>,
}

/// A record's remembered state.
type Remembered = (RecordKey, Arc<RecordState>);

/// States remembered by [`StateStore::remember`], to be saved once. It
/// counts in [`StateStore::settled`] until dropped.
pub struct Unsaved {
    states: Vec<Remembered>,
    ticket: u64,
    saving: Arc<watch::Sender<Saving>>,
}

impl Drop for Unsaved {
    fn drop(&mut self) {
        self.saving.send_modify(|s| {
            s.open.remove(&self.ticket);
        });
    }
}

/// The remembered batches not saved yet, by ticket in the order they
/// were remembered.
#[derive(Default)]
struct Saving {
    next: u64,
    open: std::collections::BTreeSet<u64>,
}

/// Wakes when states are remembered (or saved) in a store's scope.
pub struct StateChanges(watch::Receiver<Saving>);

impl StateChanges {
    /// Returns at the next batch of states remembered or saved.
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            // The store is gone: nothing will change any more.
            std::future::pending::<()>().await;
        }
    }
}

/// Identity of an external record: integration, entity, external id.
type ExternalKey = (String, String, String);

impl StateStore {
    pub fn new(db: Db, capacity: u64) -> Self {
        Self {
            reads: db.clone(),
            db,
            cache: Cache::builder()
                .max_capacity(capacity)
                .support_invalidation_closures()
                .build(),
            links: Cache::builder()
                .max_capacity(capacity)
                .support_invalidation_closures()
                .build(),
            unsaved: Arc::new(DashMap::new()),
            saving: Arc::new(watch::channel(Saving::default()).0),
            scope: None,
        }
    }

    /// The same store, for the processor of `integration`: the cache is
    /// shared (the router sees the links every processor makes), but
    /// [`StateStore::forget_cached`] and [`StateStore::clear_cache`] only
    /// forget that integration's records, so one processor restarting
    /// never drops another's unsaved states, and
    /// [`StateStore::settled`] only waits for that integration's saves.
    pub fn scoped_to(&self, integration: &str) -> Self {
        Self {
            scope: Some(integration.into()),
            saving: Arc::new(watch::channel(Saving::default()).0),
            ..self.clone()
        }
    }

    /// Reads cache misses over `reads` instead of the saves' connection.
    pub fn reading_from(mut self, reads: Db) -> Self {
        self.reads = reads;
        self
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// States of `keys` (default state for records never seen).
    pub async fn load_many(
        &self,
        keys: &[RecordKey],
    ) -> Result<Vec<RecordState>, tokio_postgres::Error> {
        let mut out: Vec<Option<RecordState>> = Vec::with_capacity(keys.len());
        let mut misses = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match self.known(k).await {
                Some(s) => out.push(Some((*s).clone())),
                None => {
                    misses.push(i);
                    out.push(None);
                }
            }
        }
        if !misses.is_empty() {
            let ints: Vec<&str> = misses
                .iter()
                .map(|&i| keys[i].integration.as_str())
                .collect();
            let ents: Vec<&str> = misses.iter().map(|&i| keys[i].entity.as_str()).collect();
            let ids: Vec<&str> = misses
                .iter()
                .map(|&i| keys[i].billing_id.as_str())
                .collect();
            let rows = self
                .reads
                .client()
                .await?
                .query(
                    "SELECT r.integration, r.entity, r.billing_id, r.external_id, r.base, r.external_image,
                            r.external_version, r.written_hash, r.billing_changed_at, r.external_changed_at, r.deleted,
                            r.billing_written, r.external_written, r.create_sent
                       FROM extsync.records r
                       JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(integration, entity, billing_id)
                      USING (integration, entity, billing_id)",
                    &[&ints, &ents, &ids],
                )
                .await?;
            let mut found = std::collections::HashMap::new();
            for row in rows {
                let key = RecordKey {
                    integration: row.get(0),
                    entity: row.get(1),
                    billing_id: row.get(2),
                };
                let base: Value = row.get(4);
                let image: Value = row.get(5);
                found.insert(
                    key,
                    RecordState {
                        external_id: row.get(3),
                        base: serde_json::from_value(base).unwrap_or_default(),
                        external_image: match image {
                            Value::Object(m) => m,
                            _ => Map::new(),
                        },
                        external_version: row.get(6),
                        written_hash: row.get(7),
                        billing_changed_at: row.get(8),
                        external_changed_at: row.get(9),
                        deleted: row.get(10),
                        billing_written: serde_json::from_value(row.get::<_, Value>(11))
                            .unwrap_or_default(),
                        external_written: serde_json::from_value(row.get::<_, Value>(12))
                            .unwrap_or_default(),
                        create_sent: row.get(13),
                    },
                );
            }
            for i in misses {
                let state = found.get(&keys[i]).cloned().unwrap_or_default();
                self.cache
                    .insert(keys[i].clone(), Arc::new(state.clone()))
                    .await;
                out[i] = Some(state);
            }
        }
        Ok(out.into_iter().map(|s| s.unwrap_or_default()).collect())
    }

    /// The billing id linked to an external record, if any.
    pub async fn billing_id_of(
        &self,
        integration: &str,
        entity: &str,
        external_id: &str,
    ) -> Result<Option<String>, tokio_postgres::Error> {
        let key = (
            integration.to_string(),
            entity.to_string(),
            external_id.to_string(),
        );
        if let Some(id) = self.links.get(&key).await {
            return Ok(Some(id));
        }
        let row = self
            .reads
            .client()
            .await?
            .query_opt(
                "SELECT billing_id FROM extsync.records WHERE integration = $1 AND entity = $2 AND external_id = $3",
                &[&integration, &entity, &external_id],
            )
            .await?;
        let id: Option<String> = row.map(|r| r.get(0));
        if let Some(id) = &id {
            self.links.insert(key, id.clone()).await;
        }
        Ok(id)
    }

    /// `key`'s latest state in memory, saved or not; `None` when only
    /// Postgres may have it.
    pub async fn known(&self, key: &RecordKey) -> Option<Arc<RecordState>> {
        match self.cache.get(key).await {
            Some(s) => Some(s),
            None => self.unsaved.get(key).map(|s| s.value().clone()),
        }
    }

    /// Makes `states` the current ones at once (cache, links) and returns
    /// them for [`StateStore::save`].
    pub async fn remember(&self, states: Vec<(RecordKey, RecordState)>) -> Unsaved {
        let mut out = Vec::with_capacity(states.len());
        for (k, s) in states {
            // An external id that is no longer this record's stops linking to it.
            if let Some(old) = self.known(&k).await
                && let Some(ext) = &old.external_id
                && s.external_id.as_ref() != Some(ext)
            {
                let gone = (k.integration.clone(), k.entity.clone(), ext.clone());
                self.links.invalidate(&gone).await;
            }
            if let Some(ext) = &s.external_id {
                let link = (k.integration.clone(), k.entity.clone(), ext.clone());
                self.links.insert(link, k.billing_id.clone()).await;
            }
            let s = Arc::new(s);
            self.cache.insert(k.clone(), s.clone()).await;
            self.unsaved.insert(k.clone(), s.clone());
            out.push((k, s));
        }
        let mut ticket = 0;
        self.saving.send_modify(|s| {
            ticket = s.next;
            s.next += 1;
            s.open.insert(ticket);
        });
        Unsaved {
            states: out,
            ticket,
            saving: self.saving.clone(),
        }
    }

    /// Persists remembered states in one statement.
    pub async fn save(&self, unsaved: &Unsaved) -> Result<(), tokio_postgres::Error> {
        let result = self.write(&unsaved.states).await;
        if result.is_ok() {
            for (k, s) in &unsaved.states {
                self.unsaved.remove_if(k, |_, v| Arc::ptr_eq(v, s));
            }
        }
        result
    }

    /// Waits until every batch remembered so far is saved or dropped
    /// (batches remembered meanwhile, by parts running beside the caller,
    /// are not waited for).
    pub async fn settled(&self) {
        let mut rx = self.saving.subscribe();
        let before = rx.borrow().next;
        let _ = rx
            .wait_for(|s| s.open.first().is_none_or(|&t| t >= before))
            .await;
    }

    /// A signal of the states remembered in this store's scope from now on.
    pub fn changes(&self) -> StateChanges {
        StateChanges(self.saving.subscribe())
    }

    /// Whether `key`'s latest state is not saved yet.
    pub fn is_unsaved(&self, key: &RecordKey) -> bool {
        self.unsaved.contains_key(key)
    }

    async fn write(&self, states: &[Remembered]) -> Result<(), tokio_postgres::Error> {
        if states.is_empty() {
            return Ok(());
        }
        let col = |f: &dyn Fn(&Remembered) -> Option<String>| -> Vec<Option<String>> {
            states.iter().map(f).collect()
        };
        let ints = col(&|s| Some(s.0.integration.clone()));
        let ents = col(&|s| Some(s.0.entity.clone()));
        let ids = col(&|s| Some(s.0.billing_id.clone()));
        let ext = col(&|s| s.1.external_id.clone());
        let bases: Vec<Value> = states
            .iter()
            .map(|s| serde_json::to_value(&s.1.base).expect("base serializes"))
            .collect();
        let images: Vec<Value> = states
            .iter()
            .map(|s| Value::Object(s.1.external_image.clone()))
            .collect();
        let versions = col(&|s| s.1.external_version.clone());
        let hashes = col(&|s| s.1.written_hash.clone());
        let bat: Vec<Option<DateTime<Utc>>> =
            states.iter().map(|s| s.1.billing_changed_at).collect();
        let eat: Vec<Option<DateTime<Utc>>> =
            states.iter().map(|s| s.1.external_changed_at).collect();
        let del: Vec<bool> = states.iter().map(|s| s.1.deleted).collect();
        let written: Vec<Value> = states
            .iter()
            .map(|s| serde_json::to_value(&s.1.billing_written).expect("times serialize"))
            .collect();
        let ext_written: Vec<Value> = states
            .iter()
            .map(|s| serde_json::to_value(&s.1.external_written).expect("times serialize"))
            .collect();
        let sent: Vec<bool> = states.iter().map(|s| s.1.create_sent).collect();
        self.db
            .client()
            .await?
            .execute(
                "INSERT INTO extsync.records AS r (integration, entity, billing_id, external_id, base, external_image,
                        external_version, written_hash, billing_changed_at, external_changed_at, deleted,
                        billing_written, external_written, create_sent)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[],
                                      $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::bool[],
                                      $12::jsonb[], $13::jsonb[], $14::bool[])
                 ON CONFLICT (integration, entity, billing_id) DO UPDATE SET
                        external_id = excluded.external_id, base = excluded.base,
                        external_image = excluded.external_image, external_version = excluded.external_version,
                        written_hash = excluded.written_hash, billing_changed_at = excluded.billing_changed_at,
                        external_changed_at = excluded.external_changed_at, deleted = excluded.deleted,
                        billing_written = excluded.billing_written, external_written = excluded.external_written,
                        create_sent = excluded.create_sent, updated_at = now()",
                &[&ints, &ents, &ids, &ext, &bases, &images, &versions, &hashes, &bat, &eat, &del, &written, &ext_written, &sent],
            )
            .await?;
        Ok(())
    }

    /// Records, before the calls go out, that creates are being sent, each
    /// with the base it writes (see [`RecordState::create_sent`]).
    pub async fn mark_create_sent(
        &self,
        creates: &[(&RecordKey, &Base)],
    ) -> Result<(), tokio_postgres::Error> {
        if creates.is_empty() {
            return Ok(());
        }
        let ints: Vec<&str> = creates
            .iter()
            .map(|(k, _)| k.integration.as_str())
            .collect();
        let ents: Vec<&str> = creates.iter().map(|(k, _)| k.entity.as_str()).collect();
        let ids: Vec<&str> = creates.iter().map(|(k, _)| k.billing_id.as_str()).collect();
        let bases: Vec<Value> = creates
            .iter()
            .map(|(_, b)| serde_json::to_value(b).expect("base serializes"))
            .collect();
        self.db
            .client()
            .await?
            .execute(
                "INSERT INTO extsync.records AS r (integration, entity, billing_id, base, create_sent)
                 SELECT *, true FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[])
                 ON CONFLICT (integration, entity, billing_id) DO UPDATE
                    SET create_sent = true, base = excluded.base, updated_at = now()
                  WHERE r.external_id IS NULL",
                &[&ints, &ents, &ids, &bases],
            )
            .await?;
        Ok(())
    }

    /// Forgets the cached states and links (of the scope's integration,
    /// when scoped), e.g. when partitions are assigned; states not saved
    /// yet stay.
    pub fn forget_cached(&self) {
        match self.scope.clone() {
            None => {
                self.cache.invalidate_all();
                self.links.invalidate_all();
            }
            Some(i) => {
                let j = i.clone();
                // Only fails for caches built without invalidation closures.
                let _ = self
                    .cache
                    .invalidate_entries_if(move |k, _| *k.integration == *i);
                let _ = self.links.invalidate_entries_if(move |k, _| *k.0 == *j);
            }
        }
    }

    /// Forgets everything (of the scope's integration, when scoped),
    /// unsaved states too: for a processor restarting from its committed
    /// offsets, after its last save finished.
    pub fn clear_cache(&self) {
        self.forget_cached();
        match &self.scope {
            None => self.unsaved.clear(),
            Some(i) => self.unsaved.retain(|k, _| *k.integration != **i),
        }
    }
}
