//! Media administration: quarantine by room, deletion by ID and by age, and the purge of
//! cached remote media. A file leaves the disk only when no row refers to its content hash.

use std::collections::BTreeSet;

use super::internal;
use crate::Services;
use crate::error::{Error, Result};
use crate::storage;

/// Removes the files of content hashes no row uses any more.
async fn remove_files(state: &Services, unused: Vec<String>) -> Result<()> {
    for sha256 in unused {
        state.media.store.remove(&sha256).await.map_err(internal)?;
    }
    Ok(())
}

/// Deletes a local media ID, its thumbnails, and the files no other media uses; false when
/// there was no such media.
pub async fn delete_local(state: &Services, media_id: &str) -> Result<bool> {
    if storage::media::get(&state.db, media_id).await?.is_none() {
        return Ok(false);
    }
    let mut tx = state.db.begin().await?;
    let unused = storage::media::delete(&mut tx, media_id).await?;
    tx.commit().await?;
    remove_files(state, unused).await?;
    Ok(true)
}

/// Synapse refuses times before this (seconds given for milliseconds, most likely).
const EARLIEST_BEFORE_TS: i64 = 30_000_000_000;

fn check_before_ts(before_ts: i64) -> Result<()> {
    if before_ts < 0 {
        return Err(Error::invalid_param("before_ts must not be negative"));
    }
    if before_ts < EARLIEST_BEFORE_TS {
        return Err(Error::invalid_param(
            "before_ts is from the year 1970: give a timestamp in milliseconds, not seconds",
        ));
    }
    Ok(())
}

/// Deletes the local media last served before `before_ts` and larger than `size_gt` bytes,
/// except quarantined media and, with `keep_profiles`, media shown as a user's or a room's
/// avatar (`POST /_synapse/admin/v1/media/delete`). Returns the deleted media IDs.
pub async fn delete_unused_since(
    state: &Services,
    before_ts: i64,
    size_gt: i64,
    keep_profiles: bool,
) -> Result<Vec<String>> {
    check_before_ts(before_ts)?;
    if size_gt < 0 {
        return Err(Error::invalid_param("size_gt must not be negative"));
    }
    let mut candidates = storage::media::unused_since(&state.db, before_ts, size_gt).await?;
    if keep_profiles {
        let prefix = super::mxc(&state.config.server_name, "");
        let mut shown = BTreeSet::new();
        for text in storage::media::profile_references(&state.db, &prefix).await? {
            media_ids_in(&text, &prefix, &mut shown);
        }
        candidates.retain(|id| !shown.contains(id));
    }
    let mut deleted = Vec::with_capacity(candidates.len());
    for media_id in candidates {
        if delete_local(state, &media_id).await? {
            deleted.push(media_id);
        }
    }
    Ok(deleted)
}

/// Deletes the cached media of other servers last served before `before_ts` and the cached
/// thumbnails last served before it (`POST /_synapse/admin/v1/purge_media_cache`); returns
/// how many media lost cached copies. They are fetched again when asked for.
pub async fn purge_remote_cache(state: &Services, before_ts: i64) -> Result<usize> {
    check_before_ts(before_ts)?;
    let stale = storage::media::remote_unused_since(&state.db, before_ts).await?;
    let mut purged: BTreeSet<(String, String)> = BTreeSet::new();
    for (server_name, media_id) in stale {
        let mut tx = state.db.begin().await?;
        let unused = storage::media::delete_remote(&mut tx, &server_name, &media_id).await?;
        tx.commit().await?;
        remove_files(state, unused).await?;
        purged.insert((server_name, media_id));
    }
    // Thumbnails of media whose original was never fetched, or served less than it.
    let mut tx = state.db.begin().await?;
    let (thumbnailed, unused) = storage::media::delete_remote_thumbnails_unused_since(&mut tx, before_ts).await?;
    tx.commit().await?;
    remove_files(state, unused).await?;
    purged.extend(thumbnailed);
    Ok(purged.len())
}

/// Adds the media IDs of the `mxc://` URIs starting with `prefix` (ours) found in `text`.
fn media_ids_in(text: &str, prefix: &str, ids: &mut BTreeSet<String>) {
    for (start, _) in text.match_indices(prefix) {
        let rest = &text[start + prefix.len()..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).unwrap_or(rest.len());
        if end > 0 {
            ids.insert(rest[..end].to_owned());
        }
    }
}

/// Quarantines the local media a room's events refer to; returns how many were newly
/// quarantined.
pub async fn quarantine_in_room(state: &Services, room_id: &str) -> Result<u64> {
    let prefix = super::mxc(&state.config.server_name, "");
    let mut ids = BTreeSet::new();
    for json in storage::events::jsons_mentioning_media(&state.db, room_id).await? {
        media_ids_in(&json, &prefix, &mut ids);
    }
    let mut quarantined = 0;
    let mut tx = state.db.begin().await?;
    for id in ids {
        if storage::media::get(&state.db, &id).await?.is_some_and(|m| !m.quarantined) {
            storage::media::set_quarantined(&mut tx, &id, true).await?;
            quarantined += 1;
        }
    }
    tx.commit().await?;
    Ok(quarantined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_media_ids() {
        let mut ids = BTreeSet::new();
        let text = r#"{"avatar_url":"mxc://here.org/Ab_c-1","url":"mxc://there.org/Other","u2":"mxc://here.org/X2"}"#;
        media_ids_in(text, "mxc://here.org/", &mut ids);
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), ["Ab_c-1", "X2"]);
    }
}
