//! Purging a room's history up to a point (`POST /_synapse/admin/v1/purge_history`): checked
//! at once, run in the background with the retention purge's code, its status kept in memory
//! under a purge ID (Synapse also forgets them on restart).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::StatusCode;
use rand::Rng;
use ruma::{OwnedEventId, RoomId};

use crate::AppState;
use crate::error::{Error, Result};
use crate::rooms::{self, retention};
use crate::storage;

/// Where a purge stops (that point is kept).
pub enum UpTo {
    Event(OwnedEventId),
    /// Milliseconds since the epoch: events sent before go.
    Ts(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Active,
    Complete,
    Failed(String),
}

/// Purges by ID.
#[derive(Default)]
pub struct Purges(Mutex<HashMap<String, Status>>);

impl Purges {
    const KEPT: usize = 1000;

    fn set(&self, id: &str, status: Status) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() >= Self::KEPT && !all.contains_key(id) {
            all.retain(|_, s| *s == Status::Active);
        }
        all.insert(id.to_owned(), status);
    }

    pub fn status(&self, id: &str) -> Option<Status> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }
}

/// Starts purging the room's history before `up_to`; returns the purge ID.
pub async fn start(state: &AppState, room_id: &RoomId, up_to: UpTo, delete_local_events: bool) -> Result<String> {
    rooms::room_version(state, room_id).await?;
    let before = match up_to {
        UpTo::Event(event_id) => {
            let event = storage::events::get(&state.db, event_id.as_str())
                .await?
                .ok_or_else(|| Error::not_found("Unknown event"))?;
            if event.room_id != room_id.as_str() {
                return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN", "Event is for wrong room."));
            }
            event.stream_pos.ok_or_else(|| {
                Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN", "Event is not in the room's timeline")
            })?
        }
        UpTo::Ts(ts) => retention::position_before_ts(state, room_id, ts).await?,
    };
    let id: String =
        rand::thread_rng().sample_iter(rand::distributions::Alphanumeric).take(16).map(char::from).collect();
    state.history_purges.set(&id, Status::Active);
    let (task_state, task_id, room_id) = (state.clone(), id.clone(), room_id.to_owned());
    tokio::spawn(async move {
        let status = match retention::purge_before(&task_state, &room_id, before, delete_local_events).await {
            Ok(_) => Status::Complete,
            Err(e) => {
                tracing::warn!(%room_id, error = %e, "history purge failed");
                Status::Failed(e.to_string())
            }
        };
        task_state.history_purges.set(&task_id, status);
    });
    Ok(id)
}
