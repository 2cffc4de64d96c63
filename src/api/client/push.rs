//! Push notifications: push rules, pushers and `/notifications`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use ruma::api::client::push::set_pusher::v3::PusherAction;
use ruma::push::{
    Action, InsertPushRuleError, NewConditionalPushRule, NewPatternedPushRule, NewPushRule, NewSimplePushRule,
    PushCondition, RemovePushRuleError, RuleKind, Ruleset,
};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::v3;
use crate::AppState;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path, Query};
use crate::rooms::format::{Viewer, client_event};
use crate::{push, rooms, storage};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/pushrules/"), get(get_all))
        .route(v3!("/pushrules/global/"), get(get_global))
        .route(v3!("/pushrules/global/{kind}/{rule_id}"), get(get_rule).put(put_rule).delete(delete_rule))
        .route(v3!("/pushrules/global/{kind}/{rule_id}/enabled"), get(get_enabled).put(put_enabled))
        .route(v3!("/pushrules/global/{kind}/{rule_id}/actions"), get(get_actions).put(put_actions))
        .route(v3!("/notifications"), get(notifications))
        .route(v3!("/pushers"), get(get_pushers))
        .route(v3!("/pushers/set"), post(set_pusher))
}

fn parse_kind(kind: &str) -> Result<RuleKind> {
    Ok(match kind {
        "override" => RuleKind::Override,
        "underride" => RuleKind::Underride,
        "sender" => RuleKind::Sender,
        "room" => RuleKind::Room,
        "content" => RuleKind::Content,
        _ => return Err(Error::invalid_param(format!("Unknown push rule kind {kind}"))),
    })
}

fn rule_not_found() -> Error {
    Error::not_found("The push rule was not found")
}

async fn get_all(State(state): State<AppState>, Auth(me): Auth) -> Result<Json<Value>> {
    let rules = push::ruleset(&state, &me.user_id).await?;
    Ok(Json(json!({ "global": push::ruleset_json(&rules)? })))
}

async fn get_global(State(state): State<AppState>, Auth(me): Auth) -> Result<Json<Value>> {
    let rules = push::ruleset(&state, &me.user_id).await?;
    Ok(Json(push::ruleset_json(&rules)?))
}

/// One rule in the client format (that of the whole ruleset, so both always agree).
fn rule_json(rules: &Ruleset, kind: &str, rule_id: &str) -> Result<Value> {
    parse_kind(kind)?;
    let all = push::ruleset_json(rules)?;
    all[kind]
        .as_array()
        .and_then(|list| list.iter().find(|r| r["rule_id"] == rule_id))
        .cloned()
        .ok_or_else(rule_not_found)
}

async fn get_rule(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((kind, rule_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let rules = push::ruleset(&state, &me.user_id).await?;
    Ok(Json(rule_json(&rules, &kind, &rule_id)?))
}

#[derive(Deserialize)]
struct Placement {
    before: Option<String>,
    after: Option<String>,
}

#[derive(Deserialize)]
struct RuleBody {
    actions: Vec<Action>,
    #[serde(default)]
    conditions: Vec<PushCondition>,
    pattern: Option<String>,
}

fn new_rule(kind: &RuleKind, rule_id: String, body: RuleBody) -> Result<NewPushRule> {
    let RuleBody { actions, conditions, pattern } = body;
    Ok(match kind {
        RuleKind::Override => NewPushRule::Override(NewConditionalPushRule::new(rule_id, conditions, actions)),
        RuleKind::Underride => NewPushRule::Underride(NewConditionalPushRule::new(rule_id, conditions, actions)),
        RuleKind::Content => {
            let pattern = pattern.ok_or_else(|| Error::missing_param("Content rules need a pattern"))?;
            NewPushRule::Content(NewPatternedPushRule::new(rule_id, pattern, actions))
        }
        RuleKind::Room => {
            let room =
                OwnedRoomId::try_from(rule_id).map_err(|_| Error::invalid_param("Room rule IDs are room IDs"))?;
            NewPushRule::Room(NewSimplePushRule::new(room, actions))
        }
        RuleKind::Sender => {
            let user =
                OwnedUserId::try_from(rule_id).map_err(|_| Error::invalid_param("Sender rule IDs are user IDs"))?;
            NewPushRule::Sender(NewSimplePushRule::new(user, actions))
        }
        _ => return Err(Error::invalid_param("Unknown push rule kind")),
    })
}

async fn put_rule(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((kind, rule_id)): Path<(String, String)>,
    Query(placement): Query<Placement>,
    extract::Json(body): extract::Json<Value>,
) -> Result<Json<Value>> {
    let kind = parse_kind(&kind)?;
    if rule_id.starts_with('.') {
        return Err(Error::invalid_param("Rule IDs starting with '.' are reserved for server-default rules"));
    }
    if body.get("actions").is_none() {
        return Err(Error::missing_param("Missing actions"));
    }
    let body: RuleBody = serde_json::from_value(body).map_err(|e| Error::bad_json(e.to_string()))?;
    let rule = new_rule(&kind, rule_id, body)?;
    push::update(&state, &me.user_id, |rules| {
        rules.insert(rule, placement.after.as_deref(), placement.before.as_deref()).map_err(|e| match e {
            InsertPushRuleError::UnknownRuleId | InsertPushRuleError::BeforeHigherThanAfter => {
                Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN", e.to_string())
            }
            e => Error::invalid_param(e.to_string()),
        })
    })
    .await?;
    Ok(Json(json!({})))
}

async fn delete_rule(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((kind, rule_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let kind = parse_kind(&kind)?;
    push::update(&state, &me.user_id, |rules| {
        rules.remove(kind, &rule_id).map_err(|e| match e {
            RemovePushRuleError::ServerDefault => Error::invalid_param("Server-default rules cannot be deleted"),
            _ => rule_not_found(),
        })
    })
    .await?;
    Ok(Json(json!({})))
}

async fn get_enabled(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((kind, rule_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let rules = push::ruleset(&state, &me.user_id).await?;
    let rule = rule_json(&rules, &kind, &rule_id)?;
    Ok(Json(json!({ "enabled": rule["enabled"] })))
}

#[derive(Deserialize)]
struct EnabledBody {
    enabled: bool,
}

async fn put_enabled(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((kind, rule_id)): Path<(String, String)>,
    extract::Json(body): extract::Json<EnabledBody>,
) -> Result<Json<Value>> {
    let kind = parse_kind(&kind)?;
    push::update(&state, &me.user_id, |rules| {
        rules.set_enabled(kind, &rule_id, body.enabled).map_err(|_| rule_not_found())
    })
    .await?;
    Ok(Json(json!({})))
}

async fn get_actions(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((kind, rule_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let rules = push::ruleset(&state, &me.user_id).await?;
    let rule = rule_json(&rules, &kind, &rule_id)?;
    Ok(Json(json!({ "actions": rule["actions"] })))
}

#[derive(Deserialize)]
struct ActionsBody {
    actions: Vec<Action>,
}

async fn put_actions(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((kind, rule_id)): Path<(String, String)>,
    extract::Json(body): extract::Json<ActionsBody>,
) -> Result<Json<Value>> {
    let kind = parse_kind(&kind)?;
    push::update(&state, &me.user_id, |rules| {
        rules.set_actions(kind, &rule_id, body.actions).map_err(|_| rule_not_found())
    })
    .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct NotificationsQuery {
    from: Option<String>,
    limit: Option<u32>,
    only: Option<String>,
}

/// Largest page of `/notifications`.
const MAX_NOTIFICATIONS: u32 = 100;

async fn notifications(
    State(state): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<NotificationsQuery>,
) -> Result<Json<Value>> {
    let before = match &q.from {
        Some(token) => token.parse::<i64>().map_err(|_| Error::invalid_param("Invalid from token"))?,
        None => i64::MAX,
    };
    let limit = q.limit.unwrap_or(20).clamp(1, MAX_NOTIFICATIONS);
    let only_highlight = q.only.as_deref() == Some("highlight");
    let rows =
        storage::push::notifications(&state.db, me.user_id.as_str(), before, only_highlight, i64::from(limit)).await?;
    let viewer = Viewer { user_id: me.user_id.as_str(), device_id: &me.device_id };
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let Ok(event_id) = OwnedEventId::try_from(row.event_id.as_str()) else { continue };
        let Some(pdu) = rooms::get_pdu(&state, &event_id).await? else { continue };
        out.push(json!({
            "actions": serde_json::from_str::<Value>(&row.actions).map_err(|e| Error::Internal(e.into()))?,
            "event": client_event(&state, &pdu, Some(viewer), true).await?,
            "read": row.read != 0,
            "room_id": row.room_id,
            "ts": row.ts,
        }));
    }
    let mut body = json!({ "notifications": out });
    if rows.len() == limit as usize
        && let Some(last) = rows.last()
    {
        body["next_token"] = json!(last.stream_pos.to_string());
    }
    Ok(Json(body))
}

async fn get_pushers(State(state): State<AppState>, Auth(me): Auth) -> Result<Json<Value>> {
    Ok(Json(json!({ "pushers": push::pushers::list(&state, me.user_id.as_str()).await? })))
}

/// The parameters `POST /pushers/set` needs: all for a new pusher, the IDs to delete one.
const PUSHER_PARAMS: [&str; 6] = ["app_id", "pushkey", "app_display_name", "device_display_name", "lang", "data"];
const PUSHER_ID_PARAMS: usize = 2;

async fn set_pusher(
    State(state): State<AppState>,
    Auth(me): Auth,
    extract::Json(body): extract::Json<Value>,
) -> Result<Json<Value>> {
    let Some(kind) = body.get("kind") else { return Err(Error::missing_param("Missing parameters: kind")) };
    let required = if kind.is_null() { &PUSHER_PARAMS[..PUSHER_ID_PARAMS] } else { &PUSHER_PARAMS[..] };
    let mut missing: Vec<&str> = required.iter().copied().filter(|p| body.get(p).is_none()).collect();
    if kind == "http" && body["data"].is_object() && body["data"].get("url").is_none() {
        missing.push("data.url");
    }
    if !missing.is_empty() {
        return Err(Error::missing_param(format!("Missing parameters: {}", missing.join(", "))));
    }
    let action: PusherAction = serde_json::from_value(body).map_err(|e| Error::bad_json(e.to_string()))?;
    push::pushers::set(&state, &me, action).await?;
    Ok(Json(json!({})))
}
