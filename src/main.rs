//! The `extsync` command line: one binary for every part of the pipeline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use extsync::telemetry::{self, LogFormat};
use extsync::{config, shutdown};

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
    /// Print the JSON Schema of pipeline files.
    Schema,
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
}

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
    telemetry::init_logging(cli.log_format);
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
        Command::Schema => {
            print!("{}", config::schema_json());
            ExitCode::SUCCESS
        }
        Command::Simulate {
            system,
            port,
            bind,
            config,
        } => run_async(simulate(system, (bind, port).into(), config)),
    }
}
