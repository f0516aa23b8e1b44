//! Running the processor for a pipeline: compiled mappings, durable state
//! behind a cache of `processor.stateCacheCapacity` records, one external
//! writer per integration (each entity's `onNotFound`, the integration's
//! status saved in `extsync.integration_status`), the billing writer, and
//! the router and processor loops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::batch::{PARENT_WAIT, Processor};
use super::mapping::Mappings;
use super::queued::Queued;
use super::retry::Requeue;
use super::runner::{self, RunError, RunnerConfig};
use super::sinks::ExternalSink;
use super::state::StateStore;
use crate::config::{Integration, OnNotFound, Pipeline};
use crate::connectors::registry::{self, ConnectError};
use crate::delivery::billing::{BillingWriter, BillingWriterConfig};
use crate::delivery::external::{ExternalWriter, ExternalWriterConfig, NotFoundPolicy};
use crate::delivery::status::PgStatusStore;
use crate::kafka::{self, Topics};
use crate::store::{self, Db};

/// Settings of the processor that pipeline files do not carry.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a child waits, in total, for its parent to be linked before
    /// it is a `parent_not_linked` failure (retried once the parent is).
    pub parent_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            parent_wait: PARENT_WAIT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Config(#[from] crate::config::ResolveError),
    #[error(transparent)]
    Transform(#[from] super::transform::CompileError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("billing writer: {0}")]
    Billing(#[from] crate::delivery::billing::BillingError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Requeue(#[from] super::retry::RequeueError),
}

/// Builds the processor of `pipeline`.
pub async fn processor(pipeline: &Pipeline) -> Result<Arc<Processor>, ProcessError> {
    processor_with(pipeline, &Options::default()).await
}

/// Builds the processor of `pipeline` with `options`.
pub async fn processor_with(
    pipeline: &Pipeline,
    options: &Options,
) -> Result<Arc<Processor>, ProcessError> {
    let shared = Shared::connect(pipeline).await?;
    let mappings = Arc::new(Mappings::compile(pipeline)?);
    let state = shared.state.clone();
    build(pipeline, mappings, options, &shared, state).await
}

/// What the processors of one pipeline share: the billing database's
/// connections and the state store (cache included).
struct Shared {
    url: String,
    db: Db,
    reads: Db,
    state: StateStore,
}

impl Shared {
    async fn connect(pipeline: &Pipeline) -> Result<Self, ProcessError> {
        let url = pipeline.postgres.url.resolve()?;
        let db = store::open(&url, "processor").await?;
        let reads = Db::connect(&url, "processor reads")
            .await
            .map_err(store::StoreError::Connect)?;
        let state = StateStore::new(db.clone(), pipeline.processor.state_cache_capacity)
            .reading_from(reads.clone());
        Ok(Self {
            url,
            db,
            reads,
            state,
        })
    }
}

/// The processor of `pipeline`'s integrations (compiled as `mappings`)
/// over `shared`, with `state`.
async fn build(
    pipeline: &Pipeline,
    mappings: Arc<Mappings>,
    options: &Options,
    shared: &Shared,
    state: StateStore,
) -> Result<Arc<Processor>, ProcessError> {
    let status = Arc::new(PgStatusStore::new(shared.db.clone()));
    let mut external: HashMap<String, Arc<dyn ExternalSink>> = HashMap::new();
    for (id, integration) in pipeline
        .integrations
        .iter()
        .filter(|(_, i)| i.enabled && !i.entities.is_empty())
    {
        let connector = registry::connect(id.as_str(), integration)?;
        let writer = ExternalWriter::new(id.as_str(), connector, writer_config(integration))
            .with_status_store(status.clone());
        external.insert(id.to_string(), Arc::new(writer));
    }
    let billing = BillingWriter::connect(
        &shared.url,
        BillingWriterConfig {
            origin: pipeline.postgres.origin.clone(),
            ..BillingWriterConfig::default()
        },
    )
    .await?;
    // Children wait for their parent; a create found existing, for its link.
    let requeue = Requeue::new(
        kafka::client_config(&pipeline.kafka)?,
        &Topics::new(&pipeline.kafka.topic_prefix),
        external.keys().cloned().collect(),
    )?;
    let queued = Arc::new(Queued::of_parents(mappings.parent_tables()));
    Ok(Arc::new(Processor {
        mappings,
        state,
        billing: shared.db.clone(),
        reads: shared.reads.clone(),
        external,
        billing_sink: Arc::new(billing),
        parent_wait: options.parent_wait,
        requeue,
        primary_keys: Default::default(),
        queued,
    }))
}

/// One processor per enabled integration with entities, each with its own
/// consumer group, so that one integration's paused delivery holds back
/// only its own records; and the router's view of the whole pipeline.
async fn processors(
    pipeline: &Pipeline,
    options: &Options,
) -> Result<(Vec<(String, Arc<Processor>)>, Arc<Mappings>, StateStore), ProcessError> {
    let shared = Shared::connect(pipeline).await?;
    // Custom functions compile once, for all the integrations.
    let mappings = Arc::new(Mappings::compile(pipeline)?);
    let mut out = Vec::new();
    for (id, integration) in &pipeline.integrations {
        if !integration.enabled || integration.entities.is_empty() {
            continue;
        }
        let one = only(pipeline, id.as_str()).expect("the integration is in the pipeline");
        let own = Arc::new(mappings.of_integration(id.as_str()));
        let state = shared.state.scoped_to(id.as_str());
        out.push((
            id.to_string(),
            build(&one, own, options, &shared, state).await?,
        ));
    }
    Ok((out, mappings, shared.state))
}

/// The external writer settings of `integration`: each entity's `onNotFound`.
pub fn writer_config(integration: &Integration) -> ExternalWriterConfig {
    ExternalWriterConfig {
        not_found_by_entity: integration
            .entities
            .iter()
            .map(|(name, e)| {
                let policy = match e.on_not_found {
                    OnNotFound::Skip => NotFoundPolicy::Skip,
                    OnNotFound::Create => NotFoundPolicy::Create,
                };
                (name.to_string(), policy)
            })
            .collect(),
        ..ExternalWriterConfig::default()
    }
}

/// Starts the router and the processor loops of `pipeline`.
pub async fn start(
    pipeline: &Pipeline,
    stop: CancellationToken,
) -> Result<Vec<JoinHandle<()>>, ProcessError> {
    start_with(pipeline, stop, &Options::default()).await
}

/// Starts the router and the processor loops of `pipeline` with `options`.
pub async fn start_with(
    pipeline: &Pipeline,
    stop: CancellationToken,
    options: &Options,
) -> Result<Vec<JoinHandle<()>>, ProcessError> {
    let loops = Loops::prepare_with(pipeline, options).await?;
    Ok(vec![
        loops.spawn_router(stop.clone()),
        loops.spawn_processor(stop),
    ])
}

/// The router and processor loops of a pipeline, built once and started
/// each on its own: the processor loops can stop and start again (they
/// resume from their committed offsets) while the router keeps routing.
pub struct Loops {
    cfg: RunnerConfig,
    /// One per integration, by integration id.
    processors: Vec<(String, Arc<Processor>)>,
    /// The whole pipeline's mappings and state, for the router.
    mappings: Arc<Mappings>,
    state: StateStore,
}

impl Loops {
    /// Builds the processors of `pipeline` and creates their topics.
    pub async fn prepare(pipeline: &Pipeline) -> Result<Loops, ProcessError> {
        Self::prepare_with(pipeline, &Options::default()).await
    }

    /// [`Loops::prepare`] with `options`.
    pub async fn prepare_with(
        pipeline: &Pipeline,
        options: &Options,
    ) -> Result<Loops, ProcessError> {
        crate::delivery::metrics::describe();
        super::runner::describe_metrics();
        super::retry::describe_metrics();
        super::commit::describe_metrics();
        super::handover::describe_metrics();
        let (processors, mappings, state) = processors(pipeline, options).await?;
        let topics = Topics::new(&pipeline.kafka.topic_prefix);
        let mut cdc_topics: Vec<String> = pipeline
            .integrations
            .values()
            .filter(|i| i.enabled)
            .flat_map(|i| i.entities.values())
            .map(|e| topics.cdc(e.table.schema(), e.table.table()))
            .collect();
        cdc_topics.sort();
        cdc_topics.dedup();
        let mut external_topics: Vec<String> = pipeline
            .integrations
            .values()
            .filter(|i| i.enabled)
            .map(|i| topics.external(i.provider.as_str()))
            .collect();
        external_topics.sort();
        external_topics.dedup();
        let mut cfg = RunnerConfig {
            external_topics,
            topics,
            kafka: kafka::client_config(&pipeline.kafka)?,
            instance: instance_name(),
            cdc_topics,
            partitions: i32::from(pipeline.kafka.partitions),
            layout: Default::default(),
        };
        cfg.ensure_topics().await?;
        Ok(Loops {
            cfg,
            processors,
            mappings,
            state,
        })
    }

    /// Runs the router until `stop`.
    pub fn spawn_router(&self, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(runner::run_router(
            self.cfg.clone(),
            self.mappings.clone(),
            self.state.clone(),
            stop,
        ))
    }

    /// Runs every integration's processor loop until `stop`; the handle
    /// ends when all of them have.
    pub fn spawn_processor(&self, stop: CancellationToken) -> JoinHandle<()> {
        let loops: Vec<JoinHandle<()>> = self
            .processors
            .iter()
            .map(|(id, p)| {
                tokio::spawn(runner::run_processor(
                    self.cfg.clone(),
                    id.clone(),
                    p.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        tokio::spawn(async move {
            futures::future::join_all(loops).await;
        })
    }
}

/// This process's name in its transactional ids: `EXTSYNC_INSTANCE`, else
/// the host name. Processes sharing a pipeline must differ in it (or fence
/// each other); a restarted process keeps it, so that its first transaction
/// aborts whatever its predecessor left open.
fn instance_name() -> String {
    std::env::var("EXTSYNC_INSTANCE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
}

/// The pipeline reduced to one integration, for a replay of it alone.
fn only(pipeline: &Pipeline, integration: &str) -> Option<Pipeline> {
    let mut p = pipeline.clone();
    p.integrations.retain(|id, _| id.as_str() == integration);
    (!p.integrations.is_empty()).then_some(p)
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayCommandError {
    #[error("integration {0:?} is not in the pipeline")]
    UnknownIntegration(String),
    #[error(
        "the integration's processor is running ({members} member(s) in consumer group {group:?}): \
         stop it before replaying, or the two would work on the same records with different cached states"
    )]
    ProcessorRunning { group: String, members: usize },
    #[error(transparent)]
    Setup(#[from] ProcessError),
    #[error(transparent)]
    Replay(#[from] super::replay::ReplayError),
}

/// Replays the change topics of one integration (its entities' tables and
/// its system's external topic).
pub async fn replay(
    pipeline: &Pipeline,
    integration: &str,
    from: super::replay::ReplayFrom,
    progress: impl Fn(u64, u64),
) -> Result<super::replay::ReplaySummary, ReplayCommandError> {
    let p = only(pipeline, integration)
        .ok_or_else(|| ReplayCommandError::UnknownIntegration(integration.into()))?;
    let kafka = kafka::client_config(&p.kafka).map_err(ProcessError::from)?;
    let group = runner::processor_group(&Topics::new(&p.kafka.topic_prefix), integration);
    let members = super::replay::group_members(&kafka, &group)
        .await
        .map_err(super::replay::ReplayError::from)?;
    if members > 0 {
        return Err(ReplayCommandError::ProcessorRunning { group, members });
    }
    let processor = processor(&p).await?;
    let topics = Topics::new(&p.kafka.topic_prefix);
    let mut names: Vec<String> = Vec::new();
    for i in p.integrations.values() {
        names.push(topics.external(i.provider.as_str()));
        for e in i.entities.values() {
            names.push(topics.cdc(e.table.schema(), e.table.table()));
        }
    }
    names.sort();
    names.dedup();
    Ok(super::replay::replay(processor, kafka, &topics, names, from, progress).await?)
}
