//! The LibTorch engine (cargo feature `tch`): the transformer of [`ModelSpec`] on LibTorch,
//! on the CPU or a CUDA GPU. Same forward pass (rotary positions on queries and keys, the
//! voice added at position 0), loss, AdamW step (per-tensor gradient clipping, decoupled
//! weight decay on matrices only, epsilon 1e-5, as burn's), KV-cache generation and canonical
//! safetensors names as [`super::burn_engine`]; `tests/engine_parity.rs` checks that both engines
//! agree on the same weights.
//!
//! All parameters live in one flat buffer; each named parameter is a leaf view into it. The
//! optimiser then updates every parameter with a handful of kernels over the flat buffer
//! instead of a dozen kernels per tensor, which matters on a GPU where launches dominate at
//! these model sizes.

use super::engine::{Batch, Decoder, Engine, OptimSettings, Prefill, Targets};
use super::spec::ModelSpec;
use super::weights::{self, Weights};
use super::DeviceKind;
use crate::error::{Error, Result};
use std::path::Path;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

const LN_EPS: f64 = 1e-5;
const MASKED: f64 = -1e9;
/// burn's AdamW epsilon (added to the square root of the corrected second moment).
const ADAM_EPS: f64 = 1e-5;

/// Make LibTorch's CUDA backend available and check that a device is visible.
///
/// The binary links only `libtorch_cpu` (so that it starts on machines without CUDA
/// libraries); PyTorch registers its CUDA kernels when `libtorch_cuda.so` is loaded, so it is
/// loaded here, on first use, from the library path (`LD_LIBRARY_PATH` pointing at a
/// PyTorch 2.11 `torch/lib`).
pub fn cuda_device() -> Result<Device> {
    static LOADED: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            if tch::Cuda::is_available() {
                return Ok(());
            }
            // SAFETY: dlopen with a constant C string; the handle is deliberately kept open
            // for the life of the process.
            let handle = unsafe {
                libc::dlopen(
                    c"libtorch_cuda.so".as_ptr(),
                    libc::RTLD_NOW | libc::RTLD_GLOBAL,
                )
            };
            if handle.is_null() {
                // SAFETY: dlerror returns a valid C string or null right after a failure.
                let why = unsafe {
                    let e = libc::dlerror();
                    if e.is_null() {
                        "unknown error".to_string()
                    } else {
                        std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                    }
                };
                return Err(format!(
                    "LibTorch's CUDA library could not be loaded ({why}); put the torch/lib \
                     of a CUDA build of PyTorch 2.11 and its nvidia/*/lib folders on \
                     LD_LIBRARY_PATH (scripts/gpu-bench.sh shows how)"
                ));
            }
            Ok(())
        })
        .clone()
        .map_err(Error::Model)?;
    if !tch::Cuda::is_available() {
        return Err(Error::Model(
            "device cuda: no CUDA device is visible (LibTorch's CUDA library loaded, \
             tch::Cuda::is_available() is false); check nvidia-smi and CUDA_VISIBLE_DEVICES"
                .into(),
        ));
    }
    Ok(Device::Cuda(0))
}

fn device(kind: DeviceKind) -> Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => cuda_device(),
    }
}

struct Adam {
    m: Tensor,
    v: Tensor,
    step: i32,
}

struct Inner {
    /// Every parameter, concatenated in the order of [`weights::shapes`].
    flat: Tensor,
    /// Leaf views into `flat`, one per named tensor, in the same order.
    params: Vec<Tensor>,
    /// Segment id of every element of `flat` (for per-tensor gradient norms).
    segment: Tensor,
    /// 1 for every element of a matrix (decayed), 0 for norms and biases (not decayed).
    decayed: Tensor,
    adam: Option<Adam>,
}

/// The LibTorch engine.
pub struct TchEngine {
    spec: ModelSpec,
    device: Device,
    names: Vec<(String, Vec<usize>)>,
    optim: OptimSettings,
    inner: Mutex<Inner>,
}

fn tch_err(e: tch::TchError) -> Error {
    Error::Model(format!("LibTorch: {e}"))
}

/// Parameters before the blocks, in the order of [`weights::shapes`]: the token embedding
/// and the voice projection.
const PRE: usize = 2;

/// Parameters per block (ln1 w/b, qkv w/b, proj w/b, ln2 w/b, fc w/b, out w/b), in the order
/// of [`weights::shapes`]: the [`PRE`] tensors first, then the blocks, then ln_f w/b, head w/b.
const BLOCK: usize = 12;

/// The position-dependent inputs of a forward pass, built from each token's position.
struct PosInputs {
    /// Rotary cosines, `[b, 1, t, hs / 2]`.
    cos: Tensor,
    /// Rotary sines, `[b, 1, t, hs / 2]`.
    sin: Tensor,
    /// 1 at each row's first position (where the voice enters), else 0: `[b, t, 1]`.
    voice_gate: Tensor,
}

/// Rotary position embedding of `x` `[b, h, t, hs]`: the two halves of every head are rotated
/// by the angles of `at`.
fn rotate(x: &Tensor, at: &PosInputs) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    Tensor::cat(
        &[&x1 * &at.cos - &x2 * &at.sin, &x1 * &at.sin + &x2 * &at.cos],
        3,
    )
}

impl TchEngine {
    pub fn new(spec: ModelSpec, seed: u64, device: DeviceKind) -> Result<TchEngine> {
        spec.validate().map_err(Error::Model)?;
        let w = weights::init(&spec, seed);
        Self::from_weights(spec, &w, device)
    }

    pub fn from_weights(spec: ModelSpec, w: &Weights, device: DeviceKind) -> Result<TchEngine> {
        spec.validate().map_err(Error::Model)?;
        w.check_spec(&spec)?;
        let device = self::device(device)?;
        let names = weights::shapes(&spec);
        debug_assert_eq!(names.len(), PRE + BLOCK * spec.layers + 4);
        let inner = Self::inner_from(&names, w, device)?;
        Ok(TchEngine {
            spec,
            device,
            names,
            optim: OptimSettings::default(),
            inner: Mutex::new(inner),
        })
    }

    fn inner_from(names: &[(String, Vec<usize>)], w: &Weights, device: Device) -> Result<Inner> {
        let mut all =
            Vec::with_capacity(names.iter().map(|(_, s)| s.iter().product::<usize>()).sum());
        let mut seg = Vec::with_capacity(all.capacity());
        let mut decayed = Vec::with_capacity(all.capacity());
        for (i, (name, shape)) in names.iter().enumerate() {
            let (_, data) = w.get(name)?;
            all.extend_from_slice(data);
            seg.extend(std::iter::repeat_n(i as i64, data.len()));
            let decay = if shape.len() == 2 { 1.0f32 } else { 0.0 };
            decayed.extend(std::iter::repeat_n(decay, data.len()));
        }
        let flat = Tensor::from_slice(&all)
            .f_to_device(device)
            .map_err(tch_err)?;
        let segment = Tensor::from_slice(&seg)
            .f_to_device(device)
            .map_err(tch_err)?;
        let decayed = Tensor::from_slice(&decayed)
            .f_to_device(device)
            .map_err(tch_err)?;
        let mut params = Vec::with_capacity(names.len());
        let mut off = 0i64;
        for (_, shape) in names {
            let n: usize = shape.iter().product();
            let dims: Vec<i64> = shape.iter().map(|&x| x as i64).collect();
            let p = flat
                .f_narrow(0, off, n as i64)
                .and_then(|t| t.f_view(dims.as_slice()))
                .map_err(tch_err)?
                .set_requires_grad(true);
            params.push(p);
            off += n as i64;
        }
        Ok(Inner {
            flat,
            params,
            segment,
            decayed,
            adam: None,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic inside LibTorch while the lock was held leaves plain tensors behind; they
        // stay usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logits `[b, t, V]`. `mask`: additive, broadcastable to `[b, h, t, s]`, or `None` for
    /// plain causal attention. With `cache`, keys and values are appended to it.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        p: &[Tensor],
        tokens: &Tensor,
        at: &PosInputs,
        voice: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<&mut Vec<(Tensor, Tensor)>>,
    ) -> Tensor {
        let (b, t) = tokens.size2().expect("tokens are [b, t]");
        let d = self.spec.d_model as i64;
        let h = self.spec.heads as i64;
        let hs = d / h;
        // The voice enters once, at the first position (BOS), through its projection.
        let v = voice.matmul(&p[1]).view([b, 1, d]) * &at.voice_gate;
        let mut x = Tensor::embedding(&p[0], tokens, -1, false, false) + v;
        let ln = |x: &Tensor, w: &Tensor, bias: &Tensor| {
            x.layer_norm([d], Some(w), Some(bias), LN_EPS, true)
        };
        for l in 0..self.spec.layers {
            let q0 = PRE + l * BLOCK;
            let bp = &p[q0..q0 + BLOCK];
            let a = ln(&x, &bp[0], &bp[1]);
            let qkv = a.matmul(&bp[2]) + &bp[3]; // [b, t, 3d]
            let parts = qkv.view([b, t, 3 * h, hs]).transpose(1, 2).chunk(3, 1);
            let (q, mut k, mut vv) = (
                rotate(&parts[0], at),
                rotate(&parts[1], at),
                parts[2].shallow_clone(),
            );
            if let Some(c) = cache.as_deref_mut() {
                if c.len() > l {
                    k = Tensor::cat(&[&c[l].0, &k], 2);
                    vv = Tensor::cat(&[&c[l].1, &vv], 2);
                    c[l] = (k.shallow_clone(), vv.shallow_clone());
                } else {
                    c.push((k.shallow_clone(), vv.shallow_clone()));
                }
            }
            let y = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &vv,
                mask,
                0.0,
                mask.is_none(),
                None,
                false,
            ); // [b, h, t, hs]
            let y = y.transpose(1, 2).contiguous().view([b, t, d]);
            x = x + y.matmul(&bp[4]) + &bp[5];
            let m = ln(&x, &bp[6], &bp[7]);
            let m = (m.matmul(&bp[8]) + &bp[9]).gelu("none");
            x = x + m.matmul(&bp[10]) + &bp[11];
        }
        let f = PRE + BLOCK * self.spec.layers;
        let x = ln(&x, &p[f], &p[f + 1]);
        x.matmul(&p[f + 2]) + &p[f + 3]
    }

    /// Rotary tables and voice gate for positions `pos` (row-major `[b, t]`), on the device.
    fn pos_inputs(&self, pos: &[i64], b: i64, t: i64) -> PosInputs {
        let half = self.spec.d_model / self.spec.heads / 2;
        let (cos, sin) = super::engine::rope_tables(pos, half);
        let t4 = |d: &[f32]| {
            Tensor::from_slice(d)
                .view([b, 1, t, half as i64])
                .to_device(self.device)
        };
        PosInputs {
            cos: t4(&cos),
            sin: t4(&sin),
            voice_gate: Tensor::from_slice(&super::engine::voice_gate(pos))
                .view([b, t, 1])
                .to_device(self.device),
        }
    }

    /// Tokens, position inputs (positions 0..t per row) and voice of a right-padded batch, on
    /// the device.
    fn inputs(&self, batch: &Batch) -> (Tensor, PosInputs, Tensor) {
        let (b, t) = (batch.b as i64, batch.t as i64);
        let toks: Vec<i64> = batch.tokens.iter().map(|&x| x as i64).collect();
        let pos: Vec<i64> = (0..b).flat_map(|_| 0..t).collect();
        (
            Tensor::from_slice(&toks)
                .view([b, t])
                .to_device(self.device),
            self.pos_inputs(&pos, b, t),
            Tensor::from_slice(&batch.voice)
                .view([b, self.spec.voice_dim as i64])
                .to_device(self.device),
        )
    }

    /// The weighted soft-target cross-entropy (a scalar tensor on the autodiff graph).
    fn loss(&self, p: &[Tensor], batch: &Batch, targets: &Targets) -> Tensor {
        let (b, t, v) = (batch.b as i64, batch.t as i64, self.spec.vocab as i64);
        let total = targets.weight.iter().sum::<f32>().max(1e-6) as f64;
        let (toks, at, voice) = self.inputs(batch);
        let logits = self.forward(p, &toks, &at, &voice, None, None);
        let probs = Tensor::from_slice(&targets.probs)
            .view([b, t, v])
            .to_device(self.device);
        let weight = Tensor::from_slice(&targets.weight)
            .view([b, t])
            .to_device(self.device);
        let mut ce =
            (logits.log_softmax(2, Kind::Float) * probs).sum_dim_intlist(2, false, Kind::Float);
        if let Some(st) = &targets.soft {
            let dense =
                |x: &[f32], shape: &[i64]| Tensor::from_slice(x).view(shape).to_device(self.device);
            let tempered = (&logits * st.inv_temperature as f64).log_softmax(2, Kind::Float);
            ce += (&tempered * dense(&st.probs, &[b, t, v])).sum_dim_intlist(2, false, Kind::Float);
            if !st.rest_mask.is_empty() {
                let mass = (tempered.exp() * dense(&st.rest_mask, &[b, t, v])).sum_dim_intlist(
                    2,
                    false,
                    Kind::Float,
                );
                ce +=
                    (mass + crate::model::train::REST_EPS as f64).log() * dense(&st.rest, &[b, t]);
            }
        }
        (ce * weight).sum(Kind::Float) / (-total)
    }

    /// The loss and one flat gradient over all parameters.
    fn flat_gradient(&self, inner: &Inner, batch: &Batch, targets: &Targets) -> (f32, Tensor) {
        let loss = self.loss(&inner.params, batch, targets);
        let grads = Tensor::run_backward(&[&loss], &inner.params, false, false);
        let flat = Tensor::cat(
            &grads.iter().map(|g| g.reshape([-1])).collect::<Vec<_>>(),
            0,
        );
        (loss.double_value(&[]) as f32, flat)
    }

    /// A flat `[N]` tensor as canonical-named weights.
    fn unflatten(&self, flat: &Tensor) -> Weights {
        let all = to_vec(flat);
        let mut w = Weights::default();
        let mut off = 0;
        for (name, shape) in &self.names {
            let n: usize = shape.iter().product();
            w.insert(name.clone(), shape.clone(), all[off..off + n].to_vec());
            off += n;
        }
        w
    }
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).reshape([-1]);
    Vec::<f32>::try_from(&t).unwrap_or_default()
}

impl Engine for TchEngine {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn logits(&self, batch: &Batch) -> Vec<f32> {
        let inner = self.lock();
        let _guard = tch::no_grad_guard();
        let (toks, at, voice) = self.inputs(batch);
        to_vec(&self.forward(&inner.params, &toks, &at, &voice, None, None))
    }

    fn set_optim(&mut self, s: OptimSettings) {
        if s != self.optim {
            self.optim = s;
            self.inner.get_mut().unwrap_or_else(|e| e.into_inner()).adam = None;
        }
    }

    fn train_step(&mut self, batch: &Batch, targets: &Targets, lr: f64) -> f32 {
        let s = &self.optim;
        let mut inner = self.lock();
        let (loss, mut g) = self.flat_gradient(&inner, batch, targets);
        let _guard = tch::no_grad_guard();
        if s.grad_clip > 0.0 {
            // Per-tensor norm clipping, as burn's `GradientClippingConfig::Norm`:
            // g * min(1, clip / (|g| + min_positive)).
            let n = self.names.len() as i64;
            let sq = Tensor::zeros([n], (Kind::Float, self.device)).index_add(
                0,
                &inner.segment,
                &g.square(),
            );
            let coef = ((sq.sqrt() + f32::MIN_POSITIVE as f64).reciprocal() * s.grad_clip as f64)
                .clamp_max(1.0);
            g *= coef.index_select(0, &inner.segment);
        }
        let Inner {
            flat,
            adam,
            decayed,
            ..
        } = &mut *inner;
        let adam = adam.get_or_insert_with(|| Adam {
            m: flat.zeros_like(),
            v: flat.zeros_like(),
            step: 0,
        });
        adam.step += 1;
        let (b1, b2) = (s.beta1 as f64, s.beta2 as f64);
        adam.m *= b1;
        adam.m += &g * (1.0 - b1);
        adam.v *= b2;
        adam.v += g.square() * (1.0 - b2);
        let bc1 = 1.0 - b1.powi(adam.step);
        let bc2 = 1.0 - b2.powi(adam.step);
        let update = (&adam.m / bc1) / ((&adam.v / bc2).sqrt() + ADAM_EPS);
        // Decoupled weight decay on matrices only, then the step (in place: the parameters are
        // views of `flat`).
        let decay = lr * s.weight_decay as f64;
        if decay != 0.0 {
            *flat *= &*decayed * (-decay) + 1.0;
        }
        *flat += update * (-lr);
        loss
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
        let inner = self.lock();
        let _guard = tch::no_grad_guard();
        let Prefill {
            p,
            pads,
            tokens: toks,
            pos,
            mask,
        } = Prefill::new(prompts, MASKED as f32);
        let dev = self.device;
        let (bi, pi) = (b as i64, p as i64);
        let voice_t = Tensor::from_slice(voice)
            .view([bi, self.spec.voice_dim as i64])
            .to_device(dev);
        // Key-padding mask for every decoding step: the prompt's pads, then never masked.
        let total = p + max_new;
        let mut keys = vec![0.0f32; b * total];
        for r in 0..b {
            for j in 0..pads[r] {
                keys[r * total + j] = MASKED as f32;
            }
        }
        let keys = Tensor::from_slice(&keys)
            .view([bi, 1, 1, total as i64])
            .to_device(dev);
        let mut cache = Vec::with_capacity(self.spec.layers);
        let logits = self.forward(
            &inner.params,
            &Tensor::from_slice(&toks).view([bi, pi]).to_device(dev),
            &self.pos_inputs(&pos, bi, pi),
            &voice_t,
            Some(
                &Tensor::from_slice(&mask)
                    .view([bi, 1, pi, pi])
                    .to_device(dev),
            ),
            Some(&mut cache),
        );
        let mut last = to_vec(&logits.narrow(1, pi - 1, 1));
        for step in 0..max_new {
            let Some(next) = decoder.step(&last) else {
                return;
            };
            if step + 1 == max_new {
                return;
            }
            let s = (p + step + 1) as i64;
            let toks: Vec<i64> = next.iter().map(|&x| x as i64).collect();
            let pos: Vec<i64> = (0..b).map(|r| (p - pads[r] + step) as i64).collect();
            let logits = self.forward(
                &inner.params,
                &Tensor::from_slice(&toks).view([bi, 1]).to_device(dev),
                &self.pos_inputs(&pos, bi, 1),
                &voice_t,
                Some(&keys.narrow(3, 0, s)),
                Some(&mut cache),
            );
            last = to_vec(&logits);
        }
    }

    fn weights(&self) -> Weights {
        self.unflatten(&self.lock().flat)
    }

    fn loss_gradient(&self, batch: &Batch, targets: &Targets) -> (f32, Weights) {
        let inner = self.lock();
        let (loss, g) = self.flat_gradient(&inner, batch, targets);
        (loss, self.unflatten(&g))
    }

    fn set_weights(&mut self, w: &Weights) -> Result<()> {
        w.check_spec(&self.spec)?;
        let inner = Self::inner_from(&self.names, w, self.device)?;
        *self.inner.get_mut().unwrap_or_else(|e| e.into_inner()) = inner;
        Ok(())
    }

    fn save(&self, path: &Path) -> Result<()> {
        self.weights().save(path)
    }

    fn load(&mut self, path: &Path) -> Result<()> {
        self.set_weights(&Weights::load(path)?)
    }
}
