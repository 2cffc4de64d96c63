//! What guest accounts may call (spec "Guest access", Client behaviour): reading rooms and
//! media, joining, leaving and sending, their own display name and devices, and end-to-end
//! keys. Every other authenticated route answers 403 `M_GUEST_ACCESS_FORBIDDEN`, as
//! Synapse does. Which rooms a guest may join is decided by `rooms::membership::join`.

use axum::http::{Method, StatusCode};

use crate::error::Error;

/// (method, route as registered) of the endpoints the spec opens to guests.
const GUEST_ROUTES: &[(Method, &str)] = &[
    // Retrieving events and media.
    (Method::GET, "/_matrix/client/v3/rooms/{room_id}/state"),
    (Method::GET, "/_matrix/client/v3/rooms/{room_id}/context/{event_id}"),
    (Method::GET, "/_matrix/client/v3/rooms/{room_id}/event/{event_id}"),
    (Method::GET, "/_matrix/client/v3/rooms/{room_id}/state/{event_type}"),
    (Method::GET, "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/"),
    (Method::GET, "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/{state_key}"),
    (Method::GET, "/_matrix/client/v3/rooms/{room_id}/messages"),
    (Method::GET, "/_matrix/client/v3/rooms/{room_id}/members"),
    (Method::GET, "/_matrix/client/v3/sync"),
    (Method::GET, "/_matrix/client/v1/media/download/{server_name}/{media_id}"),
    (Method::GET, "/_matrix/client/v1/media/download/{server_name}/{media_id}/{file_name}"),
    (Method::GET, "/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}"),
    // Sending events.
    (Method::POST, "/_matrix/client/v3/rooms/{room_id}/join"),
    (Method::POST, "/_matrix/client/v3/rooms/{room_id}/leave"),
    (Method::PUT, "/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}"),
    (Method::PUT, "/_matrix/client/v3/rooms/{room_id}/state/{event_type}"),
    (Method::PUT, "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/"),
    (Method::PUT, "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/{state_key}"),
    (Method::PUT, "/_matrix/client/v3/sendToDevice/{event_type}/{txn_id}"),
    // Account maintenance (the profile route: only the display name, see below).
    (Method::PUT, PROFILE_FIELD),
    (Method::GET, "/_matrix/client/v3/devices"),
    (Method::GET, "/_matrix/client/v3/devices/{device_id}"),
    (Method::PUT, "/_matrix/client/v3/devices/{device_id}"),
    (Method::GET, "/_matrix/client/v3/account/whoami"),
    // End-to-end encryption.
    (Method::POST, "/_matrix/client/v3/keys/upload"),
    (Method::POST, "/_matrix/client/v3/keys/query"),
    (Method::POST, "/_matrix/client/v3/keys/claim"),
];

const PROFILE_FIELD: &str = "/_matrix/client/v3/profile/{user_id}/{field}";

/// Refuses a guest's request unless the spec allows guests that endpoint. `route` is the
/// matched route template, `path` the request's path.
pub fn check(method: &Method, route: Option<&str>, path: &str) -> Result<(), Error> {
    let allowed = route.is_some_and(|route| {
        GUEST_ROUTES.iter().any(|(m, r)| m == method && *r == route)
            && (route != PROFILE_FIELD || path.ends_with("/displayname"))
    });
    if allowed {
        Ok(())
    } else {
        Err(Error::matrix(StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is not allowed here"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_may_change_only_their_display_name() {
        let name = "/_matrix/client/v3/profile/%40g%3Ax/displayname";
        assert!(check(&Method::PUT, Some(PROFILE_FIELD), name).is_ok());
        let avatar = "/_matrix/client/v3/profile/%40g%3Ax/avatar_url";
        let err = check(&Method::PUT, Some(PROFILE_FIELD), avatar).unwrap_err();
        assert_eq!(err.errcode(), "M_GUEST_ACCESS_FORBIDDEN");
        assert!(check(&Method::GET, Some("/_matrix/client/v3/sync"), "/_matrix/client/v3/sync").is_ok());
        assert!(check(&Method::POST, Some("/_matrix/client/v3/createRoom"), "/_matrix/client/v3/createRoom").is_err());
        assert!(check(&Method::GET, None, "/").is_err());
    }
}
