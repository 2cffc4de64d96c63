//! Pushers (`/pushers`): where a user's notifications are relayed, one per app ID and
//! pushkey for each user. Only `http` pushers exist here (no email). A pusher belongs to the
//! device that set it and goes when that device is deleted (logout included).

use ruma::api::client::push::set_pusher::v3::PusherAction;
use ruma::api::client::push::{Pusher, PusherKind};
use serde_json::Value;

use crate::Services;
use crate::accounts::Identity;
use crate::error::{Error, Result};
use crate::storage::{self, push::NewPusher};

/// The path every push gateway URL must have (spec and Synapse).
const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
const MAX_APP_ID_CHARS: usize = 64;
const MAX_PUSHKEY_BYTES: usize = 512;

/// The user's pushers as clients set them.
pub async fn list(svc: &Services, user_id: &str) -> Result<Vec<Value>> {
    storage::push::pushers(&svc.db, user_id)
        .await?
        .iter()
        .map(|row| serde_json::from_str(&row.pusher_json).map_err(|e| Error::Internal(e.into())))
        .collect()
}

/// Creates, replaces or deletes one of the user's pushers.
pub async fn set(svc: &Services, me: &Identity, action: PusherAction) -> Result<()> {
    let user_id = me.user_id.as_str();
    let mut tx = svc.db.begin().await?;
    match action {
        PusherAction::Post(post) => {
            check(&post.pusher)?;
            let ids = &post.pusher.ids;
            if !post.append {
                storage::push::delete_other_users_pushers(&mut tx, user_id, &ids.app_id, &ids.pushkey).await?;
            }
            let pusher_json = serde_json::to_string(&post.pusher).map_err(|e| Error::Internal(e.into()))?;
            let row = NewPusher {
                user_id,
                device_id: &me.device_id,
                app_id: &ids.app_id,
                pushkey: &ids.pushkey,
                pusher_json: &pusher_json,
                now: storage::now_ms(),
            };
            storage::push::put_pusher(&mut tx, &row).await?;
        }
        // Deleting a pusher that does not exist is no error (Synapse).
        PusherAction::Delete(ids) => {
            storage::push::delete_pusher(&mut tx, user_id, &ids.app_id, &ids.pushkey).await?;
        }
        _ => return Err(Error::invalid_param("Unknown pusher action")),
    }
    tx.commit().await?;
    Ok(())
}

/// 400 `M_INVALID_PARAM` unless the pusher is one this server can push to.
fn check(pusher: &Pusher) -> Result<()> {
    if pusher.ids.app_id.chars().count() > MAX_APP_ID_CHARS {
        return Err(Error::invalid_param(format!("app_id is longer than {MAX_APP_ID_CHARS} characters")));
    }
    if pusher.ids.pushkey.len() > MAX_PUSHKEY_BYTES {
        return Err(Error::invalid_param(format!("pushkey is longer than {MAX_PUSHKEY_BYTES} bytes")));
    }
    let PusherKind::Http(data) = &pusher.kind else {
        return Err(Error::invalid_param("Only pushers of kind http are supported"));
    };
    // The spec says HTTPS; Synapse also takes plain HTTP (gateways on a private network,
    // tests), and so does Plexus.
    let url = url::Url::parse(&data.url).map_err(|_| Error::invalid_param("data.url is not a URL"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return Err(Error::invalid_param("data.url must be an https (or http) URL"));
    }
    if url.path() != NOTIFY_PATH {
        return Err(Error::invalid_param(format!("data.url must have the path {NOTIFY_PATH}")));
    }
    Ok(())
}
