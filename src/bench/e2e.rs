//! `extsync bench e2e`: billing commit → Salesforce simulator write through
//! the whole pipeline (capture, Kafka, processor, delivery; ingest running
//! beside it), compared in the same run with a raw rdkafka consume → produce
//! pipe on the same broker — the floor any Kafka-based pipeline stands on.
//!
//! ```text
//!  1. paced inserts/updates, rate × secs ─► capture ─► Kafka ─► processor ─► simulator
//!     commit time of each change  ───────────── vs ─────────── written-log time  → p50/p99
//!  2. max_changes new rows as fast as possible ─► time until all are written → max_rate
//!  3. max_changes messages: topic A ─► consume ─► produce topic B (acks=all) → raw_pipe_rate
//!     the same, read committed, one transaction per batch of ≤ 500 → raw_exactly_once_pipe_rate
//!     max_rate / raw_pipe_rate → ratio; max_rate / raw_exactly_once_pipe_rate → ratio_exactly_once
//! ```
//!
//! Reads `EXTSYNC_PG_URL` and `EXTSYNC_KAFKA_BROKERS`; works in a scratch
//! database and topic prefix it removes at the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::common::{
    clear_leftovers, connect, delete_topics, env, peak_rss_mb, quantile, with_database,
};
use extsync::simulators::salesforce::{
    DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_REFRESH_TOKEN, SalesforceSim, SalesforceSimConfig,
};

#[derive(clap::Args)]
pub struct Args {
    /// Changes per second in the paced phase (half inserts, half updates).
    #[arg(long, default_value_t = 2_000)]
    pub rate: u64,
    /// Length of the paced phase, in seconds.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// New rows written as fast as possible for the maximum rate, and
    /// messages piped by the raw consume → produce floor.
    #[arg(long, default_value_t = 60_000)]
    pub max_changes: u64,
    /// Partitions of the topics keyed by record (`kafka.partitions`).
    #[arg(long, default_value_t = extsync::kafka::DEFAULT_RECORD_PARTITIONS)]
    pub partitions: u16,
}

/// Connections the load is spread over.
const WRITERS: u64 = 4;
/// Rows per statement in the maximum-rate phase.
const MAX_ROWS_PER_STATEMENT: u64 = 50;

pub async fn run(args: Args) -> anyhow::Result<()> {
    // SAFETY: set before the pipeline starts any thread that reads them.
    unsafe {
        std::env::set_var("EXTSYNC_BENCH_SF_ID", DEMO_CLIENT_ID);
        std::env::set_var("EXTSYNC_BENCH_SF_SECRET", DEMO_CLIENT_SECRET);
        std::env::set_var("EXTSYNC_BENCH_SF_REFRESH", DEMO_REFRESH_TOKEN);
    }
    let admin_url = env("EXTSYNC_PG_URL")?;
    let brokers = env("EXTSYNC_KAFKA_BROKERS")?;
    let tag = format!("bench_e2e_{}", std::process::id());
    let admin = connect(&admin_url).await?;
    for name in clear_leftovers(&admin, &brokers, "bench_e2e_").await? {
        eprintln!("dropped {name}, left by an earlier run that was stopped before its clean-up");
    }
    admin
        .batch_execute(&format!("CREATE DATABASE {tag}"))
        .await?;
    let url = with_database(&admin_url, &tag);
    let result = bench(&args, &url, &brokers, &tag).await;
    let _ = admin
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active",
            &[&tag],
        )
        .await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE {tag} WITH (FORCE)"))
        .await;
    if let Err(e) = delete_topics(&brokers, &tag).await {
        eprintln!("note: could not delete the bench topics: {e:#}");
    }
    println!("{}", result?);
    Ok(())
}

async fn bench(args: &Args, url: &str, brokers: &str, tag: &str) -> anyhow::Result<String> {
    let db = connect(url).await?;
    db.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL, email text, mrr numeric(12,2) NOT NULL DEFAULT 0)",
    )
    .await?;
    let sim = SalesforceSim::new(SalesforceSimConfig {
        api_request_limit: u64::MAX / 2,
        written_retention: 2_000_000,
        ..SalesforceSimConfig::default()
    })
    .map_err(anyhow::Error::msg)?;
    let running = sim.serve("127.0.0.1:0".parse()?).await?;
    let pipeline = extsync::config::parse_str(
        &pipeline_yaml(args, url, brokers, tag, &running.base_url()),
        "bench-e2e.yaml",
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;

    let stop = CancellationToken::new();
    let tasks = start_pipeline(&pipeline, &stop).await?;
    let written = Written::follow(sim.clone(), stop.clone());
    warm_up(&db, &written).await?;
    let paced = paced_phase(args, url, &written).await?;
    let max_rate = max_phase(args, url, &written).await?;
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    drop(running);

    let raw_pipes = raw_pipe(brokers, tag, args.max_changes).await?;
    let raw = raw_pipes.plain;
    eprintln!(
        "raw pipe: {raw:.0} messages/s; exactly once (read committed, one transaction per batch of up to 500): {:.0} messages/s",
        raw_pipes.exactly_once
    );

    Ok(json!({
        "bench": "e2e",
        "rate": paced.rate.round(),
        "p50_ms": (paced.p50_ms * 10.0).round() / 10.0,
        "p99_ms": (paced.p99_ms * 10.0).round() / 10.0,
        "max_rate": max_rate.round(),
        "raw_pipe_rate": raw.round(),
        "ratio": ((max_rate / raw) * 1000.0).round() / 1000.0,
        "raw_exactly_once_pipe_rate": raw_pipes.exactly_once.round(),
        "ratio_exactly_once": ((max_rate / raw_pipes.exactly_once) * 1000.0).round() / 1000.0,
        "peak_rss_mb": peak_rss_mb().round(),
    })
    .to_string())
}

/// Starts capture, ingest and the processor in this process.
async fn start_pipeline(
    pipeline: &extsync::config::Pipeline,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let (p, s) = (pipeline.clone(), stop.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = extsync::capture::run(&p, s).await {
            eprintln!("capture stopped: {e}");
        }
    }));
    let ingest = extsync::ingest::service::start(pipeline, stop.clone()).await?;
    tasks.push(tokio::spawn(ingest.join()));
    tasks.extend(extsync::processor::service::start(pipeline, stop.clone()).await?);
    Ok(tasks)
}

/// One row all the way through before anything is timed.
async fn warm_up(db: &tokio_postgres::Client, written: &Written) -> anyhow::Result<()> {
    db.execute("INSERT INTO accounts (id, name) VALUES (0, 'w0')", &[])
        .await?;
    written
        .wait_for(|w| w.contains_key("w0"), Duration::from_secs(120))
        .await
        .context("the warm-up row never reached the simulator")
}

/// What the paced phase measured.
struct Paced {
    /// Changes committed per second.
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `--rate` changes/s for `--secs`; the latency from each Postgres commit
/// to the simulator's write of that value.
async fn paced_phase(args: &Args, url: &str, written: &Written) -> anyhow::Result<Paced> {
    let total = args.rate * args.secs;
    eprintln!("paced: {} changes/s for {} s", args.rate, args.secs);
    let started = Instant::now();
    let commits = paced(url, args.rate, total).await?;
    let paced_secs = started.elapsed().as_secs_f64();
    let last = format!("s{}", total - 1);
    let _ = written
        .wait_for(|w| w.contains_key(&last), Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut latencies: Vec<f64> = {
        let w = written.seen.lock().expect("written log");
        commits
            .iter()
            .filter_map(|(name, at)| w.get(name).map(|t| (*t - *at).num_microseconds()))
            .flatten()
            .map(|us| us.max(0) as f64 / 1000.0)
            .collect()
    };
    latencies.sort_by(f64::total_cmp);
    let paced = Paced {
        rate: commits.len() as f64 / paced_secs,
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
    };
    eprintln!(
        "paced: {} changes committed at {:.0}/s, {} seen written (the rest coalesced), p50 {:.1} ms, p99 {:.1} ms",
        commits.len(),
        paced.rate,
        latencies.len(),
        paced.p50_ms,
        paced.p99_ms
    );
    Ok(paced)
}

/// `--max-changes` new rows as fast as possible; rows/s until the last is
/// written. Ids follow the paced phase's.
async fn max_phase(args: &Args, url: &str, written: &Written) -> anyhow::Result<f64> {
    let first_id = (args.rate * args.secs) as i64 + 1;
    let t0 = Instant::now();
    flood(url, first_id, args.max_changes).await?;
    let want = args.max_changes as usize;
    let flood = written.flood.clone();
    let done = written
        .wait_for(
            |_| flood.load(Ordering::Relaxed) >= want,
            Duration::from_secs(600),
        )
        .await;
    let max_secs = t0.elapsed().as_secs_f64();
    if done.is_err() {
        bail!("the maximum-rate phase did not finish within 600 s");
    }
    let max_rate = args.max_changes as f64 / max_secs;
    eprintln!(
        "max: {} new rows written in {max_secs:.1} s = {max_rate:.0}/s",
        args.max_changes
    );
    Ok(max_rate)
}

fn pipeline_yaml(args: &Args, url: &str, brokers: &str, tag: &str, base_url: &str) -> String {
    let partitions = args.partitions;
    format!(
        r#"
name: {tag}
postgres: {{ url: "{url}", tables: [public.accounts], heartbeatSecs: 1 }}
kafka: {{ brokers: "{brokers}", topicPrefix: "{tag}", partitions: {partitions} }}
telemetry: {{ metricsAddress: "" }}
ingest: {{ webhookAddress: "", sweepSecs: 86400 }}
integrations:
  salesforce:
    provider: salesforce
    baseUrl: "{base_url}"
    credentials:
      clientId: ${{EXTSYNC_BENCH_SF_ID}}
      clientSecret: ${{EXTSYNC_BENCH_SF_SECRET}}
      refreshToken: ${{EXTSYNC_BENCH_SF_REFRESH}}
    rateLimit: {{ requests: 1000000, burst: 100000 }}
    entities:
      accounts:
        externalObject: Account
        table: public.accounts
        billingIdField: Alguna_Id__c
        mappings:
          - {{ alguna: name, external: Name }}
          - {{ alguna: email, external: Email__c }}
          - {{ alguna: mrr, external: MRR__c, direction: alguna_to_external, transform: number_to_currency }}
"#
    )
}

/// `total` changes at `rate` per second over [`WRITERS`] connections:
/// change `n` inserts row `n / 2 + 1` or renames an earlier row, naming it
/// `s<n>`. Answers the commit time of each change by name.
async fn paced(url: &str, rate: u64, total: u64) -> anyhow::Result<Vec<(String, DateTime<Utc>)>> {
    let start = tokio::time::Instant::now();
    let mut writers = Vec::new();
    for k in 0..WRITERS {
        let c = connect(url).await?;
        writers.push(tokio::spawn(async move {
            let insert = c
                .prepare("INSERT INTO accounts (id, name) VALUES ($1, $2)")
                .await?;
            let update = c
                .prepare("UPDATE accounts SET name = $2 WHERE id = $1")
                .await?;
            let mut out = Vec::new();
            for n in (k..total).step_by(WRITERS as usize) {
                tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / rate as f64))
                    .await;
                let name = format!("s{n}");
                // Even changes insert; odd ones rename a row inserted well before.
                let (stmt, id) = if n % 2 == 0 {
                    (&insert, (n / 2 + 1) as i64)
                } else {
                    (&update, (n / 2 / 2 + 1) as i64)
                };
                c.execute(stmt, &[&id, &name]).await?;
                out.push((name, Utc::now()));
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::with_capacity(total as usize);
    for w in writers {
        all.extend(w.await??);
    }
    Ok(all)
}

/// `count` new rows from id `first`, as fast as [`WRITERS`] connections go.
async fn flood(url: &str, first: i64, count: u64) -> anyhow::Result<()> {
    let mut writers = Vec::new();
    let statements = count.div_ceil(MAX_ROWS_PER_STATEMENT);
    for k in 0..WRITERS {
        let c = connect(url).await?;
        writers.push(tokio::spawn(async move {
            for s in (k..statements).step_by(WRITERS as usize) {
                let from = s * MAX_ROWS_PER_STATEMENT;
                let to = (from + MAX_ROWS_PER_STATEMENT).min(count);
                c.execute(
                    "INSERT INTO accounts (id, name) SELECT $1 + g, 'm' || g FROM generate_series($2::bigint, $3::bigint) g",
                    &[&first, &(from as i64), &(to as i64 - 1)],
                )
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    Ok(())
}

/// The simulator's written log, followed: first write time of each Name.
struct Written {
    seen: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
    /// How many names of the maximum-rate phase (`m…`) were seen.
    flood: Arc<AtomicUsize>,
}

impl Written {
    fn follow(sim: SalesforceSim, stop: CancellationToken) -> Written {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let flood = Arc::new(AtomicUsize::new(0));
        let (out, flood_out) = (seen.clone(), flood.clone());
        tokio::spawn(async move {
            let mut after = 0;
            while !stop.is_cancelled() {
                let batch = sim.written(after);
                if let Some(last) = batch.last() {
                    after = last.seq;
                }
                {
                    let mut seen = out.lock().expect("written log");
                    for w in batch {
                        let (Some(name), Ok(at)) = (
                            w.fields.get("Name").and_then(|n| n.as_str()),
                            DateTime::parse_from_str(&w.at, "%Y-%m-%dT%H:%M:%S%.3f%z"),
                        ) else {
                            continue;
                        };
                        if let std::collections::hash_map::Entry::Vacant(v) =
                            seen.entry(name.to_string())
                        {
                            v.insert(at.with_timezone(&Utc));
                            if name.starts_with('m') {
                                flood_out.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Written { seen, flood }
    }

    async fn wait_for(
        &self,
        done: impl Fn(&HashMap<String, DateTime<Utc>>) -> bool,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if done(&self.seen.lock().expect("written log")) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("timed out")
    }
}

/// Messages per second through consume → produce pipes (acks=all,
/// idempotent) on the same broker, for `count` messages the size of a
/// change event: plain, and exactly once as the processor commits.
struct RawPipe {
    plain: f64,
    exactly_once: f64,
}

async fn raw_pipe(brokers: &str, tag: &str, count: u64) -> anyhow::Result<RawPipe> {
    let (input, output) = (format!("{tag}.raw.in"), format!("{tag}.raw.out"));
    let base = {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", brokers);
        cc
    };
    let producer = |cc: &ClientConfig| -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
        Ok(cc
            .clone()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .create()?)
    };
    let payload = vec![b'x'; 400];
    let seed = producer(&base)?;
    for i in 0..count {
        let key = i.to_string();
        loop {
            match seed.send(BaseRecord::to(&input).key(&key).payload(&payload)) {
                Ok(()) => break,
                Err((e, _))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    seed.flush(Duration::from_secs(60))?;
    drop(seed);

    let (plain, exactly_once) = {
        let (b, i, o) = (base.clone(), input.clone(), output.clone());
        let plain = tokio::task::spawn_blocking(move || pipe(&b, &i, &o, count, false)).await??;
        let (b, o) = (base.clone(), format!("{output}.eos"));
        let eos = tokio::task::spawn_blocking(move || pipe(&b, &input, &o, count, true)).await??;
        (plain, eos)
    };
    Ok(RawPipe {
        plain,
        exactly_once,
    })
}

/// Messages per second through one consume → produce pipe of `count`
/// messages. `exactly_once`: read committed, and each batch's messages and
/// offsets commit in one transaction, as the processor's do.
fn pipe(
    base: &ClientConfig,
    input: &str,
    output: &str,
    count: u64,
    exactly_once: bool,
) -> anyhow::Result<f64> {
    use rdkafka::Message;
    let mode = if exactly_once { "eos" } else { "plain" };
    let mut cc = base.clone();
    cc.set("group.id", format!("{input}-pipe-{mode}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", (!exactly_once).to_string());
    if exactly_once {
        cc.set("isolation.level", "read_committed");
    }
    let consumer: BaseConsumer = cc.create()?;
    consumer.subscribe(&[input])?;
    let mut pc = base.clone();
    pc.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4");
    if exactly_once {
        pc.set("transactional.id", format!("{input}-pipe"));
    }
    let out: ThreadedProducer<DefaultProducerContext> = pc.create()?;
    let timeout = Duration::from_secs(30);
    if exactly_once {
        out.init_transactions(timeout)?;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    // The clock starts at the first message: joining the group is not
    // piping, and the pipeline's own phase starts warm.
    let mut started = None;
    let mut piped = 0;
    while piped < count {
        if Instant::now() > deadline {
            bail!("the raw {mode} pipe did not finish within 300 s");
        }
        let Some(first) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        started.get_or_insert_with(Instant::now);
        if exactly_once {
            out.begin_transaction()?;
        }
        let mut next = Some(first);
        let mut in_batch = 0;
        while let Some(m) = next.take() {
            let m = m?;
            let mut rec = BaseRecord::to(output).payload(m.payload().unwrap_or_default());
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            let mut rec = Some(rec);
            while let Some(r) = rec.take() {
                if let Err((e, r)) = out.send(r) {
                    if e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                        return Err(e.into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    rec = Some(r);
                }
            }
            piped += 1;
            in_batch += 1;
            if exactly_once && in_batch < 500 {
                next = consumer.poll(Duration::ZERO);
            }
        }
        if exactly_once {
            // As the processor does: the records are delivered first.
            extsync::kafka::deliver_queued(out.client(), timeout)?;
            let positions = consumer.position()?;
            let group = consumer.group_metadata().context("group metadata")?;
            out.send_offsets_to_transaction(&positions, &group, timeout)?;
            out.commit_transaction(timeout)?;
        }
    }
    out.flush(Duration::from_secs(60))?;
    let secs = started.map_or(f64::INFINITY, |t| t.elapsed().as_secs_f64());
    Ok(count as f64 / secs)
}
