//! Detector scores: every detector as a number per account (higher: more like a campaign),
//! so that a threshold is an operating point chosen on benign traffic, as trust-and-safety
//! teams choose theirs (recall at 0.1% or 0.3% of benign accounts flagged), and not one flag.
//!
//! An account's score for a detector is the highest value the detector gave it at any pass so
//! far (the score over time; a detector "crosses" an operating point at the first pass where
//! it is above the threshold). Thresholds come from a [`Calibration`]: the highest scores of
//! the benign accounts of a separate, benign-only replay (another draw of the same population
//! and its traffic: a held-out benign period), never from the attack. The fused score sums,
//! over detectors, the surprise `-ln(tail)` of each score under that benign calibration (the
//! share of calibration accounts scoring at least as high), with equal weights.

use super::{concentration, entropy, mmd, sync, DetectorConfig, Features, Signals, N_KINDS};
use serde::Serialize;

/// Detectors with a score, in [`DetectorConfig`] field order (the flag bits' order).
pub const NAMES: [&str; N_DET] = [
    "volume",
    "entropy",
    "concentration",
    "reasoning",
    "mmd",
    "cluster",
    "prada",
    "sync",
    "limit_jump",
];
pub const N_DET: usize = 9;
/// The fused scores' indices beside the detectors': the sum of surprises, and the logistic
/// model fitted on a labelled replay.
pub const FUSED: usize = N_DET;
pub const LOGISTIC: usize = N_DET + 1;
/// Scores with operating points: the detectors and the two fused scores.
pub const N_SCORES: usize = N_DET + 2;
/// Benign-account false-positive rates at which the operating points are set.
pub const FPRS: [f64; 2] = [0.001, 0.003];
/// Metric-name suffixes of [`FPRS`].
pub const FPR_NAMES: [&str; 2] = ["0.1%", "0.3%"];

/// Not judged (too few queries, or a detector whose state this replay does not keep).
const NONE: f64 = f64::NEG_INFINITY;

/// Which detectors have a score in a replay with these settings: PRADA, timing and limit
/// tracking keep per-account state only when they are on; the others are always scored.
pub fn available(cfg: &DetectorConfig) -> [bool; N_DET] {
    let mut a = [true; N_DET];
    a[6] = cfg.prada_w.is_some();
    a[7] = cfg.sync_share.is_some();
    a[8] = cfg.limit_jump.is_some();
    a
}

/// Every detector's score of an account now ([`NONE`] where it does not judge the account);
/// each detector's flag is its score above its threshold (cluster: at least).
pub fn scores(
    cfg: &DetectorConfig,
    f: &Features,
    sig: &Signals,
    reference: &[f64; N_KINDS],
    avail: &[bool; N_DET],
) -> [f64; N_DET] {
    let mut s = [NONE; N_DET];
    s[0] = f.today as f64;
    s[5] = sig.cluster as f64;
    if f.total >= cfg.min_queries {
        s[1] = 1.0 - entropy::entropy(f);
        s[2] = concentration::concentration(f);
        s[3] = f.reasoning as f64 / f.total.max(1) as f64;
        s[4] = mmd::mmd2(f, reference);
        if let Some(w) = sig.prada_w.filter(|_| avail[6]) {
            s[6] = 1.0 - w;
        }
    }
    if avail[7] && f.active_minutes >= cfg.sync_min_active {
        s[7] = sync::burst_share(f);
    }
    let [before, after] = f.around_change;
    if avail[8] && sig.jump_window_done && before >= cfg.limit_jump_min {
        s[8] = after as f64 / before as f64;
    }
    s
}

/// Operating points set on a benign-only replay.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub avail: [bool; N_DET],
    /// Calibration (benign) accounts.
    pub n: usize,
    /// Per detector, the calibration accounts' highest scores, ascending.
    sorted: Vec<Vec<f64>>,
    /// The logistic fusion (None until fitted: its score is then never above a threshold).
    pub logistic: Option<Logistic>,
    /// Per score (detectors, sum, logistic), per FPR: an account crosses when above it.
    pub thresholds: [[f64; 2]; N_SCORES],
    /// The calibration accounts' highest scores per detector (rows), for fitting.
    maxima: Vec<[f64; N_DET]>,
}

/// A logistic model over the detectors' surprises, `b + w . x`, with `w >= 0` (more
/// surprising on any detector never lowers it, so an account's fused score only rises).
#[derive(Clone, Debug, PartialEq)]
pub struct Logistic {
    pub w: [f64; N_DET],
    pub b: f64,
}

impl Logistic {
    /// Fit by projected gradient descent on the class-balanced log loss (attackers and benign
    /// accounts weigh half each), with a small L2 penalty; `x`: surprises, `y`: attacker.
    pub fn fit(x: &[[f64; N_DET]], y: &[bool]) -> Logistic {
        // At most PER_CLASS accounts of each class, every k-th in order (a full-scale replay
        // has tens of thousands of each; the fit needs far fewer).
        const PER_CLASS: usize = 5000;
        let count = |c: bool| y.iter().filter(|&&v| v == c).count();
        let (sp, sn) = (
            count(true).div_ceil(PER_CLASS).max(1),
            count(false).div_ceil(PER_CLASS).max(1),
        );
        let (mut seen_p, mut seen_n) = (0usize, 0usize);
        let mut keep = |v: bool| {
            let (seen, st) = if v {
                (&mut seen_p, sp)
            } else {
                (&mut seen_n, sn)
            };
            *seen += 1;
            (*seen - 1).is_multiple_of(st)
        };
        let (x, y): (Vec<[f64; N_DET]>, Vec<bool>) = x
            .iter()
            .zip(y)
            .filter(|(_, &v)| keep(v))
            .map(|(a, &b)| (*a, b))
            .unzip();
        let (pos, neg) = (
            y.iter().filter(|&&v| v).count(),
            y.iter().filter(|&&v| !v).count(),
        );
        let mut m = Logistic {
            w: [0.0; N_DET],
            b: 0.0,
        };
        if pos == 0 || neg == 0 {
            return m;
        }
        let wt = |v: bool| 0.5 / if v { pos } else { neg } as f64;
        let (lr, l2) = (0.5, 1e-3);
        for _ in 0..2000 {
            let (mut gw, mut gb) = ([0.0; N_DET], 0.0);
            for (xi, &yi) in x.iter().zip(&y) {
                let p = 1.0 / (1.0 + (-m.score(xi)).exp());
                let e = wt(yi) * (p - yi as u8 as f64);
                gb += e;
                for (g, v) in gw.iter_mut().zip(xi) {
                    *g += e * v;
                }
            }
            m.b -= lr * gb;
            for (w, g) in m.w.iter_mut().zip(gw) {
                *w = (*w - lr * (g + l2 * *w)).max(0.0);
            }
        }
        m
    }

    pub fn score(&self, x: &[f64; N_DET]) -> f64 {
        self.b + self.w.iter().zip(x).map(|(w, v)| w * v).sum::<f64>()
    }
}

/// The threshold above which at most `fpr` of `sorted_asc` lies.
fn threshold(sorted_asc: &[f64], fpr: f64) -> f64 {
    let n = sorted_asc.len();
    let k = (fpr * n as f64).floor() as usize; // accounts allowed above
    if k >= n {
        return NONE;
    }
    sorted_asc[n - 1 - k]
}

impl Calibration {
    /// From the benign accounts' highest scores (one row per account); the logistic fusion
    /// is fitted later ([`Calibration::fit_logistic`]).
    pub fn new(maxima: &[[f64; N_DET]], avail: [bool; N_DET]) -> Calibration {
        let mut sorted: Vec<Vec<f64>> = (0..N_DET)
            .map(|j| maxima.iter().map(|m| m[j]).collect())
            .collect();
        for v in &mut sorted {
            v.sort_by(f64::total_cmp);
        }
        let mut cal = Calibration {
            avail,
            n: maxima.len(),
            sorted,
            logistic: None,
            thresholds: [[f64::INFINITY; 2]; N_SCORES],
            maxima: maxima.to_vec(),
        };
        for j in 0..=FUSED {
            let mut v: Vec<f64> = maxima.iter().map(|m| cal.value(j, m)).collect();
            v.sort_by(f64::total_cmp);
            cal.thresholds[j] = FPRS.map(|fpr| threshold(&v, fpr));
        }
        cal
    }

    /// Fit the logistic fusion on a labelled replay's accounts (their highest scores and
    /// whether each is the campaign's), then set its thresholds on the benign calibration
    /// accounts, like every other score's.
    pub fn fit_logistic(&mut self, maxima: &[[f64; N_DET]], attacker: &[bool]) {
        let x: Vec<[f64; N_DET]> = maxima.iter().map(|m| self.surprises(m)).collect();
        self.logistic = Some(Logistic::fit(&x, attacker));
        let mut v: Vec<f64> = self
            .maxima
            .iter()
            .map(|m| self.value(LOGISTIC, m))
            .collect();
        v.sort_by(f64::total_cmp);
        self.thresholds[LOGISTIC] = FPRS.map(|fpr| threshold(&v, fpr));
    }

    /// Score `j` (a detector, the sum or the logistic fusion) of an account's highest scores.
    pub fn value(&self, j: usize, m: &[f64; N_DET]) -> f64 {
        match j {
            FUSED => self.fused(m),
            LOGISTIC => self
                .logistic
                .as_ref()
                .map_or(NONE, |l| l.score(&self.surprises(m))),
            _ => m[j],
        }
    }

    /// Each available detector's surprise `-ln(tail)` (0 where it never judged the account).
    fn surprises(&self, m: &[f64; N_DET]) -> [f64; N_DET] {
        let mut x = [0.0; N_DET];
        for j in (0..N_DET).filter(|&j| self.avail[j] && m[j] > NONE) {
            x[j] = -self.tail(j, m[j]).min(1.0).ln();
        }
        x
    }

    /// Share of calibration accounts whose detector `j` scored at least `s`, with one
    /// pseudo-account (so never 0): `(1 + #{x >= s}) / (n + 1)`.
    fn tail(&self, j: usize, s: f64) -> f64 {
        let v = &self.sorted[j];
        let at_least = v.len() - v.partition_point(|&x| x < s);
        (1 + at_least) as f64 / (self.n + 1) as f64
    }

    /// The fused score of an account's per-detector highest scores: the sum of `-ln(tail)`
    /// over the available detectors (0 for a detector that never judged it).
    pub fn fused(&self, m: &[f64; N_DET]) -> f64 {
        self.surprises(m).iter().sum()
    }
}

/// Per-account scores through a replay, and where each account crossed each operating point.
pub struct ScoreBook {
    /// Whether the replay scores its accounts at all (a calibration replay, or one with a
    /// calibration; other replays skip the work).
    pub on: bool,
    pub avail: [bool; N_DET],
    pub cal: Option<Calibration>,
    /// Per account: the highest score of each detector so far.
    pub max: Vec<[f64; N_DET]>,
    /// Per account, per score (detectors, then fused) and FPR: the minute of the first pass
    /// above the threshold and the account's queries by then (`u32::MAX`: not crossed).
    pub crossed: Vec<[[(u32, u32); 2]; N_SCORES]>,
}

impl ScoreBook {
    pub fn new(avail: [bool; N_DET], cal: Option<Calibration>) -> ScoreBook {
        ScoreBook {
            on: false,
            avail,
            cal,
            max: Vec::new(),
            crossed: Vec::new(),
        }
    }

    pub fn push(&mut self) {
        self.max.push([NONE; N_DET]);
        self.crossed.push([[(u32::MAX, 0); 2]; N_SCORES]);
    }

    /// Take account `a`'s scores at this pass (`queries`: its queries so far).
    pub fn update(&mut self, a: usize, s: &[f64; N_DET], minute: u32, queries: u32) {
        let m = &mut self.max[a];
        let mut raised = false;
        for j in 0..N_DET {
            if self.avail[j] && s[j] > m[j] {
                m[j] = s[j];
                raised = true;
            }
        }
        let Some(cal) = self.cal.as_ref().filter(|_| raised) else {
            return;
        };
        let c = &mut self.crossed[a];
        let open = |c: &[[(u32, u32); 2]; N_SCORES], j: usize| c[j].iter().any(|x| x.0 == u32::MAX);
        // The fused scores rise with the maxima: once above both thresholds (the 0.1% one is
        // the higher) they need no more computing; their final values come from the maxima.
        // Both are functions of the same surprises, computed once.
        let x = (open(c, FUSED) || open(c, LOGISTIC)).then(|| cal.surprises(m));
        for j in (0..N_DET)
            .filter(|&j| self.avail[j])
            .chain([FUSED, LOGISTIC])
        {
            if !open(c, j) {
                continue;
            }
            let v = match (j, &x) {
                (FUSED, Some(x)) => x.iter().sum(),
                (LOGISTIC, Some(x)) => cal.logistic.as_ref().map_or(NONE, |l| l.score(x)),
                _ => m[j],
            };
            for (k, &t) in cal.thresholds[j].iter().enumerate() {
                if c[j][k].0 == u32::MAX && v > t {
                    c[j][k] = (minute, queries);
                }
            }
        }
    }
}

/// Area under the ROC curve of `pos` against `neg` scores (the probability that a random
/// positive scores above a random negative, ties counted half); None when either is empty.
pub fn auc(pos: &[f64], neg: &[f64]) -> Option<f64> {
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut neg = neg.to_vec();
    neg.sort_by(f64::total_cmp);
    let mut sum = 0.0;
    for &p in pos {
        let below = neg.partition_point(|&x| x < p);
        let ties = neg.partition_point(|&x| x <= p) - below;
        sum += below as f64 + 0.5 * ties as f64;
    }
    Some(sum / (pos.len() as f64 * neg.len() as f64))
}

/// One score's outcome over a replay's accounts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScoreOutcome {
    pub name: String,
    pub auc: Option<f64>,
    /// Per FPR of [`FPRS`]: share of attacker accounts above the threshold.
    pub recall: [f64; 2],
    /// Per FPR: share of this replay's benign accounts above the threshold (the calibration's
    /// target, measured on other benign accounts).
    pub benign_fpr: [f64; 2],
    /// Per FPR: simulated days to the first attacker account above the threshold.
    pub days_to_detection: [Option<f64>; 2],
    /// Per FPR: share of the campaign's queries its accounts sent before each crossed (all
    /// of an account's that never did): what taking each account down at its crossing
    /// would have left the attacker.
    pub harvest_before_takedown: [f64; 2],
    /// Per FPR: benign queries sent after their account crossed (what a takedown at the
    /// crossing would have refused).
    pub benign_queries_hit: [u64; 2],
    /// Per benign group (the crowd and each segment kind, when there are segments): its name
    /// and, per FPR, the share of its accounts above the threshold.
    pub group_fpr: Vec<(String, [f64; 2])>,
}

/// Benign accounts' groups for the per-group FPR: `group[a]` indexes `names` (ignored for
/// attacker accounts).
pub struct Groups<'a> {
    pub names: &'a [&'a str],
    pub group: &'a [u8],
}

/// Each available score's outcome; `attacker[a]` says which accounts are the campaign's and
/// `total[a]` how many queries each sent; `groups` splits the benign FPR by group.
pub fn outcomes(
    book: &ScoreBook,
    attacker: &[bool],
    total: &[u32],
    groups: Option<&Groups>,
) -> Vec<ScoreOutcome> {
    let Some(cal) = &book.cal else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for j in 0..N_SCORES {
        if (j < N_DET && !cal.avail[j]) || (j == LOGISTIC && cal.logistic.is_none()) {
            continue;
        }
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        for (a, m) in book.max.iter().enumerate() {
            let v = cal.value(j, m);
            if attacker[a] { &mut pos } else { &mut neg }.push(v);
        }
        let mut o = ScoreOutcome {
            name: match j {
                FUSED => "fused",
                LOGISTIC => "fused_logistic",
                _ => NAMES[j],
            }
            .to_string(),
            auc: auc(&pos, &neg),
            ..Default::default()
        };
        for k in 0..FPRS.len() {
            let (mut hit_a, mut hit_b, mut first) = (0usize, 0usize, u32::MAX);
            let (mut sent, mut kept, mut benign_hit) = (0u64, 0u64, 0u64);
            for (a, c) in book.crossed.iter().enumerate() {
                let (at, q) = c[j][k];
                let crossed = at != u32::MAX;
                if attacker[a] {
                    hit_a += crossed as usize;
                    first = first.min(at);
                    sent += total[a] as u64;
                    kept += if crossed { q } else { total[a] } as u64;
                } else if crossed {
                    hit_b += 1;
                    benign_hit += (total[a] - q) as u64;
                }
            }
            o.recall[k] = hit_a as f64 / pos.len().max(1) as f64;
            o.benign_fpr[k] = hit_b as f64 / neg.len().max(1) as f64;
            o.days_to_detection[k] = (first != u32::MAX).then(|| first as f64 / 1440.0);
            o.harvest_before_takedown[k] = kept as f64 / sent.max(1) as f64;
            o.benign_queries_hit[k] = benign_hit;
        }
        if let Some(g) = groups {
            o.group_fpr = group_fpr(book, attacker, g, j);
        }
        out.push(o);
    }
    out
}

/// Score `j`'s benign FPR per group, at each operating point.
fn group_fpr(book: &ScoreBook, attacker: &[bool], g: &Groups, j: usize) -> Vec<(String, [f64; 2])> {
    let n = g.names.len();
    let mut accounts = vec![0usize; n];
    let mut hits = vec![[0usize; 2]; n];
    for (a, c) in book.crossed.iter().enumerate() {
        let Some(&gi) = g.group.get(a) else { continue };
        if attacker[a] || gi as usize >= n {
            continue;
        }
        accounts[gi as usize] += 1;
        for (k, h) in hits[gi as usize].iter_mut().enumerate() {
            *h += (c[j][k].0 != u32::MAX) as usize;
        }
    }
    (0..n)
        .filter(|&i| accounts[i] > 0)
        .map(|i| {
            let share = |k: usize| hits[i][k] as f64 / accounts[i] as f64;
            (g.names[i].to_string(), [share(0), share(1)])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_pairs_and_ties() {
        assert_eq!(auc(&[3.0, 4.0], &[1.0, 2.0]), Some(1.0));
        assert_eq!(auc(&[1.0], &[2.0]), Some(0.0));
        // 2 > 1 (1), 2 = 2 (0.5), 1 vs 1 (0.5), 1 < 2 (0): 2 of 4 pairs.
        assert_eq!(auc(&[2.0, 1.0], &[1.0, 2.0]), Some(0.5));
        assert_eq!(auc(&[NONE], &[NONE, 0.0]), Some(0.25));
        assert_eq!(auc(&[], &[1.0]), None);
    }

    /// The volume detector alone, and 1,000 benign accounts scoring 0..999 on it.
    fn volume_calibration() -> ([bool; N_DET], Vec<[f64; N_DET]>) {
        let mut avail = [false; N_DET];
        avail[0] = true;
        let maxima = (0..1000)
            .map(|i| {
                let mut m = [NONE; N_DET];
                m[0] = i as f64;
                m
            })
            .collect();
        (avail, maxima)
    }

    #[test]
    fn thresholds_let_at_most_the_target_share_of_calibration_accounts_above() {
        let (avail, maxima) = volume_calibration();
        let cal = Calibration::new(&maxima, avail);
        // 0.1% of 1,000: one account (999) above 998; 0.3%: three (997-999) above 996.
        assert_eq!(cal.thresholds[0], [998.0, 996.0]);
        // Tails: 999 is reached by itself only, 0 by everyone; the fused score of one
        // detector is its surprise, so its thresholds order the same accounts.
        assert!((cal.tail(0, 999.0) - 2.0 / 1001.0).abs() < 1e-12);
        assert_eq!(cal.tail(0, 0.0), 1.0);
        let f = |v: f64| {
            let mut m = [NONE; N_DET];
            m[0] = v;
            cal.fused(&m)
        };
        assert!(f(999.0) > cal.thresholds[FUSED][0] && f(998.0) <= cal.thresholds[FUSED][0]);
        assert!(f(997.0) > cal.thresholds[FUSED][1] && f(996.0) <= cal.thresholds[FUSED][1]);
        // Fewer accounts than 1/FPR: nobody may be above, so the threshold is the maximum.
        let cal = Calibration::new(&maxima[..100], avail);
        assert_eq!(cal.thresholds[0], [99.0, 99.0]);
    }

    /// The logistic fusion puts its weight on the detector that separates the labels, never
    /// a negative one, and its threshold comes from the benign calibration accounts.
    #[test]
    fn logistic_fusion_weighs_the_separating_detector() {
        let avail = [true, true, false, false, false, false, false, false, false];
        // Calibration: 1,000 benign accounts, volume 0..999, entropy score 0.5 each.
        let row = |v: f64, e: f64| {
            let mut m = [NONE; N_DET];
            m[0] = v;
            m[1] = e;
            m
        };
        let benign: Vec<[f64; N_DET]> = (0..1000).map(|i| row(i as f64, 0.5)).collect();
        let mut cal = Calibration::new(&benign, avail);
        // Labelled replay: attackers have volume like the benign but an entropy score above
        // every benign account's; benign accounts as in the calibration.
        let mut fit: Vec<[f64; N_DET]> = (0..200).map(|i| row((i * 5) as f64, 0.9)).collect();
        fit.extend((0..1000).map(|i| row(i as f64, 0.5)));
        let labels: Vec<bool> = (0..1200).map(|i| i < 200).collect();
        cal.fit_logistic(&fit, &labels);
        let l = cal.logistic.clone().unwrap();
        assert!(l.w.iter().all(|&w| w >= 0.0), "{l:?}");
        assert!(l.w[1] > 5.0 * l.w[0], "entropy carries the labels: {l:?}");
        // Every attacker-like account is above the 0.1% threshold, no benign one.
        let t = cal.thresholds[LOGISTIC][0];
        assert!(cal.value(LOGISTIC, &row(10.0, 0.9)) > t);
        assert!(benign.iter().filter(|m| cal.value(LOGISTIC, m) > t).count() <= 1);
    }

    #[test]
    fn outcomes_follow_the_crossings() {
        let (avail, maxima) = volume_calibration();
        let cal = Calibration::new(&maxima, avail);
        let mut book = ScoreBook::new(avail, Some(cal));
        // Account 0: an attacker reaching 2,000 at minute 10 (after 50 queries of its 80);
        // account 1: an attacker staying at 500; account 2: benign, at 997 at minute 20
        // (above the 0.3% threshold only), after 5 of its 9 queries.
        for _ in 0..3 {
            book.push();
        }
        let s = |v: f64| {
            let mut m = [NONE; N_DET];
            m[0] = v;
            m
        };
        book.update(0, &s(100.0), 5, 10);
        book.update(0, &s(2000.0), 10, 50);
        book.update(1, &s(500.0), 10, 30);
        book.update(2, &s(997.0), 20, 5);
        let out = outcomes(&book, &[true, true, false], &[80, 40, 9], None);
        assert_eq!(out.len(), 2); // volume and fused (no logistic fusion fitted)
        assert!(out[0].group_fpr.is_empty());
        let v = &out[0];
        assert_eq!(v.name, "volume");
        assert_eq!(v.recall, [0.5, 0.5]);
        assert_eq!(v.benign_fpr, [0.0, 1.0]);
        assert_eq!(v.days_to_detection, [Some(10.0 / 1440.0); 2]);
        // The attacker kept 50 of account 0's 80 and all 40 of account 1's: 90 of 120.
        assert_eq!(v.harvest_before_takedown, [0.75, 0.75]);
        assert_eq!(v.benign_queries_hit, [0, 4]);
        assert_eq!(v.auc, Some(0.5));
        assert_eq!(out[1].name, "fused");
        assert_eq!(out[1].recall, v.recall);
    }

    /// The benign FPR split by group: of two crowd accounts one crosses the 0.3% threshold,
    /// of two batch accounts both cross it, and one of them the 0.1% threshold too.
    #[test]
    fn benign_fpr_splits_by_group() {
        let (avail, maxima) = volume_calibration();
        let cal = Calibration::new(&maxima, avail);
        let mut book = ScoreBook::new(avail, Some(cal));
        for _ in 0..5 {
            book.push();
        }
        let s = |v: f64| {
            let mut m = [NONE; N_DET];
            m[0] = v;
            m
        };
        book.update(0, &s(997.0), 5, 3); // crowd: 0.3% only
        book.update(1, &s(100.0), 5, 3); // crowd: neither
        book.update(2, &s(997.0), 5, 3); // batch: 0.3% only
        book.update(3, &s(2000.0), 5, 3); // batch: both
        book.update(4, &s(2000.0), 5, 3); // the attacker, not counted
        let names = ["crowd", "batch", "eval_harness"];
        let groups = Groups {
            names: &names,
            group: &[0, 0, 1, 1, 0],
        };
        let out = outcomes(
            &book,
            &[false, false, false, false, true],
            &[3; 5],
            Some(&groups),
        );
        let v = &out[0];
        // Groups without accounts are left out.
        assert_eq!(
            v.group_fpr,
            vec![
                ("crowd".to_string(), [0.0, 0.5]),
                ("batch".to_string(), [0.5, 1.0])
            ]
        );
        assert_eq!(v.benign_fpr, [0.25, 0.75]);
    }
}
