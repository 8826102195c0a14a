//! The replay: benign users and the attacker's campaign on one simulated clock, through one
//! API (access defenses, limits, ledgers, typed codes), with detectors flagging accounts and
//! delayed actions changing how the API answers them. [`Replay`] holds the state as
//! struct-of-arrays per account; one simulated minute is a sequence of short steps.

use super::detect::cluster::Clusters;
use super::detect::limit_jump::Spans;
use super::detect::score::{self, Calibration, ScoreBook, N_DET};
use super::detect::sync::Bursts;
use super::harvest::HarvestLog;
use super::{Alias, TemplateBank, TrafficConfig, N_KINDS};
use crate::api::{Api, ApiConfig, Identity, Status};
use crate::attacker::AttackerConfig;
use crate::rng::{derive_rng, derive_seed, SimRng};
use crate::world::Mix;
use rand::Rng;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

mod actions;
mod campaign;
mod outcome;
mod queries;
mod segments;
#[cfg(test)]
mod tests;
mod watch;

use campaign::Campaign;
pub use outcome::{DayPoint, DetectionStats, Outcome, ReplayStats};
use watch::Watch;

/// A scheduled event on an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The `k`-th scheduled attacker account opens.
    Activate,
    /// A replacement for a lost attacker account opens (hydra regrowth).
    Regrow,
    /// The configured action takes effect.
    Act,
    /// Tier level `k`'s action takes effect (`traffic.tiers`).
    Tier(u8),
    /// A challenge's outcome is due.
    Resolve,
}

pub struct Replay<'a> {
    tr: &'a TrafficConfig,
    att: &'a AttackerConfig,
    pub api: Api,
    rng: SimRng,
    minutes: u32,
    benign_per_minute: f64,
    alias: Alias,
    benign_bank: TemplateBank,
    attack_bank: TemplateBank,
    /// Benign kind distribution, for the shift detector.
    reference: [f64; N_KINDS],
    watch: Watch,
    clusters: Clusters,
    bursts: Bursts,
    spans: Option<Spans>,
    change_minute: Option<u32>,
    pending: BinaryHeap<Reverse<(u32, Event, u32)>>,
    camp: Campaign,
    stats: ReplayStats,
    d: DetectionStats,
    day: DayPoint,
    stop_at: Option<u64>,
    harvest: Option<HarvestLog>,
    planned: f64,
    actions: Vec<(u32, u32)>,
    /// Every detector's score per account, and crossings of the calibrated operating points.
    book: ScoreBook,
    /// Benign segments' accounts (after the crowd's) and their templates.
    segments: segments::Segments,
    /// The crowd's templates: the first of the benign bank.
    crowd_templates: usize,
    /// With `traffic.tiers`, the index of the score they act on.
    tier_score: Option<usize>,
    /// Every decided request written out (`distill-sim traffic export`).
    export: Option<crate::traffic::export::Exporter>,
}

/// Templates per bank: enough distinct prompts that a harvest of `samples` rarely repeats one.
fn bank_size(samples: usize) -> usize {
    (samples.saturating_mul(16)).clamp(4096, 1 << 18)
}

impl<'a> Replay<'a> {
    /// Set up the API, the benign population and the campaign's first accounts. `harvest`:
    /// sample one in N of the attacker's queries, keeping at most this many answered ones.
    pub fn new(
        api: &ApiConfig,
        tr: &'a TrafficConfig,
        att: &'a AttackerConfig,
        seed: u64,
        harvest: Option<(u64, usize)>,
    ) -> crate::Result<Replay<'a>> {
        if matches!(att.strategy, crate::attacker::Strategy::Active { .. }) {
            return Err(crate::Error::Invalid(
                "attacker.strategy `active` needs a student between rounds and cannot run in a \
                 traffic replay (set traffic.enabled: false or another strategy)"
                    .into(),
            ));
        }
        let tier_of = |name: &str, key: &str| {
            api.tier_index(name).ok_or_else(|| {
                crate::Error::Invalid(format!("{key}: tier `{name}` is not an API tier"))
            })
        };
        tier_of(&att.tier, "attacker.tier")?;
        let benign_tier = tier_of(&tr.population.tier, "traffic.population.tier")?;
        let camp = &tr.campaign;
        let planned = camp.planned(att.accounts, att.max_days);
        let mut rng = derive_rng(seed, "traffic/replay");
        let pop = &tr.population;
        let mut rates: Vec<f64> = (0..pop.users)
            .map(|_| pop.daily_median * (pop.sigma * crate::rng::normal_f64(&mut rng)).exp())
            .collect();
        // Sized by the budget (not the sampling rate), so that the traffic does not depend on
        // how much of it the teacher answers.
        let samples = harvest.map_or(0, |(_, cap)| cap.min(planned as usize));
        let size = bank_size(samples);
        let mut benign_bank =
            TemplateBank::new(&Mix::benign().in_world(att.world_harm), size, &mut rng);
        let mix = att.mix();
        let attack_bank = if camp.seed_prompts > 0 {
            TemplateBank::perturbed(&mix, camp.seed_prompts, size, &mut rng)
        } else {
            TemplateBank::new(&mix, size, &mut rng)
        };
        let mut reference = [0.0f64; N_KINDS];
        for q in &benign_bank.queries {
            reference[q.kind as usize] += 1.0 / benign_bank.len() as f64;
        }
        // The shift detector's reference stays the crowd's mix.
        let crowd_templates = benign_bank.len();
        let segments = segments::build(pop, &mut benign_bank, seed, att.world_harm);
        rates.extend_from_slice(&segments.rates);
        let change_minute = tr.limit_change.as_ref().map(|c| (c.day * 1440.0) as u32);
        let tier_score = tr
            .tiers
            .as_ref()
            .map(|t| t.validate().and_then(|_| t.score_index()))
            .transpose()
            .map_err(crate::Error::Invalid)?;
        let mut r = Replay {
            tr,
            att,
            api: Api::with_access(api.clone(), tr.access.clone())?,
            minutes: (att.max_days * 1440.0) as u32,
            benign_per_minute: rates.iter().sum::<f64>() / 1440.0,
            alias: Alias::new(&rates),
            benign_bank,
            attack_bank,
            reference,
            watch: Watch::default(),
            clusters: Clusters::default(),
            bursts: Bursts::default(),
            spans: change_minute
                .filter(|_| tr.detectors.limit_jump.is_some())
                .map(|m| Spans::new(m, tr.detectors.limit_jump_hours)),
            change_minute,
            pending: BinaryHeap::new(),
            camp: Campaign {
                active: vec![],
                all: vec![],
                refused: false,
                due: 0,
                adapted: false,
                next_identity: 3_000_000,
                identities_rng: derive_rng(seed, "traffic/identities"),
                resellers_active: 0,
            },
            stats: ReplayStats::default(),
            d: DetectionStats::default(),
            day: DayPoint::default(),
            stop_at: None,
            harvest: harvest.map(|(n, cap)| {
                let canaries = att.adapt.as_ref().map_or(0.0, |a| a.canary_share);
                HarvestLog::new(n, cap, seed, canaries)
            }),
            planned,
            actions: Vec::new(),
            book: ScoreBook::new(score::available(&tr.detectors), None),
            segments,
            crowd_templates,
            tier_score,
            export: None,
            rng,
        };
        if tr.tiers.as_ref().is_some_and(|t| t.escalate_cluster) {
            r.clusters.keep_members();
        }
        r.open_population(benign_tier);
        r.open_segments(benign_tier);
        r.open_campaign();
        Ok(r)
    }

    /// Benign users: unique identities, a few sharing a household IP.
    fn open_population(&mut self, tier: usize) {
        for i in 0..self.tr.population.users {
            let rng = &mut self.camp.identities_rng;
            let identity = Identity {
                payment: i as u32,
                ip_asn: if rng.random_bool(0.05) {
                    (i / 2) as u32
                } else {
                    i as u32
                },
                fingerprint: i as u32,
                region: rng.random_range(0..8),
                verified: rng.random_bool(0.3),
            };
            self.open(false, tier, identity, 0.0);
        }
    }

    /// Open an account on the API and its watch entry.
    fn open(&mut self, attacker: bool, tier: usize, identity: Identity, now: f64) -> u32 {
        let a = self.api.open_account(tier, now, identity);
        self.clusters.add(&identity);
        self.clusters.add_member(&identity, a);
        let cluster = self.clusters.size(&identity);
        let prada = self.tr.detectors.prada_w.is_some();
        self.watch.push(attacker, cluster, prada);
        self.book.push();
        a
    }

    /// Track where each account crosses these operating points (set on another, benign-only
    /// replay: [`calibrate`]); the outcome then reports every score's detection.
    /// Write every request the API decides to `x` (see [`crate::traffic::export`]).
    pub fn with_export(mut self, x: crate::traffic::export::Exporter) -> Self {
        self.export = Some(x);
        self
    }

    pub fn with_calibration(mut self, cal: Calibration) -> Self {
        self.book.cal = Some(cal);
        self.book.on = true;
        self
    }

    /// Run the whole window.
    pub fn run(mut self) -> crate::Result<Outcome> {
        if self.tr.tiers.is_some() && self.book.cal.is_none() {
            return Err(crate::Error::Invalid(
                "traffic.tiers acts on calibrated scores: this replay has no calibration".into(),
            ));
        }
        let t0 = std::time::Instant::now();
        self.simulate();
        self.stats.wall_seconds = t0.elapsed().as_secs_f64();
        Ok(self.finish())
    }

    /// Run the whole window; every account's highest scores, and whether it is the
    /// campaign's.
    fn run_keeping_scores(mut self) -> (Vec<[f64; N_DET]>, Vec<bool>) {
        self.simulate();
        (self.book.max, self.watch.attacker)
    }

    fn simulate(&mut self) {
        // Cluster sizes of accounts opened at the start: their groups are complete now.
        for a in 0..self.api.accounts.len() {
            self.watch.cluster[a] = self.clusters.size(&self.api.accounts.identity[a]) as u32;
        }
        for minute in 0..self.minutes {
            self.minute(minute);
        }
    }

    /// One simulated minute.
    fn minute(&mut self, minute: u32) {
        let now = minute as f64 * 60.0;
        if minute / 1440 != self.day.day {
            self.day.attacker_accounts_active = self.camp.active.len() as u64;
            self.d.timeline.push(std::mem::take(&mut self.day));
            self.day.day = minute / 1440;
        }
        if self.change_minute == Some(minute) {
            let f = self.tr.limit_change.as_ref().map_or(1.0, |c| c.factor);
            self.api.scale_limits(f, now);
        }
        self.due_events(minute);
        self.check_stopped();
        self.queries(minute);
        if self.camp.refused {
            // The campaign learns of a ban from the refusals and drops the account.
            self.camp.refused = false;
            let (status, abandoned) = (&self.api.accounts.status, &self.watch.abandoned);
            self.camp
                .active
                .retain(|&a| status[a as usize] != Status::Banned && !abandoned[a as usize]);
            let reseller = &self.watch.reseller;
            self.camp.resellers_active = self
                .camp
                .active
                .iter()
                .filter(|&&a| reseller[a as usize])
                .count();
        }
        if self.tr.detectors.sync_share.is_some() {
            self.bursts
                .close_minute(&self.tr.detectors, &mut self.watch.features);
        }
        if (minute + 1).is_multiple_of(self.tr.detectors.check_minutes.max(1)) {
            self.detector_pass(minute);
        }
    }

    /// Process the events due by `minute`.
    fn due_events(&mut self, minute: u32) {
        let now = minute as f64 * 60.0;
        while let Some(&Reverse((at, ev, a))) = self.pending.peek() {
            if at > minute {
                break;
            }
            self.pending.pop();
            match ev {
                Event::Activate => {
                    self.camp.due -= 1;
                    self.open_attacker(a as usize, now);
                }
                Event::Regrow => {
                    self.camp.due -= 1;
                    self.regrow(a as usize, now);
                }
                Event::Act | Event::Resolve | Event::Tier(_) => {
                    if self.api.accounts.status[a as usize] == Status::Banned {
                        continue;
                    }
                    match ev {
                        Event::Act => self.act(a as usize, minute, self.tr.action),
                        Event::Tier(k) => self.tier_act(a as usize, minute, k as usize),
                        _ => self.resolve(a as usize),
                    }
                    self.after_action(a as usize, minute);
                }
            }
        }
    }
}

/// The operating points of every detector and of the fused scores: thresholds from a
/// benign-only replay of the same population, API and window (no campaign), the highest
/// score each benign account reached; the logistic fusion's weights from a labelled replay
/// with the campaign. Each replay has its own random streams, derived from `seed` (the
/// evaluation replay's), so neither is the replay they are judged on.
pub fn calibrate(
    api: &ApiConfig,
    tr: &TrafficConfig,
    att: &AttackerConfig,
    seed: u64,
) -> crate::Result<Calibration> {
    // Only what shapes benign traffic is kept of the attacker: the window, its tier (checked
    // against the API's) and the world's harm; the campaign's prompts would draw from the
    // shared random stream and move the benign traffic.
    let benign_only = AttackerConfig {
        accounts: 0,
        tier: att.tier.clone(),
        world_harm: att.world_harm,
        max_days: att.max_days,
        ..Default::default()
    };
    let scored = |att: &AttackerConfig, seed: u64| -> crate::Result<_> {
        let mut r = Replay::new(api, tr, att, seed, None)?;
        r.book.on = true;
        Ok(r.run_keeping_scores())
    };
    let (maxima, _) = scored(&benign_only, derive_seed(seed, "traffic/calibration"))?;
    let mut cal = Calibration::new(&maxima, score::available(&tr.detectors));
    // The logistic fusion learns from a labelled incident: the same kind of campaign on
    // another draw of the population (its own seed), apart from the replay it is judged on.
    let (maxima, attacker) = scored(att, derive_seed(seed, "traffic/fusion-fit"))?;
    cal.fit_logistic(&maxima, &attacker);
    Ok(cal)
}

/// Replay a campaign and a benign population on the API with detectors acting (no harvest).
pub fn replay(
    api: &ApiConfig,
    tr: &TrafficConfig,
    att: &AttackerConfig,
    seed: u64,
) -> crate::Result<(ReplayStats, DetectionStats)> {
    let o = Replay::new(api, tr, att, seed, None)?.run()?;
    Ok((o.stats, o.detection))
}
