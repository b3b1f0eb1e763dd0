//! Field validation shared by the REST handlers (and later the socket).

use crate::error::ApiError;
use crate::protocol;

pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_BYTES: usize = 256;
pub const DISPLAY_NAME_MAX_CHARS: usize = 64;
pub const ROOM_NAME_MAX_CHARS: usize = 100;
pub const EMAIL_MAX_BYTES: usize = 254;
pub use crate::protocol::ID_MAX_BYTES;
pub const MAX_INITIAL_MEMBERS: usize = 1000;
pub use crate::limits::MAX_MEMBER_EMAILS;

/// A deliberately simple shape check (one `@`, a dotted domain, no spaces):
/// the only real validation of an email is a message to it.
pub fn email(v: &str) -> Result<String, ApiError> {
    let v = v.trim();
    let ok = v.len() <= EMAIL_MAX_BYTES
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && match v.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if ok { Ok(v.to_owned()) } else { Err(ApiError::bad_request("email: not a valid email address")) }
}

pub fn password(v: &str) -> Result<(), ApiError> {
    if v.chars().count() < PASSWORD_MIN_CHARS {
        return Err(ApiError::bad_request(format!("password: must be at least {PASSWORD_MIN_CHARS} characters")));
    }
    if v.len() > PASSWORD_MAX_BYTES {
        return Err(ApiError::bad_request(format!("password: must be at most {PASSWORD_MAX_BYTES} bytes")));
    }
    Ok(())
}

/// Characters a name may not contain: control characters, every Unicode
/// bidi control (a name that reverses the text after it, e.g. U+202E, makes
/// another user's message read differently), the invisible ones (zero-width
/// space and joiners, word joiner, BOM) that let two names look the same, and
/// the line and paragraph separators that break layouts.
pub fn forbidden_in_name(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// A human-visible name: trimmed, 1..=max characters, none of them
/// [`forbidden_in_name`].
pub fn name(field: &str, v: &str, max: usize) -> Result<String, ApiError> {
    let v = v.trim();
    if v.is_empty() {
        return Err(ApiError::bad_request(format!("{field}: must not be empty")));
    }
    if v.chars().count() > max {
        return Err(ApiError::bad_request(format!("{field}: must be at most {max} characters")));
    }
    if v.chars().any(forbidden_in_name) {
        return Err(ApiError::bad_request(format!(
            "{field}: must not contain control or direction-override characters"
        )));
    }
    Ok(v.to_owned())
}

pub fn display_name(v: &str) -> Result<String, ApiError> {
    name("display_name", v, DISPLAY_NAME_MAX_CHARS)
}

pub fn room_name(v: &str) -> Result<String, ApiError> {
    name("name", v, ROOM_NAME_MAX_CHARS)
}

/// Ids are opaque to clients but always `[A-Za-z0-9_-]{1,64}`; anything else
/// is refused before it reaches the database. The rule is the protocol's
/// ([`protocol::is_id`]), the one the socket's frames are held to.
pub fn id(field: &str, v: &str) -> Result<(), ApiError> {
    if protocol::is_id(v) { Ok(()) } else { Err(ApiError::bad_request(format!("{field}: not a valid id"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in ["a@b.io", "First.Last+tag@example.co.uk"] {
            assert!(email(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "a@b", "@b.io", "a@@b.io", "a b@c.io", "a@b.io.", &format!("{}@b.io", "x".repeat(260))] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_refuse_control_and_bidi_characters() {
        assert_eq!(display_name("  Ann  ").unwrap(), "Ann");
        assert!(display_name("").is_err());
        assert!(display_name("a\u{0007}b").is_err());
        assert!(display_name("evil\u{202E}txt").is_err());
        for c in ['\u{0}', '\u{061C}', '\u{200B}', '\u{2060}', '\u{2067}', '\u{FEFF}'] {
            assert!(display_name(&format!("a{c}b")).is_err(), "{c:?}");
        }
        assert!(display_name(&"x".repeat(65)).is_err());
        assert!(display_name("Zoë 🚀").is_ok());
    }

    #[test]
    fn ids() {
        assert!(id("id", "0193-abc_DEF").is_ok());
        for bad in ["", "a/b", "a b", "'; drop table users; --", &"x".repeat(65)] {
            assert!(id("id", bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    /// Unicode's `Bidi_Control` characters, listed independently of the
    /// code under test.
    const BIDI_CONTROL: [char; 12] = [
        '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}',
        '\u{2067}', '\u{2068}', '\u{2069}',
    ];

    fn code(e: ApiError) -> &'static str {
        e.status_and_code().1
    }

    /// Strings with the characters validators care about mixed in.
    fn tricky() -> impl Strategy<Value = String> {
        let c = prop_oneof![
            6 => any::<char>(),
            3 => proptest::char::range('a', 'z'),
            1 => prop::sample::select(BIDI_CONTROL.to_vec()),
            1 => prop::sample::select(vec![' ', '\t', '\n', '\u{0}', '\u{7F}', '\u{85}', '\u{A0}', '\u{3000}', '\u{2028}', '@', '.']),
        ];
        prop::collection::vec(c, 0..120).prop_map(|cs| cs.into_iter().collect())
    }

    proptest! {
        /// An accepted name is trimmed, 1..=max characters (not bytes),
        /// without control or bidi characters, and accepted unchanged
        /// again; a refused one is `bad_request`.
        #[test]
        fn names(v in tricky(), max in 1usize..80) {
            match name("name", &v, max) {
                Ok(n) => {
                    prop_assert_eq!(n.as_str(), n.trim());
                    prop_assert!((1..=max).contains(&n.chars().count()));
                    prop_assert!(!n.chars().any(|c| c.is_control() || BIDI_CONTROL.contains(&c)), "{:?}", n);
                    prop_assert!(!n.contains(['\u{2028}', '\u{2029}', '\u{200B}']), "{:?}", n);
                    prop_assert_eq!(name("name", &n, max).ok(), Some(n.clone()));
                }
                Err(e) => prop_assert_eq!(code(e), "bad_request"),
            }
        }

        /// Any control, `Bidi_Control`, zero-width or line-separator
        /// character anywhere in an otherwise fine name gets it refused.
        #[test]
        fn invisible_and_reordering_characters_are_refused(
            base in "[a-zA-Z]{2,20}",
            at in any::<prop::sample::Index>(),
            c in prop_oneof![
                prop::sample::select(BIDI_CONTROL.to_vec()),
                prop::sample::select(vec!['\u{200B}', '\u{200C}', '\u{200D}', '\u{2028}', '\u{2029}']),
                proptest::char::range('\u{0}', '\u{1F}'),
                proptest::char::range('\u{7F}', '\u{9F}'),
            ],
        ) {
            let mut v = base.clone();
            v.insert(at.index(base.len() - 1) + 1, c);
            prop_assert_eq!(display_name(&v).map_err(code), Err("bad_request"), "{:?}", v);
        }

        /// Names a person might really have, in any script, are accepted.
        #[test]
        fn ordinary_names_pass(v in "[\\p{L}\\p{N}][\\p{L}\\p{N}\\p{M} '.-]{0,30}[\\p{L}\\p{N}]") {
            prop_assert!(display_name(&v).is_ok(), "{:?}", v);
        }

        /// An accepted email is trimmed, at most 254 bytes, without spaces
        /// or control characters, one `@` with a dotted domain; a refused
        /// one is `bad_request`.
        #[test]
        fn emails(v in tricky()) {
            match email(&v) {
                Ok(e) => {
                    prop_assert_eq!(e.as_str(), v.trim());
                    prop_assert!(e.len() <= EMAIL_MAX_BYTES);
                    prop_assert!(!e.chars().any(|c| c.is_whitespace() || c.is_control()));
                    let (local, domain) = e.split_once('@').expect("an @");
                    prop_assert!(!local.is_empty() && !domain.contains('@'));
                    prop_assert!(domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.'));
                }
                Err(e) => prop_assert_eq!(code(e), "bad_request"),
            }
        }

        #[test]
        fn ordinary_emails_pass(v in "[a-z0-9._+-]{1,30}@[a-z0-9-]{1,30}(\\.[a-z]{2,8}){1,3}") {
            prop_assert_eq!(email(&v).ok(), Some(v));
        }

        /// Passwords: at least 8 characters, at most 256 bytes, nothing else.
        #[test]
        fn passwords(v in prop_oneof![tricky(), "\\PC{60,90}"]) {
            let want = v.chars().count() >= PASSWORD_MIN_CHARS && v.len() <= PASSWORD_MAX_BYTES;
            match password(&v) {
                Ok(()) => prop_assert!(want),
                Err(e) => {
                    prop_assert!(!want);
                    prop_assert_eq!(code(e), "bad_request");
                }
            }
        }

        /// Ids: exactly `[A-Za-z0-9_-]{1,64}`.
        #[test]
        fn ids(v in prop_oneof!["[A-Za-z0-9_-]{0,70}", tricky()]) {
            let want = (1..=ID_MAX_BYTES).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            match id("id", &v) {
                Ok(()) => prop_assert!(want),
                Err(e) => {
                    prop_assert!(!want, "{:?}", v);
                    prop_assert_eq!(code(e), "bad_request");
                }
            }
        }
    }
}
