//! Connectors: one module per external system, each implementing
//! [`Connector`] against that system's real API (only the base URL and the
//! credentials differ between the real service and its simulator).
//!
//! ```text
//!  ingest ──read / list_changes / verify_webhook──► Connector ──HTTP──► Salesforce, HubSpot, …
//!  delivery ──write / write_batch─────────────────►    │
//!                                                      └─ RequestBudget (one per integration)
//! ```
//!
//! A new system is a copy of an existing folder:
//! `connectors/<system>/{mod,auth,read,write,webhook,errors}.rs`.

pub mod auth;
pub mod budget;
pub mod error;
pub mod http;
pub mod hubspot;
pub mod record;
pub mod registry;
pub mod salesforce;

use async_trait::async_trait;

pub use auth::{Credentials, TokenCache};
pub use budget::RequestBudget;
pub use error::{ConnectorError, ErrorClass};
pub use record::{
    ChangePage, Cursor, ExternalRecord, WebhookEvent, WebhookRequest, WriteOp, WriteOutcome,
};

use crate::config::Provider;

/// What every external system offers extsync. Object names are the system's
/// own (`Account`, `contacts`); ids are the system's record ids.
#[async_trait]
pub trait Connector: Send + Sync {
    fn provider(&self) -> Provider;

    /// Obtains a fresh access token (first login or refresh-token grant).
    /// Calls that meet `auth_expired` refresh once by themselves; this is for
    /// callers that want to check credentials up front.
    async fn authenticate(&self) -> Result<(), ConnectorError>;

    /// Reads one record, all fields the connector knows for `object`.
    async fn read(&self, object: &str, id: &str) -> Result<ExternalRecord, ConnectorError>;

    /// Reads several records in the system's batch form (hydrating webhooks
    /// that carry only ids). Records that no longer exist are left out.
    async fn read_many(
        &self,
        object: &str,
        ids: &[String],
    ) -> Result<Vec<ExternalRecord>, ConnectorError>;

    /// Records whose unique field `field` holds one of `values` (extsync's
    /// billing-id field), in the system's batch form; values without a
    /// record are left out.
    async fn find_by_field(
        &self,
        object: &str,
        field: &str,
        values: &[String],
    ) -> Result<Vec<ExternalRecord>, ConnectorError>;

    /// One page of records modified at or after `since` (a `(timestamp, id)`
    /// watermark), oldest first, ordered by `(modified_at, id)`. `page` is the
    /// token of a previous [`ChangePage::next_page`].
    async fn list_changes(
        &self,
        object: &str,
        since: &Cursor,
        page: Option<&str>,
    ) -> Result<ChangePage, ConnectorError>;

    /// Verifies a webhook request's signature and freshness, then parses it.
    /// A bad or missing signature or a stale timestamp is
    /// [`ErrorClass::Unauthenticated`]; a malformed body is [`ErrorClass::FieldValidation`].
    fn verify_webhook(&self, request: &WebhookRequest)
    -> Result<Vec<WebhookEvent>, ConnectorError>;

    /// Applies one write.
    async fn write(&self, object: &str, op: WriteOp) -> Result<WriteOutcome, ConnectorError>;

    /// Applies writes in the system's batch form, at most [`Connector::max_batch`]
    /// per call. The outer error fails the whole call (nothing or everything
    /// may have been applied: callers retry idempotently); inner results are
    /// per operation, in input order.
    async fn write_batch(
        &self,
        object: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<WriteOutcome, ConnectorError>>, ConnectorError>;

    /// Largest batch the system accepts in one call.
    fn max_batch(&self) -> usize;
}
