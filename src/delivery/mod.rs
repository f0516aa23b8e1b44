//! Delivery: the writes the processor decided, applied to each side.
//!
//! ```text
//!  processor ──ExternalWrite──► external::ExternalWriter ──► Connector (batched, budgeted, retried)
//!                                         └─ status (active | auth_expired) ──► extsync.integration_status
//!            ──BillingWrite───► billing::BillingWriter  ──► Postgres (origin-tagged, version-guarded)
//! ```
//!
//! Both writers are idempotent: replaying the same intents leaves both sides
//! as they are (creates become upserts by the billing id stored on the
//! external record, or are checked against a [`CreateGuard`] when the entity
//! has no such field; billing writes are guarded by version).

pub mod billing;
pub mod external;
pub mod intent;
pub mod metrics;
pub mod retry;
pub mod status;

pub use billing::{BillingError, BillingWriter, BillingWriterConfig};
pub use external::{
    CreateGuard, DeliveryError, ExternalWriter, ExternalWriterConfig, Interruption,
    MemoryCreateGuard, NotFoundPolicy,
};
pub use intent::{BillingWrite, DeliveryOutcome, ExternalWrite, ExternalWriteOp, OutcomeKind};
pub use retry::RetryPolicy;
pub use status::{IntegrationStatus, PgStatusStore, StatusStore};
