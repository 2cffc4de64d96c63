//! Cross-signing keys (master, self-signing, user-signing) and the signatures uploaded with
//! `/keys/signatures/upload`.

use sqlx::{AnyExecutor, Row};

use super::{Db, Tx};

/// A stored cross-signing key.
#[derive(Debug, Clone)]
pub struct CrossSigningKeyRow {
    /// `master`, `self_signing` or `user_signing`.
    pub key_type: String,
    /// Unpadded base64 ed25519 public key.
    pub public_key: String,
    /// The key object as uploaded.
    pub key_json: String,
}

/// A signature uploaded for someone's key.
#[derive(Debug, Clone)]
pub struct SignatureRow {
    /// A device ID or a cross-signing public key of `target_user_id`.
    pub target_key_id: String,
    pub signer_user_id: String,
    /// `ed25519:<device ID or public key>`.
    pub signer_key_id: String,
    pub signature: String,
}

/// The cross-signing keys of a user.
pub async fn keys<'e>(ex: impl AnyExecutor<'e>, user_id: &str) -> sqlx::Result<Vec<CrossSigningKeyRow>> {
    let rows = sqlx::query(
        "SELECT key_type, public_key, key_json FROM e2e_cross_signing_keys WHERE user_id = $1 ORDER BY key_type",
    )
    .bind(user_id)
    .fetch_all(ex)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(CrossSigningKeyRow {
                key_type: r.try_get("key_type")?,
                public_key: r.try_get("public_key")?,
                key_json: r.try_get("key_json")?,
            })
        })
        .collect()
}

/// Stores (or replaces) one cross-signing key of a user.
pub async fn set_key(tx: &mut Tx, user_id: &str, key_type: &str, public_key: &str, key_json: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO e2e_cross_signing_keys (user_id, key_type, public_key, key_json) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, key_type) DO UPDATE SET public_key = EXCLUDED.public_key, key_json = EXCLUDED.key_json",
    )
    .bind(user_id)
    .bind(key_type)
    .bind(public_key)
    .bind(key_json)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Stores (or replaces) a signature on a key of `target_user_id`.
pub async fn add_signature(tx: &mut Tx, target_user_id: &str, s: &SignatureRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO e2e_signatures (target_user_id, target_key_id, signer_user_id, signer_key_id, signature)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id)
         DO UPDATE SET signature = EXCLUDED.signature",
    )
    .bind(target_user_id)
    .bind(&s.target_key_id)
    .bind(&s.signer_user_id)
    .bind(&s.signer_key_id)
    .bind(&s.signature)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The uploaded signatures on keys of `target_user_id` that `viewer` may see: those by the
/// user themself and those by the viewer.
pub async fn signatures_visible_to(db: &Db, target_user_id: &str, viewer: &str) -> sqlx::Result<Vec<SignatureRow>> {
    let rows = sqlx::query(
        "SELECT target_key_id, signer_user_id, signer_key_id, signature FROM e2e_signatures
         WHERE target_user_id = $1 AND (signer_user_id = $1 OR signer_user_id = $2)
         ORDER BY target_key_id, signer_user_id, signer_key_id",
    )
    .bind(target_user_id)
    .bind(viewer)
    .fetch_all(db.read())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(SignatureRow {
                target_key_id: r.try_get("target_key_id")?,
                signer_user_id: r.try_get("signer_user_id")?,
                signer_key_id: r.try_get("signer_key_id")?,
                signature: r.try_get("signature")?,
            })
        })
        .collect()
}

/// Forgets a user's cross-signing keys and the signatures by or about them (deactivation).
pub async fn delete_all(tx: &mut Tx, user_id: &str) -> sqlx::Result<()> {
    let keys =
        sqlx::query("DELETE FROM e2e_cross_signing_keys WHERE user_id = $1").bind(user_id).execute(&mut **tx).await?;
    sqlx::query("DELETE FROM e2e_signatures WHERE target_user_id = $1 OR signer_user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    if keys.rows_affected() > 0 {
        super::device_lists::record_change(tx, user_id).await?;
    }
    Ok(())
}
