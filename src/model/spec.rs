//! The transformer specification shared by every engine, with named size presets.

use serde::{Deserialize, Serialize};

/// A decoder-only transformer: token embeddings, a voice projection (zero-initialised) added
/// once at the first position (BOS), pre-norm blocks (causal multi-head attention with rotary
/// position embeddings on queries and keys, GELU MLP), final norm, untied output head. No
/// learned absolute positions: what a head learns at one offset holds at every offset.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Number of token ids.
    pub vocab: usize,
    /// Residual width.
    pub d_model: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads; must divide `d_model`.
    pub heads: usize,
    /// Maximum sequence length (prompt + response), in tokens.
    pub context: usize,
    /// Width of the voice input (features + presence bit).
    pub voice_dim: usize,
    /// MLP hidden width as a multiple of `d_model`.
    pub mlp_ratio: usize,
}

/// Size presets. Teacher sizes are larger than student sizes.
pub const PRESETS: [&str; 5] = ["tiny", "student-s", "student-m", "teacher-s", "teacher-m"];
// Sizes are set by what trains in minutes on two CPU cores: teacher-s (~0.35M parameters)
// trains to the default teacher in about six minutes; students are smaller.

impl ModelSpec {
    /// A named preset for the world's vocabulary and voice width.
    pub fn preset(name: &str) -> Option<ModelSpec> {
        let (d_model, layers, heads) = match name {
            // For tests: runs in milliseconds.
            "tiny" => (16, 1, 2),
            "student-s" => (64, 2, 4),
            "student-m" => (64, 3, 4),
            "teacher-s" => (96, 3, 4),
            "teacher-m" => (128, 4, 4),
            _ => return None,
        };
        Some(ModelSpec {
            vocab: crate::world::vocab::VOCAB_SIZE,
            d_model,
            layers,
            heads,
            context: 64,
            voice_dim: crate::world::VOICE_DIM,
            mlp_ratio: 4,
        })
    }

    /// Number of parameters (weights and biases).
    pub fn param_count(&self) -> usize {
        let d = self.d_model;
        let h = d * self.mlp_ratio;
        let block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d);
        self.vocab * d
            + self.voice_dim * d
            + self.layers * block
            + 2 * d
            + d * self.vocab
            + self.vocab
    }

    /// Approximate forward FLOPs per token at sequence length `t` (matmuls only).
    pub fn flops_per_token(&self, t: usize) -> f64 {
        let d = self.d_model as f64;
        let per_layer = 2.0 * (3.0 * d * d + d * d + 2.0 * d * d * self.mlp_ratio as f64)
            + 2.0 * 2.0 * t as f64 * d;
        self.layers as f64 * per_layer + 2.0 * d * self.vocab as f64
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.heads == 0
            || !self.d_model.is_multiple_of(self.heads)
            || !(self.d_model / self.heads).is_multiple_of(2)
        {
            return Err(format!(
                "heads ({}) must divide d_model ({}) into heads of even width (rotary positions)",
                self.heads, self.d_model
            ));
        }
        if self.layers == 0 || self.context < 8 || self.vocab == 0 {
            return Err("layers, context and vocab must be positive (context >= 8)".into());
        }
        Ok(())
    }
}
