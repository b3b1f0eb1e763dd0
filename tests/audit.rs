//! The audit log: one record per security event, ids only, read by
//! operators through the admin API and by users in their export, purged
//! after its retention, and append-only in the database itself.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, Row};

use crate::both_backends;
use crate::helpers::{Db, Resp, Session, TestApp, spawn_app_with};
use crate::operators::{ADMIN_TOKEN, scrape};

/// A gateway behind a trusted proxy (the test client), so each request
/// can say which client address it comes from.
async fn app(db: Db) -> TestApp {
    spawn_app_with(db, |v| {
        v.insert("ADMIN_TOKEN".into(), ADMIN_TOKEN.into());
        v.insert("TRUSTED_PROXIES".into(), "127.0.0.1".into());
    })
    .await
}

/// Sends `req` as if forwarded for `from`.
async fn from(app: &TestApp, from: &str, req: reqwest::RequestBuilder) -> Resp {
    app.send(req.header("x-forwarded-for", from)).await
}

async fn admin_get(app: &TestApp, query: &str) -> Resp {
    app.get(ADMIN_TOKEN, &format!("/api/v1/admin/audit{query}")).await
}

/// (actor, target, action, client address) of a record.
type Rec = (Option<String>, Option<String>, String, Option<String>);

fn rec(v: &Value) -> Rec {
    let s = |k: &str| v[k].as_str().map(str::to_owned);
    (s("actor_id"), s("target_id"), s("action").unwrap(), s("client_addr"))
}

fn by(user: &Session, action: &str, addr: &str) -> Rec {
    (Some(user.user_id.clone()), Some(user.user_id.clone()), action.into(), Some(addr.into()))
}

fn about(target: Option<&Session>, action: &str, addr: &str) -> Rec {
    (None, target.map(|t| t.user_id.clone()), action.into(), Some(addr.into()))
}

/// Every record, oldest first, through the admin API.
async fn all_records(app: &TestApp) -> Vec<Value> {
    let r = admin_get(app, "?limit=1000").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let mut v = r.body["records"].as_array().unwrap().clone();
    v.reverse();
    v
}

/// A raw connection to the test's database, past the gateway.
async fn raw(app: &TestApp) -> sqlx::AnyConnection {
    sqlx::AnyConnection::connect(app.db_url().expect("the app owns its database")).await.expect("raw connection")
}

/// Every column of every audit row, as text.
async fn raw_rows(app: &TestApp) -> Vec<String> {
    let mut c = raw(app).await;
    let rows = sqlx::query(
        "SELECT CAST(id AS TEXT) AS id, CAST(at AS TEXT) AS at, actor_id, target_id, action, client_addr \
         FROM audit_log ORDER BY id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    rows.iter()
        .map(|r| {
            (0..6).map(|i| r.try_get::<Option<String>, _>(i).unwrap().unwrap_or_default()).collect::<Vec<_>>().join("|")
        })
        .collect()
}

/// Each security event, through the real API, makes exactly one record
/// with the right actor, target, action and client address, and no record
/// holds an email, a token, a password or a name.
async fn each_action_is_recorded_once_with_ids_only(db: Db) {
    let app = app(db).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let dave = app.register("dave").await;
    let erin = app.register("erin").await;
    assert!(all_records(&app).await.is_empty(), "registration is not an audited event");
    let pw = "correct horse battery";
    let login = |email: &str, password: &str| {
        app.http.post(app.url("/api/v1/auth/login")).json(&json!({"email": email, "password": password}))
    };

    let r = from(&app, "198.51.100.1", login(&alice.email, pw)).await;
    assert_eq!(r.status, StatusCode::OK);
    let alice_refresh = r.body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        from(&app, "198.51.100.2", login(&alice.email, "wrong password")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(from(&app, "198.51.100.3", login("nobody@example.com", pw)).await.status, StatusCode::UNAUTHORIZED);
    // Refresh twice (not audited), then present the first, spent token
    // again (its successor used, so no retry grace applies).
    let refresh = |t: &str| app.http.post(app.url("/api/v1/auth/refresh")).json(&json!({"refresh_token": t}));
    let r = from(&app, "198.51.100.4", refresh(&alice_refresh)).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = from(&app, "198.51.100.4", refresh(r.body["refresh_token"].as_str().unwrap())).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(from(&app, "2001:db8::4", refresh(&alice_refresh)).await.status, StatusCode::UNAUTHORIZED);
    let r = from(&app, "198.51.100.5", app.http.post(app.url("/api/v1/auth/logout")).bearer_auth(&bob.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let change = json!({"password": "a brand new password", "current_password": pw});
    let r = from(&app, "198.51.100.6", app.http.patch(app.url("/api/v1/me")).bearer_auth(&carol.access).json(&change))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let admin = |m: reqwest::Method, path: String| app.http.request(m, app.url(&path)).bearer_auth(ADMIN_TOKEN);
    let ban = format!("/api/v1/admin/users/{}/ban", dave.user_id);
    assert_eq!(
        from(&app, "198.51.100.7", admin(reqwest::Method::POST, ban.clone())).await.status,
        StatusCode::NO_CONTENT
    );
    // A banned user's login fails and names them (not their email).
    assert_eq!(from(&app, "198.51.100.8", login(&dave.email, pw)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(from(&app, "198.51.100.9", admin(reqwest::Method::DELETE, ban)).await.status, StatusCode::NO_CONTENT);
    let disconnect = format!("/api/v1/admin/users/{}/disconnect", dave.user_id);
    let secret_reason = json!({"code": 4000, "reason": "reason text stays out"});
    let r = from(&app, "198.51.100.10", admin(reqwest::Method::POST, disconnect).json(&secret_reason)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = from(&app, "198.51.100.11", app.http.delete(app.url("/api/v1/me")).bearer_auth(&erin.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    let got: Vec<Rec> = all_records(&app).await.iter().map(rec).collect();
    let want = vec![
        by(&alice, "login_succeeded", "198.51.100.1"),
        about(Some(&alice), "login_failed", "198.51.100.2"),
        about(None, "login_failed", "198.51.100.3"),
        about(Some(&alice), "refresh_token_reused", "2001:db8::4"),
        by(&bob, "logout", "198.51.100.5"),
        by(&carol, "password_changed", "198.51.100.6"),
        about(Some(&dave), "ban", "198.51.100.7"),
        about(Some(&dave), "login_failed", "198.51.100.8"),
        about(Some(&dave), "unban", "198.51.100.9"),
        about(Some(&dave), "admin_disconnect", "198.51.100.10"),
        by(&erin, "erasure", "198.51.100.11"),
    ];
    assert_eq!(got, want);

    // The raw rows: nothing but ids, times, actions and addresses.
    let rows = raw_rows(&app).await;
    assert_eq!(rows.len(), want.len());
    let mut forbidden: Vec<String> = vec![
        "@".into(),
        "rt_".into(),
        "wst_".into(),
        "eyJ".into(),
        pw.into(),
        "wrong password".into(),
        "reason text".into(),
        alice_refresh.clone(),
    ];
    for s in [&alice, &bob, &carol, &dave, &erin] {
        forbidden.extend([s.email.clone(), s.access.clone(), s.refresh.clone()]);
    }
    for name in ["alice", "bob", "carol", "dave", "erin", "nobody"] {
        forbidden.push(name.into());
    }
    for row in &rows {
        for f in &forbidden {
            assert!(!row.contains(f.as_str()), "audit row {row:?} contains {f:?}");
        }
    }
}

/// Newest first, keyset-paged by `before`, filtered by user and action;
/// bad parameters are 400 `bad_request`.
async fn admin_api_pages_and_filters(db: Db) {
    let app = app(db).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    for (i, s) in [&alice, &bob, &alice, &bob, &alice].into_iter().enumerate() {
        let body =
            json!({"email": s.email, "password": if i % 2 == 0 { "correct horse battery" } else { "wrong one" }});
        from(&app, "198.51.100.1", app.http.post(app.url("/api/v1/auth/login")).json(&body)).await;
    }
    // alice: 3 successes; bob: 2 failures. Five records, ids descending.
    let all = all_records(&app).await;
    assert_eq!(all.len(), 5);

    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let r = admin_get(&app, &query).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        pages += 1;
        let ids: Vec<i64> = r.body["records"].as_array().unwrap().iter().map(|v| v["id"].as_i64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "not newest first: {ids:?}");
        seen.extend(ids);
        match r.body["next_before"].as_i64() {
            Some(b) => query = format!("?limit=2&before={b}"),
            None => break,
        }
    }
    let mut expected: Vec<i64> = all.iter().map(|v| v["id"].as_i64().unwrap()).collect();
    expected.reverse();
    assert_eq!(seen, expected, "pages skip or repeat records");
    assert_eq!(pages, 3);

    let r = admin_get(&app, &format!("?user_id={}", bob.user_id)).await;
    let recs: Vec<Rec> = r.body["records"].as_array().unwrap().iter().map(rec).collect();
    assert_eq!(recs, vec![about(Some(&bob), "login_failed", "198.51.100.1"); 2]);
    assert!(r.body["next_before"].is_null());
    let r = admin_get(&app, &format!("?user_id={}&action=login_succeeded&limit=2", alice.user_id)).await;
    let recs: Vec<Rec> = r.body["records"].as_array().unwrap().iter().map(rec).collect();
    assert_eq!(recs, vec![by(&alice, "login_succeeded", "198.51.100.1"); 2]);
    assert!(r.body["next_before"].is_i64(), "a full page points to the next");
    let r = admin_get(&app, "?action=login_failed").await;
    assert_eq!(r.body["records"].as_array().unwrap().len(), 2);
    let r = admin_get(&app, "?action=logout").await;
    assert_eq!(r.body["records"], json!([]));

    for bad in ["?limit=0", "?limit=1001", "?action=sudo", "?before=0", "?user_id=a%20b", "?limit=x", "?colour=red"] {
        let r = admin_get(&app, bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        assert_eq!(r.error_code(), "bad_request");
    }
    assert_eq!(admin_get(&app, "?limit=1000").await.status, StatusCode::OK);
}

/// Only the admin token reads the audit log; without `ADMIN_TOKEN` the
/// endpoint does not exist.
async fn non_admins_are_refused(db: Db) {
    let app = app(db).await;
    let alice = app.register("alice").await;
    let r = app.get(&alice.access, "/api/v1/admin/audit").await;
    assert_eq!((r.status, r.error_code()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let r = app.send(app.http.get(app.url("/api/v1/admin/audit"))).await;
    assert_eq!((r.status, r.error_code()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    // The refusals did not break anything: the admin still reads, alice
    // still works.
    assert_eq!(admin_get(&app, "").await.status, StatusCode::OK);
    assert_eq!(app.get(&alice.access, "/api/v1/me").await.status, StatusCode::OK);

    let off = spawn_app_with(db, |_| {}).await;
    let r = off.get(ADMIN_TOKEN, "/api/v1/admin/audit").await;
    assert_eq!((r.status, r.error_code()), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(off.send(off.http.get(off.url("/healthz"))).await.status, StatusCode::OK);
}

/// The export holds the records where the user is actor or target, and
/// none of anyone else's.
async fn export_includes_own_records_only(db: Db) {
    let app = app(db).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let login = |s: &Session, pw: &str| {
        app.http.post(app.url("/api/v1/auth/login")).json(&json!({"email": s.email, "password": pw}))
    };
    from(&app, "198.51.100.1", login(&alice, "correct horse battery")).await;
    from(&app, "198.51.100.2", login(&alice, "not her password")).await;
    from(&app, "198.51.100.3", login(&bob, "correct horse battery")).await;
    let ban = format!("/api/v1/admin/users/{}/ban", bob.user_id);
    from(&app, "198.51.100.4", app.http.post(app.url(&ban)).bearer_auth(ADMIN_TOKEN)).await;

    let r = app.get(&alice.access, "/api/v1/me/export").await;
    assert_eq!(r.status, StatusCode::OK);
    let got: Vec<Rec> = r.body["audit"].as_array().expect("audit in the export").iter().map(rec).collect();
    // The failed login's address is whoever tried, not Alice's.
    let failed = (None, Some(alice.user_id.clone()), "login_failed".into(), None);
    assert_eq!(got, vec![by(&alice, "login_succeeded", "198.51.100.1"), failed]);
}

/// What an operator did to a user: disconnect, ban or moderation delete.
#[derive(Clone, Copy)]
enum OperatorAction {
    Disconnect,
    Ban,
    DeleteMessage,
}

/// After an operator acts on Alice, her export shows the record (action,
/// target, time) without the operator's address, and keeps the address of
/// her own login.
async fn export_hides_the_operators_address(db: Db, action: OperatorAction) {
    let app = app(db).await;
    let alice = app.register("alice").await;
    let login = app.http.post(app.url("/api/v1/auth/login"));
    let r = from(&app, "198.51.100.1", login.json(&json!({"email": alice.email, "password": "correct horse battery"})))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let operator = "203.0.113.77";
    let admin = |m: reqwest::Method, path: String| app.http.request(m, app.url(&path)).bearer_auth(ADMIN_TOKEN);
    let name = match action {
        OperatorAction::Disconnect => {
            let path = format!("/api/v1/admin/users/{}/disconnect", alice.user_id);
            let r = from(&app, operator, admin(reqwest::Method::POST, path).json(&json!({}))).await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
            "admin_disconnect"
        }
        OperatorAction::Ban => {
            let path = format!("/api/v1/admin/users/{}/ban", alice.user_id);
            assert_eq!(
                from(&app, operator, admin(reqwest::Method::POST, path.clone())).await.status,
                StatusCode::NO_CONTENT
            );
            // Lifted again so that she can ask for her export.
            assert_eq!(from(&app, operator, admin(reqwest::Method::DELETE, path)).await.status, StatusCode::NO_CONTENT);
            "ban"
        }
        OperatorAction::DeleteMessage => {
            let room = app.create_room(&alice, "mine", &[]).await;
            let mut ws = crate::ws::client::WsClient::connect(&app, &alice.access).await;
            ws.join(&room, None).await;
            ws.send_msg(&room, "m1", "hello").await;
            assert_eq!(ws.next_of("ack").await["seq"], 1);
            let path = format!("/api/v1/admin/rooms/{room}/messages/1");
            let r = from(&app, operator, admin(reqwest::Method::DELETE, path)).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            "message_deleted"
        }
    };

    // The operator's record names Alice, with the operator's address.
    let records: Vec<Rec> = all_records(&app).await.iter().map(rec).collect();
    assert!(records.contains(&about(Some(&alice), name, operator)), "{records:?}");

    let r = app.get(&alice.access, "/api/v1/me/export").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let got: Vec<Rec> = r.body["audit"].as_array().expect("audit in the export").iter().map(rec).collect();
    assert!(got.contains(&by(&alice, "login_succeeded", "198.51.100.1")), "her own address stays: {got:?}");
    assert!(got.contains(&(None, Some(alice.user_id.clone()), name.into(), None)), "{got:?}");
    assert!(!r.body.to_string().contains(operator), "the operator's address is in her export: {}", r.body["audit"]);
}

async fn export_hides_the_address_of_a_disconnect(db: Db) {
    export_hides_the_operators_address(db, OperatorAction::Disconnect).await;
}

async fn export_hides_the_address_of_a_ban(db: Db) {
    export_hides_the_operators_address(db, OperatorAction::Ban).await;
}

async fn export_hides_the_address_of_a_moderation_delete(db: Db) {
    export_hides_the_operators_address(db, OperatorAction::DeleteMessage).await;
}

/// The retention purge deletes records older than the retention and keeps
/// the rest; the database refuses to delete a fresh record otherwise.
async fn retention_purge_removes_old_records(db: Db) {
    let app = app(db).await;
    let alice = app.register("alice").await;
    from(&app, "198.51.100.1", app.http.post(app.url("/api/v1/auth/logout")).bearer_auth(&alice.access)).await;
    let mut c = raw(&app).await;
    let day = 86_400_000_i64;
    let now = chatgw::clock::now_ms();
    for age in [400 * day, 3 * day] {
        sqlx::query(
            "INSERT INTO audit_log (at, actor_id, target_id, action, client_addr) VALUES ($1, NULL, $2, 'ban', NULL)",
        )
        .bind(now - age)
        .bind(&alice.user_id)
        .execute(&mut c)
        .await
        .unwrap();
    }
    assert_eq!(raw_rows(&app).await.len(), 3);

    // A year (the default) takes the 400-day-old one.
    assert_eq!(chatgw::startup::purge_audit_log(&app.store, Duration::from_secs(365 * 86_400)).await.unwrap(), 1);
    assert_eq!(raw_rows(&app).await.len(), 2);
    // A day takes the 3-day-old one and keeps today's logout.
    assert_eq!(chatgw::startup::purge_audit_log(&app.store, Duration::from_secs(86_400)).await.unwrap(), 1);
    let left: Vec<Rec> = all_records(&app).await.iter().map(rec).collect();
    assert_eq!(left, vec![by(&alice, "logout", "198.51.100.1")]);

    // Nothing else deletes a fresh record, not even raw SQL.
    assert!(sqlx::query("DELETE FROM audit_log").execute(&mut c).await.is_err(), "fresh records deleted");
    assert_eq!(raw_rows(&app).await.len(), 1);
    // The retention variable is read: 0 keeps forever.
    let vars = |d: &str| {
        let mut v = crate::helpers::base_vars("sqlite://unused.db");
        v.insert("AUDIT_RETENTION_DAYS".into(), d.into());
        chatgw::config::Config::from_vars(&v)
    };
    assert_eq!(vars("0").unwrap().audit_retention, None);
    assert_eq!(vars("30").unwrap().audit_retention, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(vars("-1").err().unwrap().var, "AUDIT_RETENTION_DAYS");
}

/// The database refuses UPDATE (and on PostgreSQL TRUNCATE) on the table.
async fn the_database_refuses_updates(db: Db) {
    let app = app(db).await;
    let alice = app.register("alice").await;
    from(&app, "198.51.100.1", app.http.post(app.url("/api/v1/auth/logout")).bearer_auth(&alice.access)).await;
    let before = raw_rows(&app).await;
    assert_eq!(before.len(), 1);
    let mut c = raw(&app).await;
    for sql in [
        "UPDATE audit_log SET client_addr = '10.9.9.9'",
        "UPDATE audit_log SET action = 'unban', actor_id = NULL",
        "UPDATE audit_log SET at = 0",
    ] {
        let e = sqlx::query(sql).execute(&mut c).await.expect_err(sql);
        assert!(e.to_string().contains("append-only"), "{sql}: {e}");
    }
    if db == Db::Postgres {
        let e = sqlx::query("TRUNCATE audit_log").execute(&mut c).await.expect_err("truncate");
        assert!(e.to_string().contains("append-only"), "{e}");
    }
    assert_eq!(raw_rows(&app).await, before);
}

/// An audit write that fails does not fail the action nor leak the cause:
/// it is counted in `chatgw_db_errors_total{source="audit"}`.
async fn a_failed_audit_write_is_counted_not_returned(db: Db) {
    let app = app(db).await;
    let alice = app.register("alice").await;
    let mut c = raw(&app).await;
    sqlx::query("DROP TABLE audit_log").execute(&mut c).await.unwrap();
    let r = from(&app, "198.51.100.1", app.http.post(app.url("/api/v1/auth/logout")).bearer_auth(&alice.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let m = scrape(&app).await;
    assert_eq!(m.get("chatgw_db_errors_total{source=\"audit\"}"), Some(&1.0));
    assert_eq!(m.get("chatgw_db_errors_total{source=\"http\"}"), Some(&0.0));
    assert_eq!(app.get(&alice.access, "/api/v1/me").await.status, StatusCode::UNAUTHORIZED, "the logout took effect");
}

/// `chatgw admin audit` pages and filters like the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_command_reads_the_log() {
    let app = app(Db::Sqlite).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    for s in [&alice, &bob] {
        from(&app, "198.51.100.1", app.http.post(app.url("/api/v1/auth/logout")).bearer_auth(&s.access)).await;
    }
    let run = |args: Vec<String>| {
        let base = app.base.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_chatgw"))
                .arg("admin")
                .arg("--url")
                .arg(base)
                .arg("audit")
                .args(args)
                .env("ADMIN_TOKEN", ADMIN_TOKEN)
                .output()
                .expect("run chatgw admin audit")
        })
    };
    let page = |out: std::process::Output| -> Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON on stdout")
    };
    let all = page(run(vec![]).await.unwrap());
    assert_eq!(all["records"].as_array().unwrap().len(), 2);
    let mine =
        page(run(vec!["--user".into(), alice.user_id.clone(), "--action".into(), "logout".into()]).await.unwrap());
    let recs: Vec<Rec> = mine["records"].as_array().unwrap().iter().map(rec).collect();
    assert_eq!(recs, vec![by(&alice, "logout", "198.51.100.1")]);
    let first = page(run(vec!["--limit".into(), "1".into()]).await.unwrap());
    let before = first["next_before"].as_i64().expect("a next page").to_string();
    let second = page(run(vec!["--limit".into(), "1".into(), "--before".into(), before]).await.unwrap());
    assert_eq!(rec(&second["records"][0]), by(&alice, "logout", "198.51.100.1"));
    assert_eq!(rec(&first["records"][0]), by(&bob, "logout", "198.51.100.1"));
    let out = run(vec!["--action".into(), "nope".into()]).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("400"), "{}", String::from_utf8_lossy(&out.stderr));
}

both_backends!(
    each_action_is_recorded_once_with_ids_only,
    admin_api_pages_and_filters,
    non_admins_are_refused,
    export_includes_own_records_only,
    export_hides_the_address_of_a_disconnect,
    export_hides_the_address_of_a_ban,
    export_hides_the_address_of_a_moderation_delete,
    retention_purge_removes_old_records,
    the_database_refuses_updates,
    a_failed_audit_write_is_counted_not_returned,
);
