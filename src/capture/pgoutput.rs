//! Decoding of the `pgoutput` logical replication messages (protocol
//! version 1) that arrive inside the replication stream's `XLogData` frames.
//!
//! ```text
//!  replication ──XLogData bytes──► pgoutput::decode ──► Message ──► stream
//! ```
//!
//! Begin, Commit and logical-decoding Message are framed by the replication
//! client already; this module decodes them too (for completeness and tests)
//! and everything else: Origin, Relation, Type, Insert, Update, Delete,
//! Truncate. Column values stay borrowed slices of the frame: nothing is
//! copied until a value is written into an event.

use bytes::Bytes;

/// A malformed pgoutput message.
#[derive(Debug, thiserror::Error)]
#[error("malformed pgoutput {kind} message: {detail}")]
pub struct DecodeError {
    pub kind: &'static str,
    pub detail: &'static str,
}

/// One pgoutput message.
#[derive(Debug)]
pub enum Message {
    Begin {
        final_lsn: u64,
        commit_time_us: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_time_us: i64,
    },
    Origin {
        commit_lsn: u64,
        name: String,
    },
    Relation(RelationBody),
    Type {
        oid: u32,
        schema: String,
        name: String,
    },
    Insert {
        rel: u32,
        new: Tuple,
    },
    Update {
        rel: u32,
        old: Option<(OldKind, Tuple)>,
        new: Tuple,
    },
    Delete {
        rel: u32,
        old: (OldKind, Tuple),
    },
    Truncate {
        rels: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    LogicalMessage {
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Bytes,
    },
    /// A message type this decoder does not know (e.g. streaming messages of
    /// later protocol versions); carries its tag.
    Unknown(u8),
}

/// Which old image an update or delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `K`: only the replica-identity (key) columns.
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// A `Relation` message: the shape of a table, sent before its first change
/// in a session and again after every change of its definition.
#[derive(Debug, Clone)]
pub struct RelationBody {
    pub oid: u32,
    pub schema: String,
    pub table: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

#[derive(Debug, Clone)]
pub struct RelationColumn {
    /// Part of the replica identity (the key).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// A row image: one cell per column, slices into the frame.
#[derive(Debug, Default)]
pub struct Tuple {
    pub cells: Vec<Cell>,
}

#[derive(Debug, Clone)]
pub enum Cell {
    Null,
    /// An unchanged TOASTed value the server did not resend.
    UnchangedToast,
    /// Text-format value.
    Text(Bytes),
    /// Binary-format value (only with the `binary` option).
    Binary(Bytes),
}

struct Reader {
    buf: Bytes,
    pos: usize,
    kind: &'static str,
}

impl Reader {
    fn err(&self, detail: &'static str) -> DecodeError {
        DecodeError {
            kind: self.kind,
            detail,
        }
    }
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(self.err("truncated"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err("unterminated string"))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(self.err("truncated value"));
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.i16()?;
        if n < 0 {
            return Err(self.err("negative column count"));
        }
        let mut cells = Vec::with_capacity(n as usize);
        for _ in 0..n {
            cells.push(match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::UnchangedToast,
                b't' => {
                    let len = self.i32()?;
                    Cell::Text(
                        self.bytes(usize::try_from(len).map_err(|_| self.err("negative length"))?)?,
                    )
                }
                b'b' => {
                    let len = self.i32()?;
                    Cell::Binary(
                        self.bytes(usize::try_from(len).map_err(|_| self.err("negative length"))?)?,
                    )
                }
                _ => return Err(self.err("unknown tuple cell kind")),
            });
        }
        Ok(Tuple { cells })
    }
}

/// Decodes one pgoutput message (the payload of an `XLogData` frame).
pub fn decode(buf: Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError {
            kind: "empty",
            detail: "no message tag",
        });
    };
    let kind = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        other => return Ok(Message::Unknown(other)),
    };
    let mut r = Reader { buf, pos: 1, kind };
    match tag {
        b'B' => r.begin(),
        b'C' => r.commit(),
        b'O' => r.origin(),
        b'R' => r.relation(),
        b'Y' => r.type_message(),
        b'I' => r.insert(),
        b'U' => r.update(),
        b'D' => r.delete(),
        b'T' => r.truncate(),
        b'M' => r.logical_message(),
        _ => unreachable!("tag checked above"),
    }
}

/// The bodies of the messages, each after its tag.
impl Reader {
    fn begin(&mut self) -> Result<Message, DecodeError> {
        Ok(Message::Begin {
            final_lsn: self.u64()?,
            commit_time_us: self.u64()? as i64,
            xid: self.u32()?,
        })
    }

    fn commit(&mut self) -> Result<Message, DecodeError> {
        let _flags = self.u8()?;
        Ok(Message::Commit {
            commit_lsn: self.u64()?,
            end_lsn: self.u64()?,
            commit_time_us: self.u64()? as i64,
        })
    }

    fn origin(&mut self) -> Result<Message, DecodeError> {
        Ok(Message::Origin {
            commit_lsn: self.u64()?,
            name: self.cstr()?,
        })
    }

    fn relation(&mut self) -> Result<Message, DecodeError> {
        let oid = self.u32()?;
        let schema = self.cstr()?;
        let table = self.cstr()?;
        let replica_identity = self.u8()?;
        let n = self.i16()?;
        let mut columns = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            columns.push(self.relation_column()?);
        }
        Ok(Message::Relation(RelationBody {
            oid,
            schema,
            table,
            replica_identity,
            columns,
        }))
    }

    fn relation_column(&mut self) -> Result<RelationColumn, DecodeError> {
        let flags = self.u8()?;
        Ok(RelationColumn {
            key: flags & 1 == 1,
            name: self.cstr()?,
            type_oid: self.u32()?,
            type_modifier: self.i32()?,
        })
    }

    fn type_message(&mut self) -> Result<Message, DecodeError> {
        Ok(Message::Type {
            oid: self.u32()?,
            schema: self.cstr()?,
            name: self.cstr()?,
        })
    }

    fn insert(&mut self) -> Result<Message, DecodeError> {
        let rel = self.u32()?;
        if self.u8()? != b'N' {
            return Err(self.err("expected new tuple"));
        }
        Ok(Message::Insert {
            rel,
            new: self.tuple()?,
        })
    }

    /// An update: the old image (`K` key or `O` whole row) when the server
    /// sends one, then the new one (`N`).
    fn update(&mut self) -> Result<Message, DecodeError> {
        let rel = self.u32()?;
        let mut old = None;
        let mut marker = self.u8()?;
        if marker == b'K' || marker == b'O' {
            let k = if marker == b'K' {
                OldKind::Key
            } else {
                OldKind::Full
            };
            old = Some((k, self.tuple()?));
            marker = self.u8()?;
        }
        if marker != b'N' {
            return Err(self.err("expected new tuple"));
        }
        Ok(Message::Update {
            rel,
            old,
            new: self.tuple()?,
        })
    }

    fn delete(&mut self) -> Result<Message, DecodeError> {
        let rel = self.u32()?;
        let k = match self.u8()? {
            b'K' => OldKind::Key,
            b'O' => OldKind::Full,
            _ => return Err(self.err("expected old tuple")),
        };
        Ok(Message::Delete {
            rel,
            old: (k, self.tuple()?),
        })
    }

    fn truncate(&mut self) -> Result<Message, DecodeError> {
        let n = self.u32()?;
        let options = self.u8()?;
        let mut rels = Vec::with_capacity(n.min(1024) as usize);
        for _ in 0..n {
            rels.push(self.u32()?);
        }
        Ok(Message::Truncate {
            rels,
            cascade: options & 1 != 0,
            restart_identity: options & 2 != 0,
        })
    }

    fn logical_message(&mut self) -> Result<Message, DecodeError> {
        let flags = self.u8()?;
        let lsn = self.u64()?;
        let prefix = self.cstr()?;
        let len = self.u32()? as usize;
        Ok(Message::LogicalMessage {
            transactional: flags & 1 == 1,
            lsn,
            prefix,
            content: self.bytes(len)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(v: &mut Vec<u8>, s: &str) {
        v.extend_from_slice(s.as_bytes());
        v.push(0);
    }

    #[test]
    fn decodes_relation_and_update_with_key_and_toast() {
        let mut m = vec![b'R'];
        m.extend_from_slice(&16384u32.to_be_bytes());
        cstr(&mut m, "public");
        cstr(&mut m, "accounts");
        m.push(b'd');
        m.extend_from_slice(&2i16.to_be_bytes());
        m.push(1);
        cstr(&mut m, "id");
        m.extend_from_slice(&20u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        m.push(0);
        cstr(&mut m, "notes");
        m.extend_from_slice(&25u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        let Message::Relation(rel) = decode(Bytes::from(m)).unwrap() else {
            panic!("relation")
        };
        assert_eq!(
            (rel.schema.as_str(), rel.table.as_str()),
            ("public", "accounts")
        );
        assert!(rel.columns[0].key && !rel.columns[1].key);
        assert_eq!(rel.columns[1].type_oid, 25);

        let mut u = vec![b'U'];
        u.extend_from_slice(&16384u32.to_be_bytes());
        u.push(b'K');
        u.extend_from_slice(&2i16.to_be_bytes());
        u.push(b't');
        u.extend_from_slice(&1i32.to_be_bytes());
        u.push(b'7');
        u.push(b'n');
        u.push(b'N');
        u.extend_from_slice(&2i16.to_be_bytes());
        u.push(b't');
        u.extend_from_slice(&1i32.to_be_bytes());
        u.push(b'8');
        u.push(b'u');
        let Message::Update { rel, old, new } = decode(Bytes::from(u)).unwrap() else {
            panic!("update")
        };
        assert_eq!(rel, 16384);
        let (kind, old) = old.unwrap();
        assert_eq!(kind, OldKind::Key);
        assert!(matches!(&old.cells[0], Cell::Text(b) if &b[..] == b"7"));
        assert!(matches!(&new.cells[0], Cell::Text(b) if &b[..] == b"8"));
        assert!(matches!(new.cells[1], Cell::UnchangedToast));
    }

    #[test]
    fn truncated_message_is_an_error() {
        let err = decode(Bytes::from_static(b"I\0\0")).unwrap_err();
        assert_eq!(err.kind, "Insert");
    }

    #[test]
    fn decodes_truncate_options() {
        let mut t = vec![b'T'];
        t.extend_from_slice(&2u32.to_be_bytes());
        t.push(3);
        t.extend_from_slice(&1u32.to_be_bytes());
        t.extend_from_slice(&2u32.to_be_bytes());
        let Message::Truncate {
            rels,
            cascade,
            restart_identity,
        } = decode(Bytes::from(t)).unwrap()
        else {
            panic!("truncate")
        };
        assert_eq!(rels, vec![1, 2]);
        assert!(cascade && restart_identity);
    }
}
