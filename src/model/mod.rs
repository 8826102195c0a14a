//! Models: the transformer spec, the engine interface, engines, generation and training.

pub mod burn_engine;
pub mod engine;
pub mod generate;
pub mod spec;
pub mod train;
pub mod weights;

pub use engine::{Batch, Engine, OptimSettings, Targets};
pub use generate::{GenParams, Generation};
pub use spec::ModelSpec;

use crate::error::Result;

/// Which engine runs the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// burn 0.22 on the pure-Rust `flex` CPU backend.
    #[default]
    Burn,
}

/// A freshly initialised engine for `spec`.
pub fn new_engine(kind: EngineKind, spec: ModelSpec, seed: u64) -> Result<Box<dyn Engine>> {
    match kind {
        EngineKind::Burn => Ok(Box::new(burn_engine::BurnEngine::new(spec, seed)?)),
    }
}

/// An engine holding weights loaded from a safetensors file.
pub fn load_engine(
    kind: EngineKind,
    spec: ModelSpec,
    path: &std::path::Path,
) -> Result<Box<dyn Engine>> {
    let w = weights::Weights::load(path)?;
    w.check_spec(&spec)?;
    match kind {
        EngineKind::Burn => Ok(Box::new(burn_engine::BurnEngine::from_weights(spec, &w)?)),
    }
}

#[cfg(test)]
mod tests;
