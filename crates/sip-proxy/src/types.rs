use std::net::SocketAddr;

use bytes::Bytes;

/// A SIP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    /// Reliable transports need no retransmissions (§17.1.1.2).
    pub fn is_reliable(self) -> bool {
        self != Transport::Udp
    }

    /// The token used in Via (`SIP/2.0/UDP`).
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// The `transport=` URI parameter value (`None` for UDP, the default).
    pub fn uri_param(self) -> Option<&'static str> {
        match self {
            Transport::Udp => None,
            Transport::Tcp => Some("tcp"),
            Transport::Tls => Some("tls"),
            Transport::Ws => Some("ws"),
            Transport::Wss => Some("wss"),
        }
    }

    /// Parses a transport name (URI parameter, Via token or config value), any case.
    pub fn parse(s: &str) -> Option<Transport> {
        Some(match s.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.via_name())
    }
}

/// A connection (TCP/TLS/WS) known to the driver; messages can be sent back over it.
pub type FlowId = u64;

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// The connection it arrived on, for reliable transports.
    pub flow: Option<FlowId>,
}

impl Source {
    /// Where a reply to this source goes: back to its address, over its connection if any
    /// (symmetric response routing, like RFC 3581 rport for every client).
    pub fn reply_target(&self) -> Target {
        Target {
            transport: self.transport,
            addr: self.addr,
            flow: self.flow,
        }
    }
}

/// Where a message must go. When `flow` is set and still open, the driver uses it;
/// otherwise it sends to (or connects to) `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub flow: Option<FlowId>,
}

/// Who owns a transaction the proxy started. Each transmission carries it, so a send
/// failure goes back to its owner ([`crate::Proxy::on_transport_error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Branch `branch` of the relayed request in context `ctx`.
    Relay { ctx: u64, branch: u32 },
    /// The router's health probe `id`.
    Probe(u64),
    /// The registrar's NAT keepalive `id`.
    KeepAlive(u64),
}

/// One message for the driver to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub target: Target,
    pub data: Bytes,
    pub origin: Option<Origin>,
    /// The name a TLS connection opened for this message must find in the server's
    /// certificate (RFC 5922: the host of the URI that was resolved); `None`: the IP address.
    pub tls_name: Option<std::sync::Arc<str>>,
}

/// A router's handle on a destination, carried through the core untouched.
pub type NodeRef = std::sync::Arc<dyn std::any::Any + Send + Sync>;

/// A next hop chosen by a [`crate::Router`].
#[derive(Debug, Clone)]
pub struct Destination {
    /// The destination URI as configured (for logs and the API).
    pub uri: std::sync::Arc<str>,
    pub transport: Transport,
    pub addr: SocketAddr,
    /// A connection to use when it is still open (the flow token of a Record-Route).
    pub flow: Option<FlowId>,
    /// The router's own handle on what stands behind the candidate (a dispatcher
    /// destination), for its health feedback and call counting: opaque to the core, which
    /// hands it back in the router's callbacks.
    pub node: Option<NodeRef>,
    /// Route header values to put on the request (a registered contact's Path, RFC 3327);
    /// `uri` then becomes the Request-URI and `addr` is the first Route's.
    pub route: Option<std::sync::Arc<str>>,
    /// A host name still to resolve (RFC 3263): `addr` is a placeholder until the core
    /// expands the name into one candidate per address it leads to.
    pub name: Option<std::sync::Arc<crate::dns::Query>>,
}

impl Destination {
    /// A destination from a `sip:`/`sips:` URI: an IP address (port 5060 by default), or
    /// a host name resolved per request (RFC 3263). Only UDP and TCP are served yet.
    pub fn from_uri(s: &str) -> Result<Destination, crate::Error> {
        use sip_wire::{Scheme, Uri};
        let bad = |why: String| crate::Error::Invalid(format!("{s:?}: {why}"));
        let uri = Uri::parse(s).map_err(|e| bad(format!("not a SIP URI ({e})")))?;
        if !matches!(uri.scheme, Scheme::Sip | Scheme::Sips) {
            return Err(bad("scheme must be sip or sips".into()));
        }
        let transport = match uri.transport() {
            Some(t) => Transport::parse(t).ok_or_else(|| bad(format!("unknown transport {t}")))?,
            None if uri.scheme == Scheme::Sips => Transport::Tls,
            None => Transport::Udp,
        };
        if !matches!(transport, Transport::Udp | Transport::Tcp) {
            return Err(bad(format!(
                "transport {transport} is not supported yet (udp, tcp)"
            )));
        }
        let host = uri.host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(Destination {
                uri: s.into(),
                transport,
                addr: SocketAddr::new(ip, uri.port.unwrap_or(5060)),
                flow: None,
                node: None,
                route: None,
                name: None,
            });
        }
        let explicit = uri.transport().and(Some(transport));
        let q = crate::dns::Query::new(uri.host, uri.port, explicit, uri.scheme == Scheme::Sips)
            .ok_or_else(|| bad("host is neither an IP address nor a valid host name".into()))?;
        Ok(Destination {
            uri: s.into(),
            transport,
            addr: SocketAddr::new(
                std::net::Ipv4Addr::UNSPECIFIED.into(),
                uri.port.unwrap_or(0),
            ),
            flow: None,
            node: None,
            route: None,
            name: Some(std::sync::Arc::new(q)),
        })
    }
}
