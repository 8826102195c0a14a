//! Skill concentration: an account whose skill queries go mostly to one skill.

use super::Features;
use crate::world::Skill;

/// Share of skill queries on the most-asked skill (both tiers).
pub fn concentration(f: &Features) -> f64 {
    let per_skill = (0..Skill::ALL.len()).map(|s| f.kinds[2 * s] + f.kinds[2 * s + 1]);
    let (total, max) = per_skill.fold((0u32, 0u32), |(t, m), c| (t + c, m.max(c)));
    if total == 0 {
        0.0
    } else {
        max as f64 / total as f64
    }
}

pub fn fires(threshold: f64, f: &Features) -> bool {
    concentration(f) > threshold
}
