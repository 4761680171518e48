//! The proxy core's cost per call, no sockets: INVITE in (-> 100 Trying + INVITE out),
//! 180 and 200 relayed, ACK relayed statelessly, BYE and its 200 relayed. A virtual clock
//! advances 0.5 ms per call and the timers run, so finished contexts are reclaimed as in
//! production (steady state of ~64k live contexts at 2,000 calls/s-equivalent).
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use sip_proxy::cdr::{CallRecord, Cdrs};
use sip_proxy::dialog::{DialogConfig, Dialogs, Leg};
use sip_proxy::{
    Destination, Listener, Proxy, ProxyConfig, RoundRobin, Source, Target, Transmit, Transport,
};
use sip_wire::{HeaderName, Message};

fn invite(n: u64) -> Bytes {
    Bytes::from(format!(
        "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{n}-1\r\nFrom: sipp <sip:sipp@127.0.0.1:5070>;tag={n}SIPpTag00\r\nTo: service <sip:service@127.0.0.1:5060>\r\nCall-ID: {n}-4242@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: sip:sipp@127.0.0.1:5070\r\nMax-Forwards: 70\r\nSubject: Performance Test\r\nContent-Type: application/sdp\r\nContent-Length: 129\r\n\r\nv=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ))
}

fn reply(req: &Message, code: u16, reason: &str, body: bool) -> Bytes {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for v in req.all(HeaderName::Via) {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    for v in req.all(HeaderName::RecordRoute) {
        s.push_str(&format!("Record-Route: {v}\r\n"));
    }
    s.push_str(&format!("From: {}\r\nTo: {};tag=uas1\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <sip:127.0.0.1:5080;transport=UDP>\r\n", req.get(HeaderName::From).unwrap(), req.get(HeaderName::To).unwrap(), req.call_id(), req.get(HeaderName::CSeq).unwrap()));
    if body {
        s.push_str("Content-Type: application/sdp\r\nContent-Length: 129\r\n\r\nv=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n");
    } else {
        s.push_str("Content-Length: 0\r\n\r\n");
    }
    Bytes::from(s)
}

/// An in-dialog request along `route`, the (signed) Record-Route of the call, as SIPp sends it.
fn in_dialog(method: &str, n: u64, seq: u32, route: &str) -> Bytes {
    Bytes::from(format!("{method} sip:127.0.0.1:5080;transport=UDP SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{n}-{seq}\r\nRoute: {route}\r\nFrom: sipp <sip:sipp@127.0.0.1:5070>;tag={n}SIPpTag00\r\nTo: service <sip:service@127.0.0.1:5060>;tag=uas1\r\nCall-ID: {n}-4242@127.0.0.1\r\nCSeq: {seq} {method}\r\nContact: sip:sipp@127.0.0.1:5070\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"))
}

fn bench(c: &mut Criterion) {
    let cfg = ProxyConfig {
        listeners: vec![Listener {
            transport: Transport::Udp,
            advertise: "127.0.0.1:5060".parse().unwrap(),
        }],
        ..ProxyConfig::default()
    };
    let dests: Vec<Destination> = (0..2)
        .map(|i| Destination {
            uri: format!("sip:127.0.0.1:{}", 5080 + 2 * i).into(),
            transport: Transport::Udp,
            addr: format!("127.0.0.1:{}", 5080 + 2 * i).parse().unwrap(),
            flow: None,
            node: None,
            route: None,
            name: None,
        })
        .collect();
    let plain = || Proxy::new(cfg.clone(), Arc::new(RoundRobin::new(dests.clone())));
    let epoch = (Instant::now(), 1_700_000_000);
    let dialogs = || Arc::new(Dialogs::new(DialogConfig::default(), epoch));
    one_call(c, "core_one_call", plain(), None);
    one_call(
        c,
        "core_one_call_dialog",
        plain().with_dialogs(dialogs()),
        None,
    );
    let cdrs = Arc::new(Cdrs::default());
    let acc = plain().with_dialogs(dialogs()).with_cdrs(cdrs.clone());
    one_call(c, "core_one_call_dialog_acc", acc, Some(cdrs));
    // the flood defence on and counting the caller (not allowed), budgets above the rate
    let pike = sip_proxy::pike::PikeConfig {
        invite: sip_proxy::pike::Budget::per_second(1_000_000),
        other: sip_proxy::pike::Budget::per_second(1_000_000),
        ..Default::default()
    };
    // the per-source transaction count runs too (~64k live from the one caller)
    let counted = ProxyConfig {
        max_transactions_per_source: 1_000_000,
        ..cfg.clone()
    };
    let guarded = Proxy::new(counted, Arc::new(RoundRobin::new(dests.clone())))
        .with_pike(Arc::new(sip_proxy::pike::Pike::new(pike)));
    one_call(c, "core_one_call_pike", guarded, None);
    dialog_table(c, dialogs());
    let keys = sip_proxy::mac::Keys::new(&[7; 16]);
    c.bench_function("mac_branch_tag", |b| {
        let mut id = 0u64;
        b.iter(|| {
            id += 1;
            keys.tag_ids(sip_proxy::mac::Purpose::Branch, &[id, 0, 0x1234_5678])
        })
    });
    c.bench_function("mac_record_route_signature", |b| {
        b.iter(|| {
            keys.tag(
                sip_proxy::mac::Purpose::RecordRoute,
                &[b"1234-4242@127.0.0.1", b"1234SIPpTag00", b""],
            )
        })
    });
}

/// The dialog table alone, per call: early dialog on 180, confirmed on 200, the BYE
/// validated and removed, its record queued; about 200 dialogs live (2,000 calls/s held
/// 0.1 s).
fn dialog_table(c: &mut Criterion, d: Arc<Dialogs>) {
    let target = Target {
        transport: Transport::Udp,
        addr: "127.0.0.1:5070".parse().unwrap(),
        flow: None,
    };
    let cdrs = Cdrs::default();
    let t0 = Instant::now();
    let mut n = 0u64;
    let ids: Vec<String> = (0..256).map(|i| format!("{i}-4242@127.0.0.1")).collect();
    let tags: Vec<String> = (0..256).map(|i| format!("{i}SIPpTag00")).collect();
    c.bench_function("dialog_table_one_call", |b| {
        b.iter(|| {
            n += 1;
            let now = t0 + Duration::from_micros(500 * n);
            let (id, tag) = (&ids[n as usize % 256], &tags[n as usize % 256]);
            let old = (n as usize + 56) % 256; // ended 200 calls later
            if let Some((dlg, _)) = d.on_bye(&ids[old], &tags[old], "uas1") {
                cdrs.push(CallRecord::answered(&dlg, 1, "caller"));
            }
            for confirmed in [false, true] {
                let caller = || Leg {
                    party: "sipp <sip:sipp@127.0.0.1:5070>;tag=1SIPpTag00",
                    contact: "sip:sipp@127.0.0.1:5070",
                    route: "",
                    target,
                    cseq: 1,
                };
                let callee = || Leg {
                    party: "service <sip:service@127.0.0.1:5060>;tag=uas1",
                    contact: "sip:127.0.0.1:5080;transport=UDP",
                    route: "",
                    target,
                    cseq: 0,
                };
                let print = d.fingerprint(
                    Some("service <sip:service@127.0.0.1:5060>;tag=uas1"),
                    ["sip:127.0.0.1:5080;transport=UDP"].into_iter(),
                    target,
                );
                d.on_answer(
                    now,
                    1,
                    confirmed,
                    id,
                    tag,
                    "uas1",
                    caller,
                    callee,
                    print,
                    None,
                    None,
                    "sip:service@127.0.0.1:5060",
                );
            }
            assert!(d.on_request(now, id, tag, "uas1", 2, None));
            if n.is_multiple_of(64) {
                cdrs.take();
            }
        })
    });
}

/// One whole call per iteration. With accounting, the queue is emptied every 64 calls (the
/// binary's writer takes it every 500 ms), so the records' drop is counted.
fn one_call(c: &mut Criterion, name: &str, p: Proxy, cdrs: Option<Arc<Cdrs>>) {
    let uac = Source {
        transport: Transport::Udp,
        addr: "127.0.0.1:5070".parse().unwrap(),
        flow: None,
    };
    let uas = Source {
        transport: Transport::Udp,
        addr: "127.0.0.1:5080".parse().unwrap(),
        flow: None,
    };
    let mut out: Vec<Transmit> = Vec::new();
    let mut n = 0u64;
    let t0 = Instant::now();
    c.bench_function(name, |b| {
        b.iter(|| {
            n += 1;
            let now = t0 + Duration::from_micros(500 * n);
            out.clear();
            p.on_message(now, uac, invite(n), &mut out);
            let fwd = Message::parse(out[1].data.clone()).unwrap();
            let route = fwd.get(HeaderName::RecordRoute).unwrap_or("").to_string();
            p.on_message(now, uas, reply(&fwd, 180, "Ringing", false), &mut out);
            p.on_message(now, uas, reply(&fwd, 200, "OK", true), &mut out);
            p.on_message(now, uac, in_dialog("ACK", n, 1, &route), &mut out);
            out.clear();
            p.on_message(now, uac, in_dialog("BYE", n, 2, &route), &mut out);
            let bye = Message::parse(out[0].data.clone()).unwrap();
            assert!(bye.is_request(), "the BYE is relayed");
            p.on_message(now, uas, reply(&bye, 200, "OK", false), &mut out);
            if n.is_multiple_of(64) {
                p.on_timers(now, &mut out);
                if let Some(c) = &cdrs {
                    assert_eq!(c.take().len(), 64, "one record per call");
                }
            }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
