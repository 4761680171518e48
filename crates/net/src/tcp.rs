//! Stream listeners and connections over TCP: accepting (a slot in the flow table first,
//! then the TLS and WebSocket handshakes within the message deadline), and opening
//! connections to `;transport=tcp` and `;transport=tls` destinations.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use sip_proxy::{Transmit, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::driver::Net;
use crate::flows::SendError;
use crate::stream::{serve, FlowGuard};
use crate::ws;

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

/// Low latency, and TCP keepalives so that a peer that vanished (a phone off the network)
/// is found even while a registration keeps its connection from the idle timeout.
fn tune(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15));
    let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
}

pub(crate) async fn accept_loop(net: Arc<Net>, l: tokio::net::TcpListener, transport: Transport) {
    let stop = net.stop_notify();
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((s, peer)) => {
                    tune(&s);
                    match net.flows.add(peer, transport, true, &net.cfg.limits) {
                        Some(h) => {
                            let guard = FlowGuard { net: net.clone(), flow: h.flow };
                            net.rt.spawn(crate::supervise::catching(
                                "stream-connection",
                                accepted(net.clone(), s, h, guard, peer, transport),
                            ));
                        }
                        None => {
                            net.counters(transport).refused.fetch_add(1, Ordering::Relaxed);
                            if let Some(skipped) = net.limit_log() {
                                tracing::warn!(%peer, %transport, skipped, "connection refused: too many connections");
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
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

/// The handshakes of an accepted connection, then its work.
async fn accepted(
    net: Arc<Net>,
    s: TcpStream,
    h: crate::flows::Handles,
    guard: FlowGuard,
    peer: SocketAddr,
    transport: Transport,
) {
    let deadline = tokio::time::Instant::now() + net.cfg.limits.message_timeout;
    let counters = net.counters(transport);
    match transport {
        // each stage boxed: a held connection's task keeps only the serving state, not the
        // room of its finished handshakes (kilobytes per connection)
        Transport::Tcp => {
            Box::pin(serve(
                net.clone(),
                s,
                h,
                guard,
                peer,
                transport,
                BytesMut::new(),
            ))
            .await
        }
        Transport::Ws => {
            if let Some((s, rest)) = Box::pin(upgrade(&net, s, peer, transport, deadline)).await {
                Box::pin(serve(net.clone(), s, h, guard, peer, transport, rest)).await
            }
        }
        Transport::Tls | Transport::Wss => {
            let Some(tls) = net.cfg.tls.clone() else {
                return;
            };
            let tls_s = match Box::pin(tokio::time::timeout_at(deadline, tls.acceptor().accept(s)))
                .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    counters.tls_handshake.fetch_add(1, Ordering::Relaxed);
                    if let Some(skipped) = net.limit_log() {
                        tracing::warn!(%peer, %transport, error = %e, skipped, "tls handshake failed");
                    }
                    return;
                }
                Err(_) => {
                    counters.tls_handshake.fetch_add(1, Ordering::Relaxed);
                    if let Some(skipped) = net.limit_log() {
                        tracing::warn!(%peer, %transport, skipped, "tls handshake not finished in time: closed");
                    }
                    return;
                }
            };
            if transport == Transport::Tls {
                let rest = BytesMut::new();
                Box::pin(serve(net.clone(), tls_s, h, guard, peer, transport, rest)).await
            } else if let Some((s, rest)) =
                Box::pin(upgrade(&net, tls_s, peer, transport, deadline)).await
            {
                Box::pin(serve(net.clone(), s, h, guard, peer, transport, rest)).await
            }
        }
        Transport::Udp => {}
    }
}

/// The WebSocket opening handshake: `Some` with what was read past it once upgraded;
/// `None` when refused (the HTTP answer is written first) or not finished in time.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    net: &Net,
    mut s: S,
    peer: SocketAddr,
    transport: Transport,
    deadline: tokio::time::Instant,
) -> Option<(S, BytesMut)> {
    let counters = net.counters(transport);
    let mut buf = BytesMut::with_capacity(1024);
    let res = tokio::time::timeout_at(deadline, async {
        loop {
            match ws::handshake(&buf, &net.cfg.ws_origins) {
                ws::Handshake::NeedMore => {
                    if s.read_buf(&mut buf).await.ok()? == 0 {
                        return None;
                    }
                }
                other => return Some(other),
            }
        }
    })
    .await;
    match res {
        Ok(Some(ws::Handshake::Upgrade { response, consumed })) => {
            let wrote = tokio::time::timeout_at(deadline, s.write_all(&response)).await;
            if !matches!(wrote, Ok(Ok(()))) {
                return None;
            }
            let _ = buf.split_to(consumed);
            if buf.is_empty() {
                buf = BytesMut::new(); // the handshake's buffer is not kept
            }
            Some((s, buf))
        }
        Ok(Some(ws::Handshake::Refuse { response, reason })) => {
            if reason == ws::Refusal::PlainHttp {
                counters.plain_http.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.ws_handshake.fetch_add(1, Ordering::Relaxed);
                if let Some(skipped) = net.limit_log() {
                    tracing::warn!(%peer, %transport, reason = reason.label(), skipped, "websocket handshake refused");
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                s.write_all(&response).await?;
                s.shutdown().await
            })
            .await;
            None
        }
        Ok(Some(ws::Handshake::NeedMore)) | Ok(None) => None,
        Err(_) => {
            counters.ws_handshake.fetch_add(1, Ordering::Relaxed);
            if let Some(skipped) = net.limit_log() {
                tracing::warn!(%peer, %transport, skipped, "websocket handshake not finished in time: closed");
            }
            None
        }
    }
}

/// Sends over the flow, an open connection to the address, or a new connection (TCP and
/// TLS; WebSocket peers are reached only over the connection they opened).
pub(crate) fn send(net: &Net, t: Transmit) {
    let tp = t.target.transport;
    match net.flows.send(
        t.target.flow,
        tp,
        t.target.addr,
        t.data.clone(),
        net.cfg.limits.send_queue,
    ) {
        Ok(()) => {}
        Err(SendError::Overflow(first)) => {
            if first {
                net.counters(tp).stalled.fetch_add(1, Ordering::Relaxed);
                if let Some(skipped) = net.limit_log() {
                    tracing::warn!(peer = %t.target.addr, transport = %tp, skipped, "peer does not read what we send: connection closed");
                }
            }
            net.report_error(&t);
        }
        Err(SendError::NoFlow) => match tp {
            Transport::Tcp => net.spawn_connect(t),
            Transport::Tls if net.cfg.tls.is_some() => net.spawn_connect(t),
            _ => net.report_error(&t),
        },
    }
}

impl Net {
    fn spawn_connect(&self, t: Transmit) {
        let Some(me) = self.self_arc() else { return };
        self.rt.spawn(crate::supervise::catching(
            "stream-connection",
            async move {
                let (addr, tp) = (t.target.addr, t.target.transport);
                let timeout = Duration::from_secs(3);
                let s = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        tracing::warn!(target = %addr, transport = %tp, "connect failed");
                        me.report_error(&t);
                        return;
                    }
                };
                tune(&s);
                let Some(h) = me.flows.add(addr, tp, false, &me.cfg.limits) else {
                    me.report_error(&t);
                    return;
                };
                let (flow, guard) = (
                    h.flow,
                    FlowGuard {
                        net: me.clone(),
                        flow: h.flow,
                    },
                );
                let cap = me.cfg.limits.send_queue;
                // queued now, written once the handshake is done
                if me
                    .flows
                    .send(Some(flow), tp, addr, t.data.clone(), cap)
                    .is_err()
                {
                    me.report_error(&t);
                }
                if tp == Transport::Tls {
                    let Some(tls) = me.cfg.tls.clone() else {
                        return;
                    };
                    let name = server_name(t.tls_name.as_deref(), addr);
                    match tokio::time::timeout(timeout, tls.connector().connect(name, s)).await {
                        Ok(Ok(ts)) => {
                            serve(me.clone(), ts, h, guard, addr, tp, BytesMut::new()).await
                        }
                        Ok(Err(e)) => {
                            me.counters(tp)
                                .tls_handshake
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(target = %addr, error = %e, "tls connect failed");
                            drop(guard);
                            me.report_error(&t);
                        }
                        Err(_) => {
                            me.counters(tp)
                                .tls_handshake
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(target = %addr, "tls handshake timed out");
                            drop(guard);
                            me.report_error(&t);
                        }
                    }
                } else {
                    serve(me.clone(), s, h, guard, addr, tp, BytesMut::new()).await
                }
            },
        ));
    }
}

/// What the server's certificate must name: the destination's host name when it was one
/// (RFC 5922), else the IP address connected to.
fn server_name(name: Option<&str>, addr: SocketAddr) -> rustls::pki_types::ServerName<'static> {
    name.and_then(|n| rustls::pki_types::ServerName::try_from(n.to_string()).ok())
        .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(addr.ip().into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    #[test]
    fn the_certificate_must_name_the_host_or_else_the_address() {
        let a: SocketAddr = "192.0.2.7:5061".parse().unwrap();
        assert!(
            matches!(server_name(Some("sip.example.com"), a), ServerName::DnsName(d) if d.as_ref() == "sip.example.com")
        );
        assert!(matches!(server_name(None, a), ServerName::IpAddress(_)));
        // not a valid name: the address, never a name we did not resolve
        assert!(matches!(
            server_name(Some("bad name!"), a),
            ServerName::IpAddress(_)
        ));
    }
}
