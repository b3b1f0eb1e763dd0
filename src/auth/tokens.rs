//! Opaque random tokens and their stored hashes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new random token: `prefix` + 256 bits, URL-safe. The prefix tells a
/// human (and a secret scanner) what kind of token leaked.
pub fn new_token(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(b))
}

/// What the database stores instead of the token. A plain SHA-256 is enough:
/// the tokens are 256 random bits, so there is nothing to brute-force.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Shape check before any database look-up, so junk never reaches SQL.
pub fn looks_like(token: &str, prefix: &str) -> bool {
    token.len() == prefix.len() + 43
        && token.starts_with(prefix)
        && token[prefix.len()..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "rt_";
/// Prefix of WebSocket tickets.
pub const TICKET_PREFIX: &str = "wst_";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_well_formed_and_hash_stably() {
        let a = new_token(REFRESH_PREFIX);
        let b = new_token(REFRESH_PREFIX);
        assert_ne!(a, b);
        assert!(looks_like(&a, REFRESH_PREFIX));
        assert!(!looks_like(&a, TICKET_PREFIX));
        assert!(!looks_like("rt_short", REFRESH_PREFIX));
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_eq!(hash_token(&a).len(), 64);
    }
}
