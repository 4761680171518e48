use std::net::SocketAddr;
use std::time::Duration;

use sip_txn::TimerConfig;

use crate::types::Transport;

/// A listening socket as the proxy advertises it in Via and Record-Route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub transport: Transport,
    /// The address written into Via and Record-Route (the bind address unless configured).
    pub advertise: SocketAddr,
}

/// The validated settings of the proxy core.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listeners: Vec<Listener>,
    /// Host names that mean this proxy in a Request-URI or Route.
    pub aliases: Vec<String>,
    pub timers: TimerConfig,
    /// How long a branch may stay silent (no response at all) before the proxy gives up on
    /// it and fails over to the next destination (Kamailio's `fr_timer`).
    pub branch_timeout: Duration,
    /// Final responses from a destination that make the proxy try the next one.
    pub failover_codes: Vec<u16>,
    /// Max-Forwards added to requests that have none.
    pub max_forwards: u8,
    /// Number of table shards (a power of two is not required).
    pub shards: usize,
    /// Largest message accepted; larger ones get `513 Message Too Large`.
    pub max_message_size: usize,
    /// Seed that makes this instance's branch parameters and tags its own.
    pub salt: u64,
    /// The MAC key of branches, flow tokens and Record-Route signatures (from the secret the
    /// binary keeps; nodes of a cluster share it).
    pub keys: crate::mac::Keys,
    /// Server and User-Agent of what the proxy writes itself (empty: no such header).
    pub server: std::sync::Arc<str>,
    /// Reason phrases of 5xx/480 the proxy writes keep their details (otherwise they go to
    /// the log only: they describe the topology behind the proxy).
    pub detailed_reasons: bool,
    /// Bytes the reply cache (replies to REGISTER and challenges, for retransmissions) may
    /// hold.
    pub reply_cache_bytes: usize,
    /// Live transactions one source (not a media server or allowed network) may have; more
    /// get `503` (0: no limit).
    pub max_transactions_per_source: usize,
    /// Header fields a message may have; more get `400`.
    pub max_headers: usize,
    /// Via entries a request may carry; more get `400`.
    pub max_vias: usize,
    /// A media server is recognised by its IP address alone (FreeSWITCH sends from each
    /// profile's port, and over TCP from ephemeral ports); off: by address and port, for
    /// hosts where users share an address with a media server.
    pub media_servers_by_address: bool,
    /// With `media_servers_by_address`, a media server on a loopback address (a one-host
    /// setup, where users and local tools share the address) is still matched by port.
    pub loopback_by_port: bool,
    /// Addresses the listeners are bound to where they advertise another (a proxy behind
    /// NAT or a cloud load balancer): requests naming them are ours too.
    pub bound: Vec<SocketAddr>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listeners: Vec::new(),
            aliases: Vec::new(),
            timers: TimerConfig::default(),
            branch_timeout: Duration::from_secs(2),
            failover_codes: (500..600).chain([408]).collect(),
            max_forwards: 70,
            shards: 64,
            max_message_size: 65535,
            salt: 0x5b5b_1234,
            keys: crate::mac::Keys::default(),
            server: crate::build::SERVER.into(),
            detailed_reasons: false,
            reply_cache_bytes: 16 << 20,
            max_transactions_per_source: 5000,
            max_headers: 256,
            max_vias: 32,
            media_servers_by_address: false,
            loopback_by_port: false,
            bound: Vec::new(),
        }
    }
}
