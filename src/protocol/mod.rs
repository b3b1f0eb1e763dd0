//! The protocol's Rust face: what `protocol/README.md` and its JSON Schemas
//! say, as types. It imports nothing of the crate (only serde, serde_json
//! and axum's text and header types), so the hub, REST, loadtest, fuzz and
//! the tests all build on it and it on nothing of theirs.
//!
//! - `client.rs`: client frames and their one-pass parser; `fields.rs`: the
//!   fields each frame type may carry.
//! - `server.rs`: server frames, encoded once; the stream frames from the
//!   protocol's own [`StreamEntry`] (the hub adapts stored rows to it).
//! - `codes.rs`: the one list of error codes, for the socket and for REST,
//!   and the close codes.
//! - `ids.rs`: the id rules, shared with the REST validators.
//! - `limits.rs`: the limits announced in `hello`.
//! - `version.rs`: subprotocol, minor version, features, heartbeat mode.
//!
//! Better here than in the field's models, and kept: the contract comes
//! first. `protocol/README.md` and a tight and a tolerant JSON Schema per
//! frame are the spec; the server's own frames are checked against the
//! tight schemas in the tests (`tests/schemas.rs`), the accepted fields
//! (`fields.rs`) and the socket's error codes (`codes.rs`) against them in
//! unit tests, and the TypeScript types are generated from them. Neither
//! Sockudo nor Centrifuge checks its output against a published schema.

mod client;
mod codes;
mod fields;
mod ids;
mod limits;
mod server;
mod version;

pub use client::{ClientFrame, FrameError, RawFrame, RawSyncEntry, Resume, parse};
pub use codes::{ErrorCode, close};
pub use fields::fields_of;
pub use ids::{ID_MAX_BYTES, is_client_msg_id, is_epoch, is_id};
pub use limits::Limits;
pub use server::{APP_PING, EntryKind, ServerFrame, StreamEntry, error_frame, kind_of, stream_frame};
pub use version::*;
