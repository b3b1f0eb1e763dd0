//! The WebSocket hub over real sockets, on both backends.
//!
//! - `client`: the test client speaking protocol v1; every frame it receives
//!   is checked against `protocol/schemas`.
//! - `basics`: the handshake, every frame type, membership, exactly-once
//!   delivery with resume.
//! - `faults`: bad frames, rate limits and abuse, slow consumers, token
//!   expiry and renewal, logout and erasure, drain, idle sockets.
//! - `versioning`: protocol 1.1 and later: `hello`'s version, features and
//!   clock, the subprotocol, app heartbeats, compatibility.

mod basics;
pub mod client;
mod faults;
mod versioning;
