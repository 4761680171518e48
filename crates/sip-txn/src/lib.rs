//! `sip-txn`: RFC 3261 §17 transactions with the RFC 6026 corrections, as sans-IO state
//! machines.
//!
//! Nothing here reads a clock or touches a socket. Each transaction is driven with
//! `on_*(now, ...)` calls; what it wants sent comes out of `poll_transmit()`, when it next
//! needs to be woken comes out of `poll_timeout()`, and `on_timeout(now)` fires whatever
//! timers have expired. The owner decides where bytes go: a transaction only knows whether
//! its transport is reliable (which disables retransmission timers, §17.1.1.2).
//!
//! | machine | RFC | timers |
//! | --- | --- | --- |
//! | [`ClientInvite`] | §17.1.1, RFC 6026 §8.4 | A, B, D, M |
//! | [`ClientNonInvite`] | §17.1.2 | E, F, K |
//! | [`ServerInvite`] | §17.2.1, RFC 6026 §8.7 | G, H, I, L |
//! | [`ServerNonInvite`] | §17.2.2 | J |
#![forbid(unsafe_code)]

mod client_invite;
mod client_non_invite;
mod key;
mod server_invite;
mod server_non_invite;
mod timers;

pub use client_invite::{ClientInvite, ClientInviteState};
pub use client_non_invite::{ClientNonInvite, ClientNonInviteState};
pub use key::{client_key, server_key, server_key_for, KeyError};
pub use server_invite::{ServerInvite, ServerInviteState};
pub use server_non_invite::{ServerNonInvite, ServerNonInviteState};
pub use timers::TimerConfig;

/// What a transaction tells its owner (the transaction user, §17) besides transmissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnEvent {
    /// A client transaction got no final response in time (Timer B or F): the TU acts as
    /// if a `408 Request Timeout` had arrived (§17.1.1.2, §17.1.2.2).
    Timeout,
    /// A server INVITE transaction never got the ACK for its final response (Timer H).
    AckTimeout,
    /// The transaction reached Terminated and can be dropped.
    Terminated,
}

/// What a client transaction does with a response it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseAction {
    /// Hand the response to the TU (first final, provisional, or a 2xx in Accepted).
    Deliver,
    /// A retransmission or a late response: nothing for the TU.
    Absorb,
}

/// What a server transaction does with a request that matched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestAction {
    /// A retransmission: the transaction handled it (maybe by resending its last response).
    Absorbed,
    /// An ACK that the TU must see (ACK matched in Accepted state, RFC 6026 §8.7).
    Deliver,
}
