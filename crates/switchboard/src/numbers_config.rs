//! The `[numbers]` section: what happens to a dialled number per kind of sender
//! (`[[numbers.route]]`), and the tables it uses — aliases, dialplan rules, carrier
//! gateways, carriers and prefix rules — from the configuration or from the OpenSIPS tables
//! (`dbaliases`, `dialplan`, `dr_gateways`, `dr_carriers`, `dr_rules`) in `[database]`.

use std::collections::HashMap;

use serde::Deserialize;
use sip_proxy::numbers::dialplan::{Dialplan, DpRow};
use sip_proxy::numbers::drouting::{CarrierRow, Drouting, GatewayRow, RuleRow};
use sip_proxy::numbers::routing::{NumberRoute, NumberTables, Sender, Target};

use crate::config::{err, ConfigError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNumbers {
    /// `config`: the tables below; `database`: the OpenSIPS tables.
    #[serde(default = "d_source")]
    pub source: String,
    /// `"alias" = "user"` or `"alias@domain" = "user@domain"`.
    #[serde(default)]
    pub aliases: HashMap<String, String>,
    /// `"user@domain" = group` (or `"user"`): the callers' drouting groups (`dr_groups`).
    #[serde(default)]
    pub groups: HashMap<String, i64>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    #[serde(default)]
    pub dialplan: Vec<RawDialplan>,
    #[serde(default)]
    pub gateway: Vec<RawGateway>,
    #[serde(default)]
    pub carrier: Vec<RawCarrier>,
    #[serde(default)]
    pub rule: Vec<RawRule>,
}

fn d_source() -> String {
    "config".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub from: Vec<String>,
    pub dialplan: Option<i64>,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub min_length: u32,
    pub to: String,
    #[serde(default)]
    pub group: i64,
    /// The caller's group from `dr_groups`, `group` when it has none.
    #[serde(default)]
    pub caller_group: bool,
    pub code: Option<u16>,
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDialplan {
    pub dpid: i64,
    #[serde(default)]
    pub priority: i64,
    /// `equal` or `regex`.
    #[serde(rename = "match", default = "d_match")]
    pub match_op: String,
    pub match_exp: String,
    #[serde(default)]
    pub case_insensitive: bool,
    #[serde(default)]
    pub subst_exp: String,
    #[serde(default)]
    pub repl_exp: String,
    #[serde(default)]
    pub attrs: String,
}

fn d_match() -> String {
    "regex".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub id: String,
    pub address: String,
    #[serde(default)]
    pub strip: i64,
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "d_active")]
    pub state: String,
    #[serde(default)]
    pub attrs: String,
    #[serde(default)]
    pub description: String,
}

fn d_active() -> String {
    "active".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCarrier {
    pub id: String,
    pub gateways: String,
    /// `order` (as listed) or `weight`.
    #[serde(default = "d_order")]
    pub sort: String,
    #[serde(default)]
    pub first_only: bool,
    #[serde(default = "d_active")]
    pub state: String,
    #[serde(default)]
    pub attrs: String,
    #[serde(default)]
    pub description: String,
}

fn d_order() -> String {
    "order".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(default = "d_group")]
    pub group: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub priority: i64,
    pub gateways: String,
    #[serde(default)]
    pub attrs: String,
    #[serde(default)]
    pub description: String,
}

fn d_group() -> String {
    "0".into()
}

/// The validated section.
#[derive(Debug, Clone)]
pub struct NumbersSettings {
    pub routes: Vec<NumberRoute>,
    /// Read the OpenSIPS tables (else the configuration's rows below).
    pub from_database: bool,
    pub aliases: Vec<store::AliasRow>,
    pub groups: Vec<store::DrGroupRow>,
    pub dialplan: Vec<DpRow>,
    pub gateways: Vec<GatewayRow>,
    pub carriers: Vec<CarrierRow>,
    pub rules: Vec<RuleRow>,
}

fn state_code(key: &str, s: &str, errors: &mut Vec<ConfigError>) -> i64 {
    match s {
        "active" => 0,
        "disabled" => 1,
        other => {
            errors.push(err(
                key,
                format!("{other:?}"),
                "must be \"active\" or \"disabled\"",
            ));
            0
        }
    }
}

/// `user[@domain]`, checked.
fn user_at(key: &str, s: &str, errors: &mut Vec<ConfigError>) -> (String, String) {
    let (u, d) = s.split_once('@').unwrap_or((s, ""));
    let ok = |x: &str| {
        x.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-_.!~*'()&=$,;?/%".contains(&b))
    };
    if u.is_empty() || !ok(u) || !ok(d) {
        errors.push(err(
            key,
            format!("{s:?}"),
            "must be user or user@domain (URI user characters)",
        ));
    }
    (u.to_string(), d.to_ascii_lowercase())
}

/// Validates the section. `user_auth`: the registrar authenticates users' calls (a route
/// from users to carriers needs it, or anyone could call carriers through us).
pub fn validate(
    raw: &RawNumbers,
    user_auth: bool,
    errors: &mut Vec<ConfigError>,
) -> NumbersSettings {
    let from_database = match raw.source.as_str() {
        "config" => false,
        "database" => true,
        other => {
            errors.push(err(
                "numbers.source",
                format!("{other:?}"),
                "must be \"config\" or \"database\"",
            ));
            false
        }
    };
    if from_database
        && (!raw.aliases.is_empty()
            || !raw.groups.is_empty()
            || !raw.dialplan.is_empty()
            || !raw.gateway.is_empty()
            || !raw.carrier.is_empty()
            || !raw.rule.is_empty())
    {
        errors.push(err(
            "numbers.source",
            "\"database\"",
            "the tables come from the database: remove aliases, groups and the [[numbers.dialplan]], [[numbers.gateway]], [[numbers.carrier]] and [[numbers.rule]] tables",
        ));
    }
    let mut routes = Vec::new();
    for (i, r) in raw.route.iter().enumerate() {
        let key = format!("numbers.route[{i}]");
        let mut from = Vec::new();
        for (j, f) in r.from.iter().enumerate() {
            match f.as_str() {
                "any" => from.extend([Sender::Users, Sender::MediaServers, Sender::Carriers]),
                s => match Sender::parse(s) {
                    Some(x) => from.push(x),
                    None => errors.push(err(
                        format!("{key}.from[{j}]"),
                        format!("{f:?}"),
                        "must be \"users\", \"media-servers\", \"carriers\" or \"any\"",
                    )),
                },
            }
        }
        if r.from.is_empty() {
            errors.push(err(format!("{key}.from"), "[]", "name at least one sender"));
        }
        let digits = r.prefix.strip_prefix('+').unwrap_or(&r.prefix);
        if r.prefix.len() > 32
            || !digits
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"*#".contains(&b))
        {
            errors.push(err(
                format!("{key}.prefix"),
                format!("{:?}", r.prefix),
                "digits (or letters, * #) with an optional leading +, at most 32",
            ));
        }
        let to = match r.to.as_str() {
            "carriers" => Target::Carriers {
                group: r.group,
                by_caller: r.caller_group,
            },
            "location" => Target::Location,
            "media-servers" => Target::MediaServers,
            "reject" => {
                let code = r.code.unwrap_or(403);
                if !(400..700).contains(&code) {
                    errors.push(err(format!("{key}.code"), code, "must be 400-699"));
                }
                let reason = r.reason.clone().unwrap_or_else(|| "Forbidden".into());
                if reason.bytes().any(|b| b < b' ' || b == 0x7f) {
                    errors.push(err(
                        format!("{key}.reason"),
                        format!("{reason:?}"),
                        "no control characters",
                    ));
                }
                Target::Reject { code, reason }
            }
            other => {
                errors.push(err(
                    format!("{key}.to"),
                    format!("{other:?}"),
                    "must be \"carriers\", \"location\", \"media-servers\" or \"reject\"",
                ));
                Target::MediaServers
            }
        };
        if r.caller_group && r.to != "carriers" {
            errors.push(err(
                format!("{key}.caller_group"),
                "true",
                "the caller's group is a carrier route's (to = \"carriers\")",
            ));
        }
        if r.to != "reject" && (r.code.is_some() || r.reason.is_some()) {
            errors.push(err(
                format!("{key}.code"),
                format!("{:?}", r.code),
                "code and reason belong to to = \"reject\"",
            ));
        }
        if matches!(to, Target::Carriers { .. }) && from.contains(&Sender::Users) && !user_auth {
            errors.push(err(
                format!("{key}.from"),
                "\"users\"",
                "users' calls to carriers need authentication: configure [registrar] with auth = true (or route only media servers' calls to carriers)",
            ));
        }
        routes.push(NumberRoute {
            from,
            dialplan: r.dialplan,
            prefix: r.prefix.clone(),
            min_length: r.min_length as usize,
            to,
        });
    }
    let mut aliases = Vec::new();
    let mut keys: Vec<&String> = raw.aliases.keys().collect();
    keys.sort();
    for (i, k) in keys.into_iter().enumerate() {
        let key = format!("numbers.aliases.{k}");
        let (au, ad) = user_at(&key, k, errors);
        let (u, d) = user_at(&key, &raw.aliases[k], errors);
        aliases.push(store::AliasRow {
            id: i as i64 + 1,
            alias_username: au,
            alias_domain: ad,
            username: u,
            domain: d,
        });
    }
    let mut gkeys: Vec<&String> = raw.groups.keys().collect();
    gkeys.sort();
    let groups = gkeys
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            let (u, d) = user_at(&format!("numbers.groups.{k}"), k, errors);
            store::DrGroupRow {
                id: i as i64 + 1,
                username: u,
                domain: d,
                groupid: raw.groups[k],
                description: String::new(),
            }
        })
        .collect();
    let dialplan = raw
        .dialplan
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let match_op = match d.match_op.as_str() {
                "equal" => 0,
                "regex" => 1,
                other => {
                    errors.push(err(
                        format!("numbers.dialplan[{i}].match"),
                        format!("{other:?}"),
                        "must be \"equal\" or \"regex\"",
                    ));
                    1
                }
            };
            DpRow {
                id: i as i64 + 1,
                dpid: d.dpid,
                pr: d.priority,
                match_op,
                match_exp: d.match_exp.clone(),
                match_flags: d.case_insensitive as i64,
                subst_exp: d.subst_exp.clone(),
                repl_exp: d.repl_exp.clone(),
                attrs: d.attrs.clone(),
                disabled: false,
            }
        })
        .collect();
    let gateways = raw
        .gateway
        .iter()
        .enumerate()
        .map(|(i, g)| GatewayRow {
            id: i as i64 + 1,
            gwid: g.id.clone(),
            gw_type: 0,
            address: g.address.clone(),
            strip: g.strip,
            pri_prefix: g.prefix.clone(),
            attrs: g.attrs.clone(),
            probe_mode: 0,
            state: state_code(&format!("numbers.gateway[{i}].state"), &g.state, errors),
            description: g.description.clone(),
        })
        .collect();
    let carriers = raw
        .carrier
        .iter()
        .enumerate()
        .map(|(i, c)| CarrierRow {
            id: i as i64 + 1,
            carrierid: c.id.clone(),
            gwlist: c.gateways.clone(),
            flags: c.first_only as i64,
            sort_alg: match c.sort.as_str() {
                "order" => "O".into(),
                "weight" => "W".into(),
                other => {
                    errors.push(err(
                        format!("numbers.carrier[{i}].sort"),
                        format!("{other:?}"),
                        "must be \"order\" or \"weight\"",
                    ));
                    "O".into()
                }
            },
            state: state_code(&format!("numbers.carrier[{i}].state"), &c.state, errors),
            attrs: c.attrs.clone(),
            description: c.description.clone(),
        })
        .collect();
    let rules = raw
        .rule
        .iter()
        .enumerate()
        .map(|(i, r)| RuleRow {
            ruleid: i as i64 + 1,
            groupid: r.group.clone(),
            prefix: r.prefix.clone(),
            timerec: String::new(),
            priority: r.priority,
            gwlist: r.gateways.clone(),
            attrs: r.attrs.clone(),
            description: r.description.clone(),
        })
        .collect();
    let s = NumbersSettings {
        routes,
        from_database,
        aliases,
        groups,
        dialplan,
        gateways,
        carriers,
        rules,
    };
    if !from_database {
        // the configuration's rows are checked now: a bad one is a configuration error
        let (_, problems) = build_tables(
            &s.aliases,
            &s.groups,
            &s.dialplan,
            &s.gateways,
            &s.carriers,
            &s.rules,
        );
        for p in problems {
            errors.push(err("numbers", "", config_row_names(&p)));
        }
    }
    s
}

/// A table problem in the configuration's words (`dr_gateways row 2` is `gateway[1]`).
fn config_row_names(p: &str) -> String {
    for (table, key) in [
        ("dialplan row ", "numbers.dialplan"),
        ("dr_gateways row ", "numbers.gateway"),
        ("dr_carriers row ", "numbers.carrier"),
        ("dr_rules row ", "numbers.rule"),
    ] {
        if let Some(rest) = p.strip_prefix(table) {
            if let Some((n, why)) = rest.split_once(':') {
                if let Ok(n) = n.trim().parse::<i64>() {
                    return format!("{key}[{}]:{why}", n - 1);
                }
            }
        }
    }
    p.to_string()
}

/// Builds the tables from rows; gives the problems of the rows skipped.
pub fn build_tables(
    aliases: &[store::AliasRow],
    groups: &[store::DrGroupRow],
    dialplan: &[DpRow],
    gateways: &[GatewayRow],
    carriers: &[CarrierRow],
    rules: &[RuleRow],
) -> (NumberTables, Vec<String>) {
    let (dialplan, mut problems) = Dialplan::build(dialplan);
    let (drouting, p) = Drouting::build(gateways, carriers, rules);
    problems.extend(p);
    let mut map = HashMap::new();
    for a in aliases {
        let key = (
            a.alias_username.clone(),
            a.alias_domain.to_ascii_lowercase(),
        );
        if a.alias_username.is_empty() || a.username.is_empty() {
            problems.push(format!("dbaliases row {}: empty user name", a.id));
            continue;
        }
        match map.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => problems.push(format!(
                "dbaliases row {}: alias {}@{} given twice",
                a.id, a.alias_username, a.alias_domain
            )),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((a.username.clone(), a.domain.to_ascii_lowercase()));
            }
        }
    }
    let mut gmap = HashMap::new();
    for g in groups {
        if g.username.is_empty() {
            problems.push(format!("dr_groups row {}: empty user name", g.id));
            continue;
        }
        let key = (g.username.clone(), g.domain.to_ascii_lowercase());
        if gmap.insert(key, g.groupid).is_some() {
            problems.push(format!(
                "dr_groups row {}: {}@{} given twice",
                g.id, g.username, g.domain
            ));
        }
    }
    (
        NumberTables {
            dialplan,
            drouting,
            aliases: map,
            groups: gmap,
        },
        problems,
    )
}

/// The tables from the OpenSIPS tables in the database; rows that cannot be read or used
/// are reported and skipped.
pub async fn tables_from_store(s: &store::Store) -> Result<(NumberTables, Vec<String>), String> {
    let e = |e: store::StoreError| e.to_string();
    let (dp, b1) = s.dialplan_rows().await.map_err(e)?;
    let (gw, b2) = s.dr_gateway_rows().await.map_err(e)?;
    let (ca, b3) = s.dr_carrier_rows().await.map_err(e)?;
    let (ru, b4) = s.dr_rule_rows().await.map_err(e)?;
    let (al, b5) = s.alias_rows().await.map_err(e)?;
    let (gr, b6) = s.dr_group_rows().await.map_err(e)?;
    let mut problems: Vec<String> = [
        ("dialplan", b1),
        ("dr_gateways", b2),
        ("dr_carriers", b3),
        ("dr_rules", b4),
        ("dbaliases", b5),
        ("dr_groups", b6),
    ]
    .into_iter()
    .flat_map(|(table, bad)| {
        bad.into_iter().map(move |b| match b.id {
            Some(id) => format!("{table} row {id}: {}", b.reason),
            None => format!("{table}: {}", b.reason),
        })
    })
    .collect();
    let dp: Vec<DpRow> = dp
        .into_iter()
        .map(|r| DpRow {
            id: r.id,
            dpid: r.dpid,
            pr: r.pr,
            match_op: r.match_op,
            match_exp: r.match_exp,
            match_flags: r.match_flags,
            subst_exp: r.subst_exp,
            repl_exp: r.repl_exp,
            attrs: r.attrs,
            disabled: r.disabled,
        })
        .collect();
    let gw: Vec<GatewayRow> = gw
        .into_iter()
        .map(|r| GatewayRow {
            id: r.id,
            gwid: r.gwid,
            gw_type: r.gw_type,
            address: r.address,
            strip: r.strip,
            pri_prefix: r.pri_prefix,
            attrs: r.attrs,
            probe_mode: r.probe_mode,
            state: r.state,
            description: r.description,
        })
        .collect();
    let ca: Vec<CarrierRow> = ca
        .into_iter()
        .map(|r| CarrierRow {
            id: r.id,
            carrierid: r.carrierid,
            gwlist: r.gwlist,
            flags: r.flags,
            sort_alg: r.sort_alg,
            state: r.state,
            attrs: r.attrs,
            description: r.description,
        })
        .collect();
    let ru: Vec<RuleRow> = ru
        .into_iter()
        .map(|r| RuleRow {
            ruleid: r.ruleid,
            groupid: r.groupid,
            prefix: r.prefix,
            timerec: r.timerec,
            priority: r.priority,
            gwlist: r.gwlist,
            attrs: r.attrs,
            description: r.description,
        })
        .collect();
    let (t, p) = build_tables(&al, &gr, &dp, &gw, &ca, &ru);
    problems.extend(p);
    Ok((t, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> RawNumbers {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn routes_and_rows_from_the_configuration() {
        let r = raw(r##"
aliases = { "sales" = "1000", "support@example.test" = "1001@example.test" }
groups = { "vip@example.test" = 2 }
[[route]]
from = ["users", "media-servers"]
caller_group = true
dialplan = 1
prefix = "+"
min_length = 8
to = "carriers"
[[route]]
from = ["any"]
prefix = "9"
to = "reject"
code = 403
reason = "Forbidden (premium)"
[[dialplan]]
dpid = 1
match_exp = "^0([1-9][0-9]+)$"
subst_exp = "^0([1-9][0-9]+)$"
repl_exp = "+49\\1"
[[gateway]]
id = "de1"
address = "127.0.0.5:5060"
[[carrier]]
id = "de"
gateways = "de1"
[[rule]]
prefix = "+49"
gateways = "#de"
"##);
        let mut errors = Vec::new();
        let s = validate(&r, true, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.routes.len(), 2);
        assert_eq!(s.routes[1].from.len(), 3);
        let (t, problems) = build_tables(
            &s.aliases,
            &s.groups,
            &s.dialplan,
            &s.gateways,
            &s.carriers,
            &s.rules,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            t.aliases
                .get(&("support".to_string(), "example.test".to_string())),
            Some(&("1001".to_string(), "example.test".to_string()))
        );
        assert_eq!(
            t.dialplan.translate(1, "0301234").unwrap().output,
            "+49301234"
        );
    }

    #[test]
    fn bad_routes_and_rows_are_refused_by_name() {
        let r = raw(r##"
source = "ldap"
aliases = { "a b" = "1000" }
[[route]]
from = ["users", "robots"]
prefix = "+4x9!"
to = "carriers"
[[route]]
from = ["media-servers"]
to = "media-servers"
code = 404
caller_group = true
[[dialplan]]
dpid = 1
match = "glob"
match_exp = "^0(["
[[gateway]]
id = "de1"
address = "127.0.0.5 5060"
state = "off"
[[rule]]
prefix = "49a"
gateways = "nowhere"
"##);
        let mut errors = Vec::new();
        validate(&r, false, &mut errors);
        let text: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.key, e.why))
            .collect();
        for want in [
            "numbers.source",
            "numbers.aliases.a b",
            "numbers.route[0].from[1]",
            "numbers.route[0].prefix",
            "numbers.route[0].from: users' calls to carriers need authentication",
            "numbers.route[1].code",
            "numbers.route[1].caller_group",
            "numbers.dialplan[0].match",
            "numbers.gateway[0].state",
            "numbers: numbers.dialplan[0]:",
            "numbers: numbers.gateway[0]:",
            "numbers: numbers.rule[0]:",
        ] {
            assert!(
                text.iter().any(|t| t.starts_with(want)),
                "missing {want}: {text:#?}"
            );
        }
    }
}
