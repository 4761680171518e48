//! Stream framing (RFC 3261 §18.3): where one message ends in a TCP/TLS byte stream, and
//! CRLF keepalives (RFC 5626 §4.4.1).

use crate::error::ParseError;
use crate::header::HeaderName;
use crate::message::{crlf2, parse_u32, trim_bytes};

/// Where a stream (TCP, TLS) buffer stands: a whole message, keepalive CRLFs, or not yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// More bytes are needed.
    NeedMore,
    /// `n` bytes of CRLF keepalive (RFC 5626 §4.4.1); `ping` when a double CRLF asks for a pong.
    KeepAlive { len: usize, ping: bool },
    /// A complete message of this many bytes starts the buffer.
    Message(usize),
}

/// Frames a stream buffer by its header section and Content-Length (RFC 3261 §18.3).
pub fn frame_stream(buf: &[u8], max: usize) -> Result<Framing, ParseError> {
    let lead = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if lead > 0 {
        if lead == buf.len() && lead < 4 && buf.starts_with(b"\r\n\r") {
            return Ok(Framing::NeedMore);
        }
        let ping = buf.starts_with(b"\r\n\r\n");
        return Ok(Framing::KeepAlive {
            len: if ping { 4 } else { lead.clamp(1, 2) },
            ping,
        });
    }
    let Some(end) = crlf2().find(buf) else {
        if buf.len() > max {
            return Err(ParseError::TooLarge(buf.len()));
        }
        return Ok(Framing::NeedMore);
    };
    let body_start = end + 4;
    let mut clen = 0usize;
    let head = &buf[..end];
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = trim_bytes(&line[..colon]);
        if HeaderName::from_bytes(name) == HeaderName::ContentLength {
            let v = trim_bytes(&line[colon + 1..]);
            clen = parse_u32(v).ok_or(ParseError::ContentLength)? as usize;
        }
    }
    let total = body_start + clen;
    if total > max {
        return Err(ParseError::TooLarge(total));
    }
    if buf.len() < total {
        return Ok(Framing::NeedMore);
    }
    Ok(Framing::Message(total))
}
