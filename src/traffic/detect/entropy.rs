//! Template repetition: an account whose prompt kinds are concentrated on few kinds (low
//! normalised entropy of its kind histogram).

use super::{Features, N_KINDS};

/// Shannon entropy of the kind histogram over log(N_KINDS), in [0, 1].
pub fn entropy(f: &Features) -> f64 {
    let n = f.total as f64;
    if n == 0.0 {
        return 1.0;
    }
    let h: f64 = f
        .kinds
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum();
    h / (N_KINDS as f64).ln()
}

pub fn fires(min_entropy: f64, f: &Features) -> bool {
    entropy(f) < min_entropy
}
