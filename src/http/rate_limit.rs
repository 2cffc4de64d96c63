//! Token-bucket rate limiting per client address (login, registration) or per user (uploads).
//!
//! With several processes on one PostgreSQL, the buckets of login and registration are in the
//! database (`check_address`), so that a client spread over N processes does not get N times
//! the rate; they cost one statement on paths that hash passwords anyway. Upload buckets stay
//! in each process's memory, as Synapse's rate limiters do in each worker.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::config::RateLimitConfig;
use crate::error::{Error, Result};
use crate::storage::{self, Db, DbKind};

/// Every this many shared checks, the buckets full again are deleted.
const PRUNE_EVERY: u64 = 1000;

pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<(&'static str, Subject), Bucket>>,
    /// PostgreSQL, which other processes may share: the buckets of `check_address`.
    shared: Option<Db>,
    shared_checks: AtomicU64,
}

/// Whom a bucket limits.
#[derive(PartialEq, Eq, Hash)]
enum Subject {
    Ip(IpAddr),
    User(String),
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// Buckets in memory.
    pub fn new(config: RateLimitConfig) -> Self {
        Self { config, buckets: Mutex::new(HashMap::new()), shared: None, shared_checks: AtomicU64::new(0) }
    }

    /// Like `new`, with the buckets of `check_address` in the database on PostgreSQL.
    pub fn shared(config: RateLimitConfig, db: &Db) -> Self {
        Self { shared: (db.kind == DbKind::Postgres).then(|| db.clone()), ..Self::new(config) }
    }

    /// Takes one token from the bucket of `action` for `ip`, shared by every process of the
    /// database, or answers 429 with the wait.
    pub async fn check_address(&self, action: &'static str, ip: IpAddr) -> Result<()> {
        let Some(db) = self.shared.as_ref().filter(|_| self.config.enabled) else { return self.check(action, ip) };
        let (rate, burst) = (self.config.per_second, self.config.burst);
        let now = storage::now_ms();
        if self.shared_checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            let full_after_ms = (burst / rate * 1000.0).ceil() as i64;
            storage::cluster::prune_rate_limits(db, now - full_after_ms).await?;
        }
        let (allowed, tokens) = storage::cluster::take_token(db, action, &ip.to_string(), rate, burst, now).await?;
        if allowed { Ok(()) } else { Err(Error::limit_exceeded(((1.0 - tokens) / rate * 1000.0).ceil() as u64)) }
    }

    /// Takes one token from the bucket of `action` for `ip`, or answers 429 with the wait.
    pub fn check(&self, action: &'static str, ip: IpAddr) -> Result<()> {
        self.take(action, Subject::Ip(ip))
    }

    /// Like `check`, with one bucket per user instead of per address.
    pub fn check_user(&self, action: &'static str, user_id: &str) -> Result<()> {
        self.take(action, Subject::User(user_id.to_owned()))
    }

    fn take(&self, action: &'static str, subject: Subject) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        let (rate, burst) = (self.config.per_second, self.config.burst);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            buckets.retain(|_, b| now.duration_since(b.updated).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry((action, subject)).or_insert(Bucket { tokens: burst, updated: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = ((1.0 - bucket.tokens) / rate * 1000.0).ceil() as u64;
            Err(Error::limit_exceeded(wait_ms))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited() {
        let limiter = RateLimiter::new(RateLimitConfig { enabled: true, per_second: 0.1, burst: 3.0 });
        let ip = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..3 {
            limiter.check("login", ip).unwrap();
        }
        let err = limiter.check("login", ip).unwrap_err();
        assert_eq!(err.errcode(), "M_LIMIT_EXCEEDED");
        // Another action and another address have their own buckets.
        limiter.check("register", ip).unwrap();
        limiter.check("login", IpAddr::from([10, 0, 0, 2])).unwrap();
        // Users have buckets of their own.
        for _ in 0..3 {
            limiter.check_user("login", "@a:x").unwrap();
        }
        assert!(limiter.check_user("login", "@a:x").is_err());
        limiter.check_user("login", "@b:x").unwrap();
    }
}
