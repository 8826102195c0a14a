//! Limit tracking, the tripwire: accounts whose use jumps when the provider changes its rate
//! limits. Each account's queries are counted in the span of `limit_jump_hours` before the
//! change and in the same span after it; once both spans are over, an account with at least
//! `limit_jump_min` queries before is flagged when after / before reaches the threshold.
//! Users whose demand does not depend on the limit keep their ratio near 1 (Poisson noise).
//!
//! Saturation (use close to the limit) is not a separate detector: at the reported pace
//! (~26 queries per account per day against 50 requests per minute) no account comes near its
//! limit, so the jump is the only trace a limit change leaves.

use super::Features;

/// The spans around a change: `[start, change)` and `[change, end)`, in minutes.
#[derive(Clone, Copy, Debug)]
pub struct Spans {
    pub start: u32,
    pub change: u32,
    pub end: u32,
}

impl Spans {
    pub fn new(change_minute: u32, hours: f64) -> Spans {
        let w = (hours * 60.0).round().max(1.0) as u32;
        Spans {
            start: change_minute.saturating_sub(w),
            change: change_minute,
            end: change_minute.saturating_add(w),
        }
    }

    /// Count a query at `minute`.
    #[inline]
    pub fn observe(&self, minute: u32, f: &mut Features) {
        if minute >= self.start && minute < self.end {
            f.around_change[(minute >= self.change) as usize] += 1;
        }
    }
}

pub fn fires(ratio: f64, min_before: u32, f: &Features) -> bool {
    let [before, after] = f.around_change;
    before >= min_before && after as f64 >= ratio * before as f64
}
