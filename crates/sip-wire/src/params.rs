use crate::split::trim_lws;

/// A `;name=value` parameter list kept as the raw text that follows a URI or header value.
///
/// Names compare case-insensitively; a parameter without `=` has the value `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params<'a> {
    raw: &'a str,
}

impl<'a> Params<'a> {
    /// Wraps raw parameter text; a leading `;` is optional.
    pub fn new(raw: &'a str) -> Self {
        Params { raw }
    }

    /// The raw text, starting with `;` when not empty.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    /// Iterates `(name, value)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> + 'a {
        split_params(self.raw).filter_map(|p| {
            let p = trim_lws(p);
            if p.is_empty() {
                return None;
            }
            Some(match p.find('=') {
                Some(eq) => (trim_lws(&p[..eq]), Some(unquote(trim_lws(&p[eq + 1..])))),
                None => (p, None),
            })
        })
    }

    /// Looks a parameter up: `None` if absent, `Some(None)` if present without a value.
    pub fn get(&self, name: &str) -> Option<Option<&'a str>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// True when every parameter has a token name (no `;;`, no `;=x`).
    pub fn is_well_formed(&self) -> bool {
        let raw = self.raw.trim_start_matches([' ', '\t']);
        let raw = raw.strip_prefix(';').unwrap_or(raw);
        raw.is_empty()
            || split_params(raw).all(|p| {
                let name = trim_lws(p.split('=').next().unwrap_or(""));
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
            })
    }

    /// True when the parameter is present, with or without a value.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The value of a parameter that has one.
    pub fn value(&self, name: &str) -> Option<&'a str> {
        self.get(name).flatten()
    }
}

/// Splits at `;` outside quoted strings.
fn split_params(raw: &str) -> impl Iterator<Item = &str> {
    let mut rest = raw;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let b = rest.as_bytes();
        let mut i = 0;
        let mut q = false;
        while i < b.len() {
            match b[i] {
                b'\\' if q => i += 1,
                b'"' => q = !q,
                b';' if !q => break,
                _ => {}
            }
            i += 1;
        }
        let end = i.min(b.len());
        let piece = &rest[..end];
        rest = if end < b.len() { &rest[end + 1..] } else { "" };
        Some(piece)
    })
}

fn unquote(v: &str) -> &str {
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_params_case_insensitively() {
        let p = Params::new(";branch=z9hG4bK1;RPort;received=1.2.3.4;x=\"a;b\"");
        assert_eq!(p.value("BRANCH"), Some("z9hG4bK1"));
        assert_eq!(p.get("rport"), Some(None));
        assert_eq!(p.value("received"), Some("1.2.3.4"));
        assert_eq!(p.value("x"), Some("a;b"));
        assert_eq!(p.get("maddr"), None);
    }

    #[test]
    fn tolerates_spaces_around_equals() {
        let p = Params::new(" ; lr ; ttl = 16");
        assert!(p.has("lr"));
        assert_eq!(p.value("ttl"), Some("16"));
    }
}
