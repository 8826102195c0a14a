//! Detectors over the live query stream, per account and across accounts, with thresholds.
//!
//! Per-account features are fixed-size counters updated per query (no allocation); detectors
//! run every `check_minutes` over the accounts active since the last check.

use super::{Query, N_KINDS};
use crate::world::Skill;
use serde::{Deserialize, Serialize};

/// Detector thresholds; a detector with threshold `None` is off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Volume: queries per account in the current simulated day.
    pub volume_per_day: Option<u32>,
    /// Template repetition: normalised entropy of the account's prompt-kind histogram below this.
    pub min_entropy: Option<f64>,
    /// Skill concentration: share of the account's skill queries on its top skill above this.
    pub skill_concentration: Option<f64>,
    /// Reasoning elicitation: share of queries that ask for a reasoning trace above this.
    pub reasoning_share: Option<f64>,
    /// Distribution shift: MMD² (Kronecker kernel on prompt kinds) to benign traffic above this.
    pub mmd: Option<f64>,
    /// Identity clustering: accounts sharing a payment instrument, IP or fingerprint, at least.
    pub cluster_size: Option<usize>,
    /// PRADA: Shapiro-Wilk W of the account's minimum query distances below this.
    pub prada_w: Option<f64>,
    /// Synchronised timing: share of the account's active minutes today that were burst
    /// minutes (many accounts at once) above this.
    pub sync_share: Option<f64>,
    /// Active minutes today an account needs before its timing is judged.
    pub sync_min_active: u32,
    /// A minute is a burst when its count of active accounts exceeds the median of the last
    /// 15 minutes by `burst_z` Poisson standard deviations and by the share `burst_rel`.
    pub burst_z: f64,
    pub burst_rel: f64,
    /// Minimum distances PRADA needs before it judges an account.
    pub prada_min: usize,
    /// Queries an account needs before the statistical detectors judge it.
    pub min_queries: u32,
    /// Minutes between detector passes.
    pub check_minutes: u32,
    /// Minutes from a flag to the ban.
    pub action_delay_minutes: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            volume_per_day: Some(500),
            min_entropy: Some(0.35),
            skill_concentration: None,
            reasoning_share: Some(0.7),
            mmd: Some(0.15),
            cluster_size: Some(5),
            prada_w: Some(0.5),
            sync_share: Some(0.5),
            sync_min_active: 8,
            burst_z: 4.0,
            burst_rel: 0.25,
            prada_min: 40,
            min_queries: 20,
            check_minutes: 60,
            action_delay_minutes: 60,
        }
    }
}

impl DetectorConfig {
    /// Every detector off (the other settings at their defaults).
    pub fn off() -> DetectorConfig {
        DetectorConfig {
            volume_per_day: None,
            min_entropy: None,
            skill_concentration: None,
            reasoning_share: None,
            mmd: None,
            cluster_size: None,
            prada_w: None,
            sync_share: None,
            ..Default::default()
        }
    }
}

/// Fixed-size per-account features.
#[derive(Clone, Copy, Debug)]
pub struct Features {
    pub total: u32,
    pub today: u32,
    pub day: u32,
    pub kinds: [u32; N_KINDS],
    pub reasoning: u32,
    /// Distinct minutes with a query today.
    pub active_minutes: u32,
    /// Of those, minutes the replay marked as bursts.
    pub burst_minutes: u32,
    last_minute: u32,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            total: 0,
            today: 0,
            day: 0,
            kinds: [0; N_KINDS],
            reasoning: 0,
            active_minutes: 0,
            burst_minutes: 0,
            last_minute: u32::MAX,
        }
    }
}

impl Features {
    /// Count a query; returns whether it opened a new active minute for the account.
    #[inline]
    pub fn observe(&mut self, q: &Query) -> bool {
        let day = q.minute / 1440;
        if day != self.day {
            self.day = day;
            self.today = 0;
            self.active_minutes = 0;
            self.burst_minutes = 0;
        }
        let new_minute = q.minute != self.last_minute;
        if new_minute {
            self.last_minute = q.minute;
            self.active_minutes += 1;
        }
        self.total += 1;
        self.today += 1;
        self.kinds[q.kind as usize] += 1;
        self.reasoning += q.reasoning as u32;
        new_minute
    }

    /// Share of today's active minutes that were bursts.
    pub fn burst_share(&self) -> f64 {
        self.burst_minutes as f64 / self.active_minutes.max(1) as f64
    }

    /// Shannon entropy of the kind histogram over log(N_KINDS), in [0, 1].
    pub fn entropy(&self) -> f64 {
        let n = self.total as f64;
        if n == 0.0 {
            return 1.0;
        }
        let h: f64 = self
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

    /// Share of skill queries on the most-asked skill (both tiers).
    pub fn skill_concentration(&self) -> f64 {
        let per_skill: Vec<u32> = (0..Skill::ALL.len())
            .map(|s| self.kinds[2 * s] + self.kinds[2 * s + 1])
            .collect();
        let total: u32 = per_skill.iter().sum();
        if total == 0 {
            0.0
        } else {
            *per_skill.iter().max().unwrap_or(&0) as f64 / total as f64
        }
    }

    /// MMD² with the Kronecker kernel on kinds: the squared L2 distance of the histograms.
    pub fn mmd2(&self, reference: &[f64; N_KINDS]) -> f64 {
        let n = self.total.max(1) as f64;
        self.kinds
            .iter()
            .zip(reference)
            .map(|(&c, &r)| (c as f64 / n - r).powi(2))
            .sum()
    }
}

/// Cross-account and per-account signals the replay computes outside [`Features`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Signals {
    /// Largest identity group (shared payment / IP / fingerprint) the account belongs to.
    pub cluster: usize,
    /// PRADA's Shapiro-Wilk W, when the account has `prada_min` distances and new ones since
    /// its last judgement.
    pub prada_w: Option<f64>,
}

/// Which detectors flag an account (bit per detector, in `DetectorConfig` field order).
pub fn flags(cfg: &DetectorConfig, f: &Features, sig: &Signals, reference: &[f64; N_KINDS]) -> u8 {
    let mut bits = 0u8;
    let cluster = sig.cluster;
    if f.active_minutes >= cfg.sync_min_active
        && cfg.sync_share.is_some_and(|t| f.burst_share() > t)
    {
        bits |= 1 << 7;
    }
    if cfg.volume_per_day.is_some_and(|t| f.today > t) {
        bits |= 1;
    }
    if let Some(k) = cfg.cluster_size {
        if cluster >= k {
            bits |= 1 << 5;
        }
    }
    if f.total < cfg.min_queries {
        return bits;
    }
    if cfg.min_entropy.is_some_and(|t| f.entropy() < t) {
        bits |= 1 << 1;
    }
    if cfg
        .skill_concentration
        .is_some_and(|t| f.skill_concentration() > t)
    {
        bits |= 1 << 2;
    }
    if cfg
        .reasoning_share
        .is_some_and(|t| f.reasoning as f64 / f.total as f64 > t)
    {
        bits |= 1 << 3;
    }
    if cfg.mmd.is_some_and(|t| f.mmd2(reference) > t) {
        bits |= 1 << 4;
    }
    if let (Some(t), Some(w)) = (cfg.prada_w, sig.prada_w) {
        if w < t {
            bits |= 1 << 6;
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::derive_rng;
    use crate::traffic::{Alias, TemplateBank};
    use crate::world::Mix;

    #[test]
    fn each_statistical_detector_separates_campaign_from_benign_features() {
        let mut rng = derive_rng(2, "t");
        let benign = TemplateBank::new(&Mix::benign(), 2000, &mut rng);
        let mut reference = [0.0; N_KINDS];
        for q in &benign.queries {
            reference[q.0 as usize] += 1.0 / 2000.0;
        }
        let feats = |bank: &TemplateBank, n: usize| {
            let mut f = Features::default();
            for i in 0..n.min(bank.queries.len()) {
                f.observe(&bank.query(i, i as u32, 0, false));
            }
            f
        };
        let mut m = Mix::benign();
        m.only_skills = vec![Skill::Program];
        m.harmful = 0.0;
        m.lookalike = 0.0;
        m.affect = 0.0;
        m.probe = 0.0;
        m.hard_share = 0.9;
        let attack = TemplateBank::new(&m, 200, &mut rng);
        let (a, b) = (
            feats(&attack, 200),
            feats(&TemplateBank::new(&Mix::benign(), 200, &mut rng), 200),
        );
        assert!(
            a.entropy() < 0.2 && b.entropy() > 0.6,
            "{} {}",
            a.entropy(),
            b.entropy()
        );
        assert_eq!(a.skill_concentration(), 1.0);
        assert!(b.skill_concentration() < 0.4);
        assert!(
            a.mmd2(&reference) > 0.3 && b.mmd2(&reference) < 0.02,
            "{} {}",
            a.mmd2(&reference),
            b.mmd2(&reference)
        );
        assert!(a.reasoning > 150 && b.reasoning < 60);
    }

    #[test]
    fn alias_sampler_matches_weights() {
        let al = Alias::new(&[1.0, 3.0, 0.0, 6.0]);
        let mut rng = derive_rng(3, "t");
        let mut c = [0usize; 4];
        for _ in 0..100_000 {
            c[al.sample(&mut rng)] += 1;
        }
        assert_eq!(c[2], 0);
        assert!((c[3] as f64 / 1e5 - 0.6).abs() < 0.01 && (c[0] as f64 / 1e5 - 0.1).abs() < 0.01);
    }
}
