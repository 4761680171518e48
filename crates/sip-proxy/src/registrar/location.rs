//! The location table: address-of-record → bindings (RFC 3261 §10.3), sharded by AOR.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::types::Target;

/// One binding of an address-of-record to a contact.
#[derive(Debug, Clone)]
pub struct Binding {
    /// Unique over the process (and persisted as `contact_id`).
    pub id: u64,
    pub uri: Box<str>,
    /// q-value in thousandths (1000 = 1.0).
    pub q: u16,
    pub expires_at: Instant,
    /// The same moment as UNIX seconds, for persistence and display.
    pub expires_unix: u64,
    pub call_id: Box<str>,
    pub cseq: u32,
    /// Where the REGISTER came from: the address, transport and connection to reach the
    /// client behind its NAT.
    pub source: Target,
    /// The Contact does not name the address the REGISTER came from.
    pub nat: bool,
    /// Path header values (RFC 3327), joined by commas.
    pub path: Option<Box<str>>,
    /// `+sip.instance` and `reg-id` (RFC 5626).
    pub instance: Option<Box<str>>,
    pub reg_id: Option<u32>,
    /// Shared between the bindings of the same User-Agent (phones of one model).
    pub user_agent: Option<std::sync::Arc<str>>,
    /// UNIX seconds of the last REGISTER that saved or refreshed it.
    pub updated_unix: u64,
    /// The cluster node that saved it (0 outside a cluster): the one holding its
    /// connection, sending its keepalives and expiring it in the shared store.
    pub node: u16,
    /// Keepalive pings that went unanswered since the last one answered; the top bit
    /// ([`super::PING_OUT`]) is set while one is out (see [`Binding::missed_pings`]).
    pub missed: u8,
}

impl Binding {
    /// Keepalives that went unanswered since the last answer (not the one out now).
    pub fn missed_pings(&self) -> u8 {
        self.missed & !super::PING_OUT
    }
}

/// A change to persist (write-behind).
#[derive(Debug, Clone)]
pub enum LocEvent {
    Saved { aor: String, binding: Box<Binding> },
    Removed { aor: String, id: u64 },
}

/// The in-memory table.
type Table = HashMap<Box<str>, Vec<Binding>>;

pub struct Location {
    shards: Box<[Mutex<Table>]>,
}

fn shard_hash(aor: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    aor.hash(&mut h);
    h.finish()
}

impl Location {
    pub fn new(shards: usize) -> Location {
        Location {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, aor: &str) -> std::sync::MutexGuard<'_, Table> {
        let i = (shard_hash(aor) % self.shards.len() as u64) as usize;
        match self.shards[i].lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Runs `f` on the bindings of `aor` (created empty when absent); an AOR left without
    /// bindings is dropped.
    pub fn with<R>(&self, aor: &str, f: impl FnOnce(&mut Vec<Binding>) -> R) -> R {
        let mut g = self.shard(aor);
        let v = g.entry(aor.into()).or_default();
        let r = f(v);
        if v.is_empty() {
            g.remove(aor);
        }
        r
    }

    /// The live bindings of `aor`, best q first, then most recent first.
    pub fn lookup(&self, aor: &str, now: Instant) -> Vec<Binding> {
        let g = self.shard(aor);
        let mut v: Vec<Binding> = g
            .get(aor)
            .map(|b| b.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.q.cmp(&a.q).then(b.updated_unix.cmp(&a.updated_unix)));
        v
    }

    /// True when `aor` has a live binding.
    pub fn contains(&self, aor: &str, now: Instant) -> bool {
        self.shard(aor)
            .get(aor)
            .is_some_and(|v| v.iter().any(|b| b.expires_at > now))
    }

    /// Visits every AOR; `f` may change or drop bindings.
    pub fn for_each(&self, mut f: impl FnMut(&str, &mut Vec<Binding>)) {
        for s in self.shards.iter() {
            let mut g = match s.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            g.retain(|aor, v| {
                f(aor, v);
                !v.is_empty()
            });
        }
    }

    /// Number of AORs and bindings.
    pub fn counts(&self) -> (usize, usize) {
        let mut a = 0;
        let mut b = 0;
        for s in self.shards.iter() {
            let g = match s.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            a += g.len();
            b += g.values().map(Vec::len).sum::<usize>();
        }
        (a, b)
    }
}
