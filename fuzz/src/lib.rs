//! What the fuzz targets check, shared with the seed-corpus generator
//! (`examples/seed_corpus.rs`), which runs every seed through the same checks.
//!
//! - [`check_frame`]: a client text frame through `protocol::parse`.
//! - [`check_token`]: a string as an access token against a real key set.
//! - [`check_envelope`]: bytes through the bus decoder `bus::wire::decode`.
//!
//! Each one panics (which libFuzzer reports as a crash) when the gateway
//! panics or when a property is broken.

use std::collections::HashMap;
use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use chatgw::auth::jwt::{JwtKeys, TokenError};
use chatgw::auth::tokens::{REFRESH_PREFIX, TICKET_PREFIX, looks_like};
use chatgw::bus::wire;
use chatgw::protocol::{self, ClientFrame, ErrorCode};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::Value;
use serde_json::value::RawValue;

// ---------------------------------------------------------------------------
// Client frames

/// The default `MAX_BODY_BYTES`.
pub const MAX_BODY_BYTES: usize = 4096;

fn valid_room(r: &str) -> bool {
    !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_client_msg_id(c: &str) -> bool {
    !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Checks one text frame: parsing never panics; what it accepts obeys the
/// protocol's field rules; the `error` frame that echoes its id is one JSON
/// object with exactly the expected keys (an id cannot inject JSON).
pub fn check_frame(text: &str) {
    let _ = protocol::kind_of(text);
    match protocol::parse(text, MAX_BODY_BYTES) {
        Ok((id, frame)) => {
            match &frame {
                ClientFrame::Join(r) => {
                    assert!(valid_room(&r.room), "join accepted room {:?}", r.room);
                    assert!(r.since_seq.is_none_or(|s| s >= 0), "join accepted since_seq {:?}", r.since_seq);
                    assert!(r.epoch.as_deref().is_none_or(valid_room), "join accepted epoch {:?}", r.epoch);
                }
                ClientFrame::Sync { rooms } => {
                    let mut seen = std::collections::HashSet::new();
                    for r in rooms {
                        assert!(valid_room(&r.room), "sync accepted room {:?}", r.room);
                        assert!(r.since_seq.is_none_or(|s| s >= 0), "sync accepted since_seq {:?}", r.since_seq);
                        assert!(r.epoch.as_deref().is_none_or(valid_room), "sync accepted epoch {:?}", r.epoch);
                        assert!(seen.insert(r.room.as_str()), "sync accepted room {:?} twice", r.room);
                    }
                }
                ClientFrame::Leave { room } | ClientFrame::Typing { room } => {
                    assert!(valid_room(room), "accepted room {room:?}");
                }
                ClientFrame::Send { room, body, client_msg_id } => {
                    assert!(valid_room(room), "send accepted room {room:?}");
                    assert!(!body.is_empty() && body.len() <= MAX_BODY_BYTES, "send accepted a body of {}", body.len());
                    assert!(
                        !client_msg_id.is_empty()
                            && client_msg_id.len() <= 64
                            && client_msg_id
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')),
                        "send accepted client_msg_id {client_msg_id:?}"
                    );
                }
                ClientFrame::Edit { room, target_seq, body, client_msg_id } => {
                    assert!(valid_room(room), "edit accepted room {room:?}");
                    assert!(*target_seq >= 1, "edit accepted target_seq {target_seq}");
                    assert!(!body.is_empty() && body.len() <= MAX_BODY_BYTES, "edit accepted a body of {}", body.len());
                    assert!(valid_client_msg_id(client_msg_id), "edit accepted client_msg_id {client_msg_id:?}");
                }
                ClientFrame::Delete { room, target_seq, client_msg_id } => {
                    assert!(valid_room(room), "delete accepted room {room:?}");
                    assert!(*target_seq >= 1, "delete accepted target_seq {target_seq}");
                    assert!(valid_client_msg_id(client_msg_id), "delete accepted client_msg_id {client_msg_id:?}");
                }
                ClientFrame::Read { room, seq } => {
                    assert!(valid_room(room), "read accepted room {room:?}");
                    assert!(*seq >= 0, "read accepted seq {seq}");
                }
                ClientFrame::Ping => {}
                ClientFrame::Auth { token } => {
                    assert!(!token.is_empty() && token.len() <= 4096, "auth accepted a token of {}", token.len());
                }
            }
            check_echo(id.as_deref(), "ok");
        }
        Err(e) => {
            assert!(matches!(e.code, ErrorCode::BadRequest | ErrorCode::TooLarge), "code {:?}", e.code);
            check_echo(e.id.as_deref(), &e.message);
        }
    }
}

/// The `error` frame a connection sends back, echoing `id`.
fn check_echo(id: Option<&RawValue>, message: &str) {
    if let Some(id) = id {
        let v: Value = serde_json::from_str(id.get()).expect("an echoed id is JSON");
        match &v {
            Value::String(s) => assert!(s.chars().count() <= 64, "echoed a {}-character id", s.chars().count()),
            Value::Number(n) => assert!(n.is_i64(), "echoed the non-integer id {n}"),
            other => panic!("echoed the id {other}"),
        }
    }
    let frame = protocol::error_frame(id, ErrorCode::BadRequest, message, None, None);
    let v: Value = serde_json::from_str(frame.as_str()).expect("an error frame is JSON");
    let obj = v.as_object().expect("an error frame is an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let want: &[&str] = if id.is_some() { &["code", "id", "message", "type"] } else { &["code", "message", "type"] };
    assert_eq!(keys, want, "error frame {}", frame.as_str());
    assert_eq!(obj["message"], message);
    if let Some(id) = id {
        assert_eq!(obj["id"], serde_json::from_str::<Value>(id.get()).unwrap());
    }
}

// ---------------------------------------------------------------------------
// Access tokens

/// The current key: HS256, the gateway's default.
pub const HS_KID: &str = "fuzz-hs";
/// Used by the fuzz targets only.
pub const HS_SECRET: &str = "fuzz-only-hmac-secret-5c1d9e3a7b2f4068";
/// The previous key of a rotation, which still verifies: RS256.
pub const RS_KID: &str = "fuzz-rs";
/// A key pair made for the fuzz targets only.
pub const RS_PRIVATE_PEM: &str = include_str!("../keys/rs256.pem");
pub const RS_PUBLIC_PEM: &str = include_str!("../keys/rs256.pub.pem");

/// The key set the gateway builds from this configuration: HS256 current,
/// RS256 previous.
pub static KEYS: LazyLock<JwtKeys> = LazyLock::new(|| {
    let vars: HashMap<String, String> = [
        ("JWT_SECRET", HS_SECRET),
        ("JWT_KID", HS_KID),
        ("JWT_PREVIOUS_KID", RS_KID),
        ("JWT_PREVIOUS_ALGORITHM", "RS256"),
        ("JWT_PREVIOUS_PUBLIC_KEY_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/keys/rs256.pub.pem")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = chatgw::config::Config::from_vars(&vars).expect("the fuzz key configuration is valid");
    JwtKeys::from_config(&config.jwt).expect("the fuzz keys load")
});

static HS_KEY: LazyLock<EncodingKey> = LazyLock::new(|| EncodingKey::from_secret(HS_SECRET.as_bytes()));
static RS_KEY: LazyLock<EncodingKey> =
    LazyLock::new(|| EncodingKey::from_rsa_pem(RS_PRIVATE_PEM.as_bytes()).expect("a valid RSA key"));

/// The key that signs under `kid` in [`KEYS`], and its algorithm.
pub fn signing_key(kid: &str) -> Option<(&'static EncodingKey, Algorithm)> {
    match kid {
        HS_KID => Some((&HS_KEY, Algorithm::HS256)),
        RS_KID => Some((&RS_KEY, Algorithm::RS256)),
        _ => None,
    }
}

/// Checks one string as an access token: verification never panics, and
/// whatever it accepts was really signed by the key its `kid` names, with
/// that key's algorithm, and has not expired. The opaque-token shape check
/// (refresh tokens, tickets) never panics and accepts only its shape.
pub fn check_token(token: &str) -> Result<(), TokenError> {
    for prefix in [REFRESH_PREFIX, TICKET_PREFIX] {
        if looks_like(token, prefix) {
            assert_eq!(token.len(), prefix.len() + 43);
            assert!(token.is_ascii());
        }
    }
    let claims = KEYS.verify(token)?;
    let header = jsonwebtoken::decode_header(token).expect("an accepted token has a header");
    let kid = header.kid.as_deref().expect("an accepted token has a kid");
    let (key, alg) = signing_key(kid).unwrap_or_else(|| panic!("accepted a token with kid {kid:?}"));
    assert_eq!(header.alg, alg, "accepted {:?} for the {alg:?} key {kid}", header.alg);
    let (message, signature) = token.rsplit_once('.').expect("an accepted token has a signature");
    let genuine = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).expect("signing works");
    assert_eq!(signature, genuine, "accepted a signature the key did not make: {token}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(claims.exp > now, "accepted a token that expired at {}", claims.exp);
    Ok(())
}

/// A token with this header and payload, signed by `key` (or with this
/// literal signature).
pub fn forge(header: &Value, payload: &Value, sign: Sign) -> String {
    let message =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(payload.to_string()));
    let signature = match sign {
        Sign::With(key, alg) => jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap(),
        Sign::Literal(s) => s.to_owned(),
    };
    format!("{message}.{signature}")
}

/// How [`forge`] signs.
pub enum Sign<'a> {
    With(&'a EncodingKey, Algorithm),
    Literal(&'a str),
}

// ---------------------------------------------------------------------------
// Bus envelopes

/// Checks one envelope: decoding never panics, and what it reads encodes
/// back to an envelope that decodes to the same origin and event.
pub fn check_envelope(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    let _ = wire::origin_of(&bytes);
    let _ = wire::published_at_us(&bytes);
    if let Ok((origin, event)) = wire::decode(bytes) {
        let again = wire::encode(&origin, &event).expect("a decoded event encodes");
        assert_eq!(wire::origin_of(&again), Some(&origin[..]));
        assert_eq!(wire::decode(again).expect("a re-encoded event decodes"), (origin, event));
    }
}
