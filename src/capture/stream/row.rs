//! Row changes: one Insert, Update, Delete or Truncate in, its change
//! events out to the table's topic, in the transaction's batch.
//!
//! ```text
//!  change ─► keys ─► snapshot windows ─► before/after images (TOAST filled) ─► envelope ─► producer
//! ```
//!
//! An update that changes the key goes out as a delete of the old key and a
//! create of the new one. Keys, images and payloads are encoded into the
//! session's reused `Scratch` buffers.

use std::fmt::Write as _;

use super::transaction::send_tx_marker;
use super::{Scratch, Stream};
use crate::capture::envelope::{Envelope, Op, TxRef};
use crate::capture::error::CaptureError;
use crate::capture::pgoutput::{Cell, OldKind, Tuple};
use crate::capture::relations::{self, Table};
use crate::capture::toast::{MIN_CACHED_VALUE_BYTES, ToastCache};
use crate::config::NumericEncoding;

impl Stream {
    /// Encodes and produces one change.
    pub(super) async fn change(
        &mut self,
        lsn: u64,
        table: &Table,
        op: Op,
        old: Option<(OldKind, &Tuple)>,
        new: Option<&Tuple>,
    ) -> Result<(), CaptureError> {
        let change = RowChange {
            table,
            op,
            old,
            new,
        };
        let numeric = self.settings.numeric;
        let keys = self.scratch.write_keys(&change, numeric);
        self.track_in_windows(&change, keys);
        let Some(tx) = self.tx.as_mut() else {
            return Ok(());
        };
        if tx.skip {
            return Ok(());
        }
        let s = &mut self.scratch;
        let images = s.write_images(&change, keys, numeric, &self.toast);
        s.update_toast_cache(&change, keys, numeric, &self.toast);
        let transaction_events = self.settings.transaction_events;
        if transaction_events && !tx.begun {
            tx.begun = true;
            send_tx_marker(&self.producer, &self.tx_topic, s, tx, true).await?;
        }

        let unavailable: Vec<&str> = s
            .unavailable
            .iter()
            .map(|&i| table.columns[i].name.as_str())
            .collect();
        let events: &[(Op, bool)] = if keys.key_changed {
            &[(Op::Delete, true), (Op::Create, false)]
        } else {
            &[(op, false)]
        };
        for &(op, old_side) in events {
            tx.count_event(table, transaction_events);
            s.payload.clear();
            let (before, after) = images.of_event(&s.before, &s.after, keys, old_side);
            Envelope {
                op,
                before,
                after,
                source: tx.source(&self.settings.pipeline, &self.database, table, lsn),
                unavailable: &unavailable,
                transaction: transaction_events.then_some(TxRef {
                    id: &tx.id,
                    total_order: tx.seq,
                }),
                ts_ms: self.clock.now_ms(),
            }
            .write(&mut s.payload);
            write_event_idempotency_key(&mut s.idem, &tx.lsn_text, tx.seq);
            let key = keys.of_event(&s.key, &s.old_key, old_side);
            let event = tx.outgoing(&table.topic, key, &s.payload, &s.idem);
            self.producer.send(tx.batch, event).await?;
            self.counted += 1;
        }
        Ok(())
    }

    /// Tells the incremental-snapshot windows which key the transaction
    /// changed (both keys of a key change), or that it truncated the table.
    fn track_in_windows(&mut self, change: &RowChange<'_>, keys: Keys) {
        if self.windows.is_empty() {
            return;
        }
        let Some(xid) = self.tx.as_ref().map(|t| t.xid) else {
            return;
        };
        let (schema, name) = (&change.table.schema, &change.table.name);
        if keys.has_key {
            self.windows.changed(schema, name, &self.scratch.key, xid);
            if keys.key_changed {
                self.windows
                    .changed(schema, name, &self.scratch.old_key, xid);
            }
        } else if change.op == Op::Truncate {
            self.windows.truncated(schema, name, xid);
        }
    }
}

/// One decoded row change of a table.
struct RowChange<'a> {
    table: &'a Table,
    op: Op,
    old: Option<(OldKind, &'a Tuple)>,
    new: Option<&'a Tuple>,
}

/// The keys of a row change written into [`Scratch`].
#[derive(Clone, Copy)]
struct Keys {
    /// `Scratch::key` holds the row's key (of the new image, else the old).
    has_key: bool,
    /// An update changed the key; `Scratch::old_key` holds the old one. It
    /// goes out as a delete of the old key and a create of the new one, so
    /// that each key's partition sees its own history.
    key_changed: bool,
}

impl Keys {
    /// The Kafka key of one event of the change: the old key for the delete
    /// of a key change, else the row's key.
    fn of_event<'a>(self, key: &'a [u8], old_key: &'a [u8], old_side: bool) -> Option<&'a [u8]> {
        if old_side {
            Some(old_key)
        } else if self.has_key {
            Some(key)
        } else {
            None
        }
    }
}

/// Which row images of a change [`Scratch`] holds.
#[derive(Clone, Copy)]
struct Images {
    before: bool,
    after: bool,
}

impl Images {
    /// The `(before, after)` of one event of the change: the delete of a key
    /// change carries only the before image, its create only the after image.
    fn of_event<'a>(
        self,
        before: &'a [u8],
        after: &'a [u8],
        keys: Keys,
        old_side: bool,
    ) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
        if keys.key_changed {
            if old_side {
                (Some(before), None)
            } else {
                (None, Some(after))
            }
        } else {
            (self.before.then_some(before), self.after.then_some(after))
        }
    }
}

impl Scratch {
    /// Writes the row's key and, for an update, the key of its old image.
    fn write_keys(&mut self, change: &RowChange<'_>, numeric: NumericEncoding) -> Keys {
        self.key.clear();
        self.old_key.clear();
        let table = change.table;
        let has_key = match (change.new, change.old) {
            (Some(n), _) => relations::write_key(&mut self.key, table, &n.cells, numeric),
            (None, Some((_, o))) => relations::write_key(&mut self.key, table, &o.cells, numeric),
            _ => false,
        };
        let key_changed = match (change.old, change.op) {
            (Some((_, o)), Op::Update) => {
                relations::write_key(&mut self.old_key, table, &o.cells, numeric)
                    && self.old_key != self.key
            }
            _ => false,
        };
        Keys {
            has_key,
            key_changed,
        }
    }

    /// Writes the before and after images of the change.
    fn write_images(
        &mut self,
        change: &RowChange<'_>,
        keys: Keys,
        numeric: NumericEncoding,
        toast: &ToastCache,
    ) -> Images {
        self.before.clear();
        self.after.clear();
        self.unavailable.clear();
        self.filled.clear();
        let before = self.write_before(change, keys, numeric);
        let after = match change.new {
            Some(n) => {
                self.write_after(change.table, n, keys, numeric, toast);
                true
            }
            None => false,
        };
        Images { before, after }
    }

    /// The before image: the whole old row (REPLICA IDENTITY FULL), or its
    /// key for a delete or a key change; `false` when there is none.
    fn write_before(
        &mut self,
        change: &RowChange<'_>,
        keys: Keys,
        numeric: NumericEncoding,
    ) -> bool {
        let Some((kind, o)) = change.old else {
            return false;
        };
        match kind {
            OldKind::Full => {
                relations::write_row(
                    &mut self.before,
                    change.table,
                    &o.cells,
                    numeric,
                    &mut |_| None,
                    &mut Vec::new(),
                );
                true
            }
            OldKind::Key if change.op == Op::Delete || keys.key_changed => {
                self.before.extend_from_slice(if keys.key_changed {
                    &self.old_key
                } else {
                    &self.key
                });
                true
            }
            OldKind::Key => false,
        }
    }

    /// The after image. Unchanged TOAST cells take the value last seen for
    /// the row (kept in `filled`), else their column goes to `unavailable`.
    fn write_after(
        &mut self,
        table: &Table,
        new: &Tuple,
        keys: Keys,
        numeric: NumericEncoding,
        toast: &ToastCache,
    ) {
        let key = &self.key;
        let filled = &mut self.filled;
        relations::write_row(
            &mut self.after,
            table,
            &new.cells,
            numeric,
            &mut |i| {
                let v = if keys.has_key {
                    toast.lookup(table, key, i)
                } else {
                    None
                };
                if let Some(v) = &v {
                    filled.push((i, v.clone()));
                }
                v
            },
            &mut self.unavailable,
        );
    }

    /// Keeps the TOAST cache in step with the row: the large values of a new
    /// image (and those filled in from the cache) are remembered, a deleted
    /// row is forgotten.
    fn update_toast_cache(
        &self,
        change: &RowChange<'_>,
        keys: Keys,
        numeric: NumericEncoding,
        toast: &ToastCache,
    ) {
        if !keys.has_key {
            return;
        }
        match change.new {
            Some(n) => {
                if !self.filled.is_empty()
                    || toast_sized(&n.cells)
                    || (change.op == Op::Update && toast.entry_count() > 0)
                {
                    toast.remember_with(change.table, &self.key, &n.cells, numeric, &self.filled);
                }
            }
            None => {
                if change.op == Op::Delete && toast.entry_count() > 0 {
                    toast.forget(change.table, &self.key);
                }
            }
        }
    }
}

/// `<commit LSN>/<event number>`: the idempotency key of a row event.
fn write_event_idempotency_key(idem: &mut String, lsn_text: &str, seq: u64) {
    idem.clear();
    idem.push_str(lsn_text);
    idem.push('/');
    let _ = write!(idem, "{seq}");
}

/// Whether the image has a value large enough for the TOAST cache.
fn toast_sized(cells: &[Cell]) -> bool {
    cells
        .iter()
        .any(|c| matches!(c, Cell::Text(b) if b.len() >= MIN_CACHED_VALUE_BYTES))
}
