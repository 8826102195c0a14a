//! Volume: an account sending more queries in the current simulated day than a threshold.

use super::Features;

pub fn fires(per_day: u32, f: &Features) -> bool {
    f.today > per_day
}
