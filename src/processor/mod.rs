//! The processor: the heart of the pipeline. Every change to one logical
//! record, from either side, is linked, mapped, resolved against the last
//! synced version and turned into writes for the other side.
//!
//! ```text
//!  <prefix>.cdc.*  ─┐
//!                   ├─► link ─► map ─► resolve ─► suppress echoes ─► write intents + sync events
//!  <prefix>.external.* ┘
//! ```

pub mod batch;
pub mod bookkeeping;
pub mod change;
pub mod commit;
pub mod decide;
pub mod events;
pub mod handover;
pub mod intake;
pub mod lanes;
pub mod link;
pub mod mapping;
pub mod merge;
pub mod queued;
pub mod record;
pub mod replay;
pub mod retry;
pub mod route;
pub mod runner;
pub mod service;
pub mod sinks;
pub mod state;
pub mod transform;
pub mod unseen;
