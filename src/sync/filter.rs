//! Event filters (spec "Filtering"): for /sync, /messages and /context.

use std::sync::{Arc, Mutex};

use ruma::{OwnedUserId, UserId};
use serde::Deserialize;

use crate::Services;
use crate::error::{Error, Result};
use crate::rooms::cache::Lru;
use crate::rooms::pdu::Pdu;
use crate::storage;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Filter {
    pub presence: RoomEventFilter,
    pub account_data: RoomEventFilter,
    pub room: RoomFilter,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RoomFilter {
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub include_leave: bool,
    pub timeline: RoomEventFilter,
    pub state: RoomEventFilter,
    pub ephemeral: RoomEventFilter,
    pub account_data: RoomEventFilter,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RoomEventFilter {
    pub limit: Option<u64>,
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub contains_url: Option<bool>,
    pub lazy_load_members: bool,
    pub include_redundant_members: bool,
    pub unread_thread_notifications: bool,
}

/// `*` matches any run of characters, as the spec's type patterns. Greedy with one
/// backtracking point (the last star), so time is at most pattern x value, whatever the
/// number of stars (a recursive match is exponential in them: found by fuzzing).
fn glob(pattern: &str, value: &str) -> bool {
    let (pattern, value): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    let (mut p, mut v) = (0, 0);
    // After the last star seen: where the pattern goes on, and how far the star reaches.
    let mut last_star: Option<(usize, usize)> = None;
    while v < value.len() {
        if pattern.get(p) == Some(&'*') {
            p += 1;
            last_star = Some((p, v));
        } else if pattern.get(p) == Some(&value[v]) {
            p += 1;
            v += 1;
        } else if let Some((after_star, reach)) = last_star {
            // The star swallows one more character; the rest of the pattern starts again.
            p = after_star;
            v = reach + 1;
            last_star = Some((after_star, reach + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

impl RoomEventFilter {
    pub fn allows_type(&self, kind: &str) -> bool {
        !self.not_types.iter().any(|p| glob(p, kind))
            && self.types.as_ref().is_none_or(|t| t.iter().any(|p| glob(p, kind)))
    }

    pub fn allows_sender(&self, sender: &str) -> bool {
        !self.not_senders.iter().any(|s| s == sender)
            && self.senders.as_ref().is_none_or(|s| s.iter().any(|x| x == sender))
    }

    pub fn allows_room(&self, room: &str) -> bool {
        !self.not_rooms.iter().any(|r| r == room) && self.rooms.as_ref().is_none_or(|r| r.iter().any(|x| x == room))
    }

    pub fn allows(&self, pdu: &Pdu) -> bool {
        self.allows_type(&pdu.kind.to_string())
            && self.allows_sender(pdu.sender.as_str())
            && self.allows_room(pdu.room_id.as_str())
            && self.contains_url.is_none_or(|want| {
                let has = pdu.content_value().get("url").is_some_and(|u| u.is_string());
                has == want
            })
    }

    /// Whether this filter is the identity (lets every event through).
    pub fn is_open(&self) -> bool {
        self.types.is_none()
            && self.not_types.is_empty()
            && self.senders.is_none()
            && self.not_senders.is_empty()
            && self.rooms.is_none()
            && self.not_rooms.is_empty()
            && self.contains_url.is_none()
    }
}

impl RoomFilter {
    pub fn allows_room(&self, room: &str) -> bool {
        !self.not_rooms.iter().any(|r| r == room) && self.rooms.as_ref().is_none_or(|r| r.iter().any(|x| x == room))
    }
}

/// Parses a JSON filter given inline.
pub fn parse<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Error::bad_json(format!("Invalid filter: {e}")))
}

/// Uploaded filters, parsed. A filter never changes once uploaded, so each process keeps the
/// ones in use: a client names its filter on every /sync.
pub struct Uploaded {
    parsed: Mutex<Lru<(OwnedUserId, i64), Arc<Filter>>>,
}

/// Bytes of filter JSON kept parsed (a few thousand clients' filters).
const UPLOADED_CACHE_BYTES: usize = 1 << 20;

impl Default for Uploaded {
    fn default() -> Self {
        Uploaded { parsed: Mutex::new(Lru::new(UPLOADED_CACHE_BYTES)) }
    }
}

/// A sync filter from the `filter` query parameter: inline JSON or an uploaded filter's ID.
pub async fn load(svc: &Services, user: &UserId, param: Option<&str>) -> Result<Arc<Filter>> {
    let id = match param {
        None => return Ok(Arc::default()),
        Some(p) if p.trim_start().starts_with('{') => return parse(p).map(Arc::new),
        Some(id) => id.parse::<i64>().map_err(|_| Error::invalid_param("Unknown filter ID"))?,
    };
    let key = (user.to_owned(), id);
    if let Some(filter) = svc.filters.parsed.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(filter);
    }
    let json = storage::filters::get(&svc.db, user.as_str(), id)
        .await?
        .ok_or_else(|| Error::invalid_param("Unknown filter ID"))?;
    let filter: Arc<Filter> = Arc::new(parse(&json)?);
    // The parsed form is a few times the size of its JSON.
    let weight = 3 * json.len() + std::mem::size_of::<Filter>();
    svc.filters.parsed.lock().unwrap_or_else(|e| e.into_inner()).insert(key, filter.clone(), weight);
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_patterns() {
        assert!(glob("m.room.*", "m.room.message"));
        assert!(glob("*", "anything"));
        assert!(!glob("m.room.*", "m.reaction"));
        let f: RoomEventFilter = parse(r#"{"types":["m.room.*"],"not_types":["m.room.member"]}"#).unwrap();
        assert!(f.allows_type("m.room.message"));
        assert!(!f.allows_type("m.room.member"));
        assert!(!f.allows_type("m.reaction"));
        for (pattern, value, matches) in [
            ("", "", true),
            ("", "a", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyyca", false),
            ("*.message", "m.room.message", true),
            ("m.*.*e", "m.room.message", true),
            ("**", "é", true),
            ("m.r?om", "m.room", false),
        ] {
            assert_eq!(glob(pattern, value), matches, "{pattern:?} on {value:?}");
        }
    }

    /// The fuzzer's finding: a pattern of 50 stars took longer than 10 s on a short type.
    #[test]
    fn many_stars_match_in_bounded_time() {
        let pattern = format!("m.r{}oo[b:@", "*".repeat(50));
        let started = std::time::Instant::now();
        assert!(!glob(&pattern, "m.room.message.with.a.longer.type.name"));
        assert!(glob(&format!("m.r{}", "*".repeat(5000)), "m.room.message"));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
