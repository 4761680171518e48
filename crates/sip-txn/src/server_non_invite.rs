use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::timers::{TimerConfig, TimerTable};
use crate::{RequestAction, TxnEvent};

/// States of the non-INVITE server transaction (§17.2.2, Figure 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

const J: usize = 0;

/// The non-INVITE server transaction: absorbs request retransmissions, answering them with
/// the last response once there is one, and keeps the final response for Timer J.
#[derive(Debug)]
pub struct ServerNonInvite {
    state: ServerNonInviteState,
    cfg: TimerConfig,
    reliable: bool,
    last: Option<Bytes>,
    timers: TimerTable<1>,
    out: VecDeque<Bytes>,
}

impl ServerNonInvite {
    /// Creates the transaction for a new request.
    pub fn new(reliable: bool, cfg: TimerConfig) -> Self {
        ServerNonInvite {
            state: ServerNonInviteState::Trying,
            cfg,
            reliable,
            last: None,
            timers: TimerTable::default(),
            out: VecDeque::new(),
        }
    }

    /// Current state.
    pub fn state(&self) -> ServerNonInviteState {
        self.state
    }

    /// Sends a response from the TU; false if a final was already sent.
    pub fn send_response(&mut self, now: Instant, code: u16, msg: Bytes) -> bool {
        use ServerNonInviteState::*;
        match (self.state, code) {
            (Trying | Proceeding, 100..=199) => self.state = Proceeding,
            (Trying | Proceeding, _) => {
                self.state = Completed;
                self.timers.set(
                    J,
                    now + if self.reliable {
                        Duration::ZERO
                    } else {
                        self.cfg.t1x64()
                    },
                );
            }
            _ => return false,
        }
        self.last = Some(msg.clone());
        self.out.push_back(msg);
        true
    }

    /// A retransmission of the request arrived.
    pub fn on_request(&mut self) -> RequestAction {
        if self.state != ServerNonInviteState::Trying {
            if let Some(l) = &self.last {
                self.out.push_back(l.clone());
            }
        }
        RequestAction::Absorbed
    }

    /// Fires expired timers.
    pub fn on_timeout(&mut self, now: Instant) -> Option<TxnEvent> {
        if self.timers.expired(now) == Some(J) {
            self.state = ServerNonInviteState::Terminated;
            return Some(TxnEvent::Terminated);
        }
        None
    }

    /// Next message to send.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.pop_front()
    }

    /// When `on_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trying_absorbs_silently_then_completed_resends_final() {
        let t0 = Instant::now();
        let mut t = ServerNonInvite::new(false, TimerConfig::default());
        t.on_request();
        assert!(t.poll_transmit().is_none());
        assert!(t.send_response(t0, 200, Bytes::from_static(b"200")));
        t.poll_transmit();
        t.on_request();
        assert_eq!(t.poll_transmit().as_deref(), Some(&b"200"[..]));
        assert!(!t.send_response(t0, 500, Bytes::from_static(b"500")));
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        assert_eq!(
            t.on_timeout(t0 + Duration::from_secs(32)),
            Some(TxnEvent::Terminated)
        );
    }

    #[test]
    fn proceeding_resends_provisional() {
        let t0 = Instant::now();
        let mut t = ServerNonInvite::new(false, TimerConfig::default());
        t.send_response(t0, 100, Bytes::from_static(b"100"));
        t.poll_transmit();
        t.on_request();
        assert_eq!(t.poll_transmit().as_deref(), Some(&b"100"[..]));
        assert_eq!(t.state(), ServerNonInviteState::Proceeding);
    }

    #[test]
    fn timer_j_is_zero_on_reliable_transports() {
        let t0 = Instant::now();
        let mut t = ServerNonInvite::new(true, TimerConfig::default());
        t.send_response(t0, 200, Bytes::from_static(b"200"));
        assert_eq!(t.poll_timeout(), Some(t0));
    }
}
