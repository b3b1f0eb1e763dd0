//! The tolerant schemas for clients (`protocol/schemas/tolerant/`) are
//! GENERATED from the tight ones (`protocol/schemas/`), so they cannot
//! drift: this test fails when they are stale, and rewrites them with
//! `scripts/tolerant-schemas.sh` (or `CHATGW_WRITE_TOLERANT=1`).
//!
//! Tight: what this server sends, exactly (`additionalProperties: false`,
//! closed enums); the server's own output is tested against them
//! (`ws::client`). Tolerant: what a client of protocol 1.x must accept
//! (§19): unknown fields, unknown frame types (in `server.json`), unknown
//! values of enumerated strings (error codes, reasons, features) and later
//! minor versions.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Db, spawn_app_with};
use crate::ws::client::WsClient;

both_backends!(server_errors_follow_the_room_rule);

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol/schemas")
}

/// The server -> client schemas, by file name.
fn tight_server_schemas() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(schema_dir()).expect("protocol/schemas") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_file() && name.starts_with("server") && name.ends_with(".json") {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            out.insert(name, v);
        }
    }
    out
}

/// Loosens one schema node and everything under it.
fn tolerate(v: &mut Value, key: Option<&str>) {
    match v {
        Value::Object(m) => {
            if m.get("additionalProperties") == Some(&Value::Bool(false)) {
                m.remove("additionalProperties");
            }
            // A closed set of strings (codes, reasons, features, modes) may
            // grow in a later minor version.
            if m.get("enum").and_then(Value::as_array).is_some_and(|vals| vals.iter().all(Value::is_string)) {
                m.remove("enum");
                m.insert("type".into(), json!("string"));
            }
            if key == Some("protocol_version") && m.remove("const").is_some() {
                m.insert("type".into(), json!("string"));
                m.insert("pattern".into(), json!("^1\\.[0-9]+$"));
            }
            for (k, child) in m.iter_mut() {
                // `if` conditions select a branch by a known value
                // (`code: rate_limited`): loosening them would change it.
                if k != "if" {
                    tolerate(child, Some(k));
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| tolerate(c, None)),
        _ => {}
    }
}

/// Fields a frame gained after the version that introduced it, by schema
/// file and the JSON pointer of the object that holds them: the server
/// sends them (the tight schemas require them), but a 1.x server before
/// that addition does not, and §5.1 and §19.3 say a client accepts it. The
/// tolerant schemas require only what the frame's first version had.
const ADDED_LATER: &[(&str, &str, &[&str])] = &[
    (
        "server.hello.json",
        "",
        // 1.1.
        &["protocol_version", "features", "heartbeat", "server_time", "token_expires_in_ms"],
    ),
    // `max_sync_rooms` came with `sync` (1.1), `edit_window_ms` in 1.2.
    ("server.hello.json", "/properties/limits", &["max_sync_rooms", "edit_window_ms"]),
    ("server.joined.json", "", &["epoch", "read_seq"]),
    ("server.auth_ok.json", "", &["expires_in_ms"]),
];

/// Whether a subschema states what this server does, not what a client
/// must require (error codes that carry `room`): dropped from the tolerant
/// twin.
fn tight_only(v: &Value) -> bool {
    v.get("$comment").and_then(Value::as_str).is_some_and(|c| c.starts_with("Tight only"))
}

/// The tolerant twin of the tight schema `name`.
fn tolerant_of(name: &str, tight: &Value) -> Value {
    let mut v = tight.clone();
    tolerate(&mut v, None);
    for (file, pointer, later) in ADDED_LATER.iter().filter(|(f, _, _)| *f == name) {
        let obj = v.pointer_mut(pointer).unwrap_or_else(|| panic!("{file}: no {pointer:?}"));
        let required = obj["required"].as_array_mut().unwrap_or_else(|| panic!("{file}{pointer}: no required"));
        for field in *later {
            let before = required.len();
            required.retain(|r| r != field);
            assert!(required.len() < before, "{file}{pointer}: {field} is not required in the tight schema");
        }
    }
    let m = v.as_object_mut().expect("a schema is an object");
    if let Some(Value::Array(all)) = m.get_mut("allOf") {
        all.retain(|s| !tight_only(s));
    }
    if let Some(Value::String(id)) = m.get_mut("$id") {
        *id = id.replacen("/protocol/v1/", "/protocol/v1/tolerant/", 1);
    }
    m.insert(
        "$comment".into(),
        json!(format!("GENERATED from ../{name} by scripts/tolerant-schemas.sh (tests/schemas.rs): do not edit.")),
    );
    // Any frame: a known type validates against its own schema; an unknown
    // type is accepted (and ignored by the client).
    if let Some(Value::Array(refs)) = m.remove("oneOf") {
        let known: Vec<Value> = refs
            .iter()
            .filter_map(|r| r["$ref"].as_str())
            .filter_map(|r| r.strip_prefix("server.")?.strip_suffix(".json"))
            .map(|t| json!(t))
            .collect();
        m.insert(
            "anyOf".into(),
            json!([
                {"oneOf": refs},
                {"properties": {"type": {"type": "string", "not": {"enum": known}}}}
            ]),
        );
    }
    v
}

fn tolerant_dir() -> PathBuf {
    schema_dir().join("tolerant")
}

#[test]
fn tolerant_schemas_are_generated_from_the_tight_ones() {
    let write = std::env::var_os("CHATGW_WRITE_TOLERANT").is_some();
    let dir = tolerant_dir();
    let mut stale = Vec::new();
    let expected: BTreeMap<String, String> = tight_server_schemas()
        .iter()
        .map(|(name, tight)| (name.clone(), serde_json::to_string_pretty(&tolerant_of(name, tight)).unwrap() + "\n"))
        .collect();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, text) in &expected {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            if write {
                std::fs::write(&path, text).unwrap();
            } else {
                stale.push(name.clone());
            }
        }
    }
    // No leftovers of a removed tight schema.
    for entry in std::fs::read_dir(&dir).expect("protocol/schemas/tolerant") {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !expected.contains_key(&name) {
            if write {
                std::fs::remove_file(dir.join(&name)).unwrap();
            } else {
                stale.push(format!("{name} (no tight schema)"));
            }
        }
    }
    assert!(stale.is_empty(), "stale tolerant schemas {stale:?}: run scripts/tolerant-schemas.sh");
}

/// Resolves the relative `$ref`s of `server.json` to files of one directory.
struct Dir(HashMap<String, Value>);

impl jsonschema::Retrieve for Dir {
    fn retrieve(&self, uri: &jsonschema::Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri.as_str().rsplit('/').next().unwrap_or_default();
        self.0.get(name).cloned().ok_or_else(|| format!("no schema {uri}").into())
    }
}

fn any_frame_validator(dir: &Path) -> jsonschema::Validator {
    let mut files = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            files.insert(path.file_name().unwrap().to_string_lossy().into_owned(), v);
        }
    }
    let root = files["server.json"].clone();
    jsonschema::options().with_retriever(Dir(files)).build(&root).unwrap_or_else(|e| panic!("{dir:?}: {e}"))
}

/// What the tolerant schemas add, and what they still refuse.
#[test]
fn tolerant_schemas_accept_later_additions_only() {
    let tight = any_frame_validator(&schema_dir());
    let tolerant = any_frame_validator(&tolerant_dir());
    let pong = json!({"type": "pong", "id": 1});
    let later = [
        // A field added later.
        json!({"type": "pong", "id": 1, "rtt_hint_ms": 3}),
        // A frame type added later.
        json!({"type": "room_weather", "room": "r", "sky": "clear"}),
        // An error code added later.
        json!({"type": "error", "code": "too_early", "message": "m"}),
        // A later minor version announcing more features.
        json!({"type": "hello", "protocol": 1, "protocol_version": "1.7", "features": ["sync", "holograms"],
            "session_id": "s", "user_id": "u", "heartbeat": "ws", "heartbeat_ms": 1, "idle_timeout_ms": 2,
            "server_time": 1, "token_expires_at": 2, "token_expires_in_ms": 1,
            "limits": {"max_frame_bytes": 1, "max_body_bytes": 1, "send_per_sec": 1, "send_burst": 1,
                "events_per_sec": 1, "events_burst": 1, "max_rooms": 1, "max_sync_rooms": 1, "edit_window_ms": 0,
                "max_wormholes": 2}}),
        // An error about a room without it (a server's choice, not a
        // client's concern).
        json!({"type": "error", "code": "forbidden", "message": "m"}),
    ];
    assert!(tight.is_valid(&pong) && tolerant.is_valid(&pong));
    for f in &later {
        assert!(!tight.is_valid(f), "tight refuses {f}");
        assert!(tolerant.is_valid(f), "tolerant accepts {f}: {:?}", tolerant.iter_errors(f).next());
    }
    // Still refused: a known type without its required fields, a wrong
    // field type, a rate_limited error without retry_after_ms, another
    // major version, a frame without a type.
    for f in [
        json!({"type": "ack", "room": "r"}),
        json!({"type": "message", "room": "r", "seq": "7", "sender": "u", "body": "b", "client_msg_id": "c", "sent_at": 1}),
        json!({"type": "error", "code": "rate_limited", "message": "m"}),
        json!({"type": "hello", "protocol": 2}),
        json!({"room": "r"}),
    ] {
        assert!(!tolerant.is_valid(&f), "tolerant still refuses {f}");
    }
}

/// Frames as a 1.0 server sends them, written from the 1.0 description
/// (protocol/README.md as of 1.0, and §5.1's "a 1.0 server's `hello` has
/// no ..."), and a 1.1 server's `hello`: a client validating with the
/// tolerant schemas accepts every one (§19.3), while the tight schemas,
/// which describe this 1.2 server, refuse the frames that lack a later
/// addition.
#[test]
fn tolerant_schemas_accept_frames_of_earlier_servers() {
    let tight = any_frame_validator(&schema_dir());
    let tolerant = any_frame_validator(&tolerant_dir());
    let limits_1_0 = json!({"max_frame_bytes": 65536, "max_body_bytes": 4096, "send_per_sec": 20,
        "send_burst": 40, "events_per_sec": 50, "events_burst": 100, "max_rooms": 1000});
    let mut limits_1_1 = limits_1_0.clone();
    limits_1_1["max_sync_rooms"] = json!(1000);
    let older = [
        json!({"type": "hello", "protocol": 1, "session_id": "s1", "user_id": "u1", "heartbeat_ms": 25000,
            "idle_timeout_ms": 60000, "token_expires_at": 1764072900000_i64, "limits": limits_1_0}),
        json!({"type": "joined", "id": "j1", "room": "r1", "last_seq": 43, "replayed": 2, "online": ["u1"]}),
        json!({"type": "auth_ok", "id": "renew-3", "expires_at": 1764073800000_i64}),
        // 1.1: no edit window, no "deletes".
        json!({"type": "hello", "protocol": 1, "protocol_version": "1.1",
            "features": ["sync", "user_stream", "edits", "retention", "app_heartbeat"], "session_id": "s1",
            "user_id": "u1", "heartbeat": "ws", "heartbeat_ms": 25000, "idle_timeout_ms": 60000,
            "server_time": 1764072000000_i64, "token_expires_at": 1764072900000_i64,
            "token_expires_in_ms": 900000, "limits": limits_1_1}),
    ];
    for f in &older {
        assert!(!tight.is_valid(f), "tight (this server) requires the later fields: {f}");
        assert!(
            tolerant.is_valid(f),
            "tolerant accepts {f}: {:?}",
            tolerant.iter_errors(f).map(|e| e.to_string()).collect::<Vec<_>>()
        );
    }
    // Frames 1.0 already had in their present shape: both accept them.
    for f in [
        json!({"type": "message", "room": "r1", "seq": 44, "sender": "u2", "body": "See you at 6?", "client_msg_id": "b-7f3a", "sent_at": 1764072030000_i64}),
        json!({"type": "ack", "id": "s-12", "room": "r1", "client_msg_id": "c1", "seq": 45, "sent_at": 1764072061250_i64, "duplicate": false}),
        json!({"type": "left", "room": "r1", "reason": "removed"}),
        json!({"type": "error", "id": "j2", "code": "forbidden", "message": "not a member of this room", "room": "r2"}),
        json!({"type": "error", "id": "s-13", "code": "rate_limited", "message": "too many frames; retry later", "retry_after_ms": 350}),
        json!({"type": "presence", "room": "r1", "user": "u2", "status": "online"}),
        json!({"type": "typing", "room": "r1", "user": "u2"}),
        json!({"type": "read", "room": "r1", "user": "u1", "seq": 44}),
        json!({"type": "pong", "id": 42}),
    ] {
        assert!(tight.is_valid(&f), "tight accepts {f}: {:?}", tight.iter_errors(&f).next().map(|e| e.to_string()));
        assert!(tolerant.is_valid(&f), "tolerant accepts {f}");
    }
}

/// The tight error schema states when `room` is there, by code; the
/// server's own errors are checked against it in every socket test
/// (`ws::client::assert_conforms`).
#[test]
fn tight_error_schema_states_the_room_rule() {
    let tight = any_frame_validator(&schema_dir());
    for (frame, ok) in [
        (json!({"type": "error", "code": "not_author", "message": "m", "room": "r"}), true),
        (json!({"type": "error", "code": "not_author", "message": "m"}), false),
        (json!({"type": "error", "code": "not_found", "message": "m"}), false),
        (json!({"type": "error", "code": "bad_request", "message": "m", "room": "r"}), false),
        (json!({"type": "error", "code": "rate_limited", "message": "m", "retry_after_ms": 1, "room": "r"}), false),
        (json!({"type": "error", "code": "limit_exceeded", "message": "m"}), true),
        (json!({"type": "error", "code": "limit_exceeded", "message": "m", "room": "r"}), true),
    ] {
        assert_eq!(tight.is_valid(&frame), ok, "{frame}");
    }
}

/// Sends `frame` and returns the `error` answering it (by `id`), skipping
/// what else arrives (answers of earlier requests, broadcasts).
async fn error_for(ws: &mut WsClient, frame: Value) -> Value {
    let id = frame["id"].clone();
    ws.send(frame).await;
    loop {
        let v = ws.next().await;
        if v["type"] == "error" && v["id"] == id {
            return v;
        }
        assert!(v["id"] != id || v["type"] != "ack", "acked instead of refused: {v}");
    }
}

/// §5.11, one rule by request: `room` is on every error answering a
/// `join`, one room of a `sync`, a `send`, `edit`, `delete`, `typing` or
/// `read`, except `bad_request` and `rate_limited`; on no other error. Each
/// case from the server itself, codes whose presence varies (such as
/// `limit_exceeded`) included; every frame is also checked against the
/// tight schemas, which state the rule per code.
async fn server_errors_follow_the_room_rule(db: Db) {
    let app = spawn_app_with(db, |v| {
        v.insert("WS_MAX_ROOMS_PER_SOCKET".into(), "1".into());
        v.insert("WS_MAX_SYNC_ROOMS".into(), "2".into());
        v.insert("WS_MAX_BODY_BYTES".into(), "16".into());
        v.insert("WS_SEND_PER_SEC".into(), "1".into());
        v.insert("WS_SEND_BURST".into(), "6".into());
    })
    .await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "mine", &[&bob]).await;
    let second = app.create_room(&ann, "second", &[]).await;
    let foreign = app.create_room(&bob, "foreign", &[]).await;
    // Bob's message, seq 1 of `room`.
    let out = app
        .store
        .append_messages(&[chatgw::db::NewMessage {
            room_id: room.clone(),
            sender_id: bob.user_id.clone(),
            client_msg_id: "b1".into(),
            body: "bob's".into(),
            sent_at: chatgw::clock::now_ms(),
            kind: chatgw::db::NewKind::Message,
        }])
        .await
        .unwrap();
    assert!(matches!(out[0], chatgw::db::AppendOutcome::Stored(_)));
    let mut ws = WsClient::connect(&app, &ann.access).await;
    let with_room = |e: &Value, code: &str, r: &str| {
        assert_eq!((e["code"].as_str(), e["room"].as_str()), (Some(code), Some(r)), "{e}");
    };
    let without_room = |e: &Value, code: &str| {
        assert_eq!(e["code"], code, "{e}");
        assert!(e.get("room").is_none(), "no room on {e}");
    };

    // join
    with_room(&error_for(&mut ws, json!({"type": "join", "id": 1, "room": foreign})).await, "forbidden", &foreign);
    ws.join(&room, Some(0)).await;
    let e = error_for(&mut ws, json!({"type": "join", "id": 2, "room": second})).await;
    with_room(&e, "limit_exceeded", &second);
    // sync: one room refused (no id: the `synced` carries it), or the
    // whole frame.
    ws.send(json!({"type": "sync", "id": 3, "rooms": [{"room": foreign}]})).await;
    let e = ws.next_of("error").await;
    with_room(&e, "forbidden", &foreign);
    assert_eq!(ws.next_of("synced").await["failed"], 1);
    let rooms = json!([{"room": room}, {"room": second}, {"room": foreign}]);
    without_room(&error_for(&mut ws, json!({"type": "sync", "id": 4, "rooms": rooms})).await, "limit_exceeded");
    // typing, read
    with_room(&error_for(&mut ws, json!({"type": "typing", "id": 5, "room": second})).await, "not_joined", &second);
    let e = error_for(&mut ws, json!({"type": "read", "id": 6, "room": second, "seq": 1})).await;
    with_room(&e, "not_joined", &second);
    // send
    let big = json!({"type": "send", "id": 7, "room": room, "client_msg_id": "a1", "body": "x".repeat(17)});
    with_room(&error_for(&mut ws, big).await, "too_large", &room);
    ws.send(json!({"type": "send", "id": 8, "room": room, "client_msg_id": "a1", "body": "a"})).await;
    assert_eq!(ws.next_of("ack").await["seq"], 2);
    let again = json!({"type": "send", "id": 9, "room": room, "client_msg_id": "a1", "body": "b"});
    with_room(&error_for(&mut ws, again).await, "conflict", &room);
    // edit, delete
    let e = error_for(
        &mut ws,
        json!({"type": "edit", "id": 10, "room": room, "target_seq": 99, "client_msg_id": "e1", "body": "x"}),
    )
    .await;
    with_room(&e, "not_found", &room);
    let e = error_for(
        &mut ws,
        json!({"type": "edit", "id": 11, "room": room, "target_seq": 1, "client_msg_id": "e2", "body": "x"}),
    )
    .await;
    with_room(&e, "not_author", &room);
    let e = error_for(
        &mut ws,
        json!({"type": "delete", "id": 12, "room": foreign, "target_seq": 1, "client_msg_id": "d1"}),
    )
    .await;
    with_room(&e, "forbidden", &foreign);
    // Not about one room: a frame not looked at, auth.
    without_room(&error_for(&mut ws, json!({"type": "send", "id": 13, "room": room})).await, "bad_request");
    without_room(&error_for(&mut ws, json!({"type": "auth", "id": 14, "token": "nope"})).await, "unauthorized");
    // rate_limited: sends until the budget (6, one used by each of 8-12
    // and more) is gone.
    let mut n = 0;
    let e = loop {
        n += 1;
        assert!(n < 50, "never rate limited");
        let f =
            json!({"type": "send", "id": format!("r{n}"), "room": room, "client_msg_id": format!("r{n}"), "body": "r"});
        ws.send(f).await;
        let v = loop {
            let v = ws.next().await;
            if v["id"] == format!("r{n}").as_str() {
                break v;
            }
        };
        if v["type"] == "error" {
            break v;
        }
    };
    without_room(&e, "rate_limited");
}
