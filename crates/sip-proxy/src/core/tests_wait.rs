//! Requests parked on a command (a DNS lookup of a destination's name), on the virtual
//! clock: answered in time, late, never; retransmitted and cancelled while waiting; many
//! at once.

use std::time::Duration;

use super::*;
use crate::dns::{DnsConfig, DnsError};
use crate::scenario::*;

const UAC: &str = "127.0.0.1:5070";

/// A proxy whose one destination is `sip:fs.example.test` (a name).
fn named_proxy(dns: DnsConfig) -> Scenario {
    let cfg = ProxyConfig {
        listeners: vec![crate::config::Listener {
            transport: Transport::Udp,
            advertise: "127.0.0.1:5060".parse().unwrap(),
        }],
        ..ProxyConfig::default()
    };
    let q = crate::dns::Query::new("fs.example.test", None, None, false).unwrap();
    let dest = Destination {
        uri: "sip:fs.example.test".into(),
        transport: Transport::Udp,
        addr: ([0, 0, 0, 0], 0).into(),
        flow: None,
        node: None,
        route: None,
        name: Some(Arc::new(q)),
    };
    let p = Proxy::new(cfg, Arc::new(crate::RoundRobin::new(vec![dest])))
        .with_dns(Arc::new(crate::dns::Cache::new(dns)));
    Scenario::new(p)
}

fn invite(call: &str) -> String {
    format!("INVITE sip:1000@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{call}\r\nFrom: <sip:a@h>;tag=ft\r\nTo: <sip:1000@h>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5070>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
}

fn cancel(call: &str) -> String {
    format!("CANCEL sip:1000@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{call}\r\nFrom: <sip:a@h>;tag=ft\r\nTo: <sip:1000@h>\r\nCall-ID: {call}\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
}

const FS1: &str = "127.0.0.21:5080";
const FS2: &str = "127.0.0.22:5080";

fn two_targets() -> crate::command::EventResult {
    resolved(&[(20, 1, FS2), (10, 1, FS1)], 60)
}

fn stat(s: &Scenario, f: impl Fn(&Stats) -> &AtomicU64) -> u64 {
    f(s.proxy.stats()).load(Ordering::Relaxed)
}

#[test]
fn answer_in_time_resumes_the_request_in_srv_priority_order_with_failover() {
    let mut s = named_proxy(DnsConfig::default());
    let out = s.send(UAC, &invite("c1"));
    assert_eq!(
        summary(&out),
        ["100->127.0.0.1:5070"],
        "parked: Trying only"
    );
    let (id, q) = s.one_lookup();
    assert_eq!(&*q.host, "fs.example.test");
    assert_eq!(s.proxy.waiting(), 1);
    let out = s.answer(id, two_targets());
    assert_eq!(
        summary(&out),
        [format!("INVITE->{FS1}")],
        "priority 10 first"
    );
    assert_eq!(s.proxy.waiting(), 0);
    // the first target fails: the second target of the same name gets the call
    let fwd = msg(&out[0]);
    let out = s.send(FS1, &reply(&fwd, 503, "x"));
    assert!(
        summary(&out).contains(&format!("INVITE->{FS2}")),
        "{:?}",
        summary(&out)
    );
    // a new call finds the name in the cache: no command, relayed at once
    let out = s.send(UAC, &invite("c2"));
    assert_eq!(
        summary(&out),
        ["100->127.0.0.1:5070".to_string(), format!("INVITE->{FS1}")]
    );
    assert!(s.commands().is_empty());
}

#[test]
fn a_silent_first_target_fails_over_within_the_branch_timer() {
    let mut s = named_proxy(DnsConfig::default());
    s.send(UAC, &invite("c1"));
    let (id, _) = s.one_lookup();
    s.answer(id, two_targets());
    let out = s.advance(Duration::from_millis(2100));
    assert!(
        summary(&out).contains(&format!("INVITE->{FS2}")),
        "{:?}",
        summary(&out)
    );
}

#[test]
fn no_answer_by_the_deadline_is_503_naming_the_name_and_a_late_answer_is_dropped() {
    let mut s = named_proxy(DnsConfig {
        wait: Duration::from_secs(3),
        ..DnsConfig::default()
    });
    s.send(UAC, &invite("c1"));
    let (id, _) = s.one_lookup();
    assert!(s
        .advance(Duration::from_millis(2900))
        .iter()
        .all(|t| msg(t).status() == Some(100)));
    let out = s.advance(Duration::from_millis(200));
    let finals: Vec<_> = out
        .iter()
        .map(msg)
        .filter(|m| m.status() == Some(503))
        .collect();
    assert_eq!(finals.len(), 1, "{:?}", summary(&out));
    assert_eq!(stat(&s, |x| &x.waits_timed_out), 1);
    assert_eq!(s.proxy.waiting(), 0);
    // the answer comes after all: dropped, nothing sent
    let out = s.answer(id, two_targets());
    assert!(out.is_empty(), "{:?}", summary(&out));
    assert_eq!(stat(&s, |x| &x.events_late), 1);
    // the ACK for the 503 ends the transaction; nothing stays behind
    s.advance(Duration::from_secs(40));
    assert_eq!(s.proxy.active_contexts(), 0);
}

#[test]
fn detailed_reason_names_the_name_that_did_not_answer() {
    let mut s = named_proxy(DnsConfig {
        wait: Duration::from_secs(1),
        ..DnsConfig::default()
    });
    s.proxy.cfg.detailed_reasons = true;
    s.send(UAC, &invite("c1"));
    s.one_lookup();
    let out = s.advance(Duration::from_secs(2));
    let r = out.iter().find(|t| msg(t).status() == Some(503)).unwrap();
    let line = String::from_utf8_lossy(&r.data)
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert!(line.contains("fs.example.test"), "{line}");
}

#[test]
fn a_retransmission_while_waiting_is_absorbed_without_a_second_lookup() {
    let mut s = named_proxy(DnsConfig::default());
    s.send(UAC, &invite("c1"));
    s.one_lookup();
    let out = s.send(UAC, &invite("c1"));
    assert_eq!(
        summary(&out),
        ["100->127.0.0.1:5070"],
        "the Trying again, nothing relayed"
    );
    assert!(s.commands().is_empty(), "no second lookup");
    assert_eq!(stat(&s, |x| &x.retransmissions_absorbed), 1);
}

#[test]
fn cancel_while_waiting_ends_the_wait_with_487_and_the_answer_relays_nothing() {
    let mut s = named_proxy(DnsConfig::default());
    s.send(UAC, &invite("c1"));
    let (id, _) = s.one_lookup();
    let out = s.send(UAC, &cancel("c1"));
    let codes: Vec<_> = out.iter().map(|t| msg(t).status()).collect();
    assert_eq!(codes, [Some(200), Some(487)], "{:?}", summary(&out));
    assert_eq!(msg(&out[0]).cseq().unwrap().method, "CANCEL");
    assert_eq!(msg(&out[1]).cseq().unwrap().method, "INVITE");
    let out = s.answer(id, two_targets());
    assert!(
        out.is_empty(),
        "nothing relayed after the CANCEL: {:?}",
        summary(&out)
    );
    // the answer still fills the cache for the next call
    let out = s.send(UAC, &invite("c2"));
    assert!(summary(&out).contains(&format!("INVITE->{FS1}")));
}

#[test]
fn hundreds_waiting_on_one_name_share_one_lookup_and_all_go_on() {
    let mut s = named_proxy(DnsConfig::default());
    for i in 0..500 {
        let out = s.send(UAC, &invite(&format!("m{i}")));
        assert_eq!(out.len(), 1);
    }
    let (id, _) = s.one_lookup();
    assert_eq!(s.proxy.waiting(), 500);
    let out = s.answer(id, two_targets());
    let relayed = summary(&out)
        .iter()
        .filter(|l| **l == format!("INVITE->{FS1}"))
        .count();
    assert_eq!(relayed, 500);
    assert_eq!(s.proxy.waiting(), 0);
}

#[test]
fn past_max_waiting_requests_get_503_at_once() {
    let mut s = named_proxy(DnsConfig {
        max_waiting: 100,
        ..DnsConfig::default()
    });
    for i in 0..100 {
        s.send(UAC, &invite(&format!("m{i}")));
    }
    let out = s.send(UAC, &invite("over"));
    assert_eq!(
        out.iter().map(|t| msg(t).status()).collect::<Vec<_>>(),
        [Some(100), Some(503)]
    );
    assert_eq!(stat(&s, |x| &x.waits_refused), 1);
}

#[test]
fn a_set_name_that_does_not_exist_is_503_and_cached_negatively() {
    let mut s = named_proxy(DnsConfig::default());
    // the set's name is ours: mark it as a set destination
    s.send(UAC, &invite("c1"));
    let (id, _) = s.one_lookup();
    let out = s.answer(
        id,
        dns_failed(DnsError::NotFound {
            name: "fs.example.test".into(),
        }),
    );
    // the name is the configuration's: the caller is not at fault
    assert_eq!(summary(&out), ["503->127.0.0.1:5070"]);
    // the failure is remembered: the next call is answered without a lookup
    let out = s.send(UAC, &invite("c2"));
    assert_eq!(msg(out.last().unwrap()).status(), Some(503));
    assert!(s.commands().is_empty());
}

#[test]
fn an_unreachable_dns_server_leaves_calls_on_the_stale_answer() {
    let mut s = named_proxy(DnsConfig {
        stale_for: Duration::from_secs(60),
        ..DnsConfig::default()
    });
    s.send(UAC, &invite("c1"));
    let (id, _) = s.one_lookup();
    s.answer(id, resolved(&[(10, 1, FS1)], 5));
    s.advance(Duration::from_secs(10)); // the TTL is over
    s.send(UAC, &invite("c2"));
    let (id, _) = s.one_lookup();
    let out = s.answer(
        id,
        dns_failed(DnsError::Unreachable {
            name: "fs.example.test".into(),
            detail: "timeout".into(),
        }),
    );
    assert_eq!(
        summary(&out),
        [format!("INVITE->{FS1}")],
        "the stale answer serves"
    );
    // for the next seconds no call waits for the dead server
    let out = s.send(UAC, &invite("c3"));
    assert!(summary(&out).contains(&format!("INVITE->{FS1}")));
    assert!(s.commands().is_empty());
}

#[test]
fn a_route_to_a_name_from_a_trusted_peer_is_resolved_and_a_bad_host_refused() {
    // the R-URI and Route of in-dialog requests are names too: a BYE along a Record-Route
    // that names a carrier host
    let mut s = named_proxy(DnsConfig::default());
    let p = &s.proxy;
    let sg = p.rr_signature("d1", "ft", "");
    let bye = |host: &str| {
        format!("BYE sip:b@{host} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-bye{}\r\nRoute: <sip:127.0.0.1:5060;lr;sg={sg:016x}>\r\nFrom: <sip:a@h>;tag=ft\r\nTo: <sip:b@h>;tag=tt\r\nCall-ID: d1\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n", host.len())
    };
    let out = s.send(UAC, &bye("carrier.example.net"));
    assert!(out.is_empty(), "parked: {:?}", summary(&out));
    let (id, q) = s.one_lookup();
    assert_eq!(&*q.host, "carrier.example.net");
    let out = s.answer(id, resolved(&[(0, 0, "127.0.0.5:5060")], 60));
    assert_eq!(summary(&out), ["BYE->127.0.0.5:5060"]);
    // a name of the request's own that does not exist: 604
    s.send(UAC, &bye("nx.example.net"));
    let (id, _) = s.one_lookup();
    let out = s.answer(
        id,
        dns_failed(DnsError::NotFound {
            name: "nx.example.net".into(),
        }),
    );
    assert_eq!(summary(&out), ["604->127.0.0.1:5070"]);
    // a host that is no host name is refused with 400, nothing asked
    let out = s.send(UAC, &bye("bad_host.example"));
    assert_eq!(msg(&out[0]).status(), Some(400));
    assert!(s.commands().is_empty());
}

/// A dispatcher whose set 1 is the name `fs.example.test`, taken down after one failure.
fn dispatcher_with_a_name() -> (Scenario, Arc<crate::dispatcher::Dispatcher>) {
    use crate::dispatcher::{Algorithm, DestConfig, DestState, Dispatcher, ProbeConfig, SetConfig};
    let q = crate::dns::Query::new("fs.example.test", None, None, false).unwrap();
    let d = Arc::new(Dispatcher::new(
        vec![SetConfig {
            id: 1,
            algorithm: Algorithm::RoundRobin,
            hash_header: None,
            destinations: vec![DestConfig {
                name: Some(Arc::new(q)),
                uri: "sip:fs.example.test".into(),
                transport: Transport::Udp,
                addr: ([0, 0, 0, 0], 0).into(),
                weight: 1,
                priority: 0,
                attrs: String::new(),
                description: String::new(),
                state: DestState::Active,
            }],
        }],
        1,
        3,
        ProbeConfig {
            // one round, at the first timer tick (its probes time out after 4 s)
            interval: std::time::Duration::from_secs(60),
            threshold_down: 1,
            threshold_up: 1,
            ..ProbeConfig::default()
        },
        1,
    ));
    let cfg = ProxyConfig {
        listeners: vec![crate::config::Listener {
            transport: Transport::Udp,
            advertise: "127.0.0.1:5060".parse().unwrap(),
        }],
        ..ProxyConfig::default()
    };
    let mut s = Scenario::new(Proxy::new(cfg, d.clone()));
    s.proxy.cfg.detailed_reasons = true;
    (s, d)
}

#[test]
fn a_named_destinations_addresses_have_their_own_health_and_are_probed() {
    let (mut s, d) = dispatcher_with_a_name();
    s.send(UAC, &invite("c1"));
    let (id, _) = s.one_lookup();
    let out = s.answer(id, two_targets());
    assert_eq!(summary(&out), [format!("INVITE->{FS1}")]);
    // FS1 is silent: the call fails over to FS2 and FS1 is marked down; the probe round
    // covers the addresses the name resolved to
    let out = s.advance(Duration::from_millis(2100));
    let sent = summary(&out);
    assert!(sent.contains(&format!("INVITE->{FS2}")), "{sent:?}");
    assert!(sent.contains(&format!("OPTIONS->{FS1}")), "{sent:?}");
    assert!(sent.contains(&format!("OPTIONS->{FS2}")), "{sent:?}");
    // the next call goes straight to FS2: no branch timer spent on the dead address
    let out = s.send(UAC, &invite("c2"));
    assert_eq!(
        out[1].target.addr.to_string(),
        FS2,
        "{:?}",
        String::from_utf8_lossy(&out[1].data)
    );
    // a media server calling from one of those addresses is one of ours
    assert!(crate::Router::is_destination_ip(
        &*d,
        "127.0.0.22".parse().unwrap()
    ));
    assert!(!crate::Router::is_destination_ip(
        &*d,
        "127.0.0.23".parse().unwrap()
    ));
}

#[test]
fn a_tls_destination_by_name_asks_for_a_certificate_of_that_name() {
    // sips:fs.example.test resolved to an address: the request that opens the connection
    // says which name the server's certificate must carry (RFC 5922); by IP, none
    for (uri, host, want) in [
        (
            "sips:fs.example.test",
            "fs.example.test",
            Some("fs.example.test"),
        ),
        ("sip:127.0.0.21:5061;transport=tls", "", None),
    ] {
        let cfg = ProxyConfig {
            listeners: vec![
                crate::config::Listener {
                    transport: Transport::Udp,
                    advertise: "127.0.0.1:5060".parse().unwrap(),
                },
                crate::config::Listener {
                    transport: Transport::Tls,
                    advertise: "127.0.0.1:5061".parse().unwrap(),
                },
            ],
            ..ProxyConfig::default()
        };
        let dest = if host.is_empty() {
            Destination {
                uri: uri.into(),
                transport: Transport::Tls,
                addr: "127.0.0.21:5061".parse().unwrap(),
                flow: None,
                node: None,
                route: None,
                name: None,
            }
        } else {
            let q = crate::dns::Query::new(host, None, None, true).unwrap();
            Destination {
                uri: uri.into(),
                transport: Transport::Tls,
                addr: ([0, 0, 0, 0], 0).into(),
                flow: None,
                node: None,
                route: None,
                name: Some(Arc::new(q)),
            }
        };
        let p = Proxy::new(cfg, Arc::new(crate::RoundRobin::new(vec![dest])))
            .with_dns(Arc::new(crate::dns::Cache::new(DnsConfig::default())));
        let mut s = Scenario::new(p);
        let mut out = s.send(UAC, &invite(&format!("tls-{}", host.len())));
        if !host.is_empty() {
            let (id, _) = s.one_lookup();
            let tls = crate::command::EventResult::Resolved(Ok(crate::dns::Answer {
                records: vec![crate::dns::Record {
                    priority: 0,
                    weight: 0,
                    transport: Transport::Tls,
                    addr: "127.0.0.21:5061".parse().unwrap(),
                }],
                ttl: Duration::from_secs(60),
            }));
            out = s.answer(id, tls);
        }
        let inv = out.iter().find(|t| msg(t).is_request()).expect("relayed");
        assert_eq!(inv.target.transport, Transport::Tls, "{uri}");
        assert_eq!(inv.tls_name.as_deref(), want, "{uri}");
    }
}
