//! The driver's side of RFC 3263: the lookups behind the core's `Resolve` commands, with
//! hickory-resolver as the DNS client (its own cache off: the core caches, with stale
//! answers and its own clock).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::Resolver;
use sip_proxy::dns::{Answer, DnsError, Query, Record};
use sip_proxy::Transport;

/// SRV targets of one name looked up at most (an answer listing thousands must not cost
/// thousands of queries), and addresses kept per host.
const MAX_SRV_TARGETS: usize = 16;
const MAX_ADDRESSES: usize = 8;

/// `[dns]` as the driver needs it.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// DNS servers (empty: the system's, from resolv.conf).
    pub servers: Vec<SocketAddr>,
    /// How long one query waits for an answer.
    pub timeout: Duration,
    /// Tries per query and server.
    pub attempts: usize,
    /// The transports the proxy can send over: NAPTR and SRV records for others are
    /// passed over.
    pub transports: Vec<Transport>,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            servers: Vec::new(),
            timeout: Duration::from_secs(2),
            attempts: 2,
            transports: vec![Transport::Udp, Transport::Tcp],
        }
    }
}

/// Resolves SIP URIs' hosts (RFC 3263 §4): NAPTR, then SRV, then A/AAAA.
pub struct SipResolver {
    inner: Resolver<TokioRuntimeProvider>,
    transports: Vec<Transport>,
}

/// The NAPTR service field of a transport (RFC 3263 §4.1).
fn naptr_service(s: &[u8]) -> Option<Transport> {
    Some(match s.to_ascii_uppercase().as_slice() {
        b"SIP+D2U" => Transport::Udp,
        b"SIP+D2T" => Transport::Tcp,
        b"SIPS+D2T" => Transport::Tls,
        b"SIP+D2W" => Transport::Ws,
        b"SIPS+D2W" => Transport::Wss,
        _ => return None,
    })
}

/// The SRV prefix of a transport (RFC 3263 §4.1).
fn srv_prefix(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "_sip._udp",
        Transport::Tcp => "_sip._tcp",
        Transport::Tls => "_sips._tcp",
        Transport::Ws => "_sip._ws",
        Transport::Wss => "_sips._ws",
    }
}

fn default_port(t: Transport) -> u16 {
    match t {
        Transport::Tls | Transport::Wss => 5061,
        _ => 5060,
    }
}

impl SipResolver {
    /// A resolver asking `s.servers` (or the system's).
    pub fn new(s: &DnsSettings) -> Result<SipResolver, String> {
        let (config, mut opts) = if s.servers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("cannot read the system's DNS settings: {e}"))?
        } else {
            let servers = s
                .servers
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            (
                ResolverConfig::from_name_servers(servers),
                ResolverOpts::default(),
            )
        };
        opts.timeout = s.timeout;
        opts.attempts = s.attempts.max(1);
        opts.cache_size = 0;
        opts.ndots = 0;
        let inner = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| format!("cannot start the DNS client: {e}"))?;
        Ok(SipResolver {
            inner,
            transports: s.transports.clone(),
        })
    }

    /// The RFC 3263 procedure for `q`.
    pub async fn resolve(&self, q: &Query) -> Result<Answer, DnsError> {
        let mut ttl = Duration::from_secs(86_400);
        let fqdn = format!("{}.", q.host);
        if let Some(port) = q.port {
            // §4.2: an explicit port means A/AAAA only
            let t = q.transport.unwrap_or(if q.secure {
                Transport::Tls
            } else {
                Transport::Udp
            });
            let ips = self.ips(q, &fqdn, &mut ttl).await?;
            return Ok(answer(ips, 0, 0, t, port, ttl));
        }
        // §4.1: the transports to try, in order, with their SRV names
        let mut srv_names: Vec<(String, Transport)> = Vec::new();
        if let Some(t) = q.transport {
            srv_names.push((format!("{}.{fqdn}", srv_prefix(t)), t));
        } else {
            match self.inner.lookup(fqdn.as_str(), RecordType::NAPTR).await {
                Ok(l) => {
                    check_loop(q, &fqdn, l.answers())?;
                    ttl = ttl.min(until(l.valid_until()));
                    let mut naptrs: Vec<_> = l
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::NAPTR(n) => Some(n.clone()),
                            _ => None,
                        })
                        .filter(|n| n.flags.eq_ignore_ascii_case(b"s"))
                        .filter_map(|n| {
                            let t = naptr_service(&n.services)?;
                            Some((n.order, n.preference, n.replacement.to_string(), t))
                        })
                        .filter(|(.., t)| self.usable(*t, q.secure))
                        .collect();
                    naptrs.sort_by_key(|(o, p, ..)| (*o, *p));
                    srv_names.extend(naptrs.into_iter().map(|(_, _, name, t)| (name, t)));
                }
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
                Err(e) => return Err(failure(q, &e)),
            }
            if srv_names.is_empty() {
                // §4.1: no NAPTR: SRV for each transport the client supports
                for t in &self.transports {
                    if self.usable(*t, q.secure) {
                        srv_names.push((format!("{}.{fqdn}", srv_prefix(*t)), *t));
                    }
                }
            }
        }
        let mut no_service = false;
        for (name, t) in &srv_names {
            let l = match self.inner.lookup(name.as_str(), RecordType::SRV).await {
                Ok(l) => l,
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => continue,
                Err(e) => return Err(failure(q, &e)),
            };
            check_loop(q, name, l.answers())?;
            let mut ttl_srv = ttl.min(until(l.valid_until()));
            let srvs: Vec<_> = l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            if srvs.len() == 1 && srvs[0].target.is_root() {
                no_service = true; // RFC 2782: decidedly not offered here
                continue;
            }
            let mut records = Vec::new();
            let mut srvs: Vec<_> = srvs.into_iter().filter(|s| !s.target.is_root()).collect();
            if srvs.len() > MAX_SRV_TARGETS {
                tracing::warn!(name = %q, targets = srvs.len(), kept = MAX_SRV_TARGETS, "SRV answer with too many targets: the best are kept");
                srvs.sort_by_key(|s| (s.priority, std::cmp::Reverse(s.weight)));
                srvs.truncate(MAX_SRV_TARGETS);
            }
            for s in &srvs {
                let target = s.target.to_string();
                let Some(tq) = Query::new(&target, None, None, false) else {
                    tracing::warn!(name = %q, target, "SRV target is not a host name: passed over");
                    continue;
                };
                match self.ips(&tq, &format!("{}.", tq.host), &mut ttl_srv).await {
                    Ok(ips) => records
                        .extend(answer(ips, s.priority, s.weight, *t, s.port, ttl_srv).records),
                    Err(e) => {
                        tracing::warn!(name = %q, target, error = %e, "SRV target has no address")
                    }
                }
            }
            if !records.is_empty() {
                // the first transport with usable targets is the one (§4.1)
                return Ok(Answer {
                    records,
                    ttl: ttl_srv,
                });
            }
        }
        if no_service {
            return Err(DnsError::NoService {
                name: q.host.to_string(),
            });
        }
        // §4.2: no SRV: the host's addresses with the transport's default port
        let t = q.transport.unwrap_or(if q.secure {
            Transport::Tls
        } else {
            Transport::Udp
        });
        let ips = self.ips(q, &fqdn, &mut ttl).await?;
        Ok(answer(ips, 0, 0, t, default_port(t), ttl))
    }

    fn usable(&self, t: Transport, secure: bool) -> bool {
        self.transports.contains(&t) && (!secure || matches!(t, Transport::Tls | Transport::Wss))
    }

    async fn ips(
        &self,
        q: &Query,
        fqdn: &str,
        ttl: &mut Duration,
    ) -> Result<Vec<IpAddr>, DnsError> {
        match self.inner.lookup_ip(fqdn).await {
            Ok(l) => {
                check_loop(q, fqdn, l.as_lookup().answers())?;
                *ttl = (*ttl).min(until(l.valid_until()));
                Ok(l.iter().take(MAX_ADDRESSES).collect())
            }
            Err(e) if e.is_no_records_found() && self.cname_loops(fqdn).await => {
                Err(DnsError::Invalid {
                    name: q.host.to_string(),
                    detail: format!("CNAME loop at {}", fqdn.trim_end_matches('.')),
                })
            }
            Err(e) => Err(failure(q, &e)),
        }
    }

    /// A name with no address: true when that is because its CNAME chain loops (or runs
    /// longer than any sane chain), which the DNS client reports as "no records".
    async fn cname_loops(&self, name: &str) -> bool {
        let norm = |s: &str| s.trim_end_matches('.').to_ascii_lowercase();
        let mut seen = std::collections::HashSet::new();
        let mut at = norm(name);
        for _ in 0..12 {
            if !seen.insert(at.clone()) {
                return true;
            }
            let Ok(l) = self
                .inner
                .lookup(format!("{at}.").as_str(), RecordType::CNAME)
                .await
            else {
                return false;
            };
            let next = l.answers().iter().find_map(|r| match &r.data {
                RData::CNAME(c) if norm(&r.name.to_string()) == at => Some(norm(&c.0.to_string())),
                _ => None,
            });
            match next {
                Some(n) => at = n,
                None => return false,
            }
        }
        true
    }
}

fn answer(
    ips: Vec<IpAddr>,
    priority: u16,
    weight: u16,
    t: Transport,
    port: u16,
    ttl: Duration,
) -> Answer {
    Answer {
        records: ips
            .into_iter()
            .map(|ip| Record {
                priority,
                weight,
                transport: t,
                addr: SocketAddr::new(ip, port),
            })
            .collect(),
        ttl,
    }
}

/// True when the answer's CNAME records lead from the queried name back to a name already
/// met (a loop), so no record of the asked type can ever be reached.
fn cname_loop(query: &str, answers: &[hickory_resolver::proto::rr::Record]) -> bool {
    let norm = |s: String| s.trim_end_matches('.').to_ascii_lowercase();
    let links: std::collections::HashMap<String, String> = answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::CNAME(c) => Some((norm(r.name.to_string()), norm(c.0.to_string()))),
            _ => None,
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut at = norm(query.to_string());
    while let Some(next) = links.get(&at) {
        if !seen.insert(at.clone()) {
            return true;
        }
        at = next.clone();
    }
    false
}

/// A CNAME loop in the answer about `name` is an unusable answer.
fn check_loop(
    q: &Query,
    name: &str,
    answers: &[hickory_resolver::proto::rr::Record],
) -> Result<(), DnsError> {
    if cname_loop(name, answers) {
        return Err(DnsError::Invalid {
            name: q.host.to_string(),
            detail: format!("CNAME loop at {}", name.trim_end_matches('.')),
        });
    }
    Ok(())
}

fn until(t: Instant) -> Duration {
    t.saturating_duration_since(Instant::now())
}

/// What a DNS client error means for SIP: no such name, a server that did not answer, or
/// an answer that cannot be used.
fn failure(q: &Query, e: &NetError) -> DnsError {
    let name = q.host.to_string();
    if e.is_no_records_found() || e.is_nx_domain() {
        return DnsError::NotFound { name };
    }
    match e {
        NetError::Timeout | NetError::Io(_) | NetError::NoConnections | NetError::Busy => {
            DnsError::Unreachable {
                name,
                detail: e.to_string(),
            }
        }
        NetError::Dns(_) => {
            // SERVFAIL, REFUSED and the like: the server is there but cannot help now
            let detail = e.to_string();
            if detail.to_ascii_lowercase().contains("cname") || detail.contains("loop") {
                DnsError::Invalid { name, detail }
            } else {
                DnsError::Unreachable { name, detail }
            }
        }
        _ => DnsError::Invalid {
            name,
            detail: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::CNAME;
    use hickory_resolver::proto::rr::{Name, Record as DnsRecord};

    fn cname(from: &str, to: &str) -> DnsRecord {
        DnsRecord::from_rdata(
            Name::from_ascii(from).unwrap(),
            60,
            RData::CNAME(CNAME(Name::from_ascii(to).unwrap())),
        )
    }

    #[test]
    fn cname_loops_are_told_from_chains() {
        let looped = [cname("a.test.", "b.test."), cname("b.test.", "a.test.")];
        assert!(cname_loop("a.test.", &looped));
        assert!(
            cname_loop("A.TEST", &looped),
            "names compare without case or root dot"
        );
        let chain = [cname("a.test.", "b.test."), cname("b.test.", "c.test.")];
        assert!(!cname_loop("a.test.", &chain));
        assert!(
            !cname_loop("x.test.", &looped),
            "a loop elsewhere is not this name's"
        );
        let q = Query::new("a.test", None, None, false).unwrap();
        assert!(matches!(
            check_loop(&q, "a.test.", &looped),
            Err(DnsError::Invalid { .. })
        ));
    }

    #[test]
    fn naptr_services_and_srv_names_per_transport() {
        assert_eq!(naptr_service(b"SIP+D2U"), Some(Transport::Udp));
        assert_eq!(naptr_service(b"sip+d2t"), Some(Transport::Tcp));
        assert_eq!(naptr_service(b"SIPS+D2T"), Some(Transport::Tls));
        assert_eq!(naptr_service(b"E2U+sip"), None);
        assert_eq!(srv_prefix(Transport::Udp), "_sip._udp");
        assert_eq!(srv_prefix(Transport::Tls), "_sips._tcp");
        assert_eq!(default_port(Transport::Tls), 5061);
        let r = SipResolver {
            inner: Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![]),
                TokioRuntimeProvider::default(),
            )
            .build()
            .unwrap(),
            transports: vec![Transport::Udp, Transport::Tcp],
        };
        assert!(r.usable(Transport::Udp, false));
        assert!(!r.usable(Transport::Tls, false), "no TLS listener");
        assert!(!r.usable(Transport::Udp, true), "sips: TLS only");
    }
}
