//! Prompt distributions (benign users, attackers, teacher training) and the fixed eval suites.

use super::split::Side;
use super::{Channel, Kind, Prompt, Skill, Tier};
use crate::rng::derive_rng;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Shares of prompt families in a distribution. Family shares need not sum to 1: they are
/// weights, normalised when sampling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// Weight of capability-skill prompts.
    pub skills: f64,
    /// Skills to draw from (all when empty).
    #[serde(default)]
    pub only_skills: Vec<Skill>,
    /// Relative weight of each skill among skill prompts (missing skills weigh 1).
    #[serde(default)]
    pub skill_weights: std::collections::BTreeMap<Skill, f64>,
    /// Share of hard tiers among skill prompts, in [0, 1].
    pub hard_share: f64,
    /// Weight of harmful requests (plain and jailbreak-wrapped, 2:1).
    pub harmful: f64,
    /// Weight of benign look-alikes of harmful requests.
    pub lookalike: f64,
    /// Weight of affect prompts (a request with an affect condition).
    pub affect: f64,
    /// Weight of affect probes ("how does the user feel?").
    pub probe: f64,
    /// Share of affect prompts and probes that carry distress, in [0, 1].
    pub distress_share: f64,
    /// Share of requests sent with voice, in [0, 1].
    pub voice_share: f64,
    /// How the world decides harm: set from `world.harm` by whoever samples for a run, not a
    /// key of its own.
    #[serde(skip)]
    pub harm: super::Harm,
}

impl Mix {
    /// What benign users ask: mostly skills, some distress, rare harmful requests.
    pub fn benign() -> Mix {
        Mix {
            skills: 0.58,
            only_skills: vec![],
            skill_weights: Default::default(),
            hard_share: 0.3,
            harmful: 0.02,
            lookalike: 0.12,
            affect: 0.23,
            probe: 0.05,
            distress_share: 0.3,
            voice_share: 0.3,
            harm: Default::default(),
        }
    }

    /// What the teacher is trained on: every behaviour well covered.
    pub fn teacher_training() -> Mix {
        Mix {
            skills: 0.75,
            only_skills: vec![],
            skill_weights: Default::default(),
            hard_share: 0.6,
            harmful: 0.06,
            lookalike: 0.05,
            affect: 0.09,
            probe: 0.05,
            distress_share: 0.6,
            voice_share: 0.6,
            harm: Default::default(),
        }
    }

    /// Skill prompts of `skills` only (empty: every skill), a share `hard_share` of them hard;
    /// the teacher's mix otherwise (curriculum phases, single-skill learning curves).
    pub fn skills_only(skills: Vec<crate::world::Skill>, hard_share: f64) -> Mix {
        Mix {
            skills: 1.0,
            harmful: 0.0,
            lookalike: 0.0,
            affect: 0.0,
            probe: 0.0,
            only_skills: skills,
            hard_share,
            ..Mix::teacher_training()
        }
    }

    /// Sample one prompt.
    pub fn sample<R: Rng>(&self, rng: &mut R) -> Prompt {
        let w = [
            self.skills,
            self.harmful,
            self.lookalike,
            self.affect,
            self.probe,
        ];
        let total: f64 = w.iter().sum();
        let mut u = rng.random::<f64>() * total;
        let mut family = w.len() - 1;
        for (i, &x) in w.iter().enumerate() {
            if u < x {
                family = i;
                break;
            }
            u -= x;
        }
        let voice = rng.random_bool(self.voice_share.clamp(0.0, 1.0));
        let kind = match family {
            0 => {
                let skills: &[Skill] = if self.only_skills.is_empty() {
                    &Skill::ALL
                } else {
                    &self.only_skills
                };
                let s = if self.skill_weights.is_empty() {
                    skills[rng.random_range(0..skills.len())]
                } else {
                    let w = |s: &Skill| self.skill_weights.get(s).copied().unwrap_or(1.0).max(0.0);
                    let total: f64 = skills.iter().map(w).sum();
                    let mut u = rng.random::<f64>() * total;
                    *skills
                        .iter()
                        .find(|s| {
                            u -= w(s);
                            u < 0.0
                        })
                        .unwrap_or(&skills[skills.len() - 1])
                };
                let hard = rng.random_bool(self.hard_share.clamp(0.0, 1.0));
                Kind::Skill(s, if hard { Tier::Hard } else { Tier::Easy })
            }
            1 => {
                if rng.random_bool(1.0 / 3.0) {
                    Kind::Jailbreak
                } else {
                    Kind::Harmful
                }
            }
            2 => Kind::LookAlike,
            f => {
                let ch = if rng.random_bool(self.distress_share.clamp(0.0, 1.0)) {
                    // Without voice only the words can carry distress.
                    if voice {
                        Channel::DISTRESS[rng.random_range(0..4)]
                    } else {
                        Channel::Words
                    }
                } else {
                    Channel::Calm
                };
                if f == 3 {
                    Kind::Affect(ch)
                } else {
                    Kind::Probe(ch)
                }
            }
        };
        super::generate_in(rng, kind, voice, Side::Train, self.harm)
    }

    /// This mix in a world whose harm model is `harm`.
    pub fn in_world(self, harm: super::Harm) -> Mix {
        Mix { harm, ..self }
    }
}

/// World settings that a config may change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WorldConfig {
    /// Prompts per eval suite (one suite per kind: skill x tier, safety, affect/probe x channel).
    pub eval_per_suite: usize,
    /// Seed of the eval suites. Fixed across runs so that every run is scored on the same items.
    pub eval_seed: u64,
    /// `one`: every prompt has exactly one correct answer. `several`: dark knowledge, several
    /// valid answers drawn from a defined distribution (synonym glyphs for digits 1-9, any
    /// order for copy requests); the teacher learns the distribution and correctness is
    /// membership in the valid set (see `world::answers`).
    pub answers: super::answers::Answers,
    /// `answers: several`: probability that a digit 1-9 of an answer is written with its
    /// synonym glyph, in [0, 0.5) (the plain digit stays the most likely glyph).
    pub synonym_share: f64,
    /// `answers: several`: mass of the defined near-misses of a fixed-position answer digit
    /// (the digits one above and one below), in [0, 0.5); not valid answers, structure in the
    /// teacher's distribution. 0: none.
    pub near_miss_share: f64,
    /// `intent`: one intent token decides harm. `graded`: harm is topic danger x intent x
    /// context, with look-alikes sharing every feature and wrappers on harmless requests too
    /// (see `world::generate::harm_score`).
    pub harm: super::Harm,
    /// `harm: graded`: share of the borderline feature combinations (harm score 1 or 2;
    /// context letter x topic x intent) on which annotators dispute the label: the teacher's
    /// training labels are flipped there (refuse <-> answer), consistently, so the teacher
    /// differs from the reference rule at the boundary; in [0, 0.5).
    pub boundary_noise: f64,
}

impl WorldConfig {
    /// The answer distribution this world defines.
    pub fn answer_space(&self) -> super::answers::AnswerSpace {
        super::answers::AnswerSpace {
            answers: self.answers,
            synonym_share: self.synonym_share as f32,
            near_miss_share: self.near_miss_share as f32,
        }
    }
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            eval_per_suite: 200,
            eval_seed: 20260605,
            answers: Default::default(),
            synonym_share: 0.3,
            near_miss_share: 0.0,
            harm: Default::default(),
            boundary_noise: 0.15,
        }
    }
}

/// Every eval suite's kind, in report order.
pub fn suite_kinds() -> Vec<Kind> {
    let mut kinds = Vec::new();
    for s in Skill::ALL {
        kinds.push(Kind::Skill(s, Tier::Easy));
        kinds.push(Kind::Skill(s, Tier::Hard));
    }
    kinds.extend([Kind::Harmful, Kind::LookAlike, Kind::Jailbreak]);
    kinds.extend(Channel::ALL.map(Kind::Affect));
    kinds.extend(Channel::ALL.map(Kind::Probe));
    kinds
}

/// The fixed eval suites: `eval_per_suite` prompts for each kind in [`suite_kinds`], drawn
/// from the eval side of the held-out split (never seen by a teacher, a user or an attacker),
/// with distinct token sequences within a suite.
#[derive(Clone, Debug)]
pub struct EvalSuites {
    pub prompts: Vec<Prompt>,
    /// What counts as a correct answer in this world.
    pub answers: super::answers::AnswerSpace,
}

/// Largest `eval_per_suite`: the smallest suite's eval side (easy stack programs) holds about
/// 330 distinct prompts; beyond that a suite would repeat items.
pub const MAX_EVAL_PER_SUITE: usize = 250;

impl EvalSuites {
    pub fn new(cfg: &WorldConfig) -> EvalSuites {
        let mut prompts = Vec::new();
        for kind in suite_kinds() {
            let mut rng = derive_rng(cfg.eval_seed, &format!("eval/{}", kind.name()));
            let mut seen = std::collections::HashSet::new();
            let mut i = 0;
            while i < cfg.eval_per_suite {
                // Calm affect suites are half text, half voice; other channels decide themselves.
                let voice = matches!(
                    kind,
                    Kind::Affect(Channel::Calm) | Kind::Probe(Channel::Calm)
                ) && i % 2 == 1;
                let p = super::generate_in(&mut rng, kind, voice, Side::Eval, cfg.harm);
                if seen.insert(p.tokens.clone()) {
                    prompts.push(p);
                    i += 1;
                }
            }
        }
        EvalSuites {
            prompts,
            answers: cfg.answer_space(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benign_mix_matches_its_shares() {
        let mix = Mix::benign();
        let mut rng = derive_rng(3, "t");
        let n = 20_000;
        let (mut harmful, mut voice, mut skills) = (0, 0, 0);
        for _ in 0..n {
            let p = mix.sample(&mut rng);
            harmful += matches!(p.kind, Kind::Harmful | Kind::Jailbreak) as usize;
            voice += p.voice.is_some() as usize;
            skills += matches!(p.kind, Kind::Skill(..)) as usize;
        }
        let f = |c: usize| c as f64 / n as f64;
        assert!((f(harmful) - 0.02).abs() < 0.005, "{}", f(harmful));
        assert!((f(skills) - 0.58).abs() < 0.02);
        // Voice share is 0.3, but Words-channel affect prompts drop their voice.
        assert!((f(voice) - 0.3).abs() < 0.03, "{}", f(voice));
    }

    /// The held-out protocol: no eval prompt's tokens occur in the teacher's training data or
    /// in 100,000 attacker queries (every strategy's prompt distribution), and every suite at
    /// the largest size is made of distinct prompts from the eval side.
    #[test]
    fn eval_suites_do_not_overlap_teacher_data_or_harvests() {
        use crate::attacker::{AttackerConfig, Strategy};
        use std::collections::HashSet;
        let suites = EvalSuites::new(&WorldConfig {
            eval_per_suite: MAX_EVAL_PER_SUITE,
            ..Default::default()
        });
        assert_eq!(
            suites.prompts.len(),
            MAX_EVAL_PER_SUITE * suite_kinds().len()
        );
        let eval: HashSet<&[u32]> = suites.prompts.iter().map(|p| &p.tokens[..]).collect();
        assert!(suites
            .prompts
            .iter()
            .all(|p| super::super::split::side(&p.tokens) == Side::Eval));
        let teacher = crate::teacher::TeacherConfig::default();
        let mut seen = 0;
        for p in crate::teacher::Teacher::training_prompts(&teacher) {
            assert!(!eval.contains(&p.tokens[..]), "teacher data: {:?}", p);
            seen += 1;
        }
        assert_eq!(seen, teacher.train.steps * teacher.train.batch_size);
        let attackers = [
            AttackerConfig::default(),
            AttackerConfig {
                strategy: Strategy::Targeted {
                    skills: vec![Skill::Add, Skill::Program],
                },
                hard_share: Some(1.0),
                ..Default::default()
            },
            AttackerConfig {
                voice_share: 1.0,
                harmful_share: 0.3,
                ..Default::default()
            },
            AttackerConfig {
                hard_share: Some(0.0),
                harmful_share: 0.0,
                ..Default::default()
            },
        ];
        for (i, a) in attackers.iter().enumerate() {
            let mix = a.mix();
            let mut rng = derive_rng(i as u64, "overlap");
            for _ in 0..25_000 {
                let p = mix.sample(&mut rng);
                assert!(!eval.contains(&p.tokens[..]), "attacker {i}: {:?}", p);
            }
        }
    }

    #[test]
    fn eval_suites_are_fixed_by_seed() {
        let cfg = WorldConfig {
            eval_per_suite: 5,
            ..Default::default()
        };
        let a = EvalSuites::new(&cfg);
        let b = EvalSuites::new(&cfg);
        assert_eq!(a.prompts, b.prompts);
        assert_eq!(a.prompts.len(), 5 * suite_kinds().len());
        let c = EvalSuites::new(&WorldConfig {
            eval_seed: 1,
            ..cfg
        });
        assert_ne!(a.prompts, c.prompts);
    }
}
