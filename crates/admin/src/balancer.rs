//! Balancer methods of the management API: `lb_list`, `lb_resize`, `lb_status` and the
//! OpenSIPS 4 `load_balancer:*` aliases.

use serde_json::{json, Value};
use sip_proxy::balancer::Balancer;

use crate::AdminState;

type RpcResult = Result<Value, (i64, String)>;

fn balancer(st: &AdminState) -> Result<&Balancer, (i64, String)> {
    st.balancer.as_deref().ok_or((
        -32000,
        "the balancer is not configured (no [balancer] section)".into(),
    ))
}

fn text(params: &Value, name: &str, pos: usize) -> Result<String, (i64, String)> {
    match params.get(name).or(params.get(pos)) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err((-32602, format!("missing parameter {name}"))),
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
            let uri = text(params, "destination", 0)?;
            let res = text(params, "resource", 1)?;
            let cap: i64 = text(params, "capacity", 2)?
                .trim()
                .parse()
                .map_err(|_| (-32602, "capacity must be an integer".to_string()))?;
            b.resize(&uri, &res, cap).map_err(|e| (-32602, e))?;
            Ok(json!({ "destination": uri, "resource": res, "max": cap }))
        })(),
        "lb_status" | "load_balancer:status" => (|| {
            let b = balancer(st)?;
            let uri = text(params, "destination", 0)?;
            let on = match params.get("status").or(params.get(1)) {
                Some(Value::Number(n)) => n.as_i64() != Some(0),
                Some(Value::Bool(x)) => *x,
                Some(Value::String(s)) if s == "1" || s == "on" || s == "enable" => true,
                Some(Value::String(s)) if s == "0" || s == "off" || s == "disable" => false,
                _ => return Err((-32602, "status must be 1/on or 0/off".to_string())),
            };
            b.set_enabled(&uri, on).map_err(|e| (404, e))?;
            Ok(json!({ "destination": uri, "enabled": on }))
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
