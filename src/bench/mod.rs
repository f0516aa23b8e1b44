//! `extsync bench …`: end-to-end measurements against the real services,
//! each reporting against the physical floor measured in the same run.
//! The last line of output is one JSON object.

mod capture;
mod common;
mod e2e;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum Bench {
    /// pg_recvlogical vs capture → Kafka on the same WAL, plus snapshot speed and peak RSS.
    Capture(capture::Args),
    /// Postgres commit → simulator write through the whole pipeline, against a raw Kafka pipe.
    E2e(e2e::Args),
}

pub async fn run(which: Bench) -> anyhow::Result<()> {
    match which {
        Bench::Capture(args) => capture::run(args).await,
        Bench::E2e(args) => e2e::run(args).await,
    }
}
