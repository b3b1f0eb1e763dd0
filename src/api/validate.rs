//! Field validation shared by the REST handlers (and later the socket).

use crate::error::ApiError;

pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_BYTES: usize = 256;
pub const DISPLAY_NAME_MAX_CHARS: usize = 64;
pub const ROOM_NAME_MAX_CHARS: usize = 100;
pub const EMAIL_MAX_BYTES: usize = 254;
pub const ID_MAX_BYTES: usize = 64;
pub const MAX_INITIAL_MEMBERS: usize = 1000;

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

/// Characters a name may not hold: every Unicode bidi control (a name that
/// reverses the text after it, e.g. U+202E, could make another user's
/// message read differently) and the invisible ones (zero-width space and
/// joiners, word joiner, BOM) that let two names look the same.
fn invisible_or_bidi(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// A human-visible name: trimmed, 1..=max characters, no control characters
/// (which would let one user corrupt another's terminal or layout), no bidi
/// controls and no invisible characters ([`invisible_or_bidi`]).
pub fn name(field: &str, v: &str, max: usize) -> Result<String, ApiError> {
    let v = v.trim();
    if v.is_empty() {
        return Err(ApiError::bad_request(format!("{field}: must not be empty")));
    }
    if v.chars().count() > max {
        return Err(ApiError::bad_request(format!("{field}: must be at most {max} characters")));
    }
    if v.chars().any(|c| c.is_control() || invisible_or_bidi(c)) {
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
/// is refused before it reaches the database.
pub fn id(field: &str, v: &str) -> Result<(), ApiError> {
    if !v.is_empty()
        && v.len() <= ID_MAX_BYTES
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("{field}: not a valid id")))
    }
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
