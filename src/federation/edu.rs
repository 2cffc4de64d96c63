//! EDUs received from other servers (in `PUT /send/{txnId}`): typing, receipts, presence,
//! device list and signing key updates, direct to-device messages.

use ruma::ServerName;
use serde_json::Value;

use crate::Services;
use crate::error::Result;

/// Applies one EDU sent by `origin`. EDUs of unknown types are ignored, as the spec says.
pub async fn receive(_svc: &Services, _origin: &ServerName, edu_type: &str, _content: &Value) -> Result<()> {
    tracing::debug!(edu_type, "EDU not handled yet");
    Ok(())
}
