//! Pre-sampled query templates, so the replay's hot loop draws an index instead of building a
//! prompt. The bank keeps the prompts themselves: a query the teacher answers is one of them.

use super::detect::prada;
use super::{kind_index, Query, ATTACK_BANK};
use crate::rng::SimRng;
use crate::world::{Kind, Mix, Prompt, Tier};
use rand::Rng;

/// What a query of one template looks like to the traffic layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Template {
    pub kind: u8,
    pub input_tokens: u8,
    pub output_tokens: u8,
    pub reasoning: bool,
    pub voice: bool,
}

pub struct TemplateBank {
    pub prompts: Vec<Prompt>,
    pub queries: Vec<Template>,
    /// Embedding per template (for PRADA).
    pub emb: Vec<[f32; prada::EMB_DIM]>,
}

impl TemplateBank {
    /// `n` prompts from `mix`.
    pub fn new(mix: &Mix, n: usize, rng: &mut SimRng) -> TemplateBank {
        let prompts: Vec<Prompt> = (0..n).map(|_| mix.sample(rng)).collect();
        Self::from_prompts(prompts)
    }

    /// `n` synthetic prompts: each a seed prompt from `mix` (of `seeds`) with one to two pairs
    /// of its tokens after the first swapped (slot filling).
    pub fn perturbed(mix: &Mix, seeds: usize, n: usize, rng: &mut SimRng) -> TemplateBank {
        let seed_prompts: Vec<Prompt> = (0..seeds.max(1)).map(|_| mix.sample(rng)).collect();
        let prompts: Vec<Prompt> = (0..n)
            .map(|_| {
                let mut p = seed_prompts[rng.random_range(0..seed_prompts.len())].clone();
                let len = p.tokens.len();
                if len > 2 {
                    for _ in 0..rng.random_range(1..=2) {
                        let (i, j) = (rng.random_range(1..len), rng.random_range(1..len));
                        p.tokens.swap(i, j);
                    }
                }
                p
            })
            .collect();
        Self::from_prompts(prompts)
    }

    pub(crate) fn from_prompts(prompts: Vec<Prompt>) -> TemplateBank {
        let embedder = prada::Embedder::default();
        let queries = prompts
            .iter()
            .map(|p| Template {
                kind: kind_index(p.kind),
                input_tokens: (p.tokens.len() + 2).min(255) as u8,
                output_tokens: crate::world::ideal_response(p).len().min(255) as u8,
                reasoning: matches!(p.kind, Kind::Skill(_, Tier::Hard)),
                voice: p.voice.is_some(),
            })
            .collect();
        let emb = prompts.iter().map(|p| embedder.embed(p)).collect();
        TemplateBank {
            prompts,
            queries,
            emb,
        }
    }

    pub fn len(&self) -> usize {
        self.queries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }

    /// A query from template `i` of this bank (`attack`: the campaign's bank).
    #[inline]
    pub fn query(&self, i: usize, minute: u32, account: u32, attack: bool) -> Query {
        let t = self.queries[i];
        Query {
            minute,
            account,
            kind: t.kind,
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            reasoning: t.reasoning,
            voice: t.voice,
            template: i as u32 | if attack { ATTACK_BANK } else { 0 },
        }
    }
}
