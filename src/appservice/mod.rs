//! Application services (bridges): registrations loaded at start, the as_token's identity
//! (with `?user_id=` masquerading), exclusive namespaces, the transactions pushed to each
//! appservice (events of the rooms it is interested in and, when asked, ephemeral events),
//! and the calls the server makes to it (ping, alias queries). See docs/appservices.md.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http::StatusCode;
use regex::Regex;
use ruma::api::appservice::{Namespace, Registration};
use ruma::events::TimelineEventType;
use ruma::{OwnedUserId, RoomAliasId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Services;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::outbox::{self, Outbox, Target};
use crate::rooms::{self, pdu::Pdu};
use crate::storage::appservice::Item;
use crate::storage::script::Script;
use crate::storage::{self, Db, Tx};

/// Most items (events, ephemeral events, to-device messages) in one transaction (Synapse
/// sends at most 100 of each kind).
const TRANSACTION_LIMIT: i64 = 100;
/// How long an appservice may take to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A registration file: the spec's keys, plus the unstable name of `receive_ephemeral`.
#[derive(Deserialize)]
struct RegistrationFile {
    #[serde(flatten)]
    registration: Registration,
    #[serde(default, rename = "de.sorunome.msc2409.push_ephemeral")]
    push_ephemeral: bool,
    /// MSC4203: to-device messages for the users of its namespace come in transactions.
    #[serde(default, alias = "org.matrix.msc4203.push_to_device")]
    push_to_device: bool,
}

/// Where transactions carry to-device messages (MSC4203, under MSC2409's unstable name, as
/// Synapse sends them).
const TO_DEVICE_KEY: &str = "de.sorunome.msc2409.to_device";

/// Where an appservice wants its ephemeral events in a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EphemeralKey {
    Stable,
    Unstable,
}

impl EphemeralKey {
    fn as_str(self) -> &'static str {
        match self {
            EphemeralKey::Stable => "ephemeral",
            EphemeralKey::Unstable => "de.sorunome.msc2409.ephemeral",
        }
    }
}

/// One registered application service.
#[derive(Debug)]
pub struct Appservice {
    pub id: String,
    /// None: the appservice gets no transactions or queries.
    url: Option<String>,
    /// SHA-256 of the as_token: requests are matched by hash, so no comparison with the
    /// secret itself can leak it through its timing.
    as_token_hash: [u8; 32],
    hs_token: String,
    /// The appservice's own user (sender_localpart).
    pub sender: OwnedUserId,
    users: Vec<(Regex, bool)>,
    aliases: Vec<(Regex, bool)>,
    rooms: Vec<(Regex, bool)>,
    /// Whether its users are rate-limited (only with `rate_limited: true`).
    pub rate_limited: bool,
    ephemeral: Option<EphemeralKey>,
    push_to_device: bool,
}

fn token_hash(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// A namespace regex as Synapse applies it to the whole string.
fn compile(namespaces: &[Namespace], kind: &str) -> anyhow::Result<Vec<(Regex, bool)>> {
    namespaces
        .iter()
        .map(|ns| {
            let regex = Regex::new(&format!("^(?:{})$", ns.regex))
                .with_context(|| format!("namespaces.{kind}: invalid regex {:?}", ns.regex))?;
            Ok((regex, ns.exclusive))
        })
        .collect()
}

fn matches(namespaces: &[(Regex, bool)], s: &str, exclusive_only: bool) -> bool {
    namespaces.iter().any(|(regex, exclusive)| (*exclusive || !exclusive_only) && regex.is_match(s))
}

impl Appservice {
    fn from_file(path: &Path, server_name: &str) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).context("cannot read it")?;
        let file: RegistrationFile = serde_yaml_ng::from_str(&text).context("not a valid registration")?;
        let reg = file.registration;
        for (key, value) in [("id", &reg.id), ("as_token", &reg.as_token), ("hs_token", &reg.hs_token)] {
            if value.is_empty() {
                bail!("{key} must not be empty");
            }
        }
        let url = reg.url.filter(|u| !u.is_empty());
        if let Some(url) = &url {
            url::Url::parse(url).with_context(|| format!("url {url:?} is not a URL"))?;
        }
        let sender = crate::accounts::validate_new_localpart(&reg.sender_localpart, server_name)
            .map_err(|e| anyhow::anyhow!("sender_localpart {:?}: {e}", reg.sender_localpart))?;
        Ok(Appservice {
            id: reg.id,
            url: url.map(|u| u.trim_end_matches('/').to_owned()),
            as_token_hash: token_hash(&reg.as_token),
            hs_token: reg.hs_token,
            sender,
            users: compile(&reg.namespaces.users, "users")?,
            aliases: compile(&reg.namespaces.aliases, "aliases")?,
            rooms: compile(&reg.namespaces.rooms, "rooms")?,
            rate_limited: reg.rate_limited.unwrap_or(true),
            ephemeral: if reg.receive_ephemeral {
                Some(EphemeralKey::Stable)
            } else {
                file.push_ephemeral.then_some(EphemeralKey::Unstable)
            },
            push_to_device: file.push_to_device,
        })
    }

    /// Whether the user is the appservice's or in its user namespace.
    pub fn is_user(&self, user: &UserId) -> bool {
        *user == self.sender || matches(&self.users, user.as_str(), false)
    }

    fn is_alias(&self, alias: &str) -> bool {
        matches(&self.aliases, alias, false)
    }

    /// Whether the appservice is interested in a room with these (joined or invited)
    /// members and aliases.
    fn is_interested_in_room(&self, room: &RoomId, members: &[String], aliases: &[String]) -> bool {
        matches(&self.rooms, room.as_str(), false)
            || aliases.iter().any(|a| self.is_alias(a))
            || members.iter().filter_map(|m| UserId::parse(m).ok()).any(|m| self.is_user(&m))
    }

    fn is_interested_in_event(&self, pdu: &Pdu, members: &[String], aliases: &[String]) -> bool {
        let about_user = pdu.kind == TimelineEventType::RoomMember
            && pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok()).is_some_and(|u| self.is_user(&u));
        self.is_user(&pdu.sender) || about_user || self.is_interested_in_room(&pdu.room_id, members, aliases)
    }

    /// A request to the appservice, with the hs_token.
    fn request(&self, svc: &Services, method: reqwest::Method, path: &str) -> Result<reqwest::RequestBuilder> {
        let Some(url) = &self.url else {
            return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_URL_NOT_SET", "The appservice has no URL"));
        };
        Ok(svc.appservices.http.request(method, format!("{url}{path}")).bearer_auth(&self.hs_token))
    }
}

/// Every registered appservice, and what talks to them.
pub struct Appservices {
    list: Vec<Arc<Appservice>>,
    outbox: Outbox<AppserviceId>,
    http: reqwest::Client,
}

impl Appservices {
    /// Loads and checks the registration files of the config.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let mut list = Vec::new();
        let (mut ids, mut tokens) = (HashSet::new(), HashSet::new());
        for path in &config.appservice.config_files {
            let appservice = Appservice::from_file(path, &config.server_name)
                .with_context(|| format!("appservice registration {}", path.display()))?;
            if !ids.insert(appservice.id.clone()) {
                bail!("appservice registration {}: id {:?} is used twice", path.display(), appservice.id);
            }
            if !tokens.insert(appservice.as_token_hash) {
                bail!("appservice registration {}: its as_token is another appservice's", path.display());
            }
            list.push(Arc::new(appservice));
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("cannot build the appservice HTTP client")?;
        Ok(Appservices { list, outbox: Outbox::default(), http })
    }

    pub fn by_token(&self, token: &str) -> Option<&Arc<Appservice>> {
        let hash = token_hash(token);
        self.list.iter().find(|a| a.as_token_hash == hash)
    }

    fn by_id(&self, id: &str) -> Option<&Arc<Appservice>> {
        self.list.iter().find(|a| a.id == id)
    }

    /// Whether the user belongs to an appservice that is not rate-limited.
    pub fn unlimited(&self, user: &UserId) -> bool {
        self.list.iter().any(|a| !a.rate_limited && a.is_user(user))
    }

    /// Refuses a user ID that an appservice other than `me` claims exclusively (400 `M_EXCLUSIVE`).
    pub fn check_user_free(&self, user: &UserId, me: Option<&Appservice>) -> Result<()> {
        let claimed = |a: &&Arc<Appservice>| *user == a.sender || matches(&a.users, user.as_str(), true);
        self.check_free(me, claimed, "user ID")
    }

    /// Refuses an alias that an appservice other than `me` claims exclusively (400 `M_EXCLUSIVE`).
    pub fn check_alias_free(&self, alias: &RoomAliasId, me: Option<&Appservice>) -> Result<()> {
        self.check_free(me, |a| matches(&a.aliases, alias.as_str(), true), "alias")
    }

    fn check_free(
        &self,
        me: Option<&Appservice>,
        claimed: impl Fn(&&Arc<Appservice>) -> bool,
        what: &str,
    ) -> Result<()> {
        match self.list.iter().find(claimed) {
            Some(owner) if me.is_none_or(|m| m.id != owner.id) => Err(Error::matrix(
                StatusCode::BAD_REQUEST,
                "M_EXCLUSIVE",
                format!("This {what} is reserved by an application service"),
            )),
            _ => Ok(()),
        }
    }
}

/// Creates the appservices' own users if they are missing.
pub async fn create_senders(db: &Db, appservices: &Appservices) -> Result<()> {
    for appservice in &appservices.list {
        if !storage::users::exists(db, appservice.sender.as_str()).await? {
            crate::accounts::create_account(db, &appservice.sender, None, false, false, None).await?;
            tracing::info!(appservice = %appservice.id, user = %appservice.sender, "created the appservice's user");
        }
    }
    Ok(())
}

/// Appservices given work in a transaction: wake them once it is committed.
#[must_use]
#[derive(Default)]
pub struct Queued(Vec<String>);

impl Queued {
    pub fn extend(&mut self, other: Queued) {
        self.0.extend(other.0);
    }

    pub fn wake(self, svc: &Services) {
        for id in self.0 {
            outbox::wake(svc, AppserviceId(id));
        }
    }
}

/// The appservices interested in an event, read before `rooms::append` joins its batch of
/// writes (the batch is held alone while writing, so it waits for no read).
pub async fn interested_in_event(svc: &Services, pdu: &Pdu) -> Result<Vec<Arc<Appservice>>> {
    let pushed: Vec<&Arc<Appservice>> = svc.appservices.list.iter().filter(|a| a.url.is_some()).collect();
    if pushed.is_empty() {
        return Ok(Vec::new());
    }
    let room = pdu.room_id.as_str();
    let members = storage::rooms::interested_users(&svc.db, room).await?;
    let aliases = storage::rooms::aliases_of_room(&svc.db, room).await?;
    Ok(pushed.into_iter().filter(|a| a.is_interested_in_event(pdu, &members, &aliases)).cloned().collect())
}

/// Queues the event for the appservices interested in it (`interested_in_event`), in the
/// script that appends it; `wake` them once it is committed.
pub fn queue_event_in_script(script: &mut Script, pdu: &Pdu, interested: &[Arc<Appservice>]) -> Queued {
    let ids: Vec<&str> = interested.iter().map(|a| a.id.as_str()).collect();
    storage::appservice::queue_event_in_script(script, &ids, pdu.event_id.as_str());
    Queued(interested.iter().map(|a| a.id.clone()).collect())
}

/// Queues an ephemeral event of a room (`m.typing`, `m.receipt`) for the appservices that
/// asked for ephemeral events and are interested in the room.
pub async fn queue_ephemeral(svc: &Services, room: &RoomId, kind: &str, content: Value) -> Result<()> {
    let pushed: Vec<&Arc<Appservice>> =
        svc.appservices.list.iter().filter(|a| a.url.is_some() && a.ephemeral.is_some()).collect();
    if pushed.is_empty() {
        return Ok(());
    }
    let members = storage::rooms::interested_users(&svc.db, room.as_str()).await?;
    let aliases = storage::rooms::aliases_of_room(&svc.db, room.as_str()).await?;
    let json = json!({ "type": kind, "room_id": room, "content": content }).to_string();
    let mut tx = svc.db.begin().await?;
    let mut queued = Vec::new();
    for appservice in pushed.into_iter().filter(|a| a.is_interested_in_room(room, &members, &aliases)) {
        storage::appservice::queue(&mut tx, &appservice.id, Item::Ephemeral(&json)).await?;
        queued.push(appservice.id.clone());
    }
    tx.commit().await?;
    Queued(queued).wake(svc);
    Ok(())
}

/// Queues a to-device message for a local user (`device` None: every device) for the
/// appservices that asked for them and whose namespace holds the user, in the transaction
/// that stores it.
pub async fn queue_to_device(
    svc: &Services,
    tx: &mut Tx,
    sender: &UserId,
    event_type: &str,
    recipient: &UserId,
    device: Option<&str>,
    content: &Value,
) -> Result<Queued> {
    let concerned: Vec<&Arc<Appservice>> = svc
        .appservices
        .list
        .iter()
        .filter(|a| a.url.is_some() && a.push_to_device && matches(&a.users, recipient.as_str(), false))
        .collect();
    if concerned.is_empty() {
        return Ok(Queued::default());
    }
    let devices: Vec<String> = match device {
        Some(d) => vec![d.to_owned()],
        None => storage::devices::list(&svc.db, recipient.as_str()).await?.into_iter().map(|d| d.device_id).collect(),
    };
    let mut queued = Vec::new();
    for appservice in concerned {
        for device in &devices {
            let message = json!({
                "type": event_type, "sender": sender, "content": content,
                "to_user_id": recipient, "to_device_id": device,
            });
            storage::appservice::queue(tx, &appservice.id, Item::ToDevice(&message.to_string())).await?;
        }
        queued.push(appservice.id.clone());
    }
    Ok(Queued(queued))
}

/// An appservice, as a delivery target of `outbox::run`.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct AppserviceId(String);

impl std::fmt::Display for AppserviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "appservice {}", self.0)
    }
}

impl Target for AppserviceId {
    const KIND: &'static str = "appservice";

    fn outbox(svc: &Services) -> &Outbox<Self> {
        &svc.appservices.outbox
    }

    async fn queued(svc: &Services) -> anyhow::Result<Vec<Self>> {
        Ok(storage::appservice::queued_appservices(&svc.db).await?.into_iter().map(AppserviceId).collect())
    }

    fn backoff(svc: &Services, failures: u32) -> Duration {
        let config = &svc.config.appservice;
        outbox::backoff(config.initial_backoff_ms, config.max_backoff_ms, failures)
    }

    async fn deliver_next(&self, svc: &Services) -> anyhow::Result<bool> {
        let Some((txn_id, items)) = storage::appservice::next_transaction(&svc.db, &self.0, TRANSACTION_LIMIT).await?
        else {
            return Ok(false);
        };
        // An appservice removed from the config keeps nothing queued.
        if let Some(appservice) = svc.appservices.by_id(&self.0)
            && appservice.url.is_some()
        {
            send_transaction(svc, appservice, txn_id, items).await?;
        }
        storage::appservice::transaction_done(&svc.db, &self.0, txn_id).await?;
        Ok(true)
    }
}

/// `PUT /_matrix/app/v1/transactions/{txnId}`: the events in the client format (those
/// gone since are left out) and the ephemeral events under the key the appservice reads.
async fn send_transaction(
    svc: &Services,
    appservice: &Appservice,
    txn_id: i64,
    items: Vec<storage::appservice::Queued>,
) -> anyhow::Result<()> {
    let (mut events, mut ephemeral, mut to_device) = (Vec::new(), Vec::new(), Vec::new());
    for item in items {
        if let Some(event_id) = item.event_id.and_then(|e| ruma::OwnedEventId::try_from(e).ok())
            && let Some(pdu) = rooms::get_pdu(svc, &event_id).await?
        {
            events.push(rooms::format::client_event(svc, &pdu, None, false).await?);
        }
        if let Some(json) = item.ephemeral {
            ephemeral.push(serde_json::from_str::<Value>(&json)?);
        }
        if let Some(json) = item.to_device {
            to_device.push(serde_json::from_str::<Value>(&json)?);
        }
    }
    let mut body = json!({ "events": events });
    if let Some(key) = appservice.ephemeral {
        body[key.as_str()] = json!(ephemeral);
    }
    if appservice.push_to_device {
        body[TO_DEVICE_KEY] = json!(to_device);
    }
    let path = format!("/_matrix/app/v1/transactions/{txn_id}");
    let response = appservice.request(svc, reqwest::Method::PUT, &path)?.json(&body).send().await?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "appservice answered {status}");
    Ok(())
}

/// `POST /_matrix/client/v1/appservice/{id}/ping` by the appservice `me`: pings it and
/// answers how long it took, in milliseconds.
pub async fn ping(svc: &Services, me: Option<&Appservice>, id: &str, transaction_id: Option<&str>) -> Result<u64> {
    let Some(appservice) = me.filter(|a| a.id == id) else {
        return Err(Error::forbidden("Only the application service itself may ping it"));
    };
    let mut body = json!({});
    if let Some(txn) = transaction_id {
        body["transaction_id"] = json!(txn);
    }
    let started = Instant::now();
    let response = appservice.request(svc, reqwest::Method::POST, "/_matrix/app/v1/ping")?.json(&body).send().await;
    let response = response.map_err(|e| {
        if e.is_timeout() {
            Error::matrix(StatusCode::GATEWAY_TIMEOUT, "M_CONNECTION_TIMEOUT", "The appservice did not answer in time")
        } else {
            Error::matrix(StatusCode::BAD_GATEWAY, "M_CONNECTION_FAILED", format!("Cannot reach the appservice: {e}"))
        }
    })?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(Error::matrix(StatusCode::BAD_GATEWAY, "M_BAD_STATUS", "The appservice answered with an error")
            .with_field("status", json!(status.as_u16()))
            .with_field("body", json!(text)));
    }
    Ok(started.elapsed().as_millis() as u64)
}

/// Asks the appservices whose alias namespace holds an unknown local alias to create it
/// (`GET /_matrix/app/v1/rooms/{alias}`); true when one says it did.
pub async fn query_alias(svc: &Services, alias: &RoomAliasId) -> Result<bool> {
    let path = format!("/_matrix/app/v1/rooms/{}", crate::federation::client::encode(alias.as_str()));
    query(svc, |a| a.is_alias(alias.as_str()), &path).await
}

/// Asks the appservices whose user namespace holds an unknown local user to create it
/// (`GET /_matrix/app/v1/users/{userId}`); true when one says it did.
pub async fn query_user(svc: &Services, user: &UserId) -> Result<bool> {
    if user.server_name().as_str() != svc.config.server_name {
        return Ok(false);
    }
    let path = format!("/_matrix/app/v1/users/{}", crate::federation::client::encode(user.as_str()));
    query(svc, |a| matches(&a.users, user.as_str(), false), &path).await
}

async fn query(svc: &Services, concerned: impl Fn(&Appservice) -> bool, path: &str) -> Result<bool> {
    for appservice in svc.appservices.list.iter().filter(|a| a.url.is_some() && concerned(a)) {
        match appservice.request(svc, reqwest::Method::GET, path)?.send().await {
            Ok(response) if response.status().is_success() => return Ok(true),
            Ok(_) => {}
            Err(e) => tracing::warn!(appservice = %appservice.id, error = %e, "appservice query failed"),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> anyhow::Result<Appservice> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reg.yaml");
        std::fs::write(&path, yaml).unwrap();
        Appservice::from_file(&path, "example.org")
    }

    const REGISTRATION: &str = r##"
id: bridge
url: "http://127.0.0.1:9000/"
as_token: "as"
hs_token: "hs"
sender_localpart: bot
namespaces:
  users: [{exclusive: true, regex: "@bridge_.*:example\\.org"}]
  aliases: [{exclusive: false, regex: "#bridge_.*"}]
  rooms: []
rate_limited: false
de.sorunome.msc2409.push_ephemeral: true
push_to_device: true
"##;

    #[test]
    fn registration_is_read_and_regexes_match_whole_ids() {
        let a = load(REGISTRATION).unwrap();
        assert_eq!(a.url.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(a.sender, "@bot:example.org");
        assert!(!a.rate_limited);
        assert_eq!(a.ephemeral, Some(EphemeralKey::Unstable));
        assert!(a.push_to_device);
        assert!(a.is_user(&UserId::parse("@bridge_x:example.org").unwrap()));
        assert!(a.is_user(&UserId::parse("@bot:example.org").unwrap()));
        assert!(!a.is_user(&UserId::parse("@bridge_x:example.org.evil").unwrap()));
        assert!(!a.is_user(&UserId::parse("@xbridge_x:example.org").unwrap()));
        assert!(a.is_alias("#bridge_a:example.org"));
        assert!(!matches(&a.aliases, "#bridge_a:example.org", true));
    }

    #[test]
    fn bad_registrations_are_refused() {
        assert!(load("id: x\n").is_err());
        assert!(load(&REGISTRATION.replace("\"@bridge_.*:example\\\\.org\"", "\"(\"")).is_err());
        assert!(load(&REGISTRATION.replace("sender_localpart: bot", "sender_localpart: \"b t\"")).is_err());
        assert!(load(&REGISTRATION.replace("as_token: \"as\"", "as_token: \"\"")).is_err());
        assert!(load(&REGISTRATION.replace("url: \"http://127.0.0.1:9000/\"", "url: null")).unwrap().url.is_none());
    }
}
