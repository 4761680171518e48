use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::timers::{TimerConfig, TimerTable};
use crate::{ResponseAction, TxnEvent};

/// States of the non-INVITE client transaction (§17.1.2.2, Figure 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

const E: usize = 0;
const F: usize = 1;
const K: usize = 2;

/// The non-INVITE client transaction: retransmits with Timer E (doubling to T2, or T2 flat
/// once a provisional arrived), times out with Timer F, and absorbs response
/// retransmissions for Timer K.
#[derive(Debug)]
pub struct ClientNonInvite {
    state: ClientNonInviteState,
    cfg: TimerConfig,
    reliable: bool,
    request: Bytes,
    interval: Duration,
    timers: TimerTable<3>,
    out: VecDeque<Bytes>,
}

impl ClientNonInvite {
    /// Starts the transaction and queues the request.
    pub fn new(now: Instant, request: Bytes, reliable: bool, cfg: TimerConfig) -> Self {
        let mut t = ClientNonInvite {
            state: ClientNonInviteState::Trying,
            cfg,
            reliable,
            request: request.clone(),
            interval: cfg.t1,
            timers: TimerTable::default(),
            out: VecDeque::new(),
        };
        t.out.push_back(request);
        if !reliable {
            t.timers.set(E, now + cfg.t1);
        }
        t.timers.set(F, now + cfg.t1x64());
        t
    }

    /// Current state.
    pub fn state(&self) -> ClientNonInviteState {
        self.state
    }

    /// Handles a matching response.
    pub fn on_response(&mut self, now: Instant, code: u16) -> ResponseAction {
        use ClientNonInviteState::*;
        match (self.state, code) {
            (Trying | Proceeding, 100..=199) => {
                self.state = Proceeding;
                ResponseAction::Deliver
            }
            (Trying | Proceeding, _) => {
                self.state = Completed;
                self.timers.stop_all();
                self.timers.set(
                    K,
                    now + if self.reliable {
                        Duration::ZERO
                    } else {
                        self.cfg.t4
                    },
                );
                ResponseAction::Deliver
            }
            _ => ResponseAction::Absorb,
        }
    }

    /// The transport could not send the request.
    pub fn on_transport_error(&mut self) -> Option<TxnEvent> {
        if matches!(
            self.state,
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding
        ) {
            self.terminate();
            return Some(TxnEvent::Timeout);
        }
        None
    }

    /// Fires expired timers.
    pub fn on_timeout(&mut self, now: Instant) -> Option<TxnEvent> {
        use ClientNonInviteState::*;
        while let Some(t) = self.timers.expired(now) {
            match t {
                E if matches!(self.state, Trying | Proceeding) => {
                    self.out.push_back(self.request.clone());
                    self.interval = if self.state == Trying {
                        (self.interval * 2).min(self.cfg.t2)
                    } else {
                        self.cfg.t2
                    };
                    self.timers.set(E, now + self.interval);
                }
                F if matches!(self.state, Trying | Proceeding) => {
                    self.terminate();
                    return Some(TxnEvent::Timeout);
                }
                K => {
                    self.terminate();
                    return Some(TxnEvent::Terminated);
                }
                _ => {}
            }
        }
        None
    }

    /// Stops the transaction.
    pub fn terminate(&mut self) {
        self.state = ClientNonInviteState::Terminated;
        self.timers.stop_all();
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

    fn run_to_end(t: &mut ClientNonInvite, t0: Instant) -> (Vec<u128>, Option<TxnEvent>, Instant) {
        let mut sends = vec![];
        let mut now = t0;
        while let Some(next) = t.poll_timeout() {
            now = next;
            let ev = t.on_timeout(now);
            while t.poll_transmit().is_some() {
                sends.push((now - t0).as_millis());
            }
            if ev.is_some() {
                return (sends, ev, now);
            }
        }
        (sends, None, now)
    }

    #[test]
    fn timer_e_caps_at_t2_and_timer_f_times_out() {
        let t0 = Instant::now();
        let mut t = ClientNonInvite::new(
            t0,
            Bytes::from_static(b"BYE"),
            false,
            TimerConfig::default(),
        );
        t.poll_transmit();
        let (sends, ev, end) = run_to_end(&mut t, t0);
        assert_eq!(&sends[..5], &[500, 1500, 3500, 7500, 11500]);
        assert_eq!(ev, Some(TxnEvent::Timeout));
        assert_eq!(end - t0, Duration::from_secs(32));
    }

    #[test]
    fn proceeding_retransmits_every_t2() {
        let t0 = Instant::now();
        let mut t = ClientNonInvite::new(
            t0,
            Bytes::from_static(b"BYE"),
            false,
            TimerConfig::default(),
        );
        t.poll_transmit();
        assert_eq!(t.on_response(t0, 100), ResponseAction::Deliver);
        let (sends, _, _) = run_to_end(&mut t, t0);
        assert_eq!(&sends[..3], &[500, 4500, 8500]);
    }

    #[test]
    fn final_response_then_timer_k_and_absorbs_retransmissions() {
        let t0 = Instant::now();
        let mut t = ClientNonInvite::new(
            t0,
            Bytes::from_static(b"BYE"),
            false,
            TimerConfig::default(),
        );
        t.poll_transmit();
        assert_eq!(t.on_response(t0, 200), ResponseAction::Deliver);
        assert_eq!(t.on_response(t0, 200), ResponseAction::Absorb);
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(
            t.on_timeout(t0 + Duration::from_secs(5)),
            Some(TxnEvent::Terminated)
        );
    }

    #[test]
    fn reliable_transport_has_no_timer_e_and_zero_timer_k() {
        let t0 = Instant::now();
        let mut t =
            ClientNonInvite::new(t0, Bytes::from_static(b"BYE"), true, TimerConfig::default());
        t.poll_transmit();
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        t.on_response(t0, 404);
        assert_eq!(t.poll_timeout(), Some(t0));
    }
}
