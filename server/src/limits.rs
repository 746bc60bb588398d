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

/// How often, at most, a full key table is scanned for buckets that can be forgotten.
pub const PRUNE_INTERVAL_MS: u64 = 1000;

/// Token buckets per key, tracking at most `max_keys` keys.
///
/// When the table is full, a key it does not track is refused ([`Limited::TooManyKeys`],
/// by [`KeyedLimiter::check`] and [`KeyedLimiter::would_allow`] alike): a limiter that
/// cannot remember a key must not let it through unlimited. Forgetting idle keys (full
/// buckets carry no information) takes a scan of the table, done at most once every
/// [`PRUNE_INTERVAL_MS`], so a flood of new keys against a full table costs O(1) each.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, TokenBucket>,
    /// When the full table was last scanned.
    last_prune_ms: Option<u64>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter with the given rate per key.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self {
            rate,
            max_keys,
            buckets: HashMap::new(),
            last_prune_ms: None,
        }
    }

    /// Whether `key` has (or can get) a bucket: tracked already, or room in the table,
    /// possibly after forgetting idle keys (at most once per [`PRUNE_INTERVAL_MS`]).
    fn room_for(&mut self, key: &K, now_ms: u64) -> bool {
        if self.buckets.len() < self.max_keys || self.buckets.contains_key(key) {
            return true;
        }
        let due = self
            .last_prune_ms
            .is_none_or(|t| now_ms >= t.saturating_add(PRUNE_INTERVAL_MS));
        if due {
            self.last_prune_ms = Some(now_ms);
            self.buckets.retain(|_, b| !b.is_full(now_ms));
        }
        self.buckets.len() < self.max_keys
    }

    /// Take `n` tokens for `key`. `TooManyKeys` if `key` is new and the table is full.
    pub fn check(&mut self, key: &K, n: f64, now_ms: u64) -> Result<(), Limited> {
        if !self.room_for(key, now_ms) {
            return Err(Limited::TooManyKeys);
        }
        let rate = self.rate;
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(rate, now_ms))
            .try_take(n, now_ms)
            .map_err(Limited::RetryAfter)
    }

    /// Whether `key` could take `n` tokens now, without taking them: the answer
    /// [`KeyedLimiter::check`] would give. A new key is refused while the table is full
    /// (fail closed).
    pub fn would_allow(&mut self, key: &K, n: f64, now_ms: u64) -> Result<(), Limited> {
        if let Some(b) = self.buckets.get(key) {
            return b.clone().try_take(n, now_ms).map_err(Limited::RetryAfter);
        }
        if self.room_for(key, now_ms) {
            Ok(())
        } else {
            Err(Limited::TooManyKeys)
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
    fn a_full_table_refuses_new_keys_in_would_allow_too_and_prunes_at_most_periodically() {
        let mut l = KeyedLimiter::new(Rate::new(1.0, 1.0), 2);
        assert!(l.check(&1, 1.0, 0).is_ok());
        assert!(l.check(&2, 1.0, 0).is_ok());
        // Full: a new key may neither take nor be told it could (fail closed)...
        assert_eq!(l.would_allow(&3, 1.0, 0), Err(Limited::TooManyKeys));
        assert_eq!(l.check(&3, 1.0, 0), Err(Limited::TooManyKeys));
        // ...while tracked keys are answered by their bucket.
        assert!(matches!(
            l.would_allow(&1, 1.0, 0),
            Err(Limited::RetryAfter(_))
        ));
        assert_eq!(l.would_allow(&1, 1.0, 1000), Ok(()));
        // The table was scanned at 0; until PRUNE_INTERVAL_MS later it is not scanned
        // again, even though the buckets are full (idle) again by 1000 - 1.
        assert_eq!(
            l.check(&3, 1.0, PRUNE_INTERVAL_MS - 1),
            Err(Limited::TooManyKeys)
        );
        assert_eq!(l.len(), 2);
        // Then the idle buckets are forgotten and the new key gets one.
        assert_eq!(l.would_allow(&3, 1.0, PRUNE_INTERVAL_MS), Ok(()));
        assert!(l.check(&3, 1.0, PRUNE_INTERVAL_MS).is_ok());
        assert!(l.len() <= 2);
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
