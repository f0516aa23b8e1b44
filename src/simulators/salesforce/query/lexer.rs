//! The SOQL lexer: query text into identifiers, quoted strings, numbers,
//! date and datetime literals, operators and punctuation, each with its
//! column for the parser's error messages.

use chrono::{DateTime, NaiveDate, Utc};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Date(NaiveDate),
    DateTime(DateTime<Utc>),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

pub(super) fn lex(src: &str) -> Result<Vec<(usize, Tok)>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        match c {
            '(' => {
                out.push((start, Tok::LParen));
                i += 1;
            }
            ')' => {
                out.push((start, Tok::RParen));
                i += 1;
            }
            ',' => {
                out.push((start, Tok::Comma));
                i += 1;
            }
            '=' => {
                out.push((start, Tok::Op("=")));
                i += 1;
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push((start, Tok::Op("!=")));
                i += 2;
            }
            '<' => {
                let (op, n) = match chars.get(i + 1) {
                    Some('=') => ("<=", 2),
                    Some('>') => ("!=", 2),
                    _ => ("<", 1),
                };
                out.push((start, Tok::Op(op)));
                i += n;
            }
            '>' => {
                let (op, n) = match chars.get(i + 1) {
                    Some('=') => (">=", 2),
                    _ => (">", 1),
                };
                out.push((start, Tok::Op(op)));
                i += n;
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unterminated string at column {}", start + 1)),
                        Some('\\') => {
                            let e = chars.get(i + 1).ok_or("unterminated escape")?;
                            s.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                other => *other,
                            });
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push((start, Tok::Str(s)));
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_digit()
                        || matches!(chars[i], '.' | ':' | '-' | '+' | 'T' | 'Z'))
                {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                out.push((
                    start,
                    literal(&text).ok_or_else(|| {
                        format!("invalid literal {text:?} at column {}", start + 1)
                    })?,
                ));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
                {
                    i += 1;
                }
                out.push((start, Tok::Ident(chars[start..i].iter().collect())));
            }
            other => {
                return Err(format!(
                    "unexpected character {other:?} at column {}",
                    start + 1
                ));
            }
        }
    }
    Ok(out)
}

fn literal(text: &str) -> Option<Tok> {
    if text.contains('T') {
        let t = DateTime::parse_from_rfc3339(text).ok()?;
        return Some(Tok::DateTime(t.with_timezone(&Utc)));
    }
    if text.len() == 10 && text.as_bytes()[4] == b'-' {
        return NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .map(Tok::Date);
    }
    text.parse::<f64>().ok().map(Tok::Num)
}
