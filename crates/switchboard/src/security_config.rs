//! The `[security]` section: the flood and scan defence (per-source budgets, bans with
//! back-off, allowed networks, scanner User-Agents) and what the proxy tells strangers
//! (the Server header, reason phrases), and the size of its reply cache.

use std::time::Duration;

use serde::Deserialize;
use sip_proxy::pike::{Budget, PikeConfig, DEFAULT_SCANNERS};
use sip_proxy::registrar::parse_cidr;

use crate::config::{err, ConfigError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecurity {
    /// Per-source budgets and bans; false: no flood defence at all.
    #[serde(default = "d_true")]
    pub flood_defence: bool,
    #[serde(default = "d_register")]
    pub rate_register: u32,
    #[serde(default = "d_invite")]
    pub rate_invite: u32,
    #[serde(default = "d_options")]
    pub rate_options: u32,
    #[serde(default = "d_other")]
    pub rate_other: u32,
    #[serde(default = "d_unauth")]
    pub rate_unauthenticated: u32,
    #[serde(default = "d_drops")]
    pub ban_after_drops: u32,
    #[serde(default = "d_ban")]
    pub ban_time_s: u64,
    #[serde(default = "d_ban_max")]
    pub ban_max_s: u64,
    #[serde(default = "d_prefix")]
    pub ipv6_prefix: u8,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default = "d_scanners")]
    pub scanner_user_agents: Vec<String>,
    #[serde(default = "d_server")]
    pub server_header: String,
    #[serde(default)]
    pub detailed_reasons: bool,
    #[serde(default = "d_cache")]
    pub reply_cache_mb: u64,
}

fn d_true() -> bool {
    true
}
fn d_register() -> u32 {
    20
}
fn d_invite() -> u32 {
    100
}
fn d_options() -> u32 {
    20
}
fn d_other() -> u32 {
    300
}
fn d_unauth() -> u32 {
    10
}
fn d_drops() -> u32 {
    100
}
fn d_ban() -> u64 {
    60
}
fn d_ban_max() -> u64 {
    3600
}
fn d_prefix() -> u8 {
    64
}
fn d_scanners() -> Vec<String> {
    DEFAULT_SCANNERS.iter().map(|s| s.to_string()).collect()
}
fn d_server() -> String {
    sip_proxy::SERVER.into()
}
fn d_cache() -> u64 {
    16
}

impl Default for RawSecurity {
    fn default() -> Self {
        toml::from_str("").expect("every key has a default")
    }
}

/// The validated section.
#[derive(Debug, Clone)]
pub struct SecuritySettings {
    /// The flood defence, unless turned off.
    pub pike: Option<PikeConfig>,
    pub server_header: String,
    pub detailed_reasons: bool,
    pub reply_cache_bytes: usize,
}

/// Validates `[security]`, pushing every refusal.
pub fn validate(r: &RawSecurity, errors: &mut Vec<ConfigError>) -> SecuritySettings {
    let mut allow = Vec::new();
    for (i, a) in r.allow.iter().enumerate() {
        match parse_cidr(a) {
            Some(n) => allow.push(n),
            None => errors.push(err(
                format!("security.allow[{i}]"),
                format!("{a:?}"),
                "must be an address or network, e.g. 203.0.113.0/24",
            )),
        }
    }
    if !(1..=128).contains(&r.ipv6_prefix) {
        errors.push(err(
            "security.ipv6_prefix",
            r.ipv6_prefix,
            "must be 1..=128",
        ));
    }
    if r.ban_time_s == 0 || r.ban_time_s > 86_400 {
        errors.push(err(
            "security.ban_time_s",
            r.ban_time_s,
            "must be 1..=86400",
        ));
    }
    if r.ban_max_s < r.ban_time_s {
        errors.push(err(
            "security.ban_max_s",
            r.ban_max_s,
            "must be at least ban_time_s",
        ));
    }
    if r.ban_after_drops == 0 {
        errors.push(err(
            "security.ban_after_drops",
            0,
            "must be positive (rate_* = 0 turns a budget off)",
        ));
    }
    for (i, s) in r.scanner_user_agents.iter().enumerate() {
        if s.trim().is_empty() {
            errors.push(err(
                format!("security.scanner_user_agents[{i}]"),
                "\"\"",
                "an empty pattern would match every User-Agent",
            ));
        }
    }
    if r.server_header.bytes().any(|b| b < b' ' || b == 0x7f) {
        errors.push(err(
            "security.server_header",
            format!("{:?}", r.server_header),
            "must be one line of printable characters",
        ));
    }
    if !(1..=4096).contains(&r.reply_cache_mb) {
        errors.push(err(
            "security.reply_cache_mb",
            r.reply_cache_mb,
            "must be 1..=4096",
        ));
    }
    let pike = r.flood_defence.then(|| PikeConfig {
        register: Budget::per_second(r.rate_register),
        invite: Budget::per_second(r.rate_invite),
        options: Budget::per_second(r.rate_options),
        other: Budget::per_second(r.rate_other),
        unauthenticated: Budget::per_second(r.rate_unauthenticated),
        ban_after_drops: r.ban_after_drops.max(1),
        ban_time: Duration::from_secs(r.ban_time_s.max(1)),
        ban_max: Duration::from_secs(r.ban_max_s.max(r.ban_time_s)),
        ipv6_prefix: r.ipv6_prefix.clamp(1, 128),
        allow,
        scanners: r
            .scanner_user_agents
            .iter()
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect(),
        ..PikeConfig::default()
    });
    SecuritySettings {
        pike,
        server_header: r.server_header.trim().to_string(),
        detailed_reasons: r.detailed_reasons,
        reply_cache_bytes: (r.reply_cache_mb.clamp(1, 4096) as usize) << 20,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_every_refusal_is_named() {
        let mut e = vec![];
        let s = validate(&RawSecurity::default(), &mut e);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s.server_header, "switchboard");
        let p = s.pike.unwrap();
        assert_eq!(p.invite, Budget::per_second(100));
        assert!(p.scanners.contains(&"friendly-scanner".to_string()));
        let raw: RawSecurity = toml::from_str(
            "allow = [\"10.0.0.0/33\"]\nipv6_prefix = 0\nban_time_s = 0\nban_after_drops = 0\nscanner_user_agents = [\" \"]\nserver_header = \"a\\nb\"\nreply_cache_mb = 0",
        )
        .unwrap();
        let mut e = vec![];
        validate(&raw, &mut e);
        let keys: Vec<&str> = e.iter().map(|x| x.key.as_str()).collect();
        for k in [
            "security.allow[0]",
            "security.ipv6_prefix",
            "security.ban_time_s",
            "security.ban_after_drops",
            "security.scanner_user_agents[0]",
            "security.server_header",
            "security.reply_cache_mb",
        ] {
            assert!(keys.contains(&k), "{k} in {keys:?}");
        }
        let off: RawSecurity = toml::from_str("flood_defence = false").unwrap();
        assert!(validate(&off, &mut vec![]).pike.is_none());
    }
}
