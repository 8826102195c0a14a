//! KGW watermark (Kirchenbauer et al. 2023): a keyed green list per previous token; generation
//! adds `delta` to green logits; detection counts green tokens and reports a z-score.

use crate::rng::derive_rng;
use crate::world::vocab::{Tok, SEP, VOCAB_SIZE};
use rand::seq::SliceRandom;

/// Green lists for every previous token under one key.
#[derive(Clone, Debug)]
pub struct GreenList {
    /// `green[prev * V + tok]`.
    green: Vec<bool>,
    pub gamma: f32,
}

impl GreenList {
    /// `gamma`: share of the vocabulary that is green, in (0, 1).
    pub fn new(key: u64, gamma: f32) -> GreenList {
        let v = VOCAB_SIZE;
        let n_green = ((gamma * v as f32).round() as usize).clamp(1, v - 1);
        let mut green = vec![false; v * v];
        for prev in 0..v {
            let mut rng = derive_rng(key, &format!("watermark/{prev}"));
            let mut ids: Vec<usize> = (0..v).collect();
            ids.shuffle(&mut rng);
            for &t in &ids[..n_green] {
                green[prev * v + t] = true;
            }
        }
        GreenList {
            green,
            gamma: n_green as f32 / v as f32,
        }
    }

    pub fn is_green(&self, prev: Tok, tok: Tok) -> bool {
        let v = VOCAB_SIZE;
        let (p, t) = (prev as usize, tok as usize);
        p < v && t < v && self.green[p * v + t]
    }

    /// Add `delta` to the green logits given the previous token.
    pub fn bias(&self, prev: Tok, logits: &mut [f32], delta: f32) {
        let v = VOCAB_SIZE.min(logits.len());
        let row = &self.green[(prev as usize).min(VOCAB_SIZE - 1) * VOCAB_SIZE..][..v];
        for (l, &g) in logits.iter_mut().zip(row) {
            if g {
                *l += delta;
            }
        }
    }
}

/// Result of a watermark test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// Scored (previous, token) pairs after de-duplication.
    pub n: usize,
    pub green: usize,
    pub z: f64,
    /// One-sided p-value of `z` under the null (no watermark).
    pub p_value: f64,
}

/// Score responses (each scored from SEP onwards, EOS excluded). Each distinct
/// (previous, token) pair counts once, so repeated n-grams cannot inflate the score.
pub fn detect<'a>(list: &GreenList, responses: impl IntoIterator<Item = &'a [Tok]>) -> Detection {
    let mut seen = std::collections::HashSet::new();
    let mut green = 0usize;
    for r in responses {
        let mut prev = SEP;
        for &t in r {
            if t == crate::world::vocab::EOS {
                break;
            }
            if seen.insert((prev, t)) && list.is_green(prev, t) {
                green += 1;
            }
            prev = t;
        }
    }
    let n = seen.len();
    let g = list.gamma as f64;
    let z = if n == 0 {
        0.0
    } else {
        (green as f64 - g * n as f64) / (n as f64 * g * (1.0 - g)).sqrt()
    };
    Detection {
        n,
        green,
        z,
        p_value: 0.5 * erfc(z / std::f64::consts::SQRT_2),
    }
}

/// Complementary error function (Numerical Recipes' erfcc; relative error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398
                                    + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// Sample `n` tokens from uniform logits, optionally watermarked.
    fn text(rng: &mut crate::rng::SimRng, list: &GreenList, delta: f32, n: usize) -> Vec<Tok> {
        let mut out = Vec::with_capacity(n);
        let mut prev = SEP;
        for _ in 0..n {
            let mut logits = vec![0.0f32; VOCAB_SIZE];
            list.bias(prev, &mut logits, delta);
            let w: Vec<f32> = logits.iter().map(|l| l.exp()).collect();
            let mut u = rng.random::<f32>() * w.iter().sum::<f32>();
            let mut t = VOCAB_SIZE - 1;
            for (i, &x) in w.iter().enumerate() {
                if u < x {
                    t = i;
                    break;
                }
                u -= x;
            }
            out.push(t as Tok);
            prev = t as Tok;
        }
        out
    }

    #[test]
    fn z_is_standard_normal_without_watermark_and_large_with_it() {
        let mut rng = derive_rng(5, "t");
        let zs: Vec<f64> = (0..300)
            .map(|key| {
                let list = GreenList::new(key, 0.25);
                let t = text(&mut rng, &list, 0.0, 300);
                detect(&list, [t.as_slice()]).z
            })
            .collect();
        let mean = zs.iter().sum::<f64>() / zs.len() as f64;
        let var = zs.iter().map(|z| (z - mean).powi(2)).sum::<f64>() / (zs.len() - 1) as f64;
        assert!(mean.abs() < 0.2, "mean {mean}");
        assert!((var.sqrt() - 1.0).abs() < 0.15, "std {}", var.sqrt());
        let list = GreenList::new(7, 0.25);
        let t = text(&mut rng, &list, 2.0, 300);
        let d = detect(&list, [t.as_slice()]);
        assert!(d.z > 4.0 && d.p_value < 1e-4, "{d:?}");
        // The wrong key sees nothing.
        let other = GreenList::new(8, 0.25);
        assert!(detect(&other, [t.as_slice()]).z < 3.0);
    }

    #[test]
    fn repeated_ngrams_count_once() {
        let list = GreenList::new(1, 0.5);
        let t: Vec<Tok> = vec![20, 21, 20, 21, 20, 21];
        let once = detect(&list, [&t[..2]]);
        let d = detect(&list, [t.as_slice(), t.as_slice()]);
        assert_eq!(d.n, 3); // (SEP,20), (20,21), (21,20)
        assert!(d.n >= once.n);
        assert!(
            (erfc(0.0) - 1.0).abs() < 1e-7
                && (0.5 * erfc(4.0 / 2f64.sqrt()) - 3.167e-5).abs() < 1e-7
        );
    }
}
