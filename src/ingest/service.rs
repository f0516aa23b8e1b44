//! Running ingest for a pipeline: the webhook receiver, one poller per
//! integration object, and the Salesforce change-event subscriber, all
//! feeding one emitter.
//!
//! ```text
//!  pipeline ──► connectors (one budget each) ──► receiver (axum) ─┐
//!                                             ──► pollers (cron) ─┼─► Emitter ──► Kafka
//!                                             ──► CDC subscriber ─┘
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::cursor::CursorStore;
use super::emitter::{EmitError, Emitter};
use super::event::ChangeSource;
use super::lease::{Lease, Leases};
use super::poller::Poller;
use super::target::IngestTarget;
use super::webhook::{self, Receiver};
use crate::config::{IngestConfig, Pipeline, Provider};
use crate::connectors::registry::{self, ConnectError};
use crate::connectors::salesforce::{
    CdcSubscriber, ReplayFrom, SalesforceConnector, SalesforceSettings,
};
use crate::connectors::{ConnectorError, WebhookEvent};
use crate::kafka::{self, Topics};
use crate::store::{self, Db};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Config(#[from] crate::config::ResolveError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("Kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("webhook receiver on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
}

/// A started ingest: its tasks run until the stop token is cancelled.
pub struct Ingest {
    /// Address the webhook receiver listens on, when enabled.
    pub webhook_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    emitter: Arc<Emitter>,
}

impl Ingest {
    /// Waits for every task to finish (after `stop`).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        self.emitter.flush().await;
    }
}

/// Starts ingest for every enabled integration of `pipeline`.
pub async fn start(pipeline: &Pipeline, stop: CancellationToken) -> Result<Ingest, IngestError> {
    let url = pipeline.postgres.url.resolve()?;
    let db = store::open(&url, "ingest").await?;
    let leases = Leases::new(&url, &pipeline.kafka.topic_prefix);
    let producer = kafka::durable_producer(kafka::client_config(&pipeline.kafka)?).create()?;
    let emitter = Arc::new(Emitter::new(
        producer,
        Topics::new(&pipeline.kafka.topic_prefix),
        db.clone(),
    ));
    let cursors = CursorStore::new(db.clone());
    let cfg = &pipeline.ingest;

    let mut targets = HashMap::new();
    let mut tasks = Vec::new();
    for (id, integration) in pipeline
        .integrations
        .iter()
        .filter(|(_, i)| i.enabled && !i.entities.is_empty())
    {
        let connector = registry::connect(id.as_str(), integration)?;
        let target = Arc::new(IngestTarget::new(id.as_str(), integration, connector));
        for (entity, object) in &target.entities {
            let poller = Poller {
                target: target.clone(),
                entity: entity.clone(),
                object: object.clone(),
                cursors: cursors.clone(),
                emitter: emitter.clone(),
                overlap: Duration::from_secs(cfg.poll_overlap_secs),
            };
            let (schedule, every, stop) = (
                integration.schedule.clone(),
                Duration::from_secs(cfg.sweep_secs.max(1)),
                stop.clone(),
            );
            let lease = leases.lease(&format!("poll {id} {object}"));
            tasks.push(tokio::spawn(poller.run(schedule, every, lease, stop)));
        }
        if integration.provider == Provider::Salesforce {
            let mut settings = SalesforceSettings::from_integration(integration)?;
            settings.budget = registry::budget_for(id.as_str(), integration);
            let sf = Arc::new(SalesforceConnector::new(settings));
            tasks.push(tokio::spawn(stream_changes(
                sf,
                target.clone(),
                emitter.clone(),
                db.clone(),
                leases.lease(&format!("stream {id} {SALESFORCE_CHANNEL}")),
                stop.clone(),
            )));
        }
        targets.insert(id.to_string(), target);
    }

    let webhook_addr = if cfg.webhook_address.is_empty() {
        None
    } else {
        let (addr, task) = serve_webhooks(cfg, targets, emitter.clone(), stop).await?;
        tasks.push(task);
        addr
    };
    Ok(Ingest {
        webhook_addr,
        tasks,
        emitter,
    })
}

/// Starts the webhook receiver on `ingest.webhookAddress`; its bound
/// address (when known) and its task.
async fn serve_webhooks(
    cfg: &IngestConfig,
    targets: HashMap<String, Arc<IngestTarget>>,
    emitter: Arc<Emitter>,
    stop: CancellationToken,
) -> Result<(Option<SocketAddr>, JoinHandle<()>), IngestError> {
    let listener = tokio::net::TcpListener::bind(&cfg.webhook_address)
        .await
        .map_err(|source| IngestError::Listen {
            address: cfg.webhook_address.clone(),
            source,
        })?;
    let addr = listener.local_addr().ok();
    let public_url = cfg.public_url.as_ref().map(|u| u.resolve()).transpose()?;
    let receiver = Arc::new(Receiver {
        targets,
        emitter,
        public_url,
    });
    let app = webhook::router(receiver, cfg.max_body_bytes);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    tracing::info!(address = ?addr, "webhook receiver listening");
    Ok((addr, task))
}

/// Channel of all Change Data Capture events.
pub const SALESFORCE_CHANNEL: &str = "/data/ChangeEvents";

/// Follows Salesforce Change Data Capture with a durable replay id. The
/// records of each poll's events are re-read together (which also covers gap
/// events), in batched reads, and emitted; only then is the last replay id
/// stored. When that fails, the subscription goes back to the poll's first
/// event, so nothing is skipped.
///
/// One process follows the stream at a time (`lease`); the others wait,
/// and the one that takes over resumes after the last stored replay id.
async fn stream_changes(
    sf: Arc<SalesforceConnector>,
    target: Arc<IngestTarget>,
    emitter: Arc<Emitter>,
    db: Db,
    lease: Lease,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        if lease.held().await {
            follow_changes(&sf, &target, &emitter, &db, &lease, &stop).await;
        } else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(LEASE_RETRY) => {}
            }
        }
    }
}

/// How often a process that does not follow a change stream looks whether
/// it is free.
const LEASE_RETRY: Duration = Duration::from_secs(2);

/// Follows the change stream from the stored replay id while this process
/// holds `lease`, until `stop`.
async fn follow_changes(
    sf: &Arc<SalesforceConnector>,
    target: &Arc<IngestTarget>,
    emitter: &Arc<Emitter>,
    db: &Db,
    lease: &Lease,
    stop: &CancellationToken,
) {
    let Some(from) = stored_position(db, &target.id, stop).await else {
        return;
    };
    let mut sub = CdcSubscriber::new(sf.clone(), SALESFORCE_CHANNEL, from);
    while !stop.is_cancelled() && lease.held().await {
        let polled = tokio::select! {
            _ = stop.cancelled() => return,
            r = sub.poll() => r,
        };
        let batch = match polled {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(integration = %target.id, error = %e, "change-event stream failed; reconnecting");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            continue;
        };
        let (first, last) = (first.replay_id, last.replay_id);
        let events = batch.into_iter().flat_map(|ev| ev.events).collect();
        if let Err(e) = forward(target, emitter, events).await {
            // Nothing of the batch is recorded: take it again from its first event.
            tracing::warn!(integration = %target.id, error = %e, "change events not forwarded; taking them again");
            sub.resume_from(ReplayFrom::After(first.saturating_sub(1)))
                .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let saved = match db.client().await {
            Ok(c) => c.execute(
                "INSERT INTO extsync.stream_positions (integration, channel, replay_id) VALUES ($1, $2, $3)
                 ON CONFLICT (integration, channel) DO UPDATE SET replay_id = excluded.replay_id, updated_at = now()",
                &[&target.id, &SALESFORCE_CHANNEL, &(last as i64)],
            )
            .await
            .map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = saved {
            // The next poll's save covers this one; a restart before it
            // takes these events again, and the emitter drops what it has.
            tracing::warn!(integration = %target.id, error = %e, "saving the change-event stream position failed");
        }
    }
}

/// Where the change-event stream of `integration` resumes: after the stored
/// replay id, or at the latest event when none is stored. Reading it is
/// retried while the state database is away (starting from the latest event
/// instead would skip what happened meanwhile); `None` once `stop` is
/// cancelled.
async fn stored_position(
    db: &Db,
    integration: &str,
    stop: &CancellationToken,
) -> Option<ReplayFrom> {
    loop {
        let load = async {
            db.client()
                .await?
                .query_opt(
                    "SELECT replay_id FROM extsync.stream_positions WHERE integration = $1 AND channel = $2",
                    &[&integration, &SALESFORCE_CHANNEL],
                )
                .await
        };
        match load.await {
            Ok(Some(r)) => return Some(ReplayFrom::After(r.get::<_, i64>(0) as u64)),
            Ok(None) => return Some(ReplayFrom::Latest),
            Err(e) => {
                tracing::warn!(integration, error = %e, "reading the change-event stream position failed; trying again");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Why a poll's stream events were not forwarded.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("re-reading changed records: {0}")]
    Read(#[from] ConnectorError),
    #[error(transparent)]
    Emit(#[from] EmitError),
}

/// Reads the records of `events` and writes them to Kafka.
async fn forward(
    target: &IngestTarget,
    emitter: &Emitter,
    events: Vec<WebhookEvent>,
) -> Result<(), ForwardError> {
    let changes = webhook::hydrate(target, events, ChangeSource::Stream).await?;
    emitter.emit(changes).await?;
    Ok(())
}
