//! The user directory: local accounts, and other servers' users as their member events in
//! rooms here show them, matched by user ID or display name (case-insensitive).

use super::users::like_pattern;
use super::{Db, DbKind};

#[derive(Debug, Clone)]
pub struct Entry {
    pub user_id: String,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

/// Whose users a search may find.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Everyone known here.
    All,
    /// Those joined to a room the searcher is joined to or to a public room (join rule
    /// `public`).
    VisibleTo(&'a str),
}

/// A text field of an event's content, from its stored JSON (NULL when it is not text).
fn content_field(kind: DbKind, json_column: &str, field: &str) -> String {
    match kind {
        DbKind::Sqlite => format!(
            "(CASE WHEN json_type({json_column}, '$.content.{field}') = 'text' \
             THEN json_extract({json_column}, '$.content.{field}') END)"
        ),
        DbKind::Postgres => format!("(({json_column})::jsonb -> 'content' ->> '{field}')"),
    }
}

/// Rooms whose members `Scope::VisibleTo($3)` may find; `room` is the column to test.
fn visible_rooms(kind: DbKind, room: &str) -> String {
    let join_rule = content_field(kind, "je.json", "join_rule");
    format!(
        "({room} IN (SELECT mine.room_id FROM current_state mine
                     WHERE mine.event_type = 'm.room.member' AND mine.state_key = $3 AND mine.membership = 'join')
          OR {room} IN (SELECT jr.room_id FROM current_state jr JOIN events je ON je.event_id = jr.event_id
                        WHERE jr.event_type = 'm.room.join_rules' AND jr.state_key = '' AND {join_rule} = 'public'))"
    )
}

/// Active local accounts (not guests) matching `term`, in user ID order, at most `limit`.
pub async fn local_users(db: &Db, term: &str, scope: Scope<'_>, limit: i64) -> sqlx::Result<Vec<Entry>> {
    let scoped = match scope {
        Scope::All => String::new(),
        Scope::VisibleTo(_) => format!(
            "AND user_id IN (SELECT m.state_key FROM current_state m
                             WHERE m.event_type = 'm.room.member' AND m.membership = 'join' AND {})",
            visible_rooms(db.kind, "m.room_id")
        ),
    };
    let sql = format!(
        "SELECT user_id, displayname, avatar_url FROM users
         WHERE deactivated = 0 AND is_guest = 0
           AND (LOWER(user_id) LIKE $1 ESCAPE '\\' OR LOWER(COALESCE(displayname, '')) LIKE $1 ESCAPE '\\')
           {scoped}
         ORDER BY user_id LIMIT $2"
    );
    fetch(db, sql, term, scope, limit).await
}

/// Other servers' users joined to rooms here (in scope) matching `term`, with the display
/// name and avatar of one of their member events, in user ID order, at most `limit`.
pub async fn remote_users(db: &Db, term: &str, scope: Scope<'_>, limit: i64) -> sqlx::Result<Vec<Entry>> {
    let displayname = content_field(db.kind, "e.json", "displayname");
    let avatar_url = content_field(db.kind, "e.json", "avatar_url");
    let scoped = match scope {
        Scope::All => String::new(),
        Scope::VisibleTo(_) => format!("AND {}", visible_rooms(db.kind, "m.room_id")),
    };
    let sql = format!(
        "SELECT m.state_key AS user_id, MIN({displayname}) AS displayname, MIN({avatar_url}) AS avatar_url
         FROM current_state m JOIN events e ON e.event_id = m.event_id
         WHERE m.event_type = 'm.room.member' AND m.membership = 'join'
           AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = m.state_key)
           AND (LOWER(m.state_key) LIKE $1 ESCAPE '\\' OR LOWER(COALESCE({displayname}, '')) LIKE $1 ESCAPE '\\')
           {scoped}
         GROUP BY m.state_key ORDER BY m.state_key LIMIT $2"
    );
    fetch(db, sql, term, scope, limit).await
}

async fn fetch(db: &Db, sql: String, term: &str, scope: Scope<'_>, limit: i64) -> sqlx::Result<Vec<Entry>> {
    let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(like_pattern(term)).bind(limit);
    if let Scope::VisibleTo(searcher) = scope {
        query = query.bind(searcher.to_owned());
    }
    let rows: Vec<(String, Option<String>, Option<String>)> = query.fetch_all(db.read()).await?;
    Ok(rows.into_iter().map(|(user_id, displayname, avatar_url)| Entry { user_id, displayname, avatar_url }).collect())
}
