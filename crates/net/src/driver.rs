use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_proxy::{Proxy, Source, Transmit, Transport};
use socket2::{Domain, Protocol, Socket, Type};

use sip_proxy::command::{CommandKind, Event, EventResult};

use crate::flows::{FlowTable, StreamCounters, StreamLimits};

/// Bounds of the timer thread's sleep.
const TIMER_MIN_SLEEP: Duration = Duration::from_millis(5);
const TIMER_MAX_SLEEP: Duration = Duration::from_millis(100);

/// What a media command's answer is handed to.
pub type MediaDone = Box<dyn FnOnce(Result<Bytes, sip_proxy::media::MediaError>) + Send>;

/// Runs the core's media commands (the binary speaks rtpengine's NG protocol).
pub trait MediaRunner: Send + Sync + 'static {
    /// Asks the relay from the calling thread without waiting (the request goes out at
    /// once); `done` gets the SDP it gives back, on the thread that reads the answer.
    fn start(&self, req: sip_proxy::media::MediaRequest, done: MediaDone);
}

/// The media runner, when a relay is configured.
#[derive(Clone)]
pub struct Media(pub Arc<dyn MediaRunner>);

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Media")
    }
}

/// Transport settings.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub udp: Vec<SocketAddr>,
    /// Stream listeners: TCP, TLS, WS and WSS.
    pub streams: Vec<(Transport, SocketAddr)>,
    /// UDP receive threads (0 = one per core).
    pub udp_workers: usize,
    /// A stream connection with no traffic for this long is closed (unless a registration
    /// lives on it).
    pub idle_timeout: Duration,
    /// Largest message accepted on a stream.
    pub max_message_size: usize,
    /// The limits of stream connections.
    pub limits: StreamLimits,
    /// Certificates for TLS and WSS listeners and outgoing TLS (`None`: no `[tls]`).
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// `Origin` values a WebSocket handshake may carry (empty: any).
    pub ws_origins: Vec<String>,
    /// Called by a network thread that has had nothing to receive for a while, at most once
    /// a second per thread (and by the timer thread once a second). The binary lets the
    /// allocator take back what other threads freed for this one (see `main.rs`).
    pub idle_hook: Option<fn()>,
    /// The DNS client's settings (`[dns]`).
    pub dns: crate::dns::DnsSettings,
    /// Runs media commands (`None`: no relay configured; such commands fail at once).
    pub media: Option<Media>,
}

/// Why the transports could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A socket could not be bound.
    #[error("cannot bind {transport} {addr}: {source}")]
    Bind {
        /// Transport of the socket.
        transport: &'static str,
        /// Address it was to bind.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A TLS or WSS listener with no `[tls]` certificate.
    #[error("{transport} listener {addr} needs a certificate: add a [tls] section")]
    NoCertificate {
        /// Transport of the listener.
        transport: &'static str,
        /// Its address.
        addr: SocketAddr,
    },
}

/// The running transports.
pub struct Net {
    me: std::sync::Weak<Net>,
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) udp: Vec<Arc<UdpSocket>>,
    pub(crate) flows: Arc<FlowTable>,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) cfg: NetConfig,
    stop: Arc<AtomicBool>,
    /// Wakes the accept loops at shutdown.
    stop_notify: Arc<tokio::sync::Notify>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// Why stream connections were refused or closed, per transport (in the order of
    /// [`crate::STREAMS`]).
    pub streams: [StreamCounters; 4],
    /// One warning a second about limits at most.
    limit_log_at: std::sync::atomic::AtomicU64,
    limit_log_skipped: std::sync::atomic::AtomicU64,
    started: Instant,
    /// Runs the core's `Resolve` commands (`None`: no DNS settings could be read; every
    /// lookup fails as unreachable).
    resolver: Option<Arc<crate::dns::SipResolver>>,
    /// The timer thread, to wake it early.
    timer_thread: std::sync::OnceLock<std::thread::Thread>,
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    // no SO_REUSEADDR: on Linux it would let a second instance bind the same UDP port and
    // silently take half the traffic
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    let u: UdpSocket = s.into();
    u.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(u)
}

impl Net {
    /// Binds every socket and starts the receive threads, the TCP tasks (on `rt`) and the
    /// timer thread.
    pub fn start(
        proxy: Arc<Proxy>,
        cfg: NetConfig,
        rt: tokio::runtime::Handle,
    ) -> Result<Arc<Net>, NetError> {
        let mut udp = Vec::new();
        for a in &cfg.udp {
            udp.push(Arc::new(bind_udp(*a).map_err(|source| NetError::Bind {
                transport: "udp",
                addr: *a,
                source,
            })?));
        }
        let mut listeners = Vec::new();
        for (t, a) in &cfg.streams {
            if matches!(t, Transport::Tls | Transport::Wss) && cfg.tls.is_none() {
                return Err(NetError::NoCertificate {
                    transport: t.via_name(),
                    addr: *a,
                });
            }
            let l =
                crate::tcp::listen(*a, cfg.limits.backlog).map_err(|source| NetError::Bind {
                    transport: t.via_name(),
                    addr: *a,
                    source,
                })?;
            listeners.push((*t, l));
        }
        let resolver = {
            let _rt = rt.enter();
            match crate::dns::SipResolver::new(&cfg.dns) {
                Ok(r) => Some(Arc::new(r)),
                Err(e) => {
                    tracing::error!(error = %e, "no DNS client: names will not resolve");
                    None
                }
            }
        };
        let net = Arc::new_cyclic(|me| Net {
            resolver,
            timer_thread: std::sync::OnceLock::new(),
            me: me.clone(),
            proxy,
            udp,
            flows: Arc::new(FlowTable::default()),
            rt: rt.clone(),
            cfg,
            stop: Arc::new(AtomicBool::new(false)),
            stop_notify: Arc::new(tokio::sync::Notify::new()),
            threads: Default::default(),
            streams: Default::default(),
            limit_log_at: Default::default(),
            limit_log_skipped: Default::default(),
            started: Instant::now(),
        });
        let workers = if net.cfg.udp_workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            net.cfg.udp_workers
        };
        let mut threads = Vec::new();
        for (si, sock) in net.udp.iter().enumerate() {
            for w in 0..workers {
                let (net2, sock) = (net.clone(), sock.clone());
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("sip-udp-{si}-{w}"))
                        .spawn(move || net2.udp_loop(&sock))
                        .expect("spawn udp worker"),
                );
            }
        }
        let net2 = net.clone();
        let timers = std::thread::Builder::new()
            .name("sip-timers".into())
            .spawn(move || net2.timer_loop())
            .expect("spawn timer thread");
        let _ = net.timer_thread.set(timers.thread().clone());
        threads.push(timers);
        *net.threads.lock().unwrap_or_else(|p| p.into_inner()) = threads;
        for (t, l) in listeners {
            let net2 = net.clone();
            rt.spawn(async move {
                match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => crate::tcp::accept_loop(net2, l, t).await,
                    Err(e) => tracing::error!(error = %e, transport = %t, "listener"),
                }
            });
        }
        Ok(net)
    }

    pub(crate) fn self_arc(&self) -> Option<Arc<Net>> {
        self.me.upgrade()
    }

    /// True once [`Net::shutdown`] was called.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Wakes the accept loops when the transports stop.
    pub(crate) fn stop_notify(&self) -> Arc<tokio::sync::Notify> {
        self.stop_notify.clone()
    }

    /// `Some(lines skipped)` when a warning about a limit may be logged (one a second).
    pub(crate) fn limit_log(&self) -> Option<u64> {
        let sec = self.started.elapsed().as_secs() + 1;
        if self.limit_log_at.swap(sec, Ordering::Relaxed) == sec {
            self.limit_log_skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.limit_log_skipped.swap(0, Ordering::Relaxed))
    }

    /// Stops the listeners, closes the connections, stops the threads and waits for them.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.stop_notify.notify_waiters();
        self.flows.close_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.flows.len()
    }

    /// Open connections per stream transport, in the order of [`crate::STREAMS`].
    pub fn connections_per_transport(&self) -> [usize; 4] {
        self.flows.per_transport()
    }

    /// Reads the TLS certificate and key again (SIGHUP, `tls_reload`); new connections
    /// use them, open ones keep theirs.
    pub fn tls_reload(&self) -> Result<(), String> {
        match &self.cfg.tls {
            Some(t) => t.reload().map_err(|e| e.to_string()),
            None => Err("no [tls] section: nothing to reload".into()),
        }
    }

    fn udp_loop(&self, sock: &UdpSocket) {
        let mut buf = vec![0u8; 65536];
        let mut out = Vec::with_capacity(8);
        let mut idle_done = Instant::now();
        while !self.stopping() {
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    // nothing for 200 ms (the read timeout)
                    if let Some(hook) = self.cfg.idle_hook {
                        if idle_done.elapsed() >= Duration::from_secs(1) {
                            hook();
                            idle_done = Instant::now();
                        }
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive");
                    continue;
                }
            };
            if n == 0 || buf[..n].iter().all(|b| b.is_ascii_whitespace()) {
                continue; // keepalive
            }
            let data = Bytes::copy_from_slice(&buf[..n]);
            let src = Source {
                transport: Transport::Udp,
                addr: from,
                flow: None,
            };
            crate::supervise::guard("udp-receive", || {
                self.proxy.on_message(Instant::now(), src, data, &mut out);
                self.dispatch(&mut out);
            });
            out.clear();
        }
    }

    /// Fires the core's timers: sleeps until the earliest transaction timer, at least 5 ms
    /// (timers close together fire in one pass) and at most 100 ms (the core's other
    /// periodic work: probes, sweeps, held-back replies, command deadlines); a receive
    /// thread that arms an earlier timer wakes it.
    fn timer_loop(&self) {
        let mut out = Vec::new();
        let mut idle_done = Instant::now();
        let mut next: Option<Instant> = None;
        while !self.stopping() {
            let now = Instant::now();
            let wait = next
                .map_or(TIMER_MAX_SLEEP, |t| t.saturating_duration_since(now))
                .clamp(TIMER_MIN_SLEEP, TIMER_MAX_SLEEP);
            self.proxy.set_wake(now, now + wait);
            // a receive thread that arms an earlier timer unparks this thread
            std::thread::park_timeout(wait);
            let now = Instant::now();
            next = crate::supervise::guard("timers", || {
                let n = self.proxy.on_timers(now, &mut out);
                self.dispatch(&mut out);
                n
            })
            .flatten();
            out.clear();
            if let Some(hook) = self.cfg.idle_hook {
                if now.duration_since(idle_done) >= Duration::from_secs(1) {
                    hook();
                    idle_done = now;
                }
            }
        }
    }

    /// Runs the commands the core made: each on tokio, its answer fed back as an event.
    fn run_commands(&self) {
        let mut cmds = Vec::new();
        self.proxy.poll_commands(&mut cmds);
        for c in cmds {
            let id = c.id;
            match c.kind {
                CommandKind::Resolve(q) => {
                    let (me, resolver) = (self.self_arc(), self.resolver.clone());
                    self.rt.spawn(async move {
                        let result = match resolver {
                            Some(r) => r.resolve(&q).await,
                            None => Err(sip_proxy::dns::DnsError::Unreachable {
                                name: q.host.to_string(),
                                detail: "no DNS client".into(),
                            }),
                        };
                        if let Some(net) = me {
                            crate::supervise::guard("dns-answer", || {
                                let mut out = Vec::new();
                                let ev = Event {
                                    id,
                                    result: EventResult::Resolved(result),
                                };
                                net.proxy.on_event(Instant::now(), ev, &mut out);
                                net.dispatch(&mut out);
                            });
                        }
                    });
                }
                CommandKind::Media(req) => {
                    let me = self.me.clone();
                    let (op, call_id) = (req.op, req.call_id.clone());
                    let done: MediaDone = Box::new(move |result| {
                        if op == sip_proxy::media::MediaOp::Delete {
                            // nobody waits for a delete
                            if let Err(e) = result {
                                tracing::info!(call_id, error = %e, "media delete");
                            }
                            return;
                        }
                        if let Some(net) = me.upgrade() {
                            crate::supervise::guard("media-answer", || {
                                let mut out = Vec::new();
                                let ev = Event {
                                    id,
                                    result: EventResult::Media(result),
                                };
                                net.proxy.on_event(Instant::now(), ev, &mut out);
                                net.dispatch(&mut out);
                            });
                        }
                    });
                    match &self.cfg.media {
                        Some(m) => m.0.start(*req, done),
                        None => done(Err(sip_proxy::media::MediaError::Unavailable(
                            "no media relay configured".into(),
                        ))),
                    }
                }
                _ => tracing::error!(id, "a command the driver cannot run"),
            }
        }
    }

    /// Sends what the core produced, starts the commands it made, and wakes the timer
    /// thread when a timer now falls before its planned wake.
    pub(crate) fn dispatch(&self, out: &mut Vec<Transmit>) {
        self.run_commands();
        if self.proxy.take_timer_earlier() {
            if let Some(t) = self.timer_thread.get() {
                t.unpark();
            }
        }
        for t in out.drain(..) {
            match t.target.transport {
                Transport::Udp => {
                    // the socket of the destination's address family (known from the bind
                    // addresses: no getsockname per datagram)
                    let sock = self
                        .udp
                        .iter()
                        .zip(&self.cfg.udp)
                        .find(|(_, a)| a.is_ipv4() == t.target.addr.is_ipv4())
                        .map(|(s, _)| s)
                        .or(self.udp.first());
                    let ok = sock.is_some_and(|s| s.send_to(&t.data, t.target.addr).is_ok());
                    if !ok {
                        self.report_error(&t);
                    }
                }
                Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => {
                    crate::tcp::send(self, t)
                }
            }
        }
    }

    pub(crate) fn report_error(&self, t: &Transmit) {
        if let Some(origin) = t.origin {
            let mut out = Vec::new();
            self.proxy
                .on_transport_error(Instant::now(), origin, &mut out);
            self.dispatch(&mut out);
        } else {
            tracing::debug!(target = %t.target.addr, "send failed");
        }
    }
}
