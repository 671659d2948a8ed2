//! SQL text with its values written in as literals, for the batched writer.
//!
//! A bound parameter needs a prepared statement, and a prepared statement travels alone: one
//! round trip each. The batched writer instead sends all the statements of a step of its
//! batch as one multi-statement text (its `BEGIN` with its reads, its writes with their
//! `COMMIT`), so it writes values into the text. [`Sql`] does that safely for both
//! databases: integers are formatted, and a string is quoted as is only when it holds none
//! of the characters either database treats specially inside quotes (`'`, `\` and NUL);
//! any other string is written as hexadecimal bytes read as UTF-8 text (MySQL
//! `_utf8mb4 X'..'`, SQLite `CAST(X'..' AS TEXT)`), which no content can escape from.
//!
//! [`Script`] gathers statements and cuts them into round trips of bounded size.

use std::fmt::Write as _;

use super::Dialect;

/// Largest SQL text sent in one round trip, bytes, unless one statement alone is larger
/// (MySQL's `max_allowed_packet` defaults to 16 MiB on MariaDB, 64 MiB on MySQL 8).
const TRIP_BYTES: usize = 4 * 1024 * 1024;

/// One SQL statement being written.
#[derive(Debug)]
pub(crate) struct Sql {
    dialect: Dialect,
    text: String,
}

impl Sql {
    /// A statement starting with `sql`.
    pub(crate) fn new(dialect: Dialect, sql: &str) -> Self {
        let mut text = String::with_capacity(256);
        text.push_str(sql);
        Self { dialect, text }
    }

    /// Appends SQL as it is.
    pub(crate) fn push(&mut self, sql: &str) -> &mut Self {
        self.text.push_str(sql);
        self
    }

    /// Appends a string value.
    pub(crate) fn text(&mut self, value: &str) -> &mut Self {
        if !value.contains(['\'', '\\', '\0']) {
            self.text.reserve(value.len() + 2);
            self.text.push('\'');
            self.text.push_str(value);
            self.text.push('\'');
            return self;
        }
        let (open, close) = match self.dialect {
            Dialect::MySql => ("_utf8mb4 X'", "'"),
            Dialect::Sqlite => ("CAST(X'", "' AS TEXT)"),
        };
        self.text
            .reserve(open.len() + 2 * value.len() + close.len());
        self.text.push_str(open);
        for b in value.bytes() {
            let _ = write!(self.text, "{b:02X}");
        }
        self.text.push_str(close);
        self
    }

    /// Appends an integer value.
    pub(crate) fn int(&mut self, value: i64) -> &mut Self {
        let _ = write!(self.text, "{value}");
        self
    }

    /// Appends an integer value or NULL.
    pub(crate) fn opt_int(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(v) => self.int(v),
            None => self.push("NULL"),
        }
    }

    /// Appends `(a, b, c)`: the strings of `values`.
    pub(crate) fn text_list<'a>(&mut self, values: impl IntoIterator<Item = &'a str>) -> &mut Self {
        self.list(values, |s, v| {
            s.text(v);
        })
    }

    /// Appends `(a, b, c)`: the integers of `values`.
    pub(crate) fn int_list(&mut self, values: impl IntoIterator<Item = i64>) -> &mut Self {
        self.list(values, |s, v| {
            s.int(v);
        })
    }

    /// Appends `(..), (..)`-style lists: `item` writes each value, separated by commas, all
    /// in parentheses.
    pub(crate) fn list<T>(
        &mut self,
        values: impl IntoIterator<Item = T>,
        mut item: impl FnMut(&mut Self, T),
    ) -> &mut Self {
        self.text.push('(');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            item(self, v);
        }
        self.text.push(')');
        self
    }

    /// The text so far, bytes.
    pub(crate) fn len(&self) -> usize {
        self.text.len()
    }

    /// The statement's text.
    pub(crate) fn finish(self) -> String {
        self.text
    }
}

/// Statements to run in order, in as few round trips as their size allows.
#[derive(Debug, Default)]
pub(crate) struct Script {
    statements: Vec<String>,
}

impl Script {
    /// Adds a statement.
    pub(crate) fn add(&mut self, statement: Sql) {
        self.statements.push(statement.finish());
    }

    /// Adds a statement given as text.
    pub(crate) fn add_text(&mut self, statement: &str) {
        self.statements.push(statement.to_owned());
    }

    /// How many statements there are.
    pub(crate) fn len(&self) -> usize {
        self.statements.len()
    }

    /// The statements cut into round trips: each the text of consecutive statements joined
    /// by `;`, with how many statements it holds.
    pub(crate) fn trips(&self) -> Vec<(String, usize)> {
        let mut trips = Vec::new();
        let mut text = String::new();
        let mut count = 0;
        for s in &self.statements {
            if count > 0 && text.len() + s.len() + 2 > TRIP_BYTES {
                trips.push((std::mem::take(&mut text), count));
                count = 0;
            }
            if count > 0 {
                text.push_str(";\n");
            }
            text.push_str(s);
            count += 1;
        }
        if count > 0 {
            trips.push((text, count));
        }
        trips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(dialect: Dialect, value: &str) -> String {
        let mut s = Sql::new(dialect, "");
        s.text(value);
        s.finish()
    }

    #[test]
    fn plain_strings_are_quoted_as_they_are() {
        assert_eq!(text(Dialect::MySql, "gid-1 é"), "'gid-1 é'");
        assert_eq!(text(Dialect::Sqlite, ""), "''");
    }

    #[test]
    fn strings_with_quotes_backslashes_or_nul_are_written_as_hex_text() {
        assert_eq!(text(Dialect::MySql, "a'b"), "_utf8mb4 X'612762'");
        assert_eq!(text(Dialect::Sqlite, "a\\"), "CAST(X'615C' AS TEXT)");
        assert_eq!(text(Dialect::MySql, "\0"), "_utf8mb4 X'00'");
    }

    #[test]
    fn lists_and_integers() {
        let mut s = Sql::new(Dialect::MySql, "SELECT 1 WHERE x IN ");
        s.text_list(["a", "b"]).push(" AND y IN ").int_list([1, -2]);
        s.push(" AND z = ").opt_int(None);
        assert_eq!(
            s.finish(),
            "SELECT 1 WHERE x IN ('a', 'b') AND y IN (1, -2) AND z = NULL"
        );
    }

    #[test]
    fn large_scripts_are_cut_into_several_trips() {
        let mut script = Script::default();
        let big = "x".repeat(TRIP_BYTES / 2);
        for _ in 0..3 {
            script.add_text(&big);
        }
        script.add_text("COMMIT");
        let trips = script.trips();
        assert_eq!(trips.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [1, 1, 2]);
        assert!(trips[2].0.ends_with(";\nCOMMIT"));
    }
}
