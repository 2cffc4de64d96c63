//! Rooms as admins see them: summaries from the current state, shutdown (evict, block,
//! purge) and granting admin power in a room.

use std::collections::HashSet;
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use rand::Rng;
use ruma::events::{StateEventType, TimelineEventType};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::Services;
use crate::cluster::leader;
use crate::error::{Error, Result};
use crate::rooms::{self, Draft, create};
use crate::storage;

/// What the admin API shows of a room.
#[derive(Debug, Clone)]
pub struct RoomSummary {
    pub room_id: String,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub avatar: Option<String>,
    pub canonical_alias: Option<String>,
    pub joined_members: i64,
    pub joined_local_members: i64,
    pub version: String,
    pub creator: String,
    pub encryption: Option<String>,
    pub federatable: bool,
    pub public: bool,
    pub join_rules: Option<String>,
    pub guest_access: Option<String>,
    pub history_visibility: Option<String>,
    pub state_events: i64,
    pub room_type: Option<String>,
}

impl RoomSummary {
    pub fn to_json(&self) -> Value {
        json!({
            "room_id": self.room_id,
            "name": self.name,
            "topic": self.topic,
            "avatar": self.avatar,
            "canonical_alias": self.canonical_alias,
            "joined_members": self.joined_members,
            "joined_local_members": self.joined_local_members,
            "version": self.version,
            "creator": self.creator,
            "encryption": self.encryption,
            "federatable": self.federatable,
            "public": self.public,
            "join_rules": self.join_rules,
            "guest_access": self.guest_access,
            "history_visibility": self.history_visibility,
            "state_events": self.state_events,
            "room_type": self.room_type,
        })
    }
}

/// The summary of a room this server knows, or 404.
pub async fn summary(svc: &Services, room_id: &RoomId) -> Result<RoomSummary> {
    let version = rooms::room_version(svc, room_id).await?;
    let state = rooms::current_state(svc, room_id).await?;
    let field = async |kind: StateEventType, field: &str| -> Result<Option<String>> {
        Ok(rooms::state_pdu(svc, &state, &kind, "").await?.and_then(|p| p.content_str(field)))
    };
    let create = rooms::state_pdu(svc, &state, &StateEventType::RoomCreate, "").await?;
    let create_content = create.as_ref().map(|p| p.content_value()).unwrap_or_default();
    let creator = create_content
        .get("creator")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| create.as_ref().map(|p| p.sender.to_string()))
        .unwrap_or_default();
    let joined = storage::rooms::joined_users(&svc.db, room_id.as_str()).await?;
    let local_suffix = format!(":{}", svc.config.server_name);
    Ok(RoomSummary {
        room_id: room_id.to_string(),
        name: field(StateEventType::RoomName, "name").await?,
        topic: field(StateEventType::RoomTopic, "topic").await?,
        avatar: field(StateEventType::RoomAvatar, "url").await?,
        canonical_alias: field(StateEventType::RoomCanonicalAlias, "alias").await?,
        joined_members: joined.len() as i64,
        joined_local_members: joined.iter().filter(|u| u.ends_with(&local_suffix)).count() as i64,
        version: version.to_string(),
        creator,
        encryption: field(StateEventType::RoomEncryption, "algorithm").await?,
        federatable: create_content.get("m.federate").and_then(Value::as_bool).unwrap_or(true),
        public: storage::rooms::is_published(&svc.db, room_id.as_str()).await?,
        join_rules: field(StateEventType::RoomJoinRules, "join_rule").await?,
        guest_access: field(StateEventType::RoomGuestAccess, "guest_access").await?,
        history_visibility: field(StateEventType::RoomHistoryVisibility, "history_visibility").await?,
        state_events: state.len() as i64,
        room_type: create_content.get("type").and_then(Value::as_str).map(str::to_owned),
    })
}

/// Summaries of every room whose name, canonical alias or ID contains `search_term`
/// (case-insensitive). Rooms are few next to events: they are summarised in memory.
pub async fn all_summaries(svc: &Services, search_term: Option<&str>) -> Result<Vec<RoomSummary>> {
    let term = search_term.map(str::to_lowercase);
    let mut found = Vec::new();
    for (room_id, _, _) in storage::rooms::all_rooms(&svc.db).await? {
        let Ok(room_id) = RoomId::parse(&room_id) else { continue };
        let summary = summary(svc, &room_id).await?;
        let matches = term.as_deref().is_none_or(|t| {
            [Some(&summary.room_id), summary.name.as_ref(), summary.canonical_alias.as_ref()]
                .into_iter()
                .flatten()
                .any(|v| v.to_lowercase().contains(t))
        });
        if matches {
            found.push(summary);
        }
    }
    Ok(found)
}

/// How a room is shut down (stored with a deletion, to resume it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shutdown {
    pub requester: OwnedUserId,
    pub block: bool,
    pub purge: bool,
    /// A room to move the evicted local users into, with a message there.
    pub notice: Option<Notice>,
}

/// The room the evicted users are moved into: made by `sender` (a local user) under
/// `room_name`, where `message` tells them why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notice {
    pub sender: OwnedUserId,
    pub room_name: String,
    pub message: String,
}

/// What a shutdown did.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ShutdownReport {
    pub kicked_users: Vec<String>,
    pub failed_to_kick_users: Vec<String>,
    pub local_aliases: Vec<String>,
    pub new_room_id: Option<String>,
}

/// The room deletions of `DELETE /_synapse/admin/v2/rooms` running in this process. Their
/// status is stored (`storage::room_deletions`), so that every process answers status
/// queries and a deletion cut short by a crash is resumed (as Synapse's task scheduler
/// resumes its active tasks): on PostgreSQL the process running one holds an advisory lock
/// named after it, which a dead process no longer holds.
#[derive(Default)]
pub struct Deletions(Mutex<HashSet<String>>);

/// How often the leader looks for deletions to resume (Synapse's task scheduler: every minute).
const RESUME_PERIOD: Duration = Duration::from_secs(60);

/// A deletion being run here: released when dropped.
struct Running<'a> {
    deletions: &'a Deletions,
    delete_id: String,
    _lock: Option<storage::cluster::AdvisoryLock>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.deletions.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.delete_id);
    }
}

impl Deletions {
    /// Claims a deletion for this process; None when it runs already, here or elsewhere.
    async fn claim<'a>(&'a self, db: &storage::Db, delete_id: &str) -> Result<Option<Running<'a>>> {
        if !self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(delete_id.to_owned()) {
            return Ok(None);
        }
        let mut running = Running { deletions: self, delete_id: delete_id.to_owned(), _lock: None };
        let key = storage::cluster::lock_key(&format!("plexus:room-deletion:{delete_id}"));
        match storage::cluster::try_lock(db, key).await? {
            storage::cluster::Tried::Taken(lock) => running._lock = Some(lock),
            storage::cluster::Tried::Busy => return Ok(None),
            storage::cluster::Tried::Alone => {}
        }
        Ok(Some(running))
    }
}

/// A deletion as the status API shows it.
pub struct DeletionStatus {
    pub delete_id: String,
    pub room_id: String,
    /// active, complete or failed
    pub status: String,
    pub report: Option<ShutdownReport>,
    pub error: Option<String>,
}

impl TryFrom<storage::room_deletions::Deletion> for DeletionStatus {
    type Error = Error;
    fn try_from(d: storage::room_deletions::Deletion) -> Result<Self> {
        let report =
            d.result.as_deref().map(serde_json::from_str).transpose().map_err(|e| Error::Internal(e.into()))?;
        Ok(DeletionStatus { delete_id: d.delete_id, room_id: d.room_id, status: d.status, report, error: d.error })
    }
}

/// Deletes a room (version 2 of the admin API): checked, recorded, then run to its end
/// before this answers; returns the delete ID to ask its status with.
pub async fn delete(svc: &Services, room_id: &RoomId, how: Shutdown) -> Result<String> {
    let running = storage::room_deletions::of_room(&svc.db, room_id.as_str()).await?;
    if running.iter().any(|d| d.status == "active") {
        return Err(Error::matrix(
            axum::http::StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            format!("Purge already in progress for {room_id}"),
        ));
    }
    check(svc, room_id, &how).await?;
    let delete_id: String =
        rand::thread_rng().sample_iter(rand::distributions::Alphanumeric).take(16).map(char::from).collect();
    let params = serde_json::to_string(&how).map_err(|e| Error::Internal(e.into()))?;
    let mut tx = svc.db.begin().await?;
    storage::room_deletions::start(&mut tx, &delete_id, room_id.as_str(), &params, storage::now_ms()).await?;
    tx.commit().await?;
    run(svc, &delete_id, false).await?;
    Ok(delete_id)
}

/// Runs a recorded deletion that is still active, unless it is running already; `resumed`:
/// a process running it died.
async fn run(svc: &Services, delete_id: &str, resumed: bool) -> Result<()> {
    let Some(_running) = svc.room_deletions.claim(&svc.db, delete_id).await? else { return Ok(()) };
    let Some(deletion) = storage::room_deletions::get(&svc.db, delete_id).await? else { return Ok(()) };
    if deletion.status != "active" {
        return Ok(());
    }
    let done = async {
        let how: Shutdown = serde_json::from_str(&deletion.params).map_err(|e| Error::Internal(e.into()))?;
        let room_id = RoomId::parse(&deletion.room_id).map_err(|e| Error::Internal(e.into()))?;
        // A purge is the last step: cut short after it, nothing is left to do.
        let purged = resumed && how.purge && storage::rooms::get(&svc.db, room_id.as_str()).await?.is_none();
        let report = if purged { ShutdownReport::default() } else { shutdown(svc, &room_id, &how).await? };
        serde_json::to_string(&report).map_err(|e| Error::Internal(e.into()))
    }
    .await;
    let now = storage::now_ms();
    match done {
        Ok(report) => storage::room_deletions::finish(&svc.db, delete_id, Ok(&report), now).await?,
        Err(e) => {
            tracing::warn!(delete_id, room_id = deletion.room_id, error = %e, "room deletion failed");
            storage::room_deletions::finish(&svc.db, delete_id, Err(&e.to_string()), now).await?;
        }
    }
    Ok(())
}

/// A deletion's status, by its ID.
pub async fn deletion(svc: &Services, delete_id: &str) -> Result<Option<DeletionStatus>> {
    storage::room_deletions::get(&svc.db, delete_id).await?.map(DeletionStatus::try_from).transpose()
}

/// The deletions of a room.
pub async fn deletions_of_room(svc: &Services, room_id: &RoomId) -> Result<Vec<DeletionStatus>> {
    storage::room_deletions::of_room(&svc.db, room_id.as_str())
        .await?
        .into_iter()
        .map(DeletionStatus::try_from)
        .collect()
}

/// Resumes, on the leader, the deletions still active that no process runs (their process
/// died): as soon as it leads, then every `RESUME_PERIOD`. Started in `AppState::build`.
pub async fn resume_interrupted(services: Weak<Services>) {
    // Leadership is polled (a receiver held here would outlive the server).
    let mut ticks = tokio::time::interval(leader::CAMPAIGN_INTERVAL);
    let mut last_round: Option<Instant> = None;
    loop {
        ticks.tick().await;
        let Some(svc) = services.upgrade() else { return };
        if !svc.cluster.leads() {
            last_round = None;
            continue;
        }
        if last_round.is_some_and(|at| at.elapsed() < RESUME_PERIOD) {
            continue;
        }
        last_round = Some(Instant::now());
        let active = match storage::room_deletions::active(&svc.db).await {
            Ok(active) => active,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for room deletions to resume");
                continue;
            }
        };
        for delete_id in active {
            if let Err(e) = run(&svc, &delete_id, true).await {
                tracing::warn!(delete_id, error = %e, "cannot resume a room deletion");
            }
        }
    }
}

/// Whether a shutdown may go ahead: the room is known (or is to be blocked, which needs no
/// room) and the notice room's sender is a local user. Whether the room is known.
async fn check(svc: &Services, room_id: &RoomId, how: &Shutdown) -> Result<bool> {
    let known = storage::rooms::get(&svc.db, room_id.as_str()).await?.is_some();
    if !known && !how.block {
        return Err(Error::not_found("Unknown room"));
    }
    if let Some(notice) = &how.notice {
        crate::admin::users::local_user(svc, &notice.sender).await?;
    }
    Ok(known)
}

/// Shuts a room down: every local member leaves, the room leaves the directory and loses its
/// aliases, and optionally local users may not join again (`block`) and everything stored
/// about it goes (`purge`). Like Synapse, the members are made to leave themselves, which
/// needs no power in the room. Run again on a room partly shut down, it does what is left.
pub async fn shutdown(svc: &Services, room_id: &RoomId, how: &Shutdown) -> Result<ShutdownReport> {
    let known = check(svc, room_id, how).await?;
    if how.block {
        let mut tx = svc.db.begin().await?;
        storage::rooms::block(&mut tx, room_id.as_str(), how.requester.as_str()).await?;
        tx.commit().await?;
    }
    let mut report = ShutdownReport::default();
    if !known {
        return Ok(report);
    }
    for (member, membership, _) in storage::rooms::members(&svc.db, room_id.as_str()).await? {
        let Ok(member) = UserId::parse(&member) else { continue };
        if member.server_name() != svc.config.server_name.as_str()
            || !matches!(membership.as_str(), "join" | "invite" | "knock")
        {
            continue;
        }
        let draft = Draft::state(TimelineEventType::RoomMember, member.as_str(), json!({ "membership": "leave" }));
        match rooms::send(svc, room_id, &member, draft, None).await {
            Ok(_) => report.kicked_users.push(member.to_string()),
            Err(e) => {
                tracing::warn!(%room_id, %member, error = %e, "could not evict a member at shutdown");
                report.failed_to_kick_users.push(member.to_string());
            }
        }
    }
    if let Some(notice) = &how.notice {
        report.new_room_id = Some(move_to_notice_room(svc, notice, &report.kicked_users).await?.to_string());
    }
    report.local_aliases = storage::rooms::aliases_of_room(&svc.db, room_id.as_str()).await?;
    let mut tx = svc.db.begin().await?;
    storage::rooms::delete_aliases_of_room(&mut tx, room_id.as_str()).await?;
    storage::rooms::set_published(&mut tx, room_id.as_str(), false).await?;
    if how.purge {
        storage::rooms::purge(&mut tx, room_id.as_str()).await?;
    }
    tx.commit().await?;
    if how.purge {
        rooms::head::forget(svc, room_id);
    }
    tracing::info!(%room_id, by = %how.requester, block = how.block, purge = how.purge, "room shut down");
    Ok(report)
}

/// Makes the notice room of a shutdown and joins the evicted users to it.
async fn move_to_notice_room(svc: &Services, notice: &Notice, users: &[String]) -> Result<OwnedRoomId> {
    // Everyone but the sender is at -10: they may read, not speak.
    let mut power = Map::new();
    power.insert("users_default".into(), json!(-10));
    let request = create::CreateRoomRequest {
        name: Some(notice.room_name.clone()),
        preset: Some("public_chat".into()),
        power_level_content_override: Some(power),
        ..Default::default()
    };
    let new_room = create::create_room(svc, &notice.sender, request).await?;
    for user in users {
        let Ok(user) = UserId::parse(user) else { continue };
        let join = Draft::state(TimelineEventType::RoomMember, user.as_str(), json!({ "membership": "join" }));
        if let Err(e) = rooms::send(svc, &new_room, &user, join, None).await {
            tracing::warn!(%new_room, %user, error = %e, "could not move a user into the notice room");
        }
    }
    let message =
        Draft::message(TimelineEventType::RoomMessage, json!({ "msgtype": "m.text", "body": notice.message }));
    rooms::send(svc, &new_room, &notice.sender, message, None).await?;
    Ok(new_room)
}

/// Gives `user` the highest power level in a room, sent by the local member with the most
/// power; the user is joined first when the room lets them (or invited by that member).
pub async fn make_room_admin(svc: &Services, room_id: &RoomId, user: &UserId) -> Result<()> {
    rooms::room_version(svc, room_id).await?;
    let state = rooms::current_state(svc, room_id).await?;
    let levels_pdu = rooms::state_pdu(svc, &state, &StateEventType::RoomPowerLevels, "").await?;
    let mut levels = levels_pdu.as_ref().map(|p| p.content_value()).unwrap_or_else(|| json!({}));
    // The local joined member with the most power acts.
    let mut acting: Option<(OwnedUserId, i64)> = None;
    for member in storage::rooms::joined_users(&svc.db, room_id.as_str()).await? {
        let Ok(member) = UserId::parse(&member) else { continue };
        if member.server_name() != svc.config.server_name.as_str() {
            continue;
        }
        let power = rooms::power::user_level(svc, &state, &member).await?;
        if acting.as_ref().is_none_or(|(_, p)| power > *p) {
            acting = Some((member, power));
        }
    }
    let Some((acting, power)) = acting else {
        return Err(Error::matrix(
            axum::http::StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "No local admin user in room with power to update power levels.",
        ));
    };
    if rooms::membership_in(svc, &state, user).await? != "join" {
        if user.server_name() != svc.config.server_name.as_str() {
            return Err(Error::invalid_param("Can only make local users room admins while they are not joined"));
        }
        let invite = Draft::state(TimelineEventType::RoomMember, user.as_str(), json!({ "membership": "invite" }));
        rooms::send(svc, room_id, &acting, invite, None).await?;
        let join = Draft::state(TimelineEventType::RoomMember, user.as_str(), json!({ "membership": "join" }));
        rooms::send(svc, room_id, user, join, None).await?;
    }
    if levels.get("users").is_none() {
        levels["users"] = json!({});
    }
    // A creator of a room version 12 room has unbounded power: grant the highest finite level.
    let granted = if power == i64::MAX {
        let listed = levels["users"].as_object().into_iter().flat_map(|u| u.values()).filter_map(rooms::power::as_int);
        listed.max().unwrap_or(0).max(100)
    } else {
        power
    };
    levels["users"][user.as_str()] = json!(granted);
    let draft = Draft::state(TimelineEventType::RoomPowerLevels, "", levels);
    rooms::send(svc, room_id, &acting, draft, None).await?;
    Ok(())
}
