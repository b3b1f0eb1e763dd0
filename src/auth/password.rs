//! Password hashing with argon2id.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Params, Version};

/// Hashes and verifies passwords off the async runtime.
///
/// Parameters follow OWASP's argon2id baseline (19 MiB, 2 passes, 1 lane):
/// about 20 ms per hash on one core, slow enough to make offline guessing
/// expensive, cheap enough that login throttling, not CPU, is the limit.
#[derive(Clone)]
pub struct Passwords {
    argon: Argon2<'static>,
    /// Verified against when the email is unknown, so a login takes the same
    /// time whether or not the account exists.
    dummy_hash: String,
}

impl Passwords {
    /// # Panics
    /// Never: the parameters are constants argon2 accepts.
    pub fn new() -> Self {
        // The constants are within argon2's documented bounds.
        let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 params");
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        let dummy_hash = argon
            .hash_password(b"dummy password for timing", &salt)
            .expect("hashing a constant cannot fail")
            .to_string();
        Passwords { argon, dummy_hash }
    }

    /// # Errors
    /// Only if the blocking pool is gone (shutdown).
    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        let argon = self.argon.clone();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("argon2: {e}"))
        })
        .await?
    }

    /// Verifies `password` against `hash`, or against the dummy hash when
    /// `hash` is `None` (and then always fails).
    pub async fn verify(&self, password: String, hash: Option<String>) -> anyhow::Result<bool> {
        let argon = self.argon.clone();
        let real = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("stored hash: {e}"))?;
            Ok(argon.verify_password(password.as_bytes(), &parsed).is_ok() && real)
        })
        .await?
    }
}

impl Default for Passwords {
    fn default() -> Self {
        Self::new()
    }
}
