//! The id rules: what a room, user or other server id, an epoch and a
//! `client_msg_id` may look like. One rule each, used by the frame parser
//! and by the REST validators (`api::validate`).

/// The longest id, in bytes (ids are ASCII, so also in characters).
pub const ID_MAX_BYTES: usize = 64;

/// Ids are opaque to clients but always `[A-Za-z0-9_-]{1,64}`: anything
/// else is refused before it reaches the database.
pub fn is_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= ID_MAX_BYTES && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Epochs are opaque to clients; the server's are 12 hex characters, and
/// a client's is accepted when it has the shape of an id.
pub fn is_epoch(e: &str) -> bool {
    is_id(e)
}

/// A client's own message id: `[A-Za-z0-9_.:-]{1,64}` (wider than an id,
/// so a client may use its own scheme, e.g. `device:counter`).
pub fn is_client_msg_id(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= ID_MAX_BYTES
        && c.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Ids: exactly `[A-Za-z0-9_-]{1,64}`; client message ids add `.`
        /// and `:`; an id is always a valid client message id.
        #[test]
        fn id_rules(v in prop_oneof!["[A-Za-z0-9_.:/ -]{0,70}", "\\PC{0,70}"]) {
            let len_ok = (1..=ID_MAX_BYTES).contains(&v.len());
            let id_chars = v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            let cmid_chars = v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
            prop_assert_eq!(is_id(&v), len_ok && id_chars);
            prop_assert_eq!(is_epoch(&v), is_id(&v));
            prop_assert_eq!(is_client_msg_id(&v), len_ok && cmid_chars);
            prop_assert!(!is_id(&v) || is_client_msg_id(&v));
        }
    }
}
