//! Dialog tracking for INVITE dialogs (OpenSIPS' `dialog` module): early and confirmed
//! dialogs keyed by Call-ID and the caller's tag, the legs needed to end a call from the
//! middle (BYE to both sides on lifetime expiry or on request), validation of in-dialog
//! requests, and counts per media server. Sans-IO: the core passes the time and sends what
//! [`Dialogs::sweep`] and [`Dialogs::end`] return.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::types::{Target, Transport};

/// Dialog settings.
#[derive(Debug, Clone)]
pub struct DialogConfig {
    /// The longest a dialog may live (OpenSIPS `default_timeout`; 6 h).
    pub lifetime: Duration,
    /// A Session-Expires shorter than the lifetime bounds it (refreshed by re-INVITE/UPDATE).
    pub honour_session_expires: bool,
    /// The User-Agent of the BYEs the proxy sends (empty: none).
    pub user_agent: Arc<str>,
    /// The secret key of the Call-ID/tag hash, drawn at random by the driver (the core
    /// draws no random numbers), so callers cannot choose Call-IDs that collide.
    pub hash_key: (u64, u64),
}

impl Default for DialogConfig {
    fn default() -> Self {
        DialogConfig {
            lifetime: Duration::from_secs(6 * 3600),
            honour_session_expires: true,
            user_agent: crate::build::SERVER.into(),
            hash_key: (0, 0),
        }
    }
}

/// Where a dialog stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    Early,
    Confirmed,
}

impl DialogState {
    pub fn as_str(self) -> &'static str {
        match self {
            DialogState::Early => "early",
            DialogState::Confirmed => "confirmed",
        }
    }
}

/// Strings packed in one allocation, read by index. A dialog's ten strings take one heap
/// block instead of ten, so a long-lived dialog pins at most one allocator page among the
/// freed transactions of the burst it arrived in (10,000 dialogs cost 6.4 KB of RSS each with
/// ten blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed<const N: usize> {
    text: Box<str>,
    ends: [u32; N],
}

impl<const N: usize> Packed<N> {
    pub fn new(parts: [&str; N]) -> Self {
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0u32; N];
        for (i, p) in parts.iter().enumerate() {
            text.push_str(p);
            ends[i] = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        Packed {
            text: text.into_boxed_str(),
            ends,
        }
    }

    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..self.ends[i] as usize).unwrap_or("")
    }

    /// A copy with some parts replaced.
    pub fn with(&self, changes: &[(usize, &str)]) -> Self {
        let mut parts: [&str; N] = std::array::from_fn(|i| self.get(i));
        for &(i, v) in changes {
            parts[i] = v;
        }
        Packed::new(parts)
    }

    /// Bytes held on the heap.
    pub fn heap_len(&self) -> usize {
        self.text.len()
    }
}

/// The accessors a dialog and its call record share: both keep their strings in a `text:
/// Packed` in the [`field`] layout.
macro_rules! call_text_accessors {
    () => {
        pub fn call_id(&self) -> &str {
            self.text.get($crate::dialog::field::CALL_ID)
        }
        pub fn from_tag(&self) -> &str {
            self.text.get($crate::dialog::field::FROM_TAG)
        }
        pub fn to_tag(&self) -> &str {
            self.text.get($crate::dialog::field::TO_TAG)
        }
        /// The Request-URI of the initial INVITE.
        pub fn ruri(&self) -> &str {
            self.text.get($crate::dialog::field::RURI)
        }
    };
}
pub(crate) use call_text_accessors;

/// Indexes of a dialog's strings in its [`Packed`] text (also the layout of a CDR's).
pub mod field {
    pub const CALL_ID: usize = 0;
    pub const FROM_TAG: usize = 1;
    pub const TO_TAG: usize = 2;
    pub const CALLER_PARTY: usize = 3;
    pub const CALLER_CONTACT: usize = 4;
    pub const CALLER_ROUTE: usize = 5;
    pub const CALLEE_PARTY: usize = 6;
    pub const CALLEE_CONTACT: usize = 7;
    pub const CALLEE_ROUTE: usize = 8;
    pub const RURI: usize = 9;
    pub const COUNT: usize = 10;
}

/// One side of a dialog as the core learns it (borrowed from the messages).
#[derive(Debug, Clone, Copy)]
pub struct Leg<'a> {
    /// The From (caller) or To (callee) header value, with its tag.
    pub party: &'a str,
    /// Its Contact URI (where a BYE goes).
    pub contact: &'a str,
    /// The Route header value a request from the proxy to this side carries (the route set
    /// of the proxies between us and it; empty when none).
    pub route: &'a str,
    /// How to reach it: the caller's source, the callee's branch target.
    pub target: Target,
    /// The highest CSeq it sent.
    pub cseq: u32,
}

/// How to reach one side of a tracked dialog, and its CSeq.
#[derive(Debug, Clone, Copy)]
pub struct Side {
    pub target: Target,
    /// The highest CSeq it sent.
    pub cseq: u32,
}

/// One tracked dialog.
#[derive(Debug, Clone)]
pub struct Dialog {
    pub id: u64,
    text: Packed<{ field::COUNT }>,
    pub state: DialogState,
    pub caller: Side,
    pub callee: Side,
    /// The media server (destination URI) the call went to.
    pub node: Option<Arc<str>>,
    pub created_unix: u64,
    pub answered_unix: Option<u64>,
    pub expires_at: Instant,
    pub session_expires: Option<u32>,
    /// Persistence: a row exists for it (`saved`); it changed since (`dirty`, at
    /// `changed_at`).
    saved: bool,
    dirty: bool,
    changed_at: Instant,
    /// A hash of the answer's To, Contact and Record-Route text and where it came from
    /// ([`Dialogs::fingerprint`]): the same again needs no parsing.
    callee_print: u64,
}

/// Everything a dialog is made of (for [`Dialog::new`]).
#[derive(Debug, Clone)]
pub struct DialogInit<'a> {
    pub id: u64,
    pub call_id: &'a str,
    pub from_tag: &'a str,
    pub to_tag: &'a str,
    /// The Request-URI of the initial INVITE (for the CDR).
    pub ruri: &'a str,
    pub state: DialogState,
    pub caller: Leg<'a>,
    pub callee: Leg<'a>,
    pub node: Option<Arc<str>>,
    pub created_unix: u64,
    pub answered_unix: Option<u64>,
    pub expires_at: Instant,
    pub session_expires: Option<u32>,
}

impl Dialog {
    pub fn new(i: DialogInit<'_>) -> Dialog {
        Dialog {
            id: i.id,
            text: Packed::new([
                i.call_id,
                i.from_tag,
                i.to_tag,
                i.caller.party,
                i.caller.contact,
                i.caller.route,
                i.callee.party,
                i.callee.contact,
                i.callee.route,
                i.ruri,
            ]),
            state: i.state,
            caller: Side {
                target: i.caller.target,
                cseq: i.caller.cseq,
            },
            callee: Side {
                target: i.callee.target,
                cseq: i.callee.cseq,
            },
            node: i.node,
            created_unix: i.created_unix,
            answered_unix: i.answered_unix,
            expires_at: i.expires_at,
            session_expires: i.session_expires,
            saved: false,
            dirty: i.state == DialogState::Confirmed,
            changed_at: i.expires_at, // set by the table when it takes the dialog
            callee_print: 0,
        }
    }

    call_text_accessors!();

    /// The caller's From header value (with its tag).
    pub fn caller_party(&self) -> &str {
        self.text.get(field::CALLER_PARTY)
    }
    pub fn caller_contact(&self) -> &str {
        self.text.get(field::CALLER_CONTACT)
    }
    /// The Route value toward the caller (empty when no proxy sits between).
    pub fn caller_route(&self) -> &str {
        self.text.get(field::CALLER_ROUTE)
    }
    /// The callee's To header value (with its tag).
    pub fn callee_party(&self) -> &str {
        self.text.get(field::CALLEE_PARTY)
    }
    pub fn callee_contact(&self) -> &str {
        self.text.get(field::CALLEE_CONTACT)
    }
    /// The Route value toward the callee (empty when no proxy sits between).
    pub fn callee_route(&self) -> &str {
        self.text.get(field::CALLEE_ROUTE)
    }
    /// The packed strings (a CDR takes a copy).
    pub fn text(&self) -> &Packed<{ field::COUNT }> {
        &self.text
    }
    /// Bytes this dialog holds on the heap besides its table slot.
    pub fn heap_len(&self) -> usize {
        self.text.heap_len()
    }
}

/// Why a dialog ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    CallerBye,
    CalleeBye,
    Lifetime,
    Management,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::CallerBye => "caller",
            Ending::CalleeBye => "callee",
            Ending::Lifetime => "lifetime",
            Ending::Management => "management",
        }
    }
}

/// A BYE the proxy sends itself.
#[derive(Debug, Clone)]
pub struct ByeOut {
    pub target: Target,
    pub data: String,
}

/// A hash of Call-ID and a tag: lookups need no allocation. A match is confirmed against
/// the dialog's own Call-ID and tag (`matches`), so a collision is never taken for a hit.
/// The hash is SipHash-1-3 keyed with the driver's secret (`DialogConfig::hash_key`), so
/// callers cannot choose Call-IDs that collide.
type Key = u64;

/// The tables' own hasher passes the key through: it is already a keyed hash, and hashing
/// it again cost as much as the lookup.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // only u64 keys are hashed here; anything else still spreads
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Builds SipHash-1-3 hashers with a secret written ahead of the data.
#[derive(Debug, Clone, Copy)]
struct SecretKeys(u64, u64);

impl std::hash::BuildHasher for SecretKeys {
    type Hasher = std::hash::DefaultHasher;
    fn build_hasher(&self) -> Self::Hasher {
        use std::hash::Hasher;
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(self.0);
        h.write_u64(self.1);
        h
    }
}

fn matches(d: &Dialog, call_id: &str, from_tag: &str) -> bool {
    d.call_id() == call_id && d.from_tag() == from_tag
}

/// How long another node's expired dialog is held for its owner's removal before this node
/// drops it on its own ([`Dialogs::sweep`]).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(30);

/// How long (and how many) of another node's dialogs ended here are remembered.
const ENDED_HERE_FOR: Duration = Duration::from_secs(600);
const ENDED_HERE_MAX: usize = 100_000;

/// What [`Dialogs::reconcile`] found: the table against the store's ids.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Another node's dialogs the store no longer has (ended, or lost with the store's
    /// data): removed here; their calls are over for this node.
    pub dropped: Vec<Dialog>,
    /// This node's (or an adopted node's) saved dialogs, each with whether the store has
    /// it: another node may have ended one (its removal missed), or the store lost it. The
    /// caller asks ([`Dialogs::own_saved`]).
    pub own: Vec<(u64, Box<str>, bool)>,
    /// Store ids this node should learn: not its own, not held, not ended here.
    pub unknown: Vec<u64>,
}

/// A change to persist (write-behind): a confirmed dialog is saved once it has lived a
/// second (in a cluster: at the next sweep), and again after a refresh; an ended one that
/// was saved is removed. Short calls
/// never produce an event: the sweep finds what is due, so the call path queues nothing.
#[derive(Debug, Clone)]
pub enum DlgEvent {
    Saved(Box<Dialog>),
    /// Its id and Call-ID.
    Removed(u64, Box<str>),
}

/// One shard of the dialog table.
type Table = HashMap<Key, Box<Dialog>, std::hash::BuildHasherDefault<KeyHasher>>;

/// The dialog table, sharded by Call-ID.
pub struct Dialogs {
    cfg: DialogConfig,
    /// Boxed: a table slot is 16 bytes, so a table's spare room (it grows by doubling) costs
    /// little; inline, the slack was about 250 bytes per dialog.
    shards: Box<[Mutex<Table>]>,
    next_id: AtomicU64,
    /// The first id of this process's range ([`crate::id_range`]).
    id_base: AtomicU64,
    next_sweep: Mutex<Option<Instant>>,
    epoch: (Instant, u64),
    events: Mutex<Vec<DlgEvent>>,
    persist: std::sync::atomic::AtomicBool,
    /// A cluster node: dialogs from another node's id range are held for routing, but
    /// their expiry is their owner's.
    clustered: std::sync::atomic::AtomicBool,
    /// Dead nodes whose dialogs this node expires in their stead (their id ranges).
    adopted: Mutex<Vec<u64>>,
    /// Another node's dialogs this node ended (a cluster), with when: their removal may
    /// still be on its way to the store, so a reload must not take them back.
    ended_here: Mutex<HashMap<u64, Instant>>,
    /// The keys of the Call-ID/tag hash.
    keys: SecretKeys,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn shard_hash(call_id: &str) -> usize {
    call_id
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
}

/// `Session-Expires: 1800;refresher=uac` → 1800.
pub fn parse_session_expires(v: &str) -> Option<u32> {
    v.split(';').next()?.trim().parse().ok()
}

impl Dialogs {
    /// A table; `epoch` pairs an instant with the UNIX time at it.
    pub fn new(cfg: DialogConfig, epoch: (Instant, u64)) -> Dialogs {
        Dialogs {
            keys: SecretKeys(cfg.hash_key.0, cfg.hash_key.1),
            epoch,
            events: Mutex::new(Vec::new()),
            persist: std::sync::atomic::AtomicBool::new(false),
            clustered: Default::default(),
            adopted: Mutex::new(Vec::new()),
            ended_here: Mutex::new(HashMap::new()),
            cfg,
            shards: (0..64).map(|_| Mutex::new(Table::default())).collect(),
            next_id: AtomicU64::new(1),
            id_base: AtomicU64::new(0),
            next_sweep: Mutex::new(None),
        }
    }

    /// Turns the change queue on (a database keeps the dialogs across restarts).
    pub fn set_persistence(&self, on: bool) {
        self.persist.store(on, Ordering::Relaxed);
    }

    fn persisting(&self) -> bool {
        self.persist.load(Ordering::Relaxed)
    }

    fn queue(&self, e: DlgEvent) {
        if !self.persisting() {
            return;
        }
        if let DlgEvent::Removed(id, _) = &e {
            if self.clustered.load(Ordering::Relaxed)
                && crate::id_range(*id) != crate::id_range(self.id_base.load(Ordering::Relaxed))
            {
                let mut g = lock(&self.ended_here);
                if g.len() >= ENDED_HERE_MAX {
                    let now = Instant::now();
                    g.retain(|_, t| now.saturating_duration_since(*t) < ENDED_HERE_FOR);
                    if g.len() >= ENDED_HERE_MAX {
                        g.clear();
                    }
                }
                g.insert(*id, Instant::now());
            }
        }
        lock(&self.events).push(e);
    }

    /// Changes to persist since the last call.
    pub fn take_events(&self) -> Vec<DlgEvent> {
        std::mem::take(&mut *lock(&self.events))
    }

    /// UNIX seconds at `now`.
    pub fn unix(&self, now: Instant) -> u64 {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0).as_secs()
    }

    pub fn config(&self) -> &DialogConfig {
        &self.cfg
    }

    /// What identifies the callee's side of an answer without parsing it: its To header,
    /// its Contact and Record-Route lines, and where it came from.
    pub fn fingerprint<'m>(
        &self,
        to: Option<&str>,
        lines: impl Iterator<Item = &'m str>,
        from: Target,
    ) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = self.keys.build_hasher();
        to.hash(&mut h);
        for l in lines {
            l.hash(&mut h);
        }
        from.addr.hash(&mut h);
        from.flow.hash(&mut h);
        (from.transport as u8).hash(&mut h);
        h.finish()
    }

    fn key(&self, call_id: &str, tag: &str) -> Key {
        use std::hash::BuildHasher;
        self.keys.hash_one((call_id, tag))
    }

    fn shard(&self, call_id: &str) -> std::sync::MutexGuard<'_, Table> {
        lock(&self.shards[shard_hash(call_id) % self.shards.len()])
    }

    fn deadline(&self, now: Instant, se: Option<u32>) -> Instant {
        let mut life = self.cfg.lifetime;
        if let (true, Some(se)) = (self.cfg.honour_session_expires, se) {
            // the refresher has the whole interval; allow a little for the re-INVITE itself
            life = life.min(Duration::from_secs(se as u64 + 32));
        }
        now + life
    }

    /// A provisional with a to-tag (early) or a 2xx (confirmed) to an initial INVITE.
    /// `caller` is asked for only when the dialog is new (a 200 after a 180 skips it).
    #[allow(clippy::too_many_arguments)]
    pub fn on_answer<'a>(
        &self,
        now: Instant,
        unix: u64,
        confirmed: bool,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        caller: impl FnOnce() -> Leg<'a>,
        callee: impl FnOnce() -> Leg<'a>,
        callee_print: u64,
        node: Option<Arc<str>>,
        session_expires: Option<u32>,
        ruri: &str,
    ) {
        let mut g = self.shard(call_id);
        let key = self.key(call_id, from_tag);
        let expires_at = self.deadline(now, session_expires);
        match g.get_mut(&key).filter(|d| matches(d, call_id, from_tag)) {
            Some(d) => {
                if d.state == DialogState::Confirmed {
                    return; // a retransmitted 2xx, or a second fork's answer
                }
                // the callee's side is looked at only when the answer's headers differ from
                // the last one's, and its strings rebuilt only when it names another callee
                // (a second fork, or a Contact changed between 180 and 200)
                if d.callee_print != callee_print {
                    let callee = callee();
                    if d.to_tag() != to_tag
                        || d.callee_party() != callee.party
                        || d.callee_contact() != callee.contact
                        || d.callee_route() != callee.route
                    {
                        d.text = d.text.with(&[
                            (field::TO_TAG, to_tag),
                            (field::CALLEE_PARTY, callee.party),
                            (field::CALLEE_CONTACT, callee.contact),
                            (field::CALLEE_ROUTE, callee.route),
                        ]);
                    }
                    d.callee = Side {
                        target: callee.target,
                        cseq: callee.cseq,
                    };
                    d.callee_print = callee_print;
                }
                if node.is_some() {
                    d.node = node;
                }
                if confirmed {
                    d.state = DialogState::Confirmed;
                    d.answered_unix = Some(unix);
                    d.expires_at = expires_at;
                    d.session_expires = session_expires;
                    d.dirty = true;
                    d.changed_at = now;
                }
            }
            None => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let d = Dialog::new(DialogInit {
                    id,
                    call_id,
                    from_tag,
                    to_tag,
                    ruri,
                    state: if confirmed {
                        DialogState::Confirmed
                    } else {
                        DialogState::Early
                    },
                    caller: caller(),
                    callee: callee(),
                    node,
                    created_unix: unix,
                    answered_unix: confirmed.then_some(unix),
                    expires_at: if confirmed {
                        expires_at
                    } else {
                        now + Duration::from_secs(300) // an early dialog rings at most Timer C
                    },
                    session_expires,
                });
                let mut d = Box::new(d);
                d.changed_at = now;
                d.callee_print = callee_print;
                g.insert(key, d);
            }
        }
    }

    /// The initial INVITE failed: its early dialog goes.
    pub fn on_failure(&self, call_id: &str, from_tag: &str) {
        let mut g = self.shard(call_id);
        let key = self.key(call_id, from_tag);
        if g.get(&key)
            .is_some_and(|d| d.state == DialogState::Early && matches(d, call_id, from_tag))
        {
            g.remove(&key);
        }
    }

    /// Finds the dialog of an in-dialog request (from either side) and applies `f`.
    pub fn with<R>(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        f: impl FnOnce(&mut Dialog, bool) -> R,
    ) -> Option<R> {
        let mut g = self.shard(call_id);
        if let Some(d) = g
            .get_mut(&self.key(call_id, from_tag))
            .filter(|d| matches(d, call_id, from_tag))
            .filter(|d| d.state == DialogState::Early || d.to_tag() == to_tag)
        {
            return Some(f(d, true));
        }
        g.get_mut(&self.key(call_id, to_tag))
            .filter(|d| matches(d, call_id, to_tag) && d.to_tag() == from_tag)
            .map(|d| f(d, false))
    }

    /// True when an in-dialog request with these tags (from either side) belongs to a
    /// dialog in the table.
    pub fn knows(&self, call_id: &str, from_tag: &str, to_tag: &str) -> bool {
        self.with(call_id, from_tag, to_tag, |_, _| ()).is_some()
    }

    /// An in-dialog request passed: count its CSeq, refresh on re-INVITE/UPDATE.
    pub fn on_request(
        &self,
        now: Instant,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        cseq: u32,
        refresh: Option<Option<u32>>,
    ) -> bool {
        let dl = |se| self.deadline(now, se);
        self.with(call_id, from_tag, to_tag, |d, from_caller| {
            let leg = if from_caller {
                &mut d.caller
            } else {
                &mut d.callee
            };
            leg.cseq = leg.cseq.max(cseq);
            match refresh {
                Some(se) if d.state == DialogState::Confirmed => {
                    let se = se.or(d.session_expires);
                    d.session_expires = se;
                    d.expires_at = dl(se);
                    d.dirty = true;
                    d.changed_at = now;
                }
                _ => {}
            }
        })
        .is_some()
    }

    /// Removes the dialog a BYE ends; returns it with who hung up.
    pub fn on_bye(&self, call_id: &str, from_tag: &str, to_tag: &str) -> Option<(Dialog, Ending)> {
        let r = self.remove_by_bye(call_id, from_tag, to_tag);
        if let Some((d, _)) = r.as_ref().filter(|(d, _)| d.saved) {
            self.queue(DlgEvent::Removed(d.id, d.call_id().into()));
        }
        r
    }

    fn remove_by_bye(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
    ) -> Option<(Dialog, Ending)> {
        use std::collections::hash_map::Entry;
        let mut g = self.shard(call_id);
        for (tag, other, ending) in [
            (from_tag, to_tag, Ending::CallerBye),
            (to_tag, from_tag, Ending::CalleeBye),
        ] {
            if let Entry::Occupied(e) = g.entry(self.key(call_id, tag)) {
                if matches(e.get(), call_id, tag) && e.get().to_tag() == other {
                    return Some((*e.remove(), ending));
                }
            }
        }
        None
    }

    /// Every dialog (a copy), for the management API.
    pub fn list(&self) -> Vec<Dialog> {
        let mut v: Vec<Dialog> = self
            .shards
            .iter()
            .flat_map(|s| lock(s).values().map(|d| (**d).clone()).collect::<Vec<_>>())
            .collect();
        v.sort_by_key(|d| d.id);
        v
    }

    /// Dialogs held, and how many per media server.
    pub fn counts(&self) -> (usize, HashMap<Arc<str>, usize>) {
        let mut total = 0;
        let mut per = HashMap::new();
        for s in self.shards.iter() {
            for d in lock(s).values() {
                total += 1;
                if let Some(n) = &d.node {
                    *per.entry(n.clone()).or_insert(0) += 1;
                }
            }
        }
        (total, per)
    }

    /// Ends a dialog from the middle: removes it and returns the BYEs for both sides.
    pub fn end(&self, id: u64, via: &dyn Fn(Transport) -> String) -> Option<(Dialog, Vec<ByeOut>)> {
        for s in self.shards.iter() {
            let mut g = lock(s);
            let key = g.iter().find(|(_, d)| d.id == id).map(|(k, _)| *k);
            if let Some(k) = key {
                let d = *g.remove(&k)?;
                drop(g);
                if d.saved {
                    self.queue(DlgEvent::Removed(d.id, d.call_id().into()));
                }
                let byes = byes_for(&d, via, &self.cfg.user_agent);
                return Some((d, byes));
            }
        }
        None
    }

    /// Five times a second: dialogs past their lifetime are removed, with BYEs to both sides
    /// for confirmed ones. In a cluster, another node's dialog is its owner's to end; it is
    /// given back here without BYEs only when its owner's removal has not come
    /// [`ORPHAN_GRACE`] after its end (the caller releases its count, nothing else).
    pub fn sweep(
        &self,
        now: Instant,
        via: &dyn Fn(Transport) -> String,
        out: &mut Vec<(Dialog, Vec<ByeOut>)>,
    ) {
        {
            let mut t = lock(&self.next_sweep);
            if t.is_some_and(|t| now < t) {
                return;
            }
            // five times a second: a dialog is written soon after its first second
            *t = Some(now + Duration::from_millis(200));
        }
        let persisting = self.persisting();
        // alone, a call that ends within a second is never written; in a cluster another
        // node may get its BYE (or take it over) at any moment, so it is written at once
        let save_after = if self.clustered.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        };
        let mut saves = Vec::new();
        for s in self.shards.iter() {
            let mut g = lock(s);
            if persisting {
                for d in g.values_mut() {
                    if d.dirty
                        && d.state == DialogState::Confirmed
                        && now.saturating_duration_since(d.changed_at) >= save_after
                    {
                        d.dirty = false;
                        d.saved = true;
                        saves.push(DlgEvent::Saved(d.clone()));
                    }
                }
            }
            let expired: Vec<Key> = g
                .iter()
                .filter(|(_, d)| d.expires_at <= now)
                .map(|(k, _)| *k)
                .collect();
            for k in expired {
                if !self.owns(g[&k].id) {
                    // another node's: it sends the BYEs and removes the record, and its
                    // removal reaches us; held meanwhile (its call stays counted), dropped
                    // if that never comes (the removal missed while we did not follow)
                    if g[&k].expires_at + ORPHAN_GRACE <= now {
                        if let Some(d) = g.remove(&k) {
                            out.push((*d, Vec::new()));
                        }
                    }
                    continue;
                }
                if let Some(d) = g.remove(&k).map(|d| *d) {
                    if persisting && d.saved {
                        saves.push(DlgEvent::Removed(d.id, d.call_id().into()));
                    }
                    let byes = if d.state == DialogState::Confirmed {
                        byes_for(&d, via, &self.cfg.user_agent)
                    } else {
                        Vec::new()
                    };
                    out.push((d, byes));
                }
            }
            // queued before the shard is let go: a BYE that ends one of these dialogs the
            // next instant queues its removal after its write, not before it
            if !saves.is_empty() {
                lock(&self.events).append(&mut saves);
            }
        }
    }

    /// At shutdown: queues every confirmed dialog not written yet (or changed since it was),
    /// whatever its age, so a call set up just before a restart still routes after it.
    pub fn persist_all(&self) {
        if !self.persisting() {
            return;
        }
        let mut saves = Vec::new();
        for s in self.shards.iter() {
            let mut g = lock(s);
            for d in g.values_mut() {
                if d.dirty && d.state == DialogState::Confirmed {
                    d.dirty = false;
                    d.saved = true;
                    saves.push(DlgEvent::Saved(d.clone()));
                }
            }
            // with the shard held, as in the sweep
            lock(&self.events).append(&mut saves);
            drop(g);
        }
    }

    /// Ids made from now on come from the range that starts at `base`, one no other process
    /// sharing the database uses ([`crate::ID_COUNTER_BITS`]). Called before restoring.
    pub fn set_id_base(&self, base: u64) {
        self.id_base.store(base, Ordering::Relaxed);
        self.next_id.store(base + 1, Ordering::Relaxed);
    }

    /// Makes this table a cluster node's: dialogs of other nodes' id ranges are theirs to
    /// expire ([`Dialogs::apply_remote`]).
    pub fn set_clustered(&self, on: bool) {
        self.clustered.store(on, Ordering::Relaxed);
    }

    /// True when dialog `id` is this process's to expire and end (always, outside a
    /// cluster: a restored dialog is from an earlier run's range).
    pub fn owns(&self, id: u64) -> bool {
        let range = crate::id_range(id);
        !self.clustered.load(Ordering::Relaxed)
            || range == crate::id_range(self.id_base.load(Ordering::Relaxed))
            || lock(&self.adopted).contains(&range)
    }

    /// The cluster nodes (ids) whose dialogs this node expires because they are dead; true
    /// when that changed.
    pub fn set_adopted(&self, nodes: &[u16]) -> bool {
        let ranges: Vec<u64> = nodes.iter().map(|&n| u64::from(n)).collect();
        let mut g = lock(&self.adopted);
        if *g == ranges {
            return false;
        }
        *g = ranges;
        true
    }

    /// A dialog another node saved (or this node, before a restart), read from the shared
    /// store: held, replacing the one with its Call-ID and caller's tag; nothing is queued.
    pub fn apply_remote(&self, mut d: Dialog) {
        d.saved = true;
        d.dirty = false;
        if crate::id_range(d.id) == crate::id_range(self.id_base.load(Ordering::Relaxed)) {
            self.next_id.fetch_max(d.id + 1, Ordering::Relaxed);
        }
        let key = self.key(d.call_id(), d.from_tag());
        self.shard(d.call_id()).insert(key, Box::new(d));
    }

    /// A dialog another node ended: removed, and returned (this node may have counted its
    /// call). `call_id` finds its shard at once.
    pub fn remove_remote(&self, call_id: &str, id: u64) -> Option<Dialog> {
        let mut g = self.shard(call_id);
        let key = g.iter().find(|(_, d)| d.id == id).map(|(k, _)| *k)?;
        g.remove(&key).map(|d| *d)
    }

    /// Compares the table with the ids the shared store holds (after a reconnection, when
    /// channel messages may have been missed). Own dialogs are never dropped here: the
    /// caller decides between [`Dialogs::remove_remote`] (ended elsewhere) and
    /// [`Dialogs::resave`] (the store lost it), for those the store has too (a node that
    /// lost its data may have written back one another node had ended).
    pub fn reconcile(&self, in_store: &std::collections::HashSet<u64>) -> Reconciled {
        let mut r = Reconciled::default();
        let own = crate::id_range(self.id_base.load(Ordering::Relaxed));
        let mut held = std::collections::HashSet::new();
        for s in self.shards.iter() {
            let mut g = lock(s);
            let gone: Vec<Key> = g
                .iter()
                .filter(|(_, d)| d.saved && !in_store.contains(&d.id))
                .map(|(k, _)| *k)
                .collect();
            for k in gone {
                if !self.owns(g[&k].id) {
                    if let Some(d) = g.remove(&k) {
                        r.dropped.push(*d);
                    }
                }
            }
            for d in g.values() {
                held.insert(d.id);
                if d.saved && self.owns(d.id) {
                    r.own
                        .push((d.id, d.call_id().into(), in_store.contains(&d.id)));
                }
            }
        }
        let ended = lock(&self.ended_here);
        r.unknown = in_store
            .iter()
            .filter(|id| {
                crate::id_range(**id) != own && !held.contains(id) && !ended.contains_key(id)
            })
            .copied()
            .collect();
        r.unknown.sort_unstable();
        r
    }

    /// Queues a dialog of this node's to be written again (the store lost it).
    pub fn resave(&self, call_id: &str, id: u64) {
        let mut g = self.shard(call_id);
        if let Some(d) = g.values_mut().find(|d| d.id == id) {
            if self.persisting() {
                d.dirty = false;
                lock(&self.events).push(DlgEvent::Saved(d.clone()));
            }
        }
    }

    /// Every saved dialog this node owns (its own and adopted ones), as (id, Call-ID).
    pub fn own_saved(&self) -> Vec<(u64, Box<str>)> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            for d in lock(s).values() {
                if d.saved && self.owns(d.id) {
                    out.push((d.id, d.call_id().into()));
                }
            }
        }
        out
    }

    /// Queues the removal of a dialog of this node's that another node ended, after any
    /// write of it this node still has queued (so the store does not keep it).
    pub fn forget(&self, id: u64, call_id: &str) {
        if self.persisting() {
            lock(&self.events).push(DlgEvent::Removed(id, call_id.into()));
        }
    }

    /// Puts back dialogs persisted before a restart (their rows exist).
    pub fn restore(&self, dialogs: Vec<Dialog>) {
        for d in dialogs {
            self.apply_remote(d);
        }
    }
}

/// BYE to the callee (as the caller) and to the caller (as the callee), each with the route
/// set toward its side. `via` gives the Via value (`SIP/2.0/UDP host:port`) of the listener
/// for a transport.
fn byes_for(d: &Dialog, via: &dyn Fn(Transport) -> String, ua: &str) -> Vec<ByeOut> {
    let bye = |uri: &str, route: &str, from: &str, to: &str, seq: u32, n: u8, t: Transport| {
        let via = via(t);
        let route = if route.is_empty() {
            String::new()
        } else {
            format!("Route: {route}\r\n")
        };
        let ua = if ua.is_empty() {
            String::new()
        } else {
            format!("User-Agent: {ua}\r\n")
        };
        format!(
            "BYE {uri} SIP/2.0\r\nVia: {via};branch=z9hG4bKsbB{:x}.{n}\r\n{route}Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {seq} BYE\r\nReason: SIP;cause=200;text=\"dialog ended by the proxy\"\r\n{ua}Content-Length: 0\r\n\r\n",
            d.id,
            d.call_id(),
        )
    };
    vec![
        ByeOut {
            target: d.callee.target,
            data: bye(
                d.callee_contact(),
                d.callee_route(),
                d.caller_party(),
                d.callee_party(),
                d.caller.cseq + 1,
                0,
                d.callee.target.transport,
            ),
        },
        ByeOut {
            target: d.caller.target,
            data: bye(
                d.caller_contact(),
                d.caller_route(),
                d.callee_party(),
                d.caller_party(),
                d.callee.cseq.max(1) + 1,
                1,
                d.caller.target.transport,
            ),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `on_answer` without node, Session-Expires or R-URI; `ids` is (Call-ID, from-tag, to-tag).
    pub(super) fn ans(
        t: &Dialogs,
        now: Instant,
        unix: u64,
        confirmed: bool,
        ids: (&str, &str, &str),
        caller: Leg<'static>,
        callee: Leg<'static>,
    ) {
        t.on_answer(
            now,
            unix,
            confirmed,
            ids.0,
            ids.1,
            ids.2,
            || caller,
            || callee,
            print(t, &callee),
            None,
            None,
            "",
        );
    }

    /// The fingerprint of an answer naming `callee` (tests have no message to hash).
    fn print(t: &Dialogs, callee: &Leg) -> u64 {
        t.fingerprint(
            Some(callee.party),
            [callee.contact, callee.route].into_iter(),
            callee.target,
        )
    }

    fn v(_: Transport) -> String {
        "SIP/2.0/UDP 127.0.0.1:5060".into()
    }

    fn leg(party: &'static str, port: u16, cseq: u32) -> Leg<'static> {
        Leg {
            party,
            contact: Box::leak(format!("sip:x@127.0.0.1:{port}").into_boxed_str()),
            route: "",
            target: Target {
                transport: Transport::Udp,
                addr: ([127, 0, 0, 1], port).into(),
                flow: None,
            },
            cseq,
        }
    }

    #[test]
    fn an_answer_repeating_the_last_one_is_not_parsed_again() {
        let now = Instant::now();
        let answer = |t: &Dialogs, confirmed: bool, callee: &dyn Fn() -> Leg<'static>, print| {
            t.on_answer(
                now,
                1,
                confirmed,
                "c",
                "ft",
                "tt",
                || leg("<sip:a@h>;tag=ft", 1, 1),
                callee,
                print,
                None,
                None,
                "",
            )
        };
        let t = Dialogs::new(DialogConfig::default(), (Instant::now(), 0));
        let callee = leg("<sip:b@h>;tag=tt", 2, 0);
        answer(&t, false, &|| callee, print(&t, &callee));
        // the 200 repeats the 180's headers: its callee side is not looked at
        answer(&t, true, &|| panic!("parsed again"), print(&t, &callee));
        let d = &t.list()[0];
        assert_eq!(d.state, DialogState::Confirmed);
        assert_eq!(d.callee_contact(), "sip:x@127.0.0.1:2");
        // another dialog whose 200 names another Contact than its 180
        let t2 = Dialogs::new(DialogConfig::default(), (Instant::now(), 0));
        for (confirmed, port) in [(false, 2), (true, 7)] {
            let c = leg("<sip:b@h>;tag=tt", port, 0);
            answer(&t2, confirmed, &|| c, print(&t2, &c));
        }
        let d = &t2.list()[0];
        assert_eq!(
            (d.callee_contact(), d.callee.target.addr.port()),
            ("sip:x@127.0.0.1:7", 7)
        );
    }

    #[test]
    fn early_confirmed_bye_from_either_side() {
        let t = Dialogs::new(DialogConfig::default(), (Instant::now(), 0));
        let now = Instant::now();
        ans(
            &t,
            now,
            1,
            false,
            ("c", "ft", "tt"),
            leg("<sip:a@h>;tag=ft", 1, 1),
            leg("<sip:b@h>;tag=tt", 2, 0),
        );
        assert_eq!(t.list()[0].state, DialogState::Early);
        t.on_answer(
            now,
            2,
            true,
            "c",
            "ft",
            "tt",
            || leg("<sip:a@h>;tag=ft", 1, 1),
            || leg("<sip:b@h>;tag=tt", 2, 0),
            print(&t, &leg("<sip:b@h>;tag=tt", 2, 0)),
            Some("sip:fs1".into()),
            None,
            "",
        );
        assert_eq!(t.list()[0].state, DialogState::Confirmed);
        assert_eq!(t.counts().1.get("sip:fs1"), Some(&1));
        assert!(
            t.on_request(now, "c", "tt", "ft", 5, None),
            "from the callee"
        );
        assert!(!t.on_request(now, "c", "zz", "ft", 5, None), "unknown tag");
        let (d, who) = t.on_bye("c", "tt", "ft").unwrap();
        assert_eq!(who, Ending::CalleeBye);
        assert_eq!(d.callee.cseq, 5);
        assert!(t.list().is_empty());
        assert!(t.on_bye("c", "ft", "tt").is_none());
    }

    #[test]
    fn lifetime_and_session_expires_end_with_byes_to_both_sides() {
        let t = Dialogs::new(
            DialogConfig {
                lifetime: Duration::from_secs(10),
                honour_session_expires: true,
                ..Default::default()
            },
            (Instant::now(), 0),
        );
        let now = Instant::now();
        ans(
            &t,
            now,
            1,
            true,
            ("c1", "f1", "t1"),
            leg("<sip:a@h>;tag=f1", 1, 3),
            leg("<sip:b@h>;tag=t1", 2, 0),
        );
        t.on_answer(
            now,
            1,
            true,
            "c2",
            "f2",
            "t2",
            || leg("<sip:a@h>;tag=f2", 3, 1),
            || leg("<sip:b@h>;tag=t2", 4, 0),
            print(&t, &leg("<sip:b@h>;tag=t2", 4, 0)),
            None,
            Some(90),
            "",
        );
        let mut out = vec![];
        t.sweep(now + Duration::from_secs(9), &v, &mut out);
        assert!(out.is_empty());
        t.sweep(now + Duration::from_secs(11), &v, &mut out);
        assert_eq!(
            out.len(),
            2,
            "the lifetime bounds both (Session-Expires 90 s > 10 s)"
        );
        let byes = &out.iter().find(|(d, _)| d.call_id() == "c1").unwrap().1;
        assert_eq!(byes.len(), 2);
        assert!(byes[0].data.starts_with("BYE sip:x@127.0.0.1:2 SIP/2.0"));
        assert!(byes[0].data.contains("CSeq: 4 BYE"), "{}", byes[0].data);
        assert!(byes[0]
            .data
            .contains("From: <sip:a@h>;tag=f1\r\nTo: <sip:b@h>;tag=t1"));
        assert!(byes[1]
            .data
            .contains("From: <sip:b@h>;tag=t1\r\nTo: <sip:a@h>;tag=f1"));
        assert_eq!(byes[1].target.addr.port(), 1);
        // Session-Expires shorter than the lifetime
        let t = Dialogs::new(DialogConfig::default(), (Instant::now(), 0));
        t.on_answer(
            now,
            1,
            true,
            "c3",
            "f3",
            "t3",
            || leg("a", 1, 1),
            || leg("b", 2, 0),
            print(&t, &leg("b", 2, 0)),
            None,
            Some(60),
            "",
        );
        let mut out = vec![];
        t.sweep(now + Duration::from_secs(93), &v, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(parse_session_expires("1800;refresher=uac"), Some(1800));
        assert_eq!(parse_session_expires("x"), None);
    }

    #[test]
    fn management_end_and_failed_early_dialogs() {
        let t = Dialogs::new(DialogConfig::default(), (Instant::now(), 0));
        let now = Instant::now();
        ans(
            &t,
            now,
            1,
            false,
            ("c", "f", "t"),
            leg("a", 1, 1),
            leg("b", 2, 0),
        );
        t.on_failure("c", "f");
        assert!(t.list().is_empty());
        ans(
            &t,
            now,
            1,
            true,
            ("c", "f", "t"),
            leg("a", 1, 1),
            leg("b", 2, 0),
        );
        let id = t.list()[0].id;
        let (_, byes) = t.end(id, &v).unwrap();
        assert_eq!(byes.len(), 2);
        assert!(t.end(id, &v).is_none());
    }
}

#[cfg(test)]
mod persistence_tests {
    use super::*;

    use super::tests::ans;
    use crate::types::Transport;

    fn v(_: Transport) -> String {
        "SIP/2.0/UDP 127.0.0.1:5060".into()
    }

    fn leg(p: &'static str) -> Leg<'static> {
        Leg {
            party: p,
            contact: "sip:x@127.0.0.1",
            route: "",
            target: Target {
                transport: Transport::Udp,
                addr: ([127, 0, 0, 1], 5060).into(),
                flow: None,
            },
            cseq: 1,
        }
    }

    #[test]
    fn confirmed_dialogs_are_saved_and_removed_through_events() {
        let t = Dialogs::new(DialogConfig::default(), (Instant::now(), 100));
        t.set_persistence(true);
        let now = Instant::now();
        ans(&t, now, 100, false, ("c", "f", "t"), leg("a"), leg("b"));
        let mut out = vec![];
        t.sweep(now + Duration::from_secs(0), &v, &mut out);
        assert!(t.take_events().is_empty(), "early dialogs are not saved");
        ans(
            &t,
            now + Duration::from_secs(1),
            101,
            true,
            ("c", "f", "t"),
            leg("a"),
            leg("b"),
        );
        t.sweep(now + Duration::from_millis(1500), &v, &mut out);
        assert!(
            t.take_events().is_empty(),
            "not before it has lived a second"
        );
        // a call that ends before then is never written, nor deleted
        ans(&t, now, 101, true, ("short", "f", "t"), leg("a"), leg("b"));
        assert!(t.on_bye("short", "f", "t").is_some());
        t.sweep(now + Duration::from_millis(2200), &v, &mut out);
        assert!(
            matches!(&t.take_events()[..], [DlgEvent::Saved(d)] if d.answered_unix == Some(101) && d.call_id() == "c")
        );
        t.sweep(now + Duration::from_secs(3), &v, &mut out);
        assert!(t.take_events().is_empty(), "written once");
        assert!(t.on_request(
            now + Duration::from_secs(3),
            "c",
            "f",
            "t",
            2,
            Some(Some(1800))
        ));
        t.sweep(now + Duration::from_millis(3500), &v, &mut out);
        assert!(
            t.take_events().is_empty(),
            "a refresh is written a second later"
        );
        t.sweep(now + Duration::from_millis(4100), &v, &mut out);
        assert!(
            matches!(&t.take_events()[..], [DlgEvent::Saved(d)] if d.session_expires == Some(1800))
        );
        t.on_bye("c", "f", "t");
        assert!(matches!(&t.take_events()[..], [DlgEvent::Removed(..)]));
        assert!(out.is_empty());
    }

    /// In a cluster a confirmed dialog is written at the next sweep: another node may get
    /// its BYE, or take it over, within its first second.
    #[test]
    fn a_cluster_node_writes_a_confirmed_dialog_at_once() {
        let t = Dialogs::new(DialogConfig::default(), (Instant::now(), 100));
        t.set_clustered(true);
        t.set_persistence(true);
        let now = Instant::now();
        ans(&t, now, 100, false, ("c", "f", "t"), leg("a"), leg("b"));
        let mut out = vec![];
        t.sweep(now, &v, &mut out);
        assert!(t.take_events().is_empty(), "early dialogs are not saved");
        ans(&t, now, 100, true, ("c", "f", "t"), leg("a"), leg("b"));
        t.sweep(now + Duration::from_millis(200), &v, &mut out);
        assert!(matches!(&t.take_events()[..], [DlgEvent::Saved(d)] if d.call_id() == "c"));
        assert!(t.on_bye("c", "f", "t").is_some());
        assert!(matches!(&t.take_events()[..], [DlgEvent::Removed(..)]));
    }

    /// A cluster node holds another node's dialogs: known to in-dialog requests, ended by a
    /// BYE through it (queued, so the owner hears), but expired only by their owner, or by
    /// the node that took a dead owner's over.
    #[test]
    fn another_nodes_dialogs_are_held_but_expired_by_their_owner() {
        let epoch = (Instant::now(), 100);
        let owner = Dialogs::new(DialogConfig::default(), epoch);
        owner.set_id_base(1 << crate::ID_COUNTER_BITS);
        owner.set_clustered(true);
        owner.set_persistence(true);
        let now = epoch.0;
        ans(&owner, now, 101, true, ("c", "f", "t"), leg("a"), leg("b"));
        ans(&owner, now, 101, true, ("c2", "f", "t"), leg("a"), leg("b"));
        let mut out = vec![];
        owner.sweep(now + Duration::from_secs(2), &v, &mut out);
        let saved: Vec<Dialog> = owner
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                DlgEvent::Saved(d) => Some(*d),
                _ => None,
            })
            .collect();
        assert_eq!(saved.len(), 2);
        let other = Dialogs::new(DialogConfig::default(), epoch);
        other.set_id_base(2 << crate::ID_COUNTER_BITS);
        other.set_clustered(true);
        other.set_persistence(true);
        for d in &saved {
            assert!(!other.owns(d.id) && owner.owns(d.id));
            other.apply_remote(d.clone());
        }
        assert!(other.knows("c", "t", "f"), "either side's tags");
        assert!(other.take_events().is_empty(), "nothing queued back");
        // a BYE through the other node ends it there and tells the owner
        assert!(other.on_bye("c", "f", "t").is_some());
        assert!(matches!(&other.take_events()[..], [DlgEvent::Removed(_, c)] if &**c == "c"));
        assert!(owner.remove_remote("c", saved[0].id).is_some());
        assert!(owner.remove_remote("c", saved[0].id).is_none());
        // past its lifetime: the owner sends the BYEs; the other node holds it for the
        // owner's removal, and lets it go (no BYE, nothing queued) if that never comes
        let late = saved[1].expires_at;
        let mut other_out = vec![];
        other.sweep(late, &v, &mut other_out);
        let ev = other.take_events();
        assert!(
            other_out.is_empty() && ev.is_empty(),
            "{other_out:?} {ev:?}"
        );
        assert!(other.knows("c2", "f", "t"), "held for the owner's removal");
        other.sweep(late + ORPHAN_GRACE, &v, &mut other_out);
        assert!(
            matches!(&other_out[..], [(d, byes)] if d.call_id() == "c2" && byes.is_empty()),
            "{other_out:?}"
        );
        assert!(other.take_events().is_empty() && !other.knows("c2", "f", "t"));
        owner.sweep(late, &v, &mut out);
        assert!(matches!(&out[..], [(d, byes)] if d.call_id() == "c2" && byes.len() == 2));
        // the owner dead: the node that takes it over ends its dialogs as its own
        let heir = Dialogs::new(DialogConfig::default(), epoch);
        heir.set_id_base(2 << crate::ID_COUNTER_BITS);
        heir.set_clustered(true);
        heir.set_persistence(true);
        heir.apply_remote(saved[1].clone());
        assert!(!heir.owns(saved[1].id));
        assert!(heir.set_adopted(&[1]) && !heir.set_adopted(&[1]));
        assert!(heir.owns(saved[1].id));
        let mut heir_out = vec![];
        heir.sweep(late, &v, &mut heir_out);
        assert!(matches!(&heir_out[..], [(d, byes)] if d.call_id() == "c2" && byes.len() == 2));
        assert!(
            matches!(&heir.take_events()[..], [DlgEvent::Removed(_, c)] if &**c == "c2"),
            "its record removed from the shared store"
        );
        assert!(heir.set_adopted(&[]) && !heir.owns(saved[1].id));
        // outside a cluster every dialog is this process's (restored ones too)
        let lone = Dialogs::new(DialogConfig::default(), epoch);
        assert!(lone.owns(saved[1].id));
    }

    /// After a reconnection the table is set level with the store's ids: another node's
    /// dialogs the store lost are dropped, this node's are reported (never dropped here),
    /// store ids held nowhere are to be learned, except the ones this node ended itself.
    #[test]
    fn reconcile_sets_the_table_level_with_the_store() {
        let epoch = (Instant::now(), 100);
        let mk = |node: u64| {
            let t = Dialogs::new(DialogConfig::default(), epoch);
            t.set_id_base(node << crate::ID_COUNTER_BITS);
            t.set_clustered(true);
            t.set_persistence(true);
            t
        };
        let (a, b) = (mk(1), mk(2));
        let now = epoch.0;
        for c in ["a1", "a2", "a3"] {
            ans(&a, now, 101, true, (c, "f", "t"), leg("x"), leg("y"));
        }
        ans(&b, now, 101, true, ("b1", "f", "t"), leg("x"), leg("y"));
        ans(&b, now, 101, true, ("b2", "f", "t"), leg("x"), leg("y"));
        let mut out = vec![];
        let saved = |t: &Dialogs| -> Vec<Dialog> {
            t.take_events()
                .into_iter()
                .filter_map(|e| match e {
                    DlgEvent::Saved(d) => Some(*d),
                    _ => None,
                })
                .collect()
        };
        a.sweep(now, &v, &mut out);
        b.sweep(now, &v, &mut out);
        let (sa, sb) = (saved(&a), saved(&b));
        assert_eq!((sa.len(), sb.len()), (3, 2));
        for d in &sb {
            a.apply_remote(d.clone());
        }
        // a2 ended through node 2 (its removal missed by node 1); b1 ended through node 1
        assert!(a.on_bye("b1", "f", "t").is_some());
        assert!(matches!(&a.take_events()[..], [DlgEvent::Removed(..)]));
        // the store: a1, a3 (a2 removed by node 2), not b2 (lost), b1 still there (the
        // removal on its way), and b3 that node 1 never heard of
        let b3 = sb[1].id + 5;
        let id = |c: &str| sa.iter().find(|d| d.call_id() == c).unwrap().id;
        let store: std::collections::HashSet<u64> = [id("a1"), id("a3"), sb[0].id, b3].into();
        let r = a.reconcile(&store);
        assert_eq!(
            r.dropped.iter().map(|d| d.call_id()).collect::<Vec<_>>(),
            ["b2"]
        );
        assert!(!a.knows("b2", "f", "t"));
        let mut own = r.own.clone();
        own.sort();
        let want: Vec<(u64, Box<str>, bool)> = vec![
            (id("a1"), "a1".into(), true),
            (id("a2"), "a2".into(), false),
            (id("a3"), "a3".into(), true),
        ];
        assert_eq!(own, want);
        assert!(
            a.knows("a2", "f", "t"),
            "own dialogs are the caller's to judge"
        );
        assert_eq!(r.unknown, [b3], "b1 was ended here, b3 is new");
        // the caller's two answers: written again, or forgotten (a removal queued)
        a.resave("a2", id("a2"));
        assert!(matches!(&a.take_events()[..], [DlgEvent::Saved(d)] if d.call_id() == "a2"));
        assert!(a.remove_remote("a2", id("a2")).is_some());
        a.forget(id("a2"), "a2");
        assert!(matches!(&a.take_events()[..], [DlgEvent::Removed(i, _)] if *i == id("a2")));
        // what a node that lost its store's data checks: every saved dialog it owns
        let mut own = a.own_saved();
        own.sort();
        assert_eq!(own, [(id("a1"), "a1".into()), (id("a3"), "a3".into())]);
        assert!(saved(&a).is_empty(), "nothing queued by asking");
    }

    /// A BYE racing the sweep that writes its dialog: the removal is queued after the
    /// write, never before it (the store would keep, and other nodes hold, an ended call).
    #[test]
    fn a_bye_racing_the_sweep_queues_the_removal_after_the_write() {
        use std::sync::atomic::AtomicBool;
        let epoch = Instant::now();
        let t = Arc::new(Dialogs::new(DialogConfig::default(), (epoch, 100)));
        t.set_clustered(true);
        t.set_persistence(true);
        let stop = Arc::new(AtomicBool::new(false));
        let sweeper = {
            let (t, stop) = (t.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut out = vec![];
                for k in 1..20_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    t.sweep(epoch + Duration::from_millis(200 * k), &v, &mut out);
                }
            })
        };
        for i in 0..3000 {
            let c = format!("race-{i}");
            ans(&t, epoch, 100, true, (&c, "f", "t"), leg("a"), leg("b"));
            std::hint::spin_loop();
            t.on_bye(&c, "f", "t");
        }
        stop.store(true, Ordering::Relaxed);
        sweeper.join().unwrap();
        let mut saved = std::collections::HashSet::new();
        let mut written = 0;
        for e in t.take_events() {
            match e {
                DlgEvent::Saved(d) => {
                    saved.insert(d.id);
                    written += 1;
                }
                DlgEvent::Removed(id, c) => {
                    assert!(saved.contains(&id), "{c}: removed before written")
                }
            }
        }
        // the test is only as good as the races it saw
        eprintln!("dialogs written before their BYE: {written} of 3000");
    }

    /// SIGTERM must not lose a call confirmed in its last second: `persist_all` writes every
    /// confirmed dialog not yet written, once (before, such calls' BYEs got 481 after the restart).
    #[test]
    fn shutdown_writes_dialogs_younger_than_a_second() {
        let t = Dialogs::new(DialogConfig::default(), (Instant::now(), 100));
        t.set_persistence(true);
        let now = Instant::now();
        ans(&t, now, 100, true, ("young", "f", "t"), leg("a"), leg("b"));
        ans(
            &t,
            now,
            100,
            false,
            ("ringing", "f", "t"),
            leg("a"),
            leg("b"),
        );
        t.persist_all();
        let ev = t.take_events();
        assert!(
            matches!(&ev[..], [DlgEvent::Saved(d)] if d.call_id() == "young"),
            "{ev:?}"
        );
        t.persist_all();
        let mut out = vec![];
        t.sweep(now + Duration::from_secs(2), &v, &mut out);
        assert!(t.take_events().is_empty(), "written once");
    }
}

#[cfg(test)]
mod packed_tests {
    use super::*;

    #[test]
    fn packed_parts_read_back_and_replace() {
        let p = Packed::new(["call", "", "tag", "ü∂"]);
        assert_eq!(
            (p.get(0), p.get(1), p.get(2), p.get(3)),
            ("call", "", "tag", "ü∂")
        );
        assert_eq!(p.heap_len(), 4 + 3 + 5);
        let q = p.with(&[(1, "x"), (3, "")]);
        assert_eq!(
            (q.get(0), q.get(1), q.get(2), q.get(3)),
            ("call", "x", "tag", "")
        );
        let e = Packed::new(["", ""]);
        assert_eq!((e.get(0), e.get(1)), ("", ""));
    }
}
