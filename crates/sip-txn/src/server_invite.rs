use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::timers::{TimerConfig, TimerTable};
use crate::{RequestAction, TxnEvent};

/// States of the INVITE server transaction (§17.2.1, Figure 7 as amended by RFC 6026).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerInviteState {
    Proceeding,
    Completed,
    Confirmed,
    /// RFC 6026: a 2xx was sent; INVITE retransmissions are absorbed until Timer L.
    Accepted,
    Terminated,
}

const G: usize = 0;
const H: usize = 1;
const I: usize = 2;
const L: usize = 3;

/// The INVITE server transaction: answers INVITE retransmissions with the last response,
/// retransmits a non-2xx final until the ACK arrives (Timers G, H), absorbs ACK
/// retransmissions (Timer I), and after a 2xx absorbs INVITE retransmissions (Timer L).
#[derive(Debug)]
pub struct ServerInvite {
    state: ServerInviteState,
    cfg: TimerConfig,
    reliable: bool,
    last: Option<Bytes>,
    last_code: u16,
    interval: Duration,
    timers: TimerTable<4>,
    out: VecDeque<Bytes>,
}

impl ServerInvite {
    /// Creates the transaction for a new INVITE.
    pub fn new(reliable: bool, cfg: TimerConfig) -> Self {
        ServerInvite {
            state: ServerInviteState::Proceeding,
            cfg,
            reliable,
            last: None,
            last_code: 0,
            interval: cfg.t1,
            timers: TimerTable::default(),
            out: VecDeque::new(),
        }
    }

    /// Current state.
    pub fn state(&self) -> ServerInviteState {
        self.state
    }

    /// The status code of the last response sent (0 before any).
    pub fn last_code(&self) -> u16 {
        self.last_code
    }

    /// Sends a response from the TU. Returns false when the state no longer allows it
    /// (a second final; a 2xx retransmission in Accepted goes out, per RFC 6026).
    pub fn send_response(&mut self, now: Instant, code: u16, msg: Bytes) -> bool {
        use ServerInviteState::*;
        match (self.state, code) {
            (Proceeding, 100..=199) => {}
            (Proceeding, 200..=299) => {
                self.state = Accepted;
                self.timers.set(L, now + self.cfg.t1x64());
            }
            (Proceeding, _) => {
                self.state = Completed;
                if !self.reliable {
                    self.timers.set(G, now + self.cfg.t1);
                }
                self.timers.set(H, now + self.cfg.t1x64());
            }
            (Accepted, 200..=299) => {}
            _ => return false,
        }
        // RFC 6026: in Accepted, INVITE retransmissions are absorbed without a resend, so the
        // 2xx need not be kept
        self.last = (self.state != ServerInviteState::Accepted).then(|| msg.clone());
        self.last_code = code;
        self.out.push_back(msg);
        true
    }

    /// A retransmission of the INVITE arrived.
    pub fn on_invite(&mut self) -> RequestAction {
        if matches!(
            self.state,
            ServerInviteState::Proceeding | ServerInviteState::Completed
        ) {
            if let Some(l) = &self.last {
                self.out.push_back(l.clone());
            }
        }
        RequestAction::Absorbed
    }

    /// An ACK matched this transaction.
    pub fn on_ack(&mut self, now: Instant) -> RequestAction {
        match self.state {
            ServerInviteState::Completed => {
                self.state = ServerInviteState::Confirmed;
                self.timers.stop_all();
                self.timers.set(
                    I,
                    now + if self.reliable {
                        Duration::ZERO
                    } else {
                        self.cfg.t4
                    },
                );
                RequestAction::Absorbed
            }
            ServerInviteState::Accepted => RequestAction::Deliver,
            _ => RequestAction::Absorbed,
        }
    }

    /// Fires expired timers.
    pub fn on_timeout(&mut self, now: Instant) -> Option<TxnEvent> {
        while let Some(t) = self.timers.expired(now) {
            match t {
                G if self.state == ServerInviteState::Completed => {
                    if let Some(l) = &self.last {
                        self.out.push_back(l.clone());
                    }
                    self.interval = (self.interval * 2).min(self.cfg.t2);
                    self.timers.set(G, now + self.interval);
                }
                H if self.state == ServerInviteState::Completed => {
                    self.terminate();
                    return Some(TxnEvent::AckTimeout);
                }
                I | L => {
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
        self.state = ServerInviteState::Terminated;
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

    #[test]
    fn invite_retransmission_resends_last_provisional() {
        let t0 = Instant::now();
        let mut t = ServerInvite::new(false, TimerConfig::default());
        assert_eq!(t.on_invite(), RequestAction::Absorbed);
        assert!(t.poll_transmit().is_none());
        assert!(t.send_response(t0, 100, Bytes::from_static(b"100")));
        t.poll_transmit();
        t.on_invite();
        assert_eq!(t.poll_transmit().as_deref(), Some(&b"100"[..]));
    }

    #[test]
    fn timer_g_retransmits_final_until_ack_then_timer_i() {
        let t0 = Instant::now();
        let mut t = ServerInvite::new(false, TimerConfig::default());
        t.send_response(t0, 486, Bytes::from_static(b"486"));
        t.poll_transmit();
        let mut sends = vec![];
        let mut now = t0;
        for _ in 0..4 {
            now = t.poll_timeout().unwrap();
            assert_eq!(t.on_timeout(now), None);
            while t.poll_transmit().is_some() {
                sends.push((now - t0).as_millis());
            }
        }
        assert_eq!(sends, vec![500, 1500, 3500, 7500]);
        assert_eq!(t.on_ack(now), RequestAction::Absorbed);
        assert_eq!(t.state(), ServerInviteState::Confirmed);
        assert_eq!(t.on_ack(now), RequestAction::Absorbed);
        assert_eq!(t.poll_timeout(), Some(now + Duration::from_secs(5)));
        assert_eq!(
            t.on_timeout(now + Duration::from_secs(5)),
            Some(TxnEvent::Terminated)
        );
    }

    #[test]
    fn timer_h_reports_a_missing_ack() {
        let t0 = Instant::now();
        let mut t = ServerInvite::new(false, TimerConfig::default());
        t.send_response(t0, 503, Bytes::from_static(b"503"));
        let mut now;
        let ev = loop {
            now = t.poll_timeout().unwrap();
            if let Some(ev) = t.on_timeout(now) {
                break ev;
            }
        };
        assert_eq!(ev, TxnEvent::AckTimeout);
        assert_eq!(now - t0, Duration::from_secs(32));
    }

    #[test]
    fn accepted_absorbs_invite_retransmissions_and_passes_2xx_retransmissions() {
        let t0 = Instant::now();
        let mut t = ServerInvite::new(true, TimerConfig::default());
        t.send_response(t0, 200, Bytes::from_static(b"200"));
        t.poll_transmit();
        assert_eq!(t.state(), ServerInviteState::Accepted);
        t.on_invite();
        assert!(t.poll_transmit().is_none());
        assert!(t.send_response(t0, 200, Bytes::from_static(b"200")));
        assert!(!t.send_response(t0, 486, Bytes::from_static(b"486")));
        assert_eq!(t.on_ack(t0), RequestAction::Deliver);
        assert_eq!(
            t.on_timeout(t0 + Duration::from_secs(32)),
            Some(TxnEvent::Terminated)
        );
    }

    #[test]
    fn reliable_final_has_no_timer_g() {
        let t0 = Instant::now();
        let mut t = ServerInvite::new(true, TimerConfig::default());
        t.send_response(t0, 404, Bytes::from_static(b"404"));
        t.poll_transmit();
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        t.on_ack(t0);
        assert_eq!(t.poll_timeout(), Some(t0));
    }
}
