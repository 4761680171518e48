//! `net`: the I/O driver around the sans-IO proxy core.
//!
//! UDP is served by dedicated OS threads doing blocking `recv_from` on the shared socket
//! (one per core, the way Kamailio's UDP workers share a socket): no reactor round trip on
//! the hot path. Stream transports (TCP, TLS, WebSocket, secure WebSocket) run on tokio:
//! one task reads and frames each connection, one writes it; connections are *flows* with
//! ids (`flows.rs`), so the core can send replies and in-dialog requests back over the
//! connection a peer opened. `tcp.rs` accepts and opens connections and runs their
//! handshakes, `tls.rs` holds the certificates, `ws.rs` is the WebSocket codec, `stream.rs`
//! runs a connection whatever carries it. A timer thread fires the core's transaction
//! timers.
#![forbid(unsafe_code)]

pub mod dns;
mod driver;
mod flows;
mod stream;
pub mod supervise;
mod tcp;
pub mod tls;
pub mod ws;

pub use driver::{Media, MediaDone, MediaRunner, Net, NetConfig, NetError};
pub use flows::{StreamCounters, StreamLimits, STREAMS};
