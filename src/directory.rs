//! The published room directory (`/publicRooms`): our published rooms, paged and filtered,
//! for clients and other servers; other servers' directories asked over federation.

use std::time::Duration;

use axum::http::Method;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ruma::events::StateEventType;
use ruma::{RoomId, ServerName};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::federation::client::{self, FederationError};
use crate::rooms::state::StateMap;
use crate::rooms::summary;
use crate::{Services, rooms, storage};

/// How long another server's directory is waited for.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a directory page is asked for with (the body of `POST /publicRooms`, the query of
/// `GET`).
#[derive(Deserialize, Serialize, Default)]
pub struct PublicRoomsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<PublicRoomsFilter>,
    /// Other servers may ask to include third-party networks; this server has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_all_networks: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub third_party_instance_id: Option<String>,
}

#[derive(Deserialize, Serialize, Default)]
pub struct PublicRoomsFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generic_search_term: Option<String>,
    /// Room types to list; `None` in the list stands for rooms without a type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_types: Option<Vec<Option<String>>>,
}

/// The content of a current state event of a room, if set.
pub async fn state_content(svc: &Services, state: &StateMap, kind: StateEventType) -> Result<Option<Value>> {
    Ok(rooms::state_pdu(svc, state, &kind, "").await?.map(|p| p.content_value()))
}

/// A page of the directory of `server` (ours when `None`): another server's is asked over
/// federation with the client's method (`GET` carries only `limit` and `since`).
pub async fn public_rooms(
    svc: &Services,
    server: Option<&str>,
    method: Method,
    req: PublicRoomsRequest,
) -> Result<Value> {
    match server.filter(|s| *s != svc.config.server_name) {
        None => local_public_rooms(svc, req).await,
        Some(server) => {
            let server = <&ServerName>::try_from(server)
                .map_err(|_| Error::invalid_param(format!("Invalid server name {server:?}")))?;
            remote_public_rooms(svc, server, method, &req).await
        }
    }
}

async fn remote_public_rooms(
    svc: &Services,
    server: &ServerName,
    method: Method,
    req: &PublicRoomsRequest,
) -> Result<Value> {
    const PATH: &str = "/_matrix/federation/v1/publicRooms";
    let answer: Map<String, Value> = if method == Method::GET {
        let mut query = Vec::new();
        if let Some(limit) = req.limit {
            query.push(format!("limit={limit}"));
        }
        if let Some(since) = &req.since {
            query.push(format!("since={}", client::encode(since)));
        }
        let path = if query.is_empty() { PATH.to_owned() } else { format!("{PATH}?{}", query.join("&")) };
        client::request_with_timeout(svc, server, Method::GET, &path, None, REMOTE_TIMEOUT).await?
    } else {
        let body = serde_json::to_value(req).map_err(|e| Error::Internal(e.into()))?;
        client::request_with_timeout(svc, server, Method::POST, PATH, Some(&body), REMOTE_TIMEOUT).await?
    };
    if !answer.get("chunk").is_some_and(Value::is_array) {
        let message = "the room directory has no chunk".to_owned();
        return Err(FederationError::InvalidResponse { destination: server.to_owned(), message }.into());
    }
    Ok(Value::Object(answer))
}

/// A published room as the directory lists it, with what it is sorted and searched by.
struct PublicRoom {
    /// (-joined members, room ID): the most populated rooms first, then a stable order.
    key: (i64, String),
    room_type: Option<String>,
    /// Lowercased name, topic and canonical alias, for `generic_search_term`.
    haystack: String,
    chunk: Value,
}

async fn public_room(svc: &Services, room_id: &str) -> Result<PublicRoom> {
    let internal = |e: String| Error::Internal(anyhow::anyhow!("published room {room_id}: {e}"));
    let room = RoomId::parse(room_id).map_err(|e| internal(e.to_string()))?;
    let summary = summary::load(svc, &room).await?.ok_or_else(|| internal("unknown".into()))?;
    let mut chunk = summary.fields;
    // A directory entry is the spec's public rooms chunk, without the summary's extras.
    for field in ["room_version", "encryption", "allowed_room_ids"] {
        chunk.remove(field);
    }
    let text = |field: &str| chunk.get(field).and_then(Value::as_str).map(str::to_owned);
    let room_type = text("room_type");
    let haystack: Vec<String> =
        ["name", "topic", "canonical_alias"].into_iter().filter_map(text).map(|s| s.to_lowercase()).collect();
    let joined = chunk.get("num_joined_members").and_then(Value::as_i64).unwrap_or(0);
    Ok(PublicRoom { key: (-joined, room_id.to_owned()), room_type, haystack: haystack.join("\n"), chunk: chunk.into() })
}

/// A `/publicRooms` pagination token: the key of the last room of a page (`next_batch`,
/// continue after it) or of the first (`prev_batch`, continue before it).
enum Since {
    After((i64, String)),
    Before((i64, String)),
}

impl Since {
    fn encode(&self) -> String {
        let (dir, (neg_joined, room)) = match self {
            Since::After(k) => ('n', k),
            Since::Before(k) => ('p', k),
        };
        URL_SAFE_NO_PAD.encode(format!("{dir}{neg_joined}|{room}"))
    }

    fn parse(token: &str) -> Result<Self> {
        let invalid = || Error::invalid_param(format!("Invalid pagination token {token:?}"));
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let raw = String::from_utf8(raw).map_err(|_| invalid())?;
        let (head, room) = raw.split_once('|').ok_or_else(invalid)?;
        let mut chars = head.chars();
        let dir = chars.next().ok_or_else(invalid)?;
        let key = (chars.as_str().parse::<i64>().map_err(|_| invalid())?, room.to_owned());
        match dir {
            'n' => Ok(Since::After(key)),
            'p' => Ok(Since::Before(key)),
            _ => Err(invalid()),
        }
    }
}

/// Our published rooms: one page, filtered.
pub async fn local_public_rooms(svc: &Services, req: PublicRoomsRequest) -> Result<Value> {
    let since = req.since.as_deref().map(Since::parse).transpose()?;
    let filter = req.filter.unwrap_or_default();
    let term = filter.generic_search_term.map(|t| t.to_lowercase()).filter(|t| !t.trim().is_empty());
    let mut listed = Vec::new();
    // Rooms bridged from a third-party network would carry its instance ID; this server has none.
    if req.third_party_instance_id.is_none() {
        for room_id in storage::rooms::published_rooms(&svc.db).await? {
            let room = public_room(svc, &room_id).await?;
            let type_ok = filter.room_types.as_ref().is_none_or(|types| types.contains(&room.room_type));
            let term_ok = term.as_ref().is_none_or(|t| room.haystack.contains(t.as_str()));
            if type_ok && term_ok {
                listed.push(room);
            }
        }
    }
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let total = listed.len();
    // A limit of 0 means no limit, as in Synapse.
    let limit = req.limit.filter(|l| *l > 0).map_or(total, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let (start, end) = match &since {
        None => (0, limit.min(total)),
        Some(Since::After(key)) => {
            let start = listed.partition_point(|r| r.key <= *key);
            (start, start.saturating_add(limit).min(total))
        }
        Some(Since::Before(key)) => {
            let end = listed.partition_point(|r| r.key < *key);
            (end.saturating_sub(limit), end)
        }
    };
    let mut response = json!({ "total_room_count_estimate": total });
    if start < end {
        if end < total {
            response["next_batch"] = json!(Since::After(listed[end - 1].key.clone()).encode());
        }
        if start > 0 {
            response["prev_batch"] = json!(Since::Before(listed[start].key.clone()).encode());
        }
    }
    let chunk: Vec<Value> = listed.drain(start..end).map(|r| r.chunk).collect();
    response["chunk"] = Value::Array(chunk);
    Ok(response)
}
