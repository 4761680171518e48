//! The `[cluster]` section: this process as one node of several sharing runtime state on
//! Redis (`store::shared`). Its id must be unique among the nodes; its address is where the
//! other nodes send what only it can deliver (a user's connection it holds).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{err, ConfigError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// 1..=65535, unique among the nodes.
    pub node_id: u64,
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]`, `rediss://…` (TLS), `redis+unix:///PATH`.
    pub redis: String,
    /// This node's SIP address as the other nodes reach it: a UDP listener's address
    /// (default: the first one, its advertised address).
    #[serde(default)]
    pub address: Option<String>,
    /// Prefix of every key and channel (several clusters on one Redis).
    #[serde(default = "d_prefix")]
    pub key_prefix: String,
    /// How long connecting to Redis, or one command, may take.
    #[serde(default = "d_timeout")]
    pub timeout_ms: u64,
    /// At start, how long to wait for this node's id to be free (a previous run of this
    /// node that was killed holds it up to 5 s).
    #[serde(default = "d_claim_wait")]
    pub claim_wait_s: u64,
}

fn d_prefix() -> String {
    "sb".into()
}
fn d_timeout() -> u64 {
    2000
}
fn d_claim_wait() -> u64 {
    7
}

/// The validated section.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub node_id: u16,
    pub redis: String,
    /// `None`: the first UDP listener's advertised address (known once the config is read).
    pub address: Option<SocketAddr>,
    pub key_prefix: String,
    pub timeout: Duration,
    pub claim_wait: Duration,
}

pub fn validate(raw: &RawCluster, errors: &mut Vec<ConfigError>) -> ClusterSettings {
    if !(1..=65535).contains(&raw.node_id) {
        errors.push(err(
            "cluster.node_id",
            raw.node_id,
            "must be 1..=65535, and unique among the nodes",
        ));
    }
    let url = raw.redis.trim();
    let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
    if !schemes.iter().any(|s| url.starts_with(s)) || url.len() <= 8 {
        errors.push(err(
            "cluster.redis",
            format!("{:?}", store::redact(url)),
            "not a Redis URL (redis://HOST:PORT, rediss://HOST:PORT for TLS, redis+unix:///PATH)",
        ));
    }
    let address = match raw.address.as_deref().map(str::parse::<SocketAddr>) {
        None => None,
        Some(Ok(a)) if !a.ip().is_unspecified() && a.port() != 0 => Some(a),
        Some(_) => {
            errors.push(err(
                "cluster.address",
                format!("{:?}", raw.address.as_deref().unwrap_or("")),
                "not an IP address and port the other nodes can send to (\"10.0.0.1:5060\")",
            ));
            None
        }
    };
    if !store::shared::valid_prefix(&raw.key_prefix) {
        errors.push(err(
            "cluster.key_prefix",
            format!("{:?}", raw.key_prefix),
            "letters, digits, '_', '-' or '.', at most 64",
        ));
    }
    if !(100..=60_000).contains(&raw.timeout_ms) {
        errors.push(err(
            "cluster.timeout_ms",
            raw.timeout_ms,
            "must be 100..=60000",
        ));
    }
    if raw.claim_wait_s > 600 {
        errors.push(err(
            "cluster.claim_wait_s",
            raw.claim_wait_s,
            "must be at most 600",
        ));
    }
    ClusterSettings {
        node_id: raw.node_id.clamp(1, 65535) as u16,
        redis: url.to_string(),
        address,
        key_prefix: raw.key_prefix.clone(),
        timeout: Duration::from_millis(raw.timeout_ms),
        claim_wait: Duration::from_secs(raw.claim_wait_s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (ClusterSettings, Vec<String>) {
        let raw: RawCluster = toml::from_str(text).unwrap();
        let mut errors = Vec::new();
        let s = validate(&raw, &mut errors);
        (s, errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn a_valid_section_and_its_defaults() {
        let (s, e) = check("node_id = 2\nredis = \"redis://127.0.0.1:6379\"");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s.node_id, 2);
        assert_eq!(s.key_prefix, "sb");
        assert_eq!(s.address, None);
        assert_eq!(s.timeout, Duration::from_secs(2));
        let (s, e) = check(
            "node_id = 65535\nredis = \"rediss://:pw@r.example:6380/2\"\naddress = \"10.0.0.1:5060\"",
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s.address, Some("10.0.0.1:5060".parse().unwrap()));
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let (_, e) = check(
            "node_id = 0\nredis = \"http://:secret@x\"\naddress = \"0.0.0.0:5060\"\nkey_prefix = \"a*b\"\ntimeout_ms = 5",
        );
        let all = e.join("\n");
        for key in [
            "cluster.node_id",
            "cluster.redis",
            "cluster.address",
            "cluster.key_prefix",
            "cluster.timeout_ms",
        ] {
            assert!(all.contains(key), "{key} not refused in {all}");
        }
        assert!(!all.contains("secret"), "the password is not shown: {all}");
        let (_, e) = check("node_id = 70000\nredis = \"redis://h\"");
        assert!(e.join("").contains("cluster.node_id"));
        assert!(
            toml::from_str::<RawCluster>("node_id = 1\nredis = \"redis://h\"\nnodes = 2").is_err()
        );
    }
}
