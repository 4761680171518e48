//! SIP over WebSocket (RFC 7118): the opening handshake (RFC 6455 §4.2) with the `sip`
//! subprotocol and an `Origin` allow-list, and the server side of the frame codec (§5).
//! Pure functions over byte buffers, so every hostile input is tested without a socket.
//!
//! Written here rather than taken from a WebSocket crate because the limits must act before
//! memory is spent: a frame's declared length is refused before its payload is buffered,
//! the handshake is bounded in size and time by the connection layer, and an idle
//! connection keeps no read buffer of its own (see `stream.rs`).

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};

/// Largest opening handshake accepted (request line and headers).
pub const MAX_HANDSHAKE: usize = 8 << 10;

/// RFC 6455 §1.3: appended to the client's key before hashing.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What the opening handshake came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// The request is not complete yet.
    NeedMore,
    /// Switch to WebSocket: write `response`; the request took `consumed` bytes (what
    /// follows is already frames).
    Upgrade { response: Vec<u8>, consumed: usize },
    /// Answer with `response` and close: `reason` for the log and the counters.
    Refuse { response: Vec<u8>, reason: Refusal },
}

/// Why a handshake was refused (or answered without an upgrade).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A plain HTTP request (no upgrade): answered with a short JSON page.
    PlainHttp,
    /// Not HTTP, or a WebSocket request missing what RFC 6455 requires.
    Malformed,
    /// The client does not offer the `sip` subprotocol.
    Subprotocol,
    /// The page's `Origin` is not on the allow-list.
    Origin,
    /// The request is larger than [`MAX_HANDSHAKE`].
    TooLarge,
}

impl Refusal {
    /// The label used in logs and `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PlainHttp => "plain_http",
            Refusal::Malformed => "bad_handshake",
            Refusal::Subprotocol => "subprotocol",
            Refusal::Origin => "origin",
            Refusal::TooLarge => "handshake_too_large",
        }
    }
}

fn http_answer(status: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn refuse(status: &str, extra: &str, reason: Refusal, why: &str) -> Handshake {
    let body = format!("{{\"error\":\"{why}\"}}\n");
    Handshake::Refuse {
        response: http_answer(status, extra, &body),
        reason,
    }
}

/// True when the comma-separated header value holds `token` (case-insensitive).
fn has_token(v: &str, token: &str) -> bool {
    v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Reads the opening handshake from `buf` and decides. `origins`: the allowed `Origin`
/// values (empty: any origin, as OpenSIPS and Kamailio accept by default).
pub fn handshake(buf: &[u8], origins: &[String]) -> Handshake {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HANDSHAKE => return Handshake::NeedMore,
        Ok(httparse::Status::Partial) => {
            return refuse(
                "431 Request Header Fields Too Large",
                "",
                Refusal::TooLarge,
                "request too large",
            )
        }
        Err(httparse::Error::TooManyHeaders) => {
            return refuse(
                "431 Request Header Fields Too Large",
                "",
                Refusal::TooLarge,
                "too many header fields",
            )
        }
        Err(_) => return refuse("400 Bad Request", "", Refusal::Malformed, "not HTTP"),
    };
    if consumed > MAX_HANDSHAKE {
        return refuse(
            "431 Request Header Fields Too Large",
            "",
            Refusal::TooLarge,
            "request too large",
        );
    }
    let get = |name: &str| -> Option<&str> {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let all = |name: &str| -> Vec<&str> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect()
    };
    let upgrade = get("Upgrade").is_some_and(|u| has_token(u, "websocket"))
        && all("Connection").iter().any(|c| has_token(c, "upgrade"));
    if req.method != Some("GET") {
        return refuse(
            "405 Method Not Allowed",
            "Allow: GET\r\n",
            Refusal::Malformed,
            "only GET opens a WebSocket",
        );
    }
    if !upgrade {
        let body = "{\"service\":\"switchboard\",\"detail\":\"SIP over WebSocket (RFC 7118): open a WebSocket with the sip subprotocol\"}\n";
        return Handshake::Refuse {
            response: http_answer("200 OK", "", body),
            reason: Refusal::PlainHttp,
        };
    }
    if get("Sec-WebSocket-Version") != Some("13") {
        return refuse(
            "426 Upgrade Required",
            "Sec-WebSocket-Version: 13\r\n",
            Refusal::Malformed,
            "WebSocket version 13 required",
        );
    }
    let key = match get("Sec-WebSocket-Key") {
        Some(k)
            if base64::engine::general_purpose::STANDARD
                .decode(k)
                .is_ok_and(|d| d.len() == 16) =>
        {
            k
        }
        _ => {
            return refuse(
                "400 Bad Request",
                "",
                Refusal::Malformed,
                "missing or bad Sec-WebSocket-Key",
            )
        }
    };
    if !all("Sec-WebSocket-Protocol")
        .iter()
        .any(|p| has_token(p, "sip"))
    {
        return refuse(
            "400 Bad Request",
            "",
            Refusal::Subprotocol,
            "the sip subprotocol is required (RFC 7118)",
        );
    }
    if !origins.is_empty() {
        let ok = get("Origin").is_some_and(|o| {
            origins.iter().any(|a| {
                a.trim_end_matches('/')
                    .eq_ignore_ascii_case(o.trim_end_matches('/'))
            })
        });
        if !ok {
            return refuse("403 Forbidden", "", Refusal::Origin, "origin not allowed");
        }
    }
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: sip\r\n\r\n",
        accept_key(key)
    )
    .into_bytes();
    Handshake::Upgrade { response, consumed }
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// A close status code (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000.
    Normal,
    /// 1002: the peer broke the framing rules.
    Protocol,
    /// 1009: a message larger than the proxy accepts.
    TooBig,
}

impl CloseCode {
    fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::Protocol => 1002,
            CloseCode::TooBig => 1009,
        }
    }
}

/// A frame error: the connection is closed with this code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame breaks RFC 6455 (unmasked client frame, reserved bits or opcode, a control
    /// frame too long or fragmented, a continuation with nothing to continue).
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    /// The message would be larger than the limit.
    #[error("websocket message of {0} bytes is over the limit")]
    TooBig(u64),
}

impl FrameError {
    /// The close code that tells the peer why.
    pub fn close_code(&self) -> CloseCode {
        match self {
            FrameError::Protocol(_) => CloseCode::Protocol,
            FrameError::TooBig(_) => CloseCode::TooBig,
        }
    }
}

/// One complete thing the peer sent.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent {
    /// A whole data message (text or binary): one SIP message.
    Message(Bytes),
    /// A ping, with its payload to echo in the pong.
    Ping(Bytes),
    /// A pong (an answer to our ping).
    Pong,
    /// The peer closes.
    Close,
}

/// The reader's state: a fragmented message being assembled.
#[derive(Debug, Default)]
pub struct Decoder {
    partial: Option<BytesMut>,
}

impl Decoder {
    /// Takes the next event from `buf` (`Ok(None)`: need more bytes). `max` bounds a
    /// message; a frame that declares more is refused before its payload arrives.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        max: usize,
    ) -> Result<Option<WsEvent>, FrameError> {
        loop {
            if buf.len() < 2 {
                return Ok(None);
            }
            let (b0, b1) = (buf[0], buf[1]);
            let fin = b0 & 0x80 != 0;
            if b0 & 0x70 != 0 {
                return Err(FrameError::Protocol("reserved bits set"));
            }
            let opcode = b0 & 0x0f;
            if b1 & 0x80 == 0 {
                return Err(FrameError::Protocol("client frame not masked"));
            }
            let (len, hdr) = match b1 & 0x7f {
                126 => {
                    if buf.len() < 4 {
                        return Ok(None);
                    }
                    (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
                }
                127 => {
                    if buf.len() < 10 {
                        return Ok(None);
                    }
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[2..10]);
                    let l = u64::from_be_bytes(b);
                    if l >> 63 != 0 {
                        return Err(FrameError::Protocol("length's top bit set"));
                    }
                    (l, 10)
                }
                n => (n as u64, 2),
            };
            let control = opcode & 0x08 != 0;
            if control && (len > 125 || !fin) {
                return Err(FrameError::Protocol("control frame too long or fragmented"));
            }
            let so_far = self.partial.as_ref().map_or(0, |p| p.len() as u64);
            if !control && so_far + len > max as u64 {
                return Err(FrameError::TooBig(so_far + len));
            }
            let total = hdr + 4 + len as usize;
            if buf.len() < total {
                // make room for the rest at once: one read per frame, not many small ones
                buf.reserve(total - buf.len());
                return Ok(None);
            }
            let mut mask = [0u8; 4];
            mask.copy_from_slice(&buf[hdr..hdr + 4]);
            buf.advance(hdr + 4);
            let mut payload = buf.split_to(len as usize);
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
            match opcode {
                0x0 => {
                    let Some(p) = self.partial.as_mut() else {
                        return Err(FrameError::Protocol(
                            "continuation with nothing to continue",
                        ));
                    };
                    p.extend_from_slice(&payload);
                    if fin {
                        let p = self.partial.take().unwrap_or_default();
                        return Ok(Some(WsEvent::Message(p.freeze())));
                    }
                }
                0x1 | 0x2 => {
                    if self.partial.is_some() {
                        return Err(FrameError::Protocol("new message inside a fragmented one"));
                    }
                    if fin {
                        return Ok(Some(WsEvent::Message(payload.freeze())));
                    }
                    self.partial = Some(payload);
                }
                0x8 => return Ok(Some(WsEvent::Close)),
                0x9 => return Ok(Some(WsEvent::Ping(payload.freeze()))),
                0xa => return Ok(Some(WsEvent::Pong)),
                _ => return Err(FrameError::Protocol("unknown opcode")),
            }
        }
    }
}

/// A server frame (unmasked, §5.1) header for a payload of `len` bytes.
fn header(opcode: u8, len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// One SIP message as a frame: text when it is UTF-8 (browsers' SIP stacks read text),
/// binary otherwise.
pub fn encode_message(msg: &[u8]) -> Bytes {
    let opcode = if std::str::from_utf8(msg).is_ok() {
        0x1
    } else {
        0x2
    };
    let mut out = Vec::with_capacity(msg.len() + 10);
    header(opcode, msg.len(), &mut out);
    out.extend_from_slice(msg);
    out.into()
}

/// A pong echoing a ping's payload.
pub fn encode_pong(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 2);
    header(0xa, payload.len(), &mut out);
    out.extend_from_slice(payload);
    out.into()
}

/// A ping (the proxy's keepalive of an idle connection that a registration holds).
pub fn encode_ping() -> Bytes {
    Bytes::from_static(&[0x89, 0x00])
}

/// A close frame with a status code.
pub fn encode_close(code: CloseCode) -> Bytes {
    let mut out = Vec::with_capacity(4);
    header(0x8, 2, &mut out);
    out.extend_from_slice(&code.code().to_be_bytes());
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_request(extra: &str) -> String {
        format!(
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn status(h: &Handshake) -> String {
        let r = match h {
            Handshake::Upgrade { response, .. } | Handshake::Refuse { response, .. } => response,
            Handshake::NeedMore => return "need more".into(),
        };
        String::from_utf8_lossy(r)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![(fin as u8) << 7 | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn sip_subprotocol_upgrades_and_keeps_what_follows() {
        let mut req =
            upgrade_request("Sec-WebSocket-Protocol: chat, sip\r\nOrigin: http://app.example\r\n");
        let n = req.len();
        req.push('\u{1}');
        match handshake(req.as_bytes(), &[]) {
            Handshake::Upgrade { response, consumed } => {
                let r = String::from_utf8(response).unwrap();
                assert!(r.starts_with("HTTP/1.1 101 "), "{r}");
                assert!(r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
                assert!(r.contains("Sec-WebSocket-Protocol: sip\r\n"));
                assert_eq!(consumed, n);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_handshake_waits_then_refuses_past_the_limit() {
        let req = upgrade_request("Sec-WebSocket-Protocol: sip\r\n");
        assert_eq!(handshake(&req.as_bytes()[..40], &[]), Handshake::NeedMore);
        let mut big = String::from("GET / HTTP/1.1\r\nX-Pad: ");
        big.push_str(&"a".repeat(MAX_HANDSHAKE));
        let h = handshake(big.as_bytes(), &[]);
        assert!(
            matches!(
                h,
                Handshake::Refuse {
                    reason: Refusal::TooLarge,
                    ..
                }
            ),
            "{h:?}"
        );
        assert!(status(&h).contains("431"));
    }

    #[test]
    fn missing_sip_subprotocol_is_refused() {
        for extra in [
            "",
            "Sec-WebSocket-Protocol: chat\r\n",
            "Sec-WebSocket-Protocol: sipx\r\n",
        ] {
            let h = handshake(upgrade_request(extra).as_bytes(), &[]);
            assert!(
                matches!(
                    h,
                    Handshake::Refuse {
                        reason: Refusal::Subprotocol,
                        ..
                    }
                ),
                "{extra}: {h:?}"
            );
            assert!(status(&h).contains("400"));
        }
    }

    #[test]
    fn origin_allow_list_is_enforced_when_set() {
        let allowed = vec!["https://agents.example.com".to_string()];
        let ok = upgrade_request(
            "Sec-WebSocket-Protocol: sip\r\nOrigin: https://agents.example.com\r\n",
        );
        assert!(matches!(
            handshake(ok.as_bytes(), &allowed),
            Handshake::Upgrade { .. }
        ));
        for extra in ["Origin: https://evil.example\r\n", ""] {
            let bad = upgrade_request(&format!("Sec-WebSocket-Protocol: sip\r\n{extra}"));
            let h = handshake(bad.as_bytes(), &allowed);
            assert!(
                matches!(
                    h,
                    Handshake::Refuse {
                        reason: Refusal::Origin,
                        ..
                    }
                ),
                "{h:?}"
            );
            assert!(status(&h).contains("403"));
        }
        // an empty list accepts any origin
        let any =
            upgrade_request("Sec-WebSocket-Protocol: sip\r\nOrigin: https://evil.example\r\n");
        assert!(matches!(
            handshake(any.as_bytes(), &[]),
            Handshake::Upgrade { .. }
        ));
    }

    #[test]
    fn malformed_handshakes_get_http_errors() {
        let cases: &[(&str, &str)] = &[
            ("\x16\x03\x01\x02\x00garbage\r\n\r\n", "400"),
            ("POST / HTTP/1.1\r\nHost: x\r\n\r\n", "405"),
            (
                "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Protocol: sip\r\n\r\n",
                "426",
            ),
            (
                "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n",
                "400",
            ),
            (
                "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n",
                "400",
            ),
        ];
        for (req, code) in cases {
            let h = handshake(req.as_bytes(), &[]);
            assert!(matches!(h, Handshake::Refuse { .. }), "{req:?}: {h:?}");
            assert!(status(&h).contains(code), "{req:?}: {}", status(&h));
        }
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..40 {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        many.push_str("\r\n");
        assert!(status(&handshake(many.as_bytes(), &[])).contains("431"));
    }

    #[test]
    fn plain_get_gets_a_short_json_page() {
        let h = handshake(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &[]);
        assert!(matches!(
            h,
            Handshake::Refuse {
                reason: Refusal::PlainHttp,
                ..
            }
        ));
        assert!(status(&h).contains("200"));
    }

    #[test]
    fn frames_decode_across_reads_and_fragments() {
        let mut d = Decoder::default();
        let mut wire = frame(true, 0x1, b"OPTIONS sip:x SIP/2.0\r\n\r\n");
        wire.extend(frame(true, 0x9, b"hi"));
        wire.extend(frame(false, 0x2, b"part one, "));
        wire.extend(frame(true, 0xa, b"")); // a control frame between fragments is allowed
        wire.extend(frame(true, 0x0, b"part two"));
        wire.extend(frame(true, 0x8, &1000u16.to_be_bytes()));
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire {
            buf.extend_from_slice(&[b]);
            while let Some(e) = d.decode(&mut buf, 1000).unwrap() {
                got.push(e);
            }
        }
        assert_eq!(
            got,
            vec![
                WsEvent::Message(Bytes::from_static(b"OPTIONS sip:x SIP/2.0\r\n\r\n")),
                WsEvent::Ping(Bytes::from_static(b"hi")),
                WsEvent::Pong,
                WsEvent::Message(Bytes::from_static(b"part one, part two")),
                WsEvent::Close,
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_from_its_header() {
        let mut d = Decoder::default();
        // a 10 MB frame: refused as soon as the 10 header bytes are in, nothing buffered
        let mut buf = BytesMut::from(&[0x82u8, 0x80 | 127][..]);
        buf.extend_from_slice(&(10u64 << 20).to_be_bytes());
        assert_eq!(d.decode(&mut buf, 65535), Err(FrameError::TooBig(10 << 20)));
        // fragments that add up past the limit
        let mut d = Decoder::default();
        let mut buf = BytesMut::from(&frame(false, 0x1, &[b'a'; 600])[..]);
        buf.extend_from_slice(&frame(false, 0x0, &[b'a'; 600]));
        assert_eq!(d.decode(&mut buf, 1000), Err(FrameError::TooBig(1200)));
        assert_eq!(FrameError::TooBig(1).close_code(), CloseCode::TooBig);
    }

    #[test]
    fn protocol_violations_are_errors() {
        let unmasked = vec![0x81, 0x02, b'h', b'i'];
        let reserved = {
            let mut f = frame(true, 0x1, b"x");
            f[0] |= 0x40;
            f
        };
        let long_ping = frame(true, 0x9, &[0; 126]);
        let fragmented_ping = frame(false, 0x9, b"x");
        let lone_continuation = frame(true, 0x0, b"x");
        let bad_opcode = frame(true, 0x3, b"x");
        let mut nested = frame(false, 0x1, b"a");
        nested.extend(frame(true, 0x1, b"b"));
        let mut huge_len = vec![0x81, 0x80 | 127];
        huge_len.extend_from_slice(&u64::MAX.to_be_bytes());
        for (name, f) in [
            ("unmasked", unmasked),
            ("reserved", reserved),
            ("long ping", long_ping),
            ("fragmented ping", fragmented_ping),
            ("lone continuation", lone_continuation),
            ("bad opcode", bad_opcode),
            ("nested", nested),
            ("top bit", huge_len),
        ] {
            let mut d = Decoder::default();
            let mut buf = BytesMut::from(&f[..]);
            let r = loop {
                match d.decode(&mut buf, 1 << 20) {
                    Ok(Some(_)) => continue,
                    other => break other,
                }
            };
            assert!(matches!(r, Err(FrameError::Protocol(_))), "{name}: {r:?}");
        }
    }

    #[test]
    fn server_frames_have_the_right_headers() {
        assert_eq!(&encode_message(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let long = encode_message(&[b'a'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        let bin = encode_message(&[0xff, 0xfe]);
        assert_eq!(bin[0], 0x82);
        let big = encode_message(&vec![b'a'; 70_000]);
        assert_eq!(&big[..2], &[0x81, 127]);
        assert_eq!(big.len(), 70_010);
        assert_eq!(&encode_pong(b"x")[..], &[0x8a, 1, b'x']);
        assert_eq!(&encode_close(CloseCode::TooBig)[..], &[0x88, 2, 0x03, 0xf1]);
    }
}
