//! The types every part of the reconnect storm shares: the run's phases,
//! what one client holds and did, and the handles all clients share.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::client::Target;

/// Where the run is; every client watches it.
#[derive(Clone, Debug)]
pub(super) enum Phase {
    Connect,
    /// Pre-storm traffic acked: the last acked seq per room.
    Settle(Arc<Vec<i64>>),
    Close,
    Reconnect,
    Done,
}

/// One room as a client holds it.
#[derive(Clone, Debug, Default)]
pub(super) struct Held {
    pub(super) room: usize,
    pub(super) last: i64,
    pub(super) epoch: Option<String>,
}

/// What one client did.
#[derive(Default, Debug)]
pub(super) struct Outcome {
    pub(super) connect_error: Option<String>,
    pub(super) pre_gaps: u64,
    pub(super) pre_dups: u64,
    pub(super) caught_up: bool,
    /// (room, stored seq, received seqs in order, joined).
    pub(super) rooms: Vec<(usize, i64, Vec<i64>, bool)>,
    pub(super) resumed: bool,
    pub(super) resume_error: Option<String>,
    pub(super) attempts: u64,
    pub(super) refusals: BTreeMap<String, u64>,
    pub(super) pre_refusals: BTreeMap<String, u64>,
    pub(super) drops: BTreeMap<String, u64>,
    pub(super) room_errors: BTreeMap<String, u64>,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) resets: u64,
    pub(super) history_gone: u64,
    pub(super) syncs: u64,
    pub(super) started: Option<Instant>,
    pub(super) synced: Option<Instant>,
}

/// What every client of the run shares.
pub(super) struct Shared {
    pub(super) target: Target,
    pub(super) source_ips: u8,
    pub(super) room_ids: Vec<String>,
    pub(super) room_index: HashMap<String, usize>,
    pub(super) permits: Semaphore,
    /// Clients past their phase-1 sync (ok or not), caught up, closed,
    /// finished with the storm's resume.
    pub(super) connected: AtomicUsize,
    pub(super) settled: AtomicUsize,
    pub(super) closed: AtomicUsize,
    pub(super) resumed: AtomicUsize,
    pub(super) abrupt: bool,
    pub(super) frame_timeout: Duration,
    pub(super) deadline_secs: f64,
}

impl Shared {
    /// Client `i`'s source address (spread over `--source-ips`).
    pub(super) fn source(&self, i: usize) -> Option<IpAddr> {
        (self.source_ips > 1).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % self.source_ips as usize) as u8)))
    }
}
