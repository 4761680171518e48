//! The request and response pipeline (RFC 3261 §16).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    local_response, local_response_via, make_ack, make_cancel, make_orphan_ack_bye,
    salvage_response, strip_top_via,
};
use crate::config::ProxyConfig;
use crate::ctx::{Branch, ClientTxn, Ctx, Plan, ServerTxn};
use crate::dialog::{ByeOut, Dialog, Dialogs, Leg};
use crate::numbers::routing::{NumberDecision, Sender};
use crate::pike::Pike;
use crate::ratelog::{Kind, LogLimit};
use crate::registrar::{CallAuth, Fork, KeepAlive, Registrar, RegistrarMode, Reply};
use crate::router::{Probe, Router};
use crate::stats::Stats;
use crate::types::{Destination, FlowId, Origin, Source, Target, Transmit, Transport};

/// Our branch parameters start with this after the magic cookie.
const BRANCH_PREFIX: &str = "z9hG4bKsb";
/// Stateless (2xx ACK) branches.
const STATELESS_PREFIX: &str = "z9hG4bKsbA";
/// Health probes (OPTIONS/INFO) the dispatcher sends.
const PROBE_PREFIX: &str = "z9hG4bKsbP";
/// BYEs the proxy sends itself to end a dialog.
const DIALOG_BYE_PREFIX: &str = "z9hG4bKsbB";
/// NAT keepalives (OPTIONS) to registered contacts.
const KEEPALIVE_PREFIX: &str = "z9hG4bKsbK";

/// Who a response answers, from its branch: the transaction's owner, or why it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A transaction the proxy started (its branch's MAC checked).
    Ours(Origin),
    /// A BYE the proxy sent to end a dialog.
    DialogBye,
    /// Carries one of our prefixes but not our MAC.
    Forged,
    /// Not a branch of ours at all.
    Foreign,
}
/// How long a locally answered request's reply is kept to answer its retransmissions
/// (Timer J, 64*T1).
const ANSWERED_TTL: std::time::Duration = std::time::Duration::from_secs(32);
/// To-tags of responses the proxy generates itself.
const TAG_PREFIX: &str = "sbx7";

#[derive(Default)]
struct Shard {
    ctxs: HashMap<u64, Ctx>,
    by_key: HashMap<String, u64>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Replies the proxy itself gave (REGISTER, challenges), by server transaction key.
    answered: HashMap<String, (Instant, Bytes)>,
    next_clean: Option<Instant>,
}

/// A refusal: status, reason and extra header lines.
struct Reject {
    code: u16,
    reason: String,
    extra: Vec<String>,
    /// Hold the reply back this long (a source guessing passwords).
    delay: Option<std::time::Duration>,
    /// Send nothing (a username banned from this source).
    drop: bool,
    /// Ban the source (it guessed across usernames).
    ban_source: bool,
    /// The request authenticated (the source leaves the tight budget).
    authenticated: bool,
}

fn reject(code: u16, reason: impl Into<String>) -> Reject {
    Reject {
        code,
        reason: reason.into(),
        extra: Vec::new(),
        delay: None,
        drop: false,
        ban_source: false,
        authenticated: false,
    }
}

impl From<Reply> for Reject {
    fn from(r: Reply) -> Reject {
        Reject {
            code: r.code,
            reason: r.reason,
            extra: r.extra,
            delay: r.delay,
            drop: r.drop,
            ban_source: r.ban_source,
            authenticated: r.authenticated,
        }
    }
}

/// Where the registrar sends an initial request.
enum UserRoute {
    /// To the registered contacts of the callee.
    Location {
        candidates: Vec<Destination>,
        parallel: bool,
    },
    /// To the router (media servers).
    Dispatch,
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
    registrar: Option<Arc<Registrar>>,
    dialogs: Option<Arc<Dialogs>>,
    cdrs: Option<Arc<crate::cdr::Cdrs>>,
    /// Replies held back, with the time to send them.
    delayed: Mutex<Vec<(Instant, Transmit)>>,
    /// Limits log lines about what peers send.
    log_limit: LogLimit,
    /// Flood and scan defence (per-source budgets and bans).
    pike: Option<Arc<Pike>>,
    /// Bytes held by the shards' reply caches (`answered`), bounded by the config.
    answered_bytes: AtomicUsize,
    /// Live transactions per source (sources the flood defence counts).
    per_source: Box<[Mutex<HashMap<IpAddr, u32>>]>,
    /// Names resolved (RFC 3263), consulted before a lookup is asked for.
    dns: Arc<crate::dns::Cache>,
    /// Number routing (aliases, dialplan, carriers by prefix), when configured.
    numbers: Option<Arc<crate::numbers::routing::Numbers>>,
    /// Commands in flight and the contexts parked on them. Lock order: a shard, then this.
    waits: Mutex<crate::command::Waits>,
    /// Set when commands wait in the outbox: the driver's check per message is one load.
    has_commands: std::sync::atomic::AtomicBool,
    /// When the driver's timer thread means to wake next (nanoseconds after `epoch`), and
    /// whether a timer was armed before that since (the driver then wakes it early).
    wake_at: AtomicU64,
    timer_earlier: std::sync::atomic::AtomicBool,
    epoch: std::sync::OnceLock<Instant>,
    /// The media policy, when a relay (rtpengine) is configured.
    media: Option<crate::media::MediaConfig>,
    /// Calls whose media is relayed (their end deletes the session).
    media_calls: media::MediaCalls,
    /// A browser-to-phone call without a relay was logged.
    media_warned: std::sync::atomic::AtomicBool,
    /// The cluster's nodes, when this process is one of several sharing state.
    peers: Option<Arc<crate::cluster::Peers>>,
}

fn hash64<T: Hash + ?Sized>(salt: u64, v: &T) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    salt.hash(&mut h);
    v.hash(&mut h);
    h.finish()
}

/// Parses `z9hG4bKsb<loop>.<id>.<idx>.<mac>` into (loop hash, context id, branch index, MAC);
/// the MAC is checked by [`Proxy::our_branch`].
fn parse_branch(b: &str) -> Option<(u32, u64, u32, u64)> {
    let rest = b.strip_prefix(BRANCH_PREFIX)?;
    let mut it = rest.split('.');
    let l = u32::from_str_radix(it.next()?, 16).ok()?;
    let id = u64::from_str_radix(it.next()?, 16).ok()?;
    let idx = u32::from_str_radix(it.next()?, 16).ok()?;
    let mac = crate::mac::parse_tag(it.next()?)?;
    it.next().is_none().then_some((l, id, idx, mac))
}

/// Parses `<prefix><id>.<mac>` (probes, keepalives).
fn parse_id_branch(b: &str, prefix: &str) -> Option<(u64, u64)> {
    let (id, mac) = b.strip_prefix(prefix)?.split_once('.')?;
    Some((
        u64::from_str_radix(id, 16).ok()?,
        crate::mac::parse_tag(mac)?,
    ))
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
            registrar: None,
            dialogs: None,
            cdrs: None,
            delayed: Mutex::new(Vec::new()),
            log_limit: LogLimit::default(),
            pike: None,
            answered_bytes: AtomicUsize::new(0),
            per_source: (0..16).map(|_| Mutex::new(HashMap::new())).collect(),
            dns: Arc::new(crate::dns::Cache::new(Default::default())),
            waits: Mutex::new(Default::default()),
            has_commands: Default::default(),
            numbers: None,
            wake_at: AtomicU64::new(u64::MAX),
            timer_earlier: Default::default(),
            epoch: std::sync::OnceLock::new(),
            media: None,
            media_calls: Default::default(),
            media_warned: Default::default(),
            peers: None,
        }
    }

    /// Uses `cache` (with its `[dns]` settings) for names.
    pub fn with_dns(mut self, cache: Arc<crate::dns::Cache>) -> Proxy {
        self.dns = cache;
        self
    }

    /// Adds number routing.
    pub fn with_numbers(mut self, n: Arc<crate::numbers::routing::Numbers>) -> Proxy {
        self.numbers = Some(n);
        self
    }

    /// Number routing, when configured.
    pub fn numbers(&self) -> Option<&Arc<crate::numbers::routing::Numbers>> {
        self.numbers.as_ref()
    }

    /// The name cache.
    pub fn dns(&self) -> &Arc<crate::dns::Cache> {
        &self.dns
    }

    /// Adds the flood and scan defence.
    pub fn with_pike(mut self, p: Arc<Pike>) -> Proxy {
        self.pike = Some(p);
        self
    }

    /// The flood and scan defence, when on.
    pub fn pike(&self) -> Option<&Arc<Pike>> {
        self.pike.as_ref()
    }

    /// Counts a new transaction of `key`'s source; false when it has its maximum.
    fn count_source(&self, key: IpAddr) -> bool {
        let max = self.cfg.max_transactions_per_source;
        let i = (hash64(0, &key) % self.per_source.len() as u64) as usize;
        let mut g = self.per_source[i].lock().unwrap_or_else(|p| p.into_inner());
        let n = g.entry(key).or_insert(0);
        if max > 0 && *n as usize >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// A transaction of `key`'s source is over.
    pub(super) fn uncount_source(&self, key: IpAddr) {
        let i = (hash64(0, &key) % self.per_source.len() as u64) as usize;
        let mut g = self.per_source[i].lock().unwrap_or_else(|p| p.into_inner());
        if let std::collections::hash_map::Entry::Occupied(mut e) = g.entry(key) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Bytes held by the reply cache.
    pub fn reply_cache_bytes(&self) -> usize {
        self.answered_bytes.load(Ordering::Relaxed)
    }

    /// Adds the registrar and location service.
    pub fn with_registrar(mut self, r: Arc<Registrar>) -> Proxy {
        self.registrar = Some(r);
        self
    }

    /// Makes this process a node of a cluster: the other nodes' addresses count as ours in
    /// Route headers and as trusted senders, and flow tokens name this node.
    pub fn with_peers(mut self, p: Arc<crate::cluster::Peers>) -> Proxy {
        self.peers = Some(p);
        self
    }

    /// Adds dialog tracking.
    pub fn with_dialogs(mut self, d: Arc<Dialogs>) -> Proxy {
        self.dialogs = Some(d);
        self
    }

    /// Adds accounting (needs dialog tracking for answered calls).
    pub fn with_cdrs(mut self, c: Arc<crate::cdr::Cdrs>) -> Proxy {
        self.cdrs = Some(c);
        self
    }

    /// The accounting queue, when on.
    pub fn cdrs(&self) -> Option<&Arc<crate::cdr::Cdrs>> {
        self.cdrs.as_ref()
    }

    /// Accounts an answered call whose dialog just ended.
    pub(crate) fn account_ended(&self, now: Instant, d: &Dialog, how: crate::dialog::Ending) {
        let (Some(c), Some(dl)) = (&self.cdrs, &self.dialogs) else {
            return;
        };
        c.push(crate::cdr::CallRecord::answered(
            d,
            dl.unix(now),
            how.as_str(),
        ));
    }

    /// A missed-call record for a call the proxy refused itself (404, 480, 403, 503, ...).
    /// Digest challenges (401/407) are part of a call's setup, not its end, and are not
    /// recorded; a retransmitted INVITE is recorded once.
    fn account_refused(&self, now: Instant, src: &Source, msg: &Message, r: &Reject) {
        let Some(c) = &self.cdrs else {
            return;
        };
        if msg.method() != Some(sip_wire::Method::Invite)
            || msg.to_tag().is_some()
            || matches!(r.code, 401 | 407)
        {
            return;
        }
        let at = self.dialogs.as_ref().map_or(0, |d| d.unix(now));
        c.push_once(
            now,
            crate::cdr::CallRecord::failed(
                msg.call_id(),
                msg.from_tag().unwrap_or(""),
                "",
                msg.get(sip_wire::HeaderName::From).unwrap_or(""),
                msg.get(sip_wire::HeaderName::To).unwrap_or(""),
                msg.uri_str(),
                Some(src.addr),
                None,
                at,
                r.code,
                &r.reason,
            ),
        );
    }

    /// The dialog table, when tracking is on.
    pub fn dialogs(&self) -> Option<&Arc<Dialogs>> {
        self.dialogs.as_ref()
    }

    /// Ends dialog `id` from the middle: BYE to both sides (sent on the next timer tick).
    pub fn end_dialog(&self, now: Instant, id: u64) -> Option<Dialog> {
        let d = self.dialogs.as_ref()?;
        let (dlg, byes) = d.end(id, &|t| self.via_for(t))?;
        tracing::info!(call_id = dlg.call_id(), id, "dialog ended by management");
        self.account_ended(now, &dlg, crate::dialog::Ending::Management);
        self.router.on_call_ended(dlg.call_id());
        self.media_delete(dlg.call_id());
        let mut q = self.delayed.lock().unwrap_or_else(|p| p.into_inner());
        for b in byes {
            q.push((now, self.bye_transmit(b)));
        }
        Some(dlg)
    }

    /// `SIP/2.0/UDP host:port` of our listener for a transport.
    fn via_for(&self, t: Transport) -> String {
        let l = self
            .listener(t)
            .or_else(|| self.cfg.listeners.first().map(|l| l.advertise));
        match l {
            Some(a) => format!("SIP/2.0/{} {a}", t.via_name()),
            None => format!("SIP/2.0/{} 0.0.0.0", t.via_name()),
        }
    }

    fn bye_transmit(&self, b: ByeOut) -> Transmit {
        Stats::inc(&self.stats.local_requests);
        Transmit {
            target: b.target,
            data: Bytes::from(b.data),
            origin: None,
            tls_name: None,
        }
    }

    /// True when connection `flow` must stay open past its idle timeout: a registration
    /// made over it still lasts (the user is reached over it).
    pub fn holds_flow(&self, flow: crate::types::FlowId, now: Instant) -> bool {
        self.registrar
            .as_ref()
            .is_some_and(|r| r.holds_flow(flow, now))
    }

    /// Connection `flow` is closed.
    pub fn flow_closed(&self, flow: crate::types::FlowId) {
        if let Some(r) = &self.registrar {
            r.flow_closed(flow);
        }
    }

    /// The registrar, when configured.
    pub fn registrar(&self) -> Option<&Arc<Registrar>> {
        self.registrar.as_ref()
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

    /// The branch of a relayed request: loop hash, context, branch index, and their MAC.
    pub(super) fn branch_for(&self, loop_hash: u32, id: u64, idx: u32) -> String {
        let mac = self.cfg.keys.tag_ids(
            crate::mac::Purpose::Branch,
            &[id, idx as u64, loop_hash as u64],
        );
        format!("{BRANCH_PREFIX}{loop_hash:x}.{id:x}.{idx:x}.{mac:016x}")
    }

    /// The context and branch index a response's branch names, when the proxy issued it.
    fn our_branch(&self, b: &str) -> Option<(u64, u32)> {
        let (l, id, idx, mac) = parse_branch(b)?;
        (mac == self
            .cfg
            .keys
            .tag_ids(crate::mac::Purpose::Branch, &[id, idx as u64, l as u64]))
        .then_some((id, idx))
    }

    /// The id a probe's or keepalive's branch names, when the proxy issued it.
    fn our_id_branch(&self, b: &str, prefix: &str, purpose: crate::mac::Purpose) -> Option<u64> {
        let (id, mac) = parse_id_branch(b, prefix)?;
        (mac == self.cfg.keys.tag_ids(purpose, &[id])).then_some(id)
    }

    /// A connection's flow token ([`crate::mac::flow_token`]).
    pub fn flow_token(&self, flow: FlowId) -> String {
        crate::mac::flow_token(&self.cfg.keys, self.node(), flow)
    }

    /// This process's node id in a cluster (0: none).
    fn node(&self) -> u16 {
        self.peers.as_ref().map_or(0, |p| p.node())
    }

    /// The flow a token names, when the proxy issued it.
    pub(super) fn flow_of_token(&self, token: &str) -> Option<FlowId> {
        let (id, mac) = token.strip_prefix('f')?.split_once('-')?;
        let id = u64::from_str_radix(id, 16).ok()?;
        (crate::mac::parse_tag(mac)? == crate::mac::flow_mac(&self.cfg.keys, self.node(), id))
            .then_some(id)
    }

    /// The signature of a Record-Route URI of ours with user part `user`, binding it to the
    /// dialog (Call-ID and a tag of the request that created it).
    pub(super) fn rr_signature(&self, call_id: &str, tag: &str, user: &str) -> u64 {
        self.cfg.keys.tag(
            crate::mac::Purpose::RecordRoute,
            &[call_id.as_bytes(), tag.as_bytes(), user.as_bytes()],
        )
    }

    /// True when `uri` (a Route value naming us) carries our signature for this dialog, in
    /// either direction (the caller's tag is the From tag one way, the To tag the other).
    pub(super) fn rr_signed(&self, uri: &Uri, call_id: &str, from_tag: &str, to_tag: &str) -> bool {
        let Some(sg) = uri.params.value("sg").and_then(crate::mac::parse_tag) else {
            return false;
        };
        let user = uri.user.unwrap_or("");
        sg == self.rr_signature(call_id, from_tag, user)
            || sg == self.rr_signature(call_id, to_tag, user)
    }

    /// True when host/port name this proxy (a listener address or an alias) or, in a
    /// cluster, another node.
    fn is_us_host(&self, host: &str, port: Option<u16>) -> bool {
        self.names_host(host, port, true)
    }

    /// `peers`: another node's address counts too.
    fn names_host(&self, host: &str, port: Option<u16>, peers: bool) -> bool {
        if let Some(ip) = host_ip(host) {
            let port = port.unwrap_or(5060);
            return self
                .cfg
                .listeners
                .iter()
                .map(|l| l.advertise)
                .chain(self.cfg.bound.iter().copied())
                .any(|a| a.ip() == ip && a.port() == port)
                || (peers && self.peers.as_ref().is_some_and(|p| p.names(ip, port)));
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

    /// True when `uri` names this process itself (not another node of its cluster).
    fn is_self(&self, uri: &Uri) -> bool {
        matches!(uri.scheme, Scheme::Sip | Scheme::Sips)
            && self.names_host(uri.host, uri.port, false)
    }

    // ----- entry points -----------------------------------------------------------------

    /// Handles one received message (a datagram, or one framed stream message).
    pub fn on_message(&self, now: Instant, src: Source, data: Bytes, out: &mut Vec<Transmit>) {
        if self.pike.as_ref().is_some_and(|p| {
            p.is_banned(now, src.addr.ip()) && !self.router.is_destination_ip(src.addr.ip())
        }) {
            Stats::inc(&self.stats.banned_dropped);
            return;
        }
        if data.len() > self.cfg.max_message_size {
            return self.on_bad_message(now, src, &data, ParseError::TooLarge(data.len()), out);
        }
        match Message::parse(data.clone()) {
            Ok(msg) if msg.is_request() => self.on_request(now, src, msg, out),
            Ok(msg) => self.on_response(now, src, msg, out),
            Err(e) => self.on_bad_message(now, src, &data, e, out),
        }
    }

    /// Fires every expired timer; gives the earliest transaction timer still armed (what
    /// [`Proxy::next_timeout`] would say, found on the way without locking the shards again).
    pub fn on_timers(&self, now: Instant, out: &mut Vec<Transmit>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut probes = Vec::new();
        self.router.due_probes(now, &mut probes);
        for p in probes {
            self.send_probe(now, p, out);
        }
        if let Some(d) = &self.dialogs {
            let mut ended = Vec::new();
            d.sweep(now, &|t| self.via_for(t), &mut ended);
            for (dlg, byes) in ended {
                if !d.owns(dlg.id) {
                    // another node's, whose removal never came: only its count goes
                    tracing::debug!(
                        call_id = dlg.call_id(),
                        id = dlg.id,
                        "another node's dialog dropped past its lifetime"
                    );
                    self.router.on_call_ended(dlg.call_id());
                    continue;
                }
                tracing::info!(
                    call_id = dlg.call_id(),
                    id = dlg.id,
                    state = dlg.state.as_str(),
                    "dialog lifetime over: BYE to both sides"
                );
                Stats::inc(&self.stats.dialogs_timed_out);
                if dlg.state == crate::dialog::DialogState::Confirmed {
                    self.account_ended(now, &dlg, crate::dialog::Ending::Lifetime);
                }
                self.router.on_call_ended(dlg.call_id());
                self.media_delete(dlg.call_id());
                for b in byes {
                    out.push(self.bye_transmit(b));
                }
            }
        }
        if let Some(p) = &self.pike {
            p.tick(now);
        }
        {
            let mut w = self.waits.lock().unwrap_or_else(|p| p.into_inner());
            if !w.by_id.is_empty() {
                // an ACK held for the relay goes on as it was
                for t in w.expire(now) {
                    Stats::inc(&self.stats.media_failures);
                    out.push(t);
                }
            }
        }
        if let Some(reg) = &self.registrar {
            let mut pings = Vec::new();
            reg.tick(now, &mut pings);
            for k in pings {
                self.send_keepalive(k, out);
            }
        }
        {
            let mut d = self.delayed.lock().unwrap_or_else(|p| p.into_inner());
            if !d.is_empty() {
                let mut i = 0;
                while i < d.len() {
                    if d[i].0 <= now {
                        out.push(d.swap_remove(i).1);
                    } else {
                        i += 1;
                    }
                }
            }
        }
        for i in 0..self.shards.len() {
            let mut g = self.lock(i);
            let shard = &mut *g;
            if shard.next_clean.is_none_or(|t| t <= now) {
                shard.next_clean = Some(now + std::time::Duration::from_secs(1));
                let mut freed = 0;
                shard.answered.retain(|k, (t, b)| {
                    let keep = *t > now;
                    if !keep {
                        freed += k.len() + b.len();
                    }
                    keep
                });
                self.answered_bytes.fetch_sub(freed, Ordering::Relaxed);
                if shard.answered.capacity() > 4 * shard.answered.len() + 64 {
                    shard.answered.shrink_to_fit(); // a burst of registrations is over
                }
                // after a burst of calls, give back the room of the contexts
                if shard.ctxs.capacity() > 4 * shard.ctxs.len() + 64 {
                    shard.ctxs.shrink_to_fit();
                    shard.by_key.shrink_to_fit();
                    shard.timers.shrink_to_fit();
                }
            }
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
            if let Some(&Reverse((t, _))) = shard.timers.peek() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    /// The driver's timer thread sleeps until `at` (or until woken): a timer armed before
    /// then sets the flag [`Proxy::take_timer_earlier`] reads.
    pub fn set_wake(&self, now: Instant, at: Instant) {
        let epoch = *self.epoch.get_or_init(|| now);
        let n = at.saturating_duration_since(epoch).as_nanos() as u64;
        self.wake_at.store(n, Ordering::Relaxed);
        self.timer_earlier.store(false, Ordering::Relaxed);
    }

    /// True (once) when a timer was armed before the timer thread's planned wake: the driver
    /// wakes it. One load when nothing changed.
    pub fn take_timer_earlier(&self) -> bool {
        self.timer_earlier.load(Ordering::Relaxed)
            && self.timer_earlier.swap(false, Ordering::Relaxed)
    }

    /// A context timer was armed for `t`.
    fn note_timer(&self, t: Instant) {
        let Some(epoch) = self.epoch.get() else {
            return;
        };
        let n = t.saturating_duration_since(*epoch).as_nanos() as u64;
        if n < self.wake_at.load(Ordering::Relaxed) && !self.timer_earlier.load(Ordering::Relaxed) {
            self.timer_earlier.store(true, Ordering::Relaxed);
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
        let (id, branch) = match origin {
            Origin::Probe(id) => return self.router.probe_result(now, id, None),
            Origin::KeepAlive(id) => {
                if let Some(reg) = &self.registrar {
                    reg.on_ping_failed(id);
                }
                return;
            }
            Origin::Relay { ctx, branch } => (ctx, branch as usize),
        };
        let s = self.shard_of_id(id);
        let mut g = self.lock(s);
        let shard = &mut *g;
        let Some(ctx) = shard.ctxs.get_mut(&id) else {
            return;
        };
        let Some(b) = ctx.branches.get_mut(branch) else {
            return;
        };
        if b.txn.on_transport_error() == Some(TxnEvent::Timeout) && !b.done {
            tracing::warn!(destination = %b.dest.uri, "destination unreachable");
            self.branch_failed(
                now,
                ctx,
                branch,
                503,
                "Service Unavailable (destination unreachable)",
                out,
            );
        }
        self.settle(shard, id);
    }

    /// Who owns the transaction a response's branch names.
    fn owner_of(&self, branch: &str) -> Owner {
        use crate::mac::Purpose;
        let checked = |prefix, purpose, f: fn(u64) -> Origin| match self
            .our_id_branch(branch, prefix, purpose)
        {
            Some(id) => Owner::Ours(f(id)),
            None => Owner::Forged,
        };
        if branch.starts_with(PROBE_PREFIX) {
            checked(PROBE_PREFIX, Purpose::Probe, Origin::Probe)
        } else if branch.starts_with(KEEPALIVE_PREFIX) {
            checked(KEEPALIVE_PREFIX, Purpose::KeepAlive, Origin::KeepAlive)
        } else if branch.starts_with(DIALOG_BYE_PREFIX) {
            Owner::DialogBye
        } else if let Some((ctx, idx)) = self.our_branch(branch) {
            Owner::Ours(Origin::Relay { ctx, branch: idx })
        } else if branch.starts_with(BRANCH_PREFIX) {
            Owner::Forged
        } else {
            Owner::Foreign
        }
    }

    /// Writes and queues one health probe.
    fn send_probe(&self, now: Instant, p: Probe, out: &mut Vec<Transmit>) {
        let Some(local) = self.listener(p.target.transport) else {
            return self.router.probe_result(now, p.id, None);
        };
        let data = format!(
            "{m} {uri} SIP/2.0\r\nVia: SIP/2.0/{t} {local};branch={PROBE_PREFIX}{id:x}.{mac:016x}\r\nMax-Forwards: {mf}\r\nFrom: <{from}>;tag=sbp{id:x}\r\nTo: <{uri}>\r\nCall-ID: sbp{id:x}.{salt:x}@{ip}\r\nCSeq: 1 {m}\r\nUser-Agent: {SERVER}\r\nContent-Length: 0\r\n\r\n",
            m = p.method,
            uri = p.uri,
            t = p.target.transport.via_name(),
            id = p.id,
            mf = p.max_forwards,
            mac = self.cfg.keys.tag_ids(crate::mac::Purpose::Probe, &[p.id]),
            from = p.from,
            salt = self.cfg.salt as u32,
            ip = local.ip(),
        );
        out.push(Transmit {
            target: p.target,
            data: Bytes::from(data),
            origin: Some(Origin::Probe(p.id)),
            tls_name: None,
        });
    }
    /// Writes one NAT keepalive: OPTIONS over UDP, a CRLFCRLF ping over a connection
    /// (RFC 5626 §4.4.1).
    fn send_keepalive(&self, k: KeepAlive, out: &mut Vec<Transmit>) {
        let data = if k.target.transport.is_reliable() {
            Bytes::from_static(b"\r\n\r\n")
        } else {
            let Some(local) = self.listener(k.target.transport) else {
                return;
            };
            Bytes::from(format!(
                "OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={KEEPALIVE_PREFIX}{id:x}.{mac:016x}\r\nMax-Forwards: 70\r\nFrom: <{from}>;tag=sbk{id:x}\r\nTo: <{uri}>\r\nCall-ID: sbk{id:x}.{salt:x}@{ip}\r\nCSeq: 1 OPTIONS\r\nUser-Agent: {SERVER}\r\nContent-Length: 0\r\n\r\n",
                uri = k.uri,
                id = k.id,
                mac = self.cfg.keys.tag_ids(crate::mac::Purpose::KeepAlive, &[k.id]),
                from = k.from,
                salt = self.cfg.salt as u32,
                ip = local.ip(),
            ))
        };
        out.push(Transmit {
            target: k.target,
            data,
            origin: Some(Origin::KeepAlive(k.id)),
            tls_name: None,
        });
    }

    // ----- malformed input --------------------------------------------------------------

    fn on_bad_message(
        &self,
        now: Instant,
        src: Source,
        data: &[u8],
        e: ParseError,
        out: &mut Vec<Transmit>,
    ) {
        Stats::inc(&self.stats.bad_messages);
        let s = salvage(data);
        if let Some(skipped) = self.log_limit.allow(now, Kind::Malformed) {
            tracing::warn!(source = %src.addr, transport = %src.transport, error = %e, skipped, "malformed message");
        }
        if s.is_request && s.has_via && s.method != "ACK" {
            let call_id = s
                .lines
                .iter()
                .find(|l| l.starts_with("Call-ID:"))
                .map_or("", |l| l.as_str());
            let tag = self.local_tag(call_id);
            let data = salvage_response(&s.lines, e.status(), &e.reason(), &tag, &self.cfg.server);
            Stats::inc(&self.stats.local_replies);
            out.push(Transmit {
                target: src.reply_target(),
                data,
                origin: None,
                tls_name: None,
            });
        }
    }

    fn reply_stateless(&self, src: &Source, req: &Message, r: Reject, out: &mut Vec<Transmit>) {
        if req.method() == Some(Method::Ack) {
            return;
        }
        let data = self.reply_bytes(src, req, &r);
        out.push(Transmit {
            target: src.reply_target(),
            data,
            origin: None,
            tls_name: None,
        });
    }

    /// A reply the proxy writes itself to `req`, with `received`/`rport` for the sender.
    fn reply_bytes(&self, src: &Source, req: &Message, r: &Reject) -> Bytes {
        Stats::inc(&self.stats.local_replies);
        let tag = self.local_tag(req.call_id());
        let via = request::via_fix(req, src);
        local_response_via(
            req,
            r.code,
            self.public_reason(r.code, &r.reason),
            &tag,
            &r.extra,
            via.as_ref().map(|v| v.1.as_str()),
            &self.cfg.server,
        )
    }

    /// The reason phrase a peer sees: the details of server-side failures (`503 Service
    /// Unavailable (no destination available in balancer group 1 ...)`) describe the
    /// topology behind the proxy and go to the log only, unless `detailed_reasons` is set;
    /// the cause of a refused request (`400 Bad Request (Via)`) stays.
    fn public_reason<'a>(&self, code: u16, reason: &'a str) -> &'a str {
        if self.cfg.detailed_reasons || !(code >= 500 || code == 480) {
            return reason;
        }
        match reason.find(" (") {
            Some(i) => {
                tracing::debug!(code, reason, "reason phrase shortened for the peer");
                &reason[..i]
            }
            None => reason,
        }
    }

    /// A reply of the registrar or of authentication: remembered under the transaction
    /// key so a retransmission gets the same bytes (not a second nonce check), and held
    /// back when the source keeps failing.
    #[allow(clippy::too_many_arguments)]
    fn reply_answered(
        &self,
        now: Instant,
        si: usize,
        key: String,
        src: &Source,
        req: &Message,
        r: Reject,
        out: &mut Vec<Transmit>,
    ) {
        if let Some(p) = &self.pike {
            if r.ban_source && !self.pike_exempt(p, src) {
                p.ban(now, src.addr.ip(), crate::pike::BanReason::Guessing);
            }
            if r.authenticated {
                p.authenticated(now, src.addr.ip());
            }
        }
        if r.drop {
            Stats::inc(&self.stats.dropped);
            return;
        }
        let data = self.reply_bytes(src, req, &r);
        // the cache is bounded: past its budget a retransmission is answered afresh
        let size = key.len() + data.len();
        if self.answered_bytes.load(Ordering::Relaxed) + size <= self.cfg.reply_cache_bytes {
            self.answered_bytes.fetch_add(size, Ordering::Relaxed);
            let old = self
                .lock(si)
                .answered
                .insert(key, (now + ANSWERED_TTL, data.clone()));
            if let Some((_, b)) = old {
                self.answered_bytes
                    .fetch_sub(b.len() + size - data.len(), Ordering::Relaxed);
            }
        } else {
            Stats::inc(&self.stats.reply_cache_full);
        }
        let t = Transmit {
            target: src.reply_target(),
            data,
            origin: None,
            tls_name: None,
        };
        match r.delay {
            Some(d) => {
                let mut q = self.delayed.lock().unwrap_or_else(|p| p.into_inner());
                if q.len() < 10_000 {
                    q.push((now + d, t));
                }
            }
            None => out.push(t),
        }
    }
}

mod media;
mod request;
mod response;
mod wait;

pub(crate) use media::ParkedReply;

/// Forward-mode Contact rewriting, for the registrar tests.
#[cfg(test)]
pub(crate) fn public_contact_for_test(v: &str, src: &Source) -> String {
    request::public_contact(v, src).unwrap_or_else(|e| e)
}
mod timers;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hardening;
#[cfg(test)]
mod tests_media;
#[cfg(test)]
mod tests_numbers;
#[cfg(test)]
mod tests_wait;
