//! The external writer of one integration: turns [`ExternalWrite`]s into the
//! connector's batch calls, retries what can pass, refreshes credentials,
//! and answers one [`DeliveryOutcome`] per write, in input order.
//!
//! ```text
//!  ExternalWrite* ─► waves (one write per billing id each, input order)
//!                 ─► groups (object, op) ─► chunks ≤ max_batch ─► Connector::write_batch
//!                        ▲        transient / rate_limit: backoff + jitter, retry_after as floor
//!                        └─────── auth_expired: authenticate, retry once; else pause the integration
//! ```
//!
//! A paused integration's status is `auth_expired` (saved through its
//! [`StatusStore`], with the vendor's message); its writes come back as
//! [`DeliveryError::Interrupted`] until authentication succeeds, and the
//! first call that completes after that saves `active` again.
//!
//! An update whose record is gone (`not_found`) follows the entity's
//! [`NotFoundPolicy`]: skipped, or created again.
//!
//! Idempotency rules:
//! - A create whose entity has a `billing_id_field` is sent as an upsert by
//!   that field, so a retry, a replay or a concurrent process finds the
//!   record the first attempt made.
//! - A create without one is checked against a [`CreateGuard`] first, keyed
//!   by `(object, billing id)`: when the guard knows a record made for that
//!   billing id, nothing is sent and the outcome is `Skipped` with that id.
//!   The default guard remembers the creates this writer made (bounded); a
//!   caller with durable links or a vendor search plugs in its own.
//! - Updates and deletes name the record and are idempotent by nature.
//!
//! Nothing is dropped: a write either gets an outcome (`Failed` ones carry
//! the vendor's message and can be retried later) or the call returns
//! [`DeliveryError::Interrupted`], which lists what was applied and leaves
//! the rest for the caller to hand in again.

#![allow(clippy::result_large_err)] // ConnectorError is the shared error type of every connector.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::{Mutex, watch};

use super::intent::{DeliveryOutcome, ExternalWrite, ExternalWriteOp, OutcomeKind};
use super::metrics;
use super::retry::{Attempts, RetryPolicy};
use super::status::{IntegrationStatus, StatusStore};
use crate::connectors::{
    Connector, ConnectorError, ErrorClass, ExternalRecord, RequestBudget, WriteOp, WriteOutcome,
};

/// Default capacity of [`MemoryCreateGuard`].
pub const DEFAULT_CREATE_GUARD_CAPACITY: u64 = 100_000;

/// What an update whose record no longer exists does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NotFoundPolicy {
    /// Leave it: the outcome is `Skipped`.
    #[default]
    Skip,
    /// Create the record again (guarded like any create).
    Create,
}

/// Settings of one external writer.
#[derive(Debug, Clone, Default)]
pub struct ExternalWriterConfig {
    pub retry: RetryPolicy,
    /// What an update whose record is gone does, for entities not in
    /// `not_found_by_entity`.
    pub not_found: NotFoundPolicy,
    /// The same per entity (billing entity name), as the pipeline's
    /// `onNotFound` sets it.
    pub not_found_by_entity: HashMap<String, NotFoundPolicy>,
    /// Largest batch sent, below the connector's own [`Connector::max_batch`].
    pub max_batch: Option<usize>,
}

impl ExternalWriterConfig {
    /// The [`NotFoundPolicy`] of `entity`.
    pub fn not_found_for(&self, entity: &str) -> NotFoundPolicy {
        self.not_found_by_entity
            .get(entity)
            .copied()
            .unwrap_or(self.not_found)
    }
}

/// Why a call stopped before every write had an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// Credentials refused after a refresh; the integration is paused.
    AuthExpired,
    /// `transient` or `rate_limit` outlasted the retry policy.
    RetriesExhausted,
}

impl std::fmt::Display for Interruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Interruption::AuthExpired => "credentials refused after a refresh (integration paused)",
            Interruption::RetriesExhausted => "retries exhausted",
        })
    }
}

/// Why [`ExternalWriter::write`] did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A write of another integration was handed to this writer; nothing was sent.
    #[error(
        "write {index} is for integration {found:?}, but this writer serves {integration:?}; nothing was sent"
    )]
    WrongIntegration {
        integration: String,
        index: usize,
        found: String,
    },
    /// The call stopped part-way. `outcomes[i]` is the outcome of write `i`
    /// when it was applied, `None` when it must be handed in again later.
    #[error(
        "integration {integration}: {reason}; {pending} write(s) not applied, retry them later"
    )]
    Interrupted {
        integration: String,
        reason: Interruption,
        pending: usize,
        outcomes: Vec<Option<DeliveryOutcome>>,
        #[source]
        source: ConnectorError,
    },
}

/// Guards creates of records whose entity has no billing-id field to upsert by.
#[async_trait]
pub trait CreateGuard: Send + Sync {
    /// The external id of a record already made for `write`'s billing id
    /// in `write.object`, if any.
    async fn existing(&self, write: &ExternalWrite) -> Result<Option<String>, ConnectorError>;

    /// Records that `write` created `external_id`.
    async fn created(&self, write: &ExternalWrite, external_id: &str);
}

/// A [`CreateGuard`] that remembers this process's creates, bounded by
/// capacity (least recently used forgotten first).
pub struct MemoryCreateGuard {
    made: moka::sync::Cache<(String, String), String>,
}

impl MemoryCreateGuard {
    pub fn new(capacity: u64) -> Self {
        MemoryCreateGuard {
            made: moka::sync::Cache::new(capacity),
        }
    }
}

impl Default for MemoryCreateGuard {
    fn default() -> Self {
        Self::new(DEFAULT_CREATE_GUARD_CAPACITY)
    }
}

#[async_trait]
impl CreateGuard for MemoryCreateGuard {
    async fn existing(&self, write: &ExternalWrite) -> Result<Option<String>, ConnectorError> {
        Ok(self
            .made
            .get(&(write.object.clone(), write.billing_id.clone())))
    }

    async fn created(&self, write: &ExternalWrite, external_id: &str) {
        self.made.insert(
            (write.object.clone(), write.billing_id.clone()),
            external_id.to_string(),
        );
    }
}

/// Batch calls of one group that may be in flight at once.
const CALLS_IN_FLIGHT: usize = 4;

/// Writes one integration's changes to its external system.
pub struct ExternalWriter {
    integration: String,
    connector: Arc<dyn Connector>,
    budget: Option<RequestBudget>,
    config: ExternalWriterConfig,
    guard: Arc<dyn CreateGuard>,
    status: watch::Sender<IntegrationStatus>,
    status_store: Option<Arc<dyn StatusStore>>,
    /// The status last saved to `status_store` (`active` or `auth_expired`).
    saved_status: Mutex<Option<&'static str>>,
}

/// How a write is sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum OpKind {
    Create,
    Upsert(String),
    Update,
    Delete,
}

/// One write ready to send.
#[derive(Debug, Clone)]
struct Item {
    index: usize,
    op: WriteOp,
    /// A create sent without an upsert key (goes through the guard).
    guarded: bool,
    /// A re-create after `not_found`: it gets no second re-create.
    recreate: bool,
}

/// What stopped a batch.
struct Stop {
    reason: Interruption,
    error: ConnectorError,
}

impl ExternalWriter {
    /// A writer for `integration` over `connector`. The built-in connectors
    /// spend the integration's [`RequestBudget`] on every HTTP call
    /// themselves; for one that does not, add it with [`Self::with_budget`].
    pub fn new(
        integration: impl Into<String>,
        connector: Arc<dyn Connector>,
        config: ExternalWriterConfig,
    ) -> Self {
        let integration = integration.into();
        let (status, _) = watch::channel(IntegrationStatus::Active);
        ExternalWriter {
            integration,
            connector,
            budget: None,
            config,
            guard: Arc::new(MemoryCreateGuard::default()),
            status,
            status_store: None,
            saved_status: Mutex::new(None),
        }
    }

    /// Waits for one permit of `budget` before every batch call.
    pub fn with_budget(mut self, budget: RequestBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Uses `guard` for creates without a billing-id field.
    pub fn with_create_guard(mut self, guard: Arc<dyn CreateGuard>) -> Self {
        self.guard = guard;
        self
    }

    /// Saves the integration's status to `store` whenever it changes (and
    /// once at the first write, so a status left by an earlier process is
    /// brought up to date).
    pub fn with_status_store(mut self, store: Arc<dyn StatusStore>) -> Self {
        self.status_store = Some(store);
        self
    }

    pub fn integration(&self) -> &str {
        &self.integration
    }

    /// Follows the integration's status.
    pub fn status(&self) -> watch::Receiver<IntegrationStatus> {
        self.status.subscribe()
    }

    /// The largest batch this writer sends.
    pub fn max_batch(&self) -> usize {
        let own = self.connector.max_batch().max(1);
        self.config.max_batch.map_or(own, |m| m.clamp(1, own))
    }

    /// Applies `writes` and answers one outcome per write, in input order.
    /// Writes for one billing id are applied in input order; others are
    /// batched by object and operation.
    pub async fn write(
        &self,
        writes: &[ExternalWrite],
    ) -> Result<Vec<DeliveryOutcome>, DeliveryError> {
        if let Some((index, w)) = writes
            .iter()
            .enumerate()
            .find(|(_, w)| w.integration != self.integration)
        {
            return Err(DeliveryError::WrongIntegration {
                integration: self.integration.clone(),
                index,
                found: w.integration.clone(),
            });
        }
        let mut outcomes: Vec<Option<DeliveryOutcome>> = vec![None; writes.len()];
        let run = self.write_all(writes, &mut outcomes).await;
        if run.is_ok() && !writes.is_empty() {
            self.save_status(&IntegrationStatus::Active).await;
        }
        let counted = count_outcomes(writes, &outcomes);
        for ((object, outcome), n) in counted {
            ::metrics::counter!(metrics::WRITES_TOTAL,
                "integration" => self.integration.clone(),
                "object" => object,
                "outcome" => outcome)
            .increment(n);
        }
        match run {
            Ok(()) => Ok(outcomes
                .into_iter()
                .map(|o| o.expect("every write has an outcome"))
                .collect()),
            Err(stop) => {
                let pending = outcomes.iter().filter(|o| o.is_none()).count();
                tracing::warn!(
                    integration = %self.integration,
                    reason = %stop.reason,
                    error_type = stop.error.class.as_str(),
                    pending,
                    "external writes interrupted; kept for a later retry"
                );
                Err(DeliveryError::Interrupted {
                    integration: self.integration.clone(),
                    reason: stop.reason,
                    pending,
                    outcomes,
                    source: stop.error,
                })
            }
        }
    }

    async fn write_all(
        &self,
        writes: &[ExternalWrite],
        outcomes: &mut [Option<DeliveryOutcome>],
    ) -> Result<(), Stop> {
        if matches!(*self.status.borrow(), IntegrationStatus::AuthExpired { .. }) {
            self.try_resume().await?;
        }
        for wave in waves(writes) {
            let mut groups: Vec<(String, OpKind, Vec<Item>)> = Vec::new();
            for index in wave {
                let w = &writes[index];
                let Some(item) = self.plan(w, index, false, outcomes).await else {
                    continue;
                };
                push_grouped(&mut groups, &w.object, item);
            }
            for (object, _, items) in groups {
                self.run_group(writes, &object, items, outcomes).await?;
            }
        }
        Ok(())
    }

    /// The operation for `w`, or `None` when its outcome is already known
    /// (a guarded create that was made before).
    async fn plan(
        &self,
        w: &ExternalWrite,
        index: usize,
        recreate: bool,
        outcomes: &mut [Option<DeliveryOutcome>],
    ) -> Option<Item> {
        let create = |w: &ExternalWrite| {
            let mut fields = w.fields.clone();
            match &w.billing_id_field {
                Some(f) => {
                    fields.insert(f.clone(), w.billing_id.clone().into());
                    (
                        WriteOp::Upsert {
                            id_field: f.clone(),
                            id_value: w.billing_id.clone(),
                            fields,
                        },
                        false,
                    )
                }
                None => (WriteOp::Create { fields }, true),
            }
        };
        let (op, guarded) = match (&w.op, recreate) {
            (ExternalWriteOp::Create, _) | (ExternalWriteOp::Update { .. }, true) => create(w),
            (ExternalWriteOp::Update { external_id }, false) => (
                WriteOp::Update {
                    id: external_id.clone(),
                    fields: w.fields.clone(),
                },
                false,
            ),
            (ExternalWriteOp::Delete { external_id }, _) => (
                WriteOp::Delete {
                    id: external_id.clone(),
                },
                false,
            ),
        };
        if guarded {
            match self.guard.existing(w).await {
                Ok(Some(id)) => {
                    outcomes[index] = Some(DeliveryOutcome {
                        billing_id: w.billing_id.clone(),
                        kind: OutcomeKind::Skipped,
                        external_id: Some(id),
                        version: None,
                        error: None,
                    });
                    return None;
                }
                Ok(None) => {}
                Err(e) => {
                    outcomes[index] = Some(failed(w, &e));
                    return None;
                }
            }
        }
        Some(Item {
            index,
            op,
            guarded,
            recreate,
        })
    }

    /// Sends one group in chunks, records outcomes, then re-creates the
    /// records that updates found gone (when configured).
    async fn run_group(
        &self,
        writes: &[ExternalWrite],
        object: &str,
        items: Vec<Item>,
        outcomes: &mut [Option<DeliveryOutcome>],
    ) -> Result<(), Stop> {
        use futures::StreamExt;
        let mut recreates: Vec<(String, OpKind, Vec<Item>)> = Vec::new();
        let chunks: Vec<&[Item]> = items.chunks(self.max_batch()).collect();
        // A group holds each record once (see `waves`), so its chunks are
        // independent and go out together; their answers apply in order.
        let calls: Vec<_> = chunks
            .iter()
            .map(|chunk| self.send_owned(object, chunk.iter().map(|i| i.op.clone()).collect()))
            .collect();
        let answers: Vec<Result<_, Stop>> = futures::stream::iter(calls)
            .buffered(CALLS_IN_FLIGHT)
            .collect()
            .await;
        let mut stopped = None;
        for (chunk, answer) in chunks.into_iter().zip(answers) {
            let results = match answer {
                Ok(results) => results,
                Err(stop) => {
                    // Its writes stay pending; the other chunks' outcomes stand.
                    stopped.get_or_insert(stop);
                    continue;
                }
            };
            let mut errors: HashMap<ErrorClass, u64> = HashMap::new();
            for (item, result) in chunk.iter().zip(results) {
                let w = &writes[item.index];
                let outcome = match result {
                    Ok(o) => {
                        if item.guarded {
                            self.guard.created(w, &o.id).await;
                        }
                        succeeded(w, &item.op, o)
                    }
                    Err(e) if e.class == ErrorClass::NotFound => match &item.op {
                        WriteOp::Delete { .. } => skipped(w),
                        WriteOp::Update { .. }
                            if self.config.not_found_for(&w.entity) == NotFoundPolicy::Create
                                && !item.recreate =>
                        {
                            if let Some(again) = self.plan(w, item.index, true, outcomes).await {
                                push_grouped(&mut recreates, object, again);
                            }
                            continue;
                        }
                        WriteOp::Update { .. } => skipped(w),
                        _ => {
                            *errors.entry(e.class).or_default() += 1;
                            failed(w, &e)
                        }
                    },
                    Err(e) => {
                        *errors.entry(e.class).or_default() += 1;
                        failed(w, &e)
                    }
                };
                outcomes[item.index] = Some(outcome);
            }
            for (class, n) in errors {
                ::metrics::counter!(metrics::ERRORS_TOTAL,
                    "integration" => self.integration.clone(),
                    "error_type" => class.as_str())
                .increment(n);
            }
        }
        if let Some(stop) = stopped {
            return Err(stop);
        }
        for (object, _, items) in recreates {
            Box::pin(self.run_group(writes, &object, items, outcomes)).await?;
        }
        Ok(())
    }

    /// [`Self::send`] of owned operations.
    async fn send_owned(
        &self,
        object: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<WriteOutcome, ConnectorError>>, Stop> {
        self.send(object, &ops).await
    }

    /// Sends `ops` until each has a final answer. Retryable failures of the
    /// whole call or of single operations are retried; a call that failed
    /// as a whole for a reason that cannot pass is split in halves until the
    /// operation at fault is alone, so the others still go through.
    async fn send(
        &self,
        object: &str,
        ops: &[WriteOp],
    ) -> Result<Vec<Result<WriteOutcome, ConnectorError>>, Stop> {
        let mut results: Vec<Option<Result<WriteOutcome, ConnectorError>>> =
            (0..ops.len()).map(|_| None).collect();
        let mut queue: VecDeque<Vec<usize>> = VecDeque::from([(0..ops.len()).collect()]);
        let mut attempts = Attempts::start();
        let mut reauthenticated = false;
        while let Some(idx) = queue.pop_front() {
            let batch: Vec<WriteOp> = idx.iter().map(|&i| ops[i].clone()).collect();
            match self.call(object, batch).await {
                Ok(answers) => {
                    let mut again = Vec::new();
                    let mut worst: Option<ConnectorError> = None;
                    for (&i, answer) in idx.iter().zip(answers) {
                        match answer {
                            Err(e) if e.retryable() => {
                                again.push(i);
                                worst = Some(match worst {
                                    Some(w) if w.retry_after >= e.retry_after => w,
                                    _ => e,
                                });
                            }
                            other => results[i] = Some(other),
                        }
                    }
                    if let Some(e) = worst {
                        if again.len() < idx.len() && e.class != ErrorClass::AuthExpired {
                            reauthenticated = false;
                        }
                        self.before_retry(e, &mut attempts, &mut reauthenticated)
                            .await?;
                        queue.push_front(again);
                    } else {
                        reauthenticated = false;
                    }
                }
                Err(e) if e.retryable() => {
                    self.before_retry(e, &mut attempts, &mut reauthenticated)
                        .await?;
                    queue.push_front(idx);
                }
                Err(e) if idx.len() > 1 => {
                    tracing::debug!(
                        integration = %self.integration,
                        object,
                        size = idx.len(),
                        error_type = e.class.as_str(),
                        "batch refused as a whole; splitting it"
                    );
                    let (a, b) = idx.split_at(idx.len() / 2);
                    queue.push_front(b.to_vec());
                    queue.push_front(a.to_vec());
                }
                Err(e) => results[idx[0]] = Some(Err(e)),
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every operation answered"))
            .collect())
    }

    /// Records of `object` whose unique `field` holds one of `billing_ids`
    /// (a create that landed before a crash carries its billing id).
    pub async fn existing(
        &self,
        object: &str,
        field: &str,
        billing_ids: &[String],
    ) -> Result<Vec<ExternalRecord>, ConnectorError> {
        self.reading(|| self.connector.find_by_field(object, field, billing_ids))
            .await
    }

    /// The records of `object` with these ids as they are now; records that
    /// no longer exist are left out.
    pub async fn current(
        &self,
        object: &str,
        ids: &[String],
    ) -> Result<Vec<ExternalRecord>, ConnectorError> {
        self.reading(|| self.connector.read_many(object, ids)).await
    }

    /// One read, within the rate budget, retried like writes.
    async fn reading<'a, F, Fut>(&'a self, read: F) -> Result<Vec<ExternalRecord>, ConnectorError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<ExternalRecord>, ConnectorError>> + 'a,
    {
        let mut attempts = Attempts::start();
        let mut reauthenticated = false;
        loop {
            if let Some(b) = &self.budget {
                b.acquire().await;
            }
            match read().await {
                Ok(found) => return Ok(found),
                Err(e) => {
                    if let Err(stop) = self
                        .before_retry(e, &mut attempts, &mut reauthenticated)
                        .await
                    {
                        return Err(stop.error);
                    }
                }
            }
        }
    }

    /// One batch call: budget, connector, metrics. A connector that answers
    /// a different number of results than it was given is treated as a
    /// transient failure of the whole call.
    async fn call(
        &self,
        object: &str,
        batch: Vec<WriteOp>,
    ) -> Result<Vec<Result<WriteOutcome, ConnectorError>>, ConnectorError> {
        if let Some(b) = &self.budget {
            b.acquire().await;
        }
        let n = batch.len();
        let started = Instant::now();
        let answer = self.connector.write_batch(object, batch).await;
        ::metrics::counter!(metrics::CALLS_TOTAL,
            "integration" => self.integration.clone(),
            "object" => object.to_string())
        .increment(1);
        ::metrics::histogram!(metrics::CALL_DURATION_SECONDS,
            "integration" => self.integration.clone())
        .record(started.elapsed().as_secs_f64());
        match answer {
            Ok(r) if r.len() != n => Err(ConnectorError::new(
                ErrorClass::Transient,
                format!(
                    "the connector answered {} results for {n} operations",
                    r.len()
                ),
            )),
            other => other,
        }
    }

    /// Waits before retrying after `e`, or stops the batch.
    async fn before_retry(
        &self,
        e: ConnectorError,
        attempts: &mut Attempts,
        reauthenticated: &mut bool,
    ) -> Result<(), Stop> {
        if e.class == ErrorClass::AuthExpired {
            if *reauthenticated {
                return Err(self.pause(e).await);
            }
            *reauthenticated = true;
            tracing::info!(integration = %self.integration, "credentials refused; authenticating again");
            return match self.connector.authenticate().await {
                Ok(()) => Ok(()),
                Err(auth) => Err(self.pause(auth).await),
            };
        }
        let Some(delay) = attempts.next_delay(&self.config.retry, e.retry_after) else {
            return Err(Stop {
                reason: Interruption::RetriesExhausted,
                error: e,
            });
        };
        ::metrics::counter!(metrics::RETRIES_TOTAL,
            "integration" => self.integration.clone(),
            "error_type" => e.class.as_str())
        .increment(1);
        tracing::debug!(
            integration = %self.integration,
            error_type = e.class.as_str(),
            delay_ms = delay.as_millis() as u64,
            "retrying batch"
        );
        tokio::time::sleep(delay).await;
        Ok(())
    }

    async fn pause(&self, error: ConnectorError) -> Stop {
        tracing::warn!(
            integration = %self.integration,
            error_type = error.class.as_str(),
            code = error.code.as_deref().unwrap_or(""),
            "credentials refused after a refresh; pausing the integration's writes"
        );
        ::metrics::gauge!(metrics::PAUSED, "integration" => self.integration.clone()).set(1.0);
        let status = IntegrationStatus::AuthExpired {
            since: Utc::now(),
            message: error.message.clone(),
            code: error.code.as_deref().map(str::to_string),
        };
        self.status.send_replace(status.clone());
        self.save_status(&status).await;
        Stop {
            reason: Interruption::AuthExpired,
            error,
        }
    }

    /// Saves `status` through the status store when it differs from the
    /// status saved last. A failed save is logged and tried again at the
    /// next change or write.
    async fn save_status(&self, status: &IntegrationStatus) {
        let Some(store) = &self.status_store else {
            return;
        };
        let mut saved = self.saved_status.lock().await;
        if *saved == Some(status.as_str()) {
            return;
        }
        match store.save(&self.integration, status).await {
            Ok(()) => *saved = Some(status.as_str()),
            Err(e) => tracing::warn!(
                integration = %self.integration,
                status = status.as_str(),
                error = %e,
                "saving the integration's status failed; trying again later"
            ),
        }
    }

    /// A paused integration resumes once authentication succeeds again.
    async fn try_resume(&self) -> Result<(), Stop> {
        match self.connector.authenticate().await {
            Ok(()) => {
                tracing::info!(integration = %self.integration, "credentials accepted; resuming writes");
                ::metrics::gauge!(metrics::PAUSED, "integration" => self.integration.clone())
                    .set(0.0);
                self.status.send_replace(IntegrationStatus::Active);
                Ok(())
            }
            Err(e) => {
                let current = self.status.borrow().clone();
                self.save_status(&current).await;
                Err(Stop {
                    reason: Interruption::AuthExpired,
                    error: e,
                })
            }
        }
    }
}

/// Splits writes into waves holding at most one write per billing id, so a
/// billing id's writes are applied in input order while the rest batch.
fn waves(writes: &[ExternalWrite]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    let mut waves: Vec<Vec<usize>> = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        let n = seen
            .entry((w.object.as_str(), w.billing_id.as_str()))
            .or_insert(0);
        if waves.len() <= *n {
            waves.push(Vec::new());
        }
        waves[*n].push(i);
        *n += 1;
    }
    waves
}

fn op_kind(op: &WriteOp) -> OpKind {
    match op {
        WriteOp::Create { .. } => OpKind::Create,
        WriteOp::Upsert { id_field, .. } => OpKind::Upsert(id_field.clone()),
        WriteOp::Update { .. } => OpKind::Update,
        WriteOp::Delete { .. } => OpKind::Delete,
    }
}

fn push_grouped(groups: &mut Vec<(String, OpKind, Vec<Item>)>, object: &str, item: Item) {
    let kind = op_kind(&item.op);
    match groups
        .iter_mut()
        .find(|(o, k, _)| o == object && *k == kind)
    {
        Some((_, _, items)) => items.push(item),
        None => groups.push((object.to_string(), kind, vec![item])),
    }
}

fn succeeded(w: &ExternalWrite, op: &WriteOp, o: WriteOutcome) -> DeliveryOutcome {
    let kind = match op {
        WriteOp::Delete { .. } => OutcomeKind::Deleted,
        _ if o.created => OutcomeKind::Created,
        WriteOp::Create { .. } => OutcomeKind::Created,
        _ => OutcomeKind::Updated,
    };
    DeliveryOutcome {
        billing_id: w.billing_id.clone(),
        kind,
        external_id: Some(o.id),
        version: o.version,
        error: None,
    }
}

fn skipped(w: &ExternalWrite) -> DeliveryOutcome {
    DeliveryOutcome {
        billing_id: w.billing_id.clone(),
        kind: OutcomeKind::Skipped,
        external_id: match &w.op {
            ExternalWriteOp::Create => None,
            ExternalWriteOp::Update { external_id } | ExternalWriteOp::Delete { external_id } => {
                Some(external_id.clone())
            }
        },
        version: None,
        error: None,
    }
}

fn failed(w: &ExternalWrite, e: &ConnectorError) -> DeliveryOutcome {
    DeliveryOutcome {
        billing_id: w.billing_id.clone(),
        kind: OutcomeKind::Failed,
        external_id: match &w.op {
            ExternalWriteOp::Create => e.existing_id.clone(),
            ExternalWriteOp::Update { external_id } | ExternalWriteOp::Delete { external_id } => {
                Some(external_id.clone())
            }
        },
        version: None,
        error: Some((e.class, e.message.clone())),
    }
}

fn count_outcomes(
    writes: &[ExternalWrite],
    outcomes: &[Option<DeliveryOutcome>],
) -> HashMap<(String, &'static str), u64> {
    let mut counted: HashMap<(String, &'static str), u64> = HashMap::new();
    for (w, o) in writes.iter().zip(outcomes) {
        if let Some(o) = o {
            *counted
                .entry((w.object.clone(), metrics::outcome_label(o.kind)))
                .or_default() += 1;
        }
    }
    counted
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn w(billing_id: &str, object: &str) -> ExternalWrite {
        ExternalWrite {
            integration: "crm".into(),
            entity: "accounts".into(),
            object: object.into(),
            billing_id: billing_id.into(),
            op: ExternalWriteOp::Create,
            fields: Map::new(),
            billing_id_field: None,
            idempotency_key: String::new(),
        }
    }

    #[test]
    fn waves_keep_each_billing_id_in_input_order() {
        let writes = vec![
            w("a", "Account"),
            w("b", "Account"),
            w("a", "Account"),
            w("a", "Contact"),
            w("a", "Account"),
            w("c", "Account"),
        ];
        assert_eq!(waves(&writes), vec![vec![0, 1, 3, 5], vec![2], vec![4]]);
    }
}
