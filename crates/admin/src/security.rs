//! The ban list in the management API: `ban_list`, `ban_add`, `ban_remove` (`auth_unban`,
//! the registrar's older name, lifts a source's bans too).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::AdminState;

type RpcResult = Result<Value, (i64, String)>;

fn ip_param(params: &Value) -> Result<IpAddr, (i64, String)> {
    let v = params
        .get("ip")
        .or_else(|| params.get("source"))
        .or_else(|| params.get(0))
        .ok_or((-32602, "missing parameter ip".to_string()))?;
    let s = v
        .as_str()
        .ok_or((-32602, format!("ip must be a string, got {v}")))?;
    s.trim()
        .parse()
        .map_err(|_| (-32602, format!("{s:?} is not an IP address")))
}

/// Runs a ban-list method, or `None` when `method` is not one.
pub(crate) fn call(st: &AdminState, method: &str, params: &Value) -> Option<RpcResult> {
    let now = Instant::now();
    Some(match method {
        "ban_list" => {
            let bans: Vec<Value> = st
                .proxy
                .pike()
                .map(|p| p.list(now))
                .unwrap_or_default()
                .into_iter()
                .map(|b| json!({"source": b.source, "reason": b.reason, "remaining_s": b.remaining.as_secs(), "strikes": b.strikes}))
                .collect();
            let users: Vec<Value> = st
                .proxy
                .registrar()
                .map(|r| r.user_bans(now))
                .unwrap_or_default()
                .into_iter()
                .map(|(ip, user, left)| json!({"source": ip.to_string(), "user": user, "remaining_s": left.as_secs()}))
                .collect();
            Ok(json!({"bans": bans, "user_bans": users}))
        }
        "ban_add" => (|| {
            let p = st.proxy.pike().ok_or((
                -32000,
                "the flood defence is off ([security] flood_defence = false)".to_string(),
            ))?;
            let ip = ip_param(params)?;
            let secs = match params.get("seconds").or_else(|| params.get(1)) {
                None => 3600,
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .filter(|s| (1..=30 * 86_400).contains(s))
                    .ok_or((-32602, format!("seconds must be 1..=2592000, got {v}")))?,
            };
            p.ban_for(now, ip, Duration::from_secs(secs));
            Ok(json!({"banned": ip.to_string(), "seconds": secs}))
        })(),
        "ban_remove" | "auth_unban" => (|| {
            let ip = ip_param(params)?;
            let user = params.get("user").and_then(Value::as_str);
            let source = user.is_none() && st.proxy.pike().is_some_and(|p| p.unban(now, ip));
            let users = st.proxy.registrar().is_some_and(|r| r.unban(ip, user));
            Ok(json!({"ip": ip.to_string(), "was_banned": source || users}))
        })(),
        _ => return None,
    })
}
