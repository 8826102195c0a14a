//! Traffic on the simulated clock: a benign population and the attacker's campaign sharing one
//! API, replayed at scale with compact query records (no text, no per-query allocation), with
//! detectors and their actions. Every query goes through the API's admission and billing; the
//! teacher answers a seeded sample of the attacker's admitted queries, which is the harvest the
//! student trains on ([`harvest`]).

pub mod action;
pub mod bank;
pub mod detect;
pub mod export;
pub mod harvest;
pub mod replay;

pub use crate::api::AccessConfig;
use crate::rng::SimRng;
use crate::world::Kind;
pub use action::Action;
pub use bank::TemplateBank;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Region of requests from datacenter and proxy ranges.
pub const DATACENTER_REGION: u16 = 8;

/// Kinds a query record can name (index into [`crate::world::mix::suite_kinds`]).
pub const N_KINDS: usize = 23;

/// One query as the traffic layer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub minute: u32,
    pub account: u32,
    /// Index into `suite_kinds()`.
    pub kind: u8,
    pub input_tokens: u8,
    pub output_tokens: u8,
    /// Asks for (or elicits) a reasoning trace.
    pub reasoning: bool,
    /// Carries voice (billed at the voice price).
    pub voice: bool,
    /// Template index in its bank ([`ATTACK_BANK`] set for the campaign's bank).
    pub template: u32,
}

/// Bit of [`Query::template`] marking the campaign's template bank.
pub const ATTACK_BANK: u32 = 0x8000_0000;

/// Index of a kind in `suite_kinds()` (the report order).
pub fn kind_index(k: Kind) -> u8 {
    crate::world::mix::suite_kinds()
        .iter()
        .position(|&x| x == k)
        .unwrap_or(0) as u8
}

/// The attacker's campaign on the API beside a benign population, with detectors and actions.
/// The campaign's accounts are `attacker.accounts` on `attacker.tier`, its prompts
/// `attacker`'s mix, its length `attacker.max_days`; the student trains on the teacher's
/// answers to a sample of the queries the API admitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrafficConfig {
    /// Off by default: runs then harvest their whole budget undisturbed.
    pub enabled: bool,
    /// What a flag does to an account once its delay has passed.
    pub action: Action,
    pub population: PopulationConfig,
    pub campaign: CampaignConfig,
    pub detectors: detect::DetectorConfig,
    pub access: AccessConfig,
    /// With `action: throttle`, a flagged account's limits are multiplied by this.
    pub throttle_factor: f64,
    /// With `action: challenge`, the identity-verification challenge.
    pub challenge: ChallengeConfig,
    /// A mid-campaign change of every tier's rate limits.
    pub limit_change: Option<LimitChange>,
    /// The teacher answers one in this many of the attacker's admitted queries (a seeded
    /// sample; admission, price and detection are simulated for all of them). None: planned
    /// queries / `attacker.budget`, so that an undisturbed campaign yields about the budget.
    pub answer_one_in: Option<u64>,
    /// Tiered actions driven by one calibrated score, in place of the detectors' flags and
    /// `action` (None: flags and `action`).
    pub tiers: Option<Tiers>,
}

/// Tiered actions (as in Glasswally, an open-source 2026 detector of distillation campaigns:
/// rate limit at a fused score of 0.35, review at 0.55, suspend at 0.72, a 600 s cooldown).
/// At each detector pass an account whose score reached a higher level than it is at moves to
/// the highest level reached, unless it changed level less than `cooldown_minutes` ago; the
/// level's action follows after `traffic.detectors.action_delay_minutes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tiers {
    /// The score: a detector's name (`volume`, `entropy`, ... as in `score.*`), `fused`, or
    /// `fused_logistic`, whose value here is the logistic model's probability (0 to 1).
    pub score: String,
    /// Levels by ascending `at` (the score an account must reach).
    pub levels: Vec<TierLevel>,
    #[serde(default)]
    pub cooldown_minutes: u32,
    /// An account reaching a `ban` or `challenge` level takes every account sharing its
    /// payment instrument, IP or device fingerprint with it to that level at once.
    #[serde(default)]
    pub escalate_cluster: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TierLevel {
    pub at: f64,
    pub action: Action,
}

impl Tiers {
    /// The score's index among the calibrated scores, or an error naming the allowed ones.
    pub fn score_index(&self) -> std::result::Result<usize, String> {
        use detect::score::{FUSED, LOGISTIC, NAMES};
        match self.score.as_str() {
            "fused" => Ok(FUSED),
            "fused_logistic" => Ok(LOGISTIC),
            n => NAMES.iter().position(|&x| x == n).ok_or_else(|| {
                format!(
                    "traffic.tiers.score: `{n}` is not a score (allowed: {}, fused, fused_logistic)",
                    NAMES.join(", ")
                )
            }),
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        self.score_index()?;
        if self.levels.is_empty() {
            return Err("traffic.tiers.levels: at least one level is needed".into());
        }
        for w in self.levels.windows(2) {
            if w[1].at <= w[0].at || w[1].at.is_nan() {
                return Err(format!(
                    "traffic.tiers.levels: `at` must rise from level to level ({} then {})",
                    w[0].at, w[1].at
                ));
            }
        }
        Ok(())
    }
}

/// The provider multiplies every tier's limits by `factor` on simulated day `day`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitChange {
    pub day: f64,
    pub factor: f64,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            enabled: false,
            action: Action::Ban,
            population: PopulationConfig::default(),
            campaign: CampaignConfig::default(),
            detectors: detect::DetectorConfig::default(),
            access: AccessConfig::default(),
            throttle_factor: 0.1,
            challenge: ChallengeConfig::default(),
            limit_change: None,
            answer_one_in: None,
            tiers: None,
        }
    }
}

/// An identity-verification challenge: the account is suspended until it is completed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ChallengeConfig {
    /// Hours from the challenge to its outcome (the time to acquire and submit an identity).
    pub hours: f64,
    /// What one challenge costs the attacker (a purchased or fabricated identity), USD.
    pub attacker_cost_usd: f64,
    /// Share of challenged attacker accounts that pass (the rest are banned).
    pub attacker_pass: f64,
    /// Share of challenged benign users who give up (their account is lost).
    pub benign_dropoff: f64,
}

impl Default for ChallengeConfig {
    fn default() -> Self {
        ChallengeConfig {
            hours: 24.0,
            attacker_cost_usd: 25.0,
            attacker_pass: 0.3,
            benign_dropoff: 0.15,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PopulationConfig {
    /// Benign users (one account each).
    pub users: usize,
    /// Median queries per user per day; activity is log-normal (heavy-tailed).
    pub daily_median: f64,
    /// Log-normal sigma of per-user activity.
    pub sigma: f64,
    /// Tier of benign accounts.
    pub tier: String,
    /// Day-night swing of benign activity: the rate is multiplied by
    /// `1 + diurnal * sin(2 pi (t - 6 h) / 24 h)`.
    pub diurnal: f64,
    /// Benign customers who look like attackers, beside the `users` of the crowd (none by
    /// default): batch customers, evaluation harnesses, developers testing reasoning.
    pub segments: Vec<Segment>,
}

/// A segment of benign accounts with their own traffic (its volumes and template counts are
/// assumptions: no public source gives benign per-account usage, shared/REAL_WORLD.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    pub kind: SegmentKind,
    /// Accounts in the segment (one identity each).
    pub accounts: usize,
    /// Median queries per account per day (log-normal with the population's sigma).
    pub daily_median: f64,
    /// Prompt templates per account (`batch`: seed prompts it fills slots of; `eval_harness`:
    /// the fixed prompts it repeats; `reasoning_dev`: unused, its prompts are fresh).
    #[serde(default = "default_templates")]
    pub templates: usize,
}

fn default_templates() -> usize {
    20
}

/// What a benign segment sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SegmentKind {
    /// A batch customer: slot-filled variants of a few templates of one skill (templated,
    /// skill-concentrated, high volume: what volume, repetition and concentration flag).
    Batch,
    /// An evaluation harness: the same fixed prompts, easy and hard tiers of every skill,
    /// asked again and again (what repetition, reasoning and PRADA flag).
    EvalHarness,
    /// A developer testing reasoning prompts: fresh prompts, nine in ten on hard tiers
    /// (reasoning traces: what the reasoning detector flags).
    ReasoningDev,
}

impl SegmentKind {
    /// The kind as written in configs.
    pub fn name(self) -> &'static str {
        match self {
            SegmentKind::Batch => "batch",
            SegmentKind::EvalHarness => "eval_harness",
            SegmentKind::ReasoningDev => "reasoning_dev",
        }
    }
}

impl Default for PopulationConfig {
    fn default() -> Self {
        PopulationConfig {
            users: 2000,
            daily_median: 8.0,
            sigma: 1.2,
            tier: "tier1".into(),
            diurnal: 0.5,
            segments: Vec::new(),
        }
    }
}

/// How the campaign runs its accounts at scale. Who the attacker is (accounts, tier, prompts,
/// length, account cost) is `attacker`'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CampaignConfig {
    /// Queries per account per day (spread evenly over the day).
    pub daily_per_account: f64,
    /// Accounts per shared payment instrument / IP / fingerprint (1 = all unique).
    pub identity_sharing: usize,
    /// Share of attacker accounts behind residential proxies (they appear in benign regions).
    pub proxy_share: f64,
    /// How the orchestrator times its accounts' queries.
    pub pacing: Pacing,
    /// With `pacing: synchronized`, minutes between bursts.
    pub burst_minutes: u32,
    /// Synthetic queries: perturbations of this many seed prompts (0: fresh prompts).
    pub seed_prompts: usize,
    /// Accounts opened per simulated day until `attacker.accounts` exist (None: all on day 0).
    pub creation_per_day: Option<f64>,
    /// Hydra regrowth: each lost account (banned, failed challenge) is replaced after this
    /// many hours (None: never).
    pub regrow_hours: Option<f64>,
    /// Adaptive attacker: after its first lost account it sends benign-like queries at random
    /// times and opens new accounts with unique identities.
    pub adaptive: bool,
    /// What the campaign does when the provider changes its rate limits.
    pub limit_response: LimitResponse,
    /// With `limit_response: ramp`, days over which it moves to the new rate.
    pub ramp_days: f64,
    /// Cost of one identity (payment instrument, IP, fingerprint), USD: unique identities cost
    /// one each, shared ones one per group.
    pub identity_cost_usd: f64,
    /// Proxy resellers: this share of the campaign's accounts (spread evenly over its opening
    /// order) also carry real customers' queries, which dilute what detectors see of them.
    /// The accounts are the campaign's (a takedown stops both); the customers' queries are
    /// benign (not harvested, refused ones count as benign casualties). An assumption: no
    /// public source gives the mix.
    pub reseller_share: f64,
    /// Share of a reseller account's queries that are its customers' (the campaign keeps its
    /// own pace; the customers add `share / (1 - share)` of it, on the benign daily cycle).
    pub reseller_customer_share: f64,
}

/// A campaign's answer to a change of the provider's rate limits.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LimitResponse {
    /// Keeps its pace.
    #[default]
    Ignore,
    /// Scales every account's pace by the change at once (a naive orchestrator).
    Jump,
    /// Scales into the new limits linearly over `ramp_days`.
    Ramp,
}

/// Campaign timing.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Pacing {
    /// Each account's queries at independent random minutes.
    #[default]
    Random,
    /// All accounts send in the same burst minutes (one central scheduler).
    Synchronized,
    /// Random minutes following the benign population's day-night cycle.
    BenignLike,
}

impl Default for CampaignConfig {
    fn default() -> Self {
        CampaignConfig {
            daily_per_account: 26.0,
            identity_sharing: 10,
            proxy_share: 0.0,
            pacing: Pacing::Random,
            burst_minutes: 30,
            seed_prompts: 0,
            creation_per_day: None,
            regrow_hours: None,
            adaptive: false,
            limit_response: LimitResponse::Ignore,
            ramp_days: 7.0,
            identity_cost_usd: 10.0,
            reseller_share: 0.0,
            reseller_customer_share: 0.5,
        }
    }
}

impl CampaignConfig {
    /// Minute at which the `k`-th attacker account opens.
    pub fn opens_at(&self, k: usize) -> u32 {
        self.creation_per_day
            .filter(|r| *r > 0.0)
            .map_or(0, |r| (k as f64 / r * 1440.0) as u32)
    }

    /// Queries the campaign plans over `days` with `accounts` accounts, before any limit
    /// change or detection: each account from its opening minute to the end.
    pub fn planned(&self, accounts: usize, days: f64) -> f64 {
        let minutes = days * 1440.0;
        (0..accounts)
            .map(|k| (minutes - self.opens_at(k) as f64).max(0.0))
            .sum::<f64>()
            * self.daily_per_account
            / 1440.0
    }
}

/// A weighted sampler in O(1) per draw (Walker's alias method).
pub struct Alias {
    prob: Vec<f64>,
    alias: Vec<u32>,
}

impl Alias {
    pub fn new(weights: &[f64]) -> Alias {
        let n = weights.len().max(1);
        let total: f64 = weights.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let mut prob: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        prob.resize(n, 0.0);
        let mut alias = vec![0u32; n];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| prob[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            alias[s] = l as u32;
            prob[l] -= 1.0 - prob[s];
            if prob[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        for i in large.into_iter().chain(small) {
            prob[i] = 1.0;
        }
        Alias { prob, alias }
    }

    pub fn sample(&self, rng: &mut SimRng) -> usize {
        let i = rng.random_range(0..self.prob.len());
        if rng.random::<f64>() < self.prob[i] {
            i
        } else {
            self.alias[i] as usize
        }
    }
}

/// Poisson draw (Knuth for small means, normal approximation above 30).
pub fn poisson(rng: &mut SimRng, mean: f64) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    if mean > 30.0 {
        let z = crate::rng::normal_f64(rng);
        return (mean + z * mean.sqrt()).round().max(0.0) as u64;
    }
    let l = (-mean).exp();
    let (mut k, mut p) = (0u64, 1.0);
    loop {
        p *= rng.random::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}
