//! The local rate limit's limiter: a token bucket shared by every worker and the filter's
//! stats, built once per filter config (the HCM's, or a route's own). A leaf module: route
//! tables hold per-route limiters without importing the filter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pinion_xds::model::LocalRateLimitConfig;

use crate::stats::{Counter, Prom, Store};

/// Envoy's `<stat_prefix>.http_local_rate_limit.*` stats.
pub struct LocalRateLimitStats {
    /// `enabled`: requests the filter was enabled for.
    pub enabled: Counter,
    /// `enforced`: requests answered with the rate-limit status.
    pub enforced: Counter,
    /// `rate_limited`: requests that found the bucket empty (enforced or not).
    pub rate_limited: Counter,
    /// `ok`: requests that got a token.
    pub ok: Counter,
    /// `shadow_mode`: limited requests let through by the filter's shadow mode (Pinion has
    /// no shadow mode setting, so it stays 0; Envoy prints it all the same).
    pub shadow_mode: Counter,
}

impl LocalRateLimitStats {
    fn new(store: &Store, stat_prefix: &str) -> Self {
        let c = |name: &str| {
            let full = format!("{stat_prefix}.http_local_rate_limit.{name}");
            store.counter(&full, Prom::plain(&full))
        };
        LocalRateLimitStats {
            enabled: c("enabled"),
            enforced: c("enforced"),
            rate_limited: c("rate_limited"),
            ok: c("ok"),
            shadow_mode: c("shadow_mode"),
        }
    }
}

/// A token bucket shared by all workers, one atomic wide (Envoy's `AtomicTokenBucketImpl`):
/// tokens come back continuously at `tokens_per_fill` per `fill_interval`, up to `max_tokens`,
/// and the bucket starts full. The atomic holds the moment the bucket was (or would be)
/// empty, so taking a token is one compare-and-swap and never a lock.
pub struct TokenBucket {
    /// Nanoseconds per token.
    per_token_ns: u64,
    /// Nanoseconds to fill the bucket from empty.
    full_ns: u64,
    /// When the bucket is empty, in ns on the bucket's clock (see `now_ns`).
    empty_at: AtomicU64,
    epoch: Instant,
}

impl TokenBucket {
    /// A full bucket; `None` for a bucket that never gives tokens (`max_tokens: 0`).
    pub fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> Self {
        let per_token_ns = (fill_interval.as_nanos() as u64 / u64::from(tokens_per_fill.max(1))).max(1);
        TokenBucket {
            per_token_ns,
            full_ns: per_token_ns.saturating_mul(u64::from(max_tokens)),
            empty_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The bucket's clock: starts at `full_ns`, so a bucket "empty at 0" starts full.
    fn now_ns(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() as u64).saturating_add(self.full_ns)
    }

    /// Take one token at `now`.
    pub fn consume(&self, now: Instant) -> bool {
        if self.full_ns == 0 {
            return false;
        }
        let now = self.now_ns(now);
        let floor = now - self.full_ns;
        self.empty_at
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |empty_at| {
                let next = empty_at.max(floor) + self.per_token_ns;
                (next <= now).then_some(next)
            })
            .is_ok()
    }

    /// How long until the next token (for `retry-after`).
    pub fn until_next_token(&self, now: Instant) -> Duration {
        let now = self.now_ns(now);
        let next = self.empty_at.load(Ordering::Acquire) + self.per_token_ns;
        Duration::from_nanos(next.saturating_sub(now))
    }
}

/// One rate limit: a config, its bucket and its stats (the HCM's filter, or a route's).
pub struct LocalRateLimit {
    /// The config.
    pub config: Arc<LocalRateLimitConfig>,
    /// The bucket (`None`: no bucket configured, every request passes).
    pub bucket: Option<TokenBucket>,
    /// The stats.
    pub stats: LocalRateLimitStats,
}

impl LocalRateLimit {
    /// A limiter for `config`, with a fresh bucket.
    pub fn new(config: Arc<LocalRateLimitConfig>, store: &Store) -> Self {
        let bucket = config.token_bucket.map(|b| TokenBucket::new(b.max_tokens, b.tokens_per_fill, b.fill_interval));
        let stats = LocalRateLimitStats::new(store, &config.stat_prefix);
        LocalRateLimit { config, bucket, stats }
    }

    /// Its stats.
    pub fn stats(&self) -> &LocalRateLimitStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_starts_full_and_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 3, Duration::from_secs(3));
        b.epoch = t0;
        // A burst takes exactly max_tokens.
        let burst: Vec<bool> = (0..5).map(|_| b.consume(t0)).collect();
        assert_eq!(burst, vec![true, true, true, false, false]);
        // One token per second comes back, never more than max_tokens.
        assert!(!b.consume(t0 + Duration::from_millis(999)));
        assert!(b.consume(t0 + Duration::from_millis(1000)));
        assert!(!b.consume(t0 + Duration::from_millis(1001)));
        let later = t0 + Duration::from_secs(100);
        assert_eq!((0..5).filter(|_| b.consume(later)).count(), 3);
        assert_eq!(b.until_next_token(later), Duration::from_secs(1));
    }

    #[test]
    fn zero_tokens_never_allows() {
        let b = TokenBucket::new(0, 1, Duration::from_secs(1));
        assert!(!b.consume(Instant::now() + Duration::from_secs(10)));
    }

    #[test]
    fn shared_by_threads_without_overcounting() {
        let b = Arc::new(TokenBucket::new(1000, 1, Duration::from_secs(3600)));
        let now = Instant::now();
        let granted: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let b = b.clone();
                    s.spawn(move || (0..500).filter(|_| b.consume(now)).count())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 1000);
    }
}
