//! `sip-proxy`: the stateful proxy core of RFC 3261 §16, sans-IO.
//!
//! The driver hands every received message to [`Proxy::on_message`] with its source and
//! the current time, calls [`Proxy::on_timers`] when [`Proxy::next_timeout`] comes, and
//! reports send failures through [`Proxy::on_transport_error`]. Everything the core wants
//! sent is pushed into an output vector as [`Transmit`] values. The core reads no clock,
//! draws no random number and touches no socket.
//!
//! State lives in a sharded table of *contexts*: one per proxied request, holding its
//! server transaction and the client transactions of its branches (§16.6–§16.7).
#![forbid(unsafe_code)]

pub mod balancer;
mod build;
pub mod cdr;
pub mod cluster;
pub mod command;
mod config;
mod core;
mod ctx;
pub mod dialog;
pub mod dispatcher;
pub mod dns;
mod error;
pub mod mac;
pub mod media;
pub mod numbers;
pub mod pike;
mod ratelog;
pub mod registrar;
mod router;
#[cfg(test)]
pub(crate) mod scenario;
#[cfg(any(test, feature = "fuzzing"))]
pub mod sequences;
mod stats;
mod types;

pub use crate::build::SERVER;

/// The bits of a binding or dialog id that its process counts; above them is the process's
/// range, a number the database hands out at start (`store::Store::claim_id_base`), so that
/// processes sharing a database never make the same id. Ids stay below 2^53 (exact as JSON
/// numbers).
pub const ID_COUNTER_BITS: u32 = 37;

/// The range an id belongs to.
pub fn id_range(id: u64) -> u64 {
    id >> ID_COUNTER_BITS
}
pub use crate::core::Proxy;
pub use crate::error::{Error, Side};
pub use config::{Listener, ProxyConfig};
pub use router::{Probe, RoundRobin, Router};
pub use stats::{Stat, Stats};
pub use types::{Destination, FlowId, NodeRef, Origin, Source, Target, Transmit, Transport};
