//! Access tokens resolved to the identity they authenticate, kept in memory so that an
//! authenticated request reads nothing from the database once its token was seen.
//!
//! An entry holds what the token's row and its user's row said. Whatever changes them (a
//! logout, a device deleted, a refresh, a password change, a deactivation, an admin changing
//! a user's flags) calls `forget_user` once committed: the one invalidation entry point.
//! Expiry is checked on every use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ruma::UserId;

use super::Identity;
use crate::cluster::{Message, Publisher};

/// Tokens kept before the cache starts again.
const CACHE_LIMIT: usize = 100_000;

/// A resolved token: its identity and expiry (ms since the epoch).
#[derive(Clone)]
pub struct Resolved {
    pub identity: Identity,
    pub expires_ts: Option<i64>,
}

/// Token hash -> resolved token. `epoch` counts invalidations: a token resolved from the
/// database is only kept when none happened meanwhile, so a resolution racing a logout
/// cannot put the logged-out token back. `others`: the other processes of the database,
/// told of every invalidation.
pub struct TokenCache {
    tokens: Mutex<HashMap<String, Resolved>>,
    epoch: AtomicU64,
    others: Publisher,
}

impl TokenCache {
    pub fn new(others: Publisher) -> Self {
        TokenCache { tokens: Mutex::default(), epoch: AtomicU64::new(0), others }
    }

    pub fn get(&self, token_hash: &str) -> Option<Resolved> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(token_hash).cloned()
    }

    /// The invalidation count, to pass to `remember` after reading the database.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps a token read from the database when nothing was invalidated since `epoch`.
    pub fn remember(&self, token_hash: &str, resolved: Resolved, epoch: u64) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if tokens.len() >= CACHE_LIMIT {
            tokens.clear();
        }
        tokens.insert(token_hash.to_owned(), resolved);
    }

    /// Forgets every token of a user, here and in the other processes: their tokens,
    /// devices or account changed.
    pub fn forget_user(&self, user_id: &UserId) {
        self.forget_user_here(user_id);
        self.others.send(Message::TokensChanged { user: user_id.to_owned() });
    }

    /// Forgets every token in this process (announcements may have been missed).
    pub fn forget_all(&self) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        tokens.clear();
    }

    /// Forgets every token of a user in this process only (another process announced it).
    pub fn forget_user_here(&self, user_id: &UserId) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        tokens.retain(|_, resolved| resolved.identity.user_id != user_id);
    }
}
