//! Traffic on the simulated clock: a benign population and an attacker campaign sharing the
//! API, replayed at scale with compact query records (no text, no per-query allocation), for
//! detectors and their actions. Neural generation is not part of a replay: content-level
//! defenses are measured by the run pipeline, volume-level ones here.

pub mod detect;
pub mod prada;
pub mod replay;

use crate::api::limits::{Bucket, Ledger};
use crate::api::{ApiConfig, Identity};
use crate::rng::{derive_rng, SimRng};
use crate::world::{Kind, Mix, Prompt, Tier};
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
    /// Template index in its bank ([`ATTACK_BANK`] set for the campaign's bank).
    pub template: u16,
}

/// Bit of [`Query::template`] marking the campaign's template bank.
pub const ATTACK_BANK: u16 = 0x8000;

/// Index of a kind in `suite_kinds()` (the report order).
pub fn kind_index(k: Kind) -> u8 {
    crate::world::mix::suite_kinds()
        .iter()
        .position(|&x| x == k)
        .unwrap_or(0) as u8
}

/// Detection coupled to a run: the campaign is replayed at its own scale with a benign
/// population and detectors; the share of its planned attacker queries served before the
/// detectors stop it is the share of `attacker.budget` the attacker keeps.
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

/// Access defenses: who may open accounts and send requests at all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Regions whose requests are refused. Benign users live in regions 0..8; attacker accounts
    /// not on residential proxies appear in region 8 (datacenter / proxy ranges).
    pub blocked_regions: Vec<u16>,
    /// At most this many accounts per payment instrument; later sign-ups are refused.
    pub max_accounts_per_payment: Option<usize>,
    /// Accounts younger than this many days are held to the first (free) tier's limits.
    pub tier_gate_days: f64,
    /// ... and until they have spent this much (USD).
    pub tier_gate_spend_usd: f64,
}

/// The action on a flagged account.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Refuse every later request (benign users on a banned account are blocked).
    #[default]
    Ban,
    /// Serve later requests from a weaker fallback model, marked by a response code: the
    /// attacker drops them; flagged benign users get degraded answers.
    FallbackVisible,
    /// Serve later requests from the fallback model without telling: the attacker trains on
    /// them.
    FallbackSilent,
    /// Cut the account's rate limits to `throttle_factor` of its tier.
    Throttle,
    /// Suspend the account until it passes an identity-verification challenge
    /// (`challenge`); failing it (or giving up) loses the account.
    Challenge,
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
}

impl Default for PopulationConfig {
    fn default() -> Self {
        PopulationConfig {
            users: 2000,
            daily_median: 8.0,
            sigma: 1.2,
            tier: "tier1".into(),
            diurnal: 0.5,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CampaignConfig {
    /// Attacker accounts.
    pub accounts: usize,
    /// Queries per account per day (spread evenly over the day).
    pub daily_per_account: f64,
    /// Campaign length in simulated days.
    pub days: f64,
    /// Accounts per shared payment instrument / IP / fingerprint (1 = all unique).
    pub identity_sharing: usize,
    /// Share of attacker queries on hard (reasoning-bearing) tiers.
    pub hard_share: f64,
    /// Skills the campaign targets (all when empty).
    pub skills: Vec<crate::world::Skill>,
    /// Share of attacker accounts behind residential proxies (they appear in benign regions).
    pub proxy_share: f64,
    /// How the orchestrator times its accounts' queries.
    pub pacing: Pacing,
    /// With `pacing: synchronized`, minutes between bursts.
    pub burst_minutes: u32,
    /// Synthetic queries: perturbations of this many seed prompts (0: fresh prompts).
    pub seed_prompts: usize,
    /// Accounts opened per simulated day until `accounts` exist (None: all on day 0).
    pub creation_per_day: Option<f64>,
    /// Hydra regrowth: each lost account (banned, failed challenge) is replaced after this
    /// many hours (None: never).
    pub regrow_hours: Option<f64>,
    /// Adaptive attacker: after its first lost account it sends benign-like queries at random
    /// times, opens new accounts with unique identities, and scales its rate with any change of
    /// the provider's limits.
    pub adaptive: bool,
    /// Cost of opening one account, USD.
    pub account_cost_usd: f64,
    /// Cost of one identity (payment instrument, IP, fingerprint), USD: unique identities cost
    /// one each, shared ones one per group.
    pub identity_cost_usd: f64,
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
            accounts: 200,
            daily_per_account: 26.0,
            days: 7.0,
            identity_sharing: 10,
            hard_share: 0.8,
            skills: vec![],
            proxy_share: 0.0,
            pacing: Pacing::Random,
            burst_minutes: 30,
            seed_prompts: 0,
            creation_per_day: None,
            regrow_hours: None,
            adaptive: false,
            account_cost_usd: 2.0,
            identity_cost_usd: 10.0,
        }
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

/// Pre-sampled query templates, so the hot loop draws an index instead of building a prompt.
pub struct TemplateBank {
    /// (kind, input tokens, output tokens, reasoning) per template.
    pub queries: Vec<(u8, u8, u8, bool)>,
    /// Embedding per template (for PRADA).
    pub emb: Vec<[f32; prada::EMB_DIM]>,
}

impl TemplateBank {
    /// `n` prompts from `mix`.
    pub fn new(mix: &Mix, n: usize, rng: &mut SimRng) -> TemplateBank {
        let prompts: Vec<Prompt> = (0..n).map(|_| mix.sample(rng)).collect();
        Self::from_prompts(&prompts)
    }

    /// `n` synthetic prompts: each a seed prompt from `mix` (of `seeds`) with one to two of its
    /// tokens after the first replaced by tokens drawn from the seed itself (slot filling).
    pub fn perturbed(mix: &Mix, seeds: usize, n: usize, rng: &mut SimRng) -> TemplateBank {
        let seed_prompts: Vec<Prompt> = (0..seeds.max(1)).map(|_| mix.sample(rng)).collect();
        let prompts: Vec<Prompt> = (0..n)
            .map(|_| {
                let mut p = seed_prompts[rng.random_range(0..seed_prompts.len())].clone();
                let len = p.tokens.len();
                if len > 2 {
                    for _ in 0..rng.random_range(1..=2) {
                        let (i, j) = (rng.random_range(1..len), rng.random_range(1..len));
                        p.tokens.swap(i, j);
                    }
                }
                p
            })
            .collect();
        Self::from_prompts(&prompts)
    }

    fn from_prompts(prompts: &[Prompt]) -> TemplateBank {
        let embedder = prada::Embedder::default();
        let queries = prompts
            .iter()
            .map(|p| {
                let out = crate::world::ideal_response(p).len();
                let reasoning = matches!(p.kind, Kind::Skill(_, Tier::Hard));
                (
                    kind_index(p.kind),
                    (p.tokens.len() + 2) as u8,
                    out as u8,
                    reasoning,
                )
            })
            .collect();
        let emb = prompts.iter().map(|p| embedder.embed(p)).collect();
        TemplateBank { queries, emb }
    }

    /// A query from template `i` of this bank (`attack`: the campaign's bank).
    #[inline]
    pub fn query(&self, i: usize, minute: u32, account: u32, attack: bool) -> Query {
        let t = self.queries[i];
        Query {
            minute,
            account,
            kind: t.0,
            input_tokens: t.1,
            output_tokens: t.2,
            reasoning: t.3,
            template: i as u16 | if attack { ATTACK_BANK } else { 0 },
        }
    }
}

/// Per-account state of a replay.
#[derive(Clone, Debug)]
pub struct AccountState {
    pub identity: Identity,
    pub attacker: bool,
    pub tier: usize,
    pub banned_at: Option<u32>,
    /// Suspended (challenged) until this minute.
    pub suspended_until: Option<u32>,
    /// Held to the first tier's limits by the tier gate.
    pub gated: bool,
    /// Limits cut by a throttle action.
    pub throttled: bool,
    pub ledger: Ledger,
    buckets: [Bucket; 3],
}

/// The outcome of a replay.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplayStats {
    pub queries: u64,
    pub attacker_served: u64,
    pub benign_served: u64,
    pub throttled: u64,
    pub blocked_banned: u64,
    pub benign_blocked: u64,
    pub wall_seconds: f64,
}

/// Shared set-up of a replay: accounts (benign first, then attacker) with identities.
pub fn accounts(
    api: &ApiConfig,
    pop: &PopulationConfig,
    camp: &CampaignConfig,
    access: &AccessConfig,
    seed: u64,
) -> crate::Result<Vec<AccountState>> {
    let tier_of = |name: &str| {
        api.tier_index(name)
            .ok_or_else(|| crate::Error::Invalid(format!("tier `{name}` is not an API tier")))
    };
    let (bt, at) = (tier_of(&pop.tier)?, tier_of("tier1")?);
    let mut rng = derive_rng(seed, "traffic/identities");
    let mut v = Vec::with_capacity(pop.users + camp.accounts);
    for i in 0..pop.users + camp.accounts {
        let attacker = i >= pop.users;
        let identity = if attacker {
            let group = ((i - pop.users) / camp.identity_sharing.max(1)) as u32;
            Identity {
                payment: 1_000_000 + group,
                ip_asn: 1_000_000 + group,
                fingerprint: 1_000_000 + group,
                region: if rng.random_bool(camp.proxy_share.clamp(0.0, 1.0)) {
                    rng.random_range(0..8)
                } else {
                    DATACENTER_REGION
                },
                verified: false,
            }
        } else {
            // Benign users: unique identities, a few sharing a household IP.
            Identity {
                payment: i as u32,
                ip_asn: if rng.random_bool(0.05) {
                    (i / 2) as u32
                } else {
                    i as u32
                },
                fingerprint: i as u32,
                region: rng.random_range(0..8),
                verified: rng.random_bool(0.3),
            }
        };
        let tier = if attacker { at } else { bt };
        v.push(AccountState::open(
            identity, attacker, tier, api, access, 0.0,
        ));
    }
    Ok(v)
}

impl AccountState {
    /// An account opened at `now` under `api`'s limits (on the first tier's while a tier gate
    /// is configured).
    pub fn open(
        identity: Identity,
        attacker: bool,
        tier: usize,
        api: &ApiConfig,
        access: &AccessConfig,
        now: f64,
    ) -> Self {
        let gated = access.tier_gate_days > 0.0 || access.tier_gate_spend_usd > 0.0;
        let t = if gated {
            &api.tiers[0]
        } else {
            &api.tiers[tier]
        };
        AccountState {
            identity,
            attacker,
            tier,
            banned_at: None,
            suspended_until: None,
            gated,
            throttled: false,
            ledger: Ledger::default(),
            buckets: [
                Bucket::full(t.rpm, now),
                Bucket::full(t.input_tpm, now),
                Bucket::full(t.output_tpm, now),
            ],
        }
    }

    /// Set the account's limits to its own tier's, times `factor` (lifting a tier gate,
    /// or throttling).
    pub fn set_limits(&mut self, api: &ApiConfig, factor: f64, now: f64) {
        let t = &api.tiers[self.tier];
        for (b, lim) in self
            .buckets
            .iter_mut()
            .zip([t.rpm, t.input_tpm, t.output_tpm])
        {
            b.set_limit(lim * factor, now);
        }
    }

    /// Admit and bill one query at `now` (seconds). Returns whether it was served.
    #[inline]
    pub fn serve(&mut self, now: f64, q: &Query, price_in: f64, price_out: f64) -> bool {
        if !(self.buckets[0].has(now, 1.0)
            && self.buckets[1].has(now, q.input_tokens as f64)
            && self.buckets[2].has(now, 0.0))
        {
            self.ledger.throttled += 1;
            return false;
        }
        self.buckets[0].take(1.0);
        self.buckets[1].take(q.input_tokens as f64);
        self.buckets[2].take(q.output_tokens as f64);
        self.ledger.requests += 1;
        self.ledger.input_tokens += q.input_tokens as u64;
        self.ledger.output_tokens += q.output_tokens as u64;
        self.ledger.spend_usd +=
            (q.input_tokens as f64 * price_in + q.output_tokens as f64 * price_out) / 1e6;
        true
    }
}
