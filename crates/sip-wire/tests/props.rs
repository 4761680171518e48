//! Property tests: URIs and headers built from random parts print and parse back to the
//! same parts.

use bytes::Bytes;
use proptest::prelude::*;
use sip_wire::{HeaderName, Message, NameAddr, Uri, Via};

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9.!%*_+`'~-]{0,15}".prop_filter("no escapes", |s| !s.contains('%'))
}
fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,10}){0,3}",
        (any::<[u8; 4]>()).prop_map(|b| format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3])),
        Just("[2001:db8::1]".to_string())
    ]
}

proptest! {
    #[test]
    fn uri_round_trips(user in proptest::option::of("[a-z0-9_.+-]{1,12}"), h in host(), port in proptest::option::of(1u16..), params in proptest::collection::vec(("[a-z]{1,6}", proptest::option::of("[a-z0-9]{1,6}")), 0..4)) {
        let mut s = String::from("sip:");
        if let Some(u) = &user { s.push_str(u); s.push('@'); }
        s.push_str(&h);
        if let Some(p) = port { s.push_str(&format!(":{p}")); }
        for (n, v) in &params { s.push(';'); s.push_str(n); if let Some(v) = v { s.push('='); s.push_str(v); } }
        let u = Uri::parse(&s).unwrap();
        prop_assert_eq!(u.user, user.as_deref());
        prop_assert_eq!(u.host, h.as_str());
        prop_assert_eq!(u.port, port);
        prop_assert_eq!(u.params.iter().count(), params.len());
    }

    #[test]
    fn message_headers_round_trip(call_id in token(), tag in token(), branch in "[a-zA-Z0-9]{1,20}", seq in 0u32..(1 << 31), h in host(), xval in "[ -~]{0,40}", disp in proptest::option::of("[A-Za-z]{1,10}")) {
        let from = match &disp { Some(d) => format!("\"{d}\" <sip:a@{h}>;tag={tag}"), None => format!("<sip:a@{h}>;tag={tag}") };
        let text = format!("OPTIONS sip:b@{h} SIP/2.0\r\nVia: SIP/2.0/UDP {h}:5060;branch=z9hG4bK{branch}\r\nFrom: {from}\r\nTo: <sip:b@{h}>\r\nCall-ID: {call_id}\r\nCSeq: {seq} OPTIONS\r\nX-Any: {xval}\r\nContent-Length: 0\r\n\r\n");
        let m = Message::parse(Bytes::from(text)).unwrap();
        let again = Message::parse(Bytes::from(m.print())).unwrap();
        for msg in [&m, &again] {
            prop_assert_eq!(msg.call_id(), call_id.as_str());
            prop_assert_eq!(msg.cseq().unwrap().seq, seq);
            prop_assert_eq!(msg.from().unwrap().tag(), Some(tag.as_str()));
            let via: Via = msg.top_via().unwrap();
            let expected_branch = format!("z9hG4bK{branch}");
            prop_assert_eq!(via.branch(), Some(expected_branch.as_str()));
            prop_assert_eq!(msg.get_other("X-Any").unwrap_or(""), xval.trim());
        }
        let f = NameAddr::parse(again.get(HeaderName::From).unwrap(), "From").unwrap();
        prop_assert_eq!(f.display.map(|d| d.trim_matches('"').to_string()), disp);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Message::parse(Bytes::from(data.clone()));
        let _ = sip_wire::frame_stream(&data, 1000);
        let _ = sip_wire::salvage(&data);
    }
}
