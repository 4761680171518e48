//! One destination of a set: its address and settings, the health of its server (shared
//! with every other table naming that server) and its live counters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::types::Transport;

/// Health and admin state of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestState {
    /// Up: receives new calls (OpenSIPS state 0).
    Active,
    /// Down after failures (OpenSIPS state 1): no new calls; probed until it answers again.
    Inactive,
    /// Being probed before use (OpenSIPS state 2): no new calls until `threshold_up` answers.
    Probing,
    /// Switched off by an operator: no new calls, no probes.
    Disabled,
    /// No new dialogs; in-dialog requests still reach it while its calls finish.
    Draining,
}

impl DestState {
    /// The state's name in the API, the CLI and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DestState::Active => "active",
            DestState::Inactive => "inactive",
            DestState::Probing => "probing",
            DestState::Disabled => "disabled",
            DestState::Draining => "draining",
        }
    }

    /// Parses a name or an OpenSIPS/Kamailio letter or number (`a`/`0`, `i`/`1`, `p`/`2`).
    pub fn parse(s: &str) -> Option<DestState> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "active" | "a" | "0" => DestState::Active,
            "inactive" | "i" | "1" => DestState::Inactive,
            "probing" | "p" | "2" => DestState::Probing,
            "disabled" | "d" | "3" => DestState::Disabled,
            "draining" | "drain" | "4" => DestState::Draining,
            _ => return None,
        })
    }

    /// The OpenSIPS `state` column value (our extra states map to inactive).
    pub fn opensips_code(self) -> i32 {
        match self {
            DestState::Active => 0,
            DestState::Probing => 2,
            _ => 1,
        }
    }

    /// The value written to the table's `state` column: the OpenSIPS codes 0–2, and 3 and 4
    /// for our disabled and draining (OpenSIPS reads those as inactive).
    pub fn db_code(self) -> i64 {
        self as i64
    }

    fn to_u8(self) -> u8 {
        self as u8
    }

    fn from_u8(v: u8) -> DestState {
        match v {
            0 => DestState::Active,
            1 => DestState::Inactive,
            2 => DestState::Probing,
            3 => DestState::Disabled,
            _ => DestState::Draining,
        }
    }
}

/// Static settings of a destination (the OpenSIPS `dispatcher` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestConfig {
    /// A host name to resolve per request (RFC 3263); `addr` is then a placeholder.
    pub name: Option<Arc<crate::dns::Query>>,
    pub uri: Arc<str>,
    pub transport: Transport,
    pub addr: SocketAddr,
    pub weight: u32,
    pub priority: i32,
    pub attrs: String,
    pub description: String,
    pub state: DestState,
}

/// The health of one media server, shared by every dispatcher destination and balancer
/// node at its address: a server in two sets, or in a set and a balancer group, is up,
/// down or draining once, for all of them (see [`HealthBook`]).
#[derive(Debug)]
pub struct Health {
    /// The URI it was first configured with (probes go there, logs name it).
    pub uri: Arc<str>,
    pub transport: Transport,
    pub addr: SocketAddr,
    state: AtomicU8,
    fails: AtomicU32,
    oks: AtomicU32,
    /// Smoothed probe round-trip time in microseconds (0 = unknown).
    rtt_us: AtomicU32,
}

impl Health {
    /// A server in `state`, with no history.
    pub fn new(uri: Arc<str>, transport: Transport, addr: SocketAddr, state: DestState) -> Health {
        Health {
            uri,
            transport,
            addr,
            state: AtomicU8::new(state.to_u8()),
            fails: AtomicU32::new(0),
            oks: AtomicU32::new(0),
            rtt_us: AtomicU32::new(0),
        }
    }

    /// Current state.
    pub fn state(&self) -> DestState {
        DestState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// True when new calls may go here.
    pub fn selectable(&self) -> bool {
        self.state() == DestState::Active
    }

    /// True when its last request failed (no reply, a failover reply, a failed probe) and
    /// it has not answered since: a balancer tries it after the others.
    pub fn suspect(&self) -> bool {
        self.fails.load(Ordering::Relaxed) > 0
    }

    /// Sets the state (operator action); returns the transition when it changed.
    pub fn set_state(&self, s: DestState) -> Option<Transition> {
        let old = DestState::from_u8(self.state.swap(s.to_u8(), Ordering::Relaxed));
        self.fails.store(0, Ordering::Relaxed);
        self.oks.store(0, Ordering::Relaxed);
        (old != s).then_some(Transition { from: old, to: s })
    }

    /// A failure (probe not answered or refused, transport error, branch timeout, failover
    /// code). After `threshold` in a row an active destination goes inactive.
    pub fn record_failure(&self, threshold: u32) -> Option<Transition> {
        self.oks.store(0, Ordering::Relaxed);
        let n = self.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let s = self.state();
        if n >= threshold && matches!(s, DestState::Active) {
            return self.cas(s, DestState::Inactive);
        }
        None
    }

    /// A success (accepted probe reply, or any reply to real traffic). An inactive or
    /// probing destination comes back after `threshold` in a row.
    pub fn record_success(&self, threshold: u32) -> Option<Transition> {
        self.fails.store(0, Ordering::Relaxed);
        let s = self.state();
        if matches!(s, DestState::Inactive | DestState::Probing) {
            let n = self.oks.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= threshold {
                self.oks.store(0, Ordering::Relaxed);
                return self.cas(s, DestState::Active);
            }
        }
        None
    }

    fn cas(&self, from: DestState, to: DestState) -> Option<Transition> {
        self.state
            .compare_exchange(
                from.to_u8(),
                to.to_u8(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .ok()
            .map(|_| Transition { from, to })
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.fails.load(Ordering::Relaxed)
    }

    /// Records a probe round trip (exponentially smoothed, 1/4 weight to the new sample).
    pub fn record_rtt(&self, us: u32) {
        let old = self.rtt_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            us.max(1)
        } else {
            ((old as u64 * 3 + us as u64) / 4).max(1) as u32
        };
        self.rtt_us.store(new, Ordering::Relaxed);
    }

    /// Smoothed probe RTT in microseconds, 0 when never measured.
    pub fn rtt_us(&self) -> u32 {
        self.rtt_us.load(Ordering::Relaxed)
    }
}

/// Servers one owner has probed besides the dispatcher's destinations.
type Extra = (&'static str, Vec<Arc<Health>>);

/// One [`Health`] per media server address (transport and socket address): the dispatcher's
/// sets and the balancer's groups take theirs from here, so they share it, and a table
/// rebuilt on reload finds the record of a server that stays (its state, failures and RTT
/// carry over). Entries are weak: a server removed from every table is forgotten.
#[derive(Debug, Default)]
pub struct HealthBook {
    entries: Mutex<HashMap<(Transport, SocketAddr), Weak<Health>>>,
    /// Servers probed besides the dispatcher's destinations, per owner (the balancer's
    /// nodes, the carrier gateways).
    extra: Mutex<Vec<Extra>>,
}

impl HealthBook {
    /// The record of the server at (`transport`, `addr`), made in `state` if it has none.
    pub fn get(
        &self,
        uri: &Arc<str>,
        transport: Transport,
        addr: SocketAddr,
        state: DestState,
    ) -> Arc<Health> {
        let mut g = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = g.get(&(transport, addr)).and_then(Weak::upgrade) {
            return h;
        }
        g.retain(|_, w| w.strong_count() > 0);
        let h = Arc::new(Health::new(uri.clone(), transport, addr, state));
        g.insert((transport, addr), Arc::downgrade(&h));
        h
    }

    /// Replaces the servers `owner` has probed besides the dispatcher's destinations.
    pub fn set_extra(&self, owner: &'static str, v: Vec<Arc<Health>>) {
        let mut g = self.extra.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|(o, _)| *o != owner);
        g.push((owner, v));
    }

    /// The servers probed besides the dispatcher's destinations.
    pub fn extra(&self) -> Vec<Arc<Health>> {
        let g = self.extra.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().flat_map(|(_, v)| v.iter().cloned()).collect()
    }
}

/// A destination of a set: its settings, the shared health of its server, and the calls
/// established through this set's entry.
#[derive(Debug)]
pub struct Dest {
    pub cfg: DestConfig,
    health: Arc<Health>,
    calls: AtomicU32,
    /// A named destination's addresses as last resolved, each with its server's health
    /// (from the book: probed, fed by calls, shared with any table naming the address).
    targets: Mutex<Vec<Arc<Health>>>,
}

/// A state change worth logging once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: DestState,
    pub to: DestState,
}

impl Dest {
    /// A destination with a health record of its own (tests, a set built alone).
    pub(crate) fn new(cfg: DestConfig) -> Dest {
        let h = Arc::new(Health::new(
            cfg.uri.clone(),
            cfg.transport,
            cfg.addr,
            cfg.state,
        ));
        Dest::with_health(cfg, h)
    }

    pub(crate) fn with_health(cfg: DestConfig, health: Arc<Health>) -> Dest {
        Dest {
            cfg,
            health,
            calls: AtomicU32::new(0),
            targets: Mutex::new(Vec::new()),
        }
    }

    /// A named destination's addresses as last resolved, with their health.
    pub fn targets(&self) -> Vec<Arc<Health>> {
        self.targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// True when one of a named destination's addresses satisfies `f` (a media server
    /// calling from an address its name resolved to is one of ours).
    pub fn has_target(&self, f: impl Fn(&Health) -> bool) -> bool {
        self.cfg.name.is_some()
            && self
                .targets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|h| f(h))
    }

    /// Keeps `t` as the named destination's addresses.
    pub(crate) fn set_targets(&self, t: Vec<Arc<Health>>) {
        *self.targets.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// The server's shared health.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Current state.
    pub fn state(&self) -> DestState {
        self.health.state()
    }

    /// True when new calls may go here.
    pub fn selectable(&self) -> bool {
        self.health.selectable()
    }

    /// Sets the state (operator action); returns the transition when it changed.
    pub fn set_state(&self, s: DestState) -> Option<Transition> {
        self.health.set_state(s)
    }

    /// Copies the call count of the destination this one replaces on reload (the health
    /// is shared through the [`HealthBook`]).
    pub(crate) fn inherit(&self, old: &Dest) {
        self.calls
            .store(old.calls.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// See [`Health::record_failure`].
    pub fn record_failure(&self, threshold: u32) -> Option<Transition> {
        self.health.record_failure(threshold)
    }

    /// See [`Health::record_success`].
    pub fn record_success(&self, threshold: u32) -> Option<Transition> {
        self.health.record_success(threshold)
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.health.failures()
    }

    /// Calls established on this destination and not yet ended.
    pub fn active_calls(&self) -> u32 {
        self.calls.load(Ordering::Relaxed)
    }

    pub(crate) fn call_started(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn call_ended(&self) {
        let _ = self
            .calls
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1));
    }

    /// See [`Health::record_rtt`].
    pub fn record_rtt(&self, us: u32) {
        self.health.record_rtt(us)
    }

    /// Smoothed probe RTT in microseconds, 0 when never measured.
    pub fn rtt_us(&self) -> u32 {
        self.health.rtt_us()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest() -> Dest {
        Dest::new(DestConfig {
            name: None,
            uri: "sip:127.0.0.1:5080".into(),
            transport: Transport::Udp,
            addr: "127.0.0.1:5080".parse().unwrap(),
            weight: 1,
            priority: 0,
            attrs: String::new(),
            description: String::new(),
            state: DestState::Active,
        })
    }

    #[test]
    fn goes_down_after_threshold_failures_and_back_after_threshold_successes() {
        let d = dest();
        assert_eq!(d.record_failure(3), None);
        assert_eq!(d.record_failure(3), None);
        assert_eq!(
            d.record_failure(3),
            Some(Transition {
                from: DestState::Active,
                to: DestState::Inactive
            })
        );
        assert!(!d.selectable());
        assert_eq!(d.record_failure(3), None, "logged once");
        assert_eq!(d.record_success(2), None);
        assert_eq!(
            d.record_success(2),
            Some(Transition {
                from: DestState::Inactive,
                to: DestState::Active
            })
        );
        assert!(d.selectable());
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let d = dest();
        d.record_failure(3);
        d.record_failure(3);
        d.record_success(1);
        assert_eq!(d.record_failure(3), None);
        assert!(d.selectable());
    }

    #[test]
    fn admin_states_are_not_changed_by_health() {
        let d = dest();
        d.set_state(DestState::Disabled);
        for _ in 0..5 {
            d.record_success(1);
        }
        assert_eq!(d.state(), DestState::Disabled);
        d.set_state(DestState::Draining);
        for _ in 0..5 {
            d.record_failure(1);
        }
        assert_eq!(d.state(), DestState::Draining);
    }

    #[test]
    fn call_counter_never_underflows() {
        let d = dest();
        d.call_ended();
        assert_eq!(d.active_calls(), 0);
        d.call_started();
        d.call_ended();
        d.call_ended();
        assert_eq!(d.active_calls(), 0);
    }

    #[test]
    fn state_names_and_letters_parse() {
        for (s, st) in [
            ("a", DestState::Active),
            ("I", DestState::Inactive),
            ("2", DestState::Probing),
            ("disabled", DestState::Disabled),
            ("drain", DestState::Draining),
        ] {
            assert_eq!(DestState::parse(s), Some(st));
        }
        assert_eq!(DestState::parse("sleepy"), None);
    }
}
