//! Property tests of the client frame parser: every valid frame round-trips,
//! and any text, bytes or frame-shaped object gets a documented answer.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

const MAX_BODY: usize = 200;

/// JSON text of a string with every non-ASCII character escaped
/// (`\uXXXX`, surrogate pairs above the BMP), as `ensure_ascii`
/// encoders (Python's default) write it.
fn ascii_json(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04X}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// A request id as the client writes it: an integer, or a string of at
/// most 64 characters, plainly or ASCII-escaped.
fn request_id() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        "\\PC{0,64}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        "\\PC{0,64}".prop_map(|s| ascii_json(&s)),
        // Every character astral: the longest escaped form.
        prop::collection::vec(proptest::char::range('\u{1F600}', '\u{1F64F}'), 0..=64)
            .prop_map(|cs| ascii_json(&cs.into_iter().collect::<String>())),
    ])
}

fn room() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,64}"
}

/// Every valid client frame, as the value `parse` must return.
fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (room(), prop::option::of(0..=i64::MAX), prop::option::of("[a-f0-9]{12}"))
            .prop_map(|(room, since_seq, epoch)| ClientFrame::Join(Resume { room, since_seq, epoch })),
        prop::collection::vec((room(), prop::option::of(0..=i64::MAX), prop::option::of("[a-f0-9]{12}")), 0..5)
            .prop_map(|entries| {
                let mut seen = std::collections::HashSet::new();
                let rooms = entries
                    .into_iter()
                    .filter(|(r, _, _)| seen.insert(r.clone()))
                    .map(|(room, since_seq, epoch)| Resume { room, since_seq, epoch })
                    .collect();
                ClientFrame::Sync { rooms }
            }),
        room().prop_map(|room| ClientFrame::Leave { room }),
        // At most 50 characters: at most 200 bytes, within MAX_BODY.
        (room(), "\\PC{1,50}", "[A-Za-z0-9_.:-]{1,64}").prop_map(|(room, body, client_msg_id)| ClientFrame::Send {
            room,
            body,
            client_msg_id
        }),
        room().prop_map(|room| ClientFrame::Typing { room }),
        (room(), 0..=i64::MAX).prop_map(|(room, seq)| ClientFrame::Read { room, seq }),
        Just(ClientFrame::Ping),
        Just(ClientFrame::Pong),
        "\\PC{1,200}".prop_map(|token| ClientFrame::Auth { token }),
        (room(), 1..=i64::MAX, "\\PC{1,50}", "[A-Za-z0-9_.:-]{1,64}").prop_map(
            |(room, target_seq, body, client_msg_id)| ClientFrame::Edit { room, target_seq, body, client_msg_id }
        ),
        (room(), 1..=i64::MAX, "[A-Za-z0-9_.:-]{1,64}")
            .prop_map(|(room, target_seq, client_msg_id)| ClientFrame::Delete { room, target_seq, client_msg_id }),
    ]
}

/// The frame as a client encodes it, its id's JSON text spliced in.
fn encode(frame: &ClientFrame, id: Option<&str>) -> String {
    let mut v = match frame {
        ClientFrame::Join(r) => {
            let mut v = json!({"type": "join", "room": r.room});
            if let Some(s) = r.since_seq {
                v["since_seq"] = json!(s);
            }
            if let Some(e) = &r.epoch {
                v["epoch"] = json!(e);
            }
            v
        }
        ClientFrame::Sync { rooms } => {
            let rooms: Vec<Value> = rooms
                .iter()
                .map(|r| {
                    let mut v = json!({"room": r.room});
                    if let Some(s) = r.since_seq {
                        v["since_seq"] = json!(s);
                    }
                    if let Some(e) = &r.epoch {
                        v["epoch"] = json!(e);
                    }
                    v
                })
                .collect();
            json!({"type": "sync", "rooms": rooms})
        }
        ClientFrame::Leave { room } => json!({"type": "leave", "room": room}),
        ClientFrame::Send { room, body, client_msg_id } => {
            json!({"type": "send", "room": room, "body": body, "client_msg_id": client_msg_id})
        }
        ClientFrame::Typing { room } => json!({"type": "typing", "room": room}),
        ClientFrame::Read { room, seq } => json!({"type": "read", "room": room, "seq": seq}),
        ClientFrame::Ping => json!({"type": "ping"}),
        ClientFrame::Pong => json!({"type": "pong"}),
        ClientFrame::Auth { token } => json!({"type": "auth", "token": token}),
        ClientFrame::Edit { room, target_seq, body, client_msg_id } => json!({
            "type": "edit", "room": room, "target_seq": target_seq, "body": body, "client_msg_id": client_msg_id
        }),
        ClientFrame::Delete { room, target_seq, client_msg_id } => {
            json!({"type": "delete", "room": room, "target_seq": target_seq, "client_msg_id": client_msg_id})
        }
    }
    .to_string();
    if let Some(id) = id {
        v.insert_str(1, &format!("\"id\":{id},"));
    }
    v
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
        room().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Objects made of the protocol's field names (and a stranger), with
/// values of any type: the shapes a confused or hostile client sends.
fn frame_like() -> impl Strategy<Value = Map<String, Value>> {
    let key = prop_oneof![
        Just("type"),
        Just("id"),
        Just("room"),
        Just("since_seq"),
        Just("body"),
        Just("client_msg_id"),
        Just("seq"),
        Just("token"),
        Just("target_seq"),
        Just("extra"),
    ];
    let ty = prop_oneof![
        Just("join"),
        Just("leave"),
        Just("send"),
        Just("typing"),
        Just("read"),
        Just("ping"),
        Just("pong"),
        Just("auth"),
        Just("edit"),
        Just("delete"),
        Just("warp"),
    ]
    .prop_map(Value::from);
    (prop::option::of(ty), prop::collection::btree_map(key, json_value(), 0..6)).prop_map(|(ty, fields)| {
        let mut m: Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        if let Some(ty) = ty {
            m.insert("type".into(), ty);
        }
        m
    })
}

fn is_valid_id(v: &Value) -> bool {
    match v {
        Value::String(s) => s.chars().count() <= 64,
        Value::Number(n) => n.is_i64(),
        _ => false,
    }
}

proptest! {
    /// Every valid frame decodes to what was encoded, its id echoed
    /// byte for byte.
    #[test]
    fn valid_frames_round_trip(frame in client_frame(), id in request_id()) {
        let text = encode(&frame, id.as_deref());
        let (got_id, got) = parse(&text, MAX_BODY).map_err(|e| TestCaseError::fail(format!("{text}: {e:?}")))?;
        prop_assert_eq!(got, frame);
        prop_assert_eq!(got_id.as_deref().map(RawValue::get), id.as_deref());
    }

    /// Arbitrary text never panics, and is refused only with a code the
    /// protocol documents for a bad frame.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        if let Err(e) = parse(&text, MAX_BODY) {
            prop_assert!(matches!(e.code, ErrorCode::BadRequest | ErrorCode::TooLarge));
        }
    }

    /// Arbitrary bytes (as the lossy text a broken client's frame would
    /// become) never panic either.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse(&String::from_utf8_lossy(&bytes), MAX_BODY);
    }

    /// Frame-shaped objects of any field types: a frame is accepted only
    /// when its fields are the protocol's; an error is `bad_request`
    /// (or `too_large` for an over-long body, with its room), and echoes
    /// the request id whenever that id is valid.
    #[test]
    fn frame_shaped_objects_get_documented_answers(m in frame_like()) {
        let text = Value::Object(m.clone()).to_string();
        match parse(&text, MAX_BODY) {
            Ok((id, frame)) => {
                let ty = m["type"].as_str().unwrap_or_default();
                prop_assert_eq!(frame.kind(), ty);
                prop_assert!(!m.contains_key("extra"));
                // `"id": null` is no id.
                let sent = m.get("id").filter(|v| !v.is_null()).map(Value::to_string);
                prop_assert_eq!(id.map(|r| r.get().to_owned()), sent);
                // Only the type's own fields (§3), whatever their values.
                let allowed = fields_of(ty).unwrap_or_default();
                for k in m.keys() {
                    prop_assert!(k == "type" || k == "id" || allowed.contains(&k.as_str()), "{k} on {ty}");
                }
                if let Some(r) = m.get("room") {
                    prop_assert!(r.as_str().is_some_and(is_id));
                }
            }
            Err(e) => {
                match e.code {
                    ErrorCode::BadRequest => prop_assert!(e.room.is_none()),
                    ErrorCode::TooLarge => {
                        prop_assert!(matches!(m["type"].as_str(), Some("send" | "edit")));
                        prop_assert!(m["body"].as_str().is_some_and(|b| b.len() > MAX_BODY));
                        prop_assert_eq!(e.room.as_deref(), m["room"].as_str());
                    }
                    other => return Err(TestCaseError::fail(format!("undocumented code {other:?}"))),
                }
                match m.get("id") {
                    Some(id) if is_valid_id(id) => {
                        prop_assert_eq!(e.id.map(|r| r.get().to_owned()), Some(id.to_string()));
                    }
                    _ => prop_assert!(e.id.is_none()),
                }
            }
        }
    }

    /// Sends whose body is over the limit are `too_large`, with the id
    /// and room to match them to the request.
    #[test]
    fn over_long_bodies_are_too_large(room in room(), extra in 1usize..50, id in request_id()) {
        let frame = ClientFrame::Send { room: room.clone(), body: "x".repeat(MAX_BODY + extra), client_msg_id: "c".into() };
        let e = parse(&encode(&frame, id.as_deref()), MAX_BODY).unwrap_err();
        prop_assert_eq!(e.code, ErrorCode::TooLarge);
        prop_assert_eq!(e.room.as_deref(), Some(room.as_str()));
        prop_assert_eq!(e.id.as_deref().map(RawValue::get), id.as_deref());
    }
}
