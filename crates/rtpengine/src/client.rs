//! The NG client: rtpengine instances grouped in sets with weights, one UDP socket per
//! address family, requests matched to replies by cookie, retransmission with the same
//! cookie, health pings, and call affinity (a call's later commands go to the instance
//! that took its offer).
//!
//! The client never blocks its caller: [`Client::start`] sends the datagram from the
//! calling thread (no task is spawned, no thread woken) and the outcome is handed to a
//! callback on the thread that reads the reply or notices the timeout: one thread hop per
//! request instead of three (halved the proxy's CPU cost of a relayed call; BENCHMARKS.md).
//! Each try waits `timeout`, a request is sent `1 + retries` times, and an instance that
//! answers none of them is marked dead (skipped until a ping finds it again); one that
//! leaves a try unanswered is passed over by new calls meanwhile. Background work (the reply
//! reader, the retry timer, the pinger) is handed to the caller as futures, so it runs under
//! the caller's supervisor.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::bencode::Value;
use crate::ng;

/// One configured instance: `udp:127.0.0.1:2223` (OpenSIPS' `rtpengine.socket`), its set
/// and weight (0: a backup, used only when no weighted instance of its set is alive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    pub socket: String,
    pub set: u32,
    pub weight: u32,
}

/// Timing of requests and health checks.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long one try waits for the reply.
    pub timeout: Duration,
    /// Tries after the first (same cookie).
    pub retries: u32,
    /// Ping period for live instances; dead ones are pinged at the same period.
    pub ping_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            timeout: Duration::from_millis(300),
            retries: 2,
            ping_interval: Duration::from_secs(5),
        }
    }
}

/// Why a request got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// No enabled, live instance in the set.
    #[error("no rtpengine instance available in set {0}")]
    NoInstance(u32),
    /// The instance answered none of the tries.
    #[error("rtpengine {0} did not answer")]
    Timeout(String),
    /// rtpengine refused the command (`result: error`), with its reason.
    #[error("rtpengine refused: {0}")]
    Rejected(String),
    /// The reply was not a usable NG answer.
    #[error("rtpengine {0} answered garbage")]
    Garbage(String),
    /// The socket could not send.
    #[error("sending to rtpengine {0}: {1}")]
    Send(String, String),
}

/// Why an instance list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rtpengine instance {socket:?}: {why}")]
pub struct ConfigError {
    pub socket: String,
    pub why: String,
}

/// Parses `udp:HOST:PORT`, `udp6:[ADDR]:PORT` or `HOST:PORT` (an IP address; rtpengine's
/// NG listener is addressed by IP).
pub fn parse_socket(s: &str) -> Result<SocketAddr, ConfigError> {
    let err = |why: &str| ConfigError {
        socket: s.to_string(),
        why: why.to_string(),
    };
    let rest = s.trim();
    let rest = rest
        .strip_prefix("udp6:")
        .or_else(|| rest.strip_prefix("udp:"))
        .unwrap_or(rest);
    if rest.contains("://") || rest.starts_with("tcp:") || rest.starts_with("ws") {
        return Err(err("only the UDP NG protocol is supported (udp:IP:PORT)"));
    }
    if let Ok(a) = rest.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(err("port 0"));
        }
        return Ok(a);
    }
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| err("expected udp:IP:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| err("the port is not a number from 1 to 65535"))?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| err("the host must be an IP address"))?;
    if port == 0 {
        return Err(err("port 0"));
    }
    Ok(SocketAddr::new(ip, port))
}

/// An instance and what the client knows of it.
#[derive(Debug)]
pub struct Instance {
    pub socket: String,
    pub addr: SocketAddr,
    pub set: u32,
    pub weight: u32,
    /// Switched by management (`rtpengine_enable`).
    pub enabled: AtomicBool,
    alive: AtomicBool,
    /// A try went unanswered: new calls go elsewhere while another instance answers.
    suspect: AtomicBool,
    /// Last round-trip time, microseconds (0: none yet).
    rtt_us: AtomicU64,
    /// Calls whose media it holds (affinity entries).
    calls: AtomicU64,
    requests: AtomicU64,
    timeouts: AtomicU64,
    errors: AtomicU64,
    /// Unix-ish milliseconds since the client started of the next ping.
    next_ping_ms: AtomicU64,
}

impl Instance {
    fn new(c: &InstanceConfig) -> Result<Instance, ConfigError> {
        Ok(Instance {
            socket: c.socket.clone(),
            addr: parse_socket(&c.socket)?,
            set: c.set,
            weight: c.weight,
            enabled: AtomicBool::new(true),
            // unknown until the first ping: tried, as rtpengine usually starts first
            alive: AtomicBool::new(true),
            suspect: AtomicBool::new(false),
            rtt_us: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            next_ping_ms: AtomicU64::new(0),
        })
    }
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }
    /// Usable for new calls.
    pub fn usable(&self) -> bool {
        self.is_alive() && self.is_enabled()
    }
    pub fn rtt(&self) -> Duration {
        Duration::from_micros(self.rtt_us.load(Ordering::Relaxed))
    }
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
    /// (requests, timeouts, errors) so far.
    pub fn counters(&self) -> (u64, u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.timeouts.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// What a request is, for the choice of instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Starts or updates a call: the call's instance if it has a live one, else a new
    /// choice (failing over to the next instance when one does not answer).
    Offer,
    /// Continues a call: its instance (or a choice, when it has none: after a restart).
    Answer,
    /// Ends a call: its instance; with none known, every enabled instance is told.
    Delete,
    /// Reads a call: its instance.
    Query,
}

/// What to do with the outcome of a request.
pub type Done = Box<dyn FnOnce(Result<(Value, String), Failure>) + Send>;

/// What to do with the outcome of one datagram (the client, for a next try elsewhere).
type Then = Box<dyn FnOnce(&Client, Result<Value, Failure>) + Send>;

/// One datagram in flight to one instance: its tries, and who gets the outcome.
struct Waiting {
    inst: Arc<Instance>,
    data: Arc<[u8]>,
    tries_left: u32,
    next_at: Instant,
    t0: Instant,
    then: Then,
}

/// Largest NG reply read (an offer's answer carries an SDP: a few KB).
const MAX_REPLY: usize = 65_535;
/// Calls remembered for affinity at most; past it a new call gets no entry (its later
/// commands then go by set choice, which with one instance per set is the same).
const MAX_AFFINITY: usize = 1_000_000;

/// The NG client.
pub struct Client {
    instances: RwLock<Arc<Vec<Arc<Instance>>>>,
    sock4: Arc<UdpSocket>,
    sock6: Option<Arc<UdpSocket>>,
    /// The same sockets for sending from any thread (a plain non-blocking send: no task).
    send4: std::net::UdpSocket,
    send6: Option<std::net::UdpSocket>,
    pending: Mutex<HashMap<String, Waiting>>,
    /// Wakes the retry timer when a request is sent.
    wake: tokio::sync::Notify,
    affinity: Mutex<HashMap<Box<str>, Arc<Instance>>>,
    next_cookie: AtomicU64,
    cookie_prefix: u32,
    settings: Settings,
    started: Instant,
    /// Datagrams that were not an answer to a request of ours.
    pub stray_replies: AtomicU64,
    rr: AtomicU64,
}

impl Client {
    /// A client for `instances`; binds its sockets (on the wildcard address of each family
    /// in use). Must run inside a tokio runtime.
    pub fn new(
        instances: &[InstanceConfig],
        settings: Settings,
        seed: u64,
    ) -> std::io::Result<Arc<Client>> {
        let list = build(instances, &[])
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let bind = |a: SocketAddr| -> std::io::Result<(UdpSocket, std::net::UdpSocket)> {
            let s = std::net::UdpSocket::bind(a)?;
            s.set_nonblocking(true)?;
            let send = s.try_clone()?;
            Ok((UdpSocket::from_std(s)?, send))
        };
        let (sock4, send4) = bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0))?;
        let sock4 = Arc::new(sock4);
        let (sock6, send6) = match bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0)) {
            Ok((r, s)) => (Some(Arc::new(r)), Some(s)),
            Err(_) => (None, None),
        };
        Ok(Arc::new(Client {
            instances: RwLock::new(Arc::new(list)),
            sock4,
            sock6,
            send4,
            send6,
            pending: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            affinity: Mutex::new(HashMap::new()),
            next_cookie: AtomicU64::new(1),
            cookie_prefix: (seed as u32) | 1,
            settings,
            started: Instant::now(),
            stray_replies: AtomicU64::new(0),
            rr: AtomicU64::new(seed),
        }))
    }

    /// The instances now.
    pub fn instances(&self) -> Arc<Vec<Arc<Instance>>> {
        self.instances
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the instance list (a reload): instances kept (same socket and set) keep
    /// their state; calls on a removed instance still reach it for their answer and delete.
    pub fn reload(&self, instances: &[InstanceConfig]) -> Result<usize, ConfigError> {
        let old = self.instances();
        let list = build(instances, &old)?;
        let n = list.len();
        *self.instances.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(list);
        Ok(n)
    }

    /// Switches instance(s) matching `socket` (all when `None`) on or off; gives how many.
    pub fn enable(&self, socket: Option<&str>, on: bool) -> usize {
        let mut n = 0;
        for i in self.instances().iter() {
            if socket.is_none_or(|s| s == i.socket || parse_socket(s).ok() == Some(i.addr)) {
                i.enabled.store(on, Ordering::Relaxed);
                if on {
                    // ping it soon rather than trust an old state
                    i.next_ping_ms.store(0, Ordering::Relaxed);
                }
                n += 1;
            }
        }
        n
    }

    /// Calls with an instance.
    pub fn calls(&self) -> usize {
        self.affinity.lock().map_or(0, |a| a.len())
    }

    fn cookie(&self) -> String {
        let n = self.next_cookie.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}_{n}", self.cookie_prefix)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Chooses an instance of `set` for a new call: weighted among the usable ones with a
    /// weight, else among usable backups (weight 0). Skips those in `tried`.
    fn choose(&self, set: u32, tried: &[SocketAddr]) -> Option<Arc<Instance>> {
        let list = self.instances();
        let ok = |i: &&Arc<Instance>| i.set == set && i.usable() && !tried.contains(&i.addr);
        // an instance that just left a try unanswered is passed over while another answers
        let any_sure = list
            .iter()
            .any(|i| ok(&i) && !i.suspect.load(Ordering::Relaxed));
        let fresh = |i: &&Arc<Instance>| ok(i) && !(any_sure && i.suspect.load(Ordering::Relaxed));
        let weighted: Vec<&Arc<Instance>> =
            list.iter().filter(fresh).filter(|i| i.weight > 0).collect();
        if !weighted.is_empty() {
            let total: u64 = weighted.iter().map(|i| i.weight as u64).sum();
            let mut r = splitmix(self.rr.fetch_add(1, Ordering::Relaxed)) % total;
            for i in &weighted {
                if r < i.weight as u64 {
                    return Some((*i).clone());
                }
                r -= i.weight as u64;
            }
        }
        list.iter().find(fresh).cloned()
    }

    fn affine(&self, call_id: &str) -> Option<Arc<Instance>> {
        self.affinity
            .lock()
            .ok()
            .and_then(|a| a.get(call_id).cloned())
    }

    fn remember(&self, call_id: &str, i: &Arc<Instance>) {
        let mut a = self.affinity.lock().unwrap_or_else(|p| p.into_inner());
        if a.len() >= MAX_AFFINITY && !a.contains_key(call_id) {
            return;
        }
        if let Some(old) = a.insert(call_id.into(), i.clone()) {
            old.calls.fetch_sub(1, Ordering::Relaxed);
        }
        i.calls.fetch_add(1, Ordering::Relaxed);
    }

    fn forget(&self, call_id: &str) {
        let mut a = self.affinity.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = a.remove(call_id) {
            old.calls.fetch_sub(1, Ordering::Relaxed);
        }
        if a.capacity() > 4 * a.len() + 1024 {
            a.shrink_to_fit();
        }
    }

    /// Sends `cmd` for call `call_id` (set `set` when a new instance is chosen) and gives
    /// the reply dictionary (its `result` was `ok` or `pong`) and the instance's socket.
    pub async fn request(
        self: &Arc<Self>,
        kind: Kind,
        call_id: &str,
        set: u32,
        cmd: &Value,
    ) -> Result<(Value, String), Failure> {
        let (tx, rx) = oneshot::channel();
        self.start(
            kind,
            call_id,
            set,
            cmd,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await
            .unwrap_or_else(|_| Err(Failure::Timeout("(client dropped)".into())))
    }

    /// Starts `cmd` for call `call_id` from the calling thread (nothing is spawned: the
    /// datagram goes out at once) and calls `done` with the outcome, from the thread that
    /// reads the reply or notices the timeout. [`Client::read_replies`] and
    /// [`Client::run_timers`] must run.
    pub fn start(self: &Arc<Self>, kind: Kind, call_id: &str, set: u32, cmd: &Value, done: Done) {
        let data: Arc<[u8]> = {
            let mut d = Vec::with_capacity(64 + cmd_len_hint(cmd));
            cmd.encode(&mut d);
            d.into()
        };
        let job = Job {
            call_id: call_id.into(),
            set,
            body: data,
            tried: Vec::new(),
            last: Failure::NoInstance(set),
            rest: Vec::new(),
            done,
        };
        match kind {
            Kind::Offer => {
                let first = self.affine(call_id).filter(|i| i.is_alive());
                job.next_offer(self, first);
            }
            Kind::Answer | Kind::Query => {
                match self.affine(call_id).or_else(|| self.choose(set, &[])) {
                    Some(i) => job.send_to(self, i),
                    None => (job.done)(Err(Failure::NoInstance(set))),
                }
            }
            Kind::Delete => {
                let affine = self.affine(call_id);
                self.forget(call_id);
                match affine {
                    // a dead instance lost the call, or will time it out: not waited for
                    Some(i) if !i.is_alive() => (job.done)(Err(Failure::Timeout(i.socket.clone()))),
                    Some(i) => job.send_to(self, i),
                    None => {
                        // no instance known (a call from before a restart): every enabled
                        // instance is told; one that knows the call answers ok
                        let mut job = job;
                        job.rest = self
                            .instances()
                            .iter()
                            .filter(|i| i.is_enabled())
                            .cloned()
                            .rev()
                            .collect();
                        job.next_broadcast(self);
                    }
                }
            }
        }
    }

    /// One datagram to one instance with a fresh cookie: sent now, tried again by the
    /// timer, `then` called with the outcome.
    fn send_one(self: &Arc<Self>, i: Arc<Instance>, body: &[u8], then: Then) {
        let cookie = self.cookie();
        let mut d = Vec::with_capacity(cookie.len() + 1 + body.len());
        d.extend_from_slice(cookie.as_bytes());
        d.push(b' ');
        d.extend_from_slice(body);
        let data: Arc<[u8]> = d.into();
        i.requests.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let sent = self.transmit(&i, &data);
        if let Err(e) = sent {
            return self.finish(
                Waiting {
                    inst: i.clone(),
                    data,
                    tries_left: 0,
                    next_at: now,
                    t0: now,
                    then,
                },
                Err(Failure::Send(i.socket.clone(), e.to_string())),
            );
        }
        let first_pending = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            p.insert(
                cookie,
                Waiting {
                    inst: i,
                    data,
                    tries_left: self.settings.retries,
                    next_at: now + self.settings.timeout,
                    t0: now,
                    then,
                },
            );
            p.len() == 1
        };
        if first_pending {
            self.wake.notify_one();
        }
    }

    fn transmit(&self, i: &Instance, data: &[u8]) -> std::io::Result<()> {
        let sock = if i.addr.is_ipv4() {
            Some(&self.send4)
        } else {
            self.send6.as_ref()
        };
        match sock {
            Some(s) => s.send_to(data, i.addr).map(|_| ()),
            None => Err(std::io::Error::other("no IPv6 socket")),
        }
    }

    /// The outcome of one datagram: the instance's health and round trip, then its owner.
    fn finish(&self, w: Waiting, r: Result<Value, Failure>) {
        let i = &w.inst;
        let r = match r {
            Ok(v) => {
                i.suspect.store(false, Ordering::Relaxed);
                i.rtt_us
                    .store(w.t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                if !i.alive.swap(true, Ordering::Relaxed) {
                    tracing::info!(instance = %i.socket, "rtpengine instance answers again");
                }
                match v.get("result").and_then(Value::as_str) {
                    Some("ok") | Some("pong") => Ok(v),
                    Some("error") => {
                        i.errors.fetch_add(1, Ordering::Relaxed);
                        let why = v
                            .get("error-reason")
                            .and_then(Value::as_str)
                            .unwrap_or("no reason given");
                        Err(Failure::Rejected(printable(why)))
                    }
                    _ => {
                        i.errors.fetch_add(1, Ordering::Relaxed);
                        Err(Failure::Garbage(i.socket.clone()))
                    }
                }
            }
            Err(f @ Failure::Garbage(_)) => {
                i.errors.fetch_add(1, Ordering::Relaxed);
                Err(f)
            }
            Err(f) => {
                i.timeouts.fetch_add(1, Ordering::Relaxed);
                if i.alive.swap(false, Ordering::Relaxed) {
                    tracing::warn!(instance = %i.socket, error = %f, "rtpengine instance marked dead");
                }
                i.next_ping_ms.store(
                    self.now_ms() + self.settings.ping_interval.as_millis() as u64,
                    Ordering::Relaxed,
                );
                Err(f)
            }
        };
        (w.then)(self, r);
    }

    /// Tries again what is due and gives up on what has no try left; runs until the client
    /// is dropped (run it under a supervisor). Sleeps while nothing is in flight.
    pub async fn run_timers(self: Arc<Self>) {
        let tick =
            (self.settings.timeout / 4).clamp(Duration::from_millis(2), Duration::from_millis(20));
        loop {
            let idle = self.pending.lock().map_or(true, |p| p.is_empty());
            if idle {
                self.wake.notified().await;
            }
            tokio::time::sleep(tick).await;
            self.expire(Instant::now());
        }
    }

    fn expire(&self, now: Instant) {
        let mut gone = Vec::new();
        let mut again: Vec<(Arc<Instance>, Arc<[u8]>)> = Vec::new();
        {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<String> = p
                .iter()
                .filter(|(_, w)| w.next_at <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                let Some(w) = p.get_mut(&k) else { continue };
                w.inst.suspect.store(true, Ordering::Relaxed);
                // out of tries, or another request found the instance dead meanwhile
                if w.tries_left == 0 || !w.inst.is_alive() {
                    gone.extend(p.remove(&k));
                } else {
                    w.tries_left -= 1;
                    w.next_at = now + self.settings.timeout;
                    again.push((w.inst.clone(), w.data.clone()));
                }
            }
        }
        for (i, data) in again {
            let _ = self.transmit(&i, &data); // the same cookie
        }
        for w in gone {
            let f = Failure::Timeout(w.inst.socket.clone());
            self.finish(w, Err(f));
        }
    }

    /// Reads replies on the sockets and hands each to its request; runs until the client
    /// is dropped (run it under a supervisor).
    pub async fn read_replies(self: Arc<Self>) {
        let mut buf = vec![0u8; MAX_REPLY];
        let mut buf6 = vec![0u8; MAX_REPLY];
        loop {
            let got = match &self.sock6 {
                Some(s6) => tokio::select! {
                    r = self.sock4.recv_from(&mut buf) => r.map(|(n, a)| (n, a, false)),
                    r = s6.recv_from(&mut buf6) => r.map(|(n, a)| (n, a, true)),
                },
                None => self
                    .sock4
                    .recv_from(&mut buf)
                    .await
                    .map(|(n, a)| (n, a, false)),
            };
            let (n, from, six) = match got {
                Ok(x) => x,
                Err(e) => {
                    // ICMP port unreachable shows here on Linux: the try times out anyway
                    tracing::debug!(error = %e, "rtpengine socket");
                    continue;
                }
            };
            let data = if six { &buf6[..n] } else { &buf[..n] };
            self.on_datagram(data, from);
        }
    }

    fn on_datagram(&self, data: &[u8], from: SocketAddr) {
        let stray = || {
            self.stray_replies.fetch_add(1, Ordering::Relaxed);
        };
        let Ok((cookie, body)) = ng::parse(data) else {
            // garbage: if it came from an instance with a request waiting, that request
            // fails now instead of waiting for its timeout
            let w = {
                let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let k = p
                    .iter()
                    .find(|(_, w)| w.inst.addr == from)
                    .map(|(k, _)| k.clone());
                k.and_then(|k| p.remove(&k))
            };
            tracing::warn!(source = %from, "rtpengine answered something that is not NG");
            stray();
            if let Some(w) = w {
                let f = Failure::Garbage(w.inst.socket.clone());
                self.finish(w, Err(f));
            }
            return;
        };
        let w = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match p.get(cookie) {
                Some(w) if w.inst.addr == from => p.remove(cookie),
                _ => None,
            }
        };
        match w {
            Some(w) => self.finish(w, Ok(body)),
            None => stray(), // late (a retransmission's second answer), or not ours
        }
    }

    /// Pings instances whose turn it is; run every second or so.
    pub async fn ping_due(self: &Arc<Self>) {
        let now = self.now_ms();
        let due: Vec<Arc<Instance>> = self
            .instances()
            .iter()
            .filter(|i| i.is_enabled() && i.next_ping_ms.load(Ordering::Relaxed) <= now)
            .cloned()
            .collect();
        let ping = Value::dict([("command", Value::from("ping"))]).to_bytes();
        let period = self.settings.ping_interval.as_millis() as u64;
        let mut waits = Vec::new();
        for i in due {
            i.next_ping_ms.store(now + period, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.send_one(
                i,
                &ping,
                Box::new(move |_, r| {
                    let _ = tx.send(r);
                }),
            );
            waits.push(rx);
        }
        for w in waits {
            let _ = w.await;
        }
    }

    /// Pings every enabled instance now (at start, and from `rtpengine_reload`).
    pub async fn ping_all(self: &Arc<Self>) {
        for i in self.instances().iter() {
            i.next_ping_ms.store(0, Ordering::Relaxed);
        }
        self.ping_due().await;
    }
}

/// A request's way through the instances: an offer fails over to the next instance of its
/// set when one is silent; a delete with no known instance tells each in turn.
struct Job {
    call_id: Box<str>,
    set: u32,
    body: Arc<[u8]>,
    tried: Vec<SocketAddr>,
    last: Failure,
    /// Instances still to tell (a broadcast delete).
    rest: Vec<Arc<Instance>>,
    done: Done,
}

impl Job {
    fn send_to(self, c: &Arc<Client>, i: Arc<Instance>) {
        let body = self.body.clone();
        let socket = i.socket.clone();
        c.send_one(
            i,
            &body,
            Box::new(move |_, r| (self.done)(r.map(|v| (v, socket)))),
        );
    }

    fn next_offer(mut self, c: &Arc<Client>, first: Option<Arc<Instance>>) {
        let Some(i) = first.or_else(|| {
            (self.tried.len() < 8)
                .then(|| c.choose(self.set, &self.tried))
                .flatten()
        }) else {
            return (self.done)(Err(self.last));
        };
        self.tried.push(i.addr);
        let body = self.body.clone();
        let (socket, inst) = (i.socket.clone(), i.clone());
        let c2 = c.clone();
        c.send_one(
            i,
            &body,
            Box::new(move |_, r| match r {
                Ok(v) => {
                    c2.remember(&self.call_id, &inst);
                    (self.done)(Ok((v, socket)))
                }
                Err(f @ (Failure::Timeout(_) | Failure::Send(..))) => {
                    let mut job = self;
                    job.last = f;
                    job.next_offer(&c2, None);
                }
                // refused or garbage: another instance would say the same
                Err(f) => (self.done)(Err(f)),
            }),
        );
    }

    fn next_broadcast(mut self, c: &Arc<Client>) {
        let Some(i) = self.rest.pop() else {
            return (self.done)(Err(self.last));
        };
        let body = self.body.clone();
        let socket = i.socket.clone();
        let c2 = c.clone();
        c.send_one(
            i,
            &body,
            Box::new(move |_, r| match r {
                Ok(v) => (self.done)(Ok((v, socket))),
                Err(f) => {
                    let mut job = self;
                    job.last = f;
                    job.next_broadcast(&c2);
                }
            }),
        );
    }
}

/// Room for a command's encoding (its SDP dominates).
fn cmd_len_hint(v: &Value) -> usize {
    v.get("sdp")
        .and_then(Value::as_bytes)
        .map_or(0, |s| s.len())
        + 256
}

fn build(cfg: &[InstanceConfig], old: &[Arc<Instance>]) -> Result<Vec<Arc<Instance>>, ConfigError> {
    let mut out: Vec<Arc<Instance>> = Vec::with_capacity(cfg.len());
    for c in cfg {
        let fresh = Instance::new(c)?;
        if out.iter().any(|i| i.addr == fresh.addr && i.set == c.set) {
            return Err(ConfigError {
                socket: c.socket.clone(),
                why: format!("listed twice in set {}", c.set),
            });
        }
        match old
            .iter()
            .find(|i| i.addr == fresh.addr && i.set == c.set && i.weight == c.weight)
        {
            Some(kept) => out.push(kept.clone()),
            None => out.push(Arc::new(fresh)),
        }
    }
    Ok(out)
}

/// A reason from the network, made safe for a log line or a reason phrase.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect::<String>()
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(socket: &str, set: u32, weight: u32) -> InstanceConfig {
        InstanceConfig {
            socket: socket.into(),
            set,
            weight,
        }
    }

    #[test]
    fn sockets_parse_in_opensips_forms_and_hostile_ones_are_refused() {
        assert_eq!(
            parse_socket("udp:127.0.0.1:2223").unwrap(),
            "127.0.0.1:2223".parse().unwrap()
        );
        assert_eq!(
            parse_socket("udp6:[::1]:2223").unwrap(),
            "[::1]:2223".parse().unwrap()
        );
        assert_eq!(
            parse_socket("10.0.0.1:22222").unwrap(),
            "10.0.0.1:22222".parse().unwrap()
        );
        for bad in [
            "",
            "udp:",
            "udp:rtp.example.com:2223",
            "udp:127.0.0.1",
            "udp:127.0.0.1:0",
            "udp:127.0.0.1:99999",
            "tcp:127.0.0.1:2223",
            "ws://127.0.0.1:2223",
            "udp:127.0.0.1:-1",
        ] {
            assert!(parse_socket(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// A fake rtpengine on loopback: answers each datagram with what `answer` makes of it.
    async fn fake(
        answer: impl Fn(&str, &Value) -> Option<Vec<u8>> + Send + 'static,
    ) -> (SocketAddr, Arc<AtomicU64>) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = s.local_addr().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                seen2.fetch_add(1, Ordering::Relaxed);
                let Ok((cookie, v)) = ng::parse(&buf[..n]) else {
                    continue;
                };
                if let Some(reply) = answer(cookie, &v) {
                    let _ = s.send_to(&reply, from).await;
                }
            }
        });
        (a, seen)
    }

    fn ok_reply(cookie: &str, v: &Value) -> Option<Vec<u8>> {
        let cmd = v.get("command").and_then(Value::as_str).unwrap_or("");
        let result = if cmd == "ping" { "pong" } else { "ok" };
        Some(ng::frame(
            cookie,
            &Value::dict([("result", Value::from(result))]),
        ))
    }

    fn settings() -> Settings {
        Settings {
            timeout: Duration::from_millis(50),
            retries: 2,
            ping_interval: Duration::from_secs(60),
        }
    }

    fn offer() -> Value {
        Value::dict([("command", Value::from("offer"))])
    }

    #[tokio::test]
    async fn a_call_sticks_to_its_instance_and_a_dead_one_is_skipped() {
        let (a, seen_a) = fake(ok_reply).await;
        let (dead, seen_dead) = fake(|_, _| None).await;
        let c = Client::new(
            &[
                inst(&format!("udp:{dead}"), 0, 1000),
                inst(&format!("udp:{a}"), 0, 1),
            ],
            settings(),
            7,
        )
        .unwrap();
        tokio::spawn(c.clone().read_replies());
        tokio::spawn(c.clone().run_timers());
        let mut via = Vec::new();
        for n in 0..10 {
            let (_, s) = c
                .request(Kind::Offer, &format!("call{n}"), 0, &offer())
                .await
                .unwrap();
            via.push(s);
        }
        // the heavy instance never answers: tried three times (same cookie) once, then dead
        assert_eq!(seen_dead.load(Ordering::Relaxed), 3);
        assert!(via.iter().all(|s| s == &format!("udp:{a}")));
        assert!(!c.instances()[0].is_alive());
        // the answer goes where the offer went, and the delete forgets the call
        c.request(Kind::Answer, "call3", 0, &offer()).await.unwrap();
        assert_eq!(c.calls(), 10);
        c.request(Kind::Delete, "call3", 0, &offer()).await.unwrap();
        assert_eq!(c.calls(), 9);
        assert_eq!(seen_a.load(Ordering::Relaxed), 12);
        assert_eq!(c.instances()[1].calls(), 9);
    }

    #[tokio::test]
    async fn backups_serve_only_when_every_weighted_instance_is_down() {
        let (main, _) = fake(ok_reply).await;
        let (backup, seen_backup) = fake(ok_reply).await;
        let c = Client::new(
            &[
                inst(&format!("udp:{main}"), 0, 5),
                inst(&format!("udp:{backup}"), 0, 0),
            ],
            settings(),
            1,
        )
        .unwrap();
        tokio::spawn(c.clone().read_replies());
        tokio::spawn(c.clone().run_timers());
        for n in 0..5 {
            c.request(Kind::Offer, &format!("a{n}"), 0, &offer())
                .await
                .unwrap();
        }
        assert_eq!(seen_backup.load(Ordering::Relaxed), 0);
        assert_eq!(c.enable(Some(&format!("udp:{main}")), false), 1);
        let (_, s) = c.request(Kind::Offer, "b", 0, &offer()).await.unwrap();
        assert_eq!(s, format!("udp:{backup}"));
        // another set has nothing
        assert_eq!(
            c.request(Kind::Offer, "c", 9, &offer()).await.unwrap_err(),
            Failure::NoInstance(9)
        );
    }

    #[tokio::test]
    async fn refusals_garbage_and_silence_are_told_apart() {
        let (refuses, _) = fake(|cookie, _| {
            Some(ng::frame(
                cookie,
                &Value::dict([
                    ("result", Value::from("error")),
                    ("error-reason", Value::from("Failed to parse SDP\r\nX: y")),
                ]),
            ))
        })
        .await;
        let (garbage, _) = fake(|_, _| Some(b"\x00\xffnot ng at all".to_vec())).await;
        let (odd, _) = fake(|cookie, _| {
            Some(ng::frame(
                cookie,
                &Value::dict([("result", Value::from("maybe"))]),
            ))
        })
        .await;
        let (silent, _) = fake(|_, _| None).await;
        for (addr, want) in [
            (refuses, "rtpengine refused: Failed to parse SDPX: y"),
            (garbage, "answered garbage"),
            (odd, "answered garbage"),
            (silent, "did not answer"),
        ] {
            let c = Client::new(&[inst(&format!("udp:{addr}"), 0, 1)], settings(), 3).unwrap();
            tokio::spawn(c.clone().read_replies());
            tokio::spawn(c.clone().run_timers());
            let t0 = Instant::now();
            let e = c.request(Kind::Offer, "x", 0, &offer()).await.unwrap_err();
            assert!(e.to_string().contains(want), "{addr}: {e}");
            // garbage fails at once, silence after the tries
            assert!(
                t0.elapsed() < Duration::from_millis(400),
                "{:?}",
                t0.elapsed()
            );
        }
    }

    #[tokio::test]
    async fn replies_from_elsewhere_or_with_unknown_cookies_are_ignored() {
        let (a, _) = fake(|cookie, _| {
            // answers twice: the second (a late duplicate) must be ignored
            Some(ng::frame(
                cookie,
                &Value::dict([("result", Value::from("ok"))]),
            ))
        })
        .await;
        let c = Client::new(&[inst(&format!("udp:{a}"), 0, 1)], settings(), 5).unwrap();
        tokio::spawn(c.clone().read_replies());
        tokio::spawn(c.clone().run_timers());
        // a stranger guesses a cookie
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = c.sock4.local_addr().unwrap().port();
        let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let forged = ng::frame(
            &format!("{:08x}_1", c.cookie_prefix),
            &Value::dict([("result", Value::from("error"))]),
        );
        stranger.send_to(&forged, to).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = c.request(Kind::Offer, "x", 0, &offer()).await;
        assert!(r.is_ok(), "{r:?}");
        assert!(c.stray_replies.load(Ordering::Relaxed) >= 1);
    }

    #[tokio::test]
    async fn reload_keeps_state_and_refuses_bad_lists() {
        let (a, _) = fake(ok_reply).await;
        let c = Client::new(&[inst(&format!("udp:{a}"), 0, 1)], settings(), 9).unwrap();
        tokio::spawn(c.clone().read_replies());
        tokio::spawn(c.clone().run_timers());
        c.request(Kind::Offer, "k", 0, &offer()).await.unwrap();
        c.enable(None, false);
        let e = c
            .reload(&[inst("udp:127.0.0.1:1", 0, 1), inst("udp:127.0.0.1:1", 0, 2)])
            .unwrap_err();
        assert!(e.why.contains("twice"));
        assert_eq!(c.instances().len(), 1);
        c.reload(&[
            inst(&format!("udp:{a}"), 0, 1),
            inst("udp:127.0.0.1:1", 1, 1),
        ])
        .unwrap();
        assert!(!c.instances()[0].is_enabled(), "kept its state");
        assert_eq!(c.instances()[0].calls(), 1);
        // a ping marks a silent instance dead
        c.ping_all().await;
        assert!(!c.instances()[1].is_alive());
    }
}
