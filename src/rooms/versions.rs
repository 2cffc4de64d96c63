//! Room versions this server creates and accepts.

use ruma::RoomVersionId;
use ruma::room_version_rules::RoomVersionRules;
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// The version of rooms created without an explicit `room_version` (as Synapse).
pub const DEFAULT: RoomVersionId = RoomVersionId::V12;

/// Every version from 1 to 12. Room version 1 resolves state with the v2 algorithm
/// (ruma has no v1 resolution), which only matters for forked v1 rooms.
pub const SUPPORTED: &[RoomVersionId] = &[
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

/// Parses a version a client asked for: 400 `M_UNSUPPORTED_ROOM_VERSION` if unknown.
pub fn parse(version: &str) -> Result<RoomVersionId> {
    SUPPORTED.iter().find(|v| v.as_str() == version).cloned().ok_or_else(|| {
        Error::matrix(
            http::StatusCode::BAD_REQUEST,
            "M_UNSUPPORTED_ROOM_VERSION",
            format!("Room version {version} is not supported"),
        )
    })
}

/// The rules of a supported version.
pub fn rules(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version.rules().ok_or_else(|| Error::Internal(anyhow::anyhow!("no rules for room version {version}")))
}

/// The `m.room_versions` capability.
pub fn capability() -> Value {
    let available: serde_json::Map<String, Value> =
        SUPPORTED.iter().map(|v| (v.to_string(), json!("stable"))).collect();
    json!({ "default": DEFAULT.as_str(), "available": available })
}
