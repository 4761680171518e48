//! Dialogs to and from the `dialog` table: the write-behind of changes and the restore at
//! start, so in-dialog requests still find their dialog after a restart and the balancer's
//! counts are rebuilt.

use std::time::{Duration, Instant};

use sip_proxy::dialog::{Dialog, DialogInit, DialogState, DlgEvent, Leg};
use sip_proxy::{Target, Transport};

fn sock(t: &Target) -> String {
    format!("{}:{}", t.transport.uri_param().unwrap_or("udp"), t.addr)
}

fn parse_sock(s: &str) -> Result<Target, String> {
    let (t, a) = s
        .split_once(':')
        .ok_or_else(|| format!("socket {s:?} is not proto:ip:port"))?;
    Ok(Target {
        transport: Transport::parse(t).ok_or_else(|| format!("socket {s:?}: unknown transport"))?,
        addr: a
            .parse()
            .map_err(|_| format!("socket {s:?}: bad address"))?,
        flow: None,
    })
}

/// A dialog as a row.
pub fn row(d: &Dialog, now: Instant, unix_now: u64) -> crate::DialogRow {
    crate::DialogRow {
        dlg_id: d.id as i64,
        callid: d.call_id().into(),
        from_uri: d.caller_party().into(),
        from_tag: d.from_tag().into(),
        to_uri: d.callee_party().into(),
        to_tag: d.to_tag().into(),
        caller_cseq: d.caller.cseq as i64,
        callee_cseq: d.callee.cseq as i64,
        caller_contact: d.caller_contact().into(),
        callee_contact: d.callee_contact().into(),
        caller_route_set: d.caller_route().into(),
        callee_route_set: d.callee_route().into(),
        caller_sock: sock(&d.caller.target),
        callee_sock: sock(&d.callee.target),
        state: if d.state == DialogState::Confirmed {
            4
        } else {
            2
        },
        start_time: d.created_unix as i64,
        timeout: (unix_now + d.expires_at.saturating_duration_since(now).as_secs()) as i64,
        node: d.node.as_deref().map(Into::into),
        answer_time: d.answered_unix.map(|a| a as i64),
        session_expires: d.session_expires.map(|s| s as i64),
        ruri: d.ruri().into(),
    }
}

/// A row back as a dialog. The CSeqs move 1000 ahead: requests after the last saved change
/// were not written, and a BYE the proxy sends must be above them.
pub fn dialog(r: &crate::DialogRow, now: Instant, unix_now: u64) -> Result<Dialog, String> {
    if r.callid.is_empty() || r.from_tag.is_empty() || r.to_tag.is_empty() {
        return Err("empty callid or tag".into());
    }
    let left = (r.timeout - unix_now as i64).max(0) as u64;
    Ok(Dialog::new(DialogInit {
        id: r.dlg_id as u64,
        call_id: &r.callid,
        from_tag: &r.from_tag,
        to_tag: &r.to_tag,
        ruri: &r.ruri,
        state: DialogState::Confirmed,
        caller: Leg {
            party: &r.from_uri,
            contact: &r.caller_contact,
            route: &r.caller_route_set,
            target: parse_sock(&r.caller_sock)?,
            cseq: (r.caller_cseq.clamp(0, u32::MAX as i64 - 2000) + 1000) as u32,
        },
        callee: Leg {
            party: &r.to_uri,
            contact: &r.callee_contact,
            route: &r.callee_route_set,
            target: parse_sock(&r.callee_sock)?,
            cseq: (r.callee_cseq.clamp(0, u32::MAX as i64 - 2000) + 1000) as u32,
        },
        node: r.node.as_deref().map(Into::into),
        created_unix: r.start_time.max(0) as u64,
        answered_unix: r.answer_time.map(|a| a.max(0) as u64),
        expires_at: now + Duration::from_secs(left),
        session_expires: r
            .session_expires
            .map(|s| s.clamp(0, u32::MAX as i64) as u32),
    }))
}

/// One dialog change as a table operation.
pub fn op(e: &DlgEvent, now: Instant, unix_now: u64) -> crate::DialogOp {
    match e {
        DlgEvent::Saved(d) => crate::DialogOp::Upsert(Box::new(row(d, now, unix_now))),
        DlgEvent::Removed(id, _) => crate::DialogOp::Delete(*id as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_with_cseq_margin() {
        let now = Instant::now();
        let d = Dialog::new(DialogInit {
            id: 9,
            call_id: "c",
            from_tag: "f",
            to_tag: "t",
            ruri: "sip:5000@h",
            state: DialogState::Confirmed,
            caller: Leg {
                party: "<sip:a@h>;tag=f",
                contact: "sip:a@10.0.0.1",
                route: "<sip:edge.example.com;lr>",
                target: Target {
                    transport: Transport::Tcp,
                    addr: "127.0.0.1:40000".parse().unwrap(),
                    flow: Some(3),
                },
                cseq: 5,
            },
            callee: Leg {
                party: "<sip:b@h>;tag=t",
                contact: "sip:b@10.0.0.2",
                route: "",
                target: Target {
                    transport: Transport::Udp,
                    addr: "127.0.0.1:5080".parse().unwrap(),
                    flow: None,
                },
                cseq: 0,
            },
            node: Some("sip:127.0.0.1:5080".into()),
            created_unix: 1000,
            answered_unix: Some(1002),
            expires_at: now + Duration::from_secs(600),
            session_expires: Some(1800),
        });
        let r = row(&d, now, 2000);
        assert_eq!(r.timeout, 2600);
        assert_eq!(r.caller_sock, "tcp:127.0.0.1:40000");
        let back = dialog(&r, now, 2100).unwrap();
        assert_eq!(back.expires_at.duration_since(now).as_secs(), 500);
        assert_eq!(back.caller.cseq, 1005);
        assert_eq!(back.caller.target.flow, None);
        assert_eq!(back.node.as_deref(), Some("sip:127.0.0.1:5080"));
        assert_eq!(back.caller_route(), "<sip:edge.example.com;lr>");
        assert_eq!(back.callee_route(), "");
        assert_eq!(back.ruri(), "sip:5000@h");
        let mut broken = r.clone();
        broken.callee_sock = "nowhere".into();
        assert!(dialog(&broken, now, 2100).is_err());
    }
}
