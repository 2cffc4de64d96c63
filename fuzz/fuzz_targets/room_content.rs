//! createRoom bodies and event content as clients send them, for every room version: the
//! body is parsed as the handler parses it and the room created (a real server over SQLite
//! in a temp dir), then the same JSON is sent into that room as the content of one kind of
//! event, the way `PUT /send` and `PUT /state` do. The first byte picks the room version
//! (unless the body names one) and the event kind. Refusals are fine; a panic, a hang or
//! an internal error (a 500) is a finding.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use plexus::error::Error;
use plexus::rooms::{self, Draft, create::CreateRoomRequest, versions};
use ruma::OwnedUserId;
use serde_json::Value;

/// Kinds of events the content is sent as: state events whose content Plexus checks, the
/// membership and power events the auth rules read, and timeline events with relations.
const KINDS: &[(&str, Option<&str>)] = &[
    ("m.room.message", None),
    ("m.reaction", None),
    ("m.room.encrypted", None),
    ("m.room.name", Some("")),
    ("m.room.topic", Some("")),
    ("m.room.avatar", Some("")),
    ("m.room.join_rules", Some("")),
    ("m.room.history_visibility", Some("")),
    ("m.room.guest_access", Some("")),
    ("m.room.power_levels", Some("")),
    ("m.room.member", Some("@fuzz:fuzz.test")),
    ("m.room.member", Some("@other:fuzz.test")),
    ("m.room.canonical_alias", Some("")),
    ("m.room.encryption", Some("")),
    ("m.room.tombstone", Some("")),
    ("m.room.server_acl", Some("")),
    ("m.room.pinned_events", Some("")),
    ("m.space.child", Some("!child:fuzz.test")),
    ("m.custom.state", Some("key")),
];

struct Rig {
    runtime: tokio::runtime::Runtime,
    state: plexus::AppState,
    creator: OwnedUserId,
    _dir: tempfile::TempDir,
}

static RIG: LazyLock<Rig> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = plexus::config::Config::with_server_name("fuzz.test");
    config.data_dir = dir.path().to_owned();
    config.database.url = format!("sqlite://{}/plexus.db", dir.path().display());
    config.rate_limits.enabled = false;
    let state = runtime.block_on(plexus::AppState::build(config)).unwrap();
    Rig { runtime, state, creator: "@fuzz:fuzz.test".try_into().unwrap(), _dir: dir }
});

/// Anything but an internal error is an answer the spec allows.
fn check<T>(what: &str, result: Result<T, Error>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(Error::Internal(e)) => panic!("{what}: internal error: {e:#}"),
        Err(_) => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else { return };
    let rig = &*RIG;
    let choice = usize::from(choice);
    let version = &versions::SUPPORTED[choice % versions::SUPPORTED.len()];
    let (kind, state_key) = KINDS[choice % KINDS.len()];
    let Some(mut request) = check("parse", plexus::http::extract::parse_json::<CreateRoomRequest>(body)) else {
        return;
    };
    request.room_version.get_or_insert_with(|| version.to_string());
    let Ok(content) = serde_json::from_slice::<Value>(body) else { return };
    rig.runtime.block_on(async {
        let Some(room_id) = check("createRoom", rooms::create::create_room(&rig.state, &rig.creator, request).await)
        else {
            return;
        };
        let draft = match state_key {
            Some(key) => Draft::state(kind, key, content),
            None => Draft::message(kind, content),
        };
        check("send", rooms::send(&rig.state, &room_id, &rig.creator, draft, Some(("FUZZ", "t"))).await);
    });
});
