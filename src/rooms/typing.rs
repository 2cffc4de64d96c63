//! Who is typing in which room: in memory only (typing is ephemeral), with a global serial
//! that moves on every change so `/sync` can ask which rooms changed since its token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::json;

use crate::AppState;
use crate::error::Result;

/// Longest typing notification a client may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a typing notification from another server lasts: the EDU carries no timeout
/// (as Synapse), and the typing server repeats it while the user types.
pub const FEDERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Sets whether `user` is typing in `room` (for `timeout`), wakes the room's members when
/// the list changed, and tells the other servers in the room when the user is ours.
pub async fn set(state: &AppState, room: &RoomId, user: &UserId, typing: bool, timeout: Duration) -> Result<()> {
    let changed = if typing {
        let changed = state.typing.start(room, user, Instant::now() + timeout);
        tokio::spawn(expire_after(state.clone(), timeout));
        changed
    } else {
        state.typing.stop(room, user)
    };
    if changed {
        super::wake_members(state, room).await?;
        tell_appservices(state, room).await?;
    }
    // A repeated start keeps the notification alive on the other servers too.
    if typing || changed {
        tell_servers(state, room, user, typing).await?;
    }
    Ok(())
}

/// Sends the typing state of one of our users to the other servers in the room.
async fn tell_servers(state: &AppState, room: &RoomId, user: &UserId, typing: bool) -> Result<()> {
    if user.server_name().as_str() != state.config.server_name {
        return Ok(());
    }
    let servers = super::servers_in_room(state, room).await?;
    let content = json!({ "room_id": room, "user_id": user, "typing": typing });
    crate::federation::sender::send_edu(state, servers.iter().map(|s| &**s), "m.typing", content).await
}

/// Queues the room's typing list for the appservices that receive ephemeral events.
async fn tell_appservices(state: &AppState, room: &RoomId) -> Result<()> {
    let content = json!({ "user_ids": state.typing.typing_in(room) });
    crate::appservice::queue_ephemeral(state, room, "m.typing", content).await
}

/// Drops the notifications expired after `delay`, wakes the rooms whose list changed and
/// tells the other servers that our users there stopped (theirs last longer).
async fn expire_after(state: AppState, delay: Duration) {
    tokio::time::sleep(delay).await;
    for (room, users) in state.typing.expire(Instant::now()) {
        if let Err(e) = super::wake_members(&state, &room).await {
            tracing::warn!(%room, error = %e, "cannot wake members after typing expired");
        }
        if let Err(e) = tell_appservices(&state, &room).await {
            tracing::warn!(%room, error = %e, "cannot tell appservices that typing expired");
        }
        for user in &users {
            if let Err(e) = tell_servers(&state, &room, user, false).await {
                tracing::warn!(%room, %user, error = %e, "cannot tell other servers that typing expired");
            }
        }
    }
}

#[derive(Default)]
pub struct Typing {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    serial: u64,
    rooms: HashMap<OwnedRoomId, RoomTyping>,
}

#[derive(Default)]
struct RoomTyping {
    /// The serial of the room's last change (kept when nobody types any more, so that
    /// syncs behind it still learn that the list became empty).
    changed: u64,
    /// Typing users and when their notification expires.
    users: HashMap<OwnedUserId, Instant>,
}

impl Inner {
    fn bump(&mut self, room: &RoomId) {
        self.serial += 1;
        let serial = self.serial;
        self.rooms.entry(room.to_owned()).or_default().changed = serial;
    }
}

impl Typing {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `user` as typing in `room` until `until`; returns whether the room's list of
    /// typing users changed (extending a notification changes nothing clients see).
    pub fn start(&self, room: &RoomId, user: &UserId, until: Instant) -> bool {
        let mut inner = self.lock();
        let entry = inner.rooms.entry(room.to_owned()).or_default();
        let was_typing = entry.users.insert(user.to_owned(), until).is_some_and(|old| old > Instant::now());
        if !was_typing {
            inner.bump(room);
        }
        !was_typing
    }

    /// Marks `user` as no longer typing in `room`; returns whether that changed anything.
    pub fn stop(&self, room: &RoomId, user: &UserId) -> bool {
        let mut inner = self.lock();
        let removed = inner.rooms.get_mut(room).and_then(|r| r.users.remove(user)).is_some();
        if removed {
            inner.bump(room);
        }
        removed
    }

    /// Drops the notifications expired at `now`; returns the rooms whose list changed, with
    /// the users who stopped typing there.
    pub fn expire(&self, now: Instant) -> Vec<(OwnedRoomId, Vec<OwnedUserId>)> {
        let mut inner = self.lock();
        let mut changed = Vec::new();
        for (room, typing) in inner.rooms.iter_mut() {
            let expired: Vec<OwnedUserId> =
                typing.users.iter().filter(|(_, until)| **until <= now).map(|(u, _)| u.clone()).collect();
            if !expired.is_empty() {
                typing.users.retain(|_, until| *until > now);
                changed.push((room.clone(), expired));
            }
        }
        for (room, _) in &changed {
            inner.bump(room);
        }
        changed
    }

    /// The users typing in a room now, sorted.
    pub fn typing_in(&self, room: &RoomId) -> Vec<OwnedUserId> {
        let now = Instant::now();
        let inner = self.lock();
        let mut users: Vec<OwnedUserId> = inner
            .rooms
            .get(room)
            .map(|r| r.users.iter().filter(|(_, until)| **until > now).map(|(u, _)| u.clone()).collect())
            .unwrap_or_default();
        users.sort();
        users
    }

    /// Rooms whose typing list changed after `serial`.
    pub fn changed_since(&self, serial: u64) -> Vec<OwnedRoomId> {
        self.lock().rooms.iter().filter(|(_, r)| r.changed > serial).map(|(room, _)| room.clone()).collect()
    }

    /// The serial of the latest change.
    pub fn serial(&self) -> u64 {
        self.lock().serial
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::{room_id, user_id};

    #[test]
    fn start_stop_expire_and_serials() {
        let typing = Typing::default();
        let room = room_id!("!r:x");
        let other = room_id!("!o:x");
        let alice = user_id!("@alice:x");
        let now = Instant::now();
        assert!(typing.start(room, alice, now + Duration::from_secs(30)));
        assert_eq!(typing.serial(), 1);
        assert_eq!(typing.typing_in(room), vec![alice.to_owned()]);
        // Extending the notification is not a change.
        assert!(!typing.start(room, alice, now + Duration::from_secs(60)));
        assert_eq!(typing.serial(), 1);
        assert_eq!(typing.changed_since(0), vec![room.to_owned()]);
        assert!(typing.changed_since(1).is_empty());

        assert!(typing.stop(room, alice));
        assert!(!typing.stop(room, alice));
        assert!(typing.typing_in(room).is_empty());
        // The room stays listed as changed, so a sync learns the list is empty.
        assert_eq!(typing.changed_since(1), vec![room.to_owned()]);

        typing.start(other, alice, now + Duration::from_millis(10));
        let serial = typing.serial();
        assert!(typing.expire(now).is_empty());
        assert_eq!(typing.expire(now + Duration::from_secs(1)), vec![(other.to_owned(), vec![alice.to_owned()])]);
        assert!(typing.typing_in(other).is_empty());
        assert_eq!(typing.changed_since(serial), vec![other.to_owned()]);
    }
}
