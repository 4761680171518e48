//! This process as a node of a cluster (`[cluster]`): it claims its id on Redis before
//! anything listens, keeps the claim alive, keeps the list of the nodes' addresses current
//! for the core ([`sip_proxy::cluster::Peers`]), and writes this node's part of the state
//! again when Redis lost it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use sip_proxy::cluster::Peers;
use sip_proxy::dialog::Dialogs;
use sip_proxy::registrar::Registrar;
use store::shared::{Beat, Shared};

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
}

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
    set_peers(&peers, &nodes);
    tracing::info!(
        node = c.node_id,
        %address,
        redis = %store::redact(&c.redis),
        nodes = nodes.len(),
        claim_ms = t.elapsed().as_millis() as u64,
        "cluster node started"
    );
    let state = Arc::new(State::default());
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
    pub fn run(&self, reg: Option<Arc<Registrar>>, dialogs: Option<Arc<Dialogs>>) {
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
                    beat(&shared, address, &peers, &state, reg.as_deref()).await;
                    if let Some(d) = &dialogs {
                        adopt(&peers, d, &state);
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
) {
    let was_up = state.up.load(Ordering::Relaxed);
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
                    state.conflict.store(false, Ordering::Relaxed);
                    state.reclaims.fetch_add(1, Ordering::Relaxed);
                    let n = reg.map_or(0, |r| r.requeue_own(Instant::now()));
                    tracing::warn!(
                        node = shared.node(),
                        bindings = n,
                        "redis had lost this node's claim (flushed, restarted without its data, or unreachable longer than the claim lives): claimed again, and this node's bindings are written again"
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
        Ok(nodes) => set_peers(peers, &nodes),
        Err(e) => tracing::debug!(error = %e, "cluster registry not read"),
    }
}

fn set_peers(peers: &Peers, nodes: &[store::shared::NodeInfo]) {
    peers.set_nodes(nodes.iter().map(|n| (n.node, n.address, n.live)).collect());
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
