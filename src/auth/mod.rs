//! Authentication: access tokens (JWT), passwords (argon2id), opaque tokens
//! (refresh tokens, WebSocket tickets). A component: it owns its settings
//! ([`JwtSettings`]) and imports only the clock; the `AuthUser` extractor
//! that puts it on requests is the HTTP edge's (`api::extract`).

pub mod jwt;
pub mod password;
pub mod tokens;

pub use jwt::{Claims, JwtKeyConfig, JwtKeys, JwtSettings, PreviousKey, TokenError};
pub use password::{HashError, Passwords};
