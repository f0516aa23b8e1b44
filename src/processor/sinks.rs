//! Where the processor's writes go: one external sink per integration and
//! one billing sink. Delivery's writers implement these; a sink error means
//! "nothing was lost, try the batch again later".

use async_trait::async_trait;

use crate::connectors::ExternalRecord;
use crate::delivery::{BillingWrite, DeliveryOutcome, ExternalWrite};

/// A batch could not be delivered at all (integration paused, database
/// down); the processor retries the whole batch.
#[derive(Debug, thiserror::Error)]
#[error("delivery paused: {0}")]
pub struct SinkError(pub String);

#[async_trait]
pub trait ExternalSink: Send + Sync {
    /// One outcome per write, in input order.
    async fn deliver(&self, writes: Vec<ExternalWrite>) -> Result<Vec<DeliveryOutcome>, SinkError>;

    /// Records of `object` whose unique `field` holds one of `billing_ids`.
    async fn existing(
        &self,
        object: &str,
        field: &str,
        billing_ids: &[String],
    ) -> Result<Vec<ExternalRecord>, SinkError>;

    /// The records of `object` with these ids as they are now; records that
    /// no longer exist are left out.
    async fn current(&self, object: &str, ids: &[String])
    -> Result<Vec<ExternalRecord>, SinkError>;
}

#[async_trait]
pub trait BillingSink: Send + Sync {
    /// One outcome per write, in input order.
    async fn apply(&self, writes: Vec<BillingWrite>) -> Result<Vec<DeliveryOutcome>, SinkError>;
}

#[async_trait]
impl ExternalSink for crate::delivery::external::ExternalWriter {
    async fn deliver(&self, writes: Vec<ExternalWrite>) -> Result<Vec<DeliveryOutcome>, SinkError> {
        self.write(&writes)
            .await
            .map_err(|e| SinkError(e.to_string()))
    }

    async fn existing(
        &self,
        object: &str,
        field: &str,
        billing_ids: &[String],
    ) -> Result<Vec<ExternalRecord>, SinkError> {
        crate::delivery::external::ExternalWriter::existing(self, object, field, billing_ids)
            .await
            .map_err(|e| SinkError(format!("looking up existing records: {e}")))
    }

    async fn current(
        &self,
        object: &str,
        ids: &[String],
    ) -> Result<Vec<ExternalRecord>, SinkError> {
        crate::delivery::external::ExternalWriter::current(self, object, ids)
            .await
            .map_err(|e| SinkError(format!("reading records before updating them: {e}")))
    }
}

#[async_trait]
impl BillingSink for crate::delivery::billing::BillingWriter {
    async fn apply(&self, writes: Vec<BillingWrite>) -> Result<Vec<DeliveryOutcome>, SinkError> {
        self.write(&writes)
            .await
            .map_err(|e| SinkError(e.to_string()))
    }
}
