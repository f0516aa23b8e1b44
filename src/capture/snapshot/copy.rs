//! Rows of `COPY … TO STDOUT` (text format) as cells: the initial
//! snapshot's reader, split across the chunks the server sends.

use bytes::{Bytes, BytesMut};

use super::super::pgoutput::Cell;

/// Splits COPY text-format output into rows of cells, across chunk borders.
#[derive(Default)]
pub struct CopyRows {
    carry: BytesMut,
}

impl CopyRows {
    /// Feeds one chunk; calls `row` for every complete line.
    pub fn feed(&mut self, chunk: Bytes, cells: &mut Vec<Cell>, mut row: impl FnMut(&[Cell])) {
        let mut data = chunk;
        if !self.carry.is_empty() {
            self.carry.extend_from_slice(&data);
            data = self.carry.split().freeze();
        }
        let mut start = 0;
        while let Some(nl) = memchr(b'\n', &data[start..]) {
            let line = data.slice(start..start + nl);
            split_line(&line, cells);
            row(cells);
            start += nl + 1;
        }
        if start < data.len() {
            self.carry.extend_from_slice(&data[start..]);
        }
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

fn split_line(line: &Bytes, cells: &mut Vec<Cell>) {
    cells.clear();
    let mut start = 0;
    loop {
        let end = memchr(b'\t', &line[start..]).map_or(line.len(), |i| start + i);
        let field = &line[start..end];
        cells.push(if field == b"\\N" {
            Cell::Null
        } else if field.contains(&b'\\') {
            Cell::Text(Bytes::from(unescape(field)))
        } else {
            Cell::Text(line.slice(start..end))
        });
        if end >= line.len() {
            break;
        }
        start = end + 1;
    }
}

fn unescape(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] != b'\\' || i + 1 == f.len() {
            out.push(f[i]);
            i += 1;
            continue;
        }
        let c = f[i + 1];
        i += 2;
        match c {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut n = 1;
                while n < 3 && i < f.len() && (b'0'..=b'7').contains(&f[i]) {
                    v = v * 8 + u32::from(f[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u8;
                let mut n = 0;
                while n < 2 && i < f.len() && f[i].is_ascii_hexdigit() {
                    v = v * 16 + (f[i] as char).to_digit(16).unwrap_or(0) as u8;
                    i += 1;
                    n += 1;
                }
                out.push(v);
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_rows_split_across_chunks_and_unescape() {
        let mut p = CopyRows::default();
        let mut cells = Vec::new();
        let mut seen = Vec::new();
        let mut collect = |c: &[Cell]| {
            seen.push(
                c.iter()
                    .map(|x| match x {
                        Cell::Text(b) => String::from_utf8_lossy(b).into_owned(),
                        Cell::Null => "<null>".into(),
                        _ => "?".into(),
                    })
                    .collect::<Vec<_>>(),
            )
        };
        p.feed(
            Bytes::from_static(b"1\ta\\tb\t\\N\n2\tx"),
            &mut cells,
            &mut collect,
        );
        p.feed(Bytes::from_static(b"y\t\\\\\n"), &mut cells, &mut collect);
        assert_eq!(
            seen,
            vec![vec!["1", "a\tb", "<null>"], vec!["2", "xy", "\\"]]
        );
    }
}
