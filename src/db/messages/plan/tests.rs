//! The batch rules under test: examples of each rule, then properties over
//! generated histories and batches, checked against [`World`], an
//! in-memory model of what `append` reads and writes.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;
use crate::db::OPERATOR;

/// Storage as the plan sees it: the rooms' `last_seq`, the memberships
/// (`true` for an owner) and the rows of the rooms' streams.
#[derive(Debug, Clone, PartialEq, Default)]
struct World {
    last: BTreeMap<String, i64>,
    members: HashMap<(String, String), bool>,
    rows: BTreeMap<(String, i64), Row>,
}

/// A stored row: the entry, and the columns no [`StoredMessage`] shows.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    m: StoredMessage,
    sent_digest: Option<String>,
    deleted_by: Option<String>,
}

impl World {
    /// What `append` reads for `batch` (its steps 1-3).
    fn facts(&self, batch: &[NewMessage]) -> Facts {
        let mut f = Facts::default();
        for m in batch {
            if let Some(l) = self.last.get(&m.room_id) {
                f.last_seq.insert(m.room_id.clone(), *l);
            }
            let pair = (m.room_id.clone(), m.sender_id.clone());
            if let Some(owner) = self.members.get(&pair) {
                f.members.insert(pair, *owner);
            }
            let same_id =
                |r: &&Row| r.m.room == m.room_id && r.m.sender == m.sender_id && r.m.client_msg_id == m.client_msg_id;
            if let Some(r) = self.rows.values().find(same_id) {
                let key = (m.room_id.clone(), m.sender_id.clone(), m.client_msg_id.clone());
                f.known.insert(key, (r.m.clone(), r.sent_digest.clone()));
            }
            if let Some(t) = m.kind.target()
                && let Some(r) = self.rows.get(&(m.room_id.clone(), t))
            {
                let target = Target::stored(
                    r.m.sender.clone(),
                    r.m.sent_at,
                    r.m.kind.as_str(),
                    r.m.deleted.then_some(0),
                    r.m.body.clone(),
                    r.m.edited_at,
                    r.sent_digest.clone(),
                );
                f.targets.insert((m.room_id.clone(), t), target);
            }
        }
        f
    }

    /// What `append` writes for `plan` (its steps 4-5).
    fn apply(&mut self, plan: &Plan<'_>) {
        for m in &plan.fresh {
            let taken = self
                .rows
                .values()
                .any(|r| r.m.room == m.room && r.m.sender == m.sender && r.m.client_msg_id == m.client_msg_id);
            assert!(!taken, "the unique (room, sender, client_msg_id) would be violated by {m:?}");
            let row = Row { m: m.clone(), sent_digest: None, deleted_by: None };
            assert!(self.rows.insert((m.room.clone(), m.seq), row).is_none(), "seq {} reused", m.seq);
        }
        for ((room, seq), t) in &plan.changed {
            let r = self.rows.get_mut(&(room.clone(), *seq)).expect("a changed message is stored");
            r.m.body = t.body.clone();
            r.m.edited_at = t.edited_at;
            r.m.deleted = t.deleted.is_some();
            r.deleted_by = t.deleted.as_ref().map(|(_, by)| by.clone());
            r.sent_digest = t.sent_digest.clone();
            if t.deleted.is_some() {
                for e in self.rows.values_mut() {
                    if e.m.room == *room && e.m.target_seq == Some(*seq) && e.m.kind == EntryType::Edit {
                        e.m.body.clear();
                    }
                }
            }
        }
        for (room, seq) in &plan.moved {
            self.last.insert((*room).to_owned(), *seq);
        }
    }

    /// Plans `batch`, writes the plan, and returns the outcomes.
    fn append(&mut self, batch: &[NewMessage]) -> Vec<AppendOutcome> {
        let p = plan(batch, self.facts(batch));
        self.apply(&p);
        p.outcomes
    }
}

const USERS: [&str; 3] = ["u0", "u1", "u2"];
/// The last one never exists.
const ROOMS: [&str; 3] = ["r0", "r1", "gone"];
const BODIES: [&str; 3] = ["x", "y", "zz"];

fn msg(room: &str, sender: &str, id: &str, body: &str, sent_at: i64, kind: NewKind) -> NewMessage {
    NewMessage {
        room_id: room.into(),
        sender_id: sender.into(),
        client_msg_id: id.into(),
        body: body.into(),
        sent_at,
        kind,
    }
}

/// Rooms r0 and r1 with their `last_seq`s, and a role (none, member,
/// owner) for each user in each.
fn world() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(0i64..4, 2),
        prop::collection::vec(prop_oneof![1 => Just(None), 3 => Just(Some(false)), 1 => Just(Some(true))], 6),
    )
        .prop_map(|(lasts, roles)| {
            let mut w = World::default();
            for (r, last) in lasts.into_iter().enumerate() {
                w.last.insert(ROOMS[r].to_owned(), last);
            }
            for (k, role) in roles.into_iter().enumerate() {
                if let Some(owner) = role {
                    w.members.insert((ROOMS[k / 3].to_owned(), USERS[k % 3].to_owned()), owner);
                }
            }
            w
        })
}

/// A request over few rooms, users, ids and bodies, so that retries,
/// reused ids, changes of the same message and refusals all happen.
fn request() -> impl Strategy<Value = NewMessage> {
    let kind = prop_oneof![
        4 => Just(NewKind::Message),
        2 => (0i64..12, prop_oneof![Just(0i64), Just(3), Just(1000)])
            .prop_map(|(target_seq, window_ms)| NewKind::Edit { target_seq, window_ms }),
        2 => (0i64..12, prop_oneof![3 => Just(Deleter::Member), 1 => Just(Deleter::Operator), 1 => Just(Deleter::Erasure)])
            .prop_map(|(target_seq, by)| NewKind::Delete { target_seq, by }),
    ];
    let room = prop_oneof![4 => Just(0usize), 4 => Just(1), 1 => Just(2)];
    (room, 0usize..4, 0usize..4, 0usize..3, 0i64..10, kind).prop_map(|(room, sender, id, body, sent_at, kind)| {
        let sender = USERS.get(sender).copied().unwrap_or(OPERATOR);
        let body = if matches!(kind, NewKind::Delete { .. }) { "" } else { BODIES[body] };
        msg(ROOMS[room], sender, &format!("c{id}"), body, sent_at, kind)
    })
}

/// A world with a history written through the plan, and a batch.
fn setting() -> impl Strategy<Value = (World, Vec<NewMessage>)> {
    (world(), prop::collection::vec(request(), 0..25), prop::collection::vec(request(), 0..25)).prop_map(
        |(mut w, history, batch)| {
            w.append(&history);
            (w, batch)
        },
    )
}

/// An outcome without what in-batch and stored repeats may tell apart: a
/// repeat's seq, not whether it is a duplicate or a conflict (a message
/// deleted earlier in the batch still has its text for later requests of
/// the batch, not for later batches).
fn shape(o: &AppendOutcome) -> (String, Option<StoredMessage>, Option<i64>) {
    match o {
        AppendOutcome::Stored(m) => ("stored".into(), Some(m.clone()), Some(m.seq)),
        AppendOutcome::Duplicate(m) | AppendOutcome::Conflict(m) => ("repeat".into(), None, Some(m.seq)),
        other => (format!("{other:?}"), None, None),
    }
}

fn seq_of(o: &AppendOutcome) -> Option<i64> {
    match o {
        AppendOutcome::Stored(m) | AppendOutcome::Duplicate(m) | AppendOutcome::Conflict(m) => Some(m.seq),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A batch is planned as its requests would be one by one, each in its
    /// own batch after the previous one was written: same outcomes, same
    /// rows. So an edit or delete sees what the batch stored before it.
    #[test]
    fn a_batch_is_its_requests_one_by_one((w, batch) in setting()) {
        let (mut whole, mut single) = (w.clone(), w);
        let together = whole.append(&batch);
        let alone: Vec<AppendOutcome> =
            batch.iter().flat_map(|m| single.append(std::slice::from_ref(m))).collect();
        prop_assert_eq!(together.len(), batch.len());
        prop_assert_eq!(together.iter().map(shape).collect::<Vec<_>>(), alone.iter().map(shape).collect::<Vec<_>>());
        prop_assert_eq!(whole, single);
    }

    /// Each room's new seqs follow its `last_seq` without a gap, in batch
    /// order; the rows to insert are exactly the stored outcomes; the new
    /// `last_seq` is the last seq allocated.
    #[test]
    fn seqs_are_gap_free_from_the_last((w, batch) in setting()) {
        let p = plan(&batch, w.facts(&batch));
        prop_assert_eq!(p.outcomes.len(), batch.len());
        let stored: Vec<&StoredMessage> =
            p.outcomes.iter().filter_map(|o| if let AppendOutcome::Stored(m) = o { Some(m) } else { None }).collect();
        prop_assert_eq!(stored.clone(), p.fresh.iter().collect::<Vec<_>>());
        let mut moved = Vec::new();
        for (room, last) in &w.last {
            let seqs: Vec<i64> = stored.iter().filter(|m| &m.room == room).map(|m| m.seq).collect();
            prop_assert_eq!(&seqs, &(last + 1..=last + seqs.len() as i64).collect::<Vec<_>>());
            if let Some(top) = seqs.last() {
                moved.push((room.as_str(), *top));
            }
        }
        prop_assert_eq!(p.moved, moved);
    }

    /// What a batch stored (or found stored), sent again after the batch
    /// was written, stores nothing: each is a duplicate of the same seq.
    /// (A refused request may pass on a retry: its target may exist now.)
    #[test]
    fn a_retry_is_a_duplicate_and_takes_no_seq((mut w, batch) in setting()) {
        let first = w.append(&batch);
        let (retry, seqs): (Vec<NewMessage>, Vec<i64>) = batch
            .iter()
            .zip(&first)
            .filter_map(|(m, o)| match o {
                AppendOutcome::Stored(s) | AppendOutcome::Duplicate(s) => Some((m.clone(), s.seq)),
                _ => None,
            })
            .unzip();
        let p = plan(&retry, w.facts(&retry));
        prop_assert!(p.fresh.is_empty() && p.moved.is_empty() && p.changed.is_empty());
        for (o, seq) in p.outcomes.iter().zip(seqs) {
            prop_assert!(matches!(o, AppendOutcome::Duplicate(d) if d.seq == seq), "{:?}, not a duplicate of {}", o, seq);
        }
    }

    /// A request repeated later in the same batch is a duplicate of the
    /// first; with another body it is a conflict (a delete has no body to
    /// differ). In a later batch too, unless the message is deleted since.
    #[test]
    fn another_body_under_the_same_id_is_a_conflict((w, batch) in setting(), pick in any::<prop::sample::Index>()) {
        let p = plan(&batch, w.facts(&batch));
        let stored: Vec<usize> = (0..batch.len()).filter(|&i| matches!(p.outcomes[i], AppendOutcome::Stored(_))).collect();
        prop_assume!(!stored.is_empty());
        let i = stored[pick.index(stored.len())];
        let seq = seq_of(&p.outcomes[i]);
        let same = batch[i].clone();
        let mut other = same.clone();
        other.body.push('!');
        let is_delete = matches!(same.kind, NewKind::Delete { .. });
        for (copy, dup) in [(same, true), (other.clone(), is_delete)] {
            let mut again = batch.clone();
            again.push(copy);
            let q = plan(&again, w.facts(&again));
            let last = q.outcomes.last().unwrap_or(&AppendOutcome::NoSuchRoom);
            prop_assert_eq!(seq_of(last), seq);
            prop_assert_eq!(matches!(last, AppendOutcome::Duplicate(_)), dup, "{:?}", last);
            prop_assert_eq!(matches!(last, AppendOutcome::Conflict(_)), !dup, "{:?}", last);
        }
        let mut w = w;
        w.append(&batch);
        let row = &w.rows[&(batch[i].room_id.clone(), seq.unwrap_or_default())];
        let deleted = row.m.deleted || (row.m.kind == EntryType::Edit && row.m.body.is_empty());
        let later = w.append(std::slice::from_ref(&other));
        prop_assert_eq!(matches!(later[0], AppendOutcome::Duplicate(_)), is_delete || deleted, "{:?}", later);
    }

    /// An edit by the author is allowed while its `sent_at` is at most the
    /// window after the message's, its end included; a window of 0 or less
    /// never opens.
    #[test]
    fn the_edit_window_includes_its_end(sent_at in 0i64..100, diff in -5i64..60, window_ms in -2i64..50) {
        let mut w = World::default();
        w.last.insert("r".into(), 0);
        w.members.insert(("r".into(), "a".into()), false);
        w.append(&[msg("r", "a", "1", "hi", sent_at, NewKind::Message)]);
        let edit = [msg("r", "a", "2", "ho", sent_at + diff, NewKind::Edit { target_seq: 1, window_ms })];
        let out = w.append(&edit);
        if window_ms > 0 && diff <= window_ms {
            prop_assert!(matches!(out[0], AppendOutcome::Stored(_)), "{:?}", out);
        } else {
            prop_assert_eq!(&out[0], &AppendOutcome::EditWindowClosed);
        }
    }

    /// Only the author edits, within the window; a member deletes their
    /// own message or, as the room's owner, anyone's; an erasure deletes
    /// only the erased author's. And each refusal has its reason.
    #[test]
    fn only_the_allowed_change_a_message((w, batch) in setting()) {
        let mut after = w.clone();
        let outcomes = after.append(&batch);
        for (m, o) in batch.iter().zip(&outcomes) {
            let Some(t) = m.kind.target() else { continue };
            // Authors and times never change, so the rows after the batch
            // tell them.
            let Some(target) = after.rows.get(&(m.room_id.clone(), t)).map(|r| &r.m) else {
                prop_assert!(!matches!(o, AppendOutcome::Stored(_)), "{:?} of nothing", o);
                continue;
            };
            let author = target.sender == m.sender_id;
            let owner = w.members.get(&(m.room_id.clone(), m.sender_id.clone())).copied().unwrap_or(false);
            match (m.kind, o) {
                (NewKind::Edit { window_ms, .. }, AppendOutcome::Stored(_)) => {
                    prop_assert!(author && target.kind == EntryType::Message);
                    prop_assert!(window_ms > 0 && m.sent_at - target.sent_at <= window_ms);
                }
                (NewKind::Edit { .. }, AppendOutcome::NotAuthor) => prop_assert!(!author),
                (NewKind::Edit { window_ms, .. }, AppendOutcome::EditWindowClosed) => {
                    prop_assert!(author && (window_ms <= 0 || m.sent_at - target.sent_at > window_ms));
                }
                (NewKind::Delete { by, .. }, AppendOutcome::Stored(e)) => {
                    prop_assert!(target.deleted);
                    let reason = match by {
                        Deleter::Member if author => DeleteReason::Author,
                        Deleter::Member => {
                            prop_assert!(owner);
                            DeleteReason::Owner
                        }
                        Deleter::Operator => DeleteReason::Operator,
                        Deleter::Erasure => {
                            prop_assert!(author);
                            DeleteReason::Erased
                        }
                    };
                    prop_assert_eq!(e.reason, Some(reason));
                }
                (NewKind::Delete { by, .. }, AppendOutcome::NotAuthor) => {
                    prop_assert!(!author && (by == Deleter::Erasure || (by == Deleter::Member && !owner)));
                }
                _ => {}
            }
        }
    }
}

#[test]
fn an_edit_sees_a_message_stored_earlier_in_the_batch() {
    let mut w = World::default();
    w.last.insert("r".into(), 7);
    w.members.insert(("r".into(), "a".into()), false);
    let batch = [
        msg("r", "a", "1", "hi", 100, NewKind::Message),
        msg("r", "a", "2", "ho", 110, NewKind::Edit { target_seq: 8, window_ms: 10 }),
    ];
    let p = plan(&batch, w.facts(&batch));
    assert_eq!(p.fresh.iter().map(|m| m.seq).collect::<Vec<_>>(), [8, 9]);
    assert_eq!(p.moved, [("r", 9)]);
    let [((room, seq), t)] = &p.changed[..] else { panic!("{:?}", p.changed) };
    assert_eq!((room.as_str(), *seq, t.body.as_str(), t.edited_at), ("r", 8, "ho", Some(110)));
    assert_eq!(t.sent_digest, Some(body_digest("hi")), "the body as sent is kept for retries");
}

#[test]
fn a_retry_is_a_duplicate_and_another_body_a_conflict() {
    let mut w = World::default();
    w.last.insert("r".into(), 0);
    w.members.insert(("r".into(), "a".into()), false);
    w.append(&[msg("r", "a", "1", "hi", 100, NewKind::Message)]);
    let batch = [
        msg("r", "a", "1", "hi", 101, NewKind::Message),
        msg("r", "a", "1", "other", 102, NewKind::Message),
        msg("r", "a", "2", "new", 103, NewKind::Message),
        msg("r", "a", "2", "new", 104, NewKind::Message),
        msg("r", "a", "2", "newer", 105, NewKind::Message),
    ];
    let out = plan(&batch, w.facts(&batch)).outcomes;
    assert!(matches!(&out[0], AppendOutcome::Duplicate(m) if m.seq == 1));
    assert!(matches!(&out[1], AppendOutcome::Conflict(m) if m.seq == 1 && m.body == "hi"));
    assert!(matches!(&out[2], AppendOutcome::Stored(m) if m.seq == 2));
    assert!(matches!(&out[3], AppendOutcome::Duplicate(m) if m.seq == 2));
    assert!(matches!(&out[4], AppendOutcome::Conflict(m) if m.seq == 2));
}

#[test]
fn only_the_author_edits_and_the_author_or_owner_deletes() {
    let mut w = World::default();
    w.last.insert("r".into(), 0);
    w.members.insert(("r".into(), "a".into()), false);
    w.members.insert(("r".into(), "b".into()), false);
    w.members.insert(("r".into(), "o".into()), true);
    w.append(&[msg("r", "a", "1", "hi", 100, NewKind::Message), msg("r", "a", "2", "yo", 100, NewKind::Message)]);
    let edit = NewKind::Edit { target_seq: 1, window_ms: 1000 };
    let delete = |target_seq| NewKind::Delete { target_seq, by: Deleter::Member };
    let batch = [
        msg("r", "b", "e", "mine", 101, edit),
        msg("r", "o", "e", "mine", 101, edit),
        msg("r", "b", "d", "", 101, delete(1)),
        msg("r", "o", "d", "", 102, delete(1)),
        msg("r", "a", "d", "", 103, delete(2)),
        msg("r", "a", "d2", "", 104, delete(2)),
    ];
    let out = plan(&batch, w.facts(&batch)).outcomes;
    assert_eq!(out[0], AppendOutcome::NotAuthor);
    assert_eq!(out[1], AppendOutcome::NotAuthor, "an owner deletes, never edits, another's message");
    assert_eq!(out[2], AppendOutcome::NotAuthor);
    assert!(matches!(&out[3], AppendOutcome::Stored(m) if m.reason == Some(DeleteReason::Owner)));
    assert!(matches!(&out[4], AppendOutcome::Stored(m) if m.reason == Some(DeleteReason::Author)));
    assert_eq!(out[5], AppendOutcome::TargetNotFound, "deleted earlier in the batch");
}

#[test]
fn the_edit_window_includes_its_end_and_zero_closes_it() {
    let mut w = World::default();
    w.last.insert("r".into(), 0);
    w.members.insert(("r".into(), "a".into()), false);
    w.append(&[msg("r", "a", "1", "hi", 100, NewKind::Message)]);
    let edit = |id: &str, at, window_ms| msg("r", "a", id, "ho", at, NewKind::Edit { target_seq: 1, window_ms });
    let batch = [edit("e1", 150, 0), edit("e2", 151, 50), edit("e3", 150, 50)];
    let out = plan(&batch, w.facts(&batch)).outcomes;
    assert_eq!(out[0], AppendOutcome::EditWindowClosed);
    assert_eq!(out[1], AppendOutcome::EditWindowClosed);
    assert!(matches!(&out[2], AppendOutcome::Stored(m) if m.seq == 2));
}

#[test]
fn membership_and_rooms_are_checked_except_for_operators_and_erasures() {
    let mut w = World::default();
    w.last.insert("r".into(), 0);
    w.members.insert(("r".into(), "a".into()), false);
    w.append(&[msg("r", "a", "1", "hi", 100, NewKind::Message), msg("r", "a", "2", "yo", 100, NewKind::Message)]);
    w.members.clear();
    let batch = [
        msg("gone", "a", "3", "hi", 101, NewKind::Message),
        msg("r", "a", "3", "hi", 101, NewKind::Message),
        msg("r", OPERATOR, "4", "", 102, NewKind::Delete { target_seq: 1, by: Deleter::Operator }),
        msg("r", "a", "5", "", 103, NewKind::Delete { target_seq: 2, by: Deleter::Erasure }),
    ];
    let out = plan(&batch, w.facts(&batch)).outcomes;
    assert_eq!(out[0], AppendOutcome::NoSuchRoom);
    assert_eq!(out[1], AppendOutcome::NotMember);
    assert!(matches!(&out[2], AppendOutcome::Stored(m) if m.seq == 3 && m.reason == Some(DeleteReason::Operator)));
    assert!(matches!(&out[3], AppendOutcome::Stored(m) if m.seq == 4 && m.reason == Some(DeleteReason::Erased)));
}
