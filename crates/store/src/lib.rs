//! `store`: the tables switchboard shares with OpenSIPS installations, on SQLite (the
//! embedded default), PostgreSQL or MySQL/MariaDB, chosen by the URL (`sqlite://PATH`,
//! `postgres://user:pass@host/db`, `mysql://user:pass@host/db`). One [`Store`] type serves the
//! three: the table code ([`tables`], [`numbers`]) is written once over statements whose
//! text the engine's [`Dialect`] writes (placeholders, upserts, times), and rows come back as
//! typed cells read by column name, whatever type the engine gave the column
//! ([`engine`]). A row that does not fit is returned as a [`BadRow`] with its id and the
//! reason, and the others still load.
//!
//! The schemas are OpenSIPS 3's ([`schema`]); a table OpenSIPS made (without switchboard's
//! extra columns) is read and written as it is.
//!
//! The store also owns what turns the core's state into rows and back
//! ([`location_rows`], [`dialog_rows`], [`cdr_rows`]) and the write-behind that carries the
//! core's changes to the tables ([`behind`]): the binary only wires them.

pub mod behind;
pub mod cdr_rows;
pub mod dialog_rows;
mod engine;
pub mod location_rows;
mod numbers;
pub mod schema;
#[cfg(feature = "redis")]
pub mod shared;
mod sql;
mod sqlite_cdr;
mod tables;

pub use engine::{redact, Columns, Options};
pub use numbers::{AliasRow, DialplanRow, DrCarrierRow, DrGatewayRow, DrGroupRow, DrRuleRow};
pub use sql::Dialect;
pub use tables::{ID_COUNTER_BITS, ID_NODES};

use engine::Engine;
use sql::Stmt;

/// Seconds since the UNIX epoch (the rows' time columns).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL is not one this build supports.
    #[error("unsupported database URL {0:?} (use sqlite://PATH, postgres://USER:PASSWORD@HOST:PORT/DB or mysql://USER:PASSWORD@HOST:PORT/DB)")]
    Url(String),
    /// The server could not be reached or refused the login.
    #[error("cannot connect to {engine} at {url}: {reason}")]
    Connect {
        engine: &'static str,
        url: String,
        reason: String,
    },
    /// The database refused or failed the operation.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// SQLite refused a statement run through its own API (the CDR writer).
    #[error("database error: {0}")]
    Sqlite(String),
    /// A table is missing, or lacks columns switchboard needs.
    #[error("{0}")]
    Schema(String),
    /// The cluster's shared store (Redis) failed an operation.
    #[error("redis: {0}")]
    Shared(String),
}

/// One `dispatcher` row, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatcherRow {
    pub id: i64,
    pub setid: i64,
    pub destination: String,
    pub socket: Option<String>,
    pub state: i64,
    pub probe_mode: i64,
    /// A number as text (OpenSIPS allows an `fs://` URL here).
    pub weight: String,
    pub priority: i64,
    pub attrs: Option<String>,
    pub description: Option<String>,
}

/// One `subscriber` row (OpenSIPS 3 schema, version 8): a plain `password`, or the HA1
/// hashes, or both.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscriberRow {
    pub username: String,
    pub domain: String,
    pub password: String,
    pub ha1: String,
    pub ha1_sha256: String,
    pub email_address: String,
}

/// One `location` row (OpenSIPS 3 usrloc schema). `received` is a SIP URI of the source
/// address with its transport; `cflags` holds `NAT` for contacts behind NAT; `kv_store`
/// carries `reg-id` as JSON.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LocationRow {
    pub contact_id: i64,
    pub username: String,
    pub domain: String,
    pub contact: String,
    pub received: Option<String>,
    pub path: Option<String>,
    /// UNIX time.
    pub expires: i64,
    pub q: f64,
    pub callid: String,
    pub cseq: i64,
    pub cflags: String,
    pub user_agent: String,
    pub sip_instance: Option<String>,
    pub kv_store: Option<String>,
    /// UNIX time.
    pub last_modified: i64,
}

/// One `dialog` row (OpenSIPS 3 schema, plus `node`, `answer_time`, `session_expires`).
/// `caller_sock`/`callee_sock` hold how each side is reached (`udp:1.2.3.4:5060`); `state`
/// uses OpenSIPS' codes (4 = confirmed).
#[cfg_attr(feature = "redis", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DialogRow {
    pub dlg_id: i64,
    pub callid: String,
    pub from_uri: String,
    pub from_tag: String,
    pub to_uri: String,
    pub to_tag: String,
    pub caller_cseq: i64,
    pub callee_cseq: i64,
    pub caller_contact: String,
    pub callee_contact: String,
    /// The Route value of a request toward each side (OpenSIPS' columns; NULL when none).
    pub caller_route_set: String,
    pub callee_route_set: String,
    pub caller_sock: String,
    pub callee_sock: String,
    pub state: i64,
    pub start_time: i64,
    /// UNIX time the dialog expires.
    pub timeout: i64,
    pub node: Option<String>,
    pub answer_time: Option<i64>,
    pub session_expires: Option<i64>,
    pub ruri: String,
}

/// A dialog change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogOp {
    Upsert(Box<DialogRow>),
    Delete(i64),
}

/// One accounted call: `acc` (answered) or `missed_calls` (failed), OpenSIPS columns plus
/// ours (users and domains, source, node, setup/answer/end times, who hung up). Read back
/// with owned strings; written from borrowed ones (`CdrRow<&str>`), so the writer copies
/// nothing out of the records it was handed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CdrRow<S = String> {
    pub answered: bool,
    pub callid: S,
    pub from_tag: S,
    pub to_tag: S,
    pub sip_code: u16,
    pub sip_reason: S,
    pub from_user: S,
    pub from_domain: S,
    pub to_user: S,
    pub to_domain: S,
    pub ruri_user: S,
    pub ruri_domain: S,
    pub src_ip: S,
    pub node: Option<S>,
    /// UNIX times.
    pub setup_time: i64,
    pub answer_time: Option<i64>,
    pub end_time: i64,
    pub duration: i64,
    pub hangup_by: S,
}

/// One `load_balancer` row (OpenSIPS 3 schema, version 3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadBalancerRow {
    pub id: i64,
    pub group_id: i64,
    pub dst_uri: String,
    pub resources: String,
    pub probe_mode: i64,
    pub attrs: Option<String>,
    pub description: Option<String>,
}

/// A row of OpenSIPS' `rtpengine` table: `socket` holds one or more instances
/// (`udp:10.0.0.7:2223=2 udp:10.0.0.8:2223`, a weight after `=`), all in set `set_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpengineRow {
    pub id: i64,
    pub socket: String,
    pub set_id: i64,
}

/// A location change.
#[derive(Debug, Clone, PartialEq)]
pub enum LocationOp {
    Upsert(Box<LocationRow>),
    Delete(i64),
}

/// A row that could not be read, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub id: Option<i64>,
    pub reason: String,
}

impl StoreError {
    /// The database refused the data itself (a value out of range or too long, a constraint),
    /// not the operation: writing the same rows again fails again, while the others in the
    /// batch would go through. An outage or a missing table is not a refusal.
    pub fn is_refusal(&self) -> bool {
        let StoreError::Db(sqlx::Error::Database(d)) = self else {
            return false;
        };
        !matches!(d.kind(), sqlx::error::ErrorKind::Other)
            // SQLSTATE class 22: data exception (too long, out of range, bad value)
            || d.code().is_some_and(|c| c.starts_with("22"))
    }
}

/// A database: one of the three engines, and what it learnt of the tables' columns.
#[derive(Debug, Clone)]
pub struct Store {
    engine: Engine,
    schema: std::sync::Arc<Schema>,
}

/// The columns of each table, read from the database when first used, and again after a
/// failed write in case a table changed. A table without some of our columns gets what it
/// has; what is not written, and why, is logged once.
#[derive(Debug, Default)]
struct Schema {
    tables: std::sync::Mutex<std::collections::HashMap<&'static str, std::sync::Arc<Columns>>>,
    told: std::sync::Mutex<std::collections::HashSet<&'static str>>,
    /// Columns whose values were cut to fit, said once each.
    cut: std::sync::Mutex<std::collections::HashSet<(&'static str, &'static str)>>,
}

/// What `switchboard db check` reports of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub table: &'static str,
    pub exists: bool,
    /// The `version` row's value, if any.
    pub version: Option<i64>,
    /// The version switchboard writes (OpenSIPS 3's).
    pub expected_version: i64,
    /// Columns switchboard needs that the table lacks (it cannot be used).
    pub missing: Vec<String>,
    /// switchboard's own columns the table lacks (not written; fine for OpenSIPS' schema).
    pub missing_optional: Vec<String>,
    /// Columns NOT NULL without a default that switchboard does not write (inserts fail).
    pub unfilled: Vec<String>,
}

impl TableReport {
    /// Nothing stops switchboard from using the table.
    pub fn usable(&self) -> bool {
        self.exists && self.missing.is_empty() && self.unfilled.is_empty()
    }
}

/// Rows per statement in the batched writers: 50 at most, and only these counts. Each
/// distinct count is another prepared statement in sqlx's cache of each connection, and a
/// 50-row statement holds about 100 KB in SQLite: with every count from 1 to 50 cached, the
/// writers held about 9 MB (0.9 KB per dialog in the 10,000-dialog benchmark).
const CHUNKS: [usize; 7] = [50, 32, 16, 8, 4, 2, 1];

/// `items` in consecutive pieces whose lengths are in [`CHUNKS`], largest first.
fn pieces<T>(mut items: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    while !items.is_empty() {
        let n = CHUNKS
            .iter()
            .copied()
            .find(|&c| c <= items.len())
            .unwrap_or(1);
        let (a, b) = items.split_at(n);
        out.push(a);
        items = b;
    }
    out
}

/// Splits `ops` into runs of the same kind (`is_upsert`), in order and in [`pieces`]:
/// consecutive upserts become one multi-row statement, consecutive deletes one `IN`.
fn runs<T>(ops: &[T], is_upsert: impl Fn(&T) -> bool) -> Vec<(bool, &[T])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        let kind = is_upsert(&ops[i]);
        let mut j = i;
        while j < ops.len() && is_upsert(&ops[j]) == kind {
            j += 1;
        }
        out.extend(pieces(&ops[i..j]).into_iter().map(|p| (kind, p)));
        i = j;
    }
    out
}

impl Store {
    /// Connects to `url` and creates the tables that are missing (with the default
    /// connection settings).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_with(url, &Options::default()).await
    }

    /// Connects to `url` and creates the tables that are missing.
    pub async fn open_with(url: &str, opts: &Options) -> Result<Store, StoreError> {
        let s = Store::connect(url, opts).await?;
        s.create_missing().await?;
        Ok(s)
    }

    /// Connects to `url` and changes nothing (`switchboard db check`).
    pub async fn connect(url: &str, opts: &Options) -> Result<Store, StoreError> {
        Ok(Store {
            engine: Engine::connect(url, opts).await?,
            schema: Default::default(),
        })
    }

    /// The engine's dialect.
    pub fn dialect(&self) -> Dialect {
        self.engine.dialect()
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.engine.ping().await
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.engine.close().await
    }

    fn stmt<'a>(&self, sql: &str) -> Stmt<'a> {
        Stmt::new(self.dialect(), sql)
    }

    /// Creates the tables that do not exist and their `version` rows (existing tables and
    /// rows are left as they are).
    pub async fn create_missing(&self) -> Result<Vec<(&'static str, String)>, StoreError> {
        let d = self.dialect();
        // only what is missing, and a table that cannot be made is reported, not fatal: an
        // OpenSIPS database's user may read and write its tables without the right to create
        // any (PostgreSQL 15 gives no CREATE on `public` to users other than its owner); a
        // feature that needs a table that is not there says so when it reads it
        let mut made = Vec::new();
        let mut failed = Vec::new();
        for t in &schema::TABLES {
            if self.engine.columns(t.name).await?.is_none() {
                match self
                    .engine
                    .exec(&self.stmt(&schema::render(t.create, d)))
                    .await
                {
                    Ok(_) => made.push(t),
                    Err(e) => failed.push((t.name, e.to_string())),
                }
            }
        }
        let versioned: Vec<_> = made.iter().filter(|t| t.version > 0).collect();
        if !versioned.is_empty() && !failed.iter().any(|(t, _)| *t == "version") {
            let (head, tail) = d.insert_ignore();
            let mut st = self.stmt(head);
            st.push(" version (table_name, table_version) VALUES ");
            for (i, t) in versioned.iter().enumerate() {
                if i > 0 {
                    st.push(", ");
                }
                st.push("(").arg(t.name).push(", ").arg(t.version).push(")");
            }
            st.push(tail);
            self.engine.exec(&st).await?;
        }
        if !made.is_empty() {
            tracing::info!(
                tables = %made.iter().map(|t| t.name).collect::<Vec<_>>().join(", "),
                "tables created"
            );
        }
        for (table, error) in &failed {
            tracing::warn!(
                table,
                error,
                "could not create the table (a feature that reads it will say so)"
            );
        }
        self.forget_columns();
        Ok(failed)
    }

    /// Adds to existing tables the columns of [`schema::TABLES`] they lack (an OpenSIPS
    /// table of an older version, or one without switchboard's columns), as the schema
    /// declares them, and sets the `version` rows to the versions written here. Creates the
    /// missing tables first. Returns what was added, as `table.column`.
    pub async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        if let Some((t, e)) = self.create_missing().await?.into_iter().next() {
            return Err(StoreError::Schema(format!("cannot create table {t}: {e}")));
        }
        let d = self.dialect();
        let mut added = Vec::new();
        for t in &schema::TABLES {
            let Some(c) = self.engine.columns(t.name).await? else {
                continue;
            };
            let ddl = schema::render(t.create, d);
            for col in t.needs.iter().chain(t.optional) {
                if c.has(col) {
                    continue;
                }
                let Some(def) = ddl
                    .lines()
                    .map(|l| l.trim().trim_end_matches(','))
                    .find(|l| l.starts_with(&format!("{col} ")))
                else {
                    continue;
                };
                // a NOT NULL column without a default cannot be added to a table with rows
                let def = if def.contains("NOT NULL") && !def.contains("DEFAULT") {
                    def.replace("NOT NULL", "")
                } else {
                    def.to_string()
                };
                self.engine
                    .exec(&self.stmt(&format!("ALTER TABLE {} ADD {def}", t.name)))
                    .await?;
                added.push(format!("{}.{col}", t.name));
            }
            if t.version > 0 {
                let mut st = self.stmt("UPDATE version SET table_version = ");
                st.arg(t.version).push(" WHERE table_name = ").arg(t.name);
                self.engine.exec(&st).await?;
            }
        }
        self.forget_columns();
        Ok(added)
    }

    /// What each table of [`schema::TABLES`] has and lacks; changes nothing.
    pub async fn check(&self) -> Result<Vec<TableReport>, StoreError> {
        let versions: std::collections::HashMap<String, i64> =
            match self.engine.columns("version").await? {
                Some(_) => self
                    .engine
                    .fetch(&self.stmt("SELECT table_name, table_version FROM version"))
                    .await?
                    .iter()
                    .filter_map(|r| {
                        Some((r.text("table_name").ok()?, r.int("table_version").ok()?))
                    })
                    .collect(),
                None => Default::default(),
            };
        let mut out = Vec::new();
        for t in &schema::TABLES {
            let c = self.engine.columns(t.name).await?;
            let mut r = TableReport {
                table: t.name,
                exists: c.is_some(),
                version: versions.get(t.name).copied(),
                expected_version: t.version,
                missing: Vec::new(),
                missing_optional: Vec::new(),
                unfilled: Vec::new(),
            };
            if let Some(c) = c {
                r.missing = t
                    .needs
                    .iter()
                    .filter(|n| !c.has(n))
                    .map(|n| n.to_string())
                    .collect();
                r.missing_optional = t
                    .optional
                    .iter()
                    .filter(|n| !c.has(n))
                    .map(|n| n.to_string())
                    .collect();
                r.unfilled = c
                    .required
                    .iter()
                    .filter(|q| {
                        !t.needs
                            .iter()
                            .chain(t.optional)
                            .chain(tables::ALSO_WRITTEN)
                            .any(|o| o.eq_ignore_ascii_case(q))
                    })
                    .cloned()
                    .collect();
            }
            out.push(r);
        }
        Ok(out)
    }

    /// The columns `table` has (cached; see [`Schema`]); an error naming the table when it
    /// does not exist or lacks a column switchboard needs.
    async fn columns(&self, table: &'static str) -> Result<std::sync::Arc<Columns>, StoreError> {
        if let Some(c) = self
            .schema
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(table)
        {
            return Ok(c.clone());
        }
        let c = self.engine.columns(table).await?.ok_or_else(|| {
            StoreError::Schema(format!(
                "the {} database has no table {table} (switchboard db init creates it)",
                self.dialect().name()
            ))
        })?;
        if let Some(t) = schema::table(table) {
            let missing: Vec<&str> = t.needs.iter().copied().filter(|n| !c.has(n)).collect();
            if !missing.is_empty() {
                return Err(StoreError::Schema(format!(
                    "table {table} lacks the columns {} (an older schema version? switchboard db migrate adds them)",
                    missing.join(", ")
                )));
            }
        }
        let c = std::sync::Arc::new(c);
        self.schema
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(table, c.clone());
        Ok(c)
    }

    /// Forgets the cached columns (after a failed write: a table may have changed).
    fn forget_columns(&self) {
        self.schema
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Says once per table which of `ours` it lacks (not written) and which of its required
    /// columns switchboard does not fill (every insert would fail); `also` are columns
    /// written where they exist without being missed where they do not.
    fn tell_once(&self, table: &'static str, ours: &[&str], also: &[&str], c: &Columns) {
        let missing: Vec<&str> = ours.iter().copied().filter(|o| !c.has(o)).collect();
        let unfilled: Vec<&str> = c
            .required
            .iter()
            .map(String::as_str)
            .filter(|r| !ours.iter().chain(also).any(|o| o.eq_ignore_ascii_case(r)))
            .collect();
        if (missing.is_empty() && unfilled.is_empty())
            || !self
                .schema
                .told
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(table)
        {
            return;
        }
        if !missing.is_empty() {
            tracing::warn!(
                table,
                columns = %missing.join(", "),
                "the table has not these columns (an OpenSIPS schema?): they are not written"
            );
        }
        if !unfilled.is_empty() {
            tracing::error!(
                table,
                columns = %unfilled.join(", "),
                "the table requires columns switchboard does not write: inserts will fail until they get a default"
            );
        }
    }

    /// `v` cut to the width of `table.col` where the engine enforces one (PostgreSQL and
    /// MySQL refuse a longer value, and with it the whole batch of the write-behind: a
    /// 70-character Call-ID would stop a table's writes). Said once per column.
    fn cut<'a>(&self, c: &Columns, table: &'static str, col: &'static str, v: &'a str) -> &'a str {
        let Some(n) = c.max_len(col) else {
            return v;
        };
        if v.len() <= n {
            return v;
        }
        let Some((at, _)) = v.char_indices().nth(n) else {
            return v;
        };
        if self
            .schema
            .cut
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((table, col))
        {
            tracing::warn!(
                table,
                column = col,
                width = n,
                "a value longer than the column was cut to fit (widen the column to keep such values whole); said once"
            );
        }
        &v[..at]
    }

    /// Reads every row of `table` (the columns [`schema::columns`] names), ordered by
    /// `key`: a date/time column as UNIX seconds, a column the table lacks as NULL.
    async fn read(&self, table: &'static str, key: &str) -> Result<Vec<sql::Row>, StoreError> {
        let c = self.columns(table).await?;
        let d = self.dialect();
        let list: Vec<String> = schema::columns(table)
            .iter()
            .map(|w| {
                if !c.has(w) {
                    format!("NULL AS {w}")
                } else if c.is_datetime(w) {
                    format!("{} AS {w}", d.unix_of(w))
                } else {
                    w.to_string()
                }
            })
            .collect();
        self.engine
            .fetch(&self.stmt(&format!(
                "SELECT {} FROM {table} ORDER BY {key}",
                list.join(", ")
            )))
            .await
    }

    /// Runs raw SQL (the crate's tests seed tables the way an OpenSIPS operator would).
    #[cfg(test)]
    pub(crate) async fn execute(&self, sql: &str) -> Result<u64, StoreError> {
        self.engine.exec(&self.stmt(sql)).await
    }
}

#[cfg(test)]
mod tests;
