//! Scenario tests of the proxy's defences: forged in-dialog requests and responses, floods
//! and scanners, what the proxy tells a stranger.

use std::time::Duration;

use std::net::IpAddr;

use crate::router::RoundRobin;

use super::tests::*;
use super::*;

/// A request with a To tag and a Route naming the proxy, for a dialog the proxy never
/// relayed, once went to whatever its Request-URI said: an open relay for MESSAGE, NOTIFY,
/// INVITE, BYE, OPTIONS and ACK, with or without dialog tracking. Now: 403, relayed nowhere.
#[test]
fn forged_in_dialog_requests_are_relayed_nowhere() {
    let now = Instant::now();
    for tracking in [false, true] {
        let p = proxy(&["127.0.0.1:5080"]);
        let p = if tracking {
            with_dialogs(p, 3600, now)
        } else {
            p
        };
        answered_call(&p, now, "real");
        let victim = addr("127.0.0.1:9999");
        let real_route = rr(&p, "real", "ft", "", "");
        let routes = [
            "<sip:127.0.0.1:5060;lr>".to_string(),
            "<sip:127.0.0.1:5060;lr;sg=0123456789abcdef>".to_string(),
            real_route.clone(), // signed, but for another call
        ];
        let mut n = 0;
        for (i, route) in routes.iter().enumerate() {
            for m in ["MESSAGE", "NOTIFY", "INVITE", "BYE", "OPTIONS", "ACK"] {
                let req = format!("{m} sip:target@127.0.0.1:9999 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-f{i}{m}\r\nRoute: {route}\r\nFrom: <sip:attacker@evil.example>;tag=a{i}\r\nTo: <sip:target@127.0.0.1>;tag=b{i}\r\nCall-ID: forged-{i}\r\nCSeq: 7 {m}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
                let o = send(&p, now, "127.0.0.1:6000", &req);
                assert!(
                    o.iter().all(|t| t.target.addr != victim),
                    "{m} via {route} relayed (tracking {tracking})"
                );
                if m == "ACK" {
                    assert!(o.is_empty());
                } else {
                    assert_eq!(o.len(), 1, "{m}");
                    assert_eq!(parse(&o[0]).status(), Some(403), "{m}");
                }
                n += 1;
            }
        }
        assert_eq!(p.stats().forged_routes.load(Ordering::Relaxed), n);
        // the real call's own in-dialog requests still pass, in both directions
        let o = send(
            &p,
            now,
            UAC,
            &dlg_req(&p, "MESSAGE", "real", 5, "m1", "ft", "tt"),
        );
        assert_eq!(
            o[0].target.addr,
            addr("127.0.0.1:5080"),
            "tracking {tracking}"
        );
        let back = format!("INFO sip:a@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-i1\r\nRoute: {real_route}\r\nFrom: <sip:svc@h>;tag=tt\r\nTo: <sip:a@h>;tag=ft\r\nCall-ID: real\r\nCSeq: 1 INFO\r\nContent-Length: 0\r\n\r\n");
        let o = send(&p, now, "127.0.0.1:5080", &back);
        assert_eq!(
            o[0].target.addr,
            addr(UAC),
            "callee to caller, tracking {tracking}"
        );
    }
}

/// With dialog tracking, a dialog the proxy knows is followed even when its Route lost
/// the signature (a restart with a new secret): the table vouches for it.
#[test]
fn a_tracked_dialog_passes_without_a_signature() {
    let now = Instant::now();
    let p = with_dialogs(proxy(&["127.0.0.1:5080"]), 3600, now);
    answered_call(&p, now, "kept");
    let bye = dlg_req(&p, "BYE", "kept", 2, "b1", "ft", "tt")
        .replace(&rr(&p, "kept", "ft", "", ""), "<sip:127.0.0.1:5060;lr>");
    let o = send(&p, now, UAC, &bye);
    assert_eq!(o[0].target.addr, addr("127.0.0.1:5080"));
}

/// Responses were matched by a branch whose ids count up from 1, from any address: anyone
/// could end a live call with a forged 486. A branch now carries a MAC: a response whose
/// branch lacks it or has another is dropped and counted, and the call goes on.
#[test]
fn forged_responses_cannot_end_a_call() {
    let p = proxy(&["127.0.0.1:5080"]);
    let now = Instant::now();
    let fwd = parse(&send(&p, now, UAC, &invite("live"))[1]);
    let branch = fwd.branch().unwrap().to_string();
    let (ids, mac) = branch.rsplit_once('.').unwrap();
    assert_eq!(mac.len(), 16);
    let wrong_mac = format!("{ids}.{:016x}", u64::from_str_radix(mac, 16).unwrap() ^ 1);
    for forged in [ids.to_string(), wrong_mac] {
        let busy = String::from_utf8(answer(&fwd, 486, "x").to_vec())
            .unwrap()
            .replace(&branch, &forged);
        let mut o = vec![];
        p.on_message(now, udp("127.0.0.1:6666"), Bytes::from(busy), &mut o);
        assert!(o.is_empty(), "{forged}: {o:?}");
    }
    assert_eq!(p.stats().forged_responses.load(Ordering::Relaxed), 2);
    // the real answer still completes the call; from another address it is logged as such
    let mut o = vec![];
    p.on_message(now, udp("127.0.0.1:5081"), answer(&fwd, 200, "tt"), &mut o);
    assert_eq!(parse(&o[0]).status(), Some(200));
    assert_eq!(p.stats().foreign_sources.load(Ordering::Relaxed), 1);
}

#[test]
fn probe_and_keepalive_branches_carry_their_own_mac() {
    let p = proxy(&[]);
    let mac = p.cfg.keys.tag_ids(crate::mac::Purpose::Probe, &[7]);
    let good = format!("{PROBE_PREFIX}7.{mac:016x}");
    assert_eq!(
        p.our_id_branch(&good, PROBE_PREFIX, crate::mac::Purpose::Probe),
        Some(7)
    );
    for bad in [
        format!("{PROBE_PREFIX}7"),
        format!("{PROBE_PREFIX}8.{mac:016x}"),
        format!("{PROBE_PREFIX}7.{:016x}", mac ^ 4),
    ] {
        assert_eq!(
            p.our_id_branch(&bad, PROBE_PREFIX, crate::mac::Purpose::Probe),
            None,
            "{bad}"
        );
    }
    // a probe's MAC is no keepalive's
    let as_keepalive = good.replace(PROBE_PREFIX, KEEPALIVE_PREFIX);
    assert_eq!(
        p.our_id_branch(
            &as_keepalive,
            KEEPALIVE_PREFIX,
            crate::mac::Purpose::KeepAlive
        ),
        None
    );
}

#[test]
fn a_response_branch_names_its_typed_owner() {
    let p = proxy(&[]);
    let probe = p.cfg.keys.tag_ids(crate::mac::Purpose::Probe, &[7]);
    let ka = p.cfg.keys.tag_ids(crate::mac::Purpose::KeepAlive, &[9]);
    let relay = p.branch_for(0xab, 42, 1);
    assert_eq!(
        p.owner_of(&format!("{PROBE_PREFIX}7.{probe:016x}")),
        Owner::Ours(Origin::Probe(7))
    );
    assert_eq!(
        p.owner_of(&format!("{KEEPALIVE_PREFIX}9.{ka:016x}")),
        Owner::Ours(Origin::KeepAlive(9))
    );
    assert_eq!(
        p.owner_of(&relay),
        Owner::Ours(Origin::Relay { ctx: 42, branch: 1 })
    );
    assert_eq!(
        p.owner_of(&format!("{DIALOG_BYE_PREFIX}1")),
        Owner::DialogBye
    );
    // our prefix with a wrong MAC is forged; someone else's branch is foreign
    assert_eq!(
        p.owner_of(&format!("{KEEPALIVE_PREFIX}9.{probe:016x}")),
        Owner::Forged
    );
    assert_eq!(p.owner_of(&relay.replace(".2a.", ".2b.")), Owner::Forged);
    assert_eq!(p.owner_of("z9hG4bK-someone-else"), Owner::Foreign);
}

fn options(call: &str, ua: &str) -> String {
    format!("OPTIONS sip:svc@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:6000;branch=z9hG4bK-{call}\r\nFrom: <sip:x@h>;tag=f\r\nTo: <sip:svc@h>\r\nCall-ID: {call}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nUser-Agent: {ua}\r\nContent-Length: 0\r\n\r\n")
}

fn guarded(backends: &[&str], cfg: crate::pike::PikeConfig) -> Proxy {
    proxy(backends).with_pike(Arc::new(Pike::new(cfg)))
}

/// One source flooding: its budget passes, the rest is dropped, and past the drop limit it
/// is banned and its packets are dropped before they are parsed. Another source, and the
/// media server, go on as before.
#[test]
fn a_flooding_source_is_dropped_then_banned_and_others_are_not() {
    let p = guarded(
        &["127.0.0.1:5080"],
        crate::pike::PikeConfig {
            options: crate::pike::Budget::per_second(10),
            ban_after_drops: 50,
            ..Default::default()
        },
    );
    let now = Instant::now();
    let mut answered = 0;
    for i in 0..1000 {
        answered += send(
            &p,
            now,
            "127.0.0.2:6000",
            &options(&format!("fl{i}"), "flood"),
        )
        .len();
    }
    assert_eq!(answered, 20, "the burst, relayed");
    let pk = p.pike().unwrap();
    assert!(pk.is_banned(now, "127.0.0.2".parse().unwrap()));
    assert_eq!(p.stats().rate_limited.load(Ordering::Relaxed), 50);
    assert_eq!(
        p.stats().banned_dropped.load(Ordering::Relaxed),
        1000 - 20 - 50
    );
    // a caller elsewhere is not affected
    let o = send(&p, now, UAC, &invite("calm"));
    assert_eq!(parse(&o[1]).method(), Some(Method::Invite));
    // the ban is listed, and lifted by the operator
    assert_eq!(pk.list(now)[0].reason, "flood");
    assert!(pk.unban(now, "127.0.0.2".parse().unwrap()));
    assert_eq!(
        send(
            &p,
            now + Duration::from_secs(5),
            "127.0.0.2:6000",
            &options("again", "x")
        )
        .len(),
        1
    );
}

/// An allowed network (a carrier) is never limited, whatever it sends.
#[test]
fn allowed_networks_are_never_limited() {
    let p = guarded(
        &["127.0.0.1:5080"],
        crate::pike::PikeConfig {
            options: crate::pike::Budget::per_second(10),
            ban_after_drops: 50,
            allow: vec![("127.0.0.5".parse().unwrap(), 32)],
            ..Default::default()
        },
    );
    let now = Instant::now();
    let relayed: usize = (0..500)
        .map(|i| {
            send(
                &p,
                now,
                "127.0.0.5:6000",
                &options(&format!("c{i}"), "carrier"),
            )
            .len()
        })
        .sum();
    assert_eq!(relayed, 500);
    assert!(p.pike().unwrap().list(now).is_empty());
}

/// A well-known scanner's first request bans its source.
#[test]
fn scanners_are_banned_at_their_first_request() {
    let p = guarded(&["127.0.0.1:5080"], Default::default());
    let now = Instant::now();
    assert!(send(
        &p,
        now,
        "127.0.0.2:6000",
        &options("s1", "friendly-scanner")
    )
    .is_empty());
    assert!(
        send(&p, now, "127.0.0.2:6000", &options("s2", "Linphone")).is_empty(),
        "banned"
    );
    assert_eq!(p.pike().unwrap().list(now)[0].reason, "scanner");
    assert_eq!(p.stats().scanners_banned.load(Ordering::Relaxed), 1);
}

/// What the proxy writes itself carries no version (a scanner would pick its exploits by it).
#[test]
fn the_server_header_names_no_version() {
    let p = proxy(&[]);
    let o = send(&p, Instant::now(), UAC, &invite("nov"));
    let r = parse(&o[0]);
    assert_eq!(r.get_named("Server"), Some("switchboard"));
    let mut q = proxy(&[]);
    q.cfg.server = "".into();
    let r = parse(&send(&q, Instant::now(), UAC, &invite("none"))[0]);
    assert_eq!(r.get_named("Server"), None, "configurable, also away");
}

/// The reply cache (retransmissions of answered REGISTERs and challenges) is bounded: past
/// its budget replies go out uncached.
#[test]
fn the_reply_cache_has_a_size_limit() {
    use crate::registrar::{Registrar, RegistrarConfig};
    let now = Instant::now();
    let mut p = proxy(&["127.0.0.1:5080"]).with_registrar(Arc::new(Registrar::new(
        RegistrarConfig {
            domains: vec!["example.com".into()],
            ..RegistrarConfig::default()
        },
        (now, 1_800_000_000),
    )));
    p.cfg.reply_cache_bytes = 20_000;
    for i in 0..200 {
        let reg = format!("REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.3:7000;branch=z9hG4bK-r{i}\r\nFrom: <sip:u{i}@example.com>;tag=f\r\nTo: <sip:u{i}@example.com>\r\nCall-ID: r{i}\r\nCSeq: 1 REGISTER\r\nContact: <sip:u@127.0.0.3:7000>\r\nContent-Length: 0\r\n\r\n");
        let o = send(&p, now, "127.0.0.3:7000", &reg);
        assert_eq!(parse(&o[0]).status(), Some(401));
    }
    assert!(p.reply_cache_bytes() <= 20_000, "{}", p.reply_cache_bytes());
    assert!(p.stats().reply_cache_full.load(Ordering::Relaxed) > 100);
    let mut o = vec![];
    p.on_timers(now + Duration::from_secs(40), &mut o);
    assert_eq!(
        p.reply_cache_bytes(),
        0,
        "expired entries give their bytes back"
    );
}

/// From outside, a subscriber without a binding and a name that does not exist get the
/// same treatment (before: `480` for one, the media server for the other).
#[test]
fn callers_cannot_tell_subscribers_from_unknown_names() {
    use crate::registrar::{Credential, Registrar, RegistrarConfig};
    let now = Instant::now();
    let reg = Arc::new(Registrar::new(
        RegistrarConfig {
            domains: vec!["example.com".into()],
            auth: false,
            ..RegistrarConfig::default()
        },
        (now, 1_800_000_000),
    ));
    reg.set_credential(
        "alice",
        "example.com",
        Credential::from_password("alice", "example.com", "pw"),
    );
    let p = proxy(&["127.0.0.1:5080"]).with_registrar(reg);
    let call = |user: &str| {
        let inv = invite(user)
            .replace("sip:svc@127.0.0.1:5060", &format!("sip:{user}@example.com"))
            .replace("<sip:a@h>", "<sip:mallory@evil.example>");
        let o = send(&p, now, "127.0.0.4:5070", &inv);
        o.iter()
            .map(|t| (t.target.addr, parse(t).status()))
            .collect::<Vec<_>>()
    };
    let known = call("alice");
    let unknown = call("nobody");
    assert_eq!(known, unknown);
    assert_eq!(
        known[1],
        (addr("127.0.0.1:5080"), None),
        "both to the media server"
    );
}

/// A source may hold so many live transactions; past it, 503 with Retry-After, and the
/// count falls as its transactions end.
#[test]
fn live_transactions_per_source_are_bounded() {
    let mut p = guarded(&["127.0.0.1:5080"], Default::default());
    p.cfg.max_transactions_per_source = 3;
    let now = Instant::now();
    for i in 0..3 {
        let o = send(&p, now, "127.0.0.6:5070", &invite(&format!("t{i}")));
        assert_eq!(o.len(), 2, "100 Trying and the relay");
    }
    let o = send(&p, now, "127.0.0.6:5070", &invite("t3"));
    let r = parse(&o[0]);
    assert_eq!(r.status(), Some(503));
    assert_eq!(r.get_other("Retry-After"), Some("10"));
    assert_eq!(p.stats().transactions_refused.load(Ordering::Relaxed), 1);
    assert_eq!(
        send(&p, now, UAC, &invite("other")).len(),
        2,
        "another source is not counted with it"
    );
    // the three time out (Timer B / 408 and the contexts' end): room again
    let mut o = vec![];
    p.on_timers(now + Duration::from_secs(40), &mut o);
    p.on_timers(now + Duration::from_secs(80), &mut o);
    assert_eq!(
        send(
            &p,
            now + Duration::from_secs(80),
            "127.0.0.6:5070",
            &invite("t4")
        )
        .len(),
        2
    );
}

/// Header fields and Via entries are bounded: a request past either gets 400 and no state.
#[test]
fn header_count_and_via_depth_are_bounded() {
    let p = proxy(&["127.0.0.1:5080"]);
    let now = Instant::now();
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let o = send(
        &p,
        now,
        UAC,
        &invite("hdr").replace(
            "Max-Forwards: 70\r\n",
            &format!("Max-Forwards: 70\r\n{many}"),
        ),
    );
    assert_eq!(parse(&o[0]).status(), Some(400));
    assert!(parse(&o[0]).reason().contains("header fields"));
    let vias: String = (0..40)
        .map(|i| format!("Via: SIP/2.0/UDP 10.0.0.{i};branch=z9hG4bK{i}\r\n"))
        .collect();
    let o = send(
        &p,
        now,
        UAC,
        &invite("via").replace(
            "Max-Forwards: 70\r\n",
            &format!("Max-Forwards: 70\r\n{vias}"),
        ),
    );
    assert_eq!(parse(&o[0]).status(), Some(400));
    assert!(parse(&o[0]).reason().contains("Via"));
    assert_eq!(p.active_contexts(), 0);
}

/// A router whose destinations are the media servers at 127.0.0.1.
struct MediaServers(RoundRobin);

impl Router for MediaServers {
    fn select(&self, req: &Message, out: &mut Vec<Destination>) {
        self.0.select(req, out)
    }
    fn is_destination_ip(&self, ip: IpAddr) -> bool {
        ip == IpAddr::from([127, 0, 0, 1])
    }
}

/// A media server's address is never limited, banned or dropped, whatever port it sends
/// from: a scanner that happens to share it (or a ban an operator set) cannot cut the
/// replies of calls in progress.
#[test]
fn media_servers_are_never_dropped_by_the_flood_defence() {
    let dest = Destination {
        uri: "sip:127.0.0.1:5080".into(),
        transport: Transport::Udp,
        addr: addr("127.0.0.1:5080"),
        flow: None,
        node: None,
        route: None,
        name: None,
    };
    let pk = Arc::new(Pike::new(crate::pike::PikeConfig {
        options: crate::pike::Budget::per_second(1),
        ..Default::default()
    }));
    let p = Proxy::new(
        proxy(&[]).cfg.clone(),
        Arc::new(MediaServers(RoundRobin::new(vec![dest]))),
    )
    .with_pike(pk.clone());
    let now = Instant::now();
    let fwd = parse(&send(&p, now, UAC, &invite("ms1"))[1]);
    pk.ban_for(now, "127.0.0.1".parse().unwrap(), Duration::from_secs(60));
    let mut o = vec![];
    p.on_message(now, udp("127.0.0.1:5080"), answer(&fwd, 200, "tt"), &mut o);
    assert_eq!(
        parse(&o[0]).status(),
        Some(200),
        "the media server's answer went through"
    );
    let relayed: usize = (0..50)
        .map(|i| {
            send(
                &p,
                now,
                "127.0.0.1:5099",
                &options(&format!("m{i}"), "FreeSWITCH"),
            )
            .len()
        })
        .sum();
    assert_eq!(
        relayed, 50,
        "from another port of its address: not limited either"
    );
}
