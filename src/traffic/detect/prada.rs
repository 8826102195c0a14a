//! PRADA (Juuti et al. 2019): per account, the distribution of each new query's minimum
//! distance to the account's earlier queries; benign streams give roughly normal distances,
//! synthetic (perturbed-seed) streams do not. The Shapiro-Wilk statistic `W` of the recent
//! distances below a threshold flags the account.
//!
//! Queries are embedded by a fixed random projection of their bag of tokens (plus length), so
//! the replay keeps template indices, not text. Memory per account is bounded: the last
//! [`RECENT`] queries and the last [`DISTANCES`] minimum distances.

use crate::rng::derive_rng;
use crate::world::vocab::VOCAB_SIZE;
use crate::world::Prompt;

/// Embedding width.
pub const EMB_DIM: usize = 8;
/// Earlier queries a new query is compared with.
pub const RECENT: usize = 32;
/// New distances between two judgements of an account.
pub const JUDGE_EVERY: usize = 8;
/// Minimum distances kept for the normality test.
pub const DISTANCES: usize = 48;

/// A fixed projection of a prompt's bag of tokens (and its length) to [`EMB_DIM`] dimensions.
pub struct Embedder {
    proj: Vec<[f32; EMB_DIM]>,
}

impl Default for Embedder {
    fn default() -> Self {
        let mut rng = derive_rng(0, "traffic/embedding");
        let proj = (0..VOCAB_SIZE + 1)
            .map(|_| std::array::from_fn(|_| crate::rng::normal(&mut rng)))
            .collect();
        Embedder { proj }
    }
}

impl Embedder {
    pub fn embed(&self, p: &Prompt) -> [f32; EMB_DIM] {
        let mut e = [0.0f32; EMB_DIM];
        let n = p.tokens.len().max(1) as f32;
        for &t in &p.tokens {
            for (x, w) in e.iter_mut().zip(&self.proj[t as usize]) {
                *x += w / n;
            }
        }
        for (x, w) in e.iter_mut().zip(&self.proj[VOCAB_SIZE]) {
            *x += w * n / 16.0;
        }
        e
    }
}

#[inline]
fn dist2(a: &[f32; EMB_DIM], b: &[f32; EMB_DIM]) -> f32 {
    let mut s = 0.0;
    for i in 0..EMB_DIM {
        let d = a[i] - b[i];
        s += d * d;
    }
    s
}

/// One account's PRADA state: template references of recent queries and recent distances.
#[derive(Clone, Debug)]
pub struct PradaState {
    recent: [u32; RECENT],
    n_recent: usize,
    dists: [f32; DISTANCES],
    n_dists: usize,
    judged_at: usize,
}

impl Default for PradaState {
    fn default() -> Self {
        PradaState {
            recent: [0; RECENT],
            n_recent: 0,
            dists: [0.0; DISTANCES],
            n_dists: 0,
            judged_at: 0,
        }
    }
}

impl PradaState {
    /// Observe a query: template `t`, embeddings looked up through `emb`.
    #[inline]
    pub fn observe(&mut self, t: u32, emb: impl Fn(u32) -> [f32; EMB_DIM]) {
        let x = emb(t);
        let k = self.n_recent.min(RECENT);
        if k > 0 {
            let d = self.recent[..k]
                .iter()
                .map(|&r| dist2(&x, &emb(r)))
                .fold(f32::INFINITY, f32::min)
                .sqrt();
            self.dists[self.n_dists % DISTANCES] = d;
            self.n_dists += 1;
        }
        self.recent[self.n_recent % RECENT] = t;
        self.n_recent += 1;
    }

    /// Number of distances recorded so far.
    pub fn samples(&self) -> usize {
        self.n_dists
    }

    /// W if [`JUDGE_EVERY`] new distances have arrived since the last judgement.
    pub fn judge(&mut self) -> Option<f64> {
        if self.n_dists < self.judged_at + JUDGE_EVERY {
            return None;
        }
        self.judged_at = self.n_dists;
        self.w()
    }

    /// Shapiro-Wilk W of the recent minimum distances (None below 12 samples).
    pub fn w(&self) -> Option<f64> {
        let n = self.n_dists.min(DISTANCES);
        if n < 12 {
            return None;
        }
        static COEFFS: std::sync::OnceLock<Vec<Vec<f64>>> = std::sync::OnceLock::new();
        let table = COEFFS.get_or_init(|| {
            (0..=DISTANCES)
                .map(|n| if n < 12 { vec![] } else { sw_coefficients(n) })
                .collect()
        });
        let mut xs = [0.0f64; DISTANCES];
        for (x, &d) in xs.iter_mut().zip(&self.dists[..n]) {
            *x = d as f64;
        }
        Some(w_statistic(&mut xs[..n], &table[n]))
    }
}

/// Inverse of the standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9).
pub fn norm_ppf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The Shapiro-Wilk W statistic with Royston's (1992) approximation of the coefficients
/// (n >= 12). A constant sample has W = 1 by convention here (it cannot be tested).
pub fn shapiro_wilk(xs: &[f64]) -> f64 {
    let mut x = xs.to_vec();
    w_statistic(&mut x, &sw_coefficients(xs.len()))
}

/// W from the sample (sorted in place) and the coefficients for its size.
fn w_statistic(x: &mut [f64], a: &[f64]) -> f64 {
    let n = x.len();
    x.sort_by(f64::total_cmp);
    let mean = x.iter().sum::<f64>() / n as f64;
    let ss: f64 = x.iter().map(|v| (v - mean).powi(2)).sum();
    if ss <= 1e-18 {
        return 1.0;
    }
    let num: f64 = a.iter().zip(x.iter()).map(|(ai, xi)| ai * xi).sum::<f64>();
    (num * num / ss).min(1.0)
}

/// Royston's approximation of the Shapiro-Wilk coefficients for a sample of `n` (>= 12).
fn sw_coefficients(n: usize) -> Vec<f64> {
    let m: Vec<f64> = (1..=n)
        .map(|i| norm_ppf((i as f64 - 0.375) / (n as f64 + 0.25)))
        .collect();
    let msum: f64 = m.iter().map(|v| v * v).sum();
    let u = 1.0 / (n as f64).sqrt();
    let poly = |c: [f64; 6]| c[0] + u * (c[1] + u * (c[2] + u * (c[3] + u * (c[4] + u * c[5]))));
    let an = poly([
        m[n - 1] / msum.sqrt(),
        0.221157,
        -0.147981,
        -2.071190,
        4.434685,
        -2.706056,
    ]);
    let an1 = poly([
        m[n - 2] / msum.sqrt(),
        0.042981,
        -0.293762,
        -1.752461,
        5.682633,
        -3.582633,
    ]);
    let eps = (msum - 2.0 * m[n - 1].powi(2) - 2.0 * m[n - 2].powi(2))
        / (1.0 - 2.0 * an.powi(2) - 2.0 * an1.powi(2));
    let mut a: Vec<f64> = m.iter().map(|v| v / eps.sqrt()).collect();
    a[n - 1] = an;
    a[n - 2] = an1;
    a[0] = -an;
    a[1] = -an1;
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{derive_rng, normal_f64};
    use rand::Rng;

    #[test]
    fn shapiro_wilk_matches_reference_values() {
        // Values from scipy.stats.shapiro (scipy 1.17.1).
        let lin: Vec<f64> = (1..=20).map(|i| i as f64).collect();
        let mut out = vec![1.0; 19];
        out.push(50.0);
        let skew = [
            148.0, 154.0, 158.0, 160.0, 161.0, 162.0, 166.0, 170.0, 182.0, 195.0, 236.0, 240.0,
        ];
        for (xs, w) in [
            (&lin[..], 0.960375),
            (&out[..], 0.235874),
            (&skew[..], 0.787186),
        ] {
            assert!(
                (shapiro_wilk(xs) - w).abs() < 1e-3,
                "{} vs {w}",
                shapiro_wilk(xs)
            );
        }
        // Normal samples give W near 1; exponential samples clearly less.
        let mut rng = derive_rng(1, "sw");
        let (mut wn, mut we) = (0.0, 0.0);
        for _ in 0..200 {
            let n: Vec<f64> = (0..48).map(|_| normal_f64(&mut rng)).collect();
            let e: Vec<f64> = (0..48).map(|_| -(1.0 - rng.random::<f64>()).ln()).collect();
            wn += shapiro_wilk(&n) / 200.0;
            we += shapiro_wilk(&e) / 200.0;
        }
        assert!(wn > 0.97 && we < 0.88, "normal {wn}, exponential {we}");
        assert!((norm_ppf(0.975) - 1.959964).abs() < 1e-6);
        assert!((norm_ppf(0.01) + 2.326348).abs() < 1e-6);
    }

    /// A synthetic stream (perturbations of 20 seed prompts) is far from normal; benign users
    /// and a campaign of fresh prompts are not. One window of 60 queries per account, judged at
    /// W < 0.65 (the replay's default of 0.5 is lower because it tests every account again at
    /// every pass).
    #[test]
    fn prada_flags_perturbed_seed_streams_not_benign_users() {
        use crate::traffic::{TemplateBank, ATTACK_BANK};
        use crate::world::Mix;
        let mut rng = derive_rng(5, "p");
        let benign = TemplateBank::new(&Mix::benign(), 4096, &mut rng);
        let mut m = Mix::benign();
        (m.skills, m.harmful, m.lookalike, m.affect, m.probe) = (1.0, 0.0, 0.0, 0.0, 0.0);
        let fresh = TemplateBank::new(&m, 4096, &mut rng);
        let synthetic = TemplateBank::perturbed(&m, 20, 4096, &mut rng);
        let threshold = 0.65;
        let mut flagged = |bank: &TemplateBank| {
            (0..300)
                .filter(|_| {
                    let mut st = PradaState::default();
                    for _ in 0..60 {
                        let t = rng.random_range(0..4096u32);
                        st.observe(t, |t: u32| bank.emb[(t & !ATTACK_BANK) as usize]);
                    }
                    st.w().unwrap() < threshold
                })
                .count() as f64
                / 300.0
        };
        let (b, f, s) = (flagged(&benign), flagged(&fresh), flagged(&synthetic));
        assert!(
            s > 0.9 && b < 0.03 && f < 0.03,
            "synthetic {s}, benign {b}, fresh {f}"
        );
    }
}
