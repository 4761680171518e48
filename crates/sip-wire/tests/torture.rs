//! RFC 4475 torture messages: every valid one parses; every syntactically invalid one is
//! refused with the error the RFC's section implies. The semantic cases (wrong scheme,
//! Max-Forwards 0, unknown Require, ...) parse here and are refused by the proxy core.

use bytes::Bytes;
use sip_wire::{Message, ParseError};

fn load(dir: &str, name: &str) -> Bytes {
    let p = format!(
        "{}/tests/torture/{dir}/{name}.dat",
        env!("CARGO_MANIFEST_DIR")
    );
    Bytes::from(std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}")))
}

#[test]
fn every_valid_torture_message_parses() {
    let dir = format!("{}/tests/torture/valid", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_str().unwrap().to_string();
        let m = Message::parse(load("valid", &name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        // and survives print -> parse
        Message::parse(Bytes::from(m.print())).unwrap_or_else(|e| panic!("{name} reprinted: {e}"));
        n += 1;
    }
    assert_eq!(n, 13);
}

#[test]
fn syntactically_invalid_torture_messages_are_refused() {
    let refused = [
        "badaspec",
        "baddn",
        "badinv01",
        "badvers",
        "bigcode",
        "clerr",
        "escruri",
        "insuf",
        "lwsruri",
        "lwsstart",
        "ltgtruri",
        "mcl01",
        "mismatch01",
        "multi01",
        "ncl",
        "quotbal",
        "scalar02",
        "scalarlg",
    ];
    for name in refused {
        let r = Message::parse(load("invalid", name));
        assert!(
            r.is_err(),
            "{name} should be refused, parsed as {:?}",
            r.map(|m| m.start())
        );
    }
    assert_eq!(
        Message::parse(load("invalid", "badvers")).unwrap_err(),
        ParseError::Version
    );
    assert!(matches!(
        Message::parse(load("invalid", "clerr")).unwrap_err(),
        ParseError::BodyShort { .. }
    ));
    assert_eq!(
        Message::parse(load("invalid", "mismatch01"))
            .unwrap_err()
            .status(),
        400
    );
}

#[test]
fn semantic_torture_messages_parse_for_the_proxy_to_judge() {
    for name in [
        "zeromf",
        "unkscm",
        "novelsc",
        "bext01",
        "inv2543",
        "badbranch",
        "cparam01",
        "cparam02",
        "regaut01",
        "invut",
    ] {
        Message::parse(load("invalid", name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // regbadct: an addr-spec Contact may not carry URI headers; the registrar parses Contact
    let m = Message::parse(load("invalid", "regbadct")).unwrap();
    let contact = m.get(sip_wire::HeaderName::Contact).unwrap();
    assert!(sip_wire::NameAddr::parse(contact, "Contact").is_err());
}
