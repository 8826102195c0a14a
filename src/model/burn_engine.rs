//! The default engine: the transformer of [`ModelSpec`] on burn 0.22's pure-Rust `flex` backend.
//!
//! Parameters are plain `Param` tensors with the canonical safetensors names listed in
//! [`super::weights`], so any engine can load what this one saves.

use super::engine::{Batch, Decoder, Engine, OptimSettings, Prefill, Targets};
use super::spec::ModelSpec;
use super::weights::{self, Weights};
use crate::error::{Error, Result};
use burn::module::{Module, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::{gelu, log_softmax, softmax};
use burn::tensor::module::{embedding, linear};
use burn::tensor::{Device, Int, Tensor, TensorData};
use std::path::Path;

const LN_EPS: f32 = 1e-5;
const MASKED: f32 = -1e9;

#[derive(Module, Debug)]
struct Block {
    ln1_w: Param<Tensor<1>>,
    ln1_b: Param<Tensor<1>>,
    qkv_w: Param<Tensor<2>>,
    qkv_b: Param<Tensor<1>>,
    proj_w: Param<Tensor<2>>,
    proj_b: Param<Tensor<1>>,
    ln2_w: Param<Tensor<1>>,
    ln2_b: Param<Tensor<1>>,
    fc_w: Param<Tensor<2>>,
    fc_b: Param<Tensor<1>>,
    out_w: Param<Tensor<2>>,
    out_b: Param<Tensor<1>>,
}

#[derive(Module, Debug)]
struct Transformer {
    tok_emb: Param<Tensor<2>>,
    voice_w: Param<Tensor<2>>,
    blocks: Vec<Block>,
    lnf_w: Param<Tensor<1>>,
    lnf_b: Param<Tensor<1>>,
    head_w: Param<Tensor<2>>,
    head_b: Param<Tensor<1>>,
}

fn layer_norm(x: Tensor<3>, w: &Param<Tensor<1>>, b: &Param<Tensor<1>>) -> Tensor<3> {
    let [_, _, d] = x.dims();
    let mean = x.clone().mean_dim(2); // (B, T, 1)
    let xc = x - mean;
    let var = xc.clone().powi_scalar(2).mean_dim(2);
    let xn = xc / var.add_scalar(LN_EPS).sqrt();
    xn * w.val().reshape([1, 1, d]) + b.val().reshape([1, 1, d])
}

/// Per-layer key/value cache: (B, H, S, hs) each.
type Cache = Vec<(Tensor<4>, Tensor<4>)>;

/// Rotary position embedding of `x` (B, H, T, hs): the two halves of every head are rotated
/// by the angles of each position, `[x1 cos - x2 sin, x2 cos + x1 sin]`, computed as
/// `x * C + (x R) * S` with `C = [cos, cos]`, `S = [sin, sin]` (each (B, 1, T, hs)) and `R`
/// the signed half swap (`x R = [-x2, x1]`, exact): four ops instead of nine, which the
/// backward pass doubles.
fn rotate(x: Tensor<4>, rope: &Rope) -> Tensor<4> {
    let swapped = x.clone().matmul(rope.swap.clone());
    x * rope.cos.clone() + swapped * rope.sin.clone()
}

/// Rotary tables of a forward pass.
struct Rope {
    /// `[cos, cos]` per position, (B, 1, T, hs).
    cos: Tensor<4>,
    /// `[sin, sin]` per position, (B, 1, T, hs).
    sin: Tensor<4>,
    /// The signed half swap, (1, 1, hs, hs).
    swap: Tensor<4>,
}

/// The position-dependent inputs of a forward pass, built from each token's position.
struct PosInputs {
    rope: Rope,
    /// 1 at each row's first position (where the voice enters), else 0: (B, T, 1).
    voice_gate: Tensor<3>,
}

impl PosInputs {
    fn new(spec: &ModelSpec, pos: &[i64], b: usize, t: usize, device: &Device) -> PosInputs {
        let half = spec.d_model / spec.heads / 2;
        let hs = 2 * half;
        let (cos, sin) = super::engine::rope_tables(pos, half);
        let twice = |d: Vec<f32>| {
            let full: Vec<f32> = d
                .chunks(half)
                .flat_map(|row| row.iter().chain(row.iter()).copied())
                .collect();
            Tensor::<4>::from_data(TensorData::new(full, [b, 1, t, hs]), device)
        };
        // x R = [-x2, x1]: column j < half takes -x[j + half], column j >= half takes x[j - half].
        let mut swap = vec![0.0f32; hs * hs];
        for j in 0..half {
            swap[(j + half) * hs + j] = -1.0;
            swap[j * hs + j + half] = 1.0;
        }
        PosInputs {
            rope: Rope {
                cos: twice(cos),
                sin: twice(sin),
                swap: Tensor::from_data(TensorData::new(swap, [1, 1, hs, hs]), device),
            },
            voice_gate: Tensor::from_data(
                TensorData::new(super::engine::voice_gate(pos), [b, t, 1]),
                device,
            ),
        }
    }
}

impl Transformer {
    /// tokens: (B, T); voice: (B, VD); mask: additive, broadcastable to (B, H, T, S).
    /// With `cache`, keys and values are appended to it and attention spans the whole cache.
    ///
    /// Layer norm and attention are written out, for inference too: flex's fused kernels for
    /// them compute the same values in another order, and their last-bit differences in the
    /// teacher's logprobs and the students' validation losses moved early stopping and so the
    /// committed results (tried; the quickstart then differed by noise-level amounts).
    fn forward(
        &self,
        spec: &ModelSpec,
        tokens: Tensor<2, Int>,
        at: &PosInputs,
        voice: Tensor<2>,
        mask: Tensor<4>,
        mut cache: Option<&mut Cache>,
    ) -> Tensor<3> {
        let [b, t] = tokens.dims();
        let (d, h) = (spec.d_model, spec.heads);
        let hs = d / h;
        // The voice enters once, at the first position (BOS), through its projection.
        let v = linear(voice, self.voice_w.val(), None).reshape([b, 1, d]) * at.voice_gate.clone();
        let mut x = embedding(self.tok_emb.val(), tokens) + v;
        for (l, blk) in self.blocks.iter().enumerate() {
            let a = layer_norm(x.clone(), &blk.ln1_w, &blk.ln1_b);
            let qkv = linear(a, blk.qkv_w.val(), Some(blk.qkv_b.val())); // (B, T, 3d)
            let qkv = qkv.reshape([b, t, 3 * h, hs]).swap_dims(1, 2); // (B, 3h, T, hs)
            let vv = qkv.clone().narrow(1, 2 * h, h);
            // Queries and keys rotated together.
            let mut qk = rotate(qkv.narrow(1, 0, 2 * h), &at.rope).chunk(2, 1);
            let k = qk.pop().expect("2 chunks");
            let q = qk.pop().expect("2 chunks");
            let (k, vv) = match cache.as_deref_mut() {
                Some(c) if c.len() > l => {
                    let (pk, pv) = c[l].clone();
                    let k = Tensor::cat(vec![pk, k], 2);
                    let vv = Tensor::cat(vec![pv, vv], 2);
                    c[l] = (k.clone(), vv.clone());
                    (k, vv)
                }
                Some(c) => {
                    c.push((k.clone(), vv.clone()));
                    (k, vv)
                }
                None => (k, vv),
            };
            let att = q.matmul(k.swap_dims(2, 3)).div_scalar((hs as f32).sqrt()) + mask.clone(); // (B, h, T, S)
            let y = softmax(att, 3).matmul(vv);
            let y = y.swap_dims(1, 2).reshape([b, t, d]); // (B, T, d)
            x = x + linear(y, blk.proj_w.val(), Some(blk.proj_b.val()));
            let m = layer_norm(x.clone(), &blk.ln2_w, &blk.ln2_b);
            let m = gelu(linear(m, blk.fc_w.val(), Some(blk.fc_b.val())));
            x = x + linear(m, blk.out_w.val(), Some(blk.out_b.val()));
        }
        let x = layer_norm(x, &self.lnf_w, &self.lnf_b);
        linear(x, self.head_w.val(), Some(self.head_b.val())) // (B, T, V)
    }

    /// Ids of the vector parameters (norms and biases), which take no weight decay.
    fn vector_param_ids(&self) -> Vec<burn::module::ParamId> {
        let mut ids = vec![self.lnf_w.id, self.lnf_b.id, self.head_b.id];
        for blk in &self.blocks {
            ids.extend([
                blk.ln1_w.id,
                blk.ln1_b.id,
                blk.qkv_b.id,
                blk.proj_b.id,
                blk.ln2_w.id,
                blk.ln2_b.id,
                blk.fc_b.id,
                blk.out_b.id,
            ]);
        }
        ids
    }

    fn from_weights(spec: &ModelSpec, w: &Weights, device: &Device) -> Result<Transformer> {
        let p1 = |name: &str| -> Result<Param<Tensor<1>>> {
            let (shape, data) = w.get(name)?;
            Ok(Param::from_tensor(Tensor::from_data(
                TensorData::new(data.to_vec(), [shape[0]]),
                device,
            )))
        };
        let p2 = |name: &str| -> Result<Param<Tensor<2>>> {
            let (shape, data) = w.get(name)?;
            if shape.len() != 2 {
                return Err(Error::Model(format!(
                    "{name}: expected 2 dims, got {shape:?}"
                )));
            }
            Ok(Param::from_tensor(Tensor::from_data(
                TensorData::new(data.to_vec(), [shape[0], shape[1]]),
                device,
            )))
        };
        let mut blocks = Vec::with_capacity(spec.layers);
        for l in 0..spec.layers {
            let n = |s: &str| weights::block_name(l, s);
            blocks.push(Block {
                ln1_w: p1(&n("ln1.weight"))?,
                ln1_b: p1(&n("ln1.bias"))?,
                qkv_w: p2(&n("attn.qkv.weight"))?,
                qkv_b: p1(&n("attn.qkv.bias"))?,
                proj_w: p2(&n("attn.proj.weight"))?,
                proj_b: p1(&n("attn.proj.bias"))?,
                ln2_w: p1(&n("ln2.weight"))?,
                ln2_b: p1(&n("ln2.bias"))?,
                fc_w: p2(&n("mlp.fc.weight"))?,
                fc_b: p1(&n("mlp.fc.bias"))?,
                out_w: p2(&n("mlp.out.weight"))?,
                out_b: p1(&n("mlp.out.bias"))?,
            });
        }
        Ok(Transformer {
            tok_emb: p2("tok_emb.weight")?,
            voice_w: p2("voice_proj.weight")?,
            blocks,
            lnf_w: p1("ln_f.weight")?,
            lnf_b: p1("ln_f.bias")?,
            head_w: p2("head.weight")?,
            head_b: p1("head.bias")?,
        })
    }

    fn to_weights(&self) -> Weights {
        self.collect(&|p: &Param<Tensor<1>>| p.val(), &|p: &Param<Tensor<2>>| {
            p.val()
        })
    }

    /// Canonical-named tensors, one per parameter, produced by `f1`/`f2` from the parameter
    /// (its value, or its gradient).
    fn collect(
        &self,
        f1: &dyn Fn(&Param<Tensor<1>>) -> Tensor<1>,
        f2: &dyn Fn(&Param<Tensor<2>>) -> Tensor<2>,
    ) -> Weights {
        let mut w = Weights::default();
        let put1 = |w: &mut Weights, name: String, p: &Param<Tensor<1>>| {
            let t = f1(p);
            let dims = t.dims().to_vec();
            w.insert(name, dims, to_vec(t.into_data()));
        };
        let put2 = |w: &mut Weights, name: String, p: &Param<Tensor<2>>| {
            let t = f2(p);
            let dims = t.dims().to_vec();
            w.insert(name, dims, to_vec(t.into_data()));
        };
        put2(&mut w, "tok_emb.weight".into(), &self.tok_emb);
        put2(&mut w, "voice_proj.weight".into(), &self.voice_w);
        for (l, blk) in self.blocks.iter().enumerate() {
            let n = |s: &str| weights::block_name(l, s);
            put1(&mut w, n("ln1.weight"), &blk.ln1_w);
            put1(&mut w, n("ln1.bias"), &blk.ln1_b);
            put2(&mut w, n("attn.qkv.weight"), &blk.qkv_w);
            put1(&mut w, n("attn.qkv.bias"), &blk.qkv_b);
            put2(&mut w, n("attn.proj.weight"), &blk.proj_w);
            put1(&mut w, n("attn.proj.bias"), &blk.proj_b);
            put1(&mut w, n("ln2.weight"), &blk.ln2_w);
            put1(&mut w, n("ln2.bias"), &blk.ln2_b);
            put2(&mut w, n("mlp.fc.weight"), &blk.fc_w);
            put1(&mut w, n("mlp.fc.bias"), &blk.fc_b);
            put2(&mut w, n("mlp.out.weight"), &blk.out_w);
            put1(&mut w, n("mlp.out.bias"), &blk.out_b);
        }
        put1(&mut w, "ln_f.weight".into(), &self.lnf_w);
        put1(&mut w, "ln_f.bias".into(), &self.lnf_b);
        put2(&mut w, "head.weight".into(), &self.head_w);
        put1(&mut w, "head.bias".into(), &self.head_b);
        w
    }
}

fn to_vec(d: TensorData) -> Vec<f32> {
    d.convert::<f32>().try_into_vec::<f32>().unwrap_or_default()
}

/// The burn/flex engine. Holds the model on the autodiff device and the optimiser state.
pub struct BurnEngine {
    spec: ModelSpec,
    device: Device,
    model: Transformer,
    optim: Option<ModuleOptimizer>,
    optim_settings: OptimSettings,
}

impl BurnEngine {
    /// A freshly initialised model (seeded, portable initialisation).
    pub fn new(spec: ModelSpec, seed: u64) -> Result<BurnEngine> {
        spec.validate().map_err(Error::Model)?;
        let w = weights::init(&spec, seed);
        Self::from_weights(spec, &w)
    }

    pub fn from_weights(spec: ModelSpec, w: &Weights) -> Result<BurnEngine> {
        let device = Device::flex().autodiff();
        let model = Transformer::from_weights(&spec, w, &device)?;
        Ok(BurnEngine {
            spec,
            device,
            model,
            optim: None,
            optim_settings: OptimSettings::default(),
        })
    }
}

fn int2(data: Vec<i64>, b: usize, t: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(data, [b, t]), device)
}

/// Tokens, position inputs (positions 0..t per row) and voice of a right-padded batch.
fn inputs(
    spec: &ModelSpec,
    batch: &Batch,
    device: &Device,
) -> (Tensor<2, Int>, PosInputs, Tensor<2>) {
    let (b, t) = (batch.b, batch.t);
    let toks = batch.tokens.iter().map(|&x| x as i64).collect();
    let pos: Vec<i64> = (0..b).flat_map(|_| 0..t as i64).collect();
    let voice = Tensor::from_data(
        TensorData::new(batch.voice.clone(), [b, spec.voice_dim]),
        device,
    );
    (
        int2(toks, b, t, device),
        PosInputs::new(spec, &pos, b, t, device),
        voice,
    )
}

/// Additive causal mask (1, 1, t, t).
fn causal_mask(t: usize, device: &Device) -> Tensor<4> {
    let mut m = vec![0.0f32; t * t];
    for i in 0..t {
        for j in i + 1..t {
            m[i * t + j] = MASKED;
        }
    }
    Tensor::from_data(TensorData::new(m, [1, 1, t, t]), device)
}

impl BurnEngine {
    /// The weighted soft-target cross-entropy on the autodiff graph, and its value.
    fn loss(&self, batch: &Batch, targets: &Targets) -> (Tensor<1>, f32) {
        let (b, t, v) = (batch.b, batch.t, self.spec.vocab);
        let total: f32 = targets.weight.iter().sum::<f32>().max(1e-6);
        let device = self.device.clone();
        let (toks, at, voice) = inputs(&self.spec, batch, &device);
        let mask = causal_mask(t, &device);
        let logits = self.model.forward(&self.spec, toks, &at, voice, mask, None); // (B, T, V)
        let probs =
            Tensor::<3>::from_data(TensorData::new(targets.probs.clone(), [b, t, v]), &device);
        let weight =
            Tensor::<2>::from_data(TensorData::new(targets.weight.clone(), [b, t]), &device);
        let mut ce = (log_softmax(logits.clone(), 2) * probs)
            .sum_dim(2)
            .reshape([b, t]); // (B, T)
        if let Some(st) = &targets.soft {
            let soft =
                Tensor::<3>::from_data(TensorData::new(st.probs.clone(), [b, t, v]), &device);
            let tempered = log_softmax(logits.mul_scalar(st.inv_temperature), 2);
            ce = ce + (tempered.clone() * soft).sum_dim(2).reshape([b, t]);
            if !st.rest_mask.is_empty() {
                let mask = Tensor::<3>::from_data(
                    TensorData::new(st.rest_mask.clone(), [b, t, v]),
                    &device,
                );
                let rest =
                    Tensor::<2>::from_data(TensorData::new(st.rest.clone(), [b, t]), &device);
                let mass = (tempered.exp() * mask).sum_dim(2).reshape([b, t]);
                ce = ce + mass.add_scalar(crate::model::train::REST_EPS).log() * rest;
            }
        }
        let loss = (ce * weight).sum().div_scalar(-total);
        let loss_value = to_vec(loss.clone().into_data())
            .first()
            .copied()
            .unwrap_or(f32::NAN);
        (loss, loss_value)
    }
}

impl BurnEngine {
    /// One optimiser step, with the seconds spent building the loss (forward), in the
    /// backward pass (gradients collected) and in the optimiser update: the breakdown
    /// `distill-sim bench` prints for burn.
    pub fn timed_step(&mut self, batch: &Batch, targets: &Targets, lr: f64) -> (f32, [f64; 3]) {
        // One thread of control: burn's autodiff graph is shared, and concurrent backward
        // passes over the same parameters race (tried: "graph tape has already been
        // consumed"); the matmuls inside run on the rayon pool.
        let t = std::time::Instant::now();
        let (loss, loss_value) = self.loss(batch, targets);
        let forward = t.elapsed().as_secs_f64();
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        let backward = t.elapsed().as_secs_f64() - forward;
        let s = &self.optim_settings;
        let model = &self.model;
        let optim = self.optim.get_or_insert_with(|| {
            // Decoupled weight decay on matrices only: norms and biases form a group without it.
            let clip = (s.grad_clip > 0.0).then_some(
                burn::optim::grad_clipping::GradientClippingConfig::Norm(s.grad_clip),
            );
            let cfg = AdamWConfig::new()
                .with_beta_1(s.beta1)
                .with_beta_2(s.beta2)
                .with_weight_decay(s.weight_decay)
                .with_grad_clipping(clip.clone());
            let no_decay = cfg.clone().with_weight_decay(0.0).build();
            cfg.init().with_group(
                burn::module::ParamGroup::from_ids(model.vector_param_ids()),
                no_decay,
                clip.map(|c| c.init()),
            )
        });
        let model = std::mem::replace(&mut self.model, placeholder(&self.device));
        self.model = optim.step(lr, model, grads);
        let optimizer = t.elapsed().as_secs_f64() - forward - backward;
        (loss_value, [forward, backward, optimizer])
    }
}

impl Engine for BurnEngine {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn set_optim(&mut self, s: OptimSettings) {
        if s != self.optim_settings {
            self.optim_settings = s;
            self.optim = None;
        }
    }

    fn logits(&self, batch: &Batch) -> Vec<f32> {
        let model = self.model.valid();
        let device = self.device.clone().inner();
        let (toks, at, voice) = inputs(&self.spec, batch, &device);
        let mask = causal_mask(batch.t, &device);
        to_vec(
            model
                .forward(&self.spec, toks, &at, voice, mask, None)
                .into_data(),
        )
    }

    fn train_step(&mut self, batch: &Batch, targets: &Targets, lr: f64) -> f32 {
        self.timed_step(batch, targets, lr).0
    }

    fn generate(
        &self,
        prompts: &[&[u32]],
        voice: &[f32],
        max_new: usize,
        decoder: &mut dyn Decoder,
    ) {
        let b = prompts.len();
        if b == 0 {
            return;
        }
        let model = self.model.valid();
        let device = self.device.clone().inner();
        let Prefill {
            p,
            pads,
            tokens: toks,
            pos,
            mask,
        } = Prefill::new(prompts, MASKED);
        let voice_t = Tensor::<2>::from_data(
            TensorData::new(voice.to_vec(), [b, self.spec.voice_dim]),
            &device,
        );
        let mut cache: Cache = Vec::with_capacity(self.spec.layers);
        let at = PosInputs::new(&self.spec, &pos, b, p, &device);
        let logits = model.forward(
            &self.spec,
            int2(toks, b, p, &device),
            &at,
            voice_t.clone(),
            Tensor::from_data(TensorData::new(mask, [b, 1, p, p]), &device),
            Some(&mut cache),
        );
        let v = self.spec.vocab;
        let mut last = to_vec(logits.narrow(1, p - 1, 1).reshape([b, v]).into_data());
        // Key-padding mask grows by one column (never masked) per step.
        let mut key_mask: Vec<f32> = (0..b)
            .flat_map(|r| {
                let pad = pads[r];
                (0..p).map(move |j| if j < pad { MASKED } else { 0.0 })
            })
            .collect();
        for step in 0..max_new {
            let Some(next) = decoder.step(&last) else {
                return;
            };
            if step + 1 == max_new {
                return;
            }
            let s = p + step + 1;
            let mut km = Vec::with_capacity(b * s);
            for r in 0..b {
                km.extend_from_slice(&key_mask[r * (s - 1)..(r + 1) * (s - 1)]);
                km.push(0.0);
            }
            key_mask = km;
            let toks: Vec<i64> = next.iter().map(|&x| x as i64).collect();
            let pos: Vec<i64> = (0..b).map(|r| (p - pads[r] + step) as i64).collect();
            let at = PosInputs::new(&self.spec, &pos, b, 1, &device);
            let logits = model.forward(
                &self.spec,
                int2(toks, b, 1, &device),
                &at,
                voice_t.clone(),
                Tensor::from_data(TensorData::new(key_mask.clone(), [b, 1, 1, s]), &device),
                Some(&mut cache),
            );
            last = to_vec(logits.reshape([b, v]).into_data());
        }
    }

    fn save(&self, path: &Path) -> Result<()> {
        self.weights().save(path)
    }

    fn weights(&self) -> Weights {
        self.model.valid().to_weights()
    }

    fn loss_gradient(&self, batch: &Batch, targets: &Targets) -> (f32, Weights) {
        let (loss, value) = self.loss(batch, targets);
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        let g = self.model.collect(
            &|p: &Param<Tensor<1>>| {
                grads
                    .get::<1>(p.id)
                    .unwrap_or_else(|| p.val().inner().zeros_like())
            },
            &|p: &Param<Tensor<2>>| {
                grads
                    .get::<2>(p.id)
                    .unwrap_or_else(|| p.val().inner().zeros_like())
            },
        );
        (value, g)
    }

    fn load(&mut self, path: &Path) -> Result<()> {
        self.set_weights(&Weights::load(path)?)
    }

    fn set_weights(&mut self, w: &Weights) -> Result<()> {
        w.check_spec(&self.spec)?;
        self.model = Transformer::from_weights(&self.spec, w, &self.device)?;
        self.optim = None;
        Ok(())
    }
}

/// A cheap stand-in used while the optimiser owns the model for one step.
fn placeholder(device: &Device) -> Transformer {
    let z1 = || Param::from_tensor(Tensor::<1>::zeros([1], device));
    let z2 = || Param::from_tensor(Tensor::<2>::zeros([1, 1], device));
    Transformer {
        tok_emb: z2(),
        voice_w: z2(),
        blocks: vec![],
        lnf_w: z1(),
        lnf_b: z1(),
        head_w: z2(),
        head_b: z1(),
    }
}
