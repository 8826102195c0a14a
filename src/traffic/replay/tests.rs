use super::*;
use crate::traffic::detect::DetectorConfig;

/// The campaign of the detector tests: 40 accounts for 3 days asking skill questions,
/// 80% on hard tiers, among 500 benign users.
fn small() -> (ApiConfig, TrafficConfig, AttackerConfig) {
    let tr = TrafficConfig {
        population: crate::traffic::PopulationConfig {
            users: 500,
            ..Default::default()
        },
        ..Default::default()
    };
    let att = AttackerConfig {
        accounts: 40,
        max_days: 3.0,
        harmful_share: 0.0,
        hard_share: Some(0.8),
        strategy: crate::attacker::Strategy::Targeted {
            skills: crate::world::Skill::ALL.to_vec(),
        },
        ..Default::default()
    };
    (ApiConfig::default(), tr, att)
}

#[test]
fn detectors_flag_a_campaign_and_not_benign_users() {
    let (api, tr, att) = small();
    let (stats, d) = replay(&api, &tr, &att, 1).unwrap();
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
    let (s2, d2) = replay(&api, &tr_off, &att, 1).unwrap();
    assert_eq!((d2.recall, d2.false_positive_rate), (0.0, 0.0));
    assert_eq!(d2.harvested_before_stop, s2.attacker_served);
    assert!(s2.attacker_served > stats.attacker_served);
}

#[test]
fn access_defenses_refuse_datacenter_regions_and_extra_accounts() {
    let (api, mut tr, att) = small();
    tr.detectors = DetectorConfig::off();
    let (open, _) = replay(&api, &tr, &att, 1).unwrap();
    // 40 accounts, 10 per payment instrument: a limit of 2 leaves 8 accounts.
    tr.access.max_accounts_per_payment = Some(2);
    let (capped, d) = replay(&api, &tr, &att, 1).unwrap();
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
    let (blocked, d) = replay(&api, &tr, &att, 1).unwrap();
    assert_eq!((blocked.attacker_served, d.harvested_before_stop), (0, 0));
    assert_eq!(blocked.benign_blocked, 0);
    tr.campaign.proxy_share = 0.6;
    let (proxied, _) = replay(&api, &tr, &att, 1).unwrap();
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
    let (api, mut tr, att) = small();
    tr.campaign.identity_sharing = 1;
    tr.detectors = only(|d| d.sync_share = Some(0.5));
    tr.campaign.pacing = crate::traffic::Pacing::Synchronized;
    let (_, sync) = replay(&api, &tr, &att, 1).unwrap();
    tr.campaign.pacing = crate::traffic::Pacing::Random;
    let (_, random) = replay(&api, &tr, &att, 1).unwrap();
    // Once most of the campaign is banned, the last few accounts' bursts no longer stand
    // out against the benign minute counts, so a handful escape.
    assert!(sync.recall > 0.8, "{sync:?}");
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
    let (api, mut tr, mut att) = small();
    tr.detectors = only(|d| d.prada_w = DetectorConfig::default().prada_w);
    att.max_days = 6.0;
    tr.campaign.seed_prompts = 20;
    let (_, synthetic) = replay(&api, &tr, &att, 1).unwrap();
    tr.campaign.seed_prompts = 0;
    let (_, fresh) = replay(&api, &tr, &att, 1).unwrap();
    assert!(synthetic.recall > 0.8, "{synthetic:?}");
    assert!(fresh.recall < 0.2, "{fresh:?}");
    assert!(synthetic.false_positive_rate < 0.02, "{synthetic:?}");
}

#[test]
fn throttle_and_challenge_actions() {
    let (api, mut tr, att) = small();
    tr.detectors = only(|d| d.cluster_size = Some(5));
    tr.detectors.action_delay_minutes = 0;
    tr.action = crate::traffic::Action::Ban;
    let (banned, _) = replay(&api, &tr, &att, 1).unwrap();
    tr.detectors = DetectorConfig::off();
    let (open, _) = replay(&api, &tr, &att, 1).unwrap();
    tr.detectors = only(|d| d.cluster_size = Some(5));
    tr.detectors.action_delay_minutes = 0;
    // Throttling to 2% of tier 1 (one request a minute, 200 output tokens) slows but does
    // not stop it.
    tr.action = crate::traffic::Action::Throttle;
    tr.throttle_factor = 0.02;
    let (thr, d) = replay(&api, &tr, &att, 1).unwrap();
    assert_eq!(d.recall, 1.0);
    assert!(
        banned.attacker_served < thr.attacker_served && thr.attacker_served < open.attacker_served,
        "{} {} {}",
        banned.attacker_served,
        thr.attacker_served,
        open.attacker_served
    );
    // Challenges: every attacker account is challenged, pays, and about 30% pass.
    tr.action = crate::traffic::Action::Challenge;
    let (ch, d) = replay(&api, &tr, &att, 1).unwrap();
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
    let (api, mut tr, att) = small();
    // A volume limit low enough to flag many benign users.
    tr.detectors = only(|d| d.volume_per_day = Some(10));
    tr.action = crate::traffic::Action::Challenge;
    tr.challenge.benign_dropoff = 0.5;
    let (_, d) = replay(&api, &tr, &att, 1).unwrap();
    assert!(d.challenged_benign > 50, "{d:?}");
    let share = d.benign_dropped as f64 / d.challenged_benign as f64;
    assert!((share - 0.5).abs() < 0.15, "{share}");
    assert!(d.benign_blocked > 0);
}

#[test]
fn spend_gate_holds_accounts_to_the_free_tier() {
    let (api, mut tr, att) = small();
    tr.detectors = DetectorConfig::off();
    tr.campaign.daily_per_account = 2000.0;
    let (open, _) = replay(&api, &tr, &att, 1).unwrap();
    tr.access.tier_gate_spend_usd = 1e9;
    let (gated, _) = replay(&api, &tr, &att, 1).unwrap();
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
    let (lifted, _) = replay(&api, &tr, &att, 1).unwrap();
    assert!(lifted.attacker_served > gated.attacker_served);
}

#[test]
fn hydra_regrowth_restores_the_account_count_after_the_delay() {
    let (api, mut tr, mut att) = small();
    att.max_days = 4.0;
    tr.detectors = only(|d| d.cluster_size = Some(5)); // bans the whole campaign on day 0
    tr.detectors.action_delay_minutes = 0;
    let (_, plain) = replay(&api, &tr, &att, 1).unwrap();
    assert_eq!(plain.timeline[1].attacker_accounts_active, 0);
    tr.campaign.regrow_hours = Some(24.0);
    let (_, hydra) = replay(&api, &tr, &att, 1).unwrap();
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
    let (_, adaptive) = replay(&api, &tr, &att, 1).unwrap();
    let active: Vec<u64> = adaptive
        .timeline
        .iter()
        .map(|d| d.attacker_accounts_active)
        .collect();
    assert_eq!(active, vec![0, 40, 40, 40], "{:?}", adaptive.timeline);
}

#[test]
fn an_adaptive_campaign_loses_less_to_detection_than_a_naive_one() {
    let (api, mut tr, mut att) = small();
    att.max_days = 6.0;
    tr.campaign.identity_sharing = 1;
    tr.campaign.regrow_hours = Some(6.0);
    tr.detectors = only(|d| d.reasoning_share = Some(0.7));
    let (naive_s, naive) = replay(&api, &tr, &att, 1).unwrap();
    tr.campaign.adaptive = true;
    let (adapt_s, adapt) = replay(&api, &tr, &att, 1).unwrap();
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
fn creation_schedule_and_the_campaigns_responses_to_a_limit_change() {
    let (api, mut tr, mut att) = small();
    tr.detectors = DetectorConfig::off();
    att.max_days = 4.0;
    tr.campaign.creation_per_day = Some(20.0); // 40 accounts over two days
    let (_, d) = replay(&api, &tr, &att, 1).unwrap();
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
        let (_, d) = replay(&api, tr, &att, 1).unwrap();
        let t = &d.timeline;
        (
            (t[0].attacker_served + t[1].attacker_served) as f64,
            (t[2].attacker_served + t[3].attacker_served) as f64,
        )
    };
    let (before, after) = served(&tr);
    assert!(
        (after / before - 1.0).abs() < 0.1,
        "ignoring {before} -> {after}"
    );
    tr.campaign.limit_response = crate::traffic::LimitResponse::Jump;
    let (before, after) = served(&tr);
    assert!(
        (after / before - 2.0).abs() < 0.2,
        "jumping {before} -> {after}"
    );
    // Ramping over 4 days: by the end of day 4 at 1.5x, so days 2-3 average 1.25x.
    tr.campaign.limit_response = crate::traffic::LimitResponse::Ramp;
    tr.campaign.ramp_days = 4.0;
    let (before, after) = served(&tr);
    assert!(
        (after / before - 1.25).abs() < 0.1,
        "ramping {before} -> {after}"
    );
}

#[test]
fn an_adaptive_campaign_abandons_throttled_accounts_and_regrows_them() {
    let (api, mut tr, mut att) = small();
    att.max_days = 4.0;
    tr.campaign.identity_sharing = 1;
    tr.campaign.regrow_hours = Some(6.0);
    tr.action = crate::traffic::Action::Throttle;
    tr.throttle_factor = 0.02;
    tr.detectors = only(|d| d.reasoning_share = Some(0.7));
    let (_, naive) = replay(&api, &tr, &att, 1).unwrap();
    assert_eq!(
        naive.regrown, 0,
        "a naive campaign keeps its throttled accounts"
    );
    tr.campaign.adaptive = true;
    let (_, adaptive) = replay(&api, &tr, &att, 1).unwrap();
    // Every throttled account is abandoned and replaced; after the first throttle the
    // campaign sends benign-looking queries and the rest are never flagged.
    assert!(adaptive.regrown > 0);
    let throttled: u64 = adaptive.timeline.iter().map(|d| d.attacker_actions).sum();
    assert_eq!(adaptive.regrown, throttled);
    let last = adaptive.timeline.last().unwrap();
    assert_eq!(last.attacker_actions, 0);
    assert_eq!(last.attacker_accounts_active, 40);
}

/// Scores: operating points set on a benign-only replay, never on the attack. The campaign's
/// reasoning-eliciting accounts, off the benign kind mix and sharing identities, score above
/// nearly every benign one on those detectors and the fused score (AUC near 1) and cross
/// within a day, before they sent half the campaign; the benign FPR measured on this
/// replay's own benign accounts lands near the calibration's target; scoring changes nothing
/// of the replay itself; and the calibration does not depend on the campaign at all.
#[test]
fn scores_calibrated_on_benign_traffic_rank_the_campaign_above_benign_users() {
    let (api, mut tr, att) = small();
    tr.population.users = 3000;
    tr.detectors = DetectorConfig::off();
    let cal = calibrate(&api, &tr, &att, 1).unwrap();
    assert_eq!(
        cal.n, 3000,
        "the calibration replay has benign accounts only"
    );
    let other = AttackerConfig {
        accounts: 7,
        hard_share: Some(0.1),
        ..att.clone()
    };
    let cal2 = calibrate(&api, &tr, &other, 1).unwrap();
    // The detectors' and the sum's thresholds come from benign traffic alone: another
    // campaign does not move them (the logistic fusion's weights are fitted on a labelled
    // replay with the campaign, so its threshold may move).
    use crate::traffic::detect::score::FUSED;
    assert_eq!(
        cal.thresholds[..=FUSED],
        cal2.thresholds[..=FUSED],
        "the campaign must not move them"
    );
    let o = Replay::new(&api, &tr, &att, 1, None)
        .unwrap()
        .with_calibration(cal)
        .run()
        .unwrap();
    let plain = Replay::new(&api, &tr, &att, 1, None)
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(o.stats.attacker_served, plain.stats.attacker_served);
    assert!(plain.scores.is_empty());
    let get = |n: &str| o.scores.iter().find(|s| s.name == n).unwrap();
    for n in ["reasoning", "mmd", "cluster", "fused", "fused_logistic"] {
        let s = get(n);
        assert!(s.auc.unwrap() > 0.95, "{n}: {s:?}");
        assert!(s.recall[1] > 0.8, "{n}: {s:?}");
        assert!(s.days_to_detection[1].unwrap() < 1.0, "{n}: {s:?}");
        assert!(s.harvest_before_takedown[1] < 0.5, "{n}: {s:?}");
    }
    // It asks every skill: concentration does not separate it, and the ranking shows it.
    assert!(get("concentration").auc.unwrap() < 0.9);
    assert!(get("entropy").auc.unwrap() > 0.95);
    for s in &o.scores {
        // 3,000 benign accounts at 0.3%: 9 expected above; allow sampling noise.
        assert!(s.benign_fpr[1] <= 0.01, "{}: {s:?}", s.name);
        assert!(s.benign_fpr[0] <= s.benign_fpr[1] && s.recall[0] <= s.recall[1]);
    }
    // PRADA, timing and limit tracking keep no state here: no score for them.
    assert!(o
        .scores
        .iter()
        .all(|s| !["prada", "sync", "limit_jump"].contains(&&*s.name)));
}

/// Proxy resellers: accounts carrying real customers' queries beside the campaign's keep the
/// campaign's pace, add the customers' (benign, not harvested) volume, and dilute what the
/// per-account detectors see: the reasoning-share score ranks them lower.
#[test]
fn reseller_accounts_dilute_the_campaign_with_customers_queries() {
    let (api, mut tr, att) = small();
    tr.detectors = DetectorConfig::off();
    let cal = calibrate(&api, &tr, &att, 2).unwrap();
    let run = |tr: &TrafficConfig| {
        Replay::new(&api, tr, &att, 2, None)
            .unwrap()
            .with_calibration(cal.clone())
            .run()
            .unwrap()
    };
    let plain = run(&tr);
    tr.campaign.reseller_share = 1.0;
    tr.campaign.reseller_customer_share = 0.8;
    let resold = run(&tr);
    let (a0, a1) = (plain.stats.attacker_served, resold.stats.attacker_served);
    assert!((a1 as f64 / a0 as f64 - 1.0).abs() < 0.05, "{a0} {a1}");
    // Customers add 0.8 / 0.2 = 4 times the campaign's own queries, as benign traffic.
    let extra = resold.stats.benign_served as f64 - plain.stats.benign_served as f64;
    assert!((extra / a1 as f64 - 4.0).abs() < 0.4, "{extra} {a1}");
    let auc = |o: &Outcome| {
        o.scores
            .iter()
            .find(|s| s.name == "reasoning")
            .unwrap()
            .auc
            .unwrap()
    };
    assert!(
        auc(&plain) > 0.99 && auc(&resold) < auc(&plain),
        "{} {}",
        auc(&plain),
        auc(&resold)
    );
    let recall = |o: &Outcome| {
        o.scores
            .iter()
            .find(|s| s.name == "reasoning")
            .unwrap()
            .recall[1]
    };
    assert!(
        recall(&resold) < recall(&plain),
        "{} {}",
        recall(&plain),
        recall(&resold)
    );
}

/// Benign segments: batch customers (templated, one skill, high volume), evaluation harnesses
/// (the same prompts again and again) and reasoning developers open beside the crowd, are
/// benign by ground truth, leave the crowd's own traffic as it was when absent, and make the
/// detectors' job harder: calibrated on a population with them, the volume and concentration
/// scores rank the campaign lower.
#[test]
fn benign_segments_look_like_a_campaign_to_the_detectors() {
    use crate::traffic::{Segment, SegmentKind};
    let (api, mut tr, mut att) = small();
    tr.detectors = DetectorConfig::off();
    // A campaign on one skill, so that concentration separates it from the crowd.
    att.strategy = crate::attacker::Strategy::Targeted {
        skills: vec![crate::world::Skill::Program],
    };
    let run = |tr: &TrafficConfig| {
        let cal = calibrate(&api, tr, &att, 3).unwrap();
        let n = cal.n;
        let o = Replay::new(&api, tr, &att, 3, None)
            .unwrap()
            .with_calibration(cal)
            .run()
            .unwrap();
        (n, o)
    };
    let (n0, plain) = run(&tr);
    tr.population.segments = vec![
        Segment {
            kind: SegmentKind::Batch,
            accounts: 15,
            daily_median: 300.0,
            templates: 10,
        },
        Segment {
            kind: SegmentKind::EvalHarness,
            accounts: 5,
            daily_median: 200.0,
            templates: 50,
        },
        Segment {
            kind: SegmentKind::ReasoningDev,
            accounts: 10,
            daily_median: 30.0,
            templates: 20,
        },
    ];
    let (n1, hard) = run(&tr);
    assert_eq!((n0, n1), (500, 530), "segment accounts are benign accounts");
    assert!(hard.stats.benign_served > plain.stats.benign_served + 15 * 200);
    let get = |o: &Outcome, n: &str| o.scores.iter().find(|s| s.name == n).unwrap().clone();
    for n in ["volume", "concentration"] {
        let (a, b) = (get(&plain, n), get(&hard, n));
        assert!(b.auc.unwrap() < a.auc.unwrap(), "{n}: {a:?} {b:?}");
        assert!(b.recall[1] <= a.recall[1], "{n}: {a:?} {b:?}");
    }
    // Batch customers ask one skill too: concentration's 0.3% threshold rises to theirs
    // and the campaign falls below it.
    let (a, b) = (get(&plain, "concentration"), get(&hard, "concentration"));
    assert!(a.recall[1] > 0.9 && b.recall[1] < 0.5, "{a:?} {b:?}");
    // The benign FPR by group: none without segments; with them the crowd and the three
    // kinds, whose account-weighted mean is the overall benign FPR.
    assert!(a.group_fpr.is_empty());
    let names: Vec<&str> = b.group_fpr.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["crowd", "batch", "eval_harness", "reasoning_dev"]);
    let weights = [500.0, 15.0, 5.0, 10.0];
    for k in 0..2 {
        let mean: f64 = b
            .group_fpr
            .iter()
            .zip(weights)
            .map(|((_, f), w)| f[k] * w)
            .sum::<f64>()
            / 530.0;
        assert!((mean - b.benign_fpr[k]).abs() < 1e-12, "{mean} vs {b:?}");
    }
}

/// Tiered actions on the logistic fusion's probability (throttle, review, suspend), with a
/// cooldown between an account's level changes and, optionally, cluster escalation: the
/// campaign is actioned, no account changes level twice within the cooldown, and escalating
/// to identity clusters stops the campaign sooner.
#[test]
fn tiers_act_on_the_fused_score_with_a_cooldown_and_escalate_clusters() {
    use crate::traffic::{Action, TierLevel, Tiers};
    let (api, mut tr, att) = small();
    let cal = calibrate(&api, &tr, &att, 4).unwrap();
    let tiers = |escalate: bool| Tiers {
        score: "fused_logistic".into(),
        levels: vec![
            TierLevel {
                at: 0.35,
                action: Action::Throttle,
            },
            TierLevel {
                at: 0.55,
                action: Action::Observe,
            },
            TierLevel {
                at: 0.72,
                action: Action::Ban,
            },
        ],
        cooldown_minutes: 180,
        escalate_cluster: escalate,
    };
    let run = |tr: &TrafficConfig| {
        Replay::new(&api, tr, &att, 4, None)
            .unwrap()
            .with_calibration(cal.clone())
            .run()
            .unwrap()
    };
    // A score that does not exist is refused when the replay is set up.
    tr.tiers = Some(Tiers {
        score: "nope".into(),
        ..tiers(false)
    });
    assert!(Replay::new(&api, &tr, &att, 4, None).is_err());
    // Without a calibration tiers cannot act: an error, not a silent no-op.
    tr.tiers = Some(tiers(false));
    assert!(Replay::new(&api, &tr, &att, 4, None)
        .unwrap()
        .run()
        .is_err());
    let plain = run(&tr);
    assert!(plain.detection.recall > 0.9, "{:?}", plain.detection);
    assert!(
        plain.detection.false_positive_rate < 0.02,
        "{:?}",
        plain.detection
    );
    // The campaign's probability jumps past every level at once; queries per day climb
    // through levels of the volume score within a day, where the cooldown shows.
    tr.tiers = Some(Tiers {
        score: "volume".into(),
        levels: vec![
            TierLevel {
                at: 8.0,
                action: Action::Observe,
            },
            TierLevel {
                at: 16.0,
                action: Action::Observe,
            },
            TierLevel {
                at: 24.0,
                action: Action::Observe,
            },
        ],
        cooldown_minutes: 180,
        escalate_cluster: false,
    });
    let climbing = run(&tr);
    let mut by_account: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    for &(m, a) in &climbing.actions {
        by_account.entry(a).or_default().push(m);
    }
    let moved_twice = by_account.values().filter(|v| v.len() > 1).count();
    assert!(
        moved_twice > 10,
        "accounts climb more than one level: {moved_twice}"
    );
    for v in by_account.values() {
        assert!(v.windows(2).all(|w| w[1] >= w[0] + 180), "cooldown: {v:?}");
    }
    tr.tiers = Some(tiers(true));
    let escalated = run(&tr);
    assert!(
        escalated.stats.attacker_served < plain.stats.attacker_served,
        "{} {}",
        escalated.stats.attacker_served,
        plain.stats.attacker_served
    );
}
