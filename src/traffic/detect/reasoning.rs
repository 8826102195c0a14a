//! Reasoning elicitation: an account whose queries mostly ask for a reasoning trace.

use super::Features;

pub fn fires(max_share: f64, f: &Features) -> bool {
    f.reasoning as f64 / f.total.max(1) as f64 > max_share
}
