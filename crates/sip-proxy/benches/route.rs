//! The whole core path for one call's messages: INVITE in -> 100 + INVITE out; 180 and 200
//! in -> relayed; ACK in -> relayed statelessly; BYE and its 200. No sockets.
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use sip_proxy::{Destination, Listener, Proxy, ProxyConfig, RoundRobin, Source, Transport};

fn invite(n: u64) -> Bytes {
    Bytes::from(format!("INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{n}\r\nFrom: sipp <sip:sipp@127.0.0.1:5070>;tag={n}\r\nTo: service <sip:service@127.0.0.1:5060>\r\nCall-ID: {n}@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: sip:sipp@127.0.0.1:5070\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: 0\r\n\r\n"))
}

fn bench(c: &mut Criterion) {
    let cfg = ProxyConfig {
        listeners: vec![Listener {
            transport: Transport::Udp,
            advertise: "127.0.0.1:5060".parse().unwrap(),
        }],
        ..ProxyConfig::default()
    };
    let dests = (0..2)
        .map(|i| Destination {
            uri: format!("sip:127.0.0.1:{}", 5080 + 2 * i),
            transport: Transport::Udp,
            addr: format!("127.0.0.1:{}", 5080 + 2 * i).parse().unwrap(),
            flow: None,
        })
        .collect();
    let p = Proxy::new(cfg, Arc::new(RoundRobin::new(dests)));
    let uac = Source {
        transport: Transport::Udp,
        addr: "127.0.0.1:5070".parse().unwrap(),
        flow: None,
    };
    let mut out = Vec::new();
    let mut n = 0u64;
    c.bench_function("route_one_invite", |b| {
        b.iter(|| {
            n += 1;
            out.clear();
            p.on_message(Instant::now(), uac, invite(n), &mut out);
            assert_eq!(out.len(), 2);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
