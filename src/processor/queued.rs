//! Queued records: the billing records whose changes a processor session
//! has taken from Kafka but not started yet (see [`super::lanes`]). A child
//! waiting for its parent's link looks here. A parent queued behind the
//! child, on a partition the child's part holds, starts only after that
//! part is done: waiting for it would hold the whole part for nothing. The
//! child is deferred instead: re-queued at once onto its partition, behind
//! the parent's change (see [`super::retry`]).
//!
//! ```text
//!  consumer ──batch──► lanes: waiting ──(add keys)──► Queued ◄──contains?── child waiting for its parent
//!                      lanes: part starts ──(remove keys)──┘
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use rdkafka::Message;
use serde_json::{Map, Value};
use tokio::sync::watch;

use super::change::billing_id;
use super::route::billing_key;

/// Routing keys (`<schema>.<table>:<billing id>`, see [`billing_key`]) of
/// the messages waiting in the lanes, with the partition they wait on (a
/// record's changes share one) and how many wait. Only records of parent
/// tables are counted: no child waits for another.
pub struct Queued {
    /// `<schema>.<table>` of every entity that is another's parent.
    parents: HashSet<String>,
    keys: Mutex<HashMap<String, (i32, usize)>>,
    added: watch::Sender<()>,
}

impl Default for Queued {
    fn default() -> Self {
        Self::of_parents(HashSet::new())
    }
}

impl Queued {
    /// Counts the records of the tables in `parents`.
    pub fn of_parents(parents: HashSet<String>) -> Self {
        Self {
            parents,
            keys: Mutex::default(),
            added: watch::channel(()).0,
        }
    }

    /// The routing key of a message's record when it is a parent's: a
    /// change topic's message keyed by its row's primary key, or a
    /// repartition topic's message keyed by its record. `None` for other
    /// records, for an external change not routed yet and for anything
    /// unreadable (decoding reports it later).
    pub fn key_of(&self, m: &impl Message, cdc_prefix: &str) -> Option<String> {
        if self.parents.is_empty() {
            return None;
        }
        let key = m.key()?;
        match m.topic().strip_prefix(cdc_prefix) {
            Some(schema_table) if self.parents.contains(schema_table) => {
                let pk: Map<String, Value> = serde_json::from_slice(key).ok()?;
                let (schema, table) = schema_table.split_once('.')?;
                Some(billing_key(schema, table, &billing_id(&pk)))
            }
            Some(_) => None,
            None => {
                let routed = std::str::from_utf8(key).ok()?;
                let (table, _) = routed.split_once(':')?;
                self.parents.contains(table).then(|| routed.to_string())
            }
        }
    }

    /// Counts the keys of messages that now wait on `partition`, and wakes
    /// the waiters.
    pub fn add<'a>(&self, partition: i32, keys: impl IntoIterator<Item = &'a String>) {
        let mut map = self.keys.lock().expect("queued keys");
        for k in keys {
            let entry = map.entry(k.clone()).or_insert((partition, 0));
            *entry = (partition, entry.1 + 1);
        }
        drop(map);
        self.added.send_replace(());
    }

    /// Uncounts the keys of messages that started, or were dropped.
    pub fn remove<'a>(&self, keys: impl IntoIterator<Item = &'a String>) {
        let mut map = self.keys.lock().expect("queued keys");
        for k in keys {
            if let Some((_, n)) = map.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    map.remove(k);
                }
            }
        }
    }

    /// Forgets every key: a new session starts with nothing waiting.
    pub fn clear(&self) {
        self.keys.lock().expect("queued keys").clear();
    }

    /// Whether a change of the record keyed `key` waits to start on one of
    /// `partitions`.
    pub fn waits_on(&self, key: &str, partitions: &[i32]) -> bool {
        let map = self.keys.lock().expect("queued keys");
        map.get(key).is_some_and(|(p, _)| partitions.contains(p))
    }

    /// Changes whenever messages start waiting.
    pub fn additions(&self) -> watch::Receiver<()> {
        self.added.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    fn message(topic: &str, key: &str) -> OwnedMessage {
        OwnedMessage::new(
            None,
            Some(key.as_bytes().to_vec()),
            topic.into(),
            Timestamp::NotAvailable,
            0,
            0,
            None,
        )
    }

    #[test]
    fn change_topic_and_repartition_messages_name_the_same_parent_record() {
        let queued = Queued::of_parents(HashSet::from(["public.accounts".to_string()]));
        let key = |topic: &str, key: &str| queued.key_of(&message(topic, key), "x.cdc.");
        let cdc = key("x.cdc.public.accounts", r#"{"id":7}"#);
        assert_eq!(cdc.as_deref(), Some("public.accounts:7"));
        assert_eq!(key("x.processor.changes", "public.accounts:7"), cdc);
        assert_eq!(key("x.processor.changes", "ext:sf:accounts:001"), None);
        assert_eq!(key("x.cdc.public.accounts", "not json"), None);
        assert_eq!(
            key("x.cdc.public.contacts", r#"{"id":7}"#),
            None,
            "not a parent"
        );
        assert_eq!(key("x.processor.changes", "public.contacts:7"), None);
    }

    #[test]
    fn a_key_stays_queued_while_any_of_its_messages_waits() {
        let queued = Queued::default();
        let additions = queued.additions();
        let a = "public.accounts:1".to_string();
        queued.add(3, [&a, &a]);
        assert!(additions.has_changed().unwrap());
        assert!(queued.waits_on(&a, &[0, 3]));
        assert!(!queued.waits_on(&a, &[0, 1]), "queued on another partition");
        queued.remove([&a]);
        assert!(queued.waits_on(&a, &[3]));
        queued.remove([&a]);
        assert!(!queued.waits_on(&a, &[3]));
        queued.add(3, [&a]);
        queued.clear();
        assert!(!queued.waits_on(&a, &[3]));
    }
}
