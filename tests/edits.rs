//! Edits and deletions as events in the room's ordered stream (protocol
//! §16): who may change what, live delivery across instances in seq order
//! with messages, exactly-once resume, history in its current state,
//! idempotent retries, operator deletes and erasure's `delete` events.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Db, TestApp, eventually, spawn_app_with, spawn_cluster};
use crate::operators::ADMIN_TOKEN;
use crate::ws::client::{GUARD, WsClient, assert_conforms};

both_backends!(
    edits_and_deletes_live_across_instances_and_on_resume,
    erasure_appends_delete_events,
    edit_window_and_frame_rules,
    changes_within_one_batch,
    erasure_of_many_messages_in_batches,
    client_msg_id_is_one_namespace_across_kinds,
    edits_and_deletes_draw_on_the_send_budget,
);

/// A socket and the room-stream frames (`message`, `edit`, `delete`) it
/// has received so far, in arrival order.
struct Client {
    ws: WsClient,
    stream: Vec<Value>,
}

fn is_stream(v: &Value) -> bool {
    matches!(v["type"].as_str(), Some("message" | "edit" | "delete"))
}

impl Client {
    async fn connect(app: &TestApp, token: &str, room: &str, since_seq: Option<i64>) -> Client {
        let mut ws = WsClient::connect(app, token).await;
        let (replayed, _) = ws.join(room, since_seq).await;
        Client { ws, stream: replayed }
    }

    /// Sends a request with an `id` and returns its `ack` or `error`,
    /// keeping the stream frames that arrive meanwhile.
    async fn request(&mut self, frame: Value) -> Value {
        assert_conforms("client", &frame);
        let id = frame["id"].clone();
        self.ws.send(frame).await;
        loop {
            let v = self.ws.next().await;
            match v["type"].as_str() {
                Some("ack" | "error") if v["id"] == id => return v,
                _ if is_stream(&v) => self.stream.push(v),
                Some("presence" | "typing" | "read") => {}
                _ => panic!("unexpected frame: {v}"),
            }
        }
    }

    /// Reads until the stream reaches `seq` (a guard timeout fails).
    async fn until_seq(&mut self, seq: i64) {
        while self.stream.last().and_then(|v| v["seq"].as_i64()).is_none_or(|s| s < seq) {
            let v = self.ws.next().await;
            if is_stream(&v) {
                self.stream.push(v);
            }
        }
    }

    /// (seq, type) of every stream frame received.
    fn seqs(&self) -> Vec<(i64, String)> {
        self.stream.iter().map(|v| (v["seq"].as_i64().unwrap(), v["type"].as_str().unwrap().to_owned())).collect()
    }
}

fn send(id: &str, room: &str, cmid: &str, body: &str) -> Value {
    json!({"type": "send", "id": id, "room": room, "client_msg_id": cmid, "body": body})
}

fn edit(id: &str, room: &str, target: i64, cmid: &str, body: &str) -> Value {
    json!({"type": "edit", "id": id, "room": room, "target_seq": target, "client_msg_id": cmid, "body": body})
}

fn delete(id: &str, room: &str, target: i64, cmid: &str) -> Value {
    json!({"type": "delete", "id": id, "room": room, "target_seq": target, "client_msg_id": cmid})
}

fn acked(reply: &Value) -> (i64, bool) {
    assert_eq!(reply["type"], "ack", "{reply}");
    (reply["seq"].as_i64().unwrap(), reply["duplicate"].as_bool().unwrap())
}

fn refused(reply: &Value) -> &str {
    assert_eq!(reply["type"], "error", "{reply}");
    reply["code"].as_str().unwrap()
}

fn typed(seqs: &[(i64, &str)]) -> Vec<(i64, String)> {
    seqs.iter().map(|(s, t)| (*s, (*t).to_owned())).collect()
}

async fn history(app: &TestApp, token: &str, room: &str) -> Vec<Value> {
    let r = app.get(token, &format!("/api/v1/rooms/{room}/messages?after_seq=0&limit=100")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["messages"].as_array().unwrap().clone()
}

/// Ann (owner) is on instance A, Bob on B; Carol takes seqs 1-2 and goes
/// offline. Edits and deletes by the author, the owner and an operator
/// reach every live socket in seq order with messages, on both instances;
/// refused changes store nothing; a retried edit is acked as a duplicate;
/// Carol's resume gets every change she missed, once, in order; history
/// shows each message's current state.
async fn edits_and_deletes_live_across_instances_and_on_resume(db: Db) {
    let apps = spawn_cluster(db, 2).await;
    let (a, b) = (&apps[0], &apps[1]);
    let ann = a.register("ann").await;
    let bob = a.register("bob").await;
    let carol = a.register("carol").await;
    let room = a.create_room(&ann, "edits", &[&bob, &carol]).await;
    let mut ca = Client::connect(a, &ann.access, &room, None).await;
    let mut cb = Client::connect(b, &bob.access, &room, None).await;
    let mut cc = Client::connect(a, &carol.access, &room, None).await;
    // Edits are on (the default window): announced with their window.
    let hello = &ca.ws.hello;
    assert_eq!(hello["limits"]["edit_window_ms"], 900_000, "{hello}");
    assert_eq!(hello["features"], json!(["sync", "user_stream", "edits", "deletes", "retention", "app_heartbeat"]));

    assert_eq!(acked(&ca.request(send("s1", &room, "a1", "a1")).await), (1, false));
    assert_eq!(acked(&cb.request(send("s2", &room, "b1", "b1")).await), (2, false));
    cc.until_seq(2).await;
    cc.ws.close().await;

    // The author edits (on A); another member may not edit it (on B).
    assert_eq!(acked(&ca.request(edit("e1", &room, 1, "e1", "a1 edited")).await), (3, false));
    // Not `forbidden`: that one means "drop this room" (§6).
    assert_eq!(refused(&cb.request(edit("x1", &room, 1, "x1", "mine now")).await), "not_author");
    assert_eq!(acked(&cb.request(edit("e2", &room, 2, "e2", "b1 edited")).await), (4, false));
    // A retry of the same edit: acked again with its seq, applied once.
    assert_eq!(acked(&ca.request(edit("e1again", &room, 1, "e1", "a1 edited")).await), (3, true));
    // The owner deletes Bob's message; Bob may not delete Ann's.
    assert_eq!(acked(&ca.request(delete("d1", &room, 2, "d1")).await), (5, false));
    assert_eq!(refused(&cb.request(delete("x2", &room, 1, "x2")).await), "not_author");
    // Targets that are not live messages: deleted, a change event, missing.
    assert_eq!(refused(&cb.request(edit("x3", &room, 2, "x3", "again")).await), "not_found");
    assert_eq!(refused(&ca.request(edit("x4", &room, 3, "x4", "meta")).await), "not_found");
    assert_eq!(refused(&ca.request(delete("x5", &room, 99, "x5")).await), "not_found");
    assert_eq!(acked(&cb.request(send("s3", &room, "b2", "b2")).await), (6, false));

    // An operator deletes Bob's second message through instance B.
    let r = b.delete(ADMIN_TOKEN, &format!("/api/v1/admin/rooms/{room}/messages/6")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!((r.body["seq"].as_i64(), r.body["target_seq"].as_i64()), (Some(7), Some(6)));
    let again = b.delete(ADMIN_TOKEN, &format!("/api/v1/admin/rooms/{room}/messages/6")).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "already deleted");
    let audit = a.get(ADMIN_TOKEN, "/api/v1/admin/audit?action=message_deleted").await;
    assert_eq!(audit.body["records"][0]["target_id"], bob.user_id.as_str(), "{}", audit.body);

    assert_eq!(acked(&ca.request(send("s4", &room, "a2", "a2")).await), (8, false));
    assert_eq!(acked(&ca.request(delete("d2", &room, 8, "d2")).await), (9, false));

    let expected = typed(&[
        (1, "message"),
        (2, "message"),
        (3, "edit"),
        (4, "edit"),
        (5, "delete"),
        (6, "message"),
        (7, "delete"),
        (8, "message"),
        (9, "delete"),
    ]);
    for c in [&mut ca, &mut cb] {
        c.until_seq(9).await;
        assert_eq!(c.seqs(), expected, "live, in seq order, once");
        let s = &c.stream;
        assert_eq!(
            (&s[2]["target_seq"], &s[2]["sender"], &s[2]["body"], &s[2]["client_msg_id"]),
            (&json!(1), &json!(ann.user_id), &json!("a1 edited"), &json!("e1"))
        );
        assert_eq!(
            (&s[4]["target_seq"], &s[4]["reason"], &s[4]["sender"]),
            (&json!(2), &json!("owner"), &json!(ann.user_id))
        );
        assert_eq!((&s[6]["reason"], &s[6]["sender"]), (&json!("operator"), &json!("operator")));
        assert_eq!((&s[8]["target_seq"], &s[8]["reason"]), (&json!(8), &json!("author")));
    }

    // Carol resumes from seq 2 on instance B: every change she missed, once,
    // in order; rows read from storage show current state.
    let mut ws = WsClient::connect(b, &carol.access).await;
    let (replayed, joined) = ws.join(&room, Some(2)).await;
    // `replayed` counts every stream frame replayed, change events too.
    assert_eq!(joined["replayed"], 7, "{joined}");
    let cc = Client { ws, stream: replayed };
    assert_eq!(cc.seqs(), expected[2..].to_vec());
    let s = &cc.stream;
    assert_eq!(s[0]["body"], "a1 edited");
    assert_eq!(s[1]["body"], "", "an edit of a message deleted since keeps no text");
    assert_eq!((&s[3]["deleted"], &s[3]["body"]), (&json!(true), &json!("")));

    // History: current state, change events as typed entries, no gaps.
    let h = history(a, &carol.access, &room).await;
    assert_eq!(h.iter().map(|m| m["seq"].as_i64().unwrap()).collect::<Vec<_>>(), (1..=9).collect::<Vec<_>>());
    assert_eq!((&h[0]["type"], &h[0]["body"]), (&json!("message"), &json!("a1 edited")));
    assert!(h[0]["edited_at"].as_i64().is_some_and(|t| t == s[0]["sent_at"].as_i64().unwrap()));
    assert!(h[0].get("deleted").is_none());
    assert_eq!((&h[1]["deleted"], &h[1]["body"]), (&json!(true), &json!("")));
    assert_eq!((&h[2]["type"], &h[2]["target_seq"]), (&json!("edit"), &json!(1)));
    assert_eq!((&h[4]["type"], &h[4]["reason"]), (&json!("delete"), &json!("owner")));
    // A delete entry has the fields of its frame: no `body` (§16.6).
    for d in h.iter().filter(|m| m["type"] == "delete") {
        assert!(d.get("body").is_none(), "{d}");
    }
    assert_eq!((&h[5]["deleted"], &h[7]["deleted"]), (&json!(true), &json!(true)));
}

/// Erasing an account appends a `delete` event (reason `erased`) per
/// message of it, in every room: live to a socket on the other instance,
/// and to a client that resumes after it.
async fn erasure_appends_delete_events(db: Db) {
    let apps = spawn_cluster(db, 2).await;
    let (a, b) = (&apps[0], &apps[1]);
    let ann = a.register("ann").await;
    let bob = a.register("bob").await;
    let room = a.create_room(&ann, "erase", &[&bob]).await;
    let other = a.create_room(&ann, "erase-2", &[&bob]).await;
    let mut live = Client::connect(b, &ann.access, &room, None).await;
    let mut cb = Client::connect(a, &bob.access, &room, None).await;
    for (i, body) in ["one", "two", "three"].into_iter().enumerate() {
        acked(&cb.request(send(&format!("s{i}"), &room, &format!("b{i}"), body)).await);
    }
    acked(&cb.request(edit("e", &room, 2, "e", "two, edited")).await);
    acked(&cb.request(send("o", &other, "o", "elsewhere")).await);
    acked(&live.request(send("a", &room, "a", "ann's")).await);
    live.until_seq(5).await;

    let r = a.delete(&bob.access, "/api/v1/me").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // Bob's messages 1-3 each get their event (6-8), in order; the edit
    // event and Ann's message are not deleted.
    live.until_seq(8).await;
    let events: Vec<_> = live.stream[5..].to_vec();
    assert_eq!(live.seqs()[5..].to_vec(), typed(&[(6, "delete"), (7, "delete"), (8, "delete")]));
    for (e, target) in events.iter().zip(1..) {
        assert_eq!(
            (&e["target_seq"], &e["reason"], &e["sender"]),
            (&json!(target), &json!("erased"), &json!(bob.user_id))
        );
    }
    let last = eventually(GUARD, || async { a.store.last_seq(&other).await.unwrap().filter(|s| *s == 2) }).await;
    assert_eq!(last, 2);
    // Nothing of the erased text is kept, not even the digest of the body
    // the edited message was sent with (§13.3).
    assert_eq!(digests_kept(b, &room).await, 0, "b owns the database");

    // A client that had seqs 1-5 resumes and learns of all three.
    let resumed = Client::connect(a, &ann.access, &room, Some(5)).await;
    assert_eq!(resumed.seqs(), live.seqs()[5..].to_vec());
    let h = history(a, &ann.access, &room).await;
    for m in &h[0..3] {
        assert_eq!((&m["deleted"], &m["body"]), (&json!(true), &json!("")), "{m}");
    }
    assert_eq!((&h[3]["type"], &h[3]["body"]), (&json!("edit"), &json!("")), "an erased edit keeps no text");
    assert_eq!(h[4]["body"], "ann's");
    let h = history(a, &ann.access, &other).await;
    assert_eq!((&h[1]["type"], &h[1]["target_seq"], &h[1]["reason"]), (&json!("delete"), &json!(1), &json!("erased")));
}

/// `EDIT_WINDOW_SECS=0` closes every edit (deletes stay allowed); edit and
/// delete frames follow the send rules for bodies and ids.
async fn edit_window_and_frame_rules(db: Db) {
    let app = spawn_app_with(db, |v| {
        v.insert("EDIT_WINDOW_SECS".into(), "0".into());
        v.insert("WS_MAX_BODY_BYTES".into(), "16".into());
    })
    .await;
    let ann = app.register("ann").await;
    let room = app.create_room(&ann, "window", &[]).await;
    let mut c = Client::connect(&app, &ann.access, &room, None).await;
    // Edits are off: not announced as a feature, the window says 0;
    // deletes are served.
    let hello = &c.ws.hello;
    assert_eq!(hello["limits"]["edit_window_ms"], 0, "{hello}");
    assert_eq!(hello["features"], json!(["sync", "user_stream", "deletes", "retention", "app_heartbeat"]));
    assert_eq!(acked(&c.request(send("s", &room, "m", "hello")).await), (1, false));
    assert_eq!(refused(&c.request(edit("e", &room, 1, "e", "hi")).await), "edit_window_closed");
    assert_eq!(refused(&c.request(edit("big", &room, 1, "e2", &"x".repeat(17))).await), "too_large");
    for bad in [
        json!({"type": "edit", "id": "b1", "room": room, "client_msg_id": "c", "body": "x"}),
        json!({"type": "edit", "id": "b2", "room": room, "target_seq": 1, "client_msg_id": "c", "body": ""}),
        json!({"type": "delete", "id": "b3", "room": room, "target_seq": 0, "client_msg_id": "c"}),
        json!({"type": "delete", "id": "b4", "room": room, "target_seq": 1}),
    ] {
        c.ws.send(bad).await;
        let r = c.ws.next_reply().await;
        assert_eq!(refused(&r), "bad_request");
    }
    assert_eq!(acked(&c.request(delete("d", &room, 1, "d")).await), (2, false));
    c.until_seq(2).await;
    assert_eq!(c.seqs(), typed(&[(1, "message"), (2, "delete")]));
}

/// Changes in the same group-commit batch as their target (or as each
/// other) are checked against the state the batch leaves before them.
async fn changes_within_one_batch(db: Db) {
    use chatgw::db::{AppendOutcome, Deleter, NewKind, NewMessage};
    let app = spawn_app_with(db, |_| {}).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "batch", &[&bob]).await;
    let m = |sender: &str, cmid: &str, body: &str, kind: NewKind| NewMessage {
        room_id: room.clone(),
        sender_id: sender.to_owned(),
        client_msg_id: cmid.to_owned(),
        body: body.to_owned(),
        sent_at: 1_000,
        kind,
    };
    let window_ms = 60_000;
    let out = app
        .store
        .append_messages(&[
            m(&bob.user_id, "m", "first", NewKind::Message),
            m(&bob.user_id, "e", "second", NewKind::Edit { target_seq: 1, window_ms }),
            m(&ann.user_id, "x", "not mine", NewKind::Edit { target_seq: 1, window_ms }),
            m(&ann.user_id, "d", "", NewKind::Delete { target_seq: 1, by: Deleter::Member }),
            m(&bob.user_id, "e2", "late", NewKind::Edit { target_seq: 1, window_ms }),
        ])
        .await
        .unwrap();
    let kinds: Vec<String> = out
        .iter()
        .map(|o| match o {
            AppendOutcome::Stored(s) => format!("{}:{}", s.kind.as_str(), s.seq),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["message:1", "edit:2", "NotAuthor", "delete:3", "TargetNotFound"]);
    let h = app.store.history(&room, Some(0), None, 10).await.unwrap().messages;
    assert_eq!((h[0].body.as_str(), h[0].deleted, h[0].edited_at), ("", true, Some(1_000)));
    assert_eq!((h[1].body.as_str(), h[2].reason.map(|r| r.as_str())), ("", Some("owner")));
}

/// An erasure of more messages than one batch (500) holds: each message
/// gets exactly one `delete` event, interleaved with other members' sends,
/// and the room's seqs stay gap-free.
async fn erasure_of_many_messages_in_batches(db: Db) {
    use chatgw::db::{NewKind, NewMessage};
    let app = spawn_app_with(db, |_| {}).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "many", &[&bob]).await;
    let n = 1_100;
    let msgs: Vec<NewMessage> = (0..n)
        .map(|i| NewMessage {
            room_id: room.clone(),
            sender_id: bob.user_id.clone(),
            client_msg_id: format!("b{i}"),
            body: format!("message {i}"),
            sent_at: i,
            kind: NewKind::Message,
        })
        .collect();
    for chunk in msgs.chunks(500) {
        app.store.append_messages(chunk).await.unwrap();
    }
    let mut ca = Client::connect(&app, &ann.access, &room, None).await;
    let r = app.delete(&bob.access, "/api/v1/me").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // Ann keeps sending while the batches run.
    for i in 0..5 {
        acked(&ca.request(send(&format!("s{i}"), &room, &format!("a{i}"), "still here")).await);
    }
    let total = n + n + 5;
    ca.until_seq(total).await;
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = app.store.history(&room, Some(after), None, 500).await.unwrap();
        all.extend(page.messages);
        after = all.last().map_or(after, |m| m.seq);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>(), "gap-free");
    let mut targets: Vec<i64> = all.iter().filter_map(|m| m.target_seq).collect();
    targets.sort_unstable();
    assert_eq!(targets, (1..=n).collect::<Vec<_>>(), "one delete event per message");
    assert!(all[..n as usize].iter().all(|m| m.deleted && m.body.is_empty()));
    // The live socket saw the same stream, in order.
    assert_eq!(
        ca.stream.iter().map(|v| v["seq"].as_i64().unwrap()).collect::<Vec<_>>(),
        ((n + 1)..=total).collect::<Vec<_>>()
    );
}

/// One namespace of `client_msg_id` per room and sender across sends,
/// edits and deletes (§13.3): a repeat of the same request (same kind,
/// target and body) is acked again with its seq; any other reuse of the id
/// is `conflict`, stores nothing and changes nothing. The three cases of
/// issue 21 first, then the rest of the rule.
async fn client_msg_id_is_one_namespace_across_kinds(db: Db) {
    let app = spawn_app_with(db, |_| {}).await;
    let ann = app.register("ann").await;
    let room = app.create_room(&ann, "ids", &[]).await;
    let mut c = Client::connect(&app, &ann.access, &room, None).await;
    assert_eq!(acked(&c.request(send("s1", &room, "m1", "hello")).await), (1, false));
    assert_eq!(acked(&c.request(edit("e1", &room, 1, "e1", "hello, edited")).await), (2, false));

    // 1. After an edit, a send reusing the message's id with new text is
    // not a duplicate (the text would be lost); the true retry still is.
    let r = c.request(send("s2", &room, "m1", "another text")).await;
    assert_eq!((refused(&r), &r["room"]), ("conflict", &json!(room)), "{r}");
    assert_eq!(acked(&c.request(send("s3", &room, "m1", "hello")).await), (1, true));

    // 2. An edit reusing a send's id, even with the text it was sent with
    // (an edit back to the original), is not acked unapplied.
    assert_eq!(acked(&c.request(send("s4", &room, "m2", "x")).await), (3, false));
    assert_eq!(acked(&c.request(edit("e2", &room, 3, "e2", "x2")).await), (4, false));
    assert_eq!(refused(&c.request(edit("e3", &room, 3, "m2", "x")).await), "conflict");
    assert_eq!(history(&app, &ann.access, &room).await[2]["body"], "x2", "the conflicting edit was not applied");

    // 3. A send reusing an edit's id, even with the edit's text, does not
    // get the edit's seq.
    assert_eq!(refused(&c.request(send("s5", &room, "e1", "hello, edited")).await), "conflict");

    // The rest: an edit repeated is a duplicate; with another body or
    // target it is a conflict. A delete repeated is a duplicate; reusing
    // it for another target, or a send's or an edit's id, a conflict.
    assert_eq!(acked(&c.request(edit("e4", &room, 1, "e1", "hello, edited")).await), (2, true));
    assert_eq!(refused(&c.request(edit("e5", &room, 1, "e1", "other")).await), "conflict");
    assert_eq!(refused(&c.request(edit("e6", &room, 3, "e1", "hello, edited")).await), "conflict");
    assert_eq!(refused(&c.request(delete("d1", &room, 1, "m1")).await), "conflict");
    assert_eq!(refused(&c.request(delete("d2", &room, 3, "e2")).await), "conflict");
    assert_eq!(acked(&c.request(delete("d3", &room, 3, "d3")).await), (5, false));
    assert_eq!(acked(&c.request(delete("d4", &room, 3, "d3")).await), (5, true));
    assert_eq!(refused(&c.request(delete("d5", &room, 1, "d3")).await), "conflict");
    assert_eq!(refused(&c.request(send("s6", &room, "d3", "x")).await), "conflict");
    // A deleted message keeps nothing of its text: a send repeating its id
    // is taken for the retry it may be, and changes nothing.
    assert_eq!(acked(&c.request(send("s7", &room, "m2", "whatever")).await), (3, true));

    // A deleted message keeps no digest of its text either; the edited,
    // live message 1 does.
    assert_eq!(digests_kept(&app, &room).await, 1);

    // Nothing of the refused requests was stored or applied.
    assert_eq!(app.store.last_seq(&room).await.unwrap(), Some(5));
    let h = history(&app, &ann.access, &room).await;
    assert_eq!(h.len(), 5);
    assert_eq!((&h[0]["body"], &h[2]["deleted"]), (&json!("hello, edited"), &json!(true)));
    c.until_seq(5).await;
    assert_eq!(c.seqs(), typed(&[(1, "message"), (2, "edit"), (3, "message"), (4, "edit"), (5, "delete")]));
}

/// `edit` and `delete` draw on the `send` budget (`send_per_sec`,
/// `send_burst`), not on the events budget (§8, `hello.limits`).
async fn edits_and_deletes_draw_on_the_send_budget(db: Db) {
    let app = spawn_app_with(db, |v| {
        v.insert("WS_SEND_PER_SEC".into(), "1".into());
        v.insert("WS_SEND_BURST".into(), "2".into());
    })
    .await;
    let ann = app.register("ann").await;
    let room = app.create_room(&ann, "budget", &[]).await;
    let mut c = Client::connect(&app, &ann.access, &room, None).await;
    assert_eq!(
        (c.ws.hello["limits"]["send_per_sec"].as_u64(), c.ws.hello["limits"]["send_burst"].as_u64()),
        (Some(1), Some(2))
    );
    // Two tokens: a send and an edit take them; the delete right after is
    // refused, while the events budget still answers a ping.
    assert_eq!(acked(&c.request(send("s", &room, "m", "hello")).await), (1, false));
    assert_eq!(acked(&c.request(edit("e", &room, 1, "e", "hello!")).await), (2, false));
    let r = c.request(delete("d", &room, 1, "d")).await;
    assert_eq!(refused(&r), "rate_limited", "{r}");
    c.ws.send(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(c.ws.next_of("pong").await["id"], "p");
}

/// How many rows of `room` keep the digest of a body as sent (read past the
/// gateway).
async fn digests_kept(app: &TestApp, room: &str) -> i64 {
    use sqlx::Connection;
    let mut c = sqlx::AnyConnection::connect(app.db_url().expect("the app owns its database")).await.unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE room_id = $1 AND sent_digest IS NOT NULL")
        .bind(room)
        .fetch_one(&mut c)
        .await
        .unwrap()
}
