//! Protocol versioning and the per-connection options chosen at the
//! handshake (protocol/README.md §19): the `chatgw.v1` subprotocol, the
//! minor version and feature list announced in `hello`, and the heartbeat
//! mode.
//!
//! The wire stays compatible within v1: 1.1 only adds fields and frame
//! types, which clients ignore when they do not know them, so a 1.0 client
//! keeps working and a 1.1 client learns from `hello` what it may use.

use axum::http::{HeaderMap, header};

/// The only WebSocket subprotocol served. Major versions get a new name.
pub const SUBPROTOCOL: &str = "chatgw.v1";

/// The major version, `hello.protocol` (unchanged by additions).
pub const PROTOCOL: u32 = 1;

/// `hello.protocol_version`: major.minor; the minor grows with additions.
pub const PROTOCOL_VERSION: &str = "1.2";

/// `hello.features` of this instance, in a fixed order: a client uses an
/// addition only when it is listed.
///
/// `"edits"` only while edits are on (`EDIT_WINDOW_SECS` > 0): with the
/// window at 0 every edit is refused, and a feature that always fails is not
/// served. `"deletes"` (protocol 1.2) is listed apart because deletes stay
/// allowed then. `"push"` only when the operator configured an offline push
/// webhook (a client may then rely on push instead of keeping a socket open
/// in the background).
pub fn features(push_configured: bool, edits_on: bool) -> Vec<&'static str> {
    let mut f = vec!["sync", "user_stream"];
    if edits_on {
        f.push("edits");
    }
    f.extend(["deletes", "retention", "app_heartbeat"]);
    if push_configured {
        f.push("push");
    }
    f
}

/// How the server checks that a client is alive, chosen per connection
/// with `GET /ws?heartbeat=app|ws`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Heartbeat {
    /// WebSocket ping control frames, answered by the client's WebSocket
    /// library (the default; invisible to apps on iOS, OkHttp, browsers).
    #[default]
    Ws,
    /// `{"type":"ping"}` text frames the app itself answers with
    /// `{"type":"pong"}`; neither costs the client's rate budget.
    App,
}

impl Heartbeat {
    /// Its name in the query string and in `hello.heartbeat`.
    pub fn as_str(self) -> &'static str {
        match self {
            Heartbeat::Ws => "ws",
            Heartbeat::App => "app",
        }
    }

    /// The mode a handshake's `heartbeat` query parameter asks for.
    ///
    /// # Errors
    /// A message for the 400 answer when the value is not `app` or `ws`.
    pub fn from_query(value: Option<&str>) -> Result<Heartbeat, String> {
        match value {
            None | Some("ws") => Ok(Heartbeat::Ws),
            Some("app") => Ok(Heartbeat::App),
            Some(other) => {
                let shown: String = other.chars().take(32).collect();
                Err(format!("heartbeat: {shown:?} is not one of \"app\", \"ws\""))
            }
        }
    }
}

/// Checks the `Sec-WebSocket-Protocol` offer: none (a 1.0 client) or one
/// that includes [`SUBPROTOCOL`] is accepted (the upgrade then selects it);
/// an offer of other protocols only is refused, naming the supported one,
/// rather than upgraded to a protocol the client did not ask for.
///
/// # Errors
/// A message for the 400 answer.
pub fn check_subprotocol(headers: &HeaderMap) -> Result<(), String> {
    let mut offered = headers.get_all(header::SEC_WEBSOCKET_PROTOCOL).iter().peekable();
    if offered.peek().is_none() {
        return Ok(());
    }
    let ok = offered.any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|p| p.trim() == SUBPROTOCOL)));
    if ok { Ok(()) } else { Err(format!("unsupported WebSocket subprotocol; this server speaks {SUBPROTOCOL}")) }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn offer(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn subprotocol_offers() {
        assert!(check_subprotocol(&offer(&[])).is_ok());
        assert!(check_subprotocol(&offer(&["chatgw.v1"])).is_ok());
        assert!(check_subprotocol(&offer(&["chatgw.v2, chatgw.v1"])).is_ok());
        assert!(check_subprotocol(&offer(&["mqtt", "chatgw.v1"])).is_ok());
        let e = check_subprotocol(&offer(&["chatgw.v2", "graphql-ws"])).unwrap_err();
        assert!(e.contains("chatgw.v1"), "{e}");
    }

    #[test]
    fn heartbeat_modes() {
        assert_eq!(Heartbeat::from_query(None), Ok(Heartbeat::Ws));
        assert_eq!(Heartbeat::from_query(Some("ws")), Ok(Heartbeat::Ws));
        assert_eq!(Heartbeat::from_query(Some("app")), Ok(Heartbeat::App));
        assert!(Heartbeat::from_query(Some("APP")).is_err());
        assert!(features(true, true).contains(&"push") && !features(false, true).contains(&"push"));
        assert!(features(false, true).contains(&"edits") && !features(false, false).contains(&"edits"));
        assert!(features(false, false).contains(&"deletes"));
    }
}
