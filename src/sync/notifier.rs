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

#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<OwnedUserId, watch::Sender<u64>>>,
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
        users.entry(user.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// The server is stopping: wakes every long-poll, and none waits from now on.
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Wakes every long-poll of this process.
    pub fn wake_all(&self) {
        let map = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for tx in map.values() {
            tx.send_modify(|v| *v = v.wrapping_add(1));
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
            if let Some(tx) = map.get(user) {
                if tx.receiver_count() == 0 {
                    map.remove(user);
                } else {
                    tx.send_modify(|v| *v = v.wrapping_add(1));
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
