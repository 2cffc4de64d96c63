//! Token-bucket rate limiting per client address (login, registration) or per user (uploads).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimitConfig;
use crate::error::{Error, Result};

pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<(&'static str, Subject), Bucket>>,
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
    pub fn new(config: RateLimitConfig) -> Self {
        Self { config, buckets: Mutex::new(HashMap::new()) }
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
