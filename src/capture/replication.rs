//! The replication session of capture: a [`Walsender`] connection on the
//! slot, created with an exported snapshot when the slot is new.
//!
//! ```text
//!  postgres.url ──► ConnectParams ──connect──► [CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT]
//!                                              └─► START_REPLICATION … (proto_version 1,
//!                                                    publication_names, messages) ──► stream
//! ```
//!
//! The session answers keepalives and sends standby status updates with the
//! LSN capture reports through `set_flushed` — which is only ever what Kafka
//! has acknowledged.

use std::str::FromStr;

use super::error::CaptureError;
use super::setup::{Settings, parse_lsn};
use super::values::SESSION_SETTINGS;
use super::walsender::{ConnectParams, Endpoint, Walsender, WalsenderError};

/// The slot created for a first run.
#[derive(Debug, Clone)]
pub struct NewSlot {
    pub consistent_point: u64,
    pub snapshot_name: String,
}

fn params(s: &Settings) -> Result<ConnectParams, CaptureError> {
    let pg = tokio_postgres::Config::from_str(&s.url).map_err(CaptureError::Url)?;
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let endpoint = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => Endpoint::Tcp {
            host: h.clone(),
            port,
        },
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => Endpoint::Unix {
            dir: p.clone(),
            port,
        },
        None => Endpoint::Tcp {
            host: "localhost".into(),
            port,
        },
    };
    let user = pg.get_user().unwrap_or("postgres").to_string();
    let options: Vec<String> = SESSION_SETTINGS
        .iter()
        .map(|(k, v)| format!("-c {k}={v}"))
        .collect();
    Ok(ConnectParams {
        endpoint,
        password: pg.get_password().map(<[u8]>::to_vec),
        database: pg.get_dbname().unwrap_or(&user).to_string(),
        user,
        options: options.join(" "),
        application_name: format!("extsync-capture-{}", s.slot),
    })
}

/// Opens a session: authenticated, not yet streaming. `start` is the
/// position reported as flushed until capture acknowledges more.
pub async fn open(s: &Settings, start: u64) -> Result<Walsender, CaptureError> {
    Walsender::connect(&params(s)?, start)
        .await
        .map_err(CaptureError::Replication)
}

/// Creates the slot and exports its snapshot, which stays valid until the
/// session runs its next command.
pub async fn create_slot(client: &mut Walsender, slot: &str) -> Result<NewSlot, CaptureError> {
    let rows = client
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput EXPORT_SNAPSHOT"
        ))
        .await
        .map_err(CaptureError::Replication)?;
    let row = rows.first().ok_or_else(|| {
        CaptureError::Replication(WalsenderError::Protocol(
            "CREATE_REPLICATION_SLOT returned no row".into(),
        ))
    })?;
    let text = |i: usize| row.get(i).cloned().flatten();
    let consistent_point = text(1).as_deref().and_then(parse_lsn).unwrap_or(0);
    let snapshot_name = text(2).unwrap_or_default();
    Ok(NewSlot {
        consistent_point,
        snapshot_name,
    })
}

/// Starts streaming from `start`.
pub async fn start(client: &mut Walsender, s: &Settings, start: u64) -> Result<(), CaptureError> {
    client
        .start_replication(&s.slot, start, &s.publication)
        .await
        .map_err(CaptureError::Replication)
}
