//! The `extsync` command line: one binary for every part of the pipeline.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use extsync::config;
use extsync::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "extsync", version, about = "Two-way CDC sync between a billing Postgres and external systems")]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    match cli.command {
        Command::Validate { file } => match config::load_file(&file) {
            Ok(p) => {
                println!("{}: ok (pipeline {:?}, {} integration(s))", file.display(), p.name.as_str(), p.integrations.len());
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
    }
}
