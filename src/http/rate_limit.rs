//! Token-bucket rate limiting per client address, for login and registration.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimitConfig;
use crate::error::{Error, Result};

pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<(&'static str, IpAddr), Bucket>>,
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
        if !self.config.enabled {
            return Ok(());
        }
        let (rate, burst) = (self.config.per_second, self.config.burst);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            buckets.retain(|_, b| now.duration_since(b.updated).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry((action, ip)).or_insert(Bucket { tokens: burst, updated: now });
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
    }
}
