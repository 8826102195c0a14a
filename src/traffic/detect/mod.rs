//! Detectors over the live query stream, per account and across accounts, with thresholds.
//! Each detector is its own module; this one holds their configuration, the per-account
//! features they read, and the pass that asks each of them about an account.
//!
//! Per-account features are fixed-size counters updated per query (no allocation); detectors
//! run every `check_minutes` over the accounts active since the last check.

pub mod cluster;
pub mod concentration;
pub mod entropy;
pub mod limit_jump;
pub mod mmd;
pub mod prada;
pub mod reasoning;
pub mod score;
pub mod sync;
pub mod volume;

use super::{Query, N_KINDS};
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
    /// Limit tracking (the tripwire): after a change of the provider's rate limits, the
    /// account's queries in the `limit_jump_hours` after the change over those in the same
    /// span before it, at least this.
    pub limit_jump: Option<f64>,
    /// Hours before and after a limit change the limit-tracking detector compares.
    pub limit_jump_hours: f64,
    /// Queries an account needs in the span before the change to be judged by it.
    pub limit_jump_min: u32,
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
            limit_jump: None,
            limit_jump_hours: 24.0,
            limit_jump_min: 10,
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
            limit_jump: None,
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
    /// Queries in the spans before and after a limit change.
    pub around_change: [u32; 2],
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
            around_change: [0; 2],
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
}

/// Cross-account and per-account signals the replay computes outside [`Features`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Signals {
    /// Largest identity group (shared payment / IP / fingerprint) the account belongs to.
    pub cluster: usize,
    /// PRADA's Shapiro-Wilk W, when the account has `prada_min` distances and new ones since
    /// its last judgement.
    pub prada_w: Option<f64>,
    /// Whether the spans around a limit change are both over.
    pub jump_window_done: bool,
}

/// Which detectors flag an account (bit per detector, in `DetectorConfig` field order).
pub fn flags(cfg: &DetectorConfig, f: &Features, sig: &Signals, reference: &[f64; N_KINDS]) -> u16 {
    let mut bits = 0u16;
    let mut set = |bit: u16, fires: bool| bits |= (fires as u16) << bit;
    set(0, cfg.volume_per_day.is_some_and(|t| volume::fires(t, f)));
    set(
        5,
        cfg.cluster_size
            .is_some_and(|t| cluster::fires(t, sig.cluster)),
    );
    set(
        7,
        cfg.sync_share
            .is_some_and(|t| sync::fires(t, cfg.sync_min_active, f)),
    );
    set(
        8,
        cfg.limit_jump
            .is_some_and(|t| sig.jump_window_done && limit_jump::fires(t, cfg.limit_jump_min, f)),
    );
    if f.total >= cfg.min_queries {
        set(1, cfg.min_entropy.is_some_and(|t| entropy::fires(t, f)));
        set(
            2,
            cfg.skill_concentration
                .is_some_and(|t| concentration::fires(t, f)),
        );
        set(
            3,
            cfg.reasoning_share.is_some_and(|t| reasoning::fires(t, f)),
        );
        set(4, cfg.mmd.is_some_and(|t| mmd::fires(t, f, reference)));
        set(6, cfg.prada_w.zip(sig.prada_w).is_some_and(|(t, w)| w < t));
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::derive_rng;
    use crate::traffic::{Alias, TemplateBank};
    use crate::world::{Mix, Skill};

    #[test]
    fn each_statistical_detector_separates_campaign_from_benign_features() {
        let mut rng = derive_rng(2, "t");
        let benign = TemplateBank::new(&Mix::benign(), 2000, &mut rng);
        let mut reference = [0.0; N_KINDS];
        for q in &benign.queries {
            reference[q.kind as usize] += 1.0 / 2000.0;
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
            entropy::entropy(&a) < 0.2 && entropy::entropy(&b) > 0.6,
            "{} {}",
            entropy::entropy(&a),
            entropy::entropy(&b)
        );
        assert_eq!(concentration::concentration(&a), 1.0);
        assert!(concentration::concentration(&b) < 0.4);
        assert!(
            mmd::mmd2(&a, &reference) > 0.3 && mmd::mmd2(&b, &reference) < 0.02,
            "{} {}",
            mmd::mmd2(&a, &reference),
            mmd::mmd2(&b, &reference)
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
