//! Reads Kamailio's `dispatcher.list`: `setid destination [flags [priority [attrs]]]` per
//! line, `#` comments. Each line parses on its own; a bad line is reported with its number
//! and skipped, never fatal.

/// One destination line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// Line number in the file (1-based).
    pub line: usize,
    pub set: i64,
    pub uri: String,
    pub flags: i64,
    pub priority: i32,
    /// Kamailio attributes (`weight=...;duid=...`), kept as written.
    pub attrs: String,
    /// `weight=` from the attributes, 1 when absent.
    pub weight: u32,
}

/// Parses the whole file: the good entries, and `(line number, reason)` for the bad ones.
pub fn parse_list(text: &str) -> (Vec<ListEntry>, Vec<(usize, String)>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(e) => ok.push(ListEntry { line: n + 1, ..e }),
            Err(why) => bad.push((n + 1, why)),
        }
    }
    (ok, bad)
}

fn parse_line(line: &str) -> Result<ListEntry, String> {
    let mut f = line.split_whitespace();
    let set = f.next().ok_or("empty line")?;
    let set: i64 = set
        .parse()
        .map_err(|_| format!("set id {set:?} is not a number"))?;
    if set < 0 {
        return Err(format!("set id {set} is negative"));
    }
    let uri = f.next().ok_or("no destination URI")?.to_string();
    let flags = match f.next() {
        Some(v) => v
            .parse()
            .map_err(|_| format!("flags {v:?} is not a number"))?,
        None => 0,
    };
    let priority = match f.next() {
        Some(v) => v
            .parse()
            .map_err(|_| format!("priority {v:?} is not a number"))?,
        None => 0,
    };
    let attrs = f.collect::<Vec<_>>().join(" ");
    let mut weight = 1u32;
    for kv in attrs.split(';') {
        if let Some(w) = kv.trim().strip_prefix("weight=") {
            weight = w
                .trim()
                .parse()
                .map_err(|_| format!("weight {w:?} is not a non-negative number"))?;
        }
    }
    Ok(ListEntry {
        line: 0,
        set,
        uri,
        flags,
        priority,
        attrs,
        weight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_reference_list_and_reports_bad_lines() {
        let text = "# setid destination flags priority attrs\n1 sip:127.0.0.1:5080 0 0\n1 sip:127.0.0.1:5082 0 5 weight=3;duid=b\n\nx sip:bad\n2\n2 sip:10.0.0.1 zz\n3 sip:10.0.0.2 0 1 weight=-1\n";
        let (ok, bad) = parse_list(text);
        assert_eq!(ok.len(), 2);
        assert_eq!(
            ok[1],
            ListEntry {
                line: 3,
                set: 1,
                uri: "sip:127.0.0.1:5082".into(),
                flags: 0,
                priority: 5,
                attrs: "weight=3;duid=b".into(),
                weight: 3
            }
        );
        let lines: Vec<usize> = bad.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, vec![5, 6, 7, 8]);
        assert!(bad[0].1.contains("set id"));
        assert!(bad[3].1.contains("weight"));
    }
}
