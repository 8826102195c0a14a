//! The student: a smaller transformer distilled from the harvest.

use crate::attacker::Item;
use crate::error::{Error, Result};
use crate::model::train::{self, Example, TrainConfig};
use crate::model::{Backend, Engine, ModelSpec};
use crate::teacher::example;
use serde::{Deserialize, Serialize};

/// How the student learns from harvested responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// (`api.scoring: false`) the whole budget is harvested and learned off-policy.
    OnPolicy,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StudentConfig {
    /// Model size preset (see `ModelSpec::preset`).
    pub size: String,
    pub method: Method,
    /// Training steps are `epochs * harvest / batch_size`, clamped to [min_steps, train.steps].
    pub epochs: f64,
    pub min_steps: usize,
    pub train: TrainConfig,
}

impl Default for StudentConfig {
    fn default() -> Self {
        StudentConfig {
            size: "student-s".into(),
            method: Method::Logprobs,
            epochs: 10.0,
            min_steps: 60,
            train: TrainConfig {
                steps: 250,
                batch_size: 64,
                lr: 3e-3,
                warmup: 20,
                min_lr_ratio: 0.1,
                weight_decay: 0.01,
            },
        }
    }
}

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

    /// Training config for a harvest of `n` items.
    pub fn train_for(&self, n: usize) -> TrainConfig {
        let by_epochs =
            (self.epochs * n as f64 / self.train.batch_size.max(1) as f64).ceil() as usize;
        let steps = by_epochs.clamp(self.min_steps.min(self.train.steps), self.train.steps);
        TrainConfig {
            steps,
            warmup: self.train.warmup.min(steps / 5),
            ..self.train.clone()
        }
    }
}

/// Training example for one harvested exchange.
pub fn harvest_example(item: &Item, method: Method) -> Example {
    let mut ex = example(&item.prompt, &item.tokens);
    if method != Method::Text && item.top.len() == item.tokens.len() {
        for (target, top) in ex.targets.iter_mut().zip(&item.top) {
            if top.is_empty() {
                continue;
            }
            let z: f32 = top.iter().map(|(_, lp)| lp.exp()).sum();
            *target = top.iter().map(|&(t, lp)| (t, lp.exp() / z)).collect();
        }
    }
    ex
}

/// Continue training `eng` on `items` (targets as for `method`), with the schedule for their
/// number.
pub fn train_more(eng: &mut dyn Engine, cfg: &StudentConfig, items: &[Item], seed: u64) -> f32 {
    let examples: Vec<Example> = items
        .iter()
        .map(|i| harvest_example(i, cfg.method))
        .collect();
    train::train(eng, &examples, &cfg.train_for(items.len()), seed, |_, _| {})
}

/// Distil a fresh student from `items`.
pub fn distill(
    cfg: &StudentConfig,
    engine: Backend,
    items: &[Item],
    seed: u64,
) -> Result<(Box<dyn Engine>, f32)> {
    let mut eng = crate::model::new_engine(engine, cfg.spec()?, seed)?;
    let examples: Vec<Example> = items
        .iter()
        .map(|i| harvest_example(i, cfg.method))
        .collect();
    let loss = train::train(
        eng.as_mut(),
        &examples,
        &cfg.train_for(items.len()),
        seed,
        |_, _| {},
    );
    Ok((eng, loss))
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
#[allow(clippy::too_many_arguments)]
pub fn on_policy(
    cfg: &StudentConfig,
    engine: Backend,
    attacker: &crate::attacker::AttackerConfig,
    api: &mut crate::api::Api,
    teacher: &crate::teacher::Teacher,
    items: &[Item],
    seed: u64,
    start: f64,
) -> Result<(Box<dyn Engine>, f32, OnPolicy)> {
    use crate::model::{generate, GenParams};
    use crate::rng::{derive_rng, derive_seed};
    use crate::world::vocab::Tok;
    let off = StudentConfig {
        method: Method::Logprobs,
        ..cfg.clone()
    };
    if !api.config.scoring || items.len() < 2 {
        let (s, l) = distill(&off, engine, items, seed)?;
        return Ok((
            s,
            l,
            OnPolicy {
                scored: 0,
                denied: !api.config.scoring,
                spend_usd: 0.0,
            },
        ));
    }
    let half = items.len() / 2;
    let (mut s, _) = distill(&off, engine, &items[..half], seed)?;
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
    let accounts = api.accounts.len().max(1) as u32;
    let mut todo: Vec<usize> = (0..prompts.len()).rev().collect();
    let mut scored: Vec<Option<Item>> = vec![None; prompts.len()];
    let (mut now, mut spend) = (start, 0.0);
    let end = start + attacker.max_days * 86_400.0;
    while !todo.is_empty() && now < end {
        let batch: Vec<usize> = todo.drain(todo.len().saturating_sub(4096)..).collect();
        let reqs: Vec<(crate::api::AccountId, &crate::world::Prompt, &[Tok])> = batch
            .iter()
            .map(|&j| (j as u32 % accounts, prompts[j], &answers[j].tokens[..]))
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
                crate::api::Code::Refused => {}
            }
        }
        now += attacker.tick_seconds;
    }
    let scored: Vec<Item> = scored.into_iter().flatten().collect();
    let loss = train_more(s.as_mut(), &off, &scored, derive_seed(seed, "on-policy"));
    Ok((
        s,
        loss,
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

    #[test]
    fn logprob_targets_are_renormalised_top_k() {
        let item = Item {
            prompt: Prompt {
                kind: Kind::Skill(Skill::Sort, Tier::Easy),
                tokens: vec![SORT, digit(2), digit(1)],
                voice: None,
            },
            tokens: vec![digit(1), EOS],
            top: vec![
                vec![(digit(1), 0.6f32.ln()), (digit(2), 0.2f32.ln())],
                vec![(EOS, 0.9f32.ln())],
            ],
        };
        let ex = harvest_example(&item, Method::Logprobs);
        assert_eq!(ex.sep, 4);
        assert_eq!(ex.tokens[ex.sep], SEP);
        let t0 = &ex.targets[0];
        assert!((t0[0].1 - 0.75).abs() < 1e-6 && (t0[1].1 - 0.25).abs() < 1e-6);
        assert!((ex.targets[1][0].1 - 1.0).abs() < 1e-6);
        let text = harvest_example(&item, Method::Text);
        assert_eq!(text.targets[0], vec![(digit(1), 1.0)]);
    }

    #[test]
    fn steps_scale_with_harvest_and_clamp() {
        let cfg = StudentConfig::default();
        assert_eq!(cfg.train_for(10).steps, 60);
        assert_eq!(cfg.train_for(1280).steps, 200);
        assert_eq!(cfg.train_for(100_000).steps, 250);
    }
}
