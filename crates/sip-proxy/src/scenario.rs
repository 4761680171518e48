//! The scenario harness of the proxy's tests (the core's, the registrar's): a proxy on a
//! virtual clock, messages sent as text from named endpoints, timers run by advancing the
//! clock, the driver's side of commands (what was asked, answering it) played by the test,
//! and the helpers every test file shares (addresses, sending, parsing, answering).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_wire::{HeaderName, Message};

use crate::command::{Command, CommandKind, Event, EventResult};
use crate::dns::{Answer, DnsError, Query, Record};
use crate::{Proxy, Source, Transmit, Transport};

/// A socket address from text.
pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// A UDP source.
pub(crate) fn udp(from: &str) -> Source {
    Source {
        transport: Transport::Udp,
        addr: addr(from),
        flow: None,
    }
}

/// `msg` arrives over UDP from `from` at `now`; what the proxy sent in return.
pub(crate) fn send(p: &Proxy, now: Instant, from: &str, msg: &str) -> Vec<Transmit> {
    let mut out = vec![];
    p.on_message(
        now,
        udp(from),
        Bytes::copy_from_slice(msg.as_bytes()),
        &mut out,
    );
    out
}

/// Parses what the proxy sent.
pub(crate) fn parse(t: &Transmit) -> Message {
    Message::parse(t.data.clone())
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&t.data)))
}

/// A response from a downstream element to the request `req` it received: its Vias and
/// Record-Route echoed, a Contact of its own.
pub(crate) fn answer(req: &Message, code: u16, to_tag: &str) -> Bytes {
    let mut s = format!("SIP/2.0 {code} X\r\n");
    for v in req.all(HeaderName::Via) {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    for v in req.all(HeaderName::RecordRoute) {
        s.push_str(&format!("Record-Route: {v}\r\n"));
    }
    s.push_str(&format!("From: {}\r\nTo: {};tag={to_tag}\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <sip:b@127.0.0.1:5080>\r\nContent-Length: 0\r\n\r\n", req.get(HeaderName::From).unwrap_or(""), req.get(HeaderName::To).unwrap_or(""), req.call_id(), req.get(HeaderName::CSeq).unwrap_or("")));
    Bytes::from(s)
}

pub(crate) struct Scenario {
    pub proxy: Proxy,
    pub now: Instant,
}

impl Scenario {
    pub fn new(proxy: Proxy) -> Scenario {
        Scenario {
            proxy,
            now: Instant::now(),
        }
    }

    /// `msg` arrives over UDP from `from`; what the proxy sent in return.
    pub fn send(&mut self, from: &str, msg: &str) -> Vec<Transmit> {
        send(&self.proxy, self.now, from, msg)
    }

    /// Moves the clock on by `d`, firing every timer due on the way, in order.
    pub fn advance(&mut self, d: Duration) -> Vec<Transmit> {
        let end = self.now + d;
        let mut out = vec![];
        loop {
            let next = self.proxy.next_timeout().filter(|t| *t <= end);
            self.now = next.unwrap_or(end).max(self.now);
            self.proxy.on_timers(self.now, &mut out);
            if next.is_none() {
                return out;
            }
        }
    }

    /// The commands the proxy made since the last call.
    pub fn commands(&mut self) -> Vec<Command> {
        let mut c = vec![];
        self.proxy.poll_commands(&mut c);
        c
    }

    /// The driver answers command `id`.
    pub fn answer(&mut self, id: u64, result: EventResult) -> Vec<Transmit> {
        let mut out = vec![];
        self.proxy
            .on_event(self.now, Event { id, result }, &mut out);
        out
    }

    /// The one `Resolve` command made since the last call, with its query.
    pub fn one_lookup(&mut self) -> (u64, Query) {
        let c = self.commands();
        assert_eq!(c.len(), 1, "one lookup expected: {c:?}");
        let CommandKind::Resolve(q) = c[0].kind.clone() else {
            panic!("a lookup expected: {c:?}");
        };
        (c[0].id, q)
    }

    /// The one media command made since the last call.
    pub fn one_media(&mut self) -> (u64, crate::media::MediaRequest) {
        let c = self.commands();
        assert_eq!(c.len(), 1, "one media command expected: {c:?}");
        let CommandKind::Media(m) = c[0].kind.clone() else {
            panic!("a media command expected: {c:?}");
        };
        (c[0].id, *m)
    }
}

/// Parses what the proxy sent.
pub(crate) fn msg(t: &Transmit) -> Message {
    parse(t)
}

/// The statuses of the responses in `out`, and the destinations of the requests.
pub(crate) fn summary(out: &[Transmit]) -> Vec<String> {
    out.iter()
        .map(|t| {
            let m = msg(t);
            match m.status() {
                Some(c) => format!("{c}->{}", t.target.addr),
                None => format!("{}->{}", m.method_str(), t.target.addr),
            }
        })
        .collect()
}

/// A DNS answer of UDP records `(priority, weight, address)`.
pub(crate) fn resolved(recs: &[(u16, u16, &str)], ttl_s: u64) -> EventResult {
    EventResult::Resolved(Ok(Answer {
        records: recs
            .iter()
            .map(|(p, w, a)| Record {
                priority: *p,
                weight: *w,
                transport: Transport::Udp,
                addr: a.parse::<SocketAddr>().expect("record address"),
            })
            .collect(),
        ttl: Duration::from_secs(ttl_s),
    }))
}

/// A DNS failure.
pub(crate) fn dns_failed(e: DnsError) -> EventResult {
    EventResult::Resolved(Err(e))
}

/// [`answer`] as text.
pub(crate) fn reply(req: &Message, code: u16, to_tag: &str) -> String {
    String::from_utf8_lossy(&answer(req, code, to_tag)).into_owned()
}
