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

/// Limits for sources that keep failing authentication. Failures count per (source,
/// username): one account's wrong password (a misconfigured phone retrying forever) delays
/// and then bans that username from that source, never the other users behind the same
/// address. Failures also count per source: guessing across several usernames, or many
/// failures in all, bans the source (through the flood defence's ban list).
#[derive(Debug, Clone)]
pub struct FailPolicy {
    /// Failures counted within this window.
    pub window: Duration,
    /// After this many failures of one username, each further reply is delayed (doubling,
    /// up to 8 s).
    pub slow_after: u32,
    /// After this many failures of one username, it is ignored from that source for
    /// `ban_time` (doubling at each new ban within an hour, up to 15 minutes).
    pub ban_after: u32,
    pub ban_time: Duration,
    /// Failures for this many distinct usernames from one source ban the source.
    pub ban_after_users: u32,
    /// Failures in all from one source within the window that ban the source.
    pub ban_after_total: u32,
}

impl Default for FailPolicy {
    fn default() -> Self {
        FailPolicy {
            window: Duration::from_secs(60),
            slow_after: 3,
            ban_after: 10,
            ban_time: Duration::from_secs(60),
            ban_after_users: 5,
            ban_after_total: 50,
        }
    }
}

/// The longest ban of one username from one source.
const USER_BAN_MAX: Duration = Duration::from_secs(900);

/// What a failure leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailOutcome {
    /// Hold the reply back this long.
    pub delay: Option<Duration>,
    /// The username is now banned from this source.
    pub user_banned: bool,
    /// The whole source should be banned (the caller owns the source ban list).
    pub ban_source: bool,
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

/// Failures of one username from one source.
struct Fails {
    count: u32,
    since: Instant,
    banned_until: Option<Instant>,
    /// Bans within the last hour (the back-off step).
    strikes: u32,
    last_ban: Option<Instant>,
}

/// Failures from one source, whatever the username.
struct SourceFails {
    count: u32,
    since: Instant,
    /// Hashes of the usernames that failed in the window (a few suffice to decide).
    users: Vec<u64>,
}

/// (source, username): failures counted per account and address.
type FailKey = (IpAddr, Box<str>);

pub(crate) struct Authenticator {
    secret: Vec<u8>,
    pub algorithms: Vec<Algorithm>,
    /// What realms with SHA-256 opted in offer: SHA-256, then `algorithms`.
    with_sha256: Vec<Algorithm>,
    sha256_realms: Vec<String>,
    nonce_expires: u64,
    policy: FailPolicy,
    seq: std::sync::atomic::AtomicU32,
    creds: RwLock<HashMap<UserKey, Credential>>,
    /// Nonce counters, sharded by nonce so concurrent checks rarely meet on one lock.
    nc: Box<[Mutex<NcTable>]>,
    fails: Mutex<HashMap<FailKey, Fails>>,
    sources: Mutex<HashMap<IpAddr, SourceFails>>,
    /// Username bans in force (a lock-free "none" on the hot path).
    bans: std::sync::atomic::AtomicUsize,
    /// Credentials with a nonce issued elsewhere (another server, or another client
    /// address): answered with a fresh challenge, never counted as guesses.
    pub foreign_nonces: std::sync::atomic::AtomicU64,
    /// Wrong answers to a challenge (counted guesses).
    pub failures: std::sync::atomic::AtomicU64,
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
            with_sha256: std::iter::once(Algorithm::Sha256)
                .chain(
                    algorithms
                        .iter()
                        .copied()
                        .filter(|a| *a != Algorithm::Sha256),
                )
                .collect(),
            sha256_realms: Vec::new(),
            algorithms,
            nonce_expires,
            policy,
            seq: std::sync::atomic::AtomicU32::new(0),
            creds: RwLock::new(HashMap::new()),
            nc: (0..16).map(|_| Mutex::new(HashMap::new())).collect(),
            fails: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            bans: std::sync::atomic::AtomicUsize::new(0),
            foreign_nonces: std::sync::atomic::AtomicU64::new(0),
            failures: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Offers SHA-256 first in these realms.
    pub fn with_sha256_realms(mut self, realms: &[String]) -> Self {
        self.sha256_realms = realms.iter().map(|r| r.to_ascii_lowercase()).collect();
        self
    }

    /// The algorithms offered for `realm`, the preferred first.
    fn offered(&self, realm: &str) -> &[Algorithm] {
        if self
            .sha256_realms
            .iter()
            .any(|r| r.eq_ignore_ascii_case(realm))
        {
            &self.with_sha256
        } else {
            &self.algorithms
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

    fn mac(&self, ts: u32, seq: u32, realm: &str, client: IpAddr) -> String {
        let mut m = Vec::with_capacity(8 + realm.len() + 17);
        m.extend_from_slice(&ts.to_be_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
        match client {
            IpAddr::V4(a) => m.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => m.extend_from_slice(&a.octets()),
        }
        m.push(0);
        m.extend_from_slice(realm.as_bytes());
        hex(&hmac_sha256(&self.secret, &m)[..12])
    }

    /// A nonce for `realm` issued at `unix` to a client at `client`: 8 hex digits of time, 8
    /// of a sequence number (every challenge its own nonce, so `nc` counts per client) and 24
    /// of HMAC over them, the realm and the client's address: only that address can use it,
    /// so packets forged with another address cannot count as its guesses.
    pub fn nonce(&self, unix: u64, realm: &str, client: IpAddr) -> String {
        let ts = unix as u32;
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{ts:08x}{seq:08x}{}", self.mac(ts, seq, realm, client))
    }

    /// `Some(issued_at)` when the nonce was issued here for `realm` to `client`.
    fn nonce_time(&self, nonce: &str, realm: &str, client: IpAddr) -> Option<u64> {
        if nonce.len() != 40 || !nonce.is_ascii() {
            return None;
        }
        let ts = u32::from_str_radix(&nonce[..8], 16).ok()?;
        let seq = u32::from_str_radix(&nonce[8..16], 16).ok()?;
        constant_time_eq(&nonce[16..], &self.mac(ts, seq, realm, client)).then_some(ts as u64)
    }

    /// The challenge header lines for `realm`, the preferred algorithm first (RFC 8760).
    pub fn challenge(
        &self,
        proxy: bool,
        unix: u64,
        realm: &str,
        stale: bool,
        client: IpAddr,
    ) -> Vec<String> {
        let name = if proxy {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        };
        let nonce = self.nonce(unix, realm, client);
        self.offered(realm)
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

    /// Checks the credentials of `msg` from `client` for `realm` (`proxy`:
    /// Proxy-Authorization).
    pub fn check(
        &self,
        msg: &Message,
        proxy: bool,
        realm: &str,
        unix: u64,
        client: IpAddr,
    ) -> Verdict {
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
        if !self.offered(realm).contains(&c.algorithm) {
            return Verdict::Challenge {
                stale: false,
                reason: " (algorithm not offered)",
            };
        }
        let Some(ts) = self.nonce_time(c.nonce, realm, client) else {
            // answered with a fresh challenge before any credential is looked at
            self.foreign_nonces
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        // without qop there is no nc: such a nonce is good for one request (as nc=1), so a
        // captured answer cannot be replayed either
        let nc = match c.nc_value() {
            Some(n) => n,
            None if c.qop.is_none() => 1,
            None => 0,
        };
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
            // the answer was right for a used nonce: a replay, or a client reusing a nonce;
            // stale=true lets a real client answer the new nonce without asking anyone
            return Verdict::Challenge {
                stale: true,
                reason: " (nonce already used)",
            };
        }
        Verdict::Ok(c.username.to_string())
    }

    // ----- failures ----------------------------------------------------------------------

    /// Counts a wrong answer of `user` from `ip`: how long to hold the reply back, and
    /// whether the username or the whole source is to be banned.
    pub fn failed(&self, ip: IpAddr, user: &str, now: Instant) -> FailOutcome {
        use std::sync::atomic::Ordering::Relaxed;
        self.failures.fetch_add(1, Relaxed);
        let p = &self.policy;
        let mut out = FailOutcome::default();
        {
            let mut g = lock(&self.fails);
            let f = g.entry((ip, user.into())).or_insert(Fails {
                count: 0,
                since: now,
                banned_until: None,
                strikes: 0,
                last_ban: None,
            });
            if now.duration_since(f.since) > p.window && f.banned_until.is_none_or(|t| t <= now) {
                f.count = 0;
                f.since = now;
            }
            f.count += 1;
            if p.ban_after > 0 && f.count >= p.ban_after && f.banned_until.is_none_or(|t| t <= now)
            {
                if f.last_ban
                    .is_none_or(|t| now.duration_since(t) > Duration::from_secs(3600))
                {
                    f.strikes = 0;
                }
                f.strikes = (f.strikes + 1).min(20);
                let d = p
                    .ban_time
                    .saturating_mul(1 << (f.strikes - 1).min(10))
                    .min(USER_BAN_MAX.max(p.ban_time));
                f.banned_until = Some(now + d);
                f.last_ban = Some(now);
                f.count = 0;
                f.since = now;
                out.user_banned = true;
                self.bans.fetch_add(1, Relaxed);
                tracing::warn!(source = %ip, user, ban_secs = d.as_secs(), "authentication failures: this username is banned from this source");
            }
            if p.slow_after > 0 && f.count > p.slow_after {
                let k = (f.count - p.slow_after - 1).min(4);
                out.delay = Some(Duration::from_millis(500 << k));
            }
        }
        let mut g = lock(&self.sources);
        let s = g.entry(ip).or_insert(SourceFails {
            count: 0,
            since: now,
            users: Vec::new(),
        });
        if now.duration_since(s.since) > p.window {
            s.count = 0;
            s.since = now;
            s.users.clear();
        }
        s.count += 1;
        let h = user.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        if !s.users.contains(&h) && s.users.len() < 64 {
            s.users.push(h);
        }
        if (p.ban_after_users > 0 && s.users.len() as u32 >= p.ban_after_users)
            || (p.ban_after_total > 0 && s.count >= p.ban_after_total)
        {
            out.ban_source = true;
            s.count = 0;
            s.users.clear();
            s.since = now;
        }
        out
    }

    /// `user` authenticated from `ip`: its own failures are forgotten (not the source's,
    /// and not other usernames').
    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        let mut g = lock(&self.fails);
        if let Some(f) = g.get_mut(&(ip, user.into())) {
            f.count = 0;
        }
    }

    /// True when `user` is banned from `ip` at `now`.
    pub fn is_user_banned(&self, ip: IpAddr, user: &str, now: Instant) -> bool {
        if self.bans.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return false;
        }
        lock(&self.fails)
            .get(&(ip, user.into()))
            .and_then(|f| f.banned_until)
            .is_some_and(|t| t > now)
    }

    /// The username bans in force: (source, username, time left).
    pub fn user_bans(&self, now: Instant) -> Vec<(IpAddr, String, Duration)> {
        let mut v: Vec<_> = lock(&self.fails)
            .iter()
            .filter_map(|((ip, u), f)| {
                f.banned_until
                    .filter(|t| *t > now)
                    .map(|t| (*ip, u.to_string(), t - now))
            })
            .collect();
        v.sort();
        v
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
        g.retain(|_, f| {
            f.banned_until.is_some_and(|t| t > now)
                || now.duration_since(f.since) <= w
                || f.last_ban
                    .is_some_and(|t| now.duration_since(t) < Duration::from_secs(3600))
        });
        let bans = g
            .values()
            .filter(|f| f.banned_until.is_some_and(|t| t > now))
            .count();
        self.bans.store(bans, std::sync::atomic::Ordering::Relaxed);
        drop(g);
        lock(&self.sources).retain(|_, s| now.duration_since(s.since) <= w);
    }

    /// Lifts the username bans from `ip` (management); true when there was one.
    pub fn unban(&self, ip: IpAddr, user: Option<&str>) -> bool {
        let mut g = lock(&self.fails);
        let before = g.len();
        g.retain(|(a, u), _| !(*a == ip && user.is_none_or(|x| x == &**u)));
        let hit = g.len() < before;
        drop(g);
        lock(&self.sources).remove(&ip);
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
    fn nonce_is_bound_to_secret_realm_and_client() {
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
        let (me, other): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let n = a.nonce(1_700_000_000, "example.com", me);
        assert_eq!(a.nonce_time(&n, "example.com", me), Some(1_700_000_000));
        assert_eq!(
            a.nonce_time(&n, "example.com", other),
            None,
            "another client's nonce"
        );
        assert_eq!(a.nonce_time(&n, "other.com", me), None);
        assert_eq!(b.nonce_time(&n, "example.com", me), None);
        assert_eq!(a.nonce_time("zz", "example.com", me), None);
        assert_eq!(a.nonce_time(&n.replace('0', "1"), "example.com", me), None);
    }

    fn policy() -> FailPolicy {
        FailPolicy {
            window: Duration::from_secs(60),
            slow_after: 2,
            ban_after: 5,
            ban_time: Duration::from_secs(10),
            ban_after_users: 3,
            ban_after_total: 40,
        }
    }

    #[test]
    fn failures_slow_then_ban_the_username_not_the_source() {
        let a = Authenticator::new(b"s".to_vec(), vec![Algorithm::Md5], 30, policy());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        assert_eq!(a.failed(ip, "bob", t).delay, None);
        assert_eq!(a.failed(ip, "bob", t).delay, None);
        assert_eq!(
            a.failed(ip, "bob", t).delay,
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            a.failed(ip, "bob", t).delay,
            Some(Duration::from_millis(1000))
        );
        assert!(!a.is_user_banned(ip, "bob", t));
        let o = a.failed(ip, "bob", t);
        assert!(o.user_banned && !o.ban_source, "{o:?}");
        assert!(a.is_user_banned(ip, "bob", t));
        assert!(
            !a.is_user_banned(ip, "alice", t),
            "alice behind the same address is not"
        );
        assert!(!a.is_user_banned("192.0.2.2".parse().unwrap(), "bob", t));
        // alice logs in: bob's count is untouched (it once reset every name of the address)
        a.succeeded(ip, "alice");
        assert!(a.is_user_banned(ip, "bob", t));
        a.sweep(t + Duration::from_secs(11), 0);
        assert!(!a.is_user_banned(ip, "bob", t + Duration::from_secs(11)));
        // the next ban of bob lasts twice as long
        let t2 = t + Duration::from_secs(12);
        for _ in 0..5 {
            a.failed(ip, "bob", t2);
        }
        assert!(a.is_user_banned(ip, "bob", t2 + Duration::from_secs(19)));
        assert!(!a.is_user_banned(ip, "bob", t2 + Duration::from_secs(21)));
    }

    #[test]
    fn guessing_several_usernames_bans_the_source() {
        let a = Authenticator::new(b"s".to_vec(), vec![Algorithm::Md5], 30, policy());
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let t = Instant::now();
        assert!(!a.failed(ip, "100", t).ban_source);
        assert!(!a.failed(ip, "101", t).ban_source);
        assert!(!a.failed(ip, "101", t).ban_source);
        assert!(a.failed(ip, "102", t).ban_source, "a third username");
    }

    #[test]
    fn a_phone_retrying_one_wrong_password_forever_never_bans_its_office() {
        let a = Authenticator::new(b"s".to_vec(), vec![Algorithm::Md5], 30, policy());
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        let mut t = Instant::now();
        // while banned the phone's requests are dropped before they count; each ban lets
        // five failures through, spaced by the growing bans
        for _ in 0..200 {
            if !a.is_user_banned(ip, "desk7", t) {
                assert!(!a.failed(ip, "desk7", t).ban_source);
            }
            t += Duration::from_secs(2);
            a.sweep(t, 0);
        }
        assert!(!a.is_user_banned(ip, "desk8", t));
    }
}
