//! The request and response pipeline (RFC 3261 §16).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use sip_txn::{
    server_key, server_key_for, ClientInvite, ClientNonInvite, RequestAction, ResponseAction,
    ServerInvite, ServerNonInvite, TxnEvent,
};
use sip_wire::{
    salvage, split_commas, Editor, HeaderName, Message, Method, NameAddr, ParseError, Scheme, Uri,
    Via,
};

use crate::build::SERVER;
use crate::build::{
    local_response, make_ack, make_cancel, make_orphan_ack_bye, salvage_response, strip_top_via,
};
use crate::config::ProxyConfig;
use crate::ctx::{Branch, ClientTxn, Ctx, Plan, ServerTxn};
use crate::router::{Probe, Router};
use crate::stats::Stats;
use crate::types::{Destination, Origin, Source, Target, Transmit, Transport};

/// Our branch parameters start with this after the magic cookie.
const BRANCH_PREFIX: &str = "z9hG4bKsb";
/// Stateless (2xx ACK) branches.
const STATELESS_PREFIX: &str = "z9hG4bKsbA";
/// Health probes (OPTIONS/INFO) the dispatcher sends.
const PROBE_PREFIX: &str = "z9hG4bKsbP";
/// Marks a probe's [`Origin`], so a send failure goes back to the router.
const PROBE_ORIGIN: u64 = 1 << 63;
/// To-tags of responses the proxy generates itself.
const TAG_PREFIX: &str = "sbx7";

#[derive(Default)]
struct Shard {
    ctxs: HashMap<u64, Ctx>,
    by_key: HashMap<String, u64>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
}

/// A refusal: status, reason and extra header lines.
struct Reject {
    code: u16,
    reason: String,
    extra: Vec<String>,
}

fn reject(code: u16, reason: impl Into<String>) -> Reject {
    Reject {
        code,
        reason: reason.into(),
        extra: Vec::new(),
    }
}

enum Decision {
    /// Answer locally with 200 OK (OPTIONS to the proxy itself).
    LocalOk,
    /// Forward to a fixed next hop (in-dialog) or to router candidates (initial).
    Forward {
        plan: Plan,
        candidates: Vec<Destination>,
    },
}

/// The stateful proxy core. Shared by every receive thread; state is sharded by key.
pub struct Proxy {
    cfg: ProxyConfig,
    router: Arc<dyn Router>,
    shards: Box<[Mutex<Shard>]>,
    counter: AtomicU64,
    stats: Stats,
}

fn hash64<T: Hash + ?Sized>(salt: u64, v: &T) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    salt.hash(&mut h);
    v.hash(&mut h);
    h.finish()
}

/// Parses `z9hG4bKsb<loop>.<id>.<idx>`.
fn parse_branch(b: &str) -> Option<(u32, u64, u32)> {
    let rest = b.strip_prefix(BRANCH_PREFIX)?;
    let mut it = rest.split('.');
    let l = u32::from_str_radix(it.next()?, 16).ok()?;
    let id = u64::from_str_radix(it.next()?, 16).ok()?;
    let idx = u32::from_str_radix(it.next()?, 16).ok()?;
    Some((l, id, idx))
}

fn host_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

impl Proxy {
    /// Creates the core with its settings and the router for initial requests.
    pub fn new(cfg: ProxyConfig, router: Arc<dyn Router>) -> Proxy {
        let n = cfg.shards.max(1);
        Proxy {
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            cfg,
            router,
            counter: AtomicU64::new(1),
            stats: Stats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Contexts (proxied requests whose transactions are still alive).
    pub fn active_contexts(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.ctxs.len()).unwrap_or(0))
            .sum()
    }

    /// The settings.
    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }

    fn lock(&self, i: usize) -> std::sync::MutexGuard<'_, Shard> {
        match self.shards[i].lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn shard_of_key(&self, key: &str) -> usize {
        (hash64(0, key) % self.shards.len() as u64) as usize
    }

    fn shard_of_id(&self, id: u64) -> usize {
        (id % self.shards.len() as u64) as usize
    }

    fn listener(&self, t: Transport) -> Option<SocketAddr> {
        self.cfg
            .listeners
            .iter()
            .find(|l| l.transport == t)
            .map(|l| l.advertise)
    }

    fn local_tag(&self, req_call_id: &str) -> String {
        format!(
            "{TAG_PREFIX}{:x}",
            hash64(self.cfg.salt, req_call_id) as u32
        )
    }

    /// True when host/port name this proxy (a listener address or an alias).
    fn is_us_host(&self, host: &str, port: Option<u16>) -> bool {
        if let Some(ip) = host_ip(host) {
            let port = port.unwrap_or(5060);
            return self
                .cfg
                .listeners
                .iter()
                .any(|l| l.advertise.ip() == ip && l.advertise.port() == port);
        }
        self.cfg
            .aliases
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host))
            && port.is_none_or(|p| self.cfg.listeners.iter().any(|l| l.advertise.port() == p))
    }

    fn is_us(&self, uri: &Uri) -> bool {
        matches!(uri.scheme, Scheme::Sip | Scheme::Sips) && self.is_us_host(uri.host, uri.port)
    }

    // ----- entry points -----------------------------------------------------------------

    /// Handles one received message (a datagram, or one framed stream message).
    pub fn on_message(&self, now: Instant, src: Source, data: Bytes, out: &mut Vec<Transmit>) {
        if data.len() > self.cfg.max_message_size {
            return self.on_bad_message(src, &data, ParseError::TooLarge(data.len()), out);
        }
        match Message::parse(data.clone()) {
            Ok(msg) if msg.is_request() => self.on_request(now, src, msg, out),
            Ok(msg) => self.on_response(now, msg, out),
            Err(e) => self.on_bad_message(src, &data, e, out),
        }
    }

    /// Fires every expired timer.
    pub fn on_timers(&self, now: Instant, out: &mut Vec<Transmit>) {
        let mut probes = Vec::new();
        self.router.due_probes(now, &mut probes);
        for p in probes {
            self.send_probe(p, out);
        }
        for i in 0..self.shards.len() {
            let mut g = self.lock(i);
            let shard = &mut *g;
            while let Some(&Reverse((t, id))) = shard.timers.peek() {
                if t > now {
                    break;
                }
                shard.timers.pop();
                let Some(ctx) = shard.ctxs.get_mut(&id) else {
                    continue;
                };
                if ctx.armed == Some(t) {
                    ctx.armed = None;
                }
                self.ctx_timeout(now, ctx, out);
                self.settle(shard, id);
            }
        }
    }

    /// The earliest timer of any context.
    pub fn next_timeout(&self) -> Option<Instant> {
        (0..self.shards.len())
            .filter_map(|i| self.lock(i).timers.peek().map(|r| r.0 .0))
            .min()
    }

    /// A transmission tagged with `origin` could not be sent (connection refused, ...).
    pub fn on_transport_error(&self, now: Instant, origin: Origin, out: &mut Vec<Transmit>) {
        Stats::inc(&self.stats.transport_errors);
        if origin.ctx & PROBE_ORIGIN != 0 {
            return self
                .router
                .probe_result(now, origin.ctx & !PROBE_ORIGIN, None);
        }
        let s = self.shard_of_id(origin.ctx);
        let mut g = self.lock(s);
        let shard = &mut *g;
        let Some(ctx) = shard.ctxs.get_mut(&origin.ctx) else {
            return;
        };
        let Some(b) = ctx.branches.get_mut(origin.branch as usize) else {
            return;
        };
        if b.txn.on_transport_error() == Some(TxnEvent::Timeout) && !b.done {
            tracing::warn!(destination = %b.dest.uri, "destination unreachable");
            self.branch_failed(
                now,
                ctx,
                origin.branch as usize,
                503,
                "Service Unavailable (destination unreachable)",
                out,
            );
        }
        self.settle(shard, origin.ctx);
    }

    /// Writes and queues one health probe.
    fn send_probe(&self, p: Probe, out: &mut Vec<Transmit>) {
        let Some(local) = self.listener(p.target.transport) else {
            return self.router.probe_result(Instant::now(), p.id, None);
        };
        let data = format!(
            "{m} {uri} SIP/2.0\r\nVia: SIP/2.0/{t} {local};branch={PROBE_PREFIX}{id:x}\r\nMax-Forwards: {mf}\r\nFrom: <{from}>;tag=sbp{id:x}\r\nTo: <{uri}>\r\nCall-ID: sbp{id:x}.{salt:x}@{ip}\r\nCSeq: 1 {m}\r\nUser-Agent: {SERVER}\r\nContent-Length: 0\r\n\r\n",
            m = p.method,
            uri = p.uri,
            t = p.target.transport.via_name(),
            id = p.id,
            mf = p.max_forwards,
            from = p.from,
            salt = self.cfg.salt as u32,
            ip = local.ip(),
        );
        out.push(Transmit {
            target: p.target,
            data: Bytes::from(data),
            origin: Some(Origin {
                ctx: PROBE_ORIGIN | p.id,
                branch: 0,
            }),
        });
    }

    // ----- malformed input --------------------------------------------------------------

    fn on_bad_message(&self, src: Source, data: &[u8], e: ParseError, out: &mut Vec<Transmit>) {
        Stats::inc(&self.stats.bad_messages);
        let s = salvage(data);
        tracing::warn!(source = %src.addr, transport = %src.transport, error = %e, "malformed message");
        if s.is_request && s.has_via && s.method != "ACK" {
            let call_id = s
                .lines
                .iter()
                .find(|l| l.starts_with("Call-ID:"))
                .map_or("", |l| l.as_str());
            let tag = self.local_tag(call_id);
            let data = salvage_response(&s.lines, e.status(), &e.reason(), &tag);
            Stats::inc(&self.stats.local_replies);
            out.push(Transmit {
                target: Target {
                    transport: src.transport,
                    addr: src.addr,
                    flow: src.flow,
                },
                data,
                origin: None,
            });
        }
    }

    fn reply_stateless(&self, src: &Source, req: &Message, r: Reject, out: &mut Vec<Transmit>) {
        if req.method() == Some(Method::Ack) {
            return;
        }
        Stats::inc(&self.stats.local_replies);
        let tag = self.local_tag(req.call_id());
        let data = local_response(req, r.code, &r.reason, &tag, &r.extra);
        out.push(Transmit {
            target: Target {
                transport: src.transport,
                addr: src.addr,
                flow: src.flow,
            },
            data,
            origin: None,
        });
    }

    // ----- requests ---------------------------------------------------------------------

    fn on_request(&self, now: Instant, src: Source, msg: Message, out: &mut Vec<Transmit>) {
        Stats::inc(&self.stats.rcv_requests);
        let Ok(key) = server_key(&msg) else {
            return self.reply_stateless(&src, &msg, reject(400, "Bad Request (Via)"), out);
        };
        match msg.method() {
            Some(Method::Ack) => return self.on_ack(now, src, msg, key, out),
            Some(Method::Cancel) => return self.on_cancel(now, src, msg, out),
            _ => {}
        }
        let si = self.shard_of_key(&key);
        {
            let mut g = self.lock(si);
            let shard = &mut *g;
            if let Some(&id) = shard.by_key.get(&key) {
                if let Some(ctx) = shard.ctxs.get_mut(&id) {
                    match &mut ctx.server {
                        ServerTxn::Invite(s) => s.on_invite(),
                        ServerTxn::NonInvite(s) => s.on_request(),
                    };
                    Stats::inc(&self.stats.retransmissions_absorbed);
                    self.flush_server(ctx, out);
                    return;
                }
            }
        }
        let decision = match self.decide(&src, &msg) {
            Ok(d) => d,
            Err(r) => return self.reply_stateless(&src, &msg, r, out),
        };
        let (plan, candidates) = match decision {
            Decision::LocalOk => {
                let extra = vec!["Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE".to_string(), "Accept: application/sdp".to_string()];
                return self.reply_stateless(
                    &src,
                    &msg,
                    Reject {
                        code: 200,
                        reason: "OK".into(),
                        extra,
                    },
                    out,
                );
            }
            Decision::Forward { plan, candidates } => (plan, candidates),
        };
        let invite = msg.method() == Some(Method::Invite);
        let in_dialog = msg.to_tag().is_some();
        if msg.method() == Some(Method::Bye) {
            self.router.on_call_ended(msg.call_id());
        }
        let reliable = src.transport.is_reliable();
        let id =
            self.counter.fetch_add(1, Ordering::Relaxed) * self.shards.len() as u64 + si as u64;
        let server = if invite {
            ServerTxn::Invite(ServerInvite::new(reliable, self.cfg.timers))
        } else {
            ServerTxn::NonInvite(ServerNonInvite::new(reliable, self.cfg.timers))
        };
        let mut ctx = Ctx {
            id,
            key: key.clone(),
            invite,
            resp_target: Target {
                transport: src.transport,
                addr: src.addr,
                flow: src.flow,
            },
            server,
            req: Some(msg),
            plan,
            candidates,
            next_candidate: 0,
            branches: Vec::with_capacity(1),
            best: None,
            fallback: (503, "Service Unavailable (no destination)".into()),
            fast_failover: !in_dialog,
            final_sent: false,
            cancelled: false,
            armed: None,
        };
        if invite {
            let trying = ctx
                .req
                .as_ref()
                .map(|r| local_response(r, 100, "Trying", "", &[]))
                .unwrap_or_default();
            ctx.server.send_response(now, 100, trying);
            self.flush_server(&mut ctx, out);
        }
        if !self.start_branch(now, &mut ctx, out) {
            self.finalize(now, &mut ctx, out);
        }
        let mut g = self.lock(si);
        let shard = &mut *g;
        shard.by_key.insert(key, id);
        shard.ctxs.insert(id, ctx);
        self.settle(shard, id);
    }

    /// Validation and routing of a new request (§16.3, §16.4, §16.5).
    fn decide(&self, src: &Source, msg: &Message) -> Result<Decision, Reject> {
        let method = msg.method().unwrap_or(Method::Other);
        let uri = msg.uri().map_err(|e| reject(400, e.reason()))?;
        if let Scheme::Other(s) = uri.scheme {
            let _ = s;
            return Err(reject(416, "Unsupported URI Scheme"));
        }
        let mf = msg.max_forwards().map_err(|e| reject(400, e.reason()))?;
        let to_tag = msg.to_tag().is_some();
        if mf == Some(0) {
            if method == Method::Options && self.is_us(&uri) && uri.user.is_none() && !to_tag {
                return Ok(Decision::LocalOk);
            }
            return Err(reject(483, "Too Many Hops"));
        }
        if let Some(pr) = msg.get(HeaderName::ProxyRequire) {
            let mut r = reject(420, "Bad Extension");
            r.extra.push(format!("Unsupported: {pr}"));
            return Err(r);
        }
        let loop_hash = self.loop_hash(msg);
        for via in msg.vias().flatten() {
            if self.is_us_host(via.host, via.port)
                && via
                    .branch()
                    .and_then(parse_branch)
                    .is_some_and(|(l, _, _)| l == loop_hash)
            {
                return Err(reject(482, "Loop Detected"));
            }
        }
        // Route: pop the values that name us (two of them after a double Record-Route)
        let routes: Vec<&str> = msg.values(HeaderName::Route).collect();
        let mut popped = 0;
        let mut last_popped: Option<NameAddr> = None;
        while popped < routes.len() {
            let na =
                NameAddr::parse(routes[popped], "Route").map_err(|e| reject(400, e.reason()))?;
            if !self.is_us(&na.uri) {
                break;
            }
            last_popped = Some(na);
            popped += 1;
        }
        // strict-router fix-up (§16.4): our Record-Route URI arrived as Request-URI
        let mut new_ruri = None;
        let mut drop_last = false;
        if routes.len() > popped && self.is_us(&uri) && uri.is_loose() {
            let last = NameAddr::parse(routes[routes.len() - 1], "Route")
                .map_err(|e| reject(400, e.reason()))?;
            new_ruri = Some(last.uri.raw.to_string());
            drop_last = true;
        }
        let remaining = routes.len() - popped - drop_last as usize;
        let plan_base = |record_route: bool| -> Result<Plan, Reject> {
            Ok(Plan {
                route_edits: route_edits(msg, popped, drop_last.then(|| routes.len() - 1)),
                new_ruri: new_ruri.clone(),
                record_route,
                in_transport: src.transport,
                in_flow: src.flow,
                via_fix: via_fix(msg, src),
                max_forwards: msg.position(HeaderName::MaxForwards).zip(mf),
                loop_hash,
            })
        };
        if to_tag {
            if popped == 0 && new_ruri.is_none() {
                return Err(reject(404, "Not Here (no route to follow)"));
            }
            let next = if remaining > 0 {
                NameAddr::parse(routes[popped], "Route")
                    .map_err(|e| reject(400, e.reason()))?
                    .uri
            } else {
                Uri::parse(new_ruri.as_deref().unwrap_or(msg.uri_str()))
                    .map_err(|e| reject(400, e.reason()))?
            };
            let target = self.resolve(&next, last_popped.as_ref().map(|n| &n.uri))?;
            // the flow token of our own Record-Route picks the connection back to the peer
            let dest = Destination {
                uri: next.raw.into(),
                node: None,
                transport: target.transport,
                addr: target.addr,
                flow: target.flow,
            };
            return Ok(Decision::Forward {
                plan: plan_base(false)?,
                candidates: vec![dest],
            });
        }
        if remaining > 0 {
            return Err(reject(403, "Forbidden (preloaded Route to another host)"));
        }
        if method == Method::Options && self.is_us(&uri) && uri.user.is_none() {
            return Ok(Decision::LocalOk);
        }
        let mut candidates = Vec::with_capacity(4);
        self.router.select(msg, &mut candidates);
        if candidates.is_empty() {
            let mut r = reject(
                503,
                format!(
                    "Service Unavailable (no destination available in {})",
                    self.router.describe()
                ),
            );
            r.extra.push("Retry-After: 5".into());
            return Err(r);
        }
        let rr = matches!(
            method,
            Method::Invite | Method::Subscribe | Method::Refer | Method::Notify
        );
        Ok(Decision::Forward {
            plan: plan_base(rr)?,
            candidates,
        })
    }

    /// The next hop of a URI: an IP literal, with the transport from the URI, or from the
    /// last Route we popped (the leg it faces), and that Route's flow token.
    fn resolve(&self, uri: &Uri, popped: Option<&Uri>) -> Result<Target, Reject> {
        let transport = match uri.transport() {
            Some(t) => Transport::parse(t).ok_or_else(|| {
                reject(503, format!("Service Unavailable (unknown transport {t})"))
            })?,
            None if uri.scheme == Scheme::Sips => Transport::Tls,
            None => popped
                .and_then(|p| p.transport())
                .and_then(Transport::parse)
                .unwrap_or(Transport::Udp),
        };
        let ip = host_ip(uri.host).ok_or_else(|| {
            reject(
                503,
                format!("Service Unavailable (cannot resolve {})", uri.host),
            )
        })?;
        let port = uri.port.unwrap_or(if transport == Transport::Tls {
            5061
        } else {
            5060
        });
        let flow = popped
            .and_then(|p| p.user)
            .and_then(|u| u.strip_prefix('f'))
            .and_then(|h| u64::from_str_radix(h, 16).ok());
        Ok(Target {
            transport,
            addr: SocketAddr::new(ip, port),
            flow,
        })
    }

    fn loop_hash(&self, msg: &Message) -> u32 {
        let from_tag = msg.from_tag().unwrap_or("");
        let to_tag = msg.to_tag().unwrap_or("");
        let seq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        let route = msg.get(HeaderName::Route).unwrap_or("");
        hash64(
            self.cfg.salt,
            &(msg.uri_str(), from_tag, to_tag, msg.call_id(), seq, route),
        ) as u32
    }

    /// Creates the next branch from the remaining candidates. False when none is left.
    fn start_branch(&self, now: Instant, ctx: &mut Ctx, out: &mut Vec<Transmit>) -> bool {
        while ctx.next_candidate < ctx.candidates.len() {
            let dest = ctx.candidates[ctx.next_candidate].clone();
            ctx.next_candidate += 1;
            let idx = ctx.branches.len() as u32;
            let branch = format!(
                "{BRANCH_PREFIX}{:x}.{:x}.{:x}",
                ctx.plan.loop_hash, ctx.id, idx
            );
            let Some(data) = ctx
                .req
                .as_ref()
                .and_then(|req| self.build_forward(req, &ctx.plan, dest.transport, &branch))
            else {
                tracing::warn!(destination = %dest.uri, transport = %dest.transport, "no listener for the destination's transport");
                ctx.fallback = (
                    503,
                    "Service Unavailable (no listener for transport)".into(),
                );
                continue;
            };
            let target = Target {
                transport: dest.transport,
                addr: dest.addr,
                flow: dest.flow,
            };
            let reliable = dest.transport.is_reliable();
            let txn = if ctx.invite {
                ClientTxn::Invite(ClientInvite::new(
                    now,
                    data.clone(),
                    reliable,
                    self.cfg.timers,
                ))
            } else {
                ClientTxn::NonInvite(ClientNonInvite::new(
                    now,
                    data.clone(),
                    reliable,
                    self.cfg.timers,
                ))
            };
            let final_deadline = ctx.invite.then(|| now + self.cfg.timers.t1 * 360);
            ctx.branches.push(Branch {
                target,
                dest,
                txn,
                request: data,
                provisional: false,
                done: false,
                cancel_pending: false,
                cancel: None,
                bye: None,
                silence_deadline: ctx.fast_failover.then(|| now + self.cfg.branch_timeout),
                final_deadline,
            });
            Stats::inc(&self.stats.fwd_requests);
            self.flush_branch(ctx, idx as usize, out);
            return true;
        }
        false
    }

    /// The branch's copy of the request (§16.6): our Via on top, Record-Route, Route values
    /// naming us removed, Max-Forwards decremented, received/rport on the sender's Via.
    fn build_forward(
        &self,
        req: &Message,
        plan: &Plan,
        out_t: Transport,
        branch: &str,
    ) -> Option<Bytes> {
        let ours = self.listener(out_t)?;
        let mut e = Editor::new(req);
        if let Some(r) = &plan.new_ruri {
            e.start_line(format_args!("{} {} SIP/2.0", req.method_str(), r));
        }
        e.push_top(format_args!(
            "Via: SIP/2.0/{} {};branch={}",
            out_t.via_name(),
            ours,
            branch
        ));
        if plan.record_route {
            let tp = |t: Transport| {
                t.uri_param()
                    .map(|p| format!(";transport={p}"))
                    .unwrap_or_default()
            };
            if out_t != plan.in_transport || plan.in_transport.is_reliable() {
                // RFC 5658 double Record-Route; the inbound one carries the flow token
                let inbound = self.listener(plan.in_transport).unwrap_or(ours);
                let user = plan.in_flow.map(|f| format!("f{f:x}@")).unwrap_or_default();
                e.push_top(format_args!("Record-Route: <sip:{}{};lr>", ours, tp(out_t)));
                e.push_top(format_args!(
                    "Record-Route: <sip:{}{}{};lr>",
                    user,
                    inbound,
                    tp(plan.in_transport)
                ));
            } else {
                e.push_top(format_args!("Record-Route: <sip:{};lr>", ours));
            }
        }
        if let Some((idx, line)) = &plan.via_fix {
            e.replace(*idx, format_args!("{line}"));
        }
        for (idx, rep) in &plan.route_edits {
            match rep {
                None => e.remove(*idx),
                Some(l) => e.replace(*idx, format_args!("{l}")),
            };
        }
        match plan.max_forwards {
            Some((idx, v)) => e.replace(idx, format_args!("Max-Forwards: {}", v.saturating_sub(1))),
            None => e.append(format_args!("Max-Forwards: {}", self.cfg.max_forwards)),
        };
        Some(Bytes::from(e.finish()))
    }

    fn on_ack(
        &self,
        now: Instant,
        src: Source,
        msg: Message,
        key: String,
        out: &mut Vec<Transmit>,
    ) {
        {
            let si = self.shard_of_key(&key);
            let mut g = self.lock(si);
            if let Some(&id) = g.by_key.get(&key) {
                if let Some(ctx) = g.ctxs.get_mut(&id) {
                    if let ServerTxn::Invite(s) = &mut ctx.server {
                        if s.on_ack(now) == RequestAction::Absorbed {
                            return;
                        }
                    }
                }
            }
        }
        let to_tag = msg.to_tag().map(str::to_string);
        if to_tag.as_deref().is_none_or(|t| t.starts_with(TAG_PREFIX)) {
            return; // ACK for a reply we generated, or a stray ACK with no dialog
        }
        // ACK for a 2xx: stateless, along the route set (§16.11)
        let Ok(Decision::Forward { plan, candidates }) = self.decide(&src, &msg) else {
            Stats::inc(&self.stats.dropped);
            return;
        };
        let Some(dest) = candidates.first() else {
            return;
        };
        let in_branch = msg.branch().unwrap_or("");
        let branch = format!("{STATELESS_PREFIX}{:x}", hash64(self.cfg.salt, in_branch));
        if let Some(data) = self.build_forward(&msg, &plan, dest.transport, &branch) {
            Stats::inc(&self.stats.stateless_acks);
            out.push(Transmit {
                target: Target {
                    transport: dest.transport,
                    addr: dest.addr,
                    flow: dest.flow,
                },
                data,
                origin: None,
            });
        }
    }

    fn on_cancel(&self, now: Instant, src: Source, msg: Message, out: &mut Vec<Transmit>) {
        let Ok(inv_key) = server_key_for(&msg, "INVITE") else {
            return;
        };
        let si = self.shard_of_key(&inv_key);
        let mut g = self.lock(si);
        let shard = &mut *g;
        let Some(&id) = shard.by_key.get(&inv_key) else {
            drop(g);
            return self.reply_stateless(
                &src,
                &msg,
                reject(481, "Call/Transaction Does Not Exist"),
                out,
            );
        };
        let Some(ctx) = shard.ctxs.get_mut(&id) else {
            return;
        };
        // §16.10: answer the CANCEL at once, then cancel the pending branches
        Stats::inc(&self.stats.local_replies);
        let tag = self.local_tag(msg.call_id());
        out.push(Transmit {
            target: Target {
                transport: src.transport,
                addr: src.addr,
                flow: src.flow,
            },
            data: local_response(&msg, 200, "OK", &tag, &[]),
            origin: None,
        });
        if !ctx.final_sent && !ctx.cancelled {
            ctx.cancelled = true;
            for i in 0..ctx.branches.len() {
                self.cancel_branch(now, ctx, i, out);
            }
        }
        self.settle(shard, id);
    }

    fn cancel_branch(&self, now: Instant, ctx: &mut Ctx, i: usize, out: &mut Vec<Transmit>) {
        let b = &mut ctx.branches[i];
        if b.done || b.cancel.is_some() || !ctx.invite {
            return;
        }
        if !b.provisional {
            b.cancel_pending = true; // §9.1: wait for a provisional before sending CANCEL
            return;
        }
        let Ok(inv) = Message::parse_raw(b.request.clone()) else {
            return;
        };
        let cancel = make_cancel(&inv);
        b.cancel = Some(ClientNonInvite::new(
            now,
            cancel,
            b.target.transport.is_reliable(),
            self.cfg.timers,
        ));
        b.cancel_pending = false;
        self.flush_branch(ctx, i, out);
    }

    // ----- responses --------------------------------------------------------------------

    fn on_response(&self, now: Instant, msg: Message, out: &mut Vec<Transmit>) {
        Stats::inc(&self.stats.rcv_replies);
        let code = msg.status().unwrap_or(0);
        if let Some(id) = msg
            .branch()
            .and_then(|b| b.strip_prefix(PROBE_PREFIX))
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            if code >= 200 {
                self.router.probe_result(now, id, Some(code));
            }
            return;
        }
        let Some((_, id, idx)) = msg.branch().and_then(parse_branch) else {
            Stats::inc(&self.stats.dropped);
            return;
        };
        let is_invite = msg.cseq().is_ok_and(|c| c.method == "INVITE");
        let si = self.shard_of_id(id);
        let mut g = self.lock(si);
        let shard = &mut *g;
        let Some(ctx) = shard.ctxs.get_mut(&id) else {
            drop(g);
            if is_invite && (200..300).contains(&code) {
                self.forward_response_stateless(&msg, out); // late 2xx retransmission (§16.7 step 5)
            } else {
                Stats::inc(&self.stats.dropped);
            }
            return;
        };
        let idx = idx as usize;
        let Some(b) = ctx.branches.get_mut(idx) else {
            return;
        };
        if msg.cseq().is_ok_and(|c| c.method == "CANCEL") {
            if let Some(c) = &mut b.cancel {
                c.on_response(now, code);
            }
            return;
        }
        let req = b.request.clone();
        if ctx.invite && msg.cseq().is_ok_and(|c| c.method == "BYE") {
            if let Some(t) = &mut b.bye {
                t.on_response(now, code);
            }
            return self.settle(shard, id);
        }
        if ctx.invite && b.done && b.txn.is_terminated() {
            self.on_abandoned_branch_response(now, ctx, idx, code, &msg, out);
            return self.settle(shard, id);
        }
        let action = match &mut b.txn {
            ClientTxn::Invite(t) => t.on_response(now, code, || match Message::parse_raw(req) {
                Ok(inv) => make_ack(&inv, &msg),
                Err(_) => Bytes::new(),
            }),
            ClientTxn::NonInvite(t) => t.on_response(now, code),
        };
        self.flush_branch(ctx, idx, out);
        if action == ResponseAction::Absorb {
            return self.settle(shard, id);
        }
        let b = &mut ctx.branches[idx];
        if !b.provisional {
            // the destination is alive unless it answered with a failover code
            let ok = !self.cfg.failover_codes.contains(&code);
            self.router.on_branch_result(&b.dest, ok);
        }
        match code {
            100..=199 => {
                b.provisional = true;
                if b.cancel_pending {
                    self.cancel_branch(now, ctx, idx, out);
                }
                if code > 100 && !ctx.final_sent {
                    self.send_upstream(now, ctx, code, strip_top_via(&msg), out);
                }
            }
            200..=299 => {
                b.provisional = true;
                b.done = true;
                let first = !ctx.final_sent;
                ctx.final_sent = true;
                if first && ctx.invite && ctx.fast_failover {
                    self.router.on_call_answered(msg.call_id(), &b.dest);
                }
                self.send_upstream(now, ctx, code, strip_top_via(&msg), out);
                if first {
                    for i in 0..ctx.branches.len() {
                        if i != idx && !ctx.branches[i].done {
                            self.cancel_branch(now, ctx, i, out);
                        }
                    }
                }
            }
            _ => {
                b.done = true;
                let rank = |c: u16| if c >= 600 { 0 } else { c / 100 };
                if ctx
                    .best
                    .as_ref()
                    .is_none_or(|(bc, _)| rank(code) < rank(*bc))
                {
                    ctx.best = Some((code, strip_top_via(&msg)));
                }
                self.after_branch_final(now, ctx, code, out);
            }
        }
        self.settle(shard, id);
    }

    /// A response on an INVITE branch the proxy gave up on (silence) or whose final is over.
    /// A 2xx is relayed when nothing final went upstream yet (§16.7 step 5) and then wins; a
    /// 2xx after another 2xx was relayed is an orphan the proxy ends itself (ACK, then BYE),
    /// so the caller never holds two dialogs and the media server frees the channel. A
    /// provisional gets the branch cancelled; a failure gets its hop-by-hop ACK.
    fn on_abandoned_branch_response(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        idx: usize,
        code: u16,
        msg: &Message,
        out: &mut Vec<Transmit>,
    ) {
        match code {
            100..=199 => {
                let b = &mut ctx.branches[idx];
                b.provisional = true;
                if b.cancel.is_none() {
                    b.done = false;
                    self.cancel_branch(now, ctx, idx, out);
                    ctx.branches[idx].done = true;
                }
            }
            200..=299 if !ctx.final_sent => {
                tracing::info!(call_id = ctx.call_id(), destination = %ctx.branches[idx].dest.uri, "late 2xx on an abandoned branch relayed");
                ctx.final_sent = true;
                if ctx.fast_failover {
                    self.router
                        .on_call_answered(msg.call_id(), &ctx.branches[idx].dest);
                }
                self.send_upstream(now, ctx, code, strip_top_via(msg), out);
                for i in 0..ctx.branches.len() {
                    if i != idx {
                        self.cancel_branch(now, ctx, i, out);
                    }
                }
            }
            200..=299 => {
                let b = &mut ctx.branches[idx];
                let Ok(inv) = Message::parse_raw(b.request.clone()) else {
                    return;
                };
                let Some(via_host) = self.listener(b.target.transport) else {
                    return;
                };
                let branch = inv
                    .top_via()
                    .ok()
                    .and_then(|v| v.branch().map(str::to_string))
                    .unwrap_or_default();
                let Some((ack, bye)) = make_orphan_ack_bye(
                    &inv,
                    msg,
                    &via_host.to_string(),
                    b.target.transport.via_name(),
                    &branch,
                ) else {
                    return;
                };
                out.push(Transmit {
                    target: b.target,
                    data: ack,
                    origin: None,
                });
                if b.bye.is_none() {
                    tracing::info!(call_id = msg.call_id(), destination = %b.dest.uri, "orphaned 2xx: ACK and BYE sent by the proxy");
                    b.bye = Some(ClientNonInvite::new(
                        now,
                        bye,
                        b.target.transport.is_reliable(),
                        self.cfg.timers,
                    ));
                    Stats::inc(&self.stats.orphans_ended);
                }
                self.flush_branch(ctx, idx, out);
            }
            _ => {
                let b = &ctx.branches[idx];
                if let Ok(inv) = Message::parse_raw(b.request.clone()) {
                    out.push(Transmit {
                        target: b.target,
                        data: make_ack(&inv, msg),
                        origin: None,
                    });
                }
            }
        }
    }

    /// A branch ended without a response we relay yet: fail over or finish.
    fn branch_failed(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        i: usize,
        code: u16,
        reason: &'static str,
        out: &mut Vec<Transmit>,
    ) {
        let b = &mut ctx.branches[i];
        b.done = true;
        b.txn.terminate();
        if ctx.best.is_none() {
            ctx.fallback = (code, reason.into());
        }
        let dest = ctx.branches[i].dest.clone();
        self.router.on_branch_result(&dest, false);
        self.after_branch_final(now, ctx, code, out);
    }

    fn after_branch_final(&self, now: Instant, ctx: &mut Ctx, code: u16, out: &mut Vec<Transmit>) {
        let failover_code = self.cfg.failover_codes.contains(&code);
        if failover_code
            && ctx.fast_failover
            && !ctx.final_sent
            && !ctx.cancelled
            && ctx.next_candidate >= ctx.candidates.len()
            && ctx.all_branches_done()
        {
            // every candidate failed: say so, naming the set, instead of relaying one failure
            ctx.best = None;
            ctx.fallback = (
                503,
                format!(
                    "Service Unavailable (every destination of {} failed)",
                    self.router.describe()
                )
                .into(),
            );
        }
        if !ctx.final_sent
            && !ctx.cancelled
            && self.cfg.failover_codes.contains(&code)
            && ctx.next_candidate < ctx.candidates.len()
        {
            Stats::inc(&self.stats.failovers);
            tracing::info!(
                call_id = ctx.call_id(),
                code,
                "failover to the next destination"
            );
            ctx.best = None;
            if self.start_branch(now, ctx, out) {
                return;
            }
        }
        self.finalize(now, ctx, out);
    }

    /// Sends the best final response once every branch is done (§16.7 step 6).
    fn finalize(&self, now: Instant, ctx: &mut Ctx, out: &mut Vec<Transmit>) {
        if ctx.final_sent || !ctx.all_branches_done() {
            return;
        }
        ctx.final_sent = true;
        let (code, data) = match ctx.best.take() {
            Some((503, _)) => (
                500,
                self.local_reply(ctx, 500, "Server Internal Error (503 from downstream)"),
            ),
            Some(best) => best,
            None if ctx.cancelled => (487, self.local_reply(ctx, 487, "Request Terminated")),
            None => {
                let (c, r) = ctx.fallback.clone();
                let data = self.local_reply(ctx, c, &r);
                (c, data)
            }
        };
        self.send_upstream(now, ctx, code, data, out);
    }

    fn local_reply(&self, ctx: &Ctx, code: u16, reason: &str) -> Bytes {
        Stats::inc(&self.stats.local_replies);
        let extra = if code == 503 {
            vec!["Retry-After: 5".to_string()]
        } else {
            vec![]
        };
        match &ctx.req {
            Some(req) => local_response(req, code, reason, &self.local_tag(req.call_id()), &extra),
            None => Bytes::new(),
        }
    }

    fn send_upstream(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        code: u16,
        data: Bytes,
        out: &mut Vec<Transmit>,
    ) {
        Stats::inc(&self.stats.fwd_replies);
        if ctx.server.send_response(now, code, data.clone()) {
            self.flush_server(ctx, out);
        } else if (200..300).contains(&code) && ctx.invite {
            out.push(Transmit {
                target: ctx.resp_target,
                data,
                origin: None,
            });
        }
    }

    fn forward_response_stateless(&self, msg: &Message, out: &mut Vec<Transmit>) {
        let Some(next) = msg.vias().nth(1).and_then(Result::ok) else {
            return;
        };
        let Some(target) = via_target(&next) else {
            return;
        };
        Stats::inc(&self.stats.fwd_replies);
        out.push(Transmit {
            target,
            data: strip_top_via(msg),
            origin: None,
        });
    }

    // ----- timers and bookkeeping -------------------------------------------------------

    fn ctx_timeout(&self, now: Instant, ctx: &mut Ctx, out: &mut Vec<Transmit>) {
        if let ServerTxn::Invite(s) = &mut ctx.server {
            if s.on_timeout(now) == Some(TxnEvent::AckTimeout) {
                tracing::debug!(call_id = ctx.call_id(), "no ACK for the final response");
            }
        } else if let ServerTxn::NonInvite(s) = &mut ctx.server {
            s.on_timeout(now);
        }
        self.flush_server(ctx, out);
        for i in 0..ctx.branches.len() {
            let b = &mut ctx.branches[i];
            let ev = b.txn.on_timeout(now);
            for t in [&mut b.cancel, &mut b.bye].into_iter().flatten() {
                t.on_timeout(now);
            }
            self.flush_branch(ctx, i, out);
            let b = &mut ctx.branches[i];
            if b.done {
                continue;
            }
            if ev == Some(TxnEvent::Timeout) {
                Stats::inc(&self.stats.branch_timeouts);
                self.branch_failed(now, ctx, i, 408, "Request Timeout", out);
            } else if !b.provisional && b.silence_deadline.is_some_and(|d| d <= now) {
                Stats::inc(&self.stats.branch_timeouts);
                tracing::warn!(destination = %b.dest.uri, "destination did not answer in time");
                self.branch_failed(now, ctx, i, 408, "Request Timeout", out);
            } else if b.final_deadline.is_some_and(|d| d <= now) {
                // Timer C: cancel a branch that rings forever
                Stats::inc(&self.stats.branch_timeouts);
                self.cancel_branch(now, ctx, i, out);
                let b = &mut ctx.branches[i];
                b.done = true;
                if ctx.best.is_none() {
                    ctx.fallback = (408, "Request Timeout".into());
                }
                self.finalize(now, ctx, out);
            }
        }
    }

    /// Re-arms the context's timer, or drops it when all its transactions are over.
    fn settle(&self, shard: &mut Shard, id: u64) {
        let Some(ctx) = shard.ctxs.get_mut(&id) else {
            return;
        };
        if ctx.final_sent && ctx.req.is_some() && ctx.all_branches_done() {
            ctx.req = None;
            ctx.candidates = Vec::new();
            ctx.plan.route_edits = Vec::new();
        }
        if ctx.is_finished() {
            let ctx = shard.ctxs.remove(&id);
            if let Some(ctx) = ctx {
                if shard.by_key.get(&ctx.key) == Some(&id) {
                    shard.by_key.remove(&ctx.key);
                }
            }
            return;
        }
        if let Some(t) = ctx.next_timeout() {
            if ctx.armed.is_none_or(|a| t < a) {
                ctx.armed = Some(t);
                shard.timers.push(Reverse((t, id)));
            }
        }
    }

    fn flush_server(&self, ctx: &mut Ctx, out: &mut Vec<Transmit>) {
        while let Some(data) = ctx.server.poll_transmit() {
            out.push(Transmit {
                target: ctx.resp_target,
                data,
                origin: None,
            });
        }
    }

    fn flush_branch(&self, ctx: &mut Ctx, i: usize, out: &mut Vec<Transmit>) {
        let b = &mut ctx.branches[i];
        let origin = Some(Origin {
            ctx: ctx.id,
            branch: i as u32,
        });
        while let Some(data) = b.txn.poll_transmit() {
            if !data.is_empty() {
                out.push(Transmit {
                    target: b.target,
                    data,
                    origin,
                });
            }
        }
        for t in [&mut b.cancel, &mut b.bye].into_iter().flatten() {
            while let Some(data) = t.poll_transmit() {
                out.push(Transmit {
                    target: b.target,
                    data,
                    origin: None,
                });
            }
        }
    }
}

/// Where a response goes by a Via value (§18.2.2 with RFC 3581): received and rport win.
fn via_target(v: &Via) -> Option<Target> {
    let transport = Transport::parse(v.transport)?;
    let ip = v.received().and_then(host_ip).or_else(|| host_ip(v.host))?;
    let port = v.rport().flatten().or(v.port).unwrap_or(5060);
    Some(Target {
        transport,
        addr: SocketAddr::new(ip, port),
        flow: None,
    })
}

/// The replacement for the first Via line when the sender's Via needs `received`/`rport`.
fn via_fix(msg: &Message, src: &Source) -> Option<(usize, String)> {
    let idx = msg.position(HeaderName::Via)?;
    let h = msg.headers()[idx];
    let mut values = split_commas(msg.value(&h));
    let top = values.next()?;
    let via = Via::parse(top).ok()?;
    let rport_wanted = via.rport() == Some(None);
    let received_needed = host_ip(via.host) != Some(src.addr.ip());
    if !rport_wanted && !received_needed {
        return None;
    }
    let mut s = format!("Via: SIP/2.0/{} {}", via.transport, via.sent_by);
    for (n, v) in via.params.iter() {
        if n.eq_ignore_ascii_case("received") {
            continue;
        }
        if n.eq_ignore_ascii_case("rport") {
            s.push_str(&format!(";rport={}", src.addr.port()));
            continue;
        }
        s.push(';');
        s.push_str(n);
        if let Some(v) = v {
            s.push('=');
            s.push_str(v);
        }
    }
    s.push_str(&format!(";received={}", src.addr.ip()));
    for rest in values {
        s.push_str(", ");
        s.push_str(rest);
    }
    Some((idx, s))
}

/// Header edits that drop the first `popped` Route values and, for the strict-router
/// fix-up, the value at index `drop`.
fn route_edits(msg: &Message, popped: usize, drop: Option<usize>) -> Vec<(usize, Option<String>)> {
    let mut edits = Vec::new();
    if popped == 0 && drop.is_none() {
        return edits;
    }
    let mut n = 0;
    for (idx, h) in msg.headers().iter().enumerate() {
        if h.name != HeaderName::Route {
            continue;
        }
        let vals: Vec<&str> = split_commas(msg.value(h)).collect();
        let keep: Vec<&str> = vals
            .iter()
            .enumerate()
            .filter(|(j, _)| !(n + j < popped || drop == Some(n + j)))
            .map(|(_, v)| *v)
            .collect();
        n += vals.len();
        if keep.len() == vals.len() {
            continue;
        }
        edits.push((
            idx,
            if keep.is_empty() {
                None
            } else {
                Some(format!("Route: {}", keep.join(", ")))
            },
        ));
    }
    edits
}

#[cfg(test)]
mod tests;
