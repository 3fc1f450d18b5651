//! Keyed rate limits (GCRA, via `governor`): a key may make `n` requests per minute, with
//! bursts of up to `n`. Used for login (per client address and per username) and
//! registration (per address). State for idle keys is pruned periodically, so the map
//! does not grow with every address ever seen.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

#[derive(Debug)]
pub struct KeyedLimiter {
    inner: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl KeyedLimiter {
    /// `per_minute` requests per key per minute; 0 is treated as 1.
    pub fn per_minute(per_minute: u32) -> Self {
        let n = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Self { inner: RateLimiter::dashmap(Quota::per_minute(n)), clock: DefaultClock::default() }
    }

    /// `Ok` if `key` may proceed; otherwise the seconds until it may (at least 1).
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let key = key.to_owned();
        self.inner.check_key(&key).map_err(|not_until| not_until.wait_time_from(self.clock.now()).as_secs().max(1))
    }

    /// Forgets keys whose state is back to full capacity.
    pub fn prune(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }

    /// Number of keys tracked (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_burst_then_refuses_per_key() {
        let l = KeyedLimiter::per_minute(3);
        for _ in 0..3 {
            assert!(l.check("a").is_ok());
        }
        let wait = l.check("a").expect_err("fourth refused");
        assert!((1..=60).contains(&wait), "retry after {wait}");
        assert!(l.check("b").is_ok(), "other keys unaffected");
    }
}
