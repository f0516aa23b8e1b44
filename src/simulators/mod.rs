//! Simulators: faithful local stand-ins of the external systems' APIs, for
//! tests, the demo and benchmarks. Each follows its vendor's documented wire
//! formats (status codes, error bodies, headers, pagination, signatures) so
//! the vendor's own SDKs work against it.
//!
//! ```text
//!  connectors / vendor SDKs ──HTTP──► simulator (axum) ──► in-memory store
//!  tests ──/__admin/*──► faults (5xx, latency, token expiry, limit exhaustion), written log
//! ```
//!
//! Every simulator is `simulators/<system>/…` and is started the same way:
//! in-process with [`serve`] or as `extsync simulate <system> --port N`.

pub mod faults;
pub mod hubspot;
pub mod salesforce;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use faults::{Faults, FaultsSnapshot, admin_router};

/// A running simulator.
pub struct RunningSimulator {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningSimulator {
    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `router` on `addr` (port 0 picks a free port) until dropped.
pub async fn serve(router: axum::Router, addr: SocketAddr) -> std::io::Result<RunningSimulator> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(RunningSimulator { addr, task })
}
