//! History visibility: which events of a room a user may see (spec "History visibility").

use ruma::UserId;
use ruma::events::StateEventType;

use super::state;
use crate::Services;
use crate::error::Result;
use crate::storage::events::StoredEvent;

/// Keeps the events `user` may see. `currently_joined` is whether the user is in the room
/// now (which opens `shared` history).
pub async fn filter(
    svc: &Services,
    user: &UserId,
    currently_joined: bool,
    events: Vec<StoredEvent>,
) -> Result<Vec<StoredEvent>> {
    let mut visible = Vec::with_capacity(events.len());
    // Consecutive events mostly share a state group: decide once per group.
    let mut last: Option<(i64, bool)> = None;
    for event in events {
        let Some(group) = event.state_group else { continue };
        // Users always see their own membership changes (a leave or a kick included).
        if event.event_type == "m.room.member" && event.state_key.as_deref() == Some(user.as_str()) {
            visible.push(event);
            continue;
        }
        let allowed = match last {
            Some((g, allowed)) if g == group => allowed,
            _ => {
                let allowed = allowed_at(svc, user, currently_joined, group).await?;
                last = Some((group, allowed));
                allowed
            }
        };
        if allowed {
            visible.push(event);
        }
    }
    Ok(visible)
}

/// Whether `user` may see events whose state is `group`.
pub async fn allowed_at(svc: &Services, user: &UserId, currently_joined: bool, group: i64) -> Result<bool> {
    let state = state::load(svc, group).await?;
    let visibility = super::state_pdu(svc, &state, &StateEventType::RoomHistoryVisibility, "")
        .await?
        .and_then(|p| p.content_str("history_visibility"))
        .unwrap_or_else(|| "shared".to_owned());
    if visibility == "world_readable" {
        return Ok(true);
    }
    let membership = super::membership_in(svc, &state, user).await?;
    Ok(match membership.as_str() {
        "join" => true,
        "invite" => visibility == "invited" || (visibility == "shared" && currently_joined),
        _ => visibility == "shared" && currently_joined,
    })
}
