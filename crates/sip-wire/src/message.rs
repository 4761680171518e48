use bytes::Bytes;

use crate::error::ParseError;
use crate::header::{HeaderName, Method};
use crate::name_addr::NameAddr;
use crate::split::{split_commas, trim_lws};
use crate::uri::Uri;
use crate::via::Via;

/// A byte range into the message buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
    /// The range as `usize` bounds.
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
    /// Length in bytes.
    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }
    /// True for an empty span.
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// One header line as received. `line` runs from the first byte of the name to the last
/// byte of the value (folded continuation lines included, the final CRLF excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    pub name_span: Span,
    pub value: Span,
    pub line: Span,
}

/// Request line or status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: Method,
        method_span: Span,
        uri: Span,
    },
    Response {
        code: u16,
        reason: Span,
    },
}

/// CSeq: sequence number and method (RFC 3261 §20.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub seq: u32,
    pub method: &'a str,
}

const NONE: u16 = u16::MAX;

/// A parsed SIP message: the received bytes plus an index of spans into them.
#[derive(Debug, Clone)]
pub struct Message {
    buf: Bytes,
    start: StartLine,
    start_line: Span,
    headers: Vec<Header>,
    body: Span,
    first: [u16; 8],
    /// Bit per slot of `first`: the header appears more than once.
    repeated: u8,
    /// What validation parsed, kept as spans: read on every message by the proxy.
    cache: Option<Cache>,
}

/// Spans of the values every proxied message is routed by; empty span = absent.
#[derive(Debug, Clone, Copy, Default)]
struct Cache {
    branch: Span,
    sent_by: Span,
    from_tag: Span,
    to_tag: Span,
    cseq_seq: u32,
    cseq_method: Span,
}

// slots of `first`: the first occurrence of the headers the proxy reads on every message
const VIA: usize = 0;
const CALL_ID: usize = 1;
const FROM: usize = 2;
const TO: usize = 3;
const CSEQ: usize = 4;
const MAX_FWD: usize = 5;
const CLEN: usize = 6;
const ROUTE: usize = 7;

fn slot(name: HeaderName) -> Option<usize> {
    Some(match name {
        HeaderName::Via => VIA,
        HeaderName::CallId => CALL_ID,
        HeaderName::From => FROM,
        HeaderName::To => TO,
        HeaderName::CSeq => CSEQ,
        HeaderName::MaxForwards => MAX_FWD,
        HeaderName::ContentLength => CLEN,
        HeaderName::Route => ROUTE,
        _ => return None,
    })
}

/// The end-of-headers searcher, built once.
pub(crate) fn crlf2() -> &'static memchr::memmem::Finder<'static> {
    static F: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    F.get_or_init(|| memchr::memmem::Finder::new(b"\r\n\r\n"))
}

fn is_control(c: u8) -> bool {
    (c < 0x20 && c != b'\t' && c != b'\r' && c != b'\n') || c == 0x7f
}

/// Branch-free scan (vectorised by the compiler) for any control character but HT, CR, LF.
fn has_control(h: &[u8]) -> bool {
    h.iter().fold(0u8, |acc, &c| {
        acc | (((c < 0x20) & (c != b'\t') & (c != b'\r') & (c != b'\n')) | (c == 0x7f)) as u8
    }) != 0
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

pub(crate) fn trim_bytes(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &b[s..e.max(s)]
}

pub(crate) fn parse_u32(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 10 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u64 = 0;
    for &d in b {
        n = n * 10 + (d - b'0') as u64;
    }
    u32::try_from(n).ok()
}

impl Message {
    /// Parses and validates a whole message (a datagram, or one framed stream message).
    ///
    /// Validation covers the start line, the Request-URI, the mandatory headers (§8.1.1),
    /// the top Via, CSeq (and its method against the request's), From, To, Max-Forwards and
    /// Content-Length. Other headers are only indexed.
    pub fn parse(buf: Bytes) -> Result<Message, ParseError> {
        let mut msg = Message::parse_raw(buf)?;
        msg.validate()?;
        Ok(msg)
    }

    /// The span of a string borrowed from this message's buffer.
    fn span_of(&self, s: &str) -> Span {
        let base = self.buf.as_ptr() as usize;
        let p = s.as_ptr() as usize;
        if p >= base && p + s.len() <= base + self.buf.len() {
            Span::new(p - base, p - base + s.len())
        } else {
            Span::default()
        }
    }

    /// Indexes the message without validating its headers' contents.
    pub fn parse_raw(buf: Bytes) -> Result<Message, ParseError> {
        let b: &[u8] = &buf;
        let mut pos = b.iter().take_while(|&&c| c == b'\r' || c == b'\n').count();
        if pos == b.len() {
            return Err(ParseError::Empty);
        }
        // end of the header section: first empty line (CRLF CRLF, or bare LF LF)
        let (head_end, body_start) = match crlf2().find(&b[pos..]) {
            Some(e) => (pos + e, pos + e + 4),
            None => match memchr::memmem::find(&b[pos..], b"\n\n") {
                Some(e) => (pos + e, pos + e + 2),
                None => return Err(ParseError::Truncated),
            },
        };
        let head = &b[..head_end];
        // control characters are legal only as a quoted-pair (`\` then the character, §25.1)
        let h = &head[pos..];
        if has_control(h)
            && h.iter()
                .enumerate()
                .any(|(i, &c)| is_control(c) && (i == 0 || h[i - 1] != b'\\'))
        {
            return Err(ParseError::ControlChar);
        }
        if std::str::from_utf8(&head[pos..]).is_err() {
            return Err(ParseError::NotUtf8);
        }
        // start line
        let sl_end = memchr::memchr(b'\n', &head[pos..]).map_or(head_end, |e| pos + e);
        let sl_stop = if sl_end > pos && head.get(sl_end - 1) == Some(&b'\r') {
            sl_end - 1
        } else {
            sl_end
        };
        let start_line = Span::new(pos, sl_stop);
        let start = parse_start_line(b, pos, sl_stop)?;
        pos = sl_end + 1;
        // headers
        let mut headers: Vec<Header> = Vec::with_capacity(24);
        let mut first = [NONE; 8];
        let mut repeated = 0u8;
        let mut line_no = 1;
        while pos < head_end {
            let nl = memchr::memchr(b'\n', &head[pos..]).map_or(head_end, |e| pos + e);
            let stop = if nl > pos && head[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            line_no += 1;
            let line = &head[pos..stop];
            if line.first().is_some_and(|&c| c == b' ' || c == b'\t') {
                // folded continuation of the previous header (§7.3.1)
                let last = headers.last_mut().ok_or(ParseError::HeaderLine(line_no))?;
                let tail = trim_bytes(line);
                if !tail.is_empty() {
                    let tail_end = stop
                        - (line.len()
                            - line
                                .iter()
                                .rposition(|c| !c.is_ascii_whitespace())
                                .map_or(0, |p| p + 1));
                    if last.value.is_empty() {
                        let lead = line
                            .iter()
                            .position(|c| !c.is_ascii_whitespace())
                            .unwrap_or(0);
                        last.value = Span::new(pos + lead, tail_end);
                    } else {
                        last.value.end = tail_end as u32;
                    }
                    last.line.end = tail_end as u32;
                }
                pos = nl + 1;
                continue;
            }
            let colon = memchr::memchr(b':', line).ok_or(ParseError::HeaderLine(line_no))?;
            let name_b = trim_bytes(&line[..colon]);
            if name_b.is_empty()
                || !name_b.iter().all(|&c| is_token(c))
                || line[0].is_ascii_whitespace()
            {
                return Err(ParseError::HeaderLine(line_no));
            }
            let name = HeaderName::from_bytes(name_b);
            let vstart = pos + colon + 1;
            let val = &head[vstart..stop];
            let lead = val
                .iter()
                .position(|c| *c != b' ' && *c != b'\t')
                .unwrap_or(val.len());
            let trail = val
                .iter()
                .rposition(|c| *c != b' ' && *c != b'\t')
                .map_or(lead, |p| p + 1);
            let value = Span::new(vstart + lead, vstart + trail.max(lead));
            if let Some(s) = slot(name) {
                if first[s] == NONE {
                    first[s] = headers.len() as u16;
                } else {
                    repeated |= 1 << s;
                }
            }
            if headers.len() >= u16::MAX as usize - 1 {
                return Err(ParseError::TooLarge(b.len()));
            }
            headers.push(Header {
                name,
                name_span: Span::new(pos, pos + name_b.len()),
                value,
                line: Span::new(pos, value.end as usize),
            });
            pos = nl + 1;
        }
        // body
        let avail = b.len().saturating_sub(body_start);
        let body = if first[CLEN] != NONE {
            let h = headers[first[CLEN] as usize];
            let declared =
                parse_u32(&b[h.value.range()]).ok_or(ParseError::ContentLength)? as usize;
            if declared > avail {
                return Err(ParseError::BodyShort {
                    declared,
                    got: avail,
                });
            }
            Span::new(body_start, body_start + declared)
        } else {
            Span::new(body_start.min(b.len()), b.len())
        };
        Ok(Message {
            buf,
            start,
            start_line,
            headers,
            body,
            first,
            repeated,
            cache: None,
        })
    }

    /// Checks what a proxy needs to process the message safely (see [`Message::parse`]).
    pub fn validate(&mut self) -> Result<(), ParseError> {
        for (slot, name) in [
            (VIA, "Via"),
            (CALL_ID, "Call-ID"),
            (FROM, "From"),
            (TO, "To"),
            (CSEQ, "CSeq"),
        ] {
            if self.first[slot] == NONE {
                return Err(ParseError::Missing(name));
            }
        }
        for (hn, what) in [
            (HeaderName::CallId, "Call-ID"),
            (HeaderName::From, "From"),
            (HeaderName::To, "To"),
            (HeaderName::CSeq, "CSeq"),
            (HeaderName::ContentLength, "Content-Length"),
            (HeaderName::MaxForwards, "Max-Forwards"),
        ] {
            if slot(hn).is_some_and(|s| self.repeated & (1 << s) == 0) {
                continue;
            }
            let mut vals = self.all(hn);
            if let Some(first) = vals.next() {
                if vals.any(|v| v != first) {
                    return Err(ParseError::Duplicate(what));
                }
            }
        }
        if self.call_id().is_empty() {
            return Err(ParseError::Missing("Call-ID"));
        }
        let via = self.top_via()?;
        let (branch, sent_by) = (
            via.branch().map(|b| self.span_of(b)).unwrap_or_default(),
            self.span_of(via.sent_by),
        );
        let cseq = self.cseq()?;
        if let StartLine::Request {
            method_span, uri, ..
        } = self.start
        {
            if cseq.method.as_bytes() != &self.buf[method_span.range()] {
                return Err(ParseError::CSeq("method does not match the request"));
            }
            let u = Uri::parse(self.span_str(uri))?;
            if u.headers.is_some() && !matches!(u.scheme, crate::Scheme::Other(_)) {
                return Err(ParseError::Uri("headers are not allowed in a Request-URI"));
            }
        }
        let from_tag = self
            .from()?
            .tag()
            .map(|t| self.span_of(t))
            .unwrap_or_default();
        let to_tag = self
            .to()?
            .tag()
            .map(|t| self.span_of(t))
            .unwrap_or_default();
        let (cseq_seq, cseq_method) = (cseq.seq, self.span_of(cseq.method));
        self.cache = Some(Cache {
            branch,
            sent_by,
            from_tag,
            to_tag,
            cseq_seq,
            cseq_method,
        });
        self.max_forwards()?;
        Ok(())
    }

    /// The buffer the message was parsed from.
    pub fn bytes(&self) -> &Bytes {
        &self.buf
    }

    /// The text of a span (empty if the span is not UTF-8, which validation excludes).
    pub fn span_str(&self, s: Span) -> &str {
        self.buf
            .get(s.range())
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// The start line.
    pub fn start(&self) -> StartLine {
        self.start
    }

    /// The start line's span, CRLF excluded.
    pub fn start_line_span(&self) -> Span {
        self.start_line
    }

    /// True for a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method, or `None` for a response.
    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            _ => None,
        }
    }

    /// The method token as written (for a response, the CSeq method).
    pub fn method_str(&self) -> &str {
        match self.start {
            StartLine::Request { method_span, .. } => self.span_str(method_span),
            _ => self.cseq().map(|c| c.method).unwrap_or(""),
        }
    }

    /// The Request-URI text.
    pub fn uri_str(&self) -> &str {
        match self.start {
            StartLine::Request { uri, .. } => self.span_str(uri),
            _ => "",
        }
    }

    /// The parsed Request-URI.
    pub fn uri(&self) -> Result<Uri<'_>, ParseError> {
        Uri::parse(self.uri_str())
    }

    /// The status code, or `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The reason phrase of a response.
    pub fn reason(&self) -> &str {
        match self.start {
            StartLine::Response { reason, .. } => self.span_str(reason),
            _ => "",
        }
    }

    /// Every header in order.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// The value text of a header.
    pub fn value(&self, h: &Header) -> &str {
        self.span_str(h.value)
    }

    /// The first value of a header, whole line value (not split at commas).
    pub fn get(&self, name: HeaderName) -> Option<&str> {
        if let Some(s) = slot(name) {
            let i = self.first[s];
            return (i != NONE).then(|| self.span_str(self.headers[i as usize].value));
        }
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| self.span_str(h.value))
    }

    /// The first value of an extension header, by case-insensitive name.
    pub fn get_other(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| {
                h.name == HeaderName::Other
                    && self.buf[h.name_span.range()].eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|h| self.span_str(h.value))
    }

    /// The first value of any header by name, long or compact form, any case (known headers
    /// included, unlike [`Message::get_other`]).
    pub fn get_named(&self, name: &str) -> Option<&str> {
        match HeaderName::from_bytes(name.as_bytes()) {
            HeaderName::Other => self.get_other(name),
            known => self.get(known),
        }
    }

    /// Every line value of a header, in order (each may hold several comma-separated values).
    pub fn all(&self, name: HeaderName) -> impl Iterator<Item = &str> + '_ {
        let from = slot(name).map_or(0, |s| {
            if self.first[s] == NONE {
                self.headers.len()
            } else {
                self.first[s] as usize
            }
        });
        self.headers[from..]
            .iter()
            .filter(move |h| h.name == name)
            .map(|h| self.span_str(h.value))
    }

    /// Every comma-separated value of a header, across all its lines, in order.
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = &str> + '_ {
        self.all(name).flat_map(split_commas)
    }

    /// Index of the first header with this name.
    pub fn position(&self, name: HeaderName) -> Option<usize> {
        match slot(name) {
            Some(s) => (self.first[s] != NONE).then_some(self.first[s] as usize),
            None => self.headers.iter().position(|h| h.name == name),
        }
    }

    /// The topmost Via value.
    pub fn top_via(&self) -> Result<Via<'_>, ParseError> {
        let v = self
            .values(HeaderName::Via)
            .next()
            .ok_or(ParseError::Missing("Via"))?;
        Via::parse(v)
    }

    /// The top Via's branch parameter (cached once validated).
    pub fn branch(&self) -> Option<&str> {
        match &self.cache {
            Some(c) => (!c.branch.is_empty()).then(|| self.span_str(c.branch)),
            None => self.top_via().ok().and_then(|v| v.branch()),
        }
    }

    /// The top Via's sent-by, `host[:port]` as written (cached once validated).
    pub fn sent_by(&self) -> Option<&str> {
        match &self.cache {
            Some(c) => Some(self.span_str(c.sent_by)),
            None => self.top_via().ok().map(|v| v.sent_by),
        }
    }

    /// The From tag (cached once validated).
    pub fn from_tag(&self) -> Option<&str> {
        match &self.cache {
            Some(c) => (!c.from_tag.is_empty()).then(|| self.span_str(c.from_tag)),
            None => self.from().ok().and_then(|f| f.tag()),
        }
    }

    /// The To tag (cached once validated).
    pub fn to_tag(&self) -> Option<&str> {
        match &self.cache {
            Some(c) => (!c.to_tag.is_empty()).then(|| self.span_str(c.to_tag)),
            None => self.to().ok().and_then(|t| t.tag()),
        }
    }

    /// Every Via value, top first.
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'_>, ParseError>> + '_ {
        self.values(HeaderName::Via).map(Via::parse)
    }

    /// The Call-ID.
    pub fn call_id(&self) -> &str {
        self.get(HeaderName::CallId).unwrap_or("")
    }

    /// CSeq, parsed.
    pub fn cseq(&self) -> Result<CSeq<'_>, ParseError> {
        if let Some(c) = &self.cache {
            return Ok(CSeq {
                seq: c.cseq_seq,
                method: self.span_str(c.cseq_method),
            });
        }
        let v = self
            .get(HeaderName::CSeq)
            .ok_or(ParseError::Missing("CSeq"))?;
        let v = trim_lws(v);
        let sp = v
            .find([' ', '\t', '\r', '\n'])
            .ok_or(ParseError::CSeq("no method"))?;
        let num = &v[..sp];
        let method = trim_lws(&v[sp..]);
        let seq = parse_u32(num.as_bytes())
            .filter(|n| *n < 1 << 31)
            .ok_or(ParseError::CSeq("bad sequence number"))?;
        if method.is_empty() || !method.bytes().all(is_token) {
            return Err(ParseError::CSeq("bad method"));
        }
        Ok(CSeq { seq, method })
    }

    /// From, parsed.
    pub fn from(&self) -> Result<NameAddr<'_>, ParseError> {
        NameAddr::parse(
            self.get(HeaderName::From)
                .ok_or(ParseError::Missing("From"))?,
            "From",
        )
    }

    /// To, parsed.
    pub fn to(&self) -> Result<NameAddr<'_>, ParseError> {
        NameAddr::parse(
            self.get(HeaderName::To).ok_or(ParseError::Missing("To"))?,
            "To",
        )
    }

    /// Max-Forwards, or `None` when absent.
    pub fn max_forwards(&self) -> Result<Option<u8>, ParseError> {
        match self.get(HeaderName::MaxForwards) {
            None => Ok(None),
            Some(v) => parse_u32(v.as_bytes())
                .and_then(|n| u8::try_from(n).ok())
                .map(Some)
                .ok_or(ParseError::MaxForwards),
        }
    }

    /// The message body.
    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.range()]
    }

    /// The body span.
    pub fn body_span(&self) -> Span {
        self.body
    }

    /// Prints the message in canonical form: the start line, each header as `Name: value`
    /// (names as received), a Content-Length matching the body, and the body.
    pub fn print(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buf.len() + 32);
        out.extend_from_slice(&self.buf[self.start_line.range()]);
        out.extend_from_slice(b"\r\n");
        for h in &self.headers {
            if h.name == HeaderName::ContentLength {
                continue;
            }
            out.extend_from_slice(&self.buf[h.name_span.range()]);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&self.buf[h.value.range()]);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes());
        out.extend_from_slice(self.body());
        out
    }
}

fn parse_start_line(b: &[u8], start: usize, end: usize) -> Result<StartLine, ParseError> {
    let line = &b[start..end];
    if line.starts_with(b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let sp1 = memchr::memchr(b' ', line).ok_or(ParseError::StartLine("no status code"))?;
        if &line[..sp1] != b"SIP/2.0" {
            return Err(ParseError::Version);
        }
        let rest = &line[sp1 + 1..];
        let code_end = rest.iter().position(|&c| c == b' ').unwrap_or(rest.len());
        let code_b = &rest[..code_end];
        if code_b.len() != 3 || !code_b.iter().all(u8::is_ascii_digit) {
            return Err(ParseError::StartLine("status code must be three digits"));
        }
        let code = (code_b[0] - b'0') as u16 * 100
            + (code_b[1] - b'0') as u16 * 10
            + (code_b[2] - b'0') as u16;
        if !(100..=699).contains(&code) {
            return Err(ParseError::StartLine("status code out of range"));
        }
        let rs = start + sp1 + 1 + (code_end + 1).min(rest.len());
        return Ok(StartLine::Response {
            code,
            reason: Span::new(rs.min(end), end),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version (single spaces, §7.1)
    let sp1 = memchr::memchr(b' ', line).ok_or(ParseError::StartLine("no Request-URI"))?;
    let method_b = &line[..sp1];
    if method_b.is_empty() || !method_b.iter().all(|&c| is_token(c)) {
        return Err(ParseError::StartLine("bad method"));
    }
    let rest = &line[sp1 + 1..];
    let sp2 = memchr::memrchr(b' ', rest).ok_or(ParseError::StartLine("no SIP version"))?;
    let uri_b = &rest[..sp2];
    let version = &rest[sp2 + 1..];
    if uri_b.is_empty() || uri_b.iter().any(|&c| c == b' ' || c == b'\t') {
        return Err(ParseError::StartLine("whitespace in Request-URI"));
    }
    if !version.starts_with(b"SIP/") {
        return Err(ParseError::StartLine("bad SIP version"));
    }
    if version != b"SIP/2.0" {
        return Err(ParseError::Version);
    }
    Ok(StartLine::Request {
        method: Method::from_bytes(method_b),
        method_span: Span::new(start, start + sp1),
        uri: Span::new(start + sp1 + 1, start + sp1 + 1 + sp2),
    })
}

#[cfg(test)]
mod tests;
