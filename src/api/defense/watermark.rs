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

/// A provenance test calibrated on other keys: the green share of `responses` under `key`
/// (repeated (previous, token) pairs count once per response, not once overall, so that a
/// model's *preference* for green continuations shows), standardised by the green shares of the
/// same text under `null_keys` other keys. Under the null (text unrelated to the key) the keys
/// are exchangeable, so `z` is roughly standard normal whatever the text's own repetitions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Provenance {
    /// Scored pairs (per-response de-duplication).
    pub n: usize,
    /// Green share under the key.
    pub green_share: f64,
    /// (share - mean of null shares) / standard deviation of null shares.
    pub z: f64,
    /// Share of null keys scoring at least as high (with the +1 correction).
    pub p_value: f64,
}

pub fn provenance<'a>(
    key: u64,
    gamma: f32,
    responses: impl IntoIterator<Item = &'a [Tok]> + Clone,
    null_keys: usize,
) -> Provenance {
    let pairs: Vec<(Tok, Tok)> = responses
        .into_iter()
        .flat_map(|r| {
            let mut seen = std::collections::HashSet::new();
            let mut prev = SEP;
            let mut out = Vec::new();
            for &t in r {
                if t == crate::world::vocab::EOS {
                    break;
                }
                if seen.insert((prev, t)) {
                    out.push((prev, t));
                }
                prev = t;
            }
            out
        })
        .collect();
    let share = |list: &GreenList| {
        let g = pairs.iter().filter(|&&(p, t)| list.is_green(p, t)).count();
        g as f64 / pairs.len().max(1) as f64
    };
    let own = share(&GreenList::new(key, gamma));
    // Null keys derived from the key, never equal to it.
    let nulls: Vec<f64> = (0..null_keys as u64)
        .map(|i| {
            share(&GreenList::new(
                crate::rng::derive_seed(key, &format!("null/{i}")),
                gamma,
            ))
        })
        .collect();
    let mean = nulls.iter().sum::<f64>() / nulls.len().max(1) as f64;
    let sd = (nulls.iter().map(|x| (x - mean).powi(2)).sum::<f64>()
        / (nulls.len().max(2) - 1) as f64)
        .sqrt();
    let above = nulls.iter().filter(|&&x| x >= own).count();
    Provenance {
        n: pairs.len(),
        green_share: own,
        z: if sd > 0.0 { (own - mean) / sd } else { 0.0 },
        p_value: (above + 1) as f64 / (nulls.len() + 1) as f64,
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

    #[test]
    fn calibrated_provenance_is_null_on_repetitive_unrelated_text_and_high_on_marked_text() {
        // Very repetitive text (a handful of patterns, as a small model's answers are): the
        // key-calibrated z stays near 0 over many keys; text sampled with the key scores high.
        let mut rng = derive_rng(6, "t");
        let patterns: Vec<Vec<Tok>> = (0..5)
            .map(|_| (0..8).map(|_| rng.random_range(10..60)).collect())
            .collect();
        let texts: Vec<Vec<Tok>> = (0..400).map(|i| patterns[i % 5].clone()).collect();
        let zs: Vec<f64> = (0..60)
            .map(|key| provenance(key, 0.25, texts.iter().map(|t| t.as_slice()), 100).z)
            .collect();
        let mean = zs.iter().sum::<f64>() / zs.len() as f64;
        assert!(mean.abs() < 0.4, "mean null z {mean}");
        assert!(zs.iter().filter(|z| z.abs() > 3.0).count() <= 2, "{zs:?}");
        let list = GreenList::new(11, 0.25);
        let marked: Vec<Vec<Tok>> = (0..40).map(|_| text(&mut rng, &list, 2.0, 30)).collect();
        let p = provenance(11, 0.25, marked.iter().map(|t| t.as_slice()), 100);
        assert!(p.z > 4.0 && p.p_value < 0.02, "{p:?}");
    }
}
