//! Push: each user's push rules (kept in memory once loaded), evaluated with ruma for every
//! local member on every new room event, the unread counts that gives, and (in `pushers` and
//! `gateway`) the pushers that relay notifications to push gateways.

pub mod gateway;
pub mod pushers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ruma::events::room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::push::{Action, FlattenedJson, PushCondition, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset};
use ruma::serde::Raw;
use ruma::{OwnedUserId, RoomId, UInt, UserId};
use serde_json::{Value, json};

use crate::Services;
use crate::accounts::Identity;
use crate::error::{Error, Result};
use crate::rooms::head::Head;
use crate::rooms::pdu::Pdu;
use crate::rooms::state::StateMap;
use crate::rooms::{self, versions};
use crate::storage::script::Script;
use crate::storage::{self, push::NotifyingEvent};
use crate::sync::recent::{Counts, Notifications, Span, UnreadSnapshot};

/// The rule kinds, in the order the spec lists them in a ruleset.
pub const RULE_KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

/// Thread ID of events outside any thread.
const MAIN_THREAD: &str = "main";

/// The rulesets loaded so far, the lock that serialises their changes, and the gateway
/// delivery's handle.
#[derive(Default)]
pub struct Push {
    loaded: Mutex<HashMap<OwnedUserId, Arc<Ruleset>>>,
    /// Counts the rulesets dropped: a ruleset read before a drop may be older than the change
    /// that dropped it, and is not kept.
    dropped: AtomicU64,
    edit: tokio::sync::Mutex<()>,
    gateway: gateway::Sender,
}

impl Push {
    fn cached(&self, user: &UserId) -> Option<Arc<Ruleset>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(user).cloned()
    }

    /// Keeps a ruleset read when `dropped` was `seen`, unless one was dropped since.
    fn remember(&self, user: &UserId, rules: Arc<Ruleset>, seen: u64) {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if self.dropped.load(Ordering::SeqCst) == seen {
            loaded.insert(user.to_owned(), rules);
        }
    }

    /// Drops a changed ruleset (here or in another process); it is loaded again on next use.
    pub(crate) fn forget(&self, user: &UserId) {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        self.dropped.fetch_add(1, Ordering::SeqCst);
        loaded.remove(user);
    }

    pub(crate) fn forget_all(&self) {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        self.dropped.fetch_add(1, Ordering::SeqCst);
        loaded.clear();
    }
}

/// A ruleset as clients see it: every kind present, empty or not.
pub fn ruleset_json(rules: &Ruleset) -> Result<Value> {
    let mut value = serde_json::to_value(rules).map_err(|e| Error::Internal(e.into()))?;
    if let Some(object) = value.as_object_mut() {
        for kind in RULE_KINDS {
            object.entry(kind).or_insert_with(|| json!([]));
        }
    }
    Ok(value)
}

/// A user's ruleset: from memory, else from the database, else the server default (stored,
/// and published as `m.push_rules` account data, on this first use).
pub async fn ruleset(svc: &Services, user: &UserId) -> Result<Arc<Ruleset>> {
    if let Some(rules) = svc.push.cached(user) {
        return Ok(rules);
    }
    let _edit = svc.push.edit.lock().await;
    load(svc, user).await
}

/// Loads a ruleset; the caller holds the edit lock (so a first use cannot overwrite a change).
async fn load(svc: &Services, user: &UserId) -> Result<Arc<Ruleset>> {
    if let Some(rules) = svc.push.cached(user) {
        return Ok(rules);
    }
    let seen = svc.push.dropped.load(Ordering::SeqCst);
    let rules = match storage::push::ruleset(&svc.db, user.as_str()).await? {
        Some(stored) => parse(&stored)?,
        None => {
            let rules = Ruleset::server_default(user);
            let mut tx = svc.db.begin().await?;
            save(&mut tx, user, &rules).await?;
            tx.commit().await?;
            rules
        }
    };
    let rules = Arc::new(rules);
    svc.push.remember(user, rules.clone(), seen);
    Ok(rules)
}

fn parse(stored: &str) -> Result<Ruleset> {
    serde_json::from_str(stored).map_err(|e| Error::Internal(e.into()))
}

/// Stores a ruleset and its `m.push_rules` account data.
async fn save(tx: &mut storage::Tx, user: &UserId, rules: &Ruleset) -> Result<()> {
    let stored = serde_json::to_string(rules).map_err(|e| Error::Internal(e.into()))?;
    let account_data = json!({ "global": ruleset_json(rules)? }).to_string();
    storage::push::put_ruleset(tx, user.as_str(), &stored).await?;
    storage::account_data::put(tx, user.as_str(), "", "m.push_rules", &account_data).await?;
    Ok(())
}

/// Changes a user's ruleset with `change`, then stores it; the change's error is returned
/// untouched (nothing stored). The change applies to the stored ruleset read with its row
/// locked, not to this process's copy, which may not have heard of another process's edit
/// yet: concurrent edits through several processes are applied one after the other.
pub async fn update(svc: &Services, user: &UserId, change: impl FnOnce(&mut Ruleset) -> Result<()>) -> Result<()> {
    let _edit = svc.push.edit.lock().await;
    // Stores the default ruleset on first use, so that there is a row to lock.
    load(svc, user).await?;
    let mut tx = svc.db.begin().await?;
    let mut rules = match storage::push::ruleset_for_update(&mut tx, svc.db.kind, user.as_str()).await? {
        Some(stored) => parse(&stored)?,
        None => Ruleset::server_default(user),
    };
    change(&mut rules)?;
    save(&mut tx, user, &rules).await?;
    tx.commit().await?;
    // Drops this process's copy too: another process's edit may follow this one at once, and
    // its announcement must not be overtaken by keeping this version.
    crate::cluster::publish(svc, crate::cluster::Message::PushRulesChanged { user: user.to_owned() }).await;
    svc.notifier.notify(std::iter::once(user));
    Ok(())
}

/// Evaluates an event about to be appended to a room (of head `head`) against the push rules
/// of every local member it may concern (joined members but the sender, and the target of an
/// invite): those it notifies.
pub async fn evaluate(svc: &Services, pdu: &Pdu, head: &Head) -> Result<Evaluation> {
    let invited = (pdu.kind == TimelineEventType::RoomMember
        && pdu.content_str("membership").as_deref() == Some("invite"))
    .then_some(pdu.state_key.as_deref())
    .flatten();
    let targets: Vec<(OwnedUserId, &str)> = head
        .members
        .iter()
        .filter(|(user, member)| {
            *user != pdu.sender.as_str()
                && (member.membership == "join" || (member.membership == "invite" && invited == Some(user)))
        })
        .filter_map(|(user, member)| Some((OwnedUserId::try_from(user.as_str()).ok()?, member.event_id.as_str())))
        .filter(|(user, _)| user.server_name().as_str() == svc.config.server_name)
        .collect();
    if targets.is_empty() {
        return Ok(Evaluation::default());
    }

    // What every member's evaluation shares, built once for the event.
    let joined = head.members.values().filter(|member| member.membership == "join").count();
    let base = PushConditionRoomCtx::new(
        pdu.room_id.clone(),
        UInt::try_from(joined).unwrap_or(UInt::MAX),
        pdu.sender.clone(),
        String::new(),
    );
    let base = match power_levels(svc, &head.state).await? {
        Some(levels) => base.with_power_levels(levels),
        None => base,
    };
    let event = serde_json::value::to_raw_value(&pdu.to_client()).map_err(|e| Error::Internal(e.into()))?;
    let event = FlattenedJson::from_raw(&Raw::<Value>::from_json(event));
    let mut notified = Vec::new();
    for (user, member_event) in targets {
        let rules = ruleset(svc, &user).await?;
        let mut ctx = base.clone();
        // Only legacy rules read the display name: no member event lookup without them.
        if reads_display_name(&rules) {
            ctx.user_display_name =
                display_name(svc, member_event).await?.unwrap_or_else(|| user.localpart().to_owned());
        }
        ctx.user_id = user.clone();
        let actions = actions_for(&rules, &event, &ctx).await;
        if actions.iter().any(|a| a.should_notify()) {
            let highlight = actions.iter().any(|a| a.is_highlight());
            let actions = serde_json::to_string(actions).map_err(|e| Error::Internal(e.into()))?;
            notified.push(Notified { user, highlight, actions });
        }
    }
    let thread_id = match rooms::thread_of(svc, pdu).await? {
        Some(root) => root.to_string(),
        None => MAIN_THREAD.to_owned(),
    };
    Ok(Evaluation { thread_id, notified })
}

/// The actions of the ruleset's first rule that applies to the event, as
/// `Ruleset::get_actions` answers them, but for an event flattened once for all members
/// (`get_actions` flattens it again for each).
async fn actions_for<'a>(rules: &'a Ruleset, event: &FlattenedJson, ctx: &PushConditionRoomCtx) -> &'a [Action] {
    if event.get_str("sender").is_some_and(|sender| sender == ctx.user_id) {
        return &[];
    }
    for rule in rules {
        if rule.applies(event, ctx).await {
            return rule.actions();
        }
    }
    &[]
}

/// Whether an enabled rule of the ruleset has a `contains_display_name` condition (deprecated
/// by the spec, but users' own rules may still have it).
#[allow(deprecated)]
fn reads_display_name(rules: &Ruleset) -> bool {
    rules
        .override_
        .iter()
        .chain(rules.underride.iter())
        .any(|rule| rule.enabled && rule.conditions.iter().any(|c| matches!(c, PushCondition::ContainsDisplayName)))
}

/// The members an event notifies, and its thread ('main' outside threads).
#[derive(Default)]
pub struct Evaluation {
    thread_id: String,
    notified: Vec<Notified>,
}

impl Evaluation {
    /// What `store` wrote, for the syncs that add it to the unread counts they last sent.
    pub fn into_notifications(self) -> Notifications {
        Notifications {
            thread: self.thread_id,
            users: self.notified.into_iter().map(|n| (n.user, n.highlight)).collect(),
        }
    }
}

/// A member an event notifies: whether it highlights, and the actions (JSON).
struct Notified {
    user: OwnedUserId,
    highlight: bool,
    actions: String,
}

impl Evaluation {
    /// The users notified.
    pub fn users(&self) -> Vec<OwnedUserId> {
        self.notified.iter().map(|n| n.user.clone()).collect()
    }

    /// How many values `store_in_script` binds.
    pub fn script_args(&self) -> usize {
        self.notified.len() * storage::push::SCRIPT_ARGS_PER_NOTIFIED + 4
    }

    fn notifying_event<'a>(&'a self, pdu: &'a Pdu) -> (NotifyingEvent<'a>, Vec<storage::push::Notified<'a>>) {
        let event = NotifyingEvent {
            room_id: pdu.room_id.as_str(),
            thread_id: &self.thread_id,
            event_id: pdu.event_id.as_str(),
            ts: storage::now_ms(),
        };
        let users = self.notified.iter().map(|n| (n.user.as_str(), n.highlight, n.actions.as_str())).collect();
        (event, users)
    }
}

/// Adds to the script that appends an event its notifications, so that a sync which sees the
/// event also sees its counts, and their pushes; `wake_pushers` once it is committed.
pub fn store_in_script(script: &mut Script, pdu: &Pdu, evaluation: &Evaluation) {
    let (event, users) = evaluation.notifying_event(pdu);
    storage::push::notify_in_script(script, &event, &users);
}

/// `store_in_script` for the events that notify more users than a script can bind: in
/// statements of their own, in the transaction that appended the event at `pos`.
pub async fn store(tx: &mut storage::Tx, pdu: &Pdu, pos: i64, evaluation: &Evaluation) -> Result<()> {
    let (event, users) = evaluation.notifying_event(pdu);
    Ok(storage::push::notify(tx, pos, &event, &users).await?)
}

/// Wakes the pushers of the users an event notified (`Evaluation::users`), once its pushes
/// are committed.
pub async fn wake_pushers(svc: &Services, users: &[OwnedUserId]) -> Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    let users: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
    gateway::wake_all(svc, storage::push::pushers_of(&svc.db, &users).await?);
    Ok(())
}

/// The display name in a member event.
async fn display_name(svc: &Services, member_event: &str) -> Result<Option<String>> {
    let Ok(id) = ruma::OwnedEventId::try_from(member_event) else { return Ok(None) };
    Ok(rooms::get_pdu(svc, &id).await?.and_then(|p| p.content_str("displayname")))
}

/// The room's power levels as push conditions read them (room creators of room version 12
/// included), or None without a create event.
async fn power_levels(svc: &Services, state: &StateMap) -> Result<Option<PushConditionPowerLevelsCtx>> {
    let Some(create) = rooms::state_pdu(svc, state, &StateEventType::RoomCreate, "").await? else {
        return Ok(None);
    };
    let content = create.content_value();
    let version = content.get("room_version").and_then(Value::as_str).unwrap_or("1");
    let Ok(version) = ruma::RoomVersionId::try_from(version) else { return Ok(None) };
    let rules = versions::rules(&version)?;
    let mut creators = vec![create.sender.clone()];
    if let Some(additional) = content.get("additional_creators").and_then(Value::as_array) {
        creators.extend(additional.iter().filter_map(|u| OwnedUserId::try_from(u.as_str()?).ok()));
    }
    let source = match rooms::state_pdu(svc, state, &StateEventType::RoomPowerLevels, "").await? {
        Some(pl) => serde_json::from_str::<RoomPowerLevelsEventContent>(pl.content.get())
            .map(RoomPowerLevelsSource::Original)
            .unwrap_or_default(),
        None => RoomPowerLevelsSource::None,
    };
    Ok(Some(RoomPowerLevels::new(source, &rules.authorization, creators).into()))
}

/// A room's unread (notification, highlight) counts for a user, threads included.
pub async fn unread_counts(svc: &Services, user: &UserId, room: &RoomId) -> Result<(i64, i64)> {
    let rows = storage::push::unread_counts(&svc.db, user.as_str(), &[room.as_str()], i64::MAX).await?;
    Ok(rows.iter().fold((0, 0), |(n, h), (_, _, tn, th)| (n + tn, h + th)))
}

/// The unread counts of a device's user in some rooms at stream position `up_to` (a sync's
/// answer), by room: (thread, notifications, highlights). When the sync's window is known
/// from memory (`span`), the counts its last sync answered plus the window's notifications;
/// only the rooms they do not cover are counted in the database.
pub async fn unread_counts_by_room(
    svc: &Services,
    me: &Identity,
    rooms: &[&str],
    up_to: i64,
    span: Option<&Span>,
) -> Result<HashMap<String, Counts>> {
    let (user, device) = (me.user_id.as_str(), me.device_id.as_str());
    let recent = &svc.notifier.recent;
    let (generation, last) = recent.take_unread(user, device);
    let mut snapshot = match (span, last) {
        (Some(span), Some(last)) if span.up_to() == up_to => span.advance_unread(user, last),
        _ => None,
    }
    .unwrap_or_else(|| UnreadSnapshot { pos: up_to, rooms: HashMap::new() });
    let missing: Vec<&str> = rooms.iter().copied().filter(|r| !snapshot.rooms.contains_key(*r)).collect();
    if !missing.is_empty() {
        snapshot.rooms.extend(missing.iter().map(|r| ((*r).to_owned(), Counts::new())));
        for (room, thread, n, h) in storage::push::unread_counts(&svc.db, user, &missing, up_to).await? {
            snapshot.rooms.entry(room).or_default().push((thread, n, h));
        }
    }
    let by_room =
        rooms.iter().map(|r| ((*r).to_owned(), snapshot.rooms.get(*r).cloned().unwrap_or_default())).collect();
    recent.keep_unread(user, device, generation, snapshot);
    Ok(by_room)
}

/// Adds a joined room's unread counts (`per_room` of [`unread_counts_by_room`]) to its
/// `/sync` entry: notifying events after the user's read receipts. With `per_thread` (the
/// filter's `unread_thread_notifications`), `unread_notifications` covers the main timeline
/// only and `unread_thread_notifications` the threads that have any, by root; else
/// `unread_notifications` covers them all.
pub fn add_unread_counts(per_room: &[(String, i64, i64)], per_thread: bool, entry: &mut Value) {
    let counts = |notifications: i64, highlights: i64| json!({ "notification_count": notifications, "highlight_count": highlights });
    if !per_thread {
        let (n, h) = per_room.iter().fold((0, 0), |(n, h), (_, tn, th)| (n + tn, h + th));
        entry["unread_notifications"] = counts(n, h);
        return;
    }
    let (mut main, mut threads) = (counts(0, 0), serde_json::Map::new());
    for (thread, n, h) in per_room {
        if thread == MAIN_THREAD {
            main = counts(*n, *h);
        } else {
            threads.insert(thread.clone(), counts(*n, *h));
        }
    }
    entry["unread_notifications"] = main;
    if !threads.is_empty() {
        entry["unread_thread_notifications"] = Value::Object(threads);
    }
}
