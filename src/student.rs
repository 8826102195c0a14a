//! The student: a smaller transformer distilled from the harvest.

use crate::attacker::Item;
use crate::error::{Error, Result};
use crate::model::train::{self, Example, TrainConfig, TrainReport};
use crate::model::{Backend, Engine, ModelSpec};
use crate::teacher::example;
use serde::{Deserialize, Serialize};

/// How the student learns from harvested responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Sequence-level cross-entropy on the returned text.
    Text,
    /// Token-level KL to the returned top-k logprobs (renormalised over the k tokens);
    /// falls back to the text where the API returned none.
    Logprobs,
    /// On-policy: half the budget harvested and learned as `logprobs`, the other half spent
    /// on the API's scoring mode: the student samples its own answers and the teacher's top-k
    /// logprobs at every position of them are the targets. Where the API offers no scoring
    /// (`api.scoring: false`, or `api.logprobs: 0`: a scoring call would return no logprobs)
    /// the whole budget is harvested and learned off-policy.
    OnPolicy,
}

/// How many steps a student trains for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Steps scale with the harvest: `epochs * items / batch_size`, clamped to
    /// `[min_steps, train.steps]`, with early stopping on the held-out validation split.
    ByHarvest,
    /// The same `train.steps` at every budget (equal compute), early stopping still on.
    EqualCompute,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StudentConfig {
    /// Model size preset (see `ModelSpec::preset`).
    pub size: String,
    pub method: Method,
    pub schedule: Schedule,
    /// Passes over the training items planned (`by_harvest`).
    pub epochs: f64,
    /// Fewest planned steps (`by_harvest`), so that small harvests are fitted too.
    pub min_steps: usize,
    /// Share of the harvest held out to decide when to stop (not trained on), in (0, 0.5].
    pub val_share: f64,
    /// Stop after this many validation measurements (20 per planned run) without a 0.5%
    /// improvement; the best weights are kept.
    pub patience: usize,
    /// Share of the harvest dropped at random before training, in [0, 0.5]: a stability
    /// check (a robust result barely moves when 1% of the data is dropped).
    pub drop_share: f64,
    /// `train.steps` caps the steps (and is the fixed count under `equal_compute`).
    pub train: TrainConfig,
    /// Where the student's weights start: `scratch` (random) or `base` (the attacker's own
    /// pretrained model of the same size, `base`).
    pub init: Init,
    /// The attacker's base model (with `init: base`).
    pub base: crate::base::BaseConfig,
    /// A self-family chain: the harvest first trains the attacker's larger model (this stage,
    /// from scratch), whose own answers to the harvest's prompts then train this student
    /// offline (no API cost). None: the student learns from the harvest directly.
    pub chain: Option<ChainStage>,
    /// Logprob targets: distillation temperature `T`. The returned distribution is softened
    /// to `p^(1/T)` (renormalised), the student's logits are divided by `T` in that term, and
    /// the term is scaled by `T^2` (Hinton et al. 2015). 1: the returned distribution as is.
    pub temperature: f32,
    /// Logprob targets: weight of the hard label (the returned text, at temperature 1) in the
    /// loss; the soft term gets `1 - hard_weight`. 0: soft targets only.
    pub hard_weight: f32,
    /// Logprob targets: what the mass outside the returned top-k becomes.
    pub top_k_rest: TopKRest,
}

/// The probability mass a top-k response leaves out.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TopKRest {
    /// Dropped: the top-k probabilities are renormalised to sum to 1.
    #[default]
    Renormalise,
    /// Kept as one "rest of the distribution" bucket: its mass (1 - the top-k's, tempered
    /// like them) is the target for the student's total probability outside the top-k.
    Bucket,
}

/// The intermediate model of a self-family chain (teacher -> this -> the student).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainStage {
    /// Model size preset of the attacker's larger model (see `ModelSpec::preset`).
    pub size: String,
}

/// Where a student's weights start.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// Random weights.
    #[default]
    Scratch,
    /// The attacker's pretrained base model (`student.base`).
    Base,
}

impl Default for StudentConfig {
    fn default() -> Self {
        StudentConfig {
            size: "student-s".into(),
            method: Method::Logprobs,
            schedule: Schedule::ByHarvest,
            epochs: 30.0,
            min_steps: 300,
            val_share: 0.1,
            patience: 4,
            drop_share: 0.0,
            train: TrainConfig {
                steps: 4000,
                batch_size: 64,
                lr: 3e-3,
                warmup: 50,
                min_lr_ratio: 0.05,
                weight_decay: 0.01,
            },
            init: Init::Scratch,
            base: Default::default(),
            chain: None,
            temperature: 1.0,
            hard_weight: 0.0,
            top_k_rest: TopKRest::Renormalise,
        }
    }
}

/// Largest validation split (examples): enough to tell improvement from noise, cheap to score.
const MAX_VALIDATION: usize = 2000;

impl StudentConfig {
    pub fn spec(&self) -> Result<ModelSpec> {
        ModelSpec::preset(&self.size).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown student size `{}` (allowed: {})",
                self.size,
                crate::model::spec::PRESETS.join(", ")
            ))
        })
    }

    /// Planned steps for `n` training items.
    pub fn planned_steps(&self, n: usize) -> usize {
        match self.schedule {
            Schedule::EqualCompute => self.train.steps,
            Schedule::ByHarvest => {
                let by_epochs =
                    (self.epochs * n as f64 / self.train.batch_size.max(1) as f64).ceil() as usize;
                by_epochs.clamp(self.min_steps.min(self.train.steps), self.train.steps)
            }
        }
    }

    /// Training config for `steps` planned steps.
    pub fn train_with_steps(&self, steps: usize) -> TrainConfig {
        TrainConfig {
            steps,
            warmup: self.train.warmup.min(steps / 5),
            ..self.train.clone()
        }
    }

    /// Early stopping for a run of `steps` planned steps.
    pub fn early_stop(&self, steps: usize) -> train::EarlyStop {
        train::EarlyStop {
            every: (steps / 20).clamp(10, 250),
            patience: self.patience.max(1),
            min_rel_delta: 0.005,
        }
    }
}

/// The items kept after dropping a seeded random `share` of them (order preserved).
pub fn drop_random<T: Clone>(items: &[T], share: f64, seed: u64) -> Vec<T> {
    if share <= 0.0 {
        return items.to_vec();
    }
    let (kept, _) = validation_split_n(
        items,
        (items.len() as f64 * share).round() as usize,
        seed,
        "student/drop",
    );
    kept
}

/// Split items into (training, validation): a seeded `val_share` of them (at most
/// [`MAX_VALIDATION`], none for fewer than 10 items) is held out.
pub fn validation_split<T: Clone>(items: &[T], val_share: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let n = items.len();
    let k = if n < 10 {
        0
    } else {
        ((n as f64 * val_share).ceil() as usize).clamp(1, MAX_VALIDATION)
    };
    validation_split_n(items, k, seed, "student/validation")
}

/// Hold out `k` seeded-random items: (the others in order, the held-out in order).
fn validation_split_n<T: Clone>(items: &[T], k: usize, seed: u64, name: &str) -> (Vec<T>, Vec<T>) {
    use rand::seq::SliceRandom;
    let n = items.len();
    let k = k.min(n);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut crate::rng::derive_rng(seed, name));
    let mut held = vec![false; n];
    for &i in &idx[..k] {
        held[i] = true;
    }
    let (mut tr, mut va) = (Vec::with_capacity(n - k), Vec::with_capacity(k));
    for (i, it) in items.iter().enumerate() {
        if held[i] {
            va.push(it.clone());
        } else {
            tr.push(it.clone());
        }
    }
    (tr, va)
}

/// Training example for one harvested exchange: the text's one-hot targets, or for logprob
/// methods the returned top-k (see [`soft_targets`]).
pub fn harvest_example(item: &Item, cfg: &StudentConfig) -> Example {
    let mut ex = example(&item.prompt, &item.tokens);
    if cfg.method == Method::Text || item.top.len() != item.tokens.len() {
        return ex;
    }
    let plain =
        cfg.temperature == 1.0 && cfg.hard_weight == 0.0 && cfg.top_k_rest == TopKRest::Renormalise;
    if plain {
        // The returned top-k, renormalised: the soft term at T = 1 with no hard label.
        for (target, top) in ex.targets.iter_mut().zip(&item.top) {
            if top.is_empty() {
                continue;
            }
            let z: f32 = top.iter().map(|(_, lp)| lp.exp()).sum();
            *target = top.iter().map(|&(t, lp)| (t, lp.exp() / z)).collect();
        }
        return ex;
    }
    let hard = cfg.hard_weight.clamp(0.0, 1.0);
    let positions = item
        .top
        .iter()
        .zip(ex.targets.iter_mut())
        .map(|(top, target)| {
            if top.is_empty() {
                // No logprobs at this position: the text alone, at full weight.
                return (Vec::new(), 0.0);
            }
            for t in target.iter_mut() {
                t.1 *= hard;
            }
            soft_targets(top, cfg.temperature, cfg.top_k_rest)
        })
        .collect();
    ex.soft = Some(train::Soft {
        temperature: cfg.temperature,
        weight: 1.0 - hard,
        positions,
    });
    ex
}

/// One position's soft targets from returned top-k logprobs: each listed token's probability
/// raised to `1/T`, and with a rest bucket the unlisted mass `max(0, 1 - sum p)` raised to
/// `1/T` too, all normalised to sum to 1. Returns the listed tokens and the rest's share.
pub fn soft_targets(
    top: &[(u32, f32)],
    temperature: f32,
    rest: TopKRest,
) -> (Vec<(u32, f32)>, f32) {
    let inv = 1.0 / temperature.max(1e-3);
    let listed: Vec<(u32, f32)> = top.iter().map(|&(t, lp)| (t, (lp * inv).exp())).collect();
    let left = 1.0 - top.iter().map(|(_, lp)| lp.exp()).sum::<f32>();
    let r = match rest {
        TopKRest::Bucket if left > 1e-6 => left.powf(inv),
        _ => 0.0,
    };
    let z = listed.iter().map(|x| x.1).sum::<f32>() + r;
    (listed.into_iter().map(|(t, p)| (t, p / z)).collect(), r / z)
}

/// Train `eng` on `items` (targets as for `method`) for at most `steps` planned steps, with
/// early stopping on a held-out split of them.
pub fn train_on(
    eng: &mut dyn Engine,
    cfg: &StudentConfig,
    items: &[Item],
    steps: usize,
    seed: u64,
) -> TrainReport {
    let (tr, va) = validation_split(items, cfg.val_share, seed);
    let ex = |xs: &[Item]| -> Vec<Example> { xs.iter().map(|i| harvest_example(i, cfg)).collect() };
    let (tr, va) = (ex(&tr), ex(&va));
    train::train_validated(
        eng,
        &tr,
        &va,
        Some(cfg.early_stop(steps)),
        &cfg.train_with_steps(steps),
        seed,
        |_, _| {},
    )
}

/// Distil a fresh student from `items`: the planned steps for their number, early stopping
/// on the held-out split.
pub fn distill(
    cfg: &StudentConfig,
    engine: Backend,
    base: Option<&std::path::Path>,
    items: &[Item],
    seed: u64,
) -> Result<(Box<dyn Engine>, TrainReport)> {
    let mut eng = crate::base::new_student(engine, cfg.spec()?, seed, base)?;
    let steps = cfg.planned_steps(items.len());
    let report = train_on(eng.as_mut(), cfg, items, steps, seed);
    Ok((eng, report))
}

/// What the on-policy phase did.
pub struct OnPolicy {
    /// Continuations scored by the API.
    pub scored: usize,
    /// The API offers no scoring: the attacker learned off-policy from the whole harvest.
    pub denied: bool,
    pub spend_usd: f64,
}

/// On-policy distillation: a student learned off-policy (top-k logprobs) from the first half of
/// `items`, then the second half's prompts are answered by the student (temperature 1), scored
/// by the API (the teacher's top-k logprobs at every position of the student's answer) and
/// learned from. Where the API offers no scoring the whole harvest is learned off-policy.
/// Either way it makes as many API calls and plans as many training steps as an off-policy
/// student of the same budget (half the steps in each phase).
#[allow(clippy::too_many_arguments)]
pub fn on_policy(
    cfg: &StudentConfig,
    engine: Backend,
    attacker: &crate::attacker::AttackerConfig,
    api: &mut crate::api::Api,
    accounts: &[crate::api::AccountId],
    teacher: &crate::teacher::Teacher,
    base: Option<&std::path::Path>,
    items: &[Item],
    seed: u64,
    start: f64,
) -> Result<(Box<dyn Engine>, TrainReport, OnPolicy)> {
    use crate::model::{generate, GenParams};
    use crate::rng::{derive_rng, derive_seed};
    use crate::world::vocab::Tok;
    let off = StudentConfig {
        method: Method::Logprobs,
        ..cfg.clone()
    };
    // An API that returns no logprobs (`api.logprobs: 0`) has nothing to score with: a scoring
    // call would be billed and return no targets, so its scoring counts as not offered.
    let scoring = api.config.scoring && api.config.logprobs > 0;
    if !scoring || items.len() < 2 {
        let (s, l) = distill(&off, engine, base, items, seed)?;
        return Ok((
            s,
            l,
            OnPolicy {
                scored: 0,
                denied: !scoring,
                spend_usd: 0.0,
            },
        ));
    }
    let half = items.len() / 2;
    let total_steps = cfg.planned_steps(items.len());
    let first_steps = total_steps / 2;
    let mut s = crate::base::new_student(engine, cfg.spec()?, seed, base)?;
    let first = train_on(s.as_mut(), &off, &items[..half], first_steps, seed);
    let prompts: Vec<&crate::world::Prompt> = items[half..].iter().map(|i| &i.prompt).collect();
    let params = vec![
        GenParams {
            max_new: api.config.max_tokens,
            temperature: 1.0,
            top_k: 0,
        };
        prompts.len()
    ];
    let mut rng = derive_rng(seed, "on-policy/sample");
    let answers = generate::generate(s.as_ref(), &prompts, &params, 512, &mut rng, None);
    // Score through the attacker's accounts, tick by tick within the rate limits.
    let n_accounts = accounts.len().max(1);
    let mut todo: Vec<usize> = (0..prompts.len()).rev().collect();
    let mut scored: Vec<Option<Item>> = vec![None; prompts.len()];
    let (mut now, mut spend) = (start, 0.0);
    let end = start + attacker.max_days * 86_400.0;
    while !todo.is_empty() && now < end {
        let batch: Vec<usize> = todo.drain(todo.len().saturating_sub(4096)..).collect();
        let reqs: Vec<(crate::api::AccountId, &crate::world::Prompt, &[Tok])> = batch
            .iter()
            .map(|&j| {
                (
                    accounts.get(j % n_accounts).copied().unwrap_or(0),
                    prompts[j],
                    &answers[j].tokens[..],
                )
            })
            .collect();
        let resps = api.score(now, &reqs, teacher, attacker.top_k, &mut rng);
        for (&j, r) in batch.iter().zip(resps) {
            match r.code {
                crate::api::Code::Ok => {
                    spend += r.usage.spend_usd;
                    scored[j] = Some(Item {
                        prompt: prompts[j].clone(),
                        tokens: r.tokens,
                        top: r.top,
                    });
                }
                crate::api::Code::Throttled => todo.push(j),
                _ => {}
            }
        }
        now += attacker.tick_seconds;
    }
    let scored: Vec<Item> = scored.into_iter().flatten().collect();
    if scored.is_empty() {
        // Every scoring call was refused (the accounts were banned, or throttled to the end):
        // the copy is what the first phase made.
        return Ok((
            s,
            first,
            OnPolicy {
                scored: 0,
                denied: false,
                spend_usd: spend,
            },
        ));
    }
    let mut report = train_on(
        s.as_mut(),
        &off,
        &scored,
        total_steps - first_steps,
        derive_seed(seed, "on-policy"),
    );
    report.steps += first.steps;
    report.best_step += first.steps;
    Ok((
        s,
        report,
        OnPolicy {
            scored: scored.len(),
            denied: false,
            spend_usd: spend,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::vocab::*;
    use crate::world::{Kind, Prompt, Skill, Tier};

    /// The harvested answer `1 EOS` to "sort 2 1", with the given top-k logprobs.
    fn sort_item(top: Vec<Vec<(u32, f32)>>) -> Item {
        Item {
            prompt: Prompt {
                kind: Kind::Skill(Skill::Sort, Tier::Easy),
                tokens: vec![SORT, digit(2), digit(1)],
                voice: None,
            },
            tokens: vec![digit(1), EOS],
            top,
        }
    }

    #[test]
    fn logprob_targets_are_renormalised_top_k() {
        let item = sort_item(vec![
            vec![(digit(1), 0.6f32.ln()), (digit(2), 0.2f32.ln())],
            vec![(EOS, 0.9f32.ln())],
        ]);
        let cfg = |method| StudentConfig {
            method,
            ..Default::default()
        };
        let ex = harvest_example(&item, &cfg(Method::Logprobs));
        assert_eq!(ex.sep, 4);
        assert_eq!(ex.tokens[ex.sep], SEP);
        let t0 = &ex.targets[0];
        assert!((t0[0].1 - 0.75).abs() < 1e-6 && (t0[1].1 - 0.25).abs() < 1e-6);
        assert!((ex.targets[1][0].1 - 1.0).abs() < 1e-6);
        assert!(ex.soft.is_none());
        let text = harvest_example(&item, &cfg(Method::Text));
        assert_eq!(text.targets[0], vec![(digit(1), 1.0)]);
    }

    /// Temperature, hard label and rest bucket: the soft targets at T = 2 are p^(1/2)
    /// normalised with the rest's mass (0.2 at position 0) tempered alike; the hard label
    /// keeps `hard_weight`; a position without logprobs keeps the text at full weight.
    #[test]
    fn tempered_targets_keep_the_rest_bucket_and_the_hard_label() {
        let (p, q) = (0.6f32, 0.2f32);
        let (listed, rest) = soft_targets(&[(1, p.ln()), (2, q.ln())], 2.0, TopKRest::Bucket);
        let z = p.sqrt() + q.sqrt() + 0.2f32.sqrt();
        assert!((listed[0].1 - p.sqrt() / z).abs() < 1e-6);
        assert!((rest - 0.2f32.sqrt() / z).abs() < 1e-6);
        let (listed, rest) = soft_targets(&[(1, p.ln()), (2, q.ln())], 1.0, TopKRest::Renormalise);
        assert!((listed[0].1 - 0.75).abs() < 1e-6 && rest == 0.0);
        let item = sort_item(vec![vec![(digit(1), p.ln()), (digit(2), q.ln())], vec![]]);
        let cfg = StudentConfig {
            method: Method::Logprobs,
            temperature: 2.0,
            hard_weight: 0.25,
            top_k_rest: TopKRest::Bucket,
            ..Default::default()
        };
        let ex = harvest_example(&item, &cfg);
        assert_eq!(ex.targets[0], vec![(digit(1), 0.25)]);
        assert_eq!(ex.targets[1], vec![(EOS, 1.0)]);
        let soft = ex.soft.expect("soft targets");
        assert_eq!((soft.temperature, soft.weight), (2.0, 0.75));
        assert!((soft.positions[0].1 - 0.2f32.sqrt() / z).abs() < 1e-6);
        assert!(soft.positions[1].0.is_empty() && soft.positions[1].1 == 0.0);
    }

    #[test]
    fn steps_scale_with_harvest_and_clamp() {
        let cfg = StudentConfig::default();
        assert_eq!(cfg.planned_steps(10), 300);
        assert_eq!(cfg.planned_steps(6400), 3000); // 30 epochs of 100 batches
        assert_eq!(cfg.planned_steps(100_000), 4000);
        let eq = StudentConfig {
            schedule: Schedule::EqualCompute,
            ..cfg
        };
        assert_eq!(eq.planned_steps(10), 4000);
        assert_eq!(eq.planned_steps(100_000), 4000);
    }

    #[test]
    fn validation_split_is_seeded_disjoint_and_capped() {
        let items: Vec<usize> = (0..1000).collect();
        let (tr, va) = validation_split(&items, 0.1, 7);
        assert_eq!((tr.len(), va.len()), (900, 100));
        let mut all: Vec<usize> = tr.iter().chain(&va).copied().collect();
        all.sort_unstable();
        assert_eq!(all, items);
        assert_eq!(validation_split(&items, 0.1, 7).1, va);
        assert_ne!(validation_split(&items, 0.1, 8).1, va);
        assert!(validation_split(&items[..9], 0.1, 7).1.is_empty());
        let big: Vec<usize> = (0..100_000).collect();
        assert_eq!(validation_split(&big, 0.1, 1).1.len(), MAX_VALIDATION);
    }
}
