//! Content repository metadata: local media, cached remote media, their thumbnails, and URL
//! preview cache.

use sqlx::Row;

use super::{Db, Tx};

#[derive(Debug, Clone)]
pub struct MediaRow {
    pub media_id: String,
    pub uploader: String,
    /// The content, once uploaded.
    pub content: Option<StoredContent>,
    pub content_type: Option<String>,
    pub file_name: Option<String>,
    pub created_ts: i64,
    pub unused_expires_ts: Option<i64>,
    pub last_access_ts: Option<i64>,
    pub quarantined: bool,
}

/// Where the bytes of a file are: its SHA-256 (hex) names the file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredContent {
    pub sha256: String,
    pub size: u64,
}

fn content_from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<Option<StoredContent>> {
    let sha256: Option<String> = r.try_get("sha256")?;
    let size: Option<i64> = r.try_get("size")?;
    Ok(sha256.zip(size).map(|(sha256, size)| StoredContent { sha256, size: size as u64 }))
}

fn media_from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<MediaRow> {
    Ok(MediaRow {
        media_id: r.try_get("media_id")?,
        uploader: r.try_get("uploader")?,
        content: content_from_row(r)?,
        content_type: r.try_get("content_type")?,
        file_name: r.try_get("file_name")?,
        created_ts: r.try_get("created_ts")?,
        unused_expires_ts: r.try_get("unused_expires_ts")?,
        last_access_ts: r.try_get("last_access_ts")?,
        quarantined: r.try_get::<i64, _>("quarantined")? != 0,
    })
}

const MEDIA_COLUMNS: &str = "media_id, uploader, sha256, size, content_type, file_name, created_ts, \
                             unused_expires_ts, last_access_ts, quarantined";

/// What is known of an upload when it completes.
pub struct Upload<'a> {
    pub content: &'a StoredContent,
    pub content_type: &'a str,
    pub file_name: Option<&'a str>,
}

/// Records a media ID together with its content (a plain upload); `thumbnails_pending`
/// when its thumbnails are still to be made.
pub async fn insert_uploaded(
    tx: &mut Tx,
    media_id: &str,
    uploader: &str,
    upload: &Upload<'_>,
    thumbnails_pending: bool,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO media (media_id, uploader, sha256, size, content_type, file_name, created_ts, uploaded_ts,
         last_access_ts, thumbnails_pending) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7, $8)",
    )
    .bind(media_id)
    .bind(uploader)
    .bind(&upload.content.sha256)
    .bind(upload.content.size as i64)
    .bind(upload.content_type)
    .bind(upload.file_name)
    .bind(now)
    .bind(thumbnails_pending as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records a media ID whose content comes later (`POST /_matrix/media/v1/create`).
pub async fn insert_pending(
    tx: &mut Tx,
    media_id: &str,
    uploader: &str,
    now: i64,
    expires_ts: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO media (media_id, uploader, created_ts, unused_expires_ts, last_access_ts) VALUES ($1, $2, $3, $4, $3)",
    )
        .bind(media_id)
        .bind(uploader)
        .bind(now)
        .bind(expires_ts)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Attaches content to a pending media ID; `Ok(false)` when it already has content.
pub async fn complete_pending(
    tx: &mut Tx,
    media_id: &str,
    upload: &Upload<'_>,
    thumbnails_pending: bool,
    now: i64,
) -> sqlx::Result<bool> {
    let res = sqlx::query(
        "UPDATE media SET sha256 = $2, size = $3, content_type = $4, file_name = $5, uploaded_ts = $6,
         last_access_ts = $6, unused_expires_ts = NULL, thumbnails_pending = $7 WHERE media_id = $1 AND sha256 IS NULL",
    )
    .bind(media_id)
    .bind(&upload.content.sha256)
    .bind(upload.content.size as i64)
    .bind(upload.content_type)
    .bind(upload.file_name)
    .bind(now)
    .bind(thumbnails_pending as i64)
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected() == 1)
}

pub async fn get(db: &Db, media_id: &str) -> sqlx::Result<Option<MediaRow>> {
    sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {MEDIA_COLUMNS} FROM media WHERE media_id = $1")))
        .bind(media_id)
        .fetch_optional(db.read())
        .await?
        .as_ref()
        .map(media_from_row)
        .transpose()
}

/// Media IDs a user created that are still waiting for their upload.
pub async fn count_pending(db: &Db, uploader: &str, now: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM media WHERE uploader = $1 AND sha256 IS NULL AND unused_expires_ts > $2")
        .bind(uploader)
        .bind(now)
        .fetch_one(db.read())
        .await
}

/// Total bytes a user has uploaded.
pub async fn bytes_uploaded_by(db: &Db, uploader: &str) -> sqlx::Result<u64> {
    let total: i64 = sqlx::query_scalar("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM media WHERE uploader = $1")
        .bind(uploader)
        .fetch_one(db.read())
        .await?;
    Ok(total as u64)
}

/// A cached thumbnail of a media ID.
#[derive(Debug, Clone)]
pub struct ThumbnailRow {
    pub content: StoredContent,
    pub content_type: String,
    /// When a cached thumbnail of remote media was last served (`None` for local media).
    pub last_access_ts: Option<i64>,
}

/// Which thumbnail of a media: size, method and whether it may be animated.
pub struct ThumbnailKey<'a> {
    /// The origin of remote media; `None` for local media.
    pub remote_server: Option<&'a str>,
    pub media_id: &'a str,
    pub width: u32,
    pub height: u32,
    pub method: &'a str,
    pub animated: bool,
}

pub async fn get_thumbnail(db: &Db, key: &ThumbnailKey<'_>) -> sqlx::Result<Option<ThumbnailRow>> {
    let sql = match key.remote_server {
        None => {
            "SELECT sha256, size, content_type, CAST(NULL AS BIGINT) AS last_access_ts FROM media_thumbnails
             WHERE media_id = $1 AND width = $2 AND height = $3 AND method = $4 AND animated = $5"
        }
        Some(_) => {
            "SELECT sha256, size, content_type, last_access_ts FROM remote_media_thumbnails
             WHERE media_id = $1 AND width = $2 AND height = $3 AND method = $4 AND animated = $5
             AND server_name = $6"
        }
    };
    let query = sqlx::query(sql)
        .bind(key.media_id)
        .bind(i64::from(key.width))
        .bind(i64::from(key.height))
        .bind(key.method)
        .bind(key.animated as i64);
    let row = match key.remote_server {
        Some(server) => query.bind(server),
        None => query,
    }
    .fetch_optional(db.read())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let content = content_from_row(&row)?;
    Ok(content.map(|content| ThumbnailRow {
        content,
        content_type: row.get("content_type"),
        last_access_ts: row.get("last_access_ts"),
    }))
}

/// Records a thumbnail; a concurrent request may have recorded the same one first.
pub async fn insert_thumbnail(tx: &mut Tx, key: &ThumbnailKey<'_>, thumbnail: &ThumbnailRow) -> sqlx::Result<()> {
    let sql = match key.remote_server {
        None => {
            "INSERT INTO media_thumbnails (media_id, width, height, method, animated, sha256, size, content_type)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (media_id, width, height, method, animated) DO NOTHING"
        }
        Some(_) => {
            "INSERT INTO remote_media_thumbnails
             (media_id, width, height, method, animated, sha256, size, content_type, server_name, last_access_ts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (server_name, media_id, width, height, method, animated) DO NOTHING"
        }
    };
    let query = sqlx::query(sql)
        .bind(key.media_id)
        .bind(i64::from(key.width))
        .bind(i64::from(key.height))
        .bind(key.method)
        .bind(key.animated as i64)
        .bind(&thumbnail.content.sha256)
        .bind(thumbnail.content.size as i64)
        .bind(&thumbnail.content_type);
    match key.remote_server {
        Some(server) => query.bind(server).bind(thumbnail.last_access_ts),
        None => query,
    }
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Media of another server, as cached here.
#[derive(Debug, Clone)]
pub struct RemoteMediaRow {
    pub content: StoredContent,
    pub content_type: String,
    pub file_name: Option<String>,
    pub last_access_ts: Option<i64>,
}

pub async fn get_remote(db: &Db, server_name: &str, media_id: &str) -> sqlx::Result<Option<RemoteMediaRow>> {
    let row = sqlx::query(
        "SELECT sha256, size, content_type, file_name, last_access_ts FROM remote_media
         WHERE server_name = $1 AND media_id = $2",
    )
    .bind(server_name)
    .bind(media_id)
    .fetch_optional(db.read())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let content = content_from_row(&row)?;
    let content_type: Option<String> = row.try_get("content_type")?;
    Ok(content.map(|content| RemoteMediaRow {
        content,
        content_type: content_type.unwrap_or_else(|| "application/octet-stream".to_owned()),
        file_name: row.get("file_name"),
        last_access_ts: row.get("last_access_ts"),
    }))
}

/// Caches fetched remote media (a concurrent fetch may have cached it first).
pub async fn insert_remote(
    tx: &mut Tx,
    server_name: &str,
    media_id: &str,
    fetched: &Upload<'_>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO remote_media
         (server_name, media_id, sha256, size, content_type, file_name, fetched_ts, last_access_ts)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (server_name, media_id) DO NOTHING",
    )
    .bind(server_name)
    .bind(media_id)
    .bind(&fetched.content.sha256)
    .bind(fetched.content.size as i64)
    .bind(fetched.content_type)
    .bind(fetched.file_name)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The cached preview of a URL, unless it has expired.
pub async fn get_preview(db: &Db, url: &str, now: i64) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT og_json FROM url_previews WHERE url = $1 AND expires_ts > $2")
        .bind(url)
        .bind(now)
        .fetch_optional(db.read())
        .await
}

/// Forgets previews that expired (a later request fetches the page again anyway).
pub async fn delete_expired_previews(tx: &mut Tx, now: i64) -> sqlx::Result<u64> {
    let res = sqlx::query("DELETE FROM url_previews WHERE expires_ts <= $1").bind(now).execute(&mut **tx).await?;
    Ok(res.rows_affected())
}

/// Stores the preview of a URL, replacing an older one.
pub async fn put_preview(tx: &mut Tx, url: &str, og_json: &str, now: i64, expires_ts: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO url_previews (url, og_json, fetched_ts, expires_ts) VALUES ($1, $2, $3, $4)
         ON CONFLICT (url) DO UPDATE SET og_json = EXCLUDED.og_json, fetched_ts = EXCLUDED.fetched_ts,
         expires_ts = EXCLUDED.expires_ts",
    )
    .bind(url)
    .bind(og_json)
    .bind(now)
    .bind(expires_ts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn set_quarantined(tx: &mut Tx, media_id: &str, quarantined: bool) -> sqlx::Result<bool> {
    let res = sqlx::query("UPDATE media SET quarantined = $1 WHERE media_id = $2")
        .bind(quarantined as i64)
        .bind(media_id)
        .execute(&mut **tx)
        .await?;
    Ok(res.rows_affected() == 1)
}

/// Quarantines every media a user uploaded; returns how many were not quarantined before.
pub async fn quarantine_uploads_of(tx: &mut Tx, uploader: &str) -> sqlx::Result<u64> {
    let res = sqlx::query("UPDATE media SET quarantined = 1 WHERE uploader = $1 AND quarantined = 0")
        .bind(uploader)
        .execute(&mut **tx)
        .await?;
    Ok(res.rows_affected())
}

/// How the admin API lists a user's media (Synapse's `order_by`).
#[derive(Debug, Clone, Copy)]
pub enum MediaOrder {
    MediaId,
    UploadName,
    CreatedTs,
    LastAccessTs,
    MediaLength,
    MediaType,
    Quarantined,
}

/// One page of a user's media in the given order, and how many they have in all.
pub async fn list_by_uploader(
    db: &Db,
    uploader: &str,
    order: MediaOrder,
    descending: bool,
    from: i64,
    limit: i64,
) -> sqlx::Result<(Vec<MediaRow>, i64)> {
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM media WHERE uploader = $1")
        .bind(uploader)
        .fetch_one(db.read())
        .await?;
    let column = match order {
        MediaOrder::MediaId => "media_id",
        MediaOrder::UploadName => "file_name",
        MediaOrder::CreatedTs => "created_ts",
        MediaOrder::LastAccessTs => "last_access_ts",
        MediaOrder::MediaLength => "size",
        MediaOrder::MediaType => "content_type",
        MediaOrder::Quarantined => "quarantined",
    };
    let dir = if descending { "DESC" } else { "ASC" };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MEDIA_COLUMNS} FROM media WHERE uploader = $1 ORDER BY {column} {dir}, media_id {dir}
         LIMIT $2 OFFSET $3"
    )))
    .bind(uploader)
    .bind(limit)
    .bind(from)
    .fetch_all(db.read())
    .await?;
    Ok((rows.iter().map(media_from_row).collect::<sqlx::Result<_>>()?, total))
}

/// Deletes a media ID and its thumbnails; returns the content hashes (of the media and its
/// thumbnails) no other row uses any more, whose files may go.
pub async fn delete(tx: &mut Tx, media_id: &str) -> sqlx::Result<Vec<String>> {
    let mut hashes: Vec<String> = sqlx::query_scalar("SELECT sha256 FROM media_thumbnails WHERE media_id = $1")
        .bind(media_id)
        .fetch_all(&mut **tx)
        .await?;
    let own: Option<Option<String>> = sqlx::query_scalar("SELECT sha256 FROM media WHERE media_id = $1")
        .bind(media_id)
        .fetch_optional(&mut **tx)
        .await?;
    hashes.extend(own.flatten());
    sqlx::query("DELETE FROM media_thumbnails WHERE media_id = $1").bind(media_id).execute(&mut **tx).await?;
    sqlx::query("DELETE FROM media WHERE media_id = $1").bind(media_id).execute(&mut **tx).await?;
    unreferenced(tx, hashes).await
}

/// Deletes cached remote media and its thumbnails; returns the content hashes no row uses
/// any more.
pub async fn delete_remote(tx: &mut Tx, server_name: &str, media_id: &str) -> sqlx::Result<Vec<String>> {
    let mut hashes: Vec<String> =
        sqlx::query_scalar("SELECT sha256 FROM remote_media_thumbnails WHERE server_name = $1 AND media_id = $2")
            .bind(server_name)
            .bind(media_id)
            .fetch_all(&mut **tx)
            .await?;
    let own: Option<String> =
        sqlx::query_scalar("SELECT sha256 FROM remote_media WHERE server_name = $1 AND media_id = $2")
            .bind(server_name)
            .bind(media_id)
            .fetch_optional(&mut **tx)
            .await?;
    hashes.extend(own);
    for table in ["remote_media_thumbnails", "remote_media"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE server_name = $1 AND media_id = $2")))
            .bind(server_name)
            .bind(media_id)
            .execute(&mut **tx)
            .await?;
    }
    unreferenced(tx, hashes).await
}

/// The hashes among `hashes` that no media, remote media or thumbnail row refers to.
async fn unreferenced(tx: &mut Tx, hashes: Vec<String>) -> sqlx::Result<Vec<String>> {
    let mut unused = Vec::new();
    for hash in hashes {
        let users: i64 = sqlx::query_scalar(
            // Local and remote media share the store.
            "SELECT (SELECT COUNT(*) FROM media WHERE sha256 = $1) + (SELECT COUNT(*) FROM media_thumbnails WHERE sha256 = $1)
             + (SELECT COUNT(*) FROM remote_media WHERE sha256 = $1)
             + (SELECT COUNT(*) FROM remote_media_thumbnails WHERE sha256 = $1)",
        )
        .bind(&hash)
        .fetch_one(&mut **tx)
        .await?;
        if users == 0 && !unused.contains(&hash) {
            unused.push(hash);
        }
    }
    Ok(unused)
}

/// Records that local media was served now.
pub async fn touch(tx: &mut Tx, media_id: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE media SET last_access_ts = $2 WHERE media_id = $1")
        .bind(media_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records that cached remote media was served now.
pub async fn touch_remote(tx: &mut Tx, server_name: &str, media_id: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE remote_media SET last_access_ts = $3 WHERE server_name = $1 AND media_id = $2")
        .bind(server_name)
        .bind(media_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records that a cached thumbnail of remote media was served now.
pub async fn touch_remote_thumbnail(tx: &mut Tx, key: &ThumbnailKey<'_>, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE remote_media_thumbnails SET last_access_ts = $7 WHERE server_name = $1 AND media_id = $2
         AND width = $3 AND height = $4 AND method = $5 AND animated = $6",
    )
    .bind(key.remote_server)
    .bind(key.media_id)
    .bind(i64::from(key.width))
    .bind(i64::from(key.height))
    .bind(key.method)
    .bind(key.animated as i64)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Deletes the cached thumbnails of remote media last served before `before_ts` (those of
/// media whose original was never fetched too); returns the media they belonged to
/// (origin, media ID) and the content hashes no row uses any more.
pub async fn delete_remote_thumbnails_unused_since(
    tx: &mut Tx,
    before_ts: i64,
) -> sqlx::Result<(Vec<(String, String)>, Vec<String>)> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT server_name, media_id, sha256 FROM remote_media_thumbnails WHERE last_access_ts < $1")
            .bind(before_ts)
            .fetch_all(&mut **tx)
            .await?;
    sqlx::query("DELETE FROM remote_media_thumbnails WHERE last_access_ts < $1")
        .bind(before_ts)
        .execute(&mut **tx)
        .await?;
    let mut media = Vec::new();
    let mut hashes = Vec::new();
    for (server_name, media_id, sha256) in rows {
        media.push((server_name, media_id));
        hashes.push(sha256);
    }
    Ok((media, unreferenced(tx, hashes).await?))
}

/// Local media last served before `before_ts` and larger than `size_gt` bytes, oldest first;
/// quarantined media is kept (as evidence), as Synapse keeps it.
pub async fn unused_since(db: &Db, before_ts: i64, size_gt: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT media_id FROM media WHERE last_access_ts < $1 AND size > $2 AND quarantined = 0
         ORDER BY last_access_ts, media_id",
    )
    .bind(before_ts)
    .bind(size_gt)
    .fetch_all(db.read())
    .await
}

/// Cached remote media last served before `before_ts`: (origin, media ID).
pub async fn remote_unused_since(db: &Db, before_ts: i64) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as("SELECT server_name, media_id FROM remote_media WHERE last_access_ts < $1")
        .bind(before_ts)
        .fetch_all(db.read())
        .await
}

/// What profiles show: users' avatar URLs and the JSON of the room avatar and membership
/// events of rooms' current state that mention `mxc_prefix`.
pub async fn profile_references(db: &Db, mxc_prefix: &str) -> sqlx::Result<Vec<String>> {
    // Server names have neither `%` nor `_`: the prefix needs no escaping.
    sqlx::query_scalar(
        "SELECT avatar_url FROM users WHERE avatar_url LIKE $1
         UNION ALL
         SELECT e.json FROM current_state cs JOIN events e ON e.event_id = cs.event_id
         WHERE cs.event_type IN ('m.room.member', 'm.room.avatar') AND e.json LIKE $1",
    )
    .bind(format!("%{mxc_prefix}%"))
    .fetch_all(db.read())
    .await
}

/// Uploads whose thumbnails are still to be made, uploaded before `uploaded_before`.
pub async fn thumbnails_pending(db: &Db, uploaded_before: i64, limit: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT media_id FROM media WHERE thumbnails_pending = 1 AND uploaded_ts < $1 ORDER BY uploaded_ts LIMIT $2",
    )
    .bind(uploaded_before)
    .bind(limit)
    .fetch_all(db.read())
    .await
}

pub async fn clear_thumbnails_pending(tx: &mut Tx, media_id: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE media SET thumbnails_pending = 0 WHERE media_id = $1")
        .bind(media_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Forgets media IDs created but never uploaded to before they expired.
pub async fn delete_expired_pending(tx: &mut Tx, now: i64) -> sqlx::Result<u64> {
    let res = sqlx::query("DELETE FROM media WHERE sha256 IS NULL AND unused_expires_ts <= $1")
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(res.rows_affected())
}

/// One user's uploads in the media statistics.
#[derive(Debug, Clone)]
pub struct MediaUsage {
    pub user_id: String,
    pub displayname: Option<String>,
    pub media_count: i64,
    pub media_length: i64,
}

#[derive(Debug, Clone, Copy)]
pub enum UsageOrder {
    UserId,
    DisplayName,
    MediaLength,
    MediaCount,
}

/// Which uploads the statistics count and how they are listed.
pub struct UsageQuery<'a> {
    /// Media created in `[from_ts, until_ts]`.
    pub from_ts: i64,
    pub until_ts: i64,
    /// A part of the user ID or display name (case-insensitive).
    pub search_term: Option<&'a str>,
    pub order: UsageOrder,
    pub descending: bool,
    pub from: i64,
    pub limit: i64,
}

/// Per uploader: how many media and bytes they uploaded; one page and the number of uploaders.
pub async fn usage_by_user(db: &Db, q: &UsageQuery<'_>) -> sqlx::Result<(Vec<MediaUsage>, i64)> {
    let grouped = "SELECT m.uploader AS user_id, u.displayname AS displayname, COUNT(*) AS media_count,
                   CAST(COALESCE(SUM(m.size), 0) AS BIGINT) AS media_length
                   FROM media m LEFT JOIN users u ON u.user_id = m.uploader
                   WHERE m.created_ts >= $1 AND m.created_ts <= $2
                   AND (LOWER(m.uploader) LIKE $3 OR LOWER(COALESCE(u.displayname, '')) LIKE $3)
                   GROUP BY m.uploader, u.displayname";
    let pattern = format!("%{}%", q.search_term.unwrap_or("").to_lowercase());
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM ({grouped}) AS g")))
        .bind(q.from_ts)
        .bind(q.until_ts)
        .bind(&pattern)
        .fetch_one(db.read())
        .await?;
    let column = match q.order {
        UsageOrder::UserId => "user_id",
        UsageOrder::DisplayName => "displayname",
        UsageOrder::MediaLength => "media_length",
        UsageOrder::MediaCount => "media_count",
    };
    let dir = if q.descending { "DESC" } else { "ASC" };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM ({grouped}) AS g ORDER BY {column} {dir}, user_id {dir} LIMIT $4 OFFSET $5"
    )))
    .bind(q.from_ts)
    .bind(q.until_ts)
    .bind(&pattern)
    .bind(q.limit)
    .bind(q.from)
    .fetch_all(db.read())
    .await?;
    let users = rows
        .iter()
        .map(|r| {
            Ok(MediaUsage {
                user_id: r.try_get("user_id")?,
                displayname: r.try_get("displayname")?,
                media_count: r.try_get("media_count")?,
                media_length: r.try_get("media_length")?,
            })
        })
        .collect::<sqlx::Result<_>>()?;
    Ok((users, total))
}
