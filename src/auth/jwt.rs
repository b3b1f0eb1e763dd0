//! Access tokens: short-lived JWTs with a `kid`, so keys can rotate.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;

/// How access tokens are signed. Keys are read from files so they never sit in
/// the environment of every child process.
#[derive(Clone)]
pub enum JwtKeyConfig {
    /// HS256 with a shared secret (the default).
    Hmac { secret: SecretString },
    /// RS256, ES256 or EdDSA with PEM key files.
    Asymmetric { algorithm: jsonwebtoken::Algorithm, private_pem: SecretString, public_pem: String },
}

/// A verify-only key kept during a key rotation so tokens signed before the
/// rotation stay valid until they expire.
#[derive(Clone)]
pub struct PreviousKey {
    pub kid: String,
    pub key: JwtKeyConfig,
}

/// Everything [`JwtKeys`] is built from (`JWT_*`, `ACCESS_TOKEN_TTL_SECS`),
/// read and checked by the configuration.
#[derive(Clone)]
pub struct JwtSettings {
    /// The signing key.
    pub key: JwtKeyConfig,
    /// The `kid` header of tokens signed by `key`.
    pub kid: String,
    /// The key of before a rotation, still accepted for verification.
    pub previous: Option<PreviousKey>,
    /// Lifetime of the access tokens issued.
    pub access_token_ttl: Duration,
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Session (refresh-token family) id: revoking the session revokes this
    /// token too.
    pub sid: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Unique token id.
    pub jti: String,
}

/// How far ahead of this instance's clock a token's `iat` may be: the
/// clocks of a cluster's instances differ by this much at most.
pub const MAX_CLOCK_SKEW_SECS: i64 = 60;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

/// Signing key plus every key that may verify (current and previous).
pub struct JwtKeys {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: HashMap<String, (DecodingKey, Algorithm)>,
    ttl: Duration,
}

fn keys_of(cfg: &JwtKeyConfig, need_private: bool) -> Result<(Algorithm, Option<EncodingKey>, DecodingKey), String> {
    match cfg {
        JwtKeyConfig::Hmac { secret } => {
            let s = secret.expose_secret().as_bytes();
            Ok((Algorithm::HS256, Some(EncodingKey::from_secret(s)), DecodingKey::from_secret(s)))
        }
        JwtKeyConfig::Asymmetric { algorithm, private_pem, public_pem } => {
            let (priv_pem, pub_pem) = (private_pem.expose_secret().as_bytes(), public_pem.as_bytes());
            let bad = |what: &str, e: jsonwebtoken::errors::Error| {
                format!("{what} key is not a valid PEM for {algorithm:?}: {e}")
            };
            let (enc, dec) = match algorithm {
                Algorithm::RS256 => (
                    need_private.then(|| EncodingKey::from_rsa_pem(priv_pem)).transpose(),
                    DecodingKey::from_rsa_pem(pub_pem),
                ),
                Algorithm::ES256 => (
                    need_private.then(|| EncodingKey::from_ec_pem(priv_pem)).transpose(),
                    DecodingKey::from_ec_pem(pub_pem),
                ),
                Algorithm::EdDSA => (
                    need_private.then(|| EncodingKey::from_ed_pem(priv_pem)).transpose(),
                    DecodingKey::from_ed_pem(pub_pem),
                ),
                other => return Err(format!("unsupported algorithm {other:?}")),
            };
            Ok((*algorithm, enc.map_err(|e| bad("private", e))?, dec.map_err(|e| bad("public", e))?))
        }
    }
}

impl JwtKeys {
    /// Checks that key material parses (used by config validation).
    ///
    /// # Errors
    /// A description of what does not parse.
    pub fn validate(cfg: &JwtKeyConfig) -> Result<(), String> {
        let need_private = match cfg {
            JwtKeyConfig::Asymmetric { private_pem, .. } => !private_pem.expose_secret().is_empty(),
            JwtKeyConfig::Hmac { .. } => true,
        };
        keys_of(cfg, need_private).map(|_| ())
    }

    /// # Errors
    /// Key material that does not parse (already checked by config).
    pub fn from_config(settings: &JwtSettings) -> anyhow::Result<Self> {
        let (algorithm, encoding, decoding) = keys_of(&settings.key, true).map_err(anyhow::Error::msg)?;
        let encoding = encoding.ok_or_else(|| anyhow::anyhow!("no private key"))?;
        let mut all = HashMap::from([(settings.kid.clone(), (decoding, algorithm))]);
        if let Some(prev) = &settings.previous {
            let (alg, _, dec) = keys_of(&prev.key, false).map_err(anyhow::Error::msg)?;
            all.insert(prev.kid.clone(), (dec, alg));
        }
        Ok(JwtKeys { kid: settings.kid.clone(), algorithm, encoding, decoding: all, ttl: settings.access_token_ttl })
    }

    /// Lifetime of the tokens this issues.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues an access token for a user's session.
    ///
    /// # Errors
    /// Signing failed (cannot happen with a validated key).
    pub fn issue(&self, user_id: &str, session_id: &str) -> anyhow::Result<String> {
        self.issue_with_ttl(user_id, session_id, self.ttl)
    }

    /// Issues a token with a given lifetime (load-test seeding only).
    ///
    /// # Errors
    /// As [`JwtKeys::issue`].
    pub fn issue_with_ttl(&self, user_id: &str, session_id: &str, ttl: Duration) -> anyhow::Result<String> {
        let now = now_ms() / 1000;
        let claims = Claims {
            sub: user_id.to_owned(),
            sid: session_id.to_owned(),
            iat: now,
            exp: now + ttl.as_secs() as i64,
            jti: uuid::Uuid::new_v4().simple().to_string(),
        };
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        Ok(encode(&header, &claims, &self.encoding)?)
    }

    /// Verifies signature, algorithm (the one the `kid` names; never the
    /// token's own choice), expiry, and that the token is already valid: an
    /// `nbf` (if present) not in the future, an `iat` at most
    /// [`MAX_CLOCK_SKEW_SECS`] ahead. This gateway never issues a token
    /// from the future; one is forged with a leaked key or signed by an
    /// instance whose clock is wrong, and either way refused.
    ///
    /// # Errors
    /// [`TokenError::Expired`] or [`TokenError::Invalid`].
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > 4096 {
            return Err(TokenError::Invalid);
        }
        let header = decode_header(token).map_err(|_| TokenError::Invalid)?;
        let kid = header.kid.ok_or(TokenError::Invalid)?;
        let (key, alg) = self.decoding.get(&kid).ok_or(TokenError::Invalid)?;
        let mut v = Validation::new(*alg);
        v.leeway = 0;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub", "iat"]);
        let claims = decode::<Claims>(token, key, &v).map(|d| d.claims).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid,
        })?;
        if claims.iat > now_ms() / 1000 + MAX_CLOCK_SKEW_SECS {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }
}
