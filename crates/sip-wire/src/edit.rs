use std::fmt::Write as _;
use std::ops::Range;

use crate::message::Message;

/// Builds an outgoing message from a received one by splicing: a new start line, header
/// lines put on top, lines removed or replaced, lines appended, and every other byte copied
/// from the original as it was received (RFC 3261 §16.6: a proxy changes only what it must).
///
/// New text goes into one scratch buffer, so an edit costs two allocations in all.
#[derive(Debug)]
pub struct Editor<'m> {
    msg: &'m Message,
    scratch: String,
    start_line: Option<Range<usize>>,
    top: Vec<Range<usize>>,
    ops: Vec<(usize, Option<Range<usize>>)>,
    tail: Vec<Range<usize>>,
    body: Option<&'m [u8]>,
}

impl<'m> Editor<'m> {
    /// Starts an edit of `msg`.
    pub fn new(msg: &'m Message) -> Editor<'m> {
        Editor {
            msg,
            scratch: String::with_capacity(256),
            start_line: None,
            top: Vec::new(),
            ops: Vec::new(),
            tail: Vec::new(),
            body: None,
        }
    }

    fn put(&mut self, args: std::fmt::Arguments) -> Range<usize> {
        let s = self.scratch.len();
        let _ = self.scratch.write_fmt(args);
        s..self.scratch.len()
    }

    /// Replaces the start line (without CRLF).
    pub fn start_line(&mut self, line: std::fmt::Arguments) -> &mut Self {
        let r = self.put(line);
        self.start_line = Some(r);
        self
    }

    /// Puts a header line (without CRLF) above all received headers; lines put on top
    /// keep the order of the calls.
    pub fn push_top(&mut self, line: std::fmt::Arguments) -> &mut Self {
        let r = self.put(line);
        self.top.push(r);
        self
    }

    /// Replaces received header `index` (as in [`Message::headers`]) with a new line.
    pub fn replace(&mut self, index: usize, line: std::fmt::Arguments) -> &mut Self {
        let r = self.put(line);
        self.ops.push((index, Some(r)));
        self
    }

    /// Drops received header `index`.
    pub fn remove(&mut self, index: usize) -> &mut Self {
        self.ops.push((index, None));
        self
    }

    /// Adds a header line after the received headers.
    pub fn append(&mut self, line: std::fmt::Arguments) -> &mut Self {
        let r = self.put(line);
        self.tail.push(r);
        self
    }

    /// Sends no body (Content-Length is rewritten to 0).
    pub fn drop_body(&mut self) -> &mut Self {
        self.body = Some(&[]);
        self
    }

    /// Sends `body` instead of the received one (Content-Length is rewritten).
    pub fn set_body(&mut self, body: &'m [u8]) -> &mut Self {
        self.body = Some(body);
        self
    }

    /// Writes the new message.
    pub fn finish(&self) -> Vec<u8> {
        let buf = self.msg.bytes();
        let mut out = Vec::with_capacity(buf.len() + self.scratch.len() + 64);
        let sc = self.scratch.as_bytes();
        match &self.start_line {
            Some(r) => out.extend_from_slice(&sc[r.clone()]),
            None => out.extend_from_slice(&buf[self.msg.start_line_span().range()]),
        }
        out.extend_from_slice(b"\r\n");
        for r in &self.top {
            out.extend_from_slice(&sc[r.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        let new_body = self.body;
        for (i, h) in self.msg.headers().iter().enumerate() {
            if new_body.is_some() && h.name == crate::HeaderName::ContentLength {
                continue;
            }
            match self.ops.iter().rev().find(|(idx, _)| *idx == i) {
                Some((_, None)) => continue,
                Some((_, Some(r))) => out.extend_from_slice(&sc[r.clone()]),
                None => out.extend_from_slice(&buf[h.line.range()]),
            }
            out.extend_from_slice(b"\r\n");
        }
        for r in &self.tail {
            out.extend_from_slice(&sc[r.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        match new_body {
            Some(body) => {
                let _ = std::io::Write::write_fmt(
                    &mut out,
                    format_args!("Content-Length: {}\r\n\r\n", body.len()),
                );
                out.extend_from_slice(body);
            }
            None => {
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(self.msg.body());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const INV: &str = "INVITE sip:bob@b.com SIP/2.0\r\nVia: SIP/2.0/UDP a.com;branch=z9hG4bK1, SIP/2.0/UDP c.com;branch=z9hG4bK0\r\nX-Odd  :   keep   me \r\nMax-Forwards: 70\r\nTo: <sip:bob@b.com>\r\nFrom: <sip:a@a.com>;tag=1\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 4\r\n\r\nbody";

    #[test]
    fn untouched_headers_pass_byte_for_byte() {
        let m = Message::parse(Bytes::from_static(INV.as_bytes())).unwrap();
        let mf = m.position(crate::HeaderName::MaxForwards).unwrap();
        let mut e = Editor::new(&m);
        e.push_top(format_args!("Via: SIP/2.0/UDP p.com;branch=z9hG4bKp"))
            .replace(mf, format_args!("Max-Forwards: 69"));
        let out = String::from_utf8(e.finish()).unwrap();
        assert!(out.starts_with("INVITE sip:bob@b.com SIP/2.0\r\nVia: SIP/2.0/UDP p.com;branch=z9hG4bKp\r\nVia: SIP/2.0/UDP a.com"));
        assert!(out.contains("\r\nX-Odd  :   keep   me\r\n"), "{out}");
        assert!(out.contains("Max-Forwards: 69\r\n"));
        assert!(out.ends_with("Content-Length: 4\r\n\r\nbody"));
        let again = Message::parse(Bytes::from(out.into_bytes())).unwrap();
        assert_eq!(again.top_via().unwrap().host, "p.com");
        assert_eq!(again.values(crate::HeaderName::Via).count(), 3);
    }

    #[test]
    fn new_start_line_removal_and_body_drop() {
        let m = Message::parse(Bytes::from_static(INV.as_bytes())).unwrap();
        let mut e = Editor::new(&m);
        e.start_line(format_args!("SIP/2.0 100 Trying"))
            .remove(0)
            .drop_body()
            .append(format_args!("Server: t"));
        let out = String::from_utf8(e.finish()).unwrap();
        assert!(out.starts_with("SIP/2.0 100 Trying\r\nX-Odd"));
        assert!(out.ends_with("Server: t\r\nContent-Length: 0\r\n\r\n"));
    }
}
