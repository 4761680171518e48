//! Call accounting (OpenSIPS `acc`): one record per answered call when its dialog ends, one
//! per failed or cancelled call. The core queues them; the binary writes them to the `acc`
//! and `missed_calls` tables.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::dialog::{field, Dialog, Packed};

/// How long a refused call is remembered (Timer H / 64·T1: its INVITE's retransmissions).
const REFUSED_MEMORY: Duration = Duration::from_secs(32);

/// One call, as accounted. Its strings are packed in the dialog layout
/// ([`crate::dialog::field`]): an answered call takes a copy of its dialog's text (one
/// allocation), a failed one packs Call-ID, tags, From, To and Request-URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// True for an answered call (`acc`), false for a failed one (`missed_calls`).
    pub answered: bool,
    text: Packed<{ field::COUNT }>,
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
    pub reason: Box<str>,
    /// caller, callee, lifetime, management; empty for failed calls.
    pub hangup_by: &'static str,
}

impl CallRecord {
    /// An answered call whose dialog ended at `end` (UNIX seconds).
    pub fn answered(d: &Dialog, end: u64, hangup_by: &'static str) -> CallRecord {
        CallRecord {
            answered: true,
            text: d.text().clone(),
            source: Some(d.caller.target.addr),
            node: d.node.clone(),
            setup: d.created_unix,
            answer: d.answered_unix,
            end,
            duration: end.saturating_sub(d.answered_unix.unwrap_or(end)),
            code: 200,
            reason: "OK".into(),
            hangup_by,
        }
    }

    /// A call that failed with `code` at `at` (UNIX seconds).
    #[allow(clippy::too_many_arguments)]
    pub fn failed(
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        from_uri: &str,
        to_uri: &str,
        ruri: &str,
        source: Option<SocketAddr>,
        node: Option<Arc<str>>,
        at: u64,
        code: u16,
        reason: &str,
    ) -> CallRecord {
        CallRecord {
            answered: false,
            text: Packed::new([
                call_id, from_tag, to_tag, from_uri, "", "", to_uri, "", "", ruri,
            ]),
            source,
            node,
            setup: at,
            answer: None,
            end: at,
            duration: 0,
            code,
            reason: reason.into(),
            hangup_by: "",
        }
    }

    crate::dialog::call_text_accessors!();

    /// The From header value.
    pub fn from_uri(&self) -> &str {
        self.text.get(field::CALLER_PARTY)
    }
    /// The To header value.
    pub fn to_uri(&self) -> &str {
        self.text.get(field::CALLEE_PARTY)
    }
}

/// The queue of records not yet written.
#[derive(Default)]
pub struct Cdrs {
    q: Mutex<Vec<CallRecord>>,
    /// Calls refused by the proxy itself in the last 32 s (a retransmission of their
    /// INVITE is refused again, but recorded once), by a hash of Call-ID and From tag.
    refused: Mutex<HashMap<u64, Instant>>,
    /// Records made so far: answered calls, and failed or cancelled ones.
    pub answered: std::sync::atomic::AtomicU64,
    pub missed: std::sync::atomic::AtomicU64,
}

impl Cdrs {
    pub fn push(&self, r: CallRecord) {
        let n = if r.answered {
            &self.answered
        } else {
            &self.missed
        };
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.q.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    }

    /// Pushes `r` unless the same call was pushed this way in the last 32 s.
    pub fn push_once(&self, now: Instant, r: CallRecord) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        r.call_id().hash(&mut h);
        r.from_tag().hash(&mut h);
        let key = h.finish();
        {
            let mut seen = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() > 4096 {
                seen.retain(|_, t| now.saturating_duration_since(*t) < REFUSED_MEMORY);
            }
            match seen.get(&key) {
                Some(t) if now.saturating_duration_since(*t) < REFUSED_MEMORY => return,
                _ => {
                    seen.insert(key, now);
                }
            }
        }
        self.push(r);
    }

    /// Returns records that could not be written to the front of the queue.
    pub fn put_back(&self, mut records: Vec<CallRecord>) {
        if records.is_empty() {
            return;
        }
        let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        records.append(&mut q);
        *q = records;
    }

    /// Records queued since the last call.
    pub fn take(&self) -> Vec<CallRecord> {
        std::mem::take(&mut *self.q.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The user and domain columns of a CDR from a name-addr or URI, as slices of it, the way
/// OpenSIPS' `acc` writes them: `"A" <sip:alice@example.com:5080>;tag=1` → `alice`,
/// `example.com` (the host without the port). Every scheme gives something sensible and
/// nothing can panic: `tel:+1555` → `+1555` and no domain; another scheme (`urn:service:sos`)
/// → its scheme-specific part as the user; what does not parse → empty strings.
pub fn user_host(v: &str) -> (&str, &str) {
    let uri = match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if b > a => &v[a + 1..b],
        _ => v.split(';').next().unwrap_or(v),
    }
    .trim();
    let Ok(u) = sip_wire::Uri::parse(uri) else {
        return ("", "");
    };
    match u.scheme {
        sip_wire::Scheme::Sip | sip_wire::Scheme::Sips => (u.user.unwrap_or(""), u.host),
        sip_wire::Scheme::Tel => (u.user.unwrap_or(""), ""),
        sip_wire::Scheme::Other(_) => {
            let opaque = uri.split_once(':').map_or("", |(_, rest)| rest);
            (opaque.split(';').next().unwrap_or(""), "")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_put_back_go_before_newer_ones() {
        let c = Cdrs::default();
        let rec =
            |id: &str| CallRecord::failed(id, "t", "", "", "", "", None, None, 1, 486, "Busy");
        c.push(rec("a"));
        let batch = c.take();
        c.push(rec("b"));
        c.put_back(batch);
        c.put_back(Vec::new());
        let ids: Vec<String> = c.take().iter().map(|r| r.call_id().to_string()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(c.take().is_empty());
    }

    #[test]
    fn user_and_host_of_headers_and_uris() {
        assert_eq!(
            user_host("\"A\" <sip:alice@example.com>;tag=1"),
            ("alice", "example.com")
        );
        assert_eq!(
            user_host("sip:5000@10.0.0.1:5080;user=phone"),
            ("5000", "10.0.0.1"),
            "the domain column has no port, as OpenSIPS writes it"
        );
        assert_eq!(user_host("<sip:10.0.0.1>"), ("", "10.0.0.1"));
        assert_eq!(
            user_host("<sips:bob@[2001:db8::1]:5061;transport=tls>"),
            ("bob", "[2001:db8::1]")
        );
        assert_eq!(user_host("<sip:carol@[::1]>"), ("carol", "[::1]"));
        assert_eq!(
            user_host("sip:h.example.com:5060?Subject=x"),
            ("", "h.example.com")
        );
        assert_eq!(user_host("garbage"), ("", ""));
        assert_eq!(user_host("<sip:@>"), ("", ""));
        assert_eq!(user_host("<sip:a@b:99999>"), ("", ""), "port out of range");
    }

    /// Every scheme a request may carry gives a CDR its columns; `foo:bar` as Request-URI
    /// once panicked the writer (a host slice taken from a URI with no host).
    #[test]
    fn user_and_host_of_every_scheme() {
        assert_eq!(user_host("foo:bar"), ("bar", ""));
        assert_eq!(user_host("<tel:+15550000>;tag=x"), ("+15550000", ""));
        assert_eq!(
            user_host("tel:+1-555-1234;phone-context=+1"),
            ("+1-555-1234", "")
        );
        assert_eq!(user_host("urn:service:sos"), ("service:sos", ""));
        assert_eq!(user_host("<urn:service:sos;x=1>"), ("service:sos", ""));
        assert_eq!(user_host("mailto:a@b.example"), ("a@b.example", ""));
        assert_eq!(user_host("x:"), ("", ""));
        assert_eq!(user_host(""), ("", ""));
        assert_eq!(user_host("<>"), ("", ""));
        assert_eq!(user_host("><"), ("", ""));
        assert_eq!(user_host("tel:"), ("", ""));
        assert_eq!(user_host("\u{e9}:\u{e9}"), ("", ""));
    }

    /// No text at all makes `user_host` panic (it once sliced by pointer offsets).
    #[test]
    fn user_host_never_panics_on_hostile_text() {
        let parts = [
            "", "<", ">", ":", ";", "@", "sip", "tel", "urn", "foo", "sips", "[", "]", "::1",
            "5060", "a", "\u{e9}", " ", "?", "=", "%", "%4", "+",
        ];
        let mut n = 0u64;
        for a in parts {
            for b in parts {
                for c in parts {
                    for d in parts {
                        let s = format!("{a}{b}{c}{d}");
                        let (u, h) = user_host(&s);
                        assert!(u.len() <= s.len() && h.len() <= s.len());
                        n += 1;
                    }
                }
            }
        }
        assert!(n > 100_000);
    }
}
