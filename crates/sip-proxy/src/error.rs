//! The errors of the proxy library: what failed, which side of the proxy it came from
//! (the request's sender, a destination or DNS behind the proxy, the proxy itself), and
//! whether trying again may help (pingora's split, which is exactly failover).

use crate::dns::DnsError;

/// Where an error comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The request's sender, an operator or a table row: what they gave is not usable.
    Downstream,
    /// What stands behind the proxy: a destination, the DNS.
    Upstream,
    /// The proxy itself (a limit reached).
    Internal,
}

/// An error of the proxy library.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value given by an operator, a table row, a configuration or a peer is not usable.
    #[error("{0}")]
    Invalid(String),
    /// What was named (a set, a destination, a node, a resource) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A next hop's name gave no address.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// A destination did not answer, or failed the request.
    #[error("{destination}: {why}")]
    Destination {
        /// The destination's URI.
        destination: String,
        /// What happened.
        why: String,
        /// Its final response, when it sent one.
        code: Option<u16>,
    },
    /// A limit of the proxy was reached (requests waiting for DNS, transactions of a source).
    #[error("{0}")]
    Overloaded(String),
}

impl Error {
    /// Which side of the proxy the error comes from.
    pub fn side(&self) -> Side {
        match self {
            Error::Invalid(_) | Error::NotFound(_) => Side::Downstream,
            Error::Dns(_) | Error::Destination { .. } => Side::Upstream,
            Error::Overloaded(_) => Side::Internal,
        }
    }

    /// True when the same request may succeed later or elsewhere (another destination,
    /// another try once DNS answers), so failover or a retry is worth it.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Invalid(_) | Error::NotFound(_) => false,
            Error::Dns(e) => e.is_transient(),
            Error::Destination { code, .. } => code.is_none_or(|c| c == 408 || c >= 500),
            Error::Overloaded(_) => true,
        }
    }

    /// The SIP status and reason a peer gets for this error when it ends its request.
    /// `own_name`: a name that did not resolve came with the request (its Route or
    /// Request-URI), so one that does not exist is the sender's `604`, not our `503`.
    pub fn status(&self, own_name: bool) -> (u16, String) {
        match self {
            Error::Dns(e @ (DnsError::NotFound { .. } | DnsError::NoService { .. }))
                if own_name =>
            {
                (604, format!("Does Not Exist Anywhere ({e})"))
            }
            Error::Invalid(w) => (400, format!("Bad Request ({w})")),
            Error::NotFound(w) => (404, format!("Not Found ({w})")),
            Error::Destination {
                code: Some(408), ..
            } => (408, "Request Timeout".into()),
            e => (503, format!("Service Unavailable ({e})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_knows_its_side_its_retry_and_its_status() {
        let nx = Error::from(DnsError::NotFound {
            name: "nx.example".into(),
        });
        let down = Error::from(DnsError::Unreachable {
            name: "fs.example".into(),
            detail: "timeout".into(),
        });
        assert_eq!((nx.side(), nx.retryable()), (Side::Upstream, false));
        assert_eq!((down.side(), down.retryable()), (Side::Upstream, true));
        assert_eq!(nx.status(true).0, 604);
        assert_eq!(
            nx.status(false).0,
            503,
            "a name of ours: not the caller's fault"
        );
        assert_eq!(down.status(true).0, 503);
        let busy = Error::Destination {
            destination: "sip:10.0.0.5".into(),
            why: "busy".into(),
            code: Some(486),
        };
        assert!(!busy.retryable());
        assert!(Error::Destination {
            destination: "sip:10.0.0.5".into(),
            why: "no answer".into(),
            code: None
        }
        .retryable());
        let full = Error::Overloaded("too many waiting".into());
        assert_eq!(
            (full.side(), full.retryable(), full.status(false).0),
            (Side::Internal, true, 503)
        );
        assert_eq!(Error::NotFound("no set 9".into()).to_string(), "no set 9");
        assert_eq!(
            Error::Invalid("x".into()).status(false),
            (400, "Bad Request (x)".into())
        );
    }
}
