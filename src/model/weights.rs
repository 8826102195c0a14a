//! Engine-neutral weights: canonical tensor names, seeded initialisation and safetensors I/O.
//!
//! Layouts follow `y = x W + b` with `W` stored `[d_in, d_out]`. Names:
//! `tok_emb.weight [V, d]`, `voice_proj.weight [VD, d]` (zero-initialised),
//! `blocks.{l}.{ln1,ln2}.{weight,bias} [d]`, `blocks.{l}.attn.qkv.{weight [d, 3d], bias [3d]}`
//! (columns: q, k, v, each head-major), `blocks.{l}.attn.proj.{weight [d, d], bias}`,
//! `blocks.{l}.mlp.fc.{weight [d, 4d], bias}`, `blocks.{l}.mlp.out.{weight [4d, d], bias}`,
//! `ln_f.{weight,bias} [d]`, `head.{weight [d, V], bias [V]}`.

use super::spec::ModelSpec;
use crate::error::{Error, Result};
use crate::rng::derive_rng;
use rand::Rng;
use std::collections::BTreeMap;
use std::path::Path;

pub fn block_name(layer: usize, suffix: &str) -> String {
    format!("blocks.{layer}.{suffix}")
}

/// Named float32 tensors (shape, row-major data).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Weights {
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Weights {
    pub fn insert(&mut self, name: String, shape: Vec<usize>, data: Vec<f32>) {
        self.tensors.insert(name, (shape, data));
    }

    pub fn get(&self, name: &str) -> Result<(&[usize], &[f32])> {
        self.tensors
            .get(name)
            .map(|(s, d)| (s.as_slice(), d.as_slice()))
            .ok_or_else(|| Error::Model(format!("weights lack tensor `{name}`")))
    }

    /// Check that every tensor the spec needs is present with the right shape.
    pub fn check_spec(&self, spec: &ModelSpec) -> Result<()> {
        for (name, shape) in shapes(spec) {
            let (got, data) = self.get(&name)?;
            if got != shape.as_slice() || data.len() != shape.iter().product::<usize>() {
                return Err(Error::Model(format!(
                    "tensor `{name}` has shape {got:?}, the spec needs {shape:?}"
                )));
            }
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(n, (s, d))| {
                (
                    n.clone(),
                    d.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    s.clone(),
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, b, s)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::Model(format!("{n}: {e}")))
            })
            .collect::<Result<_>>()?;
        let data = safetensors::serialize(views, None)
            .map_err(|e| Error::Model(format!("serialising weights: {e}")))?;
        crate::fsutil::write_atomic(path, &data)
    }

    pub fn load(path: &Path) -> Result<Weights> {
        let buf = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&buf).map_err(|e| {
            Error::Model(format!("{}: not a safetensors file: {e}", path.display()))
        })?;
        let mut w = Weights::default();
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(Error::Model(format!(
                    "{name}: only f32 tensors are supported"
                )));
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            w.insert(name, view.shape().to_vec(), data);
        }
        Ok(w)
    }
}

/// Every tensor of a spec with its shape, in a fixed order.
pub fn shapes(spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
    let (v, d, vd) = (spec.vocab, spec.d_model, spec.voice_dim);
    let hdim = d * spec.mlp_ratio;
    let mut s = vec![
        ("tok_emb.weight".to_string(), vec![v, d]),
        ("voice_proj.weight".to_string(), vec![vd, d]),
    ];
    for l in 0..spec.layers {
        let n = |x: &str| block_name(l, x);
        s.extend([
            (n("ln1.weight"), vec![d]),
            (n("ln1.bias"), vec![d]),
            (n("attn.qkv.weight"), vec![d, 3 * d]),
            (n("attn.qkv.bias"), vec![3 * d]),
            (n("attn.proj.weight"), vec![d, d]),
            (n("attn.proj.bias"), vec![d]),
            (n("ln2.weight"), vec![d]),
            (n("ln2.bias"), vec![d]),
            (n("mlp.fc.weight"), vec![d, hdim]),
            (n("mlp.fc.bias"), vec![hdim]),
            (n("mlp.out.weight"), vec![hdim, d]),
            (n("mlp.out.bias"), vec![d]),
        ]);
    }
    s.extend([
        ("ln_f.weight".to_string(), vec![d]),
        ("ln_f.bias".to_string(), vec![d]),
        ("head.weight".to_string(), vec![d, v]),
        ("head.bias".to_string(), vec![v]),
    ]);
    s
}

/// GPT-2 style initialisation from the crate's portable RNG: N(0, 0.02) for matrices,
/// residual output projections scaled by 1/sqrt(2 * layers), ones/zeros for norms and biases;
/// the voice projection starts at zero (a model that never hears a voice is unchanged by it).
pub fn init(spec: &ModelSpec, seed: u64) -> Weights {
    let mut rng = derive_rng(seed, "model/init");
    let mut w = Weights::default();
    let resid = 0.02 / (2.0 * spec.layers as f32).sqrt();
    for (name, shape) in shapes(spec) {
        let n: usize = shape.iter().product();
        let data = if name.ends_with(".bias") || name == "voice_proj.weight" {
            vec![0.0; n]
        } else if name.contains("ln") {
            vec![1.0; n]
        } else {
            let std = if name.ends_with("proj.weight") && name.starts_with("blocks")
                || name.ends_with("mlp.out.weight")
            {
                resid
            } else {
                0.02
            };
            (0..n)
                .map(|_| {
                    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
                    let u2: f32 = rng.random();
                    std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                })
                .collect()
        };
        w.insert(name, shape, data);
    }
    w
}
