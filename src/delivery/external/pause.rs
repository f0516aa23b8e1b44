//! Pausing and resuming an integration's writes: credentials refused after
//! a refresh pause them (status `auth_expired`, saved through the
//! [`StatusStore`](crate::delivery::status::StatusStore)); the first
//! successful authentication resumes them.

use chrono::Utc;

use super::{ExternalWriter, Interruption, Stop};
use crate::connectors::ConnectorError;
use crate::delivery::metrics;
use crate::delivery::status::IntegrationStatus;

impl ExternalWriter {
    pub(super) async fn pause(&self, error: ConnectorError) -> Stop {
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
    pub(super) async fn save_status(&self, status: &IntegrationStatus) {
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
    pub(super) async fn try_resume(&self) -> Result<(), Stop> {
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
