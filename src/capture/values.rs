//! Column values: PostgreSQL text output (from pgoutput tuples or snapshot
//! `COPY`) written as typed JSON straight into an event buffer.
//!
//! ```text
//!  Cell::Text(b"2024-05-01 10:00:00+00") ─► Kind::TimestampTz ─► "2024-05-01T10:00:00Z"
//!  Cell::Text(b"{1,NULL,3}")             ─► Kind::Array(Integer) ─► [1,null,3]
//! ```
//!
//! The capture sessions pin `DateStyle=ISO`, `TimeZone=UTC`,
//! `IntervalStyle=iso_8601` and `bytea_output=hex` ([`SESSION_SETTINGS`]), so the
//! text forms parsed here are the only ones that occur.

use base64::Engine;

use crate::config::NumericEncoding;

/// Session settings every connection that produces column text uses.
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "iso_8601"),
    ("bytea_output", "hex"),
    ("extra_float_digits", "1"),
];

/// How a column's text becomes JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Bool,
    /// int2/int4/int8/oid: a JSON number, verbatim.
    Integer,
    /// float4/float8: a JSON number; NaN and ±Infinity as strings.
    Float,
    /// numeric: exact string or number per configuration.
    Numeric,
    /// Anything else textual (text, varchar, uuid, enums, …): a JSON string.
    Text,
    Date,
    Time,
    /// timestamp without time zone: `YYYY-MM-DDTHH:MM:SS[.ffffff]`.
    Timestamp,
    /// timestamptz: `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` (UTC).
    TimestampTz,
    /// ISO-8601 duration string.
    Interval,
    /// json/jsonb: embedded as JSON.
    Json,
    /// bytea: base64 string.
    Bytea,
    /// An array of `Kind`, with its element delimiter.
    Array(Box<Kind>, u8),
}

/// The kind of a built-in type, `None` for types that need a catalog lookup
/// (enums, domains, user arrays, composites).
pub fn builtin_kind(oid: u32) -> Option<Kind> {
    Some(match oid {
        16 => Kind::Bool,
        20 | 21 | 23 | 26 => Kind::Integer,
        700 | 701 => Kind::Float,
        1700 => Kind::Numeric,
        17 => Kind::Bytea,
        114 | 3802 => Kind::Json,
        1082 => Kind::Date,
        1083 | 1266 => Kind::Time,
        1114 => Kind::Timestamp,
        1184 => Kind::TimestampTz,
        1186 => Kind::Interval,
        18 | 19 | 25 | 1042 | 1043 | 2950 | 142 | 869 | 650 | 829 | 790 | 1560 | 1562 => Kind::Text,
        1000 => arr(Kind::Bool),
        1005 | 1007 | 1016 | 1028 => arr(Kind::Integer),
        1021 | 1022 => arr(Kind::Float),
        1231 => arr(Kind::Numeric),
        1001 => arr(Kind::Bytea),
        199 | 3807 => arr(Kind::Json),
        1182 => arr(Kind::Date),
        1183 | 1270 => arr(Kind::Time),
        1115 => arr(Kind::Timestamp),
        1185 => arr(Kind::TimestampTz),
        1187 => arr(Kind::Interval),
        1002 | 1003 | 1009 | 1014 | 1015 | 2951 | 143 | 1041 | 651 | 1040 | 791 => arr(Kind::Text),
        _ => return None,
    })
}

fn arr(k: Kind) -> Kind {
    Kind::Array(Box::new(k), b',')
}

/// The kind of a catalog type from its `pg_type` row: `typtype`,
/// `typcategory`, the element/base kinds already resolved, and the delimiter.
pub fn catalog_kind(
    typtype: u8,
    category: u8,
    element: Option<Kind>,
    base: Option<Kind>,
    delim: u8,
) -> Kind {
    match (typtype, category) {
        (b'd', _) => base.unwrap_or(Kind::Text),
        (_, b'A') => Kind::Array(Box::new(element.unwrap_or(Kind::Text)), delim),
        _ => Kind::Text,
    }
}

/// Writes `s` as a JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    match std::str::from_utf8(s) {
        Ok(s) => write_json_str(out, s),
        Err(_) => write_json_str(out, &String::from_utf8_lossy(s)),
    }
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn is_special_float(s: &[u8]) -> bool {
    matches!(s, b"NaN" | b"Infinity" | b"-Infinity")
}

/// Writes one non-null value of `kind` given its PostgreSQL text output.
pub fn write_value(out: &mut Vec<u8>, kind: &Kind, text: &[u8], numeric: NumericEncoding) {
    match kind {
        Kind::Bool => out.extend_from_slice(if text == b"t" { b"true" } else { b"false" }),
        Kind::Integer => out.extend_from_slice(text),
        Kind::Float => {
            if is_special_float(text) {
                write_str(out, text)
            } else {
                out.extend_from_slice(text)
            }
        }
        Kind::Numeric => match numeric {
            NumericEncoding::Number if !is_special_float(text) => out.extend_from_slice(text),
            _ => write_str(out, text),
        },
        Kind::Text | Kind::Date | Kind::Time | Kind::Interval => write_str(out, text),
        Kind::Timestamp => write_timestamp(out, text, false),
        Kind::TimestampTz => write_timestamp(out, text, true),
        Kind::Json => {
            if text.is_empty() {
                out.extend_from_slice(b"null")
            } else {
                out.extend_from_slice(text)
            }
        }
        Kind::Bytea => write_bytea(out, text),
        Kind::Array(elem, delim) => {
            let mut p = ArrayParser {
                s: text,
                pos: 0,
                delim: *delim,
                scratch: Vec::new(),
            };
            // Optional dimension decoration: `[1:2]={...}`.
            if p.s.first() == Some(&b'[')
                && let Some(eq) = p.s.iter().position(|&b| b == b'=')
            {
                p.pos = eq + 1;
            }
            if p.write(out, elem, numeric).is_none() {
                // Not an array literal we understand: keep the text.
                write_str(out, text);
            }
        }
    }
}

fn write_timestamp(out: &mut Vec<u8>, text: &[u8], utc: bool) {
    // `YYYY-MM-DD HH:MM:SS[.f]` (+ `+00` with TimeZone=UTC); anything else
    // (infinity, BC dates) is kept as text.
    let plain = text.len() >= 19 && text[10] == b' ' && text[..4].iter().all(u8::is_ascii_digit);
    if !plain {
        return write_str(out, text);
    }
    out.push(b'"');
    out.extend_from_slice(&text[..10]);
    out.push(b'T');
    if utc {
        let body = text.strip_suffix(b"+00").unwrap_or(text);
        if body.len() == text.len() {
            // An offset other than +00 would mean the session TimeZone was not UTC.
            out.extend_from_slice(&text[11..]);
        } else {
            out.extend_from_slice(&body[11..]);
            out.push(b'Z');
        }
    } else {
        out.extend_from_slice(&text[11..]);
    }
    out.push(b'"');
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn write_bytea(out: &mut Vec<u8>, text: &[u8]) {
    let Some(hex) = text.strip_prefix(b"\\x") else {
        return write_str(out, text);
    };
    let mut raw = Vec::with_capacity(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        match (hex_val(pair[0]), hex_val(pair[1])) {
            (Some(h), Some(l)) => raw.push(h << 4 | l),
            _ => return write_str(out, text),
        }
    }
    out.push(b'"');
    let start = out.len();
    out.resize(start + base64::encoded_len(raw.len(), true).unwrap_or(0), 0);
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(&raw, &mut out[start..])
        .expect("buffer sized by encoded_len");
    out.truncate(start + n);
    out.push(b'"');
}

struct ArrayParser<'a> {
    s: &'a [u8],
    pos: usize,
    delim: u8,
    scratch: Vec<u8>,
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Writes the array starting at `pos` (a `{`); `None` on malformed input.
    fn write(&mut self, out: &mut Vec<u8>, elem: &Kind, numeric: NumericEncoding) -> Option<()> {
        self.skip_ws();
        if self.peek()? != b'{' {
            return None;
        }
        self.pos += 1;
        out.push(b'[');
        self.skip_ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            out.push(b']');
            return Some(());
        }
        let mut first = true;
        loop {
            if !first {
                out.push(b',');
            }
            first = false;
            self.skip_ws();
            match self.peek()? {
                b'{' => self.write(out, elem, numeric)?,
                b'"' => {
                    self.pos += 1;
                    self.scratch.clear();
                    loop {
                        let c = self.peek()?;
                        self.pos += 1;
                        match c {
                            b'\\' => {
                                let n = self.peek()?;
                                self.scratch.push(n);
                                self.pos += 1;
                            }
                            b'"' => break,
                            c => self.scratch.push(c),
                        }
                    }
                    let v = std::mem::take(&mut self.scratch);
                    write_value(out, elem, &v, numeric);
                    self.scratch = v;
                }
                _ => {
                    let start = self.pos;
                    while let Some(c) = self.peek() {
                        if c == self.delim || c == b'}' {
                            break;
                        }
                        self.pos += 1;
                    }
                    let raw = self.s[start..self.pos].trim_ascii_end();
                    if raw.eq_ignore_ascii_case(b"NULL") {
                        out.extend_from_slice(b"null");
                    } else {
                        write_value(out, elem, raw, numeric);
                    }
                }
            }
            self.skip_ws();
            match self.peek()? {
                c if c == self.delim => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(kind: &Kind, text: &str) -> String {
        let mut out = Vec::new();
        write_value(&mut out, kind, text.as_bytes(), NumericEncoding::String);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn scalars() {
        assert_eq!(json(&Kind::Bool, "t"), "true");
        assert_eq!(json(&Kind::Integer, "-42"), "-42");
        assert_eq!(json(&Kind::Float, "NaN"), "\"NaN\"");
        assert_eq!(json(&Kind::Numeric, "12.50"), "\"12.50\"");
        assert_eq!(json(&Kind::Text, "a\"b\n\u{1}"), "\"a\\\"b\\n\\u0001\"");
        assert_eq!(
            json(&Kind::TimestampTz, "2024-05-01 10:00:00.5+00"),
            "\"2024-05-01T10:00:00.5Z\""
        );
        assert_eq!(
            json(&Kind::Timestamp, "2024-05-01 10:00:00"),
            "\"2024-05-01T10:00:00\""
        );
        assert_eq!(json(&Kind::TimestampTz, "infinity"), "\"infinity\"");
        assert_eq!(json(&Kind::Bytea, "\\x00ff10"), "\"AP8Q\"");
        assert_eq!(json(&Kind::Json, "{\"a\": [1]}"), "{\"a\": [1]}");
        let mut out = Vec::new();
        write_value(&mut out, &Kind::Numeric, b"12.50", NumericEncoding::Number);
        assert_eq!(out, b"12.50");
    }

    #[test]
    fn arrays() {
        let ints = Kind::Array(Box::new(Kind::Integer), b',');
        assert_eq!(json(&ints, "{1,NULL,3}"), "[1,null,3]");
        assert_eq!(json(&ints, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(json(&ints, "{}"), "[]");
        let texts = Kind::Array(Box::new(Kind::Text), b',');
        assert_eq!(
            json(&texts, r#"{"a b","q\"x",NULL,"NULL",plain}"#),
            r#"["a b","q\"x",null,"NULL","plain"]"#
        );
        let bytes = Kind::Array(Box::new(Kind::Bytea), b',');
        assert_eq!(json(&bytes, r#"{"\\x0102"}"#), r#"["AQI="]"#);
        assert_eq!(json(&ints, "[0:1]={7,8}"), "[7,8]");
    }
}
