//! The storage layer: gap-free seq allocation under concurrent writers,
//! idempotent appends, batch appends across rooms.

use std::collections::HashSet;

use chatgw::db::{AppendOutcome, NewKind, NewMessage, Store};

use crate::both_backends;
use crate::helpers::{Db, TestDb};

both_backends!(concurrent_appends_allocate_gap_free_seqs, batch_append_is_idempotent_and_ordered);

async fn store(db: &TestDb) -> Store {
    let s = Store::connect(&db.url, 16).await.expect("connect");
    s.migrate().await.expect("migrate");
    s
}

async fn two_users_two_rooms(s: &Store) -> (String, String, String) {
    let a = s.create_user("a@example.com", "a", "x").await.unwrap();
    let r1 = s.create_room(&a.id, "r1", &[]).await.unwrap().room.id;
    let r2 = s.create_room(&a.id, "r2", &[]).await.unwrap().room.id;
    (a.id, r1, r2)
}

/// 16 tasks hammer one room (and a second one) with single and batched
/// appends; afterwards the room holds exactly 1..=N.
async fn concurrent_appends_allocate_gap_free_seqs(db: Db) {
    let test_db = TestDb::new(db).await;
    let s = store(&test_db).await;
    let (user, room, other) = two_users_two_rooms(&s).await;
    const TASKS: usize = 16;
    const PER_TASK: usize = 40;

    let mut handles = Vec::new();
    for t in 0..TASKS {
        let (s, user, room, other) = (s.clone(), user.clone(), room.clone(), other.clone());
        handles.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while i < PER_TASK {
                // Alternate single appends and batches of 3 spanning two rooms.
                let n = if i % 2 == 0 { 1 } else { 3.min(PER_TASK - i) };
                let batch: Vec<NewMessage> = (i..i + n)
                    .flat_map(|k| {
                        let user = &user;
                        [&room, &other].into_iter().map(move |r| NewMessage {
                            room_id: r.clone(),
                            sender_id: user.clone(),
                            client_msg_id: format!("t{t}-m{k}"),
                            body: format!("{t}/{k}"),
                            sent_at: 0,
                            kind: NewKind::Message,
                        })
                    })
                    .collect();
                for o in s.append_messages(&batch).await.expect("append") {
                    match o {
                        AppendOutcome::Stored(m) => acked.push((m.room, m.seq)),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                i += n;
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for h in handles {
        acked.extend(h.await.unwrap());
    }
    let n = (TASKS * PER_TASK) as i64;
    for r in [&room, &other] {
        let mut seqs: Vec<i64> = acked.iter().filter(|(room, _)| room == r).map(|(_, s)| *s).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "acked seqs are 1..=N without gaps or duplicates");
        let page = s.history(r, Some(0), None, 200).await.unwrap();
        assert_eq!(page.messages.first().unwrap().seq, 1);
        assert_eq!(s.last_seq(r).await.unwrap(), Some(n));
        let mut stored = Vec::new();
        let mut after = 0;
        loop {
            let p = s.history(r, Some(after), None, 200).await.unwrap();
            stored.extend(p.messages.iter().map(|m| m.seq));
            if !p.has_more {
                break;
            }
            after = *stored.last().unwrap();
        }
        assert_eq!(stored, (1..=n).collect::<Vec<_>>(), "stored seqs are 1..=N in order");
    }
    s.close().await;
}

async fn batch_append_is_idempotent_and_ordered(db: Db) {
    let test_db = TestDb::new(db).await;
    let s = store(&test_db).await;
    let (user, room, other) = two_users_two_rooms(&s).await;
    let m = |room: &str, id: &str| NewMessage {
        room_id: room.into(),
        sender_id: user.clone(),
        client_msg_id: id.into(),
        body: id.into(),
        sent_at: 7,
        kind: NewKind::Message,
    };
    let out = s.append_messages(&[m(&room, "a"), m(&other, "a"), m(&room, "b"), m(&room, "a")]).await.unwrap();
    let seq = |o: &AppendOutcome| match o {
        AppendOutcome::Stored(m) | AppendOutcome::Duplicate(m) | AppendOutcome::Conflict(m) => m.seq,
        _ => -1,
    };
    assert_eq!(out.iter().map(seq).collect::<Vec<_>>(), vec![1, 1, 2, 1]);
    assert!(matches!(out[3], AppendOutcome::Duplicate(_)), "repeat within a batch is a duplicate");

    // A retry later: same seq, nothing stored twice.
    let again = s.append_messages(&[m(&room, "b"), m(&room, "c")]).await.unwrap();
    assert!(matches!(&again[0], AppendOutcome::Duplicate(x) if x.seq == 2 && x.body == "b"));
    assert!(matches!(&again[1], AppendOutcome::Stored(x) if x.seq == 3));
    // The same client_msg_id with another body is no retry: a conflict,
    // reporting the stored message, which stays as it was.
    let other_body = NewMessage { body: "not b".into(), ..m(&room, "b") };
    let clash = s.append_messages(&[other_body]).await.unwrap();
    assert!(matches!(&clash[0], AppendOutcome::Conflict(x) if x.seq == 2 && x.body == "b"), "{clash:?}");
    let all: HashSet<i64> =
        s.history(&room, Some(0), None, 100).await.unwrap().messages.iter().map(|m| m.seq).collect();
    assert_eq!(all, HashSet::from([1, 2, 3]));

    // An unknown room fails alone.
    let mixed = s.append_messages(&[m("no-such-room", "x"), m(&room, "d")]).await.unwrap();
    assert_eq!(mixed[0], AppendOutcome::NoSuchRoom);
    assert!(matches!(&mixed[1], AppendOutcome::Stored(x) if x.seq == 4));

    // A sender who is not a member stores nothing, even in a mixed batch.
    let outsider = s.create_user("o@example.com", "o", "x").await.unwrap();
    let sneaky = NewMessage { sender_id: outsider.id.clone(), ..m(&room, "o1") };
    let out = s.append_messages(&[sneaky, m(&room, "e")]).await.unwrap();
    assert_eq!(out[0], AppendOutcome::NotMember);
    assert!(matches!(&out[1], AppendOutcome::Stored(x) if x.seq == 5));
    s.close().await;
}
