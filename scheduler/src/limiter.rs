//! The per-shard dispatch budget: a token bucket whose rate is this scheduler's share of the
//! shard's configured budget, adjusted by AIMD when the shard answers "slow down".
//!
//! Everything here is pure: time comes in as an argument ([`tokio::time::Instant`], so the
//! dispatcher's tests run on paused time), nothing sleeps and nothing spawns.
//!
//! * **Token bucket**: `burst` tokens at most, refilled continuously at `rate` per second. A
//!   dispatch takes one token; without one, [`TokenBucket::try_acquire`] says how long to wait.
//!   Over any window of `t` seconds it lets through at most `burst + rate × t` dispatches.
//! * **Share**: with `n` live schedulers (owner leases in the run store), each one's ceiling is
//!   `rate / n` and its burst `max(1, burst / n)`, so together they stay within the shard's budget.
//! * **AIMD**: a "slow down" answer (`RESOURCE_EXHAUSTED`) halves the current rate (at most once
//!   per [`DECREASE_WINDOW`], so one overloaded moment answered to many in-flight dispatches
//!   counts once), never below [`FLOOR_FRACTION`] of the ceiling; the rate then climbs back
//!   linearly to the ceiling over `recovery`.

use std::time::Duration;

pub use nexus_model::limiter::{BudgetConfig, TokenBucket};
use tokio::time::Instant;

/// Slow-down answers closer together than this halve the rate once.
pub const DECREASE_WINDOW: Duration = Duration::from_millis(500);
/// The rate never drops below this fraction of the ceiling (so a shard that said "slow down"
/// keeps being probed and the rate can recover).
pub const FLOOR_FRACTION: f64 = 1.0 / 64.0;

/// This scheduler's budget toward one shard: its share of the configured budget, AIMD-adjusted.
#[derive(Debug, Clone)]
pub struct ShardBudget {
    config: BudgetConfig,
    recovery: Duration,
    replicas: u32,
    /// Current rate (≤ ceiling).
    current: f64,
    last_decrease: Option<Instant>,
    last_tick: Instant,
    bucket: TokenBucket,
}

impl ShardBudget {
    /// A budget alone on the shard (one replica), full bucket.
    #[must_use]
    pub fn new(config: BudgetConfig, recovery: Duration, now: Instant) -> Self {
        Self {
            config,
            recovery,
            replicas: 1,
            current: config.rate,
            last_decrease: None,
            last_tick: now,
            bucket: TokenBucket::new(config.rate, f64::from(config.burst), now),
        }
    }

    /// This scheduler's ceiling: its share of the configured rate.
    #[must_use]
    pub fn ceiling(&self) -> f64 {
        self.config.rate / f64::from(self.replicas)
    }

    fn burst_share(&self) -> f64 {
        (f64::from(self.config.burst) / f64::from(self.replicas)).max(1.0)
    }

    /// The rate in force now.
    #[must_use]
    pub fn current_rate(&self) -> f64 {
        self.current
    }

    /// Live schedulers sharing the shard (at least 1).
    #[must_use]
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// Sets the number of live schedulers sharing the shard; the rate scales with the share.
    pub fn set_replicas(&mut self, n: u32, now: Instant) {
        let n = n.max(1);
        if n == self.replicas {
            return;
        }
        self.tick(now);
        let fraction = self.current / self.ceiling();
        self.replicas = n;
        self.current = (self.ceiling() * fraction).min(self.ceiling());
        self.bucket
            .reconfigure(self.current, self.burst_share(), now);
    }

    /// Additive increase since the last call.
    fn tick(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last_tick).as_secs_f64();
        self.last_tick = now;
        let ceiling = self.ceiling();
        if self.current < ceiling {
            let per_sec = ceiling / self.recovery.as_secs_f64().max(0.001);
            self.current = (self.current + per_sec * dt).min(ceiling);
            self.bucket
                .reconfigure(self.current, self.burst_share(), now);
        }
    }

    /// Takes a dispatch token, or returns how long to wait for one.
    ///
    /// # Errors
    /// The wait until the next token.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        self.tick(now);
        self.bucket.try_acquire(now)
    }

    /// Gives back a token taken for a dispatch that did not happen.
    pub fn refund(&mut self) {
        self.bucket.refund();
    }

    /// Starts from an empty bucket: a scheduler that has just started cannot know yet how many
    /// others share the shard, so it spends no burst until it has run at its rate for a while.
    pub fn start_empty(&mut self, now: Instant) {
        self.bucket.empty(now);
    }

    /// The shard answered "slow down": halve the rate (once per [`DECREASE_WINDOW`]).
    /// Returns true when the rate was halved.
    pub fn slow_down(&mut self, now: Instant) -> bool {
        self.tick(now);
        if self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < DECREASE_WINDOW)
        {
            return false;
        }
        self.last_decrease = Some(now);
        self.current = (self.current / 2.0).max(self.ceiling() * FLOOR_FRACTION);
        // Nothing saved up may be spent at the old rate.
        self.bucket.reconfigure(
            self.current,
            self.burst_share().min(self.current.max(1.0)),
            now,
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn cfg(rate: f64, burst: u32) -> BudgetConfig {
        BudgetConfig { rate, burst }
    }

    /// Dispatches taken in `secs` seconds when asking every millisecond.
    fn drain(b: &mut ShardBudget, start: Instant, secs: u64) -> usize {
        let mut n = 0;
        for ms in 0..secs * 1000 {
            let now = start + Duration::from_millis(ms);
            while b.try_acquire(now).is_ok() {
                n += 1;
            }
        }
        n
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let now = t0();
        let mut b = TokenBucket::new(10.0, 5.0, now);
        for _ in 0..5 {
            assert!(b.try_acquire(now).is_ok());
        }
        let wait = b.try_acquire(now).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert!(b.try_acquire(now + Duration::from_millis(100)).is_ok());
        b.refund();
        assert!(b.try_acquire(now + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn window_bound_holds() {
        let now = t0();
        let mut b = ShardBudget::new(cfg(100.0, 20), Duration::from_secs(10), now);
        let n = drain(&mut b, now, 10);
        // burst + rate × t, within rounding of the last token.
        assert!(n <= 20 + 1000 + 1, "{n}");
        assert!(n >= 20 + 1000 - 1, "{n}");
    }

    #[test]
    fn share_divides_rate_and_burst() {
        let now = t0();
        let mut b = ShardBudget::new(cfg(90.0, 30), Duration::from_secs(10), now);
        b.set_replicas(3, now);
        assert!((b.ceiling() - 30.0).abs() < 1e-9);
        assert!((b.current_rate() - 30.0).abs() < 1e-9);
        // Tokens were capped at the new burst (10).
        let n = drain(&mut b, now, 10);
        assert!(n <= 10 + 300 + 1, "{n}");
        b.set_replicas(1, now + Duration::from_secs(10));
        assert!((b.current_rate() - 90.0).abs() < 1e-9);
    }

    #[test]
    fn slow_down_halves_once_per_window_and_recovers_additively() {
        let now = t0();
        let mut b = ShardBudget::new(cfg(100.0, 10), Duration::from_secs(10), now);
        assert!(b.slow_down(now));
        assert!((b.current_rate() - 50.0).abs() < 1e-9);
        // A burst of answers from the same moment counts once.
        assert!(!b.slow_down(now + Duration::from_millis(100)));
        // (and it kept climbing: 50 + 10/s × 0.1 s)
        assert!((b.current_rate() - 51.0).abs() < 1e-6);
        assert!(b.slow_down(now + Duration::from_millis(600)));
        // 50 + 10/s × 0.6 s = 56, halved = 28.
        assert!(
            (b.current_rate() - 28.0).abs() < 1e-6,
            "{}",
            b.current_rate()
        );
        // Recovery: 10 per second back to the ceiling.
        let _ = b.try_acquire(now + Duration::from_millis(2600));
        assert!(
            (b.current_rate() - 48.0).abs() < 1e-6,
            "{}",
            b.current_rate()
        );
        let _ = b.try_acquire(now + Duration::from_secs(60));
        assert!((b.current_rate() - 100.0).abs() < 1e-9);
    }

    #[test]
    fn rate_never_falls_below_floor() {
        let now = t0();
        let mut b = ShardBudget::new(cfg(64.0, 10), Duration::from_secs(1000), now);
        for i in 0..40 {
            b.slow_down(now + DECREASE_WINDOW * i);
        }
        assert!(b.current_rate() >= 1.0 - 1e-6, "{}", b.current_rate());
    }

    #[test]
    fn config_validation_names_the_key() {
        assert!(cfg(0.0, 1).validate("k").unwrap_err().starts_with("k.rate"));
        assert!(cfg(f64::NAN, 1).validate("k").is_err());
        assert!(
            cfg(1.0, 0)
                .validate("k")
                .unwrap_err()
                .starts_with("k.burst")
        );
        assert!(BudgetConfig::default().validate("k").is_ok());
    }
}
