//! The authorization matrix of every route the router registers: client, media, admin and
//! federation. `ROUTES` lists each route with who may call it; a test reads the routers'
//! sources (`src/api/`, `src/http/`) and fails when a route is registered without a line
//! here, so every new route gets a check. Each token route must answer 401
//! `M_MISSING_TOKEN` without a token and `M_UNKNOWN_TOKEN` with a bad one; admin routes 403
//! to other users; guests reach only what the spec opens to them; federation routes refuse
//! a missing or forged `X-Matrix` signature; and a user may neither see nor change what
//! belongs to a room they are not in or to another user.

use std::collections::BTreeSet;
use std::path::Path;

use reqwest::Method;
use serde_json::json;

use crate::harness::{TestServer, TestUser, enc, fed_server, name_of};

/// Who may call a route.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Access {
    /// Anyone, without a token (or proving itself otherwise: a shared secret, an OpenID token).
    Public,
    /// Users with an access token, guests excepted.
    Token,
    /// Users with an access token, guests included (spec "Guest access").
    Guest,
    /// Server admins (`/_synapse/admin`).
    Admin,
    /// Other servers, with a verified `X-Matrix` signature.
    Signed,
}
use Access::{Admin, Guest, Public, Signed, Token};

/// Every route (method, path template as registered). Adding a route: one line here.
const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/.well-known/matrix/client", Public),
    ("GET", "/.well-known/matrix/server", Public),
    ("GET", "/_matrix/client/versions", Public),
    ("GET", "/_matrix/client/v3/capabilities", Token),
    ("GET", "/_matrix/client/v3/login", Public),
    ("POST", "/_matrix/client/v3/login", Public),
    ("POST", "/_matrix/client/v1/login/get_token", Token),
    ("GET", "/_matrix/client/v3/login/sso/redirect", Public),
    ("GET", "/_matrix/client/v3/login/sso/redirect/{idp_id}", Public),
    ("GET", "/_synapse/client/oidc/callback", Public),
    ("GET", "/_matrix/client/v3/auth/m.login.sso/fallback/web", Public),
    ("POST", "/_matrix/client/v3/refresh", Public),
    ("POST", "/_matrix/client/v3/logout", Token),
    ("POST", "/_matrix/client/v3/logout/all", Token),
    ("POST", "/_matrix/client/v3/register", Public),
    ("GET", "/_matrix/client/v3/register/available", Public),
    ("GET", "/_matrix/client/v1/register/m.login.registration_token/validity", Public),
    ("GET", "/_matrix/client/v3/account/whoami", Guest),
    ("POST", "/_matrix/client/v1/appservice/{appservice_id}/ping", Token),
    ("POST", "/_matrix/client/v3/account/password", Token),
    ("POST", "/_matrix/client/v3/account/deactivate", Token),
    ("GET", "/_matrix/client/v3/account/3pid", Token),
    ("GET", "/_matrix/client/v3/user/{user_id}/account_data/{data_type}", Token),
    ("PUT", "/_matrix/client/v3/user/{user_id}/account_data/{data_type}", Token),
    ("GET", "/_matrix/client/v3/user/{user_id}/rooms/{room_id}/account_data/{data_type}", Token),
    ("PUT", "/_matrix/client/v3/user/{user_id}/rooms/{room_id}/account_data/{data_type}", Token),
    ("GET", "/_matrix/client/v3/devices", Guest),
    ("GET", "/_matrix/client/v3/devices/{device_id}", Guest),
    ("PUT", "/_matrix/client/v3/devices/{device_id}", Guest),
    ("DELETE", "/_matrix/client/v3/devices/{device_id}", Token),
    ("POST", "/_matrix/client/v3/delete_devices", Token),
    ("GET", "/_matrix/client/v3/directory/room/{room_alias}", Public),
    ("PUT", "/_matrix/client/v3/directory/room/{room_alias}", Token),
    ("DELETE", "/_matrix/client/v3/directory/room/{room_alias}", Token),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/aliases", Token),
    ("GET", "/_matrix/client/v3/directory/list/room/{room_id}", Public),
    ("PUT", "/_matrix/client/v3/directory/list/room/{room_id}", Token),
    ("GET", "/_matrix/client/v3/publicRooms", Public),
    ("POST", "/_matrix/client/v3/publicRooms", Token),
    ("POST", "/_matrix/client/v3/user/{user_id}/filter", Token),
    ("GET", "/_matrix/client/v3/user/{user_id}/filter/{filter_id}", Token),
    ("POST", "/_matrix/client/v3/keys/upload", Guest),
    ("POST", "/_matrix/client/v3/keys/query", Guest),
    ("POST", "/_matrix/client/v3/keys/claim", Guest),
    ("POST", "/_matrix/client/v3/keys/device_signing/upload", Token),
    ("POST", "/_matrix/client/v3/keys/signatures/upload", Token),
    ("GET", "/_matrix/client/v3/keys/changes", Token),
    ("POST", "/_matrix/media/v3/upload", Token),
    ("POST", "/_matrix/media/v1/create", Token),
    ("PUT", "/_matrix/media/v3/upload/{server_name}/{media_id}", Token),
    ("GET", "/_matrix/client/v1/media/config", Token),
    ("GET", "/_matrix/client/v1/media/download/{server_name}/{media_id}", Guest),
    ("GET", "/_matrix/client/v1/media/download/{server_name}/{media_id}/{file_name}", Guest),
    ("GET", "/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}", Guest),
    ("GET", "/_matrix/client/v1/media/preview_url", Token),
    ("GET", "/_matrix/media/v3/config", Token),
    ("GET", "/_matrix/media/v3/preview_url", Token),
    ("GET", "/_matrix/media/v3/download/{server_name}/{media_id}", Public),
    ("GET", "/_matrix/media/v3/download/{server_name}/{media_id}/{file_name}", Public),
    ("GET", "/_matrix/media/v3/thumbnail/{server_name}/{media_id}", Public),
    ("POST", "/_matrix/client/v3/join/{room_id_or_alias}", Token),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/join", Guest),
    ("POST", "/_matrix/client/v3/knock/{room_id_or_alias}", Token),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/leave", Guest),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/forget", Token),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/invite", Token),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/kick", Token),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/ban", Token),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/unban", Token),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/messages", Guest),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/context/{event_id}", Guest),
    ("GET", "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}", Token),
    ("GET", "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}", Token),
    ("GET", "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}", Token),
    ("GET", "/_matrix/client/v1/rooms/{room_id}/threads", Token),
    ("GET", "/_matrix/client/v3/presence/{user_id}/status", Token),
    ("PUT", "/_matrix/client/v3/presence/{user_id}/status", Token),
    ("GET", "/_matrix/client/v3/profile/{user_id}", Public),
    ("GET", "/_matrix/client/v3/profile/{user_id}/{field}", Public),
    ("PUT", "/_matrix/client/v3/profile/{user_id}/{field}", Guest),
    ("GET", "/_matrix/client/v3/pushrules/", Token),
    ("GET", "/_matrix/client/v3/pushrules/global/", Token),
    ("GET", "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}", Token),
    ("PUT", "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}", Token),
    ("DELETE", "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}", Token),
    ("GET", "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}/enabled", Token),
    ("PUT", "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}/enabled", Token),
    ("GET", "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}/actions", Token),
    ("PUT", "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}/actions", Token),
    ("GET", "/_matrix/client/v3/notifications", Token),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/receipt/{receipt_type}/{event_id}", Token),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/read_markers", Token),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/report/{event_id}", Token),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/report", Token),
    ("POST", "/_matrix/client/v3/users/{user_id}/report", Token),
    ("POST", "/_matrix/client/v3/room_keys/version", Token),
    ("GET", "/_matrix/client/v3/room_keys/version", Token),
    ("GET", "/_matrix/client/v3/room_keys/version/{version}", Token),
    ("PUT", "/_matrix/client/v3/room_keys/version/{version}", Token),
    ("DELETE", "/_matrix/client/v3/room_keys/version/{version}", Token),
    ("GET", "/_matrix/client/v3/room_keys/keys", Token),
    ("PUT", "/_matrix/client/v3/room_keys/keys", Token),
    ("DELETE", "/_matrix/client/v3/room_keys/keys", Token),
    ("GET", "/_matrix/client/v3/room_keys/keys/{room_id}", Token),
    ("PUT", "/_matrix/client/v3/room_keys/keys/{room_id}", Token),
    ("DELETE", "/_matrix/client/v3/room_keys/keys/{room_id}", Token),
    ("GET", "/_matrix/client/v3/room_keys/keys/{room_id}/{session_id}", Token),
    ("PUT", "/_matrix/client/v3/room_keys/keys/{room_id}/{session_id}", Token),
    ("DELETE", "/_matrix/client/v3/room_keys/keys/{room_id}/{session_id}", Token),
    ("POST", "/_matrix/client/v3/createRoom", Token),
    ("PUT", "/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}", Guest),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/state", Guest),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/state/{event_type}", Guest),
    ("PUT", "/_matrix/client/v3/rooms/{room_id}/state/{event_type}", Guest),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/", Guest),
    ("PUT", "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/", Guest),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/{state_key}", Guest),
    ("PUT", "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/{state_key}", Guest),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/members", Guest),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/joined_members", Token),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/event/{event_id}", Guest),
    ("PUT", "/_matrix/client/v3/rooms/{room_id}/redact/{event_id}/{txn_id}", Token),
    ("GET", "/_matrix/client/v3/joined_rooms", Token),
    ("GET", "/_matrix/client/v3/sync", Guest),
    ("GET", "/_matrix/client/v1/rooms/{room_id}/timestamp_to_event", Token),
    ("PUT", "/_matrix/client/v3/sendToDevice/{event_type}/{txn_id}", Guest),
    ("PUT", "/_matrix/client/v3/rooms/{room_id}/typing/{user_id}", Token),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/upgrade", Token),
    ("POST", "/_matrix/client/v3/user_directory/search", Token),
    ("GET", "/_matrix/client/v3/voip/turnServer", Token),
    ("GET", "/_matrix/client/v1/rooms/{room_id}/hierarchy", Token),
    ("GET", "/_matrix/client/v1/room_summary/{room_id_or_alias}", Public),
    ("POST", "/_matrix/client/v3/user/{user_id}/openid/request_token", Token),
    ("GET", "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device", Token),
    ("PUT", "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device", Token),
    ("DELETE", "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device", Token),
    ("POST", "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{device_id}/events", Token),
    ("GET", "/_matrix/client/v3/admin/whois/{user_id}", Token),
    ("GET", "/_matrix/client/v1/admin/lock/{user_id}", Token),
    ("PUT", "/_matrix/client/v1/admin/lock/{user_id}", Token),
    ("GET", "/_matrix/client/v1/admin/suspend/{user_id}", Token),
    ("PUT", "/_matrix/client/v1/admin/suspend/{user_id}", Token),
    ("GET", "/_matrix/client/v3/pushers", Token),
    ("POST", "/_matrix/client/v3/pushers/set", Token),
    ("POST", "/_matrix/client/v3/search", Token),
    ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", Token),
    ("GET", "/metrics", Public),
    // The admin API.
    ("GET", "/_synapse/admin/v1/server_version", Admin),
    ("GET", "/_synapse/admin/v1/register", Public),
    ("POST", "/_synapse/admin/v1/register", Public),
    ("GET", "/_synapse/admin/v1/registration_tokens", Admin),
    ("POST", "/_synapse/admin/v1/registration_tokens/new", Admin),
    ("GET", "/_synapse/admin/v1/registration_tokens/{token}", Admin),
    ("PUT", "/_synapse/admin/v1/registration_tokens/{token}", Admin),
    ("DELETE", "/_synapse/admin/v1/registration_tokens/{token}", Admin),
    ("GET", "/_synapse/admin/v1/event_reports", Admin),
    ("GET", "/_synapse/admin/v1/event_reports/{report_id}", Admin),
    ("DELETE", "/_synapse/admin/v1/event_reports/{report_id}", Admin),
    ("GET", "/_synapse/admin/v1/rooms", Admin),
    ("GET", "/_synapse/admin/v1/rooms/{room_id}", Admin),
    ("DELETE", "/_synapse/admin/v1/rooms/{room_id}", Admin),
    ("GET", "/_synapse/admin/v1/rooms/{room_id}/members", Admin),
    ("GET", "/_synapse/admin/v1/rooms/{room_id}/state", Admin),
    ("GET", "/_synapse/admin/v1/rooms/{room_id}/block", Admin),
    ("PUT", "/_synapse/admin/v1/rooms/{room_id}/block", Admin),
    ("POST", "/_synapse/admin/v1/rooms/{room_id}/make_room_admin", Admin),
    ("DELETE", "/_synapse/admin/v2/rooms/{room_id}", Admin),
    ("GET", "/_synapse/admin/v2/rooms/{room_id}/delete_status", Admin),
    ("GET", "/_synapse/admin/v2/rooms/delete_status/{delete_id}", Admin),
    ("GET", "/_synapse/admin/v2/users", Admin),
    ("GET", "/_synapse/admin/v2/users/{user_id}", Admin),
    ("PUT", "/_synapse/admin/v2/users/{user_id}", Admin),
    ("GET", "/_synapse/admin/v1/users/{user_id}/admin", Admin),
    ("PUT", "/_synapse/admin/v1/users/{user_id}/admin", Admin),
    ("POST", "/_synapse/admin/v1/deactivate/{user_id}", Admin),
    ("POST", "/_synapse/admin/v1/reset_password/{user_id}", Admin),
    ("POST", "/_synapse/admin/v1/users/{user_id}/shadow_ban", Admin),
    ("DELETE", "/_synapse/admin/v1/users/{user_id}/shadow_ban", Admin),
    ("PUT", "/_synapse/admin/v1/suspend/{user_id}", Admin),
    ("POST", "/_synapse/admin/v1/users/{user_id}/login", Admin),
    ("GET", "/_synapse/admin/v1/users/{user_id}/joined_rooms", Admin),
    ("GET", "/_synapse/admin/v1/whois/{user_id}", Admin),
    ("GET", "/_synapse/admin/v2/users/{user_id}/devices", Admin),
    ("POST", "/_synapse/admin/v2/users/{user_id}/devices", Admin),
    ("GET", "/_synapse/admin/v2/users/{user_id}/devices/{device_id}", Admin),
    ("PUT", "/_synapse/admin/v2/users/{user_id}/devices/{device_id}", Admin),
    ("DELETE", "/_synapse/admin/v2/users/{user_id}/devices/{device_id}", Admin),
    ("POST", "/_synapse/admin/v2/users/{user_id}/delete_devices", Admin),
    ("POST", "/_synapse/admin/v1/media/quarantine/{server_name}/{media_id}", Admin),
    ("POST", "/_synapse/admin/v1/media/unquarantine/{server_name}/{media_id}", Admin),
    ("POST", "/_synapse/admin/v1/room/{room_id}/media/quarantine", Admin),
    ("POST", "/_synapse/admin/v1/user/{user_id}/media/quarantine", Admin),
    ("DELETE", "/_synapse/admin/v1/media/{server_name}/{media_id}", Admin),
    ("GET", "/_synapse/admin/v1/users/{user_id}/media", Admin),
    ("DELETE", "/_synapse/admin/v1/users/{user_id}/media", Admin),
    ("POST", "/_synapse/admin/v1/media/delete", Admin),
    ("POST", "/_synapse/admin/v1/purge_media_cache", Admin),
    ("GET", "/_synapse/admin/v1/statistics/users/media", Admin),
    ("POST", "/_synapse/admin/v1/purge_history/{room_id}", Admin),
    ("POST", "/_synapse/admin/v1/purge_history/{room_id}/{event_id}", Admin),
    ("GET", "/_synapse/admin/v1/purge_history_status/{purge_id}", Admin),
    ("POST", "/_synapse/admin/v1/send_server_notice", Admin),
    // The server-server API.
    ("GET", "/_matrix/federation/v1/version", Public),
    ("GET", "/_matrix/key/v2/server", Public),
    ("GET", "/_matrix/key/v2/server/{key_id}", Public),
    ("POST", "/_matrix/key/v2/query", Public),
    ("GET", "/_matrix/key/v2/query/{server_name}", Public),
    ("GET", "/_matrix/federation/v1/openid/userinfo", Public),
    ("PUT", "/_matrix/federation/v1/send/{txn_id}", Signed),
    ("GET", "/_matrix/federation/v1/event/{event_id}", Signed),
    ("GET", "/_matrix/federation/v1/state/{room_id}", Signed),
    ("GET", "/_matrix/federation/v1/state_ids/{room_id}", Signed),
    ("GET", "/_matrix/federation/v1/event_auth/{room_id}/{event_id}", Signed),
    ("GET", "/_matrix/federation/v1/backfill/{room_id}", Signed),
    ("POST", "/_matrix/federation/v1/get_missing_events/{room_id}", Signed),
    ("GET", "/_matrix/federation/v1/make_join/{room_id}/{user_id}", Signed),
    ("PUT", "/_matrix/federation/v2/send_join/{room_id}/{event_id}", Signed),
    ("GET", "/_matrix/federation/v1/make_leave/{room_id}/{user_id}", Signed),
    ("PUT", "/_matrix/federation/v2/send_leave/{room_id}/{event_id}", Signed),
    ("GET", "/_matrix/federation/v1/make_knock/{room_id}/{user_id}", Signed),
    ("PUT", "/_matrix/federation/v1/send_knock/{room_id}/{event_id}", Signed),
    ("PUT", "/_matrix/federation/v2/invite/{room_id}/{event_id}", Signed),
    ("GET", "/_matrix/federation/v1/user/devices/{user_id}", Signed),
    ("POST", "/_matrix/federation/v1/user/keys/query", Signed),
    ("POST", "/_matrix/federation/v1/user/keys/claim", Signed),
    ("GET", "/_matrix/federation/v1/publicRooms", Signed),
    ("POST", "/_matrix/federation/v1/publicRooms", Signed),
    ("GET", "/_matrix/federation/v1/query/profile", Signed),
    ("GET", "/_matrix/federation/v1/query/directory", Signed),
    ("GET", "/_matrix/federation/v1/hierarchy/{room_id}", Signed),
    ("GET", "/_matrix/federation/v1/media/download/{media_id}", Signed),
    ("GET", "/_matrix/federation/v1/media/thumbnail/{media_id}", Signed),
];

/// The routes the routers register, read from their sources (`src/api/`, `src/http/`):
/// every `.route(PATH, method(handler).method(handler)...)` where PATH is a string literal
/// or one of the path macros `v3!`, `admin_v1!`, `admin_v2!`.
fn registered_routes() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src/api"), root.join("src/http")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path).unwrap();
                for (method, route) in routes_in(&source) {
                    routes.insert((method, route));
                }
            }
        }
    }
    routes
}

/// The path macros of the routers and the prefixes they add.
const PATH_MACROS: &[(&str, &str)] =
    &[("v3!", "/_matrix/client/v3"), ("admin_v1!", "/_synapse/admin/v1"), ("admin_v2!", "/_synapse/admin/v2")];

/// The (method, path) pairs of the `.route(..)` calls in one source file.
fn routes_in(source: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        // The call's arguments up to its closing parenthesis.
        let (mut depth, mut end) = (1, 0);
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = i;
                break;
            }
        }
        let args = &rest[..end];
        let (path_expr, methods) = split_top_level_comma(args);
        let path_expr = path_expr.trim();
        let literal = |expr: &str| expr.strip_prefix('"').and_then(|p| p.strip_suffix('"')).map(str::to_owned);
        let from_macro = PATH_MACROS.iter().find_map(|(name, prefix)| {
            let inner = path_expr.strip_prefix(name)?.strip_prefix('(')?.strip_suffix(')')?;
            literal(inner).map(|p| format!("{prefix}{p}"))
        });
        let Some(path) = from_macro.or_else(|| literal(path_expr)) else {
            panic!("route path this test cannot read (teach registered_routes): {path_expr}");
        };
        for method in method_calls(methods) {
            found.push((method.to_uppercase(), path.clone()));
        }
    }
    found
}

fn split_top_level_comma(args: &str) -> (&str, &str) {
    let mut depth = 0;
    for (i, c) in args.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => return (&args[..i], &args[i + 1..]),
            _ => {}
        }
    }
    panic!("route without a method router: {args}")
}

/// The names called at the top level of a method-router chain: `get(a).put(b)` -> get, put.
fn method_calls(chain: &str) -> Vec<String> {
    let mut methods = Vec::new();
    let (mut depth, mut word) = (0, String::new());
    for c in chain.chars() {
        match c {
            '(' => {
                if depth == 0 && !word.is_empty() {
                    methods.push(std::mem::take(&mut word));
                }
                depth += 1;
            }
            ')' => depth -= 1,
            c if depth == 0 && (c.is_ascii_alphanumeric() || c == '_') => word.push(c),
            _ if depth == 0 => word.clear(),
            _ => {}
        }
    }
    methods
}

#[test]
fn every_registered_route_is_in_the_matrix() {
    let registered = registered_routes();
    let listed: BTreeSet<(String, String)> =
        ROUTES.iter().map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned())).collect();
    assert_eq!(listed.len(), ROUTES.len(), "ROUTES lists a route twice");
    let unlisted: Vec<_> = registered.difference(&listed).collect();
    let gone: Vec<_> = listed.difference(&registered).collect();
    assert!(unlisted.is_empty(), "routes without an authorization check, add them to ROUTES: {unlisted:#?}");
    assert!(gone.is_empty(), "ROUTES lists routes that are not registered: {gone:#?}");
}

/// What the test's path parameters stand for.
struct Fixture<'a> {
    server: &'a TestServer,
    owner: &'a TestUser,
    room_id: &'a str,
    event_id: &'a str,
    filter_id: &'a str,
}

impl Fixture<'_> {
    /// A concrete path for a template: the owner's private room, event, device and data.
    fn fill(&self, template: &str) -> String {
        let server = &self.server.server_name;
        let alias = format!("#nowhere:{server}");
        let values: [(&str, String); 28] = [
            ("{room_id_or_alias}", enc(self.room_id)),
            ("{room_id}", enc(self.room_id)),
            ("{user_id}", enc(&self.owner.user_id)),
            ("{event_id}", enc(self.event_id)),
            ("{event_type}", "m.room.topic".into()),
            ("{state_key}", "x".into()),
            ("{txn_id}", "authz1".into()),
            ("{device_id}", enc(&self.owner.device_id)),
            ("{data_type}", "m.secret".into()),
            ("{filter_id}", enc(self.filter_id)),
            ("{room_alias}", enc(&alias)),
            ("{server_name}", enc(server)),
            ("{media_id}", "AbCdEf".into()),
            ("{file_name}", "f.txt".into()),
            ("{kind}", "override".into()),
            ("{rule_id}", ".m.rule.master".into()),
            ("{receipt_type}", "m.read".into()),
            ("{rel_type}", "m.thread".into()),
            ("{version}", "1".into()),
            ("{session_id}", "s".into()),
            ("{field}", "displayname".into()),
            ("{appservice_id}", "bridge".into()),
            ("{idp_id}", "oidc".into()),
            ("{token}", "abcd".into()),
            ("{report_id}", "1".into()),
            ("{delete_id}", "d1".into()),
            ("{purge_id}", "p1".into()),
            ("{key_id}", "ed25519%3Aa".into()),
        ];
        let mut path = template.to_owned();
        for (name, value) in &values {
            path = path.replace(name, value);
        }
        assert!(!path.contains('{'), "no value for a parameter of {template}");
        path
    }
}

const SECRET: &str = "the launch code is 0000";

/// The body of a test request: `{}` for methods that carry one.
fn body_for(method: &Method) -> Option<serde_json::Value> {
    matches!(*method, Method::POST | Method::PUT).then(|| json!({}))
}

#[tokio::test]
async fn token_routes_refuse_requests_without_a_valid_token() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = alice.create_room(json!({ "preset": "private_chat" })).await;
    let event_id = alice.send_text(&room_id, SECRET).await;
    let fx = Fixture { server: &server, owner: &alice, room_id: &room_id, event_id: &event_id, filter_id: "0" };
    let mut wrong = Vec::new();
    for (method, template, access) in ROUTES.iter().filter(|r| r.2 != Signed) {
        let path = fx.fill(template);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let body = body_for(&method);
        let anonymous = server.request(method.clone(), &path, None, body.as_ref()).await;
        let missing = anonymous.status == 401 && anonymous.errcode() == "M_MISSING_TOKEN";
        match access {
            Public if missing => wrong.push(format!("{method} {template} is public but asks for a token")),
            Public | Signed => {}
            Token | Guest | Admin if !missing => {
                wrong.push(format!("{method} {template} without a token: {anonymous:?}"))
            }
            Token | Guest | Admin => {
                let forged = server.request(method.clone(), &path, Some("plx_forged"), body.as_ref()).await;
                if forged.status != 401 || forged.errcode() != "M_UNKNOWN_TOKEN" {
                    wrong.push(format!("{method} {template} with a forged token: {forged:?}"));
                }
            }
        }
        assert!(!format!("{:?}", anonymous.body).contains(SECRET), "{method} {template} leaks without a token");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn admin_routes_refuse_users_who_are_not_admins() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = alice.create_room(json!({ "preset": "private_chat", "topic": SECRET })).await;
    let event_id = alice.send_text(&room_id, SECRET).await;
    let fx = Fixture { server: &server, owner: &alice, room_id: &room_id, event_id: &event_id, filter_id: "0" };
    let mut wrong = Vec::new();
    for (method, template, _) in ROUTES.iter().filter(|r| r.2 == Admin) {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let reply = alice.request(method.clone(), &fx.fill(template), body_for(&method).as_ref()).await;
        if reply.status != 403 || reply.errcode() != "M_FORBIDDEN" {
            wrong.push(format!("{method} {template} as a user who is not an admin: {reply:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Nothing changed: alice is no admin, her room and message are there.
    let whoami = alice.get("/_matrix/client/v3/account/whoami").await.ok();
    assert_eq!(whoami["user_id"], alice.user_id.as_str());
    let path = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room_id), enc(&event_id));
    assert_eq!(alice.get(&path).await.ok()["content"]["body"], SECRET);
}

/// Registers a guest account (`POST /register?kind=guest`).
async fn register_guest(server: &TestServer, owner: &TestUser) -> TestUser {
    let r = server.request(Method::POST, "/_matrix/client/v3/register?kind=guest", None, Some(&json!({}))).await.ok();
    TestUser {
        user_id: r["user_id"].as_str().unwrap().to_owned(),
        device_id: r["device_id"].as_str().unwrap().to_owned(),
        token: r["access_token"].as_str().unwrap().to_owned(),
        ..owner.clone()
    }
}

#[tokio::test]
async fn guests_reach_only_the_endpoints_the_spec_opens_to_them() {
    let server = TestServer::start_with(|c| c.registration.allow_guests = true).await;
    let alice = server.register("alice").await;
    let room_id = alice.create_room(json!({ "preset": "private_chat", "topic": SECRET })).await;
    let event_id = alice.send_text(&room_id, SECRET).await;
    let guest = register_guest(&server, &alice).await;
    assert_eq!(guest.get("/_matrix/client/v3/account/whoami").await.ok()["is_guest"], true);
    let fx = Fixture { server: &server, owner: &guest, room_id: &room_id, event_id: &event_id, filter_id: "0" };
    let mut wrong = Vec::new();
    for (method, template, access) in ROUTES.iter().filter(|r| matches!(r.2, Token | Guest | Admin)) {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let reply = guest.request(method.clone(), &fx.fill(template), body_for(&method).as_ref()).await;
        let refused = reply.status == 403 && reply.errcode() == "M_GUEST_ACCESS_FORBIDDEN";
        if refused == (*access == Guest) {
            wrong.push(format!("{method} {template} as a guest: {reply:?}"));
        }
        assert!(!format!("{:?}", reply.body).contains(SECRET), "{method} {template} leaks to a guest");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Of their profile, guests change only the display name.
    let profile = format!("/_matrix/client/v3/profile/{}", enc(&guest.user_id));
    guest
        .put(&format!("{profile}/avatar_url"), json!({ "avatar_url": "mxc://x/y" }))
        .await
        .assert_error(403, "M_GUEST_ACCESS_FORBIDDEN");
    guest.put(&format!("{profile}/displayname"), json!({ "displayname": "Visitor" })).await.ok();
}

#[tokio::test]
async fn guests_join_only_rooms_whose_guest_access_is_can_join_and_leave_when_it_closes() {
    let server = TestServer::start_with(|c| c.registration.allow_guests = true).await;
    let alice = server.register("alice").await;
    // A public room without m.room.guest_access (the public_chat preset sets none).
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let guest = register_guest(&server, &alice).await;
    let join = format!("/_matrix/client/v3/rooms/{}/join", enc(&room_id));
    guest.post(&join, json!({})).await.assert_error(403, "M_FORBIDDEN");
    let guest_access = format!("/_matrix/client/v3/rooms/{}/state/m.room.guest_access/", enc(&room_id));
    alice.put(&guest_access, json!({ "guest_access": "forbidden" })).await.ok();
    guest.post(&join, json!({})).await.assert_error(403, "M_FORBIDDEN");
    alice.put(&guest_access, json!({ "guest_access": "can_join" })).await.ok();
    guest.post(&join, json!({})).await.ok();
    let sent = guest.send_text(&room_id, "hello from a guest").await;
    let messages = alice.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&room_id))).await.ok();
    assert!(messages["chunk"].as_array().unwrap().iter().any(|e| e["event_id"] == sent.as_str()), "{messages}");
    // Closing the room to guests makes them leave.
    alice.put(&guest_access, json!({ "guest_access": "forbidden" })).await.ok();
    let member = format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room_id), enc(&guest.user_id));
    assert_eq!(alice.get(&member).await.ok()["membership"], "leave");
    guest.post(&join, json!({})).await.assert_error(403, "M_FORBIDDEN");
    // The join-by-alias route and room creation are not for guests.
    guest
        .post(&format!("/_matrix/client/v3/join/{}", enc(&room_id)), json!({}))
        .await
        .assert_error(403, "M_GUEST_ACCESS_FORBIDDEN");
    guest.post("/_matrix/client/v3/createRoom", json!({})).await.assert_error(403, "M_GUEST_ACCESS_FORBIDDEN");
}

#[tokio::test]
async fn federation_routes_refuse_missing_or_forged_signatures() {
    let a = fed_server("127.0.0.1").await;
    let b = fed_server("127.0.0.2").await;
    let forger = TestServer::start_on("127.0.0.3", |_| {}).await;
    let (a_name, b_name) = (name_of(&a), name_of(&b));
    let alice = a.register("alice").await;
    let room_id = alice.create_room(json!({ "preset": "private_chat", "topic": SECRET })).await;
    let event_id = alice.send_text(&room_id, SECRET).await;
    let fx = Fixture { server: &a, owner: &alice, room_id: &room_id, event_id: &event_id, filter_id: "0" };
    let mut wrong = Vec::new();
    for (method, template, _) in ROUTES.iter().filter(|r| r.2 == Signed) {
        let path = fx.fill(template);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let body = body_for(&method);
        let content = body.clone().map(|b| ruma::CanonicalJsonValue::try_from(b).unwrap());
        let sign = |key: &plexus::crypto::keys::ServerKey| {
            plexus::federation::xmatrix::sign_request(key, &b_name, &a_name, &method, &path, content.clone()).unwrap()
        };
        // Signed with another server's key under B's name and key ID.
        let forged =
            sign(&forger.state.server_key).replace(&forger.state.server_key.key_id, &b.state.server_key.key_id);
        for (what, authorization) in [("no signature", None), ("a forged signature", Some(forged))] {
            let mut req = a.client.request(method.clone(), format!("{}{path}", a.base));
            if let Some(value) = authorization {
                req = req.header("authorization", value);
            }
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            if status != 401 || !text.contains("M_UNAUTHORIZED") {
                wrong.push(format!("{method} {template} with {what}: {status} {text}"));
            }
            assert!(!text.contains(SECRET), "{method} {template} leaks with {what}");
        }
        // B's own signature passes the check (whatever the handler then answers).
        let mut req = a
            .client
            .request(method.clone(), format!("{}{path}", a.base))
            .header("authorization", sign(&b.state.server_key));
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        if status == 401 && text.contains("M_UNAUTHORIZED") {
            wrong.push(format!("{method} {template} refuses a valid signature: {text}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// What another user may not do in a room they are not in, or to someone else's things.
const FOREIGN: &[(&str, &str)] = &[
    ("GET", "/_matrix/client/v3/rooms/{room_id}/messages?dir=b"),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/context/{event_id}"),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/event/{event_id}"),
    ("GET", "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}"),
    ("GET", "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}"),
    ("GET", "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}"),
    ("GET", "/_matrix/client/v1/rooms/{room_id}/threads"),
    ("GET", "/_matrix/client/v1/rooms/{room_id}/timestamp_to_event?dir=b&ts=9999999999999"),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/state"),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/state/{event_type}"),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/"),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/members"),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/joined_members"),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/aliases"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/receipt/{receipt_type}/{event_id}"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/read_markers"),
    ("PUT", "/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn_id}"),
    ("PUT", "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/"),
    ("PUT", "/_matrix/client/v3/rooms/{room_id}/redact/{event_id}/{txn_id}"),
    ("PUT", "/_matrix/client/v3/rooms/{room_id}/typing/{user_id}"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/invite"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/upgrade"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/join"),
    ("PUT", "/_matrix/client/v3/directory/list/room/{room_id}"),
    ("GET", "/_matrix/client/v3/user/{user_id}/account_data/{data_type}"),
    ("PUT", "/_matrix/client/v3/user/{user_id}/account_data/{data_type}"),
    ("GET", "/_matrix/client/v3/user/{user_id}/rooms/{room_id}/account_data/{data_type}"),
    ("PUT", "/_matrix/client/v3/user/{user_id}/rooms/{room_id}/account_data/{data_type}"),
    ("POST", "/_matrix/client/v3/user/{user_id}/filter"),
    ("GET", "/_matrix/client/v3/user/{user_id}/filter/{filter_id}"),
    ("GET", "/_matrix/client/v3/devices/{device_id}"),
    ("PUT", "/_matrix/client/v3/devices/{device_id}"),
    ("DELETE", "/_matrix/client/v3/devices/{device_id}"),
    ("PUT", "/_matrix/client/v3/presence/{user_id}/status"),
    ("PUT", "/_matrix/client/v3/profile/{user_id}/{field}"),
];

#[tokio::test]
async fn users_cannot_reach_rooms_they_are_not_in_or_other_users_things() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mallory = server.register("mallory").await;
    let room_id = alice.create_room(json!({ "preset": "private_chat", "topic": SECRET })).await;
    let event_id = alice.send_text(&room_id, SECRET).await;
    let thread = json!({ "msgtype": "m.text", "body": SECRET, "m.relates_to": { "rel_type": "m.thread", "event_id": event_id } });
    alice.put(&format!("/_matrix/client/v3/rooms/{}/send/m.room.message/reply", enc(&room_id)), thread).await.ok();
    let data = format!("/_matrix/client/v3/user/{}/account_data/m.secret", enc(&alice.user_id));
    alice.put(&data, json!({ "secret": SECRET })).await.ok();
    let room_data =
        format!("/_matrix/client/v3/user/{}/rooms/{}/account_data/m.secret", enc(&alice.user_id), enc(&room_id));
    alice.put(&room_data, json!({ "secret": SECRET })).await.ok();
    let filter = alice
        .post(&format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id)), json!({ "event_fields": [SECRET] }))
        .await
        .ok();
    let filter_id = filter["filter_id"].as_str().unwrap();

    let fx = Fixture { server: &server, owner: &alice, room_id: &room_id, event_id: &event_id, filter_id };
    let mut wrong = Vec::new();
    for (method, template) in FOREIGN {
        let path = fx.fill(template);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let body = match *template {
            t if t.contains("/state/") => json!({ "topic": "defaced" }),
            t if t.contains("/send/") => json!({ "msgtype": "m.text", "body": "spam" }),
            t if t.ends_with("/invite") => json!({ "user_id": mallory.user_id }),
            t if t.ends_with("/upgrade") => json!({ "new_version": "10" }),
            t if t.contains("/typing/") => json!({ "typing": true, "timeout": 1000 }),
            t if t.contains("/presence/") => json!({ "presence": "offline" }),
            t if t.contains("/profile/") => json!({ "displayname": "defaced" }),
            t if t.contains("/devices/") => json!({ "display_name": "defaced" }),
            t if t.contains("/directory/list/") => json!({ "visibility": "public" }),
            t if t.ends_with("/read_markers") => json!({ "m.fully_read": event_id }),
            _ => json!({ "secret": "defaced" }),
        };
        let reply = mallory.request(method.clone(), &path, Some(&body)).await;
        if !matches!(reply.status.as_u16(), 403 | 404) {
            wrong.push(format!("{method} {template} as another user: {reply:?}"));
        } else if format!("{:?}", reply.body).contains(SECRET) {
            wrong.push(format!("{method} {template} leaks to another user: {reply:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Nothing changed.
    let topic = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room_id))).await.ok();
    assert_eq!(topic["topic"], SECRET);
    assert_eq!(alice.get(&data).await.ok()["secret"], SECRET);
    assert_eq!(alice.get(&room_data).await.ok()["secret"], SECRET);
    let device = alice.get(&format!("/_matrix/client/v3/devices/{}", enc(&alice.device_id))).await.ok();
    assert_ne!(device["display_name"], "defaced");
    let profile = alice.get(&format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id))).await.ok();
    assert_ne!(profile["displayname"], "defaced");
    let members = alice.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room_id))).await.ok();
    assert_eq!(members["joined"].as_object().unwrap().len(), 1, "{members}");
    let visibility = alice.get(&format!("/_matrix/client/v3/directory/list/room/{}", enc(&room_id))).await.ok();
    assert_eq!(visibility["visibility"], "private");
    // The other user's sync shows none of it.
    let sync = mallory.sync("").await;
    assert!(!sync.to_string().contains(SECRET), "{sync}");
}
