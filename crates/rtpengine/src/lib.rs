//! `rtpengine`: the NG control protocol of rtpengine (the media relay): the bencode codec
//! ([`bencode`]) and the NG datagram framing ([`ng`]), both sans-IO, and the client
//! ([`client`]: cookies, retransmission, instance sets with weights, health, call affinity).
#![forbid(unsafe_code)]

pub mod bencode;
pub mod client;
pub mod ng;

pub use bencode::{DecodeError, Value};
pub use client::{Client, Failure, InstanceConfig, Kind, Settings};
