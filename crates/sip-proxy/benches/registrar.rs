//! Registrar costs against the number of registrations (1,000, 10,000, 100,000): the lookup
//! of a call to a user and a REGISTER refresh through the core must stay flat (hash map per
//! shard, no scan).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sip_proxy::registrar::{Binding, Registrar, RegistrarConfig};
use sip_proxy::{Listener, Proxy, ProxyConfig, RoundRobin, Source, Target, Transport};

const UNIX: u64 = 1_800_000_000;

fn filled(n: usize, now: Instant) -> Arc<Registrar> {
    let reg = Arc::new(Registrar::new(
        RegistrarConfig {
            domains: vec!["bench.example".into()],
            auth: false,
            ping_interval: Duration::ZERO,
            ..RegistrarConfig::default()
        },
        (now, UNIX),
    ));
    let rows = (0..n)
        .map(|i| {
            let src: SocketAddr = format!("10.{}.{}.{}:5060", i >> 16 & 255, i >> 8 & 255, i & 255)
                .parse()
                .unwrap();
            (
                format!("user{i}@bench.example"),
                Binding {
                    id: i as u64 + 1,
                    uri: format!("sip:user{i}@{src}").into(),
                    q: 1000,
                    expires_at: now,
                    expires_unix: UNIX + 3600,
                    call_id: format!("c{i}").into(),
                    cseq: 1,
                    source: Target {
                        transport: Transport::Udp,
                        addr: src,
                        flow: None,
                    },
                    nat: false,
                    path: None,
                    instance: None,
                    reg_id: None,
                    user_agent: None,
                    updated_unix: UNIX,
                    node: 0,
                    missed: 0,
                },
            )
        })
        .collect();
    reg.restore(now, rows);
    reg
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("registrar");
    for n in [1_000usize, 10_000, 100_000] {
        let reg = filled(n, now);
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("lookup", n), &n, |b, &n| {
            b.iter(|| {
                i = (i + 7919) % n;
                reg.lookup(&format!("user{i}"), "bench.example", now)
                    .unwrap()
            })
        });
        let proxy = Proxy::new(
            ProxyConfig {
                listeners: vec![Listener {
                    transport: Transport::Udp,
                    advertise: "127.0.0.1:5060".parse().unwrap(),
                }],
                ..ProxyConfig::default()
            },
            Arc::new(RoundRobin::new(vec![])),
        )
        .with_registrar(reg.clone());
        let mut seq = 1u64;
        let mut out = Vec::new();
        g.bench_with_input(BenchmarkId::new("register_refresh", n), &n, |b, &n| {
            b.iter(|| {
                seq += 1;
                let u = (seq as usize * 7919) % n;
                let msg = format!("REGISTER sip:bench.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKb{seq}\r\nFrom: <sip:user{u}@bench.example>;tag=1\r\nTo: <sip:user{u}@bench.example>\r\nCall-ID: c{u}\r\nCSeq: {seq} REGISTER\r\nContact: <sip:user{u}@10.0.0.1:5060>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n");
                out.clear();
                proxy.on_message(
                    now,
                    Source {
                        transport: Transport::Udp,
                        addr: "10.0.0.1:5060".parse().unwrap(),
                        flow: None,
                    },
                    Bytes::from(msg),
                    &mut out,
                );
                let _ = reg.take_events();
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
