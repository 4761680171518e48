//! Parsing cost of a typical ~1 KB INVITE, and of the typed views the proxy reads.
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sip_wire::{Editor, HeaderName, Message};

pub const INVITE: &str = "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-12345-1-0;rport\r\n\
From: sipp <sip:sipp@127.0.0.1:5070>;tag=12345SIPpTag001\r\n\
To: service <sip:service@127.0.0.1:5060>\r\n\
Call-ID: 1-12345@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: sip:sipp@127.0.0.1:5070\r\n\
Max-Forwards: 70\r\n\
Subject: Performance Test\r\n\
User-Agent: bench\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\n\
Supported: timer, replaces, 100rel\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 129\r\n\
\r\n\
v=0\r\n\
o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n\
s=-\r\n\
c=IN IP4 127.0.0.1\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

fn bench(c: &mut Criterion) {
    let buf = Bytes::from_static(INVITE.as_bytes());
    let mut g = c.benchmark_group("sip-wire");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("parse_invite", |b| {
        b.iter(|| Message::parse(black_box(buf.clone())).unwrap())
    });
    let m = Message::parse(buf.clone()).unwrap();
    g.bench_function("typed_views", |b| {
        b.iter(|| {
            let m = black_box(&m);
            (
                m.top_via().unwrap().branch(),
                m.cseq().unwrap().seq,
                m.from().unwrap().tag(),
                m.to().unwrap().tag(),
            )
        })
    });
    g.bench_function("edit_forward", |b| {
        b.iter(|| {
            let mf = m.position(HeaderName::MaxForwards).unwrap();
            let mut e = Editor::new(black_box(&m));
            e.push_top(format_args!(
                "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsb1.2.0"
            ))
            .push_top(format_args!("Record-Route: <sip:127.0.0.1:5060;lr>"))
            .replace(mf, format_args!("Max-Forwards: 69"));
            e.finish()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
