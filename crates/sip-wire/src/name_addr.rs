use crate::error::ParseError;
use crate::params::Params;
use crate::split::trim_lws;
use crate::uri::Uri;

/// A `name-addr` or `addr-spec` with header parameters: the value of From, To, Contact,
/// Route, Record-Route and Path (RFC 3261 §20.10, §25.1).
///
/// For an addr-spec without angle brackets, everything after the first `;` is a header
/// parameter, as §20.10 requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub display: Option<&'a str>,
    pub uri: Uri<'a>,
    pub params: Params<'a>,
    /// True when the URI was written in angle brackets.
    pub bracketed: bool,
}

impl<'a> NameAddr<'a> {
    /// Parses one value (already split at commas).
    pub fn parse(value: &'a str, what: &'static str) -> Result<NameAddr<'a>, ParseError> {
        let v = trim_lws(value);
        if v.is_empty() {
            return Err(ParseError::NameAddr(what));
        }
        let b = v.as_bytes();
        // display name: quoted string or tokens before '<'
        let mut i = 0;
        let mut display = None;
        if b[0] == b'"' {
            i = 1;
            loop {
                match b.get(i) {
                    None => return Err(ParseError::NameAddr(what)),
                    Some(b'\\') => i += 2,
                    Some(b'"') => break,
                    Some(_) => i += 1,
                }
            }
            display = Some(&v[..=i]);
            i += 1;
            let rest = trim_lws(&v[i..]);
            if !rest.starts_with('<') {
                return Err(ParseError::NameAddr(what));
            }
            i = v.len() - rest.len();
        } else if let Some(lt) = v.find('<') {
            // tokens before '<' only if no ':' appears before it (otherwise it's an addr-spec)
            let before = trim_lws(&v[..lt]);
            if !before.contains(':') {
                if !before.is_empty() {
                    if !before.bytes().all(|c| {
                        c.is_ascii_alphanumeric() || b"-.!%*_+`'~ \t".contains(&c) || c >= 0x80
                    }) {
                        return Err(ParseError::NameAddr(what));
                    }
                    display = Some(before);
                }
                i = lt;
            }
        }
        if b.get(i) == Some(&b'<') {
            let close = v[i..].find('>').ok_or(ParseError::NameAddr(what))? + i;
            let uri = Uri::parse(&v[i + 1..close])?;
            let after = trim_lws(&v[close + 1..]);
            if !after.is_empty() && !after.starts_with(';') {
                return Err(ParseError::NameAddr(what));
            }
            Ok(NameAddr {
                display,
                uri,
                params: Params::new(after),
                bracketed: true,
            })
        } else {
            let (u, p) = match v.find(';') {
                Some(s) => (&v[..s], &v[s..]),
                None => (v, ""),
            };
            let u = trim_lws(u);
            if u.contains(['<', '>', ',', '?', ' ', '"']) {
                return Err(ParseError::NameAddr(what));
            }
            Ok(NameAddr {
                display: None,
                uri: Uri::parse(u)?,
                params: Params::new(p),
                bracketed: false,
            })
        }
    }

    /// The `tag` parameter (From and To).
    pub fn tag(&self) -> Option<&'a str> {
        self.params.value("tag")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_display_name_and_tag() {
        let n =
            NameAddr::parse(r#""Alice \"A\" Smith" <sip:alice@a.com>;tag=abc"#, "From").unwrap();
        assert_eq!(n.display, Some(r#""Alice \"A\" Smith""#));
        assert_eq!(n.uri.user, Some("alice"));
        assert_eq!(n.tag(), Some("abc"));
    }

    #[test]
    fn parses_token_display_name() {
        let n = NameAddr::parse(
            "Bob Jones <sip:bob@b.com;transport=tcp>;expires=60",
            "Contact",
        )
        .unwrap();
        assert_eq!(n.display, Some("Bob Jones"));
        assert_eq!(n.uri.transport(), Some("tcp"));
        assert_eq!(n.params.value("expires"), Some("60"));
    }

    #[test]
    fn addr_spec_params_belong_to_header() {
        let n = NameAddr::parse("sip:carol@c.com;tag=xyz", "To").unwrap();
        assert_eq!(n.uri.raw, "sip:carol@c.com");
        assert_eq!(n.tag(), Some("xyz"));
        assert!(!n.bracketed);
    }

    #[test]
    fn rejects_malformed_name_addrs() {
        for bad in [
            "",
            "\"unterminated <sip:a@b>",
            "<sip:a@b",
            "<sip:a@b> junk",
            "\"x\" sip:a@b",
            "sip:a@b>",
            "Bad\"Name <sip:a@b>",
            "<>",
        ] {
            assert!(NameAddr::parse(bad, "From").is_err(), "{bad:?}");
        }
    }
}
