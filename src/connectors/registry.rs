//! Builds the connector of each configured integration, with its one shared
//! request budget.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use super::{Connector, RequestBudget};
use crate::config::{Integration, Provider, ResolveError};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("integration {integration}: {source}")]
    Resolve {
        integration: String,
        source: ResolveError,
    },
    #[error("integration {integration}: provider {provider} has no connector yet")]
    Unsupported {
        integration: String,
        provider: &'static str,
    },
}

/// The request budgets of this process, one per integration id, shared by
/// every connector built for it (ingest reads and delivery writes).
static BUDGETS: LazyLock<Mutex<HashMap<String, RequestBudget>>> = LazyLock::new(Default::default);

/// The request budget of integration `id`: its `rateLimit`, else the
/// vendor's limits. Every call for the same id returns the same budget.
pub fn budget_for(id: &str, integration: &Integration) -> RequestBudget {
    let mut budgets = BUDGETS.lock().expect("budget registry lock");
    budgets
        .entry(id.to_string())
        .or_insert_with(|| match integration.rate_limit {
            Some(r) => RequestBudget::new(
                r.requests,
                Duration::from_secs(r.per_seconds.max(1)),
                r.burst,
            ),
            None => RequestBudget::for_provider(integration.provider),
        })
        .clone()
}

/// The connector for integration `id`.
pub fn connect(id: &str, integration: &Integration) -> Result<Arc<dyn Connector>, ConnectError> {
    let resolve = |source| ConnectError::Resolve {
        integration: id.to_string(),
        source,
    };
    let budget = budget_for(id, integration);
    Ok(match integration.provider {
        Provider::Salesforce => {
            let mut settings = super::salesforce::SalesforceSettings::from_integration(integration)
                .map_err(resolve)?;
            settings.budget = budget;
            Arc::new(super::salesforce::SalesforceConnector::new(settings))
        }
        Provider::Hubspot => Arc::new(
            super::hubspot::HubSpotConnector::from_integration(integration)
                .map_err(resolve)?
                .with_budget(budget),
        ),
        p => {
            return Err(ConnectError::Unsupported {
                integration: id.to_string(),
                provider: p.as_str(),
            });
        }
    })
}
