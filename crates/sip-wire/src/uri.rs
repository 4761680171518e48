use crate::error::ParseError;
use crate::params::Params;

/// A URI scheme the proxy routes, or another absolute-URI scheme (answered with `416`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme<'a> {
    Sip,
    Sips,
    Tel,
    Other(&'a str),
}

/// A parsed SIP, SIPS or tel URI (RFC 3261 §19.1, RFC 3966), borrowing from its text.
///
/// For `tel:` the number is in [`Uri::user`] and `host` is empty. IPv6 hosts keep their
/// brackets so that `host:port` can be printed back unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    pub raw: &'a str,
    pub scheme: Scheme<'a>,
    pub user: Option<&'a str>,
    pub password: Option<&'a str>,
    pub host: &'a str,
    pub port: Option<u16>,
    pub params: Params<'a>,
    pub headers: Option<&'a str>,
}

impl<'a> Uri<'a> {
    /// Parses a URI. Unknown schemes parse as [`Scheme::Other`] with only `raw` set.
    pub fn parse(raw: &'a str) -> Result<Uri<'a>, ParseError> {
        let colon = raw.find(':').ok_or(ParseError::Uri("no scheme"))?;
        let scheme_s = &raw[..colon];
        if scheme_s.is_empty()
            || !scheme_s.as_bytes()[0].is_ascii_alphabetic()
            || !scheme_s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
        {
            return Err(ParseError::Uri("bad scheme"));
        }
        if raw.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(ParseError::Uri("whitespace or control character"));
        }
        let rest = &raw[colon + 1..];
        let scheme = if scheme_s.eq_ignore_ascii_case("sip") {
            Scheme::Sip
        } else if scheme_s.eq_ignore_ascii_case("sips") {
            Scheme::Sips
        } else if scheme_s.eq_ignore_ascii_case("tel") {
            Scheme::Tel
        } else {
            return Ok(Uri {
                raw,
                scheme: Scheme::Other(scheme_s),
                user: None,
                password: None,
                host: "",
                port: None,
                params: Params::default(),
                headers: None,
            });
        };
        if scheme == Scheme::Tel {
            let end = rest.find(';').unwrap_or(rest.len());
            let number = &rest[..end];
            if number.is_empty() {
                return Err(ParseError::Uri("empty tel number"));
            }
            return Ok(Uri {
                raw,
                scheme,
                user: Some(number),
                password: None,
                host: "",
                port: None,
                params: Params::new(&rest[end..]),
                headers: None,
            });
        }
        // '@' appears at most once, as the end of userinfo: no other URI part may hold it
        let (user, password, after_user) = match rest.find('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                if userinfo.is_empty() {
                    return Err(ParseError::Uri("empty user part"));
                }
                check_escapes(userinfo)?;
                let (u, p) = match userinfo.find(':') {
                    Some(c) => (&userinfo[..c], Some(&userinfo[c + 1..])),
                    None => (userinfo, None),
                };
                (Some(u), p, &rest[at + 1..])
            }
            None => (None, None, rest),
        };
        let (hostport_params, headers) = match after_user.find('?') {
            Some(q) => (&after_user[..q], Some(&after_user[q + 1..])),
            None => (after_user, None),
        };
        let (hostport, params) = match hostport_params.find(';') {
            Some(s) => (&hostport_params[..s], &hostport_params[s..]),
            None => (hostport_params, ""),
        };
        check_escapes(params)?;
        let (host, port) = split_host_port(hostport)?;
        Ok(Uri {
            raw,
            scheme,
            user,
            password,
            host,
            port,
            params: Params::new(params),
            headers,
        })
    }

    /// `transport` parameter, lower-cased comparison left to the caller.
    pub fn transport(&self) -> Option<&'a str> {
        self.params.value("transport")
    }

    /// The loose-routing flag `lr` (RFC 3261 §19.1.1).
    pub fn is_loose(&self) -> bool {
        self.params.has("lr")
    }
}

/// Splits `host[:port]`, validating both (IPv6 references in brackets).
pub(crate) fn split_host_port(hp: &str) -> Result<(&str, Option<u16>), ParseError> {
    if hp.is_empty() {
        return Err(ParseError::Uri("empty host"));
    }
    let (host, port_s) = if hp.starts_with('[') {
        let close = hp
            .find(']')
            .ok_or(ParseError::Uri("unterminated IPv6 reference"))?;
        let host = &hp[..=close];
        let inner = &host[1..host.len() - 1];
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(ParseError::Uri("bad IPv6 reference"));
        }
        match &hp[close + 1..] {
            "" => (host, None),
            p if p.starts_with(':') => (host, Some(&p[1..])),
            _ => return Err(ParseError::Uri("garbage after IPv6 reference")),
        }
    } else {
        match hp.rfind(':') {
            Some(c) => (&hp[..c], Some(&hp[c + 1..])),
            None => (hp, None),
        }
    };
    if host.is_empty() {
        return Err(ParseError::Uri("empty host"));
    }
    if !host.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(ParseError::Uri("bad host"));
    }
    let port = match port_s {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseError::Uri("bad port"));
            }
            let n: u32 = p.parse().map_err(|_| ParseError::Uri("bad port"))?;
            if n == 0 || n > 65535 {
                return Err(ParseError::Uri("port out of range"));
            }
            Some(n as u16)
        }
    };
    Ok((host, port))
}

/// Every `%` must start a two-hex-digit escape (RFC 3261 §25.1).
fn check_escapes(s: &str) -> Result<(), ParseError> {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'%', &b[i..]) {
        let at = i + p;
        if !(b.get(at + 1).is_some_and(|c| c.is_ascii_hexdigit())
            && b.get(at + 2).is_some_and(|c| c.is_ascii_hexdigit()))
        {
            return Err(ParseError::Uri("bad escape"));
        }
        i = at + 3;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_sip_uri() {
        let u =
            Uri::parse("sip:alice:secret@example.com:5070;transport=tcp;lr?Subject=hi").unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user, Some("alice"));
        assert_eq!(u.password, Some("secret"));
        assert_eq!(u.host, "example.com");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport(), Some("tcp"));
        assert!(u.is_loose());
        assert_eq!(u.headers, Some("Subject=hi"));
    }

    #[test]
    fn parses_ipv6_host_with_and_without_port() {
        let u = Uri::parse("sips:[2001:db8::10]:5061").unwrap();
        assert_eq!(
            (u.scheme, u.host, u.port),
            (Scheme::Sips, "[2001:db8::10]", Some(5061))
        );
        let u = Uri::parse("sip:bob@[::1]").unwrap();
        assert_eq!((u.host, u.port), ("[::1]", None));
    }

    #[test]
    fn parses_tel_and_other_schemes() {
        let u = Uri::parse("tel:+1-201-555-0123;phone-context=x").unwrap();
        assert_eq!((u.scheme, u.user), (Scheme::Tel, Some("+1-201-555-0123")));
        assert_eq!(u.params.value("phone-context"), Some("x"));
        let u = Uri::parse("unknownscheme:foo@bar").unwrap();
        assert_eq!(u.scheme, Scheme::Other("unknownscheme"));
    }

    #[test]
    fn user_part_may_contain_escaped_at() {
        let u = Uri::parse("sip:a%40b@example.com").unwrap();
        assert_eq!(u.user, Some("a%40b"));
    }

    #[test]
    fn rejects_malformed_uris() {
        for bad in [
            "",
            "sip",
            "sip:",
            ":foo",
            "sip:host:",
            "sip:host:99999",
            "sip:host:0",
            "sip:host:12a",
            "sip:[::1",
            "sip:[zz]",
            "sip:us er@host",
            "sip:a%4@host",
            "sip:a%zz@host",
            "sip:@host",
            "sip:ho$t",
            "1sip:host",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
