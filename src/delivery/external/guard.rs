//! Create guards: how the external writer avoids a second record when a
//! create without an upsert key is retried, replayed or sent by another
//! process (see [`super`], "Idempotency rules").

use async_trait::async_trait;

use crate::connectors::ConnectorError;
use crate::delivery::intent::ExternalWrite;

/// Default capacity of [`MemoryCreateGuard`].
pub const DEFAULT_CREATE_GUARD_CAPACITY: u64 = 100_000;
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
