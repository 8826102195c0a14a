//! Detectors over the live query stream, per account and across accounts, with thresholds and
//! a delayed ban action; and the replay loop that drives them.
//!
//! Per-account features are fixed-size counters updated per query (no allocation); detectors
//! run every `check_minutes` over the accounts active since the last check.

use super::{
    accounts, kind_index, poisson, Alias, Query, ReplayStats, TemplateBank, TrafficConfig, N_KINDS,
};
use crate::api::ApiConfig;
use crate::rng::derive_rng;
use crate::world::{Kind, Mix, Skill, Tier};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Detector thresholds; a detector with threshold `None` is off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
            min_queries: 20,
            check_minutes: 60,
            action_delay_minutes: 60,
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
}

impl Default for Features {
    fn default() -> Self {
        Features {
            total: 0,
            today: 0,
            day: 0,
            kinds: [0; N_KINDS],
            reasoning: 0,
        }
    }
}

impl Features {
    #[inline]
    pub fn observe(&mut self, q: &Query) {
        let day = q.minute / 1440;
        if day != self.day {
            self.day = day;
            self.today = 0;
        }
        self.total += 1;
        self.today += 1;
        self.kinds[q.kind as usize] += 1;
        self.reasoning += q.reasoning as u32;
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

/// Which detectors flag an account (bit per detector, in `DetectorConfig` field order).
pub fn flags(cfg: &DetectorConfig, f: &Features, cluster: usize, reference: &[f64; N_KINDS]) -> u8 {
    let mut bits = 0u8;
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
    bits
}

/// Detection outcome of a replay.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DetectionStats {
    /// Simulated days to the first ban of an attacker account (None: never).
    pub days_to_first_action: Option<f64>,
    /// Attacker queries served before the last attacker account was banned (all if never).
    pub harvested_before_stop: u64,
    /// Share of attacker accounts banned.
    pub recall: f64,
    /// Share of benign accounts banned.
    pub false_positive_rate: f64,
    /// Benign queries refused because their account was banned.
    pub benign_blocked: u64,
}

/// Replay a campaign and a benign population on the API's limits with detectors acting.
pub fn replay(
    api: &ApiConfig,
    tr: &TrafficConfig,
    seed: u64,
) -> crate::Result<(ReplayStats, DetectionStats)> {
    let t0 = std::time::Instant::now();
    let (pop, camp, det, access) = (&tr.population, &tr.campaign, &tr.detectors, &tr.access);
    let mut accts = accounts(api, pop, camp, access, seed)?;
    // Access defenses fixed at sign-up: accounts over the per-payment limit are refused, and
    // accounts in blocked regions can send nothing.
    let mut per_payment: HashMap<u32, usize> = HashMap::new();
    let mut refused = vec![false; accts.len()];
    for (i, a) in accts.iter().enumerate() {
        let n = per_payment.entry(a.identity.payment).or_default();
        *n += 1;
        let over = access.max_accounts_per_payment.is_some_and(|m| *n > m);
        refused[i] = over || access.blocked_regions.contains(&a.identity.region);
    }
    drop(per_payment);
    let gate_minute = (access.tier_gate_days * 1440.0) as u32;
    let mut rng = derive_rng(seed, "traffic/replay");
    // Benign activity: log-normal daily rates, drawn through an alias table.
    let rates: Vec<f64> = (0..pop.users)
        .map(|_| {
            let z = crate::rng::normal_f64(&mut rng);
            pop.daily_median * (pop.sigma * z).exp()
        })
        .collect();
    let benign_per_minute: f64 = rates.iter().sum::<f64>() / 1440.0;
    let alias = Alias::new(&rates);
    let benign_bank = TemplateBank::new(&Mix::benign(), 4096, &mut rng);
    let mut attack_mix = Mix::benign();
    attack_mix.only_skills = camp.skills.clone();
    attack_mix.skills = 1.0;
    attack_mix.harmful = 0.0;
    attack_mix.lookalike = 0.0;
    attack_mix.affect = 0.0;
    attack_mix.probe = 0.0;
    attack_mix.hard_share = camp.hard_share;
    let attack_bank = TemplateBank::new(&attack_mix, 4096, &mut rng);
    // Benign reference distribution of kinds for the shift detector.
    let mut reference = [0.0f64; N_KINDS];
    for q in &benign_bank.queries {
        reference[q.0 as usize] += 1.0 / benign_bank.queries.len() as f64;
    }
    // Identity clusters: the largest group sharing any identity attribute.
    let mut groups: HashMap<(u8, u32), usize> = HashMap::new();
    for a in &accts {
        for key in [
            (0, a.identity.payment),
            (1, a.identity.ip_asn),
            (2, a.identity.fingerprint),
        ] {
            *groups.entry(key).or_default() += 1;
        }
    }
    let cluster: Vec<usize> = accts
        .iter()
        .map(|a| {
            [
                (0, a.identity.payment),
                (1, a.identity.ip_asn),
                (2, a.identity.fingerprint),
            ]
            .iter()
            .map(|k| groups[k])
            .max()
            .unwrap_or(1)
        })
        .collect();
    drop(groups);

    let mut features = vec![Features::default(); accts.len()];
    let mut dirty: Vec<u32> = Vec::new();
    let mut is_dirty = vec![false; accts.len()];
    // Scheduled bans, earliest first: (ban minute, account).
    let mut pending: std::collections::BinaryHeap<std::cmp::Reverse<(u32, u32)>> =
        Default::default();
    let mut flagged = vec![false; accts.len()]; // scheduled once, not at every pass
    let mut active_attackers: Vec<u32> = (pop.users as u32..accts.len() as u32)
        .filter(|&a| !refused[a as usize])
        .collect();
    let attack_per_minute_each = camp.daily_per_account / 1440.0;
    let minutes = (camp.days * 1440.0) as u32;
    let mut stats = ReplayStats::default();
    let mut det_stats = DetectionStats::default();
    let mut stop_at: Option<u64> = None;
    for minute in 0..minutes {
        let now = minute as f64 * 60.0;
        if gate_minute > 0 && minute == gate_minute {
            for a in accts.iter_mut() {
                a.ungate(api, now);
            }
        }
        // Due bans.
        while let Some(&std::cmp::Reverse((at, a))) = pending.peek() {
            if at > minute {
                break;
            }
            pending.pop();
            let acc = &mut accts[a as usize];
            if acc.banned_at.is_none() {
                acc.banned_at = Some(minute);
                if acc.attacker && det_stats.days_to_first_action.is_none() {
                    det_stats.days_to_first_action = Some(minute as f64 / 1440.0);
                }
            }
        }
        active_attackers.retain(|&a| accts[a as usize].banned_at.is_none());
        if active_attackers.is_empty() && stop_at.is_none() && camp.accounts > 0 {
            stop_at = Some(stats.attacker_served);
        }
        let n_benign = poisson(&mut rng, benign_per_minute);
        let n_attack = poisson(
            &mut rng,
            attack_per_minute_each * active_attackers.len() as f64,
        );
        for i in 0..n_benign + n_attack {
            let attacker = i >= n_benign;
            let (account, t) = if attacker {
                let a = active_attackers[rng.random_range(0..active_attackers.len())];
                (
                    a,
                    attack_bank.queries[rng.random_range(0..attack_bank.queries.len())],
                )
            } else {
                let a = alias.sample(&mut rng) as u32;
                (
                    a,
                    benign_bank.queries[rng.random_range(0..benign_bank.queries.len())],
                )
            };
            let q = Query {
                minute,
                account,
                kind: t.0,
                input_tokens: t.1,
                output_tokens: t.2,
                reasoning: t.3,
            };
            stats.queries += 1;
            let acc = &mut accts[account as usize];
            if acc.banned_at.is_some() || refused[account as usize] {
                stats.blocked_banned += 1;
                if !attacker {
                    stats.benign_blocked += 1;
                }
                continue;
            }
            let tier = &api.tiers[acc.tier];
            if !acc.serve(now, &q, tier.price_in, tier.price_out) {
                stats.throttled += 1;
                continue;
            }
            if attacker {
                stats.attacker_served += 1;
            } else {
                stats.benign_served += 1;
            }
            features[account as usize].observe(&q);
            if !is_dirty[account as usize] {
                is_dirty[account as usize] = true;
                dirty.push(account);
            }
        }
        if (minute + 1) % det.check_minutes.max(1) == 0 {
            for &a in &dirty {
                is_dirty[a as usize] = false;
                if !flagged[a as usize]
                    && flags(det, &features[a as usize], cluster[a as usize], &reference) != 0
                {
                    flagged[a as usize] = true;
                    pending.push(std::cmp::Reverse((
                        minute.saturating_add(det.action_delay_minutes),
                        a,
                    )));
                }
            }
            dirty.clear();
        }
    }
    let attackers = accts.iter().filter(|a| a.attacker).count();
    let benign = accts.len() - attackers;
    let banned = |att: bool| {
        accts
            .iter()
            .filter(|a| a.attacker == att && a.banned_at.is_some())
            .count()
    };
    det_stats.recall = if attackers == 0 {
        f64::NAN
    } else {
        banned(true) as f64 / attackers as f64
    };
    det_stats.false_positive_rate = banned(false) as f64 / benign.max(1) as f64;
    det_stats.harvested_before_stop = stop_at.unwrap_or(stats.attacker_served);
    det_stats.benign_blocked = stats.benign_blocked;
    stats.wall_seconds = t0.elapsed().as_secs_f64();
    let _ = kind_index(Kind::Skill(Skill::Add, Tier::Hard));
    Ok((stats, det_stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> (ApiConfig, TrafficConfig) {
        let tr = TrafficConfig {
            population: crate::traffic::PopulationConfig {
                users: 500,
                ..Default::default()
            },
            campaign: crate::traffic::CampaignConfig {
                accounts: 40,
                days: 3.0,
                ..Default::default()
            },
            ..Default::default()
        };
        (ApiConfig::default(), tr)
    }

    #[test]
    fn detectors_flag_a_campaign_and_not_benign_users() {
        let (api, tr) = small();
        let (stats, d) = replay(&api, &tr, 1).unwrap();
        assert!(stats.attacker_served > 0 && stats.benign_served > 0);
        assert!(d.recall > 0.9, "{d:?}");
        assert!(d.false_positive_rate < 0.02, "{d:?}");
        assert!(d.days_to_first_action.unwrap() < 1.0, "{d:?}");
        // With every detector off nothing is banned.
        let off = DetectorConfig {
            volume_per_day: None,
            min_entropy: None,
            skill_concentration: None,
            reasoning_share: None,
            mmd: None,
            cluster_size: None,
            ..Default::default()
        };
        let tr_off = TrafficConfig {
            detectors: off,
            ..tr.clone()
        };
        let (s2, d2) = replay(&api, &tr_off, 1).unwrap();
        assert_eq!((d2.recall, d2.false_positive_rate), (0.0, 0.0));
        assert_eq!(d2.harvested_before_stop, s2.attacker_served);
        assert!(s2.attacker_served > stats.attacker_served);
    }

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
            for (i, t) in bank.queries.iter().take(n).enumerate() {
                f.observe(&Query {
                    minute: i as u32,
                    account: 0,
                    kind: t.0,
                    input_tokens: t.1,
                    output_tokens: t.2,
                    reasoning: t.3,
                });
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
    fn access_defenses_refuse_datacenter_regions_and_extra_accounts() {
        let (api, mut tr) = small();
        tr.detectors = DetectorConfig {
            volume_per_day: None,
            min_entropy: None,
            skill_concentration: None,
            reasoning_share: None,
            mmd: None,
            cluster_size: None,
            ..Default::default()
        };
        let (open, _) = replay(&api, &tr, 1).unwrap();
        // 40 accounts, 10 per payment instrument: a limit of 2 leaves 8 accounts.
        tr.access.max_accounts_per_payment = Some(2);
        let (capped, d) = replay(&api, &tr, 1).unwrap();
        let ratio = capped.attacker_served as f64 / open.attacker_served as f64;
        assert!((ratio - 0.2).abs() < 0.03, "{ratio}");
        assert_eq!(
            capped.benign_blocked, 0,
            "benign users have their own payment instruments"
        );
        assert_eq!(d.recall, 0.0, "refusing sign-ups is not a detection");
        // Blocking the datacenter region stops a campaign without proxies; with 60% on
        // residential proxies, about 60% of it gets through.
        tr.access = crate::traffic::AccessConfig {
            blocked_regions: vec![crate::traffic::DATACENTER_REGION],
            ..Default::default()
        };
        let (blocked, d) = replay(&api, &tr, 1).unwrap();
        assert_eq!((blocked.attacker_served, d.harvested_before_stop), (0, 0));
        assert_eq!(blocked.benign_blocked, 0);
        tr.campaign.proxy_share = 0.6;
        let (proxied, _) = replay(&api, &tr, 1).unwrap();
        let ratio = proxied.attacker_served as f64 / open.attacker_served as f64;
        assert!((ratio - 0.6).abs() < 0.2, "{ratio}");
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
