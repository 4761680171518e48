//! One stream connection at work, whatever carries it (TCP, TLS, WS, WSS): a reader that
//! frames SIP messages (by Content-Length on TCP/TLS, one per WebSocket message on WS/WSS)
//! and hands them to the core, and a writer that drains the connection's queue. The
//! deadlines are the same for all: a message must be complete in time, an idle connection
//! closes unless a registration lives on it (then a WebSocket ping keeps its NAT binding),
//! a peer that does not read is disconnected.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sip_proxy::{FlowId, Source, Transport};
use sip_wire::{frame_stream, Framing};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::driver::Net;
use crate::flows::{cost, stream_index, Handles, Out, StreamCounters};
use crate::ws;

/// Removes the flow from the table and tells the core, however the connection ends
/// (handshake failure, close, panic).
pub(crate) struct FlowGuard {
    pub net: Arc<Net>,
    pub flow: FlowId,
}

impl Drop for FlowGuard {
    fn drop(&mut self) {
        self.net.flows.remove(self.flow);
        self.net.proxy.flow_closed(self.flow);
    }
}

impl Net {
    pub(crate) fn counters(&self, t: Transport) -> &StreamCounters {
        &self.streams[stream_index(t)]
    }
}

/// The read buffer an idle connection keeps (a larger one, after a large message, is given
/// back): on TCP each read is a system call, so one read takes a whole message; on TLS
/// the bytes wait decrypted in rustls and on WebSocket the frame header tells the size to
/// make room for, so a small buffer costs no extra system call and saves memory on the
/// thousands of idle browsers and phones a proxy holds.
fn keep_buf(t: Transport) -> usize {
    if t == Transport::Tcp {
        4096
    } else {
        512
    }
}

/// Runs a connection whose handshakes are done: `buf` holds what was read past them.
pub(crate) async fn serve<S>(
    net: Arc<Net>,
    stream: S,
    h: Handles,
    guard: FlowGuard,
    peer: SocketAddr,
    transport: Transport,
    mut buf: BytesMut,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let flow = h.flow;
    net.flows.ready(flow);
    let is_ws = matches!(transport, Transport::Ws | Transport::Wss);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let Handles {
        out, queued, close, ..
    } = h;
    // when we last wrote a whole message (not a pong), in ms since the connection opened:
    // our keepalives and requests to the peer count as traffic for the idle timeout
    let opened = Instant::now();
    let last_out = Arc::new(AtomicU64::new(0));
    let (last_out_w, close_w, net_w, limits, out_w, queued_w) = (
        last_out.clone(),
        close.clone(),
        net.clone(),
        net.cfg.limits.clone(),
        out.clone(),
        queued.clone(),
    );
    // supervised like the reader: a panic is logged and counted, and ends this connection only
    let writer = net
        .rt
        .spawn(crate::supervise::catching("stream-writer", async move {
            loop {
                let out = tokio::select! {
                    o = out_w.pop() => match o { Some(o) => o, None => break },
                    _ = close_w.notified() => break,
                };
                // every byte queued counts against the send queue's cap, a pong as a message
                let (wire, counted, message) = match out {
                    Out::Sip(b) if is_ws => (ws::encode_message(&b), cost(&b), true),
                    Out::Sip(b) => {
                        let n = cost(&b);
                        (b, n, true)
                    }
                    Out::Raw(b) => {
                        let n = cost(&b);
                        (b, n, false)
                    }
                };
                match tokio::time::timeout(limits.write_timeout, wr.write_all(&wire)).await {
                    Ok(Ok(())) => {
                        queued_w.fetch_sub(counted, Ordering::Relaxed);
                        if message {
                            last_out_w
                                .store(opened.elapsed().as_millis() as u64, Ordering::Relaxed);
                        }
                    }
                    Ok(Err(_)) => break,
                    Err(_) => {
                        net_w
                            .counters(transport)
                            .stalled
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "write timeout: closing");
                        break;
                    }
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
            close_w.notify_one(); // the reader stops too
        }));
    let src = Source {
        transport,
        addr: peer,
        flow: Some(flow),
    };
    let queue = Queue {
        out: &out,
        queued: &queued,
        cap: net.cfg.limits.send_queue,
    };
    let reader = read_loop(
        &net, &mut rd, &mut buf, src, queue, &close, &last_out, opened,
    );
    crate::supervise::catching("stream-connection", reader).await;
    // out of the table and the last sender dropped: the writer sends what is queued (a
    // final 400 or 513, a close frame, within the write timeout) and then closes
    drop(guard);
    out.finish();
    let _ = writer.await;
}

/// The peer does not read what it asks for (pongs): counted, logged once a second.
fn stalled(net: &Net, counters: &StreamCounters, peer: SocketAddr) {
    counters.stalled.fetch_add(1, Ordering::Relaxed);
    if let Some(skipped) = net.limit_log() {
        tracing::warn!(%peer, skipped, "peer does not read its pongs: connection closed");
    }
}

/// What the reader queues itself (pongs, pings, close frames), counted against the send
/// queue's cap like messages: a peer that pings fast and never reads is disconnected
/// instead of growing the queue.
#[derive(Clone, Copy)]
struct Queue<'a> {
    out: &'a crate::flows::Outbox,
    queued: &'a std::sync::atomic::AtomicUsize,
    cap: usize,
}

impl Queue<'_> {
    /// False when the cap is reached (the connection must close).
    fn raw(&self, b: Bytes) -> bool {
        let n = cost(&b);
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > self.cap {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        if !self.out.push(Out::Raw(b)) {
            self.queued.fetch_sub(n, Ordering::Relaxed);
        }
        true
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_loop<R: AsyncRead + Unpin>(
    net: &Arc<Net>,
    rd: &mut R,
    buf: &mut BytesMut,
    src: Source,
    tx: Queue<'_>,
    close: &tokio::sync::Notify,
    last_out: &AtomicU64,
    opened: Instant,
) {
    let (peer, transport, flow) = (src.addr, src.transport, src.flow.unwrap_or(0));
    let is_ws = matches!(transport, Transport::Ws | Transport::Wss);
    let keep = keep_buf(transport);
    let mut decoder = ws::Decoder::default();
    let mut out = Vec::new();
    let (idle, msg_timeout, max) = (
        net.cfg.idle_timeout,
        net.cfg.limits.message_timeout,
        net.cfg.max_message_size,
    );
    let counters = net.counters(transport);
    // the idle timer runs from the last whole message or ping, not the last byte: a byte a
    // minute keeps nothing open
    let mut active = Instant::now();
    let mut partial_since: Option<Instant> = (!buf.is_empty()).then(Instant::now);
    let mut pinged = false;
    let deliver = |data: Bytes, out: &mut Vec<_>| {
        crate::supervise::guard("stream-receive", || {
            net.proxy.on_message(Instant::now(), src, data, out);
            net.dispatch(out);
        });
        out.clear();
    };
    // what arrived with the handshake is framed before the first read
    'conn: loop {
        if is_ws {
            loop {
                match decoder.decode(buf, max) {
                    Ok(None) => break,
                    Ok(Some(ws::WsEvent::Message(data))) => {
                        active = Instant::now();
                        pinged = false;
                        if data.iter().all(|b| b.is_ascii_whitespace()) {
                            continue; // a CRLF keepalive sent as a message
                        }
                        deliver(data, &mut out);
                    }
                    Ok(Some(ws::WsEvent::Ping(p))) => {
                        active = Instant::now();
                        if !tx.raw(ws::encode_pong(&p)) {
                            stalled(net, counters, peer);
                            break 'conn;
                        }
                    }
                    Ok(Some(ws::WsEvent::Pong)) => {
                        active = Instant::now();
                        pinged = false;
                    }
                    Ok(Some(ws::WsEvent::Close)) => {
                        tx.raw(ws::encode_close(ws::CloseCode::Normal));
                        break 'conn;
                    }
                    Err(e) => {
                        counters.framing.fetch_add(1, Ordering::Relaxed);
                        if let Some(skipped) = net.limit_log() {
                            tracing::warn!(%peer, %transport, error = %e, skipped, "websocket frame refused: connection closed");
                        }
                        tx.raw(ws::encode_close(e.close_code()));
                        break 'conn;
                    }
                }
            }
        } else {
            loop {
                match frame_stream(buf, max) {
                    Ok(Framing::NeedMore) => break,
                    Ok(Framing::KeepAlive { len, ping }) => {
                        let _ = buf.split_to(len);
                        if ping {
                            active = Instant::now();
                            if !tx.raw(Bytes::from_static(b"\r\n")) {
                                stalled(net, counters, peer);
                                break 'conn;
                            }
                        }
                    }
                    Ok(Framing::Message(n)) => {
                        let data = buf.split_to(n).freeze();
                        active = Instant::now();
                        deliver(data, &mut out);
                    }
                    Err(e) => {
                        // a stream cannot resynchronise after a framing error: answer, close
                        let data = buf.split().freeze();
                        counters.framing.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, error = %e, "framing error, closing");
                        deliver(data, &mut out);
                        break 'conn;
                    }
                }
            }
        }
        partial_since = match (buf.is_empty(), partial_since) {
            (true, _) => None,
            (false, Some(p)) => Some(p),
            (false, None) => Some(Instant::now()),
        };
        if buf.is_empty() && buf.capacity() > keep {
            // a large message went through: do not keep its room
            *buf = BytesMut::new();
        } else if !buf.is_empty() && buf.capacity() > 64 << 10 && buf.len() < keep {
            let rest = buf.split();
            *buf = BytesMut::with_capacity(keep);
            buf.extend_from_slice(&rest);
        }
        let idle_at = active + idle;
        let deadline = partial_since.map_or(idle_at, |p| (p + msg_timeout).min(idle_at));
        if buf.capacity() == 0 {
            buf.reserve(keep);
        }
        tokio::select! {
            r = rd.read_buf(buf) => match r {
                Ok(n) if n > 0 => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "stream read");
                    break;
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                if partial_since.is_some_and(|p| p + msg_timeout <= Instant::now()) {
                    counters.slow.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "message not complete in time: closing");
                    break;
                }
                let now = Instant::now();
                let out_at = opened + Duration::from_millis(last_out.load(Ordering::Relaxed));
                if out_at > active && out_at + idle > now {
                    active = out_at; // we sent it a message since
                    continue;
                }
                if net.proxy.holds_flow(flow, now) {
                    // a registration lives on it: keep it, and its NAT binding, open
                    active = now;
                    if is_ws && !tx.raw(ws::encode_ping()) {
                        stalled(net, counters, peer);
                        break;
                    }
                    continue;
                }
                if is_ws && !pinged {
                    // one ping first: a browser that still answers gets an idle period more
                    pinged = true;
                    active = now;
                    if !tx.raw(ws::encode_ping()) {
                        stalled(net, counters, peer);
                        break;
                    }
                    continue;
                }
                counters.idle.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "idle timeout: closing");
                break;
            }
            _ = close.notified() => break,
        }
    }
}
