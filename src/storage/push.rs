//! Push rules and the notifying events behind unread counts and `/notifications`.

use std::collections::HashMap;

use super::script::Script;
use super::{Db, DbKind, Tx};

pub async fn ruleset(db: &Db, user_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT ruleset FROM push_rules WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(db.read())
        .await
}

/// A user's stored ruleset, its row locked until the transaction ends (PostgreSQL), so that
/// an edit on another process waits to read it until this one is committed. SQLite has one
/// writer process, whose edits are serialised in memory.
pub async fn ruleset_for_update(tx: &mut Tx, kind: DbKind, user_id: &str) -> sqlx::Result<Option<String>> {
    let sql = match kind {
        DbKind::Postgres => "SELECT ruleset FROM push_rules WHERE user_id = $1 FOR UPDATE",
        DbKind::Sqlite => "SELECT ruleset FROM push_rules WHERE user_id = $1",
    };
    sqlx::query_scalar(sql).bind(user_id).fetch_optional(&mut **tx).await
}

pub async fn put_ruleset(tx: &mut Tx, user_id: &str, ruleset: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO push_rules (user_id, ruleset) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET ruleset = EXCLUDED.ruleset",
    )
    .bind(user_id)
    .bind(ruleset)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An event that notified users: what their notifications share (but the stream position).
pub struct NotifyingEvent<'a> {
    pub room_id: &'a str,
    pub thread_id: &'a str,
    pub event_id: &'a str,
    pub ts: i64,
}

/// One user's notification of an event: (user, highlight, actions as JSON).
pub type Notified<'a> = (&'a str, bool, &'a str);

/// Values an append's script binds per notified user.
pub const SCRIPT_ARGS_PER_NOTIFIED: usize = 3;

/// Adds to an append's script the event's notifications, at the script's position, and a
/// push queued for every pusher of the notified users.
pub fn notify_in_script(script: &mut Script, event: &NotifyingEvent<'_>, users: &[Notified<'_>]) {
    if users.is_empty() {
        return;
    }
    let pos = script.pos();
    let shared = [pos.to_owned(), script.arg(event.room_id), script.arg(event.thread_id), script.arg(event.event_id)];
    let ts = script.arg(event.ts);
    let rows: Vec<[String; 3]> = users
        .iter()
        .map(|(user, highlight, actions)| [script.arg(*user), script.arg(i64::from(*highlight)), script.arg(*actions)])
        .collect();
    script.push(notifications_statement(&shared, &ts, &rows));
    let users: Vec<&str> = rows.iter().map(|row| row[0].as_str()).collect();
    script.push(pushes_statement(pos, &ts, &users));
}

/// Rows per statement: a few fixed sizes, so that the prepared statements stay few.
const NOTIFICATION_CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];

/// Stores an event's notifications at `pos` and queues their pushes, in statements of their
/// own: for the rooms of more notified members than an append's script can bind. A thousand
/// members cost six statements.
pub async fn notify(tx: &mut Tx, pos: i64, event: &NotifyingEvent<'_>, users: &[Notified<'_>]) -> sqlx::Result<()> {
    let mut rest = users;
    while !rest.is_empty() {
        let size = NOTIFICATION_CHUNKS.into_iter().find(|size| *size <= rest.len()).unwrap_or(1);
        let (chunk, after) = rest.split_at(size);
        rest = after;
        let placeholder = |n: usize| format!("${n}");
        let shared = [1, 2, 3, 4].map(placeholder);
        let rows: Vec<[String; 3]> = (0..size).map(|i| [6, 7, 8].map(|n| placeholder(n + 3 * i))).collect();
        let mut query = sqlx::query(sqlx::AssertSqlSafe(notifications_statement(&shared, "$5", &rows)))
            .bind(pos)
            .bind(event.room_id)
            .bind(event.thread_id)
            .bind(event.event_id)
            .bind(event.ts);
        for (user, highlight, actions) in chunk {
            query = query.bind(*user).bind(i64::from(*highlight)).bind(*actions);
        }
        query.execute(&mut **tx).await?;
        let users: Vec<String> = (0..size).map(|i| placeholder(i + 3)).collect();
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        let mut query = sqlx::query(sqlx::AssertSqlSafe(pushes_statement("$1", "$2", &users))).bind(pos).bind(event.ts);
        for (user, _, _) in chunk {
            query = query.bind(*user);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Inserts notifications: `shared` holds the placeholders of (stream position, room, thread,
/// event), each row those of (user, highlight, actions).
fn notifications_statement(shared: &[String; 4], ts: &str, rows: &[[String; 3]]) -> String {
    let [pos, room, thread, event] = shared;
    let rows: Vec<String> = rows
        .iter()
        .map(|[user, highlight, actions]| {
            format!("({user}, {pos}, {room}, {thread}, {event}, {highlight}, {actions}, {ts})")
        })
        .collect();
    format!(
        "INSERT INTO push_notifications (user_id, stream_pos, room_id, thread_id, event_id, highlight, actions, ts)
         VALUES {} ON CONFLICT (user_id, stream_pos) DO NOTHING",
        rows.join(", ")
    )
}

/// Queues a push of the notification at `pos` for every pusher of the users (placeholders).
/// It names the users rather than reading their notifications: on PostgreSQL the statements of
/// a script do not see each other's rows.
fn pushes_statement(pos: &str, ts: &str, users: &[&str]) -> String {
    format!(
        "INSERT INTO push_outbox (pusher_id, stream_pos, queued_ts) SELECT id, {pos}, {ts} FROM pushers
         WHERE user_id IN ({})",
        users.join(", ")
    )
}

/// The pushers of some users.
pub async fn pushers_of(db: &Db, users: &[&str]) -> sqlx::Result<Vec<i64>> {
    let mut found = Vec::new();
    for chunk in users.chunks(500) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
        let sql = format!("SELECT id FROM pushers WHERE user_id IN ({})", placeholders.join(", "));
        let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
        for user in chunk {
            query = query.bind(*user);
        }
        let ids: Vec<i64> = query.fetch_all(db.read()).await?;
        found.extend(ids);
    }
    Ok(found)
}

/// SQL condition: notification `n` is read, i.e. the user has a read receipt (public or
/// private) on an event at or after it, unthreaded or in the notification's thread.
/// Threaded receipts carry 'main' or a thread root's event ID; anything else is unthreaded.
const IS_READ: &str = "EXISTS (
    SELECT 1 FROM receipts r JOIN events e ON e.event_id = r.event_id
    WHERE r.room_id = n.room_id AND r.user_id = n.user_id AND r.receipt_type IN ('m.read', 'm.read.private')
      AND e.stream_pos >= n.stream_pos
      AND (r.thread_id = n.thread_id OR (r.thread_id <> 'main' AND r.thread_id NOT LIKE '$%')))";

/// Most rooms named in one query (bind parameters are limited).
const ROOMS_PER_QUERY: usize = 500;

/// Unread (notification, highlight) counts of a user in some rooms, per room and thread
/// ('main' for the main timeline): (room_id, thread_id, notifications, highlights).
///
/// Same rule as [`IS_READ`], without testing each notification against the receipts: a
/// thread is read up to the later of the room's newest unthreaded receipt and its own, so
/// counting what lies past those positions is an index range scan per room. Three
/// statements for all rooms: the read positions, the counts past the main timeline's, and
/// the (rare, partially indexed) threaded notifications, which are moved to their threads.
/// Only notifications at positions up to `up_to` count, so that the counts are those of a
/// sync answer's position (`sync::recent` adds the notifications after it).
pub async fn unread_counts(
    db: &Db,
    user_id: &str,
    room_ids: &[&str],
    up_to: i64,
) -> sqlx::Result<Vec<(String, String, i64, i64)>> {
    let mut found = Vec::new();
    for batch in room_ids.chunks(ROOMS_PER_QUERY) {
        found.extend(unread_counts_in(db, user_id, batch, up_to).await?);
    }
    Ok(found)
}

/// The main timeline's thread ID in receipts and notifications.
const MAIN: &str = "main";

async fn unread_counts_in(
    db: &Db,
    user_id: &str,
    rooms: &[&str],
    up_to: i64,
) -> sqlx::Result<Vec<(String, String, i64, i64)>> {
    let in_list = (0..rooms.len()).map(|i| format!("${}", i + 2)).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT r.room_id, r.thread_id, MAX(e.stream_pos) FROM receipts r JOIN events e ON e.event_id = r.event_id
         WHERE r.user_id = $1 AND r.room_id IN ({in_list}) AND r.receipt_type IN ('m.read', 'm.read.private')
         GROUP BY r.room_id, r.thread_id"
    );
    let mut query = sqlx::query_as::<_, (String, String, Option<i64>)>(sqlx::AssertSqlSafe(sql)).bind(user_id);
    for room in rooms {
        query = query.bind(*room);
    }
    // Per room: read up to (unthreaded receipts, each thread's receipts).
    let mut read: HashMap<String, (i64, HashMap<String, i64>)> = HashMap::new();
    for (room, thread, pos) in query.fetch_all(db.read()).await? {
        let Some(pos) = pos else { continue };
        let (unthreaded, threads) = read.entry(room).or_insert_with(|| (-1, HashMap::new()));
        if thread == MAIN || thread.starts_with('$') {
            threads.insert(thread, pos);
        } else {
            *unthreaded = (*unthreaded).max(pos);
        }
    }
    let none = (-1, HashMap::new());
    let read_of = |room: &str| read.get(room).unwrap_or(&none);
    let read_up_to = |room: &str, thread: &str| {
        let (unthreaded, threads) = read_of(room);
        threads.get(thread).map_or(*unthreaded, |t| (*t).max(*unthreaded))
    };

    // All notifications past the main timeline's read position, threaded ones included.
    let values = |first: usize| {
        (0..rooms.len()).map(|i| format!("(${}, ${})", first + 2 * i, first + 2 * i + 1)).collect::<Vec<_>>().join(", ")
    };
    let past = "FROM push_notifications n WHERE n.user_id = $1 AND n.room_id = f.column1 AND n.stream_pos > f.column2
                AND n.stream_pos <= $2";
    let sql = format!(
        "SELECT f.column1, ({count}), ({count} AND n.highlight = 1) FROM (VALUES {values}) AS f",
        count = format_args!("SELECT COUNT(*) {past}"),
        values = values(3),
    );
    let mut query = sqlx::query_as::<_, (String, i64, i64)>(sqlx::AssertSqlSafe(sql)).bind(user_id).bind(up_to);
    for room in rooms {
        query = query.bind(*room).bind(read_up_to(room, MAIN));
    }
    let mut counts: HashMap<(String, String), (i64, i64)> = HashMap::new();
    for (room, n, h) in query.fetch_all(db.read()).await? {
        counts.insert((room, MAIN.to_owned()), (n, h));
    }

    // Threaded notifications past the room's unthreaded read position (below it, every
    // thread is read): moved from the main count to their thread's.
    // SQLite would rather range-scan the room's index by position and look each row up in
    // the table to test its thread: all notifications past the read position, on every sync.
    let threads_index = match db.kind {
        DbKind::Sqlite => "INDEXED BY push_notifications_threads",
        DbKind::Postgres => "",
    };
    let sql = format!(
        "SELECT n.room_id, n.thread_id, n.stream_pos, n.highlight FROM (VALUES {values}) AS f
         JOIN push_notifications n {threads_index}
           ON n.user_id = $1 AND n.room_id = f.column1 AND n.thread_id <> '{MAIN}'
         WHERE n.stream_pos > f.column2 AND n.stream_pos <= $2",
        values = values(3),
    );
    let mut query = sqlx::query_as::<_, (String, String, i64, i64)>(sqlx::AssertSqlSafe(sql)).bind(user_id).bind(up_to);
    for room in rooms {
        query = query.bind(*room).bind(read_of(room).0);
    }
    for (room, thread, pos, highlight) in query.fetch_all(db.read()).await? {
        if pos > read_up_to(&room, MAIN)
            && let Some((n, h)) = counts.get_mut(&(room.clone(), MAIN.to_owned()))
        {
            *n -= 1;
            *h -= highlight;
        }
        if pos > read_up_to(&room, &thread) {
            let (n, h) = counts.entry((room, thread)).or_default();
            *n += 1;
            *h += highlight;
        }
    }
    Ok(counts.into_iter().filter(|(_, (n, _))| *n > 0).map(|((room, thread), (n, h))| (room, thread, n, h)).collect())
}

/// A stored notification with whether it has been read.
#[derive(sqlx::FromRow)]
pub struct Notification {
    pub stream_pos: i64,
    pub room_id: String,
    pub event_id: String,
    pub actions: String,
    pub ts: i64,
    pub read: i64,
}

/// A user's notifications before stream position `before`, newest first.
pub async fn notifications(
    db: &Db,
    user_id: &str,
    before: i64,
    only_highlight: bool,
    limit: i64,
) -> sqlx::Result<Vec<Notification>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT n.stream_pos, n.room_id, n.event_id, n.actions, n.ts,
                CAST(CASE WHEN {IS_READ} THEN 1 ELSE 0 END AS BIGINT) AS read
         FROM push_notifications n
         WHERE n.user_id = $1 AND n.stream_pos < $2 AND ($3 = 0 OR n.highlight = 1)
         ORDER BY n.stream_pos DESC LIMIT $4"
    )))
    .bind(user_id)
    .bind(before)
    .bind(i64::from(only_highlight))
    .bind(limit)
    .fetch_all(db.read())
    .await
}

/// The number of a user's unread notifications up to stream position `up_to`, in rooms they
/// are joined or invited to (the badge of push gateways).
pub async fn unread_total(db: &Db, user_id: &str, up_to: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM push_notifications n
         WHERE n.user_id = $1 AND n.stream_pos <= $2 AND NOT {IS_READ}
           AND EXISTS (SELECT 1 FROM current_state m WHERE m.room_id = n.room_id AND m.event_type = 'm.room.member'
                       AND m.state_key = n.user_id AND m.membership IN ('join', 'invite'))"
    )))
    .bind(user_id)
    .bind(up_to)
    .fetch_one(db.read())
    .await
}

/// The room, event and actions of the notification of a user at a stream position.
pub async fn notification(db: &Db, user_id: &str, stream_pos: i64) -> sqlx::Result<Option<(String, String, String)>> {
    sqlx::query_as("SELECT room_id, event_id, actions FROM push_notifications WHERE user_id = $1 AND stream_pos = $2")
        .bind(user_id)
        .bind(stream_pos)
        .fetch_optional(db.read())
        .await
}

/// A pusher as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PusherRow {
    pub id: i64,
    pub user_id: String,
    pub device_id: String,
    pub app_id: String,
    pub pushkey: String,
    pub pusher_json: String,
    pub pushkey_ts: i64,
}

const PUSHER_COLUMNS: &str = "id, user_id, device_id, app_id, pushkey, pusher_json, pushkey_ts";

/// A new or changed pusher.
pub struct NewPusher<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
    pub app_id: &'a str,
    pub pushkey: &'a str,
    pub pusher_json: &'a str,
    pub now: i64,
}

/// Creates the user's pusher with this app ID and pushkey, or updates it (keeping its ID and
/// so its queued pushes).
pub async fn put_pusher(tx: &mut Tx, p: &NewPusher<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO pushers (user_id, device_id, app_id, pushkey, pusher_json, pushkey_ts)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (app_id, pushkey, user_id) DO UPDATE SET device_id = EXCLUDED.device_id,
             pusher_json = EXCLUDED.pusher_json, pushkey_ts = EXCLUDED.pushkey_ts",
    )
    .bind(p.user_id)
    .bind(p.device_id)
    .bind(p.app_id)
    .bind(p.pushkey)
    .bind(p.pusher_json)
    .bind(p.now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Deletes the pushers matching `condition` (static SQL over `pushers` columns, with `binds`
/// as $1, $2...) and their queued pushes. Returns how many pushers went.
async fn delete_pushers(tx: &mut Tx, condition: &'static str, binds: &[&str]) -> sqlx::Result<u64> {
    let mut outbox = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM push_outbox WHERE pusher_id IN (SELECT id FROM pushers WHERE {condition})"
    )));
    let mut pushers = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM pushers WHERE {condition}")));
    for bind in binds {
        outbox = outbox.bind(*bind);
        pushers = pushers.bind(*bind);
    }
    outbox.execute(&mut **tx).await?;
    Ok(pushers.execute(&mut **tx).await?.rows_affected())
}

/// Deletes a user's pusher; false when there was none.
pub async fn delete_pusher(tx: &mut Tx, user_id: &str, app_id: &str, pushkey: &str) -> sqlx::Result<bool> {
    let condition = "user_id = $1 AND app_id = $2 AND pushkey = $3";
    Ok(delete_pushers(tx, condition, &[user_id, app_id, pushkey]).await? > 0)
}

/// Deletes the pushers with this app ID and pushkey of users other than `user_id`.
pub async fn delete_other_users_pushers(tx: &mut Tx, user_id: &str, app_id: &str, pushkey: &str) -> sqlx::Result<()> {
    let condition = "user_id <> $1 AND app_id = $2 AND pushkey = $3";
    delete_pushers(tx, condition, &[user_id, app_id, pushkey]).await.map(drop)
}

/// Deletes the pushers a device set (the device is being deleted).
pub async fn delete_device_pushers(tx: &mut Tx, user_id: &str, device_id: &str) -> sqlx::Result<()> {
    delete_pushers(tx, "user_id = $1 AND device_id = $2", &[user_id, device_id]).await.map(drop)
}

/// Deletes the pushers of every device of a user but `keep` (those devices are being deleted).
pub async fn delete_pushers_except_device(tx: &mut Tx, user_id: &str, keep: &str) -> sqlx::Result<()> {
    delete_pushers(tx, "user_id = $1 AND device_id <> $2", &[user_id, keep]).await.map(drop)
}

pub async fn pushers(db: &Db, user_id: &str) -> sqlx::Result<Vec<PusherRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {PUSHER_COLUMNS} FROM pushers WHERE user_id = $1 ORDER BY id")))
        .bind(user_id)
        .fetch_all(db.read())
        .await
}

pub async fn pusher(db: &Db, id: i64) -> sqlx::Result<Option<PusherRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {PUSHER_COLUMNS} FROM pushers WHERE id = $1")))
        .bind(id)
        .fetch_optional(db.read())
        .await
}

/// Queues a badge update for every pusher of a user. Returns the pushers that got one.
pub async fn queue_badges(tx: &mut Tx, user_id: &str, now: i64) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "INSERT INTO push_outbox (pusher_id, stream_pos, queued_ts)
         SELECT id, NULL, $2 FROM pushers WHERE user_id = $1 RETURNING pusher_id",
    )
    .bind(user_id)
    .bind(now)
    .fetch_all(&mut **tx)
    .await
}

/// A queued push: a notification (`stream_pos`) or a badge update (None).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueuedPush {
    pub id: i64,
    pub stream_pos: Option<i64>,
    pub queued_ts: i64,
}

/// The oldest queued push of a pusher.
pub async fn next_push(db: &Db, pusher_id: i64) -> sqlx::Result<Option<QueuedPush>> {
    sqlx::query_as("SELECT id, stream_pos, queued_ts FROM push_outbox WHERE pusher_id = $1 ORDER BY id LIMIT 1")
        .bind(pusher_id)
        .fetch_optional(db.read())
        .await
}

/// Whether a badge update is queued for the pusher after push `id` (which it supersedes).
pub async fn later_badge(db: &Db, pusher_id: i64, id: i64) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM push_outbox WHERE pusher_id = $1 AND id > $2 AND stream_pos IS NULL LIMIT 1",
    )
    .bind(pusher_id)
    .bind(id)
    .fetch_optional(db.read())
    .await?;
    Ok(found.is_some())
}

pub async fn dequeue_push(db: &Db, id: i64) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM push_outbox WHERE id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await
}

/// Pushers with queued pushes.
pub async fn queued_pushers(db: &Db) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar("SELECT DISTINCT pusher_id FROM push_outbox").fetch_all(db.read()).await
}
