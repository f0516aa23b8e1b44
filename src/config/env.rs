//! `${VAR}` references in pipeline files, resolved from the process
//! environment at the moment a component connects — never at parse time.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::scalar::parse_scalar;

/// A string that may reference environment variables as `${NAME}` or
/// `${NAME:-default}`. `Debug` and `Display` show the template, never the value.
#[derive(Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
#[schemars(
    description = "A string; `${NAME}` or `${NAME:-default}` is replaced by the environment variable when the pipeline starts."
)]
pub struct EnvString(String);

/// Why a reference could not be resolved. Names the variable, never a value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("environment variable {0} is not set")]
    Missing(String),
    #[error("unterminated `${{` in a value")]
    Unterminated,
}

impl EnvString {
    pub fn new(template: impl Into<String>) -> Self {
        Self(template.into())
    }

    /// The template as written in the file.
    pub fn template(&self) -> &str {
        &self.0
    }

    /// True when the template references at least one variable.
    pub fn is_reference(&self) -> bool {
        self.0.contains("${")
    }

    /// Substitutes every reference from the process environment.
    pub fn resolve(&self) -> Result<String, ResolveError> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    pub fn resolve_with(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<String, ResolveError> {
        let mut out = String::with_capacity(self.0.len());
        let mut rest = self.0.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or(ResolveError::Unterminated)?;
            let body = &after[..end];
            let (name, default) = match body.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            match (lookup(name), default) {
                (Some(v), None) => out.push_str(&v),
                (Some(v), Some(_)) if !v.is_empty() => out.push_str(&v),
                (_, Some(d)) => out.push_str(d),
                (None, None) => return Err(ResolveError::Missing(name.to_string())),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

impl fmt::Debug for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_reference() {
            write!(f, "{:?}", self.0)
        } else {
            f.write_str("\"<redacted>\"")
        }
    }
}

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, |s| {
            let v = EnvString::new(s);
            // Validate the template's syntax now; resolution waits until start.
            v.resolve_with(|_| Some(String::new()))
                .map_err(|e| e.to_string())?;
            Ok(v)
        })
    }
}

/// A credential: must be a `${VAR}` reference so that secrets stay out of
/// pipeline files and out of every message extsync prints.
#[derive(Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
#[schemars(
    description = "A secret, given only as an environment variable reference such as `${SALESFORCE_CLIENT_SECRET}`."
)]
pub struct SecretRef(#[schemars(regex(pattern = r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$"))] String);

impl SecretRef {
    pub fn variable(&self) -> &str {
        &self.0[2..self.0.len() - 1]
    }

    pub fn resolve(&self) -> Result<String, ResolveError> {
        std::env::var(self.variable()).map_err(|_| ResolveError::Missing(self.variable().into()))
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, SecretRef::parse)
    }
}

impl SecretRef {
    fn parse(s: &str) -> Result<Self, String> {
        let ok = s.len() > 3
            && s.starts_with("${")
            && s.ends_with('}')
            && s[2..s.len() - 1]
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if ok {
            Ok(SecretRef(s.to_string()))
        } else {
            // The value itself is never echoed: it may be a pasted secret.
            Err("credentials must be an environment variable reference like ${SALESFORCE_CLIENT_SECRET}, not a literal value".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_references_and_defaults() {
        let s = EnvString::new("postgres://${HOST}:${PORT:-5432}/x${EMPTY:-y}");
        assert_eq!(s.resolve_with(env).unwrap(), "postgres://db:5432/xy");
    }

    #[test]
    fn missing_variable_is_named() {
        let s = EnvString::new("${NOPE}");
        assert_eq!(
            s.resolve_with(env),
            Err(ResolveError::Missing("NOPE".into()))
        );
    }

    #[test]
    fn literal_secret_is_rejected_without_echo() {
        let err = serde_json::from_str::<SecretRef>("\"hunter2\"").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_never_shows_literal_values() {
        assert_eq!(format!("{:?}", EnvString::new("p@ss")), "\"<redacted>\"");
    }
}
