//! String scalars of a pipeline file that must pass a check when read
//! (names, paths, cron schedules, secret references, …).
//!
//! ```text
//!  YAML scalar ──visit_str──► parse ──► typed value
//!                               └─ error stamped with the scalar's line:column
//! ```
//!
//! The check runs inside the visitor, while the scalar is the parser's current
//! node; a check after `String::deserialize` returned would be reported at the
//! enclosing map instead.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{self, Visitor};

/// Reads a string scalar and converts it with `parse`, whose error message
/// becomes the config error for that scalar.
pub(super) fn parse_scalar<'de, D, T>(
    d: D,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    d.deserialize_str(ParseVisitor {
        parse,
        out: PhantomData,
    })
}

struct ParseVisitor<T> {
    parse: fn(&str) -> Result<T, String>,
    out: PhantomData<T>,
}

impl<T> Visitor<'_> for ParseVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}
