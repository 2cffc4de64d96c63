//! Who is typing in which room: in memory only (typing is ephemeral), with a serial that
//! moves on every change so `/sync` can ask which rooms changed since its token. With
//! several processes on one database, every change goes through `cluster::publish_typing`,
//! which numbers the changes alike in every process (the serial is shared).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::json;

use crate::error::Result;
use crate::storage::{self, Db, DbKind, now_ms};
use crate::{AppState, Services};

/// Longest typing notification a client may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a typing notification from another server lasts: the EDU carries no timeout
/// (as Synapse), and the typing server repeats it while the user types.
pub const FEDERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// The shared counter of typing serials (`storage::cluster`).
pub const SERIAL_COUNTER: &str = "typing";

/// Sets whether `user` is typing in `room` (for `timeout`) and tells the other servers in
/// the room when the user is ours. The process that handles it expires it.
pub async fn set(state: &AppState, room: &RoomId, user: &UserId, typing: bool, timeout: Duration) -> Result<()> {
    let was_typing = state.typing.is_typing(room, user);
    let until_ms = typing.then(|| now_ms() + timeout.as_millis() as i64);
    crate::cluster::publish_typing(state, room.to_owned(), user.to_owned(), until_ms).await?;
    if typing {
        tokio::spawn(expire_after(state.clone(), room.to_owned(), user.to_owned(), timeout));
    }
    // A repeated start keeps the notification alive on the other servers too.
    if typing || was_typing {
        tell_servers(state, room, user, typing).await?;
    }
    Ok(())
}

/// Applies a typing change (`serial`: its shared serial, None to take the next one here);
/// when the room's list changed, wakes this process's long-polls of the room's members and,
/// in the process the change came from (`own`), tells the appservices.
pub async fn apply(
    svc: &Services,
    serial: Option<u64>,
    room: &RoomId,
    user: &UserId,
    until_ms: Option<i64>,
    own: bool,
) -> Result<()> {
    let until = until_ms.map(instant_of);
    let changed = svc.typing.apply(serial, room, user, until);
    if let Some(serial) = serial {
        svc.typing.applied.send_if_modified(|applied| {
            let newer = serial > *applied;
            *applied = (*applied).max(serial);
            newer
        });
    }
    if !changed {
        return Ok(());
    }
    let users: Vec<OwnedUserId> = storage::rooms::interested_users(&svc.db, room.as_str())
        .await?
        .into_iter()
        .filter_map(|u| OwnedUserId::try_from(u).ok())
        .collect();
    svc.notifier.wake_local(users.iter().map(|u| &**u));
    if own {
        tell_appservices(svc, room).await?;
    }
    Ok(())
}

/// The instant of a wall-clock time in milliseconds (processes share the clock, not instants).
fn instant_of(ms: i64) -> Instant {
    let now = Instant::now();
    let ahead = Duration::from_millis(u64::try_from(ms - now_ms()).unwrap_or(0));
    now + ahead
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
async fn tell_appservices(svc: &Services, room: &RoomId) -> Result<()> {
    let content = json!({ "user_ids": svc.typing.typing_in(room) });
    crate::appservice::queue_ephemeral(svc, room, "m.typing", content).await
}

/// After `delay`, ends the notification unless it was extended, and tells the other servers
/// that our user stopped (theirs last longer).
async fn expire_after(state: AppState, room: OwnedRoomId, user: OwnedUserId, delay: Duration) {
    tokio::time::sleep(delay).await;
    if !state.typing.expired(&room, &user, Instant::now()) {
        return;
    }
    if let Err(e) = crate::cluster::publish_typing(&state, room.clone(), user.clone(), None).await {
        tracing::warn!(%room, %user, error = %e, "cannot end an expired typing notification");
    }
    if let Err(e) = tell_servers(&state, &room, &user, false).await {
        tracing::warn!(%room, %user, error = %e, "cannot tell other servers that typing expired");
    }
}

#[derive(Default)]
pub struct Typing {
    inner: Mutex<Inner>,
    /// The serial of the latest change applied, changed or not (several processes: so that
    /// a request answers once its own change is visible here).
    applied: tokio::sync::watch::Sender<u64>,
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

impl Typing {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The typing list as of the latest serial in the database (0 on SQLite, where the
    /// serial starts afresh with the process).
    pub async fn load(db: &Db) -> Result<Self> {
        let typing = Typing::default();
        if db.kind == DbKind::Postgres {
            typing.lock().serial = u64::try_from(storage::cluster::counter(db, SERIAL_COUNTER).await?).unwrap_or(0);
        }
        Ok(typing)
    }

    /// Marks `user` as typing in `room` until `until`, or not typing (None); returns whether
    /// the room's list of typing users changed (extending a notification changes nothing
    /// clients see). A change gets `serial`, or the next serial when None.
    pub fn apply(&self, serial: Option<u64>, room: &RoomId, user: &UserId, until: Option<Instant>) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        let entry = inner.rooms.entry(room.to_owned()).or_default();
        let was_typing = entry.users.get(user).is_some_and(|old| *old > now);
        match until {
            Some(until) => entry.users.insert(user.to_owned(), until),
            None => entry.users.remove(user),
        };
        let changed = was_typing != until.is_some_and(|u| u > now);
        if changed {
            let serial = serial.unwrap_or(inner.serial + 1);
            inner.serial = inner.serial.max(serial);
            inner.rooms.entry(room.to_owned()).or_default().changed = serial;
        }
        changed
    }

    /// Waits until the change with shared serial `serial` is applied here (at most `limit`:
    /// announcements are lost while the listening connection is down).
    pub async fn applied(&self, serial: u64, limit: Duration) {
        let mut applied = self.applied.subscribe();
        let _ = tokio::time::timeout(limit, applied.wait_for(|a| *a >= serial)).await;
    }

    /// Whether `user` is typing in `room` now.
    pub fn is_typing(&self, room: &RoomId, user: &UserId) -> bool {
        let now = Instant::now();
        self.lock().rooms.get(room).and_then(|r| r.users.get(user)).is_some_and(|until| *until > now)
    }

    /// Whether `user`'s notification in `room` is over at `now` but still listed.
    pub fn expired(&self, room: &RoomId, user: &UserId, now: Instant) -> bool {
        self.lock().rooms.get(room).and_then(|r| r.users.get(user)).is_some_and(|until| *until <= now)
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
    fn changes_expiry_and_serials() {
        let typing = Typing::default();
        let room = room_id!("!r:x");
        let other = room_id!("!o:x");
        let alice = user_id!("@alice:x");
        let now = Instant::now();
        assert!(typing.apply(None, room, alice, Some(now + Duration::from_secs(30))));
        assert_eq!(typing.serial(), 1);
        assert_eq!(typing.typing_in(room), vec![alice.to_owned()]);
        // Extending the notification is not a change.
        assert!(!typing.apply(None, room, alice, Some(now + Duration::from_secs(60))));
        assert_eq!(typing.serial(), 1);
        assert_eq!(typing.changed_since(0), vec![room.to_owned()]);
        assert!(typing.changed_since(1).is_empty());

        assert!(typing.apply(None, room, alice, None));
        assert!(!typing.apply(None, room, alice, None));
        assert!(typing.typing_in(room).is_empty());
        // The room stays listed as changed, so a sync learns the list is empty.
        assert_eq!(typing.changed_since(1), vec![room.to_owned()]);

        // A shared serial is taken as given.
        assert!(typing.apply(Some(7), other, alice, Some(now + Duration::from_millis(10))));
        assert_eq!(typing.serial(), 7);
        assert!(!typing.expired(other, alice, now));
        assert!(typing.expired(other, alice, now + Duration::from_secs(1)));
        assert!(!typing.expired(room, alice, now + Duration::from_secs(1)));
    }
}
