//! Antidistillation sampling (Savani et al. 2025, "Antidistillation Sampling").
//!
//! The teacher's next-token logits are shifted by `lambda * Delta(t)`, where `Delta(t)` is the
//! first-order effect on a *proxy student's* downstream loss of training the proxy on token `t`:
//! `Delta(t) = <grad_theta L_down(theta), grad_theta log p_theta(t | prefix)>`, estimated as in the
//! paper by a finite difference along the (here unit-normalised) downstream-loss gradient:
//! `Delta(t) ~ (log p_{theta + eps g}(t | prefix) - log p_theta(t | prefix)) / eps`. Sampling
//! favours tokens that, when a student trains on them (raising their log-probability), raise
//! its downstream loss.
//!
//! The proxy is a small model of the student family trained briefly on the world's ideal
//! responses; the downstream loss is its cross-entropy on held-out capability items. Both are
//! deterministic in the proxy seed and built once per process.

use crate::error::{Error, Result};
use crate::model::generate::{log_softmax, pack, LogitsProcessor};
use crate::model::train::{self, make_batch, Example, TrainConfig};
use crate::model::weights::Weights;
use crate::model::{Backend, Engine, ModelSpec};
use crate::rng::derive_rng;
use crate::world::vocab::Tok;
use crate::world::{ideal_response, Kind, Mix, VOICE_DIM};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// How the proxy is built.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxySpec {
    pub size: String,
    pub steps: usize,
    pub seed: u64,
    pub eps: f32,
}

/// The proxy at theta and at theta + eps * g / |g|.
pub struct Proxy {
    base: Box<dyn Engine>,
    shifted: Box<dyn Engine>,
    eps: f32,
    /// The proxy's downstream loss at theta (for reports and tests).
    pub downstream_loss: f32,
}

/// A logits processor: the proxy and the strength `lambda`.
pub struct AntiDistill {
    pub proxy: Arc<Proxy>,
    pub lambda: f32,
}

static PROXIES: OnceLock<Mutex<HashMap<String, Arc<Proxy>>>> = OnceLock::new();

/// Held-out capability items the downstream loss is measured on.
const DOWNSTREAM_ITEMS: usize = 512;

impl Proxy {
    /// The proxy for `spec`, built on first use and shared within the process.
    pub fn get(spec: &ProxySpec) -> Result<Arc<Proxy>> {
        let key = format!("{spec:?}");
        let cache = PROXIES.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(p) = cache.lock().map_err(poisoned)?.get(&key) {
            return Ok(p.clone());
        }
        let p = Arc::new(Self::build(spec)?);
        cache.lock().map_err(poisoned)?.insert(key, p.clone());
        Ok(p)
    }

    fn build(spec: &ProxySpec) -> Result<Proxy> {
        let model = ModelSpec::preset(&spec.size).ok_or_else(|| {
            Error::Invalid(format!(
                "antidistillation proxy size `{}` is not a preset (allowed: {})",
                spec.size,
                crate::model::spec::PRESETS.join(", ")
            ))
        })?;
        if !(spec.eps > 0.0 && spec.eps.is_finite()) {
            return Err(Error::Invalid(format!(
                "antidistillation eps must be positive, got {}",
                spec.eps
            )));
        }
        let mut base = crate::model::new_engine(Backend::FUSED, model.clone(), spec.seed)?;
        let mix = Mix::teacher_training();
        let mut rng = derive_rng(spec.seed, "antidistill/proxy-data");
        let cfg = TrainConfig {
            steps: spec.steps,
            warmup: (spec.steps / 10).max(1),
            ..TrainConfig::default()
        };
        let examples: Vec<Example> = (0..spec.steps * cfg.batch_size)
            .map(|_| {
                let p = mix.sample(&mut rng);
                crate::teacher::example(&p, &ideal_response(&p))
            })
            .collect();
        if spec.steps > 0 {
            train::train(base.as_mut(), &examples, &cfg, spec.seed, &mut |_, _| {});
        }
        // Downstream loss: capability items the proxy did not train on.
        let mut rng = derive_rng(spec.seed, "antidistill/downstream");
        let mut held_out = Vec::with_capacity(DOWNSTREAM_ITEMS);
        while held_out.len() < DOWNSTREAM_ITEMS {
            let p = mix.sample(&mut rng);
            if matches!(p.kind, Kind::Skill(..)) {
                held_out.push(crate::teacher::example(&p, &ideal_response(&p)));
            }
        }
        let refs: Vec<&Example> = held_out.iter().collect();
        let (batch, targets) = make_batch(&refs, model.vocab, model.context);
        let (downstream_loss, grad) = base.loss_gradient(&batch, &targets);
        let norm = grad
            .tensors
            .values()
            .flat_map(|(_, d)| d.iter())
            .map(|&x| (x as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        if !(norm > 0.0 && norm.is_finite()) {
            return Err(Error::Model(format!(
                "antidistillation proxy gradient has norm {norm}"
            )));
        }
        let mut w: Weights = base.weights();
        for (name, (_, d)) in w.tensors.iter_mut() {
            let (_, g) = grad.get(name)?;
            for (x, &gi) in d.iter_mut().zip(g) {
                *x += spec.eps * (gi as f64 / norm) as f32;
            }
        }
        let mut shifted = crate::model::new_engine(Backend::FUSED, model, spec.seed)?;
        shifted.set_weights(&w)?;
        Ok(Proxy {
            base,
            shifted,
            eps: spec.eps,
            downstream_loss,
        })
    }

    /// `Delta` for each row's next token: row-major `[rows, vocab]`.
    pub fn delta(&self, inputs: &[&[Tok]], generated: &[&[Tok]]) -> Vec<f32> {
        let spec = self.base.spec();
        let (v, ctx) = (spec.vocab, spec.context);
        let seqs: Vec<Vec<u32>> = inputs
            .iter()
            .zip(generated)
            .map(|(i, g)| {
                let mut s: Vec<u32> = i.iter().chain(g.iter()).copied().collect();
                if s.len() > ctx {
                    s.drain(..s.len() - ctx);
                }
                s
            })
            .collect();
        let silent = [0.0f32; VOICE_DIM];
        let rows: Vec<(&[u32], &[f32; VOICE_DIM])> =
            seqs.iter().map(|s| (&s[..], &silent)).collect();
        let batch = pack(&rows);
        let (a, b) = (self.base.logits(&batch), self.shifted.logits(&batch));
        let mut out = vec![0.0f32; seqs.len() * v];
        let (mut la, mut lb) = (vec![0.0f32; v], vec![0.0f32; v]);
        for (r, s) in seqs.iter().enumerate() {
            let at = (r * batch.t + s.len() - 1) * v;
            log_softmax(&a[at..at + v], &mut la);
            log_softmax(&b[at..at + v], &mut lb);
            for (o, (x, y)) in out[r * v..(r + 1) * v].iter_mut().zip(la.iter().zip(&lb)) {
                *o = (y - x) / self.eps;
            }
        }
        out
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::Invalid("antidistillation proxy cache poisoned".into())
}

impl LogitsProcessor for AntiDistill {
    fn process(&self, inputs: &[&[Tok]], generated: &[&[Tok]], logits: &mut [f32]) {
        if inputs.is_empty() || self.lambda == 0.0 {
            return;
        }
        let delta = self.proxy.delta(inputs, generated);
        for (l, d) in logits.iter_mut().zip(&delta) {
            *l += self.lambda * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::generate::model_input;
    use crate::model::train::make_batch;

    /// The finite-difference Delta predicts the first-order change of the downstream loss:
    /// training the proxy one small SGD step on the tokens with the largest Delta raises its
    /// downstream loss more than training on the tokens with the smallest Delta.
    #[test]
    fn delta_points_at_tokens_that_hurt_the_proxy_downstream() {
        let spec = ProxySpec {
            size: "tiny".into(),
            steps: 60,
            seed: 3,
            eps: 0.05,
        };
        let proxy = Proxy::get(&spec).unwrap();
        assert!(
            Arc::ptr_eq(&proxy, &Proxy::get(&spec).unwrap()),
            "built once"
        );
        let mix = Mix::teacher_training();
        let mut rng = derive_rng(9, "t");
        let prompts: Vec<_> = (0..64).map(|_| mix.sample(&mut rng)).collect();
        let inputs: Vec<Vec<u32>> = prompts.iter().map(model_input).collect();
        let irefs: Vec<&[u32]> = inputs.iter().map(|v| &v[..]).collect();
        let empty: Vec<&[u32]> = vec![&[]; inputs.len()];
        let delta = proxy.delta(&irefs, &empty);
        let v = proxy.base.spec().vocab;
        // For each prompt, a one-token response with the max-Delta or the min-Delta token.
        let pick = |best: bool| -> Vec<Example> {
            (0..inputs.len())
                .map(|r| {
                    let row = &delta[r * v..(r + 1) * v];
                    let mut idx: Vec<usize> = (0..v).collect();
                    idx.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
                    let t = if best { idx[v - 1] } else { idx[0] } as u32;
                    crate::teacher::example(&prompts[r], &[t])
                })
                .collect()
        };
        let downstream = |e: &mut dyn Engine| -> f32 {
            let mut rng = derive_rng(spec.seed, "antidistill/downstream");
            let mut held = Vec::new();
            while held.len() < DOWNSTREAM_ITEMS {
                let p = mix.sample(&mut rng);
                if matches!(p.kind, Kind::Skill(..)) {
                    held.push(crate::teacher::example(&p, &ideal_response(&p)));
                }
            }
            let refs: Vec<&Example> = held.iter().collect();
            let (b, t) = make_batch(&refs, v, e.spec().context);
            e.loss_gradient(&b, &t).0
        };
        let after = |ex: Vec<Example>| -> f32 {
            let mut e =
                crate::model::new_engine(Backend::FUSED, proxy.base.spec().clone(), 0).unwrap();
            e.set_weights(&proxy.base.weights()).unwrap();
            let refs: Vec<&Example> = ex.iter().collect();
            let (b, t) = make_batch(&refs, v, e.spec().context);
            // One plain SGD step.
            let (_, g) = e.loss_gradient(&b, &t);
            let mut w = e.weights();
            for (name, (_, d)) in w.tensors.iter_mut() {
                for (x, gi) in d.iter_mut().zip(g.get(name).unwrap().1) {
                    *x -= 0.05 * gi;
                }
            }
            e.set_weights(&w).unwrap();
            downstream(e.as_mut())
        };
        let (up, down) = (after(pick(true)), after(pick(false)));
        assert!(
            up > proxy.downstream_loss && up > down,
            "max-Delta tokens: {up}, min-Delta tokens: {down}, before: {}",
            proxy.downstream_loss
        );
    }
}
