//! `chatgw seed`: bootstraps users, tokens and rooms for load tests.
//!
//! Users are inserted directly (one shared argon2 hash of a random password,
//! so nobody can log in as them) with one session each, and access tokens are
//! minted with the configured signing key: the gateway accepts them like any
//! other. Never point this at a production database.

use std::time::Duration;

use serde::Serialize;

use crate::auth::{JwtKeys, Passwords};
use crate::config::Config;
use crate::db::Store;

/// Bounds on one `chatgw seed`.
pub const SEED_MAX_USERS: usize = 1_000_000;
pub const SEED_MAX_MEMBERSHIPS: usize = 10_000_000;

/// What to create.
#[derive(Debug, Clone, clap::Args)]
pub struct SeedArgs {
    /// Number of users.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Number of rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Members per room (users are assigned round-robin).
    #[arg(long, default_value_t = 100)]
    pub room_size: usize,
    /// Lifetime of the minted access tokens.
    #[arg(long, default_value_t = 3600)]
    pub token_ttl_secs: u64,
    /// Where to write the JSON (users with tokens, rooms with member indices).
    #[arg(long, default_value = "seed.json")]
    pub out: std::path::PathBuf,
}

/// The file the `loadtest` harness reads.
#[derive(Serialize)]
pub struct SeedFile {
    pub users: Vec<SeedFileUser>,
    pub rooms: Vec<SeedFileRoom>,
}

#[derive(Serialize)]
pub struct SeedFileUser {
    pub id: String,
    pub token: String,
}

#[derive(Serialize)]
pub struct SeedFileRoom {
    pub id: String,
    /// Indices into `users`.
    pub members: Vec<usize>,
}

/// Runs the seeding against `config`'s database and key.
///
/// # Errors
/// Database or key errors, or an impossible plan.
pub async fn run(config: &Config, args: &SeedArgs) -> anyhow::Result<SeedFile> {
    anyhow::ensure!(
        args.users > 0 && args.room_size > 0 && args.room_size <= args.users,
        "need 0 < room-size <= users"
    );
    // A bound on what one command writes (and holds in memory for the JSON):
    // enough for any load test this harness runs.
    anyhow::ensure!(
        args.users <= SEED_MAX_USERS && args.rooms.saturating_mul(args.room_size) <= SEED_MAX_MEMBERSHIPS,
        "at most {SEED_MAX_USERS} users and {SEED_MAX_MEMBERSHIPS} memberships (rooms x room-size) per seed"
    );
    use secrecy::ExposeSecret;
    let store = Store::connect(config.database_url.expose_secret(), config.db_max_connections).await?;
    store.migrate().await?;
    let keys = JwtKeys::from_config(&config.jwt)?;
    let prefix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let hash = Passwords::new(1, 1).hash(crate::auth::tokens::new_token("")).await?;
    let users = store.seed_users(&prefix, args.users, &hash).await?;
    let plan: Vec<Vec<usize>> =
        (0..args.rooms).map(|r| (0..args.room_size).map(|k| (r * args.room_size + k) % args.users).collect()).collect();
    let member_ids: Vec<Vec<String>> = plan.iter().map(|m| m.iter().map(|&i| users[i].id.clone()).collect()).collect();
    let room_ids = store.seed_rooms(&prefix, &member_ids).await?;
    let ttl = Duration::from_secs(args.token_ttl_secs);
    let users = users
        .iter()
        .map(|u| Ok(SeedFileUser { id: u.id.clone(), token: keys.issue_with_ttl(&u.id, &u.session_id, ttl)? }))
        .collect::<anyhow::Result<Vec<_>>>()?;
    store.close().await;
    Ok(SeedFile {
        users,
        rooms: room_ids.into_iter().zip(plan).map(|(id, members)| SeedFileRoom { id, members }).collect(),
    })
}
