//! Bindings to and from the `location` table: a binding as a row (the write-behind), a row
//! back as a binding (the restore at start; connections do not survive a restart).

use std::time::Instant;

use sip_proxy::registrar::{Binding, LocEvent};
use sip_proxy::{Target, Transport};

use crate::{LocationOp, LocationRow};

/// A binding as a `location` row.
pub fn location_row(aor: &str, b: &Binding) -> LocationRow {
    let (user, domain) = aor.rsplit_once('@').unwrap_or((aor, ""));
    let t = b.source.transport;
    let received = match t.uri_param() {
        Some(p) => format!("sip:{};transport={p}", b.source.addr),
        None => format!("sip:{}", b.source.addr),
    };
    LocationRow {
        contact_id: b.id as i64,
        username: user.into(),
        domain: domain.into(),
        contact: b.uri.to_string(),
        received: Some(received),
        path: b.path.as_deref().map(Into::into),
        expires: b.expires_unix as i64,
        q: b.q as f64 / 1000.0,
        callid: b.call_id.to_string(),
        cseq: b.cseq as i64,
        cflags: if b.nat { "NAT".into() } else { String::new() },
        user_agent: b.user_agent.as_deref().unwrap_or("").into(),
        sip_instance: b.instance.as_deref().map(Into::into),
        kv_store: b.reg_id.map(|r| format!("{{\"reg-id\":\"{r}\"}}")),
        last_modified: b.updated_unix as i64,
    }
}

/// A `location` row back as a binding (no connection: it did not survive the restart).
pub fn binding(row: &LocationRow, now: Instant) -> Result<(String, Binding), String> {
    let received = row.received.as_deref().ok_or("no received address")?;
    let u = sip_wire::Uri::parse(received).map_err(|e| format!("received {received:?}: {e}"))?;
    let ip: std::net::IpAddr = u
        .host
        .trim_matches(['[', ']'])
        .parse()
        .map_err(|_| format!("received {received:?} is not an IP address"))?;
    let transport = u
        .transport()
        .and_then(Transport::parse)
        .unwrap_or(Transport::Udp);
    let reg_id = row
        .kv_store
        .as_deref()
        .and_then(|k| k.split("\"reg-id\":\"").nth(1))
        .and_then(|r| r.split('"').next())
        .and_then(|r| r.parse().ok());
    if row.contact.is_empty() || row.contact_id <= 0 || row.expires <= 0 {
        return Err("empty contact, contact_id or expires".into());
    }
    Ok((
        format!("{}@{}", row.username, row.domain),
        Binding {
            id: row.contact_id as u64,
            uri: row.contact.as_str().into(),
            q: (row.q * 1000.0).round().clamp(0.0, 1000.0) as u16,
            expires_at: now,
            expires_unix: row.expires as u64,
            call_id: row.callid.as_str().into(),
            cseq: row.cseq.clamp(0, u32::MAX as i64) as u32,
            source: Target {
                transport,
                addr: std::net::SocketAddr::new(ip, u.port.unwrap_or(5060)),
                flow: None,
            },
            nat: row.cflags.contains("NAT"),
            path: row
                .path
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(Into::into),
            instance: row
                .sip_instance
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(Into::into),
            reg_id,
            user_agent: (!row.user_agent.is_empty()).then(|| row.user_agent.as_str().into()),
            updated_unix: row.last_modified.max(0) as u64,
            node: 0,
            missed: 0,
        },
    ))
}

/// One location change as a table operation.
pub fn location_op(e: &LocEvent) -> LocationOp {
    match e {
        LocEvent::Saved { aor, binding } => {
            LocationOp::Upsert(Box::new(location_row(aor, binding)))
        }
        LocEvent::Removed { id, .. } => LocationOp::Delete(*id as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_rows_round_trip() {
        let now = Instant::now();
        let b = Binding {
            id: 42,
            uri: "sip:alice@10.0.0.5:5060;ob".into(),
            q: 500,
            expires_at: now,
            expires_unix: 1_800_000_100,
            call_id: "c".into(),
            cseq: 7,
            source: Target {
                transport: Transport::Tcp,
                addr: "127.0.0.1:40000".parse().unwrap(),
                flow: Some(3),
            },
            nat: true,
            path: Some("<sip:edge;lr>".into()),
            instance: Some("<urn:uuid:1>".into()),
            reg_id: Some(2),
            user_agent: Some("ua".into()),
            updated_unix: 1_800_000_000,
            node: 0,
            missed: 0,
        };
        let row = location_row("alice@example.com", &b);
        assert_eq!(
            row.received.as_deref(),
            Some("sip:127.0.0.1:40000;transport=tcp")
        );
        let (aor, back) = binding(&row, now).unwrap();
        assert_eq!(aor, "alice@example.com");
        assert_eq!(
            back.source.flow, None,
            "connections do not survive a restart"
        );
        assert_eq!(
            (back.id, back.q, back.cseq, back.reg_id, back.nat),
            (42, 500, 7, Some(2), true)
        );
        assert_eq!(back.source.transport, Transport::Tcp);
        let mut broken = row.clone();
        broken.received = Some("sip:host.example".into());
        assert!(binding(&broken, now).is_err());
    }
}
