use sip_wire::{Message, Method};

/// Why a transaction key could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The message has no parsable top Via.
    #[error("no usable Via")]
    Via,
    /// The message has no parsable CSeq.
    #[error("no usable CSeq")]
    CSeq,
}

/// The server transaction key of a request (§17.2.3).
///
/// With an RFC 3261 branch: branch, sent-by and method, where ACK counts as INVITE so that
/// it finds the INVITE transaction it acknowledges, and CANCEL keeps its own method (a
/// CANCEL is its own transaction; use `server_key_for(msg, "INVITE")` to find the INVITE it
/// cancels). Without the magic cookie (RFC 2543 peers) the key falls back to Request-URI,
/// From tag, Call-ID, CSeq number and the top Via.
pub fn server_key(msg: &Message) -> Result<String, KeyError> {
    let method = match msg.method() {
        Some(Method::Ack) => "INVITE",
        _ => msg.method_str(),
    };
    server_key_for(msg, method)
}

/// [`server_key`] with the method given explicitly.
pub fn server_key_for(msg: &Message, method: &str) -> Result<String, KeyError> {
    let branch = msg.branch().unwrap_or("");
    if branch.starts_with(sip_wire::BRANCH_MAGIC) {
        let sent_by = msg.sent_by().ok_or(KeyError::Via)?;
        let mut k = String::with_capacity(branch.len() + sent_by.len() + method.len() + 2);
        k.push_str(branch);
        k.push('\x01');
        for c in sent_by.chars() {
            k.push(c.to_ascii_lowercase());
        }
        k.push('\x01');
        k.push_str(method);
        Ok(k)
    } else {
        let via = msg.top_via().map_err(|_| KeyError::Via)?;
        let cseq = msg.cseq().map_err(|_| KeyError::CSeq)?;
        let from_tag = msg.from_tag().unwrap_or("");
        Ok(format!(
            "2543\x01{}\x01{}\x01{}\x01{}\x01{}\x01{}",
            msg.uri_str(),
            from_tag,
            msg.call_id(),
            cseq.seq,
            via.raw,
            method
        ))
    }
}

/// The client transaction key of a response (§17.1.3): top Via branch and CSeq method.
pub fn client_key(msg: &Message) -> Result<(&str, &str), KeyError> {
    let cseq = msg.cseq().map_err(|_| KeyError::CSeq)?;
    Ok((msg.branch().ok_or(KeyError::Via)?, cseq.method))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    const INV: &str = "INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP Host.Example:5060;branch=z9hG4bKabc\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";

    #[test]
    fn ack_and_cancel_keys_relate_to_the_invite() {
        let inv = msg(INV);
        let ack = msg(&INV
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK")
            .replace("<sip:b@h>", "<sip:b@h>;tag=9"));
        let cancel = msg(&INV
            .replace("INVITE sip", "CANCEL sip")
            .replace("1 INVITE", "1 CANCEL"));
        assert_eq!(server_key(&inv).unwrap(), server_key(&ack).unwrap());
        assert_ne!(server_key(&inv).unwrap(), server_key(&cancel).unwrap());
        assert_eq!(
            server_key(&inv).unwrap(),
            server_key_for(&cancel, "INVITE").unwrap()
        );
        // sent-by compares case-insensitively
        let lower = msg(&INV.replace("Host.Example", "host.example"));
        assert_eq!(server_key(&inv).unwrap(), server_key(&lower).unwrap());
    }

    #[test]
    fn rfc2543_fallback_key_ignores_the_to_tag() {
        let old = INV.replace("branch=z9hG4bKabc", "branch=1234");
        let inv = msg(&old);
        let ack = msg(&old
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK")
            .replace("<sip:b@h>", "<sip:b@h>;tag=9"));
        assert!(server_key(&inv).unwrap().starts_with("2543"));
        assert_eq!(server_key(&inv).unwrap(), server_key(&ack).unwrap());
        let other = msg(&old.replace("Call-ID: c", "Call-ID: d"));
        assert_ne!(server_key(&inv).unwrap(), server_key(&other).unwrap());
    }

    #[test]
    fn client_key_is_branch_and_cseq_method() {
        let r = msg("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 4 BYE\r\n\r\n");
        assert_eq!(client_key(&r).unwrap(), ("z9hG4bKx", "BYE"));
    }
}
