//! `net`: the I/O driver around the sans-IO proxy core.
//!
//! UDP is served by dedicated OS threads doing blocking `recv_from` on the shared socket
//! (one per core, the way Kamailio's UDP workers share a socket): no reactor round trip on
//! the hot path. TCP runs on tokio: one task reads and frames each connection, one writes
//! it; connections are *flows* with ids, so the core can send replies and in-dialog
//! requests back over the connection a peer opened. A timer thread fires the core's
//! transaction timers.
#![forbid(unsafe_code)]

mod conn;
pub mod dns;
mod driver;
pub mod supervise;

pub use conn::{TcpCounters, TcpLimits};
pub use driver::{Net, NetConfig, NetError};
