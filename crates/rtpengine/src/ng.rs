//! NG datagrams: `<cookie> <bencoded dictionary>`. The cookie pairs a reply with its
//! request (a retransmission reuses it, so rtpengine answers a repeated command from its
//! cache instead of running it twice).

use crate::bencode::{decode, DecodeError, Value};

/// Longest cookie accepted from a reply.
pub const MAX_COOKIE: usize = 64;

/// Why a datagram is not an NG message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NgError {
    /// No space after the cookie, or a cookie that is empty, too long or not printable.
    #[error("ng: no valid cookie")]
    Cookie,
    /// The body is not bencode.
    #[error("ng: {0}")]
    Body(#[from] DecodeError),
    /// The body is not a dictionary.
    #[error("ng: the body is not a dictionary")]
    NotDict,
}

/// A request datagram.
pub fn frame(cookie: &str, body: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(cookie.len() + 128);
    out.extend_from_slice(cookie.as_bytes());
    out.push(b' ');
    body.encode(&mut out);
    out
}

/// Splits a datagram into its cookie and its dictionary.
pub fn parse(datagram: &[u8]) -> Result<(&str, Value), NgError> {
    let sp = datagram
        .iter()
        .take(MAX_COOKIE + 1)
        .position(|b| *b == b' ')
        .ok_or(NgError::Cookie)?;
    let cookie = std::str::from_utf8(&datagram[..sp]).map_err(|_| NgError::Cookie)?;
    if cookie.is_empty() || !cookie.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(NgError::Cookie);
    }
    let body = decode(&datagram[sp + 1..])?;
    if !matches!(body, Value::Dict(_)) {
        return Err(NgError::NotDict);
    }
    Ok((cookie, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_round_trips() {
        let d = frame(
            "c1ca97c77ffc",
            &Value::dict([("command", Value::from("ping"))]),
        );
        assert_eq!(d, b"c1ca97c77ffc d7:command4:pinge".to_vec());
        let (cookie, body) = parse(b"c1ca97c77ffc d6:result4:ponge").unwrap();
        assert_eq!(cookie, "c1ca97c77ffc");
        assert_eq!(body.get("result").and_then(Value::as_str), Some("pong"));
    }

    #[test]
    fn bad_datagrams_are_refused() {
        assert_eq!(parse(b"nospace"), Err(NgError::Cookie));
        assert_eq!(parse(b" d6:result2:oke"), Err(NgError::Cookie));
        assert_eq!(parse(&[b'a'; 100]), Err(NgError::Cookie));
        assert_eq!(parse(b"c\x01 d6:result2:oke"), Err(NgError::Cookie));
        assert_eq!(parse(b"c1 li1ee"), Err(NgError::NotDict));
        assert!(matches!(parse(b"c1 d6:result"), Err(NgError::Body(_))));
        assert!(matches!(parse(b"c1 garbage"), Err(NgError::Body(_))));
    }
}
