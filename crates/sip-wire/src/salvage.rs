//! Reading what can be read from a message that failed to parse, to answer it.

use crate::header::HeaderName;
use crate::split::split_commas;
use crate::via::Via;

/// What a malformed message still lets a server copy into its error response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Salvage {
    /// True when the first line does not look like a status line.
    pub is_request: bool,
    /// The request method, if the request line has one.
    pub method: String,
    /// Whole header lines (`Name: value`), in order, for Via, From, To, Call-ID and CSeq.
    pub lines: Vec<String>,
    /// True when at least one Via line was found.
    pub has_via: bool,
}

/// Scans a message that failed to parse for the headers an error response must echo
/// (RFC 3261 §8.2.6.2). Lines with control characters are left out.
pub fn salvage(buf: &[u8]) -> Salvage {
    let text = String::from_utf8_lossy(buf);
    let mut out = Salvage::default();
    let mut lines = text
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .skip_while(|l| l.trim().is_empty());
    if let Some(first) = lines.next() {
        out.is_request = !first.starts_with("SIP/");
        out.method = first.split(' ').next().unwrap_or("").to_string();
    }
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.bytes().any(|c| c < 0x20 && c != b'\t') || line.len() > 4096 {
            continue;
        }
        let Some(colon) = line.find(':') else {
            continue;
        };
        let name = HeaderName::from_bytes(line[..colon].trim().as_bytes());
        let value = line[colon + 1..].trim();
        let canon = match name {
            HeaderName::Via => {
                if split_commas(value)
                    .next()
                    .and_then(|v| Via::parse(v).ok())
                    .is_none()
                {
                    continue;
                }
                out.has_via = true;
                "Via"
            }
            HeaderName::From => "From",
            HeaderName::To => "To",
            HeaderName::CallId => "Call-ID",
            HeaderName::CSeq => "CSeq",
            _ => continue,
        };
        out.lines.push(format!("{canon}: {value}"));
    }
    out
}
