//! Keyed MACs over what the proxy puts on the wire and must recognise when it comes back:
//! the Via branches of its client transactions, its flow tokens (RFC 5626 §5.2) and its
//! Record-Route signatures. SipHash-2-4 (Aumasson and Bernstein), a PRF built for short
//! inputs, keyed with 128 bits of the proxy's secret: a peer that has not seen a value cannot
//! make one that passes, so counting ids can be public without being guessable.

/// What a tag is for: the same parts under another purpose give another tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Purpose {
    /// A relayed request's branch: context id, branch index, loop hash.
    Branch = 1,
    /// A health probe's branch: its id.
    Probe = 2,
    /// A NAT keepalive's branch: its binding id.
    KeepAlive = 3,
    /// A connection's flow token: its flow id.
    Flow = 4,
    /// A Record-Route URI of ours: Call-ID, a dialog tag, the URI's user part.
    RecordRoute = 5,
}

/// The key, from the proxy's secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Default for Keys {
    /// A fixed key, for tests; the binary always gives the secret.
    fn default() -> Keys {
        Keys::new(&[0x5b; 16])
    }
}

impl Keys {
    /// Keys from 16 bytes of secret.
    pub fn new(secret: &[u8; 16]) -> Keys {
        let (a, b) = secret.split_at(8);
        Keys {
            k0: u64::from_le_bytes(a.try_into().unwrap_or_default()),
            k1: u64::from_le_bytes(b.try_into().unwrap_or_default()),
        }
    }

    /// The tag of `parts` for `purpose` (each part length-prefixed, so parts cannot slide
    /// into one another).
    pub fn tag(&self, purpose: Purpose, parts: &[&[u8]]) -> u64 {
        let mut h = SipHash24::new(self.k0, self.k1);
        h.write(&[purpose as u8]);
        for p in parts {
            h.write(&(p.len() as u32).to_le_bytes());
            h.write(p);
        }
        h.finish()
    }

    /// The tag of numbers (ids).
    pub fn tag_ids(&self, purpose: Purpose, ids: &[u64]) -> u64 {
        let mut h = SipHash24::new(self.k0, self.k1);
        h.write(&[purpose as u8]);
        for id in ids {
            h.write(&id.to_le_bytes());
        }
        h.finish()
    }
}

/// A connection's flow token (RFC 5626 §5.2): `f<flow>-<mac>`, the MAC over the flow id
/// and, in a cluster, the node's id (`node` 0: no cluster), so a token names a connection
/// on the node that made it and another node, which shares the key, does not take it for
/// one of its own.
pub fn flow_token(keys: &Keys, node: u16, flow: u64) -> String {
    format!("f{flow:x}-{:016x}", flow_mac(keys, node, flow))
}

/// The MAC of [`flow_token`].
pub fn flow_mac(keys: &Keys, node: u16, flow: u64) -> u64 {
    match node {
        0 => keys.tag_ids(Purpose::Flow, &[flow]),
        n => keys.tag_ids(Purpose::Flow, &[flow, n as u64]),
    }
}

/// Parses 16 lowercase or uppercase hex digits.
pub fn parse_tag(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// SipHash-2-4, streaming.
struct SipHash24 {
    v: [u64; 4],
    tail: u64,
    ntail: usize,
    len: usize,
}

impl SipHash24 {
    fn new(k0: u64, k1: u64) -> Self {
        SipHash24 {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            ntail: 0,
            len: 0,
        }
    }

    #[inline]
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    #[inline]
    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        Self::round(&mut self.v);
        Self::round(&mut self.v);
        self.v[0] ^= m;
    }

    fn write(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len();
        if self.ntail > 0 {
            // complete the word begun by the last write
            let take = (8 - self.ntail).min(bytes.len());
            for (i, b) in bytes[..take].iter().enumerate() {
                self.tail |= u64::from(*b) << (8 * (self.ntail + i));
            }
            self.ntail += take;
            bytes = &bytes[take..];
            if self.ntail < 8 {
                return;
            }
            let m = self.tail;
            self.compress(m);
            self.tail = 0;
            self.ntail = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.compress(u64::from_le_bytes(w.try_into().unwrap_or_default()));
        }
        for (i, b) in words.remainder().iter().enumerate() {
            self.tail |= u64::from(*b) << (8 * i);
        }
        self.ntail = words.remainder().len();
    }

    fn finish(mut self) -> u64 {
        let b = ((self.len as u64 & 0xff) << 56) | self.tail;
        self.compress(b);
        self.v[2] ^= 0xff;
        for _ in 0..4 {
            Self::round(&mut self.v);
        }
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sip(key: &[u8; 16], msg: &[u8]) -> u64 {
        let k = Keys::new(key);
        let mut h = SipHash24::new(k.k0, k.k1);
        h.write(msg);
        h.finish()
    }

    /// The example of the SipHash paper (appendix A) and the first reference vector.
    #[test]
    fn siphash_reference_vectors() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(sip(&key, &msg), 0xa129_ca61_49be_45e5);
        assert_eq!(sip(&key, &[]), 0x726f_db47_dd0e_0e31);
    }

    /// Against the standard library's SipHash-2-4, for every length up to 70 and in pieces.
    #[test]
    #[allow(deprecated)]
    fn siphash_matches_std_for_any_length_and_split() {
        use std::hash::Hasher;
        let key: [u8; 16] = core::array::from_fn(|i| (i * 7 + 3) as u8);
        let k = Keys::new(&key);
        for n in 0..70usize {
            let msg: Vec<u8> = (0..n).map(|i| (i * 31 + n) as u8).collect();
            let mut s = std::hash::SipHasher::new_with_keys(k.k0, k.k1);
            s.write(&msg);
            let want = s.finish();
            assert_eq!(sip(&key, &msg), want, "length {n}");
            for cut in 0..=n {
                let mut h = SipHash24::new(k.k0, k.k1);
                h.write(&msg[..cut]);
                h.write(&msg[cut..]);
                assert_eq!(h.finish(), want, "length {n} cut {cut}");
            }
        }
    }

    #[test]
    fn tags_depend_on_key_purpose_and_every_part() {
        let a = Keys::new(&[1; 16]);
        let b = Keys::new(&[2; 16]);
        let t = a.tag(Purpose::RecordRoute, &[b"call", b"tag", b""]);
        assert_ne!(t, b.tag(Purpose::RecordRoute, &[b"call", b"tag", b""]));
        assert_ne!(t, a.tag(Purpose::Branch, &[b"call", b"tag", b""]));
        assert_ne!(t, a.tag(Purpose::RecordRoute, &[b"cal", b"ltag", b""]));
        assert_ne!(t, a.tag(Purpose::RecordRoute, &[b"call", b"tag", b"f1"]));
        assert_eq!(t, a.tag(Purpose::RecordRoute, &[b"call", b"tag", b""]));
        assert_ne!(
            a.tag_ids(Purpose::Branch, &[1, 0, 7]),
            a.tag_ids(Purpose::Branch, &[2, 0, 7])
        );
        assert_eq!(parse_tag(&format!("{t:016x}")), Some(t));
        assert_eq!(parse_tag("0123"), None);
        assert_eq!(parse_tag("zz23456789abcdef"), None);
    }
}
