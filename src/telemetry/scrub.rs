//! Takes secrets out of everything sent to Sentry.
//!
//! Secrets arrive two ways, and each has its rule:
//! - **By name**: a field or map key named like a secret (`password`,
//!   `token`, `authorization`, `email`, `body`, … see [`is_secret_name`])
//!   loses its value, whatever the value looks like. In text, `name=value`,
//!   `name: value` and `"name": "value"` get the same treatment.
//! - **By shape**, anywhere in any text: JWTs (`eyJ…`), `Bearer …`, our
//!   refresh tokens and WebSocket tickets (`rt_…`, `wst_…`), email
//!   addresses.
//!
//! A message body in free text has no shape to recognise: bodies stay out
//! because they are never logged, and the `body` name rule catches them in
//! fields. A plain scan, no regex: the shapes are simple and this runs on
//! every breadcrumb.
//!
//! Events are scrubbed as JSON (serialised, walked, read back), so every
//! string of every part is covered, including what integrations add
//! (panic messages, contexts, breadcrumbs); an event that does not survive
//! the round trip is dropped, never sent unscrubbed.

use std::borrow::Cow;

use sentry::protocol::{Breadcrumb, Event};
use serde_json::Value;

use crate::auth::tokens::{REFRESH_PREFIX, TICKET_PREFIX};

/// What a removed secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Substrings of names whose values are never sent.
const SECRET_NAMES: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "cookie",
    "email",
    "body",
    "ticket",
    "dsn",
    "api_key",
    "apikey",
    "credential",
];

/// Whether a field, key or header called `name` holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_NAMES.iter().any(|n| lower.contains(n))
}

/// The `before_send` hook: the event without request data, user data or
/// anything that looks secret; `None` (dropped) if it cannot be scrubbed.
pub fn event(mut event: Event<'static>) -> Option<Event<'static>> {
    // Never sent, whatever an integration put there: headers, bodies, IPs.
    event.request = None;
    event.user = None;
    let mut json = serde_json::to_value(&event).ok()?;
    value(&mut json);
    serde_json::from_value(json).ok()
}

/// The `before_breadcrumb` hook. Breadcrumbs are recorded for every
/// `INFO` line, so this one works on the typed fields, without a round trip.
pub fn breadcrumb(mut b: Breadcrumb) -> Breadcrumb {
    if let Some(m) = b.message.as_mut()
        && let Cow::Owned(clean) = text(m)
    {
        *m = clean;
    }
    for (k, v) in b.data.iter_mut() {
        if is_secret_name(k) {
            *v = Value::String(REDACTED.into());
        } else {
            value(v);
        }
    }
    b
}

/// Scrubs a JSON value in place: secret-named keys lose their values,
/// every string is scanned by [`text`].
pub fn value(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Cow::Owned(clean) = text(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(value),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_name(k) && !v.is_null() {
                    *v = Value::String(REDACTED.into());
                } else {
                    value(v);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `s` with every secret replaced by [`REDACTED`]; borrowed when clean.
pub fn text(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    let mut out = String::new();
    // `s[..copied]` has been written to `out` (secrets replaced).
    let mut copied = 0;
    let mut redact = |out: &mut String, from: usize, to: usize| {
        out.push_str(&s[copied..from]);
        out.push_str(REDACTED);
        copied = to;
    };
    let mut i = 0;
    while i < b.len() {
        if !is_word(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_word(b[i]) {
            i += 1;
        }
        let word = &s[start..i];
        if is_secret_word(word) {
            redact(&mut out, start, i);
            continue;
        }
        let value = if word.eq_ignore_ascii_case("bearer") {
            value_after_bearer(b, i)
        } else if is_secret_name(word) {
            value_after_name(b, i)
        } else {
            None
        };
        if let Some((from, to)) = value {
            if to > from {
                redact(&mut out, from, to);
            }
            i = i.max(to);
        }
    }
    if copied == 0 {
        Cow::Borrowed(s)
    } else {
        out.push_str(&s[copied..]);
        Cow::Owned(out)
    }
}

/// Characters of a "word": enough to keep tokens and email addresses in
/// one piece. All ASCII, so word edges are always char boundaries.
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'+' | b'%')
}

/// A secret by its shape alone.
fn is_secret_word(word: &str) -> bool {
    // A JWT's header is base64url JSON, so it always starts `eyJ`.
    token_inside(word, "eyJ", 10)
        || token_inside(word, REFRESH_PREFIX, 16)
        || token_inside(word, TICKET_PREFIX, 16)
        || is_email(word)
}

/// `prefix` at the start of a token inside `word` (not the tail of another
/// identifier: `start_…` is no refresh token), followed by at least `min`
/// base64url characters.
fn token_inside(word: &str, prefix: &str, min: usize) -> bool {
    let b = word.as_bytes();
    word.match_indices(prefix).any(|(at, _)| {
        let boundary = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_');
        let tail =
            b[at + prefix.len()..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'-' || **c == b'_');
        boundary && tail.count() >= min
    })
}

/// `local@domain.tld` with an alphabetic top-level label, so that
/// `chatgw@0.1.0` (a release name) is not taken for an address.
fn is_email(word: &str) -> bool {
    let Some((local, domain)) = word.rsplit_once('@') else { return false };
    let local = local.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let domain = domain.trim_end_matches('.');
    let Some((host, tld)) = domain.rsplit_once('.') else { return false };
    !local.is_empty() && !host.is_empty() && tld.len() >= 2 && tld.bytes().all(|c| c.is_ascii_alphabetic())
}

/// After a secret name ending at `at`: the span of its value if what
/// follows is an assignment (`=v`, `: v`, `": "v"`), else `None` (a path
/// like `auth::tokens`, or prose).
fn value_after_name(b: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut j = at;
    // The closing quote of a quoted key (JSON, Debug output).
    while j < b.len() && matches!(b[j], b'"' | b'\'') {
        j += 1;
    }
    while j < b.len() && b[j] == b' ' {
        j += 1;
    }
    if j >= b.len() || !matches!(b[j], b':' | b'=') {
        return None;
    }
    j += 1;
    if j < b.len() && matches!(b[j], b':' | b'=' | b'>') {
        return None; // `::`, `==`, `=>`
    }
    while j < b.len() && b[j] == b' ' {
        j += 1;
    }
    let (from, to) = value_at(b, j);
    // `Authorization: Bearer <credential>`: the scheme and what follows it.
    let scheme = &b[from..to];
    if scheme.eq_ignore_ascii_case(b"bearer") || scheme.eq_ignore_ascii_case(b"basic") {
        return Some((from, value_after_bearer(b, to).map_or(to, |(_, end)| end)));
    }
    Some((from, to))
}

/// After `Bearer` ending at `at`: the credential, if one follows.
fn value_after_bearer(b: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut j = at;
    while j < b.len() && b[j] == b' ' {
        j += 1;
    }
    (j > at && j < b.len()).then(|| value_at(b, j))
}

/// The value starting at `j`: up to its closing quote if quoted, else up
/// to whitespace or a delimiter. Ends on an ASCII byte or the end, so the
/// span is always on char boundaries.
fn value_at(b: &[u8], j: usize) -> (usize, usize) {
    if j < b.len() && matches!(b[j], b'"' | b'\'') {
        let quote = b[j];
        let mut k = j + 1;
        while k < b.len() && b[k] != quote {
            // Skip an escaped character (`\"`).
            k += if b[k] == b'\\' { 2 } else { 1 };
        }
        (j + 1, k.min(b.len()))
    } else {
        let mut k = j;
        while k < b.len() && !(b[k].is_ascii_whitespace() || b",;&)}]\"'<>".contains(&b[k])) {
            k += 1;
        }
        (j, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tokens::new_token;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";

    #[test]
    fn text_loses_tokens_by_shape() {
        let rt = new_token(REFRESH_PREFIX);
        let wst = new_token(TICKET_PREFIX);
        let s = format!("refresh {rt} ticket ({wst}) jwt {JWT}, header bearer   abc.def-123 end");
        let clean = text(&s);
        for secret in [rt.as_str(), wst.as_str(), JWT, "abc.def-123"] {
            assert!(!clean.contains(secret), "{secret} left in {clean}");
        }
        assert_eq!(
            clean, "refresh [redacted] ticket ([redacted]) jwt [redacted], header bearer   [redacted] end",
            "the words around them stay"
        );
    }

    #[test]
    fn text_loses_emails_but_keeps_release_names_and_identifiers() {
        assert_eq!(text("from Secret.Person+x@mail.example.com."), "from [redacted]");
        assert_eq!(text("<a@b.io>"), "<[redacted]>");
        for keep in [
            "release chatgw@0.1.0",
            "room 0193a5c0-3e4f-7051-8c6d-7e8f9a0b1c2d seq 41",
            "chatgw::auth::tokens::new_token failed",
            "start_0123456789abcdefghij and port_wst_0123456789abcdef",
            "code token_expired",
            "user@localhost",
            "eyJust a word",
        ] {
            assert_eq!(text(keep), keep);
            assert!(matches!(text(keep), Cow::Borrowed(_)), "no allocation when clean");
        }
    }

    #[test]
    fn text_loses_values_of_secret_names() {
        let cases = [
            ("password=hunter2&user=sam", "password=[redacted]&user=sam"),
            ("login failed, Password: p@ss:w0rd! retry", "login failed, Password: [redacted] retry"),
            (r#"{"password": "correct horse battery", "name": "sam"}"#, r#"{"password": "[redacted]", "name": "sam"}"#),
            (
                r#"Login { email: "x", body: "hi \"you\" there", ok: true }"#,
                r#"Login { email: "[redacted]", body: "[redacted]", ok: true }"#,
            ),
            ("Authorization: Bearer abc, next", "Authorization: [redacted], next"),
            ("authorization=basic dXNlcjpwYXNz", "authorization=[redacted]"),
            ("refresh_token='rt_x' next", "refresh_token='[redacted]' next"),
            ("db_password = é€ secret", "db_password = [redacted] secret"),
        ];
        for (input, want) in cases {
            assert_eq!(text(input), want, "{input}");
        }
        // Prose and paths keep their words.
        for keep in ["the token expired", "crate::auth::password::verify", "body == empty", "password => ok"] {
            assert_eq!(text(keep), keep);
        }
    }

    #[test]
    fn text_never_splits_a_character() {
        for s in ["password=\"\\é", "token:\"é\\", "bearer é", "é@é.é password:é", "token=\\"] {
            let _ = text(s);
        }
    }

    #[test]
    fn json_values_lose_secret_keys_and_secret_strings() {
        let mut v = serde_json::json!({
            "test_id": "t-1",
            "Password": "pw",
            "token": {"nested": JWT},
            "access_token": null,
            "list": ["ok", format!("Bearer {JWT}"), 3],
            "ctx": {"Email": "a@b.co", "n": 1, "message": "sent by a@b.co"},
        });
        value(&mut v);
        assert_eq!(
            v,
            serde_json::json!({
                "test_id": "t-1",
                "Password": "[redacted]",
                "token": "[redacted]",
                "access_token": null,
                "list": ["ok", "Bearer [redacted]", 3],
                "ctx": {"Email": "[redacted]", "n": 1, "message": "sent by [redacted]"},
            })
        );
    }

    #[test]
    fn events_are_scrubbed_everywhere_and_keep_their_identity() {
        use sentry::protocol::{Exception, Map, Request, User};
        let mut fields = Map::new();
        fields.insert("password".to_owned(), Value::from("hunter2-hunter2"));
        fields.insert("room".to_owned(), Value::from("r1"));
        let mut e = Event {
            message: Some(format!("failed for a@b.co with {JWT}")),
            exception: vec![Exception {
                ty: "panic".into(),
                value: Some(format!("Bearer {JWT}")),
                ..Default::default()
            }]
            .into(),
            request: Some(Request { data: Some("password=x".into()), ..Default::default() }),
            user: Some(User { email: Some("a@b.co".into()), ..Default::default() }),
            release: Some("chatgw@0.1.0".into()),
            breadcrumbs: vec![Breadcrumb { message: Some("hello c@d.io".into()), ..Default::default() }].into(),
            ..Default::default()
        };
        e.contexts.insert("Rust Tracing Fields".into(), sentry::protocol::Context::Other(fields));
        e.tags.insert("instance".into(), "host:1".into());
        let id = e.event_id;
        let clean = event(e).expect("survives the round trip");
        let json = serde_json::to_string(&clean).unwrap();
        for secret in [JWT, "a@b.co", "c@d.io", "hunter2-hunter2", "password=x"] {
            assert!(!json.contains(secret), "{secret} in {json}");
        }
        assert!(clean.request.is_none() && clean.user.is_none());
        assert_eq!(clean.event_id, id);
        assert_eq!(clean.release.as_deref(), Some("chatgw@0.1.0"));
        assert_eq!(clean.tags.get("instance").map(String::as_str), Some("host:1"));
        assert!(json.contains("\"room\":\"r1\""), "ordinary fields stay: {json}");
        assert_eq!(clean.exception.values[0].value.as_deref(), Some("Bearer [redacted]"));
    }

    #[test]
    fn breadcrumbs_lose_secrets() {
        let mut b = Breadcrumb { message: Some(format!("user a@b.co token={JWT}")), ..Default::default() };
        b.data.insert("email".into(), Value::from("a@b.co"));
        b.data.insert("path".into(), Value::from("/api/v1/rooms/r1?ticket=wst_0123456789abcdef0123"));
        let b = breadcrumb(b);
        assert_eq!(b.message.as_deref(), Some("user [redacted] token=[redacted]"));
        assert_eq!(b.data["email"], "[redacted]");
        assert_eq!(b.data["path"], "/api/v1/rooms/r1?ticket=[redacted]");
    }
}
