//! TCP connections as flows: framing, keepalive pong, write queue, reuse by address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sip_proxy::{FlowId, Source, Transmit, Transport};
use sip_wire::{frame_stream, Framing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::driver::Net;

#[derive(Default)]
pub(crate) struct ConnTable {
    next: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<FlowId, (SocketAddr, mpsc::UnboundedSender<Bytes>)>,
    by_addr: HashMap<SocketAddr, FlowId>,
}

impl ConnTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn add(&self, peer: SocketAddr, tx: mpsc::UnboundedSender<Bytes>) -> FlowId {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut g = self.lock();
        g.by_id.insert(id, (peer, tx));
        g.by_addr.insert(peer, id);
        id
    }
    fn remove(&self, id: FlowId) {
        let mut g = self.lock();
        if let Some((peer, _)) = g.by_id.remove(&id) {
            if g.by_addr.get(&peer) == Some(&id) {
                g.by_addr.remove(&peer);
            }
        }
    }
    fn sender(
        &self,
        flow: Option<FlowId>,
        addr: SocketAddr,
    ) -> Option<mpsc::UnboundedSender<Bytes>> {
        let g = self.lock();
        flow.and_then(|f| g.by_id.get(&f))
            .or_else(|| g.by_addr.get(&addr).and_then(|f| g.by_id.get(f)))
            .map(|(_, tx)| tx.clone())
    }
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }
}

pub(crate) async fn accept_loop(net: Arc<Net>, l: tokio::net::TcpListener) {
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                let _ = s.set_nodelay(true);
                run_conn(net.clone(), s, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "tcp accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if net.stopping() {
            return;
        }
    }
}

/// Registers a connection and spawns its reader and writer. Returns its flow id.
fn run_conn(
    net: Arc<Net>,
    s: TcpStream,
    peer: SocketAddr,
) -> (FlowId, mpsc::UnboundedSender<Bytes>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let flow = net.conns.add(peer, tx.clone());
    let (mut rd, mut wr) = s.into_split();
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let pong = tx.clone();
    let net2 = net.clone();
    let reader = async move {
        let mut buf = BytesMut::with_capacity(8192);
        let mut out = Vec::new();
        let idle = net.cfg.tcp_idle_timeout;
        let src = Source {
            transport: Transport::Tcp,
            addr: peer,
            flow: Some(flow),
        };
        'conn: loop {
            match tokio::time::timeout(idle, rd.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "tcp read");
                    break;
                }
                Err(_) => {
                    tracing::debug!(%peer, "tcp idle timeout");
                    break;
                }
                Ok(Ok(_)) => break,
            }
            loop {
                match frame_stream(&buf, net.cfg.max_message_size) {
                    Ok(Framing::NeedMore) => break,
                    Ok(Framing::KeepAlive { len, ping }) => {
                        let _ = buf.split_to(len);
                        if ping {
                            let _ = pong.send(Bytes::from_static(b"\r\n"));
                        }
                    }
                    Ok(Framing::Message(n)) => {
                        let data = buf.split_to(n).freeze();
                        crate::supervise::guard("tcp-receive", || {
                            net.proxy.on_message(Instant::now(), src, data, &mut out);
                            net.dispatch(&mut out);
                        });
                        out.clear();
                    }
                    Err(e) => {
                        // a stream cannot resynchronise after a framing error: answer and close
                        let data = buf.split().freeze();
                        tracing::warn!(%peer, error = %e, "tcp framing error, closing");
                        crate::supervise::guard("tcp-receive", || {
                            net.proxy.on_message(Instant::now(), src, data, &mut out);
                            net.dispatch(&mut out);
                        });
                        break 'conn;
                    }
                }
            }
        }
    };
    tokio::spawn(async move {
        crate::supervise::catching("tcp-connection", reader).await;
        net2.conns.remove(flow);
    });
    (flow, tx)
}

/// Sends over the flow, an open connection to the address, or a new connection.
pub(crate) fn send(net: &Net, t: Transmit) {
    if let Some(tx) = net.conns.sender(t.target.flow, t.target.addr) {
        if tx.send(t.data.clone()).is_ok() {
            return;
        }
    }
    net.spawn_connect(t);
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
                    let (_, tx) = run_conn(me.clone(), s, t.target.addr);
                    let _ = tx.send(t.data);
                }
                _ => {
                    tracing::warn!(target = %t.target.addr, "tcp connect failed");
                    me.report_error(&t);
                }
            }
        });
    }
}
