//! Runtime state shared by the nodes of a cluster, on Redis (`[cluster]`): the node
//! registry (each node's id claimed while it lives, and its SIP address) and the location
//! table. Every node keeps the whole table in memory, so the SIP path reads memory; a
//! node writes its changes behind (a [`crate::behind::Writer`] with [`LocationJob`]) and
//! publishes them, and every node follows the others' changes ([`follow_location`]).
//!
//! Keys (`P` is `[cluster] key_prefix`):
//! - `P:node:<id>`: the claim of node `<id>` (JSON [`NodeInfo`]), expiring 5 s after its
//!   last heartbeat. A second process with the same id cannot claim it while it lives.
//! - `P:nodes`: hash id → [`NodeInfo`] of every node that ever ran: their SIP addresses
//!   count as this cluster's (a call's route set may name a node that died).
//! - `P:loc:<aor>`: hash binding id → [`LocRecord`] (JSON), expiring with its last binding.
//! - channel `P:loc`: each change as a [`LocMessage`], naming the node that made it.
//! - `P:dlg`: hash dialog id → [`crate::DialogRow`] (JSON); channel `P:dlg`: [`DlgMessage`].
//! - `P:dlgend:<id>`: a dialog ended through another node than its owner (an hour), so the
//!   owner reconciling after a missed message removes it rather than writing it back.
//!   A dialog's owner is the node whose id range its id is in: the owner expires it (BYEs
//!   and the removal); any node ends it on a BYE, and the owner then releases its count.
//!
//! Everything read from Redis is checked as hostile input: a record that does not decode,
//! or whose values are out of bounds, is skipped (logged, counted), never trusted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sip_proxy::dialog::{Dialogs, DlgEvent};
use sip_proxy::registrar::{Binding, LocEvent, Registrar};
use sip_proxy::{FlowId, Target, Transport};

use crate::behind::{Health, WriteFail, SHARED_HEALTH};
use crate::StoreError;

/// How long a node's claim lives without a heartbeat.
pub const CLAIM_TTL: Duration = Duration::from_secs(5);
/// How often a node renews its claim and reads the registry.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long the mark of a dialog ended by another node than its owner is kept (seconds).
const ENDED_MARK_S: u64 = 3600;
/// The longest text field taken from the store (a contact, a path, a User-Agent).
const MAX_FIELD: usize = 4096;
/// The largest change message taken from the channel.
const MAX_MESSAGE: usize = 64 * 1024;

/// A connection to the cluster's Redis.
#[derive(Clone)]
pub struct Shared {
    client: redis::Client,
    con: ConnectionManager,
    prefix: Arc<str>,
    node: u16,
    /// Random per process: tells this process's claim from another's with the same id.
    token: Arc<str>,
    /// Records skipped as malformed.
    bad: Arc<AtomicU64>,
}

/// A node in the registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub node: u16,
    /// Its SIP address (what the other nodes send to and accept from).
    pub address: SocketAddr,
    /// UNIX seconds when it started.
    pub started: u64,
    pub token: String,
    /// How long its claim had left to live when the registry was read, in milliseconds
    /// (0: no claim; not stored).
    #[serde(skip)]
    pub live_ms: u64,
}

/// What a heartbeat found.
#[derive(Debug, PartialEq)]
pub enum Beat {
    /// The claim was ours and is renewed.
    Renewed,
    /// The claim was gone (Redis lost its data, or this node was unreachable longer than
    /// the claim lives): claimed again, and this node's state should be written again.
    Reclaimed,
    /// Another process holds this node's id.
    Taken(Option<NodeInfo>),
}

/// Why a claim failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("cluster node id {node} is held by another live process ({holder}); each node needs its own [cluster] node_id")]
    Taken { node: u16, holder: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A binding as stored in Redis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LocRecord {
    pub id: u64,
    pub uri: String,
    pub q: u16,
    /// UNIX seconds.
    pub expires: u64,
    pub call_id: String,
    pub cseq: u32,
    /// `udp`, `tcp`, `tls`, `ws`, `wss`.
    pub transport: String,
    pub source: SocketAddr,
    /// The connection on the owner node (stream transports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<u64>,
    pub nat: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reg_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub updated: u64,
    pub node: u16,
    /// The owner node's Route to the binding's connection (`<sip:TOKEN@NODE;lr;sbt=tcp>`):
    /// another node sends a request for this binding there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

/// A change on the channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LocMessage {
    /// The node that made it.
    pub n: u16,
    pub aor: String,
    /// A binding saved, or …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved: Option<LocRecord>,
    /// … the id of one removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<u64>,
}

/// A dialog change on the channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DlgMessage {
    /// The node that made it.
    pub n: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved: Option<crate::DialogRow>,
    /// A dialog ended: its id and Call-ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<(u64, String)>,
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError::Shared(e.to_string())
}

/// `P` of the keys: letters, digits, `_`, `-`, `.`, at most 64 (no glob characters, which
/// the scans would read as patterns).
pub fn valid_prefix(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 64
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Shared {
    /// Opens `url` (`redis://`, `rediss://`, `redis+unix://`) and checks that the server
    /// answers within `timeout`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        node: u16,
        timeout: Duration,
    ) -> Result<Shared, StoreError> {
        let shown = crate::engine::redact(url);
        if !valid_prefix(prefix) {
            return Err(StoreError::Shared(format!(
                "key prefix {prefix:?}: use letters, digits, '_', '-' or '.' (at most 64)"
            )));
        }
        let client = redis::Client::open(url).map_err(|e| StoreError::Connect {
            engine: "Redis",
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connect = async {
            let mut con = client.get_connection_manager_with_config(cfg).await?;
            redis::cmd("PING").query_async::<String>(&mut con).await?;
            Ok::<_, redis::RedisError>(con)
        };
        let con = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(StoreError::Connect {
                    engine: "Redis",
                    url: shown,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(StoreError::Connect {
                    engine: "Redis",
                    url: shown,
                    reason: format!("no answer within {} s", timeout.as_secs()),
                })
            }
        };
        let token = format!(
            "{:016x}{:08x}",
            crate::unix_now() ^ random(),
            std::process::id()
        );
        Ok(Shared {
            client,
            con,
            prefix: prefix.into(),
            node,
            token: token.into(),
            bad: Arc::default(),
        })
    }

    pub fn node(&self) -> u16 {
        self.node
    }

    /// Records read from Redis and skipped as malformed, since the start.
    pub fn bad_records(&self) -> u64 {
        self.bad.load(Ordering::Relaxed)
    }

    fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.prefix)
    }

    fn claim_key(&self) -> String {
        self.key(&format!("node:{}", self.node))
    }

    fn info(&self, address: SocketAddr) -> NodeInfo {
        NodeInfo {
            node: self.node,
            address,
            started: crate::unix_now(),
            token: self.token.to_string(),
            live_ms: CLAIM_TTL.as_millis() as u64,
        }
    }

    /// Claims this node's id, waiting up to `wait` for a claim left by a process that
    /// died (it lapses within [`CLAIM_TTL`]); a claim renewed all that time belongs to a
    /// live process: [`ClaimError::Taken`]. Records the node in the registry.
    pub async fn claim(&self, address: SocketAddr, wait: Duration) -> Result<(), ClaimError> {
        let info = self.info(address);
        let json = serde_json::to_string(&info).expect("node info encodes");
        let key = self.claim_key();
        let deadline = Instant::now() + wait;
        let mut con = self.con.clone();
        loop {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&json)
                .arg("NX")
                .arg("PX")
                .arg(CLAIM_TTL.as_millis() as u64)
                .query_async(&mut con)
                .await
                .map_err(err)?;
            if set.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let held: Option<String> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut con)
                    .await
                    .map_err(err)?;
                let holder = held
                    .as_deref()
                    .and_then(|h| serde_json::from_str::<NodeInfo>(h).ok())
                    .map(|h| format!("SIP address {}, started at UNIX {}", h.address, h.started))
                    .unwrap_or_else(|| "unknown".into());
                return Err(ClaimError::Taken {
                    node: self.node,
                    holder,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        redis::cmd("HSET")
            .arg(self.key("nodes"))
            .arg(self.node)
            .arg(&json)
            .query_async::<()>(&mut con)
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Renews the claim (see [`Beat`]).
    pub async fn heartbeat(&self, address: SocketAddr) -> Result<Beat, StoreError> {
        // one round trip, atomic: renew if ours, take it back if it is gone
        const SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[2])
  return {2, ''}
end
if string.find(v, ARGV[1], 1, true) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1, ''}
end
return {3, v}";
        let info = self.info(address);
        let json = serde_json::to_string(&info).expect("node info encodes");
        let mut con = self.con.clone();
        let (code, other): (i64, String) = redis::Script::new(SCRIPT)
            .key(self.claim_key())
            .key(self.key("nodes"))
            .arg(format!("\"token\":\"{}\"", self.token))
            .arg(&json)
            .arg(CLAIM_TTL.as_millis() as u64)
            .arg(self.node)
            .invoke_async(&mut con)
            .await
            .map_err(err)?;
        Ok(match code {
            1 => Beat::Renewed,
            2 => Beat::Reclaimed,
            _ => Beat::Taken(serde_json::from_str(&other).ok()),
        })
    }

    /// Every node that ever registered (malformed entries skipped), each with the time its
    /// id's claim has left to live (0 when none is held).
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let mut con = self.con.clone();
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.key("nodes"))
            .query_async(&mut con)
            .await
            .map_err(err)?;
        let mut nodes: Vec<NodeInfo> = all
            .iter()
            .filter_map(|(_, v)| {
                let n = serde_json::from_str::<NodeInfo>(v).ok();
                if n.is_none() {
                    self.bad.fetch_add(1, Ordering::Relaxed);
                }
                n
            })
            .collect();
        if nodes.is_empty() {
            return Ok(nodes);
        }
        let mut get = redis::pipe();
        for n in &nodes {
            get.cmd("PTTL").arg(self.key(&format!("node:{}", n.node)));
        }
        // -2: no claim; -1: a claim without expiry (not ours to judge: taken as full life);
        // never more than a claim's life (a claim set by hand for a day is not a day's life)
        let ttls: Vec<i64> = get.query_async(&mut con).await.map_err(err)?;
        let full = CLAIM_TTL.as_millis() as i64;
        for (n, t) in nodes.iter_mut().zip(ttls) {
            n.live_ms = match t {
                -1 => full,
                t => t.clamp(0, full),
            } as u64;
        }
        Ok(nodes)
    }

    /// Gives the claim up (a clean stop): another process may take the id at once.
    pub async fn release(&self) {
        const SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.find(v, ARGV[1], 1, true) then return redis.call('DEL', KEYS[1]) end
return 0";
        let mut con = self.con.clone();
        let _ = redis::Script::new(SCRIPT)
            .key(self.claim_key())
            .arg(format!("\"token\":\"{}\"", self.token))
            .invoke_async::<i64>(&mut con)
            .await;
    }

    /// Writes location changes and publishes them, in one pipeline (in order).
    pub async fn write_location(&self, changes: &[LocMessage]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let now = crate::unix_now();
        let channel = self.key("loc");
        let mut p = redis::pipe();
        for c in changes {
            let key = self.key(&format!("loc:{}", c.aor));
            if let Some(r) = &c.saved {
                let json = serde_json::to_string(r).expect("record encodes");
                let ttl = r.expires.saturating_sub(now).max(1);
                p.cmd("HSET").arg(&key).arg(r.id).arg(&json).ignore();
                // the key lives as long as its longest binding
                p.cmd("EXPIRE").arg(&key).arg(ttl).arg("NX").ignore();
                p.cmd("EXPIRE").arg(&key).arg(ttl).arg("GT").ignore();
            }
            if let Some(id) = c.removed {
                p.cmd("HDEL").arg(&key).arg(id).ignore();
            }
            let msg = serde_json::to_string(c).expect("message encodes");
            p.cmd("PUBLISH").arg(&channel).arg(msg).ignore();
        }
        let mut con = self.con.clone();
        p.query_async::<()>(&mut con).await.map_err(err)
    }

    /// Writes dialog changes and publishes them, in one pipeline (in order).
    pub async fn write_dialogs(&self, changes: &[DlgMessage]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let (key, channel) = (self.key("dlg"), self.key("dlg"));
        let mut p = redis::pipe();
        for c in changes {
            if let Some(r) = &c.saved {
                let json = serde_json::to_string(r).expect("dialog row encodes");
                p.cmd("HSET").arg(&key).arg(r.dlg_id).arg(json).ignore();
            }
            if let Some((id, _)) = &c.removed {
                p.cmd("HDEL").arg(&key).arg(id).ignore();
                if sip_proxy::id_range(*id) != u64::from(self.node) {
                    // another node's call ended here: its owner, if it misses the message,
                    // finds this when it reconciles (and does not write the call back)
                    p.cmd("SET")
                        .arg(self.key(&format!("dlgend:{id}")))
                        .arg(self.node)
                        .arg("EX")
                        .arg(ENDED_MARK_S)
                        .ignore();
                }
            }
            let msg = serde_json::to_string(c).expect("message encodes");
            p.cmd("PUBLISH").arg(&channel).arg(msg).ignore();
        }
        let mut con = self.con.clone();
        p.query_async::<()>(&mut con).await.map_err(err)
    }

    /// Every dialog in the store; malformed ones are skipped (counted), and those past
    /// their time (their owner died) are deleted.
    pub async fn load_dialogs(&self) -> Result<Vec<crate::DialogRow>, StoreError> {
        let mut con = self.con.clone();
        let key = self.key("dlg");
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut con)
            .await
            .map_err(err)?;
        let now = crate::unix_now() as i64;
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for (id, v) in all {
            match serde_json::from_str::<crate::DialogRow>(&v) {
                Ok(r) if r.timeout <= now => stale.push(id),
                Ok(r) => out.push(r),
                Err(e) => {
                    self.bad.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(id, error = %e, "malformed dialog in Redis skipped");
                }
            }
        }
        if !stale.is_empty() {
            let _ = redis::cmd("HDEL")
                .arg(&key)
                .arg(&stale)
                .query_async::<()>(&mut con)
                .await;
        }
        Ok(out)
    }

    /// Which of `ids` (dialogs) another node has marked ended.
    pub async fn ended_marks(&self, ids: &[u64]) -> Result<Vec<bool>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut get = redis::cmd("MGET");
        for id in ids {
            get.arg(self.key(&format!("dlgend:{id}")));
        }
        let mut con = self.con.clone();
        let v: Vec<Option<String>> = get.query_async(&mut con).await.map_err(err)?;
        Ok(v.into_iter().map(|m| m.is_some()).collect())
    }

    /// Every binding in the store, as (AOR, record); malformed ones are skipped (counted).
    pub async fn load_location(&self) -> Result<Vec<(String, LocRecord)>, StoreError> {
        let mut con = self.con.clone();
        let pattern = self.key("loc:*");
        let strip = self.key("loc:");
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .map_err(err)?;
            if !keys.is_empty() {
                let mut p = redis::pipe();
                for k in &keys {
                    p.cmd("HVALS").arg(k);
                }
                let vals: Vec<Vec<String>> = p.query_async(&mut con).await.map_err(err)?;
                for (k, vs) in keys.iter().zip(vals) {
                    let aor = k.strip_prefix(&strip).unwrap_or(k);
                    for v in vs {
                        match serde_json::from_str::<LocRecord>(&v) {
                            Ok(r) => out.push((aor.to_string(), r)),
                            Err(e) => {
                                self.bad.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(key = %k, error = %e, "malformed binding in Redis skipped");
                            }
                        }
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(out)
    }
}

fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::unix_now());
    h.finish()
}

/// A binding as a record; `route`: the owner's Route to its connection.
pub fn record(b: &Binding, route: Option<String>) -> LocRecord {
    LocRecord {
        id: b.id,
        uri: b.uri.to_string(),
        q: b.q,
        expires: b.expires_unix,
        call_id: b.call_id.to_string(),
        cseq: b.cseq,
        transport: b.source.transport.uri_param().unwrap_or("udp").into(),
        source: b.source.addr,
        flow: b.source.flow,
        nat: b.nat,
        path: b.path.as_deref().map(Into::into),
        instance: b.instance.as_deref().map(Into::into),
        reg_id: b.reg_id,
        user_agent: b.user_agent.as_deref().map(Into::into),
        updated: b.updated_unix,
        node: b.node,
        route,
    }
}

/// A record back as a binding, seen from node `me`: another node's binding over a
/// connection is reached through that node (its Route goes first in the Path).
pub fn binding(r: &LocRecord, me: u16, now: Instant) -> Result<Binding, String> {
    let long = |s: &str| s.len() > MAX_FIELD;
    if r.id == 0 || r.uri.is_empty() || long(&r.uri) || long(&r.call_id) {
        return Err("empty or oversized id, contact or Call-ID".into());
    }
    if [&r.path, &r.instance, &r.user_agent, &r.route]
        .iter()
        .any(|f| f.as_deref().is_some_and(long))
    {
        return Err("oversized path, instance, User-Agent or route".into());
    }
    if sip_wire::Uri::parse(&r.uri).is_err() {
        return Err(format!("contact {:?} is not a SIP URI", r.uri));
    }
    let transport =
        Transport::parse(&r.transport).ok_or_else(|| format!("transport {:?}", r.transport))?;
    let mut path = r.path.clone().filter(|p| !p.is_empty());
    let mut flow = r.flow;
    if r.node != me {
        flow = None;
        if transport != Transport::Udp {
            let route = r
                .route
                .as_deref()
                .ok_or("a connection's binding without its node's route")?;
            path = Some(match path {
                Some(p) => format!("{route}, {p}"),
                None => route.to_string(),
            });
        }
    }
    Ok(Binding {
        id: r.id,
        uri: r.uri.as_str().into(),
        q: r.q.min(1000),
        expires_at: now,
        expires_unix: r.expires,
        call_id: r.call_id.as_str().into(),
        cseq: r.cseq,
        source: Target {
            transport,
            addr: r.source,
            flow,
        },
        nat: r.nat,
        path: path.map(Into::into),
        instance: r.instance.as_deref().map(Into::into),
        reg_id: r.reg_id,
        user_agent: r.user_agent.as_deref().map(Into::into),
        updated_unix: r.updated,
        node: r.node,
        missed: 0,
    })
}

/// Makes the owner's Route to one of its connections (the core's flow token at the
/// node's address).
pub type RouteFn = Arc<dyn Fn(FlowId, Transport) -> String + Send + Sync>;

/// The location table's changes, written to Redis and published.
pub struct LocationJob {
    pub reg: Arc<Registrar>,
    pub shared: Shared,
    pub route: RouteFn,
}

impl LocationJob {
    fn message(&self, e: &LocEvent) -> LocMessage {
        match e {
            LocEvent::Saved { aor, binding } => {
                let route = match (binding.source.transport, binding.source.flow) {
                    (Transport::Udp, _) | (_, None) => None,
                    (t, Some(f)) => Some((self.route)(f, t)),
                };
                LocMessage {
                    n: self.shared.node,
                    aor: aor.clone(),
                    saved: Some(record(binding, route)),
                    removed: None,
                }
            }
            LocEvent::Removed { aor, id } => LocMessage {
                n: self.shared.node,
                aor: aor.clone(),
                saved: None,
                removed: Some(*id),
            },
        }
    }
}

impl crate::behind::Job for LocationJob {
    type Item = LocEvent;
    const TABLE: &'static str = "redis:location";
    fn take(&self) -> Vec<LocEvent> {
        self.reg.take_events()
    }
    async fn write(&self, items: &[LocEvent]) -> Result<usize, WriteFail> {
        let msgs: Vec<LocMessage> = items.iter().map(|e| self.message(e)).collect();
        self.shared
            .write_location(&msgs)
            .await
            .map_err(|e| WriteFail {
                message: e.to_string(),
                refused: false,
            })?;
        Ok(0)
    }
    fn health(&self) -> &'static Health {
        &SHARED_HEALTH
    }
}

/// Loads every binding into the registrar; returns (held, skipped).
pub async fn load_into(shared: &Shared, reg: &Registrar) -> Result<(usize, usize), StoreError> {
    let now = Instant::now();
    let all = shared.load_location().await?;
    let (mut held, mut skipped) = (0, 0);
    for (aor, r) in &all {
        match binding(r, shared.node, now) {
            Ok(b) => {
                reg.apply_remote(now, aor, b);
                held += 1;
            }
            Err(why) => {
                skipped += 1;
                shared.bad.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(aor, id = r.id, reason = %why, "binding in Redis skipped");
            }
        }
    }
    Ok((held, skipped))
}

/// A change read from a channel: bounded in size and decoded, or counted and skipped.
fn decode<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    payload: &[u8],
    what: &str,
) -> Option<T> {
    let r = match payload.len() > MAX_MESSAGE {
        true => Err(format!("{} bytes, more than {MAX_MESSAGE}", payload.len())),
        false => serde_json::from_slice(payload).map_err(|e| e.to_string()),
    };
    r.inspect_err(|e| {
        shared.bad.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(table = what, error = %e, "malformed change on the cluster channel skipped");
    })
    .ok()
}

/// Applies one message from the channel (not this node's own).
pub fn apply_message(shared: &Shared, reg: &Registrar, payload: &[u8]) -> bool {
    let Some(m) = decode::<LocMessage>(shared, payload, "location") else {
        return false;
    };
    if m.n == shared.node || m.aor.len() > MAX_FIELD {
        return false;
    }
    if let Some(r) = &m.saved {
        match binding(r, shared.node, Instant::now()) {
            Ok(b) => reg.apply_remote(Instant::now(), &m.aor, b),
            Err(why) => {
                shared.bad.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(aor = %m.aor, reason = %why, "location change on the cluster channel skipped");
                return false;
            }
        }
    }
    if let Some(id) = m.removed {
        reg.remove_remote(&m.aor, id);
    }
    true
}

/// Whether this node follows the channels now (subscribed and caught up).
pub static FOLLOWING: AtomicBool = AtomicBool::new(false);

/// What a node keeps current from the other nodes' changes.
#[derive(Clone, Default)]
pub struct Followers {
    pub location: Option<Arc<Registrar>>,
    pub dialogs: Option<DialogFollower>,
}

/// The dialog table and what must hear of a call another node ended (this node's router,
/// which may have counted it).
#[derive(Clone)]
pub struct DialogFollower {
    pub dialogs: Arc<Dialogs>,
    pub router: Arc<dyn sip_proxy::Router>,
}

/// Loads every dialog into the table; returns (held, skipped). `restored`: called for each
/// dialog (to count its call: every node counts every call of the cluster, so a balancer's
/// capacity is the cluster's).
pub async fn load_dialogs_into(
    shared: &Shared,
    f: &DialogFollower,
    restored: &(dyn Fn(&sip_proxy::dialog::Dialog) + Sync),
) -> Result<(usize, usize), StoreError> {
    let rows = shared.load_dialogs().await?;
    let (now, unix) = (Instant::now(), crate::unix_now());
    let (mut held, mut skipped) = (0, 0);
    for r in &rows {
        match crate::dialog_rows::dialog(r, now, unix) {
            Ok(d) => {
                restored(&d);
                f.dialogs.apply_remote(d);
                held += 1;
            }
            Err(why) => {
                skipped += 1;
                shared.bad.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(id = r.dlg_id, reason = %why, "dialog in Redis skipped");
            }
        }
    }
    Ok((held, skipped))
}

/// Brings the dialog table level with the store after (re)subscribing, when messages may
/// have been missed (Redis restarted or unreachable for a while): another node's dialogs the
/// store no longer has are dropped (their counts released), this node's are settled
/// ([`settle_own_dialogs`]), dialogs this node does not hold are learned and counted.
/// Returns the dialogs held after.
pub async fn reconcile_dialogs(shared: &Shared, f: &DialogFollower) -> Result<usize, StoreError> {
    let rows = shared.load_dialogs().await?;
    let ids: std::collections::HashSet<u64> = rows.iter().map(|r| r.dlg_id as u64).collect();
    let r = f.dialogs.reconcile(&ids);
    for d in &r.dropped {
        f.router.on_call_ended(d.call_id());
    }
    let (ended, rewritten) = settle_own_dialogs(shared, f, r.own).await?;
    let (now, unix) = (Instant::now(), crate::unix_now());
    let mut learned = 0;
    for row in rows
        .iter()
        .filter(|row| r.unknown.binary_search(&(row.dlg_id as u64)).is_ok())
    {
        match crate::dialog_rows::dialog(row, now, unix) {
            Ok(d) => {
                f.router
                    .restore_call(d.call_id(), d.node.as_deref(), d.caller.target.addr);
                f.dialogs.apply_remote(d);
                learned += 1;
            }
            Err(why) => {
                shared.bad.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(id = row.dlg_id, reason = %why, "dialog in Redis skipped");
            }
        }
    }
    if !r.dropped.is_empty() || ended + rewritten + learned > 0 {
        tracing::info!(
            dropped = r.dropped.len(),
            ended_elsewhere = ended,
            written_again = rewritten,
            learned,
            "dialogs reconciled with Redis"
        );
    }
    Ok(f.dialogs.counts().0)
}

/// This node's saved dialogs, each given as (id, Call-ID, whether the store has it): the
/// ones another node marked ended are ended here too (count released, record removed),
/// the others the store lacks are written again. Called when the node subscribes again
/// and when Redis had lost its data ([`Dialogs::own_saved`], none in the store), so a call
/// ended through another node while this one could not hear is not kept, or written back,
/// for ever. Returns (ended, written again).
pub async fn settle_own_dialogs(
    shared: &Shared,
    f: &DialogFollower,
    own: Vec<(u64, Box<str>, bool)>,
) -> Result<(usize, usize), StoreError> {
    let (mut ended, mut rewritten) = (0, 0);
    for chunk in own.chunks(1000) {
        let ids: Vec<u64> = chunk.iter().map(|o| o.0).collect();
        let marks = shared.ended_marks(&ids).await?;
        for ((id, call_id, in_store), marked) in chunk.iter().zip(marks) {
            if marked {
                if let Some(d) = f.dialogs.remove_remote(call_id, *id) {
                    f.router.on_call_ended(d.call_id());
                    f.dialogs.forget(*id, call_id);
                    ended += 1;
                }
            } else if !in_store {
                f.dialogs.resave(call_id, *id);
                rewritten += 1;
            }
        }
    }
    Ok((ended, rewritten))
}

/// Applies one dialog message from the channel (not this node's own).
pub fn apply_dialog_message(shared: &Shared, f: &DialogFollower, payload: &[u8]) -> bool {
    let Some(m) = decode::<DlgMessage>(shared, payload, "dialog") else {
        return false;
    };
    if m.n == shared.node {
        return false;
    }
    if let Some(r) = &m.saved {
        match crate::dialog_rows::dialog(r, Instant::now(), crate::unix_now()) {
            Ok(d) => {
                // counted here too (once: a refresh of a counted call changes nothing)
                f.router
                    .restore_call(d.call_id(), d.node.as_deref(), d.caller.target.addr);
                f.dialogs.apply_remote(d);
            }
            Err(why) => {
                shared.bad.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason = %why, "dialog change on the cluster channel skipped");
                return false;
            }
        }
    }
    if let Some((id, call_id)) = &m.removed {
        if let Some(d) = f.dialogs.remove_remote(call_id, *id) {
            // ended through another node: the call this node counted is over
            f.router.on_call_ended(d.call_id());
            if sip_proxy::id_range(*id) == u64::from(shared.node) {
                // after any write of it still queued here
                f.dialogs.forget(*id, call_id);
            }
            tracing::debug!(
                call_id = d.call_id(),
                id,
                node = m.n,
                "dialog ended through another node"
            );
        }
    }
    true
}

/// Follows the other nodes' changes for as long as the process runs: subscribes, then
/// reads the whole tables (so nothing published before the subscription is missed), then
/// applies each change. When the subscription drops (Redis restarted, the network failed),
/// it starts again after a second and reads the tables again (a node rejoining catches up).
/// Run it under the supervisor.
pub async fn follow(shared: Shared, f: Followers) {
    let (loc, dlg) = (shared.key("loc"), shared.key("dlg"));
    loop {
        let run = async {
            let mut ps = shared.client.get_async_pubsub().await.map_err(err)?;
            if f.location.is_some() {
                ps.subscribe(&loc).await.map_err(err)?;
            }
            if f.dialogs.is_some() {
                ps.subscribe(&dlg).await.map_err(err)?;
            }
            let mut held = 0;
            if let Some(reg) = &f.location {
                held += load_into(&shared, reg).await?.0;
            }
            if let Some(d) = &f.dialogs {
                held += reconcile_dialogs(&shared, d).await?;
            }
            FOLLOWING.store(true, Ordering::Relaxed);
            tracing::info!(
                held,
                "cluster state followed (tables read, changes subscribed)"
            );
            let mut stream = ps.on_message();
            while let Some(msg) = stream.next().await {
                let channel = msg.get_channel_name();
                if channel == loc {
                    if let Some(reg) = &f.location {
                        apply_message(&shared, reg, msg.get_payload_bytes());
                    }
                } else if channel == dlg {
                    if let Some(d) = &f.dialogs {
                        apply_dialog_message(&shared, d, msg.get_payload_bytes());
                    }
                }
            }
            Ok::<_, StoreError>(())
        };
        let r = run.await;
        if FOLLOWING.swap(false, Ordering::Relaxed) {
            match &r {
                Ok(()) => tracing::warn!("cluster channel closed: following again"),
                Err(e) => tracing::warn!(error = %e, "cluster channel lost: following again"),
            }
        } else if let Err(e) = &r {
            tracing::debug!(error = %e, "cluster channel not reachable yet");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The dialog table's changes, written to Redis and published.
pub struct DialogJob {
    pub dialogs: Arc<Dialogs>,
    pub shared: Shared,
}

impl crate::behind::Job for DialogJob {
    type Item = DlgEvent;
    const TABLE: &'static str = "redis:dialog";
    fn take(&self) -> Vec<DlgEvent> {
        self.dialogs.take_events()
    }
    async fn write(&self, items: &[DlgEvent]) -> Result<usize, WriteFail> {
        let (now, unix) = (Instant::now(), crate::unix_now());
        let n = self.shared.node;
        let msgs: Vec<DlgMessage> = items
            .iter()
            .map(|e| match e {
                DlgEvent::Saved(d) => DlgMessage {
                    n,
                    saved: Some(crate::dialog_rows::row(d, now, unix)),
                    removed: None,
                },
                DlgEvent::Removed(id, call_id) => DlgMessage {
                    n,
                    saved: None,
                    removed: Some((*id, call_id.to_string())),
                },
            })
            .collect();
        self.shared
            .write_dialogs(&msgs)
            .await
            .map_err(|e| WriteFail {
                message: e.to_string(),
                refused: false,
            })?;
        Ok(0)
    }
    fn health(&self) -> &'static Health {
        &SHARED_HEALTH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(transport: Transport, flow: Option<u64>, node: u16) -> Binding {
        Binding {
            id: 77,
            uri: "sip:alice@10.0.0.5:5060;transport=tcp".into(),
            q: 500,
            expires_at: Instant::now(),
            expires_unix: 1_900_000_000,
            call_id: "call-1".into(),
            cseq: 3,
            source: Target {
                transport,
                addr: "127.0.0.1:40000".parse().unwrap(),
                flow,
            },
            nat: true,
            path: None,
            instance: Some("<urn:uuid:1>".into()),
            reg_id: Some(1),
            user_agent: Some("baresip".into()),
            updated_unix: 1_899_999_000,
            node,
            missed: 0,
        }
    }

    #[test]
    fn a_record_round_trips_through_json() {
        let b = sample(Transport::Tcp, Some(5), 1);
        let r = record(&b, Some("<sip:f5-00@127.0.0.1:5060;lr;sbt=tcp>".into()));
        let json = serde_json::to_string(&r).unwrap();
        let back: LocRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        // seen from its own node: as it was
        let own = binding(&back, 1, Instant::now()).unwrap();
        assert_eq!((own.id, own.q, own.cseq, own.node), (77, 500, 3, 1));
        assert_eq!(own.source.flow, Some(5));
        assert_eq!(own.path, None);
        assert_eq!(own.instance.as_deref(), Some("<urn:uuid:1>"));
    }

    #[test]
    fn another_nodes_connection_is_reached_through_that_node() {
        let route = "<sip:f5-00@127.0.0.1:5060;lr;sbt=tcp>";
        let mut b = sample(Transport::Tcp, Some(5), 1);
        b.path = Some("<sip:edge.example;lr>".into());
        let r = record(&b, Some(route.into()));
        let seen = binding(&r, 2, Instant::now()).unwrap();
        assert_eq!(
            seen.source.flow, None,
            "node 1's flow ids mean nothing on node 2"
        );
        assert_eq!(
            seen.path.as_deref(),
            Some("<sip:f5-00@127.0.0.1:5060;lr;sbt=tcp>, <sip:edge.example;lr>")
        );
        // over UDP any node sends to the address itself
        let r = record(&sample(Transport::Udp, None, 1), None);
        let seen = binding(&r, 2, Instant::now()).unwrap();
        assert_eq!(seen.path, None);
        assert_eq!(seen.source.addr, "127.0.0.1:40000".parse().unwrap());
        // a connection's binding without its node's route cannot be reached: refused
        let r = record(&sample(Transport::Ws, Some(5), 1), None);
        assert!(binding(&r, 2, Instant::now()).is_err());
    }

    #[test]
    fn hostile_records_are_refused() {
        let good = record(&sample(Transport::Udp, None, 1), None);
        let now = Instant::now();
        let cases: Vec<(&str, LocRecord)> = vec![
            (
                "id 0",
                LocRecord {
                    id: 0,
                    ..good.clone()
                },
            ),
            (
                "empty contact",
                LocRecord {
                    uri: String::new(),
                    ..good.clone()
                },
            ),
            (
                "not a URI",
                LocRecord {
                    uri: "http://x y".into(),
                    ..good.clone()
                },
            ),
            (
                "huge contact",
                LocRecord {
                    uri: format!("sip:{}@h", "a".repeat(5000)),
                    ..good.clone()
                },
            ),
            (
                "huge path",
                LocRecord {
                    path: Some("x".repeat(5000)),
                    ..good.clone()
                },
            ),
            (
                "unknown transport",
                LocRecord {
                    transport: "carrier-pigeon".into(),
                    ..good.clone()
                },
            ),
        ];
        for (what, r) in cases {
            assert!(binding(&r, 2, now).is_err(), "{what} was taken");
        }
        assert_eq!(
            binding(
                &LocRecord {
                    q: 60000,
                    ..good.clone()
                },
                2,
                now
            )
            .unwrap()
            .q,
            1000
        );
        // JSON that is not a record at all
        for text in [
            "",
            "{",
            "[]",
            "{\"id\":1}",
            "{\"id\":-1,\"uri\":\"sip:a@b\"}",
            "null",
        ] {
            assert!(
                serde_json::from_str::<LocRecord>(text).is_err(),
                "{text:?} decoded"
            );
        }
    }

    #[test]
    fn changes_encode_one_way_or_the_other() {
        let m = LocMessage {
            n: 3,
            aor: "a@b".into(),
            saved: None,
            removed: Some(9),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"n":3,"aor":"a@b","removed":9}"#);
        assert_eq!(serde_json::from_str::<LocMessage>(&json).unwrap(), m);
        assert!(valid_prefix("sb") && valid_prefix("prod-eu.1"));
        for bad in ["", "a*", "a?", "a[b]", "a b", "a:b", &"x".repeat(65)] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }

    /// Against a real Redis when `SB_TEST_REDIS_URL` names one (tests/storage.sh starts it):
    /// claims, heartbeats, a flush, writes, reads and following another node's changes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_a_real_redis() {
        let Ok(url) = std::env::var("SB_TEST_REDIS_URL") else {
            return;
        };
        let t = Duration::from_secs(2);
        let prefix = format!("sbt{}", std::process::id());
        let a = Shared::connect(&url, &prefix, 1, t).await.unwrap();
        let b = Shared::connect(&url, &prefix, 2, t).await.unwrap();
        let a_addr: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let b_addr: SocketAddr = "127.0.0.1:5062".parse().unwrap();
        a.claim(a_addr, Duration::ZERO).await.unwrap();
        b.claim(b_addr, Duration::ZERO).await.unwrap();
        // a second process with node 1's id is refused, naming the holder
        let dup = Shared::connect(&url, &prefix, 1, t).await.unwrap();
        match dup
            .claim(
                "127.0.0.1:5064".parse().unwrap(),
                Duration::from_millis(300),
            )
            .await
        {
            Err(ClaimError::Taken { node: 1, holder }) => {
                assert!(holder.contains("127.0.0.1:5060"), "{holder}")
            }
            other => panic!("a live node's id was claimed: {other:?}"),
        }
        assert!(
            matches!(dup.heartbeat(a_addr).await.unwrap(), Beat::Taken(Some(ref h)) if h.address == a_addr),
            "a heartbeat under a live node's id must see it taken"
        );
        assert_eq!(a.heartbeat(a_addr).await.unwrap(), Beat::Renewed);
        let mut nodes: Vec<u16> = a.nodes().await.unwrap().iter().map(|n| n.node).collect();
        nodes.sort();
        assert_eq!(nodes, [1, 2]);
        assert!(a.nodes().await.unwrap().iter().all(|n| n.live_ms > 0));
        // a node whose claim is gone is in the registry still, not live
        dup.release().await; // not its claim: nothing happens
        assert!(a.nodes().await.unwrap().iter().all(|n| n.live_ms > 0));

        // node 2 follows node 1's changes into its registrar
        let reg_b = Arc::new(Registrar::new(
            Default::default(),
            (Instant::now(), crate::unix_now()),
        ));
        reg_b.set_node(2);
        let follow = tokio::spawn(follow(
            b.clone(),
            Followers {
                location: Some(reg_b.clone()),
                dialogs: None,
            },
        ));
        for _ in 0..50 {
            if FOLLOWING.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut bind = sample(Transport::Udp, None, 1);
        bind.expires_unix = crate::unix_now() + 300;
        let saved = LocMessage {
            n: 1,
            aor: "alice@example.com".into(),
            saved: Some(record(&bind, None)),
            removed: None,
        };
        a.write_location(&[saved]).await.unwrap();
        let now = Instant::now();
        let mut seen = 0;
        for _ in 0..50 {
            seen = reg_b.show("alice@example.com", now).len();
            if seen == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(seen, 1, "node 2 did not follow node 1's registration");
        let all = b.load_location().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "alice@example.com");
        // a malformed record and message are skipped and counted
        let mut con = a.con.clone();
        redis::cmd("HSET")
            .arg(format!("{prefix}:loc:x@y"))
            .arg(1)
            .arg("{nope")
            .query_async::<()>(&mut con)
            .await
            .unwrap();
        redis::cmd("PUBLISH")
            .arg(format!("{prefix}:loc"))
            .arg("[1,2")
            .query_async::<()>(&mut con)
            .await
            .unwrap();
        let before = b.bad_records();
        assert_eq!(b.load_location().await.unwrap().len(), 1);
        assert!(b.bad_records() > before);
        // removal
        let removed = LocMessage {
            n: 1,
            aor: "alice@example.com".into(),
            saved: None,
            removed: Some(bind.id),
        };
        a.write_location(&[removed]).await.unwrap();
        for _ in 0..50 {
            if reg_b.show("alice@example.com", now).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            reg_b.show("alice@example.com", now).is_empty(),
            "the removal did not reach node 2"
        );
        // the data lost: the next heartbeat claims again and says so
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut con)
            .await
            .unwrap();
        keys.sort();
        redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut con)
            .await
            .unwrap();
        assert_eq!(a.heartbeat(a_addr).await.unwrap(), Beat::Reclaimed);
        assert_eq!(a.heartbeat(a_addr).await.unwrap(), Beat::Renewed);
        // a clean stop gives the id up at once; the registry keeps it, not live
        a.release().await;
        let reg = a.nodes().await.unwrap();
        assert!(reg.iter().any(|n| n.node == 1 && n.live_ms == 0), "{reg:?}");
        dup.claim("127.0.0.1:5064".parse().unwrap(), Duration::ZERO)
            .await
            .unwrap();
        // a dialog of node 1's ended through node 2 is marked ended (node 1 may miss the
        // message); one node 2 ends of its own is not
        let own = 2u64 << sip_proxy::ID_COUNTER_BITS | 7;
        let foreign = 1u64 << sip_proxy::ID_COUNTER_BITS | 7;
        let ended = |id: u64| DlgMessage {
            n: 2,
            saved: None,
            removed: Some((id, "c".into())),
        };
        b.write_dialogs(&[ended(own), ended(foreign)])
            .await
            .unwrap();
        assert_eq!(
            b.ended_marks(&[foreign, own, foreign + 1]).await.unwrap(),
            [true, false, false]
        );
        assert!(b.ended_marks(&[]).await.unwrap().is_empty());
        follow.abort();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut con)
            .await
            .unwrap();
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut con)
                .await
                .unwrap();
        }
    }
}
