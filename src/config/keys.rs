//! The access-token keys: `JWT_SECRET`, or `JWT_ALGORITHM` with PEM key
//! files, and the same for the previous key of a rotation. Weak secrets are
//! refused outside development.

use std::collections::HashMap;
use std::path::PathBuf;

use secrecy::SecretString;

use super::{ConfigError, MIN_SECRET_BYTES, err};
use crate::auth::JwtKeyConfig;

/// Secrets that appear in tutorials and sample configs; refusing them catches
/// copy-pasted deployments.
const WELL_KNOWN_SECRETS: &[&str] = &[
    "secret",
    "changeme",
    "change-me",
    "password",
    "jwt_secret",
    "your-256-bit-secret",
    "your_jwt_secret",
    "supersecret",
    "development-secret-do-not-use-in-production",
];

/// Reads `JWT_{prefix}SECRET` or `JWT_{prefix}ALGORITHM` + key files, and
/// returns the key with a default `kid` derived from the public material.
pub(super) fn jwt_key_from(
    vars: &HashMap<String, String>,
    prefix: &str,
    dev: bool,
) -> Result<(JwtKeyConfig, String), ConfigError> {
    use jsonwebtoken::Algorithm;
    let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    // Variable names must be 'static for the error; the two prefixes are known.
    let (v_secret, v_alg, v_priv, v_pub) = if prefix.is_empty() {
        ("JWT_SECRET", "JWT_ALGORITHM", "JWT_PRIVATE_KEY_FILE", "JWT_PUBLIC_KEY_FILE")
    } else {
        (
            "JWT_PREVIOUS_SECRET",
            "JWT_PREVIOUS_ALGORITHM",
            "JWT_PREVIOUS_PRIVATE_KEY_FILE",
            "JWT_PREVIOUS_PUBLIC_KEY_FILE",
        )
    };

    let algorithm = match get(v_alg).unwrap_or("HS256") {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        _ => return Err(err(v_alg, "must be one of HS256, RS256, ES256, EdDSA")),
    };

    if algorithm == Algorithm::HS256 {
        let secret = match get(v_secret) {
            Some(s) => s.to_owned(),
            None if dev => {
                // A fresh random secret per start: tokens do not survive a
                // restart in development, which is the safe surprise.
                use rand::RngCore;
                let mut b = [0u8; 48];
                rand::thread_rng().fill_bytes(&mut b);
                hex::encode(b)
            }
            None => {
                return Err(err(v_secret, "is required outside development (at least 32 bytes, random)"));
            }
        };
        if !dev {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(err(v_secret, format!("is shorter than {MIN_SECRET_BYTES} bytes")));
            }
            let lower = secret.to_ascii_lowercase();
            let one_char = secret.chars().all(|c| secret.starts_with(c));
            if WELL_KNOWN_SECRETS.iter().any(|w| lower.contains(w)) || one_char {
                return Err(err(v_secret, "is a well-known or trivially guessable value"));
            }
        }
        let kid = short_fingerprint(secret.as_bytes());
        return Ok((JwtKeyConfig::Hmac { secret: SecretString::from(secret) }, kid));
    }

    let read = |var: &'static str| -> Result<String, ConfigError> {
        let path = get(var).ok_or_else(|| err(var, format!("is required when {v_alg} is not HS256")))?;
        std::fs::read_to_string(PathBuf::from(path)).map_err(|e| err(var, format!("cannot be read: {}", e.kind())))
    };
    let public_pem = read(v_pub)?;
    // A previous key only verifies; its private half is not needed.
    let private_pem = if prefix.is_empty() { read(v_priv)? } else { String::new() };
    let kid = short_fingerprint(public_pem.as_bytes());
    let cfg = JwtKeyConfig::Asymmetric { algorithm, private_pem: SecretString::from(private_pem), public_pem };
    // Parse now so a bad PEM fails at start-up, not on the first login.
    crate::auth::JwtKeys::validate(&cfg)
        .map_err(|reason| err(if prefix.is_empty() { v_priv } else { v_pub }, reason))?;
    Ok((cfg, kid))
}

/// A `kid` that names the key without revealing it.
fn short_fingerprint(material: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(material)[..8])
}
