//! Bencode (the encoding of BitTorrent metainfo, used by rtpengine's NG protocol): integers
//! `i42e`, byte strings `4:spam`, lists `l...e`, dictionaries `d...e` with byte-string keys.
//! Decoding is strict where a lax reading could be exploited (no leading zeros, no `-0`,
//! lengths checked against the input before anything is allocated) and bounded (nesting
//! depth and item count), since a reply comes from the network.

use std::fmt;

/// Nesting deeper than this is refused (a reply nests three or four levels).
pub const MAX_DEPTH: usize = 32;
/// Items (values of every level together) one message may hold.
pub const MAX_ITEMS: usize = 100_000;

/// A bencoded value. Dictionary entries keep their order of arrival; encoding sorts them by
/// key, as bencode requires.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(Vec<(Vec<u8>, Value)>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Bytes(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Value::List(l) => f.debug_list().entries(l).finish(),
            Value::Dict(d) => f
                .debug_map()
                .entries(d.iter().map(|(k, v)| (String::from_utf8_lossy(k), v)))
                .finish(),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl Value {
    /// A dictionary from `(key, value)` pairs.
    pub fn dict<K: AsRef<[u8]>>(entries: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Dict(
            entries
                .into_iter()
                .map(|(k, v)| (k.as_ref().to_vec(), v))
                .collect(),
        )
    }

    /// A list of strings (NG flags such as `["trust-address", "replace-origin"]`).
    pub fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
        Value::List(items.into_iter().map(Value::from).collect())
    }

    /// The value of `key` in a dictionary (the first, if a peer repeated it).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d
                .iter()
                .find(|(k, _)| k.as_slice() == key.as_bytes())
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The bytes of a string value.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// A string value that is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// An integer value.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Value::Bytes(b) => {
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(b);
            }
            Value::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => {
                let mut sorted: Vec<&(Vec<u8>, Value)> = d.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                out.push(b'd');
                for (k, v) in sorted {
                    out.extend_from_slice(k.len().to_string().as_bytes());
                    out.push(b':');
                    out.extend_from_slice(k);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Why bytes are not bencode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ends inside a value.
    #[error("bencode: truncated at byte {0}")]
    Truncated(usize),
    /// A byte that starts no value, or breaks one.
    #[error("bencode: unexpected byte at {0}")]
    Unexpected(usize),
    /// An integer or length that is malformed (leading zero, `-0`, no digits) or too large.
    #[error("bencode: bad number at byte {0}")]
    BadNumber(usize),
    /// A dictionary key that is not a byte string.
    #[error("bencode: dictionary key is not a string at byte {0}")]
    BadKey(usize),
    /// Nested deeper than [`MAX_DEPTH`] or more than [`MAX_ITEMS`] values.
    #[error("bencode: too deep or too many items at byte {0}")]
    TooLarge(usize),
    /// Bytes after the value (where one whole value was expected).
    #[error("bencode: {0} bytes after the value")]
    Trailing(usize),
}

/// Decodes exactly one value from the whole of `input`.
pub fn decode(input: &[u8]) -> Result<Value, DecodeError> {
    let mut d = Decoder {
        s: input,
        pos: 0,
        items: 0,
    };
    let v = d.value(0)?;
    if d.pos != input.len() {
        return Err(DecodeError::Trailing(input.len() - d.pos));
    }
    Ok(v)
}

struct Decoder<'a> {
    s: &'a [u8],
    pos: usize,
    items: usize,
}

impl Decoder<'_> {
    fn peek(&self) -> Result<u8, DecodeError> {
        self.s
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::Truncated(self.pos))
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        self.items += 1;
        if depth > MAX_DEPTH || self.items > MAX_ITEMS {
            return Err(DecodeError::TooLarge(self.pos));
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let i = self.number(b'e', true)?;
                Ok(Value::Int(i))
            }
            b'0'..=b'9' => Ok(Value::Bytes(self.string()?)),
            b'l' => {
                self.pos += 1;
                let mut l = Vec::new();
                while self.peek()? != b'e' {
                    l.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(l))
            }
            b'd' => {
                self.pos += 1;
                let mut d = Vec::new();
                while self.peek()? != b'e' {
                    if !self.peek()?.is_ascii_digit() {
                        return Err(DecodeError::BadKey(self.pos));
                    }
                    let k = self.string()?;
                    let v = self.value(depth + 1)?;
                    d.push((k, v));
                }
                self.pos += 1;
                Ok(Value::Dict(d))
            }
            _ => Err(DecodeError::Unexpected(self.pos)),
        }
    }

    /// A decimal number up to `end`; `signed`: a leading `-` is allowed.
    fn number(&mut self, end: u8, signed: bool) -> Result<i64, DecodeError> {
        let start = self.pos;
        let rel = self.s[start..]
            .iter()
            .position(|b| *b == end)
            .ok_or(DecodeError::Truncated(self.s.len()))?;
        let text = &self.s[start..start + rel];
        let digits = match text.strip_prefix(b"-") {
            Some(d) if signed => d,
            Some(_) => return Err(DecodeError::BadNumber(start)),
            None => text,
        };
        let negative = digits.len() != text.len();
        if digits.is_empty()
            || !digits.iter().all(u8::is_ascii_digit)
            || (digits.len() > 1 && digits[0] == b'0')
            || (negative && digits == b"0")
        {
            return Err(DecodeError::BadNumber(start));
        }
        let n: i64 = std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or(DecodeError::BadNumber(start))?;
        self.pos = start + rel + 1;
        Ok(n)
    }

    fn string(&mut self) -> Result<Vec<u8>, DecodeError> {
        let at = self.pos;
        let len = self.number(b':', false)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::BadNumber(at))?;
        // the length is checked against what is there before anything is allocated
        if len > self.s.len() - self.pos {
            return Err(DecodeError::Truncated(self.s.len()));
        }
        let b = self.s[self.pos..self.pos + len].to_vec();
        self.pos += len;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_and_encodes_the_ng_examples() {
        let offer = Value::dict([
            ("command", Value::from("offer")),
            ("call-id", Value::from("c1@host")),
            ("from-tag", Value::from("ft")),
            ("sdp", Value::from("v=0\r\n")),
            ("flags", Value::strings(["trust-address"])),
        ]);
        let wire = offer.to_bytes();
        // keys sorted on the wire
        assert_eq!(
            wire,
            b"d7:call-id7:c1@host7:command5:offer5:flagsl13:trust-addresse8:from-tag2:ft3:sdp5:v=0\r\ne"
                .to_vec()
        );
        let back = decode(&wire).unwrap();
        assert_eq!(back.get("command").and_then(Value::as_str), Some("offer"));
        assert_eq!(
            back.get("sdp").and_then(Value::as_bytes),
            Some(&b"v=0\r\n"[..])
        );
        let reply = decode(b"d6:result4:ponge").unwrap();
        assert_eq!(reply.get("result").and_then(Value::as_str), Some("pong"));
        assert_eq!(decode(b"i-42e").unwrap().as_int(), Some(-42));
        assert_eq!(decode(b"i0e").unwrap().as_int(), Some(0));
        assert_eq!(decode(b"0:").unwrap().as_bytes(), Some(&b""[..]));
        assert_eq!(decode(b"le").unwrap(), Value::List(vec![]));
    }

    #[test]
    fn malformed_input_is_refused_with_its_place() {
        let cases: &[(&[u8], DecodeError)] = &[
            (b"", DecodeError::Truncated(0)),
            (b"i42", DecodeError::Truncated(3)),
            (b"i042e", DecodeError::BadNumber(1)),
            (b"i-0e", DecodeError::BadNumber(1)),
            (b"ie", DecodeError::BadNumber(1)),
            (b"i4x2e", DecodeError::BadNumber(1)),
            (b"i99999999999999999999e", DecodeError::BadNumber(1)),
            (b"5:abc", DecodeError::Truncated(5)),
            (b"-1:a", DecodeError::Unexpected(0)),
            (b"01:a", DecodeError::BadNumber(0)),
            (b"99999999999999999999999:a", DecodeError::BadNumber(0)),
            (b"18446744073709551615:a", DecodeError::BadNumber(0)),
            (b"d1:a", DecodeError::Truncated(4)),
            (b"di1e1:ae", DecodeError::BadKey(1)),
            (b"l", DecodeError::Truncated(1)),
            (b"x", DecodeError::Unexpected(0)),
            (b"i1ei2e", DecodeError::Trailing(3)),
        ];
        for (input, want) in cases {
            assert_eq!(
                decode(input).as_ref(),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_huge_declared_length_allocates_nothing() {
        // 9,223,372,036,854,775,807 bytes declared, 1 present: refused on the check
        assert_eq!(
            decode(b"9223372036854775807:a"),
            Err(DecodeError::Truncated(21))
        );
    }

    #[test]
    fn nesting_and_item_count_are_bounded() {
        let deep = [vec![b'l'; MAX_DEPTH + 2], vec![b'e'; MAX_DEPTH + 2]].concat();
        assert!(matches!(decode(&deep), Err(DecodeError::TooLarge(_))));
        let ok = [vec![b'l'; MAX_DEPTH], vec![b'e'; MAX_DEPTH]].concat();
        assert!(decode(&ok).is_ok());
        let mut many = b"l".to_vec();
        for _ in 0..MAX_ITEMS {
            many.extend_from_slice(b"i1e");
        }
        many.push(b'e');
        assert!(matches!(decode(&many), Err(DecodeError::TooLarge(_))));
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
                proptest::collection::btree_map(
                    proptest::collection::vec(any::<u8>(), 0..12),
                    inner,
                    0..8
                )
                .prop_map(|m| Value::Dict(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn encode_then_decode_gives_the_value_back(v in arb_value()) {
            prop_assert_eq!(decode(&v.to_bytes()), Ok(v));
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&b);
        }
    }
}
