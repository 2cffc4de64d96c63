//! Rooms: version, current state, memberships, forward extremities, aliases, publication.

use super::{Db, Tx, now_ms};

pub async fn create(tx: &mut Tx, room_id: &str, version: &str, creator: &str) -> sqlx::Result<bool> {
    let res = sqlx::query(
        "INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES ($1, $2, $3, $4)
         ON CONFLICT (room_id) DO NOTHING",
    )
    .bind(room_id)
    .bind(version)
    .bind(creator)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// (room version, current state group).
pub async fn get(db: &Db, room_id: &str) -> sqlx::Result<Option<(String, Option<i64>)>> {
    sqlx::query_as("SELECT room_version, current_state_group FROM rooms WHERE room_id = $1")
        .bind(room_id)
        .fetch_optional(db.read())
        .await
}

pub async fn extremities(db: &Db, room_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT event_id FROM room_extremities WHERE room_id = $1 ORDER BY event_id")
        .bind(room_id)
        .fetch_all(db.read())
        .await
}

/// Forgets a room's forward extremities (a join over federation starts the room again
/// from the join event).
pub async fn clear_extremities(tx: &mut Tx, room_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM room_extremities WHERE room_id = $1").bind(room_id).execute(&mut **tx).await?;
    Ok(())
}

/// Records the state at the start of a room's timeline here (a room joined over federation).
pub async fn set_base_state_group(tx: &mut Tx, room_id: &str, group: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE rooms SET base_state_group = $1 WHERE room_id = $2")
        .bind(group)
        .bind(room_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The state group before the first timeline event of a room joined over federation.
pub async fn base_state_group(db: &Db, room_id: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT base_state_group FROM rooms WHERE room_id = $1")
        .bind(room_id)
        .fetch_optional(db.read())
        .await
        .map(Option::flatten)
}

/// A local user's membership in a room this server is not in, as another server sent it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RemoteMembership {
    pub room_id: String,
    pub membership: String,
    pub room_version: String,
    /// The signed member event.
    pub event_json: String,
    /// JSON array of stripped state events.
    pub stripped_state: String,
    pub stream_pos: i64,
}

pub async fn put_remote_membership(tx: &mut Tx, user_id: &str, m: &RemoteMembership) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO remote_memberships
             (user_id, room_id, membership, room_version, event_json, stripped_state, stream_pos)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (user_id, room_id) DO UPDATE SET membership = EXCLUDED.membership,
             room_version = EXCLUDED.room_version, event_json = EXCLUDED.event_json,
             stripped_state = EXCLUDED.stripped_state, stream_pos = EXCLUDED.stream_pos",
    )
    .bind(user_id)
    .bind(&m.room_id)
    .bind(&m.membership)
    .bind(&m.room_version)
    .bind(&m.event_json)
    .bind(&m.stripped_state)
    .bind(m.stream_pos)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const REMOTE_COLUMNS: &str = "room_id, membership, room_version, event_json, stripped_state, stream_pos";

pub async fn remote_membership(db: &Db, user_id: &str, room_id: &str) -> sqlx::Result<Option<RemoteMembership>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {REMOTE_COLUMNS} FROM remote_memberships WHERE user_id = $1 AND room_id = $2"
    )))
    .bind(user_id)
    .bind(room_id)
    .fetch_optional(db.read())
    .await
}

pub async fn remote_memberships_of_user(db: &Db, user_id: &str) -> sqlx::Result<Vec<RemoteMembership>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {REMOTE_COLUMNS} FROM remote_memberships WHERE user_id = $1 ORDER BY room_id"
    )))
    .bind(user_id)
    .fetch_all(db.read())
    .await
}

pub async fn delete_remote_membership(tx: &mut Tx, user_id: &str, room_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM remote_memberships WHERE user_id = $1 AND room_id = $2")
        .bind(user_id)
        .bind(room_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The statements that replace the forward extremities `referenced` by a new event (run by
/// `storage::events::append_script`); the arguments are placeholders.
pub(super) fn advance_extremities_statements(room_id: &str, referenced: &[String], new: &str) -> Vec<String> {
    let mut statements = Vec::with_capacity(2);
    if !referenced.is_empty() {
        statements.push(format!(
            "DELETE FROM room_extremities WHERE room_id = {room_id} AND event_id IN ({})",
            referenced.join(", ")
        ));
    }
    statements.push(format!(
        "INSERT INTO room_extremities (room_id, event_id) VALUES ({room_id}, {new}) ON CONFLICT DO NOTHING"
    ));
    statements
}

/// One change of the current state: `event_id` None removes the entry.
pub struct StateChange<'a> {
    pub event_type: &'a str,
    pub state_key: &'a str,
    pub event_id: Option<&'a str>,
    pub membership: Option<&'a str>,
}

/// Moves the room's current state to `group`, applying `changes` to the current_state table.
pub async fn set_current_state(
    tx: &mut Tx,
    room_id: &str,
    group: i64,
    changes: &[StateChange<'_>],
) -> sqlx::Result<()> {
    sqlx::query("UPDATE rooms SET current_state_group = $1 WHERE room_id = $2")
        .bind(group)
        .bind(room_id)
        .execute(&mut **tx)
        .await?;
    for c in changes {
        match c.event_id {
            Some(event_id) => {
                sqlx::query(
                    "INSERT INTO current_state (room_id, event_type, state_key, event_id, membership)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (room_id, event_type, state_key)
                     DO UPDATE SET event_id = EXCLUDED.event_id, membership = EXCLUDED.membership",
                )
                .bind(room_id)
                .bind(c.event_type)
                .bind(c.state_key)
                .bind(event_id)
                .bind(c.membership)
                .execute(&mut **tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM current_state WHERE room_id = $1 AND event_type = $2 AND state_key = $3")
                    .bind(room_id)
                    .bind(c.event_type)
                    .bind(c.state_key)
                    .execute(&mut **tx)
                    .await?;
            }
        }
    }
    Ok(())
}

/// The event ID of a current state entry.
pub async fn current_state_event(
    db: &Db,
    room_id: &str,
    event_type: &str,
    state_key: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT event_id FROM current_state WHERE room_id = $1 AND event_type = $2 AND state_key = $3")
        .bind(room_id)
        .bind(event_type)
        .bind(state_key)
        .fetch_optional(db.read())
        .await
}

/// A user's current membership in a room.
pub async fn membership(db: &Db, room_id: &str, user_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT membership FROM current_state WHERE room_id = $1 AND event_type = 'm.room.member' AND state_key = $2",
    )
    .bind(room_id)
    .bind(user_id)
    .fetch_optional(db.read())
    .await
    .map(Option::flatten)
}

/// Members of a room with the given memberships: (user_id, membership, event_id).
pub async fn members(db: &Db, room_id: &str) -> sqlx::Result<Vec<(String, String, String)>> {
    sqlx::query_as(
        "SELECT state_key, membership, event_id FROM current_state
         WHERE room_id = $1 AND event_type = 'm.room.member' ORDER BY state_key",
    )
    .bind(room_id)
    .fetch_all(db.read())
    .await
}

/// Most rooms named in one query (bind parameters are limited).
const ROOMS_PER_QUERY: usize = 500;

/// The joined and invited members of some rooms, sorted by room and user:
/// (room_id, user_id, membership).
pub async fn joined_and_invited(db: &Db, room_ids: &[&str]) -> sqlx::Result<Vec<(String, String, String)>> {
    let mut found = Vec::new();
    for batch in room_ids.chunks(ROOMS_PER_QUERY) {
        let rooms: Vec<String> = (1..=batch.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT room_id, state_key, membership FROM current_state
             WHERE room_id IN ({}) AND event_type = 'm.room.member' AND membership IN ('join', 'invite')
             ORDER BY room_id, state_key",
            rooms.join(", ")
        );
        let mut query = sqlx::query_as::<_, (String, String, String)>(sqlx::AssertSqlSafe(sql));
        for room in batch {
            query = query.bind(*room);
        }
        found.extend(query.fetch_all(db.read()).await?);
    }
    Ok(found)
}

/// Users joined to or invited into a room (those to wake for its news).
pub async fn interested_users(db: &Db, room_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT state_key FROM current_state
         WHERE room_id = $1 AND event_type = 'm.room.member' AND membership IN ('join', 'invite', 'knock')",
    )
    .bind(room_id)
    .fetch_all(db.read())
    .await
}

/// Rooms where a user's current membership is `membership`.
pub async fn rooms_of_user(db: &Db, user_id: &str, membership: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT room_id FROM current_state
         WHERE state_key = $1 AND event_type = 'm.room.member' AND membership = $2 ORDER BY room_id",
    )
    .bind(user_id)
    .bind(membership)
    .fetch_all(db.read())
    .await
}

/// Every room where a user has a membership, with it: (room_id, membership).
pub async fn memberships_of_user(db: &Db, user_id: &str) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT room_id, membership FROM current_state
         WHERE state_key = $1 AND event_type = 'm.room.member' AND membership IS NOT NULL ORDER BY room_id",
    )
    .bind(user_id)
    .fetch_all(db.read())
    .await
}

pub async fn set_published(tx: &mut Tx, room_id: &str, published: bool) -> sqlx::Result<()> {
    sqlx::query("UPDATE rooms SET published = $1 WHERE room_id = $2")
        .bind(published as i64)
        .bind(room_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn is_published(db: &Db, room_id: &str) -> sqlx::Result<bool> {
    let v: Option<i64> = sqlx::query_scalar("SELECT published FROM rooms WHERE room_id = $1")
        .bind(room_id)
        .fetch_optional(db.read())
        .await?;
    Ok(v.unwrap_or(0) != 0)
}

/// Published rooms, in room ID order, after `since` (exclusive).
pub async fn published_rooms(db: &Db) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT room_id FROM rooms WHERE published = 1 ORDER BY room_id").fetch_all(db.read()).await
}

pub async fn forget(tx: &mut Tx, user_id: &str, room_id: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO forgotten_rooms (user_id, room_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(user_id)
        .bind(room_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn unforget(tx: &mut Tx, user_id: &str, room_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2")
        .bind(user_id)
        .bind(room_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Adds an alias; `Ok(false)` when it is taken.
pub async fn create_alias(tx: &mut Tx, alias: &str, room_id: &str, creator: &str) -> sqlx::Result<bool> {
    let res =
        sqlx::query("INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(alias)
            .bind(room_id)
            .bind(creator)
            .execute(&mut **tx)
            .await?;
    Ok(res.rows_affected() == 1)
}

/// (room_id, creator) of an alias.
pub async fn resolve_alias(db: &Db, alias: &str) -> sqlx::Result<Option<(String, String)>> {
    sqlx::query_as("SELECT room_id, creator FROM room_aliases WHERE alias = $1")
        .bind(alias)
        .fetch_optional(db.read())
        .await
}

pub async fn delete_alias(tx: &mut Tx, alias: &str) -> sqlx::Result<bool> {
    let res = sqlx::query("DELETE FROM room_aliases WHERE alias = $1").bind(alias).execute(&mut **tx).await?;
    Ok(res.rows_affected() == 1)
}

pub async fn aliases_of_room(db: &Db, room_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias")
        .bind(room_id)
        .fetch_all(db.read())
        .await
}

/// Points every alias of `old_room` at `new_room` (room upgrades).
pub async fn move_aliases(tx: &mut Tx, old_room: &str, new_room: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE room_aliases SET room_id = $1 WHERE room_id = $2")
        .bind(new_room)
        .bind(old_room)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn joined_member_count(db: &Db, room_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM current_state WHERE room_id = $1 AND event_type = 'm.room.member' AND membership = 'join'",
    )
    .bind(room_id)
    .fetch_one(db.read())
    .await
}

/// Users joined to a room.
pub async fn joined_users(db: &Db, room_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT state_key FROM current_state WHERE room_id = $1 AND event_type = 'm.room.member' AND membership = 'join'",
    )
    .bind(room_id)
    .fetch_all(db.read())
    .await
}

/// Whether two users are both joined to at least one room.
pub async fn share_joined_room(db: &Db, user_a: &str, user_b: &str) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM current_state a JOIN current_state b ON a.room_id = b.room_id
         WHERE a.event_type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join'
           AND b.event_type = 'm.room.member' AND b.state_key = $2 AND b.membership = 'join'
         LIMIT 1",
    )
    .bind(user_a)
    .bind(user_b)
    .fetch_optional(db.read())
    .await?;
    Ok(found.is_some())
}

/// Users joined to any room `user_id` is joined to (including `user_id`).
pub async fn users_sharing_rooms(db: &Db, user_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT DISTINCT b.state_key FROM current_state a JOIN current_state b ON a.room_id = b.room_id
         WHERE a.event_type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join'
           AND b.event_type = 'm.room.member' AND b.membership = 'join'",
    )
    .bind(user_id)
    .fetch_all(db.read())
    .await
}

/// Every room this server knows: (room_id, room_version, creator).
pub async fn all_rooms(db: &Db) -> sqlx::Result<Vec<(String, String, String)>> {
    sqlx::query_as("SELECT room_id, room_version, creator FROM rooms ORDER BY room_id").fetch_all(db.read()).await
}

/// The creator recorded when the room was created or joined here.
pub async fn creator(db: &Db, room_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT creator FROM rooms WHERE room_id = $1").bind(room_id).fetch_optional(db.read()).await
}

pub async fn block(tx: &mut Tx, room_id: &str, blocked_by: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO blocked_rooms (room_id, blocked_by, blocked_ts) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(room_id)
    .bind(blocked_by)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn unblock(tx: &mut Tx, room_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM blocked_rooms WHERE room_id = $1").bind(room_id).execute(&mut **tx).await?;
    Ok(())
}

/// Who blocked the room, if it is blocked.
pub async fn blocked_by(db: &Db, room_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT blocked_by FROM blocked_rooms WHERE room_id = $1")
        .bind(room_id)
        .fetch_optional(db.read())
        .await
}

pub async fn delete_aliases_of_room(tx: &mut Tx, room_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM room_aliases WHERE room_id = $1").bind(room_id).execute(&mut **tx).await?;
    Ok(())
}

/// Removes everything stored about a room (its events, state, receipts, relations...):
/// the room is unknown afterwards. Blocks and reports stay.
pub async fn purge(tx: &mut Tx, room_id: &str) -> sqlx::Result<()> {
    let by_event =
        ["DELETE FROM state_group_entries WHERE group_id IN (SELECT id FROM state_groups WHERE room_id = $1)"];
    let by_room = [
        "events",
        "state_groups",
        "current_state",
        "room_extremities",
        "event_txns",
        "event_relations",
        "room_aliases",
        "receipts",
        "forgotten_rooms",
        "push_notifications",
        "event_search",
        "remote_memberships",
        "rooms",
    ];
    for sql in by_event {
        sqlx::query(sql).bind(room_id).execute(&mut **tx).await?;
    }
    for table in by_room {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE room_id = $1")))
            .bind(room_id)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("DELETE FROM account_data WHERE room_id = $1").bind(room_id).execute(&mut **tx).await?;
    Ok(())
}

/// The server notices room of a user.
pub async fn server_notice_room(db: &Db, user_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT room_id FROM server_notice_rooms WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(db.read())
        .await
}

pub async fn set_server_notice_room(tx: &mut Tx, user_id: &str, room_id: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO server_notice_rooms (user_id, room_id) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET room_id = EXCLUDED.room_id",
    )
    .bind(user_id)
    .bind(room_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
