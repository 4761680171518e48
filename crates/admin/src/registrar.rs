//! Registrar methods of the management API: the OpenSIPS usrloc ones (`ul_dump`,
//! `ul_show_contact`, `ul_rm`, `ul_rm_contact`, and the OpenSIPS 4 `usrloc:*` names) and
//! subscriber management (`subscriber_add`, `subscriber_passwd`, `subscriber_remove`,
//! `subscriber_list`, `subscriber_reload`).

use std::time::Instant;

use serde_json::{json, Value};
use sip_proxy::registrar::{Binding, Credential, Registrar};

use crate::AdminState;

type RpcResult = Result<Value, (i64, String)>;

/// Subscribers as (user, domain, credential), and the rows skipped with the reason.
pub type Loaded = (Vec<(String, String, Credential)>, Vec<String>);

/// What the subscriber table keeps of a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredSecret<'a> {
    /// The password itself (`password` column), as OpenSIPS without `calculate_ha1`.
    Plain(&'a str),
    /// Only the HA1 hashes for the subscriber's domain as realm (`ha1`, `ha1_sha256`).
    Ha1 { md5: &'a str, sha256: &'a str },
}

/// Where subscribers are stored (the database), implemented by the binary.
pub trait SubscriberStore: Send + Sync {
    /// Adds or replaces a subscriber.
    fn upsert(&self, user: &str, domain: &str, secret: StoredSecret<'_>) -> Result<(), String>;
    /// Removes one; false when it did not exist.
    fn remove(&self, user: &str, domain: &str) -> Result<bool, String>;
    /// Every subscriber as (user, domain, credential); bad rows are skipped with a reason.
    fn load(&self) -> Result<Loaded, String>;
}

fn param<'a>(params: &'a Value, name: &str, pos: usize) -> Option<&'a Value> {
    params.get(name).or_else(|| params.get(pos))
}

fn str_param(params: &Value, name: &str, pos: usize) -> Result<String, (i64, String)> {
    match param(params, name, pos) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err((-32602, format!("{name} must be a string, got {other}"))),
        None => Err((-32602, format!("missing parameter {name}"))),
    }
}

/// The AOR parameter; OpenSIPS passes the table name first (`location`), which is
/// accepted by name or skipped by position.
fn aor_param(params: &Value) -> Result<String, (i64, String)> {
    if let Some(Value::String(a)) = params.get("aor") {
        return Ok(a.clone());
    }
    match (params.get(0), params.get(1)) {
        (Some(Value::String(t)), Some(Value::String(a))) if t == "location" => Ok(a.clone()),
        (Some(Value::String(a)), _) => Ok(a.clone()),
        _ => Err((-32602, "missing parameter aor".into())),
    }
}

fn contact_json(b: &Binding, now: Instant) -> Value {
    json!({
        "Contact": &*b.uri,
        "ContactID": b.id,
        "Expires": b.expires_at.saturating_duration_since(now).as_secs(),
        "Q": b.q as f64 / 1000.0,
        "Callid": &*b.call_id,
        "Cseq": b.cseq,
        "User-agent": b.user_agent.as_deref().unwrap_or(""),
        "Received": format!("{}:{}", b.source.transport.uri_param().unwrap_or("udp"), b.source.addr),
        "Path": b.path.as_deref(),
        "Cflags": if b.nat { "NAT" } else { "" },
        "SIP_instance": b.instance.as_deref(),
        "Reg-id": b.reg_id,
        "Missed-pings": b.missed_pings(),
    })
}

fn registrar(st: &AdminState) -> Result<&Registrar, (i64, String)> {
    st.proxy.registrar().map(|r| r.as_ref()).ok_or((
        -32000,
        "the registrar is not enabled (no [registrar] section)".into(),
    ))
}

fn check_user(user: &str, domain: &str, reg: &Registrar) -> Result<(), (i64, String)> {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/%".contains(&b))
    };
    if !token(user) {
        return Err((
            -32602,
            format!("username {user:?} is empty or has characters a SIP user part cannot carry"),
        ));
    }
    if domain.is_empty()
        || !domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
    {
        return Err((-32602, format!("domain {domain:?} is not a host name")));
    }
    if !reg.is_local_domain(domain) {
        return Err((
            -32602,
            format!("domain {domain} is not served here (registrar.domains)"),
        ));
    }
    Ok(())
}

/// Splits `user@domain` (or `sip:user@domain`).
fn split_aor(aor: &str) -> Result<(String, String), (i64, String)> {
    let a = aor.strip_prefix("sip:").unwrap_or(aor);
    a.rsplit_once('@')
        .map(|(u, d)| (u.to_string(), d.to_ascii_lowercase()))
        .ok_or((-32602, format!("{aor:?} is not user@domain")))
}

/// Runs a registrar method, or `None` when `method` is not one.
pub(crate) fn call(st: &AdminState, method: &str, params: &Value) -> Option<RpcResult> {
    let now = Instant::now();
    Some(match method {
        "ul_dump" | "usrloc:dump" => registrar(st).map(|r| {
            let aors: Vec<Value> = r
                .dump(now)
                .into_iter()
                .map(|(aor, bs)| {
                    json!({"AOR": aor, "Contacts": bs.iter().map(|b| contact_json(b, now)).collect::<Vec<_>>()})
                })
                .collect();
            let (_, n) = r.counts();
            json!({"Domains": [{"name": "location", "Contacts": n, "AORs": aors}]})
        }),
        "ul_show_contact" | "usrloc:show_contact" => (|| {
            let r = registrar(st)?;
            let aor = aor_param(params)?;
            let bs = r.show(&aor, now);
            if bs.is_empty() {
                return Err((404, format!("AOR {aor} not found")));
            }
            Ok(json!({"AOR": aor, "Contacts": bs.iter().map(|b| contact_json(b, now)).collect::<Vec<_>>()}))
        })(),
        "ul_rm" | "usrloc:rm" => (|| {
            let r = registrar(st)?;
            let aor = aor_param(params)?;
            match r.remove_aor(&aor) {
                0 => Err((404, format!("AOR {aor} not found"))),
                n => Ok(json!({"AOR": aor, "removed": n})),
            }
        })(),
        "ul_rm_contact" | "usrloc:rm_contact" => (|| {
            let r = registrar(st)?;
            let aor = aor_param(params)?;
            let contact = match params.get("contact") {
                Some(Value::String(c)) => c.clone(),
                _ => match (params.get(0), params.get(1), params.get(2)) {
                    (Some(Value::String(t)), _, Some(Value::String(c))) if t == "location" => c.clone(),
                    (_, Some(Value::String(c)), _) => c.clone(),
                    _ => return Err((-32602, "missing parameter contact".into())),
                },
            };
            if r.remove_contact(&aor, &contact) {
                Ok(json!({"AOR": aor, "removed": contact}))
            } else {
                Err((404, format!("contact {contact} not found for {aor}")))
            }
        })(),
        "subscriber_add" | "subscriber_passwd" => (|| {
            let r = registrar(st)?;
            let store = st.subscribers.as_ref().ok_or((-32000, "no subscriber database".to_string()))?;
            let (user, domain) = match params.get("aor").or(params.get(0)) {
                Some(Value::String(a)) if a.contains('@') => split_aor(a)?,
                _ => (str_param(params, "username", 0)?, str_param(params, "domain", 1)?.to_ascii_lowercase()),
            };
            check_user(&user, &domain, r)?;
            let password = match params.get("password") {
                Some(Value::String(p)) => p.clone(),
                _ => return Err((-32602, "missing parameter password".into())),
            };
            if password.is_empty() {
                return Err((-32602, "password must not be empty".into()));
            }
            let ha1 = match params.get("ha1") {
                None | Some(Value::Null) => st.store_ha1,
                Some(Value::Bool(b)) => *b,
                Some(other) => return Err((-32602, format!("ha1 must be true or false, got {other}"))),
            };
            let exists = r.has_subscriber(&user, &domain);
            if method == "subscriber_passwd" && !exists {
                return Err((404, format!("subscriber {user}@{domain} not found")));
            }
            let cred = Credential::from_password(&user, &domain, &password);
            let secret = if ha1 {
                StoredSecret::Ha1 { md5: &cred.ha1_md5, sha256: &cred.ha1_sha256 }
            } else {
                StoredSecret::Plain(&password)
            };
            store.upsert(&user, &domain, secret).map_err(|e| (-32000, e))?;
            r.set_credential(&user, &domain, cred);
            Ok(json!({"subscriber": format!("{user}@{domain}"), "updated": exists, "stored": if ha1 { "ha1" } else { "password" }}))
        })(),
        "subscriber_remove" => (|| {
            let r = registrar(st)?;
            let store = st.subscribers.as_ref().ok_or((-32000, "no subscriber database".to_string()))?;
            let (user, domain) = match params.get("aor").or(params.get(0)) {
                Some(Value::String(a)) => split_aor(a)?,
                _ => return Err((-32602, "missing parameter aor".into())),
            };
            let in_db = store.remove(&user, &domain).map_err(|e| (-32000, e))?;
            let in_mem = r.remove_credential(&user, &domain);
            if !in_db && !in_mem {
                return Err((404, format!("subscriber {user}@{domain} not found")));
            }
            Ok(json!({"removed": format!("{user}@{domain}")}))
        })(),
        "subscriber_list" | "subscriber_reload" => (|| {
            let r = registrar(st)?;
            let store = st.subscribers.as_ref().ok_or((-32000, "no subscriber database".to_string()))?;
            let (all, bad) = store.load().map_err(|e| (-32000, e))?;
            let names: Vec<String> = all.iter().map(|(u, d, _)| format!("{u}@{d}")).collect();
            if method == "subscriber_reload" {
                r.load_credentials(all);
            }
            Ok(json!({"subscribers": names, "skipped": bad}))
        })(),
        _ => return None,
    })
}
