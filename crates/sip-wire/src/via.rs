use crate::error::ParseError;
use crate::params::Params;
use crate::split::trim_lws;
use crate::uri::split_host_port;

/// One Via value: `SIP/2.0/UDP host:port;branch=...;received=...;rport` (RFC 3261 §20.42,
/// RFC 3581).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    pub raw: &'a str,
    /// The transport token as written (`UDP`, `TCP`, `TLS`, `WS`, `WSS`, ...).
    pub transport: &'a str,
    pub host: &'a str,
    pub port: Option<u16>,
    pub params: Params<'a>,
    /// `host[:port]` exactly as written, used in transaction matching (§17.2.3).
    pub sent_by: &'a str,
}

impl<'a> Via<'a> {
    /// Parses one Via value (already split at commas).
    pub fn parse(value: &'a str) -> Result<Via<'a>, ParseError> {
        let v = trim_lws(value);
        let (proto, rest) = split_ws(v).ok_or(ParseError::Via("no sent-by"))?;
        let mut parts = proto.split('/').map(trim_lws);
        let (name, version, transport) =
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(n), Some(ver), Some(t), None) => (n, ver, t),
                _ => return Err(ParseError::Via("bad sent-protocol")),
            };
        if !name.eq_ignore_ascii_case("SIP")
            || version != "2.0"
            || transport.is_empty()
            || !transport
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(ParseError::Via("bad sent-protocol"));
        }
        let rest = trim_lws(rest);
        let (sent_by, params) = match rest.find(';') {
            Some(s) => (trim_lws(&rest[..s]), &rest[s..]),
            None => (rest, ""),
        };
        // "host : port" with spaces is legal LWS; collapse by rejecting inner spaces simply
        if sent_by.contains([' ', '\t']) {
            return Err(ParseError::Via("whitespace in sent-by"));
        }
        let (host, port) = split_host_port(sent_by).map_err(|_| ParseError::Via("bad sent-by"))?;
        if !Params::new(params).is_well_formed() {
            return Err(ParseError::Via("empty or malformed parameter"));
        }
        let via = Via {
            raw: v,
            transport,
            host,
            port,
            params: Params::new(params),
            sent_by,
        };
        if let Some(b) = via.params.get("branch") {
            if b.is_none_or(|b| b.is_empty()) {
                return Err(ParseError::Via("empty branch"));
            }
        }
        if let Some(Some(rp)) = via.params.get("rport") {
            if rp.parse::<u16>().is_err() {
                return Err(ParseError::Via("bad rport"));
            }
        }
        Ok(via)
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.params.value("branch")
    }

    /// The `received` parameter.
    pub fn received(&self) -> Option<&'a str> {
        self.params.value("received")
    }

    /// `None`: no rport; `Some(None)`: rport requested, not filled; `Some(Some(p))`: filled.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params
            .get("rport")
            .map(|v| v.and_then(|p| p.parse().ok()))
    }

    /// True when the branch carries the RFC 3261 magic cookie.
    pub fn is_rfc3261(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.starts_with(crate::BRANCH_MAGIC))
    }
}

fn split_ws(s: &str) -> Option<(&str, &str)> {
    // sent-protocol may contain LWS around '/', so find the first whitespace after the transport token
    let b = s.as_bytes();
    let mut slashes = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' => slashes += 1,
            b' ' | b'\t' | b'\r' | b'\n' if slashes == 2 => {
                // skip whitespace directly after the second slash
                let before = trim_lws(&s[..i]);
                if !before.ends_with('/') {
                    return Some((&s[..i], &s[i..]));
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_via_with_rport_and_received() {
        let v = Via::parse("SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK776;rport;received=1.2.3.4")
            .unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!((v.host, v.port), ("10.0.0.5", Some(5062)));
        assert_eq!(v.branch(), Some("z9hG4bK776"));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.received(), Some("1.2.3.4"));
        assert!(v.is_rfc3261());
        assert_eq!(v.sent_by, "10.0.0.5:5062");
    }

    #[test]
    fn parses_ipv6_sent_by_and_lws_in_protocol() {
        let v =
            Via::parse("SIP / 2.0 / TCP [2001:db8::9]:5060 ;branch=z9hG4bKx;maddr=1.1.1.1;alias")
                .unwrap();
        assert_eq!(v.transport, "TCP");
        assert_eq!((v.host, v.port), ("[2001:db8::9]", Some(5060)));
        assert_eq!(v.params.value("maddr"), Some("1.1.1.1"));
        assert!(v.params.has("alias"));
    }

    #[test]
    fn rfc2543_branch_is_detected() {
        let v = Via::parse("SIP/2.0/UDP h.example.com;branch=1234").unwrap();
        assert!(!v.is_rfc3261());
        assert_eq!(v.port, None);
    }

    #[test]
    fn rejects_malformed_vias() {
        for bad in [
            "",
            "SIP/2.0/UDP",
            "SIP/2.0 host",
            "SIP/3.0/UDP host",
            "SIP/2.0/UDP host:99999",
            "SIP/2.0/UDP host;branch=",
            "SIP/2.0/UDP host;rport=abc",
            "SIP/2.0/ host",
            "SIP/2.0/UDP ho st",
            "SIP/2.0/UDP h;;",
            "SIP/2.0/UDP h;=x",
        ] {
            assert!(Via::parse(bad).is_err(), "{bad:?}");
        }
    }
}
