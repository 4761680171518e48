use thiserror::Error;

/// Why a message or a header value could not be parsed.
///
/// Every variant maps to a precise SIP reason phrase through [`ParseError::reason`], so a
/// proxy can answer `400 Bad Request` (or `505`, `513`, `416`) with the cause.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The buffer holds nothing but whitespace.
    #[error("empty message")]
    Empty,
    /// The header section never ends with an empty line.
    #[error("message truncated: no end of headers")]
    Truncated,
    /// The message is larger than the configured limit.
    #[error("message too large ({0} bytes)")]
    TooLarge(usize),
    /// The request or status line does not follow the grammar.
    #[error("malformed start line: {0}")]
    StartLine(&'static str),
    /// The SIP version is not `SIP/2.0`.
    #[error("unsupported SIP version")]
    Version,
    /// A header line has no name, no colon or an illegal character in its name.
    #[error("malformed header line {0}")]
    HeaderLine(usize),
    /// A NUL byte (or another control character) appears in the header section.
    #[error("control character in header section")]
    ControlChar,
    /// The header section is not valid UTF-8.
    #[error("header section is not UTF-8")]
    NotUtf8,
    /// A header that every request or response must carry is missing.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// A header that may appear only once appears several times with different values.
    #[error("duplicate {0} header")]
    Duplicate(&'static str),
    /// Content-Length is not a number.
    #[error("malformed Content-Length")]
    ContentLength,
    /// Content-Length announces more bytes than the message carries.
    #[error("body shorter than Content-Length ({declared} > {got})")]
    BodyShort {
        /// Bytes announced by Content-Length.
        declared: usize,
        /// Bytes actually present after the header section.
        got: usize,
    },
    /// The CSeq header is malformed or its method differs from the request's.
    #[error("malformed CSeq: {0}")]
    CSeq(&'static str),
    /// The Max-Forwards header is not a number in 0..=255.
    #[error("malformed Max-Forwards")]
    MaxForwards,
    /// A Via header is malformed.
    #[error("malformed Via: {0}")]
    Via(&'static str),
    /// A URI is malformed.
    #[error("malformed URI: {0}")]
    Uri(&'static str),
    /// A name-addr (From, To, Contact, Route) is malformed.
    #[error("malformed {0}")]
    NameAddr(&'static str),
}

impl ParseError {
    /// The SIP status code a server should answer a request with this error with.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::Version => 505,
            ParseError::TooLarge(_) => 513,
            _ => 400,
        }
    }

    /// A reason phrase naming the cause, for the status line of the error response.
    pub fn reason(&self) -> String {
        match self {
            ParseError::Version => "Version Not Supported".to_string(),
            ParseError::TooLarge(_) => "Message Too Large".to_string(),
            other => format!("Bad Request ({other})"),
        }
    }
}
