//! The `[balancer]` section: resource-based balancing of calls (OpenSIPS `load_balancer`).

use std::sync::Arc;

use serde::Deserialize;
use sip_proxy::balancer::{parse_resources, LbFlags, LbNodeConfig, LbRoute};

use crate::config::{err, parse_destination, ConfigError};

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
        let dest = match parse_destination("dst_uri", &r.dst_uri) {
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
        let dest = match parse_destination(&format!("{key}.uri"), &n.uri) {
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
    BalancerSettings {
        nodes,
        route: LbRoute {
            group: r.group,
            resources: r.resources.clone(),
            flags,
            methods,
            count_from_nodes: r.count_calls_from_nodes,
        },
        from_database,
    }
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
}
