//! The adversarial suite (issue 10): each test attacks a real running
//! gateway over real sockets, asserts the documented refusal (status and
//! `error.code`, error frame code or close code), and then that the gateway
//! is still ready and that a well-behaved client ([`Bystander`]) is
//! unaffected.
//!
//! - `tokens`: forged, expired, revoked and misused credentials, on REST and
//!   on the `/ws` handshake.
//! - `authz`: every id-taking REST route and every client frame type tried
//!   against another user's room, message and member ids (IDOR).
//! - `input`: oversized, deeply nested, numeric, non-UTF-8, binary, duplicated
//!   and invisible-character input; very long headers and URLs.
//! - `floods`: event floods, handshake floods from one address and from many,
//!   readers that never read.
//! - `origins`: CORS on REST, Origin on the handshake.
//!
//! - `limits`: the resource caps (header deadline, per-socket room cap,
//!   per-user socket cap, sign-in storm).
//! - `outage`: a database the test stops: `unavailable` everywhere, then
//!   recovery.

mod authz;
mod floods;
mod input;
mod limits;
mod origins;
mod outage;
mod tokens;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Session, TestApp};
use crate::ws::client::WsClient;

/// A well-behaved user with a live socket joined to their own room, set up
/// before an attack and checked after it.
pub struct Bystander {
    pub session: Session,
    pub room: String,
    pub ws: WsClient,
    sent: u32,
}

impl Bystander {
    pub async fn new(app: &TestApp, name: &str) -> Bystander {
        let session = app.register(name).await;
        let room = app.create_room(&session, &format!("{name}'s room"), &[]).await;
        let mut ws = WsClient::connect(app, &session.access).await;
        ws.join(&room, None).await;
        Bystander { session, room, ws, sent: 0 }
    }

    /// The gateway is ready, and this client can still use REST and send
    /// and receive in its room over its socket, opened before the attack.
    pub async fn still_fine(&mut self, app: &TestApp) {
        assert_healthy(app).await;
        let me = app.get(&self.session.access, "/api/v1/me").await;
        assert_eq!(me.status, StatusCode::OK, "bystander REST: {}", me.body);
        self.sent += 1;
        let cmid = format!("bystander-{}", self.sent);
        self.ws
            .send(json!({"type": "send", "id": cmid, "room": self.room, "client_msg_id": cmid, "body": "still here"}))
            .await;
        let (mut acked, mut echoed) = (false, false);
        while !(acked && echoed) {
            let f = self.ws.next().await;
            match f["type"].as_str() {
                Some("ack") if f["client_msg_id"] == cmid.as_str() => {
                    assert_eq!(f["duplicate"], false, "{f}");
                    acked = true;
                }
                Some("message") if f["client_msg_id"] == cmid.as_str() => echoed = true,
                Some("presence" | "typing" | "read") => {}
                _ => panic!("bystander got an unexpected frame: {f}"),
            }
        }
    }
}

/// `/readyz` answers 200: the process is up and its database reachable.
pub async fn assert_healthy(app: &TestApp) {
    let r = app.send(app.http.get(app.url("/readyz"))).await;
    assert_eq!(r.status, StatusCode::OK, "gateway not ready after the attack: {}", r.body);
}

/// The status and body of a refused handshake; panics if it was accepted.
pub async fn refused(app: &TestApp, token: Option<&str>, ticket: Option<&str>, origin: Option<&str>) -> (u16, String) {
    match WsClient::try_connect(app, token, ticket, origin).await {
        Ok(c) => panic!("handshake accepted (hello {})", c.hello),
        Err(crate::ws::client::Refused::Http(status, body)) => {
            let code =
                body["error"]["code"].as_str().unwrap_or_else(|| panic!("refusal without the error shape: {body}"));
            (status, code.to_owned())
        }
    }
}
