//! The SOQL parser: tokens from the lexer into a [`Query`] (`SELECT`
//! fields or `COUNT()`, `FROM`, `WHERE`, `ORDER BY`, `LIMIT`, `OFFSET`),
//! and bare `WHERE` expressions for the store's validation rules. Errors
//! are the `MALFORMED_QUERY` messages the query endpoints return.

use chrono::{DateTime, NaiveDate, Utc};

use super::lexer::{Tok, lex};

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
}
