//! The number routing tables as OpenSIPS 3 writes them: `dialplan` (version 5),
//! `dr_gateways` (6), `dr_carriers` (3), `dr_rules` (4), `dr_groups` (2) and `dbaliases` (2). Read whole at
//! start and on reload; a row whose columns do not have the types the schema gives is
//! reported with its id and left out (what the values mean is checked by the tables'
//! builders in `sip-proxy`).

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::{BadRow, Store, StoreError};

pub(crate) const CREATE: [&str; 6] = [
    "CREATE TABLE IF NOT EXISTS dialplan (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    dpid INTEGER NOT NULL,
    pr INTEGER DEFAULT 0 NOT NULL,
    match_op INTEGER NOT NULL,
    match_exp CHAR(64) NOT NULL,
    match_flags INTEGER DEFAULT 0 NOT NULL,
    subst_exp CHAR(64) DEFAULT NULL,
    repl_exp CHAR(32) DEFAULT NULL,
    timerec CHAR(255) DEFAULT NULL,
    disabled INTEGER DEFAULT 0 NOT NULL,
    attrs CHAR(255) DEFAULT NULL
)",
    "CREATE TABLE IF NOT EXISTS dr_gateways (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    gwid CHAR(64) NOT NULL,
    type INTEGER DEFAULT 0 NOT NULL,
    address CHAR(128) NOT NULL,
    strip INTEGER DEFAULT 0 NOT NULL,
    pri_prefix CHAR(16) DEFAULT NULL,
    attrs CHAR(255) DEFAULT NULL,
    probe_mode INTEGER DEFAULT 0 NOT NULL,
    state INTEGER DEFAULT 0 NOT NULL,
    socket CHAR(128) DEFAULT NULL,
    description CHAR(128) DEFAULT NULL,
    CONSTRAINT dr_gw_idx UNIQUE (gwid)
)",
    "CREATE TABLE IF NOT EXISTS dr_carriers (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    carrierid CHAR(64) NOT NULL,
    gwlist CHAR(255) NOT NULL,
    flags INTEGER DEFAULT 0 NOT NULL,
    sort_alg CHAR(1) DEFAULT 'N' NOT NULL,
    state INTEGER DEFAULT 0 NOT NULL,
    attrs CHAR(255) DEFAULT NULL,
    description CHAR(128) DEFAULT NULL,
    CONSTRAINT dr_carrier_idx UNIQUE (carrierid)
)",
    "CREATE TABLE IF NOT EXISTS dr_rules (
    ruleid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    groupid CHAR(255) NOT NULL,
    prefix CHAR(64) NOT NULL,
    timerec CHAR(255) DEFAULT NULL,
    priority INTEGER DEFAULT 0 NOT NULL,
    routeid CHAR(255) DEFAULT NULL,
    gwlist CHAR(255) NOT NULL,
    sort_alg CHAR(1) DEFAULT 'N' NOT NULL,
    sort_profile INTEGER DEFAULT NULL,
    attrs CHAR(255) DEFAULT NULL,
    description CHAR(128) DEFAULT NULL
)",
    "CREATE TABLE IF NOT EXISTS dbaliases (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    alias_username CHAR(64) DEFAULT '' NOT NULL,
    alias_domain CHAR(64) DEFAULT '' NOT NULL,
    username CHAR(64) DEFAULT '' NOT NULL,
    domain CHAR(64) DEFAULT '' NOT NULL,
    CONSTRAINT alias_idx UNIQUE (alias_username, alias_domain)
)",
    "CREATE TABLE IF NOT EXISTS dr_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    username CHAR(64) NOT NULL,
    domain CHAR(128) DEFAULT '' NOT NULL,
    groupid INTEGER DEFAULT 0 NOT NULL,
    description CHAR(128) DEFAULT NULL,
    CONSTRAINT dr_groups_idx UNIQUE (username, domain)
)",
];

/// The `version` rows of these tables.
pub(crate) const VERSIONS: &str =
    "('dialplan', 5), ('dr_gateways', 6), ('dr_carriers', 3), ('dr_rules', 4), ('dbaliases', 2), ('dr_groups', 2)";

/// One `dialplan` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DialplanRow {
    pub id: i64,
    pub dpid: i64,
    pub pr: i64,
    pub match_op: i64,
    pub match_exp: String,
    pub match_flags: i64,
    pub subst_exp: String,
    pub repl_exp: String,
    pub timerec: String,
    pub disabled: bool,
    pub attrs: String,
}

/// One `dr_gateways` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrGatewayRow {
    pub id: i64,
    pub gwid: String,
    pub gw_type: i64,
    pub address: String,
    pub strip: i64,
    pub pri_prefix: String,
    pub attrs: String,
    pub probe_mode: i64,
    pub state: i64,
    pub description: String,
}

/// One `dr_carriers` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrCarrierRow {
    pub id: i64,
    pub carrierid: String,
    pub gwlist: String,
    pub flags: i64,
    pub sort_alg: String,
    pub state: i64,
    pub attrs: String,
    pub description: String,
}

/// One `dr_rules` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrRuleRow {
    pub ruleid: i64,
    pub groupid: String,
    pub prefix: String,
    pub timerec: String,
    pub priority: i64,
    pub gwlist: String,
    pub sort_alg: String,
    pub attrs: String,
    pub description: String,
}

/// One `dr_groups` row: the drouting group of the user `username@domain` (an empty domain:
/// any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrGroupRow {
    pub id: i64,
    pub username: String,
    pub domain: String,
    pub groupid: i64,
    pub description: String,
}

/// One `dbaliases` row: `alias_username@alias_domain` is `username@domain`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AliasRow {
    pub id: i64,
    pub alias_username: String,
    pub alias_domain: String,
    pub username: String,
    pub domain: String,
}

/// Typed reads of one row, each failure naming its column.
struct Cols<'a>(&'a SqliteRow);

impl Cols<'_> {
    fn int(&self, c: &str) -> Result<i64, String> {
        self.0
            .try_get::<i64, _>(c)
            .map_err(|_| format!("column {c} is not an integer"))
    }

    /// Text, NULL read as empty.
    fn text(&self, c: &str) -> Result<String, String> {
        self.0
            .try_get::<Option<String>, _>(c)
            .map(Option::unwrap_or_default)
            .map_err(|_| format!("column {c} is not text"))
    }
}

/// Reads every row of `sql` with `read`; rows it refuses become [`BadRow`]s.
async fn rows<T>(
    s: &Store,
    sql: &str,
    key: &str,
    read: impl Fn(&Cols) -> Result<T, String>,
) -> Result<(Vec<T>, Vec<BadRow>), StoreError> {
    let all = sqlx::query(sql).fetch_all(&s.pool).await?;
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for r in &all {
        let c = Cols(r);
        match read(&c) {
            Ok(v) => good.push(v),
            Err(reason) => bad.push(BadRow {
                id: r.try_get(key).ok(),
                reason,
            }),
        }
    }
    Ok((good, bad))
}

impl Store {
    /// The `dialplan` table, by id.
    pub async fn dialplan_rows(&self) -> Result<(Vec<DialplanRow>, Vec<BadRow>), StoreError> {
        rows(self, "SELECT * FROM dialplan ORDER BY id", "id", |c| {
            Ok(DialplanRow {
                id: c.int("id")?,
                dpid: c.int("dpid")?,
                pr: c.int("pr")?,
                match_op: c.int("match_op")?,
                match_exp: c.text("match_exp")?,
                match_flags: c.int("match_flags")?,
                subst_exp: c.text("subst_exp")?,
                repl_exp: c.text("repl_exp")?,
                timerec: c.text("timerec")?,
                disabled: c.int("disabled")? != 0,
                attrs: c.text("attrs")?,
            })
        })
        .await
    }

    /// The `dr_gateways` table, by id.
    pub async fn dr_gateway_rows(&self) -> Result<(Vec<DrGatewayRow>, Vec<BadRow>), StoreError> {
        rows(self, "SELECT * FROM dr_gateways ORDER BY id", "id", |c| {
            Ok(DrGatewayRow {
                id: c.int("id")?,
                gwid: c.text("gwid")?,
                gw_type: c.int("type")?,
                address: c.text("address")?,
                strip: c.int("strip")?,
                pri_prefix: c.text("pri_prefix")?,
                attrs: c.text("attrs")?,
                probe_mode: c.int("probe_mode")?,
                state: c.int("state")?,
                description: c.text("description")?,
            })
        })
        .await
    }

    /// The `dr_carriers` table, by id.
    pub async fn dr_carrier_rows(&self) -> Result<(Vec<DrCarrierRow>, Vec<BadRow>), StoreError> {
        rows(self, "SELECT * FROM dr_carriers ORDER BY id", "id", |c| {
            Ok(DrCarrierRow {
                id: c.int("id")?,
                carrierid: c.text("carrierid")?,
                gwlist: c.text("gwlist")?,
                flags: c.int("flags")?,
                sort_alg: c.text("sort_alg")?,
                state: c.int("state")?,
                attrs: c.text("attrs")?,
                description: c.text("description")?,
            })
        })
        .await
    }

    /// The `dr_rules` table, by rule id.
    pub async fn dr_rule_rows(&self) -> Result<(Vec<DrRuleRow>, Vec<BadRow>), StoreError> {
        rows(
            self,
            "SELECT * FROM dr_rules ORDER BY ruleid",
            "ruleid",
            |c| {
                Ok(DrRuleRow {
                    ruleid: c.int("ruleid")?,
                    groupid: c.text("groupid")?,
                    prefix: c.text("prefix")?,
                    timerec: c.text("timerec")?,
                    priority: c.int("priority")?,
                    gwlist: c.text("gwlist")?,
                    sort_alg: c.text("sort_alg")?,
                    attrs: c.text("attrs")?,
                    description: c.text("description")?,
                })
            },
        )
        .await
    }

    /// The `dr_groups` table, by id.
    pub async fn dr_group_rows(&self) -> Result<(Vec<DrGroupRow>, Vec<BadRow>), StoreError> {
        rows(self, "SELECT * FROM dr_groups ORDER BY id", "id", |c| {
            Ok(DrGroupRow {
                id: c.int("id")?,
                username: c.text("username")?,
                domain: c.text("domain")?,
                groupid: c.int("groupid")?,
                description: c.text("description")?,
            })
        })
        .await
    }

    /// The `dbaliases` table, by id.
    pub async fn alias_rows(&self) -> Result<(Vec<AliasRow>, Vec<BadRow>), StoreError> {
        rows(self, "SELECT * FROM dbaliases ORDER BY id", "id", |c| {
            Ok(AliasRow {
                id: c.int("id")?,
                alias_username: c.text("alias_username")?,
                alias_domain: c.text("alias_domain")?,
                username: c.text("username")?,
                domain: c.text("domain")?,
            })
        })
        .await
    }
}
