use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Arc;
use std::time::Instant;

use sip_wire::Message;

use crate::types::{Destination, Target};

/// A health probe the router wants sent (OPTIONS or INFO to a destination).
#[derive(Debug, Clone)]
pub struct Probe {
    pub id: u64,
    pub target: Target,
    pub uri: Arc<str>,
    pub method: &'static str,
    pub from: String,
    pub max_forwards: u8,
}

/// Chooses destinations for an initial request: an ordered list, the first to try first
/// and the rest for failover (pingora's pattern). The dispatcher implements this; the
/// hooks with default bodies let it learn from traffic and probe its destinations.
pub trait Router: Send + Sync + 'static {
    /// Appends the candidates for `req` to `out`, best first.
    fn select(&self, req: &Message, out: &mut Vec<Destination>);

    /// Appends the candidates for `req` sent from `from` (a router with rules by source
    /// overrides this); [`Router::select`] by default.
    fn select_from(&self, req: &Message, _from: std::net::SocketAddr, out: &mut Vec<Destination>) {
        self.select(req, out)
    }

    /// Names what the router would route `req` from `from` to, for the reason phrase of a
    /// `503`; [`Router::describe_for`] by default.
    fn describe_from(&self, req: &Message, _from: std::net::SocketAddr) -> String {
        self.describe_for(req)
    }

    /// Candidates chosen by a consistent hash of `key` (an AOR in forward-mode
    /// registration, so a user stays on one media server); the plain selection by default.
    fn select_by_key(&self, _key: &str, req: &Message, out: &mut Vec<Destination>) {
        self.select(req, out)
    }

    /// Names what the router routes to, for reason phrases ("set 1").
    fn describe(&self) -> String {
        "the destination set".to_string()
    }

    /// The addresses a named candidate resolved to, in SRV order: the router may give each
    /// its node (for health feedback), drop the ones it knows are down (an empty list means
    /// the name has no usable address) and move the doubtful ones last.
    fn name_targets(&self, _named: &Destination, _targets: &mut Vec<Destination>) {}

    /// A branch to `dest` got a reply (`ok`), or timed out / failed / answered with a
    /// failover code (`!ok`).
    fn on_branch_result(&self, _dest: &Destination, _ok: bool) {}

    /// An initial INVITE was answered 2xx by `dest`.
    fn on_call_answered(&self, _call_id: &str, _dest: &Destination) {}

    /// The call is over: a BYE was seen, its dialog ended, or its INVITE failed.
    fn on_call_ended(&self, _call_id: &str) {}

    /// A new call (initial INVITE) arrived from `from`, before it is routed.
    fn on_call_from(&self, _call_id: &str, _from: std::net::SocketAddr) {}

    /// Appends the probes due at `now`.
    fn due_probes(&self, _now: Instant, _out: &mut Vec<Probe>) {}
    /// The final reply to probe `id`, or `None` when it could not be sent.
    fn probe_result(&self, _now: Instant, _id: u64, _code: Option<u16>) {}

    /// Names what the router would route `req` to, for the reason phrase of a `503`.
    fn describe_for(&self, _req: &Message) -> String {
        self.describe()
    }

    /// A branch of a new call (initial INVITE) was sent to `dest`.
    fn on_attempt(&self, _call_id: &str, _dest: &Destination) {}

    /// That branch ended without a 2xx (a failure, a timeout, a cancel).
    fn on_attempt_failed(&self, _call_id: &str, _dest: &Destination) {}

    /// True when `addr` is one of the router's destinations (a media server calling out,
    /// OpenSIPS' `ds_is_in_list` / `lb_is_destination`).
    fn is_destination(&self, _addr: std::net::SocketAddr) -> bool {
        false
    }

    /// True when `ip` is the address of one of the router's destinations, whatever the port
    /// (a media server sends from other ports too): the flood defence never limits or bans it.
    fn is_destination_ip(&self, _ip: std::net::IpAddr) -> bool {
        false
    }

    /// A call whose dialog was restored after a restart: count it again where it went
    /// (`node`, the destination URI its dialog names) and where it came from (`from`, for
    /// calls counted on the node that sent them).
    fn restore_call(&self, _call_id: &str, _node: Option<&str>, _from: std::net::SocketAddr) {}
}

/// Plain round robin over a fixed list: each call starts one further along and lists every
/// destination once, so the others serve as failover.
#[derive(Debug)]
pub struct RoundRobin {
    dests: Vec<Destination>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round robin over `dests`.
    pub fn new(dests: Vec<Destination>) -> Self {
        RoundRobin {
            dests,
            next: AtomicUsize::new(0),
        }
    }
}

impl Router for RoundRobin {
    fn is_destination(&self, addr: std::net::SocketAddr) -> bool {
        self.dests.iter().any(|d| d.addr == addr)
    }

    fn is_destination_ip(&self, ip: std::net::IpAddr) -> bool {
        self.dests.iter().any(|d| d.addr.ip() == ip)
    }

    fn select(&self, _req: &Message, out: &mut Vec<Destination>) {
        let n = self.dests.len();
        if n == 0 {
            return;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            out.push(self.dests[(start + i) % n].clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Transport;

    fn d(port: u16) -> Destination {
        Destination {
            uri: format!("sip:127.0.0.1:{port}").into(),
            transport: Transport::Udp,
            addr: ([127, 0, 0, 1], port).into(),
            flow: None,
            node: None,
            route: None,
            name: None,
        }
    }

    #[test]
    fn round_robin_rotates_and_lists_all_for_failover() {
        let rr = RoundRobin::new(vec![d(1), d(2), d(3)]);
        let msg = sip_wire::Message::parse(bytes::Bytes::from_static(b"OPTIONS sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n")).unwrap();
        let mut firsts = vec![];
        for _ in 0..6 {
            let mut out = vec![];
            rr.select(&msg, &mut out);
            assert_eq!(out.len(), 3);
            firsts.push(out[0].addr.port());
        }
        assert_eq!(firsts, vec![1, 2, 3, 1, 2, 3]);
    }
}
