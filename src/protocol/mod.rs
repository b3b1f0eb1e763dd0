//! The protocol's Rust face: what `protocol/README.md` and its JSON Schemas
//! say, as types. Client frames and their parser, server frames, the error
//! and close codes, versioning.

mod frames;
mod version;

pub use frames::*;
pub use version::*;
