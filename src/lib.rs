//! extsync: a change-data-capture pipeline that keeps a billing PostgreSQL
//! database in two-way sync with external CRMs and accounting systems.
//!
//! ```text
//!  billing Postgres ─► capture ─► Kafka <prefix>.cdc.*        ─┐
//!  external systems ─► ingest  ─► Kafka <prefix>.external.*   ─┼─► processor ─► delivery
//!                                                               └─► <prefix>.sync-events
//! ```
//!
//! Each module below is one part of that flow; `config` and `telemetry` serve all.

pub mod capture;
pub mod config;
pub mod connectors;
pub mod delivery;
pub mod ingest;
pub mod kafka;
pub mod memory;
pub mod processor;
pub mod shutdown;
pub mod simulators;
pub mod sql;
pub mod store;
pub mod telemetry;
