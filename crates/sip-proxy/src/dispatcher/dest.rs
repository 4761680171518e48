//! One destination of a set: its address, settings, health state and live counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

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
    pub uri: Arc<str>,
    pub transport: Transport,
    pub addr: SocketAddr,
    pub weight: u32,
    pub priority: i32,
    pub attrs: String,
    pub description: String,
    pub state: DestState,
}

/// A destination with its live state, shared by every selection and probe.
#[derive(Debug)]
pub struct Dest {
    pub cfg: DestConfig,
    state: AtomicU8,
    fails: AtomicU32,
    oks: AtomicU32,
    calls: AtomicU32,
    /// Smoothed probe round-trip time in microseconds (0 = unknown).
    rtt_us: AtomicU32,
}

/// A state change worth logging once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: DestState,
    pub to: DestState,
}

impl Dest {
    pub(crate) fn new(cfg: DestConfig) -> Dest {
        let s = cfg.state;
        Dest {
            cfg,
            state: AtomicU8::new(s.to_u8()),
            fails: AtomicU32::new(0),
            oks: AtomicU32::new(0),
            calls: AtomicU32::new(0),
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

    /// Sets the state (operator action); returns the transition when it changed.
    pub fn set_state(&self, s: DestState) -> Option<Transition> {
        let old = DestState::from_u8(self.state.swap(s.to_u8(), Ordering::Relaxed));
        self.fails.store(0, Ordering::Relaxed);
        self.oks.store(0, Ordering::Relaxed);
        (old != s).then_some(Transition { from: old, to: s })
    }

    /// Copies the live state of the destination this one replaces on reload.
    pub(crate) fn inherit(&self, old: &Dest) {
        self.state
            .store(old.state.load(Ordering::Relaxed), Ordering::Relaxed);
        self.fails
            .store(old.fails.load(Ordering::Relaxed), Ordering::Relaxed);
        self.oks
            .store(old.oks.load(Ordering::Relaxed), Ordering::Relaxed);
        self.calls
            .store(old.calls.load(Ordering::Relaxed), Ordering::Relaxed);
        self.rtt_us
            .store(old.rtt_us.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// A failure (probe not answered or refused, transport error, branch timeout, failover
    /// code). After `threshold` in a row an active or draining destination goes inactive.
    pub fn record_failure(&self, threshold: u32) -> Option<Transition> {
        self.oks.store(0, Ordering::Relaxed);
        let n = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dest() -> Dest {
        Dest::new(DestConfig {
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
