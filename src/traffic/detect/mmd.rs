//! Distribution shift: MMD² between an account's prompt kinds and benign traffic's.

use super::{Features, N_KINDS};

/// MMD² with the Kronecker kernel on kinds: the squared L2 distance of the histograms.
pub fn mmd2(f: &Features, reference: &[f64; N_KINDS]) -> f64 {
    let n = f.total.max(1) as f64;
    f.kinds
        .iter()
        .zip(reference)
        .map(|(&c, &r)| (c as f64 / n - r).powi(2))
        .sum()
}

pub fn fires(threshold: f64, f: &Features, reference: &[f64; N_KINDS]) -> bool {
    mmd2(f, reference) > threshold
}
