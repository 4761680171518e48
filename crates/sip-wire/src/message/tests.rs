use super::*;
use crate::{frame_stream, salvage, Framing};

fn parse(s: &str) -> Result<Message, ParseError> {
    Message::parse(Bytes::copy_from_slice(s.as_bytes()))
}

const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

#[test]
fn parses_a_typical_invite() {
    let m = parse(INVITE).unwrap();
    assert_eq!(m.method(), Some(Method::Invite));
    assert_eq!(m.uri_str(), "sip:bob@biloxi.example.com");
    assert_eq!(m.call_id(), "a84b4c76e66710@pc33.atlanta.example.com");
    assert_eq!(
        m.cseq().unwrap(),
        CSeq {
            seq: 314159,
            method: "INVITE"
        }
    );
    assert_eq!(m.from().unwrap().tag(), Some("1928301774"));
    assert_eq!(m.to().unwrap().tag(), None);
    assert_eq!(m.max_forwards().unwrap(), Some(70));
    assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK776asdhds"));
    assert_eq!(m.body(), b"v=0\n");
    assert_eq!(m.headers().len(), 9);
}

#[test]
fn parses_a_response_with_empty_reason() {
    let m = parse("SIP/2.0 180 \r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert_eq!(m.status(), Some(180));
    assert_eq!(m.reason(), "");
    assert_eq!(m.method_str(), "INVITE");
}

#[test]
fn unfolds_continuation_lines() {
    let m = parse("OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nSubject: first\r\n  second\r\n\tthird\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n").unwrap();
    let subj = m.get(HeaderName::Subject).unwrap();
    assert!(
        subj.starts_with("first") && subj.ends_with("third"),
        "{subj:?}"
    );
}

#[test]
fn compact_forms_and_multi_value_vias() {
    let m = parse("BYE sip:h SIP/2.0\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1 , SIP/2.0/TCP b;branch=z9hG4bK2\r\nV: SIP/2.0/UDP c;branch=z9hG4bK3\r\nf: <sip:a@h>;tag=1\r\nt: <sip:b@h>;tag=2\r\ni: cid\r\nCSeq: 2 BYE\r\nl: 0\r\n\r\n").unwrap();
    let hosts: Vec<_> = m.vias().map(|v| v.unwrap().host).collect();
    assert_eq!(hosts, ["a", "b", "c"]);
    assert_eq!(m.call_id(), "cid");
}

#[test]
fn body_without_content_length_runs_to_the_end_of_the_datagram() {
    let m = parse("MESSAGE sip:h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\n\r\nhello").unwrap();
    assert_eq!(m.body(), b"hello");
}

#[test]
fn extra_bytes_after_content_length_are_ignored() {
    let m = parse("MESSAGE sip:h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\nContent-Length: 2\r\n\r\nhello").unwrap();
    assert_eq!(m.body(), b"he");
}

#[test]
fn malformed_messages_get_precise_errors() {
    let base = "INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    assert!(parse(base).is_ok());
    let cases: &[(&str, ParseError)] = &[
        ("", ParseError::Empty),
        ("\r\n\r\n", ParseError::Empty),
        (
            "INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h",
            ParseError::Truncated,
        ),
        ("INVITE sip:b@h SIP/3.0\r\n\r\n", ParseError::Version),
        (
            "SIP/2.0 99 Low\r\n\r\n",
            ParseError::StartLine("status code must be three digits"),
        ),
        (
            "SIP/2.0 4294967301 Big\r\n\r\n",
            ParseError::StartLine("status code must be three digits"),
        ),
        ("INVITE\r\n\r\n", ParseError::StartLine("no Request-URI")),
    ];
    for (msg, want) in cases {
        assert_eq!(parse(msg).unwrap_err(), *want, "{msg:?}");
    }
    let without = |name: &str| {
        base.lines()
            .filter(|l| !l.starts_with(name))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .replace('\n', "\r\n")
            .replace("\r\r", "\r")
    };
    assert_eq!(
        parse(&without("Call-ID")).unwrap_err(),
        ParseError::Missing("Call-ID")
    );
    assert_eq!(
        parse(&without("CSeq")).unwrap_err(),
        ParseError::Missing("CSeq")
    );
    assert_eq!(
        parse(&without("From")).unwrap_err(),
        ParseError::Missing("From")
    );
    assert_eq!(
        parse(&without("To")).unwrap_err(),
        ParseError::Missing("To")
    );
    assert_eq!(
        parse(&without("Via")).unwrap_err(),
        ParseError::Missing("Via")
    );
    assert_eq!(
        parse(&base.replace("Content-Length: 0", "Content-Length: 10")).unwrap_err(),
        ParseError::BodyShort {
            declared: 10,
            got: 0
        }
    );
    assert_eq!(
        parse(&base.replace("Content-Length: 0", "Content-Length: x")).unwrap_err(),
        ParseError::ContentLength
    );
    assert_eq!(
        parse(&base.replace("Call-ID: c", "Call-ID: c\0d")).unwrap_err(),
        ParseError::ControlChar
    );
    assert_eq!(
        parse(&base.replace("CSeq: 1 INVITE", "CSeq: 1 BYE")).unwrap_err(),
        ParseError::CSeq("method does not match the request")
    );
    assert_eq!(
        parse(&base.replace("CSeq: 1 INVITE", "CSeq: x INVITE")).unwrap_err(),
        ParseError::CSeq("bad sequence number")
    );
    assert_eq!(
        parse(&base.replace("Call-ID: c", "Max-Forwards: 256\r\nCall-ID: c")).unwrap_err(),
        ParseError::MaxForwards
    );
    assert!(matches!(
        parse(&base.replace("Call-ID: c", "Bad Name: x\r\nCall-ID: c")).unwrap_err(),
        ParseError::HeaderLine(_)
    ));
    assert!(matches!(
        parse(&base.replace("Call-ID: c", "NoColon\r\nCall-ID: c")).unwrap_err(),
        ParseError::HeaderLine(_)
    ));
    assert_eq!(
        parse(&base.replace("Call-ID: c", "Call-ID: c\r\nCall-ID: d")).unwrap_err(),
        ParseError::Duplicate("Call-ID")
    );
    assert!(matches!(
        parse(&base.replace("sip:b@h SIP", "sip:b@h?x=y SIP")).unwrap_err(),
        ParseError::Uri(_)
    ));
    assert!(matches!(
        parse(&"\u{00e9}".repeat(3)).unwrap_err(),
        ParseError::Truncated
    ));
}

#[test]
fn invalid_utf8_in_headers_is_refused() {
    let mut b = b"OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nX: ".to_vec();
    b.extend_from_slice(&[0xff, 0xfe]);
    b.extend_from_slice(b"\r\n\r\n");
    assert_eq!(
        Message::parse(Bytes::from(b)).unwrap_err(),
        ParseError::NotUtf8
    );
}

#[test]
fn salvage_finds_the_headers_of_a_broken_request() {
    let s = salvage(b"INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h:5070;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nX: \0\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 99\r\n\r\n");
    assert!(s.is_request && s.has_via);
    assert_eq!(s.method, "INVITE");
    assert_eq!(
        s.lines,
        vec![
            "Via: SIP/2.0/UDP h:5070;branch=z9hG4bK1",
            "From: <sip:a@h>;tag=1",
            "Call-ID: c",
            "CSeq: 1 INVITE"
        ]
    );
    let s = salvage(&[0x13, 0x99, 0xff, b'\n', b'\n']);
    assert!(!s.has_via);
}

#[test]
fn stream_framing_by_content_length() {
    let msg = b"OPTIONS sip:h SIP/2.0\r\nContent-Length: 3\r\n\r\nabc";
    assert_eq!(
        frame_stream(msg, 65535).unwrap(),
        Framing::Message(msg.len())
    );
    assert_eq!(
        frame_stream(&msg[..msg.len() - 1], 65535).unwrap(),
        Framing::NeedMore
    );
    assert_eq!(frame_stream(&msg[..20], 65535).unwrap(), Framing::NeedMore);
    let mut two = msg.to_vec();
    two.extend_from_slice(msg);
    assert_eq!(
        frame_stream(&two, 65535).unwrap(),
        Framing::Message(msg.len())
    );
    assert_eq!(
        frame_stream(b"\r\n\r\n", 65535).unwrap(),
        Framing::KeepAlive { len: 4, ping: true }
    );
    assert_eq!(
        frame_stream(b"\r\nOPT", 65535).unwrap(),
        Framing::KeepAlive {
            len: 2,
            ping: false
        }
    );
    assert_eq!(
        frame_stream(msg, 10).unwrap_err(),
        ParseError::TooLarge(msg.len())
    );
    assert_eq!(
        frame_stream(b"X sip:h SIP/2.0\r\nContent-Length: -1\r\n\r\n", 100).unwrap_err(),
        ParseError::ContentLength
    );
}

#[test]
fn print_then_reparse_gives_the_same_message() {
    let m = parse(INVITE).unwrap();
    let again = Message::parse(Bytes::from(m.print())).unwrap();
    assert_eq!(again.uri_str(), m.uri_str());
    assert_eq!(again.body(), m.body());
    let names = |m: &Message| {
        m.headers()
            .iter()
            .map(|h| (h.name, m.value(h).to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&again), names(&m));
}

#[test]
fn get_named_finds_known_and_extension_headers() {
    let m = parse(INVITE).unwrap();
    assert_eq!(m.get_named("content-type"), Some("application/sdp"));
    assert_eq!(
        m.get_named("i"),
        Some("a84b4c76e66710@pc33.atlanta.example.com")
    );
    assert_eq!(m.get_named("X-Nope"), None);
    assert_eq!(
        m.get_other("Content-Type"),
        None,
        "get_other only sees extension headers"
    );
}
