//! The flow table: every stream connection (TCP, TLS, WS, WSS), accepted or opened by us,
//! with its id, peer, transport and send queue, and the limits that keep a hostile peer
//! from holding the proxy's memory or sockets (connections in all and per address, a cap
//! on what may wait to be written to a peer that does not read). Written once for every
//! stream transport; `stream.rs` runs a connection, `tcp.rs` accepts and opens them.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sip_proxy::{FlowId, Transport};
use tokio::sync::Notify;

/// The limits of stream connections.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Open connections at most (accepted and our own).
    pub max_connections: usize,
    /// Accepted connections from one address at most.
    pub max_per_ip: usize,
    /// A message must be complete this long after its first byte; a TLS or WebSocket
    /// handshake must be done this long after the connection was accepted.
    pub message_timeout: Duration,
    /// Bytes waiting to be written to one peer at most; past it the connection is closed.
    pub send_queue: usize,
    /// One write may take this long.
    pub write_timeout: Duration,
    /// The listen backlog (connections the kernel queues before they are accepted).
    pub backlog: u32,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_connections: 20_000,
            max_per_ip: 1_000,
            message_timeout: Duration::from_secs(10),
            send_queue: 256 << 10,
            write_timeout: Duration::from_secs(10),
            backlog: 4096,
        }
    }
}

/// Why connections of one transport were refused or closed, for `/metrics`.
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Accepted and closed at once: too many connections in all or from the address.
    pub refused: AtomicU64,
    /// Closed after the idle timeout.
    pub idle: AtomicU64,
    /// Closed: a message was not complete within its deadline.
    pub slow: AtomicU64,
    /// Closed: the peer did not read what was sent to it (queue cap or write timeout).
    pub stalled: AtomicU64,
    /// Closed after a framing error (a message too large, a bad Content-Length, a
    /// WebSocket frame breaking RFC 6455).
    pub framing: AtomicU64,
    /// Closed: the TLS handshake failed or did not finish in time.
    pub tls_handshake: AtomicU64,
    /// Closed: the WebSocket handshake was refused (malformed, no `sip` subprotocol, an
    /// origin not allowed, too large) or did not finish in time.
    pub ws_handshake: AtomicU64,
    /// Answered with a short page: a plain HTTP request on a WebSocket port.
    pub plain_http: AtomicU64,
}

impl StreamCounters {
    /// `(reason, count)` for `/metrics`.
    pub fn rows(&self) -> [(&'static str, u64); 8] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("refused", l(&self.refused)),
            ("idle", l(&self.idle)),
            ("slow_message", l(&self.slow)),
            ("peer_not_reading", l(&self.stalled)),
            ("framing", l(&self.framing)),
            ("tls_handshake", l(&self.tls_handshake)),
            ("ws_handshake", l(&self.ws_handshake)),
            ("plain_http", l(&self.plain_http)),
        ]
    }
}

/// The stream transports, in the order of [`STREAMS`] (the index of their counters).
pub const STREAMS: [Transport; 4] = [
    Transport::Tcp,
    Transport::Tls,
    Transport::Ws,
    Transport::Wss,
];

pub(crate) fn stream_index(t: Transport) -> usize {
    STREAMS.iter().position(|s| *s == t).unwrap_or(0)
}

/// What one queued item counts against the send queue's cap: its bytes and its slot (so a
/// flood of two-byte pongs is bounded in memory, not only in bytes).
pub(crate) fn cost(b: &Bytes) -> usize {
    b.len() + 48
}

/// What the writer of a connection sends.
#[derive(Debug)]
pub(crate) enum Out {
    /// A SIP message (framed for WebSocket by the writer).
    Sip(Bytes),
    /// Bytes written as they are: a CRLF pong, a WebSocket control frame.
    Raw(Bytes),
}

/// A connection's write queue: what the writer sends, in order. Lighter than a channel (an
/// idle connection's queue holds no allocation), and closed explicitly: the writer drains
/// what was queued, then stops.
#[derive(Default)]
pub(crate) struct Outbox {
    q: Mutex<VecDeque<Out>>,
    wake: Notify,
    finished: AtomicBool,
}

impl Outbox {
    /// Queues `o`; false once the connection is finishing.
    pub fn push(&self, o: Out) -> bool {
        if self.finished.load(Ordering::Acquire) {
            return false;
        }
        self.q
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(o);
        self.wake.notify_one();
        true
    }

    /// The next item; `None` once finished and drained.
    pub async fn pop(&self) -> Option<Out> {
        loop {
            if let Some(o) = self.q.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
                return Some(o);
            }
            if self.finished.load(Ordering::Acquire) {
                return None;
            }
            // a push since the check left a permit: no wake-up is lost
            self.wake.notified().await;
        }
    }

    /// No more items: the writer sends what is queued and stops.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

struct Conn {
    peer: SocketAddr,
    transport: Transport,
    out: Arc<Outbox>,
    /// Bytes queued for the writer.
    queued: Arc<AtomicUsize>,
    /// Wakes the reader and writer to close the connection.
    close: Arc<Notify>,
    /// Set when the send queue overflowed (the close is counted once).
    overflowed: AtomicBool,
    accepted: bool,
    /// The handshakes are done (TLS, WebSocket): it may be found by address.
    ready: bool,
}

/// A connection's handles, for its tasks.
pub(crate) struct Handles {
    pub flow: FlowId,
    pub out: Arc<Outbox>,
    pub queued: Arc<AtomicUsize>,
    pub close: Arc<Notify>,
}

/// Why a message could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError {
    /// No open connection: the flow is gone, or none to the address.
    NoFlow,
    /// The peer's queue is full: the connection is being closed (`true`: by this call).
    Overflow(bool),
}

#[derive(Default)]
pub(crate) struct FlowTable {
    next: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<FlowId, Conn>,
    by_addr: HashMap<(Transport, SocketAddr), FlowId>,
    per_ip: HashMap<IpAddr, usize>,
}

impl FlowTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection, unless a limit says no. An accepted connection counts
    /// against its address's limit; our own count only in all.
    pub fn add(
        &self,
        peer: SocketAddr,
        transport: Transport,
        accepted: bool,
        limits: &StreamLimits,
    ) -> Option<Handles> {
        let mut g = self.lock();
        if g.by_id.len() >= limits.max_connections {
            return None;
        }
        if accepted {
            let n = g.per_ip.entry(canonical(peer.ip())).or_insert(0);
            if *n >= limits.max_per_ip {
                return None;
            }
            *n += 1;
        }
        let flow = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let out = Arc::new(Outbox::default());
        let (queued, close) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        g.by_id.insert(
            flow,
            Conn {
                peer,
                transport,
                out: out.clone(),
                queued: queued.clone(),
                close: close.clone(),
                overflowed: AtomicBool::new(false),
                accepted,
                ready: false,
            },
        );
        Some(Handles {
            flow,
            out,
            queued,
            close,
        })
    }

    /// The handshakes are done: requests to the peer's address may reuse the connection.
    pub fn ready(&self, id: FlowId) {
        let mut g = self.lock();
        if let Some(c) = g.by_id.get_mut(&id) {
            c.ready = true;
            let key = (c.transport, c.peer);
            g.by_addr.insert(key, id);
        }
    }

    pub fn remove(&self, id: FlowId) {
        let mut g = self.lock();
        if let Some(c) = g.by_id.remove(&id) {
            if g.by_addr.get(&(c.transport, c.peer)) == Some(&id) {
                g.by_addr.remove(&(c.transport, c.peer));
            }
            if c.accepted {
                let ip = canonical(c.peer.ip());
                if let Some(n) = g.per_ip.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        g.per_ip.remove(&ip);
                    }
                }
            }
        }
    }

    /// Queues a SIP message on the flow, or on a ready connection of `transport` to `addr`.
    pub fn send(
        &self,
        flow: Option<FlowId>,
        transport: Transport,
        addr: SocketAddr,
        data: Bytes,
        cap: usize,
    ) -> Result<(), SendError> {
        let g = self.lock();
        let Some(c) = flow.and_then(|f| g.by_id.get(&f)).or_else(|| {
            g.by_addr
                .get(&(transport, addr))
                .and_then(|f| g.by_id.get(f))
        }) else {
            return Err(SendError::NoFlow);
        };
        let n = cost(&data);
        if c.queued.fetch_add(n, Ordering::Relaxed) + n > cap {
            c.queued.fetch_sub(n, Ordering::Relaxed);
            c.close.notify_waiters();
            c.close.notify_one();
            return Err(SendError::Overflow(
                !c.overflowed.swap(true, Ordering::Relaxed),
            ));
        }
        if c.out.push(Out::Sip(data)) {
            Ok(())
        } else {
            c.queued.fetch_sub(n, Ordering::Relaxed);
            Err(SendError::NoFlow)
        }
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Open connections per stream transport, in the order of [`STREAMS`].
    pub fn per_transport(&self) -> [usize; 4] {
        let mut n = [0; 4];
        for c in self.lock().by_id.values() {
            n[stream_index(c.transport)] += 1;
        }
        n
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self) {
        for c in self.lock().by_id.values() {
            c.close.notify_one();
        }
    }
}

/// An IPv4-mapped IPv6 address counts as its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v) => v.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn limits(all: usize, per_ip: usize) -> StreamLimits {
        StreamLimits {
            max_connections: all,
            max_per_ip: per_ip,
            send_queue: 10,
            ..Default::default()
        }
    }

    #[test]
    fn per_address_limit_counts_mapped_v6_as_v4_and_frees_on_remove() {
        let (t, l) = (FlowTable::default(), limits(100, 2));
        let a = t
            .add(addr("10.0.0.1:1000"), Transport::Tcp, true, &l)
            .unwrap();
        let _b = t
            .add(addr("[::ffff:10.0.0.1]:1001"), Transport::Ws, true, &l)
            .unwrap();
        assert!(t
            .add(addr("10.0.0.1:1002"), Transport::Tls, true, &l)
            .is_none());
        // our own connections to the address do not count against it
        assert!(t
            .add(addr("10.0.0.1:5060"), Transport::Tcp, false, &l)
            .is_some());
        t.remove(a.flow);
        assert!(t
            .add(addr("10.0.0.1:1002"), Transport::Tls, true, &l)
            .is_some());
        assert_eq!(t.per_transport(), [1, 1, 1, 0]);
    }

    #[test]
    fn total_limit_refuses_everyone() {
        let (t, l) = (FlowTable::default(), limits(2, 100));
        assert!(t
            .add(addr("10.0.0.1:1"), Transport::Tcp, true, &l)
            .is_some());
        assert!(t
            .add(addr("10.0.0.2:1"), Transport::Tcp, false, &l)
            .is_some());
        assert!(t
            .add(addr("10.0.0.3:1"), Transport::Tcp, true, &l)
            .is_none());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn found_by_address_only_when_ready_and_of_the_same_transport() {
        let (t, l) = (FlowTable::default(), limits(10, 10));
        let peer = addr("10.0.0.1:5061");
        let h = t.add(peer, Transport::Tls, false, &l).unwrap();
        let send = |tp| t.send(None, tp, peer, Bytes::from_static(b"x"), 1000);
        assert_eq!(send(Transport::Tls), Err(SendError::NoFlow));
        t.ready(h.flow);
        assert_eq!(send(Transport::Tcp), Err(SendError::NoFlow));
        assert_eq!(send(Transport::Tls), Ok(()));
        assert!(matches!(
            h.out.q.lock().unwrap().pop_front(),
            Some(Out::Sip(_))
        ));
        // by flow id it is found at once (a reply to a peer still in its handshake waits)
        assert_eq!(
            t.send(
                Some(h.flow),
                Transport::Tls,
                peer,
                Bytes::from_static(b"y"),
                1000
            ),
            Ok(())
        );
        t.remove(h.flow);
        assert_eq!(send(Transport::Tls), Err(SendError::NoFlow));
    }

    #[test]
    fn a_full_queue_closes_once() {
        let (t, l) = (FlowTable::default(), limits(10, 10));
        let h = t.add(addr("10.0.0.1:1"), Transport::Ws, true, &l).unwrap();
        let f = Some(h.flow);
        let a = addr("10.0.0.1:1");
        let cap = cost(&Bytes::from_static(b"12345678")) + 10;
        let send = |d: &'static [u8]| t.send(f, Transport::Ws, a, Bytes::from_static(d), cap);
        assert_eq!(send(b"12345678"), Ok(()));
        assert_eq!(send(b"12345"), Err(SendError::Overflow(true)));
        assert_eq!(send(b"12345"), Err(SendError::Overflow(false)));
    }

    #[tokio::test]
    async fn the_outbox_drains_what_was_queued_after_finish() {
        let o = Arc::new(Outbox::default());
        assert!(o.push(Out::Raw(Bytes::from_static(b"a"))));
        assert!(o.push(Out::Sip(Bytes::from_static(b"b"))));
        o.finish();
        assert!(
            !o.push(Out::Raw(Bytes::from_static(b"c"))),
            "refused once finishing"
        );
        assert!(matches!(o.pop().await, Some(Out::Raw(_))));
        assert!(matches!(o.pop().await, Some(Out::Sip(_))));
        assert!(o.pop().await.is_none());
        // a waiting writer is woken by a push
        let o = Arc::new(Outbox::default());
        let o2 = o.clone();
        let w = tokio::spawn(async move { o2.pop().await.is_some() });
        tokio::task::yield_now().await;
        o.push(Out::Raw(Bytes::from_static(b"x")));
        assert!(w.await.unwrap());
    }
}
