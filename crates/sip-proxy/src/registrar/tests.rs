//! Registrar scenarios through the proxy core, on a virtual clock.

use std::sync::Arc;

use bytes::Bytes;
use sip_wire::auth::{ha1, hex, Algorithm};

use super::*;
use crate::config::{Listener, ProxyConfig};
use crate::router::RoundRobin;
use crate::types::Transmit;
use crate::Proxy;

use crate::scenario::{addr, parse, send};

const EPOCH_UNIX: u64 = 1_800_000_000;

fn setup(f: impl FnOnce(&mut RegistrarConfig)) -> (Proxy, Arc<Registrar>, Instant) {
    let now = Instant::now();
    let mut rc = RegistrarConfig {
        domains: vec!["example.com".into()],
        secret: b"test-secret".to_vec(),
        trusted: vec![parse_cidr("127.0.0.9").unwrap()],
        fail: FailPolicy {
            slow_after: 0,
            ban_after: 0,
            ..FailPolicy::default()
        },
        ..RegistrarConfig::default()
    };
    f(&mut rc);
    let reg = Arc::new(Registrar::new(rc, (now, EPOCH_UNIX)));
    reg.set_credential(
        "alice",
        "example.com",
        Credential::from_password("alice", "example.com", "secret1"),
    );
    reg.set_credential(
        "bob",
        "example.com",
        Credential::from_password("bob", "example.com", "secret2"),
    );
    let cfg = ProxyConfig {
        listeners: vec![Listener {
            transport: Transport::Udp,
            advertise: addr("127.0.0.1:5060"),
        }],
        ..ProxyConfig::default()
    };
    let media = vec![Destination {
        uri: "sip:127.0.0.1:5080".into(),
        transport: Transport::Udp,
        addr: addr("127.0.0.1:5080"),
        flow: None,
        node: None,
        route: None,
        name: None,
    }];
    let p = Proxy::new(cfg, Arc::new(RoundRobin::new(media))).with_registrar(reg.clone());
    (p, reg, now)
}

fn register(user: &str, branch: &str, cseq: u32, contact: &str, extra: &str) -> String {
    format!(
        "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK{branch};rport\r\nFrom: <sip:{user}@example.com>;tag=r1\r\nTo: <sip:{user}@example.com>\r\nCall-ID: reg-{user}\r\nCSeq: {cseq} REGISTER\r\nContact: {contact}\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

fn param<'a>(h: &'a str, name: &str) -> &'a str {
    let i = h.find(&format!("{name}=")).unwrap() + name.len() + 1;
    let rest = &h[i..];
    if let Some(r) = rest.strip_prefix('"') {
        &r[..r.find('"').unwrap()]
    } else {
        rest.split([',', ' ']).next().unwrap()
    }
}

/// The (first) WWW-Authenticate value of the reply in `out`.
fn challenge(out: &[Transmit]) -> String {
    parse(&out[0])
        .get(HeaderName::WwwAuthenticate)
        .unwrap()
        .to_string()
}

/// Credentials answering `challenge` (a WWW-/Proxy-Authenticate value).
fn answer(challenge: &str, user: &str, pass: &str, method: &str, uri: &str, nc: u32) -> String {
    let realm = param(challenge, "realm");
    let nonce = param(challenge, "nonce");
    let alg = Algorithm::parse(param(challenge, "algorithm")).unwrap();
    let h1 = ha1(alg, user, realm, pass);
    let h2 = alg.hash_colon(&[method.as_bytes(), uri.as_bytes()]);
    let nc = format!("{nc:08x}");
    let cnonce = hex(&nc.as_bytes()[..4]);
    let resp = alg.hash_colon(&[
        h1.as_bytes(),
        nonce.as_bytes(),
        nc.as_bytes(),
        cnonce.as_bytes(),
        b"auth",
        h2.as_bytes(),
    ]);
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm={}, qop=auth, nc={nc}, cnonce=\"{cnonce}\"",
        alg.name()
    )
}

/// REGISTER, take the challenge (the `pick`-th offer), answer it; returns the final reply.
fn register_auth(
    p: &Proxy,
    now: Instant,
    user: &str,
    pass: &str,
    contact: &str,
    pick: usize,
    cseq: u32,
) -> Message {
    let out = send(
        p,
        now,
        "127.0.0.1:40000",
        &register(user, &format!("a{cseq}"), cseq, contact, ""),
    );
    let r = parse(&out[0]);
    assert_eq!(
        r.status(),
        Some(401),
        "{}",
        String::from_utf8_lossy(&out[0].data)
    );
    let ch: Vec<&str> = r.all(HeaderName::WwwAuthenticate).collect();
    let auth = answer(ch[pick], user, pass, "REGISTER", "sip:example.com", 1);
    let out = send(
        p,
        now,
        "127.0.0.1:40000",
        &register(
            user,
            &format!("b{cseq}"),
            cseq + 1,
            contact,
            &format!("Authorization: {auth}\r\n"),
        ),
    );
    parse(&out[0])
}

#[test]
fn register_with_sha256_and_md5_digest() {
    let (p, reg, now) = setup(|c| c.algorithms = vec![Algorithm::Md5, Algorithm::Sha256]);
    let out = send(
        &p,
        now,
        "127.0.0.1:40000",
        &register("alice", "x1", 1, "<sip:alice@10.0.0.5:5060>", ""),
    );
    let r = parse(&out[0]);
    assert_eq!(r.status(), Some(401));
    let ch: Vec<&str> = r.all(HeaderName::WwwAuthenticate).collect();
    assert_eq!(ch.len(), 2);
    assert!(
        ch[0].contains("algorithm=MD5") && ch[1].contains("algorithm=SHA-256"),
        "{ch:?}"
    );
    assert!(ch[0].contains("qop=\"auth\"") && ch[0].contains("realm=\"example.com\""));
    assert!(
        reg.show("alice@example.com", now).is_empty(),
        "nothing stored before auth"
    );

    let ok = register_auth(
        &p,
        now,
        "alice",
        "secret1",
        "<sip:alice@10.0.0.5:5060>",
        0,
        10,
    );
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        ok.get(HeaderName::Contact),
        Some("<sip:alice@10.0.0.5:5060>;expires=3600")
    );
    let ok = register_auth(&p, now, "bob", "secret2", "<sip:bob@10.0.0.6:5060>", 1, 20);
    assert_eq!(ok.status(), Some(200));
    let b = reg.show("bob@example.com", now);
    assert_eq!(b.len(), 1);
    assert!(b[0].nat);
    assert_eq!(b[0].source.addr, addr("127.0.0.1:40000"));
}

/// By default one challenge, MD5 (Debian 12's baresip 1.0 fails to register when offered
/// MD5 and SHA-256 together); a domain that opts in gets SHA-256 first, then MD5.
#[test]
fn one_md5_challenge_by_default_and_sha256_per_domain() {
    let offers = |sha: Vec<String>, domain: &str| {
        let (p, reg, now) = setup(|c| {
            c.domains.push("secure.example".into());
            c.sha256_domains = sha;
        });
        reg.set_credential(
            "alice",
            domain,
            Credential::from_password("alice", domain, "pw"),
        );
        let out = send(
            &p,
            now,
            "127.0.0.1:40000",
            &register("alice", "o1", 1, "<sip:alice@10.0.0.5>", "")
                .replace("@example.com", &format!("@{domain}")),
        );
        let r = parse(&out[0]);
        r.all(HeaderName::WwwAuthenticate)
            .map(|c| param(c, "algorithm").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(offers(vec![], "example.com"), ["MD5"]);
    let sha = vec!["secure.example".to_string()];
    assert_eq!(offers(sha.clone(), "secure.example"), ["SHA-256", "MD5"]);
    assert_eq!(
        offers(sha, "example.com"),
        ["MD5"],
        "only the domain that opted in"
    );
}

#[test]
fn wrong_password_and_unknown_user_look_alike() {
    let (p, reg, now) = setup(|_| {});
    let wrong = register_auth(&p, now, "alice", "guess", "<sip:alice@10.0.0.5>", 0, 1);
    let unknown = register_auth(&p, now, "mallory", "guess", "<sip:m@10.0.0.5>", 0, 3);
    assert_eq!(wrong.status(), Some(401));
    assert_eq!(
        (wrong.status(), wrong.reason()),
        (unknown.status(), unknown.reason())
    );
    assert_eq!(reg.counts(), (0, 0));
}

#[test]
fn authenticated_user_must_match_to() {
    let (p, reg, now) = setup(|_| {});
    let out = send(
        &p,
        now,
        "127.0.0.1:40000",
        &register("bob", "m1", 1, "<sip:bob@10.0.0.5>", ""),
    );
    let ch = challenge(&out);
    let auth = answer(&ch, "alice", "secret1", "REGISTER", "sip:example.com", 1);
    let out = send(
        &p,
        now,
        "127.0.0.1:40000",
        &register(
            "bob",
            "m2",
            2,
            "<sip:bob@10.0.0.5>",
            &format!("Authorization: {auth}\r\n"),
        ),
    );
    let r = parse(&out[0]);
    assert_eq!(r.status(), Some(403));
    assert!(r.reason().contains("does not match To"), "{}", r.reason());
    assert_eq!(reg.counts(), (0, 0));
}

#[test]
fn replayed_nc_is_refused_but_a_retransmission_gets_the_same_reply() {
    let (p, reg, now) = setup(|_| {});
    let out = send(
        &p,
        now,
        "127.0.0.1:40000",
        &register("alice", "n1", 1, "<sip:alice@10.0.0.5>", ""),
    );
    let ch = challenge(&out);
    let auth = answer(&ch, "alice", "secret1", "REGISTER", "sip:example.com", 1);
    let msg = register(
        "alice",
        "n2",
        2,
        "<sip:alice@10.0.0.5>",
        &format!("Authorization: {auth}\r\n"),
    );
    let first = send(&p, now, "127.0.0.1:40000", &msg);
    assert_eq!(parse(&first[0]).status(), Some(200));
    let again = send(&p, now, "127.0.0.1:40000", &msg);
    assert_eq!(
        again[0].data, first[0].data,
        "retransmission answered from the transaction"
    );
    // the same credentials in a new transaction: a replay
    let replay = register(
        "alice",
        "n3",
        3,
        "<sip:alice@10.0.0.5>",
        &format!("Authorization: {auth}\r\n"),
    );
    let r = parse(&send(&p, now, "127.0.0.1:40000", &replay)[0]);
    assert_eq!(r.status(), Some(401));
    assert!(r.reason().contains("already used"), "{}", r.reason());
    assert!(
        r.get(HeaderName::WwwAuthenticate)
            .unwrap()
            .contains("stale=true"),
        "a right answer to a used nonce: the client may answer the new one at once"
    );
    assert_eq!(
        reg.show("alice@example.com", now)[0].cseq,
        2,
        "the replay changed nothing"
    );
    // the next nc on the same nonce is fine
    let auth2 = answer(&ch, "alice", "secret1", "REGISTER", "sip:example.com", 2);
    let r = parse(
        &send(
            &p,
            now,
            "127.0.0.1:40000",
            &register(
                "alice",
                "n4",
                4,
                "<sip:alice@10.0.0.5>",
                &format!("Authorization: {auth2}\r\n"),
            ),
        )[0],
    );
    assert_eq!(r.status(), Some(200));
}

#[test]
fn foreign_and_stale_nonces() {
    let (p, _reg, now) = setup(|_| {});
    let other = Authenticator::new(
        b"another-secret".to_vec(),
        vec![Algorithm::Md5],
        30,
        FailPolicy::default(),
    );
    let ch = other
        .challenge(
            false,
            EPOCH_UNIX,
            "example.com",
            false,
            "127.0.0.1".parse().unwrap(),
        )
        .remove(0);
    let ch = ch.trim_start_matches("WWW-Authenticate: ");
    let auth = answer(ch, "alice", "secret1", "REGISTER", "sip:example.com", 1);
    let r = parse(
        &send(
            &p,
            now,
            "127.0.0.1:40000",
            &register(
                "alice",
                "f1",
                1,
                "<sip:alice@10.0.0.5>",
                &format!("Authorization: {auth}\r\n"),
            ),
        )[0],
    );
    assert_eq!(r.status(), Some(401));
    assert!(
        r.reason().contains("nonce not issued here"),
        "{}",
        r.reason()
    );

    let out = send(
        &p,
        now,
        "127.0.0.1:40000",
        &register("alice", "s1", 2, "<sip:alice@10.0.0.5>", ""),
    );
    let ch = challenge(&out);
    let auth = answer(&ch, "alice", "secret1", "REGISTER", "sip:example.com", 1);
    let later = now + Duration::from_secs(31);
    let r = parse(
        &send(
            &p,
            later,
            "127.0.0.1:40000",
            &register(
                "alice",
                "s2",
                3,
                "<sip:alice@10.0.0.5>",
                &format!("Authorization: {auth}\r\n"),
            ),
        )[0],
    );
    assert_eq!(r.status(), Some(401));
    assert!(r
        .get(HeaderName::WwwAuthenticate)
        .unwrap()
        .contains("stale=true"));
}

#[test]
fn malformed_authorization_is_a_precise_400() {
    let (p, reg, now) = setup(|_| {});
    for (bad, why) in [
        ("Digest username=\"alice\", realm=\"example.com\"", "missing nonce"),
        ("Digest username=alice, realm=\"example.com\", nonce=\"n\", uri=\"sip:x\", response=\"0\"", "malformed auth-param"),
        ("Basic YWxpY2U6c2VjcmV0MQ==", "not Digest"),
    ] {
        let r = parse(&send(&p, now, "127.0.0.1:40000", &register("alice", &format!("m{}", why.len()), 1, "<sip:alice@10.0.0.5>", &format!("Authorization: {bad}\r\n")))[0]);
        assert_eq!(r.status(), Some(400), "{bad}");
        assert!(r.reason().contains(why), "{bad}: {}", r.reason());
    }
    assert_eq!(reg.counts(), (0, 0));
}

/// A registrar without authentication, for the location tests.
fn open() -> (Proxy, Arc<Registrar>, Instant) {
    setup(|c| c.auth = false)
}

fn reg_status(
    p: &Proxy,
    now: Instant,
    branch: &str,
    cseq: u32,
    contact: &str,
    extra: &str,
) -> Message {
    parse(
        &send(
            p,
            now,
            "127.0.0.1:40000",
            &register("alice", branch, cseq, contact, extra),
        )[0],
    )
}

#[test]
fn bad_expires_and_contacts_are_refused_and_store_nothing() {
    let (p, reg, now) = open();
    for (i, (contact, extra, code, why)) in [
        (
            "<sip:alice@10.0.0.5>",
            "Expires: -1\r\n",
            400,
            "not a number",
        ),
        (
            "<sip:alice@10.0.0.5>",
            "Expires: 99999999999\r\n",
            400,
            "above 2^32-1",
        ),
        (
            "<sip:alice@10.0.0.5>;expires=99999999999",
            "",
            400,
            "above 2^32-1",
        ),
        ("<>", "", 400, "Contact"),
        (";expires=30", "", 400, "Contact"),
        ("", "", 400, "Contact without URI"),
        ("<mailto:a@b>", "", 400, "not a SIP URI"),
        ("<sip:alice@10.0.0.5>;q=2", "", 400, "q-value"),
        ("*", "", 400, "Expires: 0"),
        (
            "*, <sip:alice@10.0.0.5>",
            "Expires: 0\r\n",
            400,
            "other contacts",
        ),
        ("<sip:alice@10.0.0.5>", "Expires: 10\r\n", 423, "Too Brief"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = reg_status(&p, now, &format!("b{i}"), 1, contact, extra);
        assert_eq!(r.status(), Some(code), "{contact} {extra}: {}", r.reason());
        assert!(
            r.reason().contains(why),
            "{contact} {extra}: {}",
            r.reason()
        );
        if code == 423 {
            assert_eq!(r.get_named("Min-Expires"), Some("60"));
        }
    }
    assert_eq!(reg.counts(), (0, 0));
}

#[test]
fn refresh_query_unregister_and_star() {
    let (p, reg, now) = open();
    let r = reg_status(&p, now, "r1", 1, "<sip:alice@10.0.0.5>;expires=99999", "");
    assert_eq!(
        r.get(HeaderName::Contact),
        Some("<sip:alice@10.0.0.5>;expires=7200"),
        "clamped to max_expires"
    );
    let r = reg_status(
        &p,
        now,
        "r2",
        2,
        "<sip:alice@10.0.0.7>;q=0.5",
        "Expires: 120\r\n",
    );
    let contacts: Vec<&str> = r.all(HeaderName::Contact).collect();
    assert_eq!(
        contacts,
        [
            "<sip:alice@10.0.0.5>;expires=7200",
            "<sip:alice@10.0.0.7>;expires=120;q=0.5"
        ]
    );
    // out-of-order CSeq on the same Call-ID
    let r = reg_status(&p, now, "r3", 2, "<sip:alice@10.0.0.7>", "");
    assert_eq!(r.status(), Some(400));
    // a query lists without changing
    let q = "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKq\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: q\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n".to_string();
    assert_eq!(
        parse(&send(&p, now, "127.0.0.1:40000", &q)[0])
            .all(HeaderName::Contact)
            .count(),
        2
    );
    let r = reg_status(&p, now, "r4", 3, "<sip:alice@10.0.0.7>;expires=0", "");
    assert_eq!(r.all(HeaderName::Contact).count(), 1);
    let r = reg_status(&p, now, "r5", 4, "*", "Expires: 0\r\n");
    assert_eq!(r.status(), Some(200));
    assert_eq!(reg.counts(), (0, 0));
    let ev = reg.take_events();
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, LocEvent::Removed { .. }))
            .count(),
        2
    );
}

#[test]
fn max_contacts_replaces_the_oldest_or_refuses() {
    let (p, reg, now) = setup(|c| {
        c.auth = false;
        c.max_contacts = 2;
    });
    for (i, h) in ["10.0.0.1", "10.0.0.2", "10.0.0.3"].iter().enumerate() {
        let t = now + Duration::from_secs(i as u64 * 2);
        let r = reg_status(
            &p,
            t,
            &format!("m{i}"),
            i as u32 + 1,
            &format!("<sip:alice@{h}>"),
            "",
        );
        assert_eq!(r.status(), Some(200));
    }
    let uris: Vec<String> = reg
        .show("alice@example.com", now)
        .iter()
        .map(|b| b.uri.to_string())
        .collect();
    assert_eq!(uris.len(), 2);
    assert!(
        !uris.contains(&"sip:alice@10.0.0.1".to_string()),
        "{uris:?}"
    );

    let (p, reg, now) = setup(|c| {
        c.auth = false;
        c.max_contacts = 1;
        c.reject_over_max = true;
    });
    assert_eq!(
        reg_status(&p, now, "x1", 1, "<sip:alice@10.0.0.1>", "").status(),
        Some(200)
    );
    let r = reg_status(&p, now, "x2", 2, "<sip:alice@10.0.0.2>", "");
    assert_eq!(r.status(), Some(403));
    assert_eq!(reg.show("alice@example.com", now).len(), 1);
    // refreshing the existing one is still fine
    assert_eq!(
        reg_status(&p, now, "x3", 3, "<sip:alice@10.0.0.1>", "").status(),
        Some(200)
    );
}

#[test]
fn instance_and_reg_id_replace_the_old_binding() {
    let (p, reg, now) = open();
    reg_status(
        &p,
        now,
        "i1",
        1,
        "<sip:alice@10.0.0.1>;+sip.instance=\"<urn:uuid:1>\";reg-id=1",
        "",
    );
    reg_status(
        &p,
        now,
        "i2",
        2,
        "<sip:alice@10.0.0.9:5999>;+sip.instance=\"<urn:uuid:1>\";reg-id=1",
        "",
    );
    let b = reg.show("alice@example.com", now);
    assert_eq!(b.len(), 1);
    assert_eq!(&*b[0].uri, "sip:alice@10.0.0.9:5999");
    assert_eq!(b[0].instance.as_deref(), Some("<urn:uuid:1>"));
}

fn invite_to(user: &str, call: &str) -> String {
    format!("INVITE sip:{user}@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.9:5080;branch=z9hG4bK-{call}\r\nFrom: <sip:fs@127.0.0.9>;tag=ft\r\nTo: <sip:{user}@example.com>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
}

fn response_to(req: &Message, code: u16) -> String {
    let mut s = format!("SIP/2.0 {code} X\r\n");
    for v in req.all(HeaderName::Via) {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    s.push_str(&format!(
        "From: {}\r\nTo: {};tag=tt\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
        req.get(HeaderName::From).unwrap(),
        req.get(HeaderName::To).unwrap(),
        req.call_id(),
        req.get(HeaderName::CSeq).unwrap()
    ));
    s
}

#[test]
fn calls_from_a_media_server_reach_contacts_in_q_order_behind_nat() {
    let (p, _reg, now) = open();
    // from 127.0.0.1:40000, contacts naming private addresses: NAT
    reg_status(&p, now, "q1", 1, "<sip:alice@10.0.0.5:5060>;q=0.3", "");
    let r = "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.6;branch=z9hG4bKq2\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: other\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@10.0.0.6:5060>;q=0.9\r\nContent-Length: 0\r\n\r\n".to_string();
    assert_eq!(
        parse(&send(&p, now, "127.0.0.1:40001", &r)[0]).status(),
        Some(200)
    );

    let out = send(&p, now, "127.0.0.9:5080", &invite_to("alice", "c1"));
    assert_eq!(parse(&out[0]).status(), Some(100));
    let first = parse(&out[1]);
    assert_eq!(
        first.uri_str(),
        "sip:alice@10.0.0.6:5060",
        "q=0.9 first, R-URI is the contact"
    );
    assert_eq!(
        out[1].target.addr,
        addr("127.0.0.1:40001"),
        "sent where it registered from"
    );
    // busy: serial forking goes on to the next contact
    let out = send(&p, now, "127.0.0.1:40001", &response_to(&first, 486));
    let fwd: Vec<Message> = out
        .iter()
        .map(parse)
        .filter(|m| m.is_request() && m.method() == Some(sip_wire::Method::Invite))
        .collect();
    assert_eq!(fwd.len(), 1);
    assert_eq!(fwd[0].uri_str(), "sip:alice@10.0.0.5:5060");
}

#[test]
fn unknown_user_404_known_without_contact_480() {
    let (p, _reg, now) = open();
    let r = parse(&send(&p, now, "127.0.0.9:5080", &invite_to("nobody", "c1"))[0]);
    assert_eq!(r.status(), Some(404));
    let r = parse(&send(&p, now, "127.0.0.9:5080", &invite_to("bob", "c2"))[0]);
    assert_eq!(r.status(), Some(480));
}

#[test]
fn calls_from_users_are_challenged_and_credentials_consumed() {
    let (p, _reg, now) = setup(|_| {});
    let inv = "INVITE sip:5000@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKi1\r\nFrom: <sip:alice@example.com>;tag=a\r\nTo: <sip:5000@example.com>\r\nCall-ID: i1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    let r = parse(&send(&p, now, "127.0.0.1:40000", inv)[0]);
    assert_eq!(r.status(), Some(407));
    let ch = r.get(HeaderName::ProxyAuthenticate).unwrap().to_string();
    let auth = answer(&ch, "alice", "secret1", "INVITE", "sip:5000@example.com", 1);
    let inv2 = inv
        .replace("z9hG4bKi1", "z9hG4bKi2")
        .replace("CSeq: 1", "CSeq: 2")
        .replace(
            "Content-Length",
            &format!("Proxy-Authorization: {auth}\r\nContent-Length"),
        );
    let out = send(&p, now, "127.0.0.1:40000", &inv2);
    let fwd = parse(out.last().unwrap());
    assert_eq!(
        out.last().unwrap().target.addr,
        addr("127.0.0.1:5080"),
        "to the media server"
    );
    assert!(
        fwd.get(HeaderName::ProxyAuthorization).is_none(),
        "credentials consumed"
    );
    // someone else's From with alice's password
    let auth = answer(&ch, "alice", "secret1", "INVITE", "sip:5000@example.com", 2);
    let inv3 = inv
        .replace("z9hG4bKi1", "z9hG4bKi2")
        .replace("CSeq: 1", "CSeq: 2")
        .replace(
            "Content-Length",
            &format!("Proxy-Authorization: {auth}\r\nContent-Length"),
        )
        .replace("sip:alice@example.com>;tag=a", "sip:bob@example.com>;tag=a")
        .replace("z9hG4bKi2", "z9hG4bKi3");
    let r = parse(&send(&p, now, "127.0.0.1:40000", &inv3)[0]);
    assert_eq!(r.status(), Some(403), "{}", r.reason());
    // a caller from another domain may only call into ours
    let relay = inv
        .replace("sip:5000@example.com SIP", "sip:5000@elsewhere.net SIP")
        .replace("alice@example.com", "eve@evil.org")
        .replace("z9hG4bKi1", "z9hG4bKi9");
    assert_eq!(
        parse(&send(&p, now, "127.0.0.1:40000", &relay)[0]).status(),
        Some(403)
    );
}

#[test]
fn keepalives_remove_a_silent_contact_and_keep_an_answering_one() {
    let (p, reg, now) = setup(|c| {
        c.auth = false;
        c.ping_interval = Duration::from_secs(1);
        c.ping_max_missed = 2;
    });
    reg_status(&p, now, "k1", 1, "<sip:alice@10.0.0.5>", "");
    let r = "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.6;branch=z9hG4bKk2\r\nFrom: <sip:bob@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: k2\r\nCSeq: 1 REGISTER\r\nContact: <sip:bob@10.0.0.6>\r\nContent-Length: 0\r\n\r\n".to_string();
    send(&p, now, "127.0.0.1:40002", &r);
    for s in 1..=4u64 {
        let mut out = vec![];
        p.on_timers(now + Duration::from_millis(s * 1000 + 1), &mut out);
        for t in &out {
            let m = parse(t);
            assert_eq!(m.method(), Some(sip_wire::Method::Options));
            if t.target.addr == addr("127.0.0.1:40002") {
                // bob answers
                let mut o = vec![];
                p.on_message(
                    now,
                    Source {
                        transport: Transport::Udp,
                        addr: t.target.addr,
                        flow: None,
                    },
                    Bytes::from(response_to(&m, 200)),
                    &mut o,
                );
            }
        }
    }
    assert!(
        reg.show("alice@example.com", now).is_empty(),
        "alice never answered"
    );
    let bob = reg.show("bob@example.com", now);
    assert_eq!(bob.len(), 1);
    assert_eq!(
        bob[0].missed_pings(),
        0,
        "answering every ping, none missed"
    );
}

#[test]
fn bindings_expire_and_persist_through_events() {
    let (p, reg, now) = open();
    reg_status(&p, now, "e1", 1, "<sip:alice@10.0.0.5>;expires=60", "");
    let ev = reg.take_events();
    let saved: Vec<(String, Binding)> = ev
        .into_iter()
        .filter_map(|e| match e {
            LocEvent::Saved { aor, binding } => Some((aor, *binding)),
            _ => None,
        })
        .collect();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].1.expires_unix, EPOCH_UNIX + 60);
    // a new process 10 s later restores it with 50 s left
    let later = now + Duration::from_secs(10);
    let fresh = Registrar::new(RegistrarConfig::default(), (later, EPOCH_UNIX + 10));
    assert_eq!(fresh.restore(later, saved), 1);
    let b = fresh.show("alice@example.com", later);
    assert_eq!(b[0].expires_at.duration_since(later).as_secs(), 50);
    // the sweep drops it once expired
    let mut out = vec![];
    p.on_timers(now + Duration::from_secs(61), &mut out);
    assert!(reg
        .show("alice@example.com", now + Duration::from_secs(61))
        .is_empty());
    assert!(matches!(reg.take_events()[..], [LocEvent::Removed { .. }]));
}

/// Two processes on one database number their bindings in their own ranges: a process
/// restoring another's rows (or its own from before a restart) never makes an id they use.
#[test]
fn binding_ids_come_from_the_process_range() {
    let (p, reg, now) = open();
    let base = 7u64 << crate::ID_COUNTER_BITS;
    reg.set_id_base(base);
    reg_status(&p, now, "i1", 1, "<sip:alice@10.0.0.5>;expires=60", "");
    let saved: Vec<(String, Binding)> = reg
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            LocEvent::Saved { aor, binding } => Some((aor, *binding)),
            _ => None,
        })
        .collect();
    assert_eq!(saved[0].1.id, base + 1);
    // another process (range 3) restores that row, then makes its own: id 3<<37 + 1
    let later = now + Duration::from_secs(1);
    let other = Registrar::new(RegistrarConfig::default(), (later, EPOCH_UNIX + 1));
    other.set_id_base(3 << crate::ID_COUNTER_BITS);
    assert_eq!(other.restore(later, saved.clone()), 1);
    assert_eq!(
        other.next_id.load(Ordering::Relaxed),
        (3 << crate::ID_COUNTER_BITS) + 1
    );
    // a restart in the same range carries on after the restored ids
    let again = Registrar::new(RegistrarConfig::default(), (later, EPOCH_UNIX + 1));
    again.set_id_base(base);
    again.restore(later, saved);
    assert_eq!(again.next_id.load(Ordering::Relaxed), base + 2);
}

#[test]
fn repeated_failures_are_slowed_then_banned() {
    let (p, reg, now) = setup(|c| {
        c.fail = FailPolicy {
            window: Duration::from_secs(60),
            slow_after: 1,
            ban_after: 3,
            ban_time: Duration::from_secs(100),
            ban_after_users: 3,
            ban_after_total: 50,
        };
    });
    let r1 = register_auth(&p, now, "alice", "bad", "<sip:alice@10.0.0.5>", 0, 1);
    assert_eq!(r1.status(), Some(401));
    // the second failure is held back
    let out = send(
        &p,
        now,
        "127.0.0.1:40000",
        &register("alice", "h1", 5, "<sip:alice@10.0.0.5>", ""),
    );
    let ch = challenge(&out);
    let auth = answer(&ch, "alice", "bad", "REGISTER", "sip:example.com", 1);
    let out = send(
        &p,
        now,
        "127.0.0.1:40000",
        &register(
            "alice",
            "h2",
            6,
            "<sip:alice@10.0.0.5>",
            &format!("Authorization: {auth}\r\n"),
        ),
    );
    assert!(out.is_empty(), "reply delayed");
    let mut later = vec![];
    p.on_timers(now + Duration::from_millis(600), &mut later);
    assert_eq!(
        later
            .iter()
            .filter(|t| parse(t).status() == Some(401))
            .count(),
        1
    );
    // the third: banned; then silence, even with the right password
    let auth = answer(&ch, "alice", "bad", "REGISTER", "sip:example.com", 2);
    send(
        &p,
        now,
        "127.0.0.1:40000",
        &register(
            "alice",
            "h3",
            7,
            "<sip:alice@10.0.0.5>",
            &format!("Authorization: {auth}\r\n"),
        ),
    );
    let bans = reg.user_bans(now);
    assert_eq!(bans.len(), 1);
    assert_eq!(
        (bans[0].0.to_string(), bans[0].1.as_str()),
        ("127.0.0.1".into(), "alice")
    );
    assert!(send(
        &p,
        now,
        "127.0.0.1:40000",
        &register("alice", "h4", 8, "<sip:alice@10.0.0.5>", "")
    )
    .is_empty());
    // bob, behind the same address, still registers: only alice is banned there
    let r = register_auth(&p, now, "bob", "secret2", "<sip:bob@10.0.0.6>", 0, 10);
    assert_eq!(r.status(), Some(200), "{}", r.reason());
    // the trusted network is never banned
    assert!(!send(&p, now, "127.0.0.9:5080", &invite_to("alice", "t1")).is_empty());
}

#[test]
fn helpers_parse_values() {
    assert_eq!(parse_q("0.5"), Some(500));
    assert_eq!(parse_q("1"), Some(1000));
    assert_eq!(parse_q("1.000"), Some(1000));
    assert_eq!(parse_q("0.125"), Some(125));
    assert_eq!(parse_q("1.5"), None);
    assert_eq!(parse_q("0.1234"), None);
    assert_eq!(parse_q("abc"), None);
    assert_eq!(format_q(500), "0.5");
    assert_eq!(format_q(125), "0.125");
    assert!(is_private("10.1.2.3".parse().unwrap()));
    assert!(is_private("100.64.0.1".parse().unwrap()));
    assert!(!is_private("100.128.0.1".parse().unwrap()));
    assert!(!is_private("8.8.8.8".parse().unwrap()));
    assert!(in_cidr(
        "192.168.1.7".parse().unwrap(),
        parse_cidr("192.168.0.0/16").unwrap()
    ));
    assert!(!in_cidr(
        "192.169.1.7".parse().unwrap(),
        parse_cidr("192.168.0.0/16").unwrap()
    ));
    assert_eq!(parse_cidr("10.0.0.0/33"), None);
    assert!(contact_nat("sip:a@10.0.0.5:5060", addr("127.0.0.1:5060")));
    assert!(contact_nat(
        "sip:a@abc.invalid;transport=ws",
        addr("127.0.0.1:5060")
    ));
    assert!(!contact_nat("sip:a@127.0.0.1:5070", addr("127.0.0.1:5070")));
}

#[test]
fn forward_mode_relays_register_with_path_and_public_contact_then_routes_the_call_back() {
    let (p, reg, now) = setup(|c| c.mode = RegistrarMode::Forward);
    let r = register(
        "alice",
        "fw1",
        1,
        "<sip:alice@abc123.invalid;transport=ws;ob>;+sip.instance=\"<urn:uuid:1>\"",
        "",
    );
    let out = send(&p, now, "127.0.0.1:40000", &r);
    assert_eq!(out.len(), 1, "relayed, not answered");
    assert_eq!(out[0].target.addr, addr("127.0.0.1:5080"));
    let fwd = parse(&out[0]);
    assert_eq!(fwd.get(HeaderName::Path), Some("<sip:127.0.0.1:5060;lr>"));
    assert_eq!(fwd.get(HeaderName::Supported), Some("path"));
    assert_eq!(
        fwd.get(HeaderName::Contact),
        Some("<sip:alice@127.0.0.1:40000;ob>;+sip.instance=\"<urn:uuid:1>\""),
        "no .invalid host, no transport=ws for the media server"
    );
    assert!(fwd.get(HeaderName::Authorization).is_none());
    assert_eq!(reg.counts(), (0, 0), "nothing kept here");
    // the media server's 200 goes back to the client
    let out = send(&p, now, "127.0.0.1:5080", &response_to(&fwd, 200));
    assert_eq!(out[0].target.addr, addr("127.0.0.1:40000"));
    // the media server (trusted) calls the stored contact through the Path
    let inv = "INVITE sip:alice@127.0.0.1:40000;ob SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.9:5080;branch=z9hG4bKfwc\r\nRoute: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:fs@127.0.0.9>;tag=f\r\nTo: <sip:alice@example.com>\r\nCall-ID: fwc\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    let out = send(&p, now, "127.0.0.9:5080", inv);
    let call = out.iter().find(|t| parse(t).is_request()).expect("relayed");
    assert_eq!(call.target.addr, addr("127.0.0.1:40000"));
    assert!(
        parse(call).get(HeaderName::Route).is_none(),
        "our Route popped"
    );
    // the same from an untrusted source is not relayed to an arbitrary Request-URI
    let out = send(
        &p,
        now,
        "127.0.0.1:40001",
        &inv.replace("z9hG4bKfwc", "z9hG4bKfwd"),
    );
    assert!(out.iter().all(|t| t.target.addr != addr("127.0.0.1:40000")));
}

#[test]
fn forward_mode_keeps_a_contact_that_names_its_source() {
    let src = Source {
        transport: Transport::Tcp,
        addr: addr("127.0.0.1:40000"),
        flow: Some(7),
    };
    assert_eq!(
        crate::core::public_contact_for_test("<sip:a@127.0.0.1:40000;transport=tcp>", &src),
        "<sip:a@127.0.0.1:40000;transport=tcp>"
    );
    assert_eq!(
        crate::core::public_contact_for_test("\"A\" <sip:a@10.0.0.5>;expires=60", &src),
        "\"A\" <sip:a@127.0.0.1:40000;transport=tcp>;expires=60"
    );
}

#[test]
fn register_reply_tells_the_client_its_public_address() {
    let (p, _reg, now) = open();
    let r = reg_status(&p, now, "v1", 1, "<sip:alice@10.0.0.5>", "");
    let via = r.top_via().unwrap();
    assert_eq!(
        via.rport(),
        Some(Some(40000)),
        "{:?}",
        r.get(HeaderName::Via)
    );
    assert_eq!(via.received(), Some("127.0.0.1"));
}

#[test]
fn parallel_forking_rings_every_contact_and_cancels_the_rest_on_answer() {
    let (p, _reg, now) = setup(|c| {
        c.auth = false;
        c.fork = Fork::Parallel;
    });
    reg_status(&p, now, "p1", 1, "<sip:alice@10.0.0.5:5060>", "");
    let r = "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.6;branch=z9hG4bKp2\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: other\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@10.0.0.6:5060>\r\nContent-Length: 0\r\n\r\n";
    send(&p, now, "127.0.0.1:40001", r);
    let out = send(&p, now, "127.0.0.9:5080", &invite_to("alice", "pc"));
    let invites: Vec<&Transmit> = out.iter().filter(|t| parse(t).is_request()).collect();
    assert_eq!(invites.len(), 2, "both contacts at once");
    // one rings, the other answers: the ringing one is cancelled
    let a = parse(invites[0]);
    let b = parse(invites[1]);
    send(&p, now, "127.0.0.1:40000", &response_to(&a, 180));
    let out = send(&p, now, "127.0.0.1:40001", &response_to(&b, 200));
    assert!(
        out.iter()
            .any(|t| parse(t).method() == Some(sip_wire::Method::Cancel)),
        "the other branch is cancelled"
    );
    assert!(
        out.iter().any(|t| parse(t).status() == Some(200)),
        "the 200 goes upstream"
    );
}

#[test]
fn a_user_calling_a_registered_user_goes_direct_or_to_the_media_server() {
    for (direct, want) in [(true, "127.0.0.1:40000"), (false, "127.0.0.1:5080")] {
        let (p, _reg, now) = setup(|c| {
            c.auth = false;
            c.direct_user_calls = direct;
        });
        reg_status(&p, now, "d1", 1, "<sip:alice@10.0.0.5>", "");
        let inv = "INVITE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:41000;branch=z9hG4bKuu\r\nFrom: <sip:bob@example.com>;tag=b\r\nTo: <sip:alice@example.com>\r\nCall-ID: uu\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
        let out = send(&p, now, "127.0.0.1:41000", inv);
        let fwd = out.iter().find(|t| parse(t).is_request()).expect("relayed");
        assert_eq!(fwd.target.addr, addr(want), "direct={direct}");
    }
}

#[test]
fn a_contact_registered_through_an_edge_proxy_is_reached_through_its_path() {
    let (p, _reg, now) = open();
    let r = register(
        "alice",
        "pa1",
        1,
        "<sip:alice@10.0.0.5:5060>",
        "Path: <sip:edge@192.0.2.10:5070;lr>\r\nSupported: path\r\n",
    );
    let ok = parse(&send(&p, now, "192.0.2.10:5070", &r)[0]);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        ok.get(HeaderName::Path),
        Some("<sip:edge@192.0.2.10:5070;lr>"),
        "Path echoed (Supported: path)"
    );
    let out = send(&p, now, "127.0.0.9:5080", &invite_to("alice", "pth"));
    let fwd = out.iter().find(|t| parse(t).is_request()).expect("relayed");
    assert_eq!(
        fwd.target.addr,
        addr("192.0.2.10:5070"),
        "to the first Path hop"
    );
    let m = parse(fwd);
    assert_eq!(m.uri_str(), "sip:alice@10.0.0.5:5060");
    assert_eq!(
        m.get(HeaderName::Route),
        Some("<sip:edge@192.0.2.10:5070;lr>")
    );
}

#[test]
fn a_tcp_contact_gets_crlf_keepalives_and_goes_when_its_connection_is_gone() {
    let (p, reg, now) = setup(|c| {
        c.auth = false;
        c.ping_interval = Duration::from_secs(1);
    });
    let r = register("alice", "tc1", 1, "<sip:alice@10.0.0.5;transport=tcp>", "");
    let mut out = vec![];
    p.on_message(
        now,
        Source {
            transport: Transport::Tcp,
            addr: addr("127.0.0.1:45000"),
            flow: Some(9),
        },
        Bytes::from(r),
        &mut out,
    );
    assert_eq!(parse(&out[0]).status(), Some(200));
    assert_eq!(
        out[0].target.flow,
        Some(9),
        "the reply goes back over the connection"
    );
    let mut pings = vec![];
    p.on_timers(now + Duration::from_millis(1001), &mut pings);
    assert_eq!(pings.len(), 1);
    assert_eq!(&pings[0].data[..], b"\r\n\r\n");
    assert_eq!(pings[0].target.flow, Some(9));
    // the driver cannot send it: the connection is closed
    let mut o = vec![];
    p.on_transport_error(now, pings[0].origin.unwrap(), &mut o);
    assert!(reg.show("alice@example.com", now).is_empty());
}

/// Twelve forged packets carrying a victim's address once banned it for 300 s. A nonce is
/// now good only from the address it was issued to: answers with a nonce issued to another
/// address (or never issued) get a fresh challenge and count as nobody's guess.
#[test]
fn nonces_are_bound_to_the_client_address_and_forgeries_never_count() {
    let (p, reg, now) = setup(|c| {
        c.fail = FailPolicy {
            slow_after: 1,
            ban_after: 3,
            ..FailPolicy::default()
        };
    });
    // the attacker gets a nonce for its own address, then sends wrong answers as the victim
    let out = send(
        &p,
        now,
        "127.0.0.66:5060",
        &register("alice", "x1", 1, "<sip:alice@10.0.0.5>", ""),
    );
    let ch = challenge(&out);
    for i in 0..12 {
        let auth = answer(&ch, "alice", "guess", "REGISTER", "sip:example.com", i + 1);
        let out = send(
            &p,
            now,
            "127.0.0.1:40000",
            &register(
                "alice",
                &format!("f{i}"),
                10 + i,
                "<sip:alice@10.0.0.5>",
                &format!("Authorization: {auth}\r\n"),
            ),
        );
        let r = parse(&out[0]);
        assert_eq!(r.status(), Some(401));
        assert!(
            r.reason().contains("nonce not issued here"),
            "{}",
            r.reason()
        );
    }
    assert!(reg.user_bans(now).is_empty(), "the victim is not banned");
    assert_eq!(reg.auth_counts(), (0, 12));
    // and the victim still registers
    let r = register_auth(&p, now, "alice", "secret1", "<sip:alice@10.0.0.5>", 0, 40);
    assert_eq!(r.status(), Some(200));
}

/// A response without qop has no nonce count: before, it could be replayed until the nonce
/// expired; now such a nonce serves one request.
#[test]
fn answers_without_qop_cannot_be_replayed() {
    let (p, reg, now) = setup(|_| {});
    let out = send(
        &p,
        now,
        "127.0.0.1:40000",
        &register("alice", "q1", 1, "<sip:alice@10.0.0.5>", ""),
    );
    let ch = challenge(&out);
    let (realm, nonce) = (
        param(&ch, "realm").to_string(),
        param(&ch, "nonce").to_string(),
    );
    let h1 = ha1(Algorithm::Md5, "alice", &realm, "secret1");
    let h2 = Algorithm::Md5.hash_colon(&[b"REGISTER", b"sip:example.com"]);
    let resp = Algorithm::Md5.hash_colon(&[h1.as_bytes(), nonce.as_bytes(), h2.as_bytes()]);
    let auth = format!("Authorization: Digest username=\"alice\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"sip:example.com\", response=\"{resp}\", algorithm=MD5\r\n");
    let r = parse(
        &send(
            &p,
            now,
            "127.0.0.1:40000",
            &register("alice", "q2", 2, "<sip:alice@10.0.0.5>", &auth),
        )[0],
    );
    assert_eq!(r.status(), Some(200), "{}", r.reason());
    let r = parse(
        &send(
            &p,
            now,
            "127.0.0.1:40000",
            &register("alice", "q3", 3, "<sip:alice@10.0.0.7>", &auth),
        )[0],
    );
    assert_eq!(r.status(), Some(401), "the replay");
    assert_eq!(
        reg.show("alice@example.com", now).len(),
        1,
        "the replay added nothing"
    );
}

#[test]
fn a_connection_that_carries_a_registration_is_held_for_its_life() {
    let (p, reg, now) = open();
    let tcp = |flow| Source {
        transport: Transport::Tcp,
        addr: addr("127.0.0.1:40010"),
        flow: Some(flow),
    };
    let r = register(
        "alice",
        "h1",
        1,
        "<sip:alice@10.0.0.5;transport=tcp>;expires=300",
        "",
    );
    let mut out = vec![];
    p.on_message(now, tcp(7), Bytes::from(r), &mut out);
    assert_eq!(parse(&out[0]).status(), Some(200));
    assert!(p.holds_flow(7, now + Duration::from_secs(299)));
    assert!(
        !p.holds_flow(7, now + Duration::from_secs(301)),
        "past its registration"
    );
    assert!(!p.holds_flow(8, now), "another connection holds nothing");
    // closed: forgotten
    let r = register(
        "alice",
        "h2",
        2,
        "<sip:alice@10.0.0.5;transport=tcp>;expires=300",
        "",
    );
    p.on_message(now, tcp(9), Bytes::from(r), &mut out);
    assert!(p.holds_flow(9, now));
    p.flow_closed(9);
    assert!(!p.holds_flow(9, now));
    assert_eq!(reg.counts().1, 0, "its binding went with it");
    // over UDP nothing is held
    reg_status(&p, now, "h3", 3, "<sip:alice@10.0.0.6>", "");
    assert_eq!(reg.counts().1, 1);
}

#[test]
fn a_closed_connection_removes_its_contacts_at_once() {
    let (p, reg, now) = open();
    let ws = |flow, port| Source {
        transport: Transport::Ws,
        addr: addr(&format!("127.0.0.1:{port}")),
        flow: Some(flow),
    };
    let mut out = vec![];
    for (flow, port, ct, call_id) in [
        (
            21,
            40020,
            "<sip:k3j2@a8d7f.invalid;transport=ws>;expires=600",
            "w1",
        ),
        (
            22,
            40021,
            "<sip:p9q8@b7c6d.invalid;transport=ws>;expires=600",
            "w2",
        ),
    ] {
        let r = register("alice", call_id, 1, ct, "");
        out.clear();
        p.on_message(now, ws(flow, port), Bytes::from(r), &mut out);
        assert_eq!(parse(&out[0]).status(), Some(200));
    }
    assert_eq!(reg.show("alice@example.com", now).len(), 2);
    p.flow_closed(21);
    let left = reg.show("alice@example.com", now);
    assert_eq!(left.len(), 1, "only the other tab's contact stays");
    assert!(left[0].uri.contains("p9q8"));
    p.flow_closed(21); // twice: nothing more
    p.flow_closed(22);
    assert!(reg.show("alice@example.com", now).is_empty());
}

#[test]
fn forward_mode_holds_the_connection_for_what_the_media_server_granted() {
    let (p, _reg, now) = setup(|c| c.mode = RegistrarMode::Forward);
    let r = register("alice", "fh1", 1, "<sip:alice@10.0.0.5;transport=tcp>", "");
    let mut out = vec![];
    let src = Source {
        transport: Transport::Tcp,
        addr: addr("127.0.0.1:40011"),
        flow: Some(3),
    };
    p.on_message(now, src, Bytes::from(r), &mut out);
    let fwd = parse(&out[0]);
    assert!(!p.holds_flow(3, now), "nothing granted yet");
    let ok = response_to(&fwd, 200).replace(
        "Content-Length: 0",
        "Contact: <sip:alice@127.0.0.1:40011>;expires=120\r\nContent-Length: 0",
    );
    let out = send(&p, now, "127.0.0.1:5080", &ok);
    assert_eq!(out.len(), 1);
    assert!(p.holds_flow(3, now + Duration::from_secs(119)));
    assert!(!p.holds_flow(3, now + Duration::from_secs(121)));
}

fn with_match(by_address: bool) -> (Proxy, Instant) {
    with_media(by_address, false, "127.0.0.2:5080")
}

fn with_media(by_address: bool, loopback_by_port: bool, media: &str) -> (Proxy, Instant) {
    let (_, reg, now) = setup(|c| c.direct_user_calls = false);
    let cfg = ProxyConfig {
        listeners: vec![Listener {
            transport: Transport::Udp,
            advertise: addr("127.0.0.1:5060"),
        }],
        media_servers_by_address: by_address,
        loopback_by_port,
        ..ProxyConfig::default()
    };
    let media = vec![Destination {
        uri: format!("sip:{media}").into(),
        transport: Transport::Udp,
        addr: addr(media),
        flow: None,
        node: None,
        route: None,
        name: None,
    }];
    let p = Proxy::new(cfg, Arc::new(RoundRobin::new(media))).with_registrar(reg);
    (p, now)
}

/// alice registers (digest) from 127.0.0.1:40000.
fn register_alice(p: &Proxy, now: Instant) {
    let r = register_auth(
        p,
        now,
        "alice",
        "secret1",
        "<sip:alice@127.0.0.1:40000>",
        0,
        1,
    );
    assert_eq!(r.status(), Some(200));
}

#[test]
fn a_media_server_calling_from_another_port_with_a_route_reaches_the_user() {
    for by_address in [true, false] {
        let (p, now) = with_match(by_address);
        register_alice(&p, now);
        // FreeSWITCH's outbound-proxy form, from its second profile's port
        let inv = "INVITE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5090;branch=z9hG4bKfs2\r\nRoute: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:fs@127.0.0.2>;tag=f\r\nTo: <sip:alice@example.com>\r\nCall-ID: fs2\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
        let out = send(&p, now, "127.0.0.2:5090", inv);
        let relayed = out.iter().find(|t| parse(t).is_request());
        if by_address {
            let call = relayed.expect("to alice's contact, not 503 cannot resolve");
            assert_eq!(call.target.addr, addr("127.0.0.1:40000"));
            assert_eq!(parse(call).uri_str(), "sip:alice@127.0.0.1:40000");
        } else {
            // by address and port, 5090 is no media server: an outside call, sent to the
            // media servers (user_calls = "media-server")
            let fwd = relayed.expect("relayed");
            assert_eq!(fwd.target.addr, addr("127.0.0.2:5080"));
        }
    }
}

#[test]
fn auto_matches_media_servers_by_address_except_on_loopback() {
    let inv = |from: &str| {
        format!("INVITE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{}\r\nFrom: <sip:fs@10.9.9.9>;tag=f\r\nTo: <sip:alice@example.com>\r\nCall-ID: auto-{from}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n", from.replace([':', '.'], ""))
    };
    for (media, from, trusted) in [
        ("10.0.0.2:5080", "10.0.0.2:5090", true), // its second profile: a media server
        ("10.0.0.2:5080", "10.0.0.3:5080", false), // another address: not
        ("127.0.0.2:5080", "127.0.0.2:5090", false), // loopback: the port counts
        ("127.0.0.2:5080", "127.0.0.2:5080", true),
    ] {
        let (p, now) = with_media(true, true, media);
        register_alice(&p, now);
        let out = send(&p, now, from, &inv(from));
        let fwd = out.iter().find(|t| parse(t).is_request()).expect("relayed");
        let to_user = fwd.target.addr == addr("127.0.0.1:40000");
        assert_eq!(to_user, trusted, "media {media}, call from {from}");
    }
}

#[test]
fn a_media_server_reaches_a_websocket_user_and_its_dialog_follows_the_connection() {
    let now = Instant::now();
    let rc = RegistrarConfig {
        domains: vec!["example.com".into()],
        secret: b"test-secret".to_vec(),
        auth: false,
        ..RegistrarConfig::default()
    };
    let reg = Arc::new(Registrar::new(rc, (now, EPOCH_UNIX)));
    let cfg = ProxyConfig {
        listeners: vec![
            Listener {
                transport: Transport::Udp,
                advertise: addr("127.0.0.1:5060"),
            },
            Listener {
                transport: Transport::Ws,
                advertise: addr("127.0.0.1:8080"),
            },
        ],
        ..ProxyConfig::default()
    };
    let media = vec![Destination {
        uri: "sip:127.0.0.1:5080".into(),
        transport: Transport::Udp,
        addr: addr("127.0.0.1:5080"),
        flow: None,
        node: None,
        route: None,
        name: None,
    }];
    let p = Proxy::new(cfg, Arc::new(RoundRobin::new(media))).with_registrar(reg);
    let ws = Source {
        transport: Transport::Ws,
        addr: addr("127.0.0.1:40100"),
        flow: Some(5),
    };
    let contact = "<sip:k3j2@a8d7f.invalid;transport=ws>";
    let mut out = vec![];
    let r = register("alice", "wsr", 1, &format!("{contact};expires=300"), "")
        .replace("SIP/2.0/UDP 10.0.0.5:5060", "SIP/2.0/WS a8d7f.invalid");
    p.on_message(now, ws, Bytes::from(r), &mut out);
    assert_eq!(parse(&out[0]).status(), Some(200));
    // the media server's call goes over the browser's connection, record-routed twice
    let out = send(&p, now, "127.0.0.1:5080", &invite_to("alice", "wsc"));
    let inv = out
        .iter()
        .find(|t| parse(t).is_request())
        .expect("relayed to the browser");
    assert_eq!(
        (inv.target.transport, inv.target.flow),
        (Transport::Ws, Some(5))
    );
    let req = parse(inv);
    let rr: Vec<String> = req
        .all(HeaderName::RecordRoute)
        .map(str::to_string)
        .collect();
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert!(
        rr[0].contains("transport=ws") && rr[0].contains('@'),
        "the browser's side names its connection: {rr:?}"
    );
    // the browser answers with its .invalid Contact
    let ok = response_to(&req, 200).replace(
        "Content-Length: 0",
        &format!(
            "Record-Route: {}\r\nRecord-Route: {}\r\nContact: {contact}\r\nContent-Length: 0",
            rr[0], rr[1]
        ),
    );
    let mut out = vec![];
    p.on_message(now, ws, Bytes::from(ok), &mut out);
    let to_fs = out
        .iter()
        .find(|t| parse(t).status() == Some(200))
        .expect("relayed 200");
    assert_eq!(to_fs.target.addr, addr("127.0.0.1:5080"));
    // its BYE follows the route set (our two entries, FreeSWITCH's order) to the browser's
    // connection: no lookup of the .invalid host
    let bye = format!("BYE sip:k3j2@a8d7f.invalid;transport=ws SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-wsbye\r\nRoute: {}\r\nRoute: {}\r\nFrom: <sip:fs@127.0.0.9>;tag=ft\r\nTo: <sip:alice@example.com>;tag=tt\r\nCall-ID: wsc\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n", rr[1], rr[0]);
    let out = send(&p, now, "127.0.0.1:5080", &bye);
    let b = out
        .iter()
        .find(|t| parse(t).is_request())
        .expect("BYE relayed");
    assert_eq!(
        (b.target.transport, b.target.flow),
        (Transport::Ws, Some(5))
    );
    let mut cmds = vec![];
    p.poll_commands(&mut cmds);
    assert!(cmds.is_empty(), "no DNS lookup: {cmds:?}");
    // a BYE from the browser goes to the media server, not back to the browser
    let bye2 = format!("BYE sip:fs@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/WS a8d7f.invalid;branch=z9hG4bK-wsbye2\r\nRoute: {}\r\nRoute: {}\r\nFrom: <sip:alice@example.com>;tag=tt\r\nTo: <sip:fs@127.0.0.9>;tag=ft\r\nCall-ID: wsc\r\nCSeq: 1 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n", rr[0], rr[1]);
    let mut out = vec![];
    p.on_message(now, ws, Bytes::from(bye2), &mut out);
    let b = out
        .iter()
        .find(|t| parse(t).is_request())
        .expect("BYE relayed");
    assert_eq!(b.target.addr, addr("127.0.0.1:5080"));
    assert_eq!(b.target.transport, Transport::Udp);
}

#[test]
fn parallel_forking_with_relayed_media_offers_each_branch_on_its_own() {
    use crate::command::{CommandKind, EventResult};
    let (p, _reg, now) = setup(|c| {
        c.auth = false;
        c.fork = Fork::Parallel;
    });
    let p = p.with_media(crate::media::MediaConfig {
        relay: crate::media::Relay::Always,
        ..Default::default()
    });
    reg_status(&p, now, "m1", 1, "<sip:alice@10.0.0.5:5060>", "");
    let r = "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.6;branch=z9hG4bKm2\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: other\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@10.0.0.6:5060>\r\nContent-Length: 0\r\n\r\n";
    send(&p, now, "127.0.0.1:40001", r);
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.9\r\ns=-\r\nc=IN IP4 127.0.0.9\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let inv = invite_to("alice", "mf").replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ),
    );
    let offer = |p: &Proxy| {
        let mut c = vec![];
        p.poll_commands(&mut c);
        assert_eq!(c.len(), 1, "{c:?}");
        match &c[0].kind {
            CommandKind::Media(m) => (c[0].id, (**m).clone()),
            k => panic!("{k:?}"),
        }
    };
    let relayed = |port: u16| {
        EventResult::Media(Ok(bytes::Bytes::from(format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n"
        ))))
    };
    let answer = |p: &Proxy, id, r| {
        let mut out = vec![];
        p.on_event(now, crate::command::Event { id, result: r }, &mut out);
        out
    };
    let out = send(&p, now, "127.0.0.9:5080", &inv);
    assert!(
        out.iter().all(|t| !parse(t).is_request()),
        "the first branch waits"
    );
    let (id, o1) = offer(&p);
    assert_eq!(o1.via_branch, "0");
    let out = answer(&p, id, relayed(30000));
    let first: Vec<Message> = out.iter().map(parse).filter(|m| m.is_request()).collect();
    assert_eq!(first.len(), 1);
    assert!(String::from_utf8_lossy(first[0].body()).contains("m=audio 30000"));
    // the second contact gets its own offer (another via-branch), then its INVITE
    let (id, o2) = offer(&p);
    assert_eq!((o2.via_branch.as_str(), o2.call_id.as_str()), ("1", "mf"));
    let out = answer(&p, id, relayed(30002));
    let second: Vec<Message> = out.iter().map(parse).filter(|m| m.is_request()).collect();
    assert_eq!(second.len(), 1);
    assert!(String::from_utf8_lossy(second[0].body()).contains("m=audio 30002"));
    assert_ne!(first[0].uri_str(), second[0].uri_str());
    // the second contact answers: its answer names its branch
    let ok = response_to(&second[0], 200).replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ),
    );
    send(&p, now, "127.0.0.1:40001", &ok);
    let (_, a) = offer(&p);
    assert_eq!(
        (a.op, a.via_branch.as_str()),
        (crate::media::MediaOp::Answer, "1")
    );
}

/// A cluster node holds the other nodes' bindings: found by lookups, never expired, pinged
/// or removed in its own name (their owner does that in the shared store), and replaced by
/// id when the owner changes them.
#[test]
fn another_nodes_bindings_are_held_but_not_managed() {
    let (_p, reg, now) = setup(|c| c.ping_interval = Duration::from_secs(30));
    reg.set_node(1);
    let remote = |id: u64, expires_in: u64, flow: Option<u64>| Binding {
        id,
        uri: format!("sip:alice@10.0.0.{id}:5060").into(),
        q: 1000,
        expires_at: now,
        expires_unix: EPOCH_UNIX + expires_in,
        call_id: "c".into(),
        cseq: 1,
        source: Target {
            transport: Transport::Udp,
            addr: addr("127.0.0.1:7000"),
            flow,
        },
        nat: true,
        path: None,
        instance: None,
        reg_id: None,
        user_agent: None,
        updated_unix: EPOCH_UNIX,
        node: 2,
        missed: 0,
    };
    reg.apply_remote(now, "alice@EXAMPLE.com", remote(5, 60, None));
    reg.apply_remote(now, "alice@example.com", remote(6, 10, None));
    assert_eq!(reg.lookup("alice", "example.com", now).unwrap().len(), 2);
    assert!(
        reg.take_events().is_empty(),
        "nothing of another node's is queued"
    );
    // the owner refreshed binding 5 (same id: replaced, not added)
    let mut b = remote(5, 120, None);
    b.cseq = 2;
    reg.apply_remote(now, "alice@example.com", b);
    assert_eq!(reg.show("alice@example.com", now).len(), 2);
    // 30 s on: binding 6 expired and left quietly; no keepalive for another node's contact
    let later = now + Duration::from_secs(31);
    let mut pings = Vec::new();
    reg.tick(later, &mut pings);
    assert!(
        pings.is_empty(),
        "the owner node pings its contacts: {pings:?}"
    );
    assert!(reg.take_events().is_empty());
    assert_eq!(reg.show("alice@example.com", later).len(), 1);
    assert!(reg.own_bindings(later).is_empty());
    // removed by its owner
    reg.remove_remote("alice@example.com", 5);
    assert!(reg.show("alice@example.com", later).is_empty());
    // a record already expired is not taken
    reg.apply_remote(later, "alice@example.com", remote(7, 1, None));
    assert!(reg.show("alice@example.com", later).is_empty());
    // this node's own binding from before a restart: adopted, its connection forgotten, and
    // the id counter moved past it
    reg.set_id_base(1 << crate::ID_COUNTER_BITS);
    let mut own = remote((1 << crate::ID_COUNTER_BITS) + 40, 300, Some(9));
    own.node = 1;
    reg.apply_remote(later, "alice@example.com", own);
    let mine = reg.own_bindings(later);
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].1.source.flow, None);
    assert_eq!(reg.requeue_own(later), 1);
    assert!(
        matches!(&reg.take_events()[..], [LocEvent::Saved { binding, .. }] if binding.node == 1)
    );
}
