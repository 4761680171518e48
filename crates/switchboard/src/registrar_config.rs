//! The `[registrar]` section, and the bridge between the registrar and the store:
//! subscribers loaded as credentials, bindings as `location` rows (write-behind).

use std::time::Duration;

use serde::Deserialize;
use sip_proxy::registrar::{
    parse_cidr, Credential, FailPolicy, Fork, RegistrarConfig, RegistrarMode,
};
use sip_wire::auth::Algorithm;

use crate::config::{err, ConfigError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistrar {
    #[serde(default = "d_mode")]
    pub mode: String,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default = "d_true")]
    pub auth: bool,
    #[serde(default = "d_algorithms")]
    pub algorithms: Vec<String>,
    /// Domains whose challenges offer SHA-256 first, then `algorithms`.
    #[serde(default)]
    pub sha256_domains: Vec<String>,
    #[serde(default = "d_nonce")]
    pub nonce_expires_s: u64,
    #[serde(default)]
    pub secret: String,
    #[serde(default = "d_default_expires")]
    pub default_expires_s: i64,
    #[serde(default = "d_min_expires")]
    pub min_expires_s: i64,
    #[serde(default = "d_max_expires")]
    pub max_expires_s: i64,
    #[serde(default)]
    pub max_contacts: i64,
    #[serde(default = "d_policy")]
    pub max_contacts_policy: String,
    #[serde(default = "d_fork")]
    pub fork: String,
    #[serde(default = "d_ping")]
    pub ping_interval_s: u64,
    #[serde(default)]
    pub ping_all: bool,
    #[serde(default = "d_missed")]
    pub ping_max_missed: i64,
    #[serde(default)]
    pub ping_from: Option<String>,
    #[serde(default = "d_window")]
    pub auth_fail_window_s: u64,
    #[serde(default = "d_slow")]
    pub auth_slow_after: u32,
    #[serde(default = "d_ban")]
    pub auth_ban_after: u32,
    #[serde(default = "d_ban_time")]
    pub auth_ban_time_s: u64,
    /// Failures for this many usernames from one source ban the source.
    #[serde(default = "d_ban_users")]
    pub auth_ban_after_users: u32,
    /// Failures in all from one source within the window that ban the source.
    #[serde(default = "d_ban_total")]
    pub auth_ban_after_total: u32,
    #[serde(default)]
    pub trusted: Vec<String>,
    #[serde(default = "d_user_calls")]
    pub user_calls: String,
    #[serde(default = "d_true")]
    pub persist: bool,
    /// Subscribers added through the API or CLI keep only their HA1 hashes.
    #[serde(default)]
    pub store_ha1: bool,
}

fn d_mode() -> String {
    "local".into()
}
fn d_true() -> bool {
    true
}
fn d_algorithms() -> Vec<String> {
    vec!["MD5".into()]
}
fn d_nonce() -> u64 {
    30
}
fn d_default_expires() -> i64 {
    3600
}
fn d_min_expires() -> i64 {
    60
}
fn d_max_expires() -> i64 {
    7200
}
fn d_policy() -> String {
    "replace-oldest".into()
}
fn d_fork() -> String {
    "serial".into()
}
fn d_ping() -> u64 {
    10
}
fn d_missed() -> i64 {
    3
}
fn d_window() -> u64 {
    60
}
fn d_slow() -> u32 {
    3
}
fn d_ban() -> u32 {
    10
}
fn d_ban_users() -> u32 {
    5
}
fn d_ban_total() -> u32 {
    50
}
fn d_ban_time() -> u64 {
    300
}
fn d_user_calls() -> String {
    "direct".into()
}

/// The validated section.
#[derive(Debug, Clone)]
pub struct RegistrarSettings {
    pub core: RegistrarConfig,
    /// Write bindings to the database and load them at start.
    pub persist: bool,
    /// Subscribers added through the API or CLI keep only their HA1 hashes.
    pub store_ha1: bool,
}

fn random_secret() -> Vec<u8> {
    use std::io::Read;
    let mut b = vec![0u8; 32];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        // no urandom: a per-process value still keeps nonces unguessable enough to tell
        // ours from another server's
        let s = format!("{:?}{:?}", std::time::SystemTime::now(), std::process::id());
        b = s.into_bytes();
    }
    b
}

/// Validates `[registrar]`, pushing every refusal to `errors`.
#[allow(clippy::field_reassign_with_default)]
pub fn validate(r: &RawRegistrar, errors: &mut Vec<ConfigError>) -> RegistrarSettings {
    let mut c = RegistrarConfig::default();
    c.mode = match r.mode.as_str() {
        "local" => RegistrarMode::Local,
        "forward" => RegistrarMode::Forward,
        m => {
            errors.push(err(
                "registrar.mode",
                format!("{m:?}"),
                "must be local or forward",
            ));
            RegistrarMode::Local
        }
    };
    for (i, d) in r.domains.iter().enumerate() {
        let ok = !d.is_empty()
            && d.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
        if !ok {
            errors.push(err(
                format!("registrar.domains[{i}]"),
                format!("{d:?}"),
                "must be a host name or IP address",
            ));
        }
    }
    c.domains = r.domains.iter().map(|d| d.to_ascii_lowercase()).collect();
    c.auth = r.auth;
    c.algorithms.clear();
    for (i, a) in r.algorithms.iter().enumerate() {
        match Algorithm::parse(a) {
            Some(a) if !c.algorithms.contains(&a) => c.algorithms.push(a),
            Some(_) => errors.push(err(
                format!("registrar.algorithms[{i}]"),
                format!("{a:?}"),
                "listed twice",
            )),
            None => errors.push(err(
                format!("registrar.algorithms[{i}]"),
                format!("{a:?}"),
                "must be SHA-256 or MD5",
            )),
        }
    }
    for (i, d) in r.sha256_domains.iter().enumerate() {
        let d = d.to_ascii_lowercase();
        if !c.domains.is_empty() && !c.domains.contains(&d) {
            errors.push(err(
                format!("registrar.sha256_domains[{i}]"),
                format!("{d:?}"),
                "not one of registrar.domains",
            ));
        }
        c.sha256_domains.push(d);
    }
    if c.algorithms.is_empty() && r.auth {
        errors.push(err(
            "registrar.algorithms",
            "[]",
            "at least one algorithm is needed",
        ));
    }
    if r.nonce_expires_s == 0 || r.nonce_expires_s > 3600 {
        errors.push(err(
            "registrar.nonce_expires_s",
            r.nonce_expires_s,
            "must be 1..=3600",
        ));
    }
    c.nonce_expires = r.nonce_expires_s;
    c.secret = if r.secret.is_empty() {
        random_secret()
    } else {
        if r.secret.len() < 16 {
            errors.push(err(
                "registrar.secret",
                "(hidden)",
                "must be at least 16 characters",
            ));
        }
        r.secret.as_bytes().to_vec()
    };
    let mut secs = |key: &str, v: i64| -> u32 {
        if !(0..=u32::MAX as i64).contains(&v) {
            errors.push(err(
                format!("registrar.{key}"),
                v,
                "must be 0..=4294967295 seconds",
            ));
            return 0;
        }
        v as u32
    };
    c.default_expires = secs("default_expires_s", r.default_expires_s);
    c.min_expires = secs("min_expires_s", r.min_expires_s);
    c.max_expires = secs("max_expires_s", r.max_expires_s);
    if c.max_expires < c.min_expires {
        errors.push(err(
            "registrar.max_expires_s",
            c.max_expires,
            "must be at least min_expires_s",
        ));
    }
    if c.default_expires < c.min_expires || c.default_expires > c.max_expires {
        errors.push(err(
            "registrar.default_expires_s",
            c.default_expires,
            "must be between min_expires_s and max_expires_s",
        ));
    }
    if r.max_contacts < 0 {
        errors.push(err(
            "registrar.max_contacts",
            r.max_contacts,
            "must be 0 (unlimited) or more",
        ));
    }
    c.max_contacts = r.max_contacts.max(0) as usize;
    c.reject_over_max = match r.max_contacts_policy.as_str() {
        "replace-oldest" => false,
        "reject" => true,
        p => {
            errors.push(err(
                "registrar.max_contacts_policy",
                format!("{p:?}"),
                "must be replace-oldest or reject",
            ));
            false
        }
    };
    c.fork = match r.fork.as_str() {
        "serial" => Fork::Serial,
        "parallel" => Fork::Parallel,
        f => {
            errors.push(err(
                "registrar.fork",
                format!("{f:?}"),
                "must be serial or parallel",
            ));
            Fork::Serial
        }
    };
    c.ping_interval = Duration::from_secs(r.ping_interval_s);
    c.ping_all = r.ping_all;
    if !(1..=100).contains(&r.ping_max_missed) {
        errors.push(err(
            "registrar.ping_max_missed",
            r.ping_max_missed,
            "must be 1..=100",
        ));
    }
    c.ping_max_missed = r.ping_max_missed.clamp(1, 100) as u8;
    c.ping_from = r.ping_from.clone().unwrap_or_else(|| {
        format!(
            "sip:pinger@{}",
            c.domains
                .first()
                .map(String::as_str)
                .unwrap_or("switchboard.invalid")
        )
    });
    c.fail = FailPolicy {
        window: Duration::from_secs(r.auth_fail_window_s.max(1)),
        slow_after: r.auth_slow_after,
        ban_after: r.auth_ban_after,
        ban_time: Duration::from_secs(r.auth_ban_time_s),
        ban_after_users: r.auth_ban_after_users,
        ban_after_total: r.auth_ban_after_total,
    };
    for (i, t) in r.trusted.iter().enumerate() {
        match parse_cidr(t) {
            Some(n) => c.trusted.push(n),
            None => errors.push(err(
                format!("registrar.trusted[{i}]"),
                format!("{t:?}"),
                "must be an address or network, e.g. 10.0.0.0/8",
            )),
        }
    }
    c.direct_user_calls = match r.user_calls.as_str() {
        "direct" => true,
        "media-server" => false,
        u => {
            errors.push(err(
                "registrar.user_calls",
                format!("{u:?}"),
                "must be direct or media-server",
            ));
            true
        }
    };
    RegistrarSettings {
        core: c,
        persist: r.persist,
        store_ha1: r.store_ha1,
    }
}

// ----- store bridge ------------------------------------------------------------------------

/// A subscriber row as credentials: the stored HA1s, or computed from the password.
pub fn credential(row: &store::SubscriberRow) -> Result<Credential, String> {
    if !row.password.is_empty() {
        return Ok(Credential::from_password(
            &row.username,
            &row.domain,
            &row.password,
        ));
    }
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex(&row.ha1, 32) && (row.ha1_sha256.is_empty() || hex(&row.ha1_sha256, 64)) {
        return Ok(Credential {
            ha1_md5: row.ha1.to_ascii_lowercase(),
            ha1_sha256: row.ha1_sha256.to_ascii_lowercase(),
        });
    }
    if hex(&row.ha1_sha256, 64) && row.ha1.is_empty() {
        return Ok(Credential {
            ha1_md5: String::new(),
            ha1_sha256: row.ha1_sha256.to_ascii_lowercase(),
        });
    }
    Err("no password and no valid ha1 (32 hex) or ha1_sha256 (64 hex)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> RawRegistrar {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults_validate() {
        let mut e = vec![];
        let s = validate(&raw(""), &mut e);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(
            s.core.algorithms,
            vec![Algorithm::Md5],
            "one challenge by default"
        );
        assert_eq!(s.core.secret.len(), 32);
        assert!(s.persist);
    }

    #[test]
    fn bad_values_are_refused_by_key() {
        let mut e = vec![];
        validate(
            &raw("mode = \"proxy\"\nalgorithms = [\"SHA-512\"]\nmin_expires_s = -1\nmax_contacts = -2\ntrusted = [\"10.0.0.0/40\"]\nfork = \"x\"\nuser_calls = \"y\"\nsecret = \"short\"\ndomains = [\"a b\"]"),
            &mut e,
        );
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "registrar.mode",
            "registrar.algorithms[0]",
            "registrar.min_expires_s",
            "registrar.max_contacts",
            "registrar.trusted[0]",
            "registrar.fork",
            "registrar.user_calls",
            "registrar.secret",
            "registrar.domains[0]",
        ] {
            assert!(keys.contains(&k), "{k} not in {keys:?}");
        }
    }

    #[test]
    fn credentials_from_password_or_ha1() {
        let mut r = store::SubscriberRow {
            username: "a".into(),
            domain: "d".into(),
            password: "p".into(),
            ..Default::default()
        };
        let c = credential(&r).unwrap();
        assert_eq!(
            c.ha1_md5,
            sip_wire::auth::ha1(Algorithm::Md5, "a", "d", "p")
        );
        r.password.clear();
        r.ha1 = c.ha1_md5.to_uppercase();
        assert_eq!(credential(&r).unwrap().ha1_md5, c.ha1_md5);
        r.ha1 = "xyz".into();
        assert!(credential(&r).is_err());
    }
}
