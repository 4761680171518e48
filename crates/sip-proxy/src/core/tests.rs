//! Scenario tests of the proxy core on a virtual clock: messages in, transmissions out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::Listener;
pub(super) use crate::scenario::{addr, answer, parse, send, udp};

pub(super) const UAC: &str = "127.0.0.1:5070";

pub(super) fn proxy(backends: &[&str]) -> Proxy {
    crate::sequences::plain_proxy(backends)
}

pub(super) fn invite(call: &str) -> String {
    format!("INVITE sip:svc@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{call};rport\r\nFrom: <sip:a@h>;tag=ft\r\nTo: <sip:svc@h>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5070>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
}

/// Our Record-Route URI for a call as the proxy signs it (`user`: a flow token or empty).
pub(super) fn rr(p: &Proxy, call: &str, tag: &str, user: &str, rest: &str) -> String {
    let at = if user.is_empty() { "" } else { "@" };
    format!(
        "<sip:{user}{at}127.0.0.1:5060{rest};lr;sg={:016x}>",
        p.rr_signature(call, tag, user)
    )
}

#[test]
fn invite_is_relayed_with_via_record_route_and_trying() {
    let p = proxy(&["127.0.0.1:5080"]);
    let now = Instant::now();
    let out = send(&p, now, UAC, &invite("c1"));
    assert_eq!(out.len(), 2);
    let trying = parse(&out[0]);
    assert_eq!(trying.status(), Some(100));
    assert_eq!(out[0].target.addr, addr(UAC));
    let fwd = parse(&out[1]);
    assert_eq!(out[1].target.addr, addr("127.0.0.1:5080"));
    let vias: Vec<_> = fwd.vias().map(|v| v.unwrap()).collect();
    assert_eq!(vias.len(), 2);
    assert!(vias[0].branch().unwrap().starts_with(BRANCH_PREFIX));
    assert_eq!(vias[1].rport(), Some(Some(5070)));
    assert_eq!(vias[1].received(), Some("127.0.0.1"));
    assert_eq!(
        fwd.get(HeaderName::RecordRoute),
        Some(rr(&p, "c1", "ft", "", "").as_str()),
        "signed for the dialog"
    );
    assert_eq!(fwd.max_forwards().unwrap(), Some(69));
}

#[test]
fn full_call_relays_replies_and_routes_ack_and_bye() {
    let p = proxy(&["127.0.0.1:5080"]);
    let now = Instant::now();
    let out = send(&p, now, UAC, &invite("c2"));
    let fwd = parse(&out[1]);
    let mut o = vec![];
    p.on_message(now, udp("127.0.0.1:5080"), answer(&fwd, 180, "tt"), &mut o);
    assert_eq!(o.len(), 1);
    assert_eq!(parse(&o[0]).status(), Some(180));
    assert_eq!(parse(&o[0]).vias().count(), 1);
    o.clear();
    p.on_message(now, udp("127.0.0.1:5080"), answer(&fwd, 200, "tt"), &mut o);
    assert_eq!(o.len(), 1);
    let ok = parse(&o[0]);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(o[0].target.addr, addr(UAC));
    // ACK and BYE come back with our Record-Route as Route
    let route = ok.get(HeaderName::RecordRoute).unwrap().to_string();
    let in_dialog = |m: &str, seq: u32, br: &str| {
        format!("{m} sip:b@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{br}\r\nRoute: {route}\r\nFrom: <sip:a@h>;tag=ft\r\nTo: <sip:svc@h>;tag=tt\r\nCall-ID: c2\r\nCSeq: {seq} {m}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    };
    let o = send(&p, now, UAC, &in_dialog("ACK", 1, "ack"));
    assert_eq!(o.len(), 1, "2xx ACK relayed statelessly");
    assert_eq!(o[0].target.addr, addr("127.0.0.1:5080"));
    let ack = parse(&o[0]);
    assert!(ack.get(HeaderName::Route).is_none());
    assert_eq!(ack.vias().count(), 2);
    let o = send(&p, now, UAC, &in_dialog("BYE", 2, "bye"));
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].target.addr, addr("127.0.0.1:5080"));
    let bye = parse(&o[0]);
    let mut o2 = vec![];
    p.on_message(now, udp("127.0.0.1:5080"), answer(&bye, 200, "tt"), &mut o2);
    assert_eq!(parse(&o2[0]).status(), Some(200));
    assert_eq!(parse(&o2[0]).cseq().unwrap().method, "BYE");
    // a retransmitted BYE is answered from the transaction, not relayed again
    let o = send(&p, now, UAC, &in_dialog("BYE", 2, "bye"));
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].target.addr, addr(UAC));
    assert_eq!(
        p.stats().retransmissions_absorbed.load(Ordering::Relaxed),
        1
    );
}

#[test]
fn retransmitted_invite_is_absorbed_and_answered_with_last_provisional() {
    let p = proxy(&["127.0.0.1:5080"]);
    let now = Instant::now();
    send(&p, now, UAC, &invite("c3"));
    let o = send(&p, now, UAC, &invite("c3"));
    assert_eq!(o.len(), 1);
    assert_eq!(parse(&o[0]).status(), Some(100));
    assert_eq!(p.stats().fwd_requests.load(Ordering::Relaxed), 1);
}

#[test]
fn busy_is_acked_hop_by_hop_and_relayed() {
    let p = proxy(&["127.0.0.1:5080"]);
    let now = Instant::now();
    let fwd = parse(&send(&p, now, UAC, &invite("c4"))[1]);
    let mut o = vec![];
    p.on_message(now, udp("127.0.0.1:5080"), answer(&fwd, 486, "tt"), &mut o);
    assert_eq!(o.len(), 2);
    let ack = o
        .iter()
        .map(parse)
        .find(|m| m.method() == Some(Method::Ack))
        .expect("hop-by-hop ACK");
    assert_eq!(
        ack.top_via().unwrap().branch(),
        fwd.top_via().unwrap().branch()
    );
    let busy = o
        .iter()
        .map(parse)
        .find(|m| m.status() == Some(486))
        .expect("486 relayed");
    assert_eq!(busy.vias().count(), 1);
    // the caller's ACK for the 486 is absorbed by the server transaction
    let ack_up = invite("c4")
        .replace("INVITE sip", "ACK sip")
        .replace("1 INVITE", "1 ACK")
        .replace("<sip:svc@h>", "<sip:svc@h>;tag=tt");
    assert!(send(&p, now, UAC, &ack_up).is_empty());
}

#[test]
fn cancel_during_ringing_gets_200_and_487_end_to_end() {
    let p = proxy(&["127.0.0.1:5080"]);
    let now = Instant::now();
    let fwd = parse(&send(&p, now, UAC, &invite("c5"))[1]);
    let mut o = vec![];
    p.on_message(now, udp("127.0.0.1:5080"), answer(&fwd, 180, "tt"), &mut o);
    let cancel = invite("c5")
        .replace("INVITE sip", "CANCEL sip")
        .replace("1 INVITE", "1 CANCEL");
    let o = send(&p, now, UAC, &cancel);
    assert_eq!(o.len(), 2);
    let ok = parse(&o[0]);
    assert_eq!(
        (ok.status(), ok.cseq().unwrap().method),
        (Some(200), "CANCEL")
    );
    let down = parse(&o[1]);
    assert_eq!(down.method(), Some(Method::Cancel));
    assert_eq!(
        down.top_via().unwrap().branch(),
        fwd.top_via().unwrap().branch()
    );
    let mut o = vec![];
    p.on_message(now, udp("127.0.0.1:5080"), answer(&down, 200, "tt"), &mut o);
    assert!(o.is_empty(), "200 for our CANCEL is absorbed");
    p.on_message(now, udp("127.0.0.1:5080"), answer(&fwd, 487, "tt"), &mut o);
    let codes: Vec<_> = o.iter().map(|t| parse(t).status()).collect();
    assert!(codes.contains(&Some(487)), "{codes:?}");
}

#[test]
fn cancel_for_unknown_transaction_gets_481() {
    let p = proxy(&["127.0.0.1:5080"]);
    let cancel = invite("nope")
        .replace("INVITE sip", "CANCEL sip")
        .replace("1 INVITE", "1 CANCEL");
    let o = send(&p, Instant::now(), UAC, &cancel);
    assert_eq!(parse(&o[0]).status(), Some(481));
}

#[test]
fn silent_destinations_fail_over_then_503_names_the_set() {
    let mut p = proxy(&["127.0.0.1:5080", "127.0.0.1:5082"]);
    p.cfg.detailed_reasons = true;
    let t0 = Instant::now();
    let out = send(&p, t0, UAC, &invite("c6"));
    assert_eq!(out[1].target.addr.port(), 5080);
    let mut o = vec![];
    p.on_timers(t0 + Duration::from_millis(2000), &mut o);
    let fwd2: Vec<_> = o.iter().filter(|t| t.target.addr.port() == 5082).collect();
    assert_eq!(fwd2.len(), 1, "failed over to the second destination");
    assert_eq!(p.stats().failovers.load(Ordering::Relaxed), 1);
    o.clear();
    p.on_timers(t0 + Duration::from_millis(4100), &mut o);
    let to_uac: Vec<_> = o
        .iter()
        .filter(|t| t.target.addr == addr(UAC))
        .map(parse)
        .collect();
    let last = to_uac.last().unwrap();
    assert_eq!(last.status(), Some(503));
    assert!(
        last.reason()
            .contains("every destination of the destination set failed"),
        "{}",
        last.reason()
    );
    assert_eq!(last.get_other("Retry-After"), Some("5"));
}

#[test]
fn a_single_silent_initial_destination_also_ends_in_503() {
    let p = proxy(&["127.0.0.1:5080"]);
    let t0 = Instant::now();
    send(&p, t0, UAC, &invite("c6b"));
    let mut o = vec![];
    p.on_timers(t0 + Duration::from_millis(2000), &mut o);
    let up: Vec<_> = o
        .iter()
        .filter(|t| t.target.addr == addr(UAC))
        .map(parse)
        .collect();
    assert_eq!(up.last().unwrap().status(), Some(503));
}

#[test]
fn server_error_fails_over_to_next_destination() {
    let p = proxy(&["127.0.0.1:5080", "127.0.0.1:5082"]);
    let now = Instant::now();
    let fwd = parse(&send(&p, now, UAC, &invite("c7"))[1]);
    let mut o = vec![];
    p.on_message(now, udp("127.0.0.1:5080"), answer(&fwd, 503, "tt"), &mut o);
    assert!(o
        .iter()
        .any(|t| t.target.addr.port() == 5082 && parse(t).method() == Some(Method::Invite)));
    assert!(
        !o.iter().any(|t| t.target.addr == addr(UAC)),
        "nothing upstream yet"
    );
}

#[test]
fn unreachable_destination_reports_503() {
    let p = proxy(&["127.0.0.1:5080"]);
    let now = Instant::now();
    let out = send(&p, now, UAC, &invite("c8"));
    let mut o = vec![];
    p.on_transport_error(now, out[1].origin.unwrap(), &mut o);
    assert_eq!(parse(&o[0]).status(), Some(503));
}

#[test]
fn validation_answers_483_416_420_482_and_403() {
    let p = proxy(&["127.0.0.1:5080"]);
    let now = Instant::now();
    let status = |m: String| parse(&send(&p, now, UAC, &m)[0]).status();
    assert_eq!(
        status(invite("v1").replace("Max-Forwards: 70", "Max-Forwards: 0")),
        Some(483)
    );
    assert_eq!(
        status(invite("v2").replace("INVITE sip:svc@127.0.0.1:5060", "INVITE foo:bar")),
        Some(416)
    );
    let o = send(
        &p,
        now,
        UAC,
        &invite("v3").replace(
            "Max-Forwards: 70",
            "Max-Forwards: 70\r\nProxy-Require: x-magic",
        ),
    );
    let m = parse(&o[0]);
    assert_eq!(
        (m.status(), m.get(HeaderName::Unsupported)),
        (Some(420), Some("x-magic"))
    );
    assert_eq!(
        status(invite("v5").replace(
            "Max-Forwards: 70",
            "Max-Forwards: 70\r\nRoute: <sip:10.9.9.9;lr>"
        )),
        Some(403)
    );
    // loop: the forwarded copy comes back to us unchanged
    let fwd = send(&p, now, UAC, &invite("v4"));
    let looped = String::from_utf8(fwd[1].data.to_vec()).unwrap();
    let o = send(&p, now, "127.0.0.1:5060", &looped);
    assert_eq!(parse(&o[0]).status(), Some(482));
}

#[test]
fn options_to_the_proxy_is_answered_locally() {
    let p = proxy(&["127.0.0.1:5080"]);
    let o = send(
        &p,
        Instant::now(),
        UAC,
        &invite("o1")
            .replace(
                "INVITE sip:svc@127.0.0.1:5060",
                "OPTIONS sip:127.0.0.1:5060",
            )
            .replace("1 INVITE", "1 OPTIONS"),
    );
    assert_eq!(o.len(), 1);
    assert_eq!(parse(&o[0]).status(), Some(200));
}

#[test]
fn malformed_requests_get_400_with_reason_or_are_dropped() {
    let p = proxy(&["127.0.0.1:5080"]);
    let now = Instant::now();
    let o = send(&p, now, UAC, &invite("m1").replace("Call-ID: m1\r\n", ""));
    let m = Message::parse_raw(o[0].data.clone()).unwrap();
    assert_eq!(m.status(), Some(400));
    assert!(m.reason().contains("Call-ID"), "{}", m.reason());
    assert!(send(&p, now, UAC, "\u{1}\u{2}garbage").is_empty());
    let o = send(
        &p,
        now,
        UAC,
        &invite("m2").replace("Content-Length: 0", "Content-Length: 500"),
    );
    assert_eq!(parse(&o[0]).status(), Some(400));
    let huge = invite("m3").replace(
        "Max-Forwards: 70",
        &format!("Max-Forwards: 70\r\nX-Pad: {}", "a".repeat(70_000)),
    );
    let o = send(&p, now, UAC, &huge);
    assert_eq!(
        Message::parse_raw(o[0].data.clone()).unwrap().status(),
        Some(513)
    );
    assert_eq!(p.stats().bad_messages.load(Ordering::Relaxed), 4);
}

#[test]
fn tcp_caller_to_udp_backend_gets_double_record_route_with_flow_token() {
    let p = proxy(&["127.0.0.1:5080"]);
    let now = Instant::now();
    let src = Source {
        transport: Transport::Tcp,
        addr: addr("127.0.0.1:40000"),
        flow: Some(0x2a),
    };
    let mut out = vec![];
    p.on_message(
        now,
        src,
        Bytes::from(
            invite("t1").replace("SIP/2.0/UDP 127.0.0.1:5070", "SIP/2.0/TCP 127.0.0.1:5070"),
        ),
        &mut out,
    );
    assert_eq!(
        out[0].target.flow,
        Some(0x2a),
        "replies go back over the caller's connection"
    );
    let fwd = parse(&out[1]);
    let rrs: Vec<_> = fwd.values(HeaderName::RecordRoute).collect();
    // the outbound-facing entry is on top: the callee routes through it first; the inbound
    // one carries the caller's flow token with its MAC
    let token = p.flow_token(0x2a);
    assert!(
        token.starts_with("f2a-") && token.len() == 4 + 16,
        "{token}"
    );
    let (top, flow_rr) = (
        rr(&p, "t1", "ft", "", ""),
        rr(&p, "t1", "ft", &token, ";transport=tcp"),
    );
    assert_eq!(rrs, [top.as_str(), flow_rr.as_str()]);
    // a BYE from the callee follows both routes back to the caller's flow
    let bye = format!("BYE sip:a@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-b1\r\nRoute: {top}, {flow_rr}\r\nFrom: <sip:svc@h>;tag=tt\r\nTo: <sip:a@h>;tag=ft\r\nCall-ID: t1\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n");
    let o = send(&p, now, "127.0.0.1:5080", &bye);
    assert_eq!(o[0].target.transport, Transport::Tcp);
    assert_eq!(o[0].target.flow, Some(0x2a));
    assert!(parse(&o[0]).get(HeaderName::Route).is_none());
    // a guessed token (the id without its MAC, or another MAC) reaches no connection
    for guess in ["f2b", "f2b-0000000000000000"] {
        let forged = bye
            .replace(&token, guess)
            .replace("z9hG4bK-b1", "z9hG4bK-b2");
        let o = send(&p, now, "127.0.0.1:5080", &forged);
        assert_eq!(o.len(), 1, "{guess}");
        assert_eq!(
            parse(&o[0]).status(),
            Some(403),
            "{guess}: the signature covers the token"
        );
    }
}

#[test]
fn contexts_are_dropped_when_all_transactions_end() {
    let p = proxy(&["127.0.0.1:5080"]);
    let t0 = Instant::now();
    let fwd = parse(&send(&p, t0, UAC, &invite("g1"))[1]);
    let mut o = vec![];
    p.on_message(t0, udp("127.0.0.1:5080"), answer(&fwd, 200, "tt"), &mut o);
    assert_eq!(p.active_contexts(), 1);
    p.on_timers(t0 + Duration::from_secs(33), &mut o);
    assert_eq!(p.active_contexts(), 0);
}

#[test]
fn late_2xx_on_a_branch_given_up_for_silence_is_still_relayed() {
    let p = proxy(&["127.0.0.1:5080", "127.0.0.1:5082"]);
    let t0 = Instant::now();
    let out = send(&p, t0, UAC, &invite("late1"));
    let first = parse(&out[1]);
    let mut o = vec![];
    p.on_timers(t0 + Duration::from_millis(2000), &mut o);
    let second = o
        .iter()
        .find(|t| t.target.addr.port() == 5082)
        .map(parse)
        .expect("failover");
    o.clear();
    p.on_message(
        t0 + Duration::from_millis(2100),
        udp("127.0.0.1:5082"),
        answer(&second, 180, "t2"),
        &mut o,
    );
    o.clear();
    // the first destination answers after all
    p.on_message(
        t0 + Duration::from_millis(2200),
        udp("127.0.0.1:5080"),
        answer(&first, 200, "t1"),
        &mut o,
    );
    let up: Vec<_> = o
        .iter()
        .filter(|t| t.target.addr == addr(UAC))
        .map(parse)
        .collect();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].status(), Some(200));
    let cancel = o
        .iter()
        .filter(|t| t.target.addr.port() == 5082)
        .map(parse)
        .find(|m| m.method() == Some(Method::Cancel));
    assert!(cancel.is_some(), "the ringing second branch is cancelled");
}

#[test]
fn in_dialog_requests_wait_for_timer_f_not_the_failover_timer() {
    let p = proxy(&["127.0.0.1:5080"]);
    let t0 = Instant::now();
    let bye = format!("BYE sip:b@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-slowbye\r\nRoute: {}\r\nFrom: <sip:a@h>;tag=ft\r\nTo: <sip:svc@h>;tag=tt\r\nCall-ID: slow\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n", rr(&p, "slow", "ft", "", ""));
    let out = send(&p, t0, UAC, &bye);
    let fwd = parse(&out[0]);
    let mut o = vec![];
    p.on_timers(t0 + Duration::from_millis(2600), &mut o);
    assert!(
        o.iter().all(|t| t.target.addr != addr(UAC)),
        "no premature 408 upstream"
    );
    assert!(
        o.iter().any(|t| t.target.addr.port() == 5080),
        "Timer E retransmits the BYE"
    );
    o.clear();
    p.on_message(
        t0 + Duration::from_millis(3000),
        udp("127.0.0.1:5080"),
        answer(&fwd, 200, "tt"),
        &mut o,
    );
    assert_eq!(parse(&o[0]).status(), Some(200));
    o.clear();
    // and a BYE that is never answered ends with 408 at Timer F
    let out = send(
        &p,
        t0,
        UAC,
        &bye.replace("slowbye", "deadbye")
            .replace("Call-ID: slow", "Call-ID: dead")
            .replace(&rr(&p, "slow", "ft", "", ""), &rr(&p, "dead", "ft", "", "")),
    );
    assert_eq!(out.len(), 1);
    p.on_timers(t0 + Duration::from_secs(32), &mut o);
    assert!(o
        .iter()
        .filter(|t| t.target.addr == addr(UAC))
        .any(|t| parse(t).status() == Some(408)));
}

#[test]
fn abandoned_branch_is_cancelled_acked_or_its_orphan_2xx_ended() {
    let p = proxy(&["127.0.0.1:5080", "127.0.0.1:5082"]);
    let t0 = Instant::now();
    let out = send(&p, t0, UAC, &invite("orph"));
    let first = parse(&out[1]);
    let mut o = vec![];
    p.on_timers(t0 + Duration::from_millis(2000), &mut o);
    let second = o
        .iter()
        .find(|t| t.target.addr.port() == 5082)
        .map(parse)
        .expect("failover");
    // the abandoned first destination rings late: it is cancelled
    o.clear();
    p.on_message(
        t0 + Duration::from_millis(2050),
        udp("127.0.0.1:5080"),
        answer(&first, 180, "t1"),
        &mut o,
    );
    assert!(
        o.iter().all(|t| t.target.addr != addr(UAC)),
        "late 180 not relayed"
    );
    let cancel = o
        .iter()
        .map(parse)
        .find(|m| m.method() == Some(Method::Cancel))
        .expect("CANCEL to the abandoned branch");
    assert_eq!(
        cancel.top_via().unwrap().branch(),
        first.top_via().unwrap().branch()
    );
    // the second destination answers and wins
    o.clear();
    p.on_message(
        t0 + Duration::from_millis(2100),
        udp("127.0.0.1:5082"),
        answer(&second, 200, "t2"),
        &mut o,
    );
    assert_eq!(
        o.iter()
            .filter(|t| t.target.addr == addr(UAC))
            .map(|t| parse(t).status())
            .collect::<Vec<_>>(),
        vec![Some(200)]
    );
    // the first one answers 200 anyway (CANCEL crossed it): the proxy ACKs and BYEs it itself
    o.clear();
    p.on_message(
        t0 + Duration::from_millis(2200),
        udp("127.0.0.1:5080"),
        answer(&first, 200, "t1"),
        &mut o,
    );
    for t in &o {
        eprintln!(
            "OUT {} {}",
            t.target.addr,
            String::from_utf8_lossy(&t.data).lines().next().unwrap()
        );
    }
    assert!(
        o.iter().all(|t| t.target.addr != addr(UAC)),
        "orphan 2xx not relayed"
    );
    let methods: Vec<_> = o
        .iter()
        .filter(|t| t.target.addr.port() == 5080)
        .map(|t| parse(t).method())
        .collect();
    assert_eq!(methods, vec![Some(Method::Ack), Some(Method::Bye)]);
    let bye = o
        .iter()
        .map(parse)
        .find(|m| m.method() == Some(Method::Bye))
        .unwrap();
    assert_eq!(bye.uri_str(), "sip:b@127.0.0.1:5080");
    assert_eq!(bye.to().unwrap().tag(), Some("t1"));
    assert_eq!(p.stats().orphans_ended.load(Ordering::Relaxed), 1);
    // its 200 for the BYE is absorbed
    o.clear();
    p.on_message(
        t0 + Duration::from_millis(2300),
        udp("127.0.0.1:5080"),
        answer(&bye, 200, "t1"),
        &mut o,
    );
    assert!(o.is_empty());
}

#[test]
fn late_failure_on_an_abandoned_branch_is_acked_not_relayed() {
    let p = proxy(&["127.0.0.1:5080", "127.0.0.1:5082"]);
    let t0 = Instant::now();
    let first = parse(&send(&p, t0, UAC, &invite("lf"))[1]);
    let mut o = vec![];
    p.on_timers(t0 + Duration::from_millis(2000), &mut o);
    o.clear();
    p.on_message(
        t0 + Duration::from_millis(2100),
        udp("127.0.0.1:5080"),
        answer(&first, 486, "t1"),
        &mut o,
    );
    assert_eq!(o.len(), 1);
    assert_eq!(parse(&o[0]).method(), Some(Method::Ack));
    assert_eq!(o[0].target.addr.port(), 5080);
}

#[test]
fn cancel_during_failover_stops_it_and_answers_487() {
    let p = proxy(&["127.0.0.1:5080", "127.0.0.1:5082"]);
    let t0 = Instant::now();
    send(&p, t0, UAC, &invite("cf1"));
    // the first destination stays silent; the caller gives up before the branch timer fires
    let cancel = invite("cf1")
        .replace("INVITE sip", "CANCEL sip")
        .replace("1 INVITE", "1 CANCEL");
    let o = send(&p, t0 + Duration::from_millis(1500), UAC, &cancel);
    assert_eq!(parse(&o[0]).status(), Some(200));
    assert!(o.iter().all(|t| t.target.addr.port() != 5082));
    let mut o = vec![];
    p.on_timers(t0 + Duration::from_millis(2000), &mut o);
    assert!(
        o.iter().all(|t| t.target.addr.port() != 5082),
        "no failover after CANCEL"
    );
    let up: Vec<_> = o
        .iter()
        .filter(|t| t.target.addr == addr(UAC))
        .map(parse)
        .collect();
    assert_eq!(up.last().map(|m| m.status()), Some(Some(487)));
    assert_eq!(p.stats().failovers.load(Ordering::Relaxed), 0);
}

pub(super) fn with_dialogs(p: Proxy, lifetime_s: u64, now: Instant) -> Proxy {
    p.with_dialogs(Arc::new(crate::dialog::Dialogs::new(
        crate::dialog::DialogConfig {
            lifetime: Duration::from_secs(lifetime_s),
            honour_session_expires: true,
            ..Default::default()
        },
        (now, 1_800_000_000),
    )))
}

/// An in-dialog request from the caller along the Route the proxy signed for its call.
pub(super) fn dlg_req(
    p: &Proxy,
    m: &str,
    call: &str,
    seq: u32,
    br: &str,
    from_tag: &str,
    to_tag: &str,
) -> String {
    let route = rr(p, call, from_tag, "", "");
    format!("{m} sip:b@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{br}\r\nRoute: {route}\r\nFrom: <sip:a@h>;tag={from_tag}\r\nTo: <sip:svc@h>;tag={to_tag}\r\nCall-ID: {call}\r\nCSeq: {seq} {m}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
}

/// INVITE through the proxy answered 200 by the backend: the dialog exists.
pub(super) fn answered_call(p: &Proxy, now: Instant, call: &str) {
    let fwd = parse(&send(p, now, UAC, &invite(call))[1]);
    let mut o = vec![];
    p.on_message(now, udp("127.0.0.1:5080"), answer(&fwd, 180, "tt"), &mut o);
    p.on_message(now, udp("127.0.0.1:5080"), answer(&fwd, 200, "tt"), &mut o);
}

#[test]
fn dialogs_validate_in_dialog_requests_and_end_on_bye() {
    let now = Instant::now();
    let p = with_dialogs(proxy(&["127.0.0.1:5080"]), 3600, now);
    answered_call(&p, now, "d1");
    let d = p.dialogs().unwrap();
    assert_eq!(d.list().len(), 1);
    assert_eq!(d.list()[0].state, crate::dialog::DialogState::Confirmed);
    // a BYE with a wrong to-tag, or for another Call-ID: 481, not relayed
    for bad in [
        dlg_req(&p, "BYE", "d1", 2, "b1", "ft", "zz"),
        dlg_req(&p, "BYE", "nope", 2, "b2", "ft", "tt"),
    ] {
        let o = send(&p, now, UAC, &bad);
        assert_eq!(o.len(), 1);
        assert_eq!(parse(&o[0]).status(), Some(481));
    }
    // a re-INVITE and the real BYE pass
    let o = send(
        &p,
        now,
        UAC,
        &dlg_req(&p, "INVITE", "d1", 3, "ri", "ft", "tt"),
    );
    assert!(o.iter().any(|t| t.target.addr == addr("127.0.0.1:5080")));
    let o = send(&p, now, UAC, &dlg_req(&p, "BYE", "d1", 4, "b3", "ft", "tt"));
    assert_eq!(o[0].target.addr, addr("127.0.0.1:5080"));
    assert!(d.list().is_empty(), "ended by the BYE");
    // the ACK of the 2xx is never refused; NOTIFY (event dialogs) passes
    let o = send(
        &p,
        now,
        UAC,
        &dlg_req(&p, "NOTIFY", "d1", 5, "n1", "ft", "tt"),
    );
    assert_eq!(o[0].target.addr, addr("127.0.0.1:5080"));
    assert_eq!(p.stats().dialogs_refused.load(Ordering::Relaxed), 2);
}

#[test]
fn a_failed_call_leaves_no_dialog_and_the_lifetime_ends_a_call_with_two_byes() {
    let now = Instant::now();
    let p = with_dialogs(proxy(&["127.0.0.1:5080"]), 10, now);
    let fwd = parse(&send(&p, now, UAC, &invite("d2"))[1]);
    let mut o = vec![];
    p.on_message(now, udp("127.0.0.1:5080"), answer(&fwd, 180, "tt"), &mut o);
    assert_eq!(p.dialogs().unwrap().list().len(), 1, "early");
    p.on_message(now, udp("127.0.0.1:5080"), answer(&fwd, 486, "tt"), &mut o);
    assert!(p.dialogs().unwrap().list().is_empty(), "failed: gone");

    answered_call(&p, now, "d3");
    let mut o = vec![];
    p.on_timers(now + Duration::from_secs(11), &mut o);
    let byes: Vec<(SocketAddr, Message)> = o
        .iter()
        .map(|t| (t.target.addr, parse(t)))
        .filter(|(_, m)| m.method() == Some(Method::Bye))
        .collect();
    assert_eq!(byes.len(), 2, "{o:?}");
    let to_callee = byes
        .iter()
        .find(|(a, _)| *a == addr("127.0.0.1:5080"))
        .expect("callee");
    assert_eq!(
        to_callee.1.uri_str(),
        "sip:b@127.0.0.1:5080",
        "to the 200's Contact"
    );
    assert_eq!(to_callee.1.from_tag(), Some("ft"));
    assert_eq!(to_callee.1.to_tag(), Some("tt"));
    let to_caller = byes.iter().find(|(a, _)| *a == addr(UAC)).expect("caller");
    assert_eq!(
        to_caller.1.uri_str(),
        "sip:a@127.0.0.1:5070",
        "to the INVITE's Contact"
    );
    assert_eq!(to_caller.1.from_tag(), Some("tt"));
    assert!(p.dialogs().unwrap().list().is_empty());
    // their answers are absorbed
    let mut o2 = vec![];
    p.on_message(
        now,
        udp("127.0.0.1:5080"),
        answer(&to_callee.1, 200, "tt"),
        &mut o2,
    );
    assert!(o2.is_empty());
}

#[test]
fn byes_from_the_middle_follow_each_sides_route_set() {
    let now = Instant::now();
    let p = with_dialogs(proxy(&["127.0.0.1:5080"]), 10, now);
    // an upstream proxy record-routed the INVITE; a downstream one the 200
    let inv = invite("rs").replace(
        "From:",
        "Record-Route: <sip:up2.example;lr>, <sip:up1.example;lr>\r\nFrom:",
    );
    let fwd = parse(&send(&p, now, UAC, &inv)[1]);
    let ok = String::from_utf8(answer(&fwd, 200, "tt").to_vec())
        .unwrap()
        .replacen("\r\n", "\r\nRecord-Route: <sip:down.example;lr>\r\n", 1);
    let mut o = vec![];
    p.on_message(now, udp("127.0.0.1:5080"), Bytes::from(ok), &mut o);
    let d = &p.dialogs().unwrap().list()[0];
    assert_eq!(d.callee_route(), "<sip:down.example;lr>");
    assert_eq!(
        d.caller_route(),
        "<sip:up2.example;lr>, <sip:up1.example;lr>",
        "nearest first"
    );
    let mut o = vec![];
    p.on_timers(now + Duration::from_secs(11), &mut o);
    let byes: Vec<(SocketAddr, Message)> = o
        .iter()
        .map(|t| (t.target.addr, parse(t)))
        .filter(|(_, m)| m.method() == Some(Method::Bye))
        .collect();
    let route_to = |a: &str| {
        let m = &byes.iter().find(|(t, _)| *t == addr(a)).expect("a BYE").1;
        m.values(HeaderName::Route).collect::<Vec<_>>().join(", ")
    };
    assert_eq!(route_to("127.0.0.1:5080"), "<sip:down.example;lr>");
    assert_eq!(route_to(UAC), "<sip:up2.example;lr>, <sip:up1.example;lr>");
    // without other proxies, no Route at all
    answered_call(&p, now + Duration::from_secs(12), "plain");
    let d = p
        .dialogs()
        .unwrap()
        .list()
        .into_iter()
        .find(|d| d.call_id() == "plain")
        .unwrap();
    assert_eq!((d.caller_route(), d.callee_route()), ("", ""));
}

#[test]
fn calls_the_proxy_refuses_are_recorded_once_as_missed() {
    let now = Instant::now();
    let cdrs = Arc::new(crate::cdr::Cdrs::default());
    let p = with_dialogs(proxy(&["127.0.0.1:5080"]), 3600, now).with_cdrs(cdrs.clone());
    let hop = invite("mf0").replace("Max-Forwards: 70", "Max-Forwards: 0");
    for _ in 0..3 {
        // the INVITE and two retransmissions: refused each time, recorded once
        let o = send(&p, now, UAC, &hop);
        assert_eq!(parse(&o[0]).status(), Some(483));
    }
    // an OPTIONS refused the same way is no call
    send(
        &p,
        now,
        UAC,
        &hop.replace("INVITE", "OPTIONS").replace("mf0", "mf1"),
    );
    let got = cdrs.take();
    assert_eq!(got.len(), 1, "{got:?}");
    let r = &got[0];
    assert!(!r.answered);
    assert_eq!((r.code, &*r.reason), (483, "Too Many Hops"));
    assert_eq!((r.call_id(), r.from_tag()), ("mf0", "ft"));
    assert_eq!(r.ruri(), "sip:svc@127.0.0.1:5060");
    assert_eq!(r.source, Some(addr(UAC)));
}

#[test]
fn management_ends_a_dialog() {
    let now = Instant::now();
    let p = with_dialogs(proxy(&["127.0.0.1:5080"]), 3600, now);
    answered_call(&p, now, "d4");
    let id = p.dialogs().unwrap().list()[0].id;
    assert!(p.end_dialog(now, id).is_some());
    assert!(p.end_dialog(now, id).is_none());
    let mut o = vec![];
    p.on_timers(now, &mut o);
    assert_eq!(
        o.iter()
            .filter(|t| parse(t).method() == Some(Method::Bye))
            .count(),
        2
    );
}

fn balanced(now: Instant) -> (Proxy, Arc<crate::balancer::Balancer>) {
    use crate::balancer::{parse_resources, Balancer, CallRouter, LbFlags, LbNodeConfig, LbRoute};
    let node = |id: i64, port: u16| LbNodeConfig {
        id,
        group: 1,
        uri: format!("sip:127.0.0.1:{port}").into(),
        transport: Transport::Udp,
        addr: addr(&format!("127.0.0.1:{port}")),
        resources: parse_resources("pstn=1").unwrap(),
        live: vec![],
        enabled: true,
        description: String::new(),
    };
    let d = Arc::new(crate::dispatcher::Dispatcher::new(
        vec![],
        1,
        3,
        crate::dispatcher::ProbeConfig::default(),
        1,
    ));
    let b = Arc::new(Balancer::new(
        vec![node(1, 5080), node(2, 5082)],
        LbRoute::calls(1, vec!["pstn".into()], LbFlags::default()),
        1,
        d.health_book().clone(),
    ));
    let cfg = ProxyConfig {
        listeners: vec![Listener {
            transport: Transport::Udp,
            advertise: addr("127.0.0.1:5060"),
        }],
        ..ProxyConfig::default()
    };
    let p = Proxy::new(
        cfg,
        Arc::new(CallRouter {
            dispatcher: d,
            balancer: b.clone(),
        }),
    );
    (with_dialogs(p, 3600, now), b)
}

#[test]
fn balanced_calls_are_counted_until_failure_or_bye_and_refused_when_full() {
    let now = Instant::now();
    let (p, b) = balanced(now);
    let used = || -> Vec<i64> { b.nodes().iter().map(|n| n.load()[0].2).collect() };
    let f1 = parse(&send(&p, now, UAC, &invite("L1"))[1]);
    let f2 = parse(&send(&p, now, UAC, &invite("L2"))[1]);
    assert_eq!(used(), vec![1, 1]);
    let full = send(&p, now, UAC, &invite("L3"));
    let r = parse(&full[0]);
    assert_eq!(r.status(), Some(503));
    assert_eq!(
        r.reason(),
        "Service Unavailable",
        "the balancer's groups are not the caller's business"
    );
    // call 1 is busy: its node is free again
    let busy_node = send(&p, now, UAC, &invite("L1")).len(); // retransmission, absorbed
    assert_eq!(busy_node, 1);
    let mut o = vec![];
    let n1 = if f1.uri_str().contains("5080") {
        "127.0.0.1:5080"
    } else {
        "127.0.0.1:5082"
    };
    p.on_message(now, udp(n1), answer(&f1, 486, "t1"), &mut o);
    assert_eq!(used().iter().sum::<i64>(), 1);
    // call 2 is answered, then hung up
    let n2 = if f2.uri_str().contains("5080") {
        "127.0.0.1:5080"
    } else {
        "127.0.0.1:5082"
    };
    p.on_message(now, udp(n2), answer(&f2, 200, "t2"), &mut o);
    assert_eq!(used().iter().sum::<i64>(), 1);
    let bye = dlg_req(&p, "BYE", "L2", 2, "byeL2", "ft", "t2");
    send(&p, now, UAC, &bye);
    assert_eq!(used(), vec![0, 0], "released exactly once");
    assert_eq!(b.active_calls(), 0);
}

#[test]
fn an_advertised_address_is_written_and_the_bound_one_is_still_ours() {
    let cfg = ProxyConfig {
        listeners: vec![Listener {
            transport: Transport::Udp,
            advertise: addr("203.0.113.5:5060"),
        }],
        bound: vec![addr("127.0.0.1:5060")],
        ..ProxyConfig::default()
    };
    let dest = Destination {
        uri: "sip:127.0.0.1:5080".into(),
        transport: Transport::Udp,
        addr: addr("127.0.0.1:5080"),
        flow: None,
        node: None,
        route: None,
        name: None,
    };
    let p = Proxy::new(cfg, Arc::new(crate::router::RoundRobin::new(vec![dest])));
    let now = Instant::now();
    // the Request-URI names the bound address: ours, so routed to the media server
    let out = send(&p, now, UAC, &invite("adv1"));
    let fwd = parse(out.iter().find(|t| parse(t).is_request()).expect("relayed"));
    let via = fwd.get(HeaderName::Via).unwrap();
    assert!(via.starts_with("SIP/2.0/UDP 203.0.113.5:5060;"), "{via}");
    let rr = fwd.get(HeaderName::RecordRoute).unwrap();
    assert!(rr.starts_with("<sip:203.0.113.5:5060;lr"), "{rr}");
    // a Route naming the public address is popped as ours, and so is one naming the bound
    for route in ["203.0.113.5:5060", "127.0.0.1:5060"] {
        let call = format!("adv-{route}");
        let inv = invite(&call).replace(
            "Max-Forwards: 70",
            &format!("Route: <sip:{route};lr>\r\nMax-Forwards: 70"),
        );
        let out = send(&p, now, UAC, &inv);
        let fwd = parse(out.iter().find(|t| parse(t).is_request()).expect("relayed"));
        assert!(fwd.get(HeaderName::Route).is_none(), "{route} popped");
    }
}

/// A cluster node: another node's requests are trusted (a call handed over for a user whose
/// connection this node holds goes out over it), its address counts as ours at the top of
/// a route set (standing in for it), and after a Route of our own it is the next hop.
#[test]
fn cluster_peers_hand_over_and_stand_in() {
    let peers = Arc::new(crate::cluster::Peers::new(1));
    peers.set(vec![addr("127.0.0.1:5060"), addr("127.0.0.1:5062")]);
    let lone = proxy(&["127.0.0.1:5080"]);
    let p = proxy(&["127.0.0.1:5080"]).with_peers(peers);
    let now = Instant::now();
    let token = p.flow_token(0x2a);
    assert_ne!(
        token,
        lone.flow_token(0x2a),
        "a node's tokens name the node"
    );
    assert_eq!(p.flow_of_token(&lone.flow_token(0x2a)), None);
    let handed = |call: &str| {
        format!("INVITE sip:carol@10.0.0.5:5060;transport=tcp SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-{call}\r\nRoute: <sip:{token}@127.0.0.1:5060;lr;sbt=tcp>\r\nFrom: <sip:fs@h>;tag=ft\r\nTo: <sip:carol@127.0.0.1>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:fs@127.0.0.1:5080>\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n")
    };
    let o = send(&p, now, "127.0.0.1:5062", &handed("h1"));
    let fwd = o
        .iter()
        .find(|t| t.target.flow == Some(0x2a))
        .expect("the request handed over by node 2 goes out over the connection");
    assert_eq!(fwd.target.transport, Transport::Tcp);
    assert_eq!(
        parse(fwd).uri_str(),
        "sip:carol@10.0.0.5:5060;transport=tcp"
    );
    // the same from an address that is no node reaches no connection
    let o = send(&p, now, "127.0.0.1:5099", &handed("h2"));
    assert!(o.iter().all(|t| t.target.flow != Some(0x2a)), "{o:?}");
    // a BYE whose route set names node 2 first: this node stands in for it
    let sg = p.rr_signature("d1", "ft", "");
    let bye = |route: &str, branch: &str| {
        format!("BYE sip:a@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-{branch}\r\nRoute: {route}\r\nFrom: <sip:svc@h>;tag=tt\r\nTo: <sip:a@h>;tag=ft\r\nCall-ID: d1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n")
    };
    let o = send(
        &p,
        now,
        "127.0.0.1:5080",
        &bye(&format!("<sip:127.0.0.1:5062;lr;sg={sg:016x}>"), "b1"),
    );
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!(
        o[0].target.addr,
        addr("127.0.0.1:5070"),
        "straight to the caller"
    );
    // after a Route of ours, node 2's is the next hop
    let o = send(
        &p,
        now,
        "127.0.0.1:5080",
        &bye(
            &format!("<sip:127.0.0.1:5060;lr;sg={sg:016x}>, <sip:127.0.0.1:5062;lr;sg={sg:016x}>"),
            "b2",
        ),
    );
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!(o[0].target.addr, addr("127.0.0.1:5062"), "on to node 2");
    // a reply for a request node 2 sent, answered to this node: handed to node 2 unchanged
    let reply = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKsb1.2.3.0000000000000000\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-x\r\nFrom: <sip:a@h>;tag=ft\r\nTo: <sip:b@h>;tag=tt\r\nCall-ID: r1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    let o = send(&p, now, "127.0.0.1:5080", reply);
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!(o[0].target.addr, addr("127.0.0.1:5062"));
    assert_eq!(&o[0].data[..], reply.as_bytes());
    // outside a cluster the same reply is foreign: dropped
    assert!(send(&lone, now, "127.0.0.1:5080", reply).is_empty());
}

#[test]
fn a_call_of_another_node_goes_to_it_while_it_lives_and_is_stood_in_for_when_dead() {
    let now = Instant::now();
    let peers = Arc::new(crate::cluster::Peers::new(1));
    let (us, two) = (addr("127.0.0.1:5060"), addr("127.0.0.1:5062"));
    peers.set_nodes(vec![(1, us, true), (2, two, true)]);
    let p = with_dialogs(proxy(&["127.0.0.1:5080"]), 3600, now).with_peers(peers.clone());
    let sg = p.rr_signature("d1", "ft", "");
    let bye = |route: &str, branch: &str| {
        format!("BYE sip:a@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-{branch}\r\nRoute: {route}\r\nFrom: <sip:svc@h>;tag=tt\r\nTo: <sip:a@h>;tag=ft\r\nCall-ID: d1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n")
    };
    let signed = format!("<sip:127.0.0.1:5062;lr;sg={sg:016x}>");
    // node 2 lives: its call (not yet shared with us) is handed to it, its Route left on
    let o = send(&p, now, "127.0.0.1:5080", &bye(&signed, "b1"));
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!(
        o[0].target.addr, two,
        "handed to the node that set the call up"
    );
    let m = parse(&o[0]);
    assert_eq!(m.uri_str(), "sip:a@127.0.0.1:5070");
    assert!(
        m.get(HeaderName::Route)
            .is_some_and(|r| r.contains("127.0.0.1:5062")),
        "node 2's Route stays on for node 2 to pop"
    );
    assert_eq!(p.stats().cluster_handed.load(Ordering::Relaxed), 1);
    // node 2 dead: this node follows the signed route itself, straight to the caller
    peers.set_nodes(vec![(1, us, true), (2, two, false)]);
    let o = send(&p, now, "127.0.0.1:5080", &bye(&signed, "b2"));
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!(o[0].target.addr, addr("127.0.0.1:5070"), "stood in for");
    assert_eq!(p.stats().cluster_stand_ins.load(Ordering::Relaxed), 1);
    // node 2 live but gone quiet (no renewal for seconds: killed, not yet judged dead): a
    // request handed to it would be lost, so it is stood in for too
    peers.set_nodes(vec![(1, us, true), (2, two, true)]);
    peers.set_quiet(vec![two]);
    let o = send(&p, now, "127.0.0.1:5080", &bye(&signed, "b2q"));
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!(o[0].target.addr, addr("127.0.0.1:5070"), "stood in for");
    assert_eq!(p.stats().cluster_stand_ins.load(Ordering::Relaxed), 2);
    assert_eq!(p.stats().cluster_handed.load(Ordering::Relaxed), 1);
    // a forged signature is refused either way, and an unsigned route too
    let forged = format!("<sip:127.0.0.1:5062;lr;sg={:016x}>", sg ^ 1);
    let o = send(&p, now, "127.0.0.1:5080", &bye(&forged, "b3"));
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!(parse(&o[0]).status(), Some(403), "{o:?}");
    let o = send(
        &p,
        now,
        "127.0.0.1:5080",
        &bye("<sip:127.0.0.1:5062;lr>", "b4"),
    );
    assert_eq!(parse(&o[0]).status(), Some(403), "{o:?}");
    // a route of ours for a dialog nobody knows: 481 as before
    let o = send(
        &p,
        now,
        "127.0.0.1:5080",
        &bye(&format!("<sip:127.0.0.1:5060;lr;sg={sg:016x}>"), "b5"),
    );
    assert_eq!(parse(&o[0]).status(), Some(481), "{o:?}");
    assert_eq!(p.stats().cluster_handed.load(Ordering::Relaxed), 1);
}
