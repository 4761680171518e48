use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;

use super::*;
use crate::dispatcher::dest::DestState;
use crate::types::Transport;

fn cfg(port: u16, weight: u32, priority: i32) -> DestConfig {
    DestConfig {
        name: None,
        uri: format!("sip:127.0.0.1:{port}").into(),
        transport: Transport::Udp,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        weight,
        priority,
        attrs: String::new(),
        description: String::new(),
        state: DestState::Active,
    }
}

fn req(call: &str, from: &str, to: &str, ruri: &str, extra: &str) -> Message {
    Message::parse(Bytes::from(format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK{call}\r\nFrom: <{from}>;tag=1\r\nTo: <{to}>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
    )))
    .unwrap()
}

fn pick(set: &DestSet, r: &Message, rng: &AtomicU64) -> usize {
    let mut out = vec![];
    set.select(r, rng, 1, &mut out);
    out[0]
}

fn counts(set: &DestSet, n: usize, rng: &AtomicU64) -> HashMap<usize, usize> {
    let mut c = HashMap::new();
    for i in 0..n {
        *c.entry(pick(
            set,
            &req(&format!("c{i}"), "sip:a@h", "sip:b@h", "sip:b@h", ""),
            rng,
        ))
        .or_default() += 1;
    }
    c
}

#[test]
fn every_name_and_opensips_number_parses() {
    for (i, (name, alg)) in NAMES.iter().enumerate() {
        assert_eq!(Algorithm::parse(name).unwrap(), *alg);
        assert_eq!(alg.name(), *name);
        if i <= 10 {
            assert_eq!(Algorithm::parse(&i.to_string()).unwrap(), *alg);
        }
    }
    for bad in ["zigzag", "11", "-1", ""] {
        assert!(Algorithm::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn weighted_round_robin_gives_exact_weight_shares_interleaved() {
    let set = DestSet::new(
        1,
        Algorithm::WeightedRoundRobin,
        None,
        vec![cfg(1, 1, 0), cfg(2, 3, 0)],
    );
    let rng = AtomicU64::new(7);
    let c = counts(&set, 4000, &rng);
    assert_eq!((c[&0], c[&1]), (1000, 3000));
    // smooth: never four in a row on the heavy one
    let seq: Vec<usize> = (0..8)
        .map(|i| {
            pick(
                &set,
                &req(&format!("s{i}"), "sip:a@h", "sip:b@h", "sip:b@h", ""),
                &rng,
            )
        })
        .collect();
    assert!(seq.windows(4).all(|w| w.contains(&0)), "{seq:?}");
}

#[test]
fn weighted_random_follows_weights() {
    let set = DestSet::new(
        1,
        Algorithm::WeightedRandom,
        None,
        vec![cfg(1, 1, 0), cfg(2, 3, 0)],
    );
    let c = counts(&set, 8000, &AtomicU64::new(99));
    let share = c[&1] as f64 / 8000.0;
    assert!((share - 0.75).abs() < 0.03, "{share}");
}

#[test]
fn random_and_round_robin_use_every_destination() {
    for alg in [Algorithm::Random, Algorithm::RoundRobin] {
        let set = DestSet::new(1, alg, None, vec![cfg(1, 1, 0), cfg(2, 9, 0), cfg(3, 1, 0)]);
        let c = counts(&set, 3000, &AtomicU64::new(5));
        for d in 0..3 {
            let share = c[&d] as f64 / 3000.0;
            assert!((share - 1.0 / 3.0).abs() < 0.05, "{alg:?} {d} {share}");
        }
    }
}

#[test]
fn hash_algorithms_keep_a_key_on_one_destination() {
    let dests = || vec![cfg(1, 1, 0), cfg(2, 1, 0), cfg(3, 1, 0)];
    let rng = AtomicU64::new(1);
    type MakeReq = Box<dyn Fn(usize, usize) -> Message>;
    let cases: Vec<(Algorithm, MakeReq)> = vec![
        (
            Algorithm::HashCallId,
            Box::new(|k, i| {
                req(
                    &format!("call{k}"),
                    &format!("sip:f{i}@h"),
                    &format!("sip:t{i}@h"),
                    &format!("sip:r{i}@h"),
                    "",
                )
            }),
        ),
        (
            Algorithm::HashFrom,
            Box::new(|k, i| {
                req(
                    &format!("c{k}-{i}"),
                    &format!("sip:f{k}@h"),
                    &format!("sip:t{i}@h"),
                    &format!("sip:r{i}@h"),
                    "",
                )
            }),
        ),
        (
            Algorithm::HashTo,
            Box::new(|k, i| {
                req(
                    &format!("c{k}-{i}"),
                    &format!("sip:f{i}@h"),
                    &format!("sip:t{k}@h"),
                    &format!("sip:r{i}@h"),
                    "",
                )
            }),
        ),
        (
            Algorithm::HashRuri,
            Box::new(|k, i| {
                req(
                    &format!("c{k}-{i}"),
                    &format!("sip:f{i}@h"),
                    &format!("sip:t{i}@h"),
                    &format!("sip:r{k}@h"),
                    "",
                )
            }),
        ),
        (
            Algorithm::HashAuthUser,
            Box::new(|k, i| {
                req(&format!("c{k}-{i}"), "sip:a@h", "sip:b@h", "sip:b@h", &format!("Proxy-Authorization: Digest username=\"user{k}\", realm=\"r\", nonce=\"{i}\"\r\n"))
            }),
        ),
        (
            Algorithm::HashValue,
            Box::new(|k, i| {
                req(
                    &format!("c{k}-{i}"),
                    "sip:a@h",
                    "sip:b@h",
                    "sip:b@h",
                    &format!("X-Account: acct{k}\r\n"),
                )
            }),
        ),
    ];
    for (alg, make) in cases {
        let set = DestSet::new(1, alg, Some("X-Account".into()), dests());
        let mut used = std::collections::HashSet::new();
        for k in 0..30 {
            let first = pick(&set, &make(k, 0), &rng);
            for i in 1..5 {
                assert_eq!(
                    pick(&set, &make(k, i), &rng),
                    first,
                    "{alg:?} key {k} moved"
                );
            }
            used.insert(first);
        }
        assert_eq!(used.len(), 3, "{alg:?} spreads keys over all destinations");
    }
}

#[test]
fn hash_auth_user_without_credentials_falls_back_to_round_robin() {
    let set = DestSet::new(
        1,
        Algorithm::HashAuthUser,
        None,
        vec![cfg(1, 1, 0), cfg(2, 1, 0)],
    );
    let c = counts(&set, 100, &AtomicU64::new(1));
    assert_eq!((c[&0], c[&1]), (50, 50));
}

#[test]
fn priority_is_serial_and_skips_unavailable() {
    let set = DestSet::new(
        1,
        Algorithm::Priority,
        None,
        vec![cfg(1, 1, 1), cfg(2, 1, 10), cfg(3, 1, 5)],
    );
    let rng = AtomicU64::new(1);
    let mut out = vec![];
    set.select(
        &req("p", "sip:a@h", "sip:b@h", "sip:b@h", ""),
        &rng,
        3,
        &mut out,
    );
    assert_eq!(out, vec![1, 2, 0]);
    set.dests[1].set_state(DestState::Inactive);
    out.clear();
    set.select(
        &req("p", "sip:a@h", "sip:b@h", "sip:b@h", ""),
        &rng,
        3,
        &mut out,
    );
    assert_eq!(out, vec![2, 0]);
}

#[test]
fn least_calls_and_latency_pick_the_lowest() {
    let set = DestSet::new(
        1,
        Algorithm::LeastCalls,
        None,
        vec![cfg(1, 1, 0), cfg(2, 1, 0), cfg(3, 1, 0)],
    );
    for _ in 0..3 {
        set.dests[0].call_started();
    }
    set.dests[2].call_started();
    assert_eq!(
        pick(
            &set,
            &req("l", "sip:a@h", "sip:b@h", "sip:b@h", ""),
            &AtomicU64::new(1)
        ),
        1
    );
    let set = DestSet::new(
        1,
        Algorithm::Latency,
        None,
        vec![cfg(1, 1, 0), cfg(2, 1, 0), cfg(3, 1, 0)],
    );
    set.dests[0].record_rtt(900);
    set.dests[1].record_rtt(300);
    set.dests[2].record_rtt(600);
    assert_eq!(
        pick(
            &set,
            &req("l", "sip:a@h", "sip:b@h", "sip:b@h", ""),
            &AtomicU64::new(1)
        ),
        1
    );
}

#[test]
fn relative_weight_only_counts_active_destinations() {
    let set = DestSet::new(
        1,
        Algorithm::RelativeWeight,
        None,
        vec![cfg(1, 1, 0), cfg(2, 2, 0), cfg(3, 1, 0)],
    );
    set.dests[1].set_state(DestState::Inactive);
    let c = counts(&set, 4000, &AtomicU64::new(3));
    assert!(!c.contains_key(&1));
    let share = c[&0] as f64 / 4000.0;
    assert!((share - 0.5).abs() < 0.04, "{share}");
}

#[test]
fn candidates_exclude_unavailable_destinations_and_respect_max_attempts() {
    for alg in [
        Algorithm::HashCallId,
        Algorithm::WeightedRoundRobin,
        Algorithm::RoundRobin,
        Algorithm::Random,
        Algorithm::WeightedRandom,
        Algorithm::LeastCalls,
    ] {
        let set = DestSet::new(
            1,
            alg,
            None,
            vec![cfg(1, 1, 0), cfg(2, 1, 0), cfg(3, 1, 0), cfg(4, 1, 0)],
        );
        set.dests[1].set_state(DestState::Draining);
        set.dests[3].set_state(DestState::Disabled);
        for k in 0..50 {
            let mut out = vec![];
            set.select(
                &req(&format!("x{k}"), "sip:a@h", "sip:b@h", "sip:b@h", ""),
                &AtomicU64::new(k + 1),
                2,
                &mut out,
            );
            let mut sorted = out.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 2], "{alg:?}");
        }
    }
    let set = DestSet::new(1, Algorithm::RoundRobin, None, vec![cfg(1, 1, 0)]);
    set.dests[0].set_state(DestState::Inactive);
    let mut out = vec![];
    set.select(
        &req("none", "sip:a@h", "sip:b@h", "sip:b@h", ""),
        &AtomicU64::new(1),
        3,
        &mut out,
    );
    assert!(out.is_empty());
}

#[test]
fn hash_value_works_on_a_known_header_too() {
    let set = DestSet::new(
        1,
        Algorithm::HashValue,
        Some("Subject".into()),
        vec![cfg(1, 1, 0), cfg(2, 1, 0), cfg(3, 1, 0)],
    );
    let rng = AtomicU64::new(1);
    let first = pick(
        &set,
        &req("s0", "sip:a@h", "sip:b@h", "sip:b@h", "Subject: same\r\n"),
        &rng,
    );
    for i in 1..30 {
        assert_eq!(
            pick(
                &set,
                &req(
                    &format!("s{i}"),
                    "sip:a@h",
                    "sip:b@h",
                    "sip:b@h",
                    "Subject: same\r\n"
                ),
                &rng
            ),
            first
        );
    }
}
