//! Incremental-snapshot windows: the stream's half of the watermark method.
//!
//! ```text
//!  stream: change(table, key, xid) ─► Windows  (only tables under incremental snapshot)
//!  high watermark: chunk rows ─► Windows::stale(row key, chunk snapshot)? drop : emit
//! ```
//!
//! A chunk is read in a snapshot taken after its low watermark committed. A
//! row of it is stale exactly when the last transaction that changed its
//! key, up to the high watermark, is one that snapshot did not see: the
//! stream has already carried that newer change, so the row is dropped.
//! Deciding by snapshot visibility rather than by position between the
//! watermarks also covers a transaction whose commit record precedes the low
//! watermark but which was not yet visible when the chunk was read (commit
//! order in the WAL and visibility are not switched atomically).

use std::collections::{HashMap, HashSet};

/// Which transactions a chunk's snapshot saw, from `pg_current_snapshot()`,
/// by the 32-bit xids the replication stream reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visibility {
    xmin: u32,
    xmax: u32,
    running: HashSet<u32>,
}

/// `a` was assigned before `b`, modulo xid wraparound.
fn precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl Visibility {
    /// Parses the text form `xmin:xmax:xip,xip,…` (64-bit xids).
    pub fn parse(text: &str) -> Option<Visibility> {
        let mut parts = text.split(':');
        let xid = |s: &str| s.parse::<u64>().ok().map(|x| x as u32);
        let xmin = xid(parts.next()?)?;
        let xmax = xid(parts.next()?)?;
        let running = match parts.next()? {
            "" => HashSet::new(),
            list => list.split(',').map(xid).collect::<Option<_>>()?,
        };
        parts.next().is_none().then_some(Visibility {
            xmin,
            xmax,
            running,
        })
    }

    /// Whether the snapshot contains the changes of committed transaction `xid`.
    pub fn sees(&self, xid: u32) -> bool {
        precedes(xid, self.xmax) && !self.running.contains(&xid)
    }
}

/// Keys changed in one table since its incremental snapshot began.
struct Tracked {
    schema: String,
    name: String,
    /// Per key, the transaction that changed it last.
    last: HashMap<Vec<u8>, u32>,
    truncated: Option<u32>,
}

/// The tables under incremental snapshot and what changed in them.
#[derive(Default)]
pub struct Windows {
    tables: Vec<Tracked>,
}

impl Windows {
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Starts tracking `qualified` (`schema.table`); tracking again is a no-op.
    pub fn open(&mut self, qualified: &str) {
        let Some((schema, name)) = qualified.split_once('.') else {
            return;
        };
        if self.find(schema, name).is_none() {
            self.tables.push(Tracked {
                schema: schema.to_string(),
                name: name.to_string(),
                last: HashMap::new(),
                truncated: None,
            });
        }
    }

    fn find(&mut self, schema: &str, name: &str) -> Option<&mut Tracked> {
        self.tables
            .iter_mut()
            .find(|t| t.schema == schema && t.name == name)
    }

    fn find_qualified(&self, qualified: &str) -> Option<&Tracked> {
        let (schema, name) = qualified.split_once('.')?;
        self.tables
            .iter()
            .find(|t| t.schema == schema && t.name == name)
    }

    /// Transaction `xid` changed the row with `key`.
    pub fn changed(&mut self, schema: &str, name: &str, key: &[u8], xid: u32) {
        if let Some(t) = self.find(schema, name) {
            match t.last.get_mut(key) {
                Some(x) => *x = xid,
                None => {
                    t.last.insert(key.to_vec(), xid);
                }
            }
        }
    }

    /// Transaction `xid` truncated the table.
    pub fn truncated(&mut self, schema: &str, name: &str, xid: u32) {
        if let Some(t) = self.find(schema, name) {
            t.truncated = Some(xid);
            t.last.clear();
        }
    }

    /// Whether a chunk row of `table` read in snapshot `v` is older than
    /// what the stream already carried.
    pub fn stale(&self, table: &str, v: &Visibility, key: &[u8]) -> bool {
        let Some(t) = self.find_qualified(table) else {
            return false;
        };
        t.truncated.is_some_and(|x| !v.sees(x)) || t.last.get(key).is_some_and(|x| !v.sees(*x))
    }

    /// After a chunk of `table` was emitted: forgets changes that every later
    /// snapshot sees (they can never make a row stale), and stops tracking
    /// after the table's last chunk.
    pub fn settle(&mut self, table: &str, v: &Visibility, last_chunk: bool) {
        if last_chunk {
            if let Some((schema, name)) = table.split_once('.') {
                self.tables
                    .retain(|t| !(t.schema == schema && t.name == name));
            }
            return;
        }
        let Some((schema, name)) = table.split_once('.') else {
            return;
        };
        if let Some(t) = self.find(schema, name) {
            t.last.retain(|_, x| !precedes(*x, v.xmin));
            if t.truncated.is_some_and(|x| precedes(x, v.xmin)) {
                t.truncated = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vis(text: &str) -> Visibility {
        Visibility::parse(text).unwrap()
    }

    #[test]
    fn snapshot_text_parses_and_decides_visibility() {
        let v = vis("100:105:100,103");
        assert!(v.sees(99) && v.sees(101) && v.sees(104));
        assert!(!v.sees(100) && !v.sees(103) && !v.sees(105) && !v.sees(200));
        assert_eq!(vis("7:7:").running.len(), 0);
        // 64-bit xids of a later epoch compare by their low 32 bits.
        let e = vis(&format!("{}:{}:", (1u64 << 32) + 10, (1u64 << 32) + 12));
        assert!(e.sees(11) && !e.sees(12));
        for bad in ["", "1:2", "1:x:", "1:2:3:4", "1:2:a,b"] {
            assert!(Visibility::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn xids_compare_across_wraparound() {
        assert!(precedes(u32::MAX - 1, 3));
        assert!(!precedes(3, u32::MAX - 1));
        let v = vis(&format!("{}:{}:", u32::MAX - 2, 5));
        assert!(v.sees(u32::MAX) && v.sees(4) && !v.sees(5));
    }

    #[test]
    fn a_row_is_stale_only_when_its_last_change_is_unseen() {
        let mut w = Windows::default();
        w.open("public.r");
        w.open("public.r");
        w.changed("public", "r", b"1", 100);
        w.changed("public", "r", b"2", 100);
        w.changed("public", "r", b"2", 110);
        w.changed("public", "other", b"3", 120);
        let v = vis("105:108:105");
        assert!(!w.stale("public.r", &v, b"1"), "seen by the snapshot");
        assert!(w.stale("public.r", &v, b"2"), "changed after the snapshot");
        assert!(!w.stale("public.r", &v, b"9"), "never changed");
        assert!(!w.stale("public.other", &v, b"3"), "not tracked");
        // Committed before the low watermark, still running for the snapshot.
        let racing = vis("99:101:99");
        w.changed("public", "r", b"4", 99);
        assert!(w.stale("public.r", &racing, b"4"));
        w.settle("public.r", &v, false);
        assert_eq!(
            w.tables[0].last.len(),
            1,
            "xid 100 is seen by every later snapshot"
        );
        w.truncated("public", "r", 130);
        assert!(w.stale("public.r", &v, b"9"));
        w.settle("public.r", &vis("131:131:"), true);
        assert!(w.is_empty());
    }
}
