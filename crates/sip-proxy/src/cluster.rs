//! The other nodes of a cluster, as the core sees them: addresses that count as "us" for
//! Route processing (a call's route set may name any node: one that died is taken over by
//! another) and as trusted senders (a node hands a request for a user whose connection it
//! does not hold to the node that does). The binary keeps the list current from the shared
//! store's node registry.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

/// This node's id and the SIP addresses of every node of the cluster (itself included).
#[derive(Debug)]
pub struct Peers {
    node: u16,
    addrs: RwLock<Arc<[SocketAddr]>>,
}

impl Peers {
    /// `node`: this node's id (1..=65535; 0 is a process outside any cluster).
    pub fn new(node: u16) -> Peers {
        Peers {
            node,
            addrs: RwLock::new(Arc::from(Vec::new())),
        }
    }

    pub fn node(&self) -> u16 {
        self.node
    }

    /// Replaces the list (sorted and deduplicated here).
    pub fn set(&self, mut addrs: Vec<SocketAddr>) {
        addrs.sort();
        addrs.dedup();
        *self.addrs.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(addrs);
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
}
