//! Flood and scan defence, what OpenSIPS and Kamailio users get from `pike` and `ratelimit`:
//! a token bucket per source and kind of request (REGISTER, INVITE, OPTIONS, the rest, and a
//! tighter one for the REGISTERs of sources that never authenticated while the registrar asks
//! for credentials);
//! a source that keeps going past its budget is banned, for twice as long each time it comes
//! back (up to a maximum); well-known scanners are banned at their first request. IPv6
//! sources are counted and banned by prefix (/64 by default): one host owns a whole /64.
//! Media servers and allowed networks are never limited or banned. Sans-IO: the caller
//! passes the time; the tables are bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::registrar::in_cidr;

/// A budget: `rate` requests a second, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub rate: u32,
    pub burst: u32,
}

impl Budget {
    /// `rate` a second with two seconds' worth as burst; 0: no limit.
    pub const fn per_second(rate: u32) -> Budget {
        Budget {
            rate,
            burst: rate.saturating_mul(2),
        }
    }
}

/// The kind of a request, for its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Register,
    Invite,
    Options,
    Other,
}

/// The validated `[security]` settings.
#[derive(Debug, Clone)]
pub struct PikeConfig {
    pub register: Budget,
    pub invite: Budget,
    pub options: Budget,
    pub other: Budget,
    /// REGISTERs of a source that has not authenticated yet, while authentication is on.
    pub unauthenticated: Budget,
    /// Requests dropped over budget within a ban window that get the source banned.
    pub ban_after_drops: u32,
    /// The first ban; each ban within `ban_memory` of the last doubles it, up to `ban_max`.
    pub ban_time: Duration,
    pub ban_max: Duration,
    pub ban_memory: Duration,
    /// IPv6 sources are one source per prefix of this length.
    pub ipv6_prefix: u8,
    /// Never limited, never banned (carriers; media servers are always).
    pub allow: Vec<(IpAddr, u8)>,
    /// User-Agent substrings (lowercase) of scanners, banned at their first request.
    pub scanners: Vec<String>,
    /// Sources tracked at most; past it, new sources are not limited (counted).
    pub max_sources: usize,
}

impl Default for PikeConfig {
    fn default() -> Self {
        PikeConfig {
            register: Budget::per_second(20),
            invite: Budget::per_second(100),
            options: Budget::per_second(20),
            other: Budget::per_second(300),
            unauthenticated: Budget::per_second(10),
            ban_after_drops: 100,
            ban_time: Duration::from_secs(60),
            ban_max: Duration::from_secs(3600),
            ban_memory: Duration::from_secs(3600),
            ipv6_prefix: 64,
            allow: Vec::new(),
            scanners: DEFAULT_SCANNERS.iter().map(|s| s.to_string()).collect(),
            max_sources: 200_000,
        }
    }
}

/// User-Agents of well-known SIP scanners and crackers (lowercase substrings).
pub const DEFAULT_SCANNERS: [&str; 10] = [
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "iwar",
    "vaxsipuseragent",
    "sivus",
    "smap",
    "pplsip",
    "sundayddr",
];

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Over budget: dropped without an answer.
    Drop,
    /// The source is banned (now, or by this request).
    Banned,
}

/// Why a source was banned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BanReason {
    Flood,
    Scanner,
    Guessing,
    Operator,
}

impl BanReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            BanReason::Flood => "flood",
            BanReason::Scanner => "scanner",
            BanReason::Guessing => "password guessing",
            BanReason::Operator => "operator",
        }
    }
}

/// A ban in force, for the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanInfo {
    /// The address, or the IPv6 prefix (`2001:db8::/64`).
    pub source: String,
    pub reason: &'static str,
    pub remaining: Duration,
    /// Bans of this source within the memory window (the back-off step).
    pub strikes: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f32,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant, b: Budget) -> bool {
        if b.rate == 0 {
            return true;
        }
        let dt = now.saturating_duration_since(self.at).as_secs_f32();
        self.at = now;
        self.tokens = (self.tokens + dt * b.rate as f32).min(b.burst.max(1) as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Src {
    buckets: [Bucket; 5],
    last: Instant,
    drops: u32,
    drops_since: Instant,
    /// Authenticated lately: the tight budget does not apply.
    authed_until: Option<Instant>,
}

struct Ban {
    until: Instant,
    strikes: u32,
    /// When the last ban ended or will end: strikes are remembered this long after.
    reason: BanReason,
}

/// A source: an IPv4 address, or an IPv6 prefix (as the masked address).
type Key = IpAddr;

/// The per-source tables.
pub struct Pike {
    cfg: PikeConfig,
    sources: Box<[Mutex<HashMap<Key, Src>>]>,
    tracked: AtomicUsize,
    bans: Mutex<HashMap<Key, Ban>>,
    /// Bans in force (a lock-free "none" on the hot path).
    active_bans: AtomicUsize,
    pub dropped: AtomicU64,
    pub untracked: AtomicU64,
    next_sweep: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pike {
    pub fn new(cfg: PikeConfig) -> Pike {
        Pike {
            cfg,
            sources: (0..16).map(|_| Mutex::new(HashMap::new())).collect(),
            tracked: AtomicUsize::new(0),
            bans: Mutex::new(HashMap::new()),
            active_bans: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
            next_sweep: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &PikeConfig {
        &self.cfg
    }

    /// The source an address counts as (IPv6: its prefix; IPv4-mapped: the IPv4 address).
    pub fn key(&self, ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v) => match v.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let bits = self.cfg.ipv6_prefix.min(128) as u32;
                    let mask = if bits == 0 {
                        0
                    } else {
                        u128::MAX << (128 - bits)
                    };
                    IpAddr::V6((u128::from(v) & mask).into())
                }
            },
        }
    }

    fn label(&self, k: Key) -> String {
        match k {
            IpAddr::V6(_) if self.cfg.ipv6_prefix < 128 => {
                format!("{k}/{}", self.cfg.ipv6_prefix)
            }
            _ => k.to_string(),
        }
    }

    /// True for allowed networks (never limited, never banned).
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        self.cfg.allow.iter().any(|n| in_cidr(ip, *n))
    }

    /// True when the source of `ip` is banned at `now` (cheap while nothing is banned).
    pub fn is_banned(&self, now: Instant, ip: IpAddr) -> bool {
        if self.active_bans.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let k = self.key(ip);
        lock(&self.bans).get(&k).is_some_and(|b| b.until > now)
    }

    /// True when `user_agent` names a known scanner.
    pub fn is_scanner(&self, user_agent: &str) -> bool {
        if self.cfg.scanners.is_empty() || user_agent.is_empty() {
            return false;
        }
        let ua = user_agent.to_ascii_lowercase();
        self.cfg.scanners.iter().any(|s| ua.contains(s.as_str()))
    }

    /// Counts a request of `class` from `ip`; `auth_on`: the registrar asks for credentials,
    /// so a source that has not authenticated is held to the tight budget.
    pub fn check(&self, now: Instant, ip: IpAddr, class: Class, auth_on: bool) -> Verdict {
        let k = self.key(ip);
        let shard = &self.sources[shard_of(k) % self.sources.len()];
        let over = {
            let mut g = lock(shard);
            if !g.contains_key(&k) {
                if self.tracked.load(Ordering::Relaxed) >= self.cfg.max_sources {
                    self.untracked.fetch_add(1, Ordering::Relaxed);
                    return Verdict::Pass;
                }
                self.tracked.fetch_add(1, Ordering::Relaxed);
            }
            let s = g.entry(k).or_insert_with(|| Src {
                buckets: [Bucket {
                    tokens: f32::MAX,
                    at: now,
                }; 5],
                last: now,
                drops: 0,
                drops_since: now,
                authed_until: None,
            });
            s.last = now;
            let (i, b) = match class {
                Class::Register => (0, self.cfg.register),
                Class::Invite => (1, self.cfg.invite),
                Class::Options => (2, self.cfg.options),
                Class::Other => (3, self.cfg.other),
            };
            let mut ok = s.buckets[i].take(now, b);
            // REGISTERs of a source that never logged in: the guesses come from there
            if ok && auth_on && class == Class::Register && s.authed_until.is_none_or(|t| t <= now)
            {
                ok = s.buckets[4].take(now, self.cfg.unauthenticated);
            }
            if ok {
                return Verdict::Pass;
            }
            if now.saturating_duration_since(s.drops_since) > Duration::from_secs(10) {
                s.drops = 0;
                s.drops_since = now;
            }
            s.drops += 1;
            s.drops >= self.cfg.ban_after_drops.max(1)
        };
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if over {
            self.ban(now, ip, BanReason::Flood);
            return Verdict::Banned;
        }
        Verdict::Drop
    }

    /// A source authenticated: the tight budget stops applying to it for a while.
    pub fn authenticated(&self, now: Instant, ip: IpAddr) {
        let k = self.key(ip);
        let shard = &self.sources[shard_of(k) % self.sources.len()];
        if let Some(s) = lock(shard).get_mut(&k) {
            s.authed_until = Some(now + Duration::from_secs(3600));
        }
    }

    /// Bans the source of `ip`: for `ban_time`, doubled for each ban within the memory
    /// window, up to `ban_max`. Returns how long; `None` for an allowed source.
    pub fn ban(&self, now: Instant, ip: IpAddr, reason: BanReason) -> Option<Duration> {
        if self.is_allowed(ip) && reason != BanReason::Operator {
            return None;
        }
        let k = self.key(ip);
        let mut g = lock(&self.bans);
        let e = g.entry(k).or_insert(Ban {
            until: now,
            strikes: 0,
            reason: reason.clone(),
        });
        if e.until > now {
            return Some(e.until - now); // already banned
        }
        e.strikes = e.strikes.saturating_add(1).min(30);
        let d = self
            .cfg
            .ban_time
            .saturating_mul(1u32 << (e.strikes - 1).min(20))
            .min(self.cfg.ban_max.max(self.cfg.ban_time));
        e.until = now + d;
        e.reason = reason.clone();
        let strikes = e.strikes;
        let active = g.values().filter(|b| b.until > now).count();
        drop(g);
        self.active_bans.store(active, Ordering::Relaxed);
        tracing::warn!(source = %self.label(k), reason = reason.as_str(), ban_secs = d.as_secs(), strikes, "source banned");
        Some(d)
    }

    /// Bans for a given time (operator).
    pub fn ban_for(&self, now: Instant, ip: IpAddr, d: Duration) {
        let k = self.key(ip);
        let mut g = lock(&self.bans);
        let e = g.entry(k).or_insert(Ban {
            until: now,
            strikes: 0,
            reason: BanReason::Operator,
        });
        e.until = now + d;
        e.reason = BanReason::Operator;
        let active = g.values().filter(|b| b.until > now).count();
        self.active_bans.store(active, Ordering::Relaxed);
    }

    /// Lifts the ban of `ip`'s source (its strikes too); true when it was banned.
    pub fn unban(&self, now: Instant, ip: IpAddr) -> bool {
        let k = self.key(ip);
        let mut g = lock(&self.bans);
        let hit = g.remove(&k).is_some_and(|b| b.until > now);
        let active = g.values().filter(|b| b.until > now).count();
        self.active_bans.store(active, Ordering::Relaxed);
        hit
    }

    /// The bans in force.
    pub fn list(&self, now: Instant) -> Vec<BanInfo> {
        let g = lock(&self.bans);
        let mut v: Vec<BanInfo> = g
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(k, b)| BanInfo {
                source: self.label(*k),
                reason: b.reason.as_str(),
                remaining: b.until - now,
                strikes: b.strikes,
            })
            .collect();
        v.sort_by(|a, b| a.source.cmp(&b.source));
        v
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    /// Forgets idle sources and bans past their memory: once a second, however often it is
    /// called (the timer thread calls it every tick).
    pub fn tick(&self, now: Instant) {
        {
            let mut t = lock(&self.next_sweep);
            if t.is_some_and(|t| now < t) {
                return;
            }
            *t = Some(now + Duration::from_secs(1));
        }
        self.sweep(now);
    }

    /// Forgets idle sources and bans past their memory.
    pub fn sweep(&self, now: Instant) {
        let idle = Duration::from_secs(60);
        for s in self.sources.iter() {
            let mut g = lock(s);
            let before = g.len();
            g.retain(|_, s| {
                now.saturating_duration_since(s.last) < idle
                    || s.authed_until.is_some_and(|t| t > now)
            });
            let gone = before - g.len();
            if gone > 0 {
                self.tracked.fetch_sub(gone, Ordering::Relaxed);
            }
            if g.capacity() > 4 * g.len() + 64 {
                g.shrink_to_fit();
            }
        }
        let memory = self.cfg.ban_memory;
        let mut g = lock(&self.bans);
        g.retain(|_, b| b.until > now || now.saturating_duration_since(b.until) < memory);
        let active = g.values().filter(|b| b.until > now).count();
        self.active_bans.store(active, Ordering::Relaxed);
    }
}

fn shard_of(k: Key) -> usize {
    match k {
        IpAddr::V4(v) => u32::from(v) as usize,
        IpAddr::V6(v) => (u128::from(v) >> 64) as usize ^ (u128::from(v) as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_flood_is_dropped_then_banned_with_back_off() {
        let p = Pike::new(PikeConfig {
            options: Budget::per_second(10),
            ban_after_drops: 50,
            ..PikeConfig::default()
        });
        let t = Instant::now();
        let (mut pass, mut drop) = (0, 0);
        let mut banned_at = None;
        for i in 0..200 {
            match p.check(t, ip("192.0.2.9"), Class::Options, false) {
                Verdict::Pass => pass += 1,
                Verdict::Drop => drop += 1,
                Verdict::Banned => {
                    banned_at = Some(i);
                    break;
                }
            }
        }
        assert_eq!(pass, 20, "the burst");
        assert_eq!(drop, 49);
        assert_eq!(banned_at, Some(69));
        assert!(p.is_banned(t, ip("192.0.2.9")));
        assert!(!p.is_banned(t, ip("192.0.2.10")), "others pass");
        let l = p.list(t);
        assert_eq!(
            (l[0].source.as_str(), l[0].reason, l[0].remaining),
            ("192.0.2.9", "flood", Duration::from_secs(60))
        );
        // after the ban, the budget is full again; a second ban lasts twice as long
        let t2 = t + Duration::from_secs(61);
        assert!(!p.is_banned(t2, ip("192.0.2.9")));
        assert_eq!(
            p.ban(t2, ip("192.0.2.9"), BanReason::Flood),
            Some(Duration::from_secs(120))
        );
        let t3 = t2 + Duration::from_secs(121);
        assert_eq!(
            p.ban(t3, ip("192.0.2.9"), BanReason::Flood),
            Some(Duration::from_secs(240))
        );
        assert!(p.unban(t3, ip("192.0.2.9")));
        assert!(!p.is_banned(t3, ip("192.0.2.9")));
    }

    #[test]
    fn budgets_refill_and_kinds_are_apart() {
        let p = Pike::new(PikeConfig {
            invite: Budget {
                rate: 10,
                burst: 10,
            },
            register: Budget {
                rate: 10,
                burst: 10,
            },
            ..PikeConfig::default()
        });
        let t = Instant::now();
        let a = ip("198.51.100.1");
        for _ in 0..10 {
            assert_eq!(p.check(t, a, Class::Invite, false), Verdict::Pass);
        }
        assert_eq!(p.check(t, a, Class::Invite, false), Verdict::Drop);
        assert_eq!(
            p.check(t, a, Class::Register, false),
            Verdict::Pass,
            "another budget"
        );
        assert_eq!(
            p.check(t + Duration::from_millis(150), a, Class::Invite, false),
            Verdict::Pass,
            "refilled at 10/s"
        );
    }

    #[test]
    fn unauthenticated_sources_have_the_tight_budget_until_they_log_in() {
        let p = Pike::new(PikeConfig {
            unauthenticated: Budget { rate: 1, burst: 3 },
            ..PikeConfig::default()
        });
        let t = Instant::now();
        let a = ip("203.0.113.5");
        for _ in 0..3 {
            assert_eq!(p.check(t, a, Class::Register, true), Verdict::Pass);
        }
        assert_eq!(p.check(t, a, Class::Register, true), Verdict::Drop);
        assert_eq!(
            p.check(t, a, Class::Register, false),
            Verdict::Pass,
            "auth off: no tight budget"
        );
        for _ in 0..50 {
            assert_eq!(
                p.check(t, a, Class::Invite, true),
                Verdict::Pass,
                "calls into our domains need no login: only REGISTERs are held"
            );
        }
        p.authenticated(t, a);
        assert_eq!(p.check(t, a, Class::Register, true), Verdict::Pass);
    }

    #[test]
    fn ipv6_sources_count_and_are_banned_by_prefix() {
        let p = Pike::new(PikeConfig::default());
        let t = Instant::now();
        p.ban(t, ip("2001:db8:1:2::77"), BanReason::Scanner);
        assert!(p.is_banned(t, ip("2001:db8:1:2:ffff::1")), "same /64");
        assert!(!p.is_banned(t, ip("2001:db8:1:3::1")), "next /64");
        assert_eq!(p.list(t)[0].source, "2001:db8:1:2::/64");
        // a v4-mapped address is the v4 source
        p.ban(t, ip("::ffff:192.0.2.1"), BanReason::Flood);
        assert!(p.is_banned(t, ip("192.0.2.1")));
    }

    #[test]
    fn allowed_networks_are_never_banned_and_scanners_are_known() {
        let p = Pike::new(PikeConfig {
            allow: vec![(ip("10.0.0.0"), 8)],
            ..PikeConfig::default()
        });
        let t = Instant::now();
        assert_eq!(p.ban(t, ip("10.1.2.3"), BanReason::Flood), None);
        assert!(!p.is_banned(t, ip("10.1.2.3")));
        assert!(p.is_scanner("friendly-scanner"));
        assert!(p.is_scanner("SIPVicious 0.3"));
        assert!(!p.is_scanner("baresip v1.0.0 (x86_64/linux)"));
        assert!(!p.is_scanner(""));
    }

    #[test]
    fn the_source_table_is_bounded() {
        let p = Pike::new(PikeConfig {
            max_sources: 100,
            ..PikeConfig::default()
        });
        let t = Instant::now();
        for i in 0..1000u32 {
            let a = IpAddr::V4((0x0a00_0000 + i).into());
            assert_eq!(p.check(t, a, Class::Options, false), Verdict::Pass);
        }
        assert_eq!(p.tracked(), 100);
        assert_eq!(p.untracked.load(Ordering::Relaxed), 900);
        p.sweep(t + Duration::from_secs(61));
        assert_eq!(p.tracked(), 0, "idle sources forgotten");
    }
}
