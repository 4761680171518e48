//! Number routing methods of the management API, with OpenSIPS' names: `dr_reload`,
//! `dr_gw_status`, `dr_number_routing` (drouting), `dp_reload`, `dp_translate` (dialplan),
//! and the OpenSIPS 4 `drouting:*` / `dialplan:*` aliases.

use serde_json::{json, Value};
use sip_proxy::dispatcher::DestState;
use sip_proxy::numbers::routing::Numbers;

use crate::AdminState;

type RpcResult = Result<Value, (i64, String)>;

fn numbers(st: &AdminState) -> Result<&Numbers, (i64, String)> {
    st.numbers.as_deref().ok_or((
        -32000,
        "number routing is not configured (no [numbers] section)".into(),
    ))
}

/// A parameter by name (`a|b`) or position, as text.
fn text(params: &Value, name: &str, pos: usize) -> Option<String> {
    match name
        .split('|')
        .find_map(|n| params.get(n))
        .or(params.get(pos))
    {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

fn need(params: &Value, name: &str, pos: usize) -> Result<String, (i64, String)> {
    text(params, name, pos).ok_or_else(|| {
        (
            -32602,
            format!(
                "missing parameter {}",
                name.split('|').next().unwrap_or(name)
            ),
        )
    })
}

fn int(params: &Value, name: &str, pos: usize) -> Result<i64, (i64, String)> {
    let v = need(params, name, pos)?;
    v.trim().parse().map_err(|_| {
        (
            -32602,
            format!(
                "{} must be an integer, got {v:?}",
                name.split('|').next().unwrap_or(name)
            ),
        )
    })
}

fn reload(st: &AdminState) -> RpcResult {
    numbers(st)?;
    let f = st
        .numbers_reload
        .as_ref()
        .ok_or((-32000, "reload is not available".to_string()))?;
    f().map(|summary| json!({ "reloaded": summary }))
        .map_err(|e| (-32000, e))
}

fn gateway_json(n: &Numbers, gwid: &str) -> Option<Value> {
    let gws = n.gateways();
    let g = gws.get(gwid)?;
    let t = n.tables();
    let row = t.drouting.gateways().iter().find(|x| x.gwid == gwid);
    Some(json!({
        "ID": gwid,
        "IP": row.map(|r| r.address.clone()).unwrap_or_default(),
        // OpenSIPS: Active, Inactive (by probing or traffic), Disabled (by an operator)
        "State": match g.health.state() {
            DestState::Active | DestState::Draining => "Active",
            DestState::Disabled => "Disabled",
            DestState::Inactive | DestState::Probing => "Inactive",
        },
        "state": g.health.state().as_str(),
        "attempts": g.attempts.load(std::sync::atomic::Ordering::Relaxed),
        "failures": g.failures.load(std::sync::atomic::Ordering::Relaxed),
    }))
}

/// Runs a number routing method, or `None` when `method` is not one.
pub(crate) fn call(st: &AdminState, method: &str, params: &Value) -> Option<RpcResult> {
    Some(match method {
        "dr_reload" | "drouting:reload" | "dp_reload" | "dialplan:reload" => reload(st),
        "dr_gw_status" | "drouting:gw_status" => (|| {
            let n = numbers(st)?;
            let Some(gwid) = text(params, "gw_id|gateway", 0) else {
                let gws = n.gateways();
                let mut ids: Vec<&String> = gws.keys().collect();
                ids.sort();
                let list: Vec<Value> = ids.iter().filter_map(|id| gateway_json(n, id)).collect();
                return Ok(json!({ "Gateways": list }));
            };
            let Some(status) = text(params, "status", 1) else {
                return gateway_json(n, &gwid).ok_or((404, format!("no gateway {gwid}")));
            };
            // OpenSIPS: 0 disable, 1 enable, 2 probing (ours: a state name too)
            let s = match status.as_str() {
                "0" | "off" | "disabled" => DestState::Disabled,
                "1" | "on" | "active" => DestState::Active,
                "2" | "probing" => DestState::Probing,
                other => {
                    return Err((
                        -32602,
                        format!("status {other:?}: 0/off, 1/on or 2/probing"),
                    ))
                }
            };
            n.set_gateway_state(&gwid, s)
                .map_err(|e| (404, e.to_string()))?;
            tracing::info!(
                gateway = gwid,
                state = s.as_str(),
                "gateway state set by operator"
            );
            gateway_json(n, &gwid).ok_or((404, format!("no gateway {gwid}")))
        })(),
        "dr_number_routing" | "drouting:number_routing" => (|| {
            let n = numbers(st)?;
            let group = match text(params, "groupid|group", 0) {
                Some(g) => g
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| (-32602, format!("groupid must be an integer, got {g:?}")))?,
                None => 0,
            };
            let number = need(params, "number", 1)?;
            let t = n.tables();
            match t.drouting.route(group, &number, 0) {
                Some(r) => Ok(json!({
                    "rule": r.rule,
                    "prefix": r.prefix,
                    "gateways": r.gateways.iter().map(|g| json!({ "ID": g.gwid, "IP": g.address, "number": g.rewrite(&number) })).collect::<Vec<_>>(),
                })),
                None => Err((404, format!("no rule of group {group} matches {number}"))),
            }
        })(),
        "dp_translate" | "dialplan:translate" => (|| {
            let n = numbers(st)?;
            let dpid = int(params, "dpid", 0)?;
            let input = need(params, "input", 1)?;
            let t = n.tables();
            match t.dialplan.translate(dpid, &input) {
                Some(tr) => {
                    Ok(json!({ "Output": tr.output, "ATTRIBUTES": tr.attrs, "rule": tr.rule }))
                }
                None => Err((404, format!("no rule of dialplan {dpid} matches {input:?}"))),
            }
        })(),
        _ => return None,
    })
}
