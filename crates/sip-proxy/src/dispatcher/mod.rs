//! The dispatcher: destination sets with every OpenSIPS/Kamailio selection algorithm,
//! health probing (OPTIONS or INFO), failure feedback from real traffic, drain, and an
//! atomically swapped table that reloads without losing the live state of survivors.
//!
//! Sans-IO like the rest of the core: probes leave through [`Router::due_probes`] as values
//! the core turns into requests; their outcomes come back through [`Router::probe_result`].

mod algorithm;
mod codes;
mod dest;
pub mod kamailio;
mod ring;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sip_wire::Message;

pub use algorithm::{Algorithm, DestSet};
pub use codes::ReplyCodes;
pub use dest::{Dest, DestConfig, DestState, Health, HealthBook, Transition};
pub use ring::hash_key;

/// The xorshift step the random algorithms use (shared with the balancer's tie-break).
pub(crate) fn next_random_pub(state: &std::sync::atomic::AtomicU64) -> u64 {
    algorithm::next_random(state)
}

use crate::router::{Probe, Router};
use crate::types::{Destination, Target};

/// Which destinations are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMode {
    /// Every destination but the disabled ones (OpenSIPS `ds_probing_mode` 1).
    All,
    /// Only inactive and probing ones (mode 0).
    OnlyFailed,
}

/// Health-probing settings.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Time between probe rounds; zero turns probing off.
    pub interval: Duration,
    /// `OPTIONS` or `INFO`.
    pub method: &'static str,
    /// From URI of the probes.
    pub from: String,
    pub max_forwards: u8,
    /// Consecutive failures that take an active destination down.
    pub threshold_down: u32,
    /// Consecutive successes that bring an inactive or probing destination back.
    pub threshold_up: u32,
    pub codes: ReplyCodes,
    pub mode: ProbeMode,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            interval: Duration::from_secs(5),
            method: "OPTIONS",
            from: "sip:switchboard@localhost".into(),
            max_forwards: 10,
            threshold_down: 3,
            threshold_up: 1,
            codes: ReplyCodes::default(),
            mode: ProbeMode::All,
        }
    }
}

/// The sets in force; replaced whole on reload.
#[derive(Debug, Default)]
pub struct SetTable {
    pub sets: Vec<Arc<DestSet>>,
}

impl SetTable {
    /// The set with this id.
    pub fn get(&self, id: i64) -> Option<&Arc<DestSet>> {
        self.sets.iter().find(|s| s.id == id)
    }
}

/// A set as configured, before it is built.
#[derive(Debug, Clone)]
pub struct SetConfig {
    pub id: i64,
    pub algorithm: Algorithm,
    pub hash_header: Option<String>,
    pub destinations: Vec<DestConfig>,
}

struct PendingProbe {
    health: Arc<Health>,
    sent: Instant,
    deadline: Instant,
}

#[derive(Default)]
struct ProbeBook {
    next_round: Option<Instant>,
    next_id: u64,
    pending: HashMap<u64, PendingProbe>,
}

/// The dispatcher. Selection reads the current table under a read lock held for the time of
/// an `Arc` clone; reloads swap the table.
pub struct Dispatcher {
    table: RwLock<Arc<SetTable>>,
    default_set: i64,
    max_attempts: usize,
    probe: ProbeConfig,
    rng: AtomicU64,
    book: Mutex<ProbeBook>,
    calls: Mutex<HashMap<String, Arc<Dest>>>,
    /// The configuration the table was built from (runtime adds and removes edit it).
    configs: Mutex<Vec<SetConfig>>,
    /// Called on every state change (set, URI, new state): persistence to the table.
    hook: RwLock<Option<TransitionHook>>,
    /// The health of every server, shared with the balancer.
    health: Arc<HealthBook>,
}

/// Observer of destination state changes.
pub type TransitionHook = Box<dyn Fn(i64, &str, DestState) + Send + Sync>;

/// Logs a state change of a server once, and tells the hook about every set entry naming
/// it (balancer-only servers have none).
fn log_transition(
    hook: &RwLock<Option<TransitionHook>>,
    table: &SetTable,
    h: &Arc<Health>,
    t: Option<Transition>,
    why: &str,
) {
    let Some(t) = t else { return };
    let mut sets = Vec::new();
    for s in &table.sets {
        for d in s.dests.iter().filter(|d| Arc::ptr_eq(d.health(), h)) {
            sets.push(s.id);
            if let Some(f) = hook.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
                f(s.id, &d.cfg.uri, t.to);
            }
        }
    }
    if t.to == DestState::Active {
        tracing::info!(sets = ?sets, destination = %h.uri, from = t.from.as_str(), to = t.to.as_str(), why, "destination state changed");
    } else {
        tracing::warn!(sets = ?sets, destination = %h.uri, from = t.from.as_str(), to = t.to.as_str(), why, "destination state changed");
    }
}

impl Dispatcher {
    /// A dispatcher routing initial requests to `default_set`, trying at most
    /// `max_attempts` destinations per request.
    pub fn new(
        sets: Vec<SetConfig>,
        default_set: i64,
        max_attempts: usize,
        probe: ProbeConfig,
        seed: u64,
    ) -> Dispatcher {
        let d = Dispatcher {
            table: RwLock::new(Arc::new(SetTable::default())),
            default_set,
            max_attempts: max_attempts.max(1),
            probe,
            rng: AtomicU64::new(seed | 1),
            book: Mutex::default(),
            calls: Mutex::default(),
            configs: Mutex::default(),
            hook: RwLock::new(None),
            health: Arc::default(),
        };
        d.reload(sets, false);
        d
    }

    /// Installs the observer of state changes (e.g. writing the table's `state` column).
    pub fn set_transition_hook(&self, hook: TransitionHook) {
        *self.hook.write().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// The table in force.
    pub fn table(&self) -> Arc<SetTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The health records of the servers, for the balancer to share.
    pub fn health_book(&self) -> &Arc<HealthBook> {
        &self.health
    }

    /// The probing settings.
    pub fn probe_config(&self) -> &ProbeConfig {
        &self.probe
    }

    /// The set initial requests go to.
    pub fn default_set(&self) -> i64 {
        self.default_set
    }

    /// Replaces the table atomically. With `inherit_state`, a destination present before
    /// (same set, same URI) keeps its state, counters and RTT.
    pub fn reload(&self, sets: Vec<SetConfig>, inherit_state: bool) -> usize {
        *self.configs.lock().unwrap_or_else(|p| p.into_inner()) = sets.clone();
        let old = self.table();
        let mut built = Vec::with_capacity(sets.len());
        let mut n = 0;
        for s in sets {
            let set = DestSet::with_book(
                s.id,
                s.algorithm,
                s.hash_header,
                s.destinations,
                &self.health,
            );
            if !inherit_state {
                // afresh: the configured state, whatever the shared record says
                for d in &set.dests {
                    d.set_state(d.cfg.state);
                }
            } else if let Some(prev) = old.get(set.id) {
                for d in &set.dests {
                    if let Some(p) = prev.dests.iter().find(|p| p.cfg.uri == d.cfg.uri) {
                        d.inherit(p);
                    }
                }
            }
            n += set.dests.len();
            built.push(Arc::new(set));
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(SetTable { sets: built });
        n
    }

    /// Adds a destination at run time (a new set when `set` does not exist yet); every
    /// other destination keeps its state.
    pub fn add_destination(&self, set: i64, dest: DestConfig) -> Result<(), crate::Error> {
        let mut sets = self
            .configs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match sets.iter_mut().find(|s| s.id == set) {
            Some(s) if s.destinations.iter().any(|d| d.uri == dest.uri) => {
                return Err(crate::Error::Invalid(format!(
                    "{} is already in set {set}",
                    dest.uri
                )))
            }
            Some(s) => s.destinations.push(dest),
            None => sets.push(SetConfig {
                id: set,
                algorithm: Algorithm::RoundRobin,
                hash_header: None,
                destinations: vec![dest],
            }),
        }
        self.reload(sets, true);
        Ok(())
    }

    /// Removes a destination at run time.
    pub fn remove_destination(&self, set: i64, uri: &str) -> Result<(), crate::Error> {
        let mut sets = self
            .configs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let s = sets
            .iter_mut()
            .find(|s| s.id == set)
            .ok_or_else(|| crate::Error::NotFound(format!("no set {set}")))?;
        let before = s.destinations.len();
        s.destinations.retain(|d| &*d.uri != uri);
        if s.destinations.len() == before {
            return Err(crate::Error::NotFound(format!(
                "no destination {uri} in set {set}"
            )));
        }
        self.reload(sets, true);
        Ok(())
    }

    /// Sets a destination's state by set id and URI (`ds_set_state`).
    pub fn set_state(&self, set: i64, uri: &str, state: DestState) -> Result<(), crate::Error> {
        let t = self.table();
        let s = t
            .get(set)
            .ok_or_else(|| crate::Error::NotFound(format!("no set {set}")))?;
        let d =
            s.dests.iter().find(|d| &*d.cfg.uri == uri).ok_or_else(|| {
                crate::Error::NotFound(format!("no destination {uri} in set {set}"))
            })?;
        log_transition(&self.hook, &t, d.health(), d.set_state(state), "operator");
        Ok(())
    }

    /// A call answered by `dest` (for least-calls and drain reporting).
    pub fn call_answered(&self, call_id: &str, dest: &Arc<Dest>) {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if !calls.contains_key(call_id) {
            dest.call_started();
            calls.insert(call_id.to_string(), dest.clone());
        }
    }

    /// A call ended (BYE seen).
    pub fn call_ended(&self, call_id: &str) {
        if let Some(d) = self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(call_id)
        {
            d.call_ended();
        }
    }

    /// A result of real traffic for a server: a reply (`ok`), or a timeout, transport
    /// error or failover reply; the thresholds of the probing settings apply.
    pub fn health_feedback(&self, h: &Arc<Health>, ok: bool, why: &str) {
        let t = if ok {
            h.record_success(self.probe.threshold_up)
        } else {
            h.record_failure(self.probe.threshold_down)
        };
        if t.is_some() {
            log_transition(&self.hook, &self.table(), h, t, why);
        }
    }

    pub(crate) fn to_destination(d: &Arc<Dest>) -> Destination {
        Destination {
            uri: d.cfg.uri.clone(),
            transport: d.cfg.transport,
            addr: d.cfg.addr,
            flow: None,
            node: Some(d.clone() as crate::NodeRef),
            route: None,
            name: d.cfg.name.clone(),
        }
    }

    /// Candidates of a set for a request (the router entry point, for a given set).
    pub fn select_in(&self, set: i64, req: &Message, out: &mut Vec<Destination>) {
        let t = self.table();
        let Some(s) = t.get(set) else { return };
        let mut idx = Vec::with_capacity(self.max_attempts);
        s.select(req, &self.rng, self.max_attempts, &mut idx);
        out.extend(idx.into_iter().map(|i| Self::to_destination(&s.dests[i])));
    }

    /// Prometheus lines: one gauge per destination for its state and its calls.
    pub fn metrics_text(&self) -> String {
        let mut s = String::from("# HELP switchboard_dispatcher_destination_up 1 when the destination takes new calls\n# TYPE switchboard_dispatcher_destination_up gauge\n");
        let t = self.table();
        for set in &t.sets {
            for d in &set.dests {
                s.push_str(&format!("switchboard_dispatcher_destination_up{{set=\"{}\",destination=\"{}\",state=\"{}\"}} {}\n", set.id, d.cfg.uri, d.state().as_str(), d.selectable() as u8));
            }
        }
        s.push_str("# HELP switchboard_dispatcher_destination_calls calls established on the destination\n# TYPE switchboard_dispatcher_destination_calls gauge\n");
        for set in &t.sets {
            for d in &set.dests {
                s.push_str(&format!("switchboard_dispatcher_destination_calls{{set=\"{}\",destination=\"{}\"}} {}\n", set.id, d.cfg.uri, d.active_calls()));
            }
        }
        s
    }
}

impl Router for Dispatcher {
    fn select(&self, req: &Message, out: &mut Vec<Destination>) {
        self.select_in(self.default_set, req, out);
    }

    fn describe(&self) -> String {
        format!("set {}", self.default_set)
    }

    fn select_by_key(&self, key: &str, _req: &Message, out: &mut Vec<Destination>) {
        let t = self.table();
        let Some(s) = t.get(self.default_set) else {
            return;
        };
        let mut idx = Vec::with_capacity(self.max_attempts);
        s.select_key(key, self.max_attempts, &mut idx);
        out.extend(idx.into_iter().map(|i| Self::to_destination(&s.dests[i])));
    }

    fn is_destination(&self, addr: std::net::SocketAddr) -> bool {
        self.table().sets.iter().any(|s| {
            s.dests
                .iter()
                .any(|d| d.cfg.addr == addr || d.has_target(|h| h.addr == addr))
        })
    }

    fn is_destination_ip(&self, ip: std::net::IpAddr) -> bool {
        self.table().sets.iter().any(|s| {
            s.dests
                .iter()
                .any(|d| d.cfg.addr.ip() == ip || d.has_target(|h| h.addr.ip() == ip))
        })
    }

    fn name_targets(&self, named: &Destination, targets: &mut Vec<Destination>) {
        let Some(d) = dest_of(named) else {
            return;
        };
        let mut healths = Vec::with_capacity(targets.len());
        for t in targets.iter_mut() {
            let h = self
                .health
                .get(&named.uri, t.transport, t.addr, DestState::Active);
            t.node = Some(Arc::new(h.clone()) as crate::NodeRef);
            healths.push(h);
        }
        // the addresses known down are passed over; those whose last call or probe failed
        // come after the others (the sort is stable: SRV order otherwise)
        targets.retain(|t| target_health(t).is_none_or(|h| h.selectable()));
        targets.sort_by_key(|t| target_health(t).is_some_and(|h| h.suspect()));
        d.set_targets(healths);
    }

    fn on_branch_result(&self, dest: &Destination, ok: bool) {
        if let Some(h) = target_health(dest) {
            let why = if ok {
                "reply"
            } else {
                "no reply or failover reply"
            };
            return self.health_feedback(h, ok, why);
        }
        if let Some(n) = dest_of(dest) {
            self.health_feedback(
                n.health(),
                ok,
                if ok {
                    "reply"
                } else {
                    "no reply or failover reply"
                },
            );
        }
    }

    fn on_call_answered(&self, call_id: &str, dest: &Destination) {
        if let Some(n) = dest.node.clone().and_then(|n| n.downcast::<Dest>().ok()) {
            self.call_answered(call_id, &n);
        }
    }

    fn on_call_ended(&self, call_id: &str) {
        self.call_ended(call_id);
    }

    fn restore_call(&self, call_id: &str, node: Option<&str>, _from: std::net::SocketAddr) {
        let Some(uri) = node else {
            return;
        };
        let found = self
            .table()
            .sets
            .iter()
            .flat_map(|s| s.dests.iter())
            .find(|d| &*d.cfg.uri == uri)
            .cloned();
        if let Some(d) = found {
            self.call_answered(call_id, &d);
        }
    }

    fn due_probes(&self, now: Instant, out: &mut Vec<Probe>) {
        if self.probe.interval.is_zero() {
            return;
        }
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        // unanswered probes are failures
        let expired: Vec<u64> = book
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = book.pending.remove(&id) {
                let t = p.health.record_failure(self.probe.threshold_down);
                if t.is_some() {
                    log_transition(&self.hook, &self.table(), &p.health, t, "probe timeout");
                }
            }
        }
        if book.next_round.is_some_and(|t| t > now) {
            return;
        }
        let table = self.table();
        book.next_round = Some(now + self.probe.interval);
        let timeout = self
            .probe
            .interval
            .min(Duration::from_secs(4))
            .max(Duration::from_millis(200));
        // every server once, whether it is in one set, several, or a balancer group only
        let mut servers: Vec<Arc<Health>> = Vec::new();
        // a named destination is probed at the addresses it last resolved to
        let all = table
            .sets
            .iter()
            .flat_map(|s| {
                s.dests.iter().flat_map(|d| {
                    let mut v = d.targets();
                    v.push(d.health().clone());
                    v
                })
            })
            .chain(self.health.extra());
        for h in all.filter(|h| !h.addr.ip().is_unspecified()) {
            if !servers.iter().any(|x| Arc::ptr_eq(x, &h)) {
                servers.push(h);
            }
        }
        for h in servers {
            let probe_it = match h.state() {
                DestState::Disabled => false,
                DestState::Inactive | DestState::Probing => true,
                DestState::Active | DestState::Draining => self.probe.mode == ProbeMode::All,
            };
            if !probe_it || book.pending.values().any(|p| Arc::ptr_eq(&p.health, &h)) {
                continue;
            }
            book.next_id += 1;
            let id = book.next_id;
            out.push(Probe {
                id,
                target: Target {
                    transport: h.transport,
                    addr: h.addr,
                    flow: None,
                },
                uri: h.uri.clone(),
                method: self.probe.method,
                from: self.probe.from.clone(),
                max_forwards: self.probe.max_forwards,
            });
            book.pending.insert(
                id,
                PendingProbe {
                    health: h,
                    sent: now,
                    deadline: now + timeout,
                },
            );
        }
    }

    fn probe_result(&self, now: Instant, id: u64, code: Option<u16>) {
        let Some(p) = self
            .book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .remove(&id)
        else {
            return;
        };
        let ok = code.is_some_and(|c| self.probe.codes.accepts(c));
        if ok {
            p.health.record_rtt(
                now.saturating_duration_since(p.sent)
                    .as_micros()
                    .min(u32::MAX as u128) as u32,
            );
        }
        let t = if ok {
            p.health.record_success(self.probe.threshold_up)
        } else {
            p.health.record_failure(self.probe.threshold_down)
        };
        let why = match code {
            Some(c) if !ok => format!("probe answered {c}"),
            Some(_) => "probe answered".to_string(),
            None => "probe could not be sent".to_string(),
        };
        log_transition(&self.hook, &self.table(), &p.health, t, &why);
    }
}

#[cfg(test)]
mod tests;

/// The health of one address of a named destination, when the candidate is one.
fn target_health(d: &Destination) -> Option<&Arc<Health>> {
    d.node.as_ref()?.downcast_ref::<Arc<Health>>()
}

/// The dispatcher destination behind a candidate, when the dispatcher chose it.
pub fn dest_of(d: &Destination) -> Option<&Dest> {
    d.node.as_ref()?.downcast_ref::<Dest>()
}
