//! REGISTER load with digest authentication, one AOR per registration (`user<N>`), which SIPp
//! 3.6 cannot do (its `[authentication]` keyword takes no per-call username). Used by
//! `bench/registrar.sh` against switchboard and Kamailio alike.
//!
//! `regload TARGET RATE COUNT [DOMAIN] [PASSWORD] [FIRST]` sends COUNT registrations at RATE
//! per second: REGISTER, 401, REGISTER with MD5 credentials (qop=auth), 200 (or a 200 at
//! once from a registrar without authentication). Retransmits at
//! 500 ms, 1 s, 2 s; gives up after 8 s. Prints one line:
//! `ok=N failed=M p50_ms=.. p99_ms=.. wall_s=..`. Loopback targets only.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_wire::auth::{ha1, Algorithm};
use sip_wire::{HeaderName, Message};

struct Reg {
    user: u64,
    start: Instant,
    sent: Instant,
    retries: u32,
    data: Vec<u8>,
    authed: bool,
}

fn param<'a>(h: &'a str, name: &str) -> Option<&'a str> {
    let i = h.find(&format!("{name}="))? + name.len() + 1;
    let rest = &h[i..];
    Some(match rest.strip_prefix('"') {
        Some(r) => &r[..r.find('"')?],
        None => rest.split([',', ' ']).next()?,
    })
}

fn register(local: SocketAddr, user: u64, domain: &str, cseq: u32, auth: &str) -> Vec<u8> {
    format!(
        "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKrl{user}x{cseq}\r\nFrom: <sip:user{user}@{domain}>;tag=rl{user}\r\nTo: <sip:user{user}@{domain}>\r\nCall-ID: rl{user}@{local}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:user{user}@{local}>\r\n{auth}Max-Forwards: 70\r\nExpires: 3600\r\nUser-Agent: regload\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        eprintln!("usage: regload TARGET RATE COUNT [DOMAIN] [PASSWORD] [FIRST]");
        std::process::exit(2);
    }
    let target: SocketAddr = a[1].parse().expect("TARGET is IP:port");
    assert!(target.ip().is_loopback(), "loopback targets only");
    let rate: f64 = a[2].parse().expect("RATE");
    let count: u64 = a[3].parse().expect("COUNT");
    let domain = a.get(4).cloned().unwrap_or_else(|| "bench.example".into());
    let password = a.get(5).cloned().unwrap_or_else(|| "bench".into());
    let first: u64 = a.get(6).map(|s| s.parse().expect("FIRST")).unwrap_or(0);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let local = sock.local_addr().expect("local addr");
    sock.set_read_timeout(Some(Duration::from_millis(1))).ok();
    let start = Instant::now();
    let mut pending: HashMap<u64, Reg> = HashMap::new();
    let mut lat: Vec<f64> = Vec::with_capacity(count as usize);
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut buf = vec![0u8; 65536];
    let mut last_scan = Instant::now();
    let deadline = start + Duration::from_secs_f64(count as f64 / rate + 20.0);
    while (sent < count || !pending.is_empty()) && Instant::now() < deadline {
        // send what the rate allows by now
        let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(count);
        while sent < due {
            let user = first + sent;
            let data = register(local, user, &domain, 1, "");
            let _ = sock.send_to(&data, target);
            let now = Instant::now();
            pending.insert(
                user,
                Reg {
                    user,
                    start: now,
                    sent: now,
                    retries: 0,
                    data,
                    authed: false,
                },
            );
            sent += 1;
        }
        // read what came back
        for _ in 0..256 {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                break;
            };
            let Ok(m) = Message::parse(Bytes::copy_from_slice(&buf[..n])) else {
                continue;
            };
            let Some(user) = m
                .call_id()
                .strip_prefix("rl")
                .and_then(|c| c.split('@').next())
                .and_then(|u| u.parse::<u64>().ok())
            else {
                continue;
            };
            let code = m.status().unwrap_or(0);
            let Some(r) = pending.get_mut(&user) else {
                continue;
            };
            match code {
                100..=199 => {}
                200..=299 => {
                    // after the credentials, or at once from a registrar without auth
                    lat.push(r.start.elapsed().as_secs_f64() * 1000.0);
                    pending.remove(&user);
                }
                401 if !r.authed => {
                    let Some(ch) = m
                        .all(HeaderName::WwwAuthenticate)
                        .find(|h| h.contains("MD5") || !h.contains("algorithm="))
                    else {
                        failed += 1;
                        pending.remove(&user);
                        continue;
                    };
                    let (Some(realm), Some(nonce)) = (param(ch, "realm"), param(ch, "nonce"))
                    else {
                        failed += 1;
                        pending.remove(&user);
                        continue;
                    };
                    let name = format!("user{}", r.user);
                    let uri = format!("sip:{domain}");
                    let h1 = ha1(Algorithm::Md5, &name, realm, &password);
                    let h2 = Algorithm::Md5.hash_colon(&[b"REGISTER", uri.as_bytes()]);
                    let cnonce = format!("{:x}", r.user);
                    let resp = Algorithm::Md5.hash_colon(&[
                        h1.as_bytes(),
                        nonce.as_bytes(),
                        b"00000001",
                        cnonce.as_bytes(),
                        b"auth",
                        h2.as_bytes(),
                    ]);
                    let auth = format!("Authorization: Digest username=\"{name}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"{cnonce}\"\r\n");
                    r.data = register(local, r.user, &domain, 2, &auth);
                    r.authed = true;
                    r.retries = 0;
                    r.sent = Instant::now();
                    let _ = sock.send_to(&r.data, target);
                }
                401 => {} // a retransmitted challenge
                _ => {
                    failed += 1;
                    pending.remove(&user);
                }
            }
        }
        // retransmissions and give-ups, every 50 ms
        if last_scan.elapsed() >= Duration::from_millis(50) {
            last_scan = Instant::now();
            let now = Instant::now();
            let mut dead = Vec::new();
            for r in pending.values_mut() {
                if now.duration_since(r.start) > Duration::from_secs(8) {
                    dead.push(r.user);
                } else if now.duration_since(r.sent)
                    >= Duration::from_millis(500 << r.retries.min(2))
                {
                    let _ = sock.send_to(&r.data, target);
                    r.sent = now;
                    r.retries += 1;
                }
            }
            for u in dead {
                pending.remove(&u);
                failed += 1;
            }
        }
    }
    failed += pending.len() as u64;
    lat.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "ok={} failed={} p50_ms={:.2} p99_ms={:.2} wall_s={:.2}",
        lat.len(),
        failed,
        pct(0.5),
        pct(0.99),
        start.elapsed().as_secs_f64()
    );
}
