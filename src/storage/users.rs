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
    pub shadow_banned: bool,
    pub locked: bool,
    pub suspended: bool,
    pub erased: bool,
    pub created_ts: i64,
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
        shadow_banned: r.try_get::<i64, _>("shadow_banned")? != 0,
        locked: r.try_get::<i64, _>("locked")? != 0,
        suspended: r.try_get::<i64, _>("suspended")? != 0,
        erased: r.try_get::<Option<i64>, _>("erased_ts")?.is_some(),
        created_ts: r.try_get("created_ts")?,
    })
}

const USER_COLUMNS: &str = "user_id, password_hash, displayname, avatar_url, is_admin, is_guest, deactivated, \
                            shadow_banned, locked, suspended, erased_ts, created_ts";

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

/// An account flag an admin sets (see the `users` columns of migration 0013).
#[derive(Debug, Clone, Copy)]
pub enum Flag {
    ShadowBanned,
    Locked,
    Suspended,
}

pub async fn set_flag(tx: &mut Tx, user_id: &str, flag: Flag, on: bool) -> sqlx::Result<bool> {
    let column = match flag {
        Flag::ShadowBanned => "shadow_banned",
        Flag::Locked => "locked",
        Flag::Suspended => "suspended",
    };
    let res = sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE users SET {column} = $1 WHERE user_id = $2")))
        .bind(on as i64)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(res.rows_affected() == 1)
}

/// Records that a deactivated user asked for erasure.
pub async fn set_erased(tx: &mut Tx, user_id: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET erased_ts = $1 WHERE user_id = $2 AND erased_ts IS NULL")
        .bind(now_ms())
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Makes a deactivated account usable again (an admin's decision); erasure is undone too.
pub async fn reactivate(tx: &mut Tx, user_id: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET deactivated = 0, erased_ts = NULL WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Which accounts an admin listing shows, and in which order.
#[derive(Debug, Clone, Default)]
pub struct UserQuery {
    /// Substring of the user ID or display name (case-insensitive).
    pub name: Option<String>,
    /// Substring of the user ID only.
    pub user_id: Option<String>,
    pub guests: bool,
    pub deactivated: bool,
    pub admins: Option<bool>,
    pub order_by: UserOrder,
    pub descending: bool,
    pub from: i64,
    pub limit: i64,
}

#[derive(Debug, Clone, Copy, Default)]
pub enum UserOrder {
    #[default]
    Name,
    DisplayName,
    CreationTs,
    Admin,
    Deactivated,
    IsGuest,
    ShadowBanned,
    Locked,
}

impl UserOrder {
    fn column(self) -> &'static str {
        match self {
            UserOrder::Name => "user_id",
            UserOrder::DisplayName => "displayname",
            UserOrder::CreationTs => "created_ts",
            UserOrder::Admin => "is_admin",
            UserOrder::Deactivated => "deactivated",
            UserOrder::IsGuest => "is_guest",
            UserOrder::ShadowBanned => "shadow_banned",
            UserOrder::Locked => "locked",
        }
    }
}

pub(super) fn like_pattern(term: &str) -> String {
    let escaped = term.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%{escaped}%")
}

/// One page of accounts and the number of accounts matching in all.
pub async fn list(db: &Db, q: &UserQuery) -> sqlx::Result<(Vec<UserRow>, i64)> {
    // Each filter is written so that a NULL parameter disables it: the SQL stays fixed.
    let filter = "WHERE ($1 IS NULL OR LOWER(user_id) LIKE $1 ESCAPE '\\'
                        OR LOWER(COALESCE(displayname, '')) LIKE $1 ESCAPE '\\')
                   AND ($2 IS NULL OR LOWER(user_id) LIKE $2 ESCAPE '\\')
                   AND ($3 = 1 OR is_guest = 0)
                   AND ($4 = 1 OR deactivated = 0)
                   AND ($5 IS NULL OR is_admin = $5)";
    let name = q.name.as_deref().map(like_pattern);
    let user_id = q.user_id.as_deref().map(like_pattern);
    let admins = q.admins.map(|a| a as i64);
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM users {filter}")))
        .bind(name.clone())
        .bind(user_id.clone())
        .bind(q.guests as i64)
        .bind(q.deactivated as i64)
        .bind(admins)
        .fetch_one(db.read())
        .await?;
    let dir = if q.descending { "DESC" } else { "ASC" };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users {filter} ORDER BY {} {dir}, user_id {dir} LIMIT $6 OFFSET $7",
        q.order_by.column()
    )))
    .bind(name)
    .bind(user_id)
    .bind(q.guests as i64)
    .bind(q.deactivated as i64)
    .bind(admins)
    .bind(q.limit)
    .bind(q.from)
    .fetch_all(db.read())
    .await?;
    Ok((rows.iter().map(user_from_row).collect::<sqlx::Result<_>>()?, total))
}

/// Every user who was erased.
pub async fn erased_users(db: &Db) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT user_id FROM users WHERE erased_ts IS NOT NULL").fetch_all(db.read()).await
}
