//! `store`: the tables switchboard shares with OpenSIPS installations, behind one type per
//! backend. SQLite is the embedded default; PostgreSQL, MySQL and Redis arrive with the
//! issues that need them, and will run the same test battery.
//!
//! The `dispatcher` table has the OpenSIPS 3 schema (version 9): `id, setid, destination,
//! socket, state, probe_mode, weight, priority, attrs, description`. SQLite types columns
//! loosely, so every row is read column by column: a row that does not fit is returned as
//! a [`BadRow`] with its id and the reason, and the others still load.

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL is not one this build supports.
    #[error("unsupported database URL {0:?} (this version has sqlite://PATH)")]
    Url(String),
    /// The database refused or failed the operation.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
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

/// A row that could not be read, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub id: Option<i64>,
    pub reason: String,
}

/// A SQLite database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

const CREATE_DISPATCHER: &str = "CREATE TABLE IF NOT EXISTS dispatcher (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    setid INTEGER DEFAULT 0 NOT NULL,
    destination CHAR(192) DEFAULT '' NOT NULL,
    socket CHAR(128) DEFAULT NULL,
    state INTEGER DEFAULT 0 NOT NULL,
    probe_mode INTEGER DEFAULT 0 NOT NULL,
    weight CHAR(64) DEFAULT 1 NOT NULL,
    priority INTEGER DEFAULT 0 NOT NULL,
    attrs CHAR(128) DEFAULT NULL,
    description CHAR(64) DEFAULT NULL
)";

const CREATE_VERSION: &str = "CREATE TABLE IF NOT EXISTS version (
    table_name CHAR(32) NOT NULL,
    table_version INTEGER DEFAULT 0 NOT NULL,
    CONSTRAINT version_t_name_idx UNIQUE (table_name)
)";

impl Store {
    /// Opens (creating the file if needed) `sqlite://PATH` and creates missing tables.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let path = url
            .strip_prefix("sqlite://")
            .ok_or_else(|| StoreError::Url(url.to_string()))?;
        if path.is_empty() {
            return Err(StoreError::Url(url.to_string()));
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await?;
        let s = Store { pool };
        s.migrate().await?;
        Ok(s)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::query(CREATE_VERSION).execute(&self.pool).await?;
        sqlx::query(CREATE_DISPATCHER).execute(&self.pool).await?;
        sqlx::query(
            "INSERT OR IGNORE INTO version (table_name, table_version) VALUES ('dispatcher', 9)",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every `dispatcher` row: the readable ones, and the others with the reason.
    pub async fn dispatcher_rows(&self) -> Result<(Vec<DispatcherRow>, Vec<BadRow>), StoreError> {
        let rows = sqlx::query("SELECT id, setid, destination, socket, state, probe_mode, weight, priority, attrs, description FROM dispatcher ORDER BY id").fetch_all(&self.pool).await?;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for r in rows {
            let id: Option<i64> = r.try_get("id").ok();
            let read = || -> Result<DispatcherRow, String> {
                let int = |c: &str| {
                    r.try_get::<i64, _>(c)
                        .map_err(|_| format!("column {c} is not an integer"))
                };
                let opt_text = |c: &str| {
                    r.try_get::<Option<String>, _>(c)
                        .map_err(|_| format!("column {c} is not text"))
                };
                let weight = match r.try_get::<String, _>("weight") {
                    Ok(w) => w,
                    Err(_) => int("weight").map(|w| w.to_string())?,
                };
                Ok(DispatcherRow {
                    id: int("id")?,
                    setid: int("setid")?,
                    destination: r
                        .try_get("destination")
                        .map_err(|_| "column destination is not text".to_string())?,
                    socket: opt_text("socket")?,
                    state: int("state")?,
                    probe_mode: int("probe_mode")?,
                    weight,
                    priority: int("priority")?,
                    attrs: opt_text("attrs")?,
                    description: opt_text("description")?,
                })
            };
            match read() {
                Ok(row) => good.push(row),
                Err(reason) => bad.push(BadRow { id, reason }),
            }
        }
        Ok((good, bad))
    }

    /// Inserts a destination; returns its id.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_dispatcher(
        &self,
        setid: i64,
        destination: &str,
        state: i64,
        weight: &str,
        priority: i64,
        attrs: &str,
        description: &str,
    ) -> Result<i64, StoreError> {
        let r = sqlx::query("INSERT INTO dispatcher (setid, destination, state, weight, priority, attrs, description) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(setid)
            .bind(destination)
            .bind(state)
            .bind(weight)
            .bind(priority)
            .bind(attrs)
            .bind(description)
            .execute(&self.pool)
            .await?;
        Ok(r.last_insert_rowid())
    }

    /// Deletes a set's destination; returns the rows removed.
    pub async fn delete_dispatcher(
        &self,
        setid: i64,
        destination: &str,
    ) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM dispatcher WHERE setid = ? AND destination = ?")
                .bind(setid)
                .bind(destination)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// Writes a destination's state (OpenSIPS codes: 0 active, 1 inactive, 2 probing).
    pub async fn set_dispatcher_state(
        &self,
        setid: i64,
        destination: &str,
        state: i64,
    ) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("UPDATE dispatcher SET state = ? WHERE setid = ? AND destination = ?")
                .bind(state)
                .bind(setid)
                .bind(destination)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// Runs raw SQL (tests and tools that seed tables the way an OpenSIPS operator would).
    pub async fn execute(&self, sql: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(sql).execute(&self.pool).await?.rows_affected())
    }
}

#[cfg(test)]
mod tests;
