//! Engine-agnostic batched generation: greedy or temperature sampling, per-position top-k
//! logprobs, stop at EOS. Engines only run the network; choosing tokens happens here.

use super::engine::{Batch, Decoder, Engine};
use crate::rng::SimRng;
use crate::world::vocab::{Tok, BOS, EOS, PAD, SEP};
use crate::world::{Prompt, VOICE_DIM};
use rand::Rng;

/// Largest top-k an engine returns (the API caps what it exposes separately).
pub const MAX_TOP_K: usize = 20;

/// How to generate for one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenParams {
    /// Maximum response tokens (EOS included).
    pub max_new: usize,
    /// 0 = greedy; otherwise softmax(logits / temperature) sampling.
    pub temperature: f32,
    /// Top-k logprobs to record per generated position (0 = none, at most [`MAX_TOP_K`]).
    pub top_k: usize,
}

impl GenParams {
    /// Greedy decoding of up to `max_new` tokens, no logprobs.
    pub fn greedy(max_new: usize) -> GenParams {
        GenParams {
            max_new,
            temperature: 0.0,
            top_k: 0,
        }
    }
}

/// Changes next-token logits during generation (e.g. a watermark's green-list bias). The
/// returned logprobs are those of the processed distribution: what the API serves.
pub trait LogitsProcessor: Sync {
    /// Called once per decoding step for the rows still generating: `inputs[i]` is row `i`'s
    /// model input (BOS .. SEP), `generated[i]` its response tokens so far, and `logits` the
    /// row-major `[rows, vocab]` next-token logits, changed in place.
    fn process(&self, inputs: &[&[Tok]], generated: &[&[Tok]], logits: &mut [f32]);
}

/// Processors applied one after another.
pub struct Chain<'a>(pub Vec<&'a dyn LogitsProcessor>);

impl LogitsProcessor for Chain<'_> {
    fn process(&self, inputs: &[&[Tok]], generated: &[&[Tok]], logits: &mut [f32]) {
        for p in &self.0 {
            p.process(inputs, generated, logits);
        }
    }
}

/// One generated response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generation {
    /// Response tokens up to and including EOS (or cut at `max_new`).
    pub tokens: Vec<Tok>,
    /// Per generated position, the top-k `(token, logprob)` pairs, most likely first.
    pub top: Vec<Vec<(Tok, f32)>>,
}

/// Model input for a prompt: `BOS tokens SEP`.
pub fn model_input(p: &Prompt) -> Vec<u32> {
    let mut v = Vec::with_capacity(p.tokens.len() + 2);
    v.push(BOS);
    v.extend(&p.tokens);
    v.push(SEP);
    v
}

/// Log-softmax of one row of logits, in place into `out`.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + logits.iter().map(|&x| (x - m).exp()).sum::<f32>().ln();
    for (o, &x) in out.iter_mut().zip(logits) {
        *o = x - lse;
    }
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
/// A selection in one pass (`O(len k)`), the order of a full sort by `total_cmp`.
pub fn top_k_indices(xs: &[f32], k: usize) -> Vec<usize> {
    use std::cmp::Ordering::Less;
    let k = k.min(xs.len());
    let mut top: Vec<usize> = Vec::with_capacity(k + 1);
    for (i, x) in xs.iter().enumerate() {
        // Full: only a value strictly above the last kept one enters (an equal one has the
        // larger index, so it sorts after it).
        if top.len() == k
            && top
                .last()
                .is_none_or(|&j| x.total_cmp(&xs[j]) != std::cmp::Ordering::Greater)
        {
            continue;
        }
        // After every kept value at least as large (earlier indices first among equals).
        let at = top.partition_point(|&j| xs[j].total_cmp(x) != Less);
        top.insert(at, i);
        top.truncate(k);
    }
    top
}

/// Chooses tokens (greedy or sampled), records top-k logprobs, stops rows at EOS.
pub(crate) struct SamplingDecoder<'a> {
    params: &'a [GenParams],
    out: Vec<Generation>,
    done: Vec<bool>,
    rng: &'a mut SimRng,
    vocab: usize,
    scratch: Vec<f32>,
    processor: Option<&'a dyn LogitsProcessor>,
    inputs: Vec<Vec<Tok>>,
    processed: Vec<f32>,
}

impl<'a> SamplingDecoder<'a> {
    pub(crate) fn new(
        params: &'a [GenParams],
        rng: &'a mut SimRng,
        vocab: usize,
        processor: Option<&'a dyn LogitsProcessor>,
        inputs: Vec<Vec<Tok>>,
    ) -> SamplingDecoder<'a> {
        SamplingDecoder {
            params,
            out: vec![Generation::default(); params.len()],
            done: vec![false; params.len()],
            rng,
            vocab,
            scratch: vec![0.0; vocab],
            processor,
            inputs,
            processed: Vec::new(),
        }
    }

    /// Tokens generated so far for `row`.
    pub(crate) fn tokens(&self, row: usize) -> &[Tok] {
        &self.out[row].tokens
    }

    pub(crate) fn into_outputs(self) -> Vec<Generation> {
        self.out
    }
}

impl Decoder for SamplingDecoder<'_> {
    fn step(&mut self, logits: &[f32]) -> Option<Vec<u32>> {
        if self.done.iter().all(|&d| d) {
            return None;
        }
        let v = self.vocab;
        let mut next = vec![PAD; self.done.len()];
        // Rows still generating, and (with a processor) their processed logits.
        let active: Vec<usize> = (0..self.done.len()).filter(|&r| !self.done[r]).collect();
        if let Some(proc_) = self.processor {
            self.processed.clear();
            for &r in &active {
                self.processed
                    .extend_from_slice(&logits[r * v..(r + 1) * v]);
            }
            let inputs: Vec<&[Tok]> = active.iter().map(|&r| &self.inputs[r][..]).collect();
            let generated: Vec<&[Tok]> = active.iter().map(|&r| &self.out[r].tokens[..]).collect();
            proc_.process(&inputs, &generated, &mut self.processed);
        }
        for (a, &r) in active.iter().enumerate() {
            let p = &self.params[r];
            let row = if self.processor.is_some() {
                &self.processed[a * v..(a + 1) * v]
            } else {
                &logits[r * v..(r + 1) * v]
            };
            log_softmax(row, &mut self.scratch);
            let tok = if p.temperature <= 0.0 {
                top_k_indices(row, 1)[0] as u32
            } else {
                // Sample from softmax(logits / T) by inverse CDF.
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let w: Vec<f32> = row
                    .iter()
                    .map(|&x| ((x - m) / p.temperature).exp())
                    .collect();
                let mut u = self.rng.random::<f32>() * w.iter().sum::<f32>();
                let mut pick = v - 1;
                for (i, &x) in w.iter().enumerate() {
                    if u < x {
                        pick = i;
                        break;
                    }
                    u -= x;
                }
                pick as u32
            };
            let g = &mut self.out[r];
            if p.top_k > 0 {
                let k = p.top_k.min(MAX_TOP_K);
                g.top.push(
                    top_k_indices(&self.scratch, k)
                        .into_iter()
                        .map(|i| (i as u32, self.scratch[i]))
                        .collect(),
                );
            }
            g.tokens.push(tok);
            if tok == EOS || g.tokens.len() >= p.max_new {
                self.done[r] = true;
            }
            next[r] = tok;
        }
        if self.done.iter().all(|&d| d) {
            None
        } else {
            Some(next)
        }
    }

    fn finished(&self, row: usize) -> bool {
        self.done[row]
    }
}

/// Generate responses for many prompts in batches of at most `batch_size`.
pub fn generate(
    engine: &dyn Engine,
    prompts: &[&Prompt],
    params: &[GenParams],
    batch_size: usize,
    rng: &mut SimRng,
    processor: Option<&dyn LogitsProcessor>,
) -> Vec<Generation> {
    assert_eq!(prompts.len(), params.len());
    let vocab = engine.spec().vocab;
    let ctx = engine.spec().context;
    let mut out = Vec::with_capacity(prompts.len());
    // Sort by prompt length so that batches need little padding; restore order at the end.
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| prompts[i].tokens.len());
    let mut results: Vec<Option<Generation>> = vec![None; prompts.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let inputs: Vec<Vec<u32>> = chunk.iter().map(|&i| model_input(prompts[i])).collect();
        let refs: Vec<&[u32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let voice: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| prompts[i].voice_input())
            .collect();
        let longest = inputs.iter().map(|v| v.len()).max().unwrap_or(0);
        let chunk_params: Vec<GenParams> = chunk.iter().map(|&i| params[i]).collect();
        let max_new = chunk_params
            .iter()
            .map(|p| p.max_new)
            .max()
            .unwrap_or(0)
            .min(ctx.saturating_sub(longest));
        let mut dec = SamplingDecoder::new(&chunk_params, rng, vocab, processor, inputs.clone());
        if max_new > 0 {
            engine.generate(&refs, &voice, max_new, &mut dec);
        }
        for (&i, g) in chunk.iter().zip(dec.into_outputs()) {
            results[i] = Some(g);
        }
    }
    out.extend(results.into_iter().map(|g| g.unwrap_or_default()));
    out
}

/// Pack prompt+response sequences into a right-padded [`Batch`]. Returns the batch and, per
/// row, the index of the first response token (the position whose *input* is SEP predicts it).
pub fn pack(seqs: &[(&[u32], &[f32; VOICE_DIM])]) -> Batch {
    let b = seqs.len();
    let t = seqs.iter().map(|(s, _)| s.len()).max().unwrap_or(1);
    let mut tokens = vec![PAD; b * t];
    let mut voice = Vec::with_capacity(b * VOICE_DIM);
    for (r, (s, v)) in seqs.iter().enumerate() {
        tokens[r * t..r * t + s.len()].copy_from_slice(s);
        voice.extend_from_slice(&v[..]);
    }
    Batch {
        b,
        t,
        tokens,
        voice,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_closed_form() {
        let mut out = [0.0; 3];
        log_softmax(&[0.0, 0.0, (2.0f32).ln()], &mut out);
        // probs 1/4, 1/4, 1/2
        assert!((out[0] - 0.25f32.ln()).abs() < 1e-6);
        assert!((out[2] - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(top_k_indices(&[0.1, 0.5, 0.5, -1.0], 3), vec![1, 2, 0]);
    }

    /// The one-pass selection gives the first `k` of a full sort (value descending by
    /// `total_cmp`, ties by index), with ties, infinities, NaN and `k` beyond the length.
    #[test]
    fn top_k_selection_is_the_full_sort_prefix() {
        use rand::Rng;
        let mut rng = crate::rng::derive_rng(5, "top-k test");
        let pool = [
            0.0,
            -0.0,
            1.5,
            -2.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1.5,
        ];
        for case in 0..500 {
            let len = rng.random_range(0..90);
            let xs: Vec<f32> = (0..len)
                .map(|_| {
                    if rng.random_bool(0.3) {
                        pool[rng.random_range(0..pool.len())]
                    } else {
                        (rng.random_range(-8i32..8) as f32) * 0.25
                    }
                })
                .collect();
            let mut full: Vec<usize> = (0..xs.len()).collect();
            full.sort_by(|&a, &b| xs[b].total_cmp(&xs[a]).then(a.cmp(&b)));
            for k in [0, 1, 2, 5, 20, 100] {
                let want: Vec<usize> = full.iter().copied().take(k).collect();
                assert_eq!(top_k_indices(&xs, k), want, "case {case}, k {k}, xs {xs:?}");
            }
        }
    }
}
