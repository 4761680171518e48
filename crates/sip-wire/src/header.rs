/// The header names the proxy core looks at; every other name is [`HeaderName::Other`].
///
/// Compact forms (RFC 3261 §7.3.3 and the RFCs that define `o`, `r`, `u`, `x`, `b`) map to the
/// same variant as their long names; comparison is case-insensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderName {
    Via,
    CallId,
    From,
    To,
    CSeq,
    Contact,
    ContentLength,
    ContentType,
    ContentEncoding,
    MaxForwards,
    Route,
    RecordRoute,
    ProxyRequire,
    Require,
    Supported,
    Unsupported,
    Expires,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    Path,
    Subject,
    Event,
    ReferTo,
    AllowEvents,
    SessionExpires,
    ReferredBy,
    Allow,
    Other,
}

impl HeaderName {
    /// Classifies a header name as received (long or compact form, any case).
    pub fn from_bytes(name: &[u8]) -> HeaderName {
        use HeaderName::*;
        if name.len() == 1 {
            return match name[0].to_ascii_lowercase() {
                b'v' => Via,
                b'i' => CallId,
                b'f' => From,
                b't' => To,
                b'm' => Contact,
                b'l' => ContentLength,
                b'c' => ContentType,
                b'e' => ContentEncoding,
                b'k' => Supported,
                b's' => Subject,
                b'o' => Event,
                b'r' => ReferTo,
                b'u' => AllowEvents,
                b'x' => SessionExpires,
                b'b' => ReferredBy,
                _ => Other,
            };
        }
        let candidates: &[(&str, HeaderName)] = match name.len() {
            2 => &[("To", To)],
            3 => &[("Via", Via)],
            4 => &[("From", From), ("CSeq", CSeq), ("Path", Path)],
            5 => &[("Route", Route), ("Event", Event), ("Allow", Allow)],
            7 => &[
                ("Call-ID", CallId),
                ("Contact", Contact),
                ("Expires", Expires),
                ("Require", Require),
                ("Subject", Subject),
            ],
            8 => &[("Refer-To", ReferTo)],
            9 => &[("Supported", Supported)],
            11 => &[("Unsupported", Unsupported), ("Referred-By", ReferredBy)],
            12 => &[
                ("Max-Forwards", MaxForwards),
                ("Record-Route", RecordRoute),
                ("Content-Type", ContentType),
                ("Allow-Events", AllowEvents),
            ],
            13 => &[
                ("Proxy-Require", ProxyRequire),
                ("Authorization", Authorization),
            ],
            14 => &[("Content-Length", ContentLength)],
            15 => &[("Session-Expires", SessionExpires)],
            16 => &[
                ("WWW-Authenticate", WwwAuthenticate),
                ("Content-Encoding", ContentEncoding),
            ],
            18 => &[("Proxy-Authenticate", ProxyAuthenticate)],
            19 => &[("Proxy-Authorization", ProxyAuthorization)],
            _ => &[],
        };
        for (long, v) in candidates {
            if long.as_bytes().eq_ignore_ascii_case(name) {
                return *v;
            }
        }
        Other
    }

    /// The canonical long name, as the printer writes it.
    pub fn as_str(self) -> Option<&'static str> {
        use HeaderName::*;
        Some(match self {
            Via => "Via",
            CallId => "Call-ID",
            From => "From",
            To => "To",
            CSeq => "CSeq",
            Contact => "Contact",
            ContentLength => "Content-Length",
            ContentType => "Content-Type",
            ContentEncoding => "Content-Encoding",
            MaxForwards => "Max-Forwards",
            Route => "Route",
            RecordRoute => "Record-Route",
            ProxyRequire => "Proxy-Require",
            Require => "Require",
            Supported => "Supported",
            Unsupported => "Unsupported",
            Expires => "Expires",
            Authorization => "Authorization",
            ProxyAuthorization => "Proxy-Authorization",
            WwwAuthenticate => "WWW-Authenticate",
            ProxyAuthenticate => "Proxy-Authenticate",
            Path => "Path",
            Subject => "Subject",
            Event => "Event",
            ReferTo => "Refer-To",
            AllowEvents => "Allow-Events",
            SessionExpires => "Session-Expires",
            ReferredBy => "Referred-By",
            Allow => "Allow",
            Other => return None,
        })
    }
}

/// A request method. Extension methods are [`Method::Other`]; their name stays in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Other,
}

impl Method {
    /// Classifies a method token (case-sensitive, RFC 3261 §7.1).
    pub fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"REGISTER" => Method::Register,
            b"OPTIONS" => Method::Options,
            b"INFO" => Method::Info,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"PUBLISH" => Method::Publish,
            _ => Method::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_long_forms_are_the_same_header() {
        for (short, long) in [
            ("v", "Via"),
            ("i", "Call-ID"),
            ("f", "From"),
            ("t", "To"),
            ("m", "Contact"),
            ("l", "Content-Length"),
            ("k", "Supported"),
            ("s", "Subject"),
            ("c", "Content-Type"),
            ("e", "Content-Encoding"),
            ("o", "Event"),
            ("r", "Refer-To"),
            ("u", "Allow-Events"),
        ] {
            assert_eq!(
                HeaderName::from_bytes(short.as_bytes()),
                HeaderName::from_bytes(long.as_bytes()),
                "{short}"
            );
            assert_ne!(
                HeaderName::from_bytes(long.as_bytes()),
                HeaderName::Other,
                "{long}"
            );
        }
    }

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!(HeaderName::from_bytes(b"cAlL-iD"), HeaderName::CallId);
        assert_eq!(
            HeaderName::from_bytes(b"RECORD-ROUTE"),
            HeaderName::RecordRoute
        );
        assert_eq!(
            HeaderName::from_bytes(b"max-forwards"),
            HeaderName::MaxForwards
        );
        assert_eq!(HeaderName::from_bytes(b"X-Custom"), HeaderName::Other);
    }

    #[test]
    fn every_long_name_round_trips() {
        use HeaderName::*;
        for h in [
            Via,
            CallId,
            From,
            To,
            CSeq,
            Contact,
            ContentLength,
            ContentType,
            ContentEncoding,
            MaxForwards,
            Route,
            RecordRoute,
            ProxyRequire,
            Require,
            Supported,
            Unsupported,
            Expires,
            Authorization,
            ProxyAuthorization,
            WwwAuthenticate,
            ProxyAuthenticate,
            Path,
            Subject,
            Event,
            ReferTo,
            AllowEvents,
            SessionExpires,
            ReferredBy,
            Allow,
        ] {
            assert_eq!(HeaderName::from_bytes(h.as_str().unwrap().as_bytes()), h);
        }
    }
}
