//! The custom training loop: shuffled mini-batches, AdamW, linear warmup then cosine decay.

use super::engine::{Batch, Engine, SoftTargets, Targets};
use crate::rng::derive_rng;
use crate::world::VOICE_DIM;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// One training sequence: `BOS prompt SEP response` with a target distribution for each
/// response token.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub voice: [f32; VOICE_DIM],
    /// Index of SEP: position `sep + i` predicts response token `i`.
    pub sep: usize,
    /// Per response position, a sparse distribution `(token, prob)` summing to 1 (or to
    /// `1 - soft.weight` when the example also has soft targets).
    pub targets: Vec<Vec<(u32, f32)>>,
    /// Tempered soft targets (distillation at a temperature), if any.
    pub soft: Option<Soft>,
}

/// Soft targets at a distillation temperature `T`: the loss adds
/// `weight * T^2 * CE(target_T, softmax(z / T))` per position, where `target_T` is the
/// tempered top-k distribution plus, with a rest bucket, the mass outside the top-k, matched by
/// the student's total tempered probability outside the listed tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Soft {
    pub temperature: f32,
    /// Weight of the soft term (the hard term's targets carry `1 - weight`).
    pub weight: f32,
    /// Per response position: the tempered listed tokens `(token, prob)` and the rest mass
    /// (0 when the top-k is renormalised); each position's masses sum to 1.
    pub positions: Vec<(Vec<(u32, f32)>, f32)>,
}

/// Training-loop settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup: usize,
    /// Final learning rate as a fraction of the peak (cosine decay).
    pub min_lr_ratio: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 300,
            batch_size: 64,
            lr: 3e-3,
            warmup: 30,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
        }
    }
}

impl TrainConfig {
    /// Learning rate at `step` (0-based): linear warmup, then cosine to `min_lr_ratio * lr`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = (self.steps.saturating_sub(self.warmup)).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cos)
    }
}

/// Build a padded batch and its dense targets from examples.
pub fn make_batch(examples: &[&Example], vocab: usize, context: usize) -> (Batch, Targets) {
    let b = examples.len();
    let t = examples
        .iter()
        .map(|e| e.tokens.len().min(context))
        .max()
        .unwrap_or(1);
    let mut tokens = vec![0u32; b * t];
    let mut voice = Vec::with_capacity(b * VOICE_DIM);
    let mut probs = vec![0.0f32; b * t * vocab];
    let mut weight = vec![0.0f32; b * t];
    let mut soft = examples
        .iter()
        .find_map(|e| e.soft.as_ref())
        .map(|s| SoftTargets {
            inv_temperature: 1.0 / s.temperature,
            probs: vec![0.0; b * t * vocab],
            rest_mask: vec![],
            rest: vec![0.0; b * t],
        });
    for (r, e) in examples.iter().enumerate() {
        let n = e.tokens.len().min(t);
        tokens[r * t..r * t + n].copy_from_slice(&e.tokens[..n]);
        voice.extend_from_slice(&e.voice);
        for (i, dist) in e.targets.iter().enumerate() {
            let pos = e.sep + i;
            if pos >= t {
                break;
            }
            weight[r * t + pos] = 1.0;
            let row = &mut probs[(r * t + pos) * vocab..(r * t + pos + 1) * vocab];
            for &(tok, p) in dist {
                if (tok as usize) < vocab {
                    row[tok as usize] += p;
                }
            }
        }
        if let (Some(st), Some(es)) = (soft.as_mut(), e.soft.as_ref()) {
            fill_soft(st, es, r * t + e.sep, (r + 1) * t, vocab);
        }
    }
    (
        Batch {
            b,
            t,
            tokens,
            voice,
        },
        Targets {
            probs,
            weight,
            soft,
        },
    )
}

/// Write one example's soft targets into the batch's rows `first..end` (its response
/// positions, cut at the batch's length). Scaled by `weight * T^2`.
fn fill_soft(st: &mut SoftTargets, es: &Soft, first: usize, end: usize, vocab: usize) {
    let scale = es.weight * es.temperature * es.temperature;
    for (i, (listed, rest)) in es.positions.iter().enumerate() {
        let at = first + i;
        if at >= end {
            break;
        }
        let row = &mut st.probs[at * vocab..(at + 1) * vocab];
        for &(tok, p) in listed {
            if (tok as usize) < vocab {
                row[tok as usize] += scale * p;
            }
        }
        if *rest > 0.0 {
            if st.rest_mask.is_empty() {
                st.rest_mask = vec![0.0; st.probs.len()];
            }
            st.rest[at] = scale * rest;
            let mask = &mut st.rest_mask[at * vocab..(at + 1) * vocab];
            mask.fill(1.0);
            for &(tok, _) in listed {
                if (tok as usize) < vocab {
                    mask[tok as usize] = 0.0;
                }
            }
        }
    }
}

/// The per-position loss of [`Targets`] on one row of logits (host side, for validation):
/// the hard cross-entropy plus the tempered soft term and its rest bucket.
pub fn position_loss(
    targets: &Targets,
    i: usize,
    logits: &[f32],
    vocab: usize,
    lp: &mut [f32],
) -> f32 {
    super::generate::log_softmax(logits, lp);
    let mut ce: f32 = targets.probs[i * vocab..(i + 1) * vocab]
        .iter()
        .zip(lp.iter())
        .filter(|(p, _)| **p > 0.0)
        .map(|(p, l)| -p * l)
        .sum();
    if let Some(st) = &targets.soft {
        // log_softmax(z / T) from log_softmax(z), in place: scale, then renormalise.
        for x in lp.iter_mut() {
            *x *= st.inv_temperature;
        }
        let m = lp.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = m + lp.iter().map(|&x| (x - m).exp()).sum::<f32>().ln();
        for x in lp.iter_mut() {
            *x -= lse;
        }
        ce += st.probs[i * vocab..(i + 1) * vocab]
            .iter()
            .zip(lp.iter())
            .filter(|(p, _)| **p > 0.0)
            .map(|(p, l)| -p * l)
            .sum::<f32>();
        if st.rest[i] > 0.0 {
            let mass: f32 = st.rest_mask[i * vocab..(i + 1) * vocab]
                .iter()
                .zip(lp.iter())
                .map(|(m, l)| m * l.exp())
                .sum();
            ce -= st.rest[i] * (mass + REST_EPS).ln();
        }
    }
    ce
}

/// Added to the student's rest-bucket mass before its log, so that a student with no mass
/// outside the listed tokens gets a large finite loss rather than infinity.
pub const REST_EPS: f32 = 1e-6;

/// What a training run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainReport {
    /// Optimiser steps taken.
    pub steps: usize,
    /// Mean training loss over the last tenth of the steps taken.
    pub train_loss: f32,
    /// Validation loss of the weights kept (the best seen), when there was a validation set.
    pub val_loss: Option<f32>,
    /// Step after which the kept weights were taken.
    pub best_step: usize,
    /// Whether training stopped early because the validation loss stopped improving.
    pub stopped_early: bool,
}

impl TrainReport {
    /// Whether the losses are finite (a diverged run is not a result).
    pub fn is_finite(&self) -> bool {
        self.train_loss.is_finite() && self.val_loss.is_none_or(|v| v.is_finite())
    }
}

/// Early stopping on a validation set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EarlyStop {
    /// Evaluate the validation loss every this many steps.
    pub every: usize,
    /// Stop after this many evaluations without an improvement.
    pub patience: usize,
    /// An improvement must lower the best validation loss by this fraction of it.
    pub min_rel_delta: f32,
}

/// Mean weighted cross-entropy of `engine` on `examples` (forward passes only).
pub fn eval_loss(engine: &dyn Engine, examples: &[Example], batch_size: usize) -> f32 {
    let (vocab, context) = (engine.spec().vocab, engine.spec().context);
    let (mut total, mut weight) = (0.0f64, 0.0f64);
    let mut lp = vec![0.0f32; vocab];
    let mut order: Vec<&Example> = examples.iter().collect();
    order.sort_by_key(|e| e.tokens.len());
    for chunk in order.chunks(batch_size.max(1)) {
        let (batch, targets) = make_batch(chunk, vocab, context);
        let logits = engine.logits(&batch);
        for (i, &w) in targets.weight.iter().enumerate() {
            if w == 0.0 {
                continue;
            }
            let ce = position_loss(
                &targets,
                i,
                &logits[i * vocab..(i + 1) * vocab],
                vocab,
                &mut lp,
            );
            total += (w * ce) as f64;
            weight += w as f64;
        }
    }
    if weight == 0.0 {
        f32::NAN
    } else {
        (total / weight) as f32
    }
}

/// Train `engine` on `examples` for `cfg.steps` steps; returns the mean loss of the last
/// tenth of the steps. Batches are drawn by reshuffled epochs, seeded by `seed`.
pub fn train(
    engine: &mut dyn Engine,
    examples: &[Example],
    cfg: &TrainConfig,
    seed: u64,
    progress: impl FnMut(usize, f32),
) -> f32 {
    train_validated(engine, examples, &[], None, cfg, seed, progress).train_loss
}

/// Train `engine` on `examples` for at most `cfg.steps` steps (AdamW with `cfg.weight_decay`
/// on matrices, warmup then cosine decay over `cfg.steps`). With a validation set and
/// `early`, the validation loss is measured every `early.every` steps; training stops after
/// `early.patience` measurements without improvement, and the best weights are kept. A
/// non-finite training loss stops training at once (the report then says so).
pub fn train_validated(
    engine: &mut dyn Engine,
    examples: &[Example],
    validation: &[Example],
    early: Option<EarlyStop>,
    cfg: &TrainConfig,
    seed: u64,
    mut progress: impl FnMut(usize, f32),
) -> TrainReport {
    if examples.is_empty() || cfg.steps == 0 {
        return TrainReport {
            train_loss: f32::NAN,
            ..Default::default()
        };
    }
    engine.set_optim(super::engine::OptimSettings {
        weight_decay: cfg.weight_decay,
        ..Default::default()
    });
    let (vocab, context) = (engine.spec().vocab, engine.spec().context);
    let mut rng = derive_rng(seed, "train/shuffle");
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.shuffle(&mut rng);
    let mut cursor = 0;
    let bs = cfg.batch_size.max(1).min(examples.len());
    let mut recent: std::collections::VecDeque<f32> = Default::default();
    let window = (cfg.steps / 10).max(1);
    let early = early.filter(|_| !validation.is_empty());
    let mut best: Option<(f32, usize, super::weights::Weights)> = None;
    let mut since_best = 0;
    let mut report = TrainReport::default();
    // Length bucketing: draw BUCKET batches' worth of examples, sort them by length and cut
    // them into batches (in shuffled order), so that batches carry little padding.
    const BUCKET: usize = 8;
    let mut queue: Vec<Vec<usize>> = Vec::new();
    for step in 0..cfg.steps {
        if queue.is_empty() {
            let mut pool = Vec::with_capacity(bs * BUCKET);
            for _ in 0..bs * BUCKET {
                if cursor == order.len() {
                    order.shuffle(&mut rng);
                    cursor = 0;
                }
                pool.push(order[cursor]);
                cursor += 1;
            }
            pool.sort_by_key(|&i| examples[i].tokens.len());
            queue = pool.chunks(bs).map(|c| c.to_vec()).collect();
            queue.shuffle(&mut rng);
        }
        let picked: Vec<&Example> = queue
            .pop()
            .unwrap_or_default()
            .into_iter()
            .map(|i| &examples[i])
            .collect();
        let (batch, targets) = make_batch(&picked, vocab, context);
        let loss = engine.train_step(&batch, &targets, cfg.lr_at(step));
        report.steps = step + 1;
        recent.push_back(loss);
        if recent.len() > window {
            recent.pop_front();
        }
        progress(step, loss);
        if !loss.is_finite() {
            break;
        }
        let Some(es) = early else { continue };
        let last = step + 1 == cfg.steps;
        if (step + 1) % es.every.max(1) != 0 && !last {
            continue;
        }
        let v = eval_loss(&*engine, validation, 256);
        let improved = match &best {
            None => true,
            Some((b, _, _)) => v < b * (1.0 - es.min_rel_delta),
        };
        if improved {
            best = Some((v, step + 1, engine.weights()));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= es.patience && !last {
                report.stopped_early = true;
                break;
            }
        }
    }
    report.train_loss = recent.iter().sum::<f32>() / recent.len().max(1) as f32;
    report.best_step = report.steps;
    if let Some((v, at, w)) = best {
        if at != report.steps {
            // The kept weights are the best seen; set_weights cannot fail on the engine's
            // own weights.
            let _ = engine.set_weights(&w);
        }
        report.val_loss = Some(v);
        report.best_step = at;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let cfg = TrainConfig {
            steps: 110,
            warmup: 10,
            lr: 1.0,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        assert!((cfg.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((cfg.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((cfg.lr_at(60) - 0.55).abs() < 1e-12); // halfway: 0.1 + 0.9 * 0.5
        assert!((cfg.lr_at(110) - 0.1).abs() < 1e-12);
    }
}
