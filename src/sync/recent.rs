//! The timeline events this process appended lately, by stream position, so that a woken
//! long-poll reads its window (since, now] from memory instead of asking the database.
//!
//! Exactness rests on one rule: a window is answered from here only when *every* position
//! in it is an event recorded here. Everything else that takes a stream position (receipts,
//! account data, presence, to-device messages, device-list changes, state group IDs, events
//! appended by another process or outside `rooms::append`) is not recorded, so a window
//! containing any of it is a gap, and the sync asks the database as before. Positions are
//! recorded after their commit, before the wake-up; a sync that looks in between sees a gap.
//!
//! What an entry holds never changes after the commit except by a redaction or a purge:
//! redacted content is read through the event cache (invalidated by the redaction), and a
//! purge clears the log.
//!
//! Unread counts follow from the same rule. Read receipts take stream positions, so a window
//! known here has none, and the notifications in it are past every read position: the counts
//! at its end are those at its start plus the window's notifications. Each device's last
//! answered counts are kept (`UnreadSnapshot`) for its next sync to add to.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ruma::OwnedUserId;

use crate::storage::events::StoredEvent;
use crate::storage::sync::NewsKinds;

/// Positions kept (the oldest are dropped first): several seconds of a busy server, enough
/// for every long-poll that is back waiting.
const CAPACITY: usize = 4096;

/// Notified users kept over all positions (each a user ID and a flag, about 50 bytes): in
/// rooms of thousands of members, fewer positions are kept rather than megabytes of these.
const NOTIFIED_CAPACITY: usize = 65_536;

/// Devices whose unread counts are kept before starting again.
const UNREAD_CAPACITY: usize = 10_000;

#[derive(Default)]
pub struct RecentEvents {
    log: Mutex<Log>,
    unread: Mutex<Unread>,
}

#[derive(Default)]
struct Log {
    events: BTreeMap<i64, Arc<Recent>>,
    /// The notified users of all of `events`.
    notified: usize,
}

/// Per device, the unread counts its last sync answered; `generation` counts the clears.
#[derive(Default)]
struct Unread {
    generation: u64,
    devices: HashMap<(String, String), UnreadSnapshot>,
}

struct Recent {
    row: StoredEvent,
    /// The event relates to another (`m.relates_to`): the target's aggregations changed.
    relates: bool,
    notifications: Notifications,
}

/// The notifications an event made, as `push::store` wrote them.
#[derive(Default)]
pub struct Notifications {
    /// The event's thread ('main' outside threads).
    pub thread: String,
    /// (user, highlight) of each user notified, each once.
    pub users: Vec<(OwnedUserId, bool)>,
}

/// A user's unread counts in a room: (thread, notifications, highlights) of the threads
/// with any, as `push::unread_counts_by_room` answers them.
pub type Counts = Vec<(String, i64, i64)>;

/// The unread counts of some rooms at a stream position.
pub struct UnreadSnapshot {
    pub pos: i64,
    pub rooms: HashMap<String, Counts>,
}

/// The events at every position of a window (`after`, `up_to`], oldest first.
pub struct Span {
    after: i64,
    up_to: i64,
    events: Vec<Arc<Recent>>,
}

impl RecentEvents {
    /// Records an event appended to the timeline at `row.stream_pos`, once committed.
    pub fn record(&self, row: StoredEvent, relates: bool, mut notifications: Notifications) {
        let Some(pos) = row.stream_pos else { return };
        // Sorted once here, searched by every member's sync (`advance_unread`).
        notifications.users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut log = self.lock();
        log.notified += notifications.users.len();
        if let Some(replaced) = log.events.insert(pos, Arc::new(Recent { row, relates, notifications })) {
            log.notified -= replaced.notifications.users.len();
        }
        while log.events.len() > CAPACITY || log.notified > NOTIFIED_CAPACITY {
            let Some((_, oldest)) = log.events.pop_first() else { break };
            log.notified -= oldest.notifications.users.len();
        }
    }

    /// Forgets everything (history was purged, and with it notifications).
    pub fn clear(&self) {
        let mut unread = self.unread.lock().unwrap_or_else(|e| e.into_inner());
        unread.generation += 1;
        unread.devices.clear();
        *self.lock() = Log::default();
    }

    /// The events of (`after`, `up_to`], when every position in it is one recorded here.
    pub fn span(&self, after: i64, up_to: i64) -> Option<Span> {
        let len = usize::try_from(up_to.checked_sub(after)?).ok()?;
        if len > CAPACITY {
            return None;
        }
        let events = match len {
            0 => Vec::new(),
            _ => self.lock().events.range(after + 1..=up_to).map(|(_, e)| e.clone()).collect(),
        };
        (events.len() == len).then_some(Span { after, up_to, events })
    }

    /// The unread counts a device's last sync answered (taken: `keep_unread` puts them back),
    /// and the generation to give `keep_unread`.
    pub fn take_unread(&self, user: &str, device: &str) -> (u64, Option<UnreadSnapshot>) {
        let mut unread = self.unread.lock().unwrap_or_else(|e| e.into_inner());
        (unread.generation, unread.devices.remove(&(user.to_owned(), device.to_owned())))
    }

    /// Keeps the unread counts a sync of this device answered, unless the log was cleared
    /// since `take_unread` (a purge may have changed what they were computed from).
    pub fn keep_unread(&self, user: &str, device: &str, generation: u64, snapshot: UnreadSnapshot) {
        let mut unread = self.unread.lock().unwrap_or_else(|e| e.into_inner());
        if unread.generation != generation {
            return;
        }
        if unread.devices.len() >= UNREAD_CAPACITY {
            unread.devices.clear();
        }
        unread.devices.insert((user.to_owned(), device.to_owned()), snapshot);
    }

    /// The timeline rows of a room in (`after`, `up_to`] as `storage::events::timeline_range`
    /// reads them, when every position in it is recorded here.
    pub fn timeline_range(
        &self,
        room_id: &str,
        after: i64,
        up_to: i64,
        limit: i64,
        newest_first: bool,
    ) -> Option<Vec<StoredEvent>> {
        let span = self.span(after, up_to)?;
        let rows = span.rows().filter(|e| e.room_id == room_id && !e.rejected).cloned();
        let limit = usize::try_from(limit).unwrap_or(0);
        Some(match newest_first {
            true => rows.rev().take(limit).collect(),
            false => rows.take(limit).collect(),
        })
    }

    /// The state group of a room's last event at or before `pos` (the answer of
    /// `storage::events::group_at_or_before`), when that event is recorded here and so is
    /// every position after it up to `pos`.
    pub fn group_at_or_before(&self, room_id: &str, pos: i64) -> Option<Option<i64>> {
        let log = self.lock();
        let mut expected = pos;
        for (&p, event) in log.events.range(..=pos).rev() {
            if p != expected {
                return None;
            }
            if event.row.room_id == room_id {
                return Some(event.row.state_group);
            }
            expected -= 1;
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Span {
    fn rows(&self) -> impl DoubleEndedIterator<Item = &StoredEvent> {
        self.events.iter().map(|e| &e.row)
    }

    /// The window's end.
    pub fn up_to(&self) -> i64 {
        self.up_to
    }

    /// Moves `user`'s unread counts from the window's start to its end by adding the
    /// window's notifications of the user. None when they are not of the window's start.
    pub fn advance_unread(&self, user: &str, mut snapshot: UnreadSnapshot) -> Option<UnreadSnapshot> {
        if snapshot.pos != self.after {
            return None;
        }
        for event in &self.events {
            let users = &event.notifications.users;
            let Ok(i) = users.binary_search_by(|(u, _)| u.as_str().cmp(user)) else { continue };
            let Some(counts) = snapshot.rooms.get_mut(&event.row.room_id) else { continue };
            let (thread, highlight) = (&event.notifications.thread, i64::from(users[i].1));
            match counts.iter_mut().find(|(t, _, _)| t == thread) {
                Some((_, n, h)) => {
                    *n += 1;
                    *h += highlight;
                }
                None => counts.push((thread.clone(), 1, highlight)),
            }
        }
        snapshot.pos = self.up_to;
        Some(snapshot)
    }

    /// The kinds of news in the window for `user`: nothing but timeline events is in it.
    pub fn kinds(&self, user: &str) -> NewsKinds {
        let members = || self.rows().filter(|e| e.event_type == "m.room.member");
        NewsKinds {
            own_membership: members().any(|e| e.state_key.as_deref() == Some(user)),
            any_membership: members().next().is_some(),
            account_data: false,
            remote_memberships: false,
            // Messages for the device would have positions in the window; those before it
            // were acknowledged by the sync's token (when it was not cut short).
            to_device: false,
            device_lists: false,
            presence: false,
        }
    }

    /// Rooms with events in the window.
    pub fn rooms(&self) -> HashSet<String> {
        self.rows().map(|e| e.room_id.clone()).collect()
    }

    /// Whether these events are all in the window and nothing in it relates to an event:
    /// then they have no aggregations to bundle up to the window's end.
    pub fn nothing_to_bundle<'a>(&self, event_ids: impl IntoIterator<Item = &'a str>) -> bool {
        if self.events.iter().any(|e| e.relates) {
            return false;
        }
        let known: HashSet<&str> = self.rows().map(|e| e.event_id.as_str()).collect();
        event_ids.into_iter().all(|id| known.contains(id))
    }

    /// Rooms where `user`'s membership changed in the window.
    pub fn membership_changes(&self, user: &str) -> HashSet<String> {
        self.rows()
            .filter(|e| e.event_type == "m.room.member" && e.state_key.as_deref() == Some(user))
            .map(|e| e.room_id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pos: i64, room: &str, group: i64) -> StoredEvent {
        StoredEvent {
            event_id: format!("$e{pos}"),
            room_id: room.to_owned(),
            json: "".into(),
            stream_pos: Some(pos),
            state_group: Some(group),
            redacted_by: None,
            rejected: false,
            event_type: "m.room.message".to_owned(),
            state_key: None,
        }
    }

    #[test]
    fn answers_only_windows_without_gaps() {
        let log = RecentEvents::default();
        for (pos, room) in [(10, "!a"), (11, "!b"), (12, "!a"), (14, "!a")] {
            log.record(event(pos, room, pos * 100), pos == 11, Notifications::default());
        }
        assert_eq!(log.span(9, 12).map(|s| s.events.len()), Some(3));
        assert!(log.span(8, 12).is_none(), "position 9 is not known");
        assert!(log.span(12, 14).is_none(), "position 13 is a gap");
        assert_eq!(log.span(12, 12).map(|s| s.events.len()), Some(0));
        let span = log.span(9, 10).unwrap();
        assert!(span.nothing_to_bundle(["$e10"]));
        assert!(!span.nothing_to_bundle(["$e10", "$e1"]), "$e1 is not in the window");
        assert!(!log.span(9, 11).unwrap().nothing_to_bundle(["$e10"]), "$e11 relates to something");
        let rows = log.timeline_range("!a", 9, 12, 10, true).unwrap();
        assert_eq!(rows.iter().map(|r| r.stream_pos.unwrap()).collect::<Vec<_>>(), vec![12, 10]);
        assert_eq!(log.timeline_range("!a", 9, 12, 1, false).unwrap()[0].stream_pos, Some(10));
        // The last event of !a at or before 11 is at 10, and 11 is known: group of 10.
        assert_eq!(log.group_at_or_before("!a", 11), Some(Some(1000)));
        assert_eq!(log.group_at_or_before("!b", 12), Some(Some(1100)));
        assert_eq!(log.group_at_or_before("!a", 13), None, "13 is a gap");
        assert_eq!(log.group_at_or_before("!b", 10), None, "nothing of !b known before 10");
        log.clear();
        assert!(log.span(9, 10).is_none());
    }

    #[test]
    fn adds_a_windows_notifications_to_the_counts_at_its_start() {
        let log = RecentEvents::default();
        let notified = |thread: &str, users: &[(&str, bool)]| Notifications {
            thread: thread.to_owned(),
            users: users.iter().map(|(u, h)| (OwnedUserId::try_from(*u).unwrap(), *h)).collect(),
        };
        // Users in any order (push evaluation follows the member list).
        log.record(
            event(11, "!a", 1),
            false,
            notified("main", &[("@dave:x", false), ("@carol:x", true), ("@bob:x", false)]),
        );
        log.record(event(12, "!a", 1), false, notified("$root", &[("@bob:x", true)]));
        log.record(event(13, "!b", 1), false, notified("main", &[("@bob:x", false)]));
        let at = |pos: i64, counts: Counts| UnreadSnapshot { pos, rooms: [("!a".to_owned(), counts)].into() };
        let span = log.span(10, 13).unwrap();
        assert!(span.advance_unread("@bob:x", at(9, vec![])).is_none(), "counts of another position");
        let advanced = span.advance_unread("@bob:x", at(10, vec![("main".to_owned(), 2, 0)])).unwrap();
        assert_eq!(advanced.pos, 13);
        let mut counts = advanced.rooms["!a"].clone();
        counts.sort();
        assert_eq!(counts, vec![("$root".to_owned(), 1, 1), ("main".to_owned(), 3, 0)]);
        assert!(!advanced.rooms.contains_key("!b"), "rooms the counts did not cover are read afresh");
        let (generation, _) = log.take_unread("@bob:x", "D");
        log.clear();
        log.keep_unread("@bob:x", "D", generation, advanced);
        assert!(log.take_unread("@bob:x", "D").1.is_none(), "counts from before a purge are not kept");
    }

    #[test]
    fn keeps_fewer_positions_when_they_notify_many_users() {
        let log = RecentEvents::default();
        let half = || Notifications {
            thread: "main".to_owned(),
            users: (0..NOTIFIED_CAPACITY / 2)
                .map(|i| (OwnedUserId::try_from(format!("@u{i}:x")).unwrap(), false))
                .collect(),
        };
        for pos in 1..=3 {
            log.record(event(pos, "!a", 1), false, half());
        }
        assert!(log.span(0, 3).is_none(), "position 1 was dropped");
        assert!(log.span(1, 3).is_some());
        assert_eq!(log.lock().notified, NOTIFIED_CAPACITY);
    }

    #[test]
    fn keeps_the_newest() {
        let log = RecentEvents::default();
        for pos in 0..(CAPACITY as i64 + 10) {
            log.record(event(pos, "!a", 1), false, Notifications::default());
        }
        assert!(log.span(8, 10).is_none());
        assert!(log.span(CAPACITY as i64, CAPACITY as i64 + 9).is_some());
    }
}
