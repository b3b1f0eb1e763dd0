//! Authentication: access tokens (JWT), passwords (argon2id), opaque tokens
//! (refresh tokens, WebSocket tickets) and the [`AuthUser`] extractor.

pub mod extractor;
pub mod jwt;
pub mod password;
pub mod tokens;

pub use extractor::AuthUser;
pub use jwt::{Claims, JwtKeys, TokenError};
pub use password::{HashError, Passwords};
