//! The `[balancer]` section: resource-based balancing of calls (OpenSIPS `load_balancer`).

use std::sync::Arc;

use serde::Deserialize;
use sip_proxy::balancer::{parse_resources, LbFlags, LbNodeConfig, LbRoute, LbRule, LbTarget};

use crate::config::{err, parse_address_destination, ConfigError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBalancer {
    /// The group calls are balanced over.
    #[serde(default = "d_group")]
    pub group: i64,
    /// The resources a call needs (`["pstn"]`).
    pub resources: Vec<String>,
    /// OpenSIPS `lb_start` flags: r (relative), s (shuffle ties), n (allow overload).
    #[serde(default)]
    pub flags: String,
    #[serde(default)]
    pub node: Vec<RawNode>,
    /// `config` (the nodes here) or `database` (the OpenSIPS `load_balancer` table).
    #[serde(default = "d_source")]
    pub source: String,
    /// Initial requests of these methods go through the balancer; the rest through the
    /// dispatcher. Only INVITEs are counted.
    #[serde(default = "d_methods")]
    pub methods: Vec<String>,
    /// OpenSIPS `lb_count_call`: calls a node sends (FreeSWITCH calling out) count on it.
    #[serde(default)]
    pub count_calls_from_nodes: bool,
    /// Kinds of traffic sent to other groups, first match wins.
    #[serde(default)]
    pub rule: Vec<RawRule>,
}

/// `[[balancer.rule]]`: a kind of traffic (by source network, Request-URI domain or number
/// prefix) balanced over another group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub prefixes: Vec<String>,
    pub group: i64,
    /// Default: the section's `resources`.
    pub resources: Option<Vec<String>>,
    /// Default: the section's `flags`.
    pub flags: Option<String>,
}

fn d_methods() -> Vec<String> {
    vec!["INVITE".into()]
}

fn d_source() -> String {
    "config".into()
}

fn d_group() -> i64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub id: Option<i64>,
    #[serde(default = "d_group")]
    pub group: i64,
    pub uri: String,
    /// `pstn=500;vm=100`
    pub resources: String,
    #[serde(default = "d_true")]
    pub enabled: bool,
    #[serde(default)]
    pub description: String,
}

fn d_true() -> bool {
    true
}

/// The validated section.
#[derive(Debug, Clone)]
pub struct BalancerSettings {
    pub nodes: Vec<LbNodeConfig>,
    pub route: LbRoute,
    /// Nodes from the `load_balancer` table instead of `nodes`.
    pub from_database: bool,
}

/// `load_balancer` rows as nodes; a bad row is skipped with its id and the reason.
pub fn nodes_from_rows(rows: &[store::LoadBalancerRow]) -> (Vec<LbNodeConfig>, Vec<String>) {
    let mut nodes: Vec<LbNodeConfig> = Vec::new();
    let mut problems = Vec::new();
    for r in rows {
        let resources = match parse_resources(&r.resources) {
            Ok(v) => v,
            Err(why) => {
                problems.push(format!("load_balancer row {}: resources {why}", r.id));
                continue;
            }
        };
        let dest = match parse_address_destination("dst_uri", &r.dst_uri) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("load_balancer row {}: {e}", r.id));
                continue;
            }
        };
        if nodes.iter().any(|n| *n.uri == *dest.uri) {
            problems.push(format!(
                "load_balancer row {}: {} listed twice",
                r.id, r.dst_uri
            ));
            continue;
        }
        nodes.push(LbNodeConfig {
            id: r.id,
            group: r.group_id,
            uri: Arc::clone(&dest.uri),
            transport: dest.transport,
            addr: dest.addr,
            live: sip_proxy::balancer::fs_sources(&r.resources),
            resources,
            enabled: true,
            description: r.description.clone().unwrap_or_default(),
        });
    }
    (nodes, problems)
}

/// Validates `[balancer]`, pushing every refusal to `errors`.
pub fn validate(r: &RawBalancer, errors: &mut Vec<ConfigError>) -> BalancerSettings {
    let mut nodes = Vec::new();
    for (i, n) in r.node.iter().enumerate() {
        let key = format!("balancer.node[{i}]");
        let resources = match parse_resources(&n.resources) {
            Ok(v) => v,
            Err(why) => {
                errors.push(err(
                    format!("{key}.resources"),
                    format!("{:?}", n.resources),
                    why,
                ));
                continue;
            }
        };
        let dest = match parse_address_destination(&format!("{key}.uri"), &n.uri) {
            Ok(d) => d,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if nodes.iter().any(|x: &LbNodeConfig| *x.uri == *dest.uri) {
            errors.push(err(
                format!("{key}.uri"),
                format!("{:?}", n.uri),
                "listed twice",
            ));
            continue;
        }
        nodes.push(LbNodeConfig {
            id: n.id.unwrap_or(i as i64 + 1),
            group: n.group,
            uri: Arc::clone(&dest.uri),
            transport: dest.transport,
            addr: dest.addr,
            live: sip_proxy::balancer::fs_sources(&n.resources),
            resources,
            enabled: n.enabled,
            description: n.description.clone(),
        });
    }
    let from_database = match r.source.as_str() {
        "config" => false,
        "database" => true,
        other => {
            errors.push(err(
                "balancer.source",
                format!("{other:?}"),
                "must be config or database",
            ));
            false
        }
    };
    if from_database && !r.node.is_empty() {
        errors.push(err(
            "balancer.node",
            format!("{} nodes", r.node.len()),
            "source = \"database\" reads the load_balancer table: remove the [[balancer.node]] tables",
        ));
    }
    let flags = LbFlags::parse(&r.flags).unwrap_or_else(|why| {
        errors.push(err("balancer.flags", format!("{:?}", r.flags), why));
        LbFlags::default()
    });
    if r.resources.is_empty() {
        errors.push(err(
            "balancer.resources",
            "[]",
            "name the resources a call needs, e.g. [\"pstn\"]",
        ));
    }
    if !nodes.iter().any(|n| n.group == r.group) && !r.node.is_empty() {
        errors.push(err(
            "balancer.group",
            r.group,
            "no balancer.node is in this group",
        ));
    }
    for (i, res) in r.resources.iter().enumerate() {
        let offered = nodes
            .iter()
            .filter(|n| n.group == r.group)
            .any(|n| n.resources.iter().any(|(x, _)| x == res));
        if !offered && !nodes.is_empty() {
            errors.push(err(
                format!("balancer.resources[{i}]"),
                format!("{res:?}"),
                format!("unknown resource: no node of group {} offers it", r.group),
            ));
        }
    }
    let mut methods = Vec::new();
    for (i, m) in r.methods.iter().enumerate() {
        let up = m.trim().to_ascii_uppercase();
        let why = if up.is_empty() || !up.bytes().all(|b| b.is_ascii_uppercase()) {
            Some("not a SIP method name")
        } else if matches!(up.as_str(), "ACK" | "CANCEL" | "BYE" | "PRACK" | "UPDATE") {
            Some("only initial requests are routed; this method follows its dialog or transaction")
        } else if methods.contains(&up) {
            Some("listed twice")
        } else {
            None
        };
        match why {
            Some(why) => errors.push(err(format!("balancer.methods[{i}]"), format!("{m:?}"), why)),
            None => methods.push(up),
        }
    }
    let rules = validate_rules(r, &nodes, flags, errors);
    BalancerSettings {
        nodes,
        route: LbRoute {
            group: r.group,
            resources: r.resources.clone(),
            flags,
            methods,
            count_from_nodes: r.count_calls_from_nodes,
            rules,
        },
        from_database,
    }
}

fn validate_rules(
    r: &RawBalancer,
    nodes: &[LbNodeConfig],
    flags: LbFlags,
    errors: &mut Vec<ConfigError>,
) -> Vec<LbRule> {
    let mut rules = Vec::new();
    for (i, raw) in r.rule.iter().enumerate() {
        let key = format!("balancer.rule[{i}]");
        let before = errors.len();
        let mut sources = Vec::new();
        for (j, c) in raw.sources.iter().enumerate() {
            match sip_proxy::registrar::parse_cidr(c) {
                Some(n) => sources.push(n),
                None => errors.push(err(
                    format!("{key}.sources[{j}]"),
                    format!("{c:?}"),
                    "not an address or network (10.0.0.0/8, 2001:db8::/32)",
                )),
            }
        }
        for (j, p) in raw.prefixes.iter().enumerate() {
            if p.is_empty() || p.bytes().any(|b| b <= b' ' || b == b'@') {
                errors.push(err(
                    format!("{key}.prefixes[{j}]"),
                    format!("{p:?}"),
                    "a number prefix such as \"+44\" or \"00\"",
                ));
            }
        }
        if raw.sources.is_empty() && raw.domains.is_empty() && raw.prefixes.is_empty() {
            errors.push(err(
                key.clone(),
                "no criteria",
                "give sources, domains or prefixes (a rule without any would take every call)",
            ));
        }
        let rflags = match &raw.flags {
            Some(f) => LbFlags::parse(f).unwrap_or_else(|why| {
                errors.push(err(format!("{key}.flags"), format!("{f:?}"), why));
                flags
            }),
            None => flags,
        };
        let resources = raw.resources.clone().unwrap_or_else(|| r.resources.clone());
        if !nodes.is_empty() {
            if !nodes.iter().any(|n| n.group == raw.group) {
                errors.push(err(
                    format!("{key}.group"),
                    raw.group,
                    "no balancer.node is in this group",
                ));
            } else {
                for res in &resources {
                    if !nodes
                        .iter()
                        .filter(|n| n.group == raw.group)
                        .any(|n| n.resources.iter().any(|(x, _)| x == res))
                    {
                        errors.push(err(
                            format!("{key}.resources"),
                            format!("{res:?}"),
                            format!("no node of group {} offers it", raw.group),
                        ));
                    }
                }
            }
        }
        if errors.len() > before {
            continue;
        }
        rules.push(LbRule {
            name: if raw.name.is_empty() {
                format!("rule {}", i + 1)
            } else {
                raw.name.clone()
            },
            sources,
            domains: raw.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            prefixes: raw.prefixes.clone(),
            target: LbTarget {
                group: raw.group,
                resources,
                flags: rflags,
            },
        });
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_become_nodes_and_bad_rows_are_reported() {
        let row = |id: i64, uri: &str, res: &str| store::LoadBalancerRow {
            id,
            group_id: 1,
            dst_uri: uri.into(),
            resources: res.into(),
            ..Default::default()
        };
        let (nodes, problems) = nodes_from_rows(&[
            row(1, "sip:127.0.0.1:5080", "pstn=30"),
            row(2, "sip:127.0.0.1:5082", "pstn=-1"),
            row(3, "sip:fs.example:5060", "pstn=1"),
            row(4, "sip:127.0.0.1:5080", "pstn=2"),
        ]);
        assert_eq!(nodes.len(), 1);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("row 2") && problems[0].contains("negative"));
        assert!(problems[1].contains("row 3") && problems[1].contains("IP address"));
        assert!(problems[2].contains("twice"));
    }

    #[test]
    fn bad_nodes_are_refused_with_key_and_reason() {
        let raw: RawBalancer = toml::from_str(
            r#"
resources = ["pstn", "fax"]
flags = "sx"
methods = ["INVITE", "BYE", "MES SAGE", "invite", "MESSAGE"]
[[node]]
uri = "sip:127.0.0.1:5086"
resources = "pstn=fs://pw@127.0.0.1:0"
[[node]]
uri = "sip:127.0.0.1:5080"
resources = "pstn=30"
[[node]]
uri = "sip:127.0.0.1:5082"
resources = "pstn=-5"
[[node]]
uri = "sip:127.0.0.1:5084"
resources = "pstn"
[[node]]
uri = "sip:127.0.0.1:5080"
resources = "pstn=1"
"#,
        )
        .unwrap();
        let mut e = vec![];
        let s = validate(&raw, &mut e);
        let got: Vec<(String, String)> = e.iter().map(|e| (e.key.clone(), e.why.clone())).collect();
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.route.methods, vec!["INVITE", "MESSAGE"]);
        for (k, why) in [
            ("balancer.node[2].resources", "negative"),
            ("balancer.node[3].resources", "name=capacity"),
            ("balancer.node[4].uri", "twice"),
            ("balancer.flags", "unknown flag"),
            ("balancer.resources[1]", "unknown resource"),
            ("balancer.methods[1]", "only initial requests"),
            ("balancer.methods[2]", "not a SIP method"),
            ("balancer.methods[3]", "twice"),
            ("balancer.node[0].resources", "port must be 1-65535"),
        ] {
            assert!(
                got.iter().any(|(gk, gw)| gk == k && gw.contains(why)),
                "{k}: {got:?}"
            );
        }
    }

    #[test]
    fn rules_are_validated_with_their_keys() {
        let raw: RawBalancer = toml::from_str(
            r#"
resources = ["pstn"]
[[node]]
uri = "sip:127.0.0.1:5080"
resources = "pstn=30"
[[node]]
uri = "sip:127.0.0.1:5090"
group = 3
resources = "pstn=30"
[[rule]]
name = "carriers"
sources = ["203.0.113.0/24"]
group = 3
[[rule]]
sources = ["203.0.113.0/33"]
group = 3
[[rule]]
group = 3
[[rule]]
domains = ["x"]
group = 7
[[rule]]
prefixes = ["+ 4"]
group = 3
resources = ["fax"]
flags = "q"
"#,
        )
        .unwrap();
        let mut e = vec![];
        let s = validate(&raw, &mut e);
        let got: Vec<(String, String)> = e.iter().map(|e| (e.key.clone(), e.why.clone())).collect();
        assert_eq!(s.route.rules.len(), 1);
        assert_eq!(s.route.rules[0].target.group, 3);
        assert_eq!(s.route.rules[0].target.resources, vec!["pstn"]);
        for (k, why) in [
            ("balancer.rule[1].sources[0]", "not an address"),
            ("balancer.rule[2]", "give sources"),
            ("balancer.rule[3].group", "no balancer.node"),
            ("balancer.rule[4].prefixes[0]", "number prefix"),
            ("balancer.rule[4].resources", "no node of group 3"),
            ("balancer.rule[4].flags", "unknown flag"),
        ] {
            assert!(
                got.iter().any(|(gk, gw)| gk == k && gw.contains(why)),
                "{k}: {got:?}"
            );
        }
    }
}
