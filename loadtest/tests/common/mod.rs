//! What the harness's test binaries share: a gateway configuration fit for
//! load (limits raised), on a fresh SQLite file, with a seed file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chatgw::cli::seed::SeedArgs;
use chatgw::config::Config;

/// Variables of a test gateway on `dir/lt.db`, with limits that never get
/// in a load run's way.
pub fn gateway_vars(dir: &Path) -> HashMap<String, String> {
    [
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ("DATABASE_URL", format!("sqlite://{}/lt.db", dir.display())),
        ("JWT_SECRET", "loadtest-secret-0123456789-abcdefghijklmnop".to_owned()),
        ("WS_SEND_PER_SEC", "1000".to_owned()),
        ("WS_SEND_BURST", "1000".to_owned()),
        ("WS_EVENTS_PER_SEC", "1000".to_owned()),
        ("WS_EVENTS_BURST", "1000".to_owned()),
        ("WS_HANDSHAKES_PER_IP_PER_SEC", "100000".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Seeds users, rooms and tokens (`chatgw seed`) into `dir/seed.json`.
pub async fn seed(config: &Config, dir: &Path, users: usize, rooms: usize, room_size: usize) -> PathBuf {
    let seed = dir.join("seed.json");
    let args = SeedArgs { users, rooms, room_size, token_ttl_secs: 600, out: seed.clone() };
    let file = chatgw::cli::seed::run(config, &args).await.unwrap();
    std::fs::write(&seed, serde_json::to_vec(&file).unwrap()).unwrap();
    seed
}
