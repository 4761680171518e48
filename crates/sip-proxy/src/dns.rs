//! Next hops by name (RFC 3263): the question the core asks the driver, the answer it gets
//! back, and the cache the core consults on its own clock — TTLs honoured, failures cached
//! (RFC 2308), and expired answers served while the DNS server cannot be reached
//! (RFC 8767). The lookups themselves (NAPTR → SRV → A/AAAA) run in the driver.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::types::Transport;

/// What to resolve: a SIP URI's host, with what the URI fixes (RFC 3263 §4.1, §4.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Query {
    /// The host name, lower case, without a trailing dot.
    pub host: Arc<str>,
    /// An explicit port: no NAPTR or SRV lookup, only A/AAAA (§4.2).
    pub port: Option<u16>,
    /// An explicit `transport=` parameter: SRV for that transport only (§4.1).
    pub transport: Option<Transport>,
    /// A `sips:` URI: TLS only.
    pub secure: bool,
}

impl Query {
    /// The query for a URI's host part, or `None` when the host is an IP literal or not a
    /// valid host name.
    pub fn new(
        host: &str,
        port: Option<u16>,
        transport: Option<Transport>,
        secure: bool,
    ) -> Option<Query> {
        let h = host.strip_suffix('.').unwrap_or(host);
        if !valid_host_name(h) {
            return None;
        }
        Some(Query {
            host: h.to_ascii_lowercase().into(),
            port,
            transport,
            secure,
        })
    }
}

impl std::fmt::Display for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        if let Some(t) = self.transport {
            write!(f, ";transport={}", t.via_name().to_ascii_lowercase())?;
        }
        Ok(())
    }
}

/// True for a host name DNS can be asked about (RFC 1123 §2.1): dot-separated labels of
/// letters, digits and inner hyphens, at most 63 bytes each and 253 in all, and not all
/// digits (that would be a mistyped IP address). Underscores are refused: SIP hosts are
/// not service labels.
pub fn valid_host_name(h: &str) -> bool {
    if h.is_empty() || h.len() > 253 {
        return false;
    }
    let mut all_digits = true;
    for label in h.split('.') {
        let b = label.as_bytes();
        if b.is_empty()
            || b.len() > 63
            || b[0] == b'-'
            || b[b.len() - 1] == b'-'
            || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        {
            return false;
        }
        all_digits &= b.iter().all(u8::is_ascii_digit);
    }
    !all_digits
}

/// One place a name leads to: an SRV target's address (or an A/AAAA address with the
/// default or given port, priority 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub priority: u16,
    pub weight: u16,
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// A successful resolution: the records in NAPTR order (SRV priority within), and the
/// smallest TTL met on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub records: Vec<Record>,
    pub ttl: Duration,
}

/// Why a name gave no usable address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The name does not exist, or has no record of a type SIP can use.
    #[error("{name} has no NAPTR, SRV, A or AAAA record")]
    NotFound { name: String },
    /// Its only SRV target is `.`: the service is decidedly not offered there (RFC 2782).
    #[error("{name} says it offers no SIP service (SRV target \".\")")]
    NoService { name: String },
    /// The DNS server did not answer (timeout, refused, unreachable).
    #[error("no answer from the DNS server about {name}: {detail}")]
    Unreachable { name: String, detail: String },
    /// The answer could not be used (a CNAME loop, a malformed record).
    #[error("unusable DNS answer about {name}: {detail}")]
    Invalid { name: String, detail: String },
}

impl DnsError {
    /// True when asking again later may help (the server may come back).
    pub fn is_transient(&self) -> bool {
        matches!(self, DnsError::Unreachable { .. })
    }
}

/// Cache settings (`[dns]`).
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Names kept at most.
    pub cache_size: usize,
    /// How long past its TTL an answer may still be used while the DNS server does not
    /// answer (RFC 8767 suggests 1 to 3 days; an hour by default).
    pub stale_for: Duration,
    /// How long a name that does not exist is remembered (RFC 2308).
    pub negative_ttl: Duration,
    /// How long an unreachable DNS server is remembered before a request waits for it
    /// again (stale answers are served meanwhile; RFC 8767 §5's failure recheck).
    pub failure_ttl: Duration,
    /// Shortest and longest TTL honoured.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// How long a request waits for a lookup before it is answered `503`.
    pub wait: Duration,
    /// Requests waiting for lookups at most (more are answered `503` at once).
    pub max_waiting: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            cache_size: 10_000,
            stale_for: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(30),
            failure_ttl: Duration::from_secs(5),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(86_400),
            wait: Duration::from_secs(5),
            max_waiting: 10_000,
        }
    }
}

/// What the cache knows about a query now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Within its TTL.
    Fresh(Arc<[Record]>),
    /// Past its TTL, used because the DNS server did not answer the last refresh.
    Stale(Arc<[Record]>),
    /// A cached failure.
    Failed(DnsError),
    /// Nothing usable: ask the driver.
    Miss,
}

#[derive(Debug)]
struct Entry {
    result: Result<Arc<[Record]>, DnsError>,
    expires: Instant,
    /// A positive answer may be served until then when refreshing fails.
    stale_until: Instant,
    /// The last refresh found the server unreachable: serve stale until this passes.
    unreachable_until: Option<Instant>,
}

/// The resolution cache, shared by every receive thread.
#[derive(Debug)]
pub struct Cache {
    cfg: DnsConfig,
    map: Mutex<HashMap<Query, Entry>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale_served: AtomicU64,
    pub failures: AtomicU64,
}

impl Cache {
    pub fn new(cfg: DnsConfig) -> Cache {
        Cache {
            cfg,
            map: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// The settings.
    pub fn config(&self) -> &DnsConfig {
        &self.cfg
    }

    /// Names cached.
    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What to use for `q` at `now`.
    pub fn lookup(&self, now: Instant, q: &Query) -> Lookup {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let r = match m.get(q) {
            None => Lookup::Miss,
            Some(e) if now < e.expires => match &e.result {
                Ok(r) => Lookup::Fresh(r.clone()),
                Err(err) => Lookup::Failed(err.clone()),
            },
            Some(e) => match &e.result {
                Ok(r) if now < e.stale_until && e.unreachable_until.is_some_and(|u| now < u) => {
                    Lookup::Stale(r.clone())
                }
                _ => Lookup::Miss,
            },
        };
        drop(m);
        let c = match r {
            Lookup::Fresh(_) => &self.hits,
            Lookup::Stale(_) => &self.stale_served,
            Lookup::Failed(_) => &self.failures,
            Lookup::Miss => &self.misses,
        };
        c.fetch_add(1, Ordering::Relaxed);
        r
    }

    /// Stores what the driver found for `q` and says what to use now: the new answer, a
    /// stale one when the server could not be reached, or the failure.
    pub fn store(&self, now: Instant, q: &Query, result: Result<Answer, DnsError>) -> Lookup {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let result = match result {
            Ok(a) if a.records.is_empty() => Err(DnsError::NotFound {
                name: q.host.to_string(),
            }),
            r => r,
        };
        let (entry, now_use) = match result {
            Ok(a) => {
                let ttl = a.ttl.clamp(self.cfg.min_ttl, self.cfg.max_ttl);
                let recs: Arc<[Record]> = a.records.into();
                (
                    Entry {
                        result: Ok(recs.clone()),
                        expires: now + ttl,
                        stale_until: now + ttl + self.cfg.stale_for,
                        unreachable_until: None,
                    },
                    Lookup::Fresh(recs),
                )
            }
            Err(e) if e.is_transient() => {
                if let Some(old) = m.get_mut(q) {
                    if let (Ok(r), true) = (&old.result, now < old.stale_until) {
                        old.unreachable_until = Some(now + self.cfg.failure_ttl);
                        let r = r.clone();
                        drop(m);
                        self.stale_served.fetch_add(1, Ordering::Relaxed);
                        return Lookup::Stale(r);
                    }
                }
                (
                    Entry {
                        result: Err(e.clone()),
                        expires: now + self.cfg.failure_ttl,
                        stale_until: now,
                        unreachable_until: None,
                    },
                    Lookup::Failed(e),
                )
            }
            Err(e) => (
                Entry {
                    result: Err(e.clone()),
                    expires: now + self.cfg.negative_ttl,
                    stale_until: now,
                    unreachable_until: None,
                },
                Lookup::Failed(e),
            ),
        };
        if !m.contains_key(q) && m.len() >= self.cfg.cache_size {
            // full: drop what can no longer be served; if still full, do not cache
            m.retain(|_, e| now < e.stale_until.max(e.expires));
            if m.len() >= self.cfg.cache_size {
                return now_use;
            }
        }
        m.insert(q.clone(), entry);
        now_use
    }
}

/// Orders records for one request (RFC 2782): by priority, and within a priority by a
/// weighted random draw, `seed` standing for the random numbers (the core draws none).
pub fn order(records: &[Record], mut seed: u64) -> Vec<Record> {
    let mut v: Vec<Record> = records.to_vec();
    v.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let p = v[i].priority;
        let mut group: Vec<Record> = v[i..]
            .iter()
            .take_while(|r| r.priority == p)
            .copied()
            .collect();
        i += group.len();
        while !group.is_empty() {
            let total: u64 = group.iter().map(|r| r.weight as u64).sum();
            seed = splitmix(seed);
            // a draw in [0, total): each record in proportion to its weight (RFC 2782's
            // draw in [0, total] would favour whichever record the server listed first);
            // zero-weight records follow the others, in random order
            let pick = if total == 0 {
                (seed % group.len() as u64) as usize
            } else {
                let mut n = seed % total;
                group
                    .iter()
                    .position(|r| {
                        if n < r.weight as u64 {
                            true
                        } else {
                            n -= r.weight as u64;
                            false
                        }
                    })
                    .unwrap_or(group.len() - 1)
            };
            out.push(group.remove(pick));
        }
    }
    out
}

/// SplitMix64: a well-mixed step from any seed.
pub(crate) fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(h: &str) -> Query {
        Query::new(h, None, None, false).unwrap()
    }

    fn rec(prio: u16, weight: u16, last: u8) -> Record {
        Record {
            priority: prio,
            weight,
            transport: Transport::Udp,
            addr: ([127, 0, 0, last], 5060).into(),
        }
    }

    fn answer(ttl: u64) -> Result<Answer, DnsError> {
        Ok(Answer {
            records: vec![rec(10, 1, 1)],
            ttl: Duration::from_secs(ttl),
        })
    }

    fn unreachable() -> Result<Answer, DnsError> {
        Err(DnsError::Unreachable {
            name: "fs.example.test".into(),
            detail: "timeout".into(),
        })
    }

    #[test]
    fn host_names_are_checked_before_anything_is_asked() {
        for ok in ["fs.example.test", "a", "x-1.example", "FS.Example.Test."] {
            assert!(Query::new(ok, None, None, false).is_some(), "{ok}");
        }
        let long_label = "a".repeat(64);
        let long_name = format!("{}.test", "a.".repeat(130));
        for bad in [
            "",
            ".",
            "a..b",
            "-a.test",
            "a-.test",
            "a_b.test",
            "a b",
            "1.2.3",
            "a/b",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(Query::new(bad, None, None, false).is_none(), "{bad:?}");
        }
        assert_eq!(&*q("FS.Example.Test.").host, "fs.example.test");
    }

    #[test]
    fn an_answer_is_used_for_its_ttl_then_asked_again() {
        let c = Cache::new(DnsConfig::default());
        let t0 = Instant::now();
        let n = q("fs.example.test");
        assert_eq!(c.lookup(t0, &n), Lookup::Miss);
        assert!(matches!(c.store(t0, &n, answer(30)), Lookup::Fresh(_)));
        assert!(matches!(
            c.lookup(t0 + Duration::from_secs(29), &n),
            Lookup::Fresh(_)
        ));
        assert_eq!(c.lookup(t0 + Duration::from_secs(31), &n), Lookup::Miss);
    }

    #[test]
    fn an_unreachable_server_makes_the_expired_answer_serve_until_the_stale_limit() {
        let cfg = DnsConfig {
            stale_for: Duration::from_secs(100),
            failure_ttl: Duration::from_secs(5),
            ..DnsConfig::default()
        };
        let c = Cache::new(cfg);
        let t0 = Instant::now();
        let n = q("fs.example.test");
        c.store(t0, &n, answer(10));
        let t1 = t0 + Duration::from_secs(20);
        // expired: one request asks again, the server does not answer, the old one serves
        assert_eq!(c.lookup(t1, &n), Lookup::Miss);
        assert!(matches!(c.store(t1, &n, unreachable()), Lookup::Stale(_)));
        // for the failure TTL, requests use the stale answer without waiting
        assert!(matches!(
            c.lookup(t1 + Duration::from_secs(4), &n),
            Lookup::Stale(_)
        ));
        // then one asks again
        assert_eq!(c.lookup(t1 + Duration::from_secs(6), &n), Lookup::Miss);
        // past TTL + stale_for nothing is served any more
        let late = t0 + Duration::from_secs(111);
        assert!(matches!(
            c.store(late, &n, unreachable()),
            Lookup::Failed(_)
        ));
        assert!(matches!(c.lookup(late, &n), Lookup::Failed(_)));
        assert_eq!(c.stale_served.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_name_that_does_not_exist_is_remembered_for_the_negative_ttl() {
        let c = Cache::new(DnsConfig::default());
        let t0 = Instant::now();
        let n = q("nx.example.test");
        let e = DnsError::NotFound {
            name: "nx.example.test".into(),
        };
        assert_eq!(c.store(t0, &n, Err(e.clone())), Lookup::Failed(e.clone()));
        assert_eq!(
            c.lookup(t0 + Duration::from_secs(29), &n),
            Lookup::Failed(e)
        );
        assert_eq!(c.lookup(t0 + Duration::from_secs(31), &n), Lookup::Miss);
        // an empty answer is a name without records
        assert!(matches!(
            c.store(
                t0,
                &n,
                Ok(Answer {
                    records: vec![],
                    ttl: Duration::from_secs(60)
                })
            ),
            Lookup::Failed(DnsError::NotFound { .. })
        ));
    }

    #[test]
    fn ttls_are_clamped_and_the_cache_is_bounded() {
        let c = Cache::new(DnsConfig {
            cache_size: 2,
            ..DnsConfig::default()
        });
        let t0 = Instant::now();
        c.store(t0, &q("a.test"), answer(0));
        // a TTL of 0 still lasts the minimum (a second)
        assert!(matches!(c.lookup(t0, &q("a.test")), Lookup::Fresh(_)));
        c.store(t0, &q("b.test"), answer(60));
        c.store(t0, &q("c.test"), answer(60));
        assert_eq!(c.len(), 2);
        assert_eq!(c.lookup(t0, &q("c.test")), Lookup::Miss);
        // once a.test can no longer be served at all, its room is taken back
        let later = t0 + Duration::from_secs(3602);
        c.store(later, &q("c.test"), answer(60));
        assert!(matches!(c.lookup(later, &q("c.test")), Lookup::Fresh(_)));
    }

    #[test]
    fn records_are_ordered_by_priority_then_weighted_draws() {
        // the server's order must not matter: weights 3:1 give 75 % either way
        for recs in [
            [rec(20, 0, 3), rec(10, 3, 1), rec(10, 1, 2)],
            [rec(10, 1, 2), rec(20, 0, 3), rec(10, 3, 1)],
        ] {
            let mut first = [0u32; 4];
            for seed in 0..4000u64 {
                let o = order(&recs, seed);
                assert_eq!(o.len(), 3);
                assert_eq!(o[2].addr.ip().to_string(), "127.0.0.3", "priority 20 last");
                first[o[0].addr.ip().to_string().as_bytes()[8] as usize - b'0' as usize] += 1;
            }
            assert!((2850..3150).contains(&first[1]), "{first:?}");
            assert!((850..1150).contains(&first[2]), "{first:?}");
        }
        // a zero weight comes after the weighted records
        let z = [rec(5, 0, 1), rec(5, 1, 2)];
        assert!((0..50).all(|s| order(&z, s)[0].addr.port() == 5060 && order(&z, s)[1].weight == 0));
        // all-zero weights still give every record a turn
        let zeros = [rec(1, 0, 1), rec(1, 0, 2)];
        let firsts: std::collections::HashSet<_> =
            (0..50).map(|s| order(&zeros, s)[0].addr).collect();
        assert_eq!(firsts.len(), 2);
    }
}
