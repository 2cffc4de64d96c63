//! Membership over federation.
//!
//! Served for rooms this server is in: the templates (`make_join`, `make_leave`,
//! `make_knock`) and the signed events (`send_join`, `send_leave`, `send_knock`) of other
//! servers' users, and invites of our users into other servers' rooms.
//! Asked of other servers for rooms this server is not in: joins (with the room's state and
//! auth chain checked and stored), leaves and knocks of our users; and invites of other
//! servers' users into our rooms (their server co-signs the invite).

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomAliasId, RoomId,
    RoomVersionId, ServerName, UserId,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::inbound::{self, Outcome};
use super::pdu::Pdu;
use super::state::{self, StateMap};
use super::{Arrival, Built, Draft, append, append_local, authorise, build, create, get_pdu, resolve, versions};
use crate::Services;
use crate::error::{Error, Result};
use crate::federation::client;
use crate::federation::client::encode as enc;
use crate::federation::keys::{self, KeyNeed, KeyUsage};
use crate::federation::sender;
use crate::storage::{self, events::NewEvent, rooms::RemoteMembership};

/// The membership handshakes: a template from the resident server, then the signed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Join,
    Leave,
    Knock,
}

impl Handshake {
    pub fn membership(self) -> &'static str {
        match self {
            Handshake::Join => "join",
            Handshake::Leave => "leave",
            Handshake::Knock => "knock",
        }
    }

    /// `make_*`, with the room versions we support (make_leave takes none).
    fn make_path(self, room_id: &RoomId, user: &UserId) -> String {
        let path = format!(
            "/_matrix/federation/v1/make_{}/{}/{}",
            self.membership(),
            enc(room_id.as_str()),
            enc(user.as_str())
        );
        if self == Handshake::Leave {
            return path;
        }
        let versions: Vec<String> = versions::SUPPORTED.iter().map(|v| format!("ver={}", enc(v.as_str()))).collect();
        format!("{path}?{}", versions.join("&"))
    }

    /// `send_*` (v2 for joins and leaves; knocks have only v1).
    fn send_path(self, room_id: &RoomId, event_id: &EventId) -> String {
        let version = if self == Handshake::Knock { "v1" } else { "v2" };
        format!(
            "/_matrix/federation/{version}/send_{}/{}/{}",
            self.membership(),
            enc(room_id.as_str()),
            enc(event_id.as_str())
        )
    }
}

fn our_name(svc: &Services) -> Result<&ServerName> {
    <&ServerName>::try_from(svc.config.server_name.as_str()).map_err(|e| Error::Internal(e.into()))
}

/// Another server answered something that does not hold up.
fn invalid_answer(server: &ServerName, reason: impl std::fmt::Display) -> Error {
    Error::matrix(StatusCode::BAD_GATEWAY, "M_UNKNOWN", format!("{server} answered an invalid event: {reason}"))
}

fn incompatible(version: &str) -> Error {
    Error::matrix(
        StatusCode::BAD_REQUEST,
        "M_INCOMPATIBLE_ROOM_VERSION",
        format!("Your server does not support room version {version}"),
    )
    .with_field("room_version", json!(version))
}

/// Whether a server has a user joined to the room.
async fn is_joined(svc: &Services, room_id: &RoomId, server: &ServerName) -> Result<bool> {
    Ok(super::servers_in_room(svc, room_id).await?.iter().any(|s| s == server))
}

/// The version of a room this server is joined to, for serving a handshake (404 otherwise).
async fn resident_version(svc: &Services, room_id: &RoomId) -> Result<RoomVersionId> {
    let not_in_room = || Error::not_found("This server is not in the room");
    let version = super::room_version(svc, room_id).await.map_err(|_| not_in_room())?;
    if !is_joined(svc, room_id, our_name(svc)?).await? {
        return Err(not_in_room());
    }
    Ok(version)
}

/// Stores an event outside the timeline (unless already known).
async fn insert_outlier(tx: &mut storage::Tx, pdu: &Pdu, state_group: Option<i64>) -> Result<()> {
    let relation = pdu.relation();
    let event = NewEvent {
        event_id: pdu.event_id.as_str(),
        room_id: pdu.room_id.as_str(),
        stream_pos: None,
        depth: pdu.depth as i64,
        event_type: &pdu.kind.to_string(),
        state_key: pdu.state_key.as_deref(),
        sender: pdu.sender.as_str(),
        origin_server_ts: i64::from(pdu.origin_server_ts.0),
        json: &pdu.json,
        state_group,
        relation: relation.as_ref().map(|(t, e)| (t.as_str(), e.as_str())),
        soft_failed: false,
    };
    storage::events::insert_outlier(tx, &event).await?;
    Ok(())
}

/// The PDU as it goes to other servers: without the `unsigned` we keep beside it.
pub fn federation_form(pdu: &Pdu) -> Result<Value> {
    let mut value: Value = serde_json::from_str(&pdu.json).map_err(|e| Error::Internal(e.into()))?;
    if let Some(object) = value.as_object_mut() {
        object.remove("unsigned");
    }
    Ok(value)
}

/// Adds our signature to another server's event (event signatures cover the redacted event).
fn co_sign(svc: &Services, object: &mut CanonicalJsonObject, rules: &RoomVersionRules) -> Result<()> {
    let mut redacted = ruma::canonical_json::redact(object.clone(), &rules.redaction, None)
        .map_err(|e| Error::bad_json(e.to_string()))?;
    ruma::signatures::sign_json(&svc.config.server_name, svc.server_key.pair(), &mut redacted)
        .map_err(|e| Error::Internal(e.into()))?;
    if let Some(signatures) = redacted.remove("signatures") {
        object.insert("signatures".into(), signatures);
    }
    Ok(())
}

fn field<'a>(object: &'a CanonicalJsonObject, key: &str) -> Option<&'a str> {
    match object.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

fn content_field<'a>(object: &'a CanonicalJsonObject, key: &str) -> Option<&'a str> {
    match object.get("content") {
        Some(CanonicalJsonValue::Object(content)) => field(content, key),
        _ => None,
    }
}

/// Checks that a received membership event is a `membership` in `room_id` sent by a user of
/// `origin` and, with `about_sender`, about that user (400 `M_BAD_JSON`, 403 for a sender of
/// another server).
fn check_member_event(
    object: &CanonicalJsonObject,
    room_id: &RoomId,
    origin: &ServerName,
    membership: &str,
    about_sender: bool,
) -> Result<()> {
    if field(object, "room_id") != Some(room_id.as_str()) {
        return Err(Error::bad_json("The event is for another room"));
    }
    if field(object, "type") != Some("m.room.member") || content_field(object, "membership") != Some(membership) {
        return Err(Error::bad_json(format!("The event is not a {membership} membership event")));
    }
    let sender = field(object, "sender").and_then(|s| UserId::parse(s).ok());
    let sender = sender.ok_or_else(|| Error::bad_json("Invalid sender"))?;
    if about_sender && field(object, "state_key") != Some(sender.as_str()) {
        return Err(Error::bad_json("The event is not about its sender"));
    }
    if sender.server_name() != origin {
        return Err(Error::forbidden("The event's sender is not a user of the requesting server"));
    }
    Ok(())
}

// ---- Serving ----------------------------------------------------------------------------

/// `make_join` / `make_leave` / `make_knock`: an unsigned membership event of `user` on the
/// room's current state, once the auth rules allow it (403 otherwise). `supported` are the
/// room versions the asking server speaks (joins and knocks).
pub async fn make_membership(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    kind: Handshake,
    supported: &[String],
) -> Result<(RoomVersionId, CanonicalJsonObject)> {
    if user.server_name() != origin {
        return Err(Error::forbidden("The user is not a user of the requesting server"));
    }
    resident_version(svc, room_id).await?;
    super::require_server_allowed(svc, room_id, origin).await?;
    let head = super::head::to_build_on(svc, room_id).await?;
    if kind != Handshake::Leave && !supported.iter().any(|v| v == head.version.as_str()) {
        return Err(incompatible(head.version.as_str()));
    }
    if kind != Handshake::Leave && storage::rooms::blocked_by(&svc.db, room_id.as_str()).await?.is_some() {
        return Err(Error::forbidden("This room has been blocked on this server"));
    }
    let mut draft =
        Draft::state(TimelineEventType::RoomMember, user.as_str(), json!({ "membership": kind.membership() }));
    if kind == Handshake::Join
        && let Some(authoriser) = restricted_join_authoriser(svc, &head.state, &head.version, user).await?
    {
        draft.content["join_authorised_via_users_server"] = json!(authoriser);
    }
    let mut proto = super::prepare(svc, &head.version, Some(room_id), user, &draft, &head.prevs, &head.state).await?;
    // The asking server fills in its name, the time, the hashes and its signature.
    proto.object.insert("origin".into(), CanonicalJsonValue::String(origin.to_string()));
    let json = ruma::canonical_json::to_canonical_value(&proto.object).map_err(|e| Error::Internal(e.into()))?;
    // The auth rules do not look at the event ID, which the asking server will give it.
    let provisional = EventId::new_v1(origin);
    let pdu =
        Pdu::parse(provisional, &json.to_string(), Some(room_id)).map_err(|e| Error::Internal(anyhow::anyhow!(e)))?;
    authorise(&proto.rules, &pdu, &proto.auth_state)?;
    Ok((head.version.clone(), proto.object))
}

/// For a restricted room a user may join through membership of an allowed room: a local
/// member who may invite, to authorise the join. None when the room is not restricted, the
/// user is already invited or joined, or qualifies through no allowed room.
pub async fn restricted_join_authoriser(
    svc: &Services,
    current: &StateMap,
    version: &RoomVersionId,
    user: &UserId,
) -> Result<Option<ruma::OwnedUserId>> {
    if !versions::rules(version)?.authorization.restricted_join_rule {
        return Ok(None);
    }
    let membership = super::membership_in(svc, current, user).await?;
    if membership == "join" || membership == "invite" {
        return Ok(None);
    }
    let Some(rules) = super::state_pdu(svc, current, &StateEventType::RoomJoinRules, "").await? else {
        return Ok(None);
    };
    let content = rules.content_value();
    let rule = content.get("join_rule").and_then(Value::as_str).unwrap_or_default();
    if rule != "restricted" && rule != "knock_restricted" {
        return Ok(None);
    }
    let allowed_rooms = content.get("allow").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut qualifies = false;
    for allow in &allowed_rooms {
        if allow.get("type").and_then(Value::as_str) == Some("m.room_membership")
            && let Some(allowed) = allow.get("room_id").and_then(Value::as_str)
            && storage::rooms::membership(&svc.db, allowed, user.as_str()).await?.as_deref() == Some("join")
        {
            qualifies = true;
            break;
        }
    }
    if !qualifies {
        return Ok(None);
    }
    for ((kind, key), id) in current.iter() {
        if *kind != StateEventType::RoomMember {
            continue;
        }
        let Ok(member) = UserId::parse(key) else { continue };
        if member.server_name() != svc.config.server_name.as_str() {
            continue;
        }
        let joined = get_pdu(svc, id).await?.and_then(|p| p.content_str("membership")).as_deref() == Some("join");
        if joined && super::power::has_level(svc, current, &member, super::power::Action::Invite).await? {
            return Ok(Some(member));
        }
    }
    Ok(None)
}

/// `send_join` / `send_leave` / `send_knock`: checks that the event is that membership of
/// a user of `origin`, co-signs a join we authorise (restricted rooms), runs the checks on
/// receipt and appends it, and passes it on to the other servers in the room.
pub async fn accept_membership(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    kind: Handshake,
    mut object: CanonicalJsonObject,
) -> Result<Arc<Pdu>> {
    let rules = versions::rules(&resident_version(svc, room_id).await?)?;
    super::require_server_allowed(svc, room_id, origin).await?;
    let id = inbound::well_formed(&mut object, &rules)?.map_err(Error::bad_json)?;
    if id != event_id {
        return Err(Error::bad_json("The event ID does not match the event"));
    }
    check_member_event(&object, room_id, origin, kind.membership(), true)?;
    if kind == Handshake::Join
        && let Some(authoriser) = content_field(&object, "join_authorised_via_users_server")
        && UserId::parse(authoriser).is_ok_and(|u| u.server_name().as_str() == svc.config.server_name)
    {
        // Our signature vouches for the join; the auth rules check the authoriser's power.
        co_sign(svc, &mut object, &rules)?;
    }
    let keys = keys::keys_for_pdu(svc, &object, &rules).await?;
    match inbound::receive(svc, room_id, object, &keys).await? {
        Outcome::Accepted(_) | Outcome::Duplicate(_) => {}
        Outcome::SoftFailed(_) => return Err(Error::forbidden("The room's current state does not allow the event")),
        Outcome::Rejected(reason) => return Err(Error::forbidden(format!("Event refused: {reason}"))),
        Outcome::MissingEvents(ids) => {
            return Err(Error::bad_json(format!("The event refers to unknown events: {ids:?}")));
        }
    }
    let pdu = get_pdu(svc, event_id)
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("accepted {event_id} not stored")))?;
    if pdu.rejected {
        return Err(Error::forbidden("The event was rejected"));
    }
    let servers = super::servers_in_room(svc, room_id).await?;
    sender::send_pdu(svc, servers.iter().filter(|s| **s != origin).map(|s| &**s), event_id).await?;
    Ok(pdu)
}

/// What `send_join` answers: the state before the join, the auth chain of that state and of
/// the join, the join as accepted, and the servers in the room.
pub async fn join_answer(svc: &Services, join: &Pdu) -> Result<Value> {
    let version = super::room_version(svc, &join.room_id).await?;
    let state = state_before(svc, &version, join).await?;
    let mut loaded = HashMap::new();
    let chain = resolve::auth_chain(svc, state.values().chain(std::iter::once(&join.event_id)), &mut loaded).await?;
    let mut state_pdus = Vec::with_capacity(state.len());
    for id in state.values() {
        if let Some(pdu) = get_pdu(svc, id).await? {
            state_pdus.push(federation_form(&pdu)?);
        }
    }
    let mut chain_pdus = Vec::with_capacity(chain.len());
    for id in &chain {
        if let Some(pdu) = get_pdu(svc, id).await? {
            chain_pdus.push(federation_form(&pdu)?);
        }
    }
    let servers: Vec<String> =
        super::servers_in_room(svc, &join.room_id).await?.into_iter().map(|s| s.to_string()).collect();
    Ok(json!({
        "origin": svc.config.server_name,
        "state": state_pdus,
        "auth_chain": chain_pdus,
        "event": federation_form(join)?,
        "members_omitted": false,
        "servers_in_room": servers,
    }))
}

/// What `send_knock` answers: the stripped state a knocking user sees.
pub async fn knock_answer(svc: &Services, knock: &Pdu) -> Result<Value> {
    let current = super::current_state(svc, &knock.room_id).await?;
    Ok(json!({ "knock_room_state": super::stripped_state(svc, &current, &knock.sender).await? }))
}

/// The resolved state after an event's prev events.
async fn state_before(svc: &Services, version: &RoomVersionId, pdu: &Pdu) -> Result<StateMap> {
    let mut states = Vec::new();
    for prev in &pdu.prev_events {
        if let Some(group) = storage::events::get(&svc.db, prev.as_str()).await?.and_then(|e| e.state_group) {
            states.push(state::load(svc, group).await?);
        }
    }
    resolve::resolve(svc, version, &states).await
}

/// `PUT /v2/invite`: another server invites one of our users. Checks the event, signs it
/// and keeps it (with the room's stripped state) for the invitee's /sync.
pub async fn receive_invite(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    room_version: &str,
    mut object: CanonicalJsonObject,
    invite_room_state: Vec<Value>,
) -> Result<CanonicalJsonObject> {
    let version =
        versions::SUPPORTED.iter().find(|v| v.as_str() == room_version).ok_or_else(|| incompatible(room_version))?;
    let rules = versions::rules(version)?;
    let id = inbound::well_formed(&mut object, &rules)?.map_err(Error::bad_json)?;
    if id != event_id {
        return Err(Error::bad_json("The event ID does not match the event"));
    }
    check_member_event(&object, room_id, origin, "invite", false)?;
    let invitee = field(&object, "state_key").and_then(|k| UserId::parse(k).ok());
    let invitee = invitee.ok_or_else(|| Error::bad_json("Invalid state_key"))?;
    if invitee.server_name().as_str() != svc.config.server_name {
        return Err(Error::bad_json("The invitee is not a user of this server"));
    }
    match storage::users::get(&svc.db, invitee.as_str()).await? {
        Some(user) if !user.deactivated => {}
        _ => return Err(Error::not_found("Unknown user")),
    }
    if storage::rooms::blocked_by(&svc.db, room_id.as_str()).await?.is_some() {
        return Err(Error::forbidden("This room has been blocked on this server"));
    }
    // A room we know: its server ACL may deny the inviting server.
    if storage::rooms::get(&svc.db, room_id.as_str()).await?.is_some() {
        super::require_server_allowed(svc, room_id, origin).await?;
    }
    let keys = keys::keys_for_pdu(svc, &object, &rules).await?;
    let pdu = inbound::verified(object.clone(), &keys, &rules, id, room_id)?.map_err(Error::forbidden)?;
    co_sign(svc, &mut object, &rules)?;
    let mut stripped: Vec<Value> = invite_room_state
        .into_iter()
        .filter(|s| s.get("type") != Some(&json!("m.room.member")) || s.get("state_key") != Some(&json!(invitee)))
        .collect();
    stripped.push(pdu.to_stripped());
    let json = ruma::canonical_json::to_canonical_value(&object).map_err(|e| Error::Internal(e.into()))?.to_string();
    record_remote(svc, &invitee, room_id, "invite", version, &json, &stripped).await?;
    Ok(object)
}

/// Keeps a local user's membership in a room this server is not in and wakes their /sync.
async fn record_remote(
    svc: &Services,
    user: &UserId,
    room_id: &RoomId,
    membership: &str,
    version: &RoomVersionId,
    event_json: &str,
    stripped: &[Value],
) -> Result<()> {
    let mut tx = svc.db.begin().await?;
    let stream_pos = storage::next_stream_pos(&mut tx).await?;
    let row = RemoteMembership {
        room_id: room_id.to_string(),
        membership: membership.to_owned(),
        room_version: version.to_string(),
        event_json: event_json.to_owned(),
        stripped_state: Value::from(stripped.to_vec()).to_string(),
        stream_pos,
    };
    storage::rooms::put_remote_membership(&mut tx, user.as_str(), &row).await?;
    tx.commit().await?;
    svc.notifier.notify([user]);
    Ok(())
}

/// The member event of a remote membership, parsed.
pub fn remote_membership_event(row: &RemoteMembership) -> Result<Pdu> {
    let version = versions::parse(&row.room_version)?;
    let rules = versions::rules(&version)?;
    let object: CanonicalJsonObject = serde_json::from_str(&row.event_json).map_err(|e| Error::Internal(e.into()))?;
    let id = inbound::event_id_of(&object, &rules)?;
    let room_id = RoomId::parse(&row.room_id).map_err(|e| Error::Internal(e.into()))?;
    Pdu::parse(id, &row.event_json, Some(&room_id)).map_err(|e| Error::Internal(anyhow::anyhow!(e)))
}

// ---- Asking -----------------------------------------------------------------------------

/// The servers to try, in order, without duplicates or ourselves.
fn candidates(svc: &Services, servers: &[OwnedServerName]) -> Vec<OwnedServerName> {
    let mut out: Vec<OwnedServerName> = Vec::new();
    for server in servers {
        if server.as_str() != svc.config.server_name && !out.contains(server) {
            out.push(server.clone());
        }
    }
    out
}

/// Runs a handshake through the first server that completes it.
async fn through_any<T, F: Future<Output = Result<T>>>(
    svc: &Services,
    servers: &[OwnedServerName],
    what: &str,
    attempt: impl Fn(OwnedServerName) -> F,
) -> Result<T> {
    // What the client is told if all fail: a server's refusal (a 4xx) rather than one being
    // unreachable or answering nonsense, as the refusal says why.
    let mut reported: Option<Error> = None;
    for server in candidates(svc, servers) {
        match attempt(server.clone()).await {
            Ok(done) => return Ok(done),
            Err(e) => {
                tracing::info!(%server, error = %e, "{what} through this server failed");
                let refusal = |e: &Error| matches!(e, Error::Matrix { status, .. } if status.is_client_error());
                if reported.as_ref().is_none_or(|r| !refusal(r)) {
                    reported = Some(e);
                }
            }
        }
    }
    Err(reported.unwrap_or_else(|| Error::not_found("No server to ask: this server is not in the room")))
}

#[derive(Deserialize)]
struct Template {
    #[serde(default)]
    room_version: Option<String>,
    event: CanonicalJsonObject,
}

/// make_*, our event filled in and signed, send_*: the room version, our event and the
/// answer of `send_*`.
async fn handshake(
    svc: &Services,
    server: &ServerName,
    kind: Handshake,
    user: &UserId,
    room_id: &RoomId,
    reason: Option<&str>,
) -> Result<(RoomVersionId, Pdu, Value)> {
    let template: Template = client::request(svc, server, Method::GET, &kind.make_path(room_id, user), None).await?;
    let version = template.room_version.as_deref().unwrap_or("1");
    let version = versions::SUPPORTED
        .iter()
        .find(|v| v.as_str() == version)
        .cloned()
        .ok_or_else(|| invalid_answer(server, format!("room version {version} is not supported here")))?;
    let rules = versions::rules(&version)?;
    let mut object = template.event;
    if field(&object, "room_id") != Some(room_id.as_str())
        || field(&object, "type") != Some("m.room.member")
        || field(&object, "sender") != Some(user.as_str())
        || field(&object, "state_key") != Some(user.as_str())
    {
        return Err(invalid_answer(server, "the template is not our membership event"));
    }
    let mut content = create::member_draft(svc, user, kind.membership(), reason).await?.content;
    if let Some(authoriser) = content_field(&object, "join_authorised_via_users_server") {
        content["join_authorised_via_users_server"] = json!(authoriser);
    }
    let content = CanonicalJsonValue::try_from(content).map_err(|e| Error::Internal(e.into()))?;
    object.insert("content".into(), content);
    for key in ["hashes", "signatures", "unsigned", "event_id"] {
        object.remove(key);
    }
    if object.contains_key("origin") || !rules.authorization.use_room_create_sender {
        object.insert("origin".into(), CanonicalJsonValue::String(svc.config.server_name.clone()));
    }
    let now = ruma::MilliSecondsSinceUnixEpoch::now();
    object.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(now.0.into()));
    let pdu = super::sign(svc, object, &rules, Some(room_id))?;
    let body = federation_form(&pdu)?;
    let answer: Value =
        client::request(svc, server, Method::PUT, &kind.send_path(room_id, &pdu.event_id), Some(&body)).await?;
    Ok((version, pdu, answer))
}

/// Joins a local user to a room this server is not in, through the first of `servers`
/// that lets them in.
pub async fn join(
    svc: &Services,
    user: &UserId,
    room_id: &RoomId,
    servers: &[OwnedServerName],
    reason: Option<&str>,
) -> Result<()> {
    through_any(
        svc,
        servers,
        "joining",
        |server| async move { join_through(svc, &server, user, room_id, reason).await },
    )
    .await
}

#[derive(Deserialize)]
struct JoinAnswer {
    state: Vec<CanonicalJsonObject>,
    auth_chain: Vec<CanonicalJsonObject>,
    #[serde(default)]
    event: Option<CanonicalJsonObject>,
    #[serde(default)]
    members_omitted: bool,
}

async fn join_through(
    svc: &Services,
    server: &ServerName,
    user: &UserId,
    room_id: &RoomId,
    reason: Option<&str>,
) -> Result<()> {
    let (version, mut join, answer) = handshake(svc, server, Handshake::Join, user, room_id, reason).await?;
    let rules = versions::rules(&version)?;
    let answer: JoinAnswer = serde_json::from_value(answer).map_err(|e| invalid_answer(server, e))?;
    if answer.members_omitted {
        return Err(invalid_answer(server, "members were omitted, which was not asked for"));
    }
    // A restricted join comes back co-signed by the resident server.
    if let Some(event) = answer.event {
        let signed = verify_pdu(svc, server, room_id, &rules, event).await?;
        if signed.event_id != join.event_id {
            return Err(invalid_answer(server, "the join event came back changed"));
        }
        join = signed;
    }
    let mut events: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
    let mut state = StateMap::new();
    for object in answer.state {
        let pdu = Arc::new(verify_pdu(svc, server, room_id, &rules, object).await?);
        let key = pdu.state_key.clone().ok_or_else(|| invalid_answer(server, "a state event has no state key"))?;
        // The state before our join: our own membership is the one before it.
        if pdu.event_id != join.event_id {
            state.insert((pdu.kind.to_string().into(), key), pdu.event_id.clone());
            events.insert(pdu.event_id.clone(), pdu);
        }
    }
    for object in answer.auth_chain {
        let pdu = verify_pdu(svc, server, room_id, &rules, object).await?;
        events.entry(pdu.event_id.clone()).or_insert_with(|| Arc::new(pdu));
    }
    let create = state
        .get(&(StateEventType::RoomCreate, String::new()))
        .and_then(|id| events.get(id))
        .ok_or_else(|| invalid_answer(server, "the state has no create event"))?
        .clone();
    if create.content_str("room_version").as_deref().unwrap_or("1") != version.as_str() {
        return Err(invalid_answer(server, "the create event is of another room version"));
    }
    // The state each event is checked against: its auth events, and the create event
    // (which room version 12 leaves out of them).
    let create_key = (StateEventType::RoomCreate, String::new());
    for pdu in events.values() {
        let mut by_key: HashMap<(StateEventType, String), Arc<Pdu>> = pdu
            .auth_events
            .iter()
            .filter_map(|id| events.get(id))
            .filter_map(|a| a.state_key.clone().map(|k| ((a.kind.to_string().into(), k), a.clone())))
            .collect();
        by_key.entry(create_key.clone()).or_insert_with(|| create.clone());
        check_auth(&rules, pdu, &events, &by_key).map_err(|e| invalid_answer(server, e))?;
    }
    let by_key: HashMap<(StateEventType, String), Arc<Pdu>> =
        state.iter().filter_map(|(k, id)| events.get(id).map(|p| (k.clone(), p.clone()))).collect();
    check_auth(&rules, &join, &events, &by_key).map_err(|e| invalid_answer(server, format!("our join: {e}")))?;
    store_joined_room(svc, &version, &rules, &create, &events, state, join).await
}

/// The auth rules for an event against its auth events (`by_key`: the state they form).
fn check_auth(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    events: &HashMap<OwnedEventId, Arc<Pdu>>,
    by_key: &HashMap<(StateEventType, String), Arc<Pdu>>,
) -> std::result::Result<(), String> {
    if let Some(missing) = pdu.auth_events.iter().find(|id| !events.contains_key(*id)) {
        return Err(format!("{} has an unknown auth event {missing}", pdu.event_id));
    }
    ruma::state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id: &EventId| {
        events.get(id).cloned()
    })
    .map_err(|e| format!("{} fails auth: {e}", pdu.event_id))?;
    ruma::state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |kind: &StateEventType, key: &str| {
        by_key.get(&(kind.clone(), key.to_owned())).cloned()
    })
    .map_err(|e| format!("{} fails auth: {e}", pdu.event_id))
}

/// The auth rules for an event received among `batch`, against its auth events (from the
/// batch or stored) and the room's create event.
async fn check_auth_in(
    svc: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    batch: &HashMap<OwnedEventId, Arc<Pdu>>,
    create: &Arc<Pdu>,
) -> Result<std::result::Result<(), String>> {
    let mut auth: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
    for id in &pdu.auth_events {
        let found = match batch.get(id) {
            Some(p) => Some(p.clone()),
            None => get_pdu(svc, id).await?,
        };
        if let Some(found) = found {
            auth.insert(id.clone(), found);
        }
    }
    auth.insert(create.event_id.clone(), create.clone());
    let mut by_key: HashMap<(StateEventType, String), Arc<Pdu>> = auth
        .values()
        .filter(|a| pdu.auth_events.contains(&a.event_id))
        .filter_map(|a| a.state_key.clone().map(|k| ((a.kind.to_string().into(), k), a.clone())))
        .collect();
    by_key.entry((StateEventType::RoomCreate, String::new())).or_insert_with(|| create.clone());
    Ok(check_auth(rules, pdu, &auth, &by_key))
}

/// Most events fetched to learn the state at one missing prev event.
const STATE_FETCH_LIMIT: usize = 500;

#[derive(Deserialize)]
struct StateIds {
    pdu_ids: Vec<OwnedEventId>,
    auth_chain_ids: Vec<OwnedEventId>,
}

#[derive(Deserialize)]
struct EventAnswer {
    pdus: Vec<CanonicalJsonObject>,
}

/// For a received PDU whose prev event `prev` is still unknown after asking for the gap (the
/// spec's checks on receipt, as Synapse does): asks `server` for the state at `prev`
/// (`/state_ids`, then each event we lack and `prev` itself with `/event`, at most
/// `STATE_FETCH_LIMIT`), checks every event (format, signatures, hash, auth against its auth
/// events; `prev` against that state too) and stores them as outliers, `prev` carrying the
/// state after it. The PDU is then authorised against that state like any other.
/// `timeout` bounds each request.
pub async fn fetch_state_at(
    svc: &Services,
    server: &ServerName,
    room_id: &RoomId,
    prev: &EventId,
    timeout: std::time::Duration,
) -> Result<()> {
    let version = super::room_version(svc, room_id).await?;
    let rules = versions::rules(&version)?;
    let path = format!("/_matrix/federation/v1/state_ids/{}?event_id={}", enc(room_id.as_str()), enc(prev.as_str()));
    let ids: StateIds = client::request_with_timeout(svc, server, Method::GET, &path, None, timeout).await?;
    let mut wanted: Vec<&EventId> = vec![prev];
    wanted.extend(ids.pdu_ids.iter().chain(&ids.auth_chain_ids).map(|id| &**id));
    let mut unknown = Vec::new();
    for id in wanted {
        if !unknown.contains(&id) && storage::events::get(&svc.db, id.as_str()).await?.is_none() {
            unknown.push(id);
        }
    }
    if unknown.len() > STATE_FETCH_LIMIT {
        return Err(invalid_answer(server, format!("the state at {prev} needs {} events", unknown.len())));
    }
    let mut batch: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
    for id in unknown {
        let path = format!("/_matrix/federation/v1/event/{}", enc(id.as_str()));
        let answer: EventAnswer = client::request_with_timeout(svc, server, Method::GET, &path, None, timeout).await?;
        let object = answer.pdus.into_iter().next().ok_or_else(|| invalid_answer(server, "no PDU"))?;
        let pdu = verify_pdu(svc, server, room_id, &rules, object).await?;
        if pdu.event_id != id {
            return Err(invalid_answer(server, format!("asked for {id}, got {}", pdu.event_id)));
        }
        batch.insert(pdu.event_id.clone(), Arc::new(pdu));
    }
    let current = super::current_state(svc, room_id).await?;
    let create = super::state_pdu(svc, &current, &StateEventType::RoomCreate, "")
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("room {room_id} has no create event")))?;
    for pdu in batch.values() {
        check_auth_in(svc, &rules, pdu, &batch, &create).await?.map_err(|e| invalid_answer(server, e))?;
    }
    // The state before `prev`, then after it.
    let mut state_before: HashMap<(StateEventType, String), Arc<Pdu>> = HashMap::new();
    for id in &ids.pdu_ids {
        let pdu = match batch.get(id) {
            Some(p) => p.clone(),
            None => get_pdu(svc, id).await?.ok_or_else(|| invalid_answer(server, format!("{id} is unknown")))?,
        };
        let key = pdu.state_key.clone().ok_or_else(|| invalid_answer(server, "a state event has no state key"))?;
        state_before.insert((pdu.kind.to_string().into(), key), pdu);
    }
    let prev_pdu = batch.get(prev).ok_or_else(|| invalid_answer(server, format!("{prev} was not given")))?.clone();
    state_before.entry((StateEventType::RoomCreate, String::new())).or_insert_with(|| create.clone());
    let mut known = batch.clone();
    for id in &prev_pdu.auth_events {
        if !known.contains_key(id)
            && let Some(p) = get_pdu(svc, id).await?
        {
            known.insert(id.clone(), p);
        }
    }
    check_auth(&rules, &prev_pdu, &known, &state_before).map_err(|e| invalid_answer(server, e))?;
    let mut state_after: StateMap = state_before.iter().map(|(k, p)| (k.clone(), p.event_id.clone())).collect();
    if let Some(key) = &prev_pdu.state_key {
        state_after.insert((prev_pdu.kind.to_string().into(), key.clone()), prev_pdu.event_id.clone());
    }
    let rows = state::to_rows(&state_after);
    let mut tx = svc.db.begin().await?;
    for pdu in batch.values().filter(|p| p.event_id != prev) {
        insert_outlier(&mut tx, pdu, None).await?;
    }
    let group = storage::state::create_group(&mut tx, room_id.as_str(), None, &rows, &rows).await?;
    insert_outlier(&mut tx, &prev_pdu, Some(group)).await?;
    tx.commit().await?;
    state::remember(svc, group, Arc::new(state_after));
    tracing::info!(%room_id, %server, %prev, fetched = batch.len(), "state at a missing prev event fetched");
    Ok(())
}

/// Checks the format, signatures and hash of a PDU another server sent about `room_id`.
async fn verify_pdu(
    svc: &Services,
    server: &ServerName,
    room_id: &RoomId,
    rules: &RoomVersionRules,
    mut object: CanonicalJsonObject,
) -> Result<Pdu> {
    let id = inbound::well_formed(&mut object, rules)?.map_err(|e| invalid_answer(server, e))?;
    let keys = keys::keys_for_pdu(svc, &object, rules).await.map_err(|e| invalid_answer(server, e))?;
    inbound::verified(object, &keys, rules, id, room_id)?.map_err(|e| invalid_answer(server, e))
}

/// Stores what a join answered (the auth chain and state as outliers, the state as the
/// state before our join), then appends the join on it: the room's current state and
/// only forward extremity become the join's.
async fn store_joined_room(
    svc: &Services,
    version: &RoomVersionId,
    rules: &RoomVersionRules,
    create: &Pdu,
    events: &HashMap<OwnedEventId, Arc<Pdu>>,
    state: StateMap,
    join: Pdu,
) -> Result<()> {
    let room = join.room_id.as_str();
    let _guard = svc.rooms.lock(&svc.db, &join.room_id).await?;
    let rows = state::to_rows(&state);
    let mut tx = svc.db.begin().await?;
    storage::rooms::create(&mut tx, room, version.as_str(), create.sender.as_str()).await?;
    for pdu in events.values() {
        insert_outlier(&mut tx, pdu, None).await?;
    }
    let group = storage::state::create_group(&mut tx, room, None, &rows, &rows).await?;
    storage::rooms::set_base_state_group(&mut tx, room, group).await?;
    storage::rooms::clear_extremities(&mut tx, room).await?;
    tx.commit().await?;
    // The room may have had a head here before (a room left and joined again).
    super::head::forget(svc, &join.room_id);
    let state = Arc::new(state);
    state::remember(svc, group, state.clone());
    append(svc, &join, rules, &state, Some(group), Arrival { txn: None, soft_failed: false, destinations: &[] })
        .await?;
    tracing::info!(room_id = %join.room_id, user = %join.sender, "joined over federation");
    Ok(())
}

/// Leaves (or rejects an invite to, or retracts a knock on) a room this server is not in,
/// through the first of `servers` that takes the leave.
pub async fn leave(
    svc: &Services,
    user: &UserId,
    room_id: &RoomId,
    servers: &[OwnedServerName],
    reason: Option<&str>,
) -> Result<()> {
    let (version, pdu, _) = through_any(svc, servers, "leaving", |server| async move {
        handshake(svc, &server, Handshake::Leave, user, room_id, reason).await
    })
    .await?;
    record_remote(svc, user, room_id, "leave", &version, &pdu.json, &[]).await
}

/// Knocks on a room this server is not in; the room's stripped state is kept for /sync.
pub async fn knock(
    svc: &Services,
    user: &UserId,
    room_id: &RoomId,
    servers: &[OwnedServerName],
    reason: Option<&str>,
) -> Result<()> {
    let (version, pdu, answer) = through_any(svc, servers, "knocking", |server| async move {
        handshake(svc, &server, Handshake::Knock, user, room_id, reason).await
    })
    .await?;
    let mut stripped: Vec<Value> =
        answer.get("knock_room_state").and_then(Value::as_array).cloned().unwrap_or_default();
    stripped.push(pdu.to_stripped());
    record_remote(svc, user, room_id, "knock", &version, &pdu.json, &stripped).await
}

/// Invites a user of another server into a room of ours: the invite is built and
/// authorised here, co-signed by the invitee's server (`PUT /v2/invite`), then appended.
/// The room stays locked meanwhile so the invite's prev events stay the room's head.
pub async fn invite(
    svc: &Services,
    sender: &UserId,
    room_id: &RoomId,
    invitee: &UserId,
    draft: Draft,
) -> Result<OwnedEventId> {
    let _guard = svc.rooms.lock(&svc.db, room_id).await?;
    let head = super::head::to_build_on(svc, room_id).await?;
    let built = build(svc, &head.version, Some(room_id), sender, &draft, &head.prevs, &head.state).await?;
    let server = invitee.server_name();
    let body = json!({
        "room_version": head.version,
        "event": federation_form(&built.pdu)?,
        "invite_room_state": super::stripped_state(svc, &head.state, sender).await?,
    });
    let path = format!("/_matrix/federation/v2/invite/{}/{}", enc(room_id.as_str()), enc(built.pdu.event_id.as_str()));
    #[derive(Deserialize)]
    struct InviteAnswer {
        event: CanonicalJsonObject,
    }
    let answer: InviteAnswer = client::request(svc, server, Method::PUT, &path, Some(&body)).await?;
    let signature = checked_signature(svc, server, &built, answer.event).await?;
    let mut object = built.pdu.canonical_object().map_err(anyhow::Error::msg)?;
    if let Some(CanonicalJsonValue::Object(signatures)) = object.get_mut("signatures") {
        signatures.insert(server.to_string(), signature);
    }
    let json = ruma::canonical_json::to_canonical_value(&object).map_err(|e| Error::Internal(e.into()))?.to_string();
    let pdu = Pdu::parse(built.pdu.event_id.clone(), &json, Some(room_id))
        .map_err(|e| Error::Internal(anyhow::anyhow!(e)))?;
    append_local(svc, Built { pdu, rules: built.rules }, &head.state, head.group, None).await
}

/// The signature `server` added to our event, once checked with its keys.
async fn checked_signature(
    svc: &Services,
    server: &ServerName,
    ours: &Built,
    mut signed: CanonicalJsonObject,
) -> Result<CanonicalJsonValue> {
    let id = inbound::well_formed(&mut signed, &ours.rules)?.map_err(|e| invalid_answer(server, e))?;
    if id != ours.pdu.event_id {
        return Err(invalid_answer(server, "the invite came back changed"));
    }
    let mut redacted =
        ruma::canonical_json::redact(signed, &ours.rules.redaction, None).map_err(|e| invalid_answer(server, e))?;
    let signature = match redacted.get("signatures") {
        Some(CanonicalJsonValue::Object(all)) => all.get(server.as_str()).cloned(),
        _ => None,
    };
    let Some(CanonicalJsonValue::Object(by_key)) = signature.clone() else {
        return Err(invalid_answer(server, "the invite is not signed by the invitee's server"));
    };
    redacted.insert(
        "signatures".into(),
        CanonicalJsonValue::Object([(server.to_string(), CanonicalJsonValue::Object(by_key.clone()))].into()),
    );
    let usage = KeyUsage::Event {
        origin_server_ts: i64::from(ours.pdu.origin_server_ts.0),
        enforce_valid_until: ours.rules.enforce_key_validity,
    };
    let need = KeyNeed { server: server.to_owned(), key_ids: by_key.keys().cloned().collect(), usage };
    let keys = keys::public_keys_for(svc, &[need]).await?;
    ruma::signatures::verify_json(&keys, &redacted).map_err(|e| invalid_answer(server, e))?;
    signature.ok_or_else(|| invalid_answer(server, "no signature"))
}

/// A room alias's room and the servers that can answer for it: ours from storage, others'
/// by the federation directory query of the alias's server.
pub async fn resolve_alias(svc: &Services, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
    let not_found = || Error::not_found(format!("Room alias {alias} not found"));
    if alias.server_name().as_str() != svc.config.server_name {
        #[derive(Deserialize)]
        struct Answer {
            room_id: OwnedRoomId,
            #[serde(default)]
            servers: Vec<String>,
        }
        let path = format!("/_matrix/federation/v1/query/directory?room_alias={}", enc(alias.as_str()));
        let answer: Answer = client::request(svc, alias.server_name(), Method::GET, &path, None).await?;
        let servers = answer.servers.iter().filter_map(|s| OwnedServerName::try_from(s.as_str()).ok()).collect();
        return Ok((answer.room_id, servers));
    }
    let mut found = storage::rooms::resolve_alias(&svc.db, alias.as_str()).await?;
    // An appservice may create the rooms of its alias namespace on demand.
    if found.is_none() && crate::appservice::query_alias(svc, alias).await? {
        found = storage::rooms::resolve_alias(&svc.db, alias.as_str()).await?;
    }
    let (room_id, _) = found.ok_or_else(not_found)?;
    let room_id = OwnedRoomId::try_from(room_id).map_err(|e| Error::Internal(e.into()))?;
    // This server first, then the other servers with joined members (as Synapse).
    let mut servers = vec![our_name(svc)?.to_owned()];
    for server in super::servers_in_room(svc, &room_id).await? {
        if !servers.contains(&server) {
            servers.push(server);
        }
    }
    Ok((room_id, servers))
}

/// Where a room's history here starts: the prev events of its earliest timeline event that
/// are not in the timeline themselves (unknown, or known only as outliers), sorted.
async fn backward_extremities(svc: &Services, room_id: &RoomId) -> Result<Vec<String>> {
    let Some(earliest) = storage::events::earliest_in_timeline(&svc.db, room_id.as_str()).await? else {
        return Ok(Vec::new());
    };
    let event_id = OwnedEventId::try_from(earliest.event_id.as_str()).map_err(|e| Error::Internal(e.into()))?;
    let pdu = super::pdu_of_stored(event_id, &earliest)?;
    let prevs: Vec<&str> = pdu.prev_events.iter().map(|id| id.as_str()).collect();
    let known = storage::events::in_timeline(&svc.db, &prevs).await?;
    let mut missing: Vec<String> = prevs.into_iter().filter(|id| !known.contains(*id)).map(str::to_owned).collect();
    missing.sort_unstable();
    missing.dedup();
    Ok(missing)
}

/// Fetches history from before this server joined a room over federation, once a backwards
/// pagination reached the start of what it has: up to `limit` events before its earliest
/// one, from a server in the room (`GET /backfill`). Each is checked (signatures, hash, auth
/// against its auth events) and placed in the timeline below everything else (negative
/// positions) with the state this server joined with, so it never changes the current
/// state nor shows up as new in /sync. Whether anything was added.
pub async fn backfill(svc: &Services, room_id: &RoomId, limit: usize) -> Result<bool> {
    let Some(base_group) = storage::rooms::base_state_group(&svc.db, room_id.as_str()).await? else {
        return Ok(false);
    };
    let from = backward_extremities(svc, room_id).await?;
    if from.is_empty() {
        return Ok(false);
    }
    let version = super::room_version(svc, room_id).await?;
    let rules = versions::rules(&version)?;
    let mut query: Vec<String> = from.iter().map(|id| format!("v={}", enc(id))).collect();
    query.push(format!("limit={}", limit.clamp(1, 100)));
    let path = format!("/_matrix/federation/v1/backfill/{}?{}", enc(room_id.as_str()), query.join("&"));
    #[derive(Deserialize)]
    struct Answer {
        pdus: Vec<CanonicalJsonObject>,
    }
    let servers: Vec<OwnedServerName> = super::servers_in_room(svc, room_id).await?.into_iter().collect();
    let fetched = through_any(svc, &servers, "backfilling", |server| {
        let path = &path;
        async move {
            let answer: Answer = client::request(svc, &server, Method::GET, path, None).await?;
            Ok((server, answer))
        }
    })
    .await;
    let (server, answer) = match fetched {
        Ok(fetched) => fetched,
        Err(e) => {
            // The page the client asked for is still served, from what this server has.
            tracing::info!(%room_id, error = %e, "cannot backfill");
            return Ok(false);
        }
    };
    let mut batch: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
    for object in answer.pdus {
        match verify_pdu(svc, &server, room_id, &rules, object).await {
            Ok(pdu) => {
                batch.insert(pdu.event_id.clone(), Arc::new(pdu));
            }
            Err(e) => tracing::info!(%room_id, error = %e, "backfilled event dropped"),
        }
    }
    let current = super::current_state(svc, room_id).await?;
    let create = super::state_pdu(svc, &current, &StateEventType::RoomCreate, "")
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("room {room_id} has no create event")))?;
    // Newest first, as the positions count down.
    let mut ordered: Vec<&Arc<Pdu>> = batch.values().collect();
    ordered.sort_by_key(|p| std::cmp::Reverse((p.depth, p.origin_server_ts)));
    let mut accepted = Vec::new();
    for pdu in ordered {
        if storage::events::get(&svc.db, pdu.event_id.as_str()).await?.is_some_and(|e| e.stream_pos.is_some()) {
            continue;
        }
        match check_auth_in(svc, &rules, pdu, &batch, &create).await? {
            Ok(()) => accepted.push(pdu.clone()),
            Err(e) => tracing::info!(%room_id, error = %e, "backfilled event refused"),
        }
    }
    if accepted.is_empty() {
        return Ok(false);
    }
    let mut tx = svc.db.begin().await?;
    for pdu in &accepted {
        insert_outlier(&mut tx, pdu, None).await?;
        let pos = storage::next_backfill_pos(&mut tx).await?;
        storage::events::place_in_timeline(&mut tx, pdu.event_id.as_str(), pos, base_group).await?;
    }
    tx.commit().await?;
    tracing::info!(%room_id, %server, events = accepted.len(), "backfilled");
    Ok(true)
}
