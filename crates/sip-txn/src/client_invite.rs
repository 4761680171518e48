use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::timers::{TimerConfig, TimerTable};
use crate::{ResponseAction, TxnEvent};

/// States of the INVITE client transaction (§17.1.1.2, Figure 5 as amended by RFC 6026).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientInviteState {
    Calling,
    Proceeding,
    /// RFC 6026: after a 2xx, absorb nothing; further 2xx go to the TU until Timer M.
    Accepted,
    Completed,
    Terminated,
}

const A: usize = 0;
const B: usize = 1;
const D: usize = 2;
const M: usize = 3;

/// The INVITE client transaction: retransmits the INVITE (Timer A) until a response,
/// gives up after Timer B, ACKs non-2xx finals itself and absorbs their retransmissions
/// (Timer D), and passes every 2xx to the TU while Accepted (Timer M).
#[derive(Debug)]
pub struct ClientInvite {
    state: ClientInviteState,
    cfg: TimerConfig,
    reliable: bool,
    request: Bytes,
    ack: Option<Bytes>,
    interval: Duration,
    timers: TimerTable<4>,
    out: VecDeque<Bytes>,
}

impl ClientInvite {
    /// Starts the transaction and queues the INVITE for sending.
    pub fn new(now: Instant, request: Bytes, reliable: bool, cfg: TimerConfig) -> Self {
        let mut t = ClientInvite {
            state: ClientInviteState::Calling,
            cfg,
            reliable,
            request: request.clone(),
            ack: None,
            interval: cfg.t1,
            timers: TimerTable::default(),
            out: VecDeque::new(),
        };
        t.out.push_back(request);
        if !reliable {
            t.timers.set(A, now + cfg.t1);
        }
        t.timers.set(B, now + cfg.t1x64());
        t
    }

    /// Current state.
    pub fn state(&self) -> ClientInviteState {
        self.state
    }

    /// The INVITE as sent (a CANCEL is built from it, §9.1).
    pub fn request(&self) -> &Bytes {
        &self.request
    }

    /// Handles a matching response. `make_ack` builds the hop-by-hop ACK for a non-2xx
    /// final (§17.1.1.3); it is called once.
    pub fn on_response(
        &mut self,
        now: Instant,
        code: u16,
        make_ack: impl FnOnce() -> Bytes,
    ) -> ResponseAction {
        use ClientInviteState::*;
        match (self.state, code) {
            (Calling | Proceeding, 100..=199) => {
                self.state = Proceeding;
                self.timers.stop(A);
                ResponseAction::Deliver
            }
            (Calling | Proceeding, 200..=299) => {
                self.state = Accepted;
                self.request = Bytes::new();
                self.timers.stop_all();
                self.timers.set(M, now + self.cfg.t1x64());
                ResponseAction::Deliver
            }
            (Calling | Proceeding, _) => {
                let ack = make_ack();
                self.out.push_back(ack.clone());
                self.ack = Some(ack);
                self.state = Completed;
                self.timers.stop_all();
                self.timers.set(
                    D,
                    now + if self.reliable {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(32)
                    },
                );
                ResponseAction::Deliver
            }
            (Accepted, 200..=299) => ResponseAction::Deliver,
            (Completed, 300..) => {
                if let Some(a) = &self.ack {
                    self.out.push_back(a.clone());
                }
                ResponseAction::Absorb
            }
            _ => ResponseAction::Absorb,
        }
    }

    /// The transport reported that the request could not be sent (§17.1.4).
    pub fn on_transport_error(&mut self) -> Option<TxnEvent> {
        if matches!(
            self.state,
            ClientInviteState::Calling | ClientInviteState::Proceeding
        ) {
            self.terminate();
            return Some(TxnEvent::Timeout);
        }
        None
    }

    /// Fires expired timers; returns an event for the TU, if any.
    pub fn on_timeout(&mut self, now: Instant) -> Option<TxnEvent> {
        while let Some(t) = self.timers.expired(now) {
            match t {
                A if self.state == ClientInviteState::Calling => {
                    self.out.push_back(self.request.clone());
                    self.interval *= 2;
                    self.timers.set(A, now + self.interval);
                }
                B if self.state == ClientInviteState::Calling => {
                    self.terminate();
                    return Some(TxnEvent::Timeout);
                }
                D | M => {
                    self.terminate();
                    return Some(TxnEvent::Terminated);
                }
                _ => {}
            }
        }
        None
    }

    /// Stops the transaction (e.g. the TU gave up on a branch that never answered).
    pub fn terminate(&mut self) {
        self.state = ClientInviteState::Terminated;
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

    fn start(reliable: bool) -> (Instant, ClientInvite) {
        let now = Instant::now();
        let mut t = ClientInvite::new(
            now,
            Bytes::from_static(b"INVITE"),
            reliable,
            TimerConfig::default(),
        );
        assert_eq!(t.poll_transmit().as_deref(), Some(&b"INVITE"[..]));
        (now, t)
    }

    #[test]
    fn timer_a_doubles_and_timer_b_times_out() {
        let (t0, mut t) = start(false);
        let mut sends = vec![];
        let mut now = t0;
        while let Some(next) = t.poll_timeout() {
            now = next;
            if let Some(ev) = t.on_timeout(now) {
                assert_eq!(ev, TxnEvent::Timeout);
                break;
            }
            while t.poll_transmit().is_some() {
                sends.push(now - t0);
            }
        }
        let ms: Vec<u128> = sends.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(now - t0, Duration::from_secs(32));
        assert_eq!(t.state(), ClientInviteState::Terminated);
    }

    #[test]
    fn reliable_transport_never_retransmits() {
        let (t0, mut t) = start(true);
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        assert_eq!(t.on_timeout(t0 + Duration::from_secs(31)), None);
        assert!(t.poll_transmit().is_none());
        assert_eq!(
            t.on_timeout(t0 + Duration::from_secs(32)),
            Some(TxnEvent::Timeout)
        );
    }

    #[test]
    fn provisional_stops_retransmission_but_not_timer_b() {
        let (t0, mut t) = start(false);
        assert_eq!(
            t.on_response(t0, 180, || unreachable!()),
            ResponseAction::Deliver
        );
        assert_eq!(t.state(), ClientInviteState::Proceeding);
        assert_eq!(t.on_timeout(t0 + Duration::from_secs(5)), None);
        assert!(t.poll_transmit().is_none());
        // RFC 3261: Timer B only runs in Calling; a proceeding INVITE waits for the TU (Timer C)
        assert_eq!(t.on_timeout(t0 + Duration::from_secs(40)), None);
    }

    #[test]
    fn non_2xx_final_is_acked_once_and_retransmissions_reack() {
        let (t0, mut t) = start(false);
        let mut built = 0;
        assert_eq!(
            t.on_response(t0, 486, || {
                built += 1;
                Bytes::from_static(b"ACK")
            }),
            ResponseAction::Deliver
        );
        assert_eq!(t.poll_transmit().as_deref(), Some(&b"ACK"[..]));
        assert_eq!(
            t.on_response(t0, 486, || unreachable!()),
            ResponseAction::Absorb
        );
        assert_eq!(t.poll_transmit().as_deref(), Some(&b"ACK"[..]));
        assert_eq!(built, 1);
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        assert_eq!(
            t.on_timeout(t0 + Duration::from_secs(32)),
            Some(TxnEvent::Terminated)
        );
    }

    #[test]
    fn timer_d_is_zero_on_reliable_transports() {
        let (t0, mut t) = start(true);
        t.on_response(t0, 503, || Bytes::from_static(b"ACK"));
        assert_eq!(t.poll_timeout(), Some(t0));
    }

    #[test]
    fn accepted_state_delivers_every_2xx_until_timer_m() {
        let (t0, mut t) = start(false);
        assert_eq!(
            t.on_response(t0, 200, || unreachable!()),
            ResponseAction::Deliver
        );
        assert_eq!(t.state(), ClientInviteState::Accepted);
        assert_eq!(
            t.on_response(t0, 200, || unreachable!()),
            ResponseAction::Deliver
        );
        assert_eq!(
            t.on_response(t0, 180, || unreachable!()),
            ResponseAction::Absorb
        );
        assert_eq!(
            t.on_response(t0, 486, || unreachable!()),
            ResponseAction::Absorb
        );
        assert!(t.poll_transmit().is_none());
        assert_eq!(
            t.on_timeout(t0 + Duration::from_secs(32)),
            Some(TxnEvent::Terminated)
        );
    }

    #[test]
    fn transport_error_times_the_branch_out_at_once() {
        let (_, mut t) = start(false);
        assert_eq!(t.on_transport_error(), Some(TxnEvent::Timeout));
        assert_eq!(t.state(), ClientInviteState::Terminated);
        assert_eq!(t.poll_timeout(), None);
    }
}
