//! The number routing tables as OpenSIPS 3 writes them: `dialplan` (version 5),
//! `dr_gateways` (6), `dr_carriers` (3), `dr_rules` (4), `dr_groups` (2) and `dbaliases` (2). Read whole at
//! start and on reload; a row whose columns do not have the types the schema gives is
//! reported with its id and left out (what the values mean is checked by the tables'
//! builders in `sip-proxy`).

use crate::sql::Row;
use crate::{BadRow, Store, StoreError};

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

/// Reads every row of `table` by `key` with `read`; rows it refuses become
/// [`BadRow`]s.
async fn rows<T>(
    s: &Store,
    table: &'static str,
    key: &str,
    read: impl Fn(&Row) -> Result<T, String>,
) -> Result<(Vec<T>, Vec<BadRow>), StoreError> {
    let all = s.read(table, key).await?;
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for r in &all {
        match read(r) {
            Ok(v) => good.push(v),
            Err(reason) => bad.push(BadRow {
                id: r.int(key).ok(),
                reason,
            }),
        }
    }
    Ok((good, bad))
}

impl Store {
    /// The `dialplan` table, by id.
    pub async fn dialplan_rows(&self) -> Result<(Vec<DialplanRow>, Vec<BadRow>), StoreError> {
        rows(self, "dialplan", "id", |c| {
            Ok(DialplanRow {
                id: c.int("id")?,
                dpid: c.int("dpid")?,
                pr: c.int("pr")?,
                match_op: c.int("match_op")?,
                match_exp: c.text_or_empty("match_exp")?,
                match_flags: c.int("match_flags")?,
                subst_exp: c.text_or_empty("subst_exp")?,
                repl_exp: c.text_or_empty("repl_exp")?,
                timerec: c.text_or_empty("timerec")?,
                disabled: c.int("disabled")? != 0,
                attrs: c.text_or_empty("attrs")?,
            })
        })
        .await
    }

    /// The `dr_gateways` table, by id.
    pub async fn dr_gateway_rows(&self) -> Result<(Vec<DrGatewayRow>, Vec<BadRow>), StoreError> {
        rows(self, "dr_gateways", "id", |c| {
            Ok(DrGatewayRow {
                id: c.int("id")?,
                gwid: c.text_or_empty("gwid")?,
                gw_type: c.int("type")?,
                address: c.text_or_empty("address")?,
                strip: c.int("strip")?,
                pri_prefix: c.text_or_empty("pri_prefix")?,
                attrs: c.text_or_empty("attrs")?,
                probe_mode: c.int("probe_mode")?,
                state: c.int("state")?,
                description: c.text_or_empty("description")?,
            })
        })
        .await
    }

    /// The `dr_carriers` table, by id.
    pub async fn dr_carrier_rows(&self) -> Result<(Vec<DrCarrierRow>, Vec<BadRow>), StoreError> {
        rows(self, "dr_carriers", "id", |c| {
            Ok(DrCarrierRow {
                id: c.int("id")?,
                carrierid: c.text_or_empty("carrierid")?,
                gwlist: c.text_or_empty("gwlist")?,
                flags: c.int("flags")?,
                sort_alg: c.text_or_empty("sort_alg")?,
                state: c.int("state")?,
                attrs: c.text_or_empty("attrs")?,
                description: c.text_or_empty("description")?,
            })
        })
        .await
    }

    /// The `dr_rules` table, by rule id.
    pub async fn dr_rule_rows(&self) -> Result<(Vec<DrRuleRow>, Vec<BadRow>), StoreError> {
        rows(self, "dr_rules", "ruleid", |c| {
            Ok(DrRuleRow {
                ruleid: c.int("ruleid")?,
                groupid: c.text_or_empty("groupid")?,
                prefix: c.text_or_empty("prefix")?,
                timerec: c.text_or_empty("timerec")?,
                priority: c.int("priority")?,
                gwlist: c.text_or_empty("gwlist")?,
                sort_alg: c.text_or_empty("sort_alg")?,
                attrs: c.text_or_empty("attrs")?,
                description: c.text_or_empty("description")?,
            })
        })
        .await
    }

    /// The `dr_groups` table, by id.
    pub async fn dr_group_rows(&self) -> Result<(Vec<DrGroupRow>, Vec<BadRow>), StoreError> {
        rows(self, "dr_groups", "id", |c| {
            Ok(DrGroupRow {
                id: c.int("id")?,
                username: c.text_or_empty("username")?,
                domain: c.text_or_empty("domain")?,
                groupid: c.int("groupid")?,
                description: c.text_or_empty("description")?,
            })
        })
        .await
    }

    /// The `dbaliases` table, by id.
    pub async fn alias_rows(&self) -> Result<(Vec<AliasRow>, Vec<BadRow>), StoreError> {
        rows(self, "dbaliases", "id", |c| {
            Ok(AliasRow {
                id: c.int("id")?,
                alias_username: c.text_or_empty("alias_username")?,
                alias_domain: c.text_or_empty("alias_domain")?,
                username: c.text_or_empty("username")?,
                domain: c.text_or_empty("domain")?,
            })
        })
        .await
    }
}
