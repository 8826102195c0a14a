//! The replay loop: benign users and a campaign on the simulated clock, through access
//! defenses, limits and ledgers, with detectors flagging accounts and delayed actions.

use super::detect::{flags, Features};
use super::{accounts, poisson, Alias, Query, ReplayStats, TemplateBank, TrafficConfig, N_KINDS};
use crate::api::ApiConfig;
use crate::rng::derive_rng;
use crate::world::Mix;
use rand::Rng;
use serde::Serialize;
use std::collections::HashMap;

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
    Ok((stats, det_stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::detect::DetectorConfig;

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
        let off = DetectorConfig::off();
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
    fn access_defenses_refuse_datacenter_regions_and_extra_accounts() {
        let (api, mut tr) = small();
        tr.detectors = DetectorConfig::off();
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
}
