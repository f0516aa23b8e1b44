//! Ingest: the external side of the pipeline. Changes made in Salesforce,
//! HubSpot and the others arrive by webhooks, change streams and polling, and
//! leave as normalized events on `<prefix>.external.<system>`, once per
//! record version, whichever path saw them first.
//!
//! ```text
//!  webhooks ──► webhook::router ─┐
//!  streams  ──► (per system)    ─┼─► Emitter ──► Kafka <prefix>.external.<system>
//!  polling  ──► Poller          ─┘      └──► extsync.external_versions, extsync.poll_cursors
//! ```
//!
//! Streams and pollers run in one process at a time per job ([`lease`]).

pub mod cursor;
pub mod emitter;
pub mod event;
pub mod lease;
pub mod poller;
pub mod service;
pub mod target;
pub mod webhook;

pub use emitter::{EmitStats, Emitter};
pub use event::{ChangeSource, ExternalChange};
pub use target::IngestTarget;
