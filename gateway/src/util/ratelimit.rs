//! Rate-limited logging of repeated events.
//!
//! Promise: for each key, the first event is let through, then at most one
//! per `interval`, and the let-through event carries how many were held
//! back since the previous one. Nothing is counted twice or lost from the
//! count.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets through at most one event per key per interval.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    state: Mutex<HashMap<String, (Instant, u64)>>,
}

impl RateLimiter {
    /// A limiter with the given interval.
    pub fn new(interval: Duration) -> Self {
        Self { interval, state: Mutex::new(HashMap::new()) }
    }

    /// Records an event for `key` at `now`. Returns `Some(suppressed)` when
    /// it should be logged, with the number of events held back before it.
    pub fn check_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.get_mut(key) {
            None => {
                s.insert(key.to_owned(), (now, 0));
                Some(0)
            }
            Some((last, held)) => {
                if now.duration_since(*last) >= self.interval {
                    let n = *held;
                    *last = now;
                    *held = 0;
                    Some(n)
                } else {
                    *held += 1;
                    None
                }
            }
        }
    }

    /// [`check_at`](Self::check_at) with the current time.
    pub fn check(&self, key: &str) -> Option<u64> {
        self.check_at(key, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_passes_then_one_per_interval_with_the_held_count() {
        let r = RateLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.check_at("a", t0), Some(0));
        assert_eq!(r.check_at("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(r.check_at("a", t0 + Duration::from_secs(2)), None);
        assert_eq!(r.check_at("b", t0 + Duration::from_secs(2)), Some(0), "keys are independent");
        assert_eq!(r.check_at("a", t0 + Duration::from_secs(11)), Some(2));
        assert_eq!(r.check_at("a", t0 + Duration::from_secs(12)), None);
    }
}
