//! Request authentication with the `X-Matrix` Authorization scheme: signing outbound
//! requests and verifying inbound ones (spec: Server-Server API, "Request Authentication").

use axum::http::{HeaderMap, Method, header};
use ruma::signatures::{PublicKeyMap, PublicKeySet};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName};

use super::keys::{self, KeyNeed, KeyUsage};
use crate::Services;
use crate::crypto::keys::ServerKey;
use crate::error::{Error, Result};

/// The parameters of an `X-Matrix` Authorization header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XMatrix {
    pub origin: OwnedServerName,
    /// Absent in requests of servers older than spec v1.3.
    pub destination: Option<OwnedServerName>,
    /// `ed25519:VERSION`.
    pub key: String,
    /// Base64 signature.
    pub sig: String,
}

impl XMatrix {
    /// Parses a header value: `X-Matrix` followed by comma-separated `name=value` pairs whose
    /// values may be quoted (with backslash escapes) or bare tokens, colons allowed (older
    /// servers send `origin=example.org:8448` unquoted). Names are case-insensitive; unknown
    /// ones are ignored.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim_start();
        let scheme_end = value.find([' ', '\t']).unwrap_or(value.len());
        if !value[..scheme_end].eq_ignore_ascii_case("X-Matrix") {
            return Err("not an X-Matrix Authorization header".into());
        }
        let (mut origin, mut destination, mut key, mut sig) = (None, None, None, None);
        for (name, value) in parse_params(&value[scheme_end..])? {
            let slot = match name.to_ascii_lowercase().as_str() {
                "origin" => &mut origin,
                "destination" => &mut destination,
                "key" => &mut key,
                "sig" => &mut sig,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(format!("duplicate parameter {name}"));
            }
        }
        let server_name = |field: &str, v: String| {
            OwnedServerName::try_from(v).map_err(|e| format!("{field} is not a server name: {e}"))
        };
        Ok(XMatrix {
            origin: server_name("origin", origin.ok_or("missing origin")?)?,
            destination: destination.map(|d| server_name("destination", d)).transpose()?,
            key: key.ok_or("missing key")?,
            sig: sig.ok_or("missing sig")?,
        })
    }

    /// The header value, written the way older servers understand: lower-case names,
    /// quoted values, no spaces around commas.
    pub fn to_header(&self) -> String {
        let destination = self.destination.as_ref().map_or(String::new(), |d| format!(",destination=\"{d}\""));
        format!("X-Matrix origin=\"{}\"{destination},key=\"{}\",sig=\"{}\"", self.origin, self.key, self.sig)
    }
}

/// `name=value` pairs separated by commas with optional spaces and tabs around them.
fn parse_params(input: &str) -> Result<Vec<(String, String)>, String> {
    let mut params = Vec::new();
    let mut chars = input.chars().peekable();
    loop {
        while chars.next_if(|c| matches!(c, ' ' | '\t' | ',')).is_some() {}
        if chars.peek().is_none() {
            return Ok(params);
        }
        let mut name = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ',' && *c != ' ' && *c != '\t') {
            name.push(c);
        }
        while chars.next_if(|c| matches!(c, ' ' | '\t')).is_some() {}
        if chars.next() != Some('=') || name.is_empty() {
            return Err(format!("malformed parameter {name:?}"));
        }
        while chars.next_if(|c| matches!(c, ' ' | '\t')).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => value.push(chars.next().ok_or("unterminated escape")?),
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value of {name}")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',' && *c != ' ' && *c != '\t') {
                value.push(c);
            }
        }
        while chars.next_if(|c| matches!(c, ' ' | '\t')).is_some() {}
        match chars.next() {
            None | Some(',') => params.push((name, value)),
            Some(c) => return Err(format!("unexpected {c:?} after the value of {name}")),
        }
    }
}

/// The JSON object a request signature covers.
fn request_object(
    method: &Method,
    uri: &str,
    origin: &ServerName,
    destination: &ServerName,
    content: Option<CanonicalJsonValue>,
) -> CanonicalJsonObject {
    let mut object = CanonicalJsonObject::new();
    object.insert("method".into(), CanonicalJsonValue::String(method.as_str().into()));
    object.insert("uri".into(), CanonicalJsonValue::String(uri.into()));
    object.insert("origin".into(), CanonicalJsonValue::String(origin.as_str().into()));
    object.insert("destination".into(), CanonicalJsonValue::String(destination.as_str().into()));
    if let Some(content) = content {
        object.insert("content".into(), content);
    }
    object
}

/// The Authorization header of an outbound request. `uri` is the path and query exactly as
/// sent; `content` the JSON body, if any.
pub fn sign_request(
    key: &ServerKey,
    origin: &ServerName,
    destination: &ServerName,
    method: &Method,
    uri: &str,
    content: Option<CanonicalJsonValue>,
) -> anyhow::Result<String> {
    let mut object = request_object(method, uri, origin, destination, content);
    key.sign_json(origin.as_str(), &mut object)?;
    let sig = match object.get("signatures").and_then(|s| s.as_object()).and_then(|s| s.get(origin.as_str())) {
        Some(CanonicalJsonValue::Object(by_key)) => by_key.get(&key.key_id).and_then(|s| s.as_str()),
        _ => None,
    };
    let sig = sig.ok_or_else(|| anyhow::anyhow!("signing produced no signature"))?;
    let header = XMatrix {
        origin: origin.to_owned(),
        destination: Some(destination.to_owned()),
        key: key.key_id.clone(),
        sig: sig.to_owned(),
    };
    Ok(header.to_header())
}

/// Checks the `X-Matrix` signature of an inbound request against the origin's keys
/// (fetched if needed) and answers the origin. 401 `M_UNAUTHORIZED` when the header is
/// missing, malformed, meant for another server, or its signature does not verify.
pub async fn verify_request(
    svc: &Services,
    method: &Method,
    uri: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<OwnedServerName> {
    let mut auth = None;
    for value in headers.get_all(header::AUTHORIZATION) {
        let Ok(value) = value.to_str() else { continue };
        if let Ok(parsed) = XMatrix::parse(value) {
            auth = Some(parsed);
            break;
        }
    }
    let auth = auth.ok_or_else(|| Error::unauthorized("Missing or malformed X-Matrix Authorization header"))?;
    let ours = <&ServerName>::try_from(svc.config.server_name.as_str()).map_err(|e| Error::Internal(e.into()))?;
    if auth.destination.as_deref().is_some_and(|d| d != ours) {
        return Err(Error::unauthorized("The request is meant for another server"));
    }
    let content = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| Error::not_json(format!("Content not JSON: {e}")))?;
        let value = CanonicalJsonValue::try_from(value)
            .map_err(|e| Error::bad_json(format!("Content is not canonical JSON: {e}")))?;
        Some(value)
    };
    let need = KeyNeed { server: auth.origin.clone(), key_ids: vec![auth.key.clone()], usage: KeyUsage::Request };
    let keys = keys::public_keys_for(svc, &[need]).await?;
    let Some(public_key) = keys.get(auth.origin.as_str()).and_then(|set| set.get(&auth.key)) else {
        return Err(Error::unauthorized(format!("Cannot find key {} of {}", auth.key, auth.origin)));
    };
    let mut object = request_object(method, uri, &auth.origin, ours, content);
    let mut by_key = CanonicalJsonObject::new();
    by_key.insert(auth.key.clone(), CanonicalJsonValue::String(auth.sig.clone()));
    let mut signatures = CanonicalJsonObject::new();
    signatures.insert(auth.origin.to_string(), CanonicalJsonValue::Object(by_key));
    object.insert("signatures".into(), CanonicalJsonValue::Object(signatures));
    let map: PublicKeyMap =
        [(auth.origin.to_string(), PublicKeySet::from([(auth.key.clone(), public_key.clone())]))].into();
    ruma::signatures::verify_json(&map, &object)
        .map_err(|e| Error::unauthorized(format!("Invalid signature from {}: {e}", auth.origin)))?;
    super::sender::Sender::mark_up(svc, &auth.origin).await;
    Ok(auth.origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_and_bare_values() {
        let h = XMatrix::parse(
            r#"X-Matrix origin="origin.example.com",destination="dest.example.com",key="ed25519:key1",sig="ABCD""#,
        )
        .unwrap();
        assert_eq!(h.origin, "origin.example.com");
        assert_eq!(h.destination.as_deref().map(|d| d.as_str()), Some("dest.example.com"));
        assert_eq!((h.key.as_str(), h.sig.as_str()), ("ed25519:key1", "ABCD"));

        // Bare values, colons in them, upper-case names, spaces and tabs around commas.
        let h = XMatrix::parse("x-matrix  ORIGIN=example.org:8448 ,\tKey=ed25519:a_b , sig=Zm9v,extra=\"x\"").unwrap();
        assert_eq!(h.origin, "example.org:8448");
        assert_eq!(h.destination, None);
        assert_eq!((h.key.as_str(), h.sig.as_str()), ("ed25519:a_b", "Zm9v"));

        // Backslash escapes inside quotes.
        let h = XMatrix::parse(r#"X-Matrix origin="a.org",key="ed25519:\k",sig="s\"x""#).unwrap();
        assert_eq!((h.key.as_str(), h.sig.as_str()), ("ed25519:k", "s\"x"));
    }

    #[test]
    fn refuses_malformed_headers() {
        for bad in [
            "Bearer abc",
            "X-Matrix key=\"ed25519:a\",sig=\"x\"",
            "X-Matrix origin=\"a.org\",sig=\"x\"",
            "X-Matrix origin=\"a.org\",key=\"ed25519:a\"",
            "X-Matrix origin=\"a.org\",origin=\"b.org\",key=\"ed25519:a\",sig=\"x\"",
            "X-Matrix origin=\"bad name!\",key=\"ed25519:a\",sig=\"x\"",
            "X-Matrix origin=\"a.org,key=\"ed25519:a\",sig=\"x\"",
            "X-Matrix origin",
        ] {
            assert!(XMatrix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_round_trips() {
        let h = XMatrix {
            origin: "a.org:8448".try_into().unwrap(),
            destination: Some("b.org".try_into().unwrap()),
            key: "ed25519:k1".into(),
            sig: "c2ln".into(),
        };
        assert_eq!(h.to_header(), r#"X-Matrix origin="a.org:8448",destination="b.org",key="ed25519:k1",sig="c2ln""#);
        assert_eq!(XMatrix::parse(&h.to_header()).unwrap(), h);
    }
}
