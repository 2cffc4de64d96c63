//! Presence of our users: stored, shown to the users sharing a room with them, and sent to
//! the other servers in those rooms (`m.presence`).

use ruma::{OwnedUserId, UserId};
use serde_json::json;

use crate::Services;
use crate::error::Result;
use crate::federation::sender;
use crate::rooms;
use crate::storage;

/// Sets `user`'s presence (`state`: online, unavailable or offline), active now.
pub async fn set(svc: &Services, user: &UserId, state: &str, status_msg: Option<&str>) -> Result<()> {
    let now = storage::now_ms();
    let mut tx = svc.db.begin().await?;
    storage::presence::set(&mut tx, user.as_str(), state, status_msg, now).await?;
    tx.commit().await?;
    // Those who share a room see the change in their sync.
    let watchers: Vec<OwnedUserId> = storage::rooms::users_sharing_rooms(&svc.db, user.as_str())
        .await?
        .into_iter()
        .filter_map(|u| OwnedUserId::try_from(u).ok())
        .chain([user.to_owned()])
        .collect();
    svc.notifier.notify(watchers.iter().map(|u| &**u));
    let servers = rooms::servers_sharing_rooms_with(svc, user).await?;
    if servers.is_empty() {
        return Ok(());
    }
    let presence = storage::presence::Presence {
        user_id: user.to_string(),
        state: state.to_owned(),
        status_msg: status_msg.map(str::to_owned),
        last_active_ts: now,
    };
    let mut update = presence.content(now);
    update["user_id"] = json!(user);
    sender::send_edu(svc, servers.iter().map(|s| &**s), "m.presence", json!({ "push": [update] })).await
}
