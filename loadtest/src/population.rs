//! Who runs: the seed file, and the clients of a scenario (their rooms,
//! roles, targets and tokens) as in the unsplit run, of which a shard keeps
//! its share.

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::cli::{Common, Traffic};
use crate::scenarios::{Client, Population};
use crate::shard::Shard;

/// The parts of `chatgw seed`'s file the scenarios read.
#[derive(serde::Deserialize)]
pub(crate) struct SeedFile {
    pub(crate) users: Vec<SeedUser>,
    pub(crate) rooms: Vec<SeedRoom>,
}
#[derive(serde::Deserialize)]
pub(crate) struct SeedUser {
    pub(crate) token: String,
}
#[derive(serde::Deserialize)]
pub(crate) struct SeedRoom {
    pub(crate) id: String,
    pub(crate) members: Vec<usize>,
}

pub(crate) fn load_seed(path: &PathBuf) -> anyhow::Result<SeedFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).context("parsing the seed file")
}

/// Clients for a traffic scenario: one per (room, member) slot, with their
/// role and target; this shard's share of them, and the number of senders
/// in the whole (unsplit) run.
pub(crate) fn traffic_population(t: &Traffic, run_id: u32) -> anyhow::Result<(Population, usize)> {
    // (token, room, position in the room), in the order of the unsplit run.
    let mut slots: Vec<(Option<String>, String, usize)> = Vec::new();
    match &t.common.seed {
        Some(p) => {
            let seed = load_seed(p)?;
            if seed.rooms.len() < t.rooms {
                bail!("the seed file has {} rooms, {} requested", seed.rooms.len(), t.rooms);
            }
            for room in &seed.rooms[..t.rooms] {
                for (k, &m) in room.members.iter().take(t.room_size).enumerate() {
                    let user = seed.users.get(m).with_context(|| format!("seed: no user {m}"))?;
                    slots.push((Some(user.token.clone()), room.id.clone(), k));
                }
            }
        }
        None => {
            for i in 0..t.rooms * t.room_size {
                slots.push((None, format!("r{run_id:x}-{}", i / t.room_size), i % t.room_size));
            }
        }
    }
    let urls = t.common.url.len();
    let senders_per_room = t.senders_per_room.unwrap_or(usize::MAX);
    let receiver_targets: Vec<usize> = match t.senders_on {
        None => Vec::new(),
        Some(s) if s >= urls => bail!("--senders-on {s}: there are {urls} URL(s), indexed from 0"),
        Some(s) => (0..urls).filter(|u| !t.receivers_elsewhere || *u != s).collect(),
    };
    if t.senders_on.is_some() && receiver_targets.is_empty() {
        bail!("--receivers-elsewhere needs at least two --url");
    }
    let shard = t.common.shard.unwrap_or(Shard::WHOLE);
    let (mut senders, mut receivers) = (0, 0);
    let mut clients = Vec::new();
    for (index, (token, room, k)) in slots.into_iter().enumerate() {
        let sender = k < senders_per_room;
        let target = match t.senders_on {
            None => index % urls,
            Some(s) if sender => s,
            Some(_) => receiver_targets[receivers % receiver_targets.len()],
        };
        if sender {
            senders += 1;
        } else {
            receivers += 1;
        }
        if shard.owns(index) {
            clients.push(Client { index, target, token, rooms: vec![room], sender });
        }
    }
    if t.senders_on.is_some() && receivers == 0 {
        bail!("--senders-on: every client is a sender; set --senders-per-room below the room size");
    }
    Ok((Population { clients }, senders))
}

/// Clients for idle and connect-storm: this shard's share of `n`.
pub(crate) fn connection_population(c: &Common, n: usize) -> anyhow::Result<Population> {
    let mut tokens: Vec<Option<String>> = match &c.seed {
        Some(p) => {
            let seed = load_seed(p)?;
            if seed.users.len() < n {
                bail!("the seed file has {} users, {n} requested", seed.users.len());
            }
            seed.users.into_iter().take(n).map(|u| Some(u.token)).collect()
        }
        None => vec![None; n],
    };
    let shard = c.shard.unwrap_or(Shard::WHOLE);
    let clients = (0..n)
        .filter(|i| shard.owns(*i))
        .map(|index| Client { index, target: index % c.url.len(), token: tokens[index].take(), ..Default::default() })
        .collect();
    Ok(Population { clients })
}
