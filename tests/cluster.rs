//! Several gateway instances on one PostgreSQL database, linked by one bus:
//! delivery, ordering, membership and logout cross instances.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Db, spawn_cluster};
use crate::ws_client::WsClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_membership_and_logout_cross_instances() {
    let apps = spawn_cluster(Db::Postgres, 2).await;
    let (a, b) = (&apps[0], &apps[1]);
    let ann = a.register("ann").await;
    let bob = a.register("bob").await;
    let room = a.create_room(&ann, "across", &[&bob]).await;

    let mut ca = WsClient::connect(a, &ann.access).await;
    let mut cb = WsClient::connect(b, &bob.access).await;
    ca.join(&room, None).await;
    cb.join(&room, None).await;

    // Both instances send concurrently: every socket sees 1..=40 once, in
    // order, whichever instance stored each message.
    for i in 0..20 {
        ca.send_msg(&room, &format!("a{i}"), "from a").await;
        cb.send_msg(&room, &format!("b{i}"), "from b").await;
    }
    for c in [&mut ca, &mut cb] {
        let mut seqs = Vec::new();
        let mut acks = 0;
        while seqs.len() < 40 || acks < 20 {
            let f = c.next().await;
            match f["type"].as_str() {
                Some("message") => seqs.push(f["seq"].as_i64().unwrap()),
                Some("ack") => acks += 1,
                _ => {}
            }
        }
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    }

    // Removal through instance A reaches Bob's socket on instance B.
    let r = a.delete(&ann.access, &format!("/api/v1/rooms/{room}/members/{}", bob.user_id)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let left = cb.next_of("left").await;
    assert_eq!(left["reason"], "removed");

    // Logout through instance A closes Bob's socket on instance B.
    let out = a.post(Some(&bob.access), "/api/v1/auth/logout", json!({})).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert_eq!(cb.until_close().await.0, 4001);
}
