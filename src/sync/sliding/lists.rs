//! Room lists: the user's rooms sorted by recency (`bump_stamp`), filtered, cut to ranges.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use ruma::events::TimelineEventType;
use serde::Deserialize;
use serde_json::Value;

use crate::Services;
use crate::accounts::Identity;
use crate::error::{Error, Result};
use crate::rooms;
use crate::storage;
use crate::storage::sliding_sync::ListedRoom;

/// Event types that bump a room to the top of a list (MSC4186; Synapse's defaults): what
/// people see as activity, not state churn. Kept in `room_bump_stamps` by `rooms::append`
/// (migration 0011 lists them too, for rooms that existed before).
const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

pub fn bumps(kind: &TimelineEventType) -> bool {
    BUMP_TYPES.contains(&kind.to_string().as_str())
}

/// `filters` of a list; absent fields do not filter.
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    pub is_dm: Option<bool>,
    #[serde(default)]
    pub is_encrypted: Option<bool>,
    #[serde(default)]
    pub is_invite: Option<bool>,
    /// Rooms that are children (`m.space.child`) of one of these spaces.
    #[serde(default)]
    pub spaces: Option<Vec<String>>,
    /// Create types to keep; `null` is a room without a type.
    #[serde(default)]
    pub room_types: Option<Vec<Option<String>>>,
    #[serde(default)]
    pub not_room_types: Option<Vec<Option<String>>>,
}

/// A room that may appear in lists.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub room: ListedRoom,
    pub bump_stamp: i64,
}

impl Candidate {
    pub fn is_invite(&self) -> bool {
        self.room.membership == "invite"
    }
}

/// Most room rows the cache keeps over all users; past it, it starts over.
const CACHED_ROWS: usize = 200_000;

/// Beyond this many rooms with news since a user's rows were read, reading them all again
/// is cheaper than picking out the changed ones.
const MAX_CHANGED_ROOMS: usize = 200;

/// The room rows of each user with a sliding sync connection, as of a stream position, and
/// brought up to date from what the stream says changed: a response for a user in 1,000
/// rooms re-reads the rows of the rooms with news since the previous one, not all 1,000.
/// Every change to a row (membership, bump stamp) comes with an event of that room on the
/// stream, so the cache needs no invalidation, and it holds for every process of a cluster.
#[derive(Default)]
pub struct RoomListCache {
    inner: Mutex<CachedRows>,
}

#[derive(Default)]
struct CachedRows {
    users: HashMap<String, UserRooms>,
    rows: usize,
}

struct UserRooms {
    /// The rows hold every change up to this stream position (and maybe later ones).
    at: i64,
    rooms: HashMap<String, ListedRoom>,
}

impl RoomListCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CachedRows> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `f` of the user's rows as of `stream` or later, reading from the database only the
    /// rows of rooms with news since they were last read.
    async fn with_rooms<T>(
        &self,
        svc: &Services,
        user: &str,
        stream: i64,
        f: impl Fn(&HashMap<String, ListedRoom>) -> T,
    ) -> Result<T> {
        let base = match self.lock().users.get(user) {
            Some(cached) if cached.at >= stream => return Ok(f(&cached.rooms)),
            Some(cached) => Some(cached.at),
            None => None,
        };
        if let Some(base) = base {
            let news = storage::events::rooms_with_news(&svc.db, base, stream).await?;
            if news.len() <= MAX_CHANGED_ROOMS {
                let ids: Vec<&str> = news.iter().map(String::as_str).collect();
                let fresh = storage::sliding_sync::rooms_of_user_among(&svc.db, user, &ids).await?;
                let mut cache = self.lock();
                let CachedRows { users, rows } = &mut *cache;
                // Another request may have moved the rows meanwhile: then read them all.
                if let Some(cached) = users.get_mut(user).filter(|c| c.at == base) {
                    for id in &news {
                        *rows -= usize::from(cached.rooms.remove(id).is_some());
                    }
                    *rows += fresh.len();
                    cached.rooms.extend(fresh.into_iter().map(|r| (r.room_id.clone(), r)));
                    cached.at = stream;
                    return Ok(f(&cached.rooms));
                }
            }
        }
        let rooms: HashMap<String, ListedRoom> = storage::sliding_sync::rooms_of_user(&svc.db, user)
            .await?
            .into_iter()
            .map(|r| (r.room_id.clone(), r))
            .collect();
        let answer = f(&rooms);
        let mut cache = self.lock();
        if cache.users.get(user).is_none_or(|c| c.at < stream) {
            if cache.rows + rooms.len() > CACHED_ROWS {
                *cache = CachedRows::default();
            }
            cache.rows += rooms.len();
            if let Some(old) = cache.users.insert(user.to_owned(), UserRooms { at: stream, rooms }) {
                cache.rows -= old.rooms.len();
            }
        }
        Ok(answer)
    }
}

/// The rooms the user's lists draw from as of `stream`, most recent first. Rooms the user
/// left on their own appear only when they left after `since` (so the client learns of it
/// once).
pub async fn candidates(svc: &Services, me: &Identity, since: Option<i64>, stream: i64) -> Result<Vec<Candidate>> {
    let user = me.user_id.as_str();
    let mut out: Vec<Candidate> = svc
        .sliding_rooms
        .with_rooms(svc, user, stream, |rooms| {
            rooms.values().filter(|r| listed(r, user, since)).map(|room| Candidate::of(room.clone())).collect()
        })
        .await?;
    out.sort_by(|a, b| b.bump_stamp.cmp(&a.bump_stamp).then_with(|| a.room.room_id.cmp(&b.room.room_id)));
    Ok(out)
}

fn listed(room: &ListedRoom, user: &str, since: Option<i64>) -> bool {
    match room.membership.as_str() {
        "join" | "invite" | "knock" | "ban" => true,
        "leave" => room.membership_sender != user || since.is_some_and(|s| room.membership_pos.is_some_and(|p| p > s)),
        _ => false,
    }
}

impl Candidate {
    fn of(room: ListedRoom) -> Self {
        let membership_pos = room.membership_pos.unwrap_or(0);
        // A joined room moves with its activity (and the join itself); otherwise the
        // membership event is the last thing the user saw happen.
        let bump_stamp = match room.membership.as_str() {
            "join" => room.bump_pos.unwrap_or(0).max(membership_pos),
            _ => membership_pos,
        };
        Candidate { room, bump_stamp }
    }
}

/// Facts about the user's rooms that filters need, each read once per request when a
/// filter first asks.
#[derive(Default)]
pub struct Lookups {
    dms: Option<HashSet<String>>,
    encrypted: Option<HashSet<String>>,
    room_types: Option<HashMap<String, Option<String>>>,
    space_children: HashMap<String, HashSet<String>>,
}

impl Lookups {
    /// Rooms that are DMs: listed in `m.direct`, or invites marked `is_direct`.
    pub async fn is_dm(&mut self, svc: &Services, me: &Identity, room: &Candidate) -> Result<bool> {
        if self.dms.is_none() {
            let direct = storage::account_data::get(&svc.db, me.user_id.as_str(), "", "m.direct").await?;
            let direct: Value = direct.and_then(|c| serde_json::from_str(&c).ok()).unwrap_or_default();
            let rooms = direct
                .as_object()
                .into_iter()
                .flat_map(|m| m.values())
                .filter_map(Value::as_array)
                .flatten()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect();
            self.dms = Some(rooms);
        }
        if self.dms.as_ref().is_some_and(|d| d.contains(&room.room.room_id)) {
            return Ok(true);
        }
        if room.is_invite() {
            let id = ruma::OwnedEventId::try_from(room.room.membership_event_id.as_str())
                .map_err(|e| Error::Internal(e.into()))?;
            if let Some(pdu) = rooms::get_pdu(svc, &id).await? {
                return Ok(pdu.content_value().get("is_direct").and_then(Value::as_bool).unwrap_or(false));
            }
        }
        Ok(false)
    }

    async fn is_encrypted(&mut self, svc: &Services, me: &Identity, room_id: &str) -> Result<bool> {
        if self.encrypted.is_none() {
            let rows =
                storage::sliding_sync::user_rooms_with_state(&svc.db, me.user_id.as_str(), "m.room.encryption").await?;
            self.encrypted = Some(rows.into_iter().map(|(r, _)| r).collect());
        }
        Ok(self.encrypted.as_ref().is_some_and(|e| e.contains(room_id)))
    }

    async fn room_type(&mut self, svc: &Services, me: &Identity, room_id: &str) -> Result<Option<String>> {
        if self.room_types.is_none() {
            let rows =
                storage::sliding_sync::user_rooms_with_state(&svc.db, me.user_id.as_str(), "m.room.create").await?;
            let types = rows
                .into_iter()
                .map(|(room, json)| {
                    let pdu: Value = serde_json::from_str(&json).unwrap_or_default();
                    let kind = pdu["content"]["type"].as_str().map(str::to_owned);
                    (room, kind)
                })
                .collect();
            self.room_types = Some(types);
        }
        Ok(self.room_types.as_ref().and_then(|t| t.get(room_id).cloned()).flatten())
    }

    /// Children of a space: its `m.space.child` state events that have a `via`.
    async fn children_of(&mut self, svc: &Services, space: &str) -> Result<&HashSet<String>> {
        if !self.space_children.contains_key(space) {
            let mut children = HashSet::new();
            if let Ok(space_id) = ruma::RoomId::parse(space)
                && storage::rooms::get(&svc.db, space).await?.is_some()
            {
                let state = rooms::current_state(svc, &space_id).await?;
                for ((kind, key), id) in state.iter() {
                    if kind.to_string() != "m.space.child" {
                        continue;
                    }
                    if let Some(pdu) = rooms::get_pdu(svc, id).await?
                        && pdu.content_value().get("via").and_then(Value::as_array).is_some_and(|v| !v.is_empty())
                    {
                        children.insert(key.clone());
                    }
                }
            }
            self.space_children.insert(space.to_owned(), children);
        }
        Ok(&self.space_children[space])
    }

    /// Whether a room passes a list's filters.
    pub async fn allows(&mut self, svc: &Services, me: &Identity, f: &Filters, room: &Candidate) -> Result<bool> {
        let id = room.room.room_id.as_str();
        if f.is_invite.is_some_and(|want| want != room.is_invite()) {
            return Ok(false);
        }
        if let Some(want) = f.is_dm
            && want != self.is_dm(svc, me, room).await?
        {
            return Ok(false);
        }
        if let Some(want) = f.is_encrypted
            && want != self.is_encrypted(svc, me, id).await?
        {
            return Ok(false);
        }
        if f.room_types.is_some() || f.not_room_types.is_some() {
            let kind = self.room_type(svc, me, id).await?;
            if f.not_room_types.as_ref().is_some_and(|n| n.contains(&kind)) {
                return Ok(false);
            }
            if f.room_types.as_ref().is_some_and(|t| !t.contains(&kind)) {
                return Ok(false);
            }
        }
        if let Some(spaces) = &f.spaces {
            let mut inside = false;
            for space in spaces {
                if self.children_of(svc, space).await?.contains(id) {
                    inside = true;
                    break;
                }
            }
            if !inside {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The indexes of `len` sorted rooms that the (inclusive) `ranges` cover; all without ranges.
pub fn in_ranges(ranges: &[(u64, u64)], len: usize) -> Vec<usize> {
    if ranges.is_empty() {
        return (0..len).collect();
    }
    let mut picked: Vec<usize> = ranges
        .iter()
        .flat_map(|&(start, end)| {
            let end = end.min(len as u64 - (len > 0) as u64);
            if len == 0 || start > end { 0..0 } else { start as usize..end as usize + 1 }
        })
        .collect();
    picked.sort_unstable();
    picked.dedup();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_and_clamped() {
        assert_eq!(in_ranges(&[(0, 1)], 3), vec![0, 1]);
        assert_eq!(in_ranges(&[(0, 9)], 3), vec![0, 1, 2]);
        assert_eq!(in_ranges(&[(2, 5), (0, 0)], 4), vec![0, 2, 3]);
        assert_eq!(in_ranges(&[(5, 9)], 3), Vec::<usize>::new());
        assert_eq!(in_ranges(&[(0, 0)], 0), Vec::<usize>::new());
        assert_eq!(in_ranges(&[], 2), vec![0, 1]);
    }

    #[test]
    fn only_activity_bumps() {
        assert!(bumps(&TimelineEventType::RoomMessage));
        assert!(bumps(&TimelineEventType::RoomEncrypted));
        assert!(!bumps(&TimelineEventType::RoomMember));
        assert!(!bumps(&TimelineEventType::RoomTopic));
    }
}
