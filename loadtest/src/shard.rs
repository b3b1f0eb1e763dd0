//! Splitting one run over several generator processes: `--shard i/n` picks
//! this process's share of the clients, and `--sync-dir` makes the shards
//! meet at the points where the run's accounting needs them together.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// `i/n`: this process runs the clients whose index `% n == i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Whether the client with this index (in the unsplit population) is ours.
    pub fn owns(&self, client: usize) -> bool {
        client % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let parse = || {
            let (i, n) = s.split_once('/')?;
            Some(Shard { index: i.trim().parse().ok()?, count: n.trim().parse().ok()? })
        };
        match parse() {
            Some(sh) if sh.count > 0 && sh.index < sh.count => Ok(sh),
            _ => Err(format!("{s:?}: expected i/n with 0 <= i < n, e.g. 0/2")),
        }
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// A directory all shards of one run share (a fresh one per run). At each
/// rendezvous a shard writes `<phase>.<i>` holding a number, then waits
/// until every shard's file for that phase exists.
pub struct SyncDir {
    dir: PathBuf,
    shard: Shard,
    /// Guard: how long to wait for the other shards at one rendezvous.
    timeout: Duration,
}

impl SyncDir {
    pub fn new(dir: PathBuf, shard: Shard) -> anyhow::Result<SyncDir> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(SyncDir { dir, shard, timeout: Duration::from_secs(600) })
    }

    /// Arrives at `phase` with `value`; returns every shard's value, by shard
    /// index, once all have arrived.
    pub async fn meet(&self, phase: &str, value: u64) -> anyhow::Result<Vec<u64>> {
        let mine = self.dir.join(format!("{phase}.{}", self.shard.index));
        if mine.exists() {
            bail!("{} exists: a previous run used this --sync-dir (use a fresh one per run)", mine.display());
        }
        // Written aside and renamed, so a reader never sees half a number.
        let tmp = self.dir.join(format!(".{phase}.{}.tmp", self.shard.index));
        std::fs::write(&tmp, value.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &mine)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let all: Option<Vec<u64>> = (0..self.shard.count)
                .map(|j| std::fs::read_to_string(self.dir.join(format!("{phase}.{j}"))).ok()?.trim().parse().ok())
                .collect();
            if let Some(all) = all {
                return Ok(all);
            }
            if Instant::now() > deadline {
                bail!("not every shard reached {phase:?} within {:?} (see {})", self.timeout, self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_clients() {
        assert_eq!("1/3".parse::<Shard>().unwrap(), Shard { index: 1, count: 3 });
        for bad in ["3/3", "1/0", "1", "a/2", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let shards: Vec<Shard> = (0..3).map(|i| Shard { index: i, count: 3 }).collect();
        for c in 0..100 {
            assert_eq!(shards.iter().filter(|s| s.owns(c)).count(), 1);
        }
    }

    #[tokio::test]
    async fn shards_meet_and_see_each_others_values() {
        let dir = tempfile::tempdir().unwrap();
        let a = SyncDir::new(dir.path().into(), Shard { index: 0, count: 2 }).unwrap();
        let b = SyncDir::new(dir.path().into(), Shard { index: 1, count: 2 }).unwrap();
        let (x, y) = tokio::join!(a.meet("ready", 5), b.meet("ready", 9));
        assert_eq!(x.unwrap(), vec![5, 9]);
        assert_eq!(y.unwrap(), vec![5, 9]);
        assert!(a.meet("ready", 5).await.is_err(), "a used directory is refused");
    }
}
