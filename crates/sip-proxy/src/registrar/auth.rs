//! Digest authentication of requests (RFC 3261 §22, RFC 7616, RFC 8760): stateless nonces
//! (HMAC of a timestamp and the realm under the server secret), `nc` replay tracking, the
//! credentials table, and the failure counter that slows and then bans a guessing source.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use sip_wire::auth::{constant_time_eq, expected_response, ha1, hex, hmac_sha256};
use sip_wire::auth::{Algorithm, Credentials};
use sip_wire::{HeaderName, Message};

/// A subscriber's secrets, kept as the HA1 of each algorithm (computed from a plain
/// password when the row has one, as OpenSIPS' `calculate_ha1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub ha1_md5: String,
    pub ha1_sha256: String,
}

impl Credential {
    /// From a plain password for `user@realm`.
    pub fn from_password(user: &str, realm: &str, password: &str) -> Credential {
        Credential {
            ha1_md5: ha1(Algorithm::Md5, user, realm, password),
            ha1_sha256: ha1(Algorithm::Sha256, user, realm, password),
        }
    }

    fn ha1(&self, a: Algorithm) -> &str {
        match a {
            Algorithm::Md5 => &self.ha1_md5,
            Algorithm::Sha256 => &self.ha1_sha256,
        }
    }
}

/// Limits for sources that keep failing authentication.
#[derive(Debug, Clone)]
pub struct FailPolicy {
    /// Failures counted within this window.
    pub window: Duration,
    /// After this many failures, each further reply is delayed (doubling, up to 8 s).
    pub slow_after: u32,
    /// After this many failures, the source is ignored for `ban_time`.
    pub ban_after: u32,
    pub ban_time: Duration,
}

impl Default for FailPolicy {
    fn default() -> Self {
        FailPolicy {
            window: Duration::from_secs(60),
            slow_after: 3,
            ban_after: 10,
            ban_time: Duration::from_secs(300),
        }
    }
}

/// What the credentials of a request amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated as this user.
    Ok(String),
    /// Send a fresh challenge; `stale` when the nonce only expired. `reason` completes the
    /// reason phrase.
    Challenge { stale: bool, reason: &'static str },
    /// Malformed credentials: `400` with this cause.
    Malformed(String),
}

/// (user, lowercase domain).
type UserKey = (Box<str>, Box<str>);

/// Nonce → its counter state.
type NcTable = HashMap<Box<str>, NcState>;

struct NcState {
    /// Highest nc accepted and a bitmap of the 64 below it.
    max: u32,
    seen: u64,
    expires_unix: u64,
}

struct Fails {
    count: u32,
    since: Instant,
    banned_until: Option<Instant>,
}

pub(crate) struct Authenticator {
    secret: Vec<u8>,
    pub algorithms: Vec<Algorithm>,
    nonce_expires: u64,
    policy: FailPolicy,
    seq: std::sync::atomic::AtomicU32,
    creds: RwLock<HashMap<UserKey, Credential>>,
    /// Nonce counters, sharded by nonce so concurrent checks rarely meet on one lock.
    nc: Box<[Mutex<NcTable>]>,
    fails: Mutex<HashMap<IpAddr, Fails>>,
    /// Bans in force (a lock-free "none" on the hot path).
    bans: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Authenticator {
    pub fn new(
        secret: Vec<u8>,
        algorithms: Vec<Algorithm>,
        nonce_expires: u64,
        policy: FailPolicy,
    ) -> Self {
        Authenticator {
            secret,
            algorithms,
            nonce_expires,
            policy,
            seq: std::sync::atomic::AtomicU32::new(0),
            creds: RwLock::new(HashMap::new()),
            nc: (0..16).map(|_| Mutex::new(HashMap::new())).collect(),
            fails: Mutex::new(HashMap::new()),
            bans: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    // ----- credentials ---------------------------------------------------------------

    pub fn set_credential(&self, user: &str, domain: &str, c: Credential) {
        let mut g = self.creds.write().unwrap_or_else(|p| p.into_inner());
        g.insert((user.into(), domain.to_ascii_lowercase().into()), c);
    }

    pub fn remove_credential(&self, user: &str, domain: &str) -> bool {
        let mut g = self.creds.write().unwrap_or_else(|p| p.into_inner());
        g.remove(&(user.into(), domain.to_ascii_lowercase().into()))
            .is_some()
    }

    pub fn replace_all(&self, all: Vec<(String, String, Credential)>) {
        let mut g = self.creds.write().unwrap_or_else(|p| p.into_inner());
        g.clear();
        for (u, d, c) in all {
            g.insert((u.into(), d.to_ascii_lowercase().into()), c);
        }
    }

    pub fn has_user(&self, user: &str, domain: &str) -> bool {
        let g = self.creds.read().unwrap_or_else(|p| p.into_inner());
        g.contains_key(&(user.into(), domain.to_ascii_lowercase().into()))
    }

    pub fn user_count(&self) -> usize {
        self.creds.read().map(|g| g.len()).unwrap_or(0)
    }

    // ----- nonces ----------------------------------------------------------------------

    fn mac(&self, ts: u32, seq: u32, realm: &str) -> String {
        let mut m = Vec::with_capacity(8 + realm.len());
        m.extend_from_slice(&ts.to_be_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(realm.as_bytes());
        hex(&hmac_sha256(&self.secret, &m)[..12])
    }

    /// A nonce for `realm` issued at `unix`: 8 hex digits of time, 8 of a sequence number
    /// (every challenge its own nonce, so `nc` counts per client) and 24 of HMAC.
    pub fn nonce(&self, unix: u64, realm: &str) -> String {
        let ts = unix as u32;
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{ts:08x}{seq:08x}{}", self.mac(ts, seq, realm))
    }

    /// `Some(issued_at)` when the nonce was issued here for `realm`.
    fn nonce_time(&self, nonce: &str, realm: &str) -> Option<u64> {
        if nonce.len() != 40 || !nonce.is_ascii() {
            return None;
        }
        let ts = u32::from_str_radix(&nonce[..8], 16).ok()?;
        let seq = u32::from_str_radix(&nonce[8..16], 16).ok()?;
        constant_time_eq(&nonce[16..], &self.mac(ts, seq, realm)).then_some(ts as u64)
    }

    /// The challenge header lines for `realm`, the preferred algorithm first (RFC 8760).
    pub fn challenge(&self, proxy: bool, unix: u64, realm: &str, stale: bool) -> Vec<String> {
        let name = if proxy {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        };
        let nonce = self.nonce(unix, realm);
        self.algorithms
            .iter()
            .map(|a| {
                format!(
                    "{name}: Digest realm=\"{realm}\", nonce=\"{nonce}\", qop=\"auth\", algorithm={}{}",
                    a.name(),
                    if stale { ", stale=true" } else { "" }
                )
            })
            .collect()
    }

    /// Checks the credentials of `msg` for `realm` (`proxy`: Proxy-Authorization).
    pub fn check(&self, msg: &Message, proxy: bool, realm: &str, unix: u64) -> Verdict {
        let hn = if proxy {
            HeaderName::ProxyAuthorization
        } else {
            HeaderName::Authorization
        };
        let mut found = None;
        for v in msg.all(hn) {
            match Credentials::parse(v) {
                Ok(c) if c.realm.eq_ignore_ascii_case(realm) => {
                    found = Some(c);
                    break;
                }
                Ok(_) => continue, // for another realm
                Err(e) => {
                    return Verdict::Malformed(format!(
                        "{}: {e}",
                        hn.as_str().unwrap_or("credentials")
                    ))
                }
            }
        }
        let Some(c) = found else {
            return Verdict::Challenge {
                stale: false,
                reason: "",
            };
        };
        if !self.algorithms.contains(&c.algorithm) {
            return Verdict::Challenge {
                stale: false,
                reason: " (algorithm not offered)",
            };
        }
        let Some(ts) = self.nonce_time(c.nonce, realm) else {
            return Verdict::Challenge {
                stale: false,
                reason: " (nonce not issued here)",
            };
        };
        if ts > unix + 5 {
            return Verdict::Challenge {
                stale: false,
                reason: " (nonce from the future)",
            };
        }
        let expired = unix > ts + self.nonce_expires;
        let cred = {
            let g = self.creds.read().unwrap_or_else(|p| p.into_inner());
            g.get(&(c.username.into(), realm.to_ascii_lowercase().into()))
                .cloned()
        };
        let method = msg.method_str();
        let good = match &cred {
            Some(cr) => constant_time_eq(
                &expected_response(&c, cr.ha1(c.algorithm), method),
                c.response,
            ),
            None => {
                // same work for an unknown user, so both look alike
                let _ = expected_response(&c, &"0".repeat(c.algorithm.hex_len()), method);
                false
            }
        };
        if !good {
            return Verdict::Challenge {
                stale: false,
                reason: "",
            };
        }
        if expired {
            return Verdict::Challenge {
                stale: true,
                reason: " (nonce expired)",
            };
        }
        if let Some(nc) = c.nc_value() {
            let shard = c
                .nonce
                .bytes()
                .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
            let mut g = lock(&self.nc[shard % self.nc.len()]);
            let st = g.entry(c.nonce.into()).or_insert(NcState {
                max: 0,
                seen: 0,
                expires_unix: ts + self.nonce_expires + 1,
            });
            if nc == 0 || !nc_accept(st, nc) {
                return Verdict::Challenge {
                    stale: false,
                    reason: " (nonce count replayed)",
                };
            }
        }
        Verdict::Ok(c.username.to_string())
    }

    // ----- failures ----------------------------------------------------------------------

    /// Counts a failure from `ip`; returns how long to hold the reply back.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let p = &self.policy;
        let mut g = lock(&self.fails);
        let f = g.entry(ip).or_insert(Fails {
            count: 0,
            since: now,
            banned_until: None,
        });
        if now.duration_since(f.since) > p.window && f.banned_until.is_none() {
            f.count = 0;
            f.since = now;
        }
        f.count += 1;
        if p.ban_after > 0 && f.count >= p.ban_after && f.banned_until.is_none() {
            f.banned_until = Some(now + p.ban_time);
            self.bans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(source = %ip, failures = f.count, ban_secs = p.ban_time.as_secs(), "authentication failures: source banned");
        }
        (p.slow_after > 0 && f.count > p.slow_after).then(|| {
            let k = (f.count - p.slow_after - 1).min(4);
            Duration::from_millis(500 << k)
        })
    }

    pub fn succeeded(&self, ip: IpAddr) {
        let mut g = lock(&self.fails);
        if g.get(&ip).is_some_and(|f| f.banned_until.is_none()) {
            g.remove(&ip);
        }
    }

    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        if self.bans.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return false;
        }
        let g = lock(&self.fails);
        g.get(&ip)
            .and_then(|f| f.banned_until)
            .is_some_and(|t| t > now)
    }

    /// Forgets expired nonce counters, failure windows and bans.
    pub fn sweep(&self, now: Instant, unix: u64) {
        for s in self.nc.iter() {
            let mut g = lock(s);
            g.retain(|_, s| s.expires_unix >= unix);
            if g.capacity() > 4 * g.len() + 64 {
                g.shrink_to_fit();
            }
        }
        let w = self.policy.window;
        let mut g = lock(&self.fails);
        g.retain(|_, f| match f.banned_until {
            Some(t) => t > now,
            None => now.duration_since(f.since) <= w,
        });
        let bans = g.values().filter(|f| f.banned_until.is_some()).count();
        self.bans.store(bans, std::sync::atomic::Ordering::Relaxed);
    }

    /// Lifts a ban (management).
    pub fn unban(&self, ip: IpAddr) -> bool {
        let mut g = lock(&self.fails);
        let hit = g.remove(&ip).is_some();
        let bans = g.values().filter(|f| f.banned_until.is_some()).count();
        self.bans.store(bans, std::sync::atomic::Ordering::Relaxed);
        hit
    }
}

/// Sliding-window replay check (as IPsec's): accepts each nc once, and out-of-order ones
/// within 64 of the highest.
fn nc_accept(st: &mut NcState, nc: u32) -> bool {
    if nc > st.max {
        let shift = nc - st.max;
        st.seen = if shift >= 64 { 0 } else { st.seen << shift };
        st.seen |= 1;
        st.max = nc;
        return true;
    }
    let back = st.max - nc;
    if back >= 64 || st.seen & (1 << back) != 0 {
        return false;
    }
    st.seen |= 1 << back;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nc_window_accepts_each_count_once() {
        let mut st = NcState {
            max: 0,
            seen: 0,
            expires_unix: 0,
        };
        assert!(nc_accept(&mut st, 1));
        assert!(!nc_accept(&mut st, 1));
        assert!(nc_accept(&mut st, 3));
        assert!(nc_accept(&mut st, 2));
        assert!(!nc_accept(&mut st, 2));
        assert!(nc_accept(&mut st, 100));
        assert!(!nc_accept(&mut st, 3)); // fell out of the window
        assert!(nc_accept(&mut st, 99));
    }

    #[test]
    fn nonce_is_bound_to_secret_and_realm() {
        let a = Authenticator::new(
            b"one".to_vec(),
            vec![Algorithm::Md5],
            30,
            FailPolicy::default(),
        );
        let b = Authenticator::new(
            b"two".to_vec(),
            vec![Algorithm::Md5],
            30,
            FailPolicy::default(),
        );
        let n = a.nonce(1_700_000_000, "example.com");
        assert_eq!(a.nonce_time(&n, "example.com"), Some(1_700_000_000));
        assert_eq!(a.nonce_time(&n, "other.com"), None);
        assert_eq!(b.nonce_time(&n, "example.com"), None);
        assert_eq!(a.nonce_time("zz", "example.com"), None);
        assert_eq!(a.nonce_time(&n.replace('0', "1"), "example.com"), None);
    }

    #[test]
    fn failures_slow_then_ban_then_expire() {
        let p = FailPolicy {
            window: Duration::from_secs(60),
            slow_after: 2,
            ban_after: 5,
            ban_time: Duration::from_secs(10),
        };
        let a = Authenticator::new(b"s".to_vec(), vec![Algorithm::Md5], 30, p);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        assert_eq!(a.failed(ip, t), None);
        assert_eq!(a.failed(ip, t), None);
        assert_eq!(a.failed(ip, t), Some(Duration::from_millis(500)));
        assert_eq!(a.failed(ip, t), Some(Duration::from_millis(1000)));
        assert!(!a.is_banned(ip, t));
        a.failed(ip, t);
        assert!(a.is_banned(ip, t));
        assert!(!a.is_banned("192.0.2.2".parse().unwrap(), t));
        a.sweep(t + Duration::from_secs(11), 0);
        assert!(!a.is_banned(ip, t + Duration::from_secs(11)));
    }
}
