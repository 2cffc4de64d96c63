//! The state at an event: state groups loaded from storage (immutable, so cached freely).

use std::collections::HashMap;
use std::sync::Arc;

use ruma::OwnedEventId;

use crate::Services;
use crate::error::{Error, Result};
use crate::storage;

/// (event type, state key) -> event ID, as ruma's state resolution uses it.
pub type StateMap = ruma::state_res::StateMap<OwnedEventId>;

/// Bytes of state maps kept in memory (`Rooms::state_cache`).
pub(super) const CACHE_BYTES: usize = 8 << 20;

/// About what one entry of a state map takes: its key (type and state key) and event ID,
/// with the map's own overhead.
const ENTRY_BYTES: usize = 160;

/// The full state of a group.
pub async fn load(svc: &Services, group: i64) -> Result<Arc<StateMap>> {
    let cached = svc.rooms.state_cache.lock().unwrap_or_else(|e| e.into_inner()).get(&group);
    if let Some(map) = cached {
        return Ok(map);
    }
    let rows = storage::state::load_group(&svc.db, group).await?;
    let mut map = StateMap::with_capacity(rows.len());
    for ((kind, key), event_id) in rows {
        let event_id = OwnedEventId::try_from(event_id).map_err(|e| Error::Internal(e.into()))?;
        map.insert((kind.into(), key), event_id);
    }
    let map = Arc::new(map);
    remember(svc, group, map.clone());
    Ok(map)
}

/// Caches a group's state.
pub fn remember(svc: &Services, group: i64, map: Arc<StateMap>) {
    let weight = map.len().max(1) * ENTRY_BYTES;
    svc.rooms.state_cache.lock().unwrap_or_else(|e| e.into_inner()).insert(group, map, weight);
}

/// The storage form of a state map.
pub fn to_rows(map: &StateMap) -> HashMap<(String, String), String> {
    map.iter().map(|((kind, key), id)| ((kind.to_string(), key.clone()), id.to_string())).collect()
}
