//! Capture: every committed change of the billing database lands in Kafka.
//!
//! ```text
//!  billing Postgres ──pgoutput──► replication ─► stream ─► producer ──► <prefix>.cdc.<schema>.<table>
//!        ▲   (setup: checks, publication, slot)    │ snapshot (initial / incremental)
//!        └──────── flushed LSN = what Kafka acknowledged ◄──┘  heartbeat keeps idle slots moving
//! ```
//!
//! `run` is the whole stage: it returns when the stop token is cancelled,
//! after the in-flight events are in Kafka and their LSN is acknowledged.

mod envelope;
mod error;
mod heartbeat;
pub mod metrics;
pub mod pgoutput;
mod producer;
mod relations;
mod replication;
pub mod schema;
mod setup;
mod snapshot;
mod stream;
mod toast;
pub mod values;
mod walsender;
mod window;

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use envelope::{Op, PG_EPOCH_OFFSET_US, VERSION, lsn_text};
pub use error::{CaptureError, SetupProblem};
pub use heartbeat::PREFIX as HEARTBEAT_PREFIX;
pub use producer::{HEADER_COMMIT_LSN, HEADER_IDEMPOTENCY_KEY, HEADER_XID};
pub use setup::{STATE_SCHEMA, Settings, default_object_name, parse_lsn};
pub use snapshot::{REQUEST_PREFIX as SNAPSHOT_REQUEST_PREFIX, WATERMARK_PREFIX};

use crate::config::Pipeline;
use producer::CaptureProducer;
use relations::Relations;
use setup::CapturedTable;
use snapshot::SnapshotContext;
use stream::{SnapshotRequest, Stream};
use toast::ToastCache;
use walsender::Walsender;

/// How long a clean stop waits for Kafka to acknowledge what is in flight.
pub const STOP_FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a clean stop waits for the server to confirm the reported position.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a finished run did, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunSummary {
    /// Rows copied by the initial snapshot.
    pub snapshot_rows: u64,
    /// Time the initial snapshot took.
    pub snapshot_time: Duration,
    /// Last LSN acknowledged to PostgreSQL.
    pub acked_lsn: u64,
}

/// Runs capture for `pipeline` until `stop` is cancelled.
pub async fn run(pipeline: &Pipeline, stop: CancellationToken) -> Result<RunSummary, CaptureError> {
    run_until(pipeline, stop, None).await
}

/// Like [`run`], and also returns once everything up to `until` (an LSN) is
/// acknowledged — used by the benchmark.
///
/// Capture runs on its own thread with a single-threaded runtime: the
/// replication reader, decoder and producer hand events to each other
/// without cross-thread wake-ups (librdkafka keeps its own threads).
pub async fn run_until(
    pipeline: &Pipeline,
    stop: CancellationToken,
    until: Option<u64>,
) -> Result<RunSummary, CaptureError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let pipeline = pipeline.clone();
    std::thread::Builder::new()
        .name("extsync-capture".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CaptureError::Runtime)
                .and_then(|rt| rt.block_on(run_resuming(&pipeline, stop, until)));
            let _ = tx.send(result);
        })
        .map_err(CaptureError::Runtime)?;
    rx.await.unwrap_or_else(|_| {
        Err(CaptureError::Runtime(std::io::Error::other(
            "the capture thread ended without a result",
        )))
    })
}

/// The first wait before capture starts again after a transient failure;
/// each failure in a row doubles it, up to [`RESTART_MAX`].
const RESTART_MIN: Duration = Duration::from_millis(250);

/// The longest wait between two starts; a run that lasted longer than this
/// starts the next wait over from [`RESTART_MIN`].
const RESTART_MAX: Duration = Duration::from_secs(30);

/// The longest wait of a capture standing by while another process reads
/// its slot: how soon it takes over once that process is gone.
const STANDBY_MAX: Duration = Duration::from_secs(2);

/// Runs capture, and starts it again after a transient failure (the server
/// restarting, a dropped connection, the broker away, the slot still held):
/// it resumes from the slot's confirmed position, which only ever covers
/// changes Kafka has, so nothing is lost and what Kafka may already have
/// from after it is sent again under the same idempotency keys. Other
/// failures end the stage: they need someone to act.
async fn run_resuming(
    pipeline: &Pipeline,
    stop: CancellationToken,
    until: Option<u64>,
) -> Result<RunSummary, CaptureError> {
    let mut wait = RESTART_MIN;
    loop {
        let started = std::time::Instant::now();
        let e = match run_here(pipeline, stop.clone(), until).await {
            Err(e) if e.is_transient() && !stop.is_cancelled() => e,
            done => return done,
        };
        if started.elapsed() > RESTART_MAX {
            wait = RESTART_MIN;
        }
        let max = if let CaptureError::SlotInUse { .. } = e {
            // Said once: a standby may wait for as long as the other runs.
            if wait == RESTART_MIN {
                tracing::warn!(error = %e, "standing by");
            }
            STANDBY_MAX
        } else {
            ::metrics::counter!(metrics::RESTARTS_TOTAL).increment(1);
            tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "capture interrupted; resuming from the slot's confirmed position");
            RESTART_MAX
        };
        tokio::select! {
            _ = stop.cancelled() => return Ok(RunSummary::default()),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(max);
    }
}

async fn run_here(
    pipeline: &Pipeline,
    stop: CancellationToken,
    until: Option<u64>,
) -> Result<RunSummary, CaptureError> {
    metrics::describe();
    let settings = Arc::new(Settings::from_pipeline(pipeline)?);
    let s = &settings;
    let sql = setup::connect(&s.url).await?;
    let plan = setup::prepare(&sql, s).await?;
    let database: Arc<str> = Arc::from(plan.database.as_str());
    let cc = crate::kafka::client_config(&pipeline.kafka)?;
    // The producer starts connecting now; the topics, the replication
    // session and the helper connections are set up side by side.
    let producer = Arc::new(CaptureProducer::new(cc.clone(), s.max_in_flight_bytes)?);
    let deliveries = CancellationToken::new();
    tokio::spawn(producer.clone().serve_deliveries(deliveries.clone()));
    let _stop_deliveries = deliveries.drop_guard();
    let Connections {
        mut client,
        heartbeat_sql,
        driver_sql,
    } = open_connections(&cc, s, &plan, &producer).await?;
    let toast = ToastCache::default();
    let ctx = SnapshotContext {
        settings: settings.clone(),
        database: database.clone(),
        producer: producer.clone(),
        toast: toast.clone(),
    };
    let mut summary = RunSummary::default();
    let resume = start_streaming(&mut client, &ctx, &sql, &plan, &mut summary).await?;

    let tasks = CancellationToken::new();
    if let Some(hb_sql) = heartbeat_sql {
        tokio::spawn(heartbeat::run(
            hb_sql,
            s.slot.clone(),
            Duration::from_secs(s.heartbeat_secs),
            producer.acks().clone(),
            tasks.clone(),
        ));
    }
    let (chunk_tx, chunk_rx) = mpsc::channel(4);
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let resumed: Vec<String> = resume.iter().map(|(t, _)| t.qualified()).collect();
    let mut driver = tokio::spawn(snapshot_driver(
        ctx.clone(),
        driver_sql,
        plan.tables.clone(),
        resume,
        req_rx,
        chunk_tx,
        tasks.clone(),
    ));

    let mut stream = Stream::new(
        settings.clone(),
        database,
        sql,
        producer.clone(),
        toast,
        chunk_rx,
        req_tx,
    );
    // Resumed snapshots are tracked from the first streamed transaction on:
    // anything older is visible to every chunk snapshot taken from now.
    for t in &resumed {
        stream.track_snapshot(t);
    }
    let result = stream_loop(
        &mut client,
        &mut stream,
        &producer,
        &stop,
        &mut driver,
        until,
    )
    .await;
    tasks.cancel();
    stream.flush_metrics();
    let flushed = stop_streaming(client, &producer, &mut summary).await;
    result?;
    flushed?;
    Ok(summary)
}

/// The connections of a run besides the first SQL one.
struct Connections {
    client: Walsender,
    heartbeat_sql: Option<tokio_postgres::Client>,
    driver_sql: tokio_postgres::Client,
}

/// Checks the topics and opens the replication session and the heartbeat's
/// and snapshot driver's connections, side by side.
async fn open_connections(
    cc: &rdkafka::ClientConfig,
    s: &Settings,
    plan: &setup::Plan,
    producer: &CaptureProducer,
) -> Result<Connections, CaptureError> {
    // A known slot starts streaming right away: the walsender decodes while
    // the topics are checked. A new slot first exports the snapshot.
    let start = plan.slot.as_ref().map_or(0, |slot| slot.confirmed_flush);
    let known_slot = plan.slot.is_some();
    let (topics, client, hb_sql, driver_sql) = tokio::join!(
        ensure_topics(cc, s, &plan.tables),
        async {
            let mut client = replication::open(s, start).await?;
            if known_slot {
                replication::start(&mut client, s, start).await?;
            }
            Ok::<_, CaptureError>(client)
        },
        async {
            if s.heartbeat_secs > 0 {
                setup::connect(&s.url).await.map(Some)
            } else {
                Ok(None)
            }
        },
        setup::connect(&s.url),
    );
    producer.place_by_record(topics?);
    let client = client?;
    let (heartbeat_sql, driver_sql) = (hb_sql?, driver_sql?);
    Ok(Connections {
        client,
        heartbeat_sql,
        driver_sql,
    })
}

/// Starts a new slot (with its initial snapshot) or picks up a known one,
/// and makes sure the server streams; returns the incremental snapshots to
/// resume.
async fn start_streaming(
    client: &mut Walsender,
    ctx: &SnapshotContext,
    sql: &tokio_postgres::Client,
    plan: &setup::Plan,
    summary: &mut RunSummary,
) -> Result<Vec<(CapturedTable, Option<Vec<String>>)>, CaptureError> {
    let s = &ctx.settings;
    let resume = match &plan.slot {
        None => {
            start_new_slot(client, ctx, sql, &plan.tables, summary).await?;
            replication::start(client, s, 0).await?;
            Vec::new()
        }
        Some(slot) => {
            ctx.producer.acks().start_at(slot.confirmed_flush);
            snapshots_to_resume(sql, s, &plan.tables).await?
        }
    };
    tracing::info!(slot = %s.slot, publication = %s.publication, tables = plan.tables.len(), "streaming changes");
    Ok(resume)
}

/// Makes what is in Kafka count, whatever ended the stream: waits for the
/// in-flight events and confirms the acknowledged LSN to the server.
async fn stop_streaming(
    client: Walsender,
    producer: &CaptureProducer,
    summary: &mut RunSummary,
) -> Result<(), CaptureError> {
    let flushed = producer.flush(STOP_FLUSH_TIMEOUT).await;
    let acked = producer.acks().acked_lsn();
    client.set_flushed(acked);
    if let Err(e) = client.finish(FINISH_TIMEOUT).await {
        tracing::warn!(error = %e, "could not confirm the acknowledged position to the server");
    }
    summary.acked_lsn = acked;
    tracing::info!(lsn = %lsn_text(acked), "capture stopped");
    flushed
}

/// Creates the replication slot and, when the pipeline asks for it, takes
/// the initial snapshot from the snapshot the slot exported (its rows and
/// time go to `summary`).
async fn start_new_slot(
    client: &mut Walsender,
    ctx: &SnapshotContext,
    sql: &tokio_postgres::Client,
    tables: &[CapturedTable],
    summary: &mut RunSummary,
) -> Result<(), CaptureError> {
    let s = &ctx.settings;
    let slot = replication::create_slot(client, &s.slot).await?;
    tracing::info!(slot = %s.slot, lsn = %lsn_text(slot.consistent_point), "created replication slot");
    ctx.producer.acks().start_at(slot.consistent_point);
    if !s.snapshot || tables.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = tables.iter().map(CapturedTable::qualified).collect();
    snapshot::mark_pending(sql, &s.slot, &names).await?;
    let reader = setup::connect(&s.url).await?;
    let started = std::time::Instant::now();
    let mut rels = Relations::new(s.topics.clone());
    summary.snapshot_rows = snapshot::initial(
        ctx,
        &reader,
        sql,
        &mut rels,
        tables,
        &slot.snapshot_name,
        slot.consistent_point,
    )
    .await?;
    summary.snapshot_time = started.elapsed();
    tracing::info!(
        rows = summary.snapshot_rows,
        secs = summary.snapshot_time.as_secs_f64(),
        "initial snapshot done"
    );
    Ok(())
}

/// For a known slot: the tables whose snapshot is still pending (with the
/// last key read) or, when the pipeline asks for snapshots, never taken.
async fn snapshots_to_resume(
    sql: &tokio_postgres::Client,
    s: &Settings,
    tables: &[CapturedTable],
) -> Result<Vec<(CapturedTable, Option<Vec<String>>)>, CaptureError> {
    let progress = snapshot::progress(sql, &s.slot).await?;
    let mut resume = Vec::new();
    for t in tables {
        match progress.iter().find(|(n, _, _)| *n == t.qualified()) {
            Some((_, status, last_key)) if status == "pending" => {
                resume.push((t.clone(), last_key.clone()))
            }
            None if s.snapshot => resume.push((t.clone(), None)),
            _ => {}
        }
    }
    Ok(resume)
}

/// Least time between two sends of lingering events while the stream is
/// caught up: a trickle of small transactions then shares produce requests,
/// which costs the broker far less than one request per transaction.
const SEND_GAP: Duration = Duration::from_millis(5);

/// Events handled from the read buffer before the loop looks at its other
/// inputs again.
const DRAIN_BATCH: usize = 512;

async fn stream_loop(
    client: &mut Walsender,
    stream: &mut Stream,
    producer: &CaptureProducer,
    stop: &CancellationToken,
    driver: &mut tokio::task::JoinHandle<Result<(), CaptureError>>,
    until: Option<u64>,
) -> Result<(), CaptureError> {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // Caught-up sends are spaced by SEND_GAP; one is due at `send_due`.
    let mut last_send = tokio::time::Instant::now();
    let mut send_due: Option<tokio::time::Instant> = None;
    let mut reported = 0u64;
    let mut driver_done = false;
    let acks = producer.acks().clone();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            ev = client.recv() => {
                stream.handle(ev.map_err(CaptureError::Replication)?).await?;
                let mut caught_up = false;
                for _ in 1..DRAIN_BATCH {
                    match client.next_buffered().map_err(CaptureError::Replication)? {
                        Some(ev) => stream.handle(ev).await?,
                        None if client.try_fill().map_err(CaptureError::Replication)? => {}
                        None => {
                            caught_up = true;
                            break;
                        }
                    }
                }
                if caught_up {
                    let due = last_send + SEND_GAP;
                    if tokio::time::Instant::now() >= due {
                        producer.send_now();
                        last_send = tokio::time::Instant::now();
                        send_due = None;
                    } else {
                        send_due.get_or_insert(due);
                    }
                }
            }
            _ = tokio::time::sleep_until(send_due.unwrap_or_else(tokio::time::Instant::now)), if send_due.is_some() => {
                producer.send_now();
                last_send = tokio::time::Instant::now();
                send_due = None;
            }
            r = &mut *driver, if !driver_done => {
                driver_done = true;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(CaptureError::Snapshot { table: "*".into(), message: format!("snapshot task failed: {e}") }),
                }
            }
            _ = acks.progressed() => {}
            _ = tick.tick() => {
                stream.flush_metrics();
                if let Some(e) = acks.failure() {
                    return Err(CaptureError::kafka("delivering a change event", e));
                }
            }
        }
        let acked = acks.acked_lsn();
        if acked > reported {
            client.set_flushed(acked);
            ::metrics::gauge!(metrics::ACKED_LSN).set(acked as f64);
            reported = acked;
            if until.is_some_and(|u| acked >= u) {
                return Ok(());
            }
        }
    }
}

/// Runs incremental snapshots: the unfinished ones at start, then each request.
async fn snapshot_driver(
    ctx: SnapshotContext,
    sql: tokio_postgres::Client,
    tables: Vec<CapturedTable>,
    resume: Vec<(CapturedTable, Option<Vec<String>>)>,
    mut requests: mpsc::UnboundedReceiver<SnapshotRequest>,
    chunks: mpsc::Sender<snapshot::Chunk>,
    stop: CancellationToken,
) -> Result<(), CaptureError> {
    let mut rels = Relations::new(ctx.settings.topics.clone());
    let mut next_id = (envelope::now_ms() as u64) << 16;
    let mut queue: std::collections::VecDeque<(CapturedTable, Option<Vec<String>>)> = resume.into();
    if !queue.is_empty() {
        let names: Vec<String> = queue
            .iter()
            .filter(|(_, k)| k.is_none())
            .map(|(t, _)| t.qualified())
            .collect();
        snapshot::mark_pending(&sql, &ctx.settings.slot, &names).await?;
    }
    loop {
        while let Some((t, last_key)) = queue.pop_front() {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                r = snapshot::incremental(&ctx, &sql, &mut rels, &t, last_key, &chunks, &mut next_id) => { r?; }
            }
        }
        let (names, hold) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = requests.recv() => match r { Some(r) => r, None => return Ok(()) },
        };
        let wanted: Vec<CapturedTable> = names
            .iter()
            .filter_map(|n| {
                let t = tables.iter().find(|t| t.qualified() == *n);
                if t.is_none() {
                    tracing::warn!(table = %n, "snapshot requested for a table that is not captured; ignored");
                }
                t.cloned()
            })
            .collect();
        let qualified: Vec<String> = wanted.iter().map(CapturedTable::qualified).collect();
        let recorded = snapshot::mark_pending(&sql, &ctx.settings.slot, &qualified).await;
        if let Some(b) = hold {
            ctx.producer.acks().release(b);
        }
        recorded?;
        queue.extend(wanted.into_iter().map(|t| (t, None)));
    }
}

/// Creates the change topics of the captured tables (broker defaults for
/// partitions and replication); existing topics are left alone.
async fn ensure_topics(
    cc: &rdkafka::ClientConfig,
    s: &Settings,
    tables: &[CapturedTable],
) -> Result<HashMap<String, i32>, CaptureError> {
    let admin: AdminClient<DefaultClientContext> = cc
        .create()
        .map_err(|e| CaptureError::kafka("creating the admin client", e))?;
    let mut names: Vec<String> = tables
        .iter()
        .map(|t| s.topics.cdc(&t.schema, &t.name))
        .collect();
    if s.transaction_events {
        names.push(s.topics.cdc_transactions());
    }
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    // Table topics are keyed by record (see `kafka::record_partition`); the
    // transaction markers take the broker's default.
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            let partitions = if *n == s.topics.cdc_transactions() {
                -1
            } else {
                s.partitions
            };
            NewTopic::new(n, partitions, TopicReplication::Fixed(-1))
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&topics, &opts)
        .await
        .map_err(|e| CaptureError::kafka("creating topics", e))?;
    for r in results {
        if let Err((topic, code)) = r
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            tracing::error!(%topic, "topic creation failed");
            return Err(CaptureError::kafka(
                "creating topics",
                rdkafka::error::KafkaError::AdminOp(code),
            ));
        }
    }
    // Existing topics keep their partition counts; events are placed by
    // the count each topic really has.
    let cc = cc.clone();
    tokio::task::spawn_blocking(move || crate::kafka::partition_counts(&cc, &names))
        .await
        .map_err(|_| {
            CaptureError::kafka(
                "reading topic metadata",
                rdkafka::error::KafkaError::Canceled,
            )
        })
        .and_then(|r| r.map_err(|e| CaptureError::kafka("reading topic metadata", e)))
}
