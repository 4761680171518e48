//! `admin`: the management HTTP server — JSON-RPC 2.0 on `POST /mi` (OpenSIPS MI names)
//! and Prometheus text on `GET /metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sip_proxy::Proxy;

/// What the management API reads.
pub struct AdminState {
    pub proxy: Arc<Proxy>,
    pub started: Instant,
    /// Extra gauges supplied by the binary (open connections, ...).
    pub gauges: Box<dyn Fn() -> Vec<(&'static str, &'static str, u64)> + Send + Sync>,
}

/// Builds the HTTP router.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/mi", post(mi))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the API until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AdminState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(l, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

fn statistics(st: &AdminState) -> Vec<(String, String, u64, &'static str)> {
    let mut v: Vec<(String, String, u64, &'static str)> = st
        .proxy
        .stats()
        .snapshot()
        .into_iter()
        .map(|s| (s.name.to_string(), s.help.to_string(), s.value, "counter"))
        .collect();
    v.push((
        "active_transactions".into(),
        "proxy contexts with live transactions".into(),
        st.proxy.active_contexts() as u64,
        "gauge",
    ));
    for (n, h, val) in (st.gauges)() {
        v.push((n.into(), h.into(), val, "gauge"));
    }
    v
}

/// Runs one JSON-RPC call.
fn call(st: &AdminState, method: &str, params: &Value) -> Result<Value, (i64, String)> {
    match method {
        "version" | "core:version" => {
            Ok(json!({ "Server": format!("switchboard {}", env!("CARGO_PKG_VERSION")) }))
        }
        "uptime" | "core:uptime" => Ok(json!({ "Up time": st.started.elapsed().as_secs() })),
        "get_statistics" | "core:get_statistics" | "statistics:get" => {
            let filter: Vec<String> = match params
                .get("statistics")
                .or(params.get(0))
                .cloned()
                .unwrap_or(json!(["all"]))
            {
                Value::Array(a) => a
                    .into_iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                Value::String(s) => vec![s],
                _ => {
                    return Err((
                        -32602,
                        "statistics must be a list of names or \"all\"".into(),
                    ))
                }
            };
            let all = filter
                .iter()
                .any(|f| f == "all" || f == "core:" || f == "sip:");
            let mut m = serde_json::Map::new();
            for (name, _, v, _) in statistics(st) {
                if all || filter.iter().any(|f| f == &name) {
                    m.insert(format!("sip:{name}"), json!(v));
                }
            }
            Ok(Value::Object(m))
        }
        "which" | "core:which" => Ok(json!(["version", "uptime", "get_statistics", "which"])),
        _ => Err((-32601, format!("method not found: {method}"))),
    }
}

fn one(st: &AdminState, req: Value) -> Value {
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = req.get("method").and_then(Value::as_str) else {
        return json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32600, "message": "invalid request: no method"}});
    };
    if req.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32600, "message": "invalid request: jsonrpc must be \"2.0\""}});
    }
    let params = req.get("params").cloned().unwrap_or(Value::Null);
    match call(st, method, &params) {
        Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
        Err((code, message)) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        }
    }
}

async fn mi(State(st): State<Arc<AdminState>>, body: String) -> impl IntoResponse {
    let req: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            return Json(
                json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": format!("parse error: {e}")}}),
            )
        }
    };
    match req {
        Value::Array(batch) if !batch.is_empty() => Json(Value::Array(
            batch.into_iter().map(|r| one(&st, r)).collect(),
        )),
        Value::Object(_) => Json(one(&st, req)),
        _ => Json(
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "invalid request"}}),
        ),
    }
}

async fn metrics(State(st): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut s = String::with_capacity(2048);
    for (name, help, v, kind) in statistics(&st) {
        let name = format!(
            "switchboard_{name}{}",
            if kind == "counter" { "_total" } else { "" }
        );
        s.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    }
    s.push_str(&format!("# HELP switchboard_uptime_seconds seconds since start\n# TYPE switchboard_uptime_seconds gauge\nswitchboard_uptime_seconds {}\n", st.started.elapsed().as_secs()));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AdminState {
        let proxy = Arc::new(Proxy::new(
            sip_proxy::ProxyConfig::default(),
            Arc::new(sip_proxy::RoundRobin::new(vec![])),
        ));
        AdminState {
            proxy,
            started: Instant::now(),
            gauges: Box::new(|| vec![("tcp_connections", "open", 3)]),
        }
    }

    #[test]
    fn json_rpc_methods_and_errors() {
        let st = state();
        let r = one(&st, json!({"jsonrpc": "2.0", "id": 1, "method": "version"}));
        assert!(r["result"]["Server"]
            .as_str()
            .unwrap()
            .starts_with("switchboard"));
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 2, "method": "get_statistics", "params": [["tcp_connections"]]}),
        );
        assert_eq!(r["result"]["sip:tcp_connections"], 3);
        assert!(r["result"].get("sip:rcv_requests").is_none());
        let r = one(&st, json!({"jsonrpc": "2.0", "id": 3, "method": "nope"}));
        assert_eq!(r["error"]["code"], -32601);
        let r = one(&st, json!({"id": 4, "method": "uptime"}));
        assert_eq!(r["error"]["code"], -32600);
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 5, "method": "get_statistics", "params": {"statistics": 7}}),
        );
        assert_eq!(r["error"]["code"], -32602);
    }
}
