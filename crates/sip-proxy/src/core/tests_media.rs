//! Media through the relay, on the virtual clock: the offer parks the INVITE, the answer
//! parks the reply, late offers, deletes at the end, and every way the relay can fail.

use std::time::Duration;

use super::*;
use crate::command::EventResult;
use crate::media::{MediaConfig, MediaError, MediaOp, Relay};
use crate::scenario::*;

/// A caller behind NAT (its SDP names a private address).
const UAC: &str = "198.51.100.7:5070";
const FS: &str = "127.0.0.1:5080";
const NAT_SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.168.1.20\r\ns=-\r\nc=IN IP4 192.168.1.20\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
const RELAY_SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n";
const FS_SDP: &str = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 16000 RTP/AVP 0\r\n";
const RELAY_SDP2: &str = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 30002 RTP/AVP 0\r\n";

/// A proxy relaying to one media server at `FS`, without the relay.
fn plain_proxy() -> Proxy {
    let cfg = ProxyConfig {
        listeners: vec![crate::config::Listener {
            transport: Transport::Udp,
            advertise: "127.0.0.1:5060".parse().unwrap(),
        }],
        ..ProxyConfig::default()
    };
    let dest = Destination {
        uri: format!("sip:{FS}").into(),
        transport: Transport::Udp,
        addr: addr(FS),
        flow: None,
        node: None,
        route: None,
        name: None,
    };
    Proxy::new(cfg, Arc::new(crate::RoundRobin::new(vec![dest])))
}

fn proxy(relay: Relay) -> Scenario {
    Scenario::new(plain_proxy().with_media(MediaConfig {
        relay,
        wait: Duration::from_secs(2),
        ..MediaConfig::default()
    }))
}

fn invite(call: &str, sdp: &str) -> String {
    let ct = if sdp.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!("INVITE sip:1000@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch=z9hG4bK-{call}\r\nFrom: <sip:a@h>;tag=ft\r\nTo: <sip:1000@h>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@{UAC}>\r\nMax-Forwards: 70\r\n{ct}Content-Length: {}\r\n\r\n{sdp}", sdp.len())
}

/// `reply` with an SDP body.
fn reply_sdp(req: &Message, code: u16, tag: &str, sdp: &str) -> String {
    let r = reply(req, code, tag);
    r.replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ),
    )
}

fn sdp_ok(s: &str) -> EventResult {
    EventResult::Media(Ok(Bytes::copy_from_slice(s.as_bytes())))
}

fn body(t: &Transmit) -> String {
    String::from_utf8_lossy(parse(t).body()).into_owned()
}

fn stat(s: &Scenario, f: impl Fn(&Stats) -> &AtomicU64) -> u64 {
    f(s.proxy.stats()).load(Ordering::Relaxed)
}

#[test]
fn offer_and_answer_rewrite_both_sdps_and_the_bye_deletes() {
    let mut s = proxy(Relay::Auto);
    let out = s.send(UAC, &invite("m1", NAT_SDP));
    assert_eq!(
        summary(&out),
        [format!("100->{UAC}")],
        "parked on the offer"
    );
    let (id, offer) = s.one_media();
    assert_eq!(offer.op, MediaOp::Offer);
    assert_eq!(
        (offer.call_id.as_str(), offer.from_tag.as_str()),
        ("m1", "ft")
    );
    assert_eq!(&offer.sdp[..], NAT_SDP.as_bytes());
    // a NATed phone: its media goes to where its packets come from
    assert_eq!(
        offer.flags.describe(),
        "RTP/AVP replace-origin replace-session-connection received-from=198.51.100.7"
    );
    let out = s.answer(id, sdp_ok(RELAY_SDP));
    assert_eq!(summary(&out), [format!("INVITE->{FS}")]);
    let fwd = parse(&out[0]);
    assert_eq!(body(&out[0]), RELAY_SDP);
    assert_eq!(
        fwd.get(HeaderName::ContentLength),
        Some(RELAY_SDP.len().to_string().as_str())
    );
    // the 200's SDP goes to the relay; the reply waits
    let out = s.send(FS, &reply_sdp(&fwd, 200, "tt", FS_SDP));
    assert!(out.is_empty(), "{:?}", summary(&out));
    let (id, answer) = s.one_media();
    assert_eq!(answer.op, MediaOp::Answer);
    assert_eq!(
        (answer.from_tag.as_str(), answer.to_tag.as_str()),
        ("ft", "tt")
    );
    assert!(answer.flags.flags.contains(&"trust-address"));
    let out = s.answer(id, sdp_ok(RELAY_SDP2));
    assert_eq!(summary(&out), [format!("200->{UAC}")]);
    assert_eq!(body(&out[0]), RELAY_SDP2);
    // a retransmitted 200 is rewritten the same way without asking again
    let out = s.send(FS, &reply_sdp(&fwd, 200, "tt", FS_SDP));
    assert_eq!(summary(&out), [format!("200->{UAC}")]);
    assert_eq!(body(&out[0]), RELAY_SDP2);
    assert!(s.commands().is_empty());
    assert_eq!(s.proxy.media_calls(), 1);
    // the BYE deletes the session
    let bye = format!("BYE sip:1000@{FS} SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch=z9hG4bK-bye\r\nRoute: {}\r\nFrom: <sip:a@h>;tag=ft\r\nTo: <sip:1000@h>;tag=tt\r\nCall-ID: m1\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n", fwd.get(HeaderName::RecordRoute).unwrap());
    let out = s.send(UAC, &bye);
    assert_eq!(summary(&out), [format!("BYE->{FS}")]);
    let (_, del) = s.one_media();
    assert_eq!((del.op, del.call_id.as_str()), (MediaOp::Delete, "m1"));
    assert_eq!(s.proxy.media_calls(), 0);
    assert_eq!(stat(&s, |s| &s.media_deletes), 1);
}

#[test]
fn a_call_that_needs_no_relay_is_untouched() {
    let mut s = proxy(Relay::Auto);
    let public = NAT_SDP.replace("192.168.1.20", "198.51.100.7");
    let out = s.send(UAC, &invite("p1", &public));
    assert_eq!(
        summary(&out),
        [format!("100->{UAC}"), format!("INVITE->{FS}")]
    );
    assert_eq!(body(&out[1]), public);
    assert!(s.commands().is_empty());
    let mut never = proxy(Relay::Never);
    let out = never.send(UAC, &invite("p2", NAT_SDP));
    assert_eq!(summary(&out).len(), 2);
    assert!(never.commands().is_empty());
}

#[test]
fn a_refused_offer_is_488_and_a_silent_relay_503_and_nothing_is_sent_on() {
    let mut s = proxy(Relay::Always);
    s.send(UAC, &invite("r1", "v=0\r\nm=garbage\r\n"));
    let (id, _) = s.one_media();
    let out = s.answer(
        id,
        EventResult::Media(Err(MediaError::Refused("Failed to parse SDP".into()))),
    );
    assert_eq!(summary(&out), [format!("488->{UAC}")]);
    let m = parse(&out[0]);
    assert!(m.reason().contains("Failed to parse SDP"), "{}", m.reason());
    s.send(UAC, &invite("r2", NAT_SDP));
    let _ = s.one_media();
    let out = s.advance(Duration::from_secs(3));
    // (the 488 is retransmitted over UDP meanwhile); nothing went to the media server
    let sm = summary(&out);
    assert!(sm.contains(&format!("503->{UAC}")), "{sm:?}");
    assert!(sm.iter().all(|l| !l.starts_with("INVITE")), "{sm:?}");
    assert_eq!(stat(&s, |s| &s.media_failures), 2);
    assert_eq!(s.proxy.media_calls(), 0);
}

#[test]
fn cancel_while_the_offer_waits_answers_487_at_once() {
    let mut s = proxy(Relay::Always);
    s.send(UAC, &invite("c1", NAT_SDP));
    let (id, _) = s.one_media();
    let cancel = format!("CANCEL sip:1000@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch=z9hG4bK-c1\r\nFrom: <sip:a@h>;tag=ft\r\nTo: <sip:1000@h>\r\nCall-ID: c1\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
    let out = s.send(UAC, &cancel);
    assert_eq!(
        summary(&out),
        [format!("200->{UAC}"), format!("487->{UAC}")]
    );
    // the offer's answer after the CANCEL sends nothing on
    let out = s.answer(id, sdp_ok(RELAY_SDP));
    assert!(out.is_empty(), "{:?}", summary(&out));
}

#[test]
fn a_2xx_whose_sdp_the_relay_refuses_ends_the_callee_and_fails_the_call() {
    let mut s = proxy(Relay::Always);
    s.send(UAC, &invite("f1", NAT_SDP));
    let (id, _) = s.one_media();
    let out = s.answer(id, sdp_ok(RELAY_SDP));
    let fwd = parse(&out[0]);
    s.send(FS, &reply_sdp(&fwd, 200, "tt", "v=0\r\nbroken"));
    let (id, _) = s.one_media();
    let out = s.answer(
        id,
        EventResult::Media(Err(MediaError::Refused("Failed to parse SDP".into()))),
    );
    let sm = summary(&out);
    assert!(sm.contains(&format!("ACK->{FS}")), "{sm:?}");
    assert!(sm.contains(&format!("BYE->{FS}")), "{sm:?}");
    assert!(sm.contains(&format!("502->{UAC}")), "{sm:?}");
    // the session made by the offer is deleted
    let (_, del) = s.one_media();
    assert_eq!(del.op, MediaOp::Delete);
}

#[test]
fn a_provisional_whose_answer_fails_is_dropped_and_the_call_goes_on() {
    let mut s = proxy(Relay::Always);
    s.send(UAC, &invite("e1", NAT_SDP));
    let (id, _) = s.one_media();
    let fwd = parse(&s.answer(id, sdp_ok(RELAY_SDP))[0]);
    s.send(FS, &reply_sdp(&fwd, 183, "tt", FS_SDP));
    let (id, _) = s.one_media();
    let out = s.answer(
        id,
        EventResult::Media(Err(MediaError::Unavailable("down".into()))),
    );
    assert!(out.is_empty());
    assert_eq!(stat(&s, |s| &s.media_dropped), 1);
    // the 183 with early media, answered, goes up rewritten
    s.send(FS, &reply_sdp(&fwd, 183, "tt", FS_SDP));
    let (id, _) = s.one_media();
    let out = s.answer(id, sdp_ok(RELAY_SDP2));
    assert_eq!(summary(&out), [format!("183->{UAC}")]);
    assert_eq!(body(&out[0]), RELAY_SDP2);
}

#[test]
fn a_late_offer_is_offered_on_the_2xx_and_answered_on_the_ack() {
    let mut s = proxy(Relay::Always);
    let out = s.send(UAC, &invite("l1", ""));
    assert_eq!(
        summary(&out),
        [format!("100->{UAC}"), format!("INVITE->{FS}")]
    );
    let fwd = parse(&out[1]);
    s.send(FS, &reply_sdp(&fwd, 200, "tt", FS_SDP));
    let (id, offer) = s.one_media();
    assert_eq!(offer.op, MediaOp::Offer);
    // the callee offers: its tag is rtpengine's from-tag
    assert_eq!(
        (offer.from_tag.as_str(), offer.to_tag.as_str()),
        ("tt", "ft")
    );
    let out = s.answer(id, sdp_ok(RELAY_SDP2));
    assert_eq!(summary(&out), [format!("200->{UAC}")]);
    assert_eq!(body(&out[0]), RELAY_SDP2);
    let ack = format!("ACK sip:1000@{FS} SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch=z9hG4bK-ack\r\nRoute: {}\r\nFrom: <sip:a@h>;tag=ft\r\nTo: <sip:1000@h>;tag=tt\r\nCall-ID: l1\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{NAT_SDP}", fwd.get(HeaderName::RecordRoute).unwrap(), NAT_SDP.len());
    let out = s.send(UAC, &ack);
    assert!(out.is_empty(), "the ACK waits for the answer");
    let (id, answer) = s.one_media();
    assert_eq!(answer.op, MediaOp::Answer);
    assert_eq!(
        (answer.from_tag.as_str(), answer.to_tag.as_str()),
        ("tt", "ft")
    );
    let out = s.answer(id, sdp_ok(RELAY_SDP));
    assert_eq!(summary(&out), [format!("ACK->{FS}")]);
    assert_eq!(body(&out[0]), RELAY_SDP);
    // an ACK whose answer never comes goes on as it was
    let out = s.send(UAC, &ack.replace("z9hG4bK-ack", "z9hG4bK-ack2"));
    assert!(out.is_empty());
    let _ = s.one_media();
    let out = s.advance(Duration::from_secs(3));
    assert_eq!(summary(&out), [format!("ACK->{FS}")]);
    assert_eq!(body(&out[0]), NAT_SDP);
    // a party sending ACKs with SDP in a loop fills the command table at most: past its
    // bound they go on as they are, without asking the relay
    let before = stat(&s, |s| &s.media_answers);
    let mut passed = 0;
    for n in 0..10_050 {
        let out = s.send(UAC, &ack.replace("z9hG4bK-ack", &format!("z9hG4bK-f{n}")));
        passed += out.len();
    }
    let asked = stat(&s, |s| &s.media_answers) - before;
    assert_eq!(asked, 10_000, "bounded by max_waiting");
    assert_eq!(passed, 50);
}

#[test]
fn a_browser_to_phone_call_without_a_relay_is_counted() {
    let p = plain_proxy();
    let mut out = vec![];
    let src = Source {
        transport: Transport::Ws,
        addr: addr(UAC),
        flow: Some(7),
    };
    // no WS listener: the proxy still answers, and says why there is no media
    p.on_message(
        Instant::now(),
        src,
        Bytes::from(invite("w1", NAT_SDP).replace("SIP/2.0/UDP 198", "SIP/2.0/WS 198")),
        &mut out,
    );
    assert_eq!(p.stats().media_unavailable.load(Ordering::Relaxed), 1);
    let mut c = vec![];
    p.poll_commands(&mut c);
    assert!(c.is_empty());
}

/// An offered call, ringing at the media server: (scenario, the INVITE as forwarded).
fn ringing(relay: Relay, dialogs: bool) -> (Scenario, Message) {
    let mut s = proxy(relay);
    if dialogs {
        let p = std::mem::replace(&mut s.proxy, plain_proxy());
        s.proxy = p.with_dialogs(Arc::new(crate::dialog::Dialogs::new(
            Default::default(),
            (s.now, 1_000),
        )));
    }
    s.send(UAC, &invite("k1", NAT_SDP));
    let (id, _) = s.one_media();
    let fwd = parse(&s.answer(id, sdp_ok(RELAY_SDP))[0]);
    s.send(FS, &reply(&fwd, 180, "tt"));
    (s, fwd)
}

#[test]
fn a_call_cancelled_or_refused_after_its_offer_deletes_its_session() {
    let (mut s, fwd) = ringing(Relay::Always, false);
    let cancel = format!("CANCEL sip:1000@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch=z9hG4bK-k1\r\nFrom: <sip:a@h>;tag=ft\r\nTo: <sip:1000@h>\r\nCall-ID: k1\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
    s.send(UAC, &cancel);
    let out = s.send(FS, &reply(&fwd, 487, "tt"));
    assert!(summary(&out).contains(&format!("487->{UAC}")));
    let (_, del) = s.one_media();
    assert_eq!((del.op, del.call_id.as_str()), (MediaOp::Delete, "k1"));
    // refused by the callee: the same
    let (mut s, fwd) = ringing(Relay::Always, false);
    s.send(FS, &reply(&fwd, 486, "tt"));
    let (_, del) = s.one_media();
    assert_eq!(del.op, MediaOp::Delete);
    assert_eq!(s.proxy.media_calls(), 0);
}

#[test]
fn ending_a_dialog_from_the_middle_deletes_its_session_and_restored_calls_delete_too() {
    let (mut s, fwd) = ringing(Relay::Always, true);
    s.send(FS, &reply_sdp(&fwd, 200, "tt", FS_SDP));
    let (id, _) = s.one_media();
    s.answer(id, sdp_ok(RELAY_SDP2));
    let d = s.proxy.dialogs().unwrap().list();
    assert_eq!(d.len(), 1);
    s.proxy.end_dialog(s.now, d[0].id).expect("dialog ended");
    let (_, del) = s.one_media();
    assert_eq!((del.op, del.call_id.as_str()), (MediaOp::Delete, "k1"));
    // a call from before a restart (its dialog restored): its BYE deletes its media
    let mut s = proxy(Relay::Auto);
    s.proxy.media_restored(["old-call"].into_iter());
    let rr = format!(
        "<sip:127.0.0.1:5060;lr;sg={:016x}>",
        s.proxy.rr_signature("old-call", "ft", "")
    );
    let bye = format!("BYE sip:1000@{FS} SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch=z9hG4bK-ob\r\nRoute: {rr}\r\nFrom: <sip:a@h>;tag=ft\r\nTo: <sip:1000@h>;tag=tt\r\nCall-ID: old-call\r\nCSeq: 9 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
    let out = s.send(UAC, &bye);
    assert_eq!(summary(&out), [format!("BYE->{FS}")]);
    let (_, del) = s.one_media();
    assert_eq!(
        (del.op, del.call_id.as_str()),
        (MediaOp::Delete, "old-call")
    );
    // a BYE of a call that was never relayed asks nothing
    let out = s.send(
        UAC,
        &bye.replace("old-call", "plain-call")
            .replace("z9hG4bK-ob", "z9hG4bK-pb")
            .replace(
                &rr,
                &format!(
                    "<sip:127.0.0.1:5060;lr;sg={:016x}>",
                    s.proxy.rr_signature("plain-call", "ft", "")
                ),
            ),
    );
    assert_eq!(summary(&out), [format!("BYE->{FS}")]);
    assert!(s.commands().is_empty());
}

#[test]
fn a_rule_for_the_callers_network_overrides_the_policy_and_the_set() {
    let net = |x| crate::registrar::parse_cidr(x).unwrap();
    let p = plain_proxy().with_media(MediaConfig {
        relay: Relay::Always,
        rules: vec![
            crate::media::MediaRule {
                sources: vec![net("198.51.100.0/24")],
                relay: Some(Relay::Never),
                set: None,
            },
            crate::media::MediaRule {
                sources: vec![net("203.0.113.0/24")],
                relay: None,
                set: Some(3),
            },
        ],
        ..MediaConfig::default()
    });
    let mut s = Scenario::new(p);
    // the caller's LAN is the media server's: not relayed
    let out = s.send(UAC, &invite("n1", NAT_SDP));
    assert_eq!(
        summary(&out),
        [format!("100->{UAC}"), format!("INVITE->{FS}")]
    );
    assert!(s.commands().is_empty());
    // another network: relayed through set 3
    let other = "203.0.113.9:5070";
    s.send(other, &invite("n2", NAT_SDP).replace(UAC, other));
    let (_, offer) = s.one_media();
    assert_eq!(offer.set, 3);
}

#[test]
fn a_late_2xx_from_a_branch_given_up_on_is_answered_through_the_relay_too() {
    let cfg = ProxyConfig {
        listeners: vec![crate::config::Listener {
            transport: Transport::Udp,
            advertise: "127.0.0.1:5060".parse().unwrap(),
        }],
        ..ProxyConfig::default()
    };
    let dest = |a: &str| Destination {
        uri: format!("sip:{a}").into(),
        transport: Transport::Udp,
        addr: addr(a),
        flow: None,
        node: None,
        route: None,
        name: None,
    };
    let fs2 = "127.0.0.1:5082";
    let p = Proxy::new(
        cfg,
        Arc::new(crate::RoundRobin::new(vec![dest(FS), dest(fs2)])),
    )
    .with_media(MediaConfig {
        relay: Relay::Always,
        ..MediaConfig::default()
    });
    let mut s = Scenario::new(p);
    s.send(UAC, &invite("lb", NAT_SDP));
    let (id, _) = s.one_media();
    let out = s.answer(id, sdp_ok(RELAY_SDP));
    let first = parse(&out[0]);
    // the first media server stays silent: failover, a second offer, the second INVITE
    s.advance(Duration::from_millis(2100));
    let (id, _) = s.one_media();
    let out = s.answer(id, sdp_ok(RELAY_SDP));
    assert!(
        summary(&out).iter().any(|l| l.starts_with("INVITE")),
        "{:?}",
        summary(&out)
    );
    // then the first answers after all: its SDP is answered through the relay as well
    let out = s.send(FS, &reply_sdp(&first, 200, "late", FS_SDP));
    assert!(
        out.iter().all(|t| parse(t).status() != Some(200)),
        "not relayed as it was"
    );
    let (id, a) = s.one_media();
    assert_eq!((a.op, a.to_tag.as_str()), (MediaOp::Answer, "late"));
    let out = s.answer(id, sdp_ok(RELAY_SDP2));
    let up: Vec<&Transmit> = out
        .iter()
        .filter(|t| parse(t).status() == Some(200))
        .collect();
    assert_eq!(up.len(), 1);
    assert_eq!(body(up[0]), RELAY_SDP2);
}
