//! Bulk creation of users, sessions, rooms and memberships for load tests:
//! multi-row inserts in one transaction, so 100k users take seconds rather
//! than the hours one argon2 hash per registration would.

use super::{DbError, Store, new_id, placeholders};
use crate::clock::now_ms;

/// Rows per multi-row INSERT (at most 5 parameters per row here).
const CHUNK: usize = 1000;

/// One seeded user.
pub struct SeedUser {
    pub id: String,
    pub session_id: String,
}

impl Store {
    /// Creates `n` users (sharing one password hash) with one session each.
    pub async fn seed_users(&self, prefix: &str, n: usize, password_hash: &str) -> Result<Vec<SeedUser>, DbError> {
        let now = now_ms();
        let users: Vec<SeedUser> = (0..n).map(|_| SeedUser { id: new_id(), session_id: new_id() }).collect();
        let mut tx = self.write.begin().await?;
        for (c, chunk) in users.chunks(CHUNK).enumerate() {
            let rows = (0..chunk.len())
                .map(|k| format!("({}, {now}, {now})", placeholders(1 + 4 * k, 4)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO users (id, email, email_lower, display_name, created_at, updated_at) VALUES {rows}"
            );
            let mut q = sqlx::query(&sql);
            for (k, u) in chunk.iter().enumerate() {
                let email = format!("{prefix}-{}@loadtest.invalid", c * CHUNK + k);
                q = q.bind(&u.id).bind(email.clone()).bind(email).bind(format!("load {}", c * CHUNK + k));
            }
            q.execute(&mut *tx).await?;

            // The shared hash is the last parameter of the statement.
            let hash_param = chunk.len() + 1;
            let rows =
                (0..chunk.len()).map(|k| format!("(${}, ${hash_param}, {now})", 1 + k)).collect::<Vec<_>>().join(", ");
            let sql = format!("INSERT INTO credentials (user_id, password_hash, updated_at) VALUES {rows}");
            let mut q = sqlx::query(&sql);
            for u in chunk {
                q = q.bind(&u.id);
            }
            q.bind(password_hash).execute(&mut *tx).await?;

            let rows = (0..chunk.len())
                .map(|k| format!("({}, {now})", placeholders(1 + 2 * k, 2)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("INSERT INTO sessions (id, user_id, created_at) VALUES {rows}");
            let mut q = sqlx::query(&sql);
            for u in chunk {
                q = q.bind(&u.session_id).bind(&u.id);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(users)
    }

    /// Creates rooms; `members[r][0]` owns room `r`.
    pub async fn seed_rooms(&self, prefix: &str, members: &[Vec<String>]) -> Result<Vec<String>, DbError> {
        let now = now_ms();
        let ids: Vec<String> = members.iter().map(|_| new_id()).collect();
        let mut tx = self.write.begin().await?;
        for (c, chunk) in ids.chunks(CHUNK).enumerate() {
            let rows = (0..chunk.len())
                .map(|k| format!("({}, 0, {now}, '{}')", placeholders(1 + 3 * k, 3), super::new_epoch()))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("INSERT INTO rooms (id, name, owner_id, last_seq, created_at, epoch) VALUES {rows}");
            let mut q = sqlx::query(&sql);
            for (k, id) in chunk.iter().enumerate() {
                q = q.bind(id).bind(format!("{prefix} room {}", c * CHUNK + k)).bind(&members[c * CHUNK + k][0]);
            }
            q.execute(&mut *tx).await?;
        }
        let pairs: Vec<(&str, &str, &str)> = ids
            .iter()
            .zip(members)
            .flat_map(|(room, ms)| {
                ms.iter()
                    .enumerate()
                    .map(move |(i, u)| (room.as_str(), u.as_str(), if i == 0 { "owner" } else { "member" }))
            })
            .collect();
        for chunk in pairs.chunks(CHUNK) {
            let rows = (0..chunk.len())
                .map(|k| format!("({}, {now})", placeholders(1 + 3 * k, 3)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO memberships (room_id, user_id, role, joined_at) VALUES {rows} ON CONFLICT (room_id, user_id) DO NOTHING"
            );
            let mut q = sqlx::query(&sql);
            for (room, user, role) in chunk {
                q = q.bind(*room).bind(*user).bind(*role);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(ids)
    }
}
