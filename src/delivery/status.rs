//! Whether an integration's writes flow. The external writer follows it in
//! memory (a paused integration tries to authenticate before each call) and
//! saves every change of it through a [`StatusStore`], so a control plane can
//! show it: [`PgStatusStore`] keeps it in `extsync.integration_status`.
//!
//! ```text
//!  ExternalWriter ──refresh refused──► AuthExpired ─┐
//!                 ──writes succeed───► Active ──────┴─► StatusStore ──► extsync.integration_status
//! ```

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::store::Db;

/// Whether an integration's writes flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntegrationStatus {
    Active,
    /// The system refused the credentials even after a refresh: writes are
    /// paused until authentication succeeds again.
    AuthExpired {
        since: DateTime<Utc>,
        /// The vendor's message, e.g. `expired access/refresh token`.
        message: String,
        /// The vendor's error code, e.g. `invalid_grant`.
        code: Option<String>,
    },
}

impl IntegrationStatus {
    /// The status as stored and shown: `active` or `auth_expired`.
    pub fn as_str(&self) -> &'static str {
        match self {
            IntegrationStatus::Active => "active",
            IntegrationStatus::AuthExpired { .. } => "auth_expired",
        }
    }
}

/// Where an integration's status is kept for others to read.
#[async_trait]
pub trait StatusStore: Send + Sync {
    /// Saves `status` as the current status of `integration`. Saving the
    /// status it already has keeps the time that status began.
    async fn save(
        &self,
        integration: &str,
        status: &IntegrationStatus,
    ) -> Result<(), tokio_postgres::Error>;
}

/// A [`StatusStore`] in `extsync.integration_status` (one row per integration).
pub struct PgStatusStore {
    db: Db,
}

impl PgStatusStore {
    /// A store on `db`, whose schema `extsync` is migrated.
    pub fn new(db: Db) -> Self {
        PgStatusStore { db }
    }
}

#[async_trait]
impl StatusStore for PgStatusStore {
    async fn save(
        &self,
        integration: &str,
        status: &IntegrationStatus,
    ) -> Result<(), tokio_postgres::Error> {
        let (since, message, code) = match status {
            IntegrationStatus::Active => (Utc::now(), None, None),
            IntegrationStatus::AuthExpired {
                since,
                message,
                code,
            } => (*since, Some(message.as_str()), code.as_deref()),
        };
        self.db
            .client()
            .await?
            .execute(
                "INSERT INTO extsync.integration_status AS s (integration, status, since, message, error_code)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (integration) DO UPDATE SET
                    status = excluded.status,
                    since = CASE WHEN s.status = excluded.status THEN s.since ELSE excluded.since END,
                    message = excluded.message,
                    error_code = excluded.error_code,
                    updated_at = now()",
                &[&integration, &status.as_str(), &since, &message, &code],
            )
            .await?;
        Ok(())
    }
}
