//! The external writer of one integration: turns [`ExternalWrite`]s into the
//! connector's batch calls, retries what can pass, refreshes credentials,
//! and answers one [`DeliveryOutcome`] per write, in input order.
//!
//! ```text
//!  ExternalWrite* ─► coalesce (successive like writes of a record: one, latest values)
//!                 ─► waves (one write per billing id each, input order)
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

mod calls;
mod coalesce;
mod groups;
mod guard;
mod pause;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Mutex, watch};

pub use guard::{CreateGuard, DEFAULT_CREATE_GUARD_CAPACITY, MemoryCreateGuard};

use super::intent::{DeliveryOutcome, ExternalWrite};
use super::metrics;
use super::retry::RetryPolicy;
use super::status::{IntegrationStatus, StatusStore};
use crate::connectors::{Connector, ConnectorError, RequestBudget};

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
        let folded = coalesce::coalesce(writes);
        let sent = folded.as_ref().map_or(writes, |(sent, _)| sent.as_slice());
        let mut sent_outcomes: Vec<Option<DeliveryOutcome>> = vec![None; sent.len()];
        let run = self.write_all(sent, &mut sent_outcomes).await;
        if run.is_ok() && !writes.is_empty() {
            self.save_status(&IntegrationStatus::Active).await;
        }
        let counted = groups::count_outcomes(sent, &sent_outcomes);
        let outcomes = match &folded {
            Some((_, carrier)) => carrier.iter().map(|&k| sent_outcomes[k].clone()).collect(),
            None => sent_outcomes,
        };
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
}
