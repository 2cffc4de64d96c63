//! Read receipts of local and remote users: stored (they never move back), the room's
//! members woken, and the public receipts of our users sent to the other servers in the room.

use ruma::{EventId, RoomId, UserId};
use serde_json::json;

use crate::Services;
use crate::error::Result;
use crate::push;
use crate::storage::{self, receipts::NewReceipt};

pub const READ: &str = "m.read";
pub const READ_PRIVATE: &str = "m.read.private";

/// A receipt of `user` on `event` (`thread_id` None: unthreaded) at time `ts`.
pub async fn put(
    svc: &Services,
    room_id: &RoomId,
    user: &UserId,
    receipt_type: &str,
    thread_id: Option<&str>,
    event: &EventId,
    ts: i64,
) -> Result<()> {
    let local = user.server_name().as_str() == svc.config.server_name;
    let receipt = NewReceipt {
        room_id: room_id.as_str(),
        user_id: user.as_str(),
        receipt_type,
        thread_id,
        event_id: event.as_str(),
        ts,
    };
    let mut tx = svc.db.begin().await?;
    let moved = storage::receipts::put(&mut tx, &receipt).await?;
    // The user's badge may have gone down: their push gateways (ours only) hear of it.
    let badges = if moved && local { push::gateway::queue_badges(&mut tx, user).await? } else { Default::default() };
    tx.commit().await?;
    badges.wake(svc);
    if !moved {
        return Ok(());
    }
    if receipt_type == READ_PRIVATE {
        svc.notifier.notify([user]);
        return Ok(());
    }
    super::wake_members(svc, room_id).await?;
    let mut data = json!({ "ts": ts });
    if let Some(thread) = thread_id {
        data["thread_id"] = json!(thread);
    }
    let client_content = json!({ event: { receipt_type: { user: data } } });
    crate::appservice::queue_ephemeral(svc, room_id, "m.receipt", client_content).await?;
    if local {
        let content = json!({ room_id: { receipt_type: { user: { "event_ids": [event], "data": data } } } });
        let servers = super::servers_in_room(svc, room_id).await?;
        crate::federation::sender::send_edu(svc, servers.iter().map(|s| &**s), "m.receipt", content).await?;
    }
    Ok(())
}
