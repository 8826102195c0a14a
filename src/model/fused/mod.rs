//! The fused engine: the transformer of [`ModelSpec`] written out by hand in pure Rust, llm.c
//! style. Forward and backward go layer by layer (one function each, in [`ops`]) over
//! activation and gradient buffers allocated for the largest batch shape seen and reused;
//! matmuls run through the `gemm` crate in fixed tiles on rayon's global pool, the other
//! layers in parallel over rows of the batch.
//!
//! The model is the one of the burn engine (`burn_engine.rs`) to the last detail that
//! changes a value: layer norm with the biased variance and eps 1e-5, exact (erf) GELU (erf
//! and exp through vectorisable approximations within 4e-7 of libm's), rotary halves, scores
//! divided by `sqrt(hs)`, the voice projection added where the position is 0, the same loss
//! for every target kind, burn's AdamW (epsilon 1e-5, decoupled weight decay on matrices only,
//! the gradient clipped per tensor) and the same left-padded prefill for generation. The
//! tests in `tests.rs` state how close it comes (logits within about 2e-6, gradients within
//! about 2e-7 of burn's).
//!
//! Two things make it faster than a general framework beyond the hand-written layers:
//! training computes each sequence only up to its last position with a loss weight (later
//! positions of a right-padded batch influence nothing that is trained on, so the loss and
//! every gradient are those of the full batch), and generation runs groups of rows through
//! the whole forward pass each on its own.
//!
//! Same seed and same inputs give bit-identical results at any thread count: work is split
//! by the shapes alone (never by the number of threads) and every sum runs in a fixed order.
//! The per-task kernels (`ops::kernel!`) are compiled twice, for AVX2 (chosen at run time)
//! and for the baseline target; both compute the same bits. Across CPU types the last bits
//! differ: `gemm` picks its micro-kernel for the CPU it runs on.

mod ops;
#[cfg(test)]
mod tests;

use super::engine::{rope_tables, Batch, Decoder, Engine, OptimSettings, Prefill, Targets};
use super::spec::ModelSpec;
use super::weights::{self, Weights};
use crate::error::{Error, Result};
use ops::AttShape;
use rayon::prelude::*;
use std::path::Path;
use std::sync::Mutex;

/// Rows per group of a batched generation (fixed: results do not depend on thread count).
/// Larger groups keep the matmuls efficient (measured: 128 beat 32 and 64 on 256-prompt
/// batches); the tests use small groups so that several groups run.
const GEN_ROWS: usize = if cfg!(test) { 16 } else { 128 };

/// burn's AdamW epsilon (added to the square root of the corrected second moment).
const ADAM_EPS: f32 = 1e-5;

/// Offsets of one block's tensors in the flat parameter vector.
#[derive(Clone, Debug)]
struct BlockOff {
    ln1_w: usize,
    ln1_b: usize,
    qkv_w: usize,
    qkv_b: usize,
    proj_w: usize,
    proj_b: usize,
    ln2_w: usize,
    ln2_b: usize,
    fc_w: usize,
    fc_b: usize,
    out_w: usize,
    out_b: usize,
}

/// One named tensor of the flat parameter vector.
#[derive(Clone, Debug)]
struct TensorAt {
    name: String,
    shape: Vec<usize>,
    off: usize,
    len: usize,
}

/// Where every tensor lives in the flat parameter vector (canonical order of
/// [`weights::shapes`]: each weight directly followed by its bias).
#[derive(Clone, Debug)]
struct Layout {
    tensors: Vec<TensorAt>,
    total: usize,
    tok_emb: usize,
    voice_w: usize,
    blocks: Vec<BlockOff>,
    lnf_w: usize,
    lnf_b: usize,
    head_w: usize,
    head_b: usize,
}

impl Layout {
    fn new(spec: &ModelSpec) -> Layout {
        let mut tensors = Vec::new();
        let mut off = 0;
        for (name, shape) in weights::shapes(spec) {
            let len = shape.iter().product();
            tensors.push(TensorAt {
                name,
                shape,
                off,
                len,
            });
            off += len;
        }
        let at = |name: &str| {
            tensors
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.off)
                .expect("canonical tensor")
        };
        let blocks = (0..spec.layers)
            .map(|l| {
                let n = |s: &str| at(&weights::block_name(l, s));
                BlockOff {
                    ln1_w: n("ln1.weight"),
                    ln1_b: n("ln1.bias"),
                    qkv_w: n("attn.qkv.weight"),
                    qkv_b: n("attn.qkv.bias"),
                    proj_w: n("attn.proj.weight"),
                    proj_b: n("attn.proj.bias"),
                    ln2_w: n("ln2.weight"),
                    ln2_b: n("ln2.bias"),
                    fc_w: n("mlp.fc.weight"),
                    fc_b: n("mlp.fc.bias"),
                    out_w: n("mlp.out.weight"),
                    out_b: n("mlp.out.bias"),
                }
            })
            .collect();
        Layout {
            total: off,
            tok_emb: at("tok_emb.weight"),
            voice_w: at("voice_proj.weight"),
            blocks,
            lnf_w: at("ln_f.weight"),
            lnf_b: at("ln_f.bias"),
            head_w: at("head.weight"),
            head_b: at("head.bias"),
            tensors,
        }
    }
}

/// `g[off..off + n1]` and the `n2` values right after it (a weight's gradient and its bias's).
fn pair(g: &mut [f32], off: usize, n1: usize, n2: usize) -> (&mut [f32], &mut [f32]) {
    let (a, b) = g[off..off + n1 + n2].split_at_mut(n1);
    (a, b)
}

/// Activations and gradients of training batches of up to `cap_b` rows of up to `cap_t`
/// columns, allocated for the largest shape seen and reused (a batch of shape (B, T) uses
/// the first `N = B * T` rows of each); sizes below are those of the batch in use.
struct Work {
    cap_b: usize,
    cap_t: usize,
    /// Packed rows of the batch in use (`Ne <= B * T`): row `r` keeps positions
    /// `0..len_r`, in packed rows `start[r]..start[r + 1]` (B + 1); its attention
    /// probabilities at `att_off[r]` (B + 1); `src` (Ne): the batch position of each packed row.
    ne: usize,
    start: Vec<usize>,
    att_off: Vec<usize>,
    src: Vec<usize>,
    /// Rotary tables of each packed row's position: (Ne, hs/2) each.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// The voice projection per row: (B, d).
    vproj: Vec<f32>,
    /// Residual stream entering each block, and after the last: (L + 1, N, d).
    resid: Vec<f32>,
    /// Per block: ln1 output (L, N, d) and its row statistics (L, N).
    ln1: Vec<f32>,
    ln1_mean: Vec<f32>,
    ln1_rstd: Vec<f32>,
    /// Per block: rotated queries and keys, values (L, B, H, T, hs).
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Per block: attention probabilities (L, B, H, T, T).
    att: Vec<f32>,
    /// Per block: attention output, heads merged (L, N, d).
    y: Vec<f32>,
    /// Per block: residual stream after attention (L, N, d).
    mid: Vec<f32>,
    ln2: Vec<f32>,
    ln2_mean: Vec<f32>,
    ln2_rstd: Vec<f32>,
    /// Per block: GELU's derivative at the MLP pre-activation, and GELU's output (L, N, F).
    fc: Vec<f32>,
    act: Vec<f32>,
    /// Final norm (N, d), its statistics (N), logits (N, V).
    lnf: Vec<f32>,
    lnf_mean: Vec<f32>,
    lnf_rstd: Vec<f32>,
    logits: Vec<f32>,
    /// Scratch: (N, 3d).
    qkv: Vec<f32>,
    // Backward.
    /// d loss / d logits (N, V); per-position weighted cross-entropy (N).
    dlogits: Vec<f32>,
    ce: Vec<f32>,
    /// d loss / d residual stream (N, d); scratch (N, d).
    dres: Vec<f32>,
    dtmp: Vec<f32>,
    /// (N, F).
    dact: Vec<f32>,
    /// (N, d).
    dy: Vec<f32>,
    /// (B, H, T, hs) each; (B, T).
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    ds: Vec<f32>,
    /// (N, 3d).
    dqkv: Vec<f32>,
    /// Per-task partial sums of the layer-norm backward: (ceil(N / LN_ROWS), 2d).
    ln_part: Vec<f32>,
    /// Gradient of every parameter, flat like the parameters.
    grads: Vec<f32>,
}

impl Work {
    fn new(spec: &ModelSpec, total: usize, b: usize, t: usize) -> Work {
        let (d, h, l, v) = (spec.d_model, spec.heads, spec.layers, spec.vocab);
        let (n, f, half) = (b * t, d * spec.mlp_ratio, d / h / 2);
        let z = |len: usize| vec![0.0f32; len];
        Work {
            cap_b: b,
            cap_t: t,
            ne: 0,
            start: vec![0; b + 1],
            att_off: vec![0; b + 1],
            src: vec![0; n],
            cos: z(n * half),
            sin: z(n * half),
            vproj: z(b * d),
            resid: z((l + 1) * n * d),
            ln1: z(l * n * d),
            ln1_mean: z(l * n),
            ln1_rstd: z(l * n),
            q: z(l * n * d),
            k: z(l * n * d),
            v: z(l * n * d),
            att: z(l * b * h * t * t),
            y: z(l * n * d),
            mid: z(l * n * d),
            ln2: z(l * n * d),
            ln2_mean: z(l * n),
            ln2_rstd: z(l * n),
            fc: z(l * n * f),
            act: z(l * n * f),
            lnf: z(n * d),
            lnf_mean: z(n),
            lnf_rstd: z(n),
            logits: z(n * v),
            qkv: z(n * 3 * d),
            dlogits: z(n * v),
            ce: z(n),
            dres: z(n * d),
            dtmp: z(n * d),
            dact: z(n * f),
            dy: z(n * d),
            dq: z(n * d),
            dk: z(n * d),
            dv: z(n * d),
            ds: z(n),
            dqkv: z(n * 3 * d),
            ln_part: z(n.div_ceil(ops::LN_ROWS) * 2 * d),
            grads: z(total),
        }
    }
}

/// AdamW state: first and second moments (flat like the parameters) and the step count.
struct AdamState {
    m: Vec<f32>,
    v: Vec<f32>,
    time: i32,
}

/// The fused CPU engine.
pub struct FusedEngine {
    spec: ModelSpec,
    lay: Layout,
    /// Every parameter, flat, in the canonical order.
    params: Vec<f32>,
    optim: Option<AdamState>,
    optim_settings: OptimSettings,
    /// Buffers of the last training batch shape (a Mutex: `logits` and `loss_gradient` take
    /// `&self`).
    work: Mutex<Option<Work>>,
    /// Buffers of the last generation, one per group of rows.
    gen: Mutex<Vec<GenWork>>,
    /// Rotary tables of positions 0..context: (context, hs/2) each.
    rope: (Vec<f32>, Vec<f32>),
}

impl FusedEngine {
    /// A freshly initialised model (the portable initialisation every engine shares).
    pub fn new(spec: ModelSpec, seed: u64) -> Result<FusedEngine> {
        spec.validate().map_err(Error::Model)?;
        let w = weights::init(&spec, seed);
        Self::from_weights(spec, &w)
    }

    pub fn from_weights(spec: ModelSpec, w: &Weights) -> Result<FusedEngine> {
        spec.validate().map_err(Error::Model)?;
        let lay = Layout::new(&spec);
        let rope = rope_tables(
            &(0..spec.context as i64).collect::<Vec<_>>(),
            spec.d_model / spec.heads / 2,
        );
        let mut eng = FusedEngine {
            params: vec![0.0; lay.total],
            lay,
            spec,
            optim: None,
            optim_settings: OptimSettings::default(),
            work: Mutex::new(None),
            gen: Mutex::new(Vec::new()),
            rope,
        };
        eng.set_weights(w)?;
        Ok(eng)
    }

    fn p(&self, off: usize, len: usize) -> &[f32] {
        &self.params[off..off + len]
    }

    /// The buffers for `batch`: the last ones when they are large enough, else new ones for
    /// the largest shape seen; then the packing. With `weight` (training), row `r` keeps its
    /// positions up to its last one of positive weight (later positions influence nothing
    /// trained on); without (logits), every position.
    fn work_for<'a>(
        &self,
        slot: &'a mut Option<Work>,
        batch: &Batch,
        weight: Option<&[f32]>,
    ) -> &'a mut Work {
        let (b, t) = (batch.b, batch.t);
        let cap = slot.as_ref().map_or((0, 0), |w| (w.cap_b, w.cap_t));
        if b > cap.0 || t > cap.1 {
            *slot = Some(Work::new(
                &self.spec,
                self.lay.total,
                b.max(cap.0),
                t.max(cap.1),
            ));
        }
        let w = slot.as_mut().expect("just set");
        let (h, half) = (self.spec.heads, self.spec.d_model / self.spec.heads / 2);
        w.start[0] = 0;
        w.att_off[0] = 0;
        for r in 0..b {
            let len = match weight {
                Some(wt) => (0..t)
                    .rev()
                    .find(|&i| wt[r * t + i] != 0.0)
                    .map_or(0, |i| i + 1),
                None => t,
            };
            let s0 = w.start[r];
            for i in 0..len {
                w.src[s0 + i] = r * t + i;
            }
            w.start[r + 1] = s0 + len;
            w.att_off[r + 1] = w.att_off[r] + h * len * len;
        }
        w.ne = w.start[b];
        // Rotary tables for positions 0..T, copied per packed row.
        let fresh;
        let (c, s) = if t <= self.spec.context {
            (&self.rope.0, &self.rope.1)
        } else {
            fresh = rope_tables(&(0..t as i64).collect::<Vec<_>>(), half);
            (&fresh.0, &fresh.1)
        };
        for (i, &at) in w.src[..w.ne].iter().enumerate() {
            let col = at % t;
            w.cos[i * half..(i + 1) * half].copy_from_slice(&c[col * half..(col + 1) * half]);
            w.sin[i * half..(i + 1) * half].copy_from_slice(&s[col * half..(col + 1) * half]);
        }
        w
    }

    /// The forward pass of a right-padded batch (positions 0..T per row), keeping every
    /// activation the backward pass needs; logits in `w.logits` (N, V).
    fn forward(&self, w: &mut Work, batch: &Batch) {
        let s = &self.spec;
        let (b, t, d, h, vd) = (batch.b, batch.t, s.d_model, s.heads, s.voice_dim);
        let (f, hs, vocab) = (d * s.mlp_ratio, d / h, s.vocab);
        let n = w.ne; // packed rows
        let lay = &self.lay;
        // The voice projection (B, d) = voice (B, VD) @ voice_w (VD, d).
        let voice_w = self.p(lay.voice_w, vd * d);
        for r in 0..b {
            let vr = &mut w.vproj[r * d..(r + 1) * d];
            vr.fill(0.0);
            for (kk, &x) in batch.voice[r * vd..(r + 1) * vd].iter().enumerate() {
                vr.iter_mut()
                    .zip(&voice_w[kk * d..(kk + 1) * d])
                    .for_each(|(o, wv)| *o += x * wv);
            }
        }
        // Embedding + voice at BOS: (Ne, d), packed row i holding position src[i] of the batch.
        let (tok_emb, vproj, src) = (self.p(lay.tok_emb, vocab * d), &w.vproj, &w.src);
        w.resid[..n * d]
            .par_chunks_mut(d)
            .enumerate()
            .for_each(|(i, o)| {
                let (at, d) = (src[i], o.len());
                let tok = batch.tokens[at] as usize;
                let gate = (at % t == 0) as u8 as f32;
                embed_row(
                    &tok_emb[tok * d..(tok + 1) * d],
                    &vproj[(at / t) * d..(at / t + 1) * d],
                    gate,
                    o,
                )
            });
        let g = ops::Packed {
            start: &w.start[..b + 1],
            att_off: &w.att_off[..b + 1],
            h,
            hs,
        };
        let na = w.att_off[b]; // attention probabilities per layer
        for (l, o) in lay.blocks.iter().enumerate() {
            let (nd, nf) = (n * d, n * f);
            let (before, after) = w.resid.split_at_mut((l + 1) * nd);
            let x = &before[l * nd..]; // (N, d)
            let next = &mut after[..nd]; // (N, d)
            let ln1 = &mut w.ln1[l * nd..(l + 1) * nd];
            let (m1, r1) = (
                &mut w.ln1_mean[l * n..(l + 1) * n],
                &mut w.ln1_rstd[l * n..(l + 1) * n],
            );
            ops::layernorm_fwd(x, self.p(o.ln1_w, d), self.p(o.ln1_b, d), ln1, m1, r1, d);
            ops::linear_fwd(
                ln1,
                self.p(o.qkv_w, d * 3 * d),
                self.p(o.qkv_b, 3 * d),
                &mut w.qkv,
                n,
                d,
                3 * d,
                false,
            ); // (N, 3d)
            let (q, k, v) = (
                &mut w.q[l * nd..(l + 1) * nd],
                &mut w.k[l * nd..(l + 1) * nd],
                &mut w.v[l * nd..(l + 1) * nd],
            );
            ops::rope_split_packed(&w.qkv, &w.cos, &w.sin, q, k, v, g); // per row (H, len, hs) x 3
            let att = &mut w.att[l * na..(l + 1) * na]; // per row (H, len, len)
            let y = &mut w.y[l * nd..(l + 1) * nd]; // (Ne, d)
            ops::attention_fwd_packed(q, k, v, att, y, g);
            let mid = &mut w.mid[l * nd..(l + 1) * nd];
            mid.copy_from_slice(x);
            ops::linear_fwd(
                y,
                self.p(o.proj_w, d * d),
                self.p(o.proj_b, d),
                mid,
                n,
                d,
                d,
                true,
            ); // (N, d)
            let ln2 = &mut w.ln2[l * nd..(l + 1) * nd];
            let (m2, r2) = (
                &mut w.ln2_mean[l * n..(l + 1) * n],
                &mut w.ln2_rstd[l * n..(l + 1) * n],
            );
            ops::layernorm_fwd(mid, self.p(o.ln2_w, d), self.p(o.ln2_b, d), ln2, m2, r2, d);
            let fc = &mut w.fc[l * nf..(l + 1) * nf];
            ops::linear_fwd(
                ln2,
                self.p(o.fc_w, d * f),
                self.p(o.fc_b, f),
                fc,
                n,
                d,
                f,
                false,
            ); // (N, F)
            let act = &mut w.act[l * nf..(l + 1) * nf];
            ops::gelu_fwd(fc, act); // act (N, F); fc now holds gelu'(pre-activation)
            next.copy_from_slice(mid);
            ops::linear_fwd(
                act,
                self.p(o.out_w, f * d),
                self.p(o.out_b, d),
                next,
                n,
                f,
                d,
                true,
            ); // (N, d)
        }
        let nl = s.layers * n * d;
        ops::layernorm_fwd(
            &w.resid[nl..nl + n * d],
            self.p(lay.lnf_w, d),
            self.p(lay.lnf_b, d),
            &mut w.lnf,
            &mut w.lnf_mean[..n],
            &mut w.lnf_rstd[..n],
            d,
        );
        ops::linear_fwd(
            &w.lnf,
            self.p(lay.head_w, d * vocab),
            self.p(lay.head_b, vocab),
            &mut w.logits,
            n,
            d,
            vocab,
            false,
        ); // (N, V)
    }

    /// The loss of `targets` on `w.logits` and its gradient `w.dlogits` (N, V).
    fn loss(&self, w: &mut Work, targets: &Targets) -> f32 {
        let v = self.spec.vocab;
        let total: f32 = targets.weight.iter().sum::<f32>().max(1e-6);
        let n = w.ne;
        let (logits, src) = (&w.logits, &w.src);
        w.dlogits[..n * v]
            .par_chunks_mut(v)
            .zip(w.ce[..n].par_iter_mut())
            .enumerate()
            .for_each(|(i, (g, ce))| {
                *ce = position_loss_grad(&logits[i * v..(i + 1) * v], targets, src[i], total, g);
            });
        -w.ce[..n].iter().sum::<f32>() / total
    }

    /// The backward pass from `w.dlogits` to `w.grads` (overwritten).
    fn backward(&self, w: &mut Work, batch: &Batch) {
        let s = &self.spec;
        let (b, d, h, vd) = (batch.b, s.d_model, s.heads, s.voice_dim);
        let (f, hs, vocab) = (d * s.mlp_ratio, d / h, s.vocab);
        let n = w.ne; // packed rows
        let lay = &self.lay;
        let (nd, nf) = (n * d, n * f);
        let g = &mut w.grads;
        // Head: logits = lnf @ head_w + head_b.
        let (gw, gb) = pair(g, lay.head_w, d * vocab, vocab);
        ops::linear_bwd(
            &w.lnf,
            self.p(lay.head_w, d * vocab),
            &w.dlogits,
            gw,
            gb,
            Some(&mut w.dtmp),
            n,
            d,
            vocab,
        ); // dtmp (N, d)
        w.dres[..nd].fill(0.0);
        let nl = s.layers * nd;
        let (gw, gb) = pair(g, lay.lnf_w, d, d);
        ops::layernorm_bwd(
            &w.dtmp,
            &w.resid[nl..nl + nd],
            &w.lnf_mean[..n],
            &w.lnf_rstd[..n],
            self.p(lay.lnf_w, d),
            &mut w.dres,
            gw,
            gb,
            &mut w.ln_part,
            d,
        ); // dres (N, d)
        let gp = ops::Packed {
            start: &w.start[..b + 1],
            att_off: &w.att_off[..b + 1],
            h,
            hs,
        };
        let na = w.att_off[b];
        for (l, o) in lay.blocks.iter().enumerate().rev() {
            // MLP out: next = mid + act @ out_w + out_b.
            let (gw, gb) = pair(g, o.out_w, f * d, d);
            ops::linear_bwd(
                &w.act[l * nf..(l + 1) * nf],
                self.p(o.out_w, f * d),
                &w.dres,
                gw,
                gb,
                Some(&mut w.dact),
                n,
                f,
                d,
            ); // dact (N, F)
            ops::gelu_bwd(&w.fc[l * nf..(l + 1) * nf], &mut w.dact); // (N, F): times gelu'
            let (gw, gb) = pair(g, o.fc_w, d * f, f);
            ops::linear_bwd(
                &w.ln2[l * nd..(l + 1) * nd],
                self.p(o.fc_w, d * f),
                &w.dact,
                gw,
                gb,
                Some(&mut w.dtmp),
                n,
                d,
                f,
            ); // dtmp (N, d)
            let (gw, gb) = pair(g, o.ln2_w, d, d);
            ops::layernorm_bwd(
                &w.dtmp,
                &w.mid[l * nd..(l + 1) * nd],
                &w.ln2_mean[l * n..(l + 1) * n],
                &w.ln2_rstd[l * n..(l + 1) * n],
                self.p(o.ln2_w, d),
                &mut w.dres,
                gw,
                gb,
                &mut w.ln_part,
                d,
            ); // dres: d/d mid
               // Attention out: mid = x + y @ proj_w + proj_b.
            let (gw, gb) = pair(g, o.proj_w, d * d, d);
            ops::linear_bwd(
                &w.y[l * nd..(l + 1) * nd],
                self.p(o.proj_w, d * d),
                &w.dres,
                gw,
                gb,
                Some(&mut w.dy),
                n,
                d,
                d,
            ); // dy (N, d)
            ops::attention_bwd(
                &w.dy,
                &w.q[l * nd..(l + 1) * nd],
                &w.k[l * nd..(l + 1) * nd],
                &w.v[l * nd..(l + 1) * nd],
                &w.att[l * na..(l + 1) * na],
                &w.cos,
                &w.sin,
                (&mut w.dq, &mut w.dk, &mut w.dv, &mut w.ds),
                &mut w.dqkv,
                gp,
            ); // dqkv (Ne, 3d)
            let (gw, gb) = pair(g, o.qkv_w, d * 3 * d, 3 * d);
            ops::linear_bwd(
                &w.ln1[l * nd..(l + 1) * nd],
                self.p(o.qkv_w, d * 3 * d),
                &w.dqkv,
                gw,
                gb,
                Some(&mut w.dtmp),
                n,
                d,
                3 * d,
            ); // dtmp (N, d)
            let (gw, gb) = pair(g, o.ln1_w, d, d);
            ops::layernorm_bwd(
                &w.dtmp,
                &w.resid[l * nd..(l + 1) * nd],
                &w.ln1_mean[l * n..(l + 1) * n],
                &w.ln1_rstd[l * n..(l + 1) * n],
                self.p(o.ln1_w, d),
                &mut w.dres,
                gw,
                gb,
                &mut w.ln_part,
                d,
            ); // dres: d/d x
        }
        // Embedding and voice: rows summed in order.
        let ge = &mut g[lay.tok_emb..lay.tok_emb + vocab * d];
        ge.fill(0.0);
        for (i, &at) in w.src[..n].iter().enumerate() {
            let tok = batch.tokens[at] as usize;
            let row = &mut ge[tok * d..(tok + 1) * d];
            row.iter_mut()
                .zip(&w.dres[i * d..(i + 1) * d])
                .for_each(|(a, b)| *a += b);
        }
        // d voice_w (VD, d) = sum_r voice_r^T dres[r, 0] (the voice enters at column 0).
        let gv = &mut g[lay.voice_w..lay.voice_w + vd * d];
        gv.fill(0.0);
        for r in 0..b {
            if w.start[r + 1] == w.start[r] {
                continue; // a row with nothing trained on
            }
            let dr = &w.dres[w.start[r] * d..(w.start[r] + 1) * d];
            for (kk, &x) in batch.voice[r * vd..(r + 1) * vd].iter().enumerate() {
                gv[kk * d..(kk + 1) * d]
                    .iter_mut()
                    .zip(dr)
                    .for_each(|(a, g)| *a += x * g);
            }
        }
    }

    /// Loss and gradient into the buffers for `batch`; returns the loss.
    fn loss_and_grads(&self, w: &mut Work, batch: &Batch, targets: &Targets) -> f32 {
        self.forward(w, batch);
        let loss = self.loss(w, targets);
        self.backward(w, batch);
        loss
    }

    /// One AdamW step with the gradients `grads`, as burn's optimiser takes it: per tensor,
    /// the gradient clipped to norm `grad_clip`, then the moments, bias correction, and
    /// `p = p (1 - lr wd) - lr m / (sqrt(v) + eps)`, decay on matrices only.
    fn adamw(&mut self, grads: &[f32], lr: f64) {
        let s = self.optim_settings.clone();
        let total = self.lay.total;
        let st = self.optim.get_or_insert_with(|| AdamState {
            m: vec![0.0; total],
            v: vec![0.0; total],
            time: 0,
        });
        st.time += 1;
        let (b1, b2) = (s.beta1, s.beta2);
        let (c1, c2) = (1f32 - b1.powi(st.time), 1f32 - b2.powi(st.time));
        let lr32 = lr as f32;
        for ta in &self.lay.tensors {
            let r = ta.off..ta.off + ta.len;
            let g = &grads[r.clone()];
            let coef = if s.grad_clip > 0.0 {
                let norm = g.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32;
                (s.grad_clip / (norm + f32::MIN_POSITIVE)).min(1.0)
            } else {
                1.0
            };
            let decay_rate = if ta.shape.len() == 2 {
                lr * s.weight_decay as f64
            } else {
                0.0
            };
            let keep = (1.0 - decay_rate) as f32;
            const CH: usize = 4096;
            self.params[r.clone()]
                .par_chunks_mut(CH)
                .zip(st.m[r.clone()].par_chunks_mut(CH))
                .zip(st.v[r].par_chunks_mut(CH))
                .zip(g.par_chunks(CH))
                .for_each(|(((p, m), v), g)| {
                    let decay = (decay_rate != 0.0).then_some(keep);
                    adamw_chunk(p, m, v, g, coef, (b1, b2, c1, c2), decay, lr32)
                });
        }
    }

    /// One optimiser step, with the seconds spent in the forward pass (with the loss), the
    /// backward pass and the optimiser update.
    pub fn timed_step(&mut self, batch: &Batch, targets: &Targets, lr: f64) -> (f32, [f64; 3]) {
        let clock = std::time::Instant::now();
        let mut slot = self.work.lock().unwrap_or_else(|e| e.into_inner()).take();
        let w = self.work_for(&mut slot, batch, Some(&targets.weight));
        self.forward(w, batch);
        let loss = self.loss(w, targets);
        let forward = clock.elapsed().as_secs_f64();
        self.backward(w, batch);
        let backward = clock.elapsed().as_secs_f64() - forward;
        let grads = std::mem::take(&mut w.grads);
        self.adamw(&grads, lr);
        let w = slot.as_mut().expect("work");
        w.grads = grads;
        *self.work.lock().unwrap_or_else(|e| e.into_inner()) = slot;
        let optimizer = clock.elapsed().as_secs_f64() - forward - backward;
        (loss, [forward, backward, optimizer])
    }

    /// The forward pass of generation over `t` new positions per row (columns
    /// `col0..col0 + t`), keys and values appended to the cache; logits in `g.logits`.
    fn infer(&self, g: &mut GenWork, tokens: &[u32], pos: &[i64], col0: usize, t: usize) {
        let s = &self.spec;
        let (b, d, h) = (g.b, s.d_model, s.heads);
        let (n, f, hs, vocab) = (b * t, d * s.mlp_ratio, d / h, s.vocab);
        let lay = &self.lay;
        let (cos, sin) = rope_tables(pos, hs / 2);
        let x = &mut g.x[..n * d];
        embed_fwd(
            self.p(lay.tok_emb, vocab * d),
            tokens,
            &g.vproj,
            |i| (pos[i] == 0) as u8 as f32,
            x,
            t,
            d,
        );
        let sh = AttShape {
            b,
            h,
            t,
            s: g.smax,
            hs,
            col0,
        };
        // Per layer, the cache of every row the buffers can hold (rows finished and dropped
        // from the batch leave their slots unused).
        let cache = g.cap.0 * h * g.smax * hs;
        for (l, o) in lay.blocks.iter().enumerate() {
            let a = &mut g.a[..n * d];
            ops::layernorm_fwd(
                x,
                self.p(o.ln1_w, d),
                self.p(o.ln1_b, d),
                a,
                &mut g.mean[..n],
                &mut g.rstd[..n],
                d,
            );
            ops::linear_fwd(
                a,
                self.p(o.qkv_w, d * 3 * d),
                self.p(o.qkv_b, 3 * d),
                &mut g.qkv,
                n,
                d,
                3 * d,
                false,
            ); // (B, t, 3d)
            let (kc, vc) = (
                &mut g.kc[l * cache..(l + 1) * cache],
                &mut g.vc[l * cache..(l + 1) * cache],
            );
            ops::rope_split_fwd(&g.qkv, &cos, &sin, &mut g.q, kc, vc, sh); // q (B, H, t, hs); cache (B, H, S, hs)
            ops::attention_fwd(&g.q, kc, vc, &mut g.att, &mut g.y, &g.pads, sh); // y (B, t, d)
            ops::linear_fwd(
                &g.y,
                self.p(o.proj_w, d * d),
                self.p(o.proj_b, d),
                x,
                n,
                d,
                d,
                true,
            );
            ops::layernorm_fwd(
                x,
                self.p(o.ln2_w, d),
                self.p(o.ln2_b, d),
                a,
                &mut g.mean[..n],
                &mut g.rstd[..n],
                d,
            );
            let hbuf = &mut g.h[..n * f];
            ops::linear_fwd(
                a,
                self.p(o.fc_w, d * f),
                self.p(o.fc_b, f),
                hbuf,
                n,
                d,
                f,
                false,
            ); // (B, t, F)
            ops::gelu_inplace(hbuf);
            ops::linear_fwd(
                hbuf,
                self.p(o.out_w, f * d),
                self.p(o.out_b, d),
                x,
                n,
                f,
                d,
                true,
            );
        }
        let a = &mut g.a[..n * d];
        ops::layernorm_fwd(
            x,
            self.p(lay.lnf_w, d),
            self.p(lay.lnf_b, d),
            a,
            &mut g.mean[..n],
            &mut g.rstd[..n],
            d,
        );
        ops::linear_fwd(
            a,
            self.p(lay.head_w, d * vocab),
            self.p(lay.head_b, vocab),
            &mut g.logits,
            n,
            d,
            vocab,
            false,
        ); // (B, t, V)
    }

    /// Prefill, then decoding steps until the decoder stops or `max_new` tokens are chosen.
    fn decode(
        &self,
        works: &mut [GenWork],
        pre: &Prefill,
        max_new: usize,
        decoder: &mut dyn Decoder,
    ) {
        let (p, vocab) = (pre.p, self.spec.vocab);
        let toks: Vec<u32> = pre.tokens.iter().map(|&x| x as u32).collect();
        // Prefill, each group of rows on its own.
        works.par_iter_mut().for_each(|g| {
            let (r0, rows) = (g.r0, g.b);
            self.infer(
                g,
                &toks[r0 * p..(r0 + rows) * p],
                &pre.pos[r0 * p..(r0 + rows) * p],
                0,
                p,
            );
        });
        let b = pre.pads.len();
        let mut last = vec![0.0f32; b * vocab];
        // The last position's logits of every row in the batch; a finished row's are left
        // as they were (the decoder reads only the rows it has not finished).
        let gather = |works: &[GenWork], last: &mut [f32], t: usize| {
            for g in works {
                for i in 0..g.b {
                    let (at, r) = ((i * t + t - 1) * vocab, g.r0 + g.live[i]);
                    last[r * vocab..(r + 1) * vocab].copy_from_slice(&g.logits[at..at + vocab]);
                }
            }
        };
        for g in works.iter_mut() {
            g.live.clear();
            g.live.extend(0..g.b);
        }
        gather(works, &mut last, p);
        for step in 0..max_new {
            let Some(next) = decoder.step(&last) else {
                return;
            };
            if step + 1 == max_new {
                return;
            }
            for g in works.iter_mut() {
                drop_finished(g, &*decoder, self.spec.layers, self.spec.d_model);
            }
            works.par_iter_mut().filter(|g| g.b > 0).for_each(|g| {
                for i in 0..g.b {
                    let r = g.r0 + g.live[i];
                    g.pos[i] = (p - pre.pads[r] + step) as i64;
                    g.next[i] = next[r];
                }
                let (pos, toks) = (std::mem::take(&mut g.pos), std::mem::take(&mut g.next));
                self.infer(g, &toks[..g.b], &pos[..g.b], p + step, 1);
                (g.pos, g.next) = (pos, toks);
            });
            gather(works, &mut last, 1);
        }
    }
}

/// Runs `f` on a thread of rayon's global pool, so that the parallel loops inside it split
/// their work from a worker (work stealing) instead of each handing its work to the pool
/// from outside and waiting (a thread wake-up per loop: at one thread, as in a sweep's
/// worker processes, removing them made student-s training 1.5-1.7x faster). Where work runs
/// does not change what it computes: the split depends on the shapes alone.
fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Buffers of one batched generation: sized for the prefill (t = p), reused by each step.
struct GenWork {
    /// Rows, prompt columns and cache columns the buffers hold at most.
    cap: (usize, usize, usize),
    /// First row of the batch this group holds, and its rows.
    r0: usize,
    b: usize,
    /// Positions of the rows' new tokens, and the tokens (slots).
    pos: Vec<i64>,
    next: Vec<u32>,
    /// While decoding, the group's row (from `r0`) in each of its first `b` slots: slot `i`
    /// of `pads`, `pos`, `next`, the activations and the cache holds row `live[i]`.
    live: Vec<usize>,
    smax: usize,
    pads: Vec<usize>,
    vproj: Vec<f32>,
    x: Vec<f32>,
    a: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    qkv: Vec<f32>,
    q: Vec<f32>,
    att: Vec<f32>,
    y: Vec<f32>,
    h: Vec<f32>,
    logits: Vec<f32>,
    /// Keys and values per layer: (L, B, H, S, hs).
    kc: Vec<f32>,
    vc: Vec<f32>,
}

/// Drops the rows the decoder has finished from a decoding group's batch, moving the rows
/// still generating (their cache and pads) to the front slots in order: later steps compute
/// only those. Each row's values stay bit for bit what they were: the matmuls give a row the
/// same result whatever the row count (tested in `ops`), and a count that would leave a
/// one-row matmul tile (`ops::single_row_tile`) keeps one finished row more.
fn drop_finished(g: &mut GenWork, decoder: &dyn Decoder, layers: usize, d: usize) {
    let mut keep: Vec<usize> = (0..g.b)
        .filter(|&i| !decoder.finished(g.r0 + g.live[i]))
        .collect();
    if keep.len() == g.b {
        return;
    }
    if ops::single_row_tile(keep.len()) {
        let spare = (0..g.b).find(|i| !keep.contains(i)).unwrap_or(0);
        let at = keep.partition_point(|&i| i < spare);
        keep.insert(at, spare);
    }
    let slot = g.smax * d; // (H, S, hs) of one row
    let stride = g.cap.0 * slot; // one layer
    for (i, &src) in keep.iter().enumerate() {
        if src == i {
            continue;
        }
        for l in 0..layers {
            let (from, to) = (l * stride + src * slot, l * stride + i * slot);
            g.kc.copy_within(from..from + slot, to);
            g.vc.copy_within(from..from + slot, to);
        }
        g.pads[i] = g.pads[src];
        g.live[i] = g.live[src];
    }
    g.b = keep.len();
    g.live.truncate(g.b);
}

/// The token embedding plus the voice projection where `gate(i)` (row `i` of `out`) is 1:
/// `out (N, d) = tok_emb[tokens] + vproj[row] * gate`.
fn embed_fwd(
    tok_emb: &[f32],
    tokens: &[u32],
    vproj: &[f32],
    gate: impl Fn(usize) -> f32 + Sync,
    out: &mut [f32],
    t: usize,
    d: usize,
) {
    out.par_chunks_mut(d).enumerate().for_each(|(i, o)| {
        let tok = tokens[i] as usize;
        embed_row(
            &tok_emb[tok * d..(tok + 1) * d],
            &vproj[(i / t) * d..(i / t + 1) * d],
            gate(i),
            o,
        )
    });
}

ops::kernel! {
    /// One row of the embedding: `out (d) = e (d) + v (d) * gate`.
    fn embed_row(e: &[f32], v: &[f32], gate: f32, out: &mut [f32]) {
        for ((o, e), v) in out.iter_mut().zip(e).zip(v) {
            *o = e + v * gate;
        }
    }
}

ops::kernel! {
    /// A chunk of the AdamW update: `betas = (b1, b2, 1 - b1^t, 1 - b2^t)`, `decay` the
    /// factor `1 - lr wd` on matrices (none on vectors).
    fn adamw_chunk(
        p: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        g: &[f32],
        coef: f32,
        betas: (f32, f32, f32, f32),
        decay: Option<f32>,
        lr: f32,
    ) {
        let (b1, b2, c1, c2) = betas;
        for i in 0..p.len() {
            let gi = g[i] * coef;
            m[i] = m[i] * b1 + gi * (1.0 - b1);
            v[i] = v[i] * b2 + gi * gi * (1.0 - b2);
            let delta = (m[i] / c1) / ((v[i] / c2).sqrt() + ADAM_EPS);
            let decayed = match decay {
                Some(keep) => p[i] * keep,
                None => p[i],
            };
            p[i] = decayed - delta * lr;
        }
    }
}

ops::kernel! {
    /// One position's weighted loss term (`weight * ce`, ce the sum the loss negates) and
    /// `g (V) = d loss / d logits`, for the loss `-sum_i weight_i ce_i / total`:
    /// `ce = sum_v p_v ls_v [+ sum_v s_v lsT_v + rest log(sum_v mask_v qT_v + eps)]` with
    /// `ls`, `lsT` the log-softmax of `z` and of `z / T`, `qT = exp(lsT)`.
    fn position_loss_grad(z: &[f32], tg: &Targets, i: usize, total: f32, g: &mut [f32]) -> f32 {
        let v = z.len();
        let wt = tg.weight[i];
        if wt == 0.0 {
            // No loss here (prompt, padding): a zero gradient; a non-finite logit still makes
            // the loss non-finite, as in the other engines (0 * NaN).
            g.fill(0.0);
            return if z.iter().all(|x| x.is_finite()) {
                0.0
            } else {
                f32::NAN
            };
        }
        // Softmax of z * scale into `e` (unnormalised; returns log-sum-exp and the sum).
        let softmax = |scale: f32, e: &mut [f32]| {
            let m = z.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x * scale));
            let mut se = 0.0f32;
            for (e, &x) in e.iter_mut().zip(z) {
                *e = (x * scale - m).exp();
                se += *e;
            }
            (m + se.ln(), se)
        };
        let p = &tg.probs[i * v..(i + 1) * v];
        let (l0, se) = softmax(1.0, g);
        let sp: f32 = p.iter().sum();
        let mut ce = 0.0f32;
        for u in 0..v {
            ce += p[u] * (z[u] - l0);
            g[u] = p[u] - g[u] / se * sp;
        }
        if let Some(st) = &tg.soft {
            let it = st.inv_temperature;
            let sprobs = &st.probs[i * v..(i + 1) * v];
            // The tempered softmax, on the stack for vocabularies up to 512.
            let (mut stack, mut heap) = ([0.0f32; 512], Vec::new());
            let qt: &mut [f32] = if v <= 512 {
                &mut stack[..v]
            } else {
                heap.resize(v, 0.0);
                &mut heap
            };
            let (lt, set) = softmax(it, qt);
            qt.iter_mut().for_each(|q| *q /= set);
            let ss: f32 = sprobs.iter().sum();
            for u in 0..v {
                ce += sprobs[u] * (z[u] * it - lt);
                g[u] += it * (sprobs[u] - qt[u] * ss);
            }
            if !st.rest_mask.is_empty() {
                let mk = &st.rest_mask[i * v..(i + 1) * v];
                let mass: f32 = mk.iter().zip(qt.iter()).map(|(m, q)| m * q).sum();
                let me = mass + crate::model::train::REST_EPS;
                let rest = st.rest[i];
                ce += me.ln() * rest;
                if rest != 0.0 {
                    for u in 0..v {
                        g[u] += rest * it * qt[u] * (mk[u] - mass) / me;
                    }
                }
            }
        }
        let scale = -wt / total;
        g.iter_mut().for_each(|x| *x *= scale);
        ce * wt
    }
}

impl Engine for FusedEngine {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn logits(&self, batch: &Batch) -> Vec<f32> {
        in_pool(|| {
            let mut slot = self.work.lock().unwrap_or_else(|e| e.into_inner());
            let w = self.work_for(&mut slot, batch, None);
            self.forward(w, batch);
            w.logits[..batch.b * batch.t * self.spec.vocab].to_vec()
        })
    }

    fn set_optim(&mut self, s: OptimSettings) {
        if s != self.optim_settings {
            self.optim_settings = s;
            self.optim = None;
        }
    }

    fn train_step(&mut self, batch: &Batch, targets: &Targets, lr: f64) -> f32 {
        in_pool(|| self.timed_step(batch, targets, lr).0)
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
        let s = &self.spec;
        let (d, h, vd, vocab) = (s.d_model, s.heads, s.voice_dim, s.vocab);
        let f = d * s.mlp_ratio;
        let pre = Prefill::new(prompts, -1e9);
        let p = pre.p;
        let smax = p + max_new.max(1);
        // Rows are independent in generation: groups of GEN_ROWS rows run their whole
        // forward pass each on its own (one parallel region per decoding step).
        let groups = b.div_ceil(GEN_ROWS);
        let mut works = std::mem::take(&mut *self.gen.lock().unwrap_or_else(|e| e.into_inner()));
        works.truncate(groups);
        for gi in 0..groups {
            let (r0, rows) = (gi * GEN_ROWS, GEN_ROWS.min(b - gi * GEN_ROWS));
            let fits = works
                .get(gi)
                .is_some_and(|g| g.cap.0 >= rows && g.cap.1 >= p && g.cap.2 >= smax);
            if !fits {
                let n = GEN_ROWS * p;
                let z = |len: usize| vec![0.0f32; len];
                let g = GenWork {
                    cap: (GEN_ROWS, p, smax),
                    r0,
                    b: rows,
                    smax,
                    pads: vec![0; GEN_ROWS],
                    pos: vec![0; GEN_ROWS],
                    next: vec![0; GEN_ROWS],
                    live: Vec::with_capacity(GEN_ROWS),
                    vproj: z(GEN_ROWS * d),
                    x: z(n * d),
                    a: z(n * d),
                    mean: z(n),
                    rstd: z(n),
                    qkv: z(n * 3 * d),
                    q: z(n * d),
                    att: z(GEN_ROWS * h * p * smax),
                    y: z(n * d),
                    h: z(n * f),
                    logits: z(n * vocab),
                    kc: z(s.layers * GEN_ROWS * h * smax * (d / h)),
                    vc: z(s.layers * GEN_ROWS * h * smax * (d / h)),
                };
                if gi < works.len() {
                    works[gi] = g;
                } else {
                    works.push(g);
                }
            }
            let g = &mut works[gi];
            g.r0 = r0;
            g.b = rows;
            g.smax = smax;
            g.pads[..rows].copy_from_slice(&pre.pads[r0..r0 + rows]);
            // The voice projection (rows, d) = voice (rows, VD) @ voice_w (VD, d).
            let voice_w = self.p(self.lay.voice_w, vd * d);
            for r in 0..rows {
                let vr = &mut g.vproj[r * d..(r + 1) * d];
                vr.fill(0.0);
                for (kk, &x) in voice[(r0 + r) * vd..(r0 + r + 1) * vd].iter().enumerate() {
                    vr.iter_mut()
                        .zip(&voice_w[kk * d..(kk + 1) * d])
                        .for_each(|(o, wv)| *o += x * wv);
                }
            }
        }
        self.decode(&mut works, &pre, max_new, decoder);
        *self.gen.lock().unwrap_or_else(|e| e.into_inner()) = works;
    }

    fn weights(&self) -> Weights {
        let mut w = Weights::default();
        for ta in &self.lay.tensors {
            w.insert(
                ta.name.clone(),
                ta.shape.clone(),
                self.params[ta.off..ta.off + ta.len].to_vec(),
            );
        }
        w
    }

    fn loss_gradient(&self, batch: &Batch, targets: &Targets) -> (f32, Weights) {
        let mut slot = self.work.lock().unwrap_or_else(|e| e.into_inner());
        let w = self.work_for(&mut slot, batch, Some(&targets.weight));
        let loss = in_pool(|| self.loss_and_grads(w, batch, targets));
        let mut out = Weights::default();
        for ta in &self.lay.tensors {
            out.insert(
                ta.name.clone(),
                ta.shape.clone(),
                w.grads[ta.off..ta.off + ta.len].to_vec(),
            );
        }
        (loss, out)
    }

    fn set_weights(&mut self, w: &Weights) -> Result<()> {
        w.check_spec(&self.spec)?;
        for ta in &self.lay.tensors {
            let (_, data) = w.get(&ta.name)?;
            self.params[ta.off..ta.off + ta.len].copy_from_slice(data);
        }
        self.optim = None;
        Ok(())
    }

    fn save(&self, path: &Path) -> Result<()> {
        self.weights().save(path)
    }

    fn load(&mut self, path: &Path) -> Result<()> {
        self.set_weights(&Weights::load(path)?)
    }
}

/// Rows a training step on `batch` computes: each row up to its last position of positive
/// weight (the fused engine packs them).
pub fn packed_rows(batch: &Batch, targets: &Targets) -> usize {
    (0..batch.b)
        .map(|r| {
            (0..batch.t)
                .rev()
                .find(|&i| targets.weight[r * batch.t + i] != 0.0)
                .map_or(0, |i| i + 1)
        })
        .sum()
}

/// Seconds per training step on `b * t` rows of the linear layers' matrix products alone
/// (forward, input gradient and weight gradient of every linear layer, through the same tiled
/// `gemm` calls as a step), and their floating-point operations: the floor of the step's
/// matmul work (attention's small per-head products, written as loops, are not included).
pub fn linear_matmul_floor(spec: &ModelSpec, b: usize, t: usize, reps: usize) -> (f64, f64) {
    let (n, d) = (b * t, spec.d_model);
    let f = d * spec.mlp_ratio;
    let mut shapes = Vec::new();
    for _ in 0..spec.layers {
        shapes.extend([(d, 3 * d), (d, d), (d, f), (f, d)]);
    }
    shapes.push((d, spec.vocab));
    let bufs: Vec<_> = shapes
        .iter()
        .map(|&(i, o)| {
            let fill = |len: usize| (0..len).map(|x| ((x % 13) as f32 - 6.0) * 0.01).collect();
            let (x, w, dy): (Vec<f32>, Vec<f32>, Vec<f32>) =
                (fill(n * i), fill(i * o), fill(n * o));
            (
                i,
                o,
                x,
                w,
                dy,
                vec![0.0f32; n * o],
                vec![0.0f32; i * o],
                vec![0.0f32; n * i],
            )
        })
        .collect();
    let mut bufs = bufs;
    let mut run = || {
        for (i, o, x, w, dy, y, dw, dx) in bufs.iter_mut() {
            let (i, o) = (*i, *o);
            ops::matmul(n, o, i, x, i, 1, w, o, 1, y, o, false); // forward
            ops::matmul(i, o, n, x, 1, i, dy, o, 1, dw, o, false); // weight gradient
            ops::matmul(n, i, o, dy, o, 1, w, 1, o, dx, i, false); // input gradient
        }
    };
    run();
    let t0 = std::time::Instant::now();
    for _ in 0..reps {
        run();
    }
    let flops = shapes
        .iter()
        .map(|&(i, o)| 3.0 * 2.0 * (n * i * o) as f64)
        .sum();
    (t0.elapsed().as_secs_f64() / reps.max(1) as f64, flops)
}
