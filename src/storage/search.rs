//! The full-text index of room events for `POST /search`: SQLite FTS5 (bm25 rank) or
//! PostgreSQL tsvector (ts_rank_cd), one row per searchable field of an event.

use sqlx::Row;

use super::{Db, DbKind, Tx};

/// The statement that indexes one field of an event (`storage::events::append_script` runs it in the
/// round trip that appends the event); the arguments are placeholders.
pub(super) fn index_statement(kind: DbKind, event_id: &str, room_id: &str, key: &str, text: &str) -> String {
    match kind {
        DbKind::Sqlite => {
            format!(
                "INSERT INTO event_search (event_id, room_id, key, text) VALUES ({event_id}, {room_id}, {key}, {text})"
            )
        }
        DbKind::Postgres => format!(
            "INSERT INTO event_search (event_id, room_id, key, vector)
             VALUES ({event_id}, {room_id}, {key}, to_tsvector('english', {text})) ON CONFLICT (event_id) DO NOTHING"
        ),
    }
}

/// Forgets a redacted event's text.
pub async fn remove(tx: &mut Tx, event_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM event_search WHERE event_id = $1").bind(event_id).execute(&mut **tx).await?;
    Ok(())
}

/// An event matching a search.
#[derive(Debug, Clone)]
pub struct Hit {
    pub event_id: String,
    pub key: String,
    pub stream_pos: i64,
    /// Higher is a better match.
    pub rank: f64,
}

/// The events of a room matching every word of `words`, best (`by_rank`) or newest first.
pub async fn search_room(
    db: &Db,
    room_id: &str,
    words: &[String],
    by_rank: bool,
    limit: i64,
) -> sqlx::Result<Vec<Hit>> {
    if words.is_empty() {
        return Ok(Vec::new());
    }
    let order = if by_rank { "rank DESC, stream_pos DESC" } else { "stream_pos DESC" };
    let (sql, query) = match db.kind {
        // Each word quoted: the user's text is never FTS5 syntax.
        DbKind::Sqlite => (
            format!(
                "SELECT event_search.event_id AS event_id, event_search.key AS key, e.stream_pos AS stream_pos,
                        -bm25(event_search) AS rank
                 FROM event_search JOIN events e ON e.event_id = event_search.event_id
                 WHERE event_search MATCH $1 AND event_search.room_id = $2 AND e.stream_pos IS NOT NULL
                 ORDER BY {order} LIMIT $3"
            ),
            words.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(" "),
        ),
        DbKind::Postgres => (
            format!(
                "SELECT s.event_id AS event_id, s.key AS key, e.stream_pos AS stream_pos,
                        CAST(ts_rank_cd(s.vector, q) AS DOUBLE PRECISION) AS rank
                 FROM event_search s JOIN events e ON e.event_id = s.event_id, plainto_tsquery('english', $1) q
                 WHERE s.vector @@ q AND s.room_id = $2 AND e.stream_pos IS NOT NULL
                 ORDER BY {order} LIMIT $3"
            ),
            words.join(" "),
        ),
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(query).bind(room_id).bind(limit).fetch_all(db.read()).await?;
    rows.iter()
        .map(|r| {
            Ok(Hit {
                event_id: r.try_get("event_id")?,
                key: r.try_get("key")?,
                stream_pos: r.try_get("stream_pos")?,
                rank: r.try_get("rank")?,
            })
        })
        .collect()
}
