//! Simplified sliding sync: room bump stamps, the user's room list in one query, and the
//! connections' per-room sent state.

use sqlx::Row;

use super::{Db, Tx};

/// One room of a user, as a room list sees it.
#[derive(Debug, Clone)]
pub struct ListedRoom {
    pub room_id: String,
    pub membership: String,
    /// Who sent the membership event (a kick or ban comes from someone else).
    pub membership_sender: String,
    pub membership_event_id: String,
    /// Stream position of the membership event.
    pub membership_pos: Option<i64>,
    /// Newest "bump" event of the room.
    pub bump_pos: Option<i64>,
}

/// The statement that raises a room's bump stamp to `pos` (run by `storage::events::append_script`);
/// the arguments are SQL expressions.
pub(super) fn bump_statement(room_id: &str, pos: &str) -> String {
    format!(
        "INSERT INTO room_bump_stamps (room_id, bump_pos) VALUES ({room_id}, {pos})
         ON CONFLICT (room_id) DO UPDATE SET bump_pos = EXCLUDED.bump_pos
         WHERE room_bump_stamps.bump_pos < EXCLUDED.bump_pos"
    )
}

const LISTED_ROOM: &str = "SELECT cs.room_id, cs.membership, cs.event_id, e.sender, e.stream_pos, b.bump_pos
     FROM current_state cs
     LEFT JOIN events e ON e.event_id = cs.event_id
     LEFT JOIN room_bump_stamps b ON b.room_id = cs.room_id
     WHERE cs.state_key = $1 AND cs.event_type = 'm.room.member' AND cs.membership IS NOT NULL";

/// Most rooms named in one query (bind parameters are limited).
const ROOMS_PER_QUERY: usize = 500;

/// Every room where `user_id` has a membership, with what sorting and filtering need.
pub async fn rooms_of_user(db: &Db, user_id: &str) -> sqlx::Result<Vec<ListedRoom>> {
    let rows = sqlx::query(LISTED_ROOM).bind(user_id).fetch_all(db.read()).await?;
    rows.iter().map(listed_room).collect()
}

/// The rooms among `room_ids` where `user_id` has a membership, as [`rooms_of_user`] has them.
pub async fn rooms_of_user_among(db: &Db, user_id: &str, room_ids: &[&str]) -> sqlx::Result<Vec<ListedRoom>> {
    let mut found = Vec::new();
    for batch in room_ids.chunks(ROOMS_PER_QUERY) {
        let params: Vec<String> = (0..batch.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!("{LISTED_ROOM} AND cs.room_id IN ({})", params.join(", "));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user_id);
        for room in batch {
            query = query.bind(*room);
        }
        for row in query.fetch_all(db.read()).await? {
            found.push(listed_room(&row)?);
        }
    }
    Ok(found)
}

fn listed_room(r: &sqlx::any::AnyRow) -> sqlx::Result<ListedRoom> {
    Ok(ListedRoom {
        room_id: r.try_get("room_id")?,
        membership: r.try_get("membership")?,
        membership_event_id: r.try_get("event_id")?,
        membership_sender: r.try_get::<Option<String>, _>("sender")?.unwrap_or_default(),
        membership_pos: r.try_get("stream_pos")?,
        bump_pos: r.try_get("bump_pos")?,
    })
}

/// Rooms of `user_id` (any membership) that have a current state event of `event_type`
/// with an empty state key: (room_id, event JSON).
pub async fn user_rooms_with_state(db: &Db, user_id: &str, event_type: &str) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT s.room_id, e.json FROM current_state m
         JOIN current_state s ON s.room_id = m.room_id AND s.event_type = $2 AND s.state_key = ''
         JOIN events e ON e.event_id = s.event_id
         WHERE m.state_key = $1 AND m.event_type = 'm.room.member' AND m.membership IS NOT NULL",
    )
    .bind(user_id)
    .bind(event_type)
    .fetch_all(db.read())
    .await
}

/// Rooms whose receipts changed at positions in (`after`, `up_to`].
pub async fn rooms_with_receipts(db: &Db, after: i64, up_to: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT room_id FROM receipts WHERE stream_pos > $1 AND stream_pos <= $2")
        .bind(after)
        .bind(up_to)
        .fetch_all(db.read())
        .await
}

/// Identifies a connection: (user_id, device_id, conn_id).
pub type ConnKey<'a> = (&'a str, &'a str, &'a str);

/// (generation, counter) of a connection.
pub async fn connection(db: &Db, key: ConnKey<'_>) -> sqlx::Result<Option<(i64, i64)>> {
    sqlx::query_as(
        "SELECT generation, counter FROM sliding_sync_connections
         WHERE user_id = $1 AND device_id = $2 AND conn_id = $3",
    )
    .bind(key.0)
    .bind(key.1)
    .bind(key.2)
    .fetch_optional(db.read())
    .await
}

/// Starts a connection over: a new generation, nothing sent.
pub async fn reset_connection(tx: &mut Tx, key: ConnKey<'_>, generation: i64) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM sliding_sync_rooms WHERE user_id = $1 AND device_id = $2 AND conn_id = $3")
        .bind(key.0)
        .bind(key.1)
        .bind(key.2)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO sliding_sync_connections (user_id, device_id, conn_id, generation, counter)
         VALUES ($1, $2, $3, $4, 0)
         ON CONFLICT (user_id, device_id, conn_id) DO UPDATE SET generation = EXCLUDED.generation, counter = 0",
    )
    .bind(key.0)
    .bind(key.1)
    .bind(key.2)
    .bind(generation)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Numbers a new response of a connection that is still of `generation`: its counter, or
/// None when the connection was started over meanwhile.
pub async fn next_counter(tx: &mut Tx, key: ConnKey<'_>, generation: i64) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "UPDATE sliding_sync_connections SET counter = counter + 1
         WHERE user_id = $1 AND device_id = $2 AND conn_id = $3 AND generation = $4
         RETURNING counter",
    )
    .bind(key.0)
    .bind(key.1)
    .bind(key.2)
    .bind(generation)
    .fetch_optional(&mut **tx)
    .await
}

/// What a connection has sent of a room.
#[derive(Debug, Clone)]
pub struct SentRoom {
    pub first_sent: i64,
    pub sent_up_to: i64,
    pub required_state: String,
}

/// The rooms a connection has sent.
pub async fn sent_rooms(db: &Db, key: ConnKey<'_>) -> sqlx::Result<Vec<(String, SentRoom)>> {
    let rows = sqlx::query(
        "SELECT room_id, first_sent, sent_up_to, required_state FROM sliding_sync_rooms
         WHERE user_id = $1 AND device_id = $2 AND conn_id = $3",
    )
    .bind(key.0)
    .bind(key.1)
    .bind(key.2)
    .fetch_all(db.read())
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("room_id")?,
                SentRoom {
                    first_sent: r.try_get("first_sent")?,
                    sent_up_to: r.try_get("sent_up_to")?,
                    required_state: r.try_get("required_state")?,
                },
            ))
        })
        .collect()
}

pub async fn put_sent_room(tx: &mut Tx, key: ConnKey<'_>, room_id: &str, sent: &SentRoom) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO sliding_sync_rooms (user_id, device_id, conn_id, room_id, first_sent, sent_up_to, required_state)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (user_id, device_id, conn_id, room_id)
         DO UPDATE SET first_sent = EXCLUDED.first_sent, sent_up_to = EXCLUDED.sent_up_to,
                       required_state = EXCLUDED.required_state",
    )
    .bind(key.0)
    .bind(key.1)
    .bind(key.2)
    .bind(room_id)
    .bind(sent.first_sent)
    .bind(sent.sent_up_to)
    .bind(&sent.required_state)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
