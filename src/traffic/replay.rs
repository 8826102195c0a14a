//! The replay loop: benign users and a campaign on the simulated clock, through access
//! defenses, limits and ledgers, with detectors flagging accounts and delayed actions.

use super::detect::{flags, Features, Signals};
use super::prada::PradaState;
use super::{
    accounts, poisson, Action, Alias, Pacing, ReplayStats, TemplateBank, TrafficConfig,
    ATTACK_BANK, N_KINDS,
};
use crate::api::ApiConfig;
use crate::rng::derive_rng;
use crate::world::Mix;
use rand::Rng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Detection outcome of a replay.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DetectionStats {
    /// Simulated days to the first action on an attacker account (None: never).
    pub days_to_first_action: Option<f64>,
    /// Attacker queries served before the last attacker account was banned (all if never).
    pub harvested_before_stop: u64,
    /// Share of attacker accounts actioned (banned, throttled, challenged or rerouted).
    pub recall: f64,
    /// Share of benign accounts actioned.
    pub false_positive_rate: f64,
    /// Benign queries refused because their account was banned or suspended.
    pub benign_blocked: u64,
    /// Benign queries throttled on accounts a throttle action had cut.
    pub benign_throttled: u64,
    /// Challenges sent to attacker / benign accounts.
    pub challenged_attackers: u64,
    pub challenged_benign: u64,
    /// Challenged benign users who gave up.
    pub benign_dropped: u64,
    /// What the attacker paid: API spend and identity challenges, USD.
    pub attacker_spend_usd: f64,
    pub attacker_challenge_usd: f64,
    /// Attacker accounts opened (initial, scheduled and regrown) and what they and their
    /// identities cost, USD.
    pub attacker_accounts_opened: u64,
    pub attacker_accounts_usd: f64,
    /// Accounts regrown after a loss.
    pub regrown: u64,
    /// Per simulated day.
    pub timeline: Vec<DayPoint>,
}

/// One simulated day of a replay.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DayPoint {
    pub day: u32,
    pub attacker_served: u64,
    pub benign_served: u64,
    /// Actions taken that day on attacker / benign accounts.
    pub attacker_actions: u64,
    pub benign_actions: u64,
    /// Attacker accounts able to send at the end of the day.
    pub attacker_accounts_active: u64,
}

/// Minutes of history a burst is judged against.
const BURST_WINDOW: usize = 15;

/// A scheduled event on an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A scheduled attacker account opens.
    Activate,
    /// A replacement for a lost attacker account opens (hydra regrowth).
    Regrow,
    /// The configured action takes effect.
    Act,
    /// A challenge's outcome is due.
    Resolve,
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
    let mut gated: Vec<u32> = (0..accts.len() as u32)
        .filter(|&a| accts[a as usize].gated)
        .collect();
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
    let attack_bank = if camp.seed_prompts > 0 {
        TemplateBank::perturbed(&attack_mix, camp.seed_prompts, 4096, &mut rng)
    } else {
        TemplateBank::new(&attack_mix, 4096, &mut rng)
    };
    let emb = |t: u16| {
        if t & ATTACK_BANK != 0 {
            attack_bank.emb[(t & !ATTACK_BANK) as usize]
        } else {
            benign_bank.emb[t as usize]
        }
    };
    // Benign reference distribution of kinds for the shift detector.
    let mut reference = [0.0f64; N_KINDS];
    for q in &benign_bank.queries {
        reference[q.0 as usize] += 1.0 / benign_bank.queries.len() as f64;
    }
    // Identity clusters: the largest group sharing any identity attribute.
    let mut groups: HashMap<(u8, u32), usize> = HashMap::new();
    let keys = |a: &super::AccountState| {
        [
            (0u8, a.identity.payment),
            (1, a.identity.ip_asn),
            (2, a.identity.fingerprint),
        ]
    };
    for a in &accts {
        for key in keys(a) {
            *groups.entry(key).or_default() += 1;
        }
    }
    let cluster: Vec<usize> = accts
        .iter()
        .map(|a| keys(a).iter().map(|k| groups[k]).max().unwrap_or(1))
        .collect();
    drop(groups);

    // Scheduled events, earliest first.
    let mut pending: BinaryHeap<Reverse<(u32, Event, u32)>> = BinaryHeap::new();
    let mut cluster = cluster;
    let mut features = vec![Features::default(); accts.len()];
    let mut prada: Vec<PradaState> = if det.prada_w.is_some() {
        // Judged once per `prada::JUDGE_EVERY` new distances (not at every pass), so that one account is
        // not tested hundreds of times on overlapping windows.
        vec![PradaState::default(); accts.len()]
    } else {
        Vec::new()
    };
    let mut dirty: Vec<u32> = Vec::new();
    let mut is_dirty = vec![false; accts.len()];
    // Accounts active this minute, and the last hour's counts (for the burst test).
    let mut this_minute: Vec<u32> = Vec::new();
    let mut recent_counts: std::collections::VecDeque<usize> = Default::default();
    let mut flagged = vec![false; accts.len()]; // scheduled once, not at every pass
    let mut actioned = vec![false; accts.len()];
    // Throttled accounts an adaptive campaign stopped using, and accounts already replaced.
    let mut abandoned = vec![false; accts.len()];
    let mut regrow_scheduled = vec![false; accts.len()];
    // Attacker accounts open on their schedule (all on day 0 by default).
    let mut active_attackers: Vec<u32> = Vec::new();
    let mut accounts_due = 0usize; // scheduled or regrowing, not yet open
    for (k, a) in (pop.users as u32..accts.len() as u32).enumerate() {
        let at = camp
            .creation_per_day
            .filter(|r| *r > 0.0)
            .map_or(0, |r| (k as f64 / r * 1440.0) as u32);
        if at == 0 {
            if !refused[a as usize] {
                active_attackers.push(a);
            }
        } else {
            accounts_due += 1;
            pending.push(Reverse((at, Event::Activate, a)));
        }
    }
    let initial_accounts = camp.accounts as u64;
    // Limits in force (a mid-campaign change rescales them) and the campaign's rate factor.
    let mut api_now = api.clone();
    let change_minute = tr.limit_change.as_ref().map(|c| (c.day * 1440.0) as u32);
    let mut rate_factor = 1.0;
    // An adaptive campaign changes its behaviour after its first lost account.
    let mut adapted = false;
    let mut next_identity = 3_000_000u32;
    let mut per_payment: HashMap<u32, usize> = HashMap::new();
    for a in &accts {
        *per_payment.entry(a.identity.payment).or_default() += 1;
    }
    let minutes = (camp.days * 1440.0) as u32;
    let burst = camp.burst_minutes.max(1);
    let mut stats = ReplayStats::default();
    let mut d = DetectionStats {
        attacker_accounts_opened: initial_accounts,
        ..Default::default()
    };
    let mut stop_at: Option<u64> = None;
    let mut day_point = DayPoint::default();
    for minute in 0..minutes {
        let now = minute as f64 * 60.0;
        if minute / 1440 != day_point.day {
            day_point.attacker_accounts_active = active_attackers.len() as u64;
            d.timeline.push(std::mem::take(&mut day_point));
            day_point.day = minute / 1440;
        }
        if change_minute == Some(minute) {
            let f = tr.limit_change.as_ref().map_or(1.0, |c| c.factor);
            for t in api_now.tiers.iter_mut() {
                t.rpm *= f;
                t.input_tpm *= f;
                t.output_tpm *= f;
            }
            for acc in accts.iter_mut().filter(|a| !a.gated) {
                let factor = if acc.throttled {
                    tr.throttle_factor
                } else {
                    1.0
                };
                acc.set_limits(&api_now, factor, now);
            }
            if camp.adaptive {
                rate_factor *= f;
            }
        }
        // Due actions and challenge outcomes.
        while let Some(&Reverse((at, ev, a))) = pending.peek() {
            if at > minute {
                break;
            }
            pending.pop();
            if matches!(ev, Event::Activate | Event::Regrow) {
                accounts_due -= 1;
                let a = if ev == Event::Regrow {
                    // A replacement: the lost account's identity, or a fresh one once adapted.
                    let old = &accts[a as usize];
                    let mut new = super::AccountState::open(
                        old.identity,
                        old.attacker,
                        old.tier,
                        &api_now,
                        access,
                        now,
                    );
                    let mut group = cluster[a as usize];
                    if adapted {
                        next_identity += 1;
                        new.identity.payment = next_identity;
                        new.identity.ip_asn = next_identity;
                        new.identity.fingerprint = next_identity;
                        group = 1;
                    }
                    let n = per_payment.entry(new.identity.payment).or_default();
                    *n += 1;
                    let over = access.max_accounts_per_payment.is_some_and(|m| *n > m);
                    refused.push(over || access.blocked_regions.contains(&new.identity.region));
                    accts.push(new);
                    cluster.push(group);
                    features.push(Features::default());
                    if det.prada_w.is_some() {
                        prada.push(PradaState::default());
                    }
                    is_dirty.push(false);
                    flagged.push(false);
                    actioned.push(false);
                    abandoned.push(false);
                    regrow_scheduled.push(false);
                    d.regrown += 1;
                    d.attacker_accounts_opened += 1;
                    (accts.len() - 1) as u32
                } else {
                    a
                };
                if !refused[a as usize] {
                    active_attackers.push(a);
                }
                continue;
            }
            let acc = &mut accts[a as usize];
            if acc.banned_at.is_some() {
                continue;
            }
            let was_attacker = acc.attacker;
            match ev {
                Event::Act => {
                    actioned[a as usize] = true;
                    if acc.attacker {
                        day_point.attacker_actions += 1;
                        if d.days_to_first_action.is_none() {
                            d.days_to_first_action = Some(minute as f64 / 1440.0);
                        }
                    } else {
                        day_point.benign_actions += 1;
                    }
                    match tr.action {
                        Action::Ban | Action::FallbackVisible | Action::FallbackSilent => {
                            acc.banned_at = Some(minute);
                        }
                        Action::Throttle => {
                            acc.throttled = true;
                            acc.gated = false;
                            acc.set_limits(&api_now, tr.throttle_factor, now);
                        }
                        Action::Challenge => {
                            let due = minute + (tr.challenge.hours * 60.0).round() as u32;
                            acc.suspended_until = Some(due);
                            pending.push(Reverse((due, Event::Resolve, a)));
                            if acc.attacker {
                                d.challenged_attackers += 1;
                                d.attacker_challenge_usd += tr.challenge.attacker_cost_usd;
                            } else {
                                d.challenged_benign += 1;
                            }
                        }
                    }
                }
                Event::Resolve => {
                    let pass = if acc.attacker {
                        rng.random_bool(tr.challenge.attacker_pass.clamp(0.0, 1.0))
                    } else {
                        let stay = !rng.random_bool(tr.challenge.benign_dropoff.clamp(0.0, 1.0));
                        d.benign_dropped += !stay as u64;
                        stay
                    };
                    acc.suspended_until = None;
                    if pass {
                        acc.identity.verified = true;
                    } else {
                        acc.banned_at = Some(minute);
                    }
                }
                Event::Activate | Event::Regrow => {}
            }
            // An adaptive campaign abandons a throttled account (and adapts) as if it were lost.
            let throttled = accts[a as usize].throttled;
            if was_attacker && camp.adaptive && throttled && !abandoned[a as usize] {
                abandoned[a as usize] = true;
                active_attackers.retain(|&x| x != a);
            }
            // A lost attacker account: the campaign may adapt and regrow it.
            let lost = accts[a as usize].banned_at.is_some() || abandoned[a as usize];
            if was_attacker && lost && !regrow_scheduled[a as usize] {
                regrow_scheduled[a as usize] = true;
                adapted |= camp.adaptive;
                if let Some(h) = camp.regrow_hours {
                    accounts_due += 1;
                    pending.push(Reverse((
                        minute + (h * 60.0).round() as u32,
                        Event::Regrow,
                        a,
                    )));
                }
            }
        }
        active_attackers.retain(|&a| accts[a as usize].banned_at.is_none());
        if active_attackers.is_empty()
            && accounts_due == 0
            && stop_at.is_none()
            && camp.accounts > 0
        {
            stop_at = Some(stats.attacker_served);
        }
        let diurnal = 1.0
            + pop.diurnal
                * (std::f64::consts::TAU * ((minute % 1440) as f64 - 360.0) / 1440.0).sin();
        let n_benign = poisson(&mut rng, benign_per_minute * diurnal.max(0.0));
        let pacing = if adapted {
            Pacing::BenignLike
        } else {
            camp.pacing
        };
        let per_minute = rate_factor * camp.daily_per_account / 1440.0;
        let attack_rate = match pacing {
            Pacing::Random => per_minute,
            Pacing::BenignLike => per_minute * diurnal.max(0.0),
            Pacing::Synchronized if minute % burst == 0 => per_minute * burst as f64,
            Pacing::Synchronized => 0.0,
        };
        let n_attack = poisson(&mut rng, attack_rate * active_attackers.len() as f64);
        for i in 0..n_benign + n_attack {
            let attacker = i >= n_benign;
            let q = if attacker {
                let a = active_attackers[rng.random_range(0..active_attackers.len())];
                if adapted {
                    // Benign-looking queries.
                    let t = rng.random_range(0..benign_bank.queries.len());
                    benign_bank.query(t, minute, a, false)
                } else {
                    let t = rng.random_range(0..attack_bank.queries.len());
                    attack_bank.query(t, minute, a, true)
                }
            } else {
                let a = alias.sample(&mut rng) as u32;
                let t = rng.random_range(0..benign_bank.queries.len());
                benign_bank.query(t, minute, a, false)
            };
            let account = q.account as usize;
            stats.queries += 1;
            let acc = &mut accts[account];
            if acc.banned_at.is_some()
                || refused[account]
                || acc.suspended_until.is_some_and(|u| minute < u)
            {
                stats.blocked_banned += 1;
                if !attacker {
                    stats.benign_blocked += 1;
                }
                continue;
            }
            let tier = &api.tiers[acc.tier];
            if !acc.serve(now, &q, tier.price_in, tier.price_out) {
                stats.throttled += 1;
                if !attacker && acc.throttled {
                    d.benign_throttled += 1;
                }
                continue;
            }
            if attacker {
                stats.attacker_served += 1;
                day_point.attacker_served += 1;
            } else {
                stats.benign_served += 1;
                day_point.benign_served += 1;
            }
            if features[account].observe(&q) {
                this_minute.push(q.account);
            }
            if let Some(p) = prada.get_mut(account) {
                p.observe(q.template, emb);
            }
            if !is_dirty[account] {
                is_dirty[account] = true;
                dirty.push(q.account);
            }
        }
        // Burst minutes: far more active accounts than the last hour's median.
        if det.sync_share.is_some() {
            if recent_counts.len() >= BURST_WINDOW {
                let mut window = [0usize; BURST_WINDOW];
                for (w, &c) in window.iter_mut().zip(&recent_counts) {
                    *w = c;
                }
                let median = *window.select_nth_unstable(BURST_WINDOW / 2).1 as f64;
                let n = this_minute.len() as f64;
                if n > median + det.burst_z * median.max(1.0).sqrt()
                    && n > median * (1.0 + det.burst_rel)
                {
                    for &a in &this_minute {
                        features[a as usize].burst_minutes += 1;
                    }
                }
            }
            recent_counts.push_back(this_minute.len());
            if recent_counts.len() > BURST_WINDOW {
                recent_counts.pop_front();
            }
        }
        this_minute.clear();
        if (minute + 1) % det.check_minutes.max(1) == 0 {
            // Tier gate: lift accounts old enough and with enough spend.
            if !gated.is_empty() && minute >= gate_minute {
                gated.retain(|&a| {
                    let acc = &mut accts[a as usize];
                    if !acc.gated {
                        return false;
                    }
                    if acc.ledger.spend_usd >= access.tier_gate_spend_usd {
                        acc.gated = false;
                        acc.set_limits(&api_now, 1.0, now);
                        return false;
                    }
                    true
                });
            }
            for &a in &dirty {
                is_dirty[a as usize] = false;
                let signals = Signals {
                    cluster: cluster[a as usize],
                    prada_w: prada
                        .get_mut(a as usize)
                        .filter(|p| p.samples() >= det.prada_min)
                        .and_then(|p| p.judge()),
                };
                if !flagged[a as usize]
                    && flags(det, &features[a as usize], &signals, &reference) != 0
                {
                    flagged[a as usize] = true;
                    let at = minute.saturating_add(det.action_delay_minutes);
                    pending.push(Reverse((at, Event::Act, a)));
                }
            }
            dirty.clear();
        }
    }
    day_point.attacker_accounts_active = active_attackers.len() as u64;
    d.timeline.push(day_point);
    let identities: std::collections::HashSet<u32> = accts
        .iter()
        .filter(|a| a.attacker)
        .map(|a| a.identity.payment)
        .collect();
    d.attacker_accounts_usd = d.attacker_accounts_opened as f64 * camp.account_cost_usd
        + identities.len() as f64 * camp.identity_cost_usd;
    let attackers = accts.iter().filter(|a| a.attacker).count();
    let benign = accts.len() - attackers;
    let count = |att: bool| {
        accts
            .iter()
            .zip(&actioned)
            .filter(|(a, &x)| a.attacker == att && x)
            .count()
    };
    d.recall = if attackers == 0 {
        f64::NAN
    } else {
        count(true) as f64 / attackers as f64
    };
    d.false_positive_rate = count(false) as f64 / benign.max(1) as f64;
    d.harvested_before_stop = stop_at.unwrap_or(stats.attacker_served);
    d.benign_blocked = stats.benign_blocked;
    d.attacker_spend_usd = accts
        .iter()
        .filter(|a| a.attacker)
        .map(|a| a.ledger.spend_usd)
        .sum();
    stats.wall_seconds = t0.elapsed().as_secs_f64();
    Ok((stats, d))
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

    /// One detector on, the others off.
    fn only(f: impl Fn(&mut DetectorConfig)) -> DetectorConfig {
        let mut d = DetectorConfig::off();
        f(&mut d);
        d
    }

    #[test]
    fn synchronised_timing_is_caught_and_random_timing_is_not() {
        let (api, mut tr) = small();
        tr.campaign.identity_sharing = 1;
        tr.detectors = only(|d| d.sync_share = Some(0.5));
        tr.campaign.pacing = crate::traffic::Pacing::Synchronized;
        let (_, sync) = replay(&api, &tr, 1).unwrap();
        tr.campaign.pacing = crate::traffic::Pacing::Random;
        let (_, random) = replay(&api, &tr, 1).unwrap();
        assert!(sync.recall > 0.9, "{sync:?}");
        assert!(random.recall < 0.1, "{random:?}");
        assert!(
            sync.false_positive_rate < 0.01 && random.false_positive_rate < 0.01,
            "{} {}",
            sync.false_positive_rate,
            random.false_positive_rate
        );
    }

    #[test]
    fn prada_catches_a_synthetic_campaign() {
        let (api, mut tr) = small();
        tr.detectors = only(|d| d.prada_w = DetectorConfig::default().prada_w);
        tr.campaign.days = 6.0;
        tr.campaign.seed_prompts = 20;
        let (_, synthetic) = replay(&api, &tr, 1).unwrap();
        tr.campaign.seed_prompts = 0;
        let (_, fresh) = replay(&api, &tr, 1).unwrap();
        assert!(synthetic.recall > 0.8, "{synthetic:?}");
        assert!(fresh.recall < 0.2, "{fresh:?}");
        assert!(synthetic.false_positive_rate < 0.02, "{synthetic:?}");
    }

    #[test]
    fn throttle_and_challenge_actions() {
        let (api, mut tr) = small();
        tr.detectors = only(|d| d.cluster_size = Some(5));
        tr.detectors.action_delay_minutes = 0;
        tr.action = crate::traffic::Action::Ban;
        let (banned, _) = replay(&api, &tr, 1).unwrap();
        tr.detectors = DetectorConfig::off();
        let (open, _) = replay(&api, &tr, 1).unwrap();
        tr.detectors = only(|d| d.cluster_size = Some(5));
        tr.detectors.action_delay_minutes = 0;
        // Throttling to 2% of tier 1 (one request a minute, 200 output tokens) slows but does
        // not stop it.
        tr.action = crate::traffic::Action::Throttle;
        tr.throttle_factor = 0.02;
        let (thr, d) = replay(&api, &tr, 1).unwrap();
        assert_eq!(d.recall, 1.0);
        assert!(
            banned.attacker_served < thr.attacker_served
                && thr.attacker_served < open.attacker_served,
            "{} {} {}",
            banned.attacker_served,
            thr.attacker_served,
            open.attacker_served
        );
        // Challenges: every attacker account is challenged, pays, and about 30% pass.
        tr.action = crate::traffic::Action::Challenge;
        let (ch, d) = replay(&api, &tr, 1).unwrap();
        assert_eq!(d.challenged_attackers, 40);
        assert_eq!(
            d.attacker_challenge_usd,
            40.0 * tr.challenge.attacker_cost_usd
        );
        assert!(ch.attacker_served > banned.attacker_served);
        // The 24-hour suspension holds: a campaign of 3 days keeps under 2/3 of its queries.
        assert!((ch.attacker_served as f64) < 0.67 * open.attacker_served as f64);
    }

    #[test]
    fn challenged_benign_users_drop_off_at_the_configured_rate() {
        let (api, mut tr) = small();
        // A volume limit low enough to flag many benign users.
        tr.detectors = only(|d| d.volume_per_day = Some(10));
        tr.action = crate::traffic::Action::Challenge;
        tr.challenge.benign_dropoff = 0.5;
        let (_, d) = replay(&api, &tr, 1).unwrap();
        assert!(d.challenged_benign > 50, "{d:?}");
        let share = d.benign_dropped as f64 / d.challenged_benign as f64;
        assert!((share - 0.5).abs() < 0.15, "{share}");
        assert!(d.benign_blocked > 0);
    }

    #[test]
    fn spend_gate_holds_accounts_to_the_free_tier() {
        let (api, mut tr) = small();
        tr.detectors = DetectorConfig::off();
        tr.campaign.daily_per_account = 2000.0;
        let (open, _) = replay(&api, &tr, 1).unwrap();
        tr.access.tier_gate_spend_usd = 1e9;
        let (gated, _) = replay(&api, &tr, 1).unwrap();
        // The free tier allows 5 requests a minute: 7200 a day against 2000 asked; its
        // output-token limit is what binds.
        assert!(
            gated.attacker_served < open.attacker_served,
            "{gated:?} {open:?}"
        );
        assert!(gated.throttled > open.throttled);
        // A gate of one day and a reachable spend lifts the limit again.
        tr.access.tier_gate_spend_usd = 0.01;
        tr.access.tier_gate_days = 1.0;
        let (lifted, _) = replay(&api, &tr, 1).unwrap();
        assert!(lifted.attacker_served > gated.attacker_served);
    }

    #[test]
    fn hydra_regrowth_restores_the_account_count_after_the_delay() {
        let (api, mut tr) = small();
        tr.campaign.days = 4.0;
        tr.detectors = only(|d| d.cluster_size = Some(5)); // bans the whole campaign on day 0
        tr.detectors.action_delay_minutes = 0;
        let (_, plain) = replay(&api, &tr, 1).unwrap();
        assert_eq!(plain.timeline[1].attacker_accounts_active, 0);
        tr.campaign.regrow_hours = Some(24.0);
        let (_, hydra) = replay(&api, &tr, 1).unwrap();
        // Banned within the first hours of day 0 and back 24 h later, every day: with their
        // old shared identities they are banned again within hours.
        assert_eq!(hydra.timeline[0].attacker_accounts_active, 0);
        for day in &hydra.timeline[1..] {
            assert_eq!(day.attacker_actions, 40, "{:?}", hydra.timeline);
        }
        assert_eq!(hydra.regrown, 120);
        assert_eq!(hydra.attacker_accounts_opened, 40 + hydra.regrown);
        let cost = hydra.attacker_accounts_usd;
        assert!((cost - (hydra.attacker_accounts_opened as f64 * 2.0 + 4.0 * 10.0)).abs() < 1e-9);
        // An adaptive campaign regrows them with fresh identities: the count is restored 24 h
        // after the bans and stays.
        tr.campaign.adaptive = true;
        let (_, adaptive) = replay(&api, &tr, 1).unwrap();
        let active: Vec<u64> = adaptive
            .timeline
            .iter()
            .map(|d| d.attacker_accounts_active)
            .collect();
        assert_eq!(active, vec![0, 40, 40, 40], "{:?}", adaptive.timeline);
    }

    #[test]
    fn an_adaptive_campaign_loses_less_to_detection_than_a_naive_one() {
        let (api, mut tr) = small();
        tr.campaign.days = 6.0;
        tr.campaign.identity_sharing = 1;
        tr.campaign.regrow_hours = Some(6.0);
        tr.detectors = only(|d| d.reasoning_share = Some(0.7));
        let (naive_s, naive) = replay(&api, &tr, 1).unwrap();
        tr.campaign.adaptive = true;
        let (adapt_s, adapt) = replay(&api, &tr, 1).unwrap();
        // Queries planned but not served (lost to bans and regrowth delays).
        let planned = 40.0 * 26.0 * 6.0;
        let lost = |s: &ReplayStats| planned - s.attacker_served as f64;
        assert!(
            lost(&adapt_s) < lost(&naive_s) / 3.0,
            "adaptive lost {} vs naive {}",
            lost(&adapt_s),
            lost(&naive_s)
        );
        // The naive campaign's regrown accounts keep getting banned; the adapted ones do not.
        assert!(
            adapt.regrown < naive.regrown,
            "{} {}",
            adapt.regrown,
            naive.regrown
        );
    }

    #[test]
    fn creation_schedule_and_a_limit_change_the_adaptive_attacker_scales_into() {
        let (api, mut tr) = small();
        tr.detectors = DetectorConfig::off();
        tr.campaign.days = 4.0;
        tr.campaign.creation_per_day = Some(20.0); // 40 accounts over two days
        let (_, d) = replay(&api, &tr, 1).unwrap();
        let active: Vec<u64> = d
            .timeline
            .iter()
            .map(|p| p.attacker_accounts_active)
            .collect();
        assert_eq!(active, vec![20, 40, 40, 40]);
        tr.campaign.creation_per_day = None;
        tr.limit_change = Some(crate::traffic::LimitChange {
            day: 2.0,
            factor: 2.0,
        });
        let served = |tr: &TrafficConfig| -> (f64, f64) {
            let (_, d) = replay(&api, tr, 1).unwrap();
            let t = &d.timeline;
            (
                (t[0].attacker_served + t[1].attacker_served) as f64,
                (t[2].attacker_served + t[3].attacker_served) as f64,
            )
        };
        let (before, after) = served(&tr);
        assert!(
            (after / before - 1.0).abs() < 0.1,
            "naive {before} -> {after}"
        );
        tr.campaign.adaptive = true;
        let (before, after) = served(&tr);
        assert!(
            (after / before - 2.0).abs() < 0.2,
            "adaptive {before} -> {after}"
        );
    }

    #[test]
    fn an_adaptive_campaign_abandons_throttled_accounts_and_regrows_them() {
        let (api, mut tr) = small();
        tr.campaign.days = 4.0;
        tr.campaign.identity_sharing = 1;
        tr.campaign.regrow_hours = Some(6.0);
        tr.action = crate::traffic::Action::Throttle;
        tr.throttle_factor = 0.02;
        tr.detectors = only(|d| d.reasoning_share = Some(0.7));
        let (_, naive) = replay(&api, &tr, 1).unwrap();
        assert_eq!(
            naive.regrown, 0,
            "a naive campaign keeps its throttled accounts"
        );
        tr.campaign.adaptive = true;
        let (_, adaptive) = replay(&api, &tr, 1).unwrap();
        // Every throttled account is abandoned and replaced; after the first throttle the
        // campaign sends benign-looking queries and the rest are never flagged.
        assert!(adaptive.regrown > 0);
        let throttled: u64 = adaptive.timeline.iter().map(|d| d.attacker_actions).sum();
        assert_eq!(adaptive.regrown, throttled);
        let last = adaptive.timeline.last().unwrap();
        assert_eq!(last.attacker_actions, 0);
        assert_eq!(last.attacker_accounts_active, 40);
    }
}
