//! Writes the seed corpus under `fuzz/corpus/<target>/`, and checks each
//! seed against its target's properties and its expected outcome first.
//!
//! ```text
//! cd fuzz && cargo run --example seed_corpus
//! ```
//!
//! Frames are the client frames of `protocol/README.md` and near misses;
//! tokens are one of each shape (valid HS256 and RS256, expired, `alg:
//! none`, key confusion, tampered, bad claims, opaque tokens); envelopes are
//! one of each event kind, in versions 2 and 1, and damaged ones.

use std::path::Path;
use std::sync::Arc;

use chatgw::auth::jwt::TokenError;
use chatgw::bus::{BusEvent, wire};
use chatgw_fuzz::{HS_KID, HS_SECRET, RS_KID, RS_PUBLIC_PEM, Sign, check_envelope, check_frame, check_token, forge};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

const ROOM: &str = "0193a5c0-3e4f-7051-8c6d-7e8f9a0b1c2d";

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

fn frames() {
    let long = "x".repeat(chatgw_fuzz::MAX_BODY_BYTES + 1);
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let seeds: Vec<(&str, String)> = vec![
        // protocol/README.md, as written there.
        ("join", format!(r#"{{"type": "join", "id": "j1", "room": "{ROOM}", "since_seq": 41}}"#)),
        ("leave", format!(r#"{{"type": "leave", "id": 7, "room": "{ROOM}"}}"#)),
        (
            "send",
            format!(
                r#"{{"type": "send", "id": "s-12", "room": "{ROOM}", "body": "On my way 🚲", "client_msg_id": "0193a5d2-8a11-7c3e-b0d4-1f2e3d4c5b6a"}}"#
            ),
        ),
        ("typing", format!(r#"{{"type": "typing", "room": "{ROOM}"}}"#)),
        ("read", format!(r#"{{"type": "read", "room": "{ROOM}", "seq": 44}}"#)),
        ("ping", r#"{"type": "ping", "id": 42}"#.to_owned()),
        (
            "auth",
            r#"{"type": "auth", "id": "renew-3", "token": "eyJhbGciOiJIUzI1NiIsImtpZCI6IjEiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiIwMTkzYTViMCJ9.c2lnbmF0dXJl"}"#.to_owned(),
        ),
        // Near misses.
        ("join_negative_since", r#"{"type":"join","room":"r","since_seq":-1}"#.to_owned()),
        ("join_no_room", r#"{"type":"join"}"#.to_owned()),
        ("join_huge_since", r#"{"type":"join","room":"r","since_seq":99999999999999999999}"#.to_owned()),
        ("join_float_since", r#"{"type":"join","room":"r","since_seq":1e308}"#.to_owned()),
        ("send_no_body", r#"{"type":"send","room":"r","client_msg_id":"c"}"#.to_owned()),
        ("send_empty_body", r#"{"type":"send","room":"r","body":"","client_msg_id":"c"}"#.to_owned()),
        ("send_too_large", format!(r#"{{"type":"send","room":"r","body":"{long}","client_msg_id":"c"}}"#)),
        ("send_bad_room", r#"{"type":"send","room":"r/x","body":"b","client_msg_id":"c"}"#.to_owned()),
        ("send_bad_cmid", r#"{"type":"send","room":"r","body":"b","client_msg_id":"has space"}"#.to_owned()),
        ("send_escapes", r#"{"type":"send","room":"r","body":"\u0000\u202e\ud83d\ude00\"\\","client_msg_id":"c"}"#.to_owned()),
        ("send_lone_surrogate", r#"{"type":"send","room":"r","body":"\ud800","client_msg_id":"c"}"#.to_owned()),
        ("read_no_seq", r#"{"type":"read","room":"r"}"#.to_owned()),
        ("read_negative_seq", r#"{"type":"read","room":"r","seq":-5}"#.to_owned()),
        ("ping_extra_field", r#"{"type":"ping","extra":1}"#.to_owned()),
        ("ping_object_id", r#"{"type":"ping","id":{"x":1}}"#.to_owned()),
        ("ping_float_id", r#"{"type":"ping","id":1.5}"#.to_owned()),
        ("ping_long_id", format!(r#"{{"type":"ping","id":"{}"}}"#, "i".repeat(65))),
        ("ping_escaped_id", r#"{"type":"ping","id":"\u0022}\u002c\"x\":1"}"#.to_owned()),
        ("dup_type", r#"{"type":"ping","type":"join","room":"r"}"#.to_owned()),
        ("dup_id", r#"{"type":"ping","id":1,"id":2}"#.to_owned()),
        ("escaped_type", r#"{"type":"p\u0069ng"}"#.to_owned()),
        ("unknown_type", r#"{"type":"warp","id":5}"#.to_owned()),
        ("no_type", r#"{"room":"r"}"#.to_owned()),
        ("array", "[1,2]".to_owned()),
        ("deep", deep),
        ("malformed", "{nope".to_owned()),
        ("auth_empty_token", r#"{"type":"auth","token":""}"#.to_owned()),
    ];
    for (name, text) in seeds {
        check_frame(&text);
        write("frame_parse", name, text.as_bytes());
    }
}

fn tokens() {
    let hs = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let rs = EncodingKey::from_rsa_pem(chatgw_fuzz::RS_PRIVATE_PEM.as_bytes()).unwrap();
    // The RSA public key used as an HMAC secret: the classic key confusion.
    let confused = EncodingKey::from_secret(RS_PUBLIC_PEM.as_bytes());
    let wrong = EncodingKey::from_secret(b"not-the-secret-0123456789abcdefghij");
    let claims = |exp: serde_json::Value| {
        json!({"sub": "0193a5b0-1c2d-7e3f-8a4b-5c6d7e8f9a0b", "sid": "0193a5c9-4b2a-7d10-a3e5-9f8e7d6c5b4a",
               "iat": 1764072000, "exp": exp, "jti": "5e0c2d4f1a7b4c3e9d8f7a6b5c4d3e2f"})
    };
    let future = json!(4102444800_i64); // 2100-01-01
    let head = |alg: &str, kid: &str| json!({"typ": "JWT", "alg": alg, "kid": kid});
    let valid_hs = forge(&head("HS256", HS_KID), &claims(future.clone()), Sign::With(&hs, Algorithm::HS256));
    let valid_rs = forge(&head("RS256", RS_KID), &claims(future.clone()), Sign::With(&rs, Algorithm::RS256));
    let (message, _) = valid_hs.rsplit_once('.').unwrap();
    let (_, signature) = valid_hs.rsplit_once('.').unwrap();
    let tampered_payload = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        claims(future.clone()).to_string().replace("0193a5b0", "0193a5b1"),
    );
    let hs_head = message.split('.').next().unwrap();
    let signed_hs = |h: serde_json::Value, c: serde_json::Value| forge(&h, &c, Sign::With(&hs, Algorithm::HS256));

    use TokenError::{Expired, Invalid};
    let seeds: Vec<(&str, String, Result<(), TokenError>)> = vec![
        ("valid_hs256", valid_hs.clone(), Ok(())),
        ("valid_rs256_previous_key", valid_rs.clone(), Ok(())),
        ("expired_hs256", signed_hs(head("HS256", HS_KID), claims(json!(1764072900))), Err(Expired)),
        (
            "expired_rs256",
            forge(&head("RS256", RS_KID), &claims(json!(1764072900)), Sign::With(&rs, Algorithm::RS256)),
            Err(Expired),
        ),
        ("alg_none", forge(&head("none", HS_KID), &claims(future.clone()), Sign::Literal("")), Err(Invalid)),
        ("alg_none_upper", forge(&head("NONE", HS_KID), &claims(future.clone()), Sign::Literal("")), Err(Invalid)),
        ("alg_none_no_kid", forge(&json!({"alg": "none"}), &claims(future.clone()), Sign::Literal("")), Err(Invalid)),
        (
            "hs256_with_rs_public_key",
            forge(&head("HS256", RS_KID), &claims(future.clone()), Sign::With(&confused, Algorithm::HS256)),
            Err(Invalid),
        ),
        (
            "rs256_header_on_hs_kid",
            forge(&head("RS256", HS_KID), &claims(future.clone()), Sign::With(&rs, Algorithm::RS256)),
            Err(Invalid),
        ),
        ("hs256_header_on_rs_kid", signed_hs(head("HS256", RS_KID), claims(future.clone())), Err(Invalid)),
        (
            "wrong_secret",
            forge(&head("HS256", HS_KID), &claims(future.clone()), Sign::With(&wrong, Algorithm::HS256)),
            Err(Invalid),
        ),
        ("bad_signature", format!("{message}.{}", "A".repeat(signature.len())), Err(Invalid)),
        ("tampered_claims", format!("{hs_head}.{tampered_payload}.{signature}"), Err(Invalid)),
        ("no_signature", format!("{message}."), Err(Invalid)),
        ("padded_signature", format!("{valid_hs}="), Err(Invalid)),
        ("trailing_newline", format!("{valid_hs}\n"), Err(Invalid)),
        ("no_kid", signed_hs(json!({"typ": "JWT", "alg": "HS256"}), claims(future.clone())), Err(Invalid)),
        ("unknown_kid", signed_hs(head("HS256", "other"), claims(future.clone())), Err(Invalid)),
        ("numeric_kid", signed_hs(json!({"alg": "HS256", "kid": 1}), claims(future.clone())), Err(Invalid)),
        (
            "duplicate_kid",
            {
                let h = base64::Engine::encode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    format!(r#"{{"alg":"HS256","kid":"{RS_KID}","kid":"{HS_KID}"}}"#),
                );
                let p = base64::Engine::encode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    claims(future.clone()).to_string(),
                );
                let m = format!("{h}.{p}");
                let s = jsonwebtoken::crypto::sign(m.as_bytes(), &hs, Algorithm::HS256).unwrap();
                format!("{m}.{s}")
            },
            Err(Invalid),
        ),
        (
            "jku_jwk_injection",
            forge(
                &json!({"alg": "HS256", "kid": HS_KID, "jku": "https://evil.example/jwks.json",
                        "jwk": {"kty": "oct", "k": "ZXZpbA"}}),
                &claims(future.clone()),
                Sign::With(&wrong, Algorithm::HS256),
            ),
            Err(Invalid),
        ),
        (
            "missing_exp",
            signed_hs(head("HS256", HS_KID), json!({"sub": "u", "sid": "s", "iat": 1, "jti": "j"})),
            Err(Invalid),
        ),
        (
            "missing_sid",
            signed_hs(head("HS256", HS_KID), json!({"sub": "u", "iat": 1, "exp": future, "jti": "j"})),
            Err(Invalid),
        ),
        ("exp_string", signed_hs(head("HS256", HS_KID), claims(json!("4102444800"))), Err(Invalid)),
        ("exp_float", signed_hs(head("HS256", HS_KID), claims(json!(4102444800.5))), Err(Invalid)),
        ("exp_negative", signed_hs(head("HS256", HS_KID), claims(json!(-1))), Err(Invalid)),
        ("exp_u64_max", signed_hs(head("HS256", HS_KID), claims(json!(u64::MAX))), Err(Invalid)),
        ("exp_1e300", signed_hs(head("HS256", HS_KID), claims(json!(1e300))), Err(Invalid)),
        ("payload_array", signed_hs(head("HS256", HS_KID), json!([1, 2])), Err(Invalid)),
        ("jwe_shape", format!("{valid_hs}.AAAA.BBBB"), Err(Invalid)),
        (
            "protocol_readme_example",
            "eyJhbGciOiJIUzI1NiIsImtpZCI6IjEiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiIwMTkzYTViMCJ9.c2lnbmF0dXJl".to_owned(),
            Err(Invalid),
        ),
        ("refresh_token", format!("rt_{}", "a".repeat(43)), Err(Invalid)),
        ("ws_ticket", format!("wst_{}", "B-_".repeat(14) + "c"), Err(Invalid)),
        ("empty", String::new(), Err(Invalid)),
        ("dots", "..".to_owned(), Err(Invalid)),
        ("three_parts", "a.b.c".to_owned(), Err(Invalid)),
        ("oversized", format!("{valid_hs}{}", "A".repeat(4097 - valid_hs.len())), Err(Invalid)),
    ];
    for (name, token, want) in seeds {
        assert_eq!(check_token(&token), want, "seed {name}: {token}");
        write("token_verify", name, token.as_bytes());
    }
}

fn envelopes() {
    let frame = r#"{"type":"message","room":"r","seq":7,"body":"he said \"hi\" ✓"}"#;
    let events = [
        ("message", BusEvent::Message { room: Arc::from(ROOM), seq: 7, frame: frame.into() }),
        ("ephemeral", BusEvent::Ephemeral { room: Arc::from(ROOM), frame: r#"{"type":"typing"}"#.into() }),
        ("tail", BusEvent::Tail { room: Arc::from("room-2"), seq: i64::MAX }),
        (
            "member_removed",
            BusEvent::MemberRemoved { room: Arc::from("r"), user: "u".into(), reason: "room_deleted".into() },
        ),
        ("session_revoked", BusEvent::SessionRevoked { user: "u".into(), session: "s".into() }),
        ("user_closed", BusEvent::UserClosed { user: "u".into(), code: 4003, reason: "banned".into() }),
        ("connections_query", BusEvent::ConnectionsQuery { id: u64::MAX, user: "u".into() }),
        ("connections_reply", BusEvent::ConnectionsReply { id: 7, instance: "host:8080".into(), json: "[]".into() }),
        (
            "room_added",
            BusEvent::RoomAdded {
                room: Arc::from("r"),
                user: "u".into(),
                name: "n".into(),
                role: "member".into(),
                last_seq: 3,
            },
        ),
        ("room_updated", BusEvent::RoomUpdated { room: Arc::from("r"), name: "n".into() }),
        ("room_seqs", BusEvent::RoomSeqs { seqs: vec![(Arc::from("r"), 7), (Arc::from(ROOM), 9)] }),
    ];
    let origin = *b"0123456789abcdef";
    for (name, ev) in events {
        let v2 = wire::encode(&origin, &ev).unwrap().to_vec();
        // Version 1: no publish time.
        let mut v1 = v2[..18].to_vec();
        v1[0] = 1;
        v1.extend_from_slice(&v2[wire::HEADER..]);
        let mut bad_utf8 = v2.clone();
        bad_utf8.push(0xff);
        let truncated = v2[..v2.len() - 1].to_vec();
        for (suffix, data) in [("", v2), ("_v1", v1), ("_bad_utf8", bad_utf8), ("_truncated", truncated)] {
            check_envelope(&data);
            write("bus_wire_decode", &format!("{name}{suffix}"), &data);
        }
    }
    let mut unknown_kind = wire::encode(&origin, &BusEvent::Tail { room: Arc::from("r"), seq: 1 }).unwrap().to_vec();
    unknown_kind[1] = 200;
    let mut long_len =
        wire::encode(&origin, &BusEvent::SessionRevoked { user: "u".into(), session: "s".into() }).unwrap().to_vec();
    long_len[wire::HEADER] = 0xff;
    for (name, data) in [("unknown_kind", unknown_kind), ("length_past_end", long_len), ("version_9", vec![9; 40])] {
        check_envelope(&data);
        write("bus_wire_decode", name, &data);
    }
}

fn main() {
    frames();
    tokens();
    envelopes();
    println!("seed corpus written under {}/corpus", env!("CARGO_MANIFEST_DIR"));
}
