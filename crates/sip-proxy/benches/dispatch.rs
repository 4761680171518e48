//! Dispatcher selection cost against the number of destinations (2, 20, 200), per
//! algorithm: it must stay flat (consistent hashing, precomputed round-robin schedule),
//! except for the algorithms that scan every destination by definition (least-calls,
//! latency, relative-weight).
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sip_proxy::dispatcher::{Algorithm, DestConfig, DestState, Dispatcher, ProbeConfig, SetConfig};
use sip_proxy::{Router, Transport};
use sip_wire::Message;

fn dispatcher(n: u16, alg: Algorithm) -> Dispatcher {
    let dests = (0..n)
        .map(|i| DestConfig {
            name: None,
            uri: format!("sip:10.0.{}.{}:5080", i / 250, i % 250 + 1).into(),
            transport: Transport::Udp,
            addr: format!("10.0.{}.{}:5080", i / 250, i % 250 + 1)
                .parse()
                .unwrap(),
            weight: 1 + (i as u32 % 3),
            priority: 0,
            attrs: String::new(),
            description: String::new(),
            state: DestState::Active,
        })
        .collect();
    Dispatcher::new(
        vec![SetConfig {
            id: 1,
            algorithm: alg,
            hash_header: None,
            destinations: dests,
        }],
        1,
        3,
        ProbeConfig::default(),
        7,
    )
}

fn bench(c: &mut Criterion) {
    let req = Message::parse(Bytes::from_static(b"INVITE sip:svc@10.1.1.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.2;branch=z9hG4bKabc\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:svc@h>\r\nCall-ID: 8d9f0a1c-42@10.1.1.2\r\nCSeq: 1 INVITE\r\n\r\n")).unwrap();
    for alg in [
        Algorithm::HashCallId,
        Algorithm::WeightedRoundRobin,
        Algorithm::RoundRobin,
        Algorithm::WeightedRandom,
        Algorithm::Priority,
        Algorithm::LeastCalls,
    ] {
        let mut g = c.benchmark_group(format!("select/{}", alg.name()));
        for n in [2u16, 20, 200] {
            let d = dispatcher(n, alg);
            let mut out = Vec::with_capacity(4);
            g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    out.clear();
                    d.select(&req, &mut out);
                    assert!(!out.is_empty());
                })
            });
        }
        g.finish();
    }
    // probing 200 destinations: building one round of probes and settling their answers
    let d = dispatcher(200, Algorithm::RoundRobin);
    let mut probes = Vec::new();
    let t0 = Instant::now();
    let mut k = 0u32;
    c.bench_function("probe_round/200", |b| {
        b.iter(|| {
            k += 1;
            let now = t0 + std::time::Duration::from_secs(10 * k as u64);
            probes.clear();
            d.due_probes(now, &mut probes);
            for p in &probes {
                d.probe_result(now, p.id, Some(200));
            }
            assert_eq!(probes.len(), 200);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
