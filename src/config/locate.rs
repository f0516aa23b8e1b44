//! Finding a node of a pipeline file by its field path, for the rules that
//! are checked once the whole file was read ([`super::rules`]).
//!
//! ```text
//!  YAML text ──serde_yaml_ng──► follow keys and indexes of the path ──► line:column
//! ```
//!
//! The walk is a second deserialization that fails on purpose at the target
//! node: serde_yaml_ng stamps that error with the node's own mark.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path into a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A path into a pipeline file, shown as `integrations.sf.entities.accounts.mappings[2]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePath(Vec<Segment>);

impl NodePath {
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.into()));
        next
    }

    pub fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index(index));
        next
    }
}

impl fmt::Display for NodePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if i == 0 => f.write_str(k)?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Which part of a map entry is meant: the key itself or its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Key,
    Value,
}

/// 1-based line and column of the node at `path` (or of its last key, for
/// [`Part::Key`]); `None` when the file has no such node.
pub fn locate(text: &str, path: &NodePath, part: Part) -> Option<(usize, usize)> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let seek = Seek {
        path: &path.0,
        part,
    };
    match seek.deserialize(de) {
        Ok(()) => None,
        Err(found) => found.location().map(|l| (l.line(), l.column())),
    }
}

/// The error that stops the walk at the target; only its location is used.
fn found<E: de::Error>() -> E {
    E::custom("found")
}

struct Seek<'p> {
    path: &'p [Segment],
    part: Part,
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.path.split_first() {
            None => d.deserialize_any(Target),
            Some((Segment::Key(key), rest)) => d.deserialize_map(InMap {
                key,
                rest,
                part: self.part,
            }),
            Some((Segment::Index(index), rest)) => d.deserialize_seq(InSeq {
                index: *index,
                rest,
                part: self.part,
            }),
        }
    }
}

/// Any node at all: the target, reported through the error.
struct Target;

impl<'de> Visitor<'de> for Target {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the node being located")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(found())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(found())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(found())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(found())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(found())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(found())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(found())
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(found())
    }
}

struct InMap<'p> {
    key: &'p str,
    rest: &'p [Segment],
    part: Part,
}

impl<'de> Visitor<'de> for InMap<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a map with key {:?}", self.key)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let stop_at_key = self.rest.is_empty() && self.part == Part::Key;
        let key = KeySeek {
            key: self.key,
            stop_at_key,
        };
        while let Some(hit) = map.next_key_seed(key)? {
            if hit {
                map.next_value_seed(Seek {
                    path: self.rest,
                    part: self.part,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// A map key: is it the one on the path? Stops the walk there when the key
/// itself is the target.
#[derive(Clone, Copy)]
struct KeySeek<'p> {
    key: &'p str,
    stop_at_key: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeek<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeek<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match v == self.key {
            true if self.stop_at_key => Err(found()),
            hit => Ok(hit),
        }
    }
}

struct InSeq<'p> {
    index: usize,
    rest: &'p [Segment],
    part: Part,
}

impl<'de> Visitor<'de> for InSeq<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence with an element {}", self.index)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let more = if i == self.index {
                seq.next_element_seed(Seek {
                    path: self.rest,
                    part: self.part,
                })?
            } else {
                seq.next_element::<IgnoredAny>()?.map(|_| ())
            };
            if more.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "a:\n  b: [x, {c: 1, d: two}]\n  e:\n    f: g\n";

    fn path() -> NodePath {
        NodePath::default()
    }

    #[test]
    fn finds_values_keys_and_elements() {
        let d = path().key("a").key("b").index(1).key("d");
        assert_eq!(d.to_string(), "a.b[1].d");
        assert_eq!(locate(TEXT, &d, Part::Value), Some((2, 20)));
        assert_eq!(locate(TEXT, &d, Part::Key), Some((2, 17)));
        let x = path().key("a").key("b").index(0);
        assert_eq!(locate(TEXT, &x, Part::Value), Some((2, 7)));
        let f = path().key("a").key("e").key("f");
        assert_eq!(locate(TEXT, &f, Part::Key), Some((4, 5)));
        assert_eq!(locate(TEXT, &f, Part::Value), Some((4, 8)));
    }

    #[test]
    fn missing_nodes_have_no_location() {
        let nope = path().key("a").key("b").index(5);
        assert_eq!(locate(TEXT, &nope, Part::Value), None);
        assert_eq!(locate(TEXT, &path().key("z"), Part::Key), None);
    }
}
