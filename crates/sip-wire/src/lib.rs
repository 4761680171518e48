//! `sip-wire`: a zero-copy SIP message parser and printer (RFC 3261 §7, §20, §25).
//!
//! A [`Message`] keeps the received bytes in one [`bytes::Bytes`] buffer and indexes the
//! start line and every header as byte spans into it; nothing is copied and no header
//! allocates. Typed views ([`Via`], [`NameAddr`], [`Uri`], [`CSeq`]) are parsed on demand
//! from a header's value. [`Editor`] builds an outgoing message by splicing new or changed
//! header lines around the untouched bytes of the original, so unknown headers pass
//! through byte for byte.
#![forbid(unsafe_code)]

pub mod addr;
pub mod auth;
mod edit;
mod error;
mod frame;
mod header;
mod message;
mod name_addr;
mod params;
mod salvage;
mod split;
mod uri;
mod via;

pub use edit::Editor;
pub use error::ParseError;
pub use frame::{frame_stream, Framing};
pub use header::{HeaderName, Method};
pub use message::{CSeq, Header, Message, Span, StartLine};
pub use name_addr::NameAddr;
pub use params::Params;
pub use salvage::{salvage, Salvage};
pub use split::split_commas;
pub use uri::{Scheme, Uri};
pub use via::Via;

/// The magic cookie that marks an RFC 3261 branch parameter (§8.1.1.7).
pub const BRANCH_MAGIC: &str = "z9hG4bK";
