//! The `[dns]` section: the DNS servers asked for next hops given as names (RFC 3263), how
//! long a query may take, and the cache (size, answers served stale while the servers do
//! not answer, how long a missing name is remembered).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use sip_proxy::dns::DnsConfig;

use crate::config::{err, ConfigError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// `["127.0.0.1:53"]`; empty: the system's resolv.conf.
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default = "d_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "d_attempts")]
    pub attempts: u64,
    #[serde(default = "d_cache")]
    pub cache_size: u64,
    #[serde(default = "d_stale")]
    pub stale_for_s: u64,
    #[serde(default = "d_negative")]
    pub negative_ttl_s: u64,
    #[serde(default = "d_waiting")]
    pub max_waiting: u64,
}

fn d_timeout() -> u64 {
    2000
}
fn d_attempts() -> u64 {
    2
}
fn d_cache() -> u64 {
    10_000
}
fn d_stale() -> u64 {
    3600
}
fn d_negative() -> u64 {
    30
}
fn d_waiting() -> u64 {
    10_000
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns {
            servers: Vec::new(),
            timeout_ms: d_timeout(),
            attempts: d_attempts(),
            cache_size: d_cache(),
            stale_for_s: d_stale(),
            negative_ttl_s: d_negative(),
            max_waiting: d_waiting(),
        }
    }
}

/// The validated section: the driver's client settings and the core's cache settings.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
    pub attempts: usize,
    pub cache: DnsConfig,
}

pub fn validate(raw: &RawDns, errors: &mut Vec<ConfigError>) -> DnsSettings {
    let mut servers = Vec::new();
    for (i, s) in raw.servers.iter().enumerate() {
        // "127.0.0.1" means port 53
        let parsed = s.parse::<SocketAddr>().or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Ok(a) => servers.push(a),
            Err(_) => errors.push(err(
                format!("dns.servers[{i}]"),
                format!("{s:?}"),
                "not an IP address with an optional port (\"127.0.0.1:5353\")",
            )),
        }
    }
    let mut range = |key: &str, v: u64, lo: u64, hi: u64| {
        if !(lo..=hi).contains(&v) {
            errors.push(err(
                format!("dns.{key}"),
                v,
                format!("must be between {lo} and {hi}"),
            ));
        }
    };
    range("timeout_ms", raw.timeout_ms, 50, 30_000);
    range("attempts", raw.attempts, 1, 5);
    range("cache_size", raw.cache_size, 1, 10_000_000);
    range("stale_for_s", raw.stale_for_s, 0, 7 * 86_400);
    range("negative_ttl_s", raw.negative_ttl_s, 0, 86_400);
    range("max_waiting", raw.max_waiting, 1, 1_000_000);
    let timeout = Duration::from_millis(raw.timeout_ms);
    // every server tried `attempts` times, and a second for the A/AAAA after SRV
    let wait = timeout * (raw.attempts.max(1) as u32) * (servers.len().max(1) as u32)
        + Duration::from_secs(1);
    DnsSettings {
        servers,
        timeout,
        attempts: raw.attempts as usize,
        cache: DnsConfig {
            cache_size: raw.cache_size as usize,
            stale_for: Duration::from_secs(raw.stale_for_s),
            negative_ttl: Duration::from_secs(raw.negative_ttl_s),
            wait: wait.min(Duration::from_secs(30)),
            max_waiting: raw.max_waiting as usize,
            ..DnsConfig::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_take_a_default_port_and_bad_values_are_named() {
        let raw = RawDns {
            servers: vec!["127.0.0.1:5353".into(), "::1".into(), "dns.example".into()],
            attempts: 0,
            ..RawDns::default()
        };
        let mut errors = Vec::new();
        let s = validate(&raw, &mut errors);
        assert_eq!(
            s.servers,
            vec![
                "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["dns.servers[2]", "dns.attempts"]);
    }

    #[test]
    fn defaults_wait_for_every_attempt() {
        let mut errors = Vec::new();
        let s = validate(&RawDns::default(), &mut errors);
        assert!(errors.is_empty());
        assert_eq!(s.cache.wait, Duration::from_secs(5));
        assert_eq!(s.cache.stale_for, Duration::from_secs(3600));
    }

    #[test]
    fn destinations_may_be_names_but_balancer_nodes_may_not() {
        let d = crate::config::parse_destination("k", "sip:FS.example.test;transport=tcp").unwrap();
        let q = d.name.expect("a name");
        assert_eq!(
            (&*q.host, q.port, q.transport),
            ("fs.example.test", None, Some(sip_proxy::Transport::Tcp))
        );
        let d = crate::config::parse_destination("k", "sip:fs.example.test:5080").unwrap();
        assert_eq!(d.name.unwrap().port, Some(5080));
        assert!(crate::config::parse_destination("k", "sip:10.0.0.5")
            .unwrap()
            .name
            .is_none());
        for bad in ["sip:fs_1.example", "sip:-x.example", "sip:1.2.3"] {
            let e = crate::config::parse_destination("k", bad).unwrap_err();
            assert!(e.why.contains("valid host name"), "{bad}: {e:?}");
        }
        let e = crate::config::parse_address_destination("n", "sip:fs.example.test").unwrap_err();
        assert!(e.why.contains("IP address"), "{e:?}");
    }
}
