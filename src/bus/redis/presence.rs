//! Presence on Redis: one truth for the cluster, kept by Lua scripts so a
//! user's entry is read and changed atomically.
//!
//! Each instance writes its own entry per (room, user) with an expiry; an
//! instance killed outright leaves no ghost beyond `presence_ttl`, since
//! every script deletes the expired entries it meets.

use std::sync::Arc;

use fred::prelude::SetsInterface;
use fred::types::scripts::Script;
use futures_util::future::join_all;

use super::shared::{Inner, unavailable};
use crate::bus::{BusError, PresenceChange};

/// Shared by the presence scripts: whether a user's hash still has a live
/// entry, deleting the expired ones on the way.
const PRESENCE_LIB: &str = r"
local function online(key, now)
  local vals = redis.call('HGETALL', key)
  local any = false
  for i = 1, #vals, 2 do
    local e = tonumber(string.match(vals[i + 1], ' (%d+)$'))
    if e == nil or e < now then
      redis.call('HDEL', key, vals[i])
    else
      any = true
    end
  end
  return any
end
";

/// Presence keys, per room (the room in braces is the hash tag, so a room's
/// keys share one cluster slot):
/// - `{prefix}p:{room}:{user}`: hash, instance -> "1 <expiry ms>";
/// - `{prefix}ps:{room}`: set of the users online in the room.
///
/// Sets this instance's entry and returns {online before, online after};
/// expired entries of other instances are removed on the way.
const PRESENCE_SET: &str = r"
local now, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local before = online(KEYS[1], now)
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], '1 ' .. (now + ttl))
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local after = online(KEYS[1], now)
if after then
  redis.call('SADD', KEYS[2], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ttl)
else
  redis.call('SREM', KEYS[2], ARGV[5])
end
return {before and 1 or 0, after and 1 or 0}
";

/// Removes users of a room whose every entry expired; returns them.
/// ARGV: now, the prefix of the room's per-user keys.
const PRESENCE_SWEEP: &str = r"
local now = tonumber(ARGV[1])
local gone = {}
for _, user in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not online(ARGV[2] .. user, now) then
    redis.call('SREM', KEYS[1], user)
    table.insert(gone, user)
  end
end
return gone
";

/// The two scripts, each with the shared library in front (Lua has no
/// includes): (set, sweep).
pub(super) fn scripts() -> (Script, Script) {
    (
        Script::from_lua(format!("{PRESENCE_LIB}{PRESENCE_SET}")),
        Script::from_lua(format!("{PRESENCE_LIB}{PRESENCE_SWEEP}")),
    )
}

/// The user's hash and the room's set of online users.
pub(super) fn presence_keys(inner: &Inner, room: &str, user: &str) -> (String, String) {
    (format!("{}p:{{{room}}}:{user}", inner.prefix), format!("{}ps:{{{room}}}", inner.prefix))
}

/// Sets this instance's entry for `user` in `room` and says whether the
/// user was online anywhere before and after.
pub(super) async fn set_presence(
    inner: &Inner,
    room: &str,
    user: &str,
    here: bool,
) -> Result<PresenceChange, BusError> {
    let (p, s) = presence_keys(inner, room, user);
    let args = vec![
        inner.instance.clone(),
        if here { "1" } else { "0" }.to_owned(),
        crate::clock::now_ms().to_string(),
        inner.presence_ttl.as_millis().to_string(),
        user.to_owned(),
    ];
    let r: Vec<i64> =
        inner.presence_set.evalsha_with_reload(&inner.publisher, vec![p, s], args).await.map_err(unavailable)?;
    Ok(PresenceChange { before: r.first() == Some(&1), after: r.get(1) == Some(&1) })
}

/// Users with a live entry in `room` on any instance.
pub(super) async fn members(inner: Arc<Inner>, room: String) -> Result<Vec<String>, BusError> {
    let (_, key) = presence_keys(&inner, &room, "");
    inner.publisher.smembers::<Vec<String>, _>(key).await.map_err(unavailable)
}

/// Re-asserts this instance's `users` in `room`, then sweeps the users
/// whose every entry expired; returns them.
pub(super) async fn refresh(inner: Arc<Inner>, room: String, users: Vec<String>) -> Result<Vec<String>, BusError> {
    let refreshed = join_all(users.iter().map(|u| set_presence(&inner, &room, u, true))).await;
    if let Some(Err(e)) = refreshed.into_iter().find(Result::is_err) {
        return Err(e);
    }
    let (_, set) = presence_keys(&inner, &room, "");
    let user_prefix = format!("{}p:{{{room}}}:", inner.prefix);
    inner
        .presence_sweep
        .evalsha_with_reload(&inner.publisher, vec![set], vec![crate::clock::now_ms().to_string(), user_prefix])
        .await
        .map_err(unavailable)
}
