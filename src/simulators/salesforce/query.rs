//! SOQL: a parser for the subset connectors and SDK users send
//! (`SELECT f, … | COUNT() FROM obj [WHERE …] [ORDER BY f [ASC|DESC]
//! [NULLS FIRST|LAST], …] [LIMIT n] [OFFSET n]`, with `AND`, `OR`, `NOT`,
//! parentheses, `= != <> < <= > >=`, `IN`, `NOT IN`, `LIKE`, string,
//! number, boolean, `null`, date and datetime literals), its evaluation over
//! the store, and `/query`, `/queryAll` with `nextRecordsUrl` paging.
//!
//! ```text
//!  GET /query?q=… ──parse──► Query ──bind(schema)──► Cond ──scan+sort──► ids (cursor)
//!  GET /query/<locator>-<offset> ──────────────────────────────────────► next page
//! ```
//!
//! Text comparisons ignore case, as SOQL's do; `Id` and references compare
//! byte-wise, and datetimes compare as instants (stored normalized to UTC).

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Shared;
use super::errors::ApiError;
use super::schema::{FieldType, ObjectSchema};
use super::store::{Store, format_datetime, normalize_id};

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
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

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, String> {
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

// ---------------------------------------------------------------- parser

/// A literal value in a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Date(NaiveDate),
    DateTime(DateTime<Utc>),
}

/// A parsed `WHERE` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(String, &'static str, Literal),
    In(String, Vec<Literal>, bool),
    Like(String, String),
}

/// A parsed query.
#[derive(Debug, Clone)]
pub struct Query {
    /// Selected fields; empty for `COUNT()`.
    pub fields: Vec<String>,
    pub count: bool,
    pub object: String,
    pub filter: Option<Expr>,
    pub order: Vec<OrderKey>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct OrderKey {
    pub field: String,
    pub descending: bool,
    pub nulls_last: bool,
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        t
    }

    fn at(&self) -> String {
        match self.toks.get(self.pos) {
            Some((c, _)) => format!("column {}", c + 1),
            None => "end of query".to_string(),
        }
    }

    fn keyword(&mut self, kw: &str) -> bool {
        if let Some(Tok::Ident(s)) = self.peek()
            && s.eq_ignore_ascii_case(kw)
        {
            self.pos += 1;
            return true;
        }
        false
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), String> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(format!("expecting {kw} at {}", self.at()))
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Ident(s)) if !is_reserved(&s) => Ok(s),
            _ => {
                self.pos -= 1;
                Err(format!("expecting a field or object name at {}", self.at()))
            }
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let mut left = self.and_expr()?;
        while self.keyword("OR") {
            let right = self.and_expr()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, String> {
        let mut left = self.not_expr()?;
        while self.keyword("AND") {
            let right = self.not_expr()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not_expr(&mut self) -> Result<Expr, String> {
        if self.keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.not_expr()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.expr()?;
            if self.next() != Some(Tok::RParen) {
                self.pos -= 1;
                return Err(format!("expecting ')' at {}", self.at()));
            }
            return Ok(e);
        }
        let field = self.ident()?;
        if self.keyword("LIKE") {
            return match self.next() {
                Some(Tok::Str(p)) => Ok(Expr::Like(field, p)),
                _ => Err(format!("LIKE needs a string at {}", self.at())),
            };
        }
        let negated = self.keyword("NOT");
        if self.keyword("IN") {
            if self.next() != Some(Tok::LParen) {
                return Err(format!("expecting '(' after IN at {}", self.at()));
            }
            let mut values = vec![self.literal()?];
            loop {
                match self.next() {
                    Some(Tok::Comma) => values.push(self.literal()?),
                    Some(Tok::RParen) => break,
                    _ => return Err(format!("expecting ',' or ')' at {}", self.at())),
                }
            }
            return Ok(Expr::In(field, values, negated));
        }
        if negated {
            return Err(format!("expecting IN after NOT at {}", self.at()));
        }
        match self.next() {
            Some(Tok::Op(op)) => Ok(Expr::Cmp(field, op, self.literal()?)),
            _ => {
                self.pos -= 1;
                Err(format!("expecting an operator at {}", self.at()))
            }
        }
    }

    fn literal(&mut self) -> Result<Literal, String> {
        Ok(match self.next() {
            Some(Tok::Str(s)) => Literal::Str(s),
            Some(Tok::Num(n)) => Literal::Num(n),
            Some(Tok::Date(d)) => Literal::Date(d),
            Some(Tok::DateTime(t)) => Literal::DateTime(t),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("null") => Literal::Null,
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("false") => Literal::Bool(false),
            _ => {
                self.pos -= 1;
                return Err(format!("expecting a value at {}", self.at()));
            }
        })
    }
}

fn is_reserved(s: &str) -> bool {
    const RESERVED: &[&str] = &[
        "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "ORDER", "BY", "LIMIT", "OFFSET", "IN",
        "LIKE", "NULL", "TRUE", "FALSE", "ASC", "DESC", "NULLS",
    ];
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(s))
}

/// Parses a whole SOQL query.
pub fn parse(soql: &str) -> Result<Query, String> {
    let mut p = Parser {
        toks: lex(soql)?,
        pos: 0,
    };
    p.expect_keyword("SELECT")?;
    let mut fields = Vec::new();
    let mut count = false;
    if matches!(p.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("COUNT"))
        && p.toks.get(p.pos + 1).map(|(_, t)| t) == Some(&Tok::LParen)
    {
        p.pos += 2;
        if p.next() != Some(Tok::RParen) {
            return Err("only COUNT() is supported".into());
        }
        count = true;
    } else {
        fields.push(p.ident()?);
        while p.peek() == Some(&Tok::Comma) {
            p.pos += 1;
            fields.push(p.ident()?);
        }
    }
    p.expect_keyword("FROM")?;
    let object = p.ident()?;
    let filter = if p.keyword("WHERE") {
        Some(p.expr()?)
    } else {
        None
    };
    let mut order = Vec::new();
    if p.keyword("ORDER") {
        p.expect_keyword("BY")?;
        loop {
            let field = p.ident()?;
            let descending = if p.keyword("DESC") {
                true
            } else {
                p.keyword("ASC");
                false
            };
            let nulls_last = if p.keyword("NULLS") {
                if p.keyword("LAST") {
                    true
                } else {
                    p.expect_keyword("FIRST")?;
                    false
                }
            } else {
                descending
            };
            order.push(OrderKey {
                field,
                descending,
                nulls_last,
            });
            if p.peek() == Some(&Tok::Comma) {
                p.pos += 1;
            } else {
                break;
            }
        }
    }
    let mut limit = None;
    let mut offset = None;
    if p.keyword("LIMIT") {
        limit = Some(p.count()?);
    }
    if p.keyword("OFFSET") {
        offset = Some(p.count()?);
    }
    if p.pos < p.toks.len() {
        return Err(format!("unexpected token at {}", p.at()));
    }
    Ok(Query {
        fields,
        count,
        object,
        filter,
        order,
        limit,
        offset,
    })
}

impl Parser {
    fn count(&mut self) -> Result<usize, String> {
        match self.next() {
            Some(Tok::Num(n)) if n >= 0.0 && n.fract() == 0.0 => Ok(n as usize),
            _ => Err(format!("expecting a non-negative integer at {}", self.at())),
        }
    }
}

/// Parses a bare condition (validation rules use the `WHERE` syntax).
pub fn parse_condition(text: &str) -> Result<Expr, String> {
    let mut p = Parser {
        toks: lex(text)?,
        pos: 0,
    };
    let e = p.expr()?;
    if p.pos < p.toks.len() {
        return Err(format!("unexpected token at {}", p.at()));
    }
    Ok(e)
}

// ---------------------------------------------------------------- binding and evaluation

#[derive(Debug, Clone)]
pub enum Bound {
    Null,
    Bool(bool),
    Num(f64),
    /// Compared byte-wise (ids, normalized dates and datetimes).
    Exact(String),
    /// Compared ignoring case (lowercased).
    Fold(String),
}

/// A condition resolved against one sObject's schema.
#[derive(Debug, Clone)]
pub enum Cond {
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    Cmp {
        field: String,
        op: &'static str,
        value: Bound,
    },
    In {
        field: String,
        values: Vec<Bound>,
        negated: bool,
    },
    Like {
        field: String,
        pattern: Vec<char>,
    },
}

fn no_such_column(field: &str, object: &str) -> ApiError {
    ApiError::bad_request(
        "INVALID_FIELD",
        format!(
            "No such column '{field}' on entity '{object}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names."
        ),
    )
}

fn bind_literal(kind: FieldType, lit: &Literal, field: &str) -> Result<Bound, ApiError> {
    let mismatch = || {
        ApiError::bad_request(
            "INVALID_QUERY_FILTER_OPERATOR",
            format!(
                "value of filter criterion for field '{field}' must be of type {kind:?} and should not be enclosed in quotes"
            ),
        )
    };
    Ok(match (kind, lit) {
        (_, Literal::Null) => Bound::Null,
        (FieldType::Boolean, Literal::Bool(b)) => Bound::Bool(*b),
        (k, Literal::Num(n)) if k.is_numeric() => Bound::Num(*n),
        (FieldType::Datetime, Literal::DateTime(t)) => Bound::Exact(format_datetime(*t)),
        (FieldType::Datetime, Literal::Date(d)) => Bound::Exact(format_datetime(
            d.and_hms_opt(0, 0, 0).expect("midnight").and_utc(),
        )),
        (FieldType::Date, Literal::Date(d)) => Bound::Exact(d.format("%Y-%m-%d").to_string()),
        (FieldType::Id | FieldType::Reference, Literal::Str(s)) => {
            Bound::Exact(normalize_id(s).unwrap_or_else(|| s.clone()))
        }
        (
            FieldType::String
            | FieldType::Textarea
            | FieldType::Email
            | FieldType::Phone
            | FieldType::Url
            | FieldType::Picklist,
            Literal::Str(s),
        ) => Bound::Fold(s.to_lowercase()),
        _ => return Err(mismatch()),
    })
}

/// Resolves field names (case-insensitively) and literal types.
pub fn bind(expr: &Expr, schema: &ObjectSchema) -> Result<Cond, ApiError> {
    let field = |name: &str| {
        schema
            .field(name)
            .ok_or_else(|| no_such_column(name, &schema.name))
    };
    Ok(match expr {
        Expr::And(a, b) => Cond::And(Box::new(bind(a, schema)?), Box::new(bind(b, schema)?)),
        Expr::Or(a, b) => Cond::Or(Box::new(bind(a, schema)?), Box::new(bind(b, schema)?)),
        Expr::Not(a) => Cond::Not(Box::new(bind(a, schema)?)),
        Expr::Cmp(name, op, lit) => {
            let f = field(name)?;
            Cond::Cmp {
                field: f.name.clone(),
                op,
                value: bind_literal(f.kind, lit, &f.name)?,
            }
        }
        Expr::In(name, lits, negated) => {
            let f = field(name)?;
            Cond::In {
                field: f.name.clone(),
                values: lits
                    .iter()
                    .map(|l| bind_literal(f.kind, l, &f.name))
                    .collect::<Result<_, _>>()?,
                negated: *negated,
            }
        }
        Expr::Like(name, pattern) => {
            let f = field(name)?;
            Cond::Like {
                field: f.name.clone(),
                pattern: pattern.to_lowercase().chars().collect(),
            }
        }
    })
}

fn fold_cmp(a: &str, b: &str) -> Ordering {
    a.chars()
        .flat_map(char::to_lowercase)
        .cmp(b.chars().flat_map(char::to_lowercase))
}

fn compare(v: &Value, b: &Bound) -> Option<Ordering> {
    match (v, b) {
        (Value::Bool(x), Bound::Bool(y)) => Some(x.cmp(y)),
        (Value::Number(x), Bound::Num(y)) => x.as_f64()?.partial_cmp(y),
        (Value::String(x), Bound::Exact(y)) => Some(x.as_str().cmp(y.as_str())),
        (Value::String(x), Bound::Fold(y)) => Some(fold_cmp(x, y)),
        _ => None,
    }
}

fn like(text: &[char], pattern: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some(('%', rest)) => (0..=text.len()).any(|i| like(&text[i..], rest)),
        Some(('_', rest)) => !text.is_empty() && like(&text[1..], rest),
        Some((c, rest)) => text.first() == Some(c) && like(&text[1..], rest),
    }
}

impl Cond {
    /// Whether `rec` satisfies the condition.
    pub fn matches(&self, rec: &Map<String, Value>) -> bool {
        match self {
            Cond::And(a, b) => a.matches(rec) && b.matches(rec),
            Cond::Or(a, b) => a.matches(rec) || b.matches(rec),
            Cond::Not(a) => !a.matches(rec),
            Cond::Cmp { field, op, value } => {
                let v = rec.get(field).unwrap_or(&Value::Null);
                let is_null = v.is_null() || v.as_str() == Some("");
                match (value, *op) {
                    (Bound::Null, "=") => is_null,
                    (Bound::Null, "!=") => !is_null,
                    (Bound::Null, _) => false,
                    (_, "!=") if is_null => true,
                    (_, _) if is_null => false,
                    (b, op) => match compare(v, b) {
                        Some(o) => match op {
                            "=" => o == Ordering::Equal,
                            "!=" => o != Ordering::Equal,
                            "<" => o == Ordering::Less,
                            "<=" => o != Ordering::Greater,
                            ">" => o == Ordering::Greater,
                            ">=" => o != Ordering::Less,
                            _ => false,
                        },
                        None => op == "!=",
                    },
                }
            }
            Cond::In {
                field,
                values,
                negated,
            } => {
                let v = rec.get(field).unwrap_or(&Value::Null);
                let found = values.iter().any(|b| match b {
                    Bound::Null => v.is_null(),
                    b => compare(v, b) == Some(Ordering::Equal),
                });
                found != *negated
            }
            Cond::Like { field, pattern } => match rec.get(field) {
                Some(Value::String(s)) => {
                    let text: Vec<char> = s.to_lowercase().chars().collect();
                    like(&text, pattern)
                }
                _ => false,
            },
        }
    }
}

fn sort_cmp(a: &Value, b: &Value, kind: FieldType) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::String(x), Value::String(y)) => match kind {
            FieldType::Id | FieldType::Reference | FieldType::Date | FieldType::Datetime => {
                x.cmp(y)
            }
            _ => fold_cmp(x, y),
        },
        _ => Ordering::Equal,
    }
}

/// Ids of the records `q` selects, in order, after `OFFSET` and `LIMIT`.
pub fn select_ids(
    store: &Store,
    q: &Query,
    include_deleted: bool,
) -> Result<Vec<String>, ApiError> {
    let schema = store.schema(&q.object).ok_or_else(|| {
        ApiError::bad_request(
            "INVALID_TYPE",
            format!(
                "sObject type '{}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name.",
                q.object
            ),
        )
    })?;
    for f in &q.fields {
        if schema.field(f).is_none() {
            return Err(no_such_column(f, &schema.name));
        }
    }
    let cond = q.filter.as_ref().map(|e| bind(e, schema)).transpose()?;
    let mut keys = Vec::new();
    for k in &q.order {
        let f = schema
            .field(&k.field)
            .ok_or_else(|| no_such_column(&k.field, &schema.name))?;
        keys.push((f.name.clone(), f.kind, k.descending, k.nulls_last));
    }
    let mut rows: Vec<&Map<String, Value>> = store
        .scan(&q.object)
        .filter(|r| include_deleted || r.get("IsDeleted") != Some(&Value::Bool(true)))
        .filter(|r| cond.as_ref().is_none_or(|c| c.matches(r)))
        .collect();
    let id_of = |r: &Map<String, Value>| {
        r.get("Id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    rows.sort_by(|a, b| {
        for (field, kind, desc, nulls_last) in &keys {
            let va = a.get(field).unwrap_or(&Value::Null);
            let vb = b.get(field).unwrap_or(&Value::Null);
            let o = match (va.is_null(), vb.is_null()) {
                (true, true) => Ordering::Equal,
                (true, false) => {
                    if *nulls_last {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    }
                }
                (false, true) => {
                    if *nulls_last {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    }
                }
                (false, false) => {
                    let o = sort_cmp(va, vb, *kind);
                    if *desc { o.reverse() } else { o }
                }
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        id_of(a).cmp(&id_of(b))
    });
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(usize::MAX);
    Ok(rows
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(id_of)
        .collect())
}

// ---------------------------------------------------------------- cursors and handlers

/// Open query cursors (`nextRecordsUrl` locators), oldest evicted first.
#[derive(Default)]
pub struct Cursors {
    inner: Mutex<CursorsInner>,
}

#[derive(Default)]
struct CursorsInner {
    next: u64,
    open: HashMap<String, Arc<Cursor>>,
    order: VecDeque<String>,
}

struct Cursor {
    object: String,
    fields: Vec<String>,
    ids: Vec<String>,
}

/// Open cursors kept at most; older ones answer `INVALID_QUERY_LOCATOR`.
const MAX_CURSORS: usize = 64;

impl Cursors {
    fn open(&self, c: Arc<Cursor>) -> String {
        let mut inner = self.inner.lock().expect("cursors lock");
        inner.next += 1;
        let locator = super::store::make_id("01g", inner.next);
        inner.open.insert(locator.clone(), c);
        inner.order.push_back(locator.clone());
        while inner.order.len() > MAX_CURSORS {
            if let Some(old) = inner.order.pop_front() {
                inner.open.remove(&old);
            }
        }
        locator
    }

    fn get(&self, locator: &str) -> Option<Arc<Cursor>> {
        self.inner
            .lock()
            .expect("cursors lock")
            .open
            .get(locator)
            .cloned()
    }

    fn close(&self, locator: &str) {
        let mut inner = self.inner.lock().expect("cursors lock");
        inner.open.remove(locator);
        inner.order.retain(|l| l != locator);
    }
}

#[derive(Deserialize)]
pub struct QueryArgs {
    q: Option<String>,
}

fn batch_size(headers: &HeaderMap, default: usize) -> usize {
    headers
        .get("sforce-query-options")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| {
            s.split(',')
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("batchSize"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        })
        .map(|n| n.clamp(200, 2000))
        .unwrap_or(default)
}

fn page(
    sim: &Shared,
    version: &str,
    endpoint: &str,
    locator: &str,
    cursor: &Cursor,
    offset: usize,
    size: usize,
) -> Value {
    let end = (offset + size).min(cursor.ids.len());
    let store = sim.store.lock().expect("store lock");
    let schema = store.schema(&cursor.object).expect("cursor object").clone();
    let records: Vec<Value> = cursor.ids[offset..end]
        .iter()
        .filter_map(|id| {
            store
                .raw(&cursor.object, id)
                .map(|r| Store::render(&schema, r, Some(&cursor.fields), version))
        })
        .collect();
    drop(store);
    let done = end >= cursor.ids.len();
    let mut body = json!({
        "totalSize": cursor.ids.len(),
        "done": done,
        "records": records,
    });
    if done {
        sim.cursors.close(locator);
    } else {
        body["nextRecordsUrl"] = json!(format!(
            "/services/data/{version}/{endpoint}/{locator}-{end}"
        ));
    }
    body
}

fn run_query(
    sim: &Shared,
    version: &str,
    headers: &HeaderMap,
    soql: &str,
    all: bool,
) -> Result<Value, ApiError> {
    let q = parse(soql).map_err(|e| ApiError::bad_request("MALFORMED_QUERY", e))?;
    let ids = {
        let store = sim.store.lock().expect("store lock");
        select_ids(&store, &q, all)?
    };
    if q.count {
        return Ok(json!({ "totalSize": ids.len(), "done": true, "records": [] }));
    }
    let object = sim
        .store
        .lock()
        .expect("store lock")
        .schema(&q.object)
        .map(|s| s.name.clone())
        .unwrap_or(q.object.clone());
    let cursor = Cursor {
        object,
        fields: q.fields.clone(),
        ids,
    };
    let size = batch_size(headers, sim.config.query_page_size);
    let endpoint = if all { "queryAll" } else { "query" };
    if cursor.ids.len() <= size {
        return Ok(page(sim, version, endpoint, "", &cursor, 0, size));
    }
    let cursor = Arc::new(cursor);
    let locator = sim.cursors.open(cursor.clone());
    Ok(page(sim, version, endpoint, &locator, &cursor, 0, size))
}

fn more(
    sim: &Shared,
    version: &str,
    headers: &HeaderMap,
    locator: &str,
    endpoint: &str,
) -> Result<Value, ApiError> {
    let invalid = || ApiError::bad_request("INVALID_QUERY_LOCATOR", "invalid query locator");
    let (loc, offset) = locator.rsplit_once('-').ok_or_else(invalid)?;
    let offset: usize = offset.parse().map_err(|_| invalid())?;
    let cursor = sim.cursors.get(loc).ok_or_else(invalid)?;
    if offset > cursor.ids.len() {
        return Err(invalid());
    }
    let size = batch_size(headers, sim.config.query_page_size);
    Ok(page(sim, version, endpoint, loc, &cursor, offset, size))
}

fn respond(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /services/data/vXX.X/query?q=…`
pub async fn query(
    State(sim): State<Shared>,
    Path(version): Path<String>,
    headers: HeaderMap,
    QueryParams(args): QueryParams<QueryArgs>,
) -> Response {
    respond(query_of(&sim, &version, &headers, args, false))
}

/// `GET /services/data/vXX.X/queryAll?q=…` (deleted records included).
pub async fn query_all(
    State(sim): State<Shared>,
    Path(version): Path<String>,
    headers: HeaderMap,
    QueryParams(args): QueryParams<QueryArgs>,
) -> Response {
    respond(query_of(&sim, &version, &headers, args, true))
}

/// Runs the `q` of a query call; deleted records only with `all`.
fn query_of(
    sim: &Shared,
    version: &str,
    headers: &HeaderMap,
    args: QueryArgs,
    all: bool,
) -> Result<Value, ApiError> {
    match args.q {
        Some(q) => run_query(sim, version, headers, &q, all),
        None => Err(ApiError::bad_request(
            "MALFORMED_QUERY",
            "A query string must be provided as the value of the 'q' parameter",
        )),
    }
}

/// `GET /services/data/vXX.X/query/<locator>-<offset>`
pub async fn query_more(
    State(sim): State<Shared>,
    Path((version, locator)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    respond(more(&sim, &version, &headers, &locator, "query"))
}

/// `GET /services/data/vXX.X/queryAll/<locator>-<offset>`
pub async fn query_all_more(
    State(sim): State<Shared>,
    Path((version, locator)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    respond(more(&sim, &version, &headers, &locator, "queryAll"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_watermark_query() {
        let q = parse(
            "SELECT Id, Name FROM Account WHERE SystemModstamp > 2024-01-01T00:00:00.000Z OR (SystemModstamp = 2024-01-01T00:00:00Z AND Id > '001Dn000000000001AAA') ORDER BY SystemModstamp, Id LIMIT 10",
        )
        .unwrap();
        assert_eq!(q.fields, vec!["Id", "Name"]);
        assert_eq!(q.object, "Account");
        assert_eq!(q.order.len(), 2);
        assert_eq!(q.limit, Some(10));
        assert!(matches!(q.filter, Some(Expr::Or(_, _))));
    }

    #[test]
    fn rejects_bad_syntax() {
        assert!(parse("SELECT FROM Account").is_err());
        assert!(parse("SELECT Id FROM Account WHERE").is_err());
        assert!(parse("SELECT Id FROM Account WHERE Name = 'x").is_err());
        assert!(parse("SELECT Id FROM Account LIMIT x").is_err());
    }

    #[test]
    fn like_and_in() {
        let q = parse("SELECT Id FROM Contact WHERE Email LIKE '%@EXAMPLE.com' AND LastName NOT IN ('a', 'b')").unwrap();
        let schema = &super::super::schema::build(&[]).unwrap()[1];
        let c = bind(q.filter.as_ref().unwrap(), schema).unwrap();
        let mut rec = Map::new();
        rec.insert("Email".into(), json!("x@example.com"));
        rec.insert("LastName".into(), json!("c"));
        assert!(c.matches(&rec));
        rec.insert("LastName".into(), json!("A"));
        assert!(!c.matches(&rec));
    }
}
