use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::types::Transport;

fn dc(port: u16) -> DestConfig {
    DestConfig {
        name: None,
        uri: format!("sip:127.0.0.1:{port}").into(),
        transport: Transport::Udp,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        weight: 1,
        priority: 0,
        attrs: String::new(),
        description: String::new(),
        state: DestState::Active,
    }
}

fn set(id: i64, ports: &[u16]) -> SetConfig {
    SetConfig {
        id,
        algorithm: Algorithm::RoundRobin,
        hash_header: None,
        destinations: ports.iter().map(|p| dc(*p)).collect(),
    }
}

fn invite() -> Message {
    Message::parse(Bytes::from_static(b"INVITE sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\r\n")).unwrap()
}

fn probe_cfg() -> ProbeConfig {
    ProbeConfig {
        interval: Duration::from_secs(1),
        threshold_down: 2,
        threshold_up: 2,
        ..ProbeConfig::default()
    }
}

#[test]
fn probing_marks_a_silent_destination_down_within_interval_times_threshold_and_back() {
    let d = Dispatcher::new(vec![set(1, &[5080, 5082])], 1, 3, probe_cfg(), 1);
    let t0 = Instant::now();
    let mut probes = vec![];
    d.due_probes(t0, &mut probes);
    assert_eq!(probes.len(), 2);
    assert_eq!(probes[0].method, "OPTIONS");
    // 5082 answers, 5080 does not
    let ans = |probes: &Vec<Probe>, now| {
        for p in probes.iter().filter(|p| p.target.addr.port() == 5082) {
            d.probe_result(now, p.id, Some(200));
        }
    };
    ans(&probes, t0 + Duration::from_millis(2));
    let mut now = t0;
    for _ in 0..3 {
        now += Duration::from_secs(1);
        probes.clear();
        d.due_probes(now, &mut probes);
        ans(&probes, now + Duration::from_millis(2));
    }
    let t = d.table();
    let s = t.get(1).unwrap();
    assert_eq!(
        s.dests[0].state(),
        DestState::Inactive,
        "two unanswered probes"
    );
    assert_eq!(s.dests[1].state(), DestState::Active);
    assert!(s.dests[1].rtt_us() > 0);
    // only the live one is selected now
    let mut out = vec![];
    d.select(&invite(), &mut out);
    assert_eq!(
        out.iter().map(|d| d.addr.port()).collect::<Vec<_>>(),
        vec![5082]
    );
    // it comes back after two answered probes
    for _ in 0..2 {
        now += Duration::from_secs(1);
        probes.clear();
        d.due_probes(now, &mut probes);
        for p in &probes {
            d.probe_result(now, p.id, Some(200));
        }
    }
    assert_eq!(s.dests[0].state(), DestState::Active);
}

#[test]
fn refused_probe_replies_and_transport_errors_count_as_failures() {
    let mut cfg = probe_cfg();
    cfg.threshold_down = 1;
    cfg.codes = ReplyCodes::parse("403").unwrap();
    let d = Dispatcher::new(vec![set(1, &[5080, 5082, 5084])], 1, 3, cfg, 1);
    let mut probes = vec![];
    d.due_probes(Instant::now(), &mut probes);
    d.probe_result(Instant::now(), probes[0].id, Some(403)); // accepted by config
    d.probe_result(Instant::now(), probes[1].id, Some(404));
    d.probe_result(Instant::now(), probes[2].id, None);
    let t = d.table();
    let states: Vec<_> = t.get(1).unwrap().dests.iter().map(|d| d.state()).collect();
    assert_eq!(
        states,
        vec![DestState::Active, DestState::Inactive, DestState::Inactive]
    );
}

#[test]
fn only_failed_mode_probes_only_down_destinations_and_disabled_is_never_probed() {
    let mut cfg = probe_cfg();
    cfg.mode = ProbeMode::OnlyFailed;
    let d = Dispatcher::new(vec![set(1, &[5080, 5082, 5084])], 1, 3, cfg, 1);
    d.set_state(1, "sip:127.0.0.1:5082", DestState::Inactive)
        .unwrap();
    d.set_state(1, "sip:127.0.0.1:5084", DestState::Disabled)
        .unwrap();
    let mut probes = vec![];
    d.due_probes(Instant::now(), &mut probes);
    assert_eq!(
        probes
            .iter()
            .map(|p| p.target.addr.port())
            .collect::<Vec<_>>(),
        vec![5082]
    );
}

#[test]
fn reload_keeps_the_state_of_surviving_destinations_unless_told_not_to() {
    let d = Dispatcher::new(vec![set(1, &[5080, 5082])], 1, 3, probe_cfg(), 1);
    d.set_state(1, "sip:127.0.0.1:5082", DestState::Draining)
        .unwrap();
    d.call_answered("call-a", &d.table().get(1).unwrap().dests[1].clone());
    assert_eq!(d.reload(vec![set(1, &[5082, 5086])], true), 2);
    let t = d.table();
    let s = t.get(1).unwrap();
    assert_eq!(s.dests[0].state(), DestState::Draining);
    assert_eq!(s.dests[0].active_calls(), 1);
    assert_eq!(s.dests[1].state(), DestState::Active);
    d.reload(vec![set(1, &[5082])], false);
    assert_eq!(
        d.table().get(1).unwrap().dests[0].state(),
        DestState::Active
    );
}

#[test]
fn draining_takes_no_new_calls_and_reports_the_calls_left() {
    let d = Dispatcher::new(vec![set(1, &[5080, 5082])], 1, 3, probe_cfg(), 1);
    let dests = d.table().get(1).unwrap().dests.clone();
    d.call_answered("c1", &dests[0]);
    d.call_answered("c2", &dests[0]);
    d.call_answered("c2", &dests[0]); // a 2xx retransmission does not count twice
    d.set_state(1, "sip:127.0.0.1:5080", DestState::Draining)
        .unwrap();
    for _ in 0..10 {
        let mut out = vec![];
        d.select(&invite(), &mut out);
        assert!(out.iter().all(|c| c.addr.port() == 5082));
    }
    assert_eq!(dests[0].active_calls(), 2);
    d.call_ended("c1");
    d.call_ended("c1");
    assert_eq!(dests[0].active_calls(), 1);
}

#[test]
fn restored_calls_count_on_their_destination_once() {
    use crate::Router;
    let d = Dispatcher::new(vec![set(1, &[5080, 5082])], 1, 3, probe_cfg(), 1);
    let dests = d.table().get(1).unwrap().dests.clone();
    let from = "127.0.0.1:5070".parse().unwrap();
    d.restore_call("r1", Some("sip:127.0.0.1:5082"), from);
    d.restore_call("r1", Some("sip:127.0.0.1:5082"), from);
    d.restore_call("r2", Some("sip:10.9.9.9:5060"), from); // no longer configured
    d.restore_call("r3", None, from); // a call to a registered user
    assert_eq!((dests[0].active_calls(), dests[1].active_calls()), (0, 1));
    d.on_call_ended("r1");
    assert_eq!(dests[1].active_calls(), 0);
}

#[test]
fn set_state_names_unknown_sets_and_destinations() {
    let d = Dispatcher::new(vec![set(1, &[5080])], 1, 3, probe_cfg(), 1);
    assert_eq!(
        d.set_state(9, "sip:127.0.0.1:5080", DestState::Active)
            .unwrap_err(),
        crate::Error::NotFound("no set 9".into())
    );
    let e = d.set_state(1, "sip:nope", DestState::Active).unwrap_err();
    assert!(e.to_string().contains("no destination"));
    assert_eq!((e.side(), e.retryable()), (crate::Side::Downstream, false));
}

#[test]
fn traffic_failures_take_a_destination_down_without_probes() {
    let mut cfg = probe_cfg();
    cfg.interval = Duration::ZERO;
    cfg.threshold_down = 3;
    let d = Dispatcher::new(vec![set(1, &[5080, 5082])], 1, 3, cfg, 1);
    let mut out = vec![];
    d.select(&invite(), &mut out);
    let dead = out.iter().find(|c| c.addr.port() == 5080).unwrap().clone();
    d.on_branch_result(&dead, false);
    d.on_branch_result(&dead, false);
    assert!(super::dest_of(&dead).unwrap().selectable());
    d.on_branch_result(&dead, false);
    assert!(!super::dest_of(&dead).unwrap().selectable());
    let mut probes = vec![];
    d.due_probes(Instant::now(), &mut probes);
    assert!(probes.is_empty(), "interval 0 turns probing off");
}
