//! `chatgw admin …`: the admin API from the command line, so an operator
//! needs no curl recipes. It talks HTTP to a running instance (its
//! `LISTEN_ADDR`, or `--url`) with `ADMIN_TOKEN` from the environment, and
//! prints the JSON answer. It reads no other configuration: it runs from
//! an operator's shell as well as inside the container.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct AdminArgs {
    /// Base URL of the instance to ask (default: http:// + LISTEN_ADDR, or
    /// http://127.0.0.1:8080).
    #[arg(long, env = "CHATGW_URL")]
    url: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// This instance's numbers: connections, rooms, queues, bus, database.
    Stats,
    /// A user's live connections on every instance.
    Connections { user_id: String },
    /// Close every socket of a user on every instance.
    Disconnect {
        user_id: String,
        /// Close code: 4000-4999, 1000, 1001 or 1008.
        #[arg(long, default_value_t = 4000)]
        code: u16,
        #[arg(long, default_value = "disconnected by an operator")]
        reason: String,
    },
    /// Ban a user (refused at login and handshake; open sockets close 4003).
    Ban { user_id: String },
    /// Lift a ban.
    Unban { user_id: String },
    /// The audit log, newest first (one page; `--before` the answer's
    /// `next_before` for the next).
    Audit {
        /// Only records where this user is the actor or the target.
        #[arg(long)]
        user: Option<String>,
        /// Only this action, e.g. login_failed.
        #[arg(long)]
        action: Option<String>,
        /// Records older than this id.
        #[arg(long)]
        before: Option<i64>,
        /// Records per page (1-1000, default 100).
        #[arg(long)]
        limit: Option<i64>,
    },
}

/// Runs one admin command; the answer goes to stdout.
///
/// # Errors
/// `ADMIN_TOKEN` is unset, the instance is unreachable, or it refused.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let token = std::env::var("ADMIN_TOKEN").context("ADMIN_TOKEN must be set to the instance's admin token")?;
    let base = args.url.unwrap_or_else(|| {
        let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
        format!("http://{addr}")
    });
    let base = base.trim_end_matches('/');
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
    let user_path = |id: &str, rest: &str| format!("{base}/api/v1/admin/users/{id}/{rest}");
    let req = match &args.command {
        AdminCommand::Stats => http.get(format!("{base}/api/v1/admin/stats")),
        AdminCommand::Connections { user_id } => http.get(user_path(user_id, "connections")),
        AdminCommand::Disconnect { user_id, code, reason } => {
            http.post(user_path(user_id, "disconnect")).json(&serde_json::json!({"code": code, "reason": reason}))
        }
        AdminCommand::Ban { user_id } => http.post(user_path(user_id, "ban")),
        AdminCommand::Unban { user_id } => http.delete(user_path(user_id, "ban")),
        AdminCommand::Audit { user, action, before, limit } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            query.extend(user.iter().map(|u| ("user_id", u.clone())));
            query.extend(action.iter().map(|a| ("action", a.clone())));
            query.extend(before.iter().map(|b| ("before", b.to_string())));
            query.extend(limit.iter().map(|l| ("limit", l.to_string())));
            http.get(format!("{base}/api/v1/admin/audit")).query(&query)
        }
    };
    let resp = req.bearer_auth(token).send().await.with_context(|| format!("reaching {base}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let pretty = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(body);
    if !status.is_success() {
        bail!("{status}: {pretty}");
    }
    if pretty.is_empty() {
        println!("ok ({status})");
    } else {
        println!("{pretty}");
    }
    Ok(())
}
