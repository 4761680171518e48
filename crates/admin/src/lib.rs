//! `admin`: the management HTTP server — JSON-RPC 2.0 on `POST /mi` (OpenSIPS MI names)
//! and Prometheus text on `GET /metrics`.
//!
//! Every request must carry `Authorization: Bearer <token>` (the token the binary keeps in
//! `switchboard.token`), and a JSON-RPC call must say `Content-Type: application/json`: a web
//! page open in a browser on the same host can POST `text/plain`, form or multipart bodies to
//! any port without asking, but neither a JSON body nor a header of its own choosing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sip_proxy::dispatcher::{DestConfig, Dispatcher};
use sip_proxy::Proxy;

mod balancer;
mod dialog;
mod dispatcher;
mod media;
mod numbers;
mod registrar;
mod security;
mod stats;

pub use registrar::{Loaded, StoredSecret, SubscriberStore};

/// Re-reads the configuration and reloads the dispatcher; returns the destination count.
pub type ReloadFn = Box<dyn Fn(bool) -> Result<usize, String> + Send + Sync>;
/// Validates a destination given by the API (uri, weight, priority, attrs, description).
pub type ParseDestFn =
    Box<dyn Fn(&str, i64, i64, &str, &str) -> Result<DestConfig, String> + Send + Sync>;

/// What the management API reads.
pub struct AdminState {
    pub proxy: Arc<Proxy>,
    /// The bearer token every request must carry; `None` only with `[management] auth =
    /// false`, which the configuration allows on loopback alone.
    pub token: Option<String>,
    pub started: Instant,
    /// Extra gauges supplied by the binary (open connections, ...).
    pub gauges: Box<dyn Fn() -> Vec<(&'static str, &'static str, u64)> + Send + Sync>,
    /// Labelled series the binary appends to `/metrics` (caught panics per task, the
    /// write-behind queues per table), in Prometheus text.
    pub extra_metrics: Box<dyn Fn(&mut String) + Send + Sync>,
    pub dispatcher: Option<Arc<Dispatcher>>,
    pub reload: Option<ReloadFn>,
    pub parse_destination: Option<ParseDestFn>,
    /// Writes an added destination to the database (source = database).
    pub store_add: Option<StoreAddFn>,
    /// Deletes a removed destination from the database (source = database).
    pub store_remove: Option<StoreRemoveFn>,
    /// The subscriber table (registrar).
    pub subscribers: Option<Box<dyn SubscriberStore>>,
    /// `subscriber_add`/`subscriber_passwd` store HA1 hashes rather than the password unless
    /// the call says otherwise (`[registrar] store_ha1`).
    pub store_ha1: bool,
    /// The resource balancer, when configured.
    pub balancer: Option<Arc<sip_proxy::balancer::Balancer>>,
    /// Re-reads the balancer's nodes (config file or table); returns the node count.
    pub lb_reload: Option<LbReloadFn>,
    /// Number routing, when configured.
    pub numbers: Option<Arc<sip_proxy::numbers::routing::Numbers>>,
    /// Re-reads the number tables (config file or tables); returns a summary.
    pub numbers_reload: Option<NumbersReloadFn>,
    /// `tls_reload`: reads the TLS certificate and key again.
    pub tls_reload: Option<TlsReloadFn>,
    /// The media relay's client, when `[rtpengine]` is configured.
    pub rtpengine: Option<std::sync::Arc<rtpengine::Client>>,
    /// `rtpengine_reload`: reads the instances again; gives their count.
    pub rtpengine_reload: Option<LbReloadFn>,
}

/// `tls_reload`.
pub type TlsReloadFn = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// `dr_reload` / `dp_reload`.
pub type NumbersReloadFn = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

/// `lb_reload`.
pub type LbReloadFn = Box<dyn Fn() -> Result<usize, String> + Send + Sync>;

/// Persists `ds_add`.
pub type StoreAddFn = Box<dyn Fn(i64, &DestConfig) -> Result<(), String> + Send + Sync>;
/// Persists `ds_remove`.
pub type StoreRemoveFn = Box<dyn Fn(i64, &str) -> Result<(), String> + Send + Sync>;

/// Builds the HTTP router.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/mi", post(mi))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the API on a bound listener until `shutdown` resolves (the binary binds first, so
/// a port it cannot have stops the start with a clear error).
pub async fn serve(
    l: tokio::net::TcpListener,
    state: Arc<AdminState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(l, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the management address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Why a request was refused before it reached a method.
fn refuse(code: StatusCode, why: &str) -> axum::response::Response {
    let mut r = (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32001, "message": why}})
            .to_string(),
    )
        .into_response();
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"switchboard\""),
        );
    }
    r
}

/// The bearer token check, in constant time.
fn authorized(st: &AdminState, h: &HeaderMap) -> bool {
    let Some(want) = &st.token else {
        return true;
    };
    let got = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        })
        .map_or("", |(_, t)| t.trim());
    got.len() == want.len()
        && got
            .bytes()
            .zip(want.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// True for `application/json`, with parameters (`; charset=utf-8`) or not.
fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

pub(crate) fn statistics(st: &AdminState) -> Vec<(String, String, u64, &'static str)> {
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
    v.push((
        "reply_cache_bytes".into(),
        "bytes held by the reply cache (retransmissions of REGISTER replies and challenges)".into(),
        st.proxy.reply_cache_bytes() as u64,
        "gauge",
    ));
    if let Some(p) = st.proxy.pike() {
        let now = Instant::now();
        v.push((
            "bans_active".into(),
            "sources banned now (flood, scanner, password guessing, operator)".into(),
            p.list(now).len() as u64,
            "gauge",
        ));
        v.push((
            "flood_sources_tracked".into(),
            "sources the flood defence counts now".into(),
            p.tracked() as u64,
            "gauge",
        ));
        v.push((
            "flood_untracked".into(),
            "requests of new sources not counted: the source table was full".into(),
            p.untracked.load(std::sync::atomic::Ordering::Relaxed),
            "counter",
        ));
    }
    if let Some(r) = st.proxy.registrar() {
        let (failures, foreign) = r.auth_counts();
        v.push((
            "auth_failures".into(),
            "wrong answers to a digest challenge (counted as guesses)".into(),
            failures,
            "counter",
        ));
        v.push((
            "auth_foreign_nonces".into(),
            "credentials with a nonce not issued to their sender (answered, never counted)".into(),
            foreign,
            "counter",
        ));
        v.push((
            "auth_user_bans".into(),
            "usernames banned from a source now".into(),
            r.user_bans(Instant::now()).len() as u64,
            "gauge",
        ));
    }
    v
}

/// Runs one JSON-RPC call.
fn call(st: &AdminState, method: &str, params: &Value) -> Result<Value, (i64, String)> {
    if let Some(r) = dispatcher::call(st, method, params) {
        return r;
    }
    if let Some(r) = registrar::call(st, method, params) {
        return r;
    }
    if let Some(r) = dialog::call(st, method, params) {
        return r;
    }
    if let Some(r) = balancer::call(st, method, params) {
        return r;
    }
    if let Some(r) = security::call(st, method, params) {
        return r;
    }
    if let Some(r) = numbers::call(st, method, params) {
        return r;
    }
    if let Some(r) = media::call(st, method, params) {
        return r;
    }
    match method {
        "version" | "core:version" => {
            Ok(json!({ "Server": format!("switchboard {}", env!("CARGO_PKG_VERSION")) }))
        }
        "uptime" | "core:uptime" => Ok(json!({ "Up time": st.started.elapsed().as_secs() })),
        // OpenSIPS tls_mgm's name
        "tls_reload" | "tls_mgm:tls_reload" => match &st.tls_reload {
            Some(f) => f().map(|()| json!("OK")).map_err(|e| (500, e)),
            None => Err((-32000, "no [tls] section: nothing to reload".into())),
        },
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
            stats::get(&stats::groups(st), &filter)
        }
        "list_statistics" | "core:list_statistics" => Ok(Value::Object(
            stats::groups(st)
                .into_iter()
                .map(|(g, n, _)| (format!("{g}:{n}"), json!(g)))
                .collect(),
        )),
        "which" | "core:which" => Ok(json!([
            "version",
            "uptime",
            "get_statistics",
            "list_statistics",
            "which",
            "ds_list",
            "ds_set_state",
            "ds_reload",
            "ds_add",
            "ds_remove",
            "ul_dump",
            "ul_show_contact",
            "ul_rm",
            "ul_rm_contact",
            "subscriber_add",
            "subscriber_passwd",
            "subscriber_remove",
            "subscriber_list",
            "subscriber_reload",
            "auth_unban",
            "ban_list",
            "ban_add",
            "ban_remove",
            "dlg_list",
            "dlg_end_dlg",
            "profile_get_size",
            "lb_list",
            "lb_resize",
            "lb_status",
            "lb_reload",
            "lb_is_destination",
            "dr_reload",
            "dr_gw_status",
            "dr_number_routing",
            "dp_reload",
            "dp_translate",
            "tls_reload",
            "rtpengine_show",
            "rtpengine_enable",
            "rtpengine_reload",
        ])),
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

async fn mi(
    State(st): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    if !authorized(&st, &headers) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send Authorization: Bearer <the token in switchboard.token>",
        );
    }
    if !is_json(&headers) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "JSON-RPC calls must be sent as Content-Type: application/json",
        );
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return Json(
                json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": format!("parse error: {e}")}}),
            )
            .into_response()
        }
    };
    match req {
        Value::Array(batch) if !batch.is_empty() => Json(Value::Array(
            batch.into_iter().map(|r| one(&st, r)).collect(),
        ))
        .into_response(),
        Value::Object(_) => Json(one(&st, req)).into_response(),
        _ => Json(
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "invalid request"}}),
        )
        .into_response(),
    }
}

async fn metrics(
    State(st): State<Arc<AdminState>>,
    headers: HeaderMap,
) -> axum::response::Response {
    if !authorized(&st, &headers) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send Authorization: Bearer <the token in switchboard.token>",
        );
    }
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
    if let Some(d) = &st.dispatcher {
        s.push_str(&d.metrics_text());
    }
    if let Some(d) = st.proxy.dialogs() {
        let (total, per) = d.counts();
        s.push_str(&format!("# HELP switchboard_dialogs dialogs tracked (early and confirmed)\n# TYPE switchboard_dialogs gauge\nswitchboard_dialogs {total}\n# HELP switchboard_node_dialogs dialogs per media server\n# TYPE switchboard_node_dialogs gauge\n"));
        for (n, c) in per {
            s.push_str(&format!("switchboard_node_dialogs{{node=\"{n}\"}} {c}\n"));
        }
    }
    if let Some(b) = &st.balancer {
        s.push_str(&b.metrics_text());
    }
    if let Some(n) = &st.numbers {
        s.push_str(&n.metrics_text());
    }
    if let Some(c) = &st.rtpengine {
        media::metrics_text(c, &mut s);
    }
    {
        use std::sync::atomic::Ordering::Relaxed;
        let c = st.proxy.dns();
        s.push_str("# HELP switchboard_dns_cache_total lookups of next-hop names in the cache, by outcome (hit, miss: a DNS query, stale: an expired answer served while DNS is down, failed: a remembered failure)\n# TYPE switchboard_dns_cache_total counter\n");
        for (k, v) in [
            ("hit", &c.hits),
            ("miss", &c.misses),
            ("stale", &c.stale_served),
            ("failed", &c.failures),
        ] {
            s.push_str(&format!(
                "switchboard_dns_cache_total{{outcome=\"{k}\"}} {}\n",
                v.load(Relaxed)
            ));
        }
        s.push_str(&format!("# HELP switchboard_dns_cache_names names in the DNS cache\n# TYPE switchboard_dns_cache_names gauge\nswitchboard_dns_cache_names {}\n# HELP switchboard_dns_waiting requests waiting for a DNS answer\n# TYPE switchboard_dns_waiting gauge\nswitchboard_dns_waiting {}\n", c.len(), st.proxy.waiting()));
    }
    if let Some(r) = st.proxy.registrar() {
        let (aors, contacts) = r.counts();
        s.push_str(&format!("# HELP switchboard_registered_aors addresses-of-record with a binding\n# TYPE switchboard_registered_aors gauge\nswitchboard_registered_aors {aors}\n# HELP switchboard_registered_contacts bindings in the location table\n# TYPE switchboard_registered_contacts gauge\nswitchboard_registered_contacts {contacts}\n# HELP switchboard_subscribers subscribers with credentials\n# TYPE switchboard_subscribers gauge\nswitchboard_subscribers {}\n", r.subscriber_count()));
    }
    (st.extra_metrics)(&mut s);
    s.push_str(&format!("# HELP switchboard_uptime_seconds seconds since start\n# TYPE switchboard_uptime_seconds gauge\nswitchboard_uptime_seconds {}\n", st.started.elapsed().as_secs()));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s,
    )
        .into_response()
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
            token: Some("t0ken".into()),
            started: Instant::now(),
            gauges: Box::new(|| vec![("tcp_connections", "open", 3)]),
            extra_metrics: Box::new(|_| {}),
            dispatcher: None,
            reload: None,
            parse_destination: None,
            store_add: None,
            store_remove: None,
            subscribers: None,
            store_ha1: false,
            balancer: None,
            lb_reload: None,
            numbers: None,
            numbers_reload: None,
            tls_reload: None,
            rtpengine: None,
            rtpengine_reload: None,
        }
    }

    #[derive(Default, Clone)]
    struct MemSubscribers(Arc<std::sync::Mutex<Vec<(String, String, String)>>>);

    impl SubscriberStore for MemSubscribers {
        fn upsert(&self, user: &str, domain: &str, secret: StoredSecret<'_>) -> Result<(), String> {
            let mut g = self.0.lock().unwrap();
            g.retain(|(u, d, _)| !(u == user && d == domain));
            let kept = match secret {
                StoredSecret::Plain(p) => p.to_string(),
                StoredSecret::Ha1 { md5, .. } => format!("ha1:{md5}"),
            };
            g.push((user.into(), domain.into(), kept));
            Ok(())
        }
        fn remove(&self, user: &str, domain: &str) -> Result<bool, String> {
            let mut g = self.0.lock().unwrap();
            let n = g.len();
            g.retain(|(u, d, _)| !(u == user && d == domain));
            Ok(g.len() < n)
        }
        fn load(
            &self,
        ) -> Result<
            (
                Vec<(String, String, sip_proxy::registrar::Credential)>,
                Vec<String>,
            ),
            String,
        > {
            let g = self.0.lock().unwrap();
            Ok((
                g.iter()
                    .map(|(u, d, p)| {
                        (
                            u.clone(),
                            d.clone(),
                            sip_proxy::registrar::Credential::from_password(u, d, p),
                        )
                    })
                    .collect(),
                vec![],
            ))
        }
    }

    #[test]
    fn number_routing_methods() {
        use sip_proxy::numbers::dialplan::{Dialplan, DpRow};
        use sip_proxy::numbers::drouting::{Drouting, GatewayRow, RuleRow};
        use sip_proxy::numbers::routing::{NumberTables, Numbers};
        let mut st = state();
        let rpc = |st: &AdminState, m: &str, p: Value| {
            one(
                st,
                json!({"jsonrpc": "2.0", "id": 1, "method": m, "params": p}),
            )
        };
        let r = rpc(&st, "dr_gw_status", json!({}));
        assert_eq!(r["error"]["code"], -32000, "{r}");
        let n = Arc::new(Numbers::new(vec![], Default::default()));
        let (drouting, _) = Drouting::build(
            &[GatewayRow {
                id: 1,
                gwid: "gw1".into(),
                address: "127.0.0.5:5060".into(),
                strip: 1,
                pri_prefix: "00".into(),
                ..GatewayRow::default()
            }],
            &[],
            &[RuleRow {
                ruleid: 7,
                groupid: "0".into(),
                prefix: "+49".into(),
                gwlist: "gw1".into(),
                ..RuleRow::default()
            }],
        );
        let (dialplan, _) = Dialplan::build(&[DpRow {
            id: 1,
            dpid: 1,
            match_op: 0,
            match_exp: "110".into(),
            repl_exp: "+49110".into(),
            attrs: "emergency".into(),
            ..DpRow::default()
        }]);
        n.reload(NumberTables {
            dialplan,
            drouting,
            aliases: Default::default(),
            groups: Default::default(),
        });
        st.numbers = Some(n.clone());
        st.numbers_reload = Some(Box::new(|| Ok("1 prefix rules".into())));
        let r = rpc(&st, "dr_gw_status", json!({}));
        assert_eq!(r["result"]["Gateways"][0]["ID"], "gw1", "{r}");
        assert_eq!(r["result"]["Gateways"][0]["State"], "Active");
        let r = rpc(
            &st,
            "drouting:gw_status",
            json!({"gw_id": "gw1", "status": 0}),
        );
        assert_eq!(r["result"]["State"], "Disabled", "{r}");
        let r = rpc(&st, "dr_gw_status", json!({"gw_id": "nope", "status": 1}));
        assert_eq!(r["error"]["code"], 404, "{r}");
        let r = rpc(
            &st,
            "dr_gw_status",
            json!({"gw_id": "gw1", "status": "sideways"}),
        );
        assert_eq!(r["error"]["code"], -32602, "{r}");
        let r = rpc(&st, "dr_number_routing", json!({"number": "+4930123"}));
        assert_eq!(r["result"]["rule"], 7, "{r}");
        assert_eq!(r["result"]["gateways"][0]["number"], "004930123");
        let r = rpc(&st, "dp_translate", json!({"dpid": 1, "input": "110"}));
        assert_eq!(r["result"]["Output"], "+49110", "{r}");
        assert_eq!(r["result"]["ATTRIBUTES"], "emergency");
        let r = rpc(&st, "dialplan:translate", json!([1, "111"]));
        assert_eq!(r["error"]["code"], 404, "{r}");
        let r = rpc(&st, "dp_translate", json!({"dpid": "x", "input": "110"}));
        assert_eq!(r["error"]["code"], -32602, "{r}");
        let r = rpc(&st, "dr_reload", json!({}));
        assert_eq!(r["result"]["reloaded"], "1 prefix rules", "{r}");
    }

    #[test]
    fn usrloc_and_subscriber_methods() {
        use sip_proxy::registrar::{Registrar, RegistrarConfig};
        let reg = Arc::new(Registrar::new(
            RegistrarConfig {
                domains: vec!["example.com".into()],
                auth: false,
                ..RegistrarConfig::default()
            },
            (Instant::now(), 1_800_000_000),
        ));
        let cfg = sip_proxy::ProxyConfig {
            listeners: vec![sip_proxy::Listener {
                transport: sip_proxy::Transport::Udp,
                advertise: "127.0.0.1:5060".parse().unwrap(),
            }],
            ..sip_proxy::ProxyConfig::default()
        };
        let proxy = Arc::new(
            Proxy::new(cfg, Arc::new(sip_proxy::RoundRobin::new(vec![])))
                .with_registrar(reg.clone()),
        );
        let mut st = state();
        st.proxy = proxy.clone();
        let mem = MemSubscribers::default();
        st.subscribers = Some(Box::new(mem.clone()));
        let rpc = |m: &str, p: Value| {
            one(
                &st,
                json!({"jsonrpc": "2.0", "id": 1, "method": m, "params": p}),
            )
        };
        // asked for HA1: the table gets the hash of user:realm:password, never the password
        let r = rpc(
            "subscriber_add",
            json!({"aor": "hashed@example.com", "password": "s3cret", "ha1": true}),
        );
        assert_eq!(r["result"]["stored"], "ha1", "{r}");
        let want = sip_wire::auth::ha1(
            sip_wire::auth::Algorithm::Md5,
            "hashed",
            "example.com",
            "s3cret",
        );
        assert!(mem
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|(u, _, k)| u == "hashed" && *k == format!("ha1:{want}")));
        assert!(!mem
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|(_, _, k)| k.contains("s3cret")));
        assert!(reg.has_subscriber("hashed", "example.com"));
        let r = rpc(
            "subscriber_add",
            json!({"aor": "x@example.com", "password": "p", "ha1": "yes"}),
        );
        assert_eq!(r["error"]["code"], -32602, "{r}");
        let r = rpc("subscriber_remove", json!(["hashed@example.com"]));
        assert_eq!(r["result"]["removed"], "hashed@example.com");
        let r = rpc(
            "subscriber_add",
            json!({"aor": "alice@example.com", "password": "pw"}),
        );
        assert_eq!(r["result"]["subscriber"], "alice@example.com", "{r}");
        assert_eq!(r["result"]["stored"], "password", "{r}");
        assert!(reg.has_subscriber("alice", "example.com"));
        for (p, why) in [
            (
                json!({"aor": "alice@other.org", "password": "pw"}),
                "not served",
            ),
            (
                json!({"aor": "al ice@example.com", "password": "pw"}),
                "username",
            ),
            (json!({"aor": "bob@example.com", "password": ""}), "empty"),
            (json!({"aor": "bob@example.com"}), "password"),
        ] {
            let r = rpc("subscriber_add", p.clone());
            assert!(
                r["error"]["message"].as_str().unwrap().contains(why),
                "{p}: {r}"
            );
        }
        let r = rpc(
            "subscriber_passwd",
            json!({"aor": "bob@example.com", "password": "x"}),
        );
        assert_eq!(r["error"]["code"], 404);
        let r = rpc("subscriber_list", json!({}));
        assert_eq!(r["result"]["subscribers"], json!(["alice@example.com"]));
        // a registration through the proxy, then usrloc
        let mut out = vec![];
        proxy.on_message(
            Instant::now(),
            sip_proxy::Source { transport: sip_proxy::Transport::Udp, addr: "127.0.0.1:40000".parse().unwrap(), flow: None },
            bytes_of("REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK1\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: r1\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@127.0.0.1:40000>, <sip:alice@127.0.0.1:40001>\r\nContent-Length: 0\r\n\r\n"),
            &mut out,
        );
        let r = rpc("ul_dump", json!({}));
        assert_eq!(
            r["result"]["Domains"][0]["AORs"][0]["AOR"], "alice@example.com",
            "{r}"
        );
        let r = rpc("ul_show_contact", json!(["location", "alice@example.com"]));
        assert_eq!(r["result"]["Contacts"].as_array().unwrap().len(), 2, "{r}");
        let r = rpc(
            "ul_rm_contact",
            json!(["location", "alice@example.com", "sip:alice@127.0.0.1:40001"]),
        );
        assert_eq!(r["result"]["removed"], "sip:alice@127.0.0.1:40001", "{r}");
        let r = rpc(
            "ul_rm_contact",
            json!(["location", "alice@example.com", "sip:alice@127.0.0.1:40001"]),
        );
        assert_eq!(r["error"]["code"], 404);
        let r = rpc("ul_rm", json!({"aor": "alice@example.com"}));
        assert_eq!(r["result"]["removed"], 1);
        let r = rpc("ul_show_contact", json!({"aor": "alice@example.com"}));
        assert_eq!(r["error"]["code"], 404);
        let r = rpc("subscriber_remove", json!(["alice@example.com"]));
        assert_eq!(r["result"]["removed"], "alice@example.com");
        assert!(!reg.has_subscriber("alice", "example.com"));
        // without a registrar: a clear error
        let plain = state();
        let r = one(
            &plain,
            json!({"jsonrpc": "2.0", "id": 1, "method": "ul_dump"}),
        );
        assert!(r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not enabled"));
    }

    fn bytes_of(s: &str) -> bytes::Bytes {
        bytes::Bytes::copy_from_slice(s.as_bytes())
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

    /// One HTTP request over a real socket; the status code and the body.
    fn http(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "{head}\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        let code = r[9..12].parse().unwrap();
        (
            code,
            r.split_once("\r\n\r\n").map_or("", |x| x.1).to_string(),
        )
    }

    /// A page in a browser can POST text/plain, form or multipart bodies cross-site, and
    /// before, any of them changed state; now a call needs the token and a JSON content type.
    #[test]
    fn cross_site_and_tokenless_calls_are_refused() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let st = Arc::new(with_dispatcher());
        let l = rt.block_on(bind("127.0.0.1:0".parse().unwrap())).unwrap();
        let addr = l.local_addr().unwrap();
        rt.spawn(serve(l, st.clone(), std::future::pending()));
        let set = r#"{"jsonrpc":"2.0","id":1,"method":"ds_set_state","params":["i","1","sip:127.0.0.1:5080"]}"#;
        for (ct, auth) in [
            ("text/plain", "Authorization: Bearer t0ken\r\n"),
            (
                "application/x-www-form-urlencoded",
                "Authorization: Bearer t0ken\r\n",
            ),
            (
                "multipart/form-data; boundary=x",
                "Authorization: Bearer t0ken\r\n",
            ),
            ("application/json", ""),
            ("application/json", "Authorization: Bearer wrong\r\n"),
            ("application/json", "Authorization: Basic dDBrZW4=\r\n"),
        ] {
            let (code, body) = http(
                addr,
                &format!("POST /mi HTTP/1.1\r\n{auth}Content-Type: {ct}"),
                set,
            );
            assert!(code == 401 || code == 415, "{ct} {auth:?}: {code} {body}");
            assert!(!body.contains("\"result\""), "{body}");
        }
        let d = st.dispatcher.as_ref().unwrap();
        let list = dispatcher::list(d);
        assert!(!list.to_string().contains("inactive"), "{list}");
        let (code, _) = http(addr, "GET /metrics HTTP/1.1", "");
        assert_eq!(code, 401);
        let (code, body) = http(
            addr,
            "GET /metrics HTTP/1.1\r\nAuthorization: Bearer t0ken",
            "",
        );
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("switchboard_uptime_seconds"));
        let (code, body) = http(
            addr,
            "POST /mi HTTP/1.1\r\nAuthorization: bearer t0ken\r\nContent-Type: application/json; charset=utf-8",
            set,
        );
        assert_eq!(code, 200);
        assert!(body.contains("inactive"), "{body}");
    }

    #[test]
    fn ban_list_add_remove() {
        let mut st = state();
        st.proxy = Arc::new(
            Proxy::new(
                sip_proxy::ProxyConfig::default(),
                Arc::new(sip_proxy::RoundRobin::new(vec![])),
            )
            .with_pike(Arc::new(sip_proxy::pike::Pike::new(Default::default()))),
        );
        let rpc = |m: &str, p: Value| {
            one(
                &st,
                json!({"jsonrpc": "2.0", "id": 1, "method": m, "params": p}),
            )
        };
        let r = rpc("ban_add", json!({"ip": "192.0.2.7", "seconds": 120}));
        assert_eq!(r["result"]["banned"], "192.0.2.7", "{r}");
        let r = rpc("ban_add", json!(["2001:db8::1"]));
        assert_eq!(r["result"]["seconds"], 3600, "{r}");
        let r = rpc("ban_list", json!({}));
        let bans = r["result"]["bans"].as_array().unwrap();
        assert_eq!(bans.len(), 2, "{r}");
        assert_eq!(bans[0]["source"], "192.0.2.7");
        assert_eq!(bans[0]["reason"], "operator");
        assert_eq!(bans[1]["source"], "2001:db8::/64", "IPv6 by prefix");
        for bad in [
            json!({"ip": "nope"}),
            json!({}),
            json!({"ip": "192.0.2.8", "seconds": 0}),
        ] {
            let r = rpc("ban_add", bad.clone());
            assert_eq!(r["error"]["code"], -32602, "{bad}: {r}");
        }
        let r = rpc("ban_remove", json!({"ip": "192.0.2.7"}));
        assert_eq!(r["result"]["was_banned"], true);
        let r = rpc("ban_remove", json!(["192.0.2.7"]));
        assert_eq!(r["result"]["was_banned"], false);
        assert_eq!(
            rpc("ban_list", json!({}))["result"]["bans"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    fn with_dispatcher() -> AdminState {
        use sip_proxy::dispatcher::{Algorithm, DestState, ProbeConfig, SetConfig};
        let dest = |port: u16| DestConfig {
            name: None,
            uri: format!("sip:127.0.0.1:{port}").into(),
            transport: sip_proxy::Transport::Udp,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            weight: 1,
            priority: 0,
            attrs: String::new(),
            description: String::new(),
            state: DestState::Active,
        };
        let d = Arc::new(Dispatcher::new(
            vec![SetConfig {
                id: 1,
                algorithm: Algorithm::RoundRobin,
                hash_header: None,
                destinations: vec![dest(5080), dest(5082)],
            }],
            1,
            3,
            ProbeConfig::default(),
            1,
        ));
        let mut st = state();
        st.dispatcher = Some(d);
        st.parse_destination = Some(Box::new(move |uri, w, _p, _a, _d| {
            if uri.starts_with("sip:127.") && w >= 0 {
                Ok(dest(uri[14..].parse().map_err(|_| "bad port".to_string())?))
            } else {
                Err(format!("bad destination {uri:?} weight {w}"))
            }
        }));
        st
    }

    #[test]
    fn opensips_parameter_names_and_statistics_groups() {
        use sip_proxy::balancer::{parse_resources, Balancer, LbFlags, LbNodeConfig, LbRoute};
        let mut st = with_dispatcher();
        // ds_set_state as OpenSIPS documents it: state, group, address
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 1, "method": "ds_set_state", "params": {"state": "i", "group": 1, "address": "sip:127.0.0.1:5080"}}),
        );
        assert_eq!(r["result"]["state"], "inactive", "{r}");
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 1, "method": "ds_set_state", "params": {"state": "i", "group": 1}}),
        );
        assert_eq!(r["error"]["message"], "missing parameter address", "{r}");
        // the balancer: lb_resize/lb_status by destination_id, res_name, new_capacity,
        // new_status; it shares the dispatcher's health records
        let d = st.dispatcher.clone().unwrap();
        let node = |id: i64, port: u16| LbNodeConfig {
            id,
            group: 1,
            uri: format!("sip:127.0.0.1:{port}").into(),
            transport: sip_proxy::Transport::Udp,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            resources: parse_resources("pstn=10").unwrap(),
            live: vec![],
            enabled: true,
            description: String::new(),
        };
        st.balancer = Some(Arc::new(Balancer::new(
            vec![node(7, 5080), node(8, 5090)],
            LbRoute::calls(1, vec!["pstn".into()], LbFlags::default()),
            1,
            d.health_book().clone(),
        )));
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 2, "method": "lb_resize", "params": {"destination_id": 8, "res_name": "pstn", "new_capacity": 4}}),
        );
        assert_eq!(r["result"]["max"], 4, "{r}");
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 3, "method": "lb_status", "params": {"destination_id": 8, "new_status": 0}}),
        );
        assert_eq!(r["result"]["enabled"], false, "{r}");
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 4, "method": "lb_status", "params": {"destination_id": 7}}),
        );
        assert_eq!(
            r["result"]["state"], "inactive",
            "the dispatcher's state: {r}"
        );
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 5, "method": "lb_status", "params": {"destination_id": 99}}),
        );
        assert_eq!(r["error"]["message"], "no node with id 99");
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 6, "method": "lb_is_destination", "params": {"address": "127.0.0.1", "port": 5090, "group": 1}}),
        );
        assert_eq!(r["result"]["id"], 8, "{r}");
        // statistics by OpenSIPS group
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 7, "method": "get_statistics", "params": {"statistics": ["load_balancer:", "dispatcher:destinations_up", "tm:"]}}),
        );
        let res = &r["result"];
        assert_eq!(res["load_balancer:nodes"], 2, "{r}");
        assert_eq!(
            res["load_balancer:nodes_up"], 0,
            "one inactive, one disabled: {r}"
        );
        assert_eq!(res["dispatcher:destinations_up"], 1, "{r}");
        assert!(res.get("tm:inuse_transactions").is_some(), "{r}");
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 8, "method": "get_statistics", "params": [["shm:"]]}),
        );
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("unknown statistics group shm"),
            "{r}"
        );
        // /metrics lines for the balancer
        let text = st.balancer.as_ref().unwrap().metrics_text();
        assert!(text.contains("switchboard_lb_capacity{group=\"1\",node=\"sip:127.0.0.1:5090\",resource=\"pstn\"} 4"), "{text}");
        assert!(
            text.contains(
                "switchboard_lb_load{group=\"1\",node=\"sip:127.0.0.1:5080\",resource=\"pstn\"} 0"
            ),
            "{text}"
        );
    }

    #[test]
    fn ds_methods_list_set_state_add_remove_with_aliases() {
        let st = with_dispatcher();
        let r = one(&st, json!({"jsonrpc": "2.0", "id": 1, "method": "ds_list"}));
        assert_eq!(
            r["result"]["sets"][0]["destinations"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 2, "method": "dispatcher:set_state", "params": {"state": "drain", "set": 1, "destination": "sip:127.0.0.1:5080"}}),
        );
        assert_eq!(r["result"]["state"], "draining", "{r}");
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 3, "method": "ds_set_state", "params": ["i", 1, "sip:127.0.0.1:5082"]}),
        );
        assert_eq!(r["result"]["state"], "inactive");
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 4, "method": "ds_set_state", "params": ["sleepy", 1, "sip:127.0.0.1:5082"]}),
        );
        assert_eq!(r["error"]["code"], -32602);
        assert!(r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown state"));
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 5, "method": "ds_set_state", "params": ["a", 9, "sip:127.0.0.1:5082"]}),
        );
        assert_eq!(r["error"]["message"], "no set 9");
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 6, "method": "ds_add", "params": {"set": 1, "uri": "sip:127.0.0.1:5084"}}),
        );
        assert_eq!(r["result"]["added"], "sip:127.0.0.1:5084", "{r}");
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 7, "method": "ds_add", "params": {"set": 1, "uri": "sip:127.0.0.1:5084"}}),
        );
        assert!(r["error"]["message"].as_str().unwrap().contains("already"));
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 8, "method": "ds_add", "params": {"set": 1, "uri": "sip:bad", "weight": -1}}),
        );
        assert_eq!(r["error"]["code"], -32602);
        let list = one(&st, json!({"jsonrpc": "2.0", "id": 9, "method": "ds_list"}));
        let states: Vec<&str> = list["result"]["sets"][0]["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["state"].as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            vec!["draining", "inactive", "active"],
            "add keeps the others' state"
        );
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 10, "method": "ds_remove", "params": [1, "sip:127.0.0.1:5080"]}),
        );
        assert_eq!(r["result"]["removed"], "sip:127.0.0.1:5080");
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 11, "method": "ds_remove", "params": [1, "sip:127.0.0.1:5080"]}),
        );
        assert!(r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no destination"));
        let r = one(
            &st,
            json!({"jsonrpc": "2.0", "id": 12, "method": "ds_reload"}),
        );
        assert!(r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not available"));
    }
}
