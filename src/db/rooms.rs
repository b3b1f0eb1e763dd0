//! Rooms, memberships and read markers.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{DbError, Retention, Store, new_epoch, new_id};
use crate::clock::now_ms;

/// A member's role; only owners manage a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Member,
}

impl Role {
    /// As on the wire (`room_added.role`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
        }
    }

    fn parse(s: &str) -> Role {
        if s == "owner" { Role::Owner } else { Role::Member }
    }
}

/// A room's own fields.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Room {
    pub id: String,
    pub name: String,
    pub owner_id: String,
    /// Highest message seq in the room (0 when empty).
    pub last_seq: i64,
    /// Lowest seq still retained (`last_seq + 1` when none is): older
    /// messages were removed by retention or a history reset.
    pub first_seq: i64,
    /// Names the room's history; a client holding another one drops its
    /// local copy (protocol §17).
    pub epoch: String,
    /// The owner's retention override (`null` fields follow the server's
    /// setting, 0 keeps forever).
    pub retention: Retention,
    pub created_at: i64,
}

/// A room as one of its members sees it in `GET /rooms`: enough to show an
/// unread count (`last_seq - read_seq`) without opening a socket.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RoomForUser {
    #[serde(flatten)]
    pub room: Room,
    pub role: Role,
    /// The caller's read marker (0 when nothing read).
    pub read_seq: i64,
}

/// One membership row.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Member {
    pub user_id: String,
    pub role: Role,
    pub joined_at: i64,
}

fn room_for_user(r: &AnyRow) -> Result<RoomForUser, sqlx::Error> {
    Ok(RoomForUser {
        room: Room {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            owner_id: r.try_get("owner_id")?,
            last_seq: r.try_get("last_seq")?,
            first_seq: r.try_get("first_seq")?,
            epoch: r.try_get("epoch")?,
            retention: Retention {
                max_age_secs: r.try_get("retention_max_age_secs")?,
                max_messages: r.try_get("retention_max_messages")?,
            },
            created_at: r.try_get("created_at")?,
        },
        role: Role::parse(&r.try_get::<String, _>("role")?),
        read_seq: r.try_get("read_seq")?,
    })
}

const ROOM_FOR_USER: &str = "SELECT r.id, r.name, r.owner_id, r.last_seq, r.first_seq, r.epoch, \
     r.retention_max_age_secs, r.retention_max_messages, r.created_at, m.role, \
     COALESCE(rm.seq, 0) AS read_seq \
     FROM memberships m JOIN rooms r ON r.id = m.room_id \
     LEFT JOIN read_markers rm ON rm.room_id = m.room_id AND rm.user_id = m.user_id";

impl Store {
    /// Creates a room owned by `owner` with the given extra members.
    pub async fn create_room(&self, owner: &str, name: &str, members: &[String]) -> Result<RoomForUser, DbError> {
        let id = new_id();
        let now = now_ms();
        let epoch = new_epoch();
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO rooms (id, name, owner_id, last_seq, created_at, epoch) VALUES ($1, $2, $3, 0, $4, $5)",
        )
        .bind(&id)
        .bind(name)
        .bind(owner)
        .bind(now)
        .bind(&epoch)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO memberships (room_id, user_id, role, joined_at) VALUES ($1, $2, 'owner', $3)")
            .bind(&id)
            .bind(owner)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        for m in members.iter().filter(|m| m.as_str() != owner) {
            sqlx::query(
                "INSERT INTO memberships (room_id, user_id, role, joined_at) VALUES ($1, $2, 'member', $3) \
                 ON CONFLICT (room_id, user_id) DO NOTHING",
            )
            .bind(&id)
            .bind(m)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(RoomForUser {
            room: Room {
                id,
                name: name.to_owned(),
                owner_id: owner.to_owned(),
                last_seq: 0,
                first_seq: 1,
                epoch,
                retention: Retention::default(),
                created_at: now,
            },
            role: Role::Owner,
            read_seq: 0,
        })
    }

    /// Every room the user belongs to, oldest first.
    pub async fn rooms_for_user(&self, user: &str) -> Result<Vec<RoomForUser>, DbError> {
        let rows = sqlx::query(&format!("{ROOM_FOR_USER} WHERE m.user_id = $1 ORDER BY r.created_at, r.id"))
            .bind(user)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.iter().map(room_for_user).collect::<Result<_, _>>()?)
    }

    /// The room as `user` sees it; [`DbError::NotFound`] when the room does
    /// not exist *or* the user is not a member (the API does not reveal which).
    pub async fn room_for_member(&self, room: &str, user: &str) -> Result<RoomForUser, DbError> {
        let row = sqlx::query(&format!("{ROOM_FOR_USER} WHERE m.room_id = $1 AND m.user_id = $2"))
            .bind(room)
            .bind(user)
            .fetch_one(&self.read)
            .await?;
        Ok(room_for_user(&row)?)
    }

    /// The ids of every room the user belongs to (for the per-user stream's
    /// `room_seq`, loaded once when the user's first socket connects).
    pub async fn member_room_ids(&self, user: &str) -> Result<Vec<String>, DbError> {
        Ok(sqlx::query_scalar("SELECT room_id FROM memberships WHERE user_id = $1")
            .bind(user)
            .fetch_all(&self.read)
            .await?)
    }

    /// The user's role in the room, `None` when not a member.
    pub async fn role_in(&self, room: &str, user: &str) -> Result<Option<Role>, DbError> {
        let role: Option<String> =
            sqlx::query_scalar("SELECT role FROM memberships WHERE room_id = $1 AND user_id = $2")
                .bind(room)
                .bind(user)
                .fetch_optional(&self.read)
                .await?;
        Ok(role.as_deref().map(Role::parse))
    }

    pub async fn members(&self, room: &str) -> Result<Vec<Member>, DbError> {
        let rows = sqlx::query(
            "SELECT user_id, role, joined_at FROM memberships WHERE room_id = $1 ORDER BY joined_at, user_id",
        )
        .bind(room)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Member {
                    user_id: r.try_get("user_id")?,
                    role: Role::parse(&r.try_get::<String, _>("role")?),
                    joined_at: r.try_get("joined_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    pub async fn rename_room(&self, room: &str, name: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE rooms SET name = $2 WHERE id = $1").bind(room).bind(name).execute(&self.write).await?;
        Ok(())
    }

    /// Deletes a room with its memberships, messages and markers.
    pub async fn delete_room(&self, room: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM rooms WHERE id = $1").bind(room).execute(&self.write).await?;
        Ok(())
    }

    /// Adds a member; returns `false` when they already were one.
    pub async fn add_member(&self, room: &str, user: &str) -> Result<bool, DbError> {
        let r = sqlx::query(
            "INSERT INTO memberships (room_id, user_id, role, joined_at) VALUES ($1, $2, 'member', $3) \
             ON CONFLICT (room_id, user_id) DO NOTHING",
        )
        .bind(room)
        .bind(user)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Removes a member (and their read marker); `false` when not a member.
    pub async fn remove_member(&self, room: &str, user: &str) -> Result<bool, DbError> {
        let mut tx = self.write.begin().await?;
        let r = sqlx::query("DELETE FROM memberships WHERE room_id = $1 AND user_id = $2 AND role <> 'owner'")
            .bind(room)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM read_markers WHERE room_id = $1 AND user_id = $2")
            .bind(room)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// Moves the read marker forward (never back, never past the room's last
    /// message); returns the marker now stored, which may be higher than
    /// `seq` if another device read further.
    pub async fn set_read_marker(&self, room: &str, user: &str, seq: i64) -> Result<i64, DbError> {
        let mut tx = self.write.begin().await?;
        // No marker past the room's last message: a client claiming to have
        // read seq 2^63-1 would otherwise freeze its marker (it only moves
        // forward) and break every unread count derived from it.
        let last: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM rooms WHERE id = $1").bind(room).fetch_optional(&mut *tx).await?;
        let seq = seq.min(last.unwrap_or(0));
        sqlx::query(
            "INSERT INTO read_markers (room_id, user_id, seq, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (room_id, user_id) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at \
             WHERE read_markers.seq < excluded.seq",
        )
        .bind(room)
        .bind(user)
        .bind(seq)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let stored: i64 = sqlx::query_scalar("SELECT seq FROM read_markers WHERE room_id = $1 AND user_id = $2")
            .bind(room)
            .bind(user)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(stored)
    }
}
