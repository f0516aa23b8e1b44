//! The replication connection: a `pgwire-replication` session on the slot,
//! created with an exported snapshot when the slot is new.
//!
//! ```text
//!  postgres.url ──► ReplicationConfig ──connect_gated──► [CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT]
//!                                                       └─► START_REPLICATION … (proto_version 1,
//!                                                             publication_names, messages) ──► stream
//! ```
//!
//! The client answers keepalives and sends standby status updates with the
//! LSN capture reports through `update_applied_lsn` — which is only ever
//! what Kafka has acknowledged.

use std::str::FromStr;
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig};

use super::error::CaptureError;
use super::setup::{Settings, parse_lsn};
use super::values::SESSION_SETTINGS;

/// How often acknowledged progress is reported to the server.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Events buffered between the socket reader and the decoder.
pub const EVENT_BUFFER: usize = 4096;

/// The slot created for a first run.
#[derive(Debug, Clone)]
pub struct NewSlot {
    pub consistent_point: u64,
    pub snapshot_name: String,
}

fn config(s: &Settings, start: u64) -> Result<ReplicationConfig, CaptureError> {
    let pg = tokio_postgres::Config::from_str(&s.url).map_err(CaptureError::Url)?;
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let user = pg.get_user().unwrap_or("postgres").to_string();
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = pg.get_dbname().unwrap_or(&user).to_string();
    let options: Vec<String> = SESSION_SETTINGS
        .iter()
        .map(|(k, v)| format!("-c {k}={v}"))
        .collect();
    Ok(ReplicationConfig::new(
        host,
        user,
        password,
        database,
        s.slot.clone(),
        s.publication.clone(),
    )
    .with_port(port)
    .with_start_lsn(Lsn::from_u64(start))
    .with_ack_lsn(Lsn::from_u64(start))
    .with_status_interval(STATUS_INTERVAL)
    .with_wakeup_interval(Duration::from_secs(5))
    .with_buffer_size(EVENT_BUFFER)
    .with_options(options.join(" "))
    .with_application_name(format!("extsync-capture-{}", s.slot)))
}

/// Opens a gated session: authenticated, not yet streaming.
pub async fn open(s: &Settings, start: u64) -> Result<ReplicationClient, CaptureError> {
    ReplicationClient::connect_gated(config(s, start)?)
        .await
        .map_err(CaptureError::Replication)
}

/// Creates the slot on the gated session and exports its snapshot, which
/// stays valid until the session runs its next command.
pub async fn create_slot(
    client: &mut ReplicationClient,
    slot: &str,
) -> Result<NewSlot, CaptureError> {
    let rows = client
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput EXPORT_SNAPSHOT"
        ))
        .await
        .map_err(CaptureError::Replication)?;
    let row = rows.first().ok_or_else(|| {
        CaptureError::Replication(pgwire_replication::PgWireError::Protocol(
            "CREATE_REPLICATION_SLOT returned no row".into(),
        ))
    })?;
    let text = |i: usize| {
        row.get(i)
            .and_then(|c| c.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let consistent_point = text(1).as_deref().and_then(parse_lsn).unwrap_or(0);
    let snapshot_name = text(2).unwrap_or_default();
    Ok(NewSlot {
        consistent_point,
        snapshot_name,
    })
}

/// Starts streaming on the gated session.
pub async fn start(client: &mut ReplicationClient) -> Result<(), CaptureError> {
    client.start().await.map_err(CaptureError::Replication)?;
    client
        .wait_started()
        .await
        .map_err(CaptureError::Replication)
}
