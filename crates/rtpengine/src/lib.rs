//! `rtpengine`: the NG control protocol of rtpengine (the media relay). This first part is
//! sans-IO: the bencode codec ([`bencode`]) and the NG datagram framing ([`ng`]); the
//! client (cookies, retransmission, instance sets, health) builds on them.
#![forbid(unsafe_code)]

pub mod bencode;
pub mod ng;

pub use bencode::{DecodeError, Value};
