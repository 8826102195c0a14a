//! The replay: benign users and the attacker's campaign on one simulated clock, through one
//! API (access defenses, limits, ledgers, typed codes), with detectors flagging accounts and
//! delayed actions changing how the API answers them. [`Replay`] holds the state as
//! struct-of-arrays per account; one simulated minute is a sequence of short steps.

use super::action::{self, Action};
use super::detect::cluster::Clusters;
use super::detect::limit_jump::Spans;
use super::detect::prada::PradaState;
use super::detect::sync::Bursts;
use super::detect::{flags, Features, Signals};
use super::harvest::HarvestLog;
use super::{
    poisson, Alias, LimitResponse, Pacing, Query, TemplateBank, TrafficConfig, ATTACK_BANK,
    DATACENTER_REGION, N_KINDS,
};
use crate::api::limits::Ledger;
use crate::api::{Api, ApiConfig, Code, Identity, Status};
use crate::attacker::AttackerConfig;
use crate::rng::{derive_rng, SimRng};
use crate::world::Mix;
use rand::Rng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Traffic totals of a replay.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplayStats {
    pub queries: u64,
    /// Attacker queries the teacher answered.
    pub attacker_served: u64,
    /// Attacker queries the fallback model answered (visible or silent).
    pub attacker_fallback: u64,
    /// Benign queries the teacher answered.
    pub benign_served: u64,
    pub throttled: u64,
    /// Queries refused, challenged or region-blocked.
    pub blocked_banned: u64,
    pub benign_blocked: u64,
    pub wall_seconds: f64,
}

/// Detection outcome of a replay.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DetectionStats {
    /// Simulated days to the first action on an attacker account (None: never).
    pub days_to_first_action: Option<f64>,
    /// Days from the limit change to the first action on an attacker account after it.
    pub days_to_first_action_after_change: Option<f64>,
    /// Attacker queries served before the last attacker account was lost (all if never).
    pub harvested_before_stop: u64,
    /// Share of attacker accounts actioned (banned, throttled, challenged or rerouted).
    pub recall: f64,
    /// Share of benign accounts actioned.
    pub false_positive_rate: f64,
    /// Benign queries refused because their account was banned or suspended.
    pub benign_blocked: u64,
    /// Benign queries throttled on accounts a throttle action had cut.
    pub benign_throttled: u64,
    /// Benign queries answered by the fallback model.
    pub benign_degraded: u64,
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

/// A scheduled event on an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The `k`-th scheduled attacker account opens.
    Activate,
    /// A replacement for a lost attacker account opens (hydra regrowth).
    Regrow,
    /// The configured action takes effect.
    Act,
    /// A challenge's outcome is due.
    Resolve,
}

/// What a replay produced: its totals, detection outcome, harvest sample, and the API as the
/// campaign left it (for later calls on the same accounts).
pub struct Outcome {
    pub stats: ReplayStats,
    pub detection: DetectionStats,
    pub harvest: Option<HarvestLog>,
    pub api: Api,
    /// The attacker's accounts, in opening order.
    pub attacker_accounts: Vec<u32>,
    /// Minute of each action taken, and the account.
    pub actions: Vec<(u32, u32)>,
    /// Queries the campaign planned (before limit changes and detection).
    pub planned: f64,
}

/// Per-account simulation state beside the API's (ground truth and detector state).
#[derive(Default)]
struct Watch {
    attacker: Vec<bool>,
    /// Identity-group size, cached when the account opens (and for the accounts open at the
    /// start, once their groups are complete): looking it up at every detector pass costs
    /// three hash lookups per judged account and took the full-scale replay from 31 s to 47 s.
    cluster: Vec<u32>,
    features: Vec<Features>,
    prada: Vec<PradaState>,
    flagged: Vec<bool>,
    actioned: Vec<bool>,
    /// Throttled (adaptive campaign) or fallback-marked accounts the campaign stopped using.
    abandoned: Vec<bool>,
    regrow_scheduled: Vec<bool>,
    is_dirty: Vec<bool>,
    /// Accounts with queries since the last detector pass.
    dirty: Vec<u32>,
}

impl Watch {
    fn push(&mut self, attacker: bool, cluster: usize, prada: bool) {
        self.attacker.push(attacker);
        self.cluster.push(cluster as u32);
        self.features.push(Features::default());
        if prada {
            self.prada.push(PradaState::default());
        }
        for v in [
            &mut self.flagged,
            &mut self.actioned,
            &mut self.abandoned,
            &mut self.regrow_scheduled,
            &mut self.is_dirty,
        ] {
            v.push(false);
        }
    }
}

/// The attacker's side: its accounts and how it paces them.
struct Campaign {
    /// Accounts it sends from now.
    active: Vec<u32>,
    /// Every account it opened.
    all: Vec<u32>,
    /// One of its accounts got a refusal this minute: it stops using it.
    refused: bool,
    /// Scheduled or regrowing accounts not yet open.
    due: usize,
    /// An adaptive campaign changes its behaviour after its first lost account.
    adapted: bool,
    next_identity: u32,
    identities_rng: SimRng,
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
        let rates: Vec<f64> = (0..pop.users)
            .map(|_| pop.daily_median * (pop.sigma * crate::rng::normal_f64(&mut rng)).exp())
            .collect();
        // Sized by the budget (not the sampling rate), so that the traffic does not depend on
        // how much of it the teacher answers.
        let samples = harvest.map_or(0, |(_, cap)| cap.min(planned as usize));
        let size = bank_size(samples);
        let benign_bank =
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
        let change_minute = tr.limit_change.as_ref().map(|c| (c.day * 1440.0) as u32);
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
            },
            stats: ReplayStats::default(),
            d: DetectionStats::default(),
            day: DayPoint::default(),
            stop_at: None,
            harvest: harvest.map(|(n, cap)| HarvestLog::new(n, cap, seed)),
            planned,
            actions: Vec::new(),
            rng,
        };
        r.open_population(benign_tier);
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

    /// The campaign's accounts: those due on day 0 open now, the rest on their schedule.
    fn open_campaign(&mut self) {
        for k in 0..self.att.accounts {
            match self.tr.campaign.opens_at(k) {
                0 => self.open_attacker(k, 0.0),
                at => {
                    self.camp.due += 1;
                    self.pending.push(Reverse((at, Event::Activate, k as u32)));
                }
            }
        }
    }

    /// Open the campaign's `k`-th account (identity group `k / identity_sharing`).
    fn open_attacker(&mut self, k: usize, now: f64) {
        let camp = &self.tr.campaign;
        let group = (k / camp.identity_sharing.max(1)) as u32;
        let rng = &mut self.camp.identities_rng;
        let identity = Identity {
            payment: 1_000_000 + group,
            ip_asn: 1_000_000 + group,
            fingerprint: 1_000_000 + group,
            region: if rng.random_bool(camp.proxy_share.clamp(0.0, 1.0)) {
                rng.random_range(0..8)
            } else {
                DATACENTER_REGION
            },
            verified: false,
        };
        self.open_campaign_account(identity, now);
    }

    fn open_campaign_account(&mut self, identity: Identity, now: f64) {
        let tier = self.api.config.tier_index(&self.att.tier).unwrap_or(0);
        let a = self.open(true, tier, identity, now);
        self.d.attacker_accounts_opened += 1;
        self.camp.all.push(a);
        if self.api.accounts.status[a as usize] == Status::Active {
            self.camp.active.push(a);
        }
    }

    /// Open an account on the API and its watch entry.
    fn open(&mut self, attacker: bool, tier: usize, identity: Identity, now: f64) -> u32 {
        let a = self.api.open_account(tier, now, identity);
        self.clusters.add(&identity);
        let cluster = self.clusters.size(&identity);
        let prada = self.tr.detectors.prada_w.is_some();
        self.watch.push(attacker, cluster, prada);
        a
    }

    /// Run the whole window.
    pub fn run(mut self) -> crate::Result<Outcome> {
        let t0 = std::time::Instant::now();
        // Cluster sizes of accounts opened at the start: their groups are complete now.
        for a in 0..self.api.accounts.len() {
            self.watch.cluster[a] = self.clusters.size(&self.api.accounts.identity[a]) as u32;
        }
        for minute in 0..self.minutes {
            self.minute(minute);
        }
        self.stats.wall_seconds = t0.elapsed().as_secs_f64();
        Ok(self.finish())
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
                Event::Act | Event::Resolve => {
                    if self.api.accounts.status[a as usize] == Status::Banned {
                        continue;
                    }
                    if ev == Event::Act {
                        self.act(a as usize, minute);
                    } else {
                        self.resolve(a as usize);
                    }
                    self.after_action(a as usize, minute);
                }
            }
        }
    }

    /// A replacement for lost account `a`: its identity, or a fresh one once adapted.
    fn regrow(&mut self, a: usize, now: f64) {
        let mut identity = self.api.accounts.identity[a];
        identity.verified = false;
        if self.camp.adapted {
            self.camp.next_identity += 1;
            let n = self.camp.next_identity;
            (identity.payment, identity.ip_asn, identity.fingerprint) = (n, n, n);
        }
        self.d.regrown += 1;
        self.open_campaign_account(identity, now);
    }

    /// The configured action takes effect on account `a`.
    fn act(&mut self, a: usize, minute: u32) {
        let now = minute as f64 * 60.0;
        self.watch.actioned[a] = true;
        self.actions.push((minute, a as u32));
        let attacker = self.watch.attacker[a];
        if attacker {
            self.day.attacker_actions += 1;
            let days = minute as f64 / 1440.0;
            self.d.days_to_first_action.get_or_insert(days);
            if let Some(c) = self.change_minute.filter(|&c| minute >= c) {
                let after = (minute - c) as f64 / 1440.0;
                self.d
                    .days_to_first_action_after_change
                    .get_or_insert(after);
            }
        } else {
            self.day.benign_actions += 1;
        }
        let tr = self.tr;
        match tr.action {
            Action::Ban => action::ban::ban(&mut self.api, a),
            Action::FallbackVisible => action::fallback::route(&mut self.api, a, true),
            Action::FallbackSilent => action::fallback::route(&mut self.api, a, false),
            Action::Throttle => {
                action::throttle::throttle(&mut self.api, a, tr.throttle_factor, now)
            }
            Action::Challenge => {
                let due = action::challenge::challenge(&mut self.api, a, &tr.challenge, minute);
                self.pending.push(Reverse((due, Event::Resolve, a as u32)));
                if attacker {
                    self.d.challenged_attackers += 1;
                    self.d.attacker_challenge_usd += tr.challenge.attacker_cost_usd;
                } else {
                    self.d.challenged_benign += 1;
                }
            }
        }
    }

    /// A challenge's outcome.
    fn resolve(&mut self, a: usize) {
        let attacker = self.watch.attacker[a];
        let pass = action::challenge::resolve(
            &mut self.api,
            a,
            attacker,
            &self.tr.challenge,
            &mut self.rng,
        );
        if !attacker && !pass {
            self.d.benign_dropped += 1;
        }
    }

    /// The campaign's reaction to an action on its account `a`: (adaptive) it abandons a
    /// throttled account; a banned one is lost.
    fn after_action(&mut self, a: usize, minute: u32) {
        if !self.watch.attacker[a] {
            return;
        }
        if self.tr.campaign.adaptive && action::throttle::is_throttled(&self.api, a) {
            self.abandon(a);
        }
        if self.api.accounts.status[a] == Status::Banned || self.watch.abandoned[a] {
            self.lose(a, minute);
        }
    }

    /// The campaign stops using account `a` (it leaves the active set at the minute's end).
    fn abandon(&mut self, a: usize) {
        self.watch.abandoned[a] = true;
        self.camp.refused = true;
    }

    /// A lost account may be regrown, and an adaptive campaign adapts after its first loss.
    fn lose(&mut self, a: usize, minute: u32) {
        if self.watch.regrow_scheduled[a] {
            return;
        }
        let camp = &self.tr.campaign;
        self.watch.regrow_scheduled[a] = true;
        self.camp.adapted |= camp.adaptive;
        if let Some(h) = camp.regrow_hours {
            self.camp.due += 1;
            let at = minute + (h * 60.0).round() as u32;
            self.pending.push(Reverse((at, Event::Regrow, a as u32)));
        }
    }

    /// Record when the campaign has no account left and none coming.
    fn check_stopped(&mut self) {
        if self.camp.active.is_empty()
            && self.camp.due == 0
            && self.stop_at.is_none()
            && self.att.accounts > 0
        {
            self.stop_at = Some(self.stats.attacker_served);
        }
    }

    /// The campaign's pace per account per minute at `minute` (before pacing), after its
    /// response to any limit change.
    fn attack_rate(&self, minute: u32, diurnal: f64) -> f64 {
        let camp = &self.tr.campaign;
        let f = self.tr.limit_change.as_ref().map_or(1.0, |c| c.factor);
        let since = self
            .change_minute
            .filter(|&c| minute >= c)
            .map(|c| minute - c);
        let scale = match (camp.limit_response, since) {
            (_, None) | (LimitResponse::Ignore, _) => 1.0,
            (LimitResponse::Jump, Some(_)) => f,
            (LimitResponse::Ramp, Some(m)) => {
                let ramp = (camp.ramp_days * 1440.0).max(1.0);
                1.0 + (f - 1.0) * (m as f64 / ramp).min(1.0)
            }
        };
        let per_minute = scale * camp.daily_per_account / 1440.0;
        let pacing = if self.camp.adapted {
            Pacing::BenignLike
        } else {
            camp.pacing
        };
        let burst = camp.burst_minutes.max(1);
        match pacing {
            Pacing::Random => per_minute,
            Pacing::BenignLike => per_minute * diurnal,
            Pacing::Synchronized if minute.is_multiple_of(burst) => per_minute * burst as f64,
            Pacing::Synchronized => 0.0,
        }
    }

    /// This minute's benign and attacker queries, each through the API.
    fn queries(&mut self, minute: u32) {
        let pop = &self.tr.population;
        let phase = std::f64::consts::TAU * ((minute % 1440) as f64 - 360.0) / 1440.0;
        let diurnal = (1.0 + pop.diurnal * phase.sin()).max(0.0);
        let n_benign = poisson(&mut self.rng, self.benign_per_minute * diurnal);
        let rate = self.attack_rate(minute, diurnal);
        let n_attack = poisson(&mut self.rng, rate * self.camp.active.len() as f64);
        let nb = self.benign_bank.len();
        for i in 0..n_benign + n_attack {
            let q = if i >= n_benign {
                let active = &self.camp.active;
                let a = active[self.rng.random_range(0..active.len())];
                if self.camp.adapted {
                    // Benign-looking queries.
                    let t = self.rng.random_range(0..nb);
                    self.benign_bank.query(t, minute, a, false)
                } else {
                    let t = self.rng.random_range(0..self.attack_bank.len());
                    self.attack_bank.query(t, minute, a, true)
                }
            } else {
                let a = self.alias.sample(&mut self.rng) as u32;
                let t = self.rng.random_range(0..nb);
                self.benign_bank.query(t, minute, a, false)
            };
            self.query(&q, i >= n_benign);
        }
    }

    /// One query: admission, billing, counts, detector features, and the harvest sample.
    #[inline]
    fn query(&mut self, q: &Query, attacker: bool) {
        let a = q.account as usize;
        let now = q.minute as f64 * 60.0;
        self.stats.queries += 1;
        let code = self.api.accounts.admit(a, now, q.input_tokens as f64);
        let fallback = self.api.accounts.on_fallback(a);
        if code.answered() {
            let usage = Ledger {
                requests: 1,
                input_tokens: q.input_tokens as u64,
                output_tokens: q.output_tokens as u64,
                spend_usd: self.api.price(
                    a,
                    q.input_tokens as u64,
                    q.output_tokens as u64,
                    q.voice,
                ),
                ..Ledger::default()
            };
            self.api.accounts.bill(a, &usage);
            self.count_answered(q, attacker, fallback, usage.spend_usd);
        } else {
            self.count_unanswered(code, attacker, a);
            self.camp.refused |= attacker && code == Code::Refused;
        }
        if attacker && code == Code::Fallback && !self.watch.abandoned[a] {
            // Marked fallback answers are worthless to it: it drops the account.
            self.abandon(a);
            self.lose(a, q.minute);
        }
        if attacker {
            if let Some(h) = self.harvest.as_mut() {
                let (b, t) = (&self.attack_bank, q.template);
                let bank = if t & ATTACK_BANK != 0 {
                    b
                } else {
                    &self.benign_bank
                };
                let prompt = || bank.prompts[(t & !ATTACK_BANK) as usize].clone();
                h.record(q.minute, q.account, code, fallback, prompt);
            }
        }
    }

    fn count_answered(&mut self, q: &Query, attacker: bool, fallback: bool, spend: f64) {
        let a = q.account as usize;
        match (attacker, fallback) {
            (true, false) => {
                self.stats.attacker_served += 1;
                self.day.attacker_served += 1;
            }
            (true, true) => self.stats.attacker_fallback += 1,
            (false, false) => {
                self.stats.benign_served += 1;
                self.day.benign_served += 1;
            }
            (false, true) => self.d.benign_degraded += 1,
        }
        if attacker {
            if let Some(h) = self.harvest.as_mut() {
                h.spend_usd += spend;
            }
        }
        let w = &mut self.watch;
        if w.features[a].observe(q) && self.tr.detectors.sync_share.is_some() {
            self.bursts.this_minute.push(q.account);
        }
        if let Some(s) = &self.spans {
            s.observe(q.minute, &mut w.features[a]);
        }
        if let Some(p) = w.prada.get_mut(a) {
            let (ab, bb) = (&self.attack_bank, &self.benign_bank);
            p.observe(q.template, |t: u32| {
                if t & ATTACK_BANK != 0 {
                    ab.emb[(t & !ATTACK_BANK) as usize]
                } else {
                    bb.emb[t as usize]
                }
            });
        }
        if !w.is_dirty[a] {
            w.is_dirty[a] = true;
            w.dirty.push(q.account);
        }
    }

    fn count_unanswered(&mut self, code: Code, attacker: bool, a: usize) {
        if code == Code::Throttled {
            self.stats.throttled += 1;
            if !attacker && action::throttle::is_throttled(&self.api, a) {
                self.d.benign_throttled += 1;
            }
        } else {
            self.stats.blocked_banned += 1;
            if !attacker {
                self.stats.benign_blocked += 1;
            }
        }
    }

    /// Every `check_minutes`: lift tier gates, then ask each detector about the accounts
    /// active since the last pass; a flag schedules the action after the configured delay.
    fn detector_pass(&mut self, minute: u32) {
        let now = minute as f64 * 60.0;
        if self.tr.access.gates() {
            let api = &mut self.api;
            api.accounts
                .lift_gates(&api.config.tiers, &self.tr.access, now);
        }
        let det = &self.tr.detectors;
        let jump_done = self.spans.is_some_and(|s| minute >= s.end);
        let w = &mut self.watch;
        for &a in &w.dirty {
            let a = a as usize;
            w.is_dirty[a] = false;
            let signals = Signals {
                cluster: w.cluster[a] as usize,
                prada_w: w
                    .prada
                    .get_mut(a)
                    .filter(|p| p.samples() >= det.prada_min)
                    .and_then(|p| p.judge()),
                jump_window_done: jump_done,
            };
            if !w.flagged[a] && flags(det, &w.features[a], &signals, &self.reference) != 0 {
                w.flagged[a] = true;
                let at = minute.saturating_add(det.action_delay_minutes);
                self.pending.push(Reverse((at, Event::Act, a as u32)));
            }
        }
        w.dirty.clear();
    }

    /// Totals and rates at the end of the window.
    fn finish(mut self) -> Outcome {
        self.day.attacker_accounts_active = self.camp.active.len() as u64;
        self.d.timeline.push(std::mem::take(&mut self.day));
        let acc = &self.api.accounts;
        let w = &self.watch;
        let identities: std::collections::HashSet<u32> = self
            .camp
            .all
            .iter()
            .map(|&a| acc.identity[a as usize].payment)
            .collect();
        let camp = &self.tr.campaign;
        self.d.attacker_accounts_usd = self.d.attacker_accounts_opened as f64
            * self.att.account_cost_usd
            + identities.len() as f64 * camp.identity_cost_usd;
        let count = |att: bool| (0..acc.len()).filter(|&a| w.attacker[a] == att).count();
        let actioned = |att: bool| {
            (0..acc.len())
                .filter(|&a| w.attacker[a] == att && w.actioned[a])
                .count()
        };
        let (attackers, benign) = (count(true), count(false));
        self.d.recall = if attackers == 0 {
            f64::NAN
        } else {
            actioned(true) as f64 / attackers as f64
        };
        self.d.false_positive_rate = actioned(false) as f64 / benign.max(1) as f64;
        self.d.harvested_before_stop = self.stop_at.unwrap_or(self.stats.attacker_served);
        self.d.benign_blocked = self.stats.benign_blocked;
        self.d.attacker_spend_usd = self
            .camp
            .all
            .iter()
            .map(|&a| acc.ledger[a as usize].spend_usd)
            .sum();
        Outcome {
            stats: self.stats,
            detection: self.d,
            harvest: self.harvest,
            attacker_accounts: self.camp.all,
            actions: self.actions,
            planned: self.planned,
            api: self.api,
        }
    }
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

#[cfg(test)]
mod tests {
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
            banned.attacker_served < thr.attacker_served
                && thr.attacker_served < open.attacker_served,
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
}
