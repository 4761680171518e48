/// Splits a header value at top-level commas (RFC 3261 §7.3.1), skipping commas inside
/// quoted strings (with backslash escapes) and inside `<...>`. Each piece is trimmed of
/// linear whitespace; empty pieces are skipped.
pub fn split_commas(value: &str) -> SplitCommas<'_> {
    SplitCommas { rest: value }
}

/// Iterator returned by [`split_commas`].
#[derive(Debug, Clone)]
pub struct SplitCommas<'a> {
    rest: &'a str,
}

impl<'a> Iterator for SplitCommas<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let bytes = self.rest.as_bytes();
            let mut i = 0;
            let mut in_quote = false;
            let mut in_angle = false;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' if in_quote => i += 1,
                    b'"' if !in_angle => in_quote = !in_quote,
                    b'<' if !in_quote => in_angle = true,
                    b'>' if !in_quote => in_angle = false,
                    b',' if !in_quote && !in_angle => break,
                    _ => {}
                }
                i += 1;
            }
            let end = i.min(bytes.len());
            let piece = trim_lws(&self.rest[..end]);
            self.rest = if end < bytes.len() {
                &self.rest[end + 1..]
            } else {
                ""
            };
            if !piece.is_empty() {
                return Some(piece);
            }
        }
    }
}

/// Trims spaces, tabs and folded line breaks from both ends.
pub(crate) fn trim_lws(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t' || c == '\r' || c == '\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_inside_quotes_and_angles_do_not_split() {
        let v = r#""Smith, John" <sip:a@b;x=1,2>;tag=1, <sip:c@d>, "q\"," <sip:e@f>"#;
        let parts: Vec<_> = split_commas(v).collect();
        assert_eq!(
            parts,
            vec![
                r#""Smith, John" <sip:a@b;x=1,2>;tag=1"#,
                "<sip:c@d>",
                r#""q\"," <sip:e@f>"#
            ]
        );
    }

    #[test]
    fn empty_pieces_are_skipped() {
        assert_eq!(
            split_commas(" a ,, b ,").collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(split_commas("").count(), 0);
    }

    #[test]
    fn unterminated_quote_yields_rest_as_one_piece() {
        assert_eq!(
            split_commas(r#""abc, def"#).collect::<Vec<_>>(),
            vec![r#""abc, def"#]
        );
    }
}
