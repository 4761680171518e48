//! Dispatcher methods of the management API: `ds_list`, `ds_set_state`, `ds_reload`,
//! `ds_add`, `ds_remove`, with the OpenSIPS 4 names (`dispatcher:list`, ...) as aliases.
//! Parameters are accepted by name or by position.

use serde_json::{json, Value};
use sip_proxy::dispatcher::{DestState, Dispatcher};

use crate::AdminState;

type RpcResult = Result<Value, (i64, String)>;

/// A parameter by name (`a|b`: OpenSIPS' name, then ours) or by position.
fn param<'a>(params: &'a Value, name: &str, pos: usize) -> Option<&'a Value> {
    name.split('|')
        .find_map(|n| params.get(n))
        .or_else(|| params.get(pos))
}

/// The name an error message gives (OpenSIPS' name).
fn first(name: &str) -> &str {
    name.split('|').next().unwrap_or(name)
}

fn str_param(params: &Value, name: &str, pos: usize) -> Result<String, (i64, String)> {
    match param(params, name, pos) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err((
            -32602,
            format!("{} must be a string, got {other}", first(name)),
        )),
        None => Err((-32602, format!("missing parameter {}", first(name)))),
    }
}

fn int_param(
    params: &Value,
    name_all: &str,
    pos: usize,
    default: Option<i64>,
) -> Result<i64, (i64, String)> {
    let name = first(name_all);
    match param(params, name_all, pos) {
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or((-32602, format!("{name} must be an integer"))),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| (-32602, format!("{name} must be an integer, got {s:?}"))),
        Some(other) => Err((-32602, format!("{name} must be an integer, got {other}"))),
        None => default.ok_or((-32602, format!("missing parameter {name}"))),
    }
}

/// The table as JSON.
pub fn list(d: &Dispatcher) -> Value {
    let t = d.table();
    let sets: Vec<Value> = t
        .sets
        .iter()
        .map(|s| {
            let dests: Vec<Value> = s
                .dests
                .iter()
                .map(|d| {
                    json!({
                        "uri": &*d.cfg.uri,
                        "state": d.state().as_str(),
                        "weight": d.cfg.weight,
                        "priority": d.cfg.priority,
                        "attrs": d.cfg.attrs,
                        "description": d.cfg.description,
                        "calls": d.active_calls(),
                        "failures": d.failures(),
                        "rtt_ms": d.rtt_us() as f64 / 1000.0,
                    })
                })
                .collect();
            json!({"id": s.id, "algorithm": s.algorithm.name(), "destinations": dests})
        })
        .collect();
    json!({"default_set": d.default_set(), "sets": sets})
}

/// Runs a dispatcher method, or `None` when `method` is not one.
pub fn call(st: &AdminState, method: &str, params: &Value) -> Option<RpcResult> {
    let name = method
        .strip_prefix("dispatcher:")
        .map(|m| format!("ds_{m}"))
        .unwrap_or_else(|| method.to_string());
    if !matches!(
        name.as_str(),
        "ds_list" | "ds_set_state" | "ds_reload" | "ds_add" | "ds_remove"
    ) {
        return None;
    }
    let Some(d) = &st.dispatcher else {
        return Some(Err((-32000, "no dispatcher configured".into())));
    };
    Some(match name.as_str() {
        "ds_list" => Ok(list(d)),
        "ds_set_state" => (|| {
            let state_s = str_param(params, "state", 0)?;
            let state = DestState::parse(&state_s).ok_or((
                -32602,
                format!(
                    "unknown state {state_s:?} (active, inactive, probing, disabled, draining)"
                ),
            ))?;
            // OpenSIPS: state, group, address
            let set = int_param(params, "group|set", 1, None)?;
            let uri = str_param(params, "address|destination", 2)?;
            d.set_state(set, &uri, state)
                .map_err(|e| (-32001, e.to_string()))?;
            Ok(json!({"set": set, "destination": uri, "state": state.as_str()}))
        })(),
        "ds_reload" => (|| {
            let inherit = match param(params, "inherit_state", 0) {
                None => true,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err((
                        -32602,
                        format!("inherit_state must be true or false, got {other}"),
                    ))
                }
            };
            let reload = st
                .reload
                .as_ref()
                .ok_or((-32000, "reload is not available".to_string()))?;
            let n = reload(inherit).map_err(|e| (-32001, e))?;
            Ok(json!({"destinations": n, "inherit_state": inherit}))
        })(),
        "ds_add" => (|| {
            // Kamailio's dispatcher.add: group, address, ...
            let set = int_param(params, "group|set", 0, None)?;
            let uri = str_param(params, "address|uri", 1)?;
            let weight = int_param(params, "weight", 2, Some(1))?;
            let priority = int_param(params, "priority", 3, Some(0))?;
            let attrs = str_param(params, "attrs", 4).unwrap_or_default();
            let description = str_param(params, "description", 5).unwrap_or_default();
            let parse = st
                .parse_destination
                .as_ref()
                .ok_or((-32000, "adding is not available".to_string()))?;
            let dest =
                parse(&uri, weight, priority, &attrs, &description).map_err(|e| (-32602, e))?;
            if set < 0 {
                return Err((-32602, format!("set {set} must not be negative")));
            }
            d.add_destination(set, dest.clone())
                .map_err(|e| (-32001, e.to_string()))?;
            if let Some(persist) = &st.store_add {
                if let Err(e) = persist(set, &dest) {
                    let _ = d.remove_destination(set, &uri);
                    return Err((-32002, format!("not added: {e}")));
                }
            }
            Ok(json!({"set": set, "added": uri}))
        })(),
        "ds_remove" => (|| {
            let set = int_param(params, "group|set", 0, None)?;
            let uri = str_param(params, "address|uri", 1)?;
            d.remove_destination(set, &uri)
                .map_err(|e| (-32001, e.to_string()))?;
            if let Some(persist) = &st.store_remove {
                persist(set, &uri).map_err(|e| {
                    (
                        -32002,
                        format!("removed from the running table, but not from the database: {e}"),
                    )
                })?;
            }
            Ok(json!({"set": set, "removed": uri}))
        })(),
        _ => unreachable!("filtered above"),
    })
}
