//! Token buckets on the simulated clock and the per-account ledger.

use serde::{Deserialize, Serialize};

/// A token bucket: holds at most `cap` units, refills at `cap` per minute of simulated time.
/// A take may drive the level negative (output tokens are only known after generation); the
/// bucket then admits nothing until it refills above zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub level: f64,
    pub cap: f64,
    /// Simulated seconds of the last refill.
    pub last: f64,
}

impl Bucket {
    pub fn full(per_minute: f64, now: f64) -> Bucket {
        Bucket {
            level: per_minute,
            cap: per_minute,
            last: now,
        }
    }

    pub fn refill(&mut self, now: f64) {
        if now > self.last {
            self.level = (self.level + self.cap * (now - self.last) / 60.0).min(self.cap);
            self.last = now;
        }
    }

    /// Whether `amount` is available now (after refill). Does not take it.
    pub fn has(&mut self, now: f64, amount: f64) -> bool {
        self.refill(now);
        self.level >= amount
    }

    pub fn take(&mut self, amount: f64) {
        self.level -= amount;
    }

    /// Change the per-minute limit (e.g. a provider raising limits mid-campaign).
    pub fn set_limit(&mut self, per_minute: f64, now: f64) {
        self.refill(now);
        self.cap = per_minute;
        self.level = self.level.min(per_minute);
    }
}

/// What an account consumed and paid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Ledger {
    pub requests: u64,
    pub throttled: u64,
    pub input_tokens: u64,
    /// Output tokens returned to the caller.
    pub output_tokens: u64,
    /// Reasoning tokens generated and billed but not returned.
    pub hidden_reasoning_tokens: u64,
    pub spend_usd: f64,
}

impl Ledger {
    pub fn add(&mut self, o: &Ledger) {
        self.requests += o.requests;
        self.throttled += o.throttled;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.hidden_reasoning_tokens += o.hidden_reasoning_tokens;
        self.spend_usd += o.spend_usd;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate_and_caps() {
        let mut b = Bucket::full(60.0, 0.0); // one unit per second
        assert!(b.has(0.0, 60.0));
        b.take(60.0);
        assert!(!b.has(0.0, 1.0));
        assert!(!b.has(0.5, 1.0));
        assert!(b.has(1.0, 1.0));
        assert!((b.level - 1.0).abs() < 1e-12);
        assert!(b.has(1000.0, 60.0));
        assert_eq!(b.level, 60.0); // capped
                                   // Debt: a take may overdraw; nothing is admitted until the level is back up.
        b.take(90.0);
        assert!(!b.has(1000.0, 0.0));
        assert!(!b.has(1029.0, 0.0));
        assert!(b.has(1030.0, 0.0));
    }

    #[test]
    fn raising_the_limit_mid_campaign() {
        let mut b = Bucket::full(10.0, 0.0);
        b.take(10.0);
        b.set_limit(120.0, 0.0);
        assert!(b.has(30.0, 60.0)); // 2 per second for 30 s
    }
}
