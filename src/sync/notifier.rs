//! Wake-ups: each user has a watch channel whose value changes whenever something new for
//! them was committed. A long-poll subscribes *before* it looks for news, then waits on the
//! channel, so nothing committed in between is missed and only the users concerned wake.
//! With several processes on one database, a wake-up is also announced to the others
//! (`cluster`), which wake their own long-polls of these users.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

use super::recent::RecentEvents;
use crate::cluster::{Message, Publisher};

/// A user's long-polls.
struct Waiters {
    /// Counts the user's wake-ups.
    wake: watch::Sender<u64>,
    /// A stream position a sync of the user answered at, with the wake-up count it had seen
    /// before reading that position: while the count is the same, nothing for the user was
    /// committed after it.
    answered: Option<(u64, i64)>,
}

#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<OwnedUserId, Waiters>>,
    /// The server is stopping: long-polls answer at once rather than hold the shutdown.
    stopping: AtomicBool,
    /// The other processes of the database.
    others: Publisher,
    /// What the wake-ups of this process's appends were about, for the syncs they wake.
    pub recent: RecentEvents,
}

impl Notifier {
    pub fn new(others: Publisher) -> Self {
        Notifier { others, ..Default::default() }
    }

    /// A receiver that changes when `user` is notified.
    pub fn subscribe(&self, user: &UserId) -> watch::Receiver<u64> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let waiters =
            users.entry(user.to_owned()).or_insert_with(|| Waiters { wake: watch::channel(0).0, answered: None });
        waiters.wake.subscribe()
    }

    /// A sync of `user` that had seen `seen` wake-ups (before it read the stream position)
    /// answered at stream position `pos`. Kept while the user has a subscriber.
    pub fn answered(&self, user: &UserId, seen: u64, pos: i64) {
        if let Some(waiters) = self.users.lock().unwrap_or_else(|e| e.into_inner()).get_mut(user) {
            waiters.answered = Some((seen, pos));
        }
    }

    /// Whether nothing for `user` was committed after stream position `pos`, as far as this
    /// process knows without reading the database: a sync answered at `pos` and the user has
    /// had no wake-up since (`seen` is the count now).
    pub fn nothing_after(&self, user: &UserId, seen: u64, pos: i64) -> bool {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.get(user).is_some_and(|w| w.answered == Some((seen, pos)))
    }

    /// The server is stopping: wakes every long-poll, and none waits from now on.
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Wakes every long-poll of this process.
    pub fn wake_all(&self) {
        let map = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for waiters in map.values() {
            waiters.wake.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Wakes every pending long-poll of these users, in every process. Call after the change
    /// is committed.
    pub fn notify<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        if self.others.is_shared() {
            let users: Vec<OwnedUserId> = users.into_iter().map(ToOwned::to_owned).collect();
            self.wake_local(users.iter().map(|u| &**u));
            self.others.send(Message::Wake { users });
        } else {
            self.wake_local(users);
        }
    }

    /// Wakes the long-polls of these users held by this process.
    pub fn wake_local<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        let mut map = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for user in users {
            if let Some(waiters) = map.get(user) {
                // Removed with the waiters: what a sync answered (no later wake-up counts it).
                if waiters.wake.receiver_count() == 0 {
                    map.remove(user);
                } else {
                    waiters.wake.send_modify(|v| *v = v.wrapping_add(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::user_id;

    #[tokio::test]
    async fn wakes_only_the_named_user() {
        let n = Notifier::default();
        let mut alice = n.subscribe(user_id!("@alice:x"));
        let mut bob = n.subscribe(user_id!("@bob:x"));
        n.notify([user_id!("@alice:x")]);
        assert!(alice.has_changed().unwrap());
        assert!(!bob.has_changed().unwrap());
        alice.changed().await.unwrap();
        bob.mark_unchanged();
    }
}
