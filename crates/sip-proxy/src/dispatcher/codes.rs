//! Accepted probe reply codes, in both the OpenSIPS (`"501, 403"`) and the Kamailio
//! (`"code=403;class=2"`) forms. 200 is always accepted.

/// Which probe replies count as "alive".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplyCodes {
    codes: Vec<u16>,
    classes: Vec<u16>,
}

impl ReplyCodes {
    /// Parses a spec; the error says what is wrong.
    pub fn parse(spec: &str) -> Result<ReplyCodes, String> {
        let mut rc = ReplyCodes::default();
        let spec = spec.trim();
        if spec.is_empty() {
            return Ok(rc);
        }
        if spec.contains('=') {
            for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                let (k, v) = part
                    .split_once('=')
                    .ok_or_else(|| format!("{part:?} is not key=value"))?;
                let n: u16 = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{:?} is not a number", v.trim()))?;
                match k.trim() {
                    "code" if (100..=699).contains(&n) => rc.codes.push(n),
                    "class" if (1..=6).contains(&n) => rc.classes.push(n),
                    "code" => return Err(format!("code {n} is not a SIP status code")),
                    "class" => return Err(format!("class {n} is not 1..=6")),
                    other => return Err(format!("unknown key {other:?} (code, class)")),
                }
            }
        } else {
            for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let n: u16 = part
                    .parse()
                    .map_err(|_| format!("{part:?} is not a status code"))?;
                if !(100..=699).contains(&n) {
                    return Err(format!("{n} is not a SIP status code"));
                }
                rc.codes.push(n);
            }
        }
        Ok(rc)
    }

    /// True when a probe answered with `code` shows the destination alive.
    pub fn accepts(&self, code: u16) -> bool {
        code == 200 || self.codes.contains(&code) || self.classes.contains(&(code / 100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_syntaxes_parse() {
        let o = ReplyCodes::parse("501, 403").unwrap();
        assert!(o.accepts(200) && o.accepts(501) && o.accepts(403) && !o.accepts(404));
        let k = ReplyCodes::parse("code=403;class=2").unwrap();
        assert!(k.accepts(403) && k.accepts(202) && !k.accepts(501));
        assert!(ReplyCodes::parse("").unwrap().accepts(200));
    }

    #[test]
    fn malformed_specs_are_refused() {
        for bad in [
            "abc",
            "99",
            "code=xyz",
            "class=9",
            "colour=2",
            "code=403;oops",
            "700",
        ] {
            assert!(ReplyCodes::parse(bad).is_err(), "{bad}");
        }
    }
}
