//! The registrar (RFC 3261 §10.3), digest authentication of local users, the location
//! service with NAT handling and keepalives, and the lookup that turns a call to a local user
//! into branches over the user's own flows. Sans-IO like the rest of the core: the caller
//! passes the time; changes to persist are queued as [`LocEvent`]s.

mod auth;
mod location;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sip_wire::auth::Algorithm;
use sip_wire::{split_commas, HeaderName, Message, NameAddr, Scheme, Uri};

pub use auth::{Credential, FailOutcome, FailPolicy, Verdict};
pub use location::{Binding, LocEvent};

use crate::types::{Destination, Source, Target, Transport};
use auth::Authenticator;
use location::Location;

/// What the registrar does with REGISTER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrarMode {
    /// Keep the bindings here (OpenSIPS `save("location")`).
    Local,
    /// Relay REGISTER to the media servers with a Path header (seeds 001 and 003).
    Forward,
}

/// How a call to a user with several contacts is forked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    /// One contact at a time, highest q first.
    Serial,
    /// Every contact at once.
    Parallel,
}

/// The validated `[registrar]` settings.
#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    pub mode: RegistrarMode,
    /// Domains served (lowercase). Empty: every domain is local.
    pub domains: Vec<String>,
    /// Challenge REGISTER and calls from local users.
    pub auth: bool,
    /// Offered in this order (the first is preferred). MD5 alone by default, as OpenSIPS and
    /// Kamailio do: some phones fail when offered several challenges (Debian 12's baresip
    /// 1.0 answers neither), and many (and SIPp) know only MD5.
    pub algorithms: Vec<Algorithm>,
    /// Domains (lowercase) whose challenges offer SHA-256 first, then `algorithms` (RFC 8760):
    /// opt-in, for domains whose phones all handle several challenges.
    pub sha256_domains: Vec<String>,
    pub nonce_expires: u64,
    pub secret: Vec<u8>,
    pub default_expires: u32,
    pub min_expires: u32,
    pub max_expires: u32,
    /// 0: unlimited.
    pub max_contacts: usize,
    /// At `max_contacts`: refuse the new contact (`403`) instead of replacing the oldest.
    pub reject_over_max: bool,
    pub fork: Fork,
    /// Zero: no keepalives.
    pub ping_interval: Duration,
    /// Ping every contact, not only those behind NAT.
    pub ping_all: bool,
    /// Remove a contact after this many unanswered OPTIONS pings.
    pub ping_max_missed: u8,
    pub ping_from: String,
    pub fail: FailPolicy,
    /// Sources never challenged (CIDR), besides the media-server nodes.
    pub trusted: Vec<(IpAddr, u8)>,
    /// Calls between local users go straight to the callee (`false`: to the media servers).
    pub direct_user_calls: bool,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            mode: RegistrarMode::Local,
            domains: Vec::new(),
            auth: true,
            algorithms: vec![Algorithm::Md5],
            sha256_domains: Vec::new(),
            nonce_expires: 30,
            secret: b"switchboard".to_vec(),
            default_expires: 3600,
            min_expires: 60,
            max_expires: 7200,
            max_contacts: 0,
            reject_over_max: false,
            fork: Fork::Serial,
            ping_interval: Duration::from_secs(10),
            ping_all: false,
            ping_max_missed: 3,
            ping_from: "sip:pinger@switchboard.invalid".into(),
            fail: FailPolicy::default(),
            trusted: Vec::new(),
            direct_user_calls: true,
        }
    }
}

/// A reply the registrar wants sent: code, reason phrase, header lines, and how long to
/// hold it back (a source that keeps failing authentication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub reason: String,
    pub extra: Vec<String>,
    pub delay: Option<Duration>,
    /// Send nothing: the username is banned from this source.
    pub drop: bool,
    /// The sender guessed too much: the caller bans the whole source.
    pub ban_source: bool,
    /// The request carried valid credentials.
    pub authenticated: bool,
}

fn reply(code: u16, reason: impl Into<String>) -> Reply {
    Reply {
        code,
        reason: reason.into(),
        extra: Vec::new(),
        delay: None,
        drop: false,
        ban_source: false,
        authenticated: false,
    }
}

impl Reply {
    /// Applies what a counted failure leads to.
    fn fail(mut self, o: FailOutcome) -> Reply {
        self.delay = o.delay;
        self.ban_source = o.ban_source;
        self
    }
}

/// A keepalive the core must send to a contact: OPTIONS on UDP, CRLFCRLF on streams.
#[derive(Debug, Clone)]
pub struct KeepAlive {
    pub id: u64,
    pub target: Target,
    pub uri: String,
    pub from: String,
}

/// The outcome of authenticating an initial request from a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallAuth {
    /// No check needed (trusted source, or auth off).
    Trusted,
    /// Authenticated as this local user.
    User(String),
    /// Answer with this.
    Refuse(Reply),
}

/// A contact as given in a REGISTER, validated.
struct NewContact<'a> {
    uri: &'a str,
    expires: u32,
    q: u16,
    instance: Option<&'a str>,
    reg_id: Option<u32>,
}

/// The registrar and location service.
pub struct Registrar {
    cfg: RegistrarConfig,
    loc: Location,
    auth: Authenticator,
    events: Mutex<Vec<LocEvent>>,
    persist: std::sync::atomic::AtomicBool,
    agents: Mutex<HashSet<Arc<str>>>,
    pongs: Mutex<HashSet<u64>>,
    /// Connections (TCP, TLS, WebSocket) that carry a registration, and until when: they
    /// stay open that long whatever their idle timeout (OpenSIPS `tcp_persistent_flag`).
    flows: Mutex<HashMap<crate::types::FlowId, Instant>>,
    /// The AORs with bindings saved over each connection: when it closes they are removed
    /// at once (the user can only be reached over it; OpenSIPS and Kamailio keep them to
    /// their expiry, and calls ring nobody).
    flow_aors: Mutex<HashMap<crate::types::FlowId, Vec<Box<str>>>>,
    next_id: AtomicU64,
    /// This node's id in a cluster (0: none); bindings saved here carry it.
    node: std::sync::atomic::AtomicU16,
    /// The first id of this process's range ([`crate::id_range`]).
    id_base: AtomicU64,
    /// The wall clock at a known instant: `unix(now)` without reading the clock.
    epoch: (Instant, u64),
    rounds: Mutex<(Instant, Instant)>,
}

/// The bit of [`Binding::missed`] set while a keepalive is out.
pub const PING_OUT: u8 = 0x80;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn host_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Parses an expires value: digits only, at most 2^32-1 (RFC 3261 §25.1 delta-seconds).
fn parse_expires(v: &str, what: &str) -> Result<u32, Reply> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(reply(
            400,
            format!("Bad Request ({what} {v:?} is not a number of seconds)"),
        ));
    }
    v.parse::<u32>().map_err(|_| {
        reply(
            400,
            format!("Bad Request ({what} {v} is above 2^32-1 seconds)"),
        )
    })
}

/// Parses a q-value (`0`..`1` with up to three decimals) into thousandths.
fn parse_q(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let f: u16 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<3}").parse().ok()?
    };
    match int {
        "0" => Some(f),
        "1" if f == 0 => Some(1000),
        _ => None,
    }
}

fn format_q(q: u16) -> String {
    if q == 1000 {
        "1".into()
    } else {
        format!("0.{:03}", q)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// True for addresses that cannot be reached from outside their network (RFC 1918, RFC
/// 6598 shared space, link-local, unique local).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            v.is_private() || v.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v) => {
            (v.segments()[0] & 0xfe00) == 0xfc00 || (v.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Parses `a.b.c.d/n` (or a bare address) into a network.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, n) = s.split_once('/').unwrap_or((s, ""));
    let ip: IpAddr = a.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let n = if n.is_empty() {
        max
    } else {
        n.trim().parse().ok()?
    };
    (n <= max).then_some((ip, n))
}

/// True when `ip` is in the network `net/bits`.
pub fn in_cidr(ip: IpAddr, (net, bits): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let m = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & m == u32::from(b) & m
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let m = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & m == u128::from(b) & m
        }
        _ => false,
    }
}

impl Registrar {
    /// A registrar with `cfg`; `epoch` pairs an instant with the UNIX time at it.
    pub fn new(cfg: RegistrarConfig, epoch: (Instant, u64)) -> Registrar {
        Registrar {
            auth: Authenticator::new(
                cfg.secret.clone(),
                cfg.algorithms.clone(),
                cfg.nonce_expires,
                cfg.fail.clone(),
            )
            .with_sha256_realms(&cfg.sha256_domains),
            loc: Location::new(64),
            events: Mutex::new(Vec::new()),
            persist: std::sync::atomic::AtomicBool::new(true),
            agents: Mutex::new(HashSet::new()),
            pongs: Mutex::new(HashSet::new()),
            flows: Mutex::new(HashMap::new()),
            flow_aors: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            node: Default::default(),
            id_base: AtomicU64::new(0),
            rounds: Mutex::new((epoch.0, epoch.0 + cfg.ping_interval)),
            epoch,
            cfg,
        }
    }

    pub fn config(&self) -> &RegistrarConfig {
        &self.cfg
    }

    /// One shared copy of each User-Agent string (bounded: past 10,000 distinct ones, each
    /// binding gets its own).
    fn intern_ua(&self, s: &str) -> Arc<str> {
        let mut g = lock(&self.agents);
        if let Some(a) = g.get(s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        if g.len() < 10_000 {
            g.insert(a.clone());
        }
        a
    }

    /// Queues changes for the write-behind (nothing when persistence is off).
    fn queue(&self, ev: Vec<LocEvent>) {
        if !ev.is_empty() && self.persist.load(Ordering::Relaxed) {
            lock(&self.events).extend(ev);
        }
    }

    /// Turns the change queue on or off (off: no database behind the location table).
    pub fn set_persistence(&self, on: bool) {
        self.persist.store(on, Ordering::Relaxed);
        if !on {
            lock(&self.events).clear();
        }
    }

    fn unix(&self, now: Instant) -> u64 {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0).as_secs()
    }

    /// True when `host` is a domain served here.
    pub fn is_local_domain(&self, host: &str) -> bool {
        self.cfg.domains.is_empty()
            || self
                .cfg
                .domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(host))
    }

    /// True when `ip` is in a configured trusted network.
    pub fn is_trusted_ip(&self, ip: IpAddr) -> bool {
        self.cfg.trusted.iter().any(|n| in_cidr(ip, *n))
    }

    /// The usernames banned from a source: (source, username, time left).
    pub fn user_bans(&self, now: Instant) -> Vec<(IpAddr, String, Duration)> {
        self.auth.user_bans(now)
    }

    /// (wrong answers counted as guesses, credentials with a nonce not issued to their
    /// sender).
    pub fn auth_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.auth.failures.load(Relaxed),
            self.auth.foreign_nonces.load(Relaxed),
        )
    }

    // ----- subscribers ---------------------------------------------------------------

    pub fn set_credential(&self, user: &str, domain: &str, c: Credential) {
        self.auth.set_credential(user, domain, c);
    }

    pub fn remove_credential(&self, user: &str, domain: &str) -> bool {
        self.auth.remove_credential(user, domain)
    }

    pub fn load_credentials(&self, all: Vec<(String, String, Credential)>) {
        self.auth.replace_all(all);
    }

    pub fn has_subscriber(&self, user: &str, domain: &str) -> bool {
        self.auth.has_user(user, domain)
    }

    pub fn subscriber_count(&self) -> usize {
        self.auth.user_count()
    }

    /// Lifts the username bans of `ip` (one username, or all); true when there was one.
    pub fn unban(&self, ip: IpAddr, user: Option<&str>) -> bool {
        self.auth.unban(ip, user)
    }

    // ----- authentication --------------------------------------------------------------

    /// Runs digest authentication of `msg` from `user` (the To user of a REGISTER, the From
    /// user of a call) for `realm`; `proxy` selects 407 over 401. A username banned from this
    /// source gets nothing at all.
    fn authenticate(
        &self,
        now: Instant,
        src: &Source,
        msg: &Message,
        user: &str,
        realm: &str,
        proxy: bool,
    ) -> Result<String, Reply> {
        let ip = src.addr.ip();
        if self.auth.is_user_banned(ip, user, now) {
            let mut r = reply(403, "Forbidden");
            r.drop = true;
            return Err(r);
        }
        let unix = self.unix(now);
        let (code, base) = if proxy {
            (407, "Proxy Authentication Required")
        } else {
            (401, "Unauthorized")
        };
        match self.auth.check(msg, proxy, realm, unix, ip) {
            Verdict::Ok(user) => Ok(user),
            Verdict::Malformed(why) => {
                Err(reply(400, format!("Bad Request ({why})"))
                    .fail(self.auth.failed(ip, user, now)))
            }
            Verdict::Challenge { stale, reason } => {
                let mut r = reply(code, format!("{base}{reason}"));
                r.extra = self.auth.challenge(proxy, unix, realm, stale, ip);
                // a first request without credentials, an expired, used or foreign nonce is
                // not a guess; a wrong answer to our nonce is
                let had_credentials = msg
                    .get(if proxy {
                        HeaderName::ProxyAuthorization
                    } else {
                        HeaderName::Authorization
                    })
                    .is_some();
                if had_credentials && !stale && reason != " (nonce not issued here)" {
                    r = r.fail(self.auth.failed(ip, user, now));
                }
                Err(r)
            }
        }
    }

    /// Authenticates an initial request from `src` (not REGISTER) when it claims to come
    /// from a local user; `trusted` sources (media servers) pass.
    pub fn authorize_call(
        &self,
        now: Instant,
        src: &Source,
        msg: &Message,
        trusted: bool,
    ) -> CallAuth {
        if trusted || self.is_trusted_ip(src.addr.ip()) || !self.cfg.auth {
            return CallAuth::Trusted;
        }
        let Ok(from) = msg.from() else {
            return CallAuth::Refuse(reply(400, "Bad Request (From)"));
        };
        let domain = from.uri.host.to_ascii_lowercase();
        if !self.is_local_domain(&domain) {
            // not one of ours: may only call into our domains
            return match msg.uri() {
                Ok(u) if self.is_local_domain(u.host) => CallAuth::Trusted,
                _ => CallAuth::Refuse(reply(403, "Forbidden (relay denied)")),
            };
        }
        let claimed = from.uri.user.unwrap_or("");
        match self.authenticate(now, src, msg, claimed, &domain, true) {
            Ok(user) if from.uri.user == Some(user.as_str()) => {
                self.auth.succeeded(src.addr.ip(), &user);
                CallAuth::User(user)
            }
            Ok(_) => CallAuth::Refuse(
                reply(403, "Forbidden (authenticated user does not match From)")
                    .fail(self.auth.failed(src.addr.ip(), claimed, now)),
            ),
            Err(r) => CallAuth::Refuse(r),
        }
    }

    // ----- REGISTER ----------------------------------------------------------------------

    /// Handles a REGISTER for this registrar (local mode) and returns the reply.
    pub fn register(&self, now: Instant, src: &Source, msg: &Message, trusted: bool) -> Reply {
        match self.register_inner(now, src, msg, trusted) {
            Ok(r) | Err(r) => r,
        }
    }

    fn register_inner(
        &self,
        now: Instant,
        src: &Source,
        msg: &Message,
        trusted: bool,
    ) -> Result<Reply, Reply> {
        let to = msg.to().map_err(|e| reply(400, e.reason()))?;
        let user = to
            .uri
            .user
            .filter(|u| !u.is_empty())
            .ok_or_else(|| reply(400, "Bad Request (To has no user part)"))?;
        let domain = to.uri.host.to_ascii_lowercase();
        if !matches!(to.uri.scheme, Scheme::Sip | Scheme::Sips) {
            return Err(reply(400, "Bad Request (To is not a SIP URI)"));
        }
        if !self.is_local_domain(&domain) {
            return Err(reply(
                403,
                format!("Forbidden (domain {domain} is not served here)"),
            ));
        }
        let mut authenticated = false;
        if self.cfg.auth && !trusted && !self.is_trusted_ip(src.addr.ip()) {
            let authed = self.authenticate(now, src, msg, user, &domain, false)?;
            if authed != user {
                return Err(
                    reply(403, "Forbidden (authenticated user does not match To)")
                        .fail(self.auth.failed(src.addr.ip(), user, now)),
                );
            }
            self.auth.succeeded(src.addr.ip(), user);
            authenticated = true;
        }
        let aor = format!("{user}@{domain}");
        let cseq = msg.cseq().map_err(|e| reply(400, e.reason()))?.seq;
        let call_id = msg.call_id();
        let contacts = self.parse_contacts(msg)?;
        let path: Option<String> = {
            let p: Vec<&str> = msg.values(HeaderName::Path).collect();
            (!p.is_empty()).then(|| p.join(", "))
        };
        let ua = msg.get_named("User-Agent").map(|s| self.intern_ua(s));
        let unix = self.unix(now);
        let mut events = Vec::new();
        let max = self.cfg.max_contacts;
        let lines = match contacts {
            None => self.loc.with(&aor, |v| contact_lines(v, now)), // a query
            Some(Err(())) => {
                // `*`: remove every binding (§10.3 step 6)
                self.loc.with(&aor, |v| {
                    if let Some(b) = v.iter().find(|b| &*b.call_id == call_id && b.cseq >= cseq) {
                        let _ = b;
                        return Err(reply(
                            400,
                            "Bad Request (CSeq not above the stored binding's)",
                        ));
                    }
                    for b in v.drain(..) {
                        events.push(LocEvent::Removed {
                            aor: aor.clone(),
                            id: b.id,
                        });
                    }
                    Ok(())
                })?;
                Vec::new()
            }
            Some(Ok(list)) => {
                let source = src.reply_target();
                self.loc.with(&aor, |v| {
                    // validate everything first: nothing is stored on error
                    let mut adds = 0usize;
                    let mut removes = 0usize;
                    for c in &list {
                        match find(v, c) {
                            Some(i) => {
                                if &*v[i].call_id == call_id && v[i].cseq >= cseq {
                                    return Err(reply(
                                        400,
                                        "Bad Request (CSeq not above the stored binding's)",
                                    ));
                                }
                                removes += (c.expires == 0) as usize;
                            }
                            None => adds += (c.expires > 0) as usize,
                        }
                    }
                    let live = v.iter().filter(|b| b.expires_at > now).count();
                    if max > 0
                        && self.cfg.reject_over_max
                        && live + adds - removes.min(live + adds) > max
                        && adds > 0
                    {
                        return Err(reply(
                            403,
                            format!("Forbidden (too many contacts, at most {max})"),
                        ));
                    }
                    for c in &list {
                        let idx = find(v, c);
                        if c.expires == 0 {
                            if let Some(i) = idx {
                                let b = v.remove(i);
                                events.push(LocEvent::Removed {
                                    aor: aor.clone(),
                                    id: b.id,
                                });
                            }
                            continue;
                        }
                        let nat = contact_nat(c.uri, src.addr);
                        let b = Binding {
                            id: match idx {
                                Some(i) => v[i].id,
                                None => self.next_id.fetch_add(1, Ordering::Relaxed),
                            },
                            uri: c.uri.into(),
                            q: c.q,
                            expires_at: now + Duration::from_secs(c.expires as u64),
                            expires_unix: unix + c.expires as u64,
                            call_id: call_id.into(),
                            cseq,
                            source,
                            nat,
                            path: path.as_deref().map(Into::into),
                            instance: c.instance.map(Into::into),
                            reg_id: c.reg_id,
                            user_agent: ua.clone(),
                            updated_unix: unix,
                            node: self.node.load(Ordering::Relaxed),
                            missed: 0,
                        };
                        if let Some(f) = b.source.flow {
                            let mut g = lock(&self.flows);
                            let until = g.entry(f).or_insert(b.expires_at);
                            *until = (*until).max(b.expires_at);
                            drop(g);
                            let mut g = lock(&self.flow_aors);
                            let aors = g.entry(f).or_default();
                            if !aors.iter().any(|a| **a == *aor) {
                                aors.push(aor.as_str().into());
                            }
                        }
                        events.push(LocEvent::Saved {
                            aor: aor.clone(),
                            binding: Box::new(b.clone()),
                        });
                        match idx {
                            Some(i) => v[i] = b,
                            None => {
                                // one at a time: a Vec's first push would make room for 4
                                v.reserve_exact(1);
                                v.push(b)
                            }
                        }
                    }
                    // expired ones go now; then the oldest beyond max_contacts
                    v.retain(|b| {
                        let keep = b.expires_at > now;
                        if !keep {
                            events.push(LocEvent::Removed {
                                aor: aor.clone(),
                                id: b.id,
                            });
                        }
                        keep
                    });
                    if max > 0 && v.len() > max {
                        v.sort_by_key(|b| (b.updated_unix, b.id));
                        let extra = v.len() - max;
                        for b in v.drain(..extra) {
                            events.push(LocEvent::Removed {
                                aor: aor.clone(),
                                id: b.id,
                            });
                        }
                    }
                    Ok(contact_lines(v, now))
                })?
            }
        };
        self.queue(events);
        let mut r = reply(200, "OK");
        r.authenticated = authenticated;
        r.extra = lines;
        if let Some(p) = &path {
            if msg
                .values(HeaderName::Supported)
                .any(|s| s.eq_ignore_ascii_case("path"))
            {
                r.extra.push(format!("Path: {p}"));
            }
        }
        Ok(r)
    }

    /// The Contact values of a REGISTER: `None` when there are none (a query),
    /// `Some(Err(()))` for `*`.
    #[allow(clippy::type_complexity)]
    fn parse_contacts<'m>(
        &self,
        msg: &'m Message,
    ) -> Result<Option<Result<Vec<NewContact<'m>>, ()>>, Reply> {
        let header_expires = msg
            .get(HeaderName::Expires)
            .map(|v| parse_expires(v, "Expires"))
            .transpose()?;
        if msg.all(HeaderName::Contact).next().is_none() {
            return Ok(None);
        }
        let mut list = Vec::new();
        let mut star = false;
        for h in msg.all(HeaderName::Contact) {
            if h.trim().is_empty() {
                return Err(reply(400, "Bad Request (Contact without URI)"));
            }
            for v in split_commas(h) {
                if v == "*" {
                    star = true;
                    continue;
                }
                let na = NameAddr::parse(v, "Contact").map_err(|e| {
                    reply(
                        400,
                        format!("Bad Request (Contact without a valid URI: {e})"),
                    )
                })?;
                if !matches!(na.uri.scheme, Scheme::Sip | Scheme::Sips) {
                    return Err(reply(400, "Bad Request (Contact is not a SIP URI)"));
                }
                if na.uri.raw.is_empty() || na.uri.host.is_empty() {
                    return Err(reply(400, "Bad Request (Contact without URI)"));
                }
                let expires = match na.params.value("expires") {
                    Some(e) => parse_expires(e, "Contact expires")?,
                    None => match na.params.get("expires") {
                        Some(None) => {
                            return Err(reply(400, "Bad Request (Contact expires without value)"))
                        }
                        _ => header_expires.unwrap_or(self.cfg.default_expires),
                    },
                };
                let q = match na.params.value("q") {
                    Some(q) => parse_q(q).ok_or_else(|| {
                        reply(400, format!("Bad Request (q={q} is not a q-value)"))
                    })?,
                    None => 1000,
                };
                let reg_id = match na.params.value("reg-id") {
                    Some(r) => Some(r.parse::<u32>().map_err(|_| {
                        reply(400, format!("Bad Request (reg-id={r} is not a number)"))
                    })?),
                    None => None,
                };
                list.push(NewContact {
                    uri: na.uri.raw,
                    expires,
                    q,
                    instance: na.params.value("+sip.instance"),
                    reg_id,
                });
            }
        }
        if star {
            if !list.is_empty() {
                return Err(reply(400, "Bad Request (Contact * with other contacts)"));
            }
            if header_expires != Some(0) {
                return Err(reply(400, "Bad Request (Contact * needs Expires: 0)"));
            }
            return Ok(Some(Err(())));
        }
        for c in &mut list {
            if c.expires != 0 && c.expires < self.cfg.min_expires {
                let mut r = reply(423, "Interval Too Brief");
                r.extra
                    .push(format!("Min-Expires: {}", self.cfg.min_expires));
                return Err(r);
            }
            c.expires = c.expires.min(self.cfg.max_expires);
        }
        Ok(Some(Ok(list)))
    }

    // ----- lookup ----------------------------------------------------------------------

    /// True when `user@domain` has a live binding.
    pub fn is_registered(&self, user: &str, domain: &str, now: Instant) -> bool {
        self.loc
            .contains(&format!("{user}@{}", domain.to_ascii_lowercase()), now)
    }

    /// Branches for a call to `user@domain`: one per live binding, in q order. `404` for
    /// an unknown user, `480` for a known one with no binding.
    pub fn lookup(
        &self,
        user: &str,
        domain: &str,
        now: Instant,
    ) -> Result<Vec<Destination>, Reply> {
        let domain = domain.to_ascii_lowercase();
        let found = self.loc.lookup(&format!("{user}@{domain}"), now);
        if found.is_empty() {
            return Err(if self.auth.has_user(user, &domain) {
                reply(480, "Temporarily Unavailable (no registered contact)")
            } else {
                reply(404, "Not Found")
            });
        }
        Ok(found.iter().filter_map(destination).collect())
    }

    /// Every binding, for the management API.
    pub fn dump(&self, now: Instant) -> Vec<(String, Vec<Binding>)> {
        let mut all = Vec::new();
        self.loc.for_each(|aor, v| {
            let live: Vec<Binding> = v.iter().filter(|b| b.expires_at > now).cloned().collect();
            if !live.is_empty() {
                all.push((aor.to_string(), live));
            }
        });
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The bindings of one AOR (`user@domain`).
    pub fn show(&self, aor: &str, now: Instant) -> Vec<Binding> {
        self.loc.lookup(&normalize_aor(aor), now)
    }

    /// Removes an AOR; returns how many bindings it had.
    pub fn remove_aor(&self, aor: &str) -> usize {
        let mut ev = Vec::new();
        let aor = normalize_aor(aor);
        let n = self.loc.with(&aor, |v| {
            for b in v.drain(..) {
                ev.push(LocEvent::Removed {
                    aor: aor.clone(),
                    id: b.id,
                });
            }
            ev.len()
        });
        self.queue(ev);
        n
    }

    /// Removes one contact of an AOR by its URI.
    pub fn remove_contact(&self, aor: &str, uri: &str) -> bool {
        let mut ev = Vec::new();
        let aor = normalize_aor(aor);
        self.loc.with(&aor, |v| {
            v.retain(|b| {
                let hit = &*b.uri == uri;
                if hit {
                    ev.push(LocEvent::Removed {
                        aor: aor.clone(),
                        id: b.id,
                    });
                }
                !hit
            })
        });
        let hit = !ev.is_empty();
        self.queue(ev);
        hit
    }

    /// (AORs, bindings) held.
    pub fn counts(&self) -> (usize, usize) {
        self.loc.counts()
    }

    /// Changes to persist since the last call.
    pub fn take_events(&self) -> Vec<LocEvent> {
        std::mem::take(&mut *lock(&self.events))
    }

    /// Ids made from now on come from the range that starts at `base`, one no other process
    /// sharing the database uses ([`crate::ID_COUNTER_BITS`]). Called before restoring.
    pub fn set_id_base(&self, base: u64) {
        self.id_base.store(base, Ordering::Relaxed);
        self.next_id.store(base + 1, Ordering::Relaxed);
    }

    /// Makes this registrar node `node` of a cluster: bindings saved here name it, and
    /// bindings naming another node are held as that node's (see [`Registrar::apply_remote`]).
    pub fn set_node(&self, node: u16) {
        self.node.store(node, Ordering::Relaxed);
    }

    pub fn node(&self) -> u16 {
        self.node.load(Ordering::Relaxed)
    }

    /// A binding another node saved or refreshed (or this node, before a restart), read
    /// from the shared store: held, replacing the one with its id; nothing is queued. A
    /// binding already expired is ignored.
    pub fn apply_remote(&self, now: Instant, aor: &str, mut b: Binding) {
        let unix = self.unix(now);
        if b.expires_unix <= unix {
            return self.remove_remote(aor, b.id);
        }
        b.expires_at = now + Duration::from_secs(b.expires_unix - unix);
        b.missed = 0;
        if b.node == self.node() {
            // ours from before a restart: its connection is gone
            b.source.flow = None;
            if crate::id_range(b.id) == crate::id_range(self.id_base.load(Ordering::Relaxed)) {
                self.next_id.fetch_max(b.id + 1, Ordering::Relaxed);
            }
        }
        self.loc.with(&normalize_aor(aor), |v| {
            match v.iter_mut().find(|x| x.id == b.id) {
                Some(x) => *x = b,
                None => {
                    v.reserve_exact(1);
                    v.push(b)
                }
            }
        });
    }

    /// A binding another node removed.
    pub fn remove_remote(&self, aor: &str, id: u64) {
        self.loc
            .with(&normalize_aor(aor), |v| v.retain(|b| b.id != id));
    }

    /// The live bindings this node owns (to write again to a shared store that lost them).
    pub fn own_bindings(&self, now: Instant) -> Vec<(String, Binding)> {
        let me = self.node();
        let mut all = Vec::new();
        self.loc.for_each(|aor, v| {
            for b in v.iter().filter(|b| b.node == me && b.expires_at > now) {
                all.push((aor.to_string(), b.clone()));
            }
        });
        all
    }

    /// Queues every live binding this node owns as saved again (a shared store that lost
    /// its data gets this node's part back). Returns how many.
    pub fn requeue_own(&self, now: Instant) -> usize {
        let ev: Vec<LocEvent> = self
            .own_bindings(now)
            .into_iter()
            .map(|(aor, b)| LocEvent::Saved {
                aor,
                binding: Box::new(b),
            })
            .collect();
        let n = ev.len();
        self.queue(ev);
        n
    }

    /// Loads persisted bindings at start (their `expires_unix` decides what is left).
    pub fn restore(&self, now: Instant, rows: Vec<(String, Binding)>) -> usize {
        let unix = self.unix(now);
        let mut n = 0;
        for (aor, mut b) in rows {
            if b.expires_unix <= unix {
                self.queue(vec![LocEvent::Removed {
                    aor: normalize_aor(&aor),
                    id: b.id,
                }]);
                continue;
            }
            b.expires_at = now + Duration::from_secs(b.expires_unix - unix);
            if crate::id_range(b.id) == crate::id_range(self.id_base.load(Ordering::Relaxed)) {
                self.next_id.fetch_max(b.id + 1, Ordering::Relaxed);
            }
            self.loc.with(&normalize_aor(&aor), |v| {
                v.reserve_exact(1);
                v.push(b)
            });
            n += 1;
        }
        n
    }

    // ----- timers: expiry and keepalives -------------------------------------------------

    /// Sweeps expired bindings (each second) and, every ping interval, lists the keepalives
    /// to send; contacts that missed too many pings are removed.
    pub fn tick(&self, now: Instant, out: &mut Vec<KeepAlive>) {
        let ping_round = {
            let mut r = lock(&self.rounds);
            if now < r.0 {
                return;
            }
            r.0 = now + Duration::from_secs(1);
            let ping = !self.cfg.ping_interval.is_zero() && now >= r.1;
            if ping {
                r.1 = now + self.cfg.ping_interval;
            }
            ping
        };
        let unix = self.unix(now);
        self.auth.sweep(now, unix);
        let pongs = if ping_round {
            std::mem::take(&mut *lock(&self.pongs))
        } else {
            HashSet::new()
        };
        let mut ev = Vec::new();
        let max_missed = self.cfg.ping_max_missed.max(1);
        let ping_all = self.cfg.ping_all;
        let from = &self.cfg.ping_from;
        let me = self.node.load(Ordering::Relaxed);
        self.loc.for_each(|aor, v| {
            v.retain_mut(|b| {
                // another node's binding is its owner's to expire and ping in the shared
                // store; here it only leaves the cache
                let ours = b.node == me;
                if b.expires_at <= now {
                    if ours {
                        tracing::debug!(aor, contact = %b.uri, "binding expired");
                        ev.push(LocEvent::Removed {
                            aor: aor.into(),
                            id: b.id,
                        });
                    }
                    return false;
                }
                if ours && ping_round && (b.nat || ping_all) {
                    let udp = b.source.transport == Transport::Udp;
                    // `missed` counts pings that went unanswered; its top bit says one is
                    // out now (an answering contact shows none missed between rounds)
                    if pongs.contains(&b.id) {
                        b.missed = 0;
                    } else if b.missed & PING_OUT != 0 {
                        b.missed = (b.missed & !PING_OUT).saturating_add(1).min(!PING_OUT);
                    }
                    if udp && b.missed >= max_missed {
                        tracing::info!(aor, contact = %b.uri, missed = b.missed, "contact stopped answering keepalives: removed");
                        ev.push(LocEvent::Removed {
                            aor: aor.into(),
                            id: b.id,
                        });
                        return false;
                    }
                    if udp {
                        b.missed |= PING_OUT;
                    }
                    out.push(KeepAlive {
                        id: b.id,
                        target: b.source,
                        uri: b.uri.to_string(),
                        from: from.clone(),
                    });
                }
                true
            });
        });
        self.queue(ev);
    }

    /// True while a registration made over connection `flow` lasts: the connection must
    /// stay open whatever its idle timeout.
    pub fn holds_flow(&self, flow: crate::types::FlowId, now: Instant) -> bool {
        let mut g = lock(&self.flows);
        match g.get(&flow) {
            Some(t) if *t > now => true,
            Some(_) => {
                g.remove(&flow);
                false
            }
            None => false,
        }
    }

    /// Keeps connection `flow` open until `until` (a registration a media server granted
    /// to a REGISTER forwarded over it).
    pub fn hold_flow(&self, flow: crate::types::FlowId, until: Instant) {
        let mut g = lock(&self.flows);
        let t = g.entry(flow).or_insert(until);
        *t = (*t).max(until);
    }

    /// Connection `flow` is closed: it holds nothing any more, and the bindings saved over
    /// it are removed (the user re-registers over a new connection).
    pub fn flow_closed(&self, flow: crate::types::FlowId) {
        lock(&self.flows).remove(&flow);
        let Some(aors) = lock(&self.flow_aors).remove(&flow) else {
            return;
        };
        let mut ev = Vec::new();
        for aor in aors {
            self.loc.with(&aor, |v| {
                v.retain(|b| {
                    let gone = b.source.flow == Some(flow);
                    if gone {
                        tracing::info!(aor = &*aor, contact = %b.uri, "connection closed: contact removed");
                        ev.push(LocEvent::Removed {
                            aor: aor.to_string(),
                            id: b.id,
                        });
                    }
                    !gone
                })
            });
        }
        self.queue(ev);
    }

    /// A contact answered its keepalive.
    pub fn on_pong(&self, id: u64) {
        lock(&self.pongs).insert(id);
    }

    /// A keepalive could not be sent (the client's connection is gone): drop the binding.
    pub fn on_ping_failed(&self, id: u64) {
        let mut ev = Vec::new();
        self.loc.for_each(|aor, v| {
            v.retain(|b| {
                let hit = b.id == id;
                if hit {
                    tracing::info!(aor, contact = %b.uri, "contact's connection is gone: removed");
                    ev.push(LocEvent::Removed {
                        aor: aor.into(),
                        id,
                    });
                }
                !hit
            })
        });
        self.queue(ev);
    }
}

/// The Contact lines of a 200 to REGISTER: every live binding, best q first.
fn contact_lines(v: &[Binding], now: Instant) -> Vec<String> {
    let mut live: Vec<&Binding> = v.iter().filter(|b| b.expires_at > now).collect();
    live.sort_by(|a, b| b.q.cmp(&a.q).then(b.updated_unix.cmp(&a.updated_unix)));
    live.iter()
        .map(|b| {
            let left = b.expires_at.saturating_duration_since(now).as_secs();
            if b.q == 1000 {
                format!("Contact: <{}>;expires={left}", b.uri)
            } else {
                format!("Contact: <{}>;expires={left};q={}", b.uri, format_q(b.q))
            }
        })
        .collect()
}

fn normalize_aor(aor: &str) -> String {
    let aor = aor.strip_prefix("sip:").unwrap_or(aor);
    match aor.rsplit_once('@') {
        Some((u, d)) => format!("{u}@{}", d.to_ascii_lowercase()),
        None => aor.to_string(),
    }
}

/// The binding a new contact refreshes: same instance (and reg-id), or same URI.
fn find(v: &[Binding], c: &NewContact<'_>) -> Option<usize> {
    if let Some(inst) = c.instance {
        if let Some(i) = v
            .iter()
            .position(|b| b.instance.as_deref() == Some(inst) && b.reg_id == c.reg_id)
        {
            return Some(i);
        }
    }
    v.iter().position(|b| &*b.uri == c.uri)
}

/// True when the contact URI does not name the address the REGISTER came from (a private
/// address, another port, or a name such as WebRTC's `*.invalid`).
fn contact_nat(uri: &str, src: SocketAddr) -> bool {
    let Ok(u) = Uri::parse(uri) else {
        return true;
    };
    match host_ip(u.host) {
        Some(ip) => {
            let port = u
                .port
                .unwrap_or(if u.scheme == Scheme::Sips { 5061 } else { 5060 });
            ip != src.ip() || port != src.port() || (is_private(ip) && !is_private(src.ip()))
        }
        None => true,
    }
}

/// Where a call to a binding goes: through its Path, to the address it registered from
/// when behind NAT, else to the contact's own address; over its connection when open.
fn destination(b: &Binding) -> Option<Destination> {
    let uri: Arc<str> = b.uri.as_ref().into();
    if let Some(path) = &b.path {
        let first = split_commas(path).next()?;
        let na = NameAddr::parse(first, "Path").ok()?;
        let ip = host_ip(na.uri.host)?;
        let transport = na
            .uri
            .transport()
            .and_then(Transport::parse)
            .unwrap_or(Transport::Udp);
        let port = na.uri.port.unwrap_or(5060);
        return Some(Destination {
            uri,
            transport,
            addr: SocketAddr::new(ip, port),
            flow: None,
            node: None,
            route: Some(path.as_ref().into()),
            name: None,
        });
    }
    let u = Uri::parse(&b.uri).ok()?;
    let contact_transport =
        u.transport()
            .and_then(Transport::parse)
            .unwrap_or(if u.scheme == Scheme::Sips {
                Transport::Tls
            } else {
                Transport::Udp
            });
    let direct = host_ip(u.host).map(|ip| SocketAddr::new(ip, u.port.unwrap_or(5060)));
    let (transport, addr) = match direct {
        Some(a) if !b.nat && contact_transport == b.source.transport => (contact_transport, a),
        _ => (b.source.transport, b.source.addr),
    };
    Some(Destination {
        uri,
        transport,
        addr,
        flow: (transport == b.source.transport)
            .then_some(b.source.flow)
            .flatten(),
        node: None,
        route: None,
        name: None,
    })
}

#[cfg(test)]
mod tests;
