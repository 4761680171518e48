//! Dialog methods of the management API (OpenSIPS names): `dlg_list`, `dlg_end_dlg`,
//! `profile_get_size`, and the OpenSIPS 4 `dialog:*` aliases.

use std::time::Instant;

use serde_json::{json, Value};
use sip_proxy::dialog::Dialogs;

use crate::AdminState;

type RpcResult = Result<Value, (i64, String)>;

fn dialogs(st: &AdminState) -> Result<&Dialogs, (i64, String)> {
    st.proxy.dialogs().map(|d| d.as_ref()).ok_or((
        -32000,
        "dialog tracking is off ([dialog] enabled = false)".into(),
    ))
}

/// Runs a dialog method, or `None` when `method` is not one.
pub(crate) fn call(st: &AdminState, method: &str, params: &Value) -> Option<RpcResult> {
    Some(match method {
        "dlg_list" | "dialog:list" => dialogs(st).map(|d| {
            let now = Instant::now();
            let list: Vec<Value> = d
                .list()
                .iter()
                .map(|x| {
                    json!({
                        "ID": x.id,
                        "state": x.state.as_str(),
                        "callid": x.call_id(),
                        "from_uri": x.caller_party(),
                        "from_tag": x.from_tag(),
                        "to_uri": x.callee_party(),
                        "to_tag": x.to_tag(),
                        "caller_contact": x.caller_contact(),
                        "callee_contact": x.callee_contact(),
                        "caller_route_set": x.caller_route(),
                        "callee_route_set": x.callee_route(),
                        "node": x.node.as_deref(),
                        "start_time": x.created_unix,
                        "answer_time": x.answered_unix,
                        "timeout_in_s": x.expires_at.saturating_duration_since(now).as_secs(),
                        "session_expires": x.session_expires,
                    })
                })
                .collect();
            json!({ "Dialogs": list })
        }),
        "dlg_end_dlg" | "dialog:end_dlg" => (|| {
            dialogs(st)?;
            let id = match params
                .get("dialog_id")
                .or(params.get("h_id"))
                .or(params.get(0))
            {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.trim().parse().ok(),
                _ => None,
            }
            .ok_or((
                -32602,
                "dialog_id must be a dialog ID from dlg_list".to_string(),
            ))?;
            match st.proxy.end_dialog(Instant::now(), id) {
                Some(d) => Ok(json!({ "ended": id, "callid": d.call_id() })),
                None => Err((404, format!("no dialog {id}"))),
            }
        })(),
        "profile_get_size" | "dialog:profile_get_size" => (|| {
            let d = dialogs(st)?;
            let (total, per) = d.counts();
            let profile = params
                .get("profile")
                .or(params.get(0))
                .and_then(Value::as_str);
            let value = params
                .get("value")
                .or(params.get(1))
                .and_then(Value::as_str);
            match (profile, value) {
                (None | Some("total"), _) => Ok(json!({ "profile": "total", "count": total })),
                (Some("node"), Some(v)) => Ok(
                    json!({ "profile": "node", "value": v, "count": per.get(v).copied().unwrap_or(0) }),
                ),
                (Some("node"), None) => {
                    let m: serde_json::Map<String, Value> =
                        per.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                    Ok(json!({ "profile": "node", "values": m }))
                }
                (Some(p), _) => Err((-32602, format!("unknown profile {p:?} (total, node)"))),
            }
        })(),
        _ => return None,
    })
}
