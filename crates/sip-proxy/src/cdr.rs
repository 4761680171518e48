//! Call accounting (OpenSIPS `acc`): one record per answered call when its dialog ends, one
//! per failed or cancelled call. The core queues them; the binary writes them to the `acc`
//! and `missed_calls` tables.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One call, as accounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// True for an answered call (`acc`), false for a failed one (`missed_calls`).
    pub answered: bool,
    pub call_id: String,
    pub from_tag: String,
    pub to_tag: String,
    pub from_uri: String,
    pub to_uri: String,
    pub ruri: String,
    pub source: Option<SocketAddr>,
    /// The media server the call went to.
    pub node: Option<Arc<str>>,
    /// UNIX times.
    pub setup: u64,
    pub answer: Option<u64>,
    pub end: u64,
    /// Seconds between answer and end (0 for failed calls).
    pub duration: u64,
    pub code: u16,
    pub reason: String,
    /// caller, callee, lifetime, management; empty for failed calls.
    pub hangup_by: &'static str,
}

/// The queue of records not yet written.
#[derive(Default)]
pub struct Cdrs {
    q: Mutex<Vec<CallRecord>>,
}

impl Cdrs {
    pub fn push(&self, r: CallRecord) {
        self.q.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    }

    /// Records queued since the last call.
    pub fn take(&self) -> Vec<CallRecord> {
        std::mem::take(&mut *self.q.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The user and host parts of a name-addr or URI (`"A" <sip:alice@example.com>;tag=1`).
pub fn user_host(v: &str) -> (String, String) {
    let uri = match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if b > a => &v[a + 1..b],
        _ => v.split(';').next().unwrap_or(v),
    };
    match sip_wire::Uri::parse(uri.trim()) {
        Ok(u) => (
            u.user.unwrap_or("").to_string(),
            if u.host.is_empty() {
                String::new()
            } else {
                match u.port {
                    Some(p) => format!("{}:{p}", u.host),
                    None => u.host.to_string(),
                }
            },
        ),
        Err(_) => (String::new(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_host_of_headers_and_uris() {
        assert_eq!(
            user_host("\"A\" <sip:alice@example.com>;tag=1"),
            ("alice".into(), "example.com".into())
        );
        assert_eq!(
            user_host("sip:5000@10.0.0.1:5080;user=phone"),
            ("5000".into(), "10.0.0.1:5080".into())
        );
        assert_eq!(user_host("<sip:10.0.0.1>"), ("".into(), "10.0.0.1".into()));
        assert_eq!(user_host("garbage"), ("".into(), "".into()));
    }
}
