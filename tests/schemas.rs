//! The tolerant schemas for clients (`protocol/schemas/tolerant/`) are
//! GENERATED from the tight ones (`protocol/schemas/`), so they cannot
//! drift: this test fails when they are stale, and rewrites them with
//! `scripts/tolerant-schemas.sh` (or `CHATGW_WRITE_TOLERANT=1`).
//!
//! Tight: what this server sends, exactly (`additionalProperties: false`,
//! closed enums); the server's own output is tested against them
//! (`ws_client`). Tolerant: what a client of protocol 1.x must accept
//! (§19): unknown fields, unknown frame types (in `server.json`), unknown
//! values of enumerated strings (error codes, reasons, features) and later
//! minor versions.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

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

/// The tolerant twin of the tight schema `name`.
fn tolerant_of(name: &str, tight: &Value) -> Value {
    let mut v = tight.clone();
    tolerate(&mut v, None);
    let m = v.as_object_mut().expect("a schema is an object");
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
                "events_per_sec": 1, "events_burst": 1, "max_rooms": 1, "max_sync_rooms": 1, "max_wormholes": 2}}),
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
