//! Reading a pipeline file: YAML → [`Pipeline`], with every error located as
//! `file:line:column: field.path: message`.
//!
//! ```text
//!  text ──serde_yaml_ng + serde_path_to_error──► Pipeline ──rules──► Ok(Pipeline)
//!             └─ type and scalar errors               └─ violations, located by path
//! ```

use std::fmt;
use std::path::Path;

use super::locate::locate;
use super::pipeline::Pipeline;
use super::rules;

/// A pipeline file that could not be used. Its `Display` is one line:
/// `pipelines/demo.yaml:14:7: integrations.sf.entities.accounts.mappings[2].direction: unknown variant …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the offending field; empty for the document itself.
    pub path: String,
    pub message: String,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if self.path.is_empty() || self.path == "." {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

/// Reads and parses a pipeline file.
pub fn load_file(path: &Path) -> Result<Pipeline, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: shown.clone(),
        line: None,
        column: None,
        path: String::new(),
        message: format!("cannot read file: {e}"),
    })?;
    parse_str(&text, &shown)
}

/// Parses pipeline YAML and checks its cross-field rules; `file` names the
/// source in error messages.
pub fn parse_str(text: &str, file: &str) -> Result<Pipeline, ConfigError> {
    let pipeline = deserialize(text, file)?;
    let first_broken = rules::violations(&pipeline)
        .into_iter()
        .map(|v| (locate(text, &v.path, v.part), v))
        .min_by_key(|(at, _)| at.unwrap_or((usize::MAX, usize::MAX)));
    match first_broken {
        None => Ok(pipeline),
        Some((at, v)) => Err(ConfigError {
            file: file.to_string(),
            line: at.map(|(l, _)| l),
            column: at.map(|(_, c)| c),
            path: v.path.to_string(),
            message: v.message,
        }),
    }
}

fn deserialize(text: &str, file: &str) -> Result<Pipeline, ConfigError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let location = inner.location();
        ConfigError {
            file: file.to_string(),
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            message: bare_message(&inner.to_string(), &path),
            path,
        }
    })
}

/// serde_yaml_ng's message without its own path prefix and location suffix,
/// which [`ConfigError`] prints in a fixed place.
fn bare_message(full: &str, path: &str) -> String {
    let mut msg = full;
    if let Some(at) = msg.rfind(" at line ") {
        msg = &msg[..at];
    }
    // serde_yaml_ng prefixes the path of the enclosing node, which is a
    // prefix of (or equal to) the full path.
    if let Some((prefix, rest)) = msg.split_once(": ")
        && !prefix.is_empty()
        && path.starts_with(prefix)
    {
        msg = rest;
    }
    msg.to_string()
}

/// The JSON Schema of pipeline files, as committed in `schemas/pipeline.schema.json`.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(Pipeline);
    let mut s = serde_json::to_string_pretty(&schema).expect("schema serializes");
    s.push('\n');
    s
}
