//! User-interactive authentication (the spec's UIA): sessions with completed stages.
//! Sessions live in memory for 15 minutes; a restart asks the client to start again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distributions::Alphanumeric;
use ruma::{OwnedUserId, UserId};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::storage::{self, Db};

pub const DUMMY: &str = "m.login.dummy";
pub const PASSWORD: &str = "m.login.password";
pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";
/// Completed in the browser (the fallback page and a provider), never by the request itself.
pub const SSO: &str = "m.login.sso";

const SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);

#[derive(Default)]
pub struct UiaSessions {
    sessions: Mutex<HashMap<String, Session>>,
}

struct Session {
    completed: Vec<&'static str>,
    created: Instant,
    registration_token: Option<String>,
    /// The user the session authenticates (none for registration).
    user: Option<OwnedUserId>,
}

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

impl UiaSessions {
    /// Checks the `auth` object of a request; `Ok` when a flow is complete, otherwise the
    /// 401 challenge (with an errcode when the submitted stage failed).
    pub async fn check(&self, db: &Db, auth: Option<&Value>, req: Requirement<'_>) -> Result<Completed> {
        let Some(auth) = auth.filter(|a| a.is_object()) else {
            let session = self.new_session(req.user);
            return Err(self.challenge(&req, &session, None));
        };
        let session_id = match auth.get("session").and_then(Value::as_str) {
            // A session belongs to the user it was started for.
            Some(id) if self.lock().get(id).is_some_and(|s| s.user.as_deref() == req.user) => id.to_owned(),
            Some(_) => return Err(Error::matrix(http::StatusCode::BAD_REQUEST, "M_UNKNOWN", "Unknown UIA session")),
            None => self.new_session(req.user),
        };
        let Some(stage_type) = auth.get("type").and_then(Value::as_str) else {
            // Only a session: done if a stage completed elsewhere (SSO) finished a flow,
            // otherwise report where it stands.
            return self.finish(&req, &session_id);
        };
        let Some(stage) = req.flows.iter().flat_map(|f| f.iter()).find(|s| **s == stage_type).copied() else {
            let failure = ("M_UNRECOGNIZED", format!("Unsupported authentication type {stage_type}"));
            return Err(self.challenge(&req, &session_id, Some(failure)));
        };
        let mut token_used = None;
        match stage {
            DUMMY => {}
            // Submitting the SSO stage proves nothing: the fallback page must have completed it.
            SSO => return self.finish(&req, &session_id),
            PASSWORD => {
                if !check_password_stage(db, auth, req.user).await? {
                    let failure = ("M_FORBIDDEN", "Invalid username or password".to_owned());
                    return Err(self.challenge(&req, &session_id, Some(failure)));
                }
            }
            REGISTRATION_TOKEN => {
                let token = auth.get("token").and_then(Value::as_str).unwrap_or_default();
                let valid = storage::registration_tokens::get(db, token).await?.is_some_and(|t| t.is_valid());
                if !valid {
                    let failure = ("M_FORBIDDEN", "Invalid registration token".to_owned());
                    return Err(self.challenge(&req, &session_id, Some(failure)));
                }
                token_used = Some(token.to_owned());
            }
            _ => return Err(Error::Internal(anyhow::anyhow!("UIA stage {stage} has no check"))),
        }
        let mut sessions = self.lock();
        let Some(session) = sessions.get_mut(&session_id) else {
            return Err(Error::matrix(http::StatusCode::BAD_REQUEST, "M_UNKNOWN", "Unknown UIA session"));
        };
        if !session.completed.contains(&stage) {
            session.completed.push(stage);
        }
        if token_used.is_some() {
            session.registration_token = token_used;
        }
        drop(sessions);
        self.finish(&req, &session_id)
    }

    /// Ok when the session's completed stages make up one of the flows (the session ends),
    /// otherwise the challenge.
    fn finish(&self, req: &Requirement<'_>, session_id: &str) -> Result<Completed> {
        let mut sessions = self.lock();
        let done = sessions
            .get(session_id)
            .is_some_and(|s| req.flows.iter().any(|flow| flow.iter().all(|stage| s.completed.contains(stage))));
        if done && let Some(session) = sessions.remove(session_id) {
            return Ok(Completed { registration_token: session.registration_token });
        }
        drop(sessions);
        Err(self.challenge(req, session_id, None))
    }

    /// The user a live session authenticates.
    pub fn user_of(&self, session_id: &str) -> Option<OwnedUserId> {
        let sessions = self.lock();
        let session = sessions.get(session_id).filter(|s| s.created.elapsed() < SESSION_LIFETIME)?;
        session.user.clone()
    }

    /// Marks the SSO stage of a session done, once the user proved at a provider that they
    /// are the session's user; false if they are not, or the session is gone.
    pub fn complete_sso(&self, session_id: &str, user: &UserId) -> bool {
        let mut sessions = self.lock();
        match sessions.get_mut(session_id) {
            Some(s) if s.user.as_deref() == Some(user) && s.created.elapsed() < SESSION_LIFETIME => {
                if !s.completed.contains(&SSO) {
                    s.completed.push(SSO);
                }
                true
            }
            _ => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_session(&self, user: Option<&UserId>) -> String {
        let id: String = rand::thread_rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect();
        let mut sessions = self.lock();
        sessions.retain(|_, s| s.created.elapsed() < SESSION_LIFETIME);
        let session = Session {
            completed: vec![],
            created: Instant::now(),
            registration_token: None,
            user: user.map(Into::into),
        };
        sessions.insert(id.clone(), session);
        id
    }

    fn challenge(&self, req: &Requirement<'_>, session_id: &str, failure: Option<(&str, String)>) -> Error {
        let completed: Vec<&str> = self.lock().get(session_id).map(|s| s.completed.clone()).unwrap_or_default();
        let flows: Vec<Value> = req.flows.iter().map(|f| json!({ "stages": f })).collect();
        let mut body = json!({ "flows": flows, "params": {}, "session": session_id, "completed": completed });
        if let Some((errcode, error)) = failure {
            body["errcode"] = json!(errcode);
            body["error"] = json!(error);
        }
        Error::Uia(body)
    }
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
