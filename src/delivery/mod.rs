//! Delivery: the writes the processor decided, applied to each side.
//!
//! ```text
//!  processor ──ExternalWrite──► external::ExternalWriter ──► Connector (batched, budgeted, retried)
//!            ──BillingWrite───► billing::BillingWriter  ──► Postgres (origin-tagged, version-guarded)
//! ```
//!
//! Both writers are idempotent: replaying the same intents leaves both sides
//! as they are (upserts by external id; creates guarded by the billing id
//! stored on the external record; billing writes guarded by version).

pub mod intent;

pub use intent::{BillingWrite, DeliveryOutcome, ExternalWrite, ExternalWriteOp, OutcomeKind};
