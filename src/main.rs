//! The `extsync` command line: one binary for every part of the pipeline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use extsync::telemetry::{self, LogFormat};
use extsync::{capture, config, shutdown};

#[derive(Parser)]
#[command(
    name = "extsync",
    version,
    about = "Two-way CDC sync between a billing Postgres and external systems"
)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "EXTSYNC_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a pipeline file; prints `file:line:column: path: message` on error.
    Validate {
        /// Pipeline file, e.g. pipelines/demo.yaml.
        file: PathBuf,
    },
    /// Print a JSON Schema: of pipeline files (the default) or of the events extsync publishes.
    Schema {
        #[arg(value_enum, default_value_t = SchemaKind::Pipeline)]
        which: SchemaKind,
    },
    /// Run every stage of a pipeline until SIGINT/SIGTERM.
    Run {
        /// Pipeline file, e.g. pipelines/demo.yaml.
        pipeline: PathBuf,
    },
    /// Run only capture: billing Postgres changes into Kafka.
    Capture {
        /// Pipeline file, e.g. pipelines/demo.yaml.
        pipeline: PathBuf,
    },
    /// Run only ingest: external changes (webhooks, streams, polling) into Kafka.
    Ingest {
        /// Pipeline file, e.g. pipelines/demo.yaml.
        pipeline: PathBuf,
    },
    /// Run only the processor: link, map, resolve and deliver.
    Process {
        /// Pipeline file, e.g. pipelines/demo.yaml.
        pipeline: PathBuf,
    },
    /// Re-process an integration's retained change topics (backfill, re-sync).
    Replay {
        /// Pipeline file, e.g. pipelines/demo.yaml.
        pipeline: PathBuf,
        /// Integration id, e.g. salesforce.
        #[arg(long)]
        integration: String,
        /// `earliest`, or an RFC 3339 time such as 2026-11-01T00:00:00Z.
        #[arg(long, default_value = "earliest")]
        from: extsync::processor::replay::ReplayFrom,
    },
    /// Serve a simulator of an external system's API until SIGINT/SIGTERM.
    Simulate {
        system: SimulatedSystem,
        /// Port to listen on; 0 picks a free one (the first line printed names it).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// Simulator settings (YAML or JSON); defaults suit the demo pipeline.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Measure a stage on this machine; the last output line is JSON.
    Bench {
        #[command(subcommand)]
        which: bench::Bench,
    },
}

mod bench;

/// Builds the runtime of a long-running command and maps its outcome to an
/// exit code: 0 after a clean stop, 1 on error (the error chain on stderr).
fn run_async(f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(file: &std::path::Path) -> anyhow::Result<config::Pipeline> {
    config::load_file(file).map_err(anyhow::Error::from)
}

/// Starts each stage of the pipeline as a task; the first to fail stops the
/// others, and a signal stops all of them cleanly.
async fn run_pipeline(file: PathBuf, stages: &[&'static str]) -> anyhow::Result<()> {
    let pipeline = std::sync::Arc::new(load(&file)?);
    let metrics_address = pipeline
        .telemetry
        .metrics_address
        .resolve()
        .context("telemetry.metricsAddress")?;
    telemetry::init_metrics(&metrics_address)?;
    let stop = shutdown::on_signal();
    let mut tasks = tokio::task::JoinSet::new();
    for &stage in stages {
        let (p, st) = (pipeline.clone(), stop.clone());
        match stage {
            "capture" => tasks.spawn(async move {
                let r = capture::run(&p, st).await.map(|_| ()).context("capture");
                (stage, r)
            }),
            "ingest" => tasks.spawn(async move {
                let r = async {
                    extsync::ingest::service::start(&p, st).await?.join().await;
                    Ok::<_, extsync::ingest::service::IngestError>(())
                }
                .await
                .context("ingest");
                (stage, r)
            }),
            "process" => tasks.spawn(async move {
                let r = async {
                    for t in extsync::processor::service::start(&p, st).await? {
                        let _ = t.await;
                    }
                    Ok::<_, extsync::processor::service::ProcessError>(())
                }
                .await
                .context("processor");
                (stage, r)
            }),
            other => unreachable!("unknown stage {other}"),
        };
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let (stage, result) = joined.context("a stage panicked")?;
        match result {
            Ok(()) => tracing::info!(stage, "stage stopped"),
            Err(e) => {
                tracing::error!(stage, error = %format!("{e:#}"), "stage failed; stopping the others");
                stop.cancel();
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Replays one integration's change topics with a progress bar, then prints
/// what it did.
async fn replay(
    file: PathBuf,
    integration: String,
    from: extsync::processor::replay::ReplayFrom,
) -> anyhow::Result<()> {
    let pipeline = load(&file)?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replay {bar:40} {pos}/{len} changes ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    let summary =
        extsync::processor::service::replay(&pipeline, &integration, from, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await
        .context("replay")?;
    bar.finish_and_clear();
    let c = &summary.counts;
    println!(
        "replayed {} changes for {integration}: {} synced, {} created, {} updated, {} deleted, {} skipped, {} failed, {} conflicts",
        summary.messages,
        c.synced,
        c.created,
        c.updated,
        c.deleted,
        c.skipped,
        c.failed,
        c.conflicts
    );
    Ok(())
}

/// The JSON Schemas `extsync schema` prints (committed in `schemas/`).
#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemaKind {
    /// Pipeline files.
    Pipeline,
    /// Events on `<prefix>.sync-events`.
    SyncEvent,
    /// Events on `<prefix>.external.<system>`.
    ExternalChange,
    /// Change events on `<prefix>.cdc.<schema>.<table>`.
    CdcEnvelope,
    /// Transaction markers on `<prefix>.cdc.transactions`.
    CdcTransaction,
}

impl SchemaKind {
    fn schema_json(self) -> String {
        match self {
            SchemaKind::Pipeline => config::schema_json(),
            SchemaKind::SyncEvent => extsync::processor::events::schema_json(),
            SchemaKind::ExternalChange => extsync::ingest::event::schema_json(),
            SchemaKind::CdcEnvelope => capture::schema::envelope_schema_json(),
            SchemaKind::CdcTransaction => capture::schema::transaction_schema_json(),
        }
    }
}

/// External systems `extsync simulate` can stand in for.
#[derive(Clone, Copy, clap::ValueEnum)]
enum SimulatedSystem {
    Salesforce,
    Hubspot,
}

async fn simulate(
    system: SimulatedSystem,
    addr: std::net::SocketAddr,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    use extsync::simulators::salesforce::{SalesforceSim, SalesforceSimConfig};
    let stop = shutdown::on_signal();
    let (name, running) = match system {
        SimulatedSystem::Salesforce => {
            let cfg = match &config {
                Some(path) => SalesforceSim::config_from_file(path).map_err(anyhow::Error::msg)?,
                None => SalesforceSimConfig::default(),
            };
            let sim = SalesforceSim::new(cfg).map_err(anyhow::Error::msg)?;
            (
                "salesforce",
                sim.serve(addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?,
            )
        }
        SimulatedSystem::Hubspot => {
            use extsync::simulators::hubspot::{HubSpotConfig, HubSpotSim};
            let cfg = match &config {
                Some(path) => HubSpotConfig::from_file(path).map_err(anyhow::Error::msg)?,
                None => HubSpotConfig::default(),
            };
            let sim = HubSpotSim::new(cfg);
            (
                "hubspot",
                sim.serve(addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?,
            )
        }
    };
    println!("{name} simulator listening on {}", running.base_url());
    stop.cancelled().await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Benchmarks measure the pipeline, not its per-record log lines.
    let default_filter = match cli.command {
        Command::Bench { .. } => "warn",
        _ => "info",
    };
    telemetry::init_logging(cli.log_format, default_filter);
    extsync::memory::disable_transparent_huge_pages();
    match cli.command {
        Command::Validate { file } => match config::load_file(&file) {
            Ok(p) => {
                println!(
                    "{}: ok (pipeline {:?}, {} integration(s))",
                    file.display(),
                    p.name.as_str(),
                    p.integrations.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Schema { which } => {
            print!("{}", which.schema_json());
            ExitCode::SUCCESS
        }
        Command::Run { pipeline } => {
            run_async(run_pipeline(pipeline, &["capture", "ingest", "process"]))
        }
        Command::Capture { pipeline } => run_async(run_pipeline(pipeline, &["capture"])),
        Command::Ingest { pipeline } => run_async(run_pipeline(pipeline, &["ingest"])),
        Command::Process { pipeline } => run_async(run_pipeline(pipeline, &["process"])),
        Command::Replay {
            pipeline,
            integration,
            from,
        } => run_async(replay(pipeline, integration, from)),
        Command::Simulate {
            system,
            port,
            bind,
            config,
        } => run_async(simulate(system, (bind, port).into(), config)),
        Command::Bench { which } => run_async(bench::run(which)),
    }
}
