//! Benign segments (`traffic.population.segments`): customers whose traffic looks like a
//! campaign's. Their prompts are appended to the benign bank and their accounts open after the
//! crowd's, all from their own random stream, so that without segments nothing changes.

use super::Replay;
use crate::api::Identity;
use crate::rng::{derive_rng, SimRng};
use crate::traffic::{PopulationConfig, SegmentKind, TemplateBank};
use crate::world::{Harm, Mix, Prompt, Skill};
use rand::Rng;

/// The segments' accounts: per account its share of the benign bank (first template,
/// templates) and its daily rate.
pub(super) struct Segments {
    pub(super) ranges: Vec<(u32, u32)>,
    pub(super) rates: Vec<f64>,
    pub(super) rng: SimRng,
}

/// Prompts a segment account draws from when its prompts are not a fixed set.
const FRESH: usize = 256;

/// A segment's prompt distribution: benign requests only, skills (every one, or `skill`).
fn mix(kind: SegmentKind, skill: Option<Skill>, harm: Harm) -> Mix {
    Mix {
        skills: 1.0,
        only_skills: skill.into_iter().collect(),
        hard_share: match kind {
            SegmentKind::ReasoningDev => 0.9,
            _ => 0.5,
        },
        harmful: 0.0,
        lookalike: 0.0,
        affect: 0.0,
        probe: 0.0,
        voice_share: 0.0,
        ..Mix::benign()
    }
    .in_world(harm)
}

/// Build the segments' prompts onto `bank` (its first `crowd` templates are the crowd's).
pub(super) fn build(
    pop: &PopulationConfig,
    bank: &mut TemplateBank,
    seed: u64,
    harm: Harm,
) -> Segments {
    let mut rng = derive_rng(seed, "traffic/segments");
    let mut s = Segments {
        ranges: Vec::new(),
        rates: Vec::new(),
        rng: derive_rng(seed, "traffic/segment-identities"),
    };
    if pop.segments.is_empty() {
        return s;
    }
    let mut prompts: Vec<Prompt> = std::mem::take(&mut bank.prompts);
    for seg in &pop.segments {
        // Developers testing reasoning share one pool of fresh prompts.
        let shared = (seg.kind == SegmentKind::ReasoningDev).then(|| {
            let lo = prompts.len() as u32;
            let m = mix(seg.kind, None, harm);
            prompts.extend((0..FRESH * seg.accounts.clamp(1, 16)).map(|_| m.sample(&mut rng)));
            (lo, prompts.len() as u32 - lo)
        });
        for _ in 0..seg.accounts {
            let lo = prompts.len() as u32;
            let n = seg.templates.max(1);
            match seg.kind {
                SegmentKind::Batch => {
                    let skill = Skill::ALL[rng.random_range(0..Skill::ALL.len())];
                    let m = mix(seg.kind, Some(skill), harm);
                    let b = TemplateBank::perturbed(&m, n, FRESH, &mut rng);
                    prompts.extend(b.prompts);
                }
                SegmentKind::EvalHarness => {
                    let m = mix(seg.kind, None, harm);
                    prompts.extend((0..n).map(|_| m.sample(&mut rng)));
                }
                SegmentKind::ReasoningDev => {}
            }
            let range = shared.unwrap_or((lo, prompts.len() as u32 - lo));
            s.ranges.push(range);
            let z = crate::rng::normal_f64(&mut rng);
            s.rates.push(seg.daily_median * (pop.sigma * z).exp());
        }
    }
    *bank = TemplateBank::from_prompts(prompts);
    s
}

impl Replay<'_> {
    /// Open the segments' accounts (after the crowd's), one identity each.
    pub(super) fn open_segments(&mut self, tier: usize) {
        let users = self.tr.population.users as u32;
        for i in 0..self.segments.ranges.len() as u32 {
            let rng = &mut self.segments.rng;
            let n = 2_000_000 + users + i;
            let identity = Identity {
                payment: n,
                ip_asn: n,
                fingerprint: n,
                region: rng.random_range(0..8),
                verified: rng.random_bool(0.3),
            };
            self.open(false, tier, identity, 0.0);
        }
    }

    /// A template for benign account `a`: the crowd's bank, or its segment's share of it.
    #[inline]
    pub(super) fn benign_template(&mut self, a: usize) -> usize {
        let segment = a.checked_sub(self.tr.population.users);
        match segment.and_then(|i| self.segments.ranges.get(i)) {
            Some(&(lo, n)) => lo as usize + self.rng.random_range(0..n as usize),
            None => self.rng.random_range(0..self.crowd_templates),
        }
    }
}
