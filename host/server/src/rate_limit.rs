//! Rate limits per tenant, by the rate-limit class the auth plugin gives
//! the principal: each configured class allows so many requests per
//! minute, as a token bucket per tenant (full at a minute's worth,
//! refilling continuously). A request beyond it is a 429 with the seconds
//! until the next one fits. A class the server does not configure, and a
//! server without auth, are unlimited.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use crate::error::ApiError;

/// What one class allows.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// Requests per minute, per tenant (at least 1).
    pub requests_per_minute: u32,
}

/// Most tenants tracked at once; beyond it, buckets that are full again
/// (their tenant has been idle long enough) are forgotten.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The server's classes and every tenant's bucket.
#[derive(Debug, Default)]
pub struct RateLimiter {
    classes: BTreeMap<String, RateLimit>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(classes: BTreeMap<String, RateLimit>) -> Self {
        Self { classes, buckets: Mutex::default() }
    }

    /// Take one request from `tenant`'s bucket under `class`, or say how
    /// many seconds until one is there.
    pub fn admit(&self, tenant: &str, class: &str) -> Result<(), ApiError> {
        self.admit_at(tenant, class, Instant::now())
    }

    fn admit_at(&self, tenant: &str, class: &str, now: Instant) -> Result<(), ApiError> {
        let Some(limit) = self.classes.get(class) else { return Ok(()) };
        let capacity = f64::from(limit.requests_per_minute.max(1));
        let per_second = capacity / 60.0;
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(()) };
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(tenant) {
            buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second < capacity);
        }
        let bucket = buckets.entry(tenant.to_string()).or_insert(Bucket { tokens: capacity, at: now });
        bucket.tokens = (bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * per_second).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u32;
        Err(ApiError::RateLimited { tenant: tenant.to_string(), class: class.to_string(), limit: limit.requests_per_minute, retry_after_s: wait })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_class_allows_its_requests_per_minute_then_refills() {
        let limiter = RateLimiter::new([("tiny".to_string(), RateLimit { requests_per_minute: 2 })].into());
        let t0 = Instant::now();
        assert!(limiter.admit_at("a", "tiny", t0).is_ok());
        assert!(limiter.admit_at("a", "tiny", t0).is_ok());
        match limiter.admit_at("a", "tiny", t0) {
            Err(ApiError::RateLimited { retry_after_s, .. }) => assert_eq!(retry_after_s, 30, "one request every 30 s"),
            other => panic!("{other:?}"),
        }
        // Other tenants, other classes and unconfigured classes are apart.
        assert!(limiter.admit_at("b", "tiny", t0).is_ok());
        assert!(limiter.admit_at("a", "unconfigured", t0).is_ok());
        // Half a minute later one more fits, not two.
        let later = t0 + Duration::from_secs(30);
        assert!(limiter.admit_at("a", "tiny", later).is_ok());
        assert!(limiter.admit_at("a", "tiny", later).is_err());
    }
}
