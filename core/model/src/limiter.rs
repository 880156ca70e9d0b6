//! A token bucket on explicit time, and the budget (rate, burst) it is configured from. The
//! scheduler's per-shard dispatch budget and the receiver's safety-net limiter are both built on it.
//!
//! Pure: time comes in as an argument ([`tokio::time::Instant`], so tests run on paused time).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A rate budget: a sustained rate and a burst (a shard's dispatch budget, shared by every
/// scheduler; a receiver's launch limit).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Sustained dispatches per second toward the shard (all schedulers together).
    pub rate: f64,
    /// Dispatches that may go at once after a quiet period (all schedulers together).
    pub burst: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            rate: 200.0,
            burst: 400,
        }
    }
}

impl BudgetConfig {
    /// Checks the values; `key` names the configuration key in messages.
    ///
    /// # Errors
    /// A message naming the key and what would be valid.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate >= 0.001 && self.rate <= 1_000_000.0) {
            return Err(format!(
                "{key}.rate: {} is not a rate; use dispatches per second between 0.001 and 1000000",
                self.rate
            ));
        }
        if self.burst == 0 || self.burst > 1_000_000 {
            return Err(format!(
                "{key}.burst: {} must be between 1 and 1000000",
                self.burst
            ));
        }
        Ok(())
    }
}

/// A token bucket on explicit time.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    #[must_use]
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Changes rate and burst from `now` on (tokens earned so far are kept, capped at the burst).
    pub fn reconfigure(&mut self, rate: f64, burst: f64, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.burst = burst.max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    /// Takes a token, or returns how long until one is available.
    ///
    /// # Errors
    /// The wait until the next token.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(Duration::from_secs_f64(missing / self.rate.max(1e-9))
                .max(Duration::from_micros(50)))
        }
    }

    /// Gives back a token taken for a dispatch that did not happen.
    pub fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }

    /// Tokens available now (fractional).
    #[must_use]
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Spends every saved token (the next one comes after `1 / rate`).
    pub fn empty(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = 0.0;
    }

    /// The current rate.
    #[must_use]
    pub fn rate(&self) -> f64 {
        self.rate
    }
}
