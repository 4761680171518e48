//! What the three SQL engines share: parameters, read cells, and the dialect that turns one
//! statement into each engine's text (placeholders, upserts, times, column types).
//!
//! Table code builds statements with [`Stmt`]: `push` for SQL text, `arg` for a value. The
//! dialect decides how a value is written (`?` for SQLite and MySQL, `$n` for PostgreSQL), so
//! no engine's syntax leaks into another's. Rows come back as [`Cell`]s, one per column,
//! whatever the engine typed the column as; the table code reads them by name and names the
//! column when a value does not fit ([`Row`]).

use std::sync::Arc;

/// The SQL engine a statement is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

/// A value bound to a statement. NULLs carry their type (PostgreSQL refuses a text NULL in an
/// integer column).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Param<'a> {
    Int(Option<i64>),
    Real(f64),
    Text(Option<&'a str>),
}

impl<'a> From<i64> for Param<'a> {
    fn from(v: i64) -> Self {
        Param::Int(Some(v))
    }
}

impl<'a> From<Option<i64>> for Param<'a> {
    fn from(v: Option<i64>) -> Self {
        Param::Int(v)
    }
}

impl<'a> From<f64> for Param<'a> {
    fn from(v: f64) -> Self {
        Param::Real(v)
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(Some(v))
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Param::Text(Some(v))
    }
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Param::Text(v)
    }
}

impl<'a> From<&'a Option<String>> for Param<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Param::Text(v.as_deref())
    }
}

/// One statement: its text in the dialect, and its values in order.
#[derive(Debug, Clone)]
pub struct Stmt<'a> {
    pub dialect: Dialect,
    pub sql: String,
    pub params: Vec<Param<'a>>,
}

impl<'a> Stmt<'a> {
    pub fn new(dialect: Dialect, sql: &str) -> Stmt<'a> {
        Stmt {
            dialect,
            sql: sql.to_string(),
            params: Vec::new(),
        }
    }

    /// Appends SQL text.
    pub fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Appends a placeholder for `p`.
    pub fn arg(&mut self, p: impl Into<Param<'a>>) -> &mut Self {
        self.params.push(p.into());
        match self.dialect {
            Dialect::Postgres => {
                self.sql.push('$');
                self.sql.push_str(&self.params.len().to_string());
            }
            Dialect::Sqlite | Dialect::Mysql => self.sql.push('?'),
        }
        self
    }

    /// Appends a placeholder for a UNIX time, written as the column wants it: a number, or
    /// the engine's date and time (UTC) when `datetime`.
    pub fn time_arg(&mut self, t: i64, datetime: bool) -> &mut Self {
        if !datetime {
            return self.arg(t);
        }
        match self.dialect {
            Dialect::Sqlite => {
                self.push("datetime(");
                self.arg(t);
                self.push(", 'unixepoch')")
            }
            Dialect::Postgres => {
                self.push("(to_timestamp(");
                self.arg(t);
                self.push(") AT TIME ZONE 'UTC')")
            }
            Dialect::Mysql => {
                self.push("FROM_UNIXTIME(");
                self.arg(t);
                self.push(")")
            }
        }
    }

    /// Appends `(a, b, ...)` of placeholders for `values`.
    pub fn list<P: Into<Param<'a>>>(&mut self, values: impl IntoIterator<Item = P>) -> &mut Self {
        self.push("(");
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.arg(v);
        }
        self.push(")")
    }
}

impl Dialect {
    /// The engine of a database URL, or None.
    pub fn of_url(url: &str) -> Option<Dialect> {
        let scheme = url.split_once("://")?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Dialect::Sqlite),
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            "mysql" | "mariadb" => Some(Dialect::Mysql),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "SQLite",
            Dialect::Postgres => "PostgreSQL",
            Dialect::Mysql => "MySQL",
        }
    }

    /// `INSERT INTO table (cols) VALUES ` that replaces a row with the same `key` (the table's
    /// primary key); the rows follow, then [`Dialect::upsert_tail`].
    pub fn upsert_head(self, table: &str, cols: &[&str]) -> String {
        let verb = match self {
            Dialect::Sqlite => "INSERT OR REPLACE INTO",
            Dialect::Postgres | Dialect::Mysql => "INSERT INTO",
        };
        format!("{verb} {table} ({}) VALUES ", cols.join(", "))
    }

    /// What follows the rows of [`Dialect::upsert_head`]: every column but the key updated.
    pub fn upsert_tail(self, key: &str, cols: &[&str]) -> String {
        let others = cols.iter().filter(|c| **c != key);
        match self {
            Dialect::Sqlite => String::new(),
            Dialect::Postgres => format!(
                " ON CONFLICT ({key}) DO UPDATE SET {}",
                others
                    .map(|c| format!("{c} = EXCLUDED.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Dialect::Mysql => format!(
                " ON DUPLICATE KEY UPDATE {}",
                others
                    .map(|c| format!("{c} = VALUES({c})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// An expression reading the date-time column `col` as UNIX seconds (UTC).
    pub fn unix_of(self, col: &str) -> String {
        match self {
            Dialect::Sqlite => format!("CAST(strftime('%s', {col}) AS INTEGER)"),
            Dialect::Postgres => {
                format!("CAST(EXTRACT(EPOCH FROM {col}) AS BIGINT)")
            }
            Dialect::Mysql => format!("CAST(UNIX_TIMESTAMP({col}) AS SIGNED)"),
        }
    }

    /// `INSERT ... ` that leaves an existing row (same unique key) alone: the head, and what
    /// follows the values.
    pub fn insert_ignore(self) -> (&'static str, &'static str) {
        match self {
            Dialect::Sqlite => ("INSERT OR IGNORE INTO", ""),
            Dialect::Postgres => ("INSERT INTO", " ON CONFLICT DO NOTHING"),
            Dialect::Mysql => ("INSERT IGNORE INTO", ""),
        }
    }
}

/// One value read from a row, as the engine typed it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    /// A value of a type the store does not read (a blob, a date, ...), with the type's name.
    Other(String),
}

/// A row read by column name; each failure names its column.
#[derive(Debug, Clone)]
pub struct Row {
    pub names: Arc<[String]>,
    pub cells: Vec<Cell>,
}

impl Row {
    pub fn get(&self, c: &str) -> Option<&Cell> {
        self.names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(c))
            .map(|i| &self.cells[i])
    }

    /// An integer (not NULL).
    pub fn int(&self, c: &str) -> Result<i64, String> {
        match self.get(c) {
            Some(Cell::Int(v)) => Ok(*v),
            Some(_) => Err(format!("column {c} is not an integer")),
            None => Err(format!("no column {c}")),
        }
    }

    /// An integer or NULL.
    pub fn opt_int(&self, c: &str) -> Result<Option<i64>, String> {
        match self.get(c) {
            Some(Cell::Null) => Ok(None),
            _ => self.int(c).map(Some),
        }
    }

    /// A number (integer or real, not NULL).
    pub fn real(&self, c: &str) -> Result<f64, String> {
        match self.get(c) {
            Some(Cell::Real(v)) => Ok(*v),
            Some(Cell::Int(v)) => Ok(*v as f64),
            Some(_) => Err(format!("column {c} is not a number")),
            None => Err(format!("no column {c}")),
        }
    }

    /// Text (not NULL).
    pub fn text(&self, c: &str) -> Result<String, String> {
        match self.get(c) {
            Some(Cell::Text(v)) => Ok(v.clone()),
            Some(_) => Err(format!("column {c} is not text")),
            None => Err(format!("no column {c}")),
        }
    }

    /// Text or NULL.
    pub fn opt_text(&self, c: &str) -> Result<Option<String>, String> {
        match self.get(c) {
            Some(Cell::Null) => Ok(None),
            _ => self.text(c).map(Some),
        }
    }

    /// Text, NULL read as empty.
    pub fn text_or_empty(&self, c: &str) -> Result<String, String> {
        self.opt_text(c).map(Option::unwrap_or_default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_dialect() {
        for (d, want) in [
            (
                Dialect::Sqlite,
                "SELECT a FROM t WHERE x = ? AND y IN (?, ?)",
            ),
            (
                Dialect::Mysql,
                "SELECT a FROM t WHERE x = ? AND y IN (?, ?)",
            ),
            (
                Dialect::Postgres,
                "SELECT a FROM t WHERE x = $1 AND y IN ($2, $3)",
            ),
        ] {
            let mut s = Stmt::new(d, "SELECT a FROM t WHERE x = ");
            s.arg("v").push(" AND y IN ").list([1i64, 2]);
            assert_eq!(s.sql, want);
            assert_eq!(s.params.len(), 3);
        }
    }

    #[test]
    fn upserts_follow_the_dialect() {
        let cols = ["id", "a", "b"];
        assert_eq!(
            Dialect::Sqlite.upsert_head("t", &cols),
            "INSERT OR REPLACE INTO t (id, a, b) VALUES "
        );
        assert_eq!(Dialect::Sqlite.upsert_tail("id", &cols), "");
        assert_eq!(
            Dialect::Postgres.upsert_tail("id", &cols),
            " ON CONFLICT (id) DO UPDATE SET a = EXCLUDED.a, b = EXCLUDED.b"
        );
        assert_eq!(
            Dialect::Mysql.upsert_tail("id", &cols),
            " ON DUPLICATE KEY UPDATE a = VALUES(a), b = VALUES(b)"
        );
    }

    #[test]
    fn urls_name_their_engine() {
        assert_eq!(Dialect::of_url("sqlite:///x.db"), Some(Dialect::Sqlite));
        assert_eq!(
            Dialect::of_url("postgres://u:p@h/db"),
            Some(Dialect::Postgres)
        );
        assert_eq!(
            Dialect::of_url("postgresql://h/db"),
            Some(Dialect::Postgres)
        );
        assert_eq!(Dialect::of_url("mysql://u@h/db"), Some(Dialect::Mysql));
        assert_eq!(Dialect::of_url("redis://h"), None);
        assert_eq!(Dialect::of_url("/tmp/x.db"), None);
    }

    #[test]
    fn cells_are_read_by_name_and_a_misfit_names_its_column() {
        let r = Row {
            names: vec!["id".into(), "Name".into(), "q".into(), "n".into()].into(),
            cells: vec![
                Cell::Int(7),
                Cell::Text("x".into()),
                Cell::Int(1),
                Cell::Null,
            ],
        };
        assert_eq!(r.int("ID"), Ok(7));
        assert_eq!(r.text("name"), Ok("x".into()));
        assert_eq!(r.real("q"), Ok(1.0));
        assert_eq!(r.opt_text("n"), Ok(None));
        assert_eq!(r.text_or_empty("n"), Ok(String::new()));
        assert_eq!(r.int("name"), Err("column name is not an integer".into()));
        assert_eq!(r.text("id"), Err("column id is not text".into()));
        assert_eq!(r.int("n"), Err("column n is not an integer".into()));
        assert_eq!(r.opt_int("n"), Ok(None));
        assert!(r.int("gone").is_err());
    }
}
