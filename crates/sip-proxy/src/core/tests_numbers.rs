//! Number routing in the request path, on the virtual clock: a translated number to the
//! carrier of its prefix with failover between gateways, refusals, the Request-URI rewrite.

use super::*;
use crate::dispatcher::HealthBook;
use crate::numbers::dialplan::{Dialplan, DpRow};
use crate::numbers::drouting::{Drouting, GatewayRow, RuleRow};
use crate::numbers::routing::{NumberRoute, NumberTables, Numbers, Target as To};
use crate::scenario::*;

const UAC: &str = "127.0.0.1:5070";
const GW1: &str = "127.0.0.5:5060";
const GW2: &str = "127.0.0.6:5060";

fn proxy() -> Scenario {
    let n = Numbers::new(
        vec![
            NumberRoute {
                from: vec![Sender::Users, Sender::MediaServers],
                dialplan: Some(1),
                prefix: "+".into(),
                min_length: 8,
                to: To::Carriers {
                    group: 0,
                    by_caller: false,
                },
            },
            NumberRoute {
                from: vec![Sender::Users],
                dialplan: None,
                prefix: "".into(),
                min_length: 3,
                to: To::MediaServers,
            },
        ],
        Arc::new(HealthBook::default()),
    );
    let gw = |id: i64, addr: &str| GatewayRow {
        id,
        gwid: format!("gw{id}"),
        address: addr.into(),
        ..GatewayRow::default()
    };
    let (drouting, p1) = Drouting::build(
        &[gw(1, GW1), gw(2, GW2)],
        &[],
        &[RuleRow {
            ruleid: 1,
            groupid: "0".into(),
            prefix: "+49".into(),
            gwlist: "gw1,gw2".into(),
            ..RuleRow::default()
        }],
    );
    let (dialplan, p2) = Dialplan::build(&[DpRow {
        id: 1,
        dpid: 1,
        match_op: 1,
        match_exp: "^0([1-9][0-9]+)$".into(),
        subst_exp: "^0([1-9][0-9]+)$".into(),
        repl_exp: "+49\\1".into(),
        ..DpRow::default()
    }]);
    assert!(p1.is_empty() && p2.is_empty());
    n.reload(NumberTables {
        dialplan,
        drouting,
        aliases: Default::default(),
        groups: Default::default(),
    });
    Scenario::new(crate::sequences::plain_proxy(&["127.0.0.1:5080"]).with_numbers(Arc::new(n)))
}

fn invite(call: &str, user: &str) -> String {
    format!("INVITE sip:{user}@127.0.0.1:5060;user=phone SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{call}\r\nFrom: <sip:a@h>;tag=ft\r\nTo: <sip:{user}@h>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5070>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
}

#[test]
fn a_national_number_is_translated_and_fails_over_to_the_second_gateway() {
    let mut s = proxy();
    let out = s.send(UAC, &invite("c1", "03012345678"));
    assert_eq!(
        summary(&out),
        ["100->127.0.0.1:5070".to_string(), format!("INVITE->{GW1}")]
    );
    let fwd = msg(&out[1]);
    assert_eq!(fwd.uri_str(), "sip:+493012345678@127.0.0.5:5060");
    let out = s.send(GW1, &reply(&fwd, 503, "g1"));
    let relayed: Vec<_> = out
        .iter()
        .filter(|t| t.target.addr.to_string() == GW2)
        .collect();
    assert_eq!(relayed.len(), 1, "{:?}", summary(&out));
    assert_eq!(
        msg(relayed[0]).uri_str(),
        "sip:+493012345678@127.0.0.6:5060"
    );
    // the gateway that failed is down now: the next call goes to the second one first
    let out = s.send(UAC, &invite("c2", "+493099999999"));
    assert_eq!(out[1].target.addr.to_string(), GW2);
}

#[test]
fn short_and_unrouted_numbers_are_refused_and_others_reach_the_media_servers_translated() {
    let mut s = proxy();
    let out = s.send(UAC, &invite("c1", "+4930"));
    assert_eq!(msg(out.last().unwrap()).status(), Some(484));
    let out = s.send(UAC, &invite("c2", "+33123456789"));
    assert_eq!(msg(out.last().unwrap()).status(), Some(404));
    let out = s.send(UAC, &invite("c3", "12"));
    assert_eq!(msg(out.last().unwrap()).status(), Some(484));
    // no route of the users' matches a plain extension... the second one does: on to
    // the media servers, Request-URI untouched
    let out = s.send(UAC, &invite("c4", "1000"));
    assert_eq!(out[1].target.addr.to_string(), "127.0.0.1:5080");
    assert_eq!(msg(&out[1]).uri_str(), "sip:1000@127.0.0.1:5060;user=phone");
}

#[test]
fn the_request_uri_rewrite_keeps_everything_but_the_user_and_host() {
    let u = Uri::parse("sip:0301234@example.test:5070;user=phone?X=1").unwrap();
    assert_eq!(
        rewrite_for_test(&u, Some("+49301234"), None),
        "sip:+49301234@example.test:5070;user=phone?X=1"
    );
    assert_eq!(
        rewrite_for_test(&u, Some("1000"), Some("pbx.example")),
        "sip:1000@pbx.example:5070;user=phone?X=1"
    );
    let nouser = Uri::parse("sip:example.test").unwrap();
    assert_eq!(
        rewrite_for_test(&nouser, Some("1000"), None),
        "sip:1000@example.test"
    );
    for bad in ["a b", "a@b", "<x>", ""] {
        assert!(
            request::rewrite_uri(&u, Some(bad), None).is_err(),
            "{bad:?}"
        );
    }
}

fn rewrite_for_test(u: &Uri, user: Option<&str>, host: Option<&str>) -> String {
    request::rewrite_uri(u, user, host).unwrap_or_else(|r| panic!("{}", r.reason))
}
