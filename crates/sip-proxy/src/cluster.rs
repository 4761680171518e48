//! The other nodes of a cluster, as the core sees them: addresses that count as "us" for
//! Route processing (a call's route set may name any node: one that died is taken over by
//! another) and as trusted senders (a node hands a request for a user whose connection it
//! does not hold to the node that does). The binary keeps the list current from the shared
//! store's node registry.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

/// This node's id and the SIP addresses of every node of the cluster (itself included),
/// with which of them hold a live claim.
#[derive(Debug)]
pub struct Peers {
    node: u16,
    addrs: RwLock<Arc<[SocketAddr]>>,
    /// Every node of the registry: (id, address, its claim is alive).
    nodes: RwLock<Arc<[(u16, SocketAddr, bool)]>>,
    /// Live nodes whose claim has not been renewed for a while (a node renews every
    /// second): likely dead, not yet known to be.
    quiet: RwLock<Arc<[SocketAddr]>>,
}

impl Peers {
    /// `node`: this node's id (1..=65535; 0 is a process outside any cluster).
    pub fn new(node: u16) -> Peers {
        Peers {
            node,
            addrs: RwLock::new(Arc::from(Vec::new())),
            nodes: RwLock::new(Arc::from(Vec::new())),
            quiet: RwLock::new(Arc::from(Vec::new())),
        }
    }

    pub fn node(&self) -> u16 {
        self.node
    }

    /// Replaces the list with addresses of live nodes whose ids are not known (tests).
    pub fn set(&self, addrs: Vec<SocketAddr>) {
        self.set_nodes(addrs.into_iter().map(|a| (0, a, true)).collect());
    }

    /// Replaces the registry: (id, SIP address, alive) of every node.
    pub fn set_nodes(&self, nodes: Vec<(u16, SocketAddr, bool)>) {
        let mut addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.1).collect();
        addrs.sort();
        addrs.dedup();
        *self.addrs.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(addrs);
        *self.nodes.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(nodes);
    }

    /// Replaces the live nodes whose claim has not been renewed for a while.
    pub fn set_quiet(&self, addrs: Vec<SocketAddr>) {
        let v: Vec<SocketAddr> = addrs.into_iter().map(canonical).collect();
        *self.quiet.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(v);
    }

    /// True when a request of a call set up through the node at `addr` that this node does
    /// not know is to be handed to it: it is live and renewed its claim lately. A node gone
    /// quiet is likely dead (killed, cut off): a request handed to it would be lost, so
    /// this node follows the call's signed route itself (the node, if alive after all,
    /// keeps its record of the call until its lifetime ends).
    pub fn takes_handoff(&self, addr: SocketAddr) -> bool {
        let a = canonical(addr);
        self.is_live(addr)
            && !self
                .quiet
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&a)
    }

    /// Every node of the registry: (id, address, alive).
    pub fn nodes(&self) -> Arc<[(u16, SocketAddr, bool)]> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// True when the node at `addr` held a live claim at the last heartbeat (a node whose
    /// claim lapsed is dead: its calls are taken over, not handed to it).
    pub fn is_live(&self, addr: SocketAddr) -> bool {
        let a = canonical(addr);
        self.nodes().iter().any(|n| canonical(n.1) == a && n.2)
    }

    /// The nodes whose calls this node takes over: the dead ones, when this node has the
    /// lowest id of the live ones (one node does it, and every node agrees which from the
    /// same registry). Empty on every other node.
    pub fn adopted(&self) -> Vec<u16> {
        let nodes = self.nodes();
        let lowest_live = nodes.iter().filter(|n| n.2).map(|n| n.0).min();
        if lowest_live.is_none_or(|l| l != self.node) {
            return Vec::new();
        }
        let mut dead: Vec<u16> = nodes
            .iter()
            .filter(|n| !n.2 && n.0 != self.node && n.0 != 0)
            .map(|n| n.0)
            .collect();
        dead.sort_unstable();
        dead.dedup();
        dead
    }

    pub fn list(&self) -> Arc<[SocketAddr]> {
        self.addrs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// True when `addr` is a node's SIP address (exact: address and port).
    pub fn contains(&self, addr: SocketAddr) -> bool {
        let a = canonical(addr);
        self.addrs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|p| canonical(*p) == a)
    }

    /// True when a node listens on `ip`:`port`.
    pub fn names(&self, ip: std::net::IpAddr, port: u16) -> bool {
        self.contains(SocketAddr::new(ip, port))
    }
}

/// An IPv4-mapped IPv6 address as IPv4, so a dual-stack socket's view matches the list.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_match_exact_addresses_only() {
        let p = Peers::new(2);
        assert!(!p.contains("127.0.0.1:5060".parse().unwrap()));
        p.set(vec![
            "127.0.0.1:5062".parse().unwrap(),
            "127.0.0.1:5060".parse().unwrap(),
            "127.0.0.1:5060".parse().unwrap(),
        ]);
        assert_eq!(p.list().len(), 2);
        assert!(p.contains("127.0.0.1:5060".parse().unwrap()));
        assert!(
            !p.contains("127.0.0.1:5070".parse().unwrap()),
            "another port on a node's host is not a node"
        );
        assert!(p.contains("[::ffff:127.0.0.1]:5062".parse().unwrap()));
        assert_eq!(p.node(), 2);
    }

    #[test]
    fn the_lowest_live_node_takes_over_the_dead_ones() {
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let reg = vec![
            (1, a("127.0.0.1:5060"), false),
            (2, a("127.0.0.1:5062"), true),
            (3, a("127.0.0.1:5064"), true),
            (4, a("127.0.0.1:5066"), false),
        ];
        let two = Peers::new(2);
        let three = Peers::new(3);
        two.set_nodes(reg.clone());
        three.set_nodes(reg.clone());
        assert_eq!(two.adopted(), vec![1, 4], "node 2 is the lowest live one");
        assert!(three.adopted().is_empty(), "one node takes over, not two");
        assert!(!two.is_live(a("127.0.0.1:5060")));
        assert!(two.is_live(a("[::ffff:127.0.0.1]:5064")));
        assert!(!two.is_live(a("127.0.0.1:5099")), "no node there");
        // a live node gone quiet is not handed calls, and is not taken over either
        assert!(two.takes_handoff(a("127.0.0.1:5064")));
        two.set_quiet(vec![a("[::ffff:127.0.0.1]:5064")]);
        assert!(!two.takes_handoff(a("127.0.0.1:5064")) && two.is_live(a("127.0.0.1:5064")));
        assert!(
            !two.takes_handoff(a("127.0.0.1:5060")),
            "a dead node takes nothing"
        );
        assert_eq!(two.adopted(), vec![1, 4]);
        two.set_quiet(vec![]);
        assert!(two.takes_handoff(a("127.0.0.1:5064")));
        // node 1 back: nothing to take over
        let mut back = reg;
        back[0].2 = true;
        back[3].2 = true;
        two.set_nodes(back);
        assert!(two.adopted().is_empty());
        // this node itself not live (its claim lapsed, Redis lost it): it adopts nothing
        let alone = Peers::new(5);
        alone.set_nodes(vec![
            (5, a("127.0.0.1:5068"), false),
            (6, a("127.0.0.1:5070"), false),
        ]);
        assert!(alone.adopted().is_empty());
    }
}
