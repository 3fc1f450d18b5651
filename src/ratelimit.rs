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

/// Failed attempts per key within a fixed window: a key with `max` failures in the
/// current window is held back until the window ends. Only failures count, so a client
/// that gets it right is never slowed by others' mistakes.
#[derive(Debug)]
pub struct FailureCounter {
    max: u32,
    window: std::time::Duration,
    failures: dashmap::DashMap<String, (u32, std::time::Instant)>,
}

impl FailureCounter {
    /// At most `max` failures per key per `window` (0 is treated as 1).
    pub fn new(max: u32, window: std::time::Duration) -> Self {
        Self { max: max.max(1), window, failures: dashmap::DashMap::new() }
    }

    /// Failures of `key` in its current window.
    pub fn count(&self, key: &str) -> u32 {
        self.failures.get(key).filter(|e| e.1.elapsed() < self.window).map_or(0, |e| e.0)
    }

    /// `key`'s entry, restarted if its window has ended.
    fn current(&self, key: &str) -> dashmap::mapref::one::RefMut<'_, String, (u32, std::time::Instant)> {
        let mut e = self.failures.entry(key.to_owned()).or_insert((0, std::time::Instant::now()));
        if e.1.elapsed() >= self.window {
            *e = (0, std::time::Instant::now());
        }
        e
    }

    /// Reserves an attempt of `key`: it counts as a failure from now on (until
    /// [`FailureCounter::refund`] or [`FailureCounter::clear`]), so concurrent attempts
    /// cannot all pass one check. `Ok` with the failures before it, or the seconds to wait.
    pub fn reserve(&self, key: &str) -> Result<u32, u64> {
        let mut e = self.current(key);
        if e.0 >= self.max {
            return Err(self.window.saturating_sub(e.1.elapsed()).as_secs().max(1));
        }
        e.0 += 1;
        Ok(e.0 - 1)
    }

    /// Gives back one reserved attempt of `key` (it did not fail).
    pub fn refund(&self, key: &str) {
        if let Some(mut e) = self.failures.get_mut(key) {
            e.0 = e.0.saturating_sub(1);
        }
        self.failures.remove_if(key, |_, e| e.0 == 0);
    }

    /// Counts a failure of `key`.
    pub fn record(&self, key: &str) {
        self.current(key).0 += 1;
    }

    /// Forgets `key`'s failures (it succeeded).
    pub fn clear(&self, key: &str) {
        self.failures.remove(key);
    }

    /// Forgets keys whose window has ended.
    pub fn prune(&self) {
        self.failures.retain(|_, e| e.1.elapsed() < self.window);
        self.failures.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_hold_a_key_back_and_success_clears_it() {
        let f = FailureCounter::new(2, std::time::Duration::from_secs(60));
        f.record("a");
        assert_eq!(f.count("a"), 1, "one failure of two");
        f.record("a");
        let wait = f.reserve("a").expect_err("held back");
        assert!((1..=60).contains(&wait));
        assert_eq!((f.count("a"), f.count("b")), (2, 0));
        assert_eq!(f.reserve("b"), Ok(0), "other keys unaffected");
        f.clear("a");
        assert_eq!(f.count("a"), 0);
        // Reservations count at once: the third of three concurrent attempts is refused.
        let r = FailureCounter::new(2, std::time::Duration::from_secs(60));
        assert_eq!(r.reserve("k"), Ok(0));
        assert_eq!(r.reserve("k"), Ok(1));
        assert!(r.reserve("k").is_err());
        r.refund("k");
        assert_eq!(r.count("k"), 1, "a refunded attempt no longer counts");
        let short = FailureCounter::new(1, std::time::Duration::from_millis(0));
        short.record("x");
        assert_eq!(short.reserve("x"), Ok(0), "a window that ended holds nothing");
    }

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
