//! TCP connections as flows: framing, keepalive pong, write queue, reuse by address, and the
//! limits that keep a hostile peer from holding the proxy's memory or sockets: connections
//! in all and per address, a deadline to complete each message, an idle timeout that only
//! whole messages reset, a cap on what may wait to be written to a peer that does not read,
//! and a write timeout.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sip_proxy::{FlowId, Source, Transmit, Transport};
use sip_wire::{frame_stream, Framing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

use crate::driver::Net;

/// The connection limits.
#[derive(Debug, Clone)]
pub struct TcpLimits {
    /// Open connections at most (accepted and our own).
    pub max_connections: usize,
    /// Accepted connections from one address at most.
    pub max_per_ip: usize,
    /// A message must be complete this long after its first byte.
    pub message_timeout: Duration,
    /// Bytes waiting to be written to one peer at most; past it the connection is closed.
    pub send_queue: usize,
    /// One write may take this long.
    pub write_timeout: Duration,
    /// The listen backlog (connections the kernel queues before they are accepted).
    pub backlog: u32,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 20_000,
            max_per_ip: 1_000,
            message_timeout: Duration::from_secs(10),
            send_queue: 256 << 10,
            write_timeout: Duration::from_secs(10),
            backlog: 4096,
        }
    }
}

/// Why connections were refused or closed, for `/metrics`.
#[derive(Debug, Default)]
pub struct TcpCounters {
    /// Accepted and closed at once: too many connections in all or from the address.
    pub refused: AtomicU64,
    /// Closed after the idle timeout.
    pub idle: AtomicU64,
    /// Closed: a message was not complete within its deadline.
    pub slow: AtomicU64,
    /// Closed: the peer did not read what was sent to it (queue cap or write timeout).
    pub stalled: AtomicU64,
    /// Closed after a framing error (a message too large, a bad Content-Length).
    pub framing: AtomicU64,
}

struct Conn {
    peer: SocketAddr,
    tx: mpsc::UnboundedSender<Bytes>,
    /// Bytes queued for the writer.
    queued: Arc<AtomicUsize>,
    /// Wakes the reader and writer to close the connection.
    close: Arc<Notify>,
    /// Set when the send queue overflowed (the close is counted once).
    overflowed: std::sync::atomic::AtomicBool,
    accepted: bool,
}

#[derive(Default)]
pub(crate) struct ConnTable {
    next: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<FlowId, Conn>,
    by_addr: HashMap<SocketAddr, FlowId>,
    per_ip: HashMap<IpAddr, usize>,
}

/// A connection's handles, for its tasks.
struct Handles {
    flow: FlowId,
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    close: Arc<Notify>,
}

impl ConnTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection, unless a limit says no.
    fn add(
        &self,
        peer: SocketAddr,
        tx: mpsc::UnboundedSender<Bytes>,
        accepted: bool,
        limits: &TcpLimits,
    ) -> Option<Handles> {
        let mut g = self.lock();
        if g.by_id.len() >= limits.max_connections {
            return None;
        }
        let ip = canonical(peer.ip());
        if accepted {
            let n = g.per_ip.entry(ip).or_insert(0);
            if *n >= limits.max_per_ip {
                return None;
            }
            *n += 1;
        }
        let flow = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (queued, close) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        g.by_id.insert(
            flow,
            Conn {
                peer,
                tx: tx.clone(),
                queued: queued.clone(),
                close: close.clone(),
                overflowed: Default::default(),
                accepted,
            },
        );
        g.by_addr.insert(peer, flow);
        Some(Handles {
            flow,
            tx,
            queued,
            close,
        })
    }

    fn remove(&self, id: FlowId) {
        let mut g = self.lock();
        if let Some(c) = g.by_id.remove(&id) {
            if g.by_addr.get(&c.peer) == Some(&id) {
                g.by_addr.remove(&c.peer);
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

    /// Queues `data` on the flow (or a connection to the address). `Err(Some(first))`: the
    /// peer's queue is full and the connection is being closed (`first`: by this call);
    /// `Err(None)`: no connection.
    fn send(
        &self,
        flow: Option<FlowId>,
        addr: SocketAddr,
        data: Bytes,
        cap: usize,
    ) -> Result<(), Option<bool>> {
        let g = self.lock();
        let Some(c) = flow
            .and_then(|f| g.by_id.get(&f))
            .or_else(|| g.by_addr.get(&addr).and_then(|f| g.by_id.get(f)))
        else {
            return Err(None);
        };
        let n = data.len();
        if c.queued.fetch_add(n, Ordering::Relaxed) + n > cap {
            c.queued.fetch_sub(n, Ordering::Relaxed);
            c.close.notify_waiters();
            c.close.notify_one();
            return Err(Some(!c.overflowed.swap(true, Ordering::Relaxed)));
        }
        c.tx.send(data).map_err(|_| None)
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
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

/// A listening socket with the configured backlog (std's default of 128 drops a burst of
/// connects).
pub(crate) fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

pub(crate) async fn accept_loop(net: Arc<Net>, l: tokio::net::TcpListener) {
    let stop = net.stop_notify();
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((s, peer)) => {
                    let _ = s.set_nodelay(true);
                    if run_conn(net.clone(), s, peer, true).is_none() {
                        net.tcp.refused.fetch_add(1, Ordering::Relaxed);
                        if let Some(skipped) = net.limit_log() {
                            tracing::warn!(%peer, skipped, "tcp connection refused: too many connections");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.notified() => return,
        }
        if net.stopping() {
            return;
        }
    }
}

/// Registers a connection and spawns its reader and writer; `None` when a limit refuses it
/// (the stream is dropped, which closes it).
fn run_conn(net: Arc<Net>, s: TcpStream, peer: SocketAddr, accepted: bool) -> Option<FlowId> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let h = net.conns.add(peer, tx, accepted, &net.cfg.tcp_limits)?;
    let flow = h.flow;
    let (mut rd, mut wr) = s.into_split();
    let (queued, close_w, limits) = (
        h.queued.clone(),
        h.close.clone(),
        net.cfg.tcp_limits.clone(),
    );
    let net_w = net.clone();
    // when we last wrote a whole message (not a pong), in ms since the connection opened:
    // our keepalives and requests to the peer count as traffic for the idle timeout
    let opened = Instant::now();
    let last_out = Arc::new(AtomicU64::new(0));
    let last_out_w = last_out.clone();
    tokio::spawn(async move {
        loop {
            let b = tokio::select! {
                b = rx.recv() => match b { Some(b) => b, None => break },
                _ = close_w.notified() => break,
            };
            let n = b.len();
            match tokio::time::timeout(limits.write_timeout, wr.write_all(&b)).await {
                Ok(Ok(())) => {
                    queued.fetch_sub(n, Ordering::Relaxed);
                    if n > 4 {
                        let ms = opened.elapsed().as_millis() as u64;
                        last_out_w.store(ms, Ordering::Relaxed);
                    }
                }
                Ok(Err(_)) => break,
                Err(_) => {
                    net_w.tcp.stalled.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "tcp write timeout: closing");
                    break;
                }
            }
        }
        close_w.notify_one(); // the reader stops too
    });
    let (pong, close_r) = (h.tx.clone(), h.close.clone());
    let net2 = net.clone();
    let reader = async move {
        let mut buf = BytesMut::with_capacity(4096);
        let mut out = Vec::new();
        let (idle, msg_timeout) = (net.cfg.tcp_idle_timeout, net.cfg.tcp_limits.message_timeout);
        let src = Source {
            transport: Transport::Tcp,
            addr: peer,
            flow: Some(flow),
        };
        // the idle timer runs from the last whole message or ping, not the last byte: a
        // byte a minute keeps nothing open
        let mut active = Instant::now();
        let mut partial_since: Option<Instant> = None;
        'conn: loop {
            let idle_at = active + idle;
            let deadline = partial_since.map_or(idle_at, |p| (p + msg_timeout).min(idle_at));
            tokio::select! {
                r = rd.read_buf(&mut buf) => match r {
                    Ok(n) if n > 0 => {}
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "tcp read");
                        break;
                    }
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if partial_since.is_some_and(|p| p + msg_timeout <= Instant::now()) {
                        net.tcp.slow.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "tcp message not complete in time: closing");
                    } else {
                        let now = Instant::now();
                        let out_at = opened + Duration::from_millis(last_out.load(Ordering::Relaxed));
                        if out_at > active && out_at + idle > now {
                            active = out_at; // we sent it a message since
                            continue;
                        }
                        if net.proxy.holds_flow(flow, now) {
                            active = now; // a registration lives on it
                            continue;
                        }
                        net.tcp.idle.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "tcp idle timeout: closing");
                    }
                    break;
                }
                _ = close_r.notified() => break,
            }
            loop {
                match frame_stream(&buf, net.cfg.max_message_size) {
                    Ok(Framing::NeedMore) => break,
                    Ok(Framing::KeepAlive { len, ping }) => {
                        let _ = buf.split_to(len);
                        if ping {
                            active = Instant::now();
                            let _ = pong.send(Bytes::from_static(b"\r\n"));
                        }
                    }
                    Ok(Framing::Message(n)) => {
                        let data = buf.split_to(n).freeze();
                        active = Instant::now();
                        crate::supervise::guard("tcp-receive", || {
                            net.proxy.on_message(Instant::now(), src, data, &mut out);
                            net.dispatch(&mut out);
                        });
                        out.clear();
                    }
                    Err(e) => {
                        // a stream cannot resynchronise after a framing error: answer and close
                        let data = buf.split().freeze();
                        net.tcp.framing.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, error = %e, "tcp framing error, closing");
                        crate::supervise::guard("tcp-receive", || {
                            net.proxy.on_message(Instant::now(), src, data, &mut out);
                            net.dispatch(&mut out);
                        });
                        break 'conn;
                    }
                }
            }
            partial_since = match (buf.is_empty(), partial_since) {
                (true, _) => None,
                (false, Some(p)) => Some(p),
                (false, None) => Some(Instant::now()),
            };
            if buf.capacity() > 64 << 10 && buf.len() < 4096 {
                // a large message went through: do not keep its room
                let rest = buf.split();
                buf = BytesMut::with_capacity(4096);
                buf.extend_from_slice(&rest);
            }
        }
    };
    tokio::spawn(async move {
        crate::supervise::catching("tcp-connection", reader).await;
        // out of the table and the last sender dropped: the writer sends what is queued (a
        // final 400 or 513, within the write timeout) and then closes
        net2.conns.remove(flow);
        net2.proxy.flow_closed(flow);
        drop(h);
    });
    Some(flow)
}

/// Sends over the flow, an open connection to the address, or a new connection.
pub(crate) fn send(net: &Net, t: Transmit) {
    match net.conns.send(
        t.target.flow,
        t.target.addr,
        t.data.clone(),
        net.cfg.tcp_limits.send_queue,
    ) {
        Ok(()) => {}
        Err(Some(first)) => {
            if first {
                net.tcp.stalled.fetch_add(1, Ordering::Relaxed);
                if let Some(skipped) = net.limit_log() {
                    tracing::warn!(peer = %t.target.addr, skipped, "tcp peer does not read what we send: connection closed");
                }
            }
            net.report_error(&t);
        }
        Err(None) => net.spawn_connect(t),
    }
}

impl Net {
    fn spawn_connect(&self, t: Transmit) {
        let Some(me) = self.self_arc() else { return };
        self.rt.spawn(async move {
            let res =
                tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(t.target.addr))
                    .await;
            match res {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    let addr = t.target.addr;
                    match run_conn(me.clone(), s, addr, false) {
                        Some(flow) => {
                            let cap = me.cfg.tcp_limits.send_queue;
                            if me
                                .conns
                                .send(Some(flow), addr, t.data.clone(), cap)
                                .is_err()
                            {
                                me.report_error(&t);
                            }
                        }
                        None => me.report_error(&t),
                    }
                }
                _ => {
                    tracing::warn!(target = %t.target.addr, "tcp connect failed");
                    me.report_error(&t);
                }
            }
        });
    }
}
