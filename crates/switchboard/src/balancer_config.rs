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
            resources,
            enabled: n.enabled,
            description: n.description.clone(),
        });
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
    BalancerSettings {
        nodes,
        route: LbRoute {
            group: r.group,
            resources: r.resources.clone(),
            flags,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_nodes_are_refused_with_key_and_reason() {
        let raw: RawBalancer = toml::from_str(
            r#"
resources = ["pstn", "fax"]
flags = "sx"
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
        for (k, why) in [
            ("balancer.node[1].resources", "negative"),
            ("balancer.node[2].resources", "name=capacity"),
            ("balancer.node[3].uri", "twice"),
            ("balancer.flags", "unknown flag"),
            ("balancer.resources[1]", "unknown resource"),
        ] {
            assert!(
                got.iter().any(|(gk, gw)| gk == k && gw.contains(why)),
                "{k}: {got:?}"
            );
        }
    }
}
