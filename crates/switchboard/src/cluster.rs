//! This process as a node of a cluster (`[cluster]`): it claims its id on Redis before
//! anything listens, keeps the claim alive, keeps the list of the nodes' addresses current
//! for the core ([`sip_proxy::cluster::Peers`]), and writes this node's part of the state
//! again when Redis lost it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sip_proxy::cluster::Peers;
use sip_proxy::dialog::Dialogs;
use sip_proxy::registrar::Registrar;
use store::shared::{Beat, DialogFollower, Shared};

use crate::cluster_config::ClusterSettings;

/// The running node.
pub struct Node {
    pub shared: Shared,
    pub address: SocketAddr,
    pub peers: Arc<Peers>,
    pub state: Arc<State>,
}

/// What the heartbeat saw last, for `/metrics`.
#[derive(Default)]
pub struct State {
    /// Redis answered the last heartbeat.
    pub up: AtomicBool,
    /// Another process held this node's id at the last heartbeat.
    pub conflict: AtomicBool,
    /// Times Redis had lost this node's claim (flushed, or restarted without its data).
    pub reclaims: AtomicU64,
    /// Dead nodes whose calls this node has taken over.
    pub adopted: AtomicU64,
    /// Every node seen in the registry.
    pub known: Known,
}

/// What this node knows of the others: every node it has seen in the registry, with the
/// instant until which its claim was known to live. A node is dead once that passes
/// without a renewal seen. Redis losing its data (a flush, a restart without persistence)
/// or not answering for a while says nothing of the nodes: each live one claims again
/// within a heartbeat, so then every node that was live is given a claim's life before it
/// is judged (a node already dead stays dead).
#[derive(Default)]
pub struct Known(Mutex<KnownNodes>);

#[derive(Default)]
pub struct KnownNodes {
    nodes: HashMap<u16, (SocketAddr, Instant)>,
    /// When the nodes were last judged.
    judged: Option<Instant>,
}

impl Known {
    /// Takes a registry read at `now` in (`grace`: Redis lost its data or was away) and
    /// gives the nodes for [`Peers::set_nodes`]: (id, address, alive).
    pub fn update(
        &self,
        nodes: &[store::shared::NodeInfo],
        now: Instant,
        grace: bool,
    ) -> Vec<(u16, SocketAddr, bool)> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let judged = g.judged.replace(now).unwrap_or(now);
        if grace {
            for e in g.nodes.values_mut().filter(|e| e.1 > judged) {
                e.1 = e.1.max(now + store::shared::CLAIM_TTL);
            }
        }
        for n in nodes {
            let until = now + Duration::from_millis(n.live_ms);
            let e = g.nodes.entry(n.node).or_insert((n.address, until));
            e.0 = n.address;
            e.1 = e.1.max(until);
        }
        let mut out: Vec<_> = g
            .nodes
            .iter()
            .map(|(id, (a, u))| (*id, *a, *u > now))
            .collect();
        out.sort_unstable_by_key(|n| n.0);
        out
    }

    /// The live nodes (other than `me`) whose claim has not been renewed for [`QUIET`]
    /// (for [`Peers::set_quiet`]): a node renews every second, so one silent for three is
    /// likely dead.
    pub fn quiet(&self, me: u16, now: Instant) -> Vec<SocketAddr> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.nodes
            .iter()
            .filter(|(id, (_, u))| {
                **id != me && *u > now && *u < now + (store::shared::CLAIM_TTL - QUIET)
            })
            .map(|(_, (a, _))| *a)
            .collect()
    }
}

/// How long a node's claim may go without renewal before it is quiet ([`Known::quiet`]).
const QUIET: Duration = Duration::from_secs(3);

/// Connects to Redis and claims the node id: a refusal here (unreachable, or the id held
/// by a live process) stops the start with the reason.
pub fn start(
    rt: &tokio::runtime::Runtime,
    c: &ClusterSettings,
    cfg: &crate::config::Config,
) -> anyhow::Result<Node> {
    let first_udp = cfg
        .proxy
        .listeners
        .iter()
        .find(|l| l.transport == sip_proxy::Transport::Udp)
        .map(|l| l.advertise);
    let address = match c.address.or(first_udp) {
        Some(a) if !a.ip().is_unspecified() => a,
        _ => anyhow::bail!(
            "cluster.address: set this node's SIP address as the other nodes reach it (there is no UDP listener with a specific address to take it from)"
        ),
    };
    let shared = rt
        .block_on(Shared::connect(
            &c.redis,
            &c.key_prefix,
            c.node_id,
            c.timeout,
        ))
        .context("cluster.redis")?;
    let t = Instant::now();
    rt.block_on(shared.claim(address, c.claim_wait))
        .context("cluster.node_id")?;
    let peers = Arc::new(Peers::new(c.node_id));
    let nodes = rt.block_on(shared.nodes()).context("cluster.redis")?;
    let state = Arc::new(State::default());
    let now = Instant::now();
    peers.set_nodes(state.known.update(&nodes, now, false));
    peers.set_quiet(state.known.quiet(c.node_id, now));
    tracing::info!(
        node = c.node_id,
        %address,
        redis = %store::redact(&c.redis),
        nodes = nodes.len(),
        claim_ms = t.elapsed().as_millis() as u64,
        "cluster node started"
    );
    state.up.store(true, Ordering::Relaxed);
    Ok(Node {
        shared,
        address,
        peers,
        state,
    })
}

impl Node {
    /// Starts the heartbeat (every second, supervised): renews the claim, reads the node
    /// registry into the peers, writes this node's bindings again when Redis lost them, and
    /// takes the dialogs of dead nodes over when this node is the one to.
    pub fn run(&self, reg: Option<Arc<Registrar>>, dialogs: Option<DialogFollower>) {
        let (shared, address, peers, state) = (
            self.shared.clone(),
            self.address,
            self.peers.clone(),
            self.state.clone(),
        );
        net::supervise::spawn("cluster-heartbeat", move || {
            let (shared, peers, state, reg, dialogs) = (
                shared.clone(),
                peers.clone(),
                state.clone(),
                reg.clone(),
                dialogs.clone(),
            );
            async move {
                loop {
                    tokio::time::sleep(store::shared::HEARTBEAT).await;
                    beat(
                        &shared,
                        address,
                        &peers,
                        &state,
                        reg.as_deref(),
                        dialogs.as_ref(),
                    )
                    .await;
                    if let Some(d) = &dialogs {
                        adopt(&peers, &d.dialogs, &state);
                    }
                }
            }
        });
    }
}

async fn beat(
    shared: &Shared,
    address: SocketAddr,
    peers: &Peers,
    state: &State,
    reg: Option<&Registrar>,
    dialogs: Option<&DialogFollower>,
) {
    let was_up = state.up.load(Ordering::Relaxed);
    let mut grace = !was_up;
    match shared.heartbeat(address).await {
        Ok(b) => {
            if !was_up {
                tracing::warn!(
                    node = shared.node(),
                    "redis answers again: cluster state shared again"
                );
            }
            state.up.store(true, Ordering::Relaxed);
            match b {
                Beat::Renewed => {
                    state.conflict.store(false, Ordering::Relaxed);
                }
                Beat::Reclaimed => {
                    grace = true;
                    state.conflict.store(false, Ordering::Relaxed);
                    state.reclaims.fetch_add(1, Ordering::Relaxed);
                    let n = reg.map_or(0, |r| r.requeue_own(Instant::now()));
                    // this node's calls: written again, except those another node ended
                    // meanwhile (marked in Redis by its write of their removal)
                    let (mut ended, mut written) = (0, 0);
                    if let Some(f) = dialogs {
                        let own = f.dialogs.own_saved().into_iter();
                        match store::shared::settle_own_dialogs(
                            shared,
                            f,
                            own.map(|(id, c)| (id, c, false)).collect(),
                        )
                        .await
                        {
                            Ok(r) => (ended, written) = r,
                            Err(e) => tracing::debug!(error = %e, "calls not settled yet"),
                        }
                    }
                    tracing::warn!(
                        node = shared.node(),
                        bindings = n,
                        calls_written = written,
                        calls_ended_elsewhere = ended,
                        "redis had lost this node's claim (flushed, restarted without its data, or unreachable longer than the claim lives): claimed again, and this node's bindings and calls are written again"
                    );
                }
                Beat::Taken(other) => {
                    if !state.conflict.swap(true, Ordering::Relaxed) {
                        tracing::error!(
                            node = shared.node(),
                            holder = ?other.map(|o| o.address),
                            "another process holds this node's id: two nodes are configured with the same [cluster] node_id; their bindings and calls overwrite each other's until one is stopped"
                        );
                    }
                }
            }
        }
        Err(e) => {
            if was_up {
                tracing::error!(node = shared.node(), error = %e, "redis does not answer: this node goes on with what it holds in memory; changes are queued and written when it answers");
            }
            state.up.store(false, Ordering::Relaxed);
            return;
        }
    }
    match shared.nodes().await {
        Ok(nodes) => {
            let now = Instant::now();
            peers.set_nodes(state.known.update(&nodes, now, grace));
            peers.set_quiet(state.known.quiet(shared.node(), now));
        }
        Err(e) => tracing::debug!(error = %e, "cluster registry not read"),
    }
}

/// Dead nodes' calls: the lowest live node expires them (BYEs, CDRs, their records
/// removed); given back when the node lives again. Kept while Redis does not answer.
fn adopt(peers: &Peers, dialogs: &Dialogs, state: &State) {
    if !state.up.load(Ordering::Relaxed) {
        return;
    }
    let dead = peers.adopted();
    if dialogs.set_adopted(&dead) {
        state.adopted.store(dead.len() as u64, Ordering::Relaxed);
        if dead.is_empty() {
            tracing::info!("no dead node's calls to take over now");
        } else {
            tracing::warn!(nodes = ?dead, "cluster nodes are down (their claims lapsed): this node ends their calls at the end of their lifetime");
        }
    }
}

/// The cluster's series for `/metrics`.
pub fn metrics(node: &Node, out: &mut String) {
    use std::fmt::Write as _;
    let s = &node.state;
    let h = &store::behind::SHARED_HEALTH;
    let up = s.up.load(Ordering::Relaxed) && h.up();
    let _ = writeln!(
        out,
        "# HELP switchboard_cluster_redis_up 1 while Redis answers this node's heartbeats and takes its writes\n# TYPE switchboard_cluster_redis_up gauge\nswitchboard_cluster_redis_up {}",
        u8::from(up)
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_cluster_redis_outages_total times writes to Redis started failing\n# TYPE switchboard_cluster_redis_outages_total counter\nswitchboard_cluster_redis_outages_total {}",
        h.outages()
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_cluster_redis_replayed_total changes written to Redis after waiting for it to come back\n# TYPE switchboard_cluster_redis_replayed_total counter\nswitchboard_cluster_redis_replayed_total {}",
        h.replayed()
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_cluster_nodes nodes in the cluster's registry (this one included)\n# TYPE switchboard_cluster_nodes gauge\nswitchboard_cluster_nodes {}",
        node.peers.list().len()
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_cluster_nodes_live nodes holding a live claim at the last heartbeat (this one included)\n# TYPE switchboard_cluster_nodes_live gauge\nswitchboard_cluster_nodes_live {}",
        node.peers.nodes().iter().filter(|n| n.2).count()
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_cluster_adopted_nodes dead nodes whose calls this node has taken over\n# TYPE switchboard_cluster_adopted_nodes gauge\nswitchboard_cluster_adopted_nodes {}",
        s.adopted.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_cluster_following 1 while this node follows the other nodes' changes\n# TYPE switchboard_cluster_following gauge\nswitchboard_cluster_following {}",
        u8::from(store::shared::FOLLOWING.load(Ordering::Relaxed))
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_cluster_id_conflict 1 while another process holds this node's id\n# TYPE switchboard_cluster_id_conflict gauge\nswitchboard_cluster_id_conflict {}",
        u8::from(s.conflict.load(Ordering::Relaxed))
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_cluster_reclaims_total times Redis had lost this node's state and it was written again\n# TYPE switchboard_cluster_reclaims_total counter\nswitchboard_cluster_reclaims_total {}",
        s.reclaims.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_cluster_bad_records_total records read from Redis and skipped as malformed\n# TYPE switchboard_cluster_bad_records_total counter\nswitchboard_cluster_bad_records_total {}",
        node.shared.bad_records()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::shared::NodeInfo;

    fn info(node: u16, port: u16, live_ms: u64) -> NodeInfo {
        NodeInfo {
            node,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            started: 1,
            token: "t".into(),
            live_ms,
        }
    }

    /// A node is dead when its claim lapses, not when Redis forgets it: a flush or an
    /// outage leaves every node a claim's life to claim again.
    #[test]
    fn a_node_is_dead_when_its_claim_lapses_not_when_redis_forgets_it() {
        let k = Known::default();
        let t = Instant::now();
        let live =
            |v: &[(u16, SocketAddr, bool)], id: u16| v.iter().find(|n| n.0 == id).map(|n| n.2);
        let v = k.update(&[info(1, 5060, 5000), info(2, 5062, 5000)], t, false);
        assert_eq!((live(&v, 1), live(&v, 2)), (Some(true), Some(true)));
        // Redis flushed: the registry is empty; both stay known and alive meanwhile
        let v = k.update(&[], t + Duration::from_secs(1), true);
        assert_eq!((live(&v, 1), live(&v, 2)), (Some(true), Some(true)));
        // node 1 claims again, node 2 never does: dead once the grace is over
        let v = k.update(&[info(1, 5060, 5000)], t + Duration::from_secs(5), false);
        assert_eq!(live(&v, 2), Some(true), "within the claim's life");
        let v = k.update(
            &[info(1, 5060, 5000)],
            t + Duration::from_millis(6100),
            false,
        );
        assert_eq!((live(&v, 1), live(&v, 2)), (Some(true), Some(false)));
        assert_eq!(
            v.iter().find(|n| n.0 == 2).map(|n| n.1.port()),
            Some(5062),
            "its address kept"
        );
        // a claim seen lapsing: dead at the instant it would lapse
        let v = k.update(
            &[info(1, 5060, 300), info(2, 5062, 0)],
            t + Duration::from_secs(7),
            false,
        );
        assert_eq!(
            live(&v, 1),
            Some(true),
            "the renewal seen at 6.1 s still runs"
        );
        let v = k.update(&[info(1, 5060, 0)], t + Duration::from_secs(12), false);
        assert_eq!(live(&v, 1), Some(false));
        // quiet: live, but not renewed for three seconds (its claim has less than two left)
        let q = Known::default();
        q.update(
            &[
                info(1, 5060, 5000),
                info(2, 5062, 4500),
                info(3, 5064, 1900),
            ],
            t,
            false,
        );
        assert_eq!(
            q.quiet(9, t).iter().map(|a| a.port()).collect::<Vec<_>>(),
            [5064]
        );
        assert!(q.quiet(3, t).is_empty(), "never this node itself");
        let mut later = q.quiet(9, t + Duration::from_millis(2600));
        later.sort();
        assert_eq!(
            later.iter().map(|a| a.port()).collect::<Vec<_>>(),
            [5062],
            "3 is dead by then"
        );
        // an outage's grace: the nodes live when last judged get a claim's life, the dead
        // one stays dead
        let v = q.update(&[], t + Duration::from_millis(2000), false);
        assert_eq!(live(&v, 3), Some(false));
        let v = q.update(&[], t + Duration::from_millis(2600), true);
        assert!(q.quiet(9, t + Duration::from_millis(2600)).is_empty());
        assert_eq!((live(&v, 2), live(&v, 3)), (Some(true), Some(false)));
        // a long outage: nothing judged meanwhile; the nodes live at the last judgement
        // get the grace, even though their claims have lapsed by now
        let v = q.update(&[], t + Duration::from_secs(60), true);
        assert_eq!(
            (live(&v, 1), live(&v, 2), live(&v, 3)),
            (Some(true), Some(true), Some(false))
        );
    }
}
