//! The reconnect storm's accounting and report: per (client, room) what
//! arrived on resume against what had to, and the figures of the run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde::Serialize;

use super::shared::Outcome;

/// What one client got for one room on resume, against what it had to get.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Seqs in (stored, last].
    pub expected: u64,
    /// Distinct expected seqs received.
    pub delivered: u64,
    /// Expected, never received.
    pub lost: u64,
    /// Received again, or at/below the stored seq.
    pub duplicated: u64,
    /// Received after a higher seq of the same room.
    pub reordered: u64,
    /// Above the room's last acknowledged seq (nobody sent it).
    pub unexpected: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.unexpected += o.unexpected;
    }
}

/// Accounts the seqs one client received for one room (in arrival order)
/// against its stored seq and the room's last acknowledged seq.
pub fn tally(stored: i64, last: i64, received: &[i64]) -> Tally {
    let mut t = Tally { expected: (last - stored).max(0) as u64, ..Default::default() };
    let mut seen = BTreeSet::new();
    let mut max = stored;
    for &s in received {
        if s <= stored || !seen.insert(s) {
            t.duplicated += 1;
            continue;
        }
        if s < max {
            t.reordered += 1;
        }
        max = max.max(s);
        if s > last {
            t.unexpected += 1;
        } else {
            t.delivered += 1;
        }
    }
    t.lost = t.expected - t.delivered;
    t
}

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// Nearest-rank percentiles of `v` (milliseconds).
fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |q: f64| (!v.is_empty()).then(|| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]);
    Percentiles { p50_ms: q(0.5), p99_ms: q(0.99), max_ms: v.last().copied() }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub target: String,
    pub clients: usize,
    /// Rooms with at least one client member.
    pub rooms: usize,
    /// (client, room) pairs resumed.
    pub memberships: usize,
    pub concurrency: usize,
    pub source_ips: u8,
    pub abrupt_close: bool,
    pub before_messages_per_room: usize,
    pub storm_messages_per_room: usize,

    /// Phase 1: clients connected and synced, seconds it took, failures.
    pub connected: usize,
    pub connect_secs: f64,
    pub connect_failures: BTreeMap<String, u64>,
    /// Phase 1: refused handshakes / failed attempts by reason (retried).
    pub connect_refusals: BTreeMap<String, u64>,
    /// Phase 2: live deliveries before the storm that skipped or repeated a
    /// seq, and clients that had seen every pre-storm message when the storm
    /// began (the others resume from further back, which is fine).
    pub pre_storm_gaps: u64,
    pub pre_storm_duplicates: u64,
    pub caught_up_before_storm: usize,
    /// Phase 3: messages acknowledged while every client was down.
    pub storm_messages_acked: u64,
    pub write_errors: BTreeMap<String, u64>,
    pub write_secs: f64,

    /// Phase 4.
    pub resumed: usize,
    pub resume_failed: usize,
    pub resume_failures: BTreeMap<String, u64>,
    /// (client, room) pairs that never got their `joined`.
    pub rooms_not_joined: u64,
    /// Messages every (client, room) had to receive on resume, in all.
    pub messages_expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub unexpected: u64,
    /// `reset` and `history_gone` frames (none expected).
    pub resets: u64,
    pub history_gone: u64,
    /// Per-room `error` answers to a `sync`, by code.
    pub room_errors_by_code: BTreeMap<String, u64>,
    /// `error` frames without a room (e.g. `rate_limited` for the `sync`).
    pub errors_by_code: BTreeMap<String, u64>,
    /// Refused handshakes / failed attempts by reason (all retried).
    pub handshake_failures_by_reason: BTreeMap<String, u64>,
    pub handshake_attempts: u64,
    /// Connections lost in the middle of a resume (then resumed again).
    pub resume_drops: BTreeMap<String, u64>,
    /// `sync` frames sent in the storm (more than the clients: retries).
    pub syncs_sent: u64,

    /// First reconnect attempt → last `synced`.
    pub time_to_all_resumed_ms: Option<f64>,
    /// Per client: its first connect attempt → `synced`.
    pub resume: Percentiles,
    /// Per client: the storm's reconnect signal → `synced` (queueing for a
    /// handshake slot included).
    pub resumed_after_signal: Percentiles,

    /// Gateway, KiB: VmRSS just before the sockets close, VmHWM after the
    /// last `synced` (since the storm began if `hwm_reset`, else since the
    /// process started), highest VmRSS sampled every 20 ms during the
    /// storm, VmRSS after the last `synced`.
    pub rss_before_kib: Option<u64>,
    /// VmRSS before the first connection, and once every socket is closed
    /// and the storm's messages are written (just before the reconnect).
    pub rss_idle_kib: Option<u64>,
    pub rss_all_closed_kib: Option<u64>,
    pub rss_hwm_kib: Option<u64>,
    pub hwm_reset: bool,
    pub rss_peak_sampled_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// Gateway CPU seconds from the close to the last `synced`, and of the
    /// reconnect phase alone.
    pub cpu_seconds_storm: Option<f64>,
    pub cpu_seconds_resume: Option<f64>,
    /// Gateway CPU seconds of the first connect-and-sync of every client.
    pub cpu_seconds_connect: Option<f64>,
}

impl Report {
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        for (n, what) in [
            (self.lost, "lost"),
            (self.duplicated, "duplicated"),
            (self.reordered, "reordered"),
            (self.unexpected, "unexpected"),
        ] {
            if n > 0 {
                f.push(format!("{n} messages {what}"));
            }
        }
        if self.rooms_not_joined > 0 {
            f.push(format!("{} (client, room) pairs not joined", self.rooms_not_joined));
        }
        if self.resume_failed > 0 {
            f.push(format!("{} clients did not resume", self.resume_failed));
        }
        if self.connected < self.clients {
            f.push(format!("{} of {} clients connected before the storm", self.connected, self.clients));
        }
        f
    }

    pub fn summary(&self) -> String {
        let mib = |k: Option<u64>| k.map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        format!(
            "reconnect-storm clients={}/{} resumed={} rooms={} expected={} lost={} dup={} reord={} unexp={} \
             all_resumed={}ms resume p50={}ms p99={}ms max={}ms rss_mib before={} peak={} hwm={}{} cpu_s={:.2} \
             refusals={:?} room_errors={:?}",
            self.connected,
            self.clients,
            self.resumed,
            self.rooms,
            self.messages_expected,
            self.lost,
            self.duplicated,
            self.reordered,
            self.unexpected,
            ms(self.time_to_all_resumed_ms),
            ms(self.resume.p50_ms),
            ms(self.resume.p99_ms),
            ms(self.resume.max_ms),
            mib(self.rss_before_kib),
            mib(self.rss_peak_sampled_kib),
            mib(self.rss_hwm_kib),
            if self.hwm_reset { "" } else { "(since start)" },
            self.cpu_seconds_storm.unwrap_or(0.0),
            self.handshake_failures_by_reason,
            self.room_errors_by_code,
        )
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut row = |k: &str, v: String| s.push_str(&format!("  {k:<34} {v}\n"));
        let mib = |k: Option<u64>| k.map_or("-".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        row("scenario", self.scenario.into());
        row("target", self.target.clone());
        row("clients (connected)", format!("{} ({})", self.clients, self.connected));
        row("rooms / memberships", format!("{} / {}", self.rooms, self.memberships));
        row("connect phase", format!("{:.1} s", self.connect_secs));
        if !self.connect_failures.is_empty() {
            row("connect failures", format!("{:?}", self.connect_failures));
        }
        if !self.connect_refusals.is_empty() {
            row("connect refusals (retried)", format!("{:?}", self.connect_refusals));
        }
        row(
            "pre-storm gaps / dups / caught up",
            format!("{} / {} / {}", self.pre_storm_gaps, self.pre_storm_duplicates, self.caught_up_before_storm),
        );
        row("storm messages acked", format!("{} (in {:.1} s)", self.storm_messages_acked, self.write_secs));
        if !self.write_errors.is_empty() {
            row("write errors", format!("{:?}", self.write_errors));
        }
        row(
            "resumed / failed / rooms unjoined",
            format!("{} / {} / {}", self.resumed, self.resume_failed, self.rooms_not_joined),
        );
        if !self.resume_failures.is_empty() {
            row("resume failures", format!("{:?}", self.resume_failures));
        }
        row("messages expected / delivered", format!("{} / {}", self.messages_expected, self.delivered));
        row(
            "lost / dup / reordered / unexp",
            format!("{} / {} / {} / {}", self.lost, self.duplicated, self.reordered, self.unexpected),
        );
        if self.resets + self.history_gone > 0 {
            row("resets / history_gone", format!("{} / {}", self.resets, self.history_gone));
        }
        row("time to all resumed", format!("{} ms", ms(self.time_to_all_resumed_ms)));
        row(
            "resume p50 / p99 / max",
            format!("{} / {} / {} ms", ms(self.resume.p50_ms), ms(self.resume.p99_ms), ms(self.resume.max_ms)),
        );
        row(
            "since signal p50 / p99 / max",
            format!(
                "{} / {} / {} ms",
                ms(self.resumed_after_signal.p50_ms),
                ms(self.resumed_after_signal.p99_ms),
                ms(self.resumed_after_signal.max_ms)
            ),
        );
        row("handshake attempts / syncs", format!("{} / {}", self.handshake_attempts, self.syncs_sent));
        if !self.handshake_failures_by_reason.is_empty() {
            row("handshake failures", format!("{:?}", self.handshake_failures_by_reason));
        }
        if !self.resume_drops.is_empty() {
            row("dropped mid-resume", format!("{:?}", self.resume_drops));
        }
        if !self.room_errors_by_code.is_empty() {
            row("room errors by code", format!("{:?}", self.room_errors_by_code));
        }
        if !self.errors_by_code.is_empty() {
            row("errors by code", format!("{:?}", self.errors_by_code));
        }
        row("server RSS idle / connected", format!("{} / {}", mib(self.rss_idle_kib), mib(self.rss_before_kib)));
        row(
            "server RSS all closed / resumed",
            format!("{} / {}", mib(self.rss_all_closed_kib), mib(self.rss_after_kib)),
        );
        row(
            "server RSS peak sampled / HWM",
            format!(
                "{} / {}{}",
                mib(self.rss_peak_sampled_kib),
                mib(self.rss_hwm_kib),
                if self.hwm_reset { "" } else { " (since process start)" }
            ),
        );
        if let (Some(a), Some(b), Some(c)) = (self.cpu_seconds_connect, self.cpu_seconds_storm, self.cpu_seconds_resume)
        {
            row("server CPU connect / storm / resume", format!("{a:.2} / {b:.2} / {c:.2} s"));
        }
        s
    }
}

/// Folds every client's outcome into `r`: counts by reason, each (client,
/// room) tallied against the room's last acknowledged seq (`acked`), and
/// the resume times (`signal`: when every client was told to reconnect).
pub(super) fn account(r: &mut Report, outcomes: &[Outcome], acked: &[i64], signal: Instant) {
    let mut total = Tally::default();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let (mut resume_ms, mut since_signal_ms) = (Vec::new(), Vec::new());
    let add = |m: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>| {
        for (k, v) in from {
            *m.entry(k.clone()).or_default() += v;
        }
    };
    for o in outcomes {
        add(&mut r.connect_refusals, &o.pre_refusals);
        if let Some(e) = &o.connect_error {
            *r.connect_failures.entry(e.clone()).or_default() += 1;
            continue;
        }
        r.connected += 1;
        r.pre_storm_gaps += o.pre_gaps;
        r.pre_storm_duplicates += o.pre_dups;
        r.caught_up_before_storm += usize::from(o.caught_up);
        if o.resumed {
            r.resumed += 1;
        } else {
            r.resume_failed += 1;
            *r.resume_failures.entry(o.resume_error.clone().unwrap_or_else(|| "?".into())).or_default() += 1;
        }
        for (room, stored, received, joined) in &o.rooms {
            total.add(&tally(*stored, acked[*room], received));
            r.rooms_not_joined += u64::from(!joined);
        }
        r.handshake_attempts += o.attempts;
        r.syncs_sent += o.syncs;
        r.resets += o.resets;
        r.history_gone += o.history_gone;
        add(&mut r.handshake_failures_by_reason, &o.refusals);
        add(&mut r.resume_drops, &o.drops);
        add(&mut r.room_errors_by_code, &o.room_errors);
        add(&mut r.errors_by_code, &o.errors);
        if let Some(s) = o.started {
            first = Some(first.map_or(s, |f| f.min(s)));
        }
        if let (Some(s), Some(e)) = (o.started, o.synced) {
            last = Some(last.map_or(e, |l| l.max(e)));
            resume_ms.push((e - s).as_secs_f64() * 1000.0);
            since_signal_ms.push((e - signal).as_secs_f64() * 1000.0);
        }
    }
    r.messages_expected = total.expected;
    r.delivered = total.delivered;
    r.lost = total.lost;
    r.duplicated = total.duplicated;
    r.reordered = total.reordered;
    r.unexpected = total.unexpected;
    r.time_to_all_resumed_ms = first.zip(last).map(|(f, l)| l.saturating_duration_since(f).as_secs_f64() * 1000.0);
    r.resume = percentiles(resume_ms);
    r.resumed_after_signal = percentiles(since_signal_ms);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_resume_is_clean() {
        let t = tally(5, 10, &[6, 7, 8, 9, 10]);
        assert_eq!(t, Tally { expected: 5, delivered: 5, ..Default::default() });
        // Nothing new: nothing expected.
        assert_eq!(tally(10, 10, &[]), Tally::default());
    }

    #[test]
    fn lost_duplicated_reordered_and_unexpected() {
        // Stored 5, last acked 10: 6..=10 expected. 5 (at the stored seq) and
        // the second 7 are duplicates; 9 is lost; 6 after 7 is reordered; 11
        // was never acked.
        let t = tally(5, 10, &[5, 7, 6, 7, 8, 10, 11]);
        assert_eq!(
            t,
            Tally { expected: 5, delivered: 4, lost: 1, duplicated: 2, reordered: 1, unexpected: 1 },
            "{t:?}"
        );
        // Nothing received at all: everything lost.
        assert_eq!(tally(0, 3, &[]).lost, 3);
        // Stored beyond the room's last seq (should not happen): nothing expected.
        assert_eq!(tally(4, 3, &[4]), Tally { duplicated: 1, ..Default::default() });
    }

    #[test]
    fn percentiles_nearest_rank() {
        let p = percentiles((1..=100).map(f64::from).collect());
        assert_eq!((p.p50_ms, p.p99_ms, p.max_ms), (Some(50.0), Some(99.0), Some(100.0)));
        assert!(percentiles(Vec::new()).p50_ms.is_none());
    }
}
