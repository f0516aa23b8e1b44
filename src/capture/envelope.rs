//! The change event written to Kafka: a Debezium-compatible envelope, so
//! consumers built for Debezium's PostgreSQL connector read it unchanged.
//!
//! ```text
//!  { "before": {…}|null, "after": {…}|null,
//!    "source": { "version", "connector": "postgresql", "name", "ts_ms", "ts_us", "db",
//!                "schema", "table", "txId", "lsn", "snapshot" [, "origin"] },
//!    "op": "c"|"u"|"d"|"r"|"t", "ts_ms" [, "unavailable": [col…]] [, "transaction": {…}] }
//! ```
//!
//! Rows are pre-encoded JSON objects (see `relations::write_row`); this module
//! only assembles them, so the hot path never builds a `serde_json::Value`.
//! `schemas/cdc-envelope.schema.json` describes the result.

use super::values::write_str;

/// The version reported in `source.version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
    Read,
    Truncate,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }
}

/// `source.snapshot`, as Debezium spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMark {
    False,
    True,
    Incremental,
}

impl SnapshotMark {
    fn as_str(self) -> &'static str {
        match self {
            SnapshotMark::False => "false",
            SnapshotMark::True => "true",
            SnapshotMark::Incremental => "incremental",
        }
    }
}

/// Where an event came from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Logical name of the source (the pipeline name).
    pub name: &'a str,
    pub db: &'a str,
    pub schema: &'a str,
    pub table: &'a str,
    /// Commit time of the transaction (snapshot: read time), µs since
    /// epoch; written as Debezium's `ts_ms` and `ts_us`.
    pub ts_us: i64,
    pub tx_id: Option<u32>,
    /// LSN of the change (snapshot: the slot's consistent point).
    pub lsn: u64,
    pub snapshot: SnapshotMark,
    /// Replication origin of the transaction, when tagged.
    pub origin: Option<&'a str>,
}

/// Debezium's per-event `transaction` block.
#[derive(Debug, Clone, Copy)]
pub struct TxRef<'a> {
    pub id: &'a str,
    pub total_order: u64,
}

/// One event's parts.
pub struct Envelope<'a> {
    pub op: Op,
    pub before: Option<&'a [u8]>,
    pub after: Option<&'a [u8]>,
    pub source: Source<'a>,
    pub unavailable: &'a [&'a str],
    pub transaction: Option<TxRef<'a>>,
    pub ts_ms: i64,
}

fn num(out: &mut Vec<u8>, n: impl itoa_like::Int) {
    n.push_to(out);
}

/// Integer formatting without allocation.
mod itoa_like {
    pub trait Int {
        fn push_to(self, out: &mut Vec<u8>);
    }
    macro_rules! int {
        ($($t:ty),*) => {$(
            impl Int for $t {
                fn push_to(self, out: &mut Vec<u8>) {
                    use std::io::Write;
                    let _ = write!(out, "{self}");
                }
            }
        )*};
    }
    int!(i64, u64, u32);
}

impl Envelope<'_> {
    /// Appends the JSON of this event to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"before\":");
        out.extend_from_slice(self.before.unwrap_or(b"null"));
        out.extend_from_slice(b",\"after\":");
        out.extend_from_slice(self.after.unwrap_or(b"null"));
        let s = &self.source;
        out.extend_from_slice(b",\"source\":{\"version\":\"");
        out.extend_from_slice(VERSION.as_bytes());
        out.extend_from_slice(b"\",\"connector\":\"postgresql\",\"name\":");
        write_str(out, s.name.as_bytes());
        out.extend_from_slice(b",\"ts_ms\":");
        num(out, s.ts_us.div_euclid(1000));
        out.extend_from_slice(b",\"ts_us\":");
        num(out, s.ts_us);
        out.extend_from_slice(b",\"snapshot\":\"");
        out.extend_from_slice(s.snapshot.as_str().as_bytes());
        out.extend_from_slice(b"\",\"db\":");
        write_str(out, s.db.as_bytes());
        out.extend_from_slice(b",\"schema\":");
        write_str(out, s.schema.as_bytes());
        out.extend_from_slice(b",\"table\":");
        write_str(out, s.table.as_bytes());
        out.extend_from_slice(b",\"txId\":");
        match s.tx_id {
            Some(x) => num(out, x),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"lsn\":");
        num(out, s.lsn);
        if let Some(o) = s.origin {
            out.extend_from_slice(b",\"origin\":");
            write_str(out, o.as_bytes());
        }
        out.extend_from_slice(b"},\"op\":\"");
        out.extend_from_slice(self.op.code().as_bytes());
        out.extend_from_slice(b"\",\"ts_ms\":");
        num(out, self.ts_ms);
        if !self.unavailable.is_empty() {
            out.extend_from_slice(b",\"unavailable\":[");
            for (i, c) in self.unavailable.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, c.as_bytes());
            }
            out.push(b']');
        }
        if let Some(t) = self.transaction {
            out.extend_from_slice(b",\"transaction\":{\"id\":");
            write_str(out, t.id.as_bytes());
            out.extend_from_slice(b",\"total_order\":");
            num(out, t.total_order);
            out.push(b'}');
        }
        out.push(b'}');
    }
}

/// A BEGIN or END marker on `<prefix>.cdc.transactions`, as Debezium writes them.
pub fn write_tx_marker(
    out: &mut Vec<u8>,
    begin: bool,
    id: &str,
    ts_ms: i64,
    counts: &[(String, u64)],
) {
    out.extend_from_slice(if begin {
        b"{\"status\":\"BEGIN\",\"id\":"
    } else {
        b"{\"status\":\"END\",\"id\":"
    });
    write_str(out, id.as_bytes());
    out.extend_from_slice(b",\"ts_ms\":");
    num(out, ts_ms);
    if begin {
        out.extend_from_slice(b",\"event_count\":null,\"data_collections\":null}");
        return;
    }
    out.extend_from_slice(b",\"event_count\":");
    num(out, counts.iter().map(|(_, n)| n).sum::<u64>());
    out.extend_from_slice(b",\"data_collections\":[");
    for (i, (name, n)) in counts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"data_collection\":");
        write_str(out, name.as_bytes());
        out.extend_from_slice(b",\"event_count\":");
        num(out, *n);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `X/Y`, PostgreSQL's text form of an LSN.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_valid_json_with_debezium_fields() {
        let mut out = Vec::new();
        Envelope {
            op: Op::Update,
            before: None,
            after: Some(br#"{"id":1}"#),
            source: Source {
                name: "demo",
                db: "billing",
                schema: "public",
                table: "accounts",
                ts_us: 5_123,
                tx_id: Some(7),
                lsn: 99,
                snapshot: SnapshotMark::False,
                origin: None,
            },
            unavailable: &["notes"],
            transaction: Some(TxRef {
                id: "7:99",
                total_order: 1,
            }),
            ts_ms: 6,
        }
        .write(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["op"], "u");
        assert_eq!(v["after"]["id"], 1);
        assert_eq!(v["source"]["connector"], "postgresql");
        assert_eq!(v["source"]["txId"], 7);
        assert_eq!(
            (v["source"]["ts_ms"].clone(), v["source"]["ts_us"].clone()),
            (5.into(), 5_123.into())
        );
        assert_eq!(v["source"]["snapshot"], "false");
        assert_eq!(v["unavailable"][0], "notes");
        assert_eq!(v["transaction"]["total_order"], 1);
    }

    #[test]
    fn lsn_text_matches_postgres() {
        assert_eq!(lsn_text(0x1_0000_00A0), "1/A0");
    }
}
