//! The user directory (`POST /user_directory/search`): local accounts and other servers'
//! users seen in rooms here; with `user_directory.search_all_users` off (the default, as
//! Synapse), only those who share a room with the searcher or are in a public room.

use ruma::UserId;

use crate::Services;
use crate::error::Result;
use crate::storage::user_directory::{self, Entry, Scope};

/// Up to `limit` users matching `term` in user ID order, and whether there were more.
pub async fn search(svc: &Services, searcher: &UserId, term: &str, limit: usize) -> Result<(Vec<Entry>, bool)> {
    let scope =
        if svc.config.user_directory.search_all_users { Scope::All } else { Scope::VisibleTo(searcher.as_str()) };
    // One more than asked tells whether the answer was cut.
    let wanted = limit as i64 + 1;
    let mut found = user_directory::local_users(&svc.db, term, scope, wanted).await?;
    found.extend(user_directory::remote_users(&svc.db, term, scope, wanted).await?);
    found.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    let limited = found.len() > limit;
    found.truncate(limit);
    Ok((found, limited))
}
