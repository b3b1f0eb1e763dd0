//! `chatgw backup`: an online copy of the embedded database, taken from a
//! real gateway process under a steady write load, restored by starting a
//! new gateway on it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::process::Command;

use crate::chaos::{Acked, Addrs, sender};
use crate::helpers::{Db, TestApp, eventually};
use crate::procs::Gateway;

const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";

/// A gateway on the SQLite file at `db`, with limits out of a load's way.
async fn gateway_on(db: &Path) -> Gateway {
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", format!("sqlite://{}", db.display())),
        ("JWT_SECRET", SECRET.into()),
        ("LOGIN_ATTEMPTS_PER_MINUTE", "10000".into()),
        ("WS_SEND_PER_SEC", "10000".into()),
        ("WS_SEND_BURST", "10000".into()),
        ("WS_EVENTS_PER_SEC", "10000".into()),
        ("WS_EVENTS_BURST", "10000".into()),
        ("SHUTDOWN_TIMEOUT_SECS", "10".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Gateway::start(&env).await
}

/// Runs `chatgw backup --out` with `database_url`; returns (success, stdout, stderr).
async fn backup(database_url: &str, out: &Path) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_chatgw"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .arg("backup")
        .arg("--out")
        .arg(out)
        .output()
        .await
        .expect("run chatgw backup");
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

/// The whole history of `room`, paged forward by seq.
async fn history(app: &TestApp, token: &str, room: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let r = app.get(token, &format!("/api/v1/rooms/{room}/messages?after_seq={after}&limit=200")).await;
        assert_eq!(r.status, StatusCode::OK, "history: {}", r.body);
        let page = r.body["messages"].as_array().unwrap().clone();
        let Some(last) = page.last() else { return all };
        after = last["seq"].as_i64().unwrap();
        all.extend(page);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_under_load_restores_every_message_acked_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.db");
    let mut gw = gateway_on(&live).await;
    let live_url = format!("sqlite://{}", live.display());
    let app = TestApp::remote(gw.addr, &live_url, Db::Sqlite).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let rooms = [app.create_room(&alice, "one", &[&bob]).await, app.create_room(&bob, "two", &[&alice]).await];

    // Three senders (two sharing a room) at a steady pace, each message
    // recorded with its seq when acknowledged.
    let addrs = Addrs::new(vec![gw.addr]);
    let acked: Vec<Acked> = (0..3).map(|_| Arc::new(Mutex::new(BTreeMap::new()))).collect();
    let plan = [(&alice, &rooms[0]), (&bob, &rooms[0]), (&alice, &rooms[1])];
    let load: Vec<_> = plan
        .iter()
        .zip(&acked)
        .enumerate()
        .map(|(k, ((who, room), acked))| {
            let ids = (0..100_000).map(|i| format!("s{k}-{i}")).collect();
            tokio::spawn(sender(
                addrs.clone(),
                0,
                who.access.clone(),
                (*room).clone(),
                ids,
                Duration::from_millis(10),
                acked.clone(),
            ))
        })
        .collect();
    let count = || acked.iter().map(|a| a.lock().unwrap().len()).sum::<usize>();
    eventually(Duration::from_secs(30), || async { (count() >= 150).then_some(()) }).await;

    // Everything acknowledged before the backup starts must be in it.
    let before: Vec<BTreeMap<String, i64>> = acked.iter().map(|a| a.lock().unwrap().clone()).collect();
    let out = dir.path().join("backup.db");
    let (ok, stdout, stderr) = backup(&live_url, &out).await;
    assert!(ok, "backup failed: {stderr}");
    let during = count();
    assert!(stdout.contains(&out.display().to_string()) && stdout.contains("bytes"), "reports what it wrote: {stdout}");
    // The load kept going through the backup and after it.
    let n_before = before.iter().map(BTreeMap::len).sum::<usize>();
    eventually(Duration::from_secs(30), || async { (count() > during.max(n_before) + 50).then_some(()) }).await;
    for t in &load {
        t.abort();
    }
    assert!(gw.terminate().await, "the live gateway exits cleanly");
    drop(app);
    assert!(
        !std::fs::read_dir(dir.path()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains("partial")),
        "no temporary file left"
    );

    // Restore: a new gateway on the backup file, with the same key.
    let restored = dir.path().join("restored.db");
    std::fs::copy(&out, &restored).unwrap();
    let gw2 = gateway_on(&restored).await;
    let app2 = TestApp::remote(gw2.addr, &format!("sqlite://{}", restored.display()), Db::Sqlite).await;
    let ready = app2.send(app2.http.get(app2.url("/readyz"))).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    // Sessions are in the backup: the old access token still works.
    let mut got: HashMap<(String, String), i64> = HashMap::new();
    for room in &rooms {
        let msgs = history(&app2, &alice.access, room).await;
        let seqs: Vec<i64> = msgs.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "room {room}: gap-free seqs 1..n");
        for m in msgs {
            let id = m["client_msg_id"].as_str().unwrap().to_owned();
            assert_eq!(m["body"], format!("body of {id}"));
            got.insert((room.clone(), id), m["seq"].as_i64().unwrap());
        }
    }
    for ((_, room), before) in plan.iter().zip(&before) {
        for (id, seq) in before {
            assert_eq!(got.get(&((*room).clone(), id.clone())), Some(seq), "{id} acked before the backup as seq {seq}");
        }
    }
    assert!(got.len() >= n_before, "{} restored, {n_before} acked before", got.len());
    eprintln!("acked before the backup: {n_before}; in the backup: {}; acked in all: {}", got.len(), count());
}

#[tokio::test]
async fn backup_refuses_an_existing_file_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    // A real database, made by a gateway that then stops.
    let mut gw = gateway_on(&db).await;
    assert!(gw.terminate().await);
    let url = format!("sqlite://{}", db.display());

    let out = dir.path().join("taken.db");
    std::fs::write(&out, b"an older backup").unwrap();
    let (ok, _, stderr) = backup(&url, &out).await;
    assert!(!ok, "overwrote an existing file");
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), b"an older backup", "left untouched");

    let (ok, _, stderr) = backup("postgres://postgres@127.0.0.1:5432/postgres", &dir.path().join("pg.db")).await;
    assert!(!ok, "a PostgreSQL URL is refused");
    assert!(stderr.contains("pg_dump") && stderr.contains("Backups and restore"), "points at the README: {stderr}");
    assert!(!dir.path().join("pg.db").exists());

    // The same command on a free name succeeds.
    let (ok, stdout, stderr) = backup(&url, &dir.path().join("fresh.db")).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("fresh.db"), "{stdout}");
}
