//! Rate limits: token buckets keyed by address, device or pair, with a bound on the
//! number of keys tracked. Pure: the caller passes the time in milliseconds.

use std::collections::HashMap;
use std::hash::Hash;

/// A rate: `burst` tokens, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Rate {
    /// Sustained rate, tokens per second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: f64,
}

impl Rate {
    /// A rate of `per_second` with a bucket of `burst`.
    pub const fn new(per_second: f64, burst: f64) -> Self {
        Self { per_second, burst }
    }
}

/// A token bucket.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate, now_ms: u64) -> Self {
        Self {
            rate,
            tokens: rate.burst,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Take `n` tokens, or say in how many milliseconds they will be there.
    pub fn try_take(&mut self, n: f64, now_ms: u64) -> Result<(), u64> {
        self.refill(now_ms);
        if self.tokens >= n {
            self.tokens -= n;
            return Ok(());
        }
        if self.rate.per_second <= 0.0 {
            return Err(u64::MAX);
        }
        let wait = ((n - self.tokens) / self.rate.per_second * 1000.0).ceil();
        Err(wait.max(1.0) as u64)
    }

    /// True if the bucket is full (it carries no information and may be forgotten).
    pub fn is_full(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.tokens >= self.rate.burst
    }
}

/// Why a limiter refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limited {
    /// Retry after this many milliseconds.
    RetryAfter(u64),
    /// Too many distinct keys are being tracked; refuse until some go idle.
    TooManyKeys,
}

impl Limited {
    /// Milliseconds to suggest to the peer.
    pub fn retry_after_ms(self) -> u64 {
        match self {
            Self::RetryAfter(ms) => ms,
            Self::TooManyKeys => 1000,
        }
    }
}

/// Token buckets per key, tracking at most `max_keys` keys.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, TokenBucket>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter with the given rate per key.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self {
            rate,
            max_keys,
            buckets: HashMap::new(),
        }
    }

    /// Take `n` tokens for `key`.
    pub fn check(&mut self, key: &K, n: f64, now_ms: u64) -> Result<(), Limited> {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.buckets.retain(|_, b| !b.is_full(now_ms));
            if self.buckets.len() >= self.max_keys {
                return Err(Limited::TooManyKeys);
            }
        }
        let rate = self.rate;
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(rate, now_ms))
            .try_take(n, now_ms)
            .map_err(Limited::RetryAfter)
    }

    /// Whether `key` could take `n` tokens now, without taking them.
    pub fn would_allow(&mut self, key: &K, n: f64, now_ms: u64) -> bool {
        match self.buckets.get_mut(key) {
            None => true,
            Some(b) => {
                b.refill(now_ms);
                b.tokens >= n
            }
        }
    }

    /// Number of keys tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True if no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_and_says_when() {
        let mut b = TokenBucket::new(Rate::new(10.0, 2.0), 0);
        assert!(b.try_take(1.0, 0).is_ok());
        assert!(b.try_take(1.0, 0).is_ok());
        assert_eq!(b.try_take(1.0, 0), Err(100));
        assert!(b.try_take(1.0, 100).is_ok());
    }

    #[test]
    fn keyed_limiter_bounds_keys_and_forgets_idle_ones() {
        let mut l = KeyedLimiter::new(Rate::new(1.0, 1.0), 2);
        assert!(l.check(&1, 1.0, 0).is_ok());
        assert!(l.check(&2, 1.0, 0).is_ok());
        assert_eq!(l.check(&3, 1.0, 0), Err(Limited::TooManyKeys));
        // After a second both buckets are full again and can be forgotten.
        assert!(l.check(&3, 1.0, 1000).is_ok());
        assert!(l.len() <= 2);
        assert!(matches!(
            l.check(&3, 1.0, 1000),
            Err(Limited::RetryAfter(_))
        ));
    }
}
