//! Accounts.

use sqlx::Row;

use super::{Db, Tx, now_ms};

#[derive(Debug, Clone)]
pub struct UserRow {
    pub user_id: String,
    pub password_hash: Option<String>,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub is_admin: bool,
    pub is_guest: bool,
    pub deactivated: bool,
}

fn user_from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<UserRow> {
    Ok(UserRow {
        user_id: r.try_get("user_id")?,
        password_hash: r.try_get("password_hash")?,
        displayname: r.try_get("displayname")?,
        avatar_url: r.try_get("avatar_url")?,
        is_admin: r.try_get::<i64, _>("is_admin")? != 0,
        is_guest: r.try_get::<i64, _>("is_guest")? != 0,
        deactivated: r.try_get::<i64, _>("deactivated")? != 0,
    })
}

const USER_COLUMNS: &str = "user_id, password_hash, displayname, avatar_url, is_admin, is_guest, deactivated";

/// Inserts a new account; `Ok(false)` when the ID is taken.
pub async fn create(
    tx: &mut Tx,
    user_id: &str,
    password_hash: Option<&str>,
    displayname: &str,
    is_admin: bool,
    is_guest: bool,
) -> sqlx::Result<bool> {
    let res = sqlx::query(
        "INSERT INTO users (user_id, password_hash, displayname, is_admin, is_guest, created_ts)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(password_hash)
    .bind(displayname)
    .bind(is_admin as i64)
    .bind(is_guest as i64)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected() == 1)
}

pub async fn get(db: &Db, user_id: &str) -> sqlx::Result<Option<UserRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = $1")))
        .bind(user_id)
        .fetch_optional(db.read())
        .await?;
    row.as_ref().map(user_from_row).transpose()
}

pub async fn exists(db: &Db, user_id: &str) -> sqlx::Result<bool> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE user_id = $1").bind(user_id).fetch_one(db.read()).await?;
    Ok(n > 0)
}

pub async fn set_password_hash(tx: &mut Tx, user_id: &str, hash: Option<&str>) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET password_hash = $1 WHERE user_id = $2")
        .bind(hash)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn set_displayname(tx: &mut Tx, user_id: &str, name: Option<&str>) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET displayname = $1 WHERE user_id = $2")
        .bind(name)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn set_avatar_url(tx: &mut Tx, user_id: &str, url: Option<&str>) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET avatar_url = $1 WHERE user_id = $2")
        .bind(url)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn set_admin(tx: &mut Tx, user_id: &str, admin: bool) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET is_admin = $1 WHERE user_id = $2")
        .bind(admin as i64)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Marks the account deactivated and erases its password and profile.
pub async fn deactivate(tx: &mut Tx, user_id: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE users SET deactivated = 1, password_hash = NULL, displayname = NULL, avatar_url = NULL
         WHERE user_id = $1",
    )
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Active local users whose ID or display name contains `term` (case-insensitive).
pub async fn search(db: &Db, term: &str, limit: i64) -> sqlx::Result<Vec<UserRow>> {
    let escaped = term.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    let pattern = format!("%{escaped}%");
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users
         WHERE deactivated = 0 AND is_guest = 0
           AND (LOWER(user_id) LIKE $1 ESCAPE '\\' OR LOWER(COALESCE(displayname, '')) LIKE $1 ESCAPE '\\')
         ORDER BY user_id LIMIT $2"
    )))
    .bind(pattern)
    .bind(limit)
    .fetch_all(db.read())
    .await?;
    rows.iter().map(user_from_row).collect()
}
