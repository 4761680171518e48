//! Selection algorithms: every one of OpenSIPS's and Kamailio's `dispatcher`, by name, with
//! the OpenSIPS number as an alias.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use sip_wire::{HeaderName, Message};

use super::dest::{Dest, DestConfig, HealthBook};
use super::ring::{hash_key, Ring};

/// How a set picks its destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// 0: consistent hash of the Call-ID.
    HashCallId,
    /// 1: consistent hash of the From URI.
    HashFrom,
    /// 2: consistent hash of the To URI.
    HashTo,
    /// 3: consistent hash of the Request-URI.
    HashRuri,
    /// 4: weighted round robin (smooth, interleaved).
    WeightedRoundRobin,
    /// 5: hash of the authorization user name; weighted round robin when there is none.
    HashAuthUser,
    /// 6: uniform random.
    Random,
    /// 7: hash of a configured header's value (`hash_header`); Call-ID when absent.
    HashValue,
    /// 8: first destination by priority (higher first), the rest in order (serial).
    Priority,
    /// 9: random in proportion to weight.
    WeightedRandom,
    /// 10: the destination with the fewest established calls.
    LeastCalls,
    /// Plain round robin, weights ignored (Kamailio 4).
    RoundRobin,
    /// Weight relative to the active destinations only (Kamailio 11).
    RelativeWeight,
    /// Lowest smoothed probe round-trip time first (Kamailio 13).
    Latency,
}

const NAMES: &[(&str, Algorithm)] = &[
    ("hash-callid", Algorithm::HashCallId),
    ("hash-from", Algorithm::HashFrom),
    ("hash-to", Algorithm::HashTo),
    ("hash-ruri", Algorithm::HashRuri),
    ("weighted-round-robin", Algorithm::WeightedRoundRobin),
    ("hash-auth-user", Algorithm::HashAuthUser),
    ("random", Algorithm::Random),
    ("hash-value", Algorithm::HashValue),
    ("priority", Algorithm::Priority),
    ("weighted-random", Algorithm::WeightedRandom),
    ("least-calls", Algorithm::LeastCalls),
    ("round-robin", Algorithm::RoundRobin),
    ("relative-weight", Algorithm::RelativeWeight),
    ("latency", Algorithm::Latency),
];

impl Algorithm {
    /// Parses a name (`round-robin`, `hash-callid`, ...) or an OpenSIPS number (`0`..`10`).
    pub fn parse(s: &str) -> Result<Algorithm, String> {
        let t = s.trim();
        if let Ok(n) = t.parse::<usize>() {
            return NAMES
                .get(n)
                .filter(|_| n <= 10)
                .map(|(_, a)| *a)
                .ok_or_else(|| {
                    format!("unknown algorithm number {n} (OpenSIPS numbers are 0..=10)")
                });
        }
        NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(t))
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                let all: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown algorithm {t:?} (one of {} or an OpenSIPS number 0..=10)",
                    all.join(", ")
                )
            })
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("?", |(n, _)| n)
    }
}

/// A destination set: its destinations and the precomputed structures of its algorithm.
#[derive(Debug)]
pub struct DestSet {
    pub id: i64,
    pub algorithm: Algorithm,
    pub hash_header: Option<String>,
    pub dests: Vec<Arc<Dest>>,
    ring: Ring,
    /// Smooth weighted round-robin order of destination indexes.
    schedule: Vec<u32>,
    /// Destination indexes by priority, highest first (stable for equal priorities).
    by_priority: Vec<u32>,
    /// Running weight sums, for weighted random.
    prefix: Vec<u64>,
    counter: AtomicUsize,
}

/// xorshift64*: a small PRNG whose state lives in an atomic (no global RNG in the core).
pub(crate) fn next_random(state: &AtomicU64) -> u64 {
    let mut x = state.load(Ordering::Relaxed);
    loop {
        let mut y = x;
        y ^= y >> 12;
        y ^= y << 25;
        y ^= y >> 27;
        match state.compare_exchange_weak(x, y, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return y.wrapping_mul(0x2545_f491_4f6c_dd1d),
            Err(cur) => x = cur,
        }
    }
}

/// The smooth weighted round-robin sequence (nginx's): interleaves instead of bursting.
fn smooth_wrr(weights: &[u32]) -> Vec<u32> {
    let g = weights
        .iter()
        .copied()
        .filter(|w| *w > 0)
        .fold(0, gcd)
        .max(1);
    let w: Vec<i64> = weights
        .iter()
        .map(|&x| (x.max(1) / g).max(1) as i64)
        .collect();
    let mut total: i64 = w.iter().sum();
    // keep the schedule bounded; proportions survive the scaling
    let scale = (total / 10_000).max(1);
    let w: Vec<i64> = w.iter().map(|x| (x / scale).max(1)).collect();
    total = w.iter().sum();
    let mut cur = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, wi) in cur.iter_mut().zip(&w) {
            *c += wi;
        }
        let (best, _) = cur
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .unwrap_or((0, &0));
        cur[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The user name of an Authorization or Proxy-Authorization header.
fn auth_user(req: &Message) -> Option<&str> {
    let v = req
        .get(HeaderName::ProxyAuthorization)
        .or_else(|| req.get(HeaderName::Authorization))?;
    let (_, params) = v.split_once([' ', '\t'])?;
    params.split(',').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("username")
            .then(|| v.trim().trim_matches('"'))
    })
}

fn uri_of(v: Option<&str>) -> &str {
    v.and_then(|v| sip_wire::NameAddr::parse(v, "x").ok())
        .map_or("", |n| n.uri.raw)
}

impl DestSet {
    /// Builds a set; the structures of every algorithm are precomputed here, once.
    pub fn new(
        id: i64,
        algorithm: Algorithm,
        hash_header: Option<String>,
        cfgs: Vec<DestConfig>,
    ) -> DestSet {
        let dests = cfgs.into_iter().map(|c| Arc::new(Dest::new(c))).collect();
        DestSet::build(id, algorithm, hash_header, dests)
    }

    /// Builds a set whose destinations take their health from `book` (shared with every
    /// other set and balancer group naming the same server).
    pub fn with_book(
        id: i64,
        algorithm: Algorithm,
        hash_header: Option<String>,
        cfgs: Vec<DestConfig>,
        book: &HealthBook,
    ) -> DestSet {
        let dests = cfgs
            .into_iter()
            .map(|c| {
                // a name's addresses change with DNS: its record is its own, not the book's
                let h = match c.name {
                    Some(_) => Arc::new(crate::dispatcher::Health::new(
                        c.uri.clone(),
                        c.transport,
                        c.addr,
                        c.state,
                    )),
                    None => book.get(&c.uri, c.transport, c.addr, c.state),
                };
                Arc::new(Dest::with_health(c, h))
            })
            .collect();
        DestSet::build(id, algorithm, hash_header, dests)
    }

    fn build(
        id: i64,
        algorithm: Algorithm,
        hash_header: Option<String>,
        dests: Vec<Arc<Dest>>,
    ) -> DestSet {
        let ids: Vec<&str> = dests.iter().map(|d| &*d.cfg.uri).collect();
        let weights: Vec<u32> = dests.iter().map(|d| d.cfg.weight).collect();
        let ring = Ring::new(&ids, &weights);
        let schedule = if dests.is_empty() {
            vec![]
        } else {
            smooth_wrr(&weights)
        };
        let mut by_priority: Vec<u32> = (0..dests.len() as u32).collect();
        by_priority.sort_by_key(|&i| std::cmp::Reverse(dests[i as usize].cfg.priority));
        let mut acc = 0u64;
        let prefix = weights
            .iter()
            .map(|w| {
                acc += (*w).max(1) as u64;
                acc
            })
            .collect();
        DestSet {
            id,
            algorithm,
            hash_header,
            dests,
            ring,
            schedule,
            by_priority,
            prefix,
            counter: AtomicUsize::new(0),
        }
    }

    fn ok(&self, i: usize) -> bool {
        self.dests[i].selectable()
    }

    /// Pushes up to `max` selectable destination indexes by a consistent hash of `key`,
    /// whatever the set's algorithm.
    pub fn select_key(&self, key: &str, max: usize, out: &mut Vec<usize>) {
        let max = max.min(self.dests.len());
        if max > 0 {
            self.ring
                .lookup(hash_key(key.as_bytes()), max, |i| self.ok(i), out);
        }
    }

    /// Pushes up to `max` selectable destination indexes for `req`, best first.
    pub fn select(&self, req: &Message, rng: &AtomicU64, max: usize, out: &mut Vec<usize>) {
        let n = self.dests.len();
        if n == 0 || max == 0 {
            return;
        }
        // never look for more candidates than the set has (the ring walk would scan it all)
        let max = max.min(n);
        let hash = |key: &str| hash_key(key.as_bytes());
        match self.algorithm {
            Algorithm::HashCallId => {
                self.ring
                    .lookup(hash(req.call_id()), max, |i| self.ok(i), out)
            }
            Algorithm::HashFrom => self.ring.lookup(
                hash(uri_of(req.get(HeaderName::From))),
                max,
                |i| self.ok(i),
                out,
            ),
            Algorithm::HashTo => self.ring.lookup(
                hash(uri_of(req.get(HeaderName::To))),
                max,
                |i| self.ok(i),
                out,
            ),
            Algorithm::HashRuri => self
                .ring
                .lookup(hash(req.uri_str()), max, |i| self.ok(i), out),
            Algorithm::HashValue => {
                let v = self
                    .hash_header
                    .as_deref()
                    .and_then(|h| req.get_named(h))
                    .unwrap_or(req.call_id());
                self.ring.lookup(hash(v), max, |i| self.ok(i), out)
            }
            Algorithm::HashAuthUser => match auth_user(req) {
                Some(u) => self.ring.lookup(hash(u), max, |i| self.ok(i), out),
                None => self.weighted_rr(max, out),
            },
            Algorithm::WeightedRoundRobin => self.weighted_rr(max, out),
            Algorithm::RoundRobin => {
                let start = self.counter.fetch_add(1, Ordering::Relaxed) % n;
                self.walk(start, max, out);
            }
            Algorithm::Random => {
                let start = (next_random(rng) % n as u64) as usize;
                self.walk(start, max, out);
            }
            Algorithm::WeightedRandom => {
                let total = *self.prefix.last().unwrap_or(&1);
                let r = next_random(rng) % total;
                let start = self.prefix.partition_point(|&p| p <= r);
                self.walk(start.min(n - 1), max, out);
            }
            Algorithm::RelativeWeight => {
                // weights of the active destinations only: a failed one's share is spread
                let total: u64 = (0..n)
                    .filter(|&i| self.ok(i))
                    .map(|i| self.dests[i].cfg.weight.max(1) as u64)
                    .sum();
                if total == 0 {
                    return;
                }
                let mut r = next_random(rng) % total;
                let mut first = None;
                for i in (0..n).filter(|&i| self.ok(i)) {
                    let w = self.dests[i].cfg.weight.max(1) as u64;
                    if r < w {
                        first = Some(i);
                        break;
                    }
                    r -= w;
                }
                self.walk(first.unwrap_or(0), max, out);
            }
            Algorithm::Priority => {
                for &i in &self.by_priority {
                    if out.len() >= max {
                        break;
                    }
                    if self.ok(i as usize) {
                        out.push(i as usize);
                    }
                }
            }
            Algorithm::LeastCalls => self.best_by(max, out, |d| d.active_calls() as u64),
            Algorithm::Latency => self.best_by(max, out, |d| {
                if d.rtt_us() == 0 {
                    u64::MAX
                } else {
                    d.rtt_us() as u64
                }
            }),
        }
    }

    fn weighted_rr(&self, max: usize, out: &mut Vec<usize>) {
        let len = self.schedule.len();
        let k = self.counter.fetch_add(1, Ordering::Relaxed);
        for step in 0..len {
            let i = self.schedule[(k + step) % len] as usize;
            if self.ok(i) {
                out.push(i);
                return self.walk_after(i, max, out);
            }
        }
    }

    /// Primary at `start` (or the next selectable one), then the others in index order.
    fn walk(&self, start: usize, max: usize, out: &mut Vec<usize>) {
        let n = self.dests.len();
        for k in 0..n {
            let i = (start + k) % n;
            if self.ok(i) {
                out.push(i);
                return self.walk_after(i, max, out);
            }
        }
    }

    fn walk_after(&self, first: usize, max: usize, out: &mut Vec<usize>) {
        let n = self.dests.len();
        for k in 1..n {
            if out.len() >= max {
                return;
            }
            let i = (first + k) % n;
            if self.ok(i) && !out.contains(&i) {
                out.push(i);
            }
        }
    }

    /// The `max` selectable destinations with the lowest `key`, lowest first.
    fn best_by(&self, max: usize, out: &mut Vec<usize>, key: impl Fn(&Dest) -> u64) {
        // one pass keeping the `max` best (max is small): O(n), no sort of the whole set;
        // ties rotate so equal keys share the load
        let rot = self.counter.fetch_add(1, Ordering::Relaxed);
        let n = self.dests.len().max(1);
        let mut best: Vec<((u64, usize), usize)> = Vec::with_capacity(max + 1);
        for (i, d) in self.dests.iter().enumerate() {
            if !d.selectable() {
                continue;
            }
            let k = (key(d), (i + n - rot % n) % n);
            if best.len() == max && best.last().is_some_and(|(bk, _)| k >= *bk) {
                continue;
            }
            let pos = best.partition_point(|(bk, _)| *bk <= k);
            best.insert(pos, (k, i));
            best.truncate(max);
        }
        out.extend(best.into_iter().map(|(_, i)| i));
    }
}

#[cfg(test)]
mod tests;
