//! Models: the transformer spec, the engine interface, engines, generation and training.

#[cfg(feature = "burn")]
pub mod burn_engine;
pub mod engine;
pub mod fused;
pub mod generate;
pub mod spec;
#[cfg(feature = "tch")]
pub mod tch_engine;
pub mod train;
pub mod weights;

pub use engine::{Batch, Engine, OptimSettings, Targets};
pub use generate::{GenParams, Generation};
pub use spec::ModelSpec;

use crate::error::{Error, Result};

/// Which engine runs the model (config key `engine`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// burn 0.22 on the pure-Rust `flex` CPU backend.
    Burn,
    /// LibTorch through tch (cargo feature `tch`), on the CPU or a CUDA GPU.
    Tch,
    /// The transformer written out by hand in pure Rust (forward and backward layer by
    /// layer, `gemm` matmuls, rayon threads), CPU only: the default.
    #[default]
    Fused,
}

/// Where the engine runs (config key `device`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    #[default]
    Cpu,
    /// A CUDA GPU (engine `tch` only).
    Cuda,
}

/// An engine on a device: what every model of a run is built with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub engine: EngineKind,
    pub device: DeviceKind,
}

impl Backend {
    pub const BURN: Backend = Backend {
        engine: EngineKind::Burn,
        device: DeviceKind::Cpu,
    };

    pub const FUSED: Backend = Backend {
        engine: EngineKind::Fused,
        device: DeviceKind::Cpu,
    };

    /// A short name: `fused` (the default), `burn` (flex CPU), `tch-cpu` or `tch-cuda`. Part of the
    /// teacher cache key, since engines differ in the last float bits.
    pub fn tag(&self) -> &'static str {
        match (self.engine, self.device) {
            (EngineKind::Burn, DeviceKind::Cpu) => "burn",
            (EngineKind::Burn, DeviceKind::Cuda) => "burn-cuda",
            (EngineKind::Tch, DeviceKind::Cpu) => "tch-cpu",
            (EngineKind::Tch, DeviceKind::Cuda) => "tch-cuda",
            (EngineKind::Fused, DeviceKind::Cpu) => "fused",
            (EngineKind::Fused, DeviceKind::Cuda) => "fused-cuda",
        }
    }

    /// Whether the engine runs on the device at all, in any build: burn and fused run on the
    /// CPU only. What an experiment file can be checked against before knowing the build.
    pub fn check_combination(&self) -> Result<()> {
        match (self.engine, self.device) {
            (EngineKind::Fused, DeviceKind::Cuda) => Err(Error::Invalid(
                "device: cuda needs engine: tch (the fused engine runs on the CPU only; \
                 allowed: engine burn or fused with device cpu, engine tch with device cpu or cuda)"
                    .into(),
            )),
            (EngineKind::Burn, DeviceKind::Cuda) => Err(Error::Invalid(
                "device: cuda needs engine: tch (burn runs on its pure-Rust flex CPU backend \
                 here; allowed: engine burn with device cpu, engine tch with device cpu or cuda)"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// Whether this build can run the backend and, for CUDA, whether a device is visible.
    /// The error says what to change.
    pub fn check(&self) -> Result<()> {
        self.check_combination()?;
        match (self.engine, self.device) {
            (EngineKind::Fused, DeviceKind::Cpu) => Ok(()),
            #[cfg(feature = "burn")]
            (EngineKind::Burn, DeviceKind::Cpu) => Ok(()),
            #[cfg(not(feature = "burn"))]
            (EngineKind::Burn, DeviceKind::Cpu) => Err(Error::Invalid(format!(
                "engine: burn needs a build with the burn engine: `cargo build --release \
                 --features burn` (README, Engines). This build has {}",
                built_engines()
            ))),
            (EngineKind::Fused | EngineKind::Burn, DeviceKind::Cuda) => {
                unreachable!("refused by check_combination")
            }
            #[cfg(feature = "tch")]
            (EngineKind::Tch, DeviceKind::Cpu) => Ok(()),
            #[cfg(feature = "tch")]
            (EngineKind::Tch, DeviceKind::Cuda) => tch_engine::cuda_device().map(|_| ()),
            #[cfg(not(feature = "tch"))]
            (EngineKind::Tch, _) => Err(Error::Invalid(format!(
                "engine: tch (device {}) needs a build with the LibTorch engine: \
                 `cargo build --release --features tch` with LIBTORCH set \
                 (scripts/setup-libtorch.sh; README, section GPU). This build has {}",
                self.device_name(),
                built_engines()
            ))),
        }
    }

    /// The inverse of [`Backend::tag`], checked for this build and machine.
    pub fn parse(tag: &str) -> Result<Backend> {
        let b = match tag.trim() {
            "burn" => Backend::BURN,
            "fused" => Backend::FUSED,
            "tch-cpu" => Backend {
                engine: EngineKind::Tch,
                device: DeviceKind::Cpu,
            },
            "tch-cuda" => Backend {
                engine: EngineKind::Tch,
                device: DeviceKind::Cuda,
            },
            other => {
                return Err(Error::Invalid(format!(
                    "unknown engine `{other}` (allowed: burn, fused, tch-cpu, tch-cuda)"
                )))
            }
        };
        b.check()?;
        Ok(b)
    }

    #[cfg(not(feature = "tch"))]
    fn device_name(&self) -> &'static str {
        match self.device {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }
}

/// Compute threads of both engines in this process (LibTorch's intra-op threads, burn's
/// rayon pool). Worker processes of a sweep set 1 so that they do not oversubscribe the cores;
/// a single run keeps the default, one per core.
pub fn set_threads(n: usize) {
    let n = n.max(1);
    #[cfg(feature = "tch")]
    tch::set_num_threads(n as i32);
    // burn's flex backend runs its parallel matmuls and batch loops on rayon's global pool,
    // which defaults to one thread per core: sized here so that worker processes (one thread
    // each) do not oversubscribe the cores. The pool can be sized once per process, before
    // its first use; later calls keep the first size.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
}

/// Threads of the pool burn's flex backend computes on (rayon's global pool).
pub fn compute_threads() -> usize {
    rayon::current_num_threads()
}

/// The engines this build has, for error messages: `engine fused` or `engines fused, burn`.
pub fn built_engines() -> &'static str {
    match (cfg!(feature = "burn"), cfg!(feature = "tch")) {
        (false, false) => "engine fused",
        (true, false) => "engines fused, burn",
        (false, true) => "engines fused, tch",
        (true, true) => "engines fused, burn, tch",
    }
}

/// A freshly initialised engine for `spec`.
pub fn new_engine(backend: Backend, spec: ModelSpec, seed: u64) -> Result<Box<dyn Engine>> {
    backend.check()?;
    match backend.engine {
        #[cfg(feature = "burn")]
        EngineKind::Burn => Ok(Box::new(burn_engine::BurnEngine::new(spec, seed)?)),
        #[cfg(not(feature = "burn"))]
        EngineKind::Burn => Err(Error::Invalid("engine burn: not in this build".into())),
        EngineKind::Fused => Ok(Box::new(fused::FusedEngine::new(spec, seed)?)),
        #[cfg(feature = "tch")]
        EngineKind::Tch => Ok(Box::new(tch_engine::TchEngine::new(
            spec,
            seed,
            backend.device,
        )?)),
        #[cfg(not(feature = "tch"))]
        EngineKind::Tch => Err(Error::Invalid("engine tch: not in this build".into())),
    }
}

/// An engine holding weights loaded from a safetensors file.
pub fn load_engine(
    backend: Backend,
    spec: ModelSpec,
    path: &std::path::Path,
) -> Result<Box<dyn Engine>> {
    backend.check()?;
    let w = weights::Weights::load(path)?;
    w.check_spec(&spec)
        .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
    match backend.engine {
        #[cfg(feature = "burn")]
        EngineKind::Burn => Ok(Box::new(burn_engine::BurnEngine::from_weights(spec, &w)?)),
        #[cfg(not(feature = "burn"))]
        EngineKind::Burn => Err(Error::Invalid("engine burn: not in this build".into())),
        EngineKind::Fused => Ok(Box::new(fused::FusedEngine::from_weights(spec, &w)?)),
        #[cfg(feature = "tch")]
        EngineKind::Tch => Ok(Box::new(tch_engine::TchEngine::from_weights(
            spec,
            &w,
            backend.device,
        )?)),
        #[cfg(not(feature = "tch"))]
        EngineKind::Tch => Err(Error::Invalid("engine tch: not in this build".into())),
    }
}

#[cfg(test)]
mod tests;
