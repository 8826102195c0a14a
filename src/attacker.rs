//! The attacker: an account pool, a query budget and strategy, and the harvest loop that
//! drives the API on the simulated clock.

use crate::api::{AccountId, Api, Code, Identity, Request};
use crate::rng::derive_rng;
use crate::teacher::Teacher;
use crate::world::vocab::Tok;
use crate::world::{Mix, Prompt, Skill};
use serde::{Deserialize, Serialize};

/// How the attacker picks prompts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum Strategy {
    /// Sample like benign users.
    BenignLike,
    /// Only capability prompts on the chosen skills.
    Targeted { skills: Vec<Skill> },
    /// Active selection: the budget is spent in `rounds`; after the first (benign-like) round a
    /// student is trained on the harvest so far, and each round sends the prompts, out of `pool`
    /// candidates per query, on which that student is least certain (highest next-token
    /// entropy at the start of its answer).
    Active { rounds: usize, pool: usize },
}

/// An adaptive attacker's counters to output defenses. Repetition: every prompt sent
/// `repeats` times (from different accounts, each answer paid from the same budget), and the
/// answers to one prompt combined before training (it knows the defense samples or perturbs:
/// Kerckhoffs). Public data: `public_share` of the training set drawn from the attacker's own
/// corpus (the base model's corpus, answered as the base answers: correctly, with reasoning on
/// hard tiers, but without the teacher's refusals or support), which costs no queries and
/// needs no knowledge of the defense. Filtering: the `filter_share` of harvested answers its
/// own base model (`student.base`) finds least plausible are dropped. Rewriting: every answer
/// rewritten in the attacker's own style before training. Canaries: a `canary_share` of each
/// account's queries asks what the attacker already knows, and an account whose canaries fail
/// `canary_streak` times in a row is taken to be served by a fallback model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Adapt {
    /// Times each prompt is sent, in [1, 32].
    pub repeats: usize,
    pub combine: Combine,
    /// Share of the training set from the attacker's own corpus, in [0, 0.95].
    pub public_share: f64,
    /// Share of the harvested answers dropped as implausible, in [0, 0.9]: those with the
    /// lowest mean log-likelihood per response token under the attacker's own base model
    /// (`student.base`, pretrained on its corpus and cached; whatever `student.init` says),
    /// against defenses that make the teacher's answers odd (antidistillation, flips).
    pub filter_share: f64,
    /// Rewrite every harvested answer in the attacker's own style before training: each
    /// synonym glyph written as its plain digit, and the returned logprob mass of a glyph
    /// moved to its digit (the paraphrase this world admits without changing an answer;
    /// against watermarks). Word order is kept. It changes nothing where `world.answers` is
    /// `one` (no answer has a second spelling).
    pub rewrite: bool,
    /// Share of each account's answered queries that are canaries, in [0, 0.5]: easy skill
    /// prompts of the attacker's own corpus, whose answers it knows. Canaries are paid from
    /// the budget and never trained on. Needs `traffic.enabled` (only a replay's actions route
    /// an account to the fallback model).
    pub canary_share: f64,
    /// Consecutive failed canaries that mark an account as served by the fallback model; its
    /// answers after its last passed canary are dropped. In [1, 16].
    pub canary_streak: usize,
}

impl Default for Adapt {
    fn default() -> Self {
        Adapt {
            repeats: 1,
            combine: Combine::MeanLogprobs,
            public_share: 0.0,
            filter_share: 0.0,
            rewrite: false,
            canary_share: 0.0,
            canary_streak: 2,
        }
    }
}

/// `n` items of the attacker's own corpus ("public data"): prompts of the default base
/// corpus' mix (`BaseConfig::default()`, whatever `student.base` sets; train side of the
/// held-out split), each with the base's response and no logprobs.
pub fn public_items(n: usize, harm: crate::world::Harm, seed: u64) -> Vec<Item> {
    let mix = crate::base::BaseConfig::default().corpus.in_world(harm);
    let mut rng = derive_rng(seed, "attacker/public");
    (0..n)
        .map(|_| {
            let prompt = mix.sample(&mut rng);
            Item {
                tokens: crate::base::base_response(&prompt),
                prompt,
                top: vec![],
            }
        })
        .collect()
}

/// How the answers to one prompt are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// The most common answer text; at each of its positions the returned top-k averaged in
    /// probability (a token an answer does not list counts 0 there), against logprob noise.
    MeanLogprobs,
    /// The most common answer text alone (no logprobs), against sampling defenses.
    Majority,
}

/// Combine the answers to each prompt (grouped by identical prompt, in first-seen order) as
/// `combine` says: one item per distinct prompt.
pub fn combine_answers(items: &[Item], combine: Combine) -> Vec<Item> {
    let mut order: Vec<Vec<&Item>> = Vec::new();
    let mut index: std::collections::HashMap<(Vec<Tok>, Option<Vec<u32>>), usize> =
        std::collections::HashMap::new();
    for it in items {
        let voice = it
            .prompt
            .voice
            .map(|v| v.iter().map(|x| x.to_bits()).collect());
        let key = (it.prompt.tokens.clone(), voice);
        let i = *index.entry(key).or_insert_with(|| {
            order.push(vec![]);
            order.len() - 1
        });
        order[i].push(it);
    }
    order
        .into_iter()
        .map(|group| {
            // The most common text (ties: the first seen).
            let mut best: (&Vec<Tok>, usize) = (&group[0].tokens, 0);
            for it in &group {
                let n = group.iter().filter(|o| o.tokens == it.tokens).count();
                if n > best.1 {
                    best = (&it.tokens, n);
                }
            }
            let members: Vec<&Item> = group
                .iter()
                .copied()
                .filter(|o| &o.tokens == best.0)
                .collect();
            let top = match combine {
                Combine::Majority => vec![],
                Combine::MeanLogprobs => {
                    let rows = members.iter().map(|m| m.top.len()).min().unwrap_or(0);
                    let k = members
                        .iter()
                        .flat_map(|m| m.top.iter().map(Vec::len))
                        .max()
                        .unwrap_or(0);
                    (0..rows)
                        .map(|pos| {
                            let mut p: Vec<(Tok, f32)> = Vec::new();
                            for m in &members {
                                for &(t, lp) in &m.top[pos] {
                                    match p.iter_mut().find(|(x, _)| *x == t) {
                                        Some(e) => e.1 += lp.exp(),
                                        None => p.push((t, lp.exp())),
                                    }
                                }
                            }
                            let n = members.len() as f32;
                            p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                            p.truncate(k);
                            p.into_iter().map(|(t, q)| (t, (q / n).ln())).collect()
                        })
                        .collect()
                }
            };
            Item {
                prompt: members[0].prompt.clone(),
                tokens: best.0.clone(),
                top,
            }
        })
        .collect()
}

/// Trains a student on the harvest so far (for active selection).
pub type Learner<'a> = &'a dyn Fn(&[Item], u64) -> crate::Result<Box<dyn crate::model::Engine>>;

/// The student's next-token entropy (nats) at the first response position of each prompt.
pub fn uncertainty(student: &dyn crate::model::Engine, prompts: &[Prompt]) -> Vec<f32> {
    let v = student.spec().vocab;
    let mut out = Vec::with_capacity(prompts.len());
    let mut lp = vec![0.0f32; v];
    for chunk in prompts.chunks(256) {
        let inputs: Vec<Vec<u32>> = chunk
            .iter()
            .map(crate::model::generate::model_input)
            .collect();
        let voices: Vec<[f32; crate::world::VOICE_DIM]> =
            chunk.iter().map(|p| p.voice_input()).collect();
        let rows: Vec<(&[u32], &[f32; crate::world::VOICE_DIM])> = inputs
            .iter()
            .zip(&voices)
            .map(|(i, v)| (&i[..], v))
            .collect();
        let batch = crate::model::generate::pack(&rows);
        let logits = student.logits(&batch);
        for (r, i) in inputs.iter().enumerate() {
            let at = (r * batch.t + i.len() - 1) * v;
            crate::model::generate::log_softmax(&logits[at..at + v], &mut lp);
            out.push(-lp.iter().map(|l| l.exp() * l).sum::<f32>());
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AttackerConfig {
    /// Accounts opened at the start of the campaign.
    pub accounts: usize,
    /// Tier name of every account (must be one of the API's tiers).
    pub tier: String,
    /// Query budget: successful responses to harvest.
    pub budget: usize,
    pub strategy: Strategy,
    /// Share of queries sent with voice, in [0, 1].
    pub voice_share: f64,
    /// Share of harmful (plain or jailbreak-wrapped) prompts, in [0, 1].
    pub harmful_share: f64,
    /// Reasoning elicitation: share of skill queries on hard tiers, whose answers come with
    /// the scratchpad (None: as benign users ask).
    pub hard_share: Option<f64>,
    /// Drop refusals from the harvest before training (the copy then never sees one).
    pub strip_refusals: bool,
    /// Sampling temperature asked of the API (0 = greedy).
    pub temperature: f32,
    /// Top-k logprobs asked for (the API may return fewer or none).
    pub top_k: usize,
    /// The world's harm model, which the attacker's safety prompts follow: set from
    /// `world.harm` by the runner, not a key of its own.
    #[serde(skip)]
    pub world_harm: crate::world::Harm,
    /// Cost of opening one account (USD: phone numbers, cards, proxies).
    pub account_cost_usd: f64,
    /// Simulated seconds per tick.
    pub tick_seconds: f64,
    /// Give up after this many simulated days.
    pub max_days: f64,
    /// An adaptive counter to the API's output defenses (None: the naive attacker, one query
    /// per prompt, answers trained on as returned).
    pub adapt: Option<Adapt>,
    /// A harvest collected outside the simulator (JSON lines of `{"request", "response"}`
    /// bodies of an OpenAI-style client, e.g. against `distill-sim serve`): the run trains on
    /// it instead of querying the API. Set by `distill-sim distill`.
    pub harvest_file: Option<String>,
    /// SHA-256 of `harvest_file`, checked when the run reads it: a changed file is a changed
    /// run, never a stale one.
    pub harvest_sha256: Option<String>,
}

impl Default for AttackerConfig {
    fn default() -> Self {
        AttackerConfig {
            accounts: 20,
            tier: "tier1".into(),
            budget: 10_000,
            strategy: Strategy::BenignLike,
            voice_share: 0.0,
            harmful_share: 0.02,
            hard_share: None,
            strip_refusals: false,
            temperature: 0.0,
            top_k: 20,
            world_harm: Default::default(),
            account_cost_usd: 2.0,
            tick_seconds: 10.0,
            max_days: 45.0,
            adapt: None,
            harvest_file: None,
            harvest_sha256: None,
        }
    }
}

impl AttackerConfig {
    /// Whether this attacker filters its harvest with its base model.
    pub fn filters(&self) -> bool {
        self.adapt.as_ref().is_some_and(|a| a.filter_share > 0.0)
    }

    /// The prompt distribution this attacker samples.
    pub fn mix(&self) -> Mix {
        let mut m = Mix::benign().in_world(self.world_harm);
        if let Strategy::Targeted { skills } = &self.strategy {
            m.only_skills = skills.clone();
            m.lookalike = 0.0;
            m.affect = 0.0;
            m.probe = 0.0;
        }
        let others = m.skills + m.lookalike + m.affect + m.probe;
        let h = self.harmful_share.clamp(0.0, 1.0);
        // Scale the other families so that harmful prompts are exactly `h` of the mix.
        let scale = if h < 1.0 { (1.0 - h) / others } else { 0.0 };
        m.skills *= scale;
        m.lookalike *= scale;
        m.affect *= scale;
        m.probe *= scale;
        m.harmful = h;
        m.voice_share = self.voice_share.clamp(0.0, 1.0);
        if let Some(hs) = self.hard_share {
            m.hard_share = hs.clamp(0.0, 1.0);
        }
        m
    }

    /// The items a student trains on: the harvest (its repeated answers combined by an
    /// adaptive attacker, then the least plausible dropped under `filter_share`, then rewritten
    /// under `rewrite`), without refusals when they are stripped: responses that refuse are
    /// dropped, and the refusal token is removed from the returned logprobs of the others (a
    /// sampled answer's logprobs can still put most of the mass on refusing); then an adaptive
    /// attacker's public data (`seed` draws it), so that it is `public_share` of the whole.
    /// `plausibility` scores items under the attacker's base model (needed to filter).
    pub fn training_items(
        &self,
        items: &[Item],
        seed: u64,
        plausibility: Option<Scorer>,
    ) -> crate::Result<Vec<Item>> {
        use crate::world::vocab::REFUSE;
        let combined;
        let mut items = match &self.adapt {
            Some(a) if a.repeats > 1 || a.combine == Combine::Majority => {
                combined = combine_answers(items, a.combine);
                &combined[..]
            }
            _ => items,
        };
        let filter = self.adapt.as_ref().map_or(0.0, |a| a.filter_share);
        let filtered;
        if filter > 0.0 {
            let score = plausibility.ok_or_else(|| {
                crate::Error::Invalid(
                    "attacker.adapt.filter_share needs the attacker's base model to score the \
                     harvest"
                        .into(),
                )
            })?;
            filtered = drop_implausible(items, &score(items)?, filter);
            items = &filtered[..];
        }
        let rewrite = self.adapt.as_ref().is_some_and(|a| a.rewrite);
        let mut out: Vec<Item> = items
            .iter()
            .filter(|i| !(self.strip_refusals && crate::world::parse_response(&i.tokens).refused))
            .map(|i| {
                let mut i = if rewrite { rewrite_plain(i) } else { i.clone() };
                if self.strip_refusals {
                    for row in i.top.iter_mut() {
                        row.retain(|&(t, _)| t != REFUSE);
                    }
                }
                i
            })
            .collect();
        let share = self.adapt.as_ref().map_or(0.0, |a| a.public_share);
        if share > 0.0 && !out.is_empty() {
            let n = (out.len() as f64 * share / (1.0 - share)).round() as usize;
            out.extend(public_items(n, self.world_harm, seed));
        }
        Ok(out)
    }
}

/// Scores items (higher: more plausible), e.g. [`plausibility`] under the attacker's base.
pub type Scorer<'a> = &'a dyn Fn(&[Item]) -> crate::Result<Vec<f32>>;

/// Each item's mean log-likelihood per response token under `model` (teacher-forced; nats;
/// 0 for an empty response), the attacker's measure of how plausible an answer is.
pub fn plausibility(model: &dyn crate::model::Engine, items: &[Item]) -> Vec<f32> {
    let pairs: Vec<(&Prompt, &[Tok])> = items.iter().map(|i| (&i.prompt, &i.tokens[..])).collect();
    crate::teacher::per_position_of(model, &pairs, |lp, t| lp[t as usize])
        .into_iter()
        .map(|lps| {
            let n = lps.len();
            if n == 0 {
                0.0
            } else {
                lps.iter().fold(0.0f32, |s, &x| s + x) / n as f32
            }
        })
        .collect()
}

/// `items` less the `share` (rounded down) with the lowest `scores`, in their order (ties:
/// the later item dropped first).
pub fn drop_implausible(items: &[Item], scores: &[f32], share: f64) -> Vec<Item> {
    let n = ((items.len() as f64) * share.clamp(0.0, 1.0)).floor() as usize;
    let mut idx: Vec<usize> = (0..items.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)));
    let mut dropped = vec![false; items.len()];
    for &i in &idx[..n] {
        dropped[i] = true;
    }
    items
        .iter()
        .zip(dropped)
        .filter(|(_, d)| !d)
        .map(|(i, _)| i.clone())
        .collect()
}

/// An answer rewritten in the attacker's style: synonym glyphs as their plain digits, and at
/// each position the returned probability of a glyph added to its digit's.
pub fn rewrite_plain(item: &Item) -> Item {
    use crate::world::answers::canonical_token;
    let top = item
        .top
        .iter()
        .map(|row| {
            let mut p: Vec<(Tok, f32)> = Vec::with_capacity(row.len());
            for &(t, lp) in row {
                let c = canonical_token(t);
                match p.iter_mut().find(|(x, _)| *x == c) {
                    Some(e) => e.1 += lp.exp(),
                    None => p.push((c, lp.exp())),
                }
            }
            p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            p.into_iter().map(|(t, q)| (t, q.ln())).collect()
        })
        .collect();
    Item {
        prompt: item.prompt.clone(),
        tokens: item.tokens.iter().map(|&t| canonical_token(t)).collect(),
        top,
    }
}

/// One harvested exchange: what was sent and what came back.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub prompt: Prompt,
    pub tokens: Vec<Tok>,
    pub top: Vec<Vec<(Tok, f32)>>,
}

/// What the attacker got, in harvest order, and what it cost.
#[derive(Clone, Debug, Default)]
pub struct Harvest {
    pub items: Vec<Item>,
    /// Simulated seconds at which item `i` arrived.
    pub times: Vec<f64>,
    /// Cumulative API spend (USD) after item `i`.
    pub spend: Vec<f64>,
    pub throttled: u64,
    pub refused: u64,
    /// Per item: answered by the fallback model (a silent fallback the attacker cannot see).
    pub from_fallback: Vec<bool>,
    /// Per item: the account it was answered on (a replay's harvest; empty otherwise).
    pub item_accounts: Vec<u32>,
    /// A canary-sending attacker's canaries, every one the API answered, in time order:
    /// (simulated second, account, whether the known answer came back).
    pub canary_events: Vec<(f64, u32, bool)>,
    /// Canaries that fell in the harvest's sample (budget spent on them, not trained on).
    pub canaries_sampled: usize,
    /// The accounts the harvest was sent from.
    pub account_ids: Vec<AccountId>,
    pub accounts: usize,
    pub account_cost_usd: f64,
}

impl Harvest {
    /// API spend (USD) of the first `n` items (hidden reasoning billed as output).
    pub fn api_spend_at(&self, n: usize) -> f64 {
        if n == 0 {
            0.0
        } else {
            self.spend[n.min(self.spend.len()) - 1]
        }
    }

    /// What the attacker's accounts cost (USD).
    pub fn accounts_cost(&self) -> f64 {
        self.accounts as f64 * self.account_cost_usd
    }
}

/// A canary: an easy copy or sort prompt of the attacker's own corpus (train side of the
/// held-out split), whose answer it computes itself ([`crate::base::base_response`]).
pub fn canary_prompt(rng: &mut crate::rng::SimRng) -> Prompt {
    use crate::world::{Kind, Side, Tier};
    let skill = if rand::Rng::random_bool(rng, 0.5) {
        Skill::CopyReverse
    } else {
        Skill::Sort
    };
    crate::world::generate_on(rng, Kind::Skill(skill, Tier::Easy), false, Side::Train)
}

/// What a canary-checking attacker does with a harvest: items in harvest order as (account,
/// simulated second), its canaries as (second, account, passed) in time order. On each
/// account, once `streak` canaries in a row failed, it takes the account to be served by a
/// fallback model and drops its answers since its last passed canary and from then on (at
/// equal times a canary counts first). Returns whether each item is kept, and how many
/// accounts were taken for fallback ones.
pub fn canary_keep(
    items: &[(u32, f64)],
    canaries: &[(f64, u32, bool)],
    streak: usize,
) -> (Vec<bool>, usize) {
    #[derive(Default)]
    struct State {
        fails: usize,
        burnt: bool,
        since_pass: Vec<usize>,
    }
    let mut keep = vec![true; items.len()];
    let mut state: std::collections::HashMap<u32, State> = std::collections::HashMap::new();
    let mut burnt = 0;
    let mut next = 0;
    let check = |state: &mut std::collections::HashMap<u32, State>,
                 c: &(f64, u32, bool),
                 keep: &mut Vec<bool>,
                 burnt: &mut usize| {
        let s = state.entry(c.1).or_default();
        if s.burnt {
            return;
        }
        if c.2 {
            s.fails = 0;
            s.since_pass.clear();
        } else {
            s.fails += 1;
            if s.fails >= streak.max(1) {
                s.burnt = true;
                *burnt += 1;
                for &j in &s.since_pass {
                    keep[j] = false;
                }
                s.since_pass.clear();
            }
        }
    };
    for (i, &(a, t)) in items.iter().enumerate() {
        while next < canaries.len() && canaries[next].0 <= t {
            check(&mut state, &canaries[next], &mut keep, &mut burnt);
            next += 1;
        }
        let s = state.entry(a).or_default();
        if s.burnt {
            keep[i] = false;
        } else {
            s.since_pass.push(i);
        }
    }
    (keep, burnt)
}

/// The `n` prompts with the highest uncertainty `u`, most uncertain first.
pub fn select_uncertain(candidates: Vec<Prompt>, u: &[f32], n: usize) -> Vec<Prompt> {
    let mut idx: Vec<usize> = (0..candidates.len()).collect();
    idx.sort_by(|&a, &b| u[b].total_cmp(&u[a]).then(a.cmp(&b)));
    idx.truncate(n);
    let mut slots: Vec<Option<Prompt>> = candidates.into_iter().map(Some).collect();
    idx.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// Run a campaign until the budget is harvested or time runs out. `learner` trains a student
/// on the harvest so far (needed by active selection only).
pub fn harvest(
    cfg: &AttackerConfig,
    api: &mut Api,
    teacher: &Teacher,
    seed: u64,
    learner: Option<Learner>,
) -> crate::Result<Harvest> {
    let tier = api.config.tier_index(&cfg.tier).ok_or_else(|| {
        crate::Error::Invalid(format!(
            "attacker.tier `{}` is not an API tier (allowed: {})",
            cfg.tier,
            api.config.tier_names()
        ))
    })?;
    let mut rng = derive_rng(seed, "attacker/prompts");
    let mut gen_rng = derive_rng(seed, "api/sampling");
    let mix = cfg.mix();
    let ids: Vec<AccountId> = (0..cfg.accounts.max(1))
        .map(|i| {
            let id = Identity {
                payment: i as u32,
                ip_asn: i as u32,
                fingerprint: i as u32,
                region: 0,
                verified: false,
            };
            api.open_account(tier, 0.0, id)
        })
        .collect();
    let repeats = cfg.adapt.as_ref().map_or(1, |a| a.repeats.max(1));
    let rpm = api.config.tiers[tier].rpm;
    // Paced to the tier's request limit: each account sends its per-tick share.
    let per_tick = ((rpm * cfg.tick_seconds / 60.0).ceil() as usize).max(1);
    let mut h = Harvest {
        account_ids: ids.clone(),
        accounts: ids.len(),
        account_cost_usd: cfg.account_cost_usd,
        ..Default::default()
    };
    let mut pending: Vec<Prompt> = Vec::new();
    // Active selection: prompts chosen for the current round, and the round boundaries.
    let mut selected: Vec<Prompt> = Vec::new();
    let mut round = 0usize;
    let (rounds, pool) = match cfg.strategy {
        Strategy::Active { rounds, pool } => (rounds.max(1), pool.max(1)),
        _ => (1, 1),
    };
    let round_size = cfg.budget.div_ceil(rounds);
    let mut spend = 0.0;
    let mut now = 0.0;
    let end = cfg.max_days * 86_400.0;
    while h.items.len() < cfg.budget && now < end {
        if rounds > 1 && h.items.len() >= (round + 1) * round_size && pending.is_empty() {
            // A new round: train on the harvest so far, select the most uncertain prompts.
            round += 1;
            let learner = learner.ok_or_else(|| {
                crate::Error::Invalid("attacker.strategy active needs a student to train".into())
            })?;
            let student = learner(
                &h.items,
                crate::rng::derive_seed(seed, &format!("active/{round}")),
            )?;
            let n = round_size.min(cfg.budget - h.items.len());
            let candidates: Vec<Prompt> = (0..n * pool).map(|_| mix.sample(&mut rng)).collect();
            let u = uncertainty(student.as_ref(), &candidates);
            selected = select_uncertain(candidates, &u, n);
            selected.reverse(); // popped from the back: most uncertain first
        }
        let want = (cfg.budget - h.items.len()).min(per_tick * ids.len());
        let mut reqs = Vec::with_capacity(want);
        for j in 0..want {
            let prompt = pending.pop().or_else(|| selected.pop()).unwrap_or_else(|| {
                let p = mix.sample(&mut rng);
                // The adaptive attacker sends it again from the next accounts.
                for _ in 1..repeats {
                    pending.push(p.clone());
                }
                p
            });
            reqs.push(Request {
                account: ids[j % ids.len()],
                prompt,
                max_tokens: api.config.max_tokens,
                temperature: cfg.temperature,
                top_k: cfg.top_k,
            });
        }
        let resps = api.serve(now, &reqs, teacher, &mut gen_rng);
        for (req, resp) in reqs.into_iter().zip(resps) {
            match resp.code {
                Code::Ok => {
                    spend += resp.usage.spend_usd;
                    h.items.push(Item {
                        prompt: req.prompt,
                        tokens: resp.tokens,
                        top: resp.top,
                    });
                    h.times.push(now);
                    h.spend.push(spend);
                }
                Code::Throttled => {
                    h.throttled += 1;
                    pending.push(req.prompt);
                }
                // Refused, challenged, blocked, or answered by a marked fallback: nothing to
                // train on.
                _ => h.refused += 1,
            }
        }
        now += cfg.tick_seconds;
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiConfig;
    use crate::world::Kind;

    fn oracle() -> Teacher {
        Teacher::Oracle {
            easy: 0.9,
            hard: 0.8,
        }
    }

    #[test]
    fn harvest_reaches_budget_within_rate_limits() {
        let cfg = AttackerConfig {
            accounts: 3,
            budget: 500,
            ..Default::default()
        };
        let mut api = Api::new(ApiConfig::default()).unwrap();
        let h = harvest(&cfg, &mut api, &oracle(), 1, None).unwrap();
        assert_eq!(h.items.len(), 500);
        // tier1: 50 rpm per account x 3 accounts = 150 per minute -> at least 200 s.
        let last = *h.times.last().unwrap();
        assert!(last >= 150.0, "too fast: {last}");
        let l = api.ledger_of(&[0, 1, 2]);
        assert_eq!(l.requests, 500);
        assert!((l.spend_usd - h.spend[499]).abs() < 1e-9);
        assert!((h.api_spend_at(500) - h.spend[499]).abs() < 1e-12);
        assert!((h.accounts_cost() - 6.0).abs() < 1e-9);
    }

    #[test]
    fn harmful_and_voice_shares_are_honoured() {
        let cfg = AttackerConfig {
            harmful_share: 0.0,
            voice_share: 0.0,
            ..Default::default()
        };
        let mix = cfg.mix();
        let mut rng = derive_rng(1, "t");
        for _ in 0..2000 {
            let p = mix.sample(&mut rng);
            assert!(!matches!(p.kind, Kind::Harmful | Kind::Jailbreak));
            assert!(p.voice.is_none());
        }
        let cfg = AttackerConfig {
            harmful_share: 0.25,
            ..Default::default()
        };
        let mix = cfg.mix();
        let n = (0..4000)
            .filter(|_| matches!(mix.sample(&mut rng).kind, Kind::Harmful | Kind::Jailbreak))
            .count();
        assert!((n as f64 / 4000.0 - 0.25).abs() < 0.03, "{n}");
    }

    #[test]
    fn refusal_stripping_leaves_no_refusal_and_hard_share_elicits_traces() {
        let cfg = AttackerConfig {
            accounts: 3,
            budget: 400,
            harmful_share: 0.3,
            strip_refusals: true,
            hard_share: Some(1.0),
            ..Default::default()
        };
        let mut api = Api::new(ApiConfig::default()).unwrap();
        let h = harvest(&cfg, &mut api, &oracle(), 3, None).unwrap();
        let refusals = |items: &[Item]| {
            items
                .iter()
                .filter(|i| crate::world::parse_response(&i.tokens).refused)
                .count()
        };
        let all = h.items.clone();
        assert!(refusals(&all) > 50, "{}", refusals(&all));
        let kept = cfg.training_items(&h.items, 0, None).unwrap();
        assert_eq!(refusals(&kept), 0);
        assert_eq!(kept.len(), all.len() - refusals(&all));
        // Nor in the logprob targets of what is kept (sampled answers of a harmful prompt can
        // carry the refusal there).
        let mut sampled = h.items[0].clone();
        sampled.tokens = vec![7, crate::world::vocab::EOS];
        sampled.top = vec![vec![(crate::world::vocab::REFUSE, -0.1), (7, -2.4)]];
        let stripped = cfg
            .training_items(std::slice::from_ref(&sampled), 0, None)
            .unwrap();
        assert_eq!(stripped[0].top, vec![vec![(7, -2.4)]]);
        // Every skill prompt is a hard tier, so every skill answer carries a trace.
        let skills: Vec<&Item> = h
            .items
            .iter()
            .filter(|i| matches!(i.prompt.kind, Kind::Skill(..)))
            .collect();
        assert!(!skills.is_empty());
        assert!(skills
            .iter()
            .all(|i| matches!(i.prompt.kind, Kind::Skill(_, crate::world::Tier::Hard))));
        let no_strip = AttackerConfig {
            strip_refusals: false,
            ..cfg
        };
        assert_eq!(
            no_strip.training_items(&h.items, 0, None).unwrap().len(),
            h.items.len()
        );
    }

    #[test]
    fn voice_costs_its_multiplier() {
        let cfg = AttackerConfig {
            accounts: 2,
            budget: 300,
            voice_share: 1.0,
            ..Default::default()
        };
        let run = |mult: f64| {
            let mut api = Api::new(ApiConfig {
                voice_price_multiplier: mult,
                ..Default::default()
            })
            .unwrap();
            harvest(&cfg, &mut api, &oracle(), 5, None).unwrap()
        };
        let (one, three) = (run(1.0), run(3.0));
        let per_item =
            |h: &Harvest, i: usize| h.spend[i] - if i == 0 { 0.0 } else { h.spend[i - 1] };
        let mut voiced = 0;
        for i in 0..one.items.len() {
            assert_eq!(one.items[i].prompt, three.items[i].prompt);
            let ratio = per_item(&three, i) / per_item(&one, i);
            let want = if one.items[i].prompt.voice.is_some() {
                voiced += 1;
                3.0
            } else {
                1.0
            };
            assert!((ratio - want).abs() < 1e-6, "item {i}: {ratio}");
        }
        assert!(voiced > 0);
    }

    #[test]
    fn active_selection_sends_prompts_the_student_is_least_sure_of() {
        let student_cfg = crate::student::StudentConfig {
            size: "tiny".into(),
            min_steps: 150,
            train: crate::model::train::TrainConfig {
                steps: 150,
                batch_size: 32,
                warmup: 10,
                ..Default::default()
            },
            ..Default::default()
        };
        let learner = |items: &[Item], seed: u64| {
            crate::student::distill(
                &student_cfg,
                crate::model::Backend::default(),
                None,
                items,
                seed,
            )
            .map(|(e, _)| e)
        };
        let cfg = AttackerConfig {
            accounts: 4,
            budget: 300,
            strategy: Strategy::Active { rounds: 3, pool: 4 },
            ..Default::default()
        };
        let mut api = Api::new(ApiConfig::default()).unwrap();
        let h = harvest(&cfg, &mut api, &oracle(), 2, Some(&learner)).unwrap();
        assert_eq!(h.items.len(), 300);
        // The selection itself: selected prompts are more uncertain than random ones.
        let student = learner(&h.items[..100], 7).unwrap();
        let mut rng = derive_rng(8, "t");
        let mix = cfg.mix();
        let pool: Vec<Prompt> = (0..400).map(|_| mix.sample(&mut rng)).collect();
        let u = uncertainty(student.as_ref(), &pool);
        let random_mean = u[..100].iter().sum::<f32>() / 100.0;
        let chosen = select_uncertain(pool.clone(), &u, 100);
        let chosen_u = uncertainty(student.as_ref(), &chosen);
        let chosen_mean = chosen_u.iter().sum::<f32>() / 100.0;
        assert!(
            chosen_mean > random_mean + 0.05,
            "{chosen_mean} vs {random_mean}"
        );
        assert!(
            chosen_u.windows(2).all(|w| w[0] >= w[1] - 1e-5),
            "most uncertain first"
        );
        // Without a learner the strategy is an error, not a silent fallback.
        let mut api = Api::new(ApiConfig::default()).unwrap();
        assert!(harvest(&cfg, &mut api, &oracle(), 2, None).is_err());
    }

    #[test]
    fn sampled_text_differs_from_greedy_labels_at_the_teachers_confidence() {
        let run = |temperature: f32| {
            let cfg = AttackerConfig {
                accounts: 4,
                budget: 600,
                temperature,
                harmful_share: 0.0,
                strategy: Strategy::Targeted {
                    skills: vec![Skill::Sort],
                },
                ..Default::default()
            };
            let mut api = Api::new(ApiConfig::default()).unwrap();
            let h = harvest(&cfg, &mut api, &oracle(), 4, None).unwrap();
            let first_ok = h
                .items
                .iter()
                .filter(|i| i.tokens.first() == crate::world::ideal_response(&i.prompt).first())
                .count();
            first_ok as f64 / h.items.len() as f64
        };
        // Label-only (greedy) text is the teacher's argmax: always the ideal first token.
        assert_eq!(run(0.0), 1.0);
        // Sampled text follows the teacher's distribution: the oracle puts 0.9 (easy) or 0.8
        // (hard) on the ideal token.
        let sampled = run(1.0);
        assert!(sampled > 0.75 && sampled < 0.93, "{sampled}");
    }

    /// Filtering drops the given share with the lowest scores, keeping the others' order.
    #[test]
    fn filtering_drops_the_least_plausible_share() {
        let mut rng = derive_rng(2, "t");
        let items: Vec<Item> = (0..4)
            .map(|i| Item {
                prompt: crate::world::generate(
                    &mut rng,
                    Kind::Skill(Skill::Sort, crate::world::Tier::Easy),
                    false,
                ),
                tokens: vec![i],
                top: vec![],
            })
            .collect();
        let kept = drop_implausible(&items, &[-1.0, -5.0, -2.0, -9.0], 0.5);
        assert_eq!(
            kept.iter().map(|i| i.tokens[0]).collect::<Vec<_>>(),
            vec![0, 2]
        );
        // A share rounds down; ties drop the later item first.
        let kept = drop_implausible(&items, &[-1.0, -1.0, -1.0, -1.0], 0.3);
        assert_eq!(
            kept.iter().map(|i| i.tokens[0]).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(drop_implausible(&items, &[0.0; 4], 0.0).len(), 4);
        // Filtering without a scorer is an error, not a silent no-op.
        let cfg = AttackerConfig {
            adapt: Some(Adapt {
                filter_share: 0.5,
                ..Adapt::default()
            }),
            ..Default::default()
        };
        assert!(cfg.training_items(&items, 0, None).is_err());
        let score = |it: &[Item]| Ok(it.iter().map(|i| -(i.tokens[0] as f32)).collect());
        let kept = cfg.training_items(&items, 0, Some(&score)).unwrap();
        assert_eq!(
            kept.iter().map(|i| i.tokens[0]).collect::<Vec<_>>(),
            vec![0, 1]
        );
    }

    /// Plausibility is the mean log-probability of the response tokens at the positions that
    /// predict them, the same as computed from one unpadded sequence at a time.
    #[test]
    fn plausibility_is_the_mean_response_token_logprob() {
        use crate::model::generate::{log_softmax, model_input, pack};
        let spec = crate::model::ModelSpec::preset("tiny").unwrap();
        let model = crate::model::new_engine(crate::model::Backend::default(), spec, 3).unwrap();
        let mut rng = derive_rng(5, "t");
        let items: Vec<Item> = (0..5)
            .map(|i| {
                let prompt = crate::world::generate(
                    &mut rng,
                    Kind::Skill(Skill::Sort, crate::world::Tier::Easy),
                    i % 2 == 0,
                );
                let tokens = crate::world::ideal_response(&prompt)[..1 + i % 3].to_vec();
                Item {
                    prompt,
                    tokens,
                    top: vec![],
                }
            })
            .collect();
        let got = plausibility(model.as_ref(), &items);
        let v = model.spec().vocab;
        let mut lp = vec![0.0; v];
        for (it, g) in items.iter().zip(&got) {
            let mut seq = model_input(&it.prompt);
            seq.extend(&it.tokens);
            let voice = it.prompt.voice_input();
            let batch = pack(&[(&seq[..], &voice)]);
            let logits = model.logits(&batch);
            let sep = it.prompt.tokens.len() + 1;
            let want: f32 = it
                .tokens
                .iter()
                .enumerate()
                .map(|(j, &t)| {
                    log_softmax(&logits[(sep + j) * v..(sep + j + 1) * v], &mut lp);
                    lp[t as usize]
                })
                .sum::<f32>()
                / it.tokens.len() as f32;
            assert!((g - want).abs() < 1e-4, "{g} vs {want}");
            assert!(*g < 0.0);
        }
    }

    /// The rewrite writes glyphs as digits and moves a glyph's probability to its digit.
    #[test]
    fn rewriting_writes_plain_digits_and_merges_their_mass() {
        use crate::world::answers::synonym;
        use crate::world::vocab::{digit, EOS};
        let mut rng = derive_rng(1, "t");
        let g3 = synonym(digit(3)).unwrap();
        let item = Item {
            prompt: crate::world::generate(
                &mut rng,
                Kind::Skill(Skill::Sort, crate::world::Tier::Easy),
                false,
            ),
            tokens: vec![g3, digit(5), EOS],
            top: vec![
                vec![
                    (g3, 0.6f32.ln()),
                    (digit(3), 0.3f32.ln()),
                    (digit(7), 0.1f32.ln()),
                ],
                vec![(digit(5), 0.0)],
                vec![(EOS, 0.0)],
            ],
        };
        let r = rewrite_plain(&item);
        assert_eq!(r.tokens, vec![digit(3), digit(5), EOS]);
        assert_eq!(r.top[0].len(), 2);
        assert_eq!(r.top[0][0].0, digit(3));
        assert!((r.top[0][0].1.exp() - 0.9).abs() < 1e-6);
        assert!((r.top[0][1].1.exp() - 0.1).abs() < 1e-6);
        assert_eq!(r.top[1], item.top[1]);
        // The counter through the attacker's config.
        let cfg = AttackerConfig {
            adapt: Some(Adapt {
                rewrite: true,
                ..Adapt::default()
            }),
            ..Default::default()
        };
        assert_eq!(cfg.training_items(&[item], 0, None).unwrap()[0], r);
    }

    /// The canary rule on a hand-made harvest: account 1 passes a canary at t=1, then fails two
    /// in a row (t=3, t=6), so its answers since the pass (t=2, t=5) and after go; account 2
    /// is never failed. A canary at an item's time counts before it.
    #[test]
    fn two_failed_canaries_drop_an_account_since_its_last_pass() {
        let items = [
            (1, 0.0),
            (1, 2.0),
            (2, 4.0),
            (1, 5.0),
            (1, 6.0),
            (2, 7.0),
            (1, 8.0),
        ];
        let c = [
            (1.0, 1, true),
            (3.0, 1, false),
            (6.0, 1, false),
            (6.5, 2, true),
        ];
        let (keep, burnt) = canary_keep(&items, &c, 2);
        assert_eq!(keep, [true, false, true, false, false, true, false]);
        assert_eq!(burnt, 1);
        // A pass between the failures resets the streak: nothing is dropped at streak 2; at
        // streak 1 the first failure (t=3) drops what came after the pass at t=1.
        let c1 = [
            (1.0, 1, true),
            (3.0, 1, false),
            (5.5, 1, true),
            (7.5, 1, false),
        ];
        let (keep, burnt) = canary_keep(&items, &c1, 2);
        assert_eq!((keep, burnt), (vec![true; 7], 0));
        let (keep, burnt) = canary_keep(&items, &c1, 1);
        assert_eq!(keep, [true, false, true, false, false, true, false]);
        assert_eq!(burnt, 1);
    }

    /// The adaptive attacker's combination: answers to one prompt merged into one item, the
    /// most common text, top-k averaged in probability (unlisted = 0); majority keeps text only.
    #[test]
    fn repeated_answers_combine_by_mean_probability_or_majority() {
        let p = crate::world::generate(
            &mut crate::rng::derive_rng(1, "t"),
            Kind::Skill(Skill::Sort, crate::world::Tier::Easy),
            false,
        );
        let item = |toks: Vec<Tok>, top: Vec<Vec<(Tok, f32)>>| Item {
            prompt: p.clone(),
            tokens: toks,
            top,
        };
        let (a, b, c) = (11, 12, 13);
        let items = vec![
            item(vec![a], vec![vec![(a, 0.6f32.ln()), (b, 0.4f32.ln())]]),
            item(vec![a], vec![vec![(a, 0.8f32.ln())]]),
            item(vec![c], vec![vec![(c, 0.9f32.ln())]]),
            item(vec![a], vec![vec![(a, 0.7f32.ln()), (b, 0.3f32.ln())]]),
        ];
        let m = combine_answers(&items, Combine::MeanLogprobs);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].tokens, vec![a]);
        let row = &m[0].top[0];
        assert_eq!(row[0].0, a);
        assert!((row[0].1.exp() - 0.7).abs() < 1e-5, "{row:?}");
        assert_eq!(row[1].0, b);
        assert!((row[1].1.exp() - 0.7 / 3.0).abs() < 1e-5, "{row:?}");
        let v = combine_answers(&items, Combine::Majority);
        assert_eq!((v[0].tokens.clone(), v[0].top.len()), (vec![a], 0));
    }

    /// With `repeats: 3` every sampled prompt is asked three times, each answer paid from the
    /// budget; the training items are one per distinct prompt.
    #[test]
    fn the_adaptive_attacker_pays_each_repeat_from_its_budget() {
        let mut api = Api::new(ApiConfig::default()).unwrap();
        let cfg = AttackerConfig {
            budget: 30,
            accounts: 3,
            adapt: Some(Adapt {
                repeats: 3,
                ..Adapt::default()
            }),
            ..AttackerConfig::default()
        };
        let h = harvest(&cfg, &mut api, &oracle(), 5, None).unwrap();
        assert_eq!(h.items.len(), 30);
        for g in h.items.chunks(3) {
            assert!(
                g.iter().all(|i| i.prompt == g[0].prompt),
                "a prompt sent 3 times in a row"
            );
        }
        let distinct = cfg.training_items(&h.items, 0, None).unwrap();
        assert!((1..=10).contains(&distinct.len()), "{}", distinct.len());
        let naive = AttackerConfig { adapt: None, ..cfg };
        assert_eq!(naive.training_items(&h.items, 0, None).unwrap().len(), 30);
    }

    /// Averaging m noisy answers: the noise defense adds N(0, 0.5) to each logprob; the mean in
    /// probability of m = 4 answers has a quarter of one answer's variance (the variance of a
    /// mean of m independent draws is 1/m of one draw's).
    #[test]
    fn averaging_m_noisy_answers_shrinks_the_variance_by_one_over_m() {
        use crate::api::defense::{DefenseConfig, Defenses};
        let d = Defenses::new(&[DefenseConfig::Noise { std: 0.5 }]).unwrap();
        let p = crate::world::generate(
            &mut derive_rng(1, "t"),
            Kind::Skill(Skill::Sort, crate::world::Tier::Easy),
            false,
        );
        let (a, b, c) = (11, 12, 13);
        let clean = vec![vec![(a, 0.6f32.ln()), (b, 0.3f32.ln()), (c, 0.1f32.ln())]];
        let mut rng = derive_rng(2, "noise");
        let mut answer = || {
            let (mut toks, mut top) = (vec![a], clean.clone());
            d.after(&p, &mut toks, &mut top, &mut rng);
            Item {
                prompt: p.clone(),
                tokens: toks,
                top,
            }
        };
        let prob_a = |it: &Item| it.top[0].iter().find(|x| x.0 == a).unwrap().1.exp() as f64;
        let var = |x: &[f64]| {
            let m = x.iter().sum::<f64>() / x.len() as f64;
            x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64
        };
        let n = 4000;
        let single: Vec<f64> = (0..n).map(|_| prob_a(&answer())).collect();
        let mean4: Vec<f64> = (0..n)
            .map(|_| {
                let group: Vec<Item> = (0..4).map(|_| answer()).collect();
                let m = combine_answers(&group, Combine::MeanLogprobs);
                assert_eq!(m.len(), 1);
                prob_a(&m[0])
            })
            .collect();
        let ratio = var(&mean4) / var(&single);
        assert!(
            (ratio - 0.25).abs() < 0.03,
            "variance ratio {ratio}, expected 1/4"
        );
    }

    /// A vote over samples recovers the mode: answers right with probability 0.8 (else one
    /// wrong answer); the majority of 3 is right with probability 0.8^3 + 3 * 0.8^2 * 0.2 =
    /// 0.896.
    #[test]
    fn a_majority_of_three_samples_recovers_the_mode_at_the_binomial_rate() {
        let p = crate::world::generate(
            &mut derive_rng(1, "t"),
            Kind::Skill(Skill::Sort, crate::world::Tier::Easy),
            false,
        );
        let (right, wrong) = (vec![11, 12], vec![12, 11]);
        let mut rng = derive_rng(3, "vote");
        let n = 20_000;
        let mut hits = 0;
        for _ in 0..n {
            let group: Vec<Item> = (0..3)
                .map(|_| Item {
                    prompt: p.clone(),
                    tokens: if rand::Rng::random_bool(&mut rng, 0.8) {
                        right.clone()
                    } else {
                        wrong.clone()
                    },
                    top: vec![],
                })
                .collect();
            let v = combine_answers(&group, Combine::Majority);
            hits += usize::from(v[0].tokens == right);
        }
        let rate = hits as f64 / n as f64;
        // Binomial standard error at n = 20,000: 0.0022.
        assert!((rate - 0.896).abs() < 0.01, "majority right {rate}");
    }

    /// Public data: with `public_share: 0.5` half of the training set is the attacker's own
    /// corpus (train-side prompts, the base's answers, no logprobs), none of it harvested.
    #[test]
    fn public_data_is_its_share_of_the_training_set_and_answered_by_the_base() {
        let mut api = Api::new(ApiConfig::default()).unwrap();
        let cfg = AttackerConfig {
            budget: 40,
            accounts: 2,
            adapt: Some(Adapt {
                public_share: 0.5,
                ..Adapt::default()
            }),
            ..AttackerConfig::default()
        };
        let h = harvest(&cfg, &mut api, &oracle(), 5, None).unwrap();
        assert_eq!(h.items.len(), 40);
        let items = cfg.training_items(&h.items, 7, None).unwrap();
        assert_eq!(items.len(), 80);
        assert_eq!(&items[..40], &h.items[..]);
        for it in &items[40..] {
            assert!(it.top.is_empty());
            assert_eq!(it.tokens, crate::base::base_response(&it.prompt));
            assert_eq!(
                crate::world::split::side(&it.prompt.tokens),
                crate::world::split::Side::Train
            );
        }
        assert_ne!(
            items[40..],
            cfg.training_items(&h.items, 8, None).unwrap()[40..],
            "seeded"
        );
        let none = AttackerConfig { adapt: None, ..cfg };
        assert_eq!(none.training_items(&h.items, 7, None).unwrap().len(), 40);
    }
}
