//! HTTP Digest authentication maths for SIP (RFC 3261 §22.4, RFC 7616, RFC 8760): parsing
//! `Authorization`/`Proxy-Authorization` credentials, HA1 and response hashes with MD5 and
//! SHA-256, and HMAC-SHA-256 for stateless nonces. No clock, no state.

use md5::{Digest as _, Md5};
use sha2::Sha256;

use crate::split::{split_commas, trim_lws};

/// A digest hash algorithm (the `-sess` variants are not offered, so not accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    /// The `algorithm=` token.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Parses an `algorithm=` token, any case.
    pub fn parse(s: &str) -> Option<Algorithm> {
        if s.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Length of a hash in lowercase hex.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
        }
    }

    /// Lowercase hex hash of the parts joined with `:`.
    pub fn hash_colon(self, parts: &[&[u8]]) -> String {
        fn run<D: md5::Digest>(mut d: D, parts: &[&[u8]]) -> String {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            hex(&d.finalize())
        }
        match self {
            Algorithm::Md5 => run(Md5::new(), parts),
            Algorithm::Sha256 => run(Sha256::new(), parts),
        }
    }
}

/// Lowercase hex of bytes.
pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// `H(username:realm:password)`.
pub fn ha1(alg: Algorithm, user: &str, realm: &str, password: &str) -> String {
    alg.hash_colon(&[user.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// The expected `response` for credentials, given the stored HA1 (RFC 7616 §3.4.1).
pub fn expected_response(c: &Credentials<'_>, ha1: &str, method: &str) -> String {
    let alg = c.algorithm;
    let ha2 = alg.hash_colon(&[method.as_bytes(), c.uri.as_bytes()]);
    match (c.qop, c.nc, c.cnonce) {
        (Some(qop), Some(nc), Some(cnonce)) => alg.hash_colon(&[
            ha1.as_bytes(),
            c.nonce.as_bytes(),
            nc.as_bytes(),
            cnonce.as_bytes(),
            qop.as_bytes(),
            ha2.as_bytes(),
        ]),
        _ => alg.hash_colon(&[ha1.as_bytes(), c.nonce.as_bytes(), ha2.as_bytes()]),
    }
}

/// Compares two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| {
        acc | (x.to_ascii_lowercase() ^ y.to_ascii_lowercase())
    }) == 0
}

/// HMAC-SHA-256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let ih = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(ih);
    outer.finalize().into()
}

/// Why credentials were refused before any hash was computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("credentials are not Digest")]
    NotDigest,
    #[error("malformed auth-param {0:?}")]
    BadParam(String),
    #[error("duplicate auth-param {0}")]
    Duplicate(&'static str),
    #[error("missing {0} in credentials")]
    Missing(&'static str),
    #[error("unsupported algorithm {0}")]
    Algorithm(String),
    #[error("unsupported qop {0}")]
    Qop(String),
    #[error("nc is not 8 hex digits")]
    Nc,
    #[error("response is not a {0}-digit hex hash")]
    Response(usize),
}

fn unescaped_quote(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return true,
            _ => i += 1,
        }
    }
    false
}

/// Parsed Digest credentials (`Authorization` or `Proxy-Authorization` value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub username: &'a str,
    pub realm: &'a str,
    pub nonce: &'a str,
    pub uri: &'a str,
    pub response: &'a str,
    pub algorithm: Algorithm,
    pub cnonce: Option<&'a str>,
    pub opaque: Option<&'a str>,
    pub qop: Option<&'a str>,
    pub nc: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    /// Parses and checks a credentials value: every required parameter present once,
    /// quoted where the grammar quotes it, `qop=auth` with `nc` and `cnonce`.
    pub fn parse(value: &'a str) -> Result<Credentials<'a>, AuthError> {
        let v = trim_lws(value);
        let (scheme, rest) = v.split_at(v.find([' ', '\t']).ok_or(AuthError::NotDigest)?);
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(AuthError::NotDigest);
        }
        let mut f: [Option<&'a str>; 10] = [None; 10];
        const NAMES: [&str; 10] = [
            "username",
            "realm",
            "nonce",
            "uri",
            "response",
            "algorithm",
            "cnonce",
            "opaque",
            "qop",
            "nc",
        ];
        // quoted-string parameters and token parameters (RFC 3261 §25.1 dig-resp)
        const QUOTED: [bool; 10] = [
            true, true, true, true, true, false, true, true, false, false,
        ];
        for p in split_commas(rest) {
            let eq = p.find('=').ok_or_else(|| AuthError::BadParam(p.into()))?;
            let name = trim_lws(&p[..eq]);
            let raw = trim_lws(&p[eq + 1..]);
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(AuthError::BadParam(p.into()));
            }
            let quoted = raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"');
            if raw.starts_with('"') != quoted || (raw.ends_with('"') && !quoted) {
                return Err(AuthError::BadParam(p.into()));
            }
            let val = if quoted { &raw[1..raw.len() - 1] } else { raw };
            if quoted && unescaped_quote(val) {
                return Err(AuthError::BadParam(p.into()));
            }
            let Some(i) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)) else {
                continue; // auth-param extension: ignored
            };
            // qop may be quoted by some clients; accept both for it and algorithm
            if QUOTED[i] && !quoted && !matches!(i, 6 | 7) {
                return Err(AuthError::BadParam(p.into()));
            }
            if f[i].replace(val).is_some() {
                return Err(AuthError::Duplicate(NAMES[i]));
            }
        }
        let need = |i: usize| f[i].ok_or(AuthError::Missing(NAMES[i]));
        let algorithm = match f[5] {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(a).ok_or_else(|| AuthError::Algorithm(a.into()))?,
        };
        let c = Credentials {
            username: need(0)?,
            realm: need(1)?,
            nonce: need(2)?,
            uri: need(3)?,
            response: need(4)?,
            algorithm,
            cnonce: f[6],
            opaque: f[7],
            qop: f[8],
            nc: f[9],
        };
        if let Some(q) = c.qop {
            if !q.eq_ignore_ascii_case("auth") {
                return Err(AuthError::Qop(q.into()));
            }
            let nc = c.nc.ok_or(AuthError::Missing("nc"))?;
            c.cnonce.ok_or(AuthError::Missing("cnonce"))?;
            if nc.len() != 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(AuthError::Nc);
            }
        }
        let n = algorithm.hex_len();
        if c.response.len() != n || !c.response.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AuthError::Response(n));
        }
        if c.username.is_empty() {
            return Err(AuthError::Missing("username"));
        }
        Ok(c)
    }

    /// The nonce count as a number (qop=auth only).
    pub fn nc_value(&self) -> Option<u32> {
        self.nc.and_then(|n| u32::from_str_radix(n, 16).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_md5_example_with_qop() {
        // RFC 2617 §3.5 example (the HTTP method and URI of that example)
        let v = r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let c = Credentials::parse(v).unwrap();
        assert_eq!(c.username, "Mufasa");
        assert_eq!(c.nc_value(), Some(1));
        let h = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        assert_eq!(expected_response(&c, &h, "GET"), c.response);
    }

    #[test]
    fn rfc7616_sha256_example() {
        // RFC 7616 §3.9.1, SHA-256 response
        let v = r#"Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;
        let c = Credentials::parse(v).unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha256);
        let h = ha1(
            Algorithm::Sha256,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        assert_eq!(expected_response(&c, &h, "GET"), c.response);
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn malformed_credentials_get_precise_errors() {
        let ok = r#"Digest username="a", realm="r", nonce="n", uri="sip:r", response="00000000000000000000000000000000""#;
        assert!(Credentials::parse(ok).is_ok());
        let cases: &[(&str, AuthError)] = &[
            ("Basic YWxhZGRpbjpvcGVuc2VzYW1l", AuthError::NotDigest),
            ("Digest", AuthError::NotDigest),
            (
                r#"Digest username="a", realm="r", nonce="n", uri="sip:r""#,
                AuthError::Missing("response"),
            ),
            (
                r#"Digest username="a", username="b", realm="r", nonce="n", uri="sip:r", response="00000000000000000000000000000000""#,
                AuthError::Duplicate("username"),
            ),
            (
                r#"Digest username=a, realm="r", nonce="n", uri="sip:r", response="00000000000000000000000000000000""#,
                AuthError::BadParam("username=a".into()),
            ),
            (
                r#"Digest username="a, realm="r""#,
                AuthError::BadParam(r#"username="a, realm="r""#.into()),
            ),
            (
                r#"Digest username="a", realm="r", nonce="n", uri="sip:r", response="abc""#,
                AuthError::Response(32),
            ),
            (
                r#"Digest username="a", realm="r", nonce="n", uri="sip:r", algorithm=SHA-512, response="00""#,
                AuthError::Algorithm("SHA-512".into()),
            ),
            (
                r#"Digest username="a", realm="r", nonce="n", uri="sip:r", qop=auth, cnonce="c", response="00000000000000000000000000000000""#,
                AuthError::Missing("nc"),
            ),
            (
                r#"Digest username="a", realm="r", nonce="n", uri="sip:r", qop=auth, nc=1, cnonce="c", response="00000000000000000000000000000000""#,
                AuthError::Nc,
            ),
            (
                r#"Digest username="a", realm="r", nonce="n", uri="sip:r", qop=auth-int, nc=00000001, cnonce="c", response="00000000000000000000000000000000""#,
                AuthError::Qop("auth-int".into()),
            ),
            (
                r#"Digest username="", realm="r", nonce="n", uri="sip:r", response="00000000000000000000000000000000""#,
                AuthError::Missing("username"),
            ),
            ("Digest garbage", AuthError::BadParam("garbage".into())),
        ];
        for (v, want) in cases {
            assert_eq!(Credentials::parse(v).unwrap_err(), *want, "{v}");
        }
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        for s in [
            "",
            " ",
            "Digest ,,,",
            "Digest =",
            "Digest a=\"",
            "Digest a=\"\\",
            "Digest \"=\"",
        ] {
            let _ = Credentials::parse(s);
        }
    }
}
