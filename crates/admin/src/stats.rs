//! `get_statistics` with the OpenSIPS statistics groups (`core:`, `tm:`, `dialog:`,
//! `usrloc:`, `load_balancer:`, `dispatcher:`, `acc:`), the names an OpenSIPS dashboard
//! asks for, and `sip:` with every counter of ours.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::AdminState;

/// The groups OpenSIPS users ask for, and ours.
pub const GROUPS: [&str; 8] = [
    "core",
    "tm",
    "dialog",
    "usrloc",
    "load_balancer",
    "dispatcher",
    "acc",
    "sip",
];

/// Every statistic: (group, name, value). A group whose feature is off has none.
pub(crate) fn groups(st: &AdminState) -> Vec<(&'static str, String, u64)> {
    let ours = crate::statistics(st);
    let get = |n: &str| ours.iter().find(|s| s.0 == n).map_or(0, |s| s.2);
    let mut v: Vec<(&'static str, String, u64)> = Vec::new();
    let mut add = |g: &'static str, n: &str, val: u64| v.push((g, n.to_string(), val));
    for (n, ours) in [
        ("rcv_requests", "rcv_requests"),
        ("rcv_replies", "rcv_replies"),
        ("fwd_requests", "fwd_requests"),
        ("fwd_replies", "fwd_replies"),
        ("drop_requests", "dropped"),
        ("err_requests", "bad_messages"),
    ] {
        add("core", n, get(ours));
    }
    for (n, ours) in [
        ("received_replies", "rcv_replies"),
        ("relayed_replies", "fwd_replies"),
        ("local_replies", "local_replies"),
        ("inuse_transactions", "active_transactions"),
        ("retransmissions_absorbed", "retransmissions_absorbed"),
        ("branch_timeouts", "branch_timeouts"),
        ("failovers", "failovers"),
        ("transport_errors", "transport_errors"),
    ] {
        add("tm", n, get(ours));
    }
    if let Some(d) = st.proxy.dialogs() {
        let list = d.list();
        let early = list
            .iter()
            .filter(|x| x.state == sip_proxy::dialog::DialogState::Early)
            .count() as u64;
        add("dialog", "active_dialogs", list.len() as u64 - early);
        add("dialog", "early_dialogs", early);
        add("dialog", "expired_dialogs", get("dialogs_timed_out"));
        add("dialog", "refused_requests", get("dialogs_refused"));
    }
    if let Some(r) = st.proxy.registrar() {
        let (aors, contacts) = r.counts();
        add("usrloc", "registered_users", aors as u64);
        add("usrloc", "location-users", aors as u64);
        add("usrloc", "location-contacts", contacts as u64);
        add("usrloc", "subscribers", r.subscriber_count() as u64);
    }
    if let Some(b) = &st.balancer {
        let nodes = b.nodes();
        add("load_balancer", "nodes", nodes.len() as u64);
        add(
            "load_balancer",
            "nodes_up",
            nodes.iter().filter(|n| n.health().selectable()).count() as u64,
        );
        add("load_balancer", "active_calls", b.active_calls() as u64);
    }
    if let Some(d) = &st.dispatcher {
        let t = d.table();
        let all: Vec<_> = t.sets.iter().flat_map(|s| s.dests.iter()).collect();
        add("dispatcher", "sets", t.sets.len() as u64);
        add("dispatcher", "destinations", all.len() as u64);
        add(
            "dispatcher",
            "destinations_up",
            all.iter().filter(|d| d.selectable()).count() as u64,
        );
    }
    if let Some(c) = st.proxy.cdrs() {
        add("acc", "answered_calls", c.answered.load(Ordering::Relaxed));
        add("acc", "missed_calls", c.missed.load(Ordering::Relaxed));
    }
    for (n, _, val, _) in &ours {
        add("sip", n, *val);
    }
    v
}

/// The statistics `filter` names: `all`, a group (`tm:`), one statistic (`tm:local_replies`)
/// or a bare name (in whichever group has it). A group or name that does not exist is an
/// error, not an empty answer.
pub(crate) fn get(
    all: &[(&'static str, String, u64)],
    filter: &[String],
) -> Result<Value, (i64, String)> {
    let mut m = serde_json::Map::new();
    for f in filter {
        let f = f.trim();
        let hits: Vec<&(&str, String, u64)> = if f == "all" {
            all.iter().collect()
        } else if let Some((g, name)) = f.split_once(':') {
            if !GROUPS.contains(&g) {
                return Err((
                    -32602,
                    format!(
                        "unknown statistics group {g}: (groups: {})",
                        GROUPS.map(|g| format!("{g}:")).join(" ")
                    ),
                ));
            }
            let in_group = all.iter().filter(|s| s.0 == g);
            if name.is_empty() {
                in_group.collect()
            } else {
                in_group.filter(|s| s.1 == name).collect()
            }
        } else {
            all.iter().filter(|s| s.1 == f).collect()
        };
        if hits.is_empty() && f.split_once(':').is_none_or(|(_, n)| !n.is_empty()) {
            return Err((-32602, format!("unknown statistic {f}")));
        }
        for (g, n, v) in hits {
            m.insert(format!("{g}:{n}"), json!(v));
        }
    }
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(&'static str, String, u64)> {
        vec![
            ("core", "rcv_requests".into(), 5),
            ("tm", "local_replies".into(), 2),
            ("tm", "inuse_transactions".into(), 1),
            ("sip", "rcv_requests".into(), 5),
            ("sip", "tcp_connections".into(), 3),
        ]
    }

    #[test]
    fn groups_names_and_refusals() {
        let s = sample();
        let v = get(&s, &["tm:".into()]).unwrap();
        assert_eq!(
            v,
            json!({"tm:local_replies": 2, "tm:inuse_transactions": 1})
        );
        let v = get(&s, &["tm:local_replies".into(), "tcp_connections".into()]).unwrap();
        assert_eq!(v, json!({"tm:local_replies": 2, "sip:tcp_connections": 3}));
        let v = get(&s, &["rcv_requests".into()]).unwrap();
        assert_eq!(v, json!({"core:rcv_requests": 5, "sip:rcv_requests": 5}));
        assert_eq!(
            get(&s, &["all".into()]).unwrap().as_object().unwrap().len(),
            5
        );
        let e = get(&s, &["nosuch:".into()]).unwrap_err();
        assert!(
            e.1.contains("unknown statistics group nosuch") && e.1.contains("tm:"),
            "{e:?}"
        );
        let e = get(&s, &["tm:nope".into()]).unwrap_err();
        assert!(e.1.contains("unknown statistic tm:nope"), "{e:?}");
        assert!(get(&s, &["nope".into()]).is_err());
        // a known group whose feature is off answers empty
        assert_eq!(get(&s, &["dialog:".into()]).unwrap(), json!({}));
    }
}
