//! SQL text for the billing database, shared by every part that builds
//! statements from names it was given (capture's setup and snapshots, the
//! billing writer, the processor's lookups): identifiers and literals quoted
//! so that any name or value is read as itself.

/// `"name"` with inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `"schema"."table"`.
pub fn quote_table(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_literals_and_tables_are_quoted() {
        assert_eq!(quote_ident("name"), "\"name\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(
            quote_table("public", "Bad\"Name"),
            "\"public\".\"Bad\"\"Name\""
        );
    }
}
