//! What changed for one user between two stream positions, in one statement: an incremental
//! `/sync` then runs only the queries of the kinds of news there are.

use sqlx::Row;

use super::Db;

/// The kinds of news at positions in (`after`, `up_to`] for a user and device.
#[derive(Debug, Clone, Copy)]
pub struct NewsKinds {
    /// The user's own membership changed in some room.
    pub own_membership: bool,
    /// Someone's membership changed in some room (device lists: new or gone room-mates).
    pub any_membership: bool,
    pub account_data: bool,
    /// Invites, knocks or rejections in rooms this server is not in.
    pub remote_memberships: bool,
    /// To-device messages wait for the device (all acknowledged ones are already deleted).
    pub to_device: bool,
    pub device_lists: bool,
    pub presence: bool,
}

impl NewsKinds {
    /// Everything may be news (a sync from no token).
    pub const ALL: NewsKinds = NewsKinds {
        own_membership: true,
        any_membership: true,
        account_data: true,
        remote_memberships: true,
        to_device: true,
        device_lists: true,
        presence: true,
    };
}

pub async fn news_kinds(db: &Db, user_id: &str, device_id: &str, after: i64, up_to: i64) -> sqlx::Result<NewsKinds> {
    let flag =
        |exists: &str, name: &str| format!("CAST(CASE WHEN EXISTS ({exists}) THEN 1 ELSE 0 END AS BIGINT) AS {name}");
    let sql = [
        flag(
            "SELECT 1 FROM events WHERE state_key = $1 AND event_type = 'm.room.member'
             AND stream_pos > $3 AND stream_pos <= $4",
            "own_membership",
        ),
        flag(
            "SELECT 1 FROM events WHERE event_type = 'm.room.member' AND stream_pos > $3 AND stream_pos <= $4",
            "any_membership",
        ),
        flag("SELECT 1 FROM account_data WHERE user_id = $1 AND stream_pos > $3", "account_data"),
        flag("SELECT 1 FROM remote_memberships WHERE user_id = $1 AND stream_pos > $3", "remote_memberships"),
        flag("SELECT 1 FROM to_device_inbox WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $4", "to_device"),
        flag("SELECT 1 FROM device_list_changes WHERE stream_pos > $3 AND stream_pos <= $4", "device_lists"),
        flag("SELECT 1 FROM presence WHERE stream_pos > $3 AND stream_pos <= $4", "presence"),
    ]
    .join(", ");
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {sql}")))
        .bind(user_id)
        .bind(device_id)
        .bind(after)
        .bind(up_to)
        .fetch_one(db.read())
        .await?;
    let get = |name: &str| row.try_get::<i64, _>(name).map(|v| v != 0);
    Ok(NewsKinds {
        own_membership: get("own_membership")?,
        any_membership: get("any_membership")?,
        account_data: get("account_data")?,
        remote_memberships: get("remote_memberships")?,
        to_device: get("to_device")?,
        device_lists: get("device_lists")?,
        presence: get("presence")?,
    })
}
