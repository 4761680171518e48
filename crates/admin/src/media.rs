//! rtpengine management: `rtpengine_show`, `rtpengine_enable`, `rtpengine_reload` (OpenSIPS
//! names; Kamailio's `rtpengine.show`, `rtpengine.enable`, `rtpengine.reload`,
//! `rtpengine.ping` too) and the per-instance series of `/metrics`.

use serde_json::{json, Value};

use crate::AdminState;

/// Answers the media methods; `None` for other methods.
pub fn call(st: &AdminState, method: &str, params: &Value) -> Option<Result<Value, (i64, String)>> {
    let m = method
        .strip_prefix("rtpengine.")
        .or_else(|| method.strip_prefix("rtpengine:"))
        .map(|m| format!("rtpengine_{m}"));
    let method = m.as_deref().unwrap_or(method);
    if !method.starts_with("rtpengine_") {
        return None;
    }
    let Some(c) = &st.rtpengine else {
        return Some(Err((
            -32000,
            "no [rtpengine] section: no media relay configured".into(),
        )));
    };
    Some(match method {
        "rtpengine_show" => Ok(show(c, st.proxy.media_calls())),
        "rtpengine_enable" => {
            // OpenSIPS: rtpengine_enable url=udp:... enable=0|1 (url "all": every instance)
            let url = params
                .get("url")
                .or(params.get(0))
                .and_then(Value::as_str)
                .map(str::to_string);
            let on = params.get("enable").or(params.get(1)).and_then(|v| {
                v.as_i64()
                    .map(|i| i != 0)
                    .or_else(|| v.as_bool())
                    .or_else(|| {
                        v.as_str()
                            .and_then(|s| s.parse::<i64>().ok())
                            .map(|i| i != 0)
                    })
            });
            match (url, on) {
                (Some(u), Some(on)) => {
                    let which = (u != "all").then_some(u.as_str());
                    match c.enable(which, on) {
                        0 => Err((-32602, format!("no rtpengine instance {u:?}"))),
                        n => Ok(json!({ "changed": n })),
                    }
                }
                _ => Err((
                    -32602,
                    "rtpengine_enable takes url (an instance's socket, or \"all\") and enable (0 or 1)"
                        .into(),
                )),
            }
        }
        "rtpengine_reload" => match &st.rtpengine_reload {
            Some(f) => f().map(|n| json!({ "instances": n })).map_err(|e| (500, e)),
            None => Err((-32000, "reload is not available".into())),
        },
        "rtpengine_ping" => {
            let c = c.clone();
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(c.ping_all())
            });
            Ok(show(&c, st.proxy.media_calls()))
        }
        _ => Err((-32601, format!("method not found: {method}"))),
    })
}

fn show(c: &rtpengine::Client, calls: usize) -> Value {
    let list: Vec<Value> = c
        .instances()
        .iter()
        .map(|i| {
            let (requests, timeouts, errors) = i.counters();
            json!({
                "socket": i.socket,
                "set": i.set,
                "weight": i.weight,
                "enabled": i.is_enabled(),
                "state": if !i.is_enabled() { "disabled" } else if i.is_alive() { "up" } else { "down" },
                "rtt_ms": i.rtt().as_secs_f64() * 1000.0,
                "calls": i.calls(),
                "requests": requests,
                "timeouts": timeouts,
                "errors": errors,
            })
        })
        .collect();
    json!({ "instances": list, "relayed_calls": calls })
}

/// The per-instance series of `/metrics`.
pub fn metrics_text(c: &rtpengine::Client, s: &mut String) {
    use std::fmt::Write;
    let list = c.instances();
    let _ = writeln!(s, "# HELP switchboard_rtpengine_up rtpengine instance state (1 up, 0 down or disabled)\n# TYPE switchboard_rtpengine_up gauge");
    for i in list.iter() {
        let _ = writeln!(
            s,
            "switchboard_rtpengine_up{{instance=\"{}\",set=\"{}\"}} {}",
            i.socket,
            i.set,
            u8::from(i.usable())
        );
    }
    let _ = writeln!(s, "# HELP switchboard_rtpengine_rtt_seconds round-trip time of the last answered NG request\n# TYPE switchboard_rtpengine_rtt_seconds gauge");
    for i in list.iter() {
        let _ = writeln!(
            s,
            "switchboard_rtpengine_rtt_seconds{{instance=\"{}\"}} {}",
            i.socket,
            i.rtt().as_secs_f64()
        );
    }
    let _ = writeln!(s, "# HELP switchboard_rtpengine_calls calls whose media the instance holds\n# TYPE switchboard_rtpengine_calls gauge");
    for i in list.iter() {
        let _ = writeln!(
            s,
            "switchboard_rtpengine_calls{{instance=\"{}\"}} {}",
            i.socket,
            i.calls()
        );
    }
    let _ = writeln!(s, "# HELP switchboard_rtpengine_requests_total NG requests by outcome (sent, timeout: no answer to any try, error: refused or garbage)\n# TYPE switchboard_rtpengine_requests_total counter");
    for i in list.iter() {
        let (r, t, e) = i.counters();
        for (k, v) in [("sent", r), ("timeout", t), ("error", e)] {
            let _ = writeln!(
                s,
                "switchboard_rtpengine_requests_total{{instance=\"{}\",outcome=\"{k}\"}} {v}",
                i.socket
            );
        }
    }
}
