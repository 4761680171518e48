//! The three engines behind one set of primitives: run a statement, read rows as [`Cell`]s,
//! run statements in one transaction, insert and get the new id, and list a table's columns.
//! Each engine has its own pool type; the statement code is the same for the three (a macro
//! binds a [`Stmt`]'s parameters to whichever query type the engine has), what differs is how
//! a value's type is read back and how a table describes itself.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Column, Row as _, TypeInfo, ValueRef};

use crate::sql::{Cell, Dialect, Param, Row, Stmt};
use crate::StoreError;

/// Connection settings beside the URL (`[database]` in the config).
#[derive(Debug, Clone)]
pub struct Options {
    /// Connections in the pool (SQLite: 2 whatever this says; one file, one writer).
    pub pool_size: u32,
    /// How long connecting (and waiting for a free connection) may take.
    pub connect_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A table's columns, as the database describes it.
#[derive(Debug, Default, Clone)]
pub struct Columns {
    pub names: Vec<String>,
    /// NOT NULL without a default and not generated: an INSERT must give them.
    pub required: Vec<String>,
    /// Columns of a date/time type (written and read through the engine's conversions).
    pub datetime: Vec<String>,
    /// Text columns of a bounded width the engine enforces (PostgreSQL, MySQL), in characters.
    pub max_len: Vec<(String, usize)>,
}

impl Columns {
    pub fn has(&self, c: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(c))
    }

    pub fn is_datetime(&self, c: &str) -> bool {
        self.datetime.iter().any(|n| n.eq_ignore_ascii_case(c))
    }

    /// The width of a bounded text column, where the engine refuses longer values.
    pub fn max_len(&self, c: &str) -> Option<usize> {
        self.max_len
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(c))
            .map(|(_, l)| *l)
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Engine {
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "mysql")]
    Mysql(sqlx::MySqlPool),
}

/// The query of `$st` on the engine's query type, its parameters bound in order.
macro_rules! bound {
    ($st:expr) => {{
        let mut q = sqlx::query(&$st.sql);
        for p in &$st.params {
            q = match *p {
                Param::Int(v) => q.bind(v),
                Param::Real(v) => q.bind(v),
                Param::Text(v) => q.bind(v),
            };
        }
        q
    }};
}

/// Runs `$body` with `$pool` bound to the engine's pool, whichever it is.
macro_rules! on_pool {
    ($engine:expr, $pool:ident => $body:expr) => {
        match $engine {
            Engine::Sqlite($pool) => $body,
            #[cfg(feature = "postgres")]
            Engine::Postgres($pool) => $body,
            #[cfg(feature = "mysql")]
            Engine::Mysql($pool) => $body,
        }
    };
}

/// The URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    match auth {
        Some(a) => match a.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://{a}@{host}"),
        },
        None => url.to_string(),
    }
}

/// Says what went wrong when connecting, in words an operator acts on.
fn connect_error(dialect: Dialect, url: &str, e: sqlx::Error) -> StoreError {
    let reason = match &e {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "connection refused (is the server running, on that address and port?)".into()
            }
            _ => io.to_string(),
        },
        sqlx::Error::PoolTimedOut => "no answer within the connect timeout".into(),
        sqlx::Error::Database(d) => d.message().to_string(),
        other => other.to_string(),
    };
    StoreError::Connect {
        engine: dialect.name(),
        url: redact(url),
        reason,
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
/// One connection made and closed before the pool is: the pool retries a refused connection
/// until its timeout and then says only that it timed out, where this says why (refused, no
/// such host, wrong password, no such database).
async fn first_connection<C: sqlx::Connection>(
    o: &C::Options,
    dialect: Dialect,
    url: &str,
    opts: &Options,
) -> Result<(), StoreError> {
    match tokio::time::timeout(opts.connect_timeout, C::connect_with(o)).await {
        Ok(Ok(c)) => {
            let _ = c.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(connect_error(dialect, url, e)),
        Err(_) => Err(connect_error(dialect, url, sqlx::Error::PoolTimedOut)),
    }
}

impl Engine {
    pub async fn connect(url: &str, opts: &Options) -> Result<Engine, StoreError> {
        let dialect = Dialect::of_url(url).ok_or_else(|| StoreError::Url(redact(url)))?;
        match dialect {
            Dialect::Sqlite => {
                let path = url.split_once("://").map(|x| x.1).unwrap_or_default();
                if path.is_empty() {
                    return Err(StoreError::Url(url.to_string()));
                }
                // WAL with synchronous=NORMAL: a commit is an append, not a journal file
                // created and deleted; durable across a crash of switchboard (not of the
                // OS), which is what the write-behind of location, dialogs and CDRs needs.
                let o = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5));
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(opts.connect_timeout)
                    .connect_with(o)
                    .await
                    .map_err(|e| connect_error(dialect, url, e))?;
                Ok(Engine::Sqlite(pool))
            }
            #[cfg(feature = "postgres")]
            Dialect::Postgres => {
                use std::str::FromStr as _;
                let o = sqlx::postgres::PgConnectOptions::from_str(url)
                    .map_err(|e| StoreError::Url(format!("{}: {e}", redact(url))))?
                    .application_name("switchboard");
                first_connection::<sqlx::PgConnection>(&o, dialect, url, opts).await?;
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(opts.pool_size.max(1))
                    .acquire_timeout(opts.connect_timeout)
                    .connect_with(o)
                    .await
                    .map_err(|e| connect_error(dialect, url, e))?;
                Ok(Engine::Postgres(pool))
            }
            #[cfg(feature = "mysql")]
            Dialect::Mysql => {
                use std::str::FromStr as _;
                let url2 = url.replacen("mariadb://", "mysql://", 1);
                let o = sqlx::mysql::MySqlConnectOptions::from_str(&url2)
                    .map_err(|e| StoreError::Url(format!("{}: {e}", redact(url))))?
                    // UTC: FROM_UNIXTIME and UNIX_TIMESTAMP read and write the DATETIME
                    // columns (acc.time) as UTC, like the other engines
                    .timezone(Some("+00:00".to_string()));
                first_connection::<sqlx::MySqlConnection>(&o, dialect, url, opts).await?;
                let pool = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(opts.pool_size.max(1))
                    .acquire_timeout(opts.connect_timeout)
                    .connect_with(o)
                    .await
                    .map_err(|e| connect_error(dialect, url, e))?;
                Ok(Engine::Mysql(pool))
            }
            #[allow(unreachable_patterns)]
            _ => Err(StoreError::Url(format!(
                "{} (this build has no {} support)",
                redact(url),
                dialect.name()
            ))),
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Engine::Sqlite(_) => Dialect::Sqlite,
            #[cfg(feature = "postgres")]
            Engine::Postgres(_) => Dialect::Postgres,
            #[cfg(feature = "mysql")]
            Engine::Mysql(_) => Dialect::Mysql,
        }
    }

    pub fn sqlite(&self) -> Option<&sqlx::SqlitePool> {
        match self {
            Engine::Sqlite(p) => Some(p),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Runs one statement; the rows it changed.
    pub async fn exec(&self, st: &Stmt<'_>) -> Result<u64, StoreError> {
        on_pool!(self, pool => Ok(bound!(st).execute(pool).await?.rows_affected()))
    }

    /// Runs statements in one transaction, in order (rolled back on the first error).
    pub async fn batch(&self, sts: &[Stmt<'_>]) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for st in sts {
                bound!(st).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Runs an INSERT into a table whose `id` the database assigns; the new id.
    pub async fn insert_id(&self, st: &Stmt<'_>) -> Result<i64, StoreError> {
        match self {
            Engine::Sqlite(p) => Ok(bound!(st).execute(p).await?.last_insert_rowid()),
            #[cfg(feature = "postgres")]
            Engine::Postgres(p) => {
                let mut st = st.clone();
                st.push(" RETURNING id");
                let r = bound!(st).fetch_one(p).await?;
                Ok(pg_cell(&r, 0).as_int().unwrap_or(0))
            }
            #[cfg(feature = "mysql")]
            Engine::Mysql(p) => Ok(bound!(st).execute(p).await?.last_insert_id() as i64),
        }
    }

    /// Runs a query; its rows as cells.
    pub async fn fetch(&self, st: &Stmt<'_>) -> Result<Vec<Row>, StoreError> {
        match self {
            Engine::Sqlite(p) => {
                let rows = bound!(st).fetch_all(p).await?;
                Ok(to_rows(&rows, sqlite_cell))
            }
            #[cfg(feature = "postgres")]
            Engine::Postgres(p) => {
                let rows = bound!(st).fetch_all(p).await?;
                Ok(to_rows(&rows, pg_cell))
            }
            #[cfg(feature = "mysql")]
            Engine::Mysql(p) => {
                let rows = bound!(st).fetch_all(p).await?;
                Ok(to_rows(&rows, mysql_cell))
            }
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.fetch(&Stmt::new(self.dialect(), "SELECT 1")).await?;
        Ok(())
    }

    /// `table`'s columns; None when there is no such table.
    pub async fn columns(&self, table: &str) -> Result<Option<Columns>, StoreError> {
        let d = self.dialect();
        let mut st = Stmt::new(d, "");
        match d {
            Dialect::Sqlite => st
                .push("SELECT name, \"notnull\" AS nn, CASE WHEN dflt_value IS NULL THEN 0 ELSE 1 END AS dflt, pk AS generated, type FROM pragma_table_info(")
                .arg(table)
                .push(")"),
            Dialect::Postgres => st
                .push("SELECT CAST(column_name AS TEXT) AS name, CASE WHEN is_nullable = 'NO' THEN 1 ELSE 0 END AS nn, CASE WHEN column_default IS NULL THEN 0 ELSE 1 END AS dflt, CASE WHEN is_identity = 'YES' THEN 1 ELSE 0 END AS generated, CAST(data_type AS TEXT) AS type, CAST(character_maximum_length AS BIGINT) AS max_len FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ")
                .arg(table)
                .push(" ORDER BY ordinal_position"),
            Dialect::Mysql => st
                .push("SELECT CAST(COLUMN_NAME AS CHAR) AS name, CASE WHEN IS_NULLABLE = 'NO' THEN 1 ELSE 0 END AS nn, CASE WHEN COLUMN_DEFAULT IS NULL THEN 0 ELSE 1 END AS dflt, CASE WHEN EXTRA LIKE '%auto_increment%' THEN 1 ELSE 0 END AS generated, CAST(DATA_TYPE AS CHAR) AS type, CAST(CHARACTER_MAXIMUM_LENGTH AS SIGNED) AS max_len FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ")
                .arg(table)
                .push(" ORDER BY ORDINAL_POSITION"),
        };
        let rows = self.fetch(&st).await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut c = Columns::default();
        for r in rows {
            let name = r.text("name").unwrap_or_default();
            let flag = |n: &str| r.int(n).unwrap_or(0) != 0;
            if flag("nn") && !flag("dflt") && !flag("generated") {
                c.required.push(name.clone());
            }
            let ty = r.text("type").unwrap_or_default().to_ascii_lowercase();
            if ty.contains("date") || ty.contains("time") {
                c.datetime.push(name.clone());
            }
            // CHAR/VARCHAR(n); TEXT's 65,535 bytes on MySQL are not worth a check
            if let Some(n) = r.int("max_len").ok().filter(|n| (1..65_535).contains(n)) {
                c.max_len.push((name.clone(), n as usize));
            }
            c.names.push(name);
        }
        Ok(Some(c))
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

#[cfg(feature = "postgres")]
impl Cell {
    fn as_int(&self) -> Option<i64> {
        match self {
            Cell::Int(v) => Some(*v),
            _ => None,
        }
    }
}

fn to_rows<R: sqlx::Row>(rows: &[R], cell: fn(&R, usize) -> Cell) -> Vec<Row> {
    let Some(first) = rows.first() else {
        return Vec::new();
    };
    let names: Arc<[String]> = first
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    rows.iter()
        .map(|r| Row {
            names: names.clone(),
            cells: (0..r.len()).map(|i| cell(r, i)).collect(),
        })
        .collect()
}

/// A value of an unreadable type: its type's name.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn other<R: sqlx::Row>(r: &R, i: usize) -> Cell
where
    usize: sqlx::ColumnIndex<R>,
{
    Cell::Other(
        r.try_get_raw(i)
            .map(|v| v.type_info().name().to_string())
            .unwrap_or_default(),
    )
}

/// SQLite: the value's own storage class (a column may hold any).
fn sqlite_cell(r: &sqlx::sqlite::SqliteRow, i: usize) -> Cell {
    let Ok(v) = r.try_get_raw(i) else {
        return Cell::Null;
    };
    if v.is_null() {
        return Cell::Null;
    }
    let ty = v.type_info().name().to_string();
    match ty.as_str() {
        "INTEGER" | "BOOLEAN" | "INT4" | "INT8" | "BIGINT" => r
            .try_get::<i64, _>(i)
            .map(Cell::Int)
            .unwrap_or(Cell::Other(ty)),
        "REAL" | "NUMERIC" => r
            .try_get::<f64, _>(i)
            .map(Cell::Real)
            .unwrap_or(Cell::Other(ty)),
        "TEXT" | "DATETIME" | "DATE" | "TIME" => r
            .try_get::<String, _>(i)
            .map(Cell::Text)
            .unwrap_or(Cell::Other(ty)),
        _ => Cell::Other(ty),
    }
}

#[cfg(feature = "postgres")]
fn pg_cell(r: &sqlx::postgres::PgRow, i: usize) -> Cell {
    let Ok(v) = r.try_get_raw(i) else {
        return Cell::Null;
    };
    if v.is_null() {
        return Cell::Null;
    }
    let ty = v.type_info().name().to_string();
    let c = match ty.as_str() {
        "INT2" => r.try_get::<i16, _>(i).map(|v| Cell::Int(v.into())),
        "INT4" => r.try_get::<i32, _>(i).map(|v| Cell::Int(v.into())),
        "INT8" => r.try_get::<i64, _>(i).map(Cell::Int),
        "BOOL" => r.try_get::<bool, _>(i).map(|v| Cell::Int(v.into())),
        "FLOAT4" => r.try_get::<f32, _>(i).map(|v| Cell::Real(v.into())),
        "FLOAT8" => r.try_get::<f64, _>(i).map(Cell::Real),
        "TEXT" | "VARCHAR" | "NAME" | "BPCHAR" => r
            .try_get::<String, _>(i)
            // CHAR(n) pads with spaces
            .map(|s| {
                Cell::Text(if ty == "BPCHAR" {
                    s.trim_end().to_string()
                } else {
                    s
                })
            }),
        _ => return Cell::Other(ty),
    };
    c.unwrap_or_else(|_| other(r, i))
}

#[cfg(feature = "mysql")]
fn mysql_cell(r: &sqlx::mysql::MySqlRow, i: usize) -> Cell {
    let Ok(v) = r.try_get_raw(i) else {
        return Cell::Null;
    };
    if v.is_null() {
        return Cell::Null;
    }
    let ty = v.type_info().name().to_string();
    let c = match ty.as_str() {
        "TINYINT" | "SMALLINT" | "INT" | "MEDIUMINT" | "BIGINT" | "BOOLEAN" => {
            r.try_get::<i64, _>(i).map(Cell::Int)
        }
        "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "INT UNSIGNED" | "MEDIUMINT UNSIGNED"
        | "BIGINT UNSIGNED" => r
            .try_get::<u64, _>(i)
            .map(|v| i64::try_from(v).map_or(Cell::Other(ty.clone()), Cell::Int)),
        "FLOAT" => r.try_get::<f32, _>(i).map(|v| Cell::Real(v.into())),
        "DOUBLE" => r.try_get::<f64, _>(i).map(Cell::Real),
        "VARCHAR" | "CHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" => {
            r.try_get::<String, _>(i).map(Cell::Text)
        }
        _ => return Cell::Other(ty),
    };
    c.unwrap_or_else(|_| other(r, i))
}
