//! Membership changes of local users: local events in rooms this server is in, handshakes
//! with another server (`rooms::federation`) for rooms it is not in.

use ruma::events::StateEventType;
use ruma::{OwnedServerName, RoomId, UserId};
use serde_json::{Value, json};

use super::create::member_draft;
use super::{current_state, federation, send, servers_in_room, state_pdu};
use crate::Services;
use crate::error::{Error, Result};
use crate::storage;

/// Whether membership changes in a room are local events here: the room is known and this
/// server has a joined user, or nobody anywhere is joined (then only a local event can
/// change that).
async fn handled_here(svc: &Services, room_id: &RoomId) -> Result<bool> {
    if storage::rooms::get(&svc.db, room_id.as_str()).await?.is_none() {
        return Ok(false);
    }
    let servers = servers_in_room(svc, room_id).await?;
    Ok(servers.is_empty() || servers.iter().any(|s| s.as_str() == svc.config.server_name))
}

/// The servers to ask about a room this server is not in: `via` first, then those of the
/// user's pending invite or knock, the servers last known in the room, and the server of
/// the room ID (room versions before 12 name the creator's server there).
async fn servers_to_ask(
    svc: &Services,
    room_id: &RoomId,
    user: &UserId,
    via: &[OwnedServerName],
) -> Result<Vec<OwnedServerName>> {
    let mut servers = via.to_vec();
    if let Some(row) = storage::rooms::remote_membership(&svc.db, user.as_str(), room_id.as_str()).await?
        && row.membership != "leave"
    {
        // The inviter's server, then those of the senders of the room state we were shown.
        servers.push(federation::remote_membership_event(&row)?.sender.server_name().to_owned());
        let stripped: Vec<Value> = serde_json::from_str(&row.stripped_state).unwrap_or_default();
        servers.extend(
            stripped
                .iter()
                .filter_map(|e| e.get("sender").and_then(Value::as_str))
                .filter_map(|s| UserId::parse(s).ok())
                .map(|u| u.server_name().to_owned()),
        );
    }
    if storage::rooms::get(&svc.db, room_id.as_str()).await?.is_some() {
        let current = current_state(svc, room_id).await?;
        if let Some(member) = state_pdu(svc, &current, &StateEventType::RoomMember, user.as_str()).await? {
            servers.push(member.sender.server_name().to_owned());
        }
        servers.extend(servers_in_room(svc, room_id).await?);
    }
    if let Some(name) = room_id.server_name() {
        servers.push(name.to_owned());
    }
    Ok(servers)
}

/// Joins a room, filling in `join_authorised_via_users_server` for restricted rooms; over
/// federation, through `via` and the other known servers, when this server is not in it.
/// A guest joins only rooms whose `m.room.guest_access` is `can_join` (spec "Guest
/// access"); rooms this server is not in are closed to guests, as in Synapse.
pub async fn join(
    svc: &Services,
    room_id: &RoomId,
    user: &UserId,
    reason: Option<&str>,
    via: &[OwnedServerName],
) -> Result<()> {
    if storage::rooms::blocked_by(&svc.db, room_id.as_str()).await?.is_some() {
        return Err(Error::forbidden("This room has been blocked on this server"));
    }
    let guest = is_local_guest(svc, user).await?;
    let guests_refused = || Error::forbidden("Guests may not join this room");
    let remote_join = svc.rooms.remote_join_lock(&svc.db, room_id).await?;
    if handled_here(svc, room_id).await? {
        drop(remote_join);
        let version = super::room_version(svc, room_id).await?;
        let mut draft = member_draft(svc, user, "join", reason).await?;
        let current = current_state(svc, room_id).await?;
        if guest && !guests_may_join(svc, &current).await? {
            return Err(guests_refused());
        }
        if let Some(authoriser) = federation::restricted_join_authoriser(svc, &current, &version, user).await? {
            draft.content["join_authorised_via_users_server"] = json!(authoriser);
        }
        send(svc, room_id, user, draft, None).await?;
    } else if guest {
        return Err(guests_refused());
    } else {
        let servers = servers_to_ask(svc, room_id, user, via).await?;
        federation::join(svc, user, room_id, &servers, reason).await?;
    }
    let mut tx = svc.db.begin().await?;
    storage::rooms::unforget(&mut tx, user.as_str(), room_id.as_str()).await?;
    tx.commit().await?;
    Ok(())
}

async fn is_local_guest(svc: &Services, user: &UserId) -> Result<bool> {
    Ok(user.server_name() == svc.config.server_name.as_str()
        && storage::users::get(&svc.db, user.as_str()).await?.is_some_and(|u| u.is_guest))
}

async fn guests_may_join(svc: &Services, state: &super::state::StateMap) -> Result<bool> {
    let guest_access = state_pdu(svc, state, &StateEventType::RoomGuestAccess, "").await?;
    Ok(guest_access.and_then(|p| p.content_str("guest_access")).as_deref() == Some("can_join"))
}

/// Makes the local guests of a room leave it once its `m.room.guest_access` is no longer
/// `can_join` (spec "Guest access": the server MUST set their membership to leave; as in
/// Synapse, each guest leaves by an event of their own).
pub async fn remove_guests_unless_open(svc: &Services, room_id: &RoomId) -> Result<()> {
    let current = current_state(svc, room_id).await?;
    if guests_may_join(svc, &current).await? {
        return Ok(());
    }
    for member in storage::rooms::joined_users(&svc.db, room_id.as_str()).await? {
        let Ok(user) = UserId::parse(member.as_str()) else { continue };
        if is_local_guest(svc, &user).await? {
            let draft = member_draft(svc, &user, "leave", None).await?;
            Box::pin(send(svc, room_id, &user, draft, None)).await?;
        }
    }
    Ok(())
}

/// Leaves a room, rejects an invite or retracts a knock.
pub async fn leave(svc: &Services, room_id: &RoomId, user: &UserId, reason: Option<&str>) -> Result<()> {
    if handled_here(svc, room_id).await? {
        let draft = member_draft(svc, user, "leave", reason).await?;
        send(svc, room_id, user, draft, None).await?;
        return Ok(());
    }
    let pending = match storage::rooms::remote_membership(&svc.db, user.as_str(), room_id.as_str()).await? {
        Some(row) => row.membership != "leave",
        None => storage::rooms::membership(&svc.db, room_id.as_str(), user.as_str()).await?.is_some(),
    };
    if !pending {
        return Err(Error::not_found("Unknown room"));
    }
    let servers = servers_to_ask(svc, room_id, user, &[]).await?;
    federation::leave(svc, user, room_id, &servers, reason).await
}

/// Knocks on a room, over federation when this server is not in it.
pub async fn knock(
    svc: &Services,
    room_id: &RoomId,
    user: &UserId,
    reason: Option<&str>,
    via: &[OwnedServerName],
) -> Result<()> {
    if handled_here(svc, room_id).await? {
        let draft = member_draft(svc, user, "knock", reason).await?;
        send(svc, room_id, user, draft, None).await?;
        return Ok(());
    }
    let servers = servers_to_ask(svc, room_id, user, via).await?;
    federation::knock(svc, user, room_id, &servers, reason).await
}

/// Invites a user; a user of another server through their server, which co-signs it.
pub async fn invite(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    invitee: &UserId,
    reason: Option<&str>,
) -> Result<()> {
    let draft = member_draft(svc, invitee, "invite", reason).await?;
    send_invite(svc, room_id, sender, invitee, draft).await
}

/// Sends an invite event (`draft`): through the invitee's server when it is another.
pub async fn send_invite(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    invitee: &UserId,
    draft: super::Draft,
) -> Result<()> {
    if invitee.server_name().as_str() == svc.config.server_name {
        send(svc, room_id, sender, draft, None).await?;
    } else {
        federation::invite(svc, sender, room_id, invitee, draft).await?;
    }
    Ok(())
}
