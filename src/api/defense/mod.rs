//! Output defenses: composable transformations of what the API generates and returns, each with
//! a strength knob. Configured as a list under `api.defenses`, applied in order.

pub mod antidistill;
pub mod watermark;

use crate::model::generate::{Chain, LogitsProcessor};
use crate::model::GenParams;
use crate::rng::derive_rng;
use crate::world::vocab::{Tok, ENDTHINK, EOS, SUMMARY, THINK, VOCAB_SIZE};
use crate::world::Prompt;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use watermark::GreenList;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DefenseConfig {
    /// Round returned probabilities to `decimals` decimal places (entries that round to 0 are
    /// dropped).
    Rounding { decimals: u32 },
    /// Add Gaussian noise (standard deviation `std`, in nats) to returned logprobs.
    Noise { std: f32 },
    /// Sample at a temperature of at least `min` whatever the request asks.
    TemperatureFloor { min: f32 },
    /// Return at most `k` top logprobs per position (0: text only).
    LogprobsCap { k: usize },
    /// Withhold the reasoning trace (billed, not returned).
    HideReasoning,
    /// Replace the reasoning trace by a summary: `<summary>` and the trace's last token.
    SummariseReasoning,
    /// KGW watermark: green share `gamma` of the vocabulary per previous token, logit bias
    /// `delta`, on a keyed `share` of requests (1 = all).
    Watermark {
        gamma: f32,
        delta: f32,
        key: u64,
        #[serde(default = "one")]
        share: f64,
    },
    /// Keyed response flipping for ownership checks (DAWN): a keyed `rate` of prompts get a
    /// deterministic wrong final answer token.
    Flip { rate: f64, key: u64 },
    /// Antidistillation sampling (Savani et al. 2025): next-token logits shifted by `lambda`
    /// times a proxy student's finite-difference downstream-loss effect (see
    /// [`antidistill`]). The proxy (`proxy` preset, `proxy_steps` training steps, `seed`) is
    /// built once per process.
    Antidistillation {
        lambda: f32,
        #[serde(default = "default_eps")]
        eps: f32,
        #[serde(default = "default_proxy")]
        proxy: String,
        #[serde(default = "default_proxy_steps")]
        proxy_steps: usize,
        #[serde(default)]
        seed: u64,
    },
}

fn default_eps() -> f32 {
    0.05
}

fn default_proxy() -> String {
    "student-s".into()
}

fn default_proxy_steps() -> usize {
    300
}

/// A built defense stack.
pub struct Defenses {
    configs: Vec<DefenseConfig>,
    watermark: Option<(GreenList, f32, u64, f64)>,
    antidistill: Option<antidistill::AntiDistill>,
}

fn one() -> f64 {
    1.0
}

impl Defenses {
    pub fn new(configs: &[DefenseConfig]) -> crate::error::Result<Defenses> {
        let watermark = configs.iter().find_map(|c| match c {
            DefenseConfig::Watermark {
                gamma,
                delta,
                key,
                share,
            } => Some((GreenList::new(*key, *gamma), *delta, *key, *share)),
            _ => None,
        });
        let mut antidistill = None;
        for c in configs {
            if let DefenseConfig::Antidistillation {
                lambda,
                eps,
                proxy,
                proxy_steps,
                seed,
            } = c
            {
                let proxy = antidistill::Proxy::get(&antidistill::ProxySpec {
                    size: proxy.clone(),
                    steps: *proxy_steps,
                    seed: *seed,
                    eps: *eps,
                })?;
                antidistill = Some(antidistill::AntiDistill {
                    proxy,
                    lambda: *lambda,
                });
            }
        }
        Ok(Defenses {
            configs: configs.to_vec(),
            watermark,
            antidistill,
        })
    }

    /// The stack an API serves with: its reasoning policy, then its configured defenses.
    pub fn for_api(api: &crate::api::ApiConfig) -> crate::error::Result<Defenses> {
        let mut configs = Vec::with_capacity(api.defenses.len() + 1);
        if api.reasoning == crate::api::Reasoning::Hidden {
            configs.push(DefenseConfig::HideReasoning);
        }
        configs.extend(api.defenses.iter().cloned());
        Defenses::new(&configs)
    }

    /// Serve prompts through the whole stack: parameters, generation (with the watermark where
    /// it applies), then the response transformations. Returns each served generation and the
    /// number of trace tokens withheld from it (billed, not returned).
    pub fn serve(
        &self,
        teacher: &crate::teacher::Teacher,
        prompts: &[&Prompt],
        mut params: Vec<GenParams>,
        rng: &mut crate::rng::SimRng,
    ) -> Vec<(crate::model::Generation, usize)> {
        for p in params.iter_mut() {
            self.params(p);
        }
        let gens = self.generate(teacher, prompts, &params, rng);
        prompts
            .iter()
            .zip(gens)
            .map(|(p, mut g)| {
                let withheld = self.after(p, &mut g.tokens, &mut g.top, rng);
                (g, withheld)
            })
            .collect()
    }

    /// Adjust generation parameters before generation (temperature floor).
    pub fn params(&self, p: &mut GenParams) {
        for c in &self.configs {
            if let DefenseConfig::TemperatureFloor { min } = c {
                p.temperature = p.temperature.max(*min);
            }
        }
    }

    /// The logit processor generation must apply to `prompt`, if any (the watermark, on its
    /// keyed share of prompts).
    pub fn processor(
        &self,
        prompt: &Prompt,
    ) -> Option<&dyn crate::model::generate::LogitsProcessor> {
        self.watermark
            .as_ref()
            .filter(|w| keyed_unit(w.2, "watermark", &prompt.tokens) < w.3)
            .map(|w| w as &dyn crate::model::generate::LogitsProcessor)
    }

    /// Generate for `prompts` with the processor each needs: prompts with and without the
    /// watermark go as two batches.
    pub fn generate(
        &self,
        teacher: &crate::teacher::Teacher,
        prompts: &[&Prompt],
        params: &[GenParams],
        rng: &mut crate::rng::SimRng,
    ) -> Vec<crate::model::Generation> {
        let marked: Vec<bool> = prompts
            .iter()
            .map(|p| self.processor(p).is_some())
            .collect();
        let mut out = vec![crate::model::Generation::default(); prompts.len()];
        for want in [false, true] {
            let idx: Vec<usize> = (0..prompts.len()).filter(|&i| marked[i] == want).collect();
            if idx.is_empty() {
                continue;
            }
            let ps: Vec<&Prompt> = idx.iter().map(|&i| prompts[i]).collect();
            let pr: Vec<GenParams> = idx.iter().map(|&i| params[i]).collect();
            let mut chain: Vec<&dyn LogitsProcessor> = Vec::new();
            if let Some(a) = &self.antidistill {
                chain.push(a);
            }
            if want {
                chain.extend(self.processor(ps[0]));
            }
            let chain = Chain(chain);
            let processor = (!chain.0.is_empty()).then_some(&chain as &dyn LogitsProcessor);
            for (&i, g) in idx.iter().zip(teacher.respond(&ps, &pr, rng, processor)) {
                out[i] = g;
            }
        }
        out
    }

    /// The logprob defenses (cap, rounding, noise) on scores returned by the scoring mode.
    pub fn after_scores(&self, top: &mut Vec<Vec<(Tok, f32)>>, rng: &mut crate::rng::SimRng) {
        for c in &self.configs {
            transform_logprobs(c, top, rng);
        }
    }

    /// Transform a served response: tokens and per-position top-k `(token, logprob)`.
    /// Returns the number of trace tokens withheld (billed, not returned).
    pub fn after(
        &self,
        prompt: &Prompt,
        tokens: &mut Vec<Tok>,
        top: &mut Vec<Vec<(Tok, f32)>>,
        rng: &mut crate::rng::SimRng,
    ) -> usize {
        let mut hidden = 0;
        for c in &self.configs {
            if transform_logprobs(c, top, rng) {
                continue;
            }
            match c {
                DefenseConfig::HideReasoning => hidden += hide_reasoning(tokens, top),
                DefenseConfig::SummariseReasoning => hidden += summarise(tokens, top),
                DefenseConfig::Flip { rate, key } => {
                    if flipped(prompt, *key, *rate) {
                        flip(tokens, top, *key);
                    }
                }
                DefenseConfig::Rounding { .. }
                | DefenseConfig::Noise { .. }
                | DefenseConfig::LogprobsCap { .. }
                | DefenseConfig::TemperatureFloor { .. }
                | DefenseConfig::Watermark { .. }
                | DefenseConfig::Antidistillation { .. } => {}
            }
        }
        hidden
    }
}

impl crate::model::generate::LogitsProcessor for (GreenList, f32, u64, f64) {
    fn process(&self, _inputs: &[&[Tok]], generated: &[&[Tok]], logits: &mut [f32]) {
        for (g, row) in generated.iter().zip(logits.chunks_mut(VOCAB_SIZE)) {
            let prev = g.last().copied().unwrap_or(crate::world::vocab::SEP);
            self.0.bias(prev, row, self.1);
        }
    }
}

/// Apply `c` if it acts on returned logprobs only (rounding, noise, cap); returns whether it
/// does. Shared by served responses and the scoring mode.
fn transform_logprobs(
    c: &DefenseConfig,
    top: &mut Vec<Vec<(Tok, f32)>>,
    rng: &mut crate::rng::SimRng,
) -> bool {
    match c {
        DefenseConfig::Rounding { decimals } => {
            let scale = 10f32.powi(*decimals as i32);
            for row in top.iter_mut() {
                row.retain_mut(|(_, lp)| {
                    let p = (lp.exp() * scale).round() / scale;
                    *lp = p.ln();
                    p > 0.0
                });
            }
        }
        DefenseConfig::Noise { std } => {
            for row in top.iter_mut() {
                for (_, lp) in row.iter_mut() {
                    *lp += std * crate::rng::normal(rng);
                }
                row.sort_by(|a, b| b.1.total_cmp(&a.1));
            }
        }
        DefenseConfig::LogprobsCap { k } => {
            if *k == 0 {
                top.clear();
            }
            for row in top.iter_mut() {
                row.truncate(*k);
            }
        }
        _ => return false,
    }
    true
}

/// Positions of THINK and of its ENDTHINK (or the last token when the trace is unclosed).
fn trace_span(tokens: &[Tok]) -> Option<(usize, usize)> {
    let open = tokens.iter().position(|&t| t == THINK)?;
    let close = tokens
        .iter()
        .position(|&t| t == ENDTHINK)
        .unwrap_or(tokens.len() - 1);
    Some((open, close))
}

/// Remove `THINK trace ENDTHINK` (and its logprobs); returns tokens withheld.
pub fn hide_reasoning(tokens: &mut Vec<Tok>, top: &mut Vec<Vec<(Tok, f32)>>) -> usize {
    let Some((open, close)) = trace_span(tokens) else {
        return 0;
    };
    tokens.drain(open..=close);
    if top.len() > open {
        top.drain(open..=close.min(top.len() - 1));
    }
    close + 1 - open
}

/// Replace `THINK trace ENDTHINK` by `SUMMARY last`; returns tokens withheld.
fn summarise(tokens: &mut Vec<Tok>, top: &mut Vec<Vec<(Tok, f32)>>) -> usize {
    let Some((open, close)) = trace_span(tokens) else {
        return 0;
    };
    let last = if close > open + 1 {
        tokens[close - 1]
    } else {
        SUMMARY
    };
    let removed = close + 1 - open;
    tokens.splice(open..=close, [SUMMARY, last]);
    if top.len() > open {
        let end = close.min(top.len() - 1);
        top.splice(open..=end, [vec![(SUMMARY, 0.0)], vec![(last, 0.0)]]);
    }
    removed.saturating_sub(2)
}

fn keyed_unit(key: u64, label: &str, toks: &[Tok]) -> f64 {
    let mut h = Sha256::new();
    h.update(key.to_le_bytes());
    h.update(label.as_bytes());
    for t in toks {
        h.update(t.to_le_bytes());
    }
    let b: [u8; 32] = h.finalize().into();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64 / u64::MAX as f64
}

/// Whether the keyed flipping defense flips this prompt.
pub fn flipped(prompt: &Prompt, key: u64, rate: f64) -> bool {
    keyed_unit(key, "flip", &prompt.tokens) < rate
}

/// Replace the last token before EOS by a keyed other token.
fn flip(tokens: &mut [Tok], top: &mut [Vec<(Tok, f32)>], key: u64) {
    let end = tokens
        .iter()
        .position(|&t| t == EOS)
        .unwrap_or(tokens.len());
    if end == 0 {
        return;
    }
    let i = end - 1;
    let old = tokens[i];
    let mut rng = derive_rng(key, &format!("flip/{old}"));
    let mut new = old;
    while new == old || new == EOS {
        new = rng.random_range(0..VOCAB_SIZE as u32);
    }
    tokens[i] = new;
    if let Some(row) = top.get_mut(i) {
        // The flipped token is reported as the top choice.
        let best = row.first().map_or(0.0, |x| x.1);
        row.retain(|x| x.0 != new);
        row.insert(0, (new, best));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::vocab::digit;
    use crate::world::{Kind, Mix, Skill, Tier};

    fn prompt() -> Prompt {
        Prompt {
            kind: Kind::Skill(Skill::Sort, Tier::Easy),
            tokens: vec![crate::world::vocab::SORT, digit(3), digit(1)],
            voice: None,
        }
    }

    #[test]
    fn rounding_returns_only_k_decimal_probabilities() {
        let d = Defenses::new(&[DefenseConfig::Rounding { decimals: 2 }]).unwrap();
        let mut rng = derive_rng(0, "t");
        let mut top = vec![vec![
            (1, 0.8234f32.ln()),
            (2, 0.1712f32.ln()),
            (3, 0.004f32.ln()),
        ]];
        let mut toks = vec![1, EOS];
        d.after(&prompt(), &mut toks, &mut top, &mut rng);
        assert_eq!(top[0].len(), 2, "0.004 rounds to 0 and is dropped");
        for &(_, lp) in &top[0] {
            let p = lp.exp() * 100.0;
            assert!((p - p.round()).abs() < 1e-3, "{p}");
        }
        assert!((top[0][0].1.exp() - 0.82).abs() < 1e-6);
    }

    #[test]
    fn noise_has_the_configured_spread() {
        let d = Defenses::new(&[DefenseConfig::Noise { std: 0.5 }]).unwrap();
        let mut rng = derive_rng(0, "t");
        let mut diffs = Vec::new();
        for _ in 0..2000 {
            let mut top = vec![vec![(1, -1.0f32)]];
            d.after(&prompt(), &mut vec![1], &mut top, &mut rng);
            diffs.push((top[0][0].1 + 1.0) as f64);
        }
        let mean = diffs.iter().sum::<f64>() / 2000.0;
        let sd = (diffs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 1999.0).sqrt();
        assert!(mean.abs() < 0.05 && (sd - 0.5).abs() < 0.05, "{mean} {sd}");
    }

    #[test]
    fn temperature_floor_raises_greedy_requests() {
        let d = Defenses::new(&[DefenseConfig::TemperatureFloor { min: 0.7 }]).unwrap();
        let mut p = GenParams {
            max_new: 8,
            temperature: 0.0,
            top_k: 0,
        };
        d.params(&mut p);
        assert_eq!(p.temperature, 0.7);
        let mut p = GenParams {
            max_new: 8,
            temperature: 1.2,
            top_k: 0,
        };
        d.params(&mut p);
        assert_eq!(p.temperature, 1.2);
    }

    #[test]
    fn logprob_cap_and_hidden_reasoning() {
        let mut rng = derive_rng(0, "t");
        let d = Defenses::new(&[
            DefenseConfig::LogprobsCap { k: 1 },
            DefenseConfig::HideReasoning,
        ])
        .unwrap();
        let mut toks = vec![THINK, digit(3), ENDTHINK, digit(7), EOS];
        let mut top: Vec<Vec<(Tok, f32)>> =
            toks.iter().map(|&t| vec![(t, -0.1), (1, -3.0)]).collect();
        let hidden = d.after(&prompt(), &mut toks, &mut top, &mut rng);
        assert_eq!((toks, hidden), (vec![digit(7), EOS], 3));
        assert_eq!(top, vec![vec![(digit(7), -0.1)], vec![(EOS, -0.1)]]);
        let off = Defenses::new(&[DefenseConfig::LogprobsCap { k: 0 }]).unwrap();
        let mut top = vec![vec![(1, -0.1)]];
        off.after(&prompt(), &mut vec![1], &mut top, &mut rng);
        assert!(top.is_empty());
    }

    #[test]
    fn summary_replaces_the_trace_with_its_conclusion() {
        let d = Defenses::new(&[DefenseConfig::SummariseReasoning]).unwrap();
        let mut rng = derive_rng(0, "t");
        let mut toks = vec![THINK, digit(3), digit(4), digit(7), ENDTHINK, digit(7), EOS];
        let mut top: Vec<Vec<(Tok, f32)>> = toks.iter().map(|&t| vec![(t, -0.1)]).collect();
        let hidden = d.after(&prompt(), &mut toks, &mut top, &mut rng);
        assert_eq!(toks, vec![SUMMARY, digit(7), digit(7), EOS]);
        assert_eq!(top.len(), toks.len());
        assert_eq!(hidden, 3);
    }

    #[test]
    fn flipping_is_keyed_deterministic_and_at_its_rate() {
        let mut rng = derive_rng(1, "t");
        let mix = Mix::benign();
        let prompts: Vec<Prompt> = (0..4000).map(|_| mix.sample(&mut rng)).collect();
        let n = prompts.iter().filter(|p| flipped(p, 9, 0.1)).count();
        assert!((n as f64 / 4000.0 - 0.1).abs() < 0.015, "{n}");
        // Another key flips a different set.
        let overlap = prompts
            .iter()
            .filter(|p| flipped(p, 9, 0.1) && flipped(p, 10, 0.1))
            .count();
        assert!(overlap < n / 3);
        let d = Defenses::new(&[DefenseConfig::Flip { rate: 1.0, key: 9 }]).unwrap();
        let run = |rng: &mut crate::rng::SimRng| {
            let mut toks = vec![digit(1), digit(3), EOS];
            d.after(&prompt(), &mut toks, &mut vec![], rng);
            toks
        };
        let a = run(&mut rng);
        assert_eq!(a, run(&mut rng), "same prompt, same flip");
        assert_eq!(a[0], digit(1));
        assert_ne!(a[1], digit(3));
    }
}
