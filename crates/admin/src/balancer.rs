//! Balancer methods of the management API: `lb_list`, `lb_resize`, `lb_status` and the
//! OpenSIPS 4 `load_balancer:*` aliases.

use serde_json::{json, Value};
use sip_proxy::balancer::Balancer;
use sip_proxy::dispatcher::DestState;

use crate::AdminState;

type RpcResult = Result<Value, (i64, String)>;

fn balancer(st: &AdminState) -> Result<&Balancer, (i64, String)> {
    st.balancer.as_deref().ok_or((
        -32000,
        "the balancer is not configured (no [balancer] section)".into(),
    ))
}

/// A parameter by name (`a|b`: OpenSIPS' name, then ours) or position, as text.
fn text(params: &Value, name: &str, pos: usize) -> Result<String, (i64, String)> {
    match name
        .split('|')
        .find_map(|n| params.get(n))
        .or(params.get(pos))
    {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err((
            -32602,
            format!(
                "missing parameter {}",
                name.split('|').next().unwrap_or(name)
            ),
        )),
    }
}

/// The node a request names: OpenSIPS' `destination_id` (the table's id), or its URI.
fn node_uri(b: &Balancer, params: &Value) -> Result<String, (i64, String)> {
    let d = text(params, "destination_id|destination", 0)?;
    match d.trim().parse::<i64>() {
        Ok(id) => b
            .nodes()
            .iter()
            .find(|n| n.cfg.id == id)
            .map(|n| n.cfg.uri.to_string())
            .ok_or((404, format!("no node with id {id}"))),
        Err(_) => Ok(d),
    }
}

/// Runs a balancer method, or `None` when `method` is not one.
pub(crate) fn call(st: &AdminState, method: &str, params: &Value) -> Option<RpcResult> {
    Some(match method {
        "lb_list" | "load_balancer:list" => balancer(st).map(|b| {
            let nodes: Vec<Value> = b
                .nodes()
                .iter()
                .map(|n| {
                    json!({
                        "id": n.cfg.id,
                        "group": n.cfg.group,
                        "uri": &*n.cfg.uri,
                        "enabled": n.enabled(),
                        "state": n.health().state().as_str(),
                        "failures": n.health().failures(),
                        "rtt_ms": n.health().rtt_us() as f64 / 1000.0,
                        "description": n.cfg.description,
                        "resources": n.load().iter().map(|(r, cap, used)| {
                            let mut v = json!({"name": r, "max": cap, "load": used});
                            if let Some((_, src)) = n.cfg.live.iter().find(|(l, _)| l == r) {
                                v["source"] = json!(src.to_string());
                                v["reported"] = match n.live_report(r) {
                                    Some(rep) => json!({"max_sessions": rep.max_sessions, "sessions": rep.sessions, "idle_cpu": rep.idle_cpu, "free": rep.free()}),
                                    None => Value::Null,
                                };
                            }
                            v
                        }).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({ "Destinations": nodes, "calls": b.active_calls() })
        }),
        "lb_resize" | "load_balancer:resize" => (|| {
            let b = balancer(st)?;
            // OpenSIPS: destination_id, res_name, new_capacity
            let uri = node_uri(b, params)?;
            let res = text(params, "res_name|resource", 1)?;
            let cap: i64 = text(params, "new_capacity|capacity", 2)?
                .trim()
                .parse()
                .map_err(|_| (-32602, "capacity must be an integer".to_string()))?;
            b.resize(&uri, &res, cap).map_err(|e| match e {
                sip_proxy::Error::NotFound(w) => (404, w),
                e => (-32602, e.to_string()),
            })?;
            Ok(json!({ "destination": uri, "resource": res, "max": cap }))
        })(),
        "lb_status" | "load_balancer:status" => (|| {
            let b = balancer(st)?;
            let uri = node_uri(b, params)?;
            // OpenSIPS: destination_id, new_status 0 off / 1 on; also a state name
            // (draining, active, disabled); without a status, the node's
            let Some(status) = params
                .get("new_status")
                .or(params.get("status"))
                .or(params.get(1))
            else {
                let n = b.nodes().iter().find(|n| *n.cfg.uri == *uri).cloned();
                return n
                    .map(|n| json!({ "destination": uri, "enabled": n.enabled(), "state": n.health().state().as_str() }))
                    .ok_or((404, format!("no node {uri}")));
            };
            let state = match Some(status) {
                Some(Value::Number(n)) if n.as_i64() == Some(0) => DestState::Disabled,
                Some(Value::Number(n)) if n.as_i64() == Some(1) => DestState::Active,
                Some(Value::Bool(x)) if *x => DestState::Active,
                Some(Value::Bool(_)) => DestState::Disabled,
                Some(Value::String(s)) => match s.as_str() {
                    "1" | "on" | "enable" => DestState::Active,
                    "0" | "off" | "disable" => DestState::Disabled,
                    other => DestState::parse(other)
                        .filter(|s| matches!(s, DestState::Active | DestState::Disabled | DestState::Draining))
                        .ok_or((-32602, format!("status {other:?}: 1/on, 0/off, or draining")))?,
                },
                _ => return Err((-32602, "status must be 1/on, 0/off or draining".to_string())),
            };
            b.set_state(&uri, state)
                .map_err(|e| (404, e.to_string()))?;
            Ok(json!({ "destination": uri, "enabled": state != DestState::Disabled, "state": state.as_str() }))
        })(),
        "lb_is_destination" | "load_balancer:is_destination" => (|| {
            let b = balancer(st)?;
            let ip: std::net::IpAddr = text(params, "address", 0)?
                .trim()
                .parse()
                .map_err(|_| (-32602, "address must be an IP address".to_string()))?;
            let port = match params.get("port").or(params.get(1)) {
                None | Some(Value::Null) => 0,
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .filter(|p| *p <= 65535)
                    .ok_or((-32602, "port must be 0-65535 (0: any)".to_string()))? as u16,
            };
            let group = match params.get("group").or(params.get(2)) {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_i64()
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                        .ok_or((-32602, "group must be an integer".to_string()))?,
                ),
            };
            Ok(match b.find_node(ip, port, group) {
                Some(n) => json!({ "is_destination": true, "id": n.cfg.id, "group": n.cfg.group, "uri": &*n.cfg.uri }),
                None => json!({ "is_destination": false }),
            })
        })(),
        "lb_reload" | "load_balancer:reload" => (|| {
            balancer(st)?;
            let f = st
                .lb_reload
                .as_ref()
                .ok_or((-32000, "reload is not available".to_string()))?;
            let n = f().map_err(|e| (-32000, e))?;
            Ok(json!({ "reloaded": n }))
        })(),
        _ => return None,
    })
}
