//! Why capture stopped, classified by who has to act and whether a restart
//! can help: setup problems name their fix and are the user's to solve;
//! connection and broker failures are transient; decoding failures are ours.

use super::pgoutput::DecodeError;
use crate::config::ResolveError;

/// One problem found by the start-up checks, with the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupProblem {
    /// The object concerned, e.g. `public.accounts` or `wal_level`.
    pub subject: String,
    pub message: String,
}

impl std::fmt::Display for SetupProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The database is not ready for capture; every problem names its fix.
    #[error("capture cannot start:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Setup(Vec<SetupProblem>),
    /// Another process reads the slot: a capture of this pipeline elsewhere
    /// (this one stands by until the slot is free), or the walsender of a
    /// connection that is ending.
    #[error(
        "replication slot {slot} is in use by process {pid} (another capture of this pipeline?); a slot has one reader, so this capture waits for it"
    )]
    SlotInUse { slot: String, pid: i32 },
    #[error("pipeline setting: {0}")]
    Config(#[from] ResolveError),
    #[error("invalid postgres.url: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("{context}: {source}")]
    Sql {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("replication stream: {0}")]
    Replication(#[source] super::walsender::WalsenderError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("pgoutput {0} message for unknown relation {1}")]
    UnknownRelation(&'static str, u32),
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("starting the capture thread: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("snapshot of {table}: {message}")]
    Snapshot { table: String, message: String },
}

impl CaptureError {
    pub fn sql(context: &'static str, source: tokio_postgres::Error) -> Self {
        CaptureError::Sql { context, source }
    }

    pub fn kafka(context: &'static str, source: rdkafka::error::KafkaError) -> Self {
        CaptureError::Kafka { context, source }
    }

    /// True when restarting capture may succeed without anyone acting
    /// (a dropped connection, a broker away).
    pub fn is_transient(&self) -> bool {
        match self {
            CaptureError::Sql { source, .. } => {
                source.is_closed() || source.code().is_none_or(|c| transient_state(c.code()))
            }
            CaptureError::Replication(e) => e.is_transient(),
            CaptureError::Kafka { .. } | CaptureError::SlotInUse { .. } => true,
            _ => false,
        }
    }
}

/// True for the SQLSTATEs after which connecting again may succeed: the
/// server shutting down or starting up (class 57P), the connection failing
/// (class 08), and the slot still held by a walsender that is ending, or
/// by another capture process this one stands by for (55006).
pub(super) fn transient_state(code: &str) -> bool {
    code.starts_with("57P") || code.starts_with("08") || code == "55006"
}
