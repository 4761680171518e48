//! parse -> print -> re-parse -> compare. Any message the parser accepts must print to a
//! message that parses to the same start line, headers (name and value) and body.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sip_wire::{Message, NameAddr, Uri, Via};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Message::parse(Bytes::copy_from_slice(data)) else { return };
    let printed = m.print();
    let again = Message::parse(Bytes::from(printed)).expect("a printed message must parse");
    assert_eq!(m.status(), again.status());
    assert_eq!(m.method(), again.method());
    assert_eq!(m.uri_str(), again.uri_str());
    assert_eq!(m.body(), again.body());
    let view = |m: &Message| m.headers().iter().filter(|h| h.name != sip_wire::HeaderName::ContentLength).map(|h| (h.name, m.value(h).to_string())).collect::<Vec<_>>();
    assert_eq!(view(&m), view(&again));
    // typed views never panic on whatever the header holds
    for h in m.headers() {
        let v = m.value(h);
        let _ = Via::parse(v);
        let _ = NameAddr::parse(v, "x");
        let _ = Uri::parse(v);
    }
});
