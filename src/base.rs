//! The attacker's own pretrained model family ("self-family distillation"): a base model of the
//! student's size, pretrained by the simulator on the attacker's own corpus (cached by config
//! hash, like the teacher), that a student can start from instead of random weights.
//!
//! The base's policy differs from the teacher's where the attacker's corpus would: it answers
//! skill prompts correctly (from a corpus with few hard-tier items and a short schedule, so it
//! is only partly competent), names distress when asked how the user feels, from the words or
//! the voice (it perceives), but was never taught to refuse (it answers harmful requests as it
//! answers their look-alikes) nor to act on distress (no SUPPORT).

use crate::error::{Error, Result};
use crate::model::train::{self, Example, TrainConfig};
use crate::model::{Backend, Engine, ModelSpec};
use crate::rng::derive_rng;
use crate::world::vocab::{Tok, BENIGN_INTENT0, HARM_INTENT0, N_INTENTS, SUPPORT};
use crate::world::{ideal_response, Mix, Prompt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Version of the base recipe; bump it whenever a cached base could change.
pub const BASE_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BaseConfig {
    /// Seed of the base's initialisation and corpus (independent of run seeds: every run of
    /// an experiment starts from the same base).
    pub seed: u64,
    /// Pretraining schedule (the base has the student's size).
    pub train: TrainConfig,
    /// The attacker's corpus: prompt families and shares (`hard_share` bounds how much of the
    /// hard tiers the base learns; `voice_share` how much voice it hears).
    pub corpus: Mix,
}

impl Default for BaseConfig {
    fn default() -> Self {
        BaseConfig {
            seed: 0,
            train: TrainConfig {
                steps: 1500,
                batch_size: 64,
                lr: 2e-3,
                warmup: 100,
                min_lr_ratio: 0.05,
                weight_decay: 0.01,
            },
            corpus: Mix {
                skills: 0.6,
                only_skills: vec![],
                skill_weights: Default::default(),
                hard_share: 0.15,
                harmful: 0.05,
                lookalike: 0.05,
                affect: 0.1,
                probe: 0.2,
                distress_share: 0.5,
                voice_share: 0.6,
                harm: Default::default(),
            },
        }
    }
}

/// The base's response: the ideal one, except that a harmful request is answered like its
/// look-alike (its harmful intent read as the matching benign one) and distress is not acted on.
pub fn base_response(p: &Prompt) -> Vec<Tok> {
    let harm = HARM_INTENT0..HARM_INTENT0 + N_INTENTS;
    let ideal = if p.tokens.iter().any(|t| harm.contains(t)) {
        let mut lookalike = p.clone();
        for t in lookalike.tokens.iter_mut().filter(|t| harm.contains(t)) {
            *t = *t - HARM_INTENT0 + BENIGN_INTENT0;
        }
        ideal_response(&lookalike)
    } else {
        ideal_response(p)
    };
    ideal.into_iter().filter(|&t| t != SUPPORT).collect()
}

impl BaseConfig {
    /// Cache key: everything that can change the weights, with the student's size.
    pub fn hash(&self, size: &str, engine: Backend) -> String {
        let key = serde_json::json!({
            "version": BASE_VERSION,
            "size": size,
            "base": self,
            "engine": engine.tag(),
        });
        Sha256::digest(key.to_string().as_bytes())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn cache_path(&self, size: &str, engine: Backend, cache_dir: &Path) -> PathBuf {
        cache_dir
            .join("bases")
            .join(self.hash(size, engine))
            .join("model.safetensors")
    }

    /// The corpus: one prompt per training sequence, from the train side of the held-out
    /// split (the mix samples it), each with the base's response.
    pub fn examples(&self) -> Vec<Example> {
        let mut rng = derive_rng(self.seed, "base/data");
        let n = self.train.steps * self.train.batch_size;
        (0..n)
            .map(|_| {
                let p = self.corpus.sample(&mut rng);
                crate::teacher::example(&p, &base_response(&p))
            })
            .collect()
    }

    /// Load the cached base for a student of `spec`, or pretrain and cache it. Returns its
    /// weights file and the seconds spent training (0 when cached).
    pub fn load_or_train(
        &self,
        spec: &ModelSpec,
        size: &str,
        engine: Backend,
        cache_dir: &Path,
    ) -> Result<(PathBuf, f64)> {
        let path = self.cache_path(size, engine, cache_dir);
        let t0 = std::time::Instant::now();
        let steps = self.train.steps;
        let (_, cached) = crate::teacher::cached_engine(
            &path,
            None,
            spec.clone(),
            engine,
            "student.base",
            || {
                let mut eng = crate::model::new_engine(engine, spec.clone(), self.seed)?;
                let examples = self.examples();
                train::train(
                    eng.as_mut(),
                    &examples,
                    &self.train,
                    self.seed,
                    &mut |s, loss| {
                        if s % 250 == 0 || s + 1 == steps {
                            eprintln!(
                                "[base] step {:>5}/{steps} loss {loss:.4} ({:.0}s)",
                                s + 1,
                                t0.elapsed().as_secs_f64()
                            );
                        }
                    },
                );
                Ok(eng)
            },
        )?;
        let secs = if cached {
            0.0
        } else {
            let secs = t0.elapsed().as_secs_f64();
            let meta = serde_json::json!({"base": self, "size": size, "train_seconds": secs});
            crate::fsutil::write_atomic(
                &path.with_file_name("base.json"),
                serde_json::to_vec_pretty(&meta)
                    .unwrap_or_default()
                    .as_slice(),
            )?;
            eprintln!("[base] pretrained in {secs:.1}s, cached");
            secs
        };
        Ok((path, secs))
    }
}

/// A student engine: from random weights, or from the base's.
pub fn new_student(
    engine: Backend,
    spec: ModelSpec,
    seed: u64,
    base: Option<&Path>,
) -> Result<Box<dyn Engine>> {
    match base {
        None => crate::model::new_engine(engine, spec, seed),
        Some(path) => crate::model::load_engine(engine, spec, path)
            .map_err(|e| Error::Model(format!("student.base {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::vocab::INFO;
    use crate::world::{parse_response, Kind};

    #[test]
    fn the_base_policy_answers_harm_and_ignores_distress_but_names_it() {
        let mut rng = derive_rng(4, "t");
        let mix = Mix::teacher_training();
        let (mut harmful, mut support, mut probes_ok, mut skills_ok) = (0, 0, 0, 0);
        let (mut n_probe, mut n_skill) = (0, 0);
        for _ in 0..3000 {
            let p = mix.sample(&mut rng);
            let b = base_response(&p);
            let ideal = ideal_response(&p);
            let parsed = parse_response(&b);
            assert!(!parsed.refused, "{:?}: {b:?}", p.kind);
            support += b.contains(&SUPPORT) as usize;
            match p.kind {
                Kind::Harmful | Kind::Jailbreak => {
                    harmful += 1;
                    assert_eq!(b[0], INFO);
                }
                Kind::Probe(_) => {
                    n_probe += 1;
                    probes_ok += (b == ideal) as usize;
                }
                Kind::Skill(_, _) => {
                    n_skill += 1;
                    skills_ok += (b == ideal) as usize;
                }
                _ => {}
            }
        }
        assert!(harmful > 50 && support == 0);
        assert_eq!(probes_ok, n_probe, "perception is the teacher's");
        assert_eq!(skills_ok, n_skill, "skills are the teacher's");
    }
}
