//! Spaces: `GET /rooms/{roomId}/hierarchy`, and room previews (`GET /room_summary/{roomIdOrAlias}`).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ruma::{OwnedRoomId, RoomAliasId, RoomId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::rooms::parse_room_id;
use crate::error::{Error, Result};
use crate::http::extract::{Auth, MaybeAuth, Path, Query};
use crate::rooms::{hierarchy, summary};
use crate::{AppState, Services, storage};

/// Rooms per page by default, and at most.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;
/// How deep a walk goes by default, and at most.
const DEFAULT_MAX_DEPTH: usize = 10;
const MAX_DEPTH: usize = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/client/v1/rooms/{room_id}/hierarchy", get(get_hierarchy))
        .route("/_matrix/client/v1/room_summary/{room_id_or_alias}", get(room_summary))
}

#[derive(Deserialize)]
struct HierarchyQuery {
    #[serde(default)]
    suggested_only: Option<bool>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    max_depth: Option<i64>,
    #[serde(default)]
    from: Option<String>,
}

/// A `from` token: the rooms already returned and the walk's parameters, which may not
/// change between pages.
struct PageToken {
    skip: usize,
    suggested_only: bool,
    max_depth: usize,
}

impl PageToken {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}|{}|{}", self.skip, u8::from(self.suggested_only), self.max_depth))
    }

    fn parse(token: &str) -> Result<Self> {
        let invalid = || Error::invalid_param(format!("Unknown pagination token {token:?}"));
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?).map_err(|_| invalid())?;
        let mut parts = raw.split('|').map(str::parse::<usize>);
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(skip)), Some(Ok(suggested @ 0..=1)), Some(Ok(max_depth)), None) => {
                Ok(PageToken { skip, suggested_only: suggested == 1, max_depth })
            }
            _ => Err(invalid()),
        }
    }
}

async fn get_hierarchy(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<HierarchyQuery>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let limit = match q.limit {
        None => DEFAULT_LIMIT,
        Some(l) if l > 0 => usize::try_from(l).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
        Some(_) => return Err(Error::invalid_param("limit must be greater than zero")),
    };
    let max_depth = match q.max_depth {
        None => DEFAULT_MAX_DEPTH,
        Some(d) if d >= 0 => usize::try_from(d).unwrap_or(MAX_DEPTH).min(MAX_DEPTH),
        Some(_) => return Err(Error::invalid_param("max_depth must not be negative")),
    };
    let suggested_only = q.suggested_only.unwrap_or(false);
    let skip = match q.from.as_deref().map(PageToken::parse).transpose()? {
        None => 0,
        Some(token) if token.suggested_only == suggested_only && token.max_depth == max_depth => token.skip,
        Some(_) => {
            return Err(Error::invalid_param("suggested_only and max_depth cannot change on paginated requests"));
        }
    };
    let visible = match summary::load(&state, &room_id).await? {
        Some(root) => root.visible_to(&state, Some(&me.user_id)).await?,
        None => false,
    };
    if !visible {
        return Err(Error::forbidden("You are not allowed to view this room"));
    }
    let walk = hierarchy::Walk { suggested_only, max_depth, skip, limit };
    let page = hierarchy::walk(&state, &me.user_id, &room_id, &walk).await?;
    let mut response = json!({ "rooms": page.rooms });
    if page.more {
        response["next_batch"] = json!(PageToken { skip: skip + limit, suggested_only, max_depth }.encode());
    }
    Ok(Json(response))
}

/// A room ID, or a local alias resolved to one.
async fn room_id_of(svc: &Services, room_id_or_alias: &str) -> Result<Option<OwnedRoomId>> {
    if let Ok(room_id) = RoomId::parse(room_id_or_alias) {
        return Ok(Some(room_id));
    }
    let alias = RoomAliasId::parse(room_id_or_alias)
        .map_err(|_| Error::invalid_param(format!("{room_id_or_alias:?} is neither a room ID nor an alias")))?;
    let resolved = storage::rooms::resolve_alias(&svc.db, alias.as_str()).await?;
    Ok(resolved.and_then(|(room_id, _)| RoomId::parse(room_id).ok()))
}

async fn room_summary(
    State(state): State<AppState>,
    MaybeAuth(me): MaybeAuth,
    Path(room_id_or_alias): Path<String>,
) -> Result<Json<Value>> {
    let not_found = || Error::not_found("Room not found or not accessible");
    let room_id = room_id_of(&state, &room_id_or_alias).await?.ok_or_else(not_found)?;
    let summary = summary::load(&state, &room_id).await?.ok_or_else(not_found)?;
    let user = me.as_ref().map(|me| me.user_id.as_ref());
    if !summary.visible_to(&state, user).await? {
        return Err(not_found());
    }
    let mut fields = summary.fields.clone();
    if let Some(user) = user
        && let Some(membership) = summary.membership(&state, user).await?
    {
        fields.insert("membership".into(), json!(membership));
    }
    Ok(Json(Value::Object(fields)))
}
