//! schemathesis (PyPI) against the served OpenAPI document of a real
//! gateway: generated valid and invalid requests to every operation, and
//! every answer checked: no 5xx, a documented status, the documented
//! content type, and a body that matches the documented schema.
//!
//! The pinned CLI comes from `tests/schemathesis/install.sh` (a venv under
//! `target/`), or from `SCHEMATHESIS` when set. Budget: `EXAMPLES` cases per
//! operation and phase (`SCHEMATHESIS_EXAMPLES` overrides it), with a fixed
//! seed (`SCHEMATHESIS_SEED` overrides it): about a minute on two cores.
//!
//! One worker (`--workers 1`): with two, the tool's threads ran Hypothesis
//! at once, and CPython (3.11, 3.12) keeps the AST constructor's recursion
//! depth per interpreter, not per thread, so two threads building ASTs
//! together (Hypothesis parses source to describe lambdas) could stop the
//! run with "SystemError: AST constructor recursion depth mismatch", an
//! error of the tool, not an answer of ours. One worker runs the same cases
//! and checks, in an order the seed alone decides.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::helpers::{Db, Session, TestApp, spawn_app_with};
use crate::operators::ADMIN_TOKEN;
use crate::ws::client::WsClient;

/// Test cases per operation in each phase.
const EXAMPLES: &str = "25";
/// Worker threads of `st run`: one, see the module's doc.
const WORKERS: &str = "1";
/// The checks every answer must pass.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `st` command: `SCHEMATHESIS`, or the pinned version, installed when
/// missing. Never skipped: a missing CLI fails the test.
fn cli() -> PathBuf {
    if let Some(p) = std::env::var_os("SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let out = std::process::Command::new(repo().join("tests/schemathesis/install.sh"))
        .output()
        .expect("tests/schemathesis/install.sh runs");
    assert!(
        out.status.success(),
        "installing schemathesis failed (python3 with venv and PyPI are needed):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).expect("a path").trim())
}

/// One `st run` against the app with `token`, narrowed by `filters`;
/// panics with schemathesis's report when any check failed.
async fn run(st: &Path, app: &TestApp, token: &str, ids: &Ids, filters: &[&str]) {
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let examples = std::env::var("SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| EXAMPLES.into());
    let report = tempfile::tempdir().expect("report dir");
    let started = Instant::now();
    let config = report.path().join("schemathesis.toml");
    std::fs::write(&config, ids.config()).expect("config written");
    let out = tokio::process::Command::new(st)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(app.url("/api/v1/openapi.json"))
        .args(["--url", &app.base, "--checks", CHECKS, "--max-examples", &examples, "--seed", &seed])
        .args(["--phases", "examples,coverage,fuzzing", "--workers", WORKERS, "--request-timeout", "30"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .arg("--report-dir")
        .arg(report.path())
        .args(filters)
        .env("NO_COLOR", "1")
        // Its cache goes to the report's temporary directory, not the repo.
        .current_dir(report.path())
        .kill_on_drop(true)
        .output()
        .await
        .expect("st runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.rsplit_once("WARNINGS").or_else(|| stdout.rsplit_once("SUMMARY")).map_or(&*stdout, |(_, s)| s);
    eprintln!("st run {filters:?}: {:.1} s{summary}", started.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "schemathesis found failures ({filters:?}, seed {seed}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really tested something.
    assert!(stdout.contains("Tested:"), "no summary from schemathesis:\n{stdout}");
}

/// Ids that exist in the gateway, handed to schemathesis's dictionaries.
struct Ids {
    room: String,
    empty_room: String,
    user: String,
    other: String,
}

impl Ids {
    /// schemathesis settings: half the generated path ids and member ids are
    /// real ones, so that the 200 answers (room detail, history, membership)
    /// are checked against their schemas too, not only the 404s.
    fn config(&self) -> String {
        let Ids { room, empty_room, user, other } = self;
        format!(
            r#"[dictionaries.ids]
values = ["{room}", "{empty_room}", "{user}", "{other}"]

[dictionaries.users]
values = ["{user}", "{other}"]

[parameters]
"path.id" = {{ dictionary = "ids", probability = 0.5 }}
"path.user_id" = {{ dictionary = "users", probability = 0.5 }}
"body.user_id" = {{ dictionary = "users", probability = 0.5 }}
"body.members[*]" = {{ dictionary = "users", probability = 0.5 }}
"#
        )
    }
}

/// Alice owns a room with Bob and a few messages in it, and an empty room.
async fn seed(app: &TestApp) -> (Session, Ids) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&alice, "general", &[&bob]).await;
    let empty_room = app.create_room(&alice, "quiet", &[]).await;
    let mut ws = WsClient::connect(app, &alice.access).await;
    ws.join(&room, None).await;
    for i in 0..3 {
        ws.send_msg(&room, &format!("seed-{i}"), &format!("message {i}")).await;
        ws.next_of("ack").await;
    }
    ws.close().await;
    let ids = Ids { room, empty_room, user: alice.user_id.clone(), other: bob.user_id };
    (alice, ids)
}

crate::both_backends!(every_answer_matches_the_openapi_document);

async fn every_answer_matches_the_openapi_document(db: Db) {
    let st = cli();
    let app = spawn_app_with(db, |v| {
        v.insert("ADMIN_TOKEN".into(), ADMIN_TOKEN.into());
    })
    .await;
    let (alice, ids) = seed(&app).await;

    // Everything a signed-in user does, except what ends the session.
    let user_ops =
        ["--exclude-tag", "admin", "--exclude-operation-id", "logout", "--exclude-operation-id", "delete_me"];
    run(&st, &app, &alice.access, &ids, &user_ops).await;
    // The operator's endpoints, with the admin token (the Sentry test is
    // left out: it raises a real panic on purpose).
    let admin_ops = ["--include-tag", "admin", "--exclude-operation-id", "sentry_test"];
    run(&st, &app, ADMIN_TOKEN, &ids, &admin_ops).await;
    // Logout and erasure, last, on a user of their own.
    let carol = app.register("carol").await;
    run(&st, &app, &carol.access, &ids, &["--include-operation-id", "logout", "--include-operation-id", "delete_me"])
        .await;

    // Still healthy and serving (the admin run may have banned Alice).
    let dave = app.register("dave").await;
    let r = app.get(&dave.access, "/api/v1/me").await;
    assert_eq!(r.status, reqwest::StatusCode::OK, "{}", r.body);
    let r = app.send(app.http.get(app.url("/readyz"))).await;
    assert_eq!(r.status, reqwest::StatusCode::OK, "{}", r.body);
}
