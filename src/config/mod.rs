//! Pipeline configuration: the `pipelines/*.yaml` files that tell one extsync
//! process which billing database to capture, which Kafka cluster to use and
//! how each external integration maps, resolves and schedules its entities.
//!
//! ```text
//!  pipelines/demo.yaml ──load──► Pipeline ──► capture / ingest / processor / delivery
//!                       (serde, deny_unknown_fields, cross-field rules,
//!                        file:line:col errors)
//! ```
//!
//! Values that hold secrets are kept as `${VAR}` references ([`EnvString`])
//! and resolved from the environment only when a component needs them, so a
//! secret never reaches an error message, a log line or `Debug` output.

mod env;
mod load;
mod locate;
mod pipeline;
mod rules;
mod scalar;

pub use env::{EnvString, ResolveError, SecretRef};
pub use load::{ConfigError, load_file, parse_str, schema_json};
pub use pipeline::*;
