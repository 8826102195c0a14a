//! The narrow interface between the simulator and a neural engine: forward, train step,
//! batched generation with a KV cache, save, load. Nothing outside `model/` sees an engine type.

use super::spec::ModelSpec;
use crate::error::Result;
use std::path::Path;

/// A batch of token sequences, right-padded with PAD to a common length.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Rows.
    pub b: usize,
    /// Columns (sequence length).
    pub t: usize,
    /// Token ids, row-major `[b, t]`.
    pub tokens: Vec<u32>,
    /// Voice inputs, row-major `[b, voice_dim]`.
    pub voice: Vec<f32>,
}

/// Training targets for a [`Batch`]: a distribution over the next token at every position.
/// Text-only distillation uses one-hot rows; logprob distillation uses the returned top-k
/// probabilities, renormalised. The loss is the weighted mean of the cross-entropy
/// `-sum_v target[v] * log_softmax(logits)[v]` over positions (same gradient as KL).
#[derive(Clone, Debug)]
pub struct Targets {
    /// Row-major `[b, t, vocab]`; rows of positions without loss may be anything.
    pub probs: Vec<f32>,
    /// Row-major `[b, t]`: loss weight per position (0 for prompt and padding).
    pub weight: Vec<f32>,
    /// Distillation at a temperature (see [`super::train::Soft`]); None for plain targets.
    pub soft: Option<SoftTargets>,
}

/// The tempered term of [`Targets`]: per position, adds
/// `-sum_v probs[v] * log_softmax(z / T)[v] - rest * log(sum_v rest_mask[v] * softmax(z / T)[v])`
/// (times the position's weight). `probs` and `rest` already carry `weight * T^2`.
#[derive(Clone, Debug)]
pub struct SoftTargets {
    pub inv_temperature: f32,
    /// Row-major `[b, t, vocab]`.
    pub probs: Vec<f32>,
    /// Row-major `[b, t, vocab]`, 1 on the tokens of a position's rest bucket; empty when no
    /// position has one.
    pub rest_mask: Vec<f32>,
    /// Row-major `[b, t]`: rest mass per position (0 for none).
    pub rest: Vec<f32>,
}

/// Optimiser settings (AdamW): decoupled weight decay on matrices only (norms and biases
/// are not decayed).
#[derive(Clone, Debug, PartialEq)]
pub struct OptimSettings {
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// Gradient-norm clip, per parameter tensor as burn applies it (0 = off).
    pub grad_clip: f32,
}

impl Default for OptimSettings {
    fn default() -> Self {
        OptimSettings {
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.98,
            grad_clip: 1.0,
        }
    }
}

/// Chooses next tokens during generation. The engine calls it once per decoding step with the
/// last position's logits for every row; it returns the next token per row, or `None` to stop.
pub trait Decoder {
    /// `logits`: row-major `[b, vocab]`.
    fn step(&mut self, logits: &[f32]) -> Option<Vec<u32>>;
    /// Whether `row` has finished: its later logits are not read, so an engine may stop
    /// computing it (the fused engine drops such rows from the batch).
    fn finished(&self, _row: usize) -> bool {
        false
    }
}

/// The prefill of a batched generation: prompts left-padded so that every prompt ends at
/// column `p - 1`, positions counting from each prompt's BOS, and the additive attention mask
/// (causal, pads never attended to). Shared by the engines.
pub(crate) struct Prefill {
    /// Columns (the longest prompt).
    pub p: usize,
    /// Left padding per row.
    pub pads: Vec<usize>,
    /// Row-major `[b, p]`.
    pub tokens: Vec<i64>,
    /// Row-major `[b, p]`.
    pub pos: Vec<i64>,
    /// Row-major `[b, p, p]`: 0 or `masked` (the burn and LibTorch engines' attention mask;
    /// the fused engine masks by the pads).
    #[cfg_attr(not(any(feature = "burn", feature = "tch")), allow(dead_code))]
    pub mask: Vec<f32>,
}

impl Prefill {
    pub(crate) fn new(prompts: &[&[u32]], masked: f32) -> Prefill {
        let b = prompts.len();
        let p = prompts.iter().map(|x| x.len()).max().unwrap_or(0);
        let pads: Vec<usize> = prompts.iter().map(|x| p - x.len()).collect();
        let mut tokens = vec![0i64; b * p];
        let mut pos = vec![0i64; b * p];
        let mut mask = vec![0.0f32; b * p * p];
        for r in 0..b {
            for (j, &tok) in prompts[r].iter().enumerate() {
                tokens[r * p + pads[r] + j] = tok as i64;
                pos[r * p + pads[r] + j] = j as i64;
            }
            for i in 0..p {
                for j in 0..p {
                    if j > i || j < pads[r] {
                        mask[(r * p + i) * p + j] = masked;
                    }
                }
            }
        }
        Prefill {
            p,
            pads,
            tokens,
            pos,
            mask,
        }
    }
}

/// Base of the rotary position embedding's frequencies.
pub const ROPE_BASE: f32 = 10_000.0;

/// Rotary tables for positions `pos` (any layout, row-major): for every position the cosines
/// then (second vector) the sines of `pos * ROPE_BASE^(-i / half)`, `i < half`, so each
/// output is `[pos.len(), half]`. Shared by the engines so that they rotate identically.
pub fn rope_tables(pos: &[i64], half: usize) -> (Vec<f32>, Vec<f32>) {
    let inv: Vec<f64> = (0..half)
        .map(|i| (ROPE_BASE as f64).powf(-(i as f64) / half as f64))
        .collect();
    let mut cos = Vec::with_capacity(pos.len() * half);
    let mut sin = Vec::with_capacity(pos.len() * half);
    for &p in pos {
        for f in &inv {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (cos, sin)
}

/// Where the voice enters: 1 at position 0 (BOS), 0 elsewhere, one value per position.
pub fn voice_gate(pos: &[i64]) -> Vec<f32> {
    pos.iter().map(|&p| (p == 0) as u8 as f32).collect()
}

/// A model plus the machinery to run and train it.
pub trait Engine: Send + Sync {
    fn spec(&self) -> &ModelSpec;

    /// Logits for every position: row-major `[b, t, vocab]`.
    fn logits(&self, batch: &Batch) -> Vec<f32>;

    /// Optimiser settings for the next training steps; a change resets the optimiser state.
    fn set_optim(&mut self, s: OptimSettings);

    /// One optimiser step on the weighted soft-target cross-entropy; returns the loss.
    fn train_step(&mut self, batch: &Batch, targets: &Targets, lr: f64) -> f32;

    /// Batched generation with a KV cache. `prompts` are full model inputs (BOS ... SEP) of
    /// any lengths; `voice` is row-major `[prompts.len(), voice_dim]`. The engine left-pads,
    /// prefills, then calls `decoder` for at most `max_new` steps.
    fn generate(
        &self,
        prompts: &[&[u32]],
        voice: &[f32],
        max_new: usize,
        decoder: &mut dyn Decoder,
    );

    /// The current weights, with the canonical names.
    fn weights(&self) -> super::weights::Weights;

    /// The loss of [`Engine::train_step`] and its gradient with respect to every weight
    /// (canonical names and shapes); the weights are not changed.
    fn loss_gradient(&self, batch: &Batch, targets: &Targets) -> (f32, super::weights::Weights);

    /// Replace the weights (any engine's canonical names and shapes).
    fn set_weights(&mut self, w: &super::weights::Weights) -> Result<()>;

    /// Write the weights as safetensors.
    fn save(&self, path: &Path) -> Result<()>;

    /// Replace the weights with those in a safetensors file written by any engine.
    fn load(&mut self, path: &Path) -> Result<()>;
}
