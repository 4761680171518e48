//! The resource-based balancer (OpenSIPS `load_balancer`): groups of media servers, each
//! with capacities per resource (`pstn=500;vm=100`). A call that needs some resources goes to
//! the node with the most free capacity (absolute, or relative with the `r` flag; random
//! tie-break with `s`; over capacity allowed with `n`) and is counted on it from its first
//! branch until its failure or the end of its dialog. The count lives in one map keyed by
//! Call-ID, so each call is released exactly once (no drift, no underflow).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::dispatcher::{DestState, Health, HealthBook, Transition};
use crate::types::{Destination, Transport};

/// Where a live capacity is read: FreeSWITCH's event socket (`fs://[password@]host[:port]`,
/// as in OpenSIPS; port 8021 and password `ClueCon` by default).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FsSource {
    pub host: String,
    pub port: u16,
    pub password: String,
}

impl std::fmt::Display for FsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fs://{}:{}", self.host, self.port)
    }
}

/// Parses `fs://[user:]password@host[:port]` (a user, as OpenSIPS allows, is ignored: the
/// event socket authenticates by password).
pub fn parse_fs_url(v: &str) -> Result<FsSource, String> {
    let rest = v
        .strip_prefix("fs://")
        .ok_or_else(|| format!("{v:?} is not an fs:// URL"))?;
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let password = match auth {
        Some(a) => a.rsplit_once(':').map_or(a, |(_, p)| p).to_string(),
        None => "ClueCon".to_string(),
    };
    if password.is_empty() || password.contains(['\r', '\n']) {
        return Err(format!("{v:?}: empty or multi-line password"));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{v:?}: port must be 1-65535"))?,
        ),
        _ => (hostport, 8021),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b))
    {
        return Err(format!("{v:?}: bad host"));
    }
    Ok(FsSource {
        host: host.to_string(),
        port,
        password,
    })
}

/// The capacity an `fs://` resource has until its first report (OpenSIPS'
/// `initial_freeswitch_load`).
pub const FS_INITIAL_CAPACITY: i64 = 1000;

/// The `fs://` resources of a resources string (one already accepted by
/// [`parse_resources`]).
pub fn fs_sources(s: &str) -> Vec<(String, FsSource)> {
    s.split([';', ','])
        .filter_map(|p| p.split_once('='))
        .filter_map(|(n, v)| Some((n.trim().to_string(), parse_fs_url(v.trim()).ok()?)))
        .collect()
}

/// Parses `pstn=500;vm=100` (`;` or `,` between pairs). Names are tokens, capacities
/// integers from 0, or `fs://...` for a capacity read live from FreeSWITCH (counted as
/// [`FS_INITIAL_CAPACITY`] until it reports); every problem is reported with the pair it is
/// in.
pub fn parse_resources(s: &str) -> Result<Vec<(String, i64)>, String> {
    let mut out: Vec<(String, i64)> = Vec::new();
    for part in s.split([';', ',']).map(str::trim).filter(|p| !p.is_empty()) {
        let (name, cap) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not name=capacity"))?;
        let name = name.trim();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "{part:?}: resource name must be letters, digits, - or _"
            ));
        }
        let cap: i64 = if cap.trim().starts_with("fs://") {
            parse_fs_url(cap.trim()).map_err(|e| format!("{part:?}: {e}"))?;
            FS_INITIAL_CAPACITY
        } else {
            cap.trim()
                .parse()
                .map_err(|_| format!("{part:?}: capacity must be an integer or an fs:// URL"))?
        };
        if cap < 0 {
            return Err(format!("{part:?}: capacity must not be negative"));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("{part:?}: resource {name} given twice"));
        }
        out.push((name.to_string(), cap));
    }
    if out.is_empty() {
        return Err(format!("{s:?} names no resource"));
    }
    Ok(out)
}

/// One node as configured.
#[derive(Debug, Clone)]
pub struct LbNodeConfig {
    pub id: i64,
    pub group: i64,
    pub uri: Arc<str>,
    pub transport: Transport,
    pub addr: std::net::SocketAddr,
    pub resources: Vec<(String, i64)>,
    /// Resources whose capacity FreeSWITCH reports (`pstn=fs://...`).
    pub live: Vec<(String, FsSource)>,
    pub enabled: bool,
    pub description: String,
}

/// What FreeSWITCH last reported for a node (a `HEARTBEAT` event).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveReport {
    pub max_sessions: i64,
    pub sessions: i64,
    /// Percent, 0-100.
    pub idle_cpu: f64,
}

impl LiveReport {
    /// Free sessions as FreeSWITCH sees them, scaled by its idle CPU: a node with room for
    /// 400 more sessions but 25 % CPU left takes 100.
    pub fn free(&self) -> i64 {
        let room = (self.max_sessions - self.sessions).max(0) as f64;
        (room * self.idle_cpu.clamp(0.0, 100.0) / 100.0).floor() as i64
    }
}

/// A live resource's state: the last report, and our own count on the node when it came
/// (calls we place after it are not in it yet).
#[derive(Debug, Default)]
struct Live {
    report: Option<(LiveReport, i64)>,
}

/// A node with its live counters.
#[derive(Debug)]
pub struct LbNode {
    pub cfg: LbNodeConfig,
    capacity: Vec<AtomicI64>,
    used: Vec<AtomicI64>,
    /// Up, down, draining or disabled: shared with the dispatcher when it names the same
    /// server, probed with the dispatcher's settings.
    health: Arc<Health>,
    /// Per resource: `Some` for an `fs://` one.
    live: Vec<Option<Mutex<Live>>>,
}

impl LbNode {
    fn new(cfg: LbNodeConfig, book: &HealthBook) -> LbNode {
        let initial = if cfg.enabled {
            DestState::Active
        } else {
            DestState::Disabled
        };
        LbNode {
            capacity: cfg.resources.iter().map(|r| AtomicI64::new(r.1)).collect(),
            used: cfg.resources.iter().map(|_| AtomicI64::new(0)).collect(),
            health: book.get(&cfg.uri, cfg.transport, cfg.addr, initial),
            live: cfg
                .resources
                .iter()
                .map(|(n, _)| {
                    cfg.live
                        .iter()
                        .any(|(l, _)| l == n)
                        .then(|| Mutex::new(Live::default()))
                })
                .collect(),
            cfg,
        }
    }

    fn index(&self, res: &str) -> Option<usize> {
        self.cfg.resources.iter().position(|(n, _)| n == res)
    }

    /// (resource, capacity, in use) of every resource.
    pub fn load(&self) -> Vec<(String, i64, i64)> {
        self.cfg
            .resources
            .iter()
            .enumerate()
            .map(|(i, (n, _))| {
                (
                    n.clone(),
                    self.capacity[i].load(Ordering::Relaxed),
                    self.used[i].load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// False when an operator switched it off (`lb_status 0`).
    pub fn enabled(&self) -> bool {
        self.health.state() != DestState::Disabled
    }

    /// The server's health, shared with the dispatcher.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The last FreeSWITCH report for a live resource (`None` before the first, or for a
    /// fixed one).
    pub fn live_report(&self, res: &str) -> Option<LiveReport> {
        let l = self.live.get(self.index(res)?)?.as_ref()?;
        let g = l.lock().unwrap_or_else(|p| p.into_inner());
        g.report.map(|r| r.0)
    }

    /// (capacity, free) of resource `i`: for a reported live resource, FreeSWITCH's free
    /// sessions less the calls we placed since the report.
    fn room(&self, i: usize) -> (i64, i64) {
        let used = self.used[i].load(Ordering::Relaxed);
        if let Some(l) = self.live.get(i).and_then(|l| l.as_ref()) {
            let g = l.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((r, ours_then)) = g.report {
                return (r.max_sessions, r.free() - (used - ours_then).max(0));
            }
        }
        let cap = self.capacity[i].load(Ordering::Relaxed);
        (cap, cap - used)
    }

    fn destination(self: &Arc<Self>) -> Destination {
        Destination {
            uri: self.cfg.uri.clone(),
            transport: self.cfg.transport,
            addr: self.cfg.addr,
            flow: None,
            node: None,
            route: None,
            name: None,
        }
    }
}

/// Selection flags (OpenSIPS `lb_start` flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbFlags {
    /// `r`: most free capacity relative to the node's size, not absolute.
    pub relative: bool,
    /// `s`: random pick among equally free nodes.
    pub shuffle: bool,
    /// `n`: allow a node past its capacity when every node is full.
    pub allow_overload: bool,
}

impl LbFlags {
    /// Parses OpenSIPS-style flag letters.
    pub fn parse(s: &str) -> Result<LbFlags, String> {
        let mut f = LbFlags::default();
        for c in s.chars() {
            match c {
                'r' => f.relative = true,
                's' => f.shuffle = true,
                'n' => f.allow_overload = true,
                other => return Err(format!("unknown flag {other:?} (r, s, n)")),
            }
        }
        Ok(f)
    }
}

/// Where one kind of call goes: a group and the resources it needs.
#[derive(Debug, Clone)]
pub struct LbTarget {
    pub group: i64,
    pub resources: Vec<String>,
    pub flags: LbFlags,
}

/// A kind of traffic with a group of its own (seed 000: calls from users to the internal
/// FreeSWITCH profiles, group 1; calls from carriers to the external ones, group 3). A rule
/// matches when every criterion it gives matches; the first rule that matches wins.
#[derive(Debug, Clone)]
pub struct LbRule {
    /// A name for logs and the API.
    pub name: String,
    /// Source networks (carriers, a partner's PBX); empty: any source.
    pub sources: Vec<(std::net::IpAddr, u8)>,
    /// Request-URI domains; empty: any.
    pub domains: Vec<String>,
    /// Request-URI user prefixes (`+44`, `00`); empty: any.
    pub prefixes: Vec<String>,
    pub target: LbTarget,
}

impl LbRule {
    fn matches(&self, req: &sip_wire::Message, from: std::net::IpAddr) -> bool {
        if !self.sources.is_empty()
            && !self
                .sources
                .iter()
                .any(|c| crate::registrar::in_cidr(from, *c))
        {
            return false;
        }
        if self.domains.is_empty() && self.prefixes.is_empty() {
            return true;
        }
        let Ok(uri) = req.uri() else { return false };
        (self.domains.is_empty()
            || self
                .domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(uri.host)))
            && (self.prefixes.is_empty()
                || uri
                    .user
                    .is_some_and(|u| self.prefixes.iter().any(|p| u.starts_with(p.as_str()))))
    }
}

/// The balancer's routing settings: which group and resources calls use.
#[derive(Debug, Clone)]
pub struct LbRoute {
    pub group: i64,
    pub resources: Vec<String>,
    pub flags: LbFlags,
    /// Initial requests of these methods go through the balancer, the others through the
    /// dispatcher (OpenSIPS scripts: `lb_start` for INVITE, `ds_select_dst` for REGISTER).
    /// Only INVITEs are counted: a MESSAGE placed by free capacity holds nothing.
    pub methods: Vec<String>,
    /// `lb_count_call`: a call a node sends (FreeSWITCH calling out) is counted on that
    /// node while it lasts.
    pub count_from_nodes: bool,
    /// Kinds of traffic routed to other groups, tried in order before the default above.
    pub rules: Vec<LbRule>,
}

impl LbRoute {
    /// The usual route: calls (INVITE) through the balancer, nothing counted from nodes.
    pub fn calls(group: i64, resources: Vec<String>, flags: LbFlags) -> LbRoute {
        LbRoute {
            group,
            resources,
            flags,
            methods: vec!["INVITE".into()],
            count_from_nodes: false,
            rules: Vec::new(),
        }
    }

    /// True when requests of `method` go through the balancer.
    pub fn takes(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    /// The group, resources and flags for `req` from `from`: the first rule that matches,
    /// or the default.
    pub fn pick(
        &self,
        req: &sip_wire::Message,
        from: std::net::IpAddr,
    ) -> (i64, &[String], LbFlags) {
        match self.rules.iter().find(|r| r.matches(req, from)) {
            Some(r) => (r.target.group, &r.target.resources, r.target.flags),
            None => (self.group, &self.resources, self.flags),
        }
    }
}

/// The balancer.
pub struct Balancer {
    nodes: RwLock<Arc<Vec<Arc<LbNode>>>>,
    route: LbRoute,
    calls: Mutex<HashMap<Box<str>, Arc<LbNode>>>,
    /// Calls counted on the node they came from (`lb_count_call`), apart from where they go.
    inbound: Mutex<HashMap<Box<str>, Arc<LbNode>>>,
    rng: AtomicU64,
    /// "no capacity" is logged once per 10 s, with how many calls were refused meanwhile.
    /// (the next refusal is logged, refusals since the last line).
    full_log: Mutex<(bool, u64)>,
    /// Where the nodes' health records come from (the dispatcher's, when there is one).
    book: Arc<HealthBook>,
}

impl Balancer {
    /// A balancer whose nodes share their health through `book` (give it the
    /// dispatcher's, so a server in both is one server; its nodes are probed with it).
    pub fn new(
        nodes: Vec<LbNodeConfig>,
        route: LbRoute,
        seed: u64,
        book: Arc<HealthBook>,
    ) -> Balancer {
        let nodes: Vec<Arc<LbNode>> = nodes
            .into_iter()
            .map(|c| Arc::new(LbNode::new(c, &book)))
            .collect();
        book.set_extra("balancer", nodes.iter().map(|n| n.health.clone()).collect());
        Balancer {
            nodes: RwLock::new(Arc::new(nodes)),
            route,
            calls: Mutex::new(HashMap::new()),
            inbound: Mutex::new(HashMap::new()),
            rng: AtomicU64::new(seed | 1),
            full_log: Mutex::new((true, 0)),
            book,
        }
    }

    pub fn route(&self) -> &LbRoute {
        &self.route
    }

    /// The nodes (a snapshot).
    pub fn nodes(&self) -> Arc<Vec<Arc<LbNode>>> {
        self.nodes
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Arc<LbNode>>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls counted now.
    pub fn active_calls(&self) -> usize {
        self.calls().len()
    }

    /// Candidates for a call in `group` needing `res`, most free first. Empty when none has
    /// capacity (and `allow_overload` is off).
    pub fn candidates(
        &self,
        group: i64,
        res: &[String],
        flags: LbFlags,
        out: &mut Vec<Destination>,
    ) {
        let nodes = self.nodes();
        let mut scored: Vec<(bool, f64, u64, &Arc<LbNode>)> = Vec::new();
        for n in nodes
            .iter()
            .filter(|n| n.cfg.group == group && n.health.selectable())
        {
            let mut free = f64::INFINITY;
            let mut ok = true;
            for r in res {
                let Some(i) = n.index(r) else {
                    ok = false;
                    break;
                };
                let (cap, left) = n.room(i);
                let left = left as f64;
                let f = if flags.relative {
                    if cap > 0 {
                        left / cap as f64
                    } else {
                        f64::NEG_INFINITY
                    }
                } else {
                    left
                };
                free = free.min(f);
            }
            if ok {
                let tie = if flags.shuffle {
                    crate::dispatcher::next_random_pub(&self.rng)
                } else {
                    0
                };
                scored.push((n.health.suspect(), free, tie, n));
            }
        }
        // a node whose last call or probe failed comes after the others until it answers
        scored.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(b.2.cmp(&a.2)));
        let have_room = scored.iter().any(|s| s.1 > 0.0);
        for (_, free, _, n) in &scored {
            if *free > 0.0 || (flags.allow_overload && !have_room) {
                out.push(n.destination());
            }
        }
        if out.is_empty() {
            self.log_full(group, res);
        }
    }

    /// One warning for the first refusal, then one per 1,000 (the router has no clock).
    fn log_full(&self, group: i64, res: &[String]) {
        let mut g = self.full_log.lock().unwrap_or_else(|p| p.into_inner());
        g.1 += 1;
        if g.0 || g.1 >= 1000 {
            tracing::warn!(group, resources = ?res, refused_since_last_log = g.1, "load balancer: no node has capacity");
            *g = (false, 0);
        }
    }

    fn node_of(&self, dest: &Destination) -> Option<Arc<LbNode>> {
        self.nodes()
            .iter()
            .find(|n| n.cfg.uri == dest.uri && n.cfg.addr == dest.addr)
            .cloned()
    }

    fn add(&self, n: &LbNode, delta: i64) {
        for r in &self.route.resources {
            if let Some(i) = n.index(r) {
                n.used[i].fetch_add(delta, Ordering::Relaxed);
            }
        }
    }

    /// A branch of a new call went to `dest`: count it there (moving it off the node of a
    /// previous, failed attempt).
    pub fn attempt(&self, call_id: &str, dest: &Destination) {
        let Some(n) = self.node_of(dest) else {
            return;
        };
        let mut g = self.calls();
        if let Some(old) = g.insert(call_id.into(), n.clone()) {
            self.add(&old, -1);
        }
        self.add(&n, 1);
    }

    /// The attempt on `dest` failed: uncount the call if it is still counted there (a
    /// failover may already have moved it).
    pub fn release_if(&self, call_id: &str, dest: &Destination) {
        let mut g = self.calls();
        if g.get(call_id)
            .is_some_and(|n| n.cfg.uri == dest.uri && n.cfg.addr == dest.addr)
        {
            if let Some(n) = g.remove(call_id) {
                self.add(&n, -1);
            }
        }
    }

    /// True when the call is counted somewhere.
    pub fn counts(&self, call_id: &str) -> bool {
        self.calls().contains_key(call_id)
    }

    /// `lb_count_call`: a call from a node (FreeSWITCH calling out) counted on that node
    /// until it ends, like a call sent to it. False when `from` is no node.
    pub fn count_inbound(&self, call_id: &str, from: std::net::SocketAddr) -> bool {
        let Some(n) = self.nodes().iter().find(|n| n.cfg.addr == from).cloned() else {
            return false;
        };
        let mut g = self.inbound.lock().unwrap_or_else(|p| p.into_inner());
        if g.insert(call_id.into(), n.clone()).is_none() {
            self.add(&n, 1);
        } else {
            // a retransmission, or a node re-using a Call-ID: counted once
            let old = g.insert(call_id.into(), n.clone());
            if let Some(old) = old.filter(|o| !Arc::ptr_eq(o, &n)) {
                self.add(&old, -1);
                self.add(&n, 1);
            }
        }
        true
    }

    /// `lb_is_destination`: a node's address.
    pub fn is_node(&self, addr: std::net::SocketAddr) -> bool {
        self.nodes().iter().any(|n| n.cfg.addr == addr)
    }

    /// True when `ip` is a node's address, whatever the port.
    pub fn is_node_ip(&self, ip: std::net::IpAddr) -> bool {
        self.nodes().iter().any(|n| n.cfg.addr.ip() == ip)
    }

    /// The call is over (failed, cancelled, hung up, expired): uncount it, once, where it
    /// went and where it came from.
    pub fn release(&self, call_id: &str) {
        if let Some(n) = self.calls().remove(call_id) {
            self.add(&n, -1);
        }
        let from = self
            .inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(call_id);
        if let Some(n) = from {
            self.add(&n, -1);
        }
    }

    /// A call restored after a restart (its dialog persisted) is counted on its node again.
    pub fn restore_call(&self, call_id: &str, uri: &str) -> bool {
        let Some(n) = self.nodes().iter().find(|n| &*n.cfg.uri == uri).cloned() else {
            return false;
        };
        let mut g = self.calls();
        if g.insert(call_id.into(), n.clone()).is_none() {
            self.add(&n, 1);
        }
        true
    }

    /// A FreeSWITCH report for `uri`'s live resource `res`. False when there is no such
    /// node or resource (a reload removed it): the reader stops.
    pub fn report_live(&self, uri: &str, res: &str, r: LiveReport) -> bool {
        let nodes = self.nodes();
        let Some(n) = nodes.iter().find(|n| &*n.cfg.uri == uri) else {
            return false;
        };
        let Some(i) = n.index(res) else {
            return false;
        };
        let Some(l) = n.live[i].as_ref() else {
            return false;
        };
        let ours = n.used[i].load(Ordering::Relaxed);
        l.lock().unwrap_or_else(|p| p.into_inner()).report = Some((r, ours));
        n.capacity[i].store(r.max_sessions, Ordering::Relaxed);
        true
    }

    /// `lb_resize`: a node's capacity for a resource.
    pub fn resize(&self, uri: &str, res: &str, cap: i64) -> Result<(), crate::Error> {
        if cap < 0 {
            return Err(crate::Error::Invalid(
                "capacity must not be negative".into(),
            ));
        }
        let nodes = self.nodes();
        let n = nodes
            .iter()
            .find(|n| &*n.cfg.uri == uri)
            .ok_or_else(|| crate::Error::NotFound(format!("no node {uri}")))?;
        let i = n
            .index(res)
            .ok_or_else(|| crate::Error::NotFound(format!("node {uri} has no resource {res}")))?;
        n.capacity[i].store(cap, Ordering::Relaxed);
        Ok(())
    }

    /// `lb_status`: enables or disables a node.
    pub fn set_enabled(&self, uri: &str, on: bool) -> Result<Option<Transition>, crate::Error> {
        self.set_state(
            uri,
            if on {
                DestState::Active
            } else {
                DestState::Disabled
            },
        )
    }

    /// Sets a node's state (drain it, switch it off, bring it back); the dispatcher sees
    /// the same state where it names the same server.
    pub fn set_state(
        &self,
        uri: &str,
        state: DestState,
    ) -> Result<Option<Transition>, crate::Error> {
        let nodes = self.nodes();
        let n = nodes
            .iter()
            .find(|n| &*n.cfg.uri == uri)
            .ok_or_else(|| crate::Error::NotFound(format!("no node {uri}")))?;
        let t = n.health.set_state(state);
        if let Some(t) = t {
            tracing::info!(
                node = uri,
                from = t.from.as_str(),
                to = t.to.as_str(),
                "balancer node state set by operator"
            );
        }
        Ok(t)
    }

    /// Prometheus lines: per node and resource its load and capacity, and whether it takes
    /// new calls.
    pub fn metrics_text(&self) -> String {
        let nodes = self.nodes();
        let mut s = String::from("# HELP switchboard_lb_load calls counted on a balancer node, per resource\n# TYPE switchboard_lb_load gauge\n");
        for n in nodes.iter() {
            for (r, _, used) in n.load() {
                s.push_str(&format!(
                    "switchboard_lb_load{{group=\"{}\",node=\"{}\",resource=\"{r}\"}} {used}\n",
                    n.cfg.group, n.cfg.uri
                ));
            }
        }
        s.push_str("# HELP switchboard_lb_capacity capacity of a balancer node, per resource\n# TYPE switchboard_lb_capacity gauge\n");
        for n in nodes.iter() {
            for (r, cap, _) in n.load() {
                s.push_str(&format!(
                    "switchboard_lb_capacity{{group=\"{}\",node=\"{}\",resource=\"{r}\"}} {cap}\n",
                    n.cfg.group, n.cfg.uri
                ));
            }
        }
        s.push_str("# HELP switchboard_lb_node_up 1 when the balancer node takes new calls\n# TYPE switchboard_lb_node_up gauge\n");
        for n in nodes.iter() {
            s.push_str(&format!(
                "switchboard_lb_node_up{{group=\"{}\",node=\"{}\",state=\"{}\"}} {}\n",
                n.cfg.group,
                n.cfg.uri,
                n.health.state().as_str(),
                n.health.selectable() as u8
            ));
        }
        s
    }

    /// `lb_is_destination`: the node at `addr` (any port when `port` is 0), in `group`
    /// when one is given.
    pub fn find_node(
        &self,
        ip: std::net::IpAddr,
        port: u16,
        group: Option<i64>,
    ) -> Option<Arc<LbNode>> {
        self.nodes()
            .iter()
            .find(|n| {
                n.cfg.addr.ip() == ip
                    && (port == 0 || n.cfg.addr.port() == port)
                    && group.is_none_or(|g| n.cfg.group == g)
            })
            .cloned()
    }

    /// The health record of the node `dest` names, for feedback from real traffic.
    pub fn health_of(&self, dest: &Destination) -> Option<Arc<Health>> {
        self.node_of(dest).map(|n| n.health.clone())
    }

    /// `lb_reload`: new nodes; nodes that stay keep their counts, so no call is lost.
    pub fn reload(&self, cfgs: Vec<LbNodeConfig>) -> usize {
        let old = self.nodes();
        let new: Vec<Arc<LbNode>> = cfgs
            .into_iter()
            .map(|c| {
                let n = LbNode::new(c, &self.book);
                if let Some(o) = old.iter().find(|o| o.cfg.uri == n.cfg.uri) {
                    for (i, (r, _)) in n.cfg.resources.iter().enumerate() {
                        if let Some(j) = o.index(r) {
                            n.used[i].store(o.used[j].load(Ordering::Relaxed), Ordering::Relaxed);
                            // a live resource keeps its last report
                            if let (Some(new), Some(old)) = (&n.live[i], &o.live[j]) {
                                let r = old.lock().unwrap_or_else(|p| p.into_inner()).report;
                                new.lock().unwrap_or_else(|p| p.into_inner()).report = r;
                                if let Some((rep, _)) = r {
                                    n.capacity[i].store(rep.max_sessions, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                }
                Arc::new(n)
            })
            .collect();
        let count = new.len();
        // calls counted on a node that stays move to its new record
        {
            let mut calls = self.calls();
            let mut inbound = self.inbound.lock().unwrap_or_else(|p| p.into_inner());
            for n in calls.values_mut().chain(inbound.values_mut()) {
                if let Some(m) = new.iter().find(|m| m.cfg.uri == n.cfg.uri) {
                    *n = m.clone();
                }
            }
        }
        self.book
            .set_extra("balancer", new.iter().map(|n| n.health.clone()).collect());
        *self.nodes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        count
    }
}

/// Routes initial INVITEs (calls) through the balancer and everything else (REGISTER,
/// MESSAGE, OPTIONS, ...) through the dispatcher; health, probing and call counts go to both.
pub struct CallRouter {
    pub dispatcher: Arc<crate::dispatcher::Dispatcher>,
    pub balancer: Arc<Balancer>,
}

impl crate::Router for CallRouter {
    fn select(&self, req: &sip_wire::Message, out: &mut Vec<Destination>) {
        self.select_from(req, std::net::SocketAddr::from(([0, 0, 0, 0], 0)), out)
    }

    fn select_from(
        &self,
        req: &sip_wire::Message,
        from: std::net::SocketAddr,
        out: &mut Vec<Destination>,
    ) {
        let r = self.balancer.route();
        if r.takes(req.method_str()) {
            let (group, res, flags) = r.pick(req, from.ip());
            self.balancer.candidates(group, res, flags, out);
        } else {
            self.dispatcher.select(req, out);
        }
    }

    fn describe(&self) -> String {
        self.dispatcher.describe()
    }

    fn describe_for(&self, req: &sip_wire::Message) -> String {
        self.describe_from(req, std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn describe_from(&self, req: &sip_wire::Message, from: std::net::SocketAddr) -> String {
        let r = self.balancer.route();
        if r.takes(req.method_str()) {
            let (group, res, _) = r.pick(req, from.ip());
            format!(
                "balancer group {group}: no node with free {}",
                res.join("+")
            )
        } else {
            self.dispatcher.describe()
        }
    }

    fn select_by_key(&self, key: &str, req: &sip_wire::Message, out: &mut Vec<Destination>) {
        self.dispatcher.select_by_key(key, req, out)
    }

    fn name_targets(&self, named: &Destination, targets: &mut Vec<Destination>) {
        self.dispatcher.name_targets(named, targets)
    }

    fn on_branch_result(&self, dest: &Destination, ok: bool) {
        if dest.node.is_some() {
            return self.dispatcher.on_branch_result(dest, ok);
        }
        if let Some(h) = self.balancer.health_of(dest) {
            let why = if ok {
                "reply"
            } else {
                "no reply or failover reply"
            };
            self.dispatcher.health_feedback(&h, ok, why);
        }
    }

    fn on_attempt(&self, call_id: &str, dest: &Destination) {
        self.balancer.attempt(call_id, dest)
    }

    fn on_attempt_failed(&self, call_id: &str, dest: &Destination) {
        self.balancer.release_if(call_id, dest)
    }

    fn on_call_answered(&self, call_id: &str, dest: &Destination) {
        if !self.balancer.counts(call_id) {
            self.balancer.attempt(call_id, dest); // a late 2xx on a branch given up on
        }
        self.dispatcher.on_call_answered(call_id, dest)
    }

    fn on_call_ended(&self, call_id: &str) {
        self.balancer.release(call_id);
        self.dispatcher.on_call_ended(call_id)
    }

    fn on_call_from(&self, call_id: &str, from: std::net::SocketAddr) {
        if self.balancer.route().count_from_nodes {
            self.balancer.count_inbound(call_id, from);
        }
    }

    fn restore_call(&self, call_id: &str, node: Option<&str>, from: std::net::SocketAddr) {
        if let Some(uri) = node {
            self.balancer.restore_call(call_id, uri);
        }
        self.on_call_from(call_id, from);
        self.dispatcher.restore_call(call_id, node, from);
    }

    fn due_probes(&self, now: Instant, out: &mut Vec<crate::Probe>) {
        self.dispatcher.due_probes(now, out)
    }

    fn probe_result(&self, now: Instant, id: u64, code: Option<u16>) {
        self.dispatcher.probe_result(now, id, code)
    }

    fn is_destination(&self, addr: std::net::SocketAddr) -> bool {
        self.balancer.is_node(addr) || self.dispatcher.is_destination(addr)
    }

    fn is_destination_ip(&self, ip: std::net::IpAddr) -> bool {
        self.balancer.is_node_ip(ip) || self.dispatcher.is_destination_ip(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn node(id: i64, port: u16, res: &str) -> LbNodeConfig {
        LbNodeConfig {
            id,
            group: 1,
            uri: format!("sip:127.0.0.1:{port}").into(),
            transport: Transport::Udp,
            addr: ([127, 0, 0, 1], port).into(),
            resources: parse_resources(res).unwrap(),
            live: fs_sources(res),
            enabled: true,
            description: String::new(),
        }
    }

    fn lb(flags: &str) -> Balancer {
        Balancer::new(
            vec![node(1, 5080, "pstn=30"), node(2, 5082, "pstn=10;vm=5")],
            LbRoute::calls(1, vec!["pstn".into()], LbFlags::parse(flags).unwrap()),
            7,
            Arc::default(),
        )
    }

    fn pick(b: &Balancer) -> Option<Destination> {
        let mut out = vec![];
        b.candidates(1, &b.route().resources.clone(), b.route().flags, &mut out);
        out.into_iter().next()
    }

    #[test]
    fn resource_strings_are_checked() {
        assert_eq!(
            parse_resources("pstn=500; vm=100").unwrap(),
            vec![("pstn".into(), 500), ("vm".into(), 100)]
        );
        for (bad, why) in [
            ("pstn", "not name=capacity"),
            ("pstn=-1", "negative"),
            ("pstn=x", "integer"),
            ("p s=1", "resource name"),
            ("pstn=1;pstn=2", "twice"),
            ("", "names no resource"),
        ] {
            let e = parse_resources(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(LbFlags::parse("rsn").is_ok());
        assert!(LbFlags::parse("x").is_err());
    }

    #[test]
    fn calls_from_nodes_count_where_they_come_from_until_they_end() {
        let b = lb("");
        let from = "127.0.0.1:5082".parse().unwrap();
        assert!(b.count_inbound("out1", from));
        assert!(
            b.count_inbound("out1", from),
            "a retransmission counts once"
        );
        assert!(!b.count_inbound("x", "10.9.9.9:5060".parse().unwrap()));
        // the same call is also routed to node 1: counted on both
        let d1 = b.nodes()[0].destination();
        b.attempt("out1", &d1);
        let load = |b: &Balancer| -> Vec<i64> { b.nodes().iter().map(|n| n.load()[0].2).collect() };
        assert_eq!(load(&b), vec![1, 1]);
        b.release("out1");
        b.release("out1");
        assert_eq!(load(&b), vec![0, 0]);
        // which methods the balancer takes
        let r = LbRoute::calls(1, vec!["pstn".into()], LbFlags::default());
        assert!(r.takes("INVITE") && r.takes("invite") && !r.takes("REGISTER"));
    }

    #[test]
    fn fs_urls_are_checked() {
        assert_eq!(
            parse_fs_url("fs://secret@10.0.0.5:8022").unwrap(),
            FsSource {
                host: "10.0.0.5".into(),
                port: 8022,
                password: "secret".into()
            }
        );
        let d = parse_fs_url("fs://fs1.example").unwrap();
        assert_eq!((d.port, d.password.as_str()), (8021, "ClueCon"));
        assert_eq!(parse_fs_url("fs://u:pw@[::1]:9000").unwrap().host, "::1");
        for bad in [
            "http://x",
            "fs://",
            "fs://pw@host:0",
            "fs://pw@host:99999",
            "fs://pw@ho st",
            "fs://@host",
        ] {
            assert!(parse_fs_url(bad).is_err(), "{bad}");
        }
        let r = parse_resources("pstn=fs://pw@127.0.0.1:8021;vm=5").unwrap();
        assert_eq!(
            r,
            vec![("pstn".into(), FS_INITIAL_CAPACITY), ("vm".into(), 5)]
        );
        assert_eq!(fs_sources("pstn=fs://pw@127.0.0.1:8021;vm=5").len(), 1);
        let e = parse_resources("pstn=fs://pw@h:0").unwrap_err();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn live_capacity_follows_freeswitch_reports_and_our_own_calls_since() {
        let b = Balancer::new(
            vec![
                node(1, 5080, "pstn=fs://pw@127.0.0.1:8021"),
                node(2, 5082, "pstn=fs://pw@127.0.0.1:8022"),
            ],
            LbRoute::calls(1, vec!["pstn".into()], LbFlags::default()),
            7,
            Arc::default(),
        );
        let rep = |max, sessions, idle_cpu| LiveReport {
            max_sessions: max,
            sessions,
            idle_cpu,
        };
        // before any report both count with the initial capacity
        assert!(pick(&b).is_some());
        assert!(b.report_live("sip:127.0.0.1:5080", "pstn", rep(100, 95, 100.0)));
        assert!(b.report_live("sip:127.0.0.1:5082", "pstn", rep(100, 20, 50.0)));
        assert!(!b.report_live("sip:127.0.0.1:5099", "pstn", rep(1, 0, 1.0)));
        assert_eq!(rep(100, 20, 50.0).free(), 40);
        assert_eq!(rep(10, 30, 100.0).free(), 0, "over its maximum: no room");
        // node 2 has 40 free, node 1 has 5: 35 calls go to node 2, then they alternate
        let mut at = HashMap::new();
        for i in 0..45 {
            let d = pick(&b).expect("room");
            b.attempt(&format!("c{i}"), &d);
            *at.entry(d.addr.port()).or_insert(0) += 1;
        }
        assert_eq!((at[&5080], at[&5082]), (5, 40));
        assert!(
            pick(&b).is_none(),
            "both full by their reports and our calls since"
        );
        // a new report from node 1 (which now counts our 5 calls) frees room there
        assert!(b.report_live("sip:127.0.0.1:5080", "pstn", rep(100, 50, 100.0)));
        assert_eq!(pick(&b).unwrap().addr.port(), 5080);
        let n = &b.nodes()[0];
        assert_eq!(n.live_report("pstn"), Some(rep(100, 50, 100.0)));
        assert_eq!(n.load()[0].1, 100, "capacity shown is Max-Sessions");
        // a reload keeps the reports
        b.reload(b.nodes().iter().map(|n| n.cfg.clone()).collect());
        assert_eq!(b.nodes()[0].live_report("pstn"), Some(rep(100, 50, 100.0)));
    }

    #[test]
    fn forty_calls_split_by_free_capacity_then_full_then_freed() {
        let b = lb("");
        let mut at = HashMap::new();
        for i in 0..40 {
            let d = pick(&b).expect("room");
            b.attempt(&format!("c{i}"), &d);
            *at.entry(d.addr.port()).or_insert(0) += 1;
        }
        assert_eq!(at[&5080], 30);
        assert_eq!(at[&5082], 10);
        assert!(pick(&b).is_none(), "call 41: no capacity");
        b.release("c0");
        b.release("c0"); // twice: no underflow
        assert_eq!(
            pick(&b).unwrap().addr.port(),
            5080,
            "freed where it was counted"
        );
        let load: Vec<i64> = b.nodes().iter().map(|n| n.load()[0].2).collect();
        assert_eq!(load, vec![29, 10]);
        for i in 1..40 {
            b.release(&format!("c{i}"));
        }
        assert_eq!(b.nodes().iter().map(|n| n.load()[0].2).sum::<i64>(), 0);
        assert_eq!(b.active_calls(), 0);
    }

    #[test]
    fn failover_moves_the_count_and_flags_change_the_choice() {
        let b = lb("");
        let d1 = Destination {
            uri: "sip:127.0.0.1:5080".into(),
            transport: Transport::Udp,
            addr: ([127, 0, 0, 1], 5080).into(),
            flow: None,
            node: None,
            route: None,
            name: None,
        };
        let d2 = Destination {
            uri: "sip:127.0.0.1:5082".into(),
            addr: ([127, 0, 0, 1], 5082).into(),
            ..d1.clone()
        };
        b.attempt("x", &d1);
        b.attempt("x", &d2);
        let load: Vec<i64> = b.nodes().iter().map(|n| n.load()[0].2).collect();
        assert_eq!(load, vec![0, 1], "moved to the failover node");
        b.release("x");
        // relative: 5 of 30 used (83 % free) vs 0 of 10 (100 %): the small node wins
        let r = lb("r");
        for i in 0..5 {
            r.attempt(&format!("r{i}"), &d1);
        }
        assert_eq!(pick(&r).unwrap().addr.port(), 5082);
        // overload: everything full still gives a node with n
        let n = lb("n");
        for i in 0..30 {
            n.attempt(&format!("a{i}"), &d1);
        }
        for i in 0..10 {
            n.attempt(&format!("b{i}"), &d2);
        }
        assert!(pick(&n).is_some());
        assert!(pick(&lb("")).is_some());
    }

    #[test]
    fn resize_disable_and_reload_keep_counts() {
        let b = lb("");
        let d = pick(&b).unwrap();
        b.attempt("k", &d);
        b.resize("sip:127.0.0.1:5080", "pstn", 0).unwrap();
        b.set_enabled("sip:127.0.0.1:5082", false).unwrap();
        assert!(pick(&b).is_none());
        assert!(b.resize("sip:nope", "pstn", 1).is_err());
        assert!(b.resize("sip:127.0.0.1:5080", "vm", 1).is_err());
        assert!(b.resize("sip:127.0.0.1:5080", "pstn", -1).is_err());
        assert_eq!(b.reload(vec![node(1, 5080, "pstn=30")]), 1);
        assert_eq!(b.nodes()[0].load()[0].2, 1, "the call stays counted");
        b.release("k");
        assert_eq!(b.nodes()[0].load()[0].2, 0);
    }

    fn grouped(id: i64, group: i64, port: u16) -> LbNodeConfig {
        LbNodeConfig {
            group,
            ..node(id, port, "pstn=100")
        }
    }

    /// A dispatcher with set 1 = {5080} and a balancer over 5080 and 5082 sharing its
    /// health records, as `switchboard run` builds them.
    fn shared(
        threshold_down: u32,
    ) -> (
        Arc<crate::dispatcher::Dispatcher>,
        Arc<Balancer>,
        CallRouter,
    ) {
        use crate::dispatcher::{Algorithm, DestConfig, Dispatcher, ProbeConfig, SetConfig};
        let d = Arc::new(Dispatcher::new(
            vec![SetConfig {
                id: 1,
                algorithm: Algorithm::RoundRobin,
                hash_header: None,
                destinations: vec![DestConfig {
                    name: None,
                    uri: "sip:127.0.0.1:5080".into(),
                    transport: Transport::Udp,
                    addr: ([127, 0, 0, 1], 5080).into(),
                    weight: 1,
                    priority: 0,
                    attrs: String::new(),
                    description: String::new(),
                    state: DestState::Active,
                }],
            }],
            1,
            3,
            ProbeConfig {
                interval: Duration::from_secs(1),
                threshold_down,
                ..ProbeConfig::default()
            },
            1,
        ));
        let b = Arc::new(Balancer::new(
            vec![node(1, 5080, "pstn=100"), node(2, 5082, "pstn=10")],
            LbRoute::calls(1, vec!["pstn".into()], LbFlags::default()),
            7,
            d.health_book().clone(),
        ));
        let r = CallRouter {
            dispatcher: d.clone(),
            balancer: b.clone(),
        };
        (d, b, r)
    }

    fn invite_to(uri: &str) -> sip_wire::Message {
        sip_wire::Message::parse(bytes::Bytes::from(format!("INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"))).unwrap()
    }

    fn ports(r: &CallRouter, req: &sip_wire::Message, from: &str) -> Vec<u16> {
        use crate::Router;
        let mut out = vec![];
        r.select_from(req, from.parse().unwrap(), &mut out);
        out.iter().map(|d| d.addr.port()).collect()
    }

    #[test]
    fn a_server_in_the_dispatcher_and_the_balancer_has_one_state() {
        let (d, b, r) = shared(3);
        let inv = invite_to("sip:100@x");
        assert_eq!(ports(&r, &inv, "10.0.0.1:5060"), vec![5080, 5082]);
        // drained through the dispatcher: the balancer places no new call there
        d.set_state(1, "sip:127.0.0.1:5080", DestState::Draining)
            .unwrap();
        assert_eq!(ports(&r, &inv, "10.0.0.1:5060"), vec![5082]);
        assert_eq!(b.nodes()[0].health().state(), DestState::Draining);
        // back through the balancer: the dispatcher sees it active
        b.set_state("sip:127.0.0.1:5080", DestState::Active)
            .unwrap();
        assert_eq!(
            d.table().get(1).unwrap().dests[0].state(),
            DestState::Active
        );
        b.set_enabled("sip:127.0.0.1:5082", false).unwrap();
        assert!(!b.nodes()[1].enabled());
        assert_eq!(ports(&r, &inv, "10.0.0.1:5060"), vec![5080]);
        assert!(b.set_state("sip:nope", DestState::Active).is_err());
        // a reload of either keeps the shared state
        b.reload(b.nodes().iter().map(|n| n.cfg.clone()).collect());
        assert!(!b.nodes()[1].enabled());
        d.set_state(1, "sip:127.0.0.1:5080", DestState::Draining)
            .unwrap();
        b.reload(b.nodes().iter().map(|n| n.cfg.clone()).collect());
        assert_eq!(ports(&r, &inv, "10.0.0.1:5060"), Vec::<u16>::new());
    }

    #[test]
    fn balancer_nodes_are_probed_once_each_and_taken_out_when_they_stop_answering() {
        use crate::Router;
        let (_d, b, r) = shared(1);
        let t0 = Instant::now();
        let mut probes = vec![];
        r.due_probes(t0, &mut probes);
        let mut targets: Vec<u16> = probes.iter().map(|p| p.target.addr.port()).collect();
        targets.sort();
        assert_eq!(
            targets,
            vec![5080, 5082],
            "each server once, the balancer-only one too"
        );
        // 5080 answers, 5082 does not: after the probe timeout it is down
        let p5080 = probes
            .iter()
            .find(|p| p.target.addr.port() == 5080)
            .unwrap();
        r.probe_result(t0, p5080.id, Some(200));
        let mut again = vec![];
        r.due_probes(t0 + Duration::from_millis(1100), &mut again);
        assert_eq!(b.nodes()[1].health().state(), DestState::Inactive);
        let inv = invite_to("sip:100@x");
        assert_eq!(ports(&r, &inv, "10.0.0.1:5060"), vec![5080]);
        // it answers again: back in
        let p5082 = again.iter().find(|p| p.target.addr.port() == 5082).unwrap();
        r.probe_result(t0, p5082.id, Some(200));
        assert_eq!(b.nodes()[1].health().state(), DestState::Active);
    }

    #[test]
    fn a_node_that_failed_a_call_is_tried_last_until_it_answers() {
        use crate::Router;
        let (_d, b, r) = shared(3);
        let inv = invite_to("sip:100@x");
        assert_eq!(ports(&r, &inv, "10.0.0.1:5060"), vec![5080, 5082]);
        let d5080 = b.nodes()[0].destination();
        r.on_branch_result(&d5080, false);
        assert_eq!(
            ports(&r, &inv, "10.0.0.1:5060"),
            vec![5082, 5080],
            "the failed node is a failover only"
        );
        assert_eq!(
            b.nodes()[0].health().state(),
            DestState::Active,
            "one failure is not down"
        );
        r.on_branch_result(&d5080, true);
        assert_eq!(ports(&r, &inv, "10.0.0.1:5060"), vec![5080, 5082]);
    }

    #[test]
    fn rules_send_kinds_of_traffic_to_their_groups() {
        let b = Balancer::new(
            vec![
                grouped(1, 1, 5080),
                grouped(2, 3, 5090),
                grouped(3, 5, 5095),
            ],
            LbRoute {
                rules: vec![
                    LbRule {
                        name: "carriers".into(),
                        sources: vec![crate::registrar::parse_cidr("203.0.113.0/24").unwrap()],
                        domains: vec![],
                        prefixes: vec![],
                        target: LbTarget {
                            group: 3,
                            resources: vec!["pstn".into()],
                            flags: LbFlags::default(),
                        },
                    },
                    LbRule {
                        name: "international".into(),
                        sources: vec![],
                        domains: vec!["example.com".into()],
                        prefixes: vec!["00".into(), "+".into()],
                        target: LbTarget {
                            group: 5,
                            resources: vec!["pstn".into()],
                            flags: LbFlags::default(),
                        },
                    },
                ],
                ..LbRoute::calls(1, vec!["pstn".into()], LbFlags::default())
            },
            7,
            Arc::default(),
        );
        let r = CallRouter {
            dispatcher: Arc::new(crate::dispatcher::Dispatcher::new(
                vec![],
                1,
                3,
                Default::default(),
                1,
            )),
            balancer: Arc::new(b),
        };
        let user = "192.0.2.7:5060";
        let carrier = "203.0.113.9:5060";
        assert_eq!(
            ports(&r, &invite_to("sip:100@example.com"), user),
            vec![5080]
        );
        assert_eq!(
            ports(&r, &invite_to("sip:100@example.com"), carrier),
            vec![5090]
        );
        assert_eq!(
            ports(&r, &invite_to("sip:0044100@example.com"), user),
            vec![5095]
        );
        assert_eq!(
            ports(&r, &invite_to("sip:0044100@EXAMPLE.com"), user),
            vec![5095]
        );
        assert_eq!(
            ports(&r, &invite_to("sip:0044100@other.net"), user),
            vec![5080],
            "both criteria"
        );
        use crate::Router;
        let why = r.describe_from(&invite_to("sip:1@x"), carrier.parse().unwrap());
        assert!(why.contains("group 3"), "{why}");
        // lb_is_destination per group, any port
        let ip = "127.0.0.1".parse().unwrap();
        assert!(r.balancer.find_node(ip, 5090, Some(3)).is_some());
        assert!(r.balancer.find_node(ip, 5090, Some(1)).is_none());
        assert!(r.balancer.find_node(ip, 0, Some(1)).is_some());
        assert!(r.balancer.find_node(ip, 5099, None).is_none());
    }
}
