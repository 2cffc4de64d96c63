//! User-interactive authentication (the spec's UIA): sessions with completed stages.
//! Sessions are stored for 15 minutes, so that a session started on one process of the
//! database is continued on another (and survives a restart).

use rand::Rng;
use rand::distributions::Alphanumeric;
use ruma::{OwnedUserId, UserId};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::storage::{self, Db, cluster::UiaSession, now_ms};

pub const DUMMY: &str = "m.login.dummy";
pub const PASSWORD: &str = "m.login.password";
pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";
/// Completed in the browser (the fallback page and a provider), never by the request itself.
pub const SSO: &str = "m.login.sso";

const SESSION_LIFETIME_MS: i64 = 15 * 60 * 1000;

/// The UIA sessions (in the database).
#[derive(Default)]
pub struct UiaSessions;

/// What a completed UIA proved.
#[derive(Debug, Default)]
pub struct Completed {
    /// The registration token used, to count its use when the account is created.
    pub registration_token: Option<String>,
}

/// The flows a request accepts and the user who must prove themselves (for passwords).
pub struct Requirement<'a> {
    pub flows: &'a [&'a [&'static str]],
    pub user: Option<&'a UserId>,
}

fn unknown_session() -> Error {
    Error::matrix(http::StatusCode::BAD_REQUEST, "M_UNKNOWN", "Unknown UIA session")
}

impl UiaSessions {
    /// Checks the `auth` object of a request; `Ok` when a flow is complete, otherwise the
    /// 401 challenge (with an errcode when the submitted stage failed).
    pub async fn check(&self, db: &Db, auth: Option<&Value>, req: Requirement<'_>) -> Result<Completed> {
        let Some(auth) = auth.filter(|a| a.is_object()) else {
            let session = new_session(db, req.user).await?;
            return Err(challenge(db, &req, &session, None).await?);
        };
        let session_id = match auth.get("session").and_then(Value::as_str) {
            // A session belongs to the user it was started for.
            Some(id)
                if live_session(db, id)
                    .await?
                    .is_some_and(|s| s.user_id.as_deref() == req.user.map(|u| u.as_str())) =>
            {
                id.to_owned()
            }
            Some(_) => return Err(unknown_session()),
            None => new_session(db, req.user).await?,
        };
        let Some(stage_type) = auth.get("type").and_then(Value::as_str) else {
            // Only a session: done if a stage completed elsewhere (SSO) finished a flow,
            // otherwise report where it stands.
            return finish(db, &req, &session_id).await;
        };
        let Some(stage) = req.flows.iter().flat_map(|f| f.iter()).find(|s| **s == stage_type).copied() else {
            let failure = ("M_UNRECOGNIZED", format!("Unsupported authentication type {stage_type}"));
            return Err(challenge(db, &req, &session_id, Some(failure)).await?);
        };
        let mut token_used = None;
        match stage {
            DUMMY => {}
            // Submitting the SSO stage proves nothing: the fallback page must have completed it.
            SSO => return finish(db, &req, &session_id).await,
            PASSWORD => {
                if !check_password_stage(db, auth, req.user).await? {
                    let failure = ("M_FORBIDDEN", "Invalid username or password".to_owned());
                    return Err(challenge(db, &req, &session_id, Some(failure)).await?);
                }
            }
            REGISTRATION_TOKEN => {
                let token = auth.get("token").and_then(Value::as_str).unwrap_or_default();
                let valid = storage::registration_tokens::get(db, token).await?.is_some_and(|t| t.is_valid());
                if !valid {
                    let failure = ("M_FORBIDDEN", "Invalid registration token".to_owned());
                    return Err(challenge(db, &req, &session_id, Some(failure)).await?);
                }
                token_used = Some(token);
            }
            _ => return Err(Error::Internal(anyhow::anyhow!("UIA stage {stage} has no check"))),
        }
        let mut tx = db.begin().await?;
        if !storage::cluster::complete_uia_stage(&mut tx, &session_id, stage, token_used).await? {
            return Err(unknown_session());
        }
        tx.commit().await?;
        finish(db, &req, &session_id).await
    }

    /// The user a live session authenticates.
    pub async fn user_of(&self, db: &Db, session_id: &str) -> Result<Option<OwnedUserId>> {
        let session = live_session(db, session_id).await?;
        Ok(session.and_then(|s| s.user_id).and_then(|u| OwnedUserId::try_from(u).ok()))
    }

    /// Marks the SSO stage of a session done, once the user proved at a provider that they
    /// are the session's user; false if they are not, or the session is gone.
    pub async fn complete_sso(&self, db: &Db, session_id: &str, user: &UserId) -> Result<bool> {
        let Some(session) = live_session(db, session_id).await? else { return Ok(false) };
        if session.user_id.as_deref() != Some(user.as_str()) {
            return Ok(false);
        }
        let mut tx = db.begin().await?;
        let done = storage::cluster::complete_uia_stage(&mut tx, session_id, SSO, None).await?;
        tx.commit().await?;
        Ok(done)
    }
}

/// A session not expired yet.
async fn live_session(db: &Db, session_id: &str) -> Result<Option<UiaSession>> {
    Ok(storage::cluster::uia_session(db, session_id, now_ms() - SESSION_LIFETIME_MS).await?)
}

async fn new_session(db: &Db, user: Option<&UserId>) -> Result<String> {
    let id: String = rand::thread_rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect();
    let now = now_ms();
    let mut tx = db.begin().await?;
    storage::cluster::create_uia_session(&mut tx, &id, user.map(|u| u.as_str()), now, now - SESSION_LIFETIME_MS)
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// Ok when the session's completed stages make up one of the flows (the session ends),
/// otherwise the challenge.
async fn finish(db: &Db, req: &Requirement<'_>, session_id: &str) -> Result<Completed> {
    let session = live_session(db, session_id).await?;
    let done = session
        .as_ref()
        .is_some_and(|s| req.flows.iter().any(|flow| flow.iter().all(|stage| s.completed.iter().any(|c| c == stage))));
    if let Some(session) = session.filter(|_| done) {
        let mut tx = db.begin().await?;
        // Only one request may end a session (and use its registration token).
        if storage::cluster::end_uia_session(&mut tx, session_id).await? {
            tx.commit().await?;
            return Ok(Completed { registration_token: session.registration_token });
        }
        return Err(unknown_session());
    }
    Err(challenge(db, req, session_id, None).await?)
}

async fn challenge(db: &Db, req: &Requirement<'_>, session_id: &str, failure: Option<(&str, String)>) -> Result<Error> {
    let completed = live_session(db, session_id).await?.map(|s| s.completed).unwrap_or_default();
    let flows: Vec<Value> = req.flows.iter().map(|f| json!({ "stages": f })).collect();
    let mut body = json!({ "flows": flows, "params": {}, "session": session_id, "completed": completed });
    if let Some((errcode, error)) = failure {
        body["errcode"] = json!(errcode);
        body["error"] = json!(error);
    }
    Ok(Error::Uia(body))
}

/// The `m.login.password` stage: the identifier must name the authenticated user.
async fn check_password_stage(db: &Db, auth: &Value, user: Option<&UserId>) -> Result<bool> {
    let Some(user) = user else { return Ok(false) };
    let named = auth
        .get("identifier")
        .and_then(|i| i.get("user"))
        .or_else(|| auth.get("user"))
        .and_then(Value::as_str)
        .and_then(|u| crate::accounts::parse_login_user(u, user.server_name().as_str()));
    if named.as_deref().is_some_and(|n| n != user) {
        return Ok(false);
    }
    let Some(password) = auth.get("password").and_then(Value::as_str) else { return Ok(false) };
    crate::accounts::check_password(db, user, password).await
}
