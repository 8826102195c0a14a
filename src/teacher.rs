//! The teacher: a transformer trained on the ideal policy (cached by config hash), or the
//! oracle control (the ideal policy with calibrated confidence, no inference cost).

use crate::error::{Error, Result};
use crate::model::engine::Decoder;
use crate::model::generate::{self, model_input, LogitsProcessor, SamplingDecoder};
use crate::model::train::{self, Example, TrainConfig};
use crate::model::{Backend, Engine, GenParams, Generation, ModelSpec};
use crate::rng::{derive_rng, SimRng};
use crate::world::vocab::{Tok, VOCAB_SIZE};
use crate::world::{ideal_response, Harm, Kind, Mix, Prompt, Tier, WorldConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Version of the world and training recipe; bump it whenever a cached teacher could change.
pub const TEACHER_VERSION: u32 = 4;

/// The engine teachers are trained by unless `teacher.trainer` says otherwise: the key names
/// the weights, not the engine that serves them, so a teacher trained once serves fused, burn
/// and LibTorch runs alike.
pub const TRAINER: Backend = Backend::FUSED;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TeacherKind {
    /// A transformer trained by the simulator on the ideal policy.
    Trained,
    /// The ideal policy itself with calibrated confidence: a control with no inference cost.
    Oracle,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TeacherConfig {
    pub kind: TeacherKind,
    /// Model size preset (see `ModelSpec::preset`).
    pub size: String,
    /// Seed of the teacher's initialisation and training data; with `pool` above 1, the
    /// pool's first seed.
    pub seed: u64,
    /// Teachers of this recipe the runs draw from: the run of seed `s` faces the teacher of
    /// seed `seed + s mod pool`, so that intervals over run seeds cover the teacher's variance
    /// too and runs of one seed stay paired (same teacher). 1: every run faces `seed`.
    pub pool: u64,
    /// The engine that trains the teacher (on the CPU): `fused` (default), or `burn` / `tch`
    /// to reproduce results measured on a teacher those engines trained. Any engine serves it.
    pub trainer: crate::model::EngineKind,
    pub train: TrainConfig,
    /// Weight of each skill in the training mix (missing skills weigh 1; empty = uniform).
    pub skill_weights: std::collections::BTreeMap<crate::world::Skill, f64>,
    /// Phases trained before the main mix, in order (empty: none). Skills that form late in
    /// a mix (lookup's induction, addition's carries) can be given their own phase first.
    pub curriculum: Vec<Phase>,
    /// Oracle: probability of the ideal token on easy items.
    pub oracle_confidence_easy: f32,
    /// Oracle: probability of the ideal token on hard items, affect and safety.
    pub oracle_confidence_hard: f32,
}

/// One curriculum phase: `steps` steps (the main schedule's batch size, learning rate and
/// warmup) on skill prompts of `skills` only, with `hard_share` of them hard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub steps: usize,
    /// The skills of the phase (non-empty).
    pub skills: Vec<crate::world::Skill>,
    /// Share of hard prompts (default: the main mix's 0.6).
    #[serde(default = "default_hard_share")]
    pub hard_share: f64,
}

fn default_hard_share() -> f64 {
    Mix::teacher_training().hard_share
}

impl Default for TeacherConfig {
    fn default() -> Self {
        TeacherConfig {
            kind: TeacherKind::Trained,
            size: "teacher-s".into(),
            seed: 0,
            pool: 5,
            trainer: crate::model::EngineKind::Fused,
            train: TrainConfig {
                steps: 15000,
                batch_size: 64,
                lr: 2e-3,
                warmup: 100,
                min_lr_ratio: 0.05,
                weight_decay: 0.01,
            },
            // Uniform: weighting addition and lookup 2-3x (tried) cost copy/reverse and sort
            // more than it gained (see README, "The teacher").
            skill_weights: Default::default(),
            curriculum: vec![],
            oracle_confidence_easy: 0.95,
            oracle_confidence_hard: 0.8,
        }
    }
}

impl TeacherConfig {
    /// The engine that trains this teacher.
    pub fn trainer(&self) -> Backend {
        Backend {
            engine: self.trainer,
            ..Backend::FUSED
        }
    }

    /// The teacher the run of seed `run_seed` faces: the pool resolved to one seed.
    pub fn for_run(&self, run_seed: u64) -> TeacherConfig {
        TeacherConfig {
            seed: self.seed.wrapping_add(run_seed % self.pool.max(1)),
            pool: 1,
            ..self.clone()
        }
    }

    /// Training steps in all: the curriculum's phases and the main mix.
    pub fn total_steps(&self) -> usize {
        self.curriculum.iter().map(|p| p.steps).sum::<usize>() + self.train.steps
    }

    pub fn spec(&self) -> Result<ModelSpec> {
        ModelSpec::preset(&self.size).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown model size `{}` (allowed: {})",
                self.size,
                crate::model::spec::PRESETS.join(", ")
            ))
        })
    }

    /// Cache key: everything that can change the trained weights, the world's answer
    /// distribution included (a one-answer world adds nothing). Not the engine that serves
    /// it (only a `trainer` other than [`TRAINER`]).
    pub fn hash(&self, world: &WorldConfig) -> String {
        let mut h = Sha256::new();
        h.update(self.key_json(world).to_string().as_bytes());
        let out = h.finalize();
        out.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// What the cache key hashes (recorded in a shipped teacher's manifest).
    pub fn key_json(&self, world: &WorldConfig) -> serde_json::Value {
        let answers = world.answer_space();
        let mut key = serde_json::json!({
            "version": TEACHER_VERSION,
            "size": self.size,
            "seed": self.seed,
            "train": self.train,
            "skill_weights": self.skill_weights,
        });
        if !self.curriculum.is_empty() {
            key["curriculum"] = serde_json::json!(self.curriculum);
        }
        if self.trainer() != TRAINER {
            key["trainer"] = serde_json::json!(self.trainer);
        }
        if answers.several() {
            key["answers"] = serde_json::json!({
                "several": true,
                "synonym_share": answers.synonym_share,
            });
            if answers.near_miss_share > 0.0 {
                key["answers"]["near_miss_share"] = serde_json::json!(answers.near_miss_share);
            }
        }
        if world.harm == Harm::Graded {
            key["harm"] = serde_json::json!({
                "graded": true,
                "boundary_noise": world.boundary_noise,
            });
        }
        key
    }
}

/// What the teacher learns for prompt `p` in `world`: the graded-harm world's label where it
/// flips, else the ideal response (one answer), else an answer drawn from the world's answer
/// distribution with the exact next-token distribution as the target.
fn teacher_example(p: &Prompt, world: &WorldConfig, rng: &mut SimRng) -> Example {
    if let Some(flipped) = boundary_label(p, world) {
        return example(p, &flipped);
    }
    let answers = world.answer_space();
    if !answers.several() {
        return example(p, &ideal_response(p));
    }
    let (resp, targets) = answers.sample(p, rng);
    Example {
        targets,
        ..example(p, &resp)
    }
}

/// A training example with one-hot targets on a given response.
pub fn example(prompt: &Prompt, response: &[Tok]) -> Example {
    let tokens: Vec<u32> = model_input(prompt)
        .into_iter()
        .chain(response.iter().copied())
        .collect();
    Example {
        sep: prompt.tokens.len() + 1,
        voice: prompt.voice_input(),
        tokens,
        targets: response.iter().map(|&t| vec![(t, 1.0)]).collect(),
        soft: None,
    }
}

pub enum Teacher {
    Neural(Box<dyn Engine>),
    Oracle { easy: f32, hard: f32 },
}

impl Teacher {
    /// Train a teacher from scratch on the ideal policy: in a world with several valid
    /// answers, on answers drawn from their distribution, with the exact next-token
    /// distribution as the target at every position.
    pub fn train(
        cfg: &TeacherConfig,
        engine: Backend,
        world: &WorldConfig,
        mut progress: impl FnMut(usize, f32),
    ) -> Result<Teacher> {
        let spec = cfg.spec()?;
        let mut eng = crate::model::new_engine(engine, spec, cfg.seed)?;
        // Curriculum phases first, each on its own skills, counted in the progress steps.
        let mut done = 0;
        for (i, phase) in cfg.curriculum.iter().enumerate() {
            let mut rng = derive_rng(cfg.seed, &format!("teacher/phase{i}/answers"));
            let examples: Vec<Example> = Self::phase_prompts(cfg, i, world.harm)
                .map(|p| teacher_example(&p, world, &mut rng))
                .collect();
            let tc = TrainConfig {
                steps: phase.steps,
                warmup: cfg.train.warmup.min(phase.steps / 5),
                ..cfg.train.clone()
            };
            let seed = crate::rng::derive_seed(cfg.seed, &format!("teacher/phase{i}"));
            train::train(eng.as_mut(), &examples, &tc, seed, |s, l| {
                progress(done + s, l)
            });
            done += phase.steps;
        }
        let mut rng = derive_rng(cfg.seed, "teacher/answers");
        let examples: Vec<Example> = Self::training_prompts_in(cfg, world.harm)
            .map(|p| teacher_example(&p, world, &mut rng))
            .collect();
        train::train(eng.as_mut(), &examples, &cfg.train, cfg.seed, |s, l| {
            progress(done + s, l)
        });
        Ok(Teacher::Neural(eng))
    }

    /// The prompts a teacher of `cfg` trains on (one per training sequence), all from the
    /// train side of the held-out split.
    pub fn training_prompts(cfg: &TeacherConfig) -> impl Iterator<Item = Prompt> {
        Self::training_prompts_in(cfg, Harm::Intent)
    }

    /// The prompts of curriculum phase `i`: skill prompts of its skills only.
    fn phase_prompts(cfg: &TeacherConfig, i: usize, harm: Harm) -> impl Iterator<Item = Prompt> {
        let phase = &cfg.curriculum[i];
        let mix = Mix {
            harm,
            ..Mix::skills_only(phase.skills.clone(), phase.hard_share)
        };
        let mut rng = derive_rng(cfg.seed, &format!("teacher/phase{i}/data"));
        let n = phase.steps * cfg.train.batch_size;
        (0..n).map(move |_| mix.sample(&mut rng))
    }

    /// [`Self::training_prompts`] in a world whose harm model is `harm`.
    pub fn training_prompts_in(cfg: &TeacherConfig, harm: Harm) -> impl Iterator<Item = Prompt> {
        let mix = Mix {
            skill_weights: cfg.skill_weights.clone(),
            harm,
            ..Mix::teacher_training()
        };
        let mut rng = derive_rng(cfg.seed, "teacher/data");
        let n = cfg.train.steps * cfg.train.batch_size;
        (0..n).map(move |_| mix.sample(&mut rng))
    }

    /// Load the cached teacher for `cfg`, or train and cache it. Returns the teacher and
    /// whether it came from the cache.
    pub fn load_or_train(
        cfg: &TeacherConfig,
        engine: Backend,
        world: &WorldConfig,
        cache_dir: &Path,
        progress: impl FnMut(usize, f32),
    ) -> Result<(Teacher, bool)> {
        if cfg.kind == TeacherKind::Oracle && world.answer_space().several() {
            return Err(Error::Invalid(
                "teacher.kind: oracle knows one answer per prompt; world.answers: several needs \
                 teacher.kind: trained"
                    .into(),
            ));
        }
        if cfg.kind == TeacherKind::Oracle {
            return Ok((
                Teacher::Oracle {
                    easy: cfg.oracle_confidence_easy,
                    hard: cfg.oracle_confidence_hard,
                },
                true,
            ));
        }
        let path = Self::cache_path(cfg, world, cache_dir);
        let shipped = crate::shipped::find("teachers", &cfg.hash(world))?.map(|(p, _)| p);
        let (eng, cached) = cached_engine(
            &path,
            shipped.as_deref(),
            cfg.spec()?,
            engine,
            "teacher",
            || match Self::train(cfg, cfg.trainer(), world, progress)? {
                Teacher::Neural(e) => Ok(e),
                Teacher::Oracle { .. } => Err(Error::Invalid("an oracle is not trained".into())),
            },
        )?;
        if !cached {
            let meta = serde_json::to_vec_pretty(cfg).unwrap_or_default();
            crate::fsutil::write_atomic(&path.with_file_name("teacher.json"), &meta)?;
        }
        Ok((Teacher::Neural(eng), cached))
    }

    /// The weights file a teacher of `cfg` loads from: the shipped one if there is one, else
    /// the cache's (which may not exist yet).
    pub fn weights_path(
        cfg: &TeacherConfig,
        world: &WorldConfig,
        cache_dir: &Path,
    ) -> Result<PathBuf> {
        Ok(match crate::shipped::find("teachers", &cfg.hash(world))? {
            Some((p, _)) => p,
            None => Self::cache_path(cfg, world, cache_dir),
        })
    }

    pub fn cache_path(cfg: &TeacherConfig, world: &WorldConfig, cache_dir: &Path) -> PathBuf {
        cache_dir
            .join("teachers")
            .join(cfg.hash(world))
            .join("model.safetensors")
    }

    /// Batched responses. `rng` drives temperature sampling; `processor` (e.g. a watermark)
    /// changes the served distribution.
    pub fn respond(
        &self,
        prompts: &[&Prompt],
        params: &[GenParams],
        rng: &mut SimRng,
        processor: Option<&dyn LogitsProcessor>,
    ) -> Vec<Generation> {
        match self {
            Teacher::Neural(e) => {
                generate::generate(e.as_ref(), prompts, params, 256, rng, processor)
            }
            Teacher::Oracle { easy, hard } => {
                oracle_generate(prompts, params, *easy, *hard, rng, processor)
            }
        }
    }

    /// Scoring mode: the teacher's top-`k` logprobs at every position of each given
    /// continuation of a prompt (what it would have put there), most likely first.
    pub fn score(&self, items: &[(&Prompt, &[Tok])], k: usize) -> Vec<Vec<Vec<(Tok, f32)>>> {
        let k = k.clamp(1, generate::MAX_TOP_K);
        self.per_position(items, |lp, _| {
            generate::top_k_indices(lp, k)
                .into_iter()
                .map(|i| (i as Tok, lp[i]))
                .collect()
        })
    }

    /// The teacher's logprob of each token of each continuation, given the prompt and the
    /// continuation before it (an `echo` request's loglikelihood).
    pub fn token_logprobs(&self, items: &[(&Prompt, &[Tok])]) -> Vec<Vec<f32>> {
        self.per_position(items, |lp, t| lp[t as usize])
    }

    /// `f(logprobs over the vocabulary, the continuation's token)` at every position of each
    /// continuation (truncated to the context length).
    fn per_position<R>(
        &self,
        items: &[(&Prompt, &[Tok])],
        f: impl Fn(&[f32], Tok) -> R,
    ) -> Vec<Vec<R>> {
        let v = VOCAB_SIZE;
        match self {
            Teacher::Neural(e) => per_position_of(e.as_ref(), items, f),
            Teacher::Oracle { easy, hard } => items
                .iter()
                .map(|(p, c)| {
                    let ideal = ideal_response(p);
                    let conf = match p.kind {
                        Kind::Skill(_, Tier::Easy) => *easy,
                        _ => *hard,
                    };
                    (0..c.len())
                        .map(|j| {
                            let mut row = vec![ORACLE_FLOOR; v];
                            let on_path =
                                c[..j].iter().zip(&ideal).all(|(a, b)| a == b) && j <= ideal.len();
                            match ideal.get(j) {
                                Some(&tok) if on_path => {
                                    row[tok as usize] = conf.ln();
                                    for m in 1..=3u32 {
                                        let alt = (tok + 7 * m + j as u32) % v as u32;
                                        row[alt as usize] = ((1.0 - conf) / 3.0).ln();
                                    }
                                }
                                _ => row[crate::world::vocab::EOS as usize] = 0.0,
                            }
                            let mut lp = vec![0.0f32; v];
                            generate::log_softmax(&row, &mut lp);
                            f(&lp, c[j])
                        })
                        .collect()
                })
                .collect(),
        }
    }

    pub fn engine(&self) -> Option<&dyn Engine> {
        match self {
            Teacher::Neural(e) => Some(e.as_ref()),
            Teacher::Oracle { .. } => None,
        }
    }
}

/// `f(logprobs over the vocabulary, the continuation's token)` at every position of each
/// `(prompt, continuation)` under `e`, teacher-forced (continuations truncated to the context
/// length), batched 256 sequences at a time.
pub fn per_position_of<R>(
    e: &dyn Engine,
    items: &[(&Prompt, &[Tok])],
    f: impl Fn(&[f32], Tok) -> R,
) -> Vec<Vec<R>> {
    let v = VOCAB_SIZE;
    let mut out = Vec::with_capacity(items.len());
    let ctx = e.spec().context;
    let mut lp = vec![0.0f32; v];
    for chunk in items.chunks(256) {
        let seqs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|(p, c)| {
                let mut s = model_input(p);
                s.extend_from_slice(c);
                s.truncate(ctx);
                s
            })
            .collect();
        let voices: Vec<[f32; crate::world::VOICE_DIM]> =
            chunk.iter().map(|(p, _)| p.voice_input()).collect();
        let rows: Vec<(&[u32], &[f32; crate::world::VOICE_DIM])> =
            seqs.iter().zip(&voices).map(|(s, v)| (&s[..], v)).collect();
        let batch = generate::pack(&rows);
        let logits = e.logits(&batch);
        for (r, (p, c)) in chunk.iter().enumerate() {
            let start = p.tokens.len() + 1; // the SEP position predicts token 0
            let n = c.len().min(seqs[r].len().saturating_sub(start));
            out.push(
                (0..n)
                    .map(|j| {
                        let at = (r * batch.t + start + j) * v;
                        generate::log_softmax(&logits[at..at + v], &mut lp);
                        f(&lp, c[j])
                    })
                    .collect(),
            );
        }
    }
    out
}

/// In a graded-harm world, the teacher's label of a disputed request (a borderline feature
/// combination in the `world.boundary_noise` share, see `world::generate::disputed`) is
/// flipped: the flipped response, or None where the reference label stands.
fn boundary_label(p: &Prompt, world: &WorldConfig) -> Option<Vec<Tok>> {
    use crate::world::generate::{disputed, GradedRequest};
    use crate::world::vocab::{EOS, REFUSE};
    if world.harm != Harm::Graded
        || !matches!(p.kind, Kind::Harmful | Kind::LookAlike | Kind::Jailbreak)
    {
        return None;
    }
    let g = GradedRequest::parse(&p.tokens)?;
    if !disputed(g.context, g.topic, g.intent, world.boundary_noise) {
        return None;
    }
    Some(if ideal_response(p).first() == Some(&REFUSE) {
        crate::world::policy::info_answer(&p.tokens[g.at + 2..])
    } else {
        vec![REFUSE, EOS]
    })
}

use crate::shipped::sha256_hex;

/// A model with a non-finite weight (diverged training, a corrupt cache file) would serve
/// nonsense that still looks like results: refuse it, naming the tensor.
fn check_finite(e: &dyn Engine, path: &Path, what: &str) -> Result<()> {
    for (name, (_, data)) in &e.weights().tensors {
        if let Some(x) = data.iter().find(|x| !x.is_finite()) {
            return Err(Error::Model(format!(
                "{what} {}: tensor `{name}` holds {x} (diverged training or a corrupt file; \
                 delete it to retrain, or lower {what}.train.lr)",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Load the shipped model `shipped` (already checked, see [`crate::shipped::find`]), else the
/// model cached at `path` (checked against the SHA-256 recorded beside it), else train it with
/// `train` and cache it. One process trains; another that needs it waits on the lock, then
/// loads it. Returns the model and whether it came from the cache or the shipped models.
/// `what` names it in messages (`teacher`, `student.base`).
pub fn cached_engine(
    path: &Path,
    shipped: Option<&Path>,
    spec: ModelSpec,
    engine: Backend,
    what: &str,
    train: impl FnOnce() -> Result<Box<dyn Engine>>,
) -> Result<(Box<dyn Engine>, bool)> {
    if let Some(p) = shipped {
        let eng = crate::model::load_engine(engine, spec, p)?;
        check_finite(eng.as_ref(), p, what)?;
        return Ok((eng, true));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let sum_path = path.with_extension("sha256");
    let load_checked = |recorded: &str| -> Result<Box<dyn Engine>> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let actual = sha256_hex(&bytes);
        if recorded.trim() != actual {
            return Err(Error::Model(format!(
                "{what} {}: checksum {actual} differs from the {} recorded when it was cached \
                 (a corrupt or edited file); delete {} to retrain",
                path.display(),
                recorded.trim(),
                dir.display()
            )));
        }
        let eng = crate::model::load_engine(engine, spec.clone(), path)?;
        check_finite(eng.as_ref(), path, what)?;
        Ok(eng)
    };
    // A cached model is read without the lock: its checksum is written before the weights are
    // renamed into place, so weights seen are whole and vouched for, and a read-only cache
    // that holds the model serves it.
    if let (true, Ok(recorded)) = (path.exists(), std::fs::read_to_string(&sum_path)) {
        return Ok((load_checked(&recorded)?, true));
    }
    let lock_path = dir.with_extension("lock");
    let _lock = crate::fsutil::lock(&lock_path).map_err(|e| {
        Error::Invalid(format!(
            "{what} cache: {e}; the cache (--cache) must be writable to train and store this \
             {what} (it does not hold it yet: {})",
            path.display()
        ))
    })?;
    crate::fsutil::clean_stale_temps(dir);
    if path.exists() {
        match std::fs::read_to_string(&sum_path) {
            Ok(recorded) => return Ok((load_checked(&recorded)?, true)),
            // Cached before checksums were recorded (or its checksum was lost): nothing
            // vouches for it, so it is trained again.
            Err(_) => eprintln!(
                "[{what}] {}: no checksum recorded; training it again",
                path.display()
            ),
        }
    }
    let e = train()?;
    check_finite(e.as_ref(), path, what)?;
    let tmp = crate::fsutil::tmp_path(path);
    let saved = e.save(&tmp).and_then(|_| {
        let bytes = std::fs::read(&tmp).map_err(|e| Error::io(&tmp, e))?;
        // The checksum goes first: whoever sees the weights sees their checksum.
        crate::fsutil::write_atomic(&sum_path, sha256_hex(&bytes).as_bytes())?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    });
    if saved.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    saved?;
    Ok((e, false))
}

/// Log-probability floor of tokens the oracle never considers.
const ORACLE_FLOOR: f32 = -20.0;

/// The oracle: at each position the ideal token has probability `c` (`easy` on easy skill
/// items, `hard` elsewhere) and the rest is spread over three fixed alternatives. Greedy
/// decoding returns the ideal response; sampling at temperature 1 is right per token with
/// probability `c` (calibrated by construction). Once off the ideal path it ends the response.
/// Its logits go through the same decoder as a neural teacher's, so defenses apply alike.
fn oracle_generate(
    prompts: &[&Prompt],
    params: &[GenParams],
    easy: f32,
    hard: f32,
    rng: &mut SimRng,
    processor: Option<&dyn LogitsProcessor>,
) -> Vec<Generation> {
    let v = VOCAB_SIZE;
    let ideals: Vec<Vec<Tok>> = prompts.iter().map(|p| ideal_response(p)).collect();
    let conf: Vec<f32> = prompts
        .iter()
        .map(|p| match p.kind {
            Kind::Skill(_, Tier::Easy) => easy,
            _ => hard,
        })
        .collect();
    let inputs = prompts.iter().map(|p| model_input(p)).collect();
    let mut dec = SamplingDecoder::new(params, rng, v, processor, inputs);
    let mut logits = vec![ORACLE_FLOOR; prompts.len() * v];
    loop {
        logits.fill(ORACLE_FLOOR);
        for (r, ideal) in ideals.iter().enumerate() {
            let row = &mut logits[r * v..(r + 1) * v];
            let done = dec.tokens(r);
            let on_path = done.iter().zip(ideal).all(|(a, b)| a == b);
            match ideal.get(done.len()) {
                Some(&tok) if on_path => {
                    let c = conf[r];
                    row[tok as usize] = c.ln();
                    for k in 1..=3u32 {
                        let alt = (tok + 7 * k + done.len() as u32) % v as u32;
                        row[alt as usize] = ((1.0 - c) / 3.0).ln();
                    }
                }
                _ => row[crate::world::vocab::EOS as usize] = 0.0,
            }
        }
        if dec.step(&logits).is_none() {
            break;
        }
    }
    dec.into_outputs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::vocab::REFUSE;
    use crate::world::Skill;

    /// A curriculum phase trains on its own skills only, with its hard share; it changes the
    /// cache key; the key of a shipped teacher is pinned.
    #[test]
    fn curriculum_phases_draw_their_skills_and_key_the_cache() {
        let plain = TeacherConfig::default();
        let world = WorldConfig::default();
        let mut cfg = plain.clone();
        cfg.train.batch_size = 8;
        cfg.curriculum = vec![Phase {
            steps: 50,
            skills: vec![Skill::Lookup, Skill::Add],
            hard_share: 0.25,
        }];
        let prompts: Vec<Prompt> = Teacher::phase_prompts(&cfg, 0, Harm::Intent).collect();
        assert_eq!(prompts.len(), 50 * 8);
        let mut hard = 0;
        for p in &prompts {
            match p.kind {
                Kind::Skill(Skill::Lookup | Skill::Add, t) => hard += (t == Tier::Hard) as usize,
                ref k => panic!("a phase of lookup and add drew {k:?}"),
            }
        }
        let share = hard as f64 / prompts.len() as f64;
        assert!((share - 0.25).abs() < 0.07, "hard share {share}");
        assert_eq!(cfg.total_steps(), 50 + cfg.train.steps);
        let key = |c: &TeacherConfig| c.hash(&world);
        let mut same_train = cfg.clone();
        same_train.curriculum.clear();
        assert_ne!(key(&cfg), key(&same_train), "the curriculum is in the key");
        // Shipped teachers are found by their key: the quickstart's teacher of run seed 1
        // (teacher seed 1 of the default pool) has the key of its shipped file. The pool size
        // is not in the key (a teacher of seed 1 is the same teacher in any pool).
        assert_eq!(key(&plain.for_run(1)), "277c5f8ab4cc0b52");
        let bigger_pool = TeacherConfig {
            pool: 9,
            ..plain.clone()
        };
        assert_eq!(key(&bigger_pool.for_run(1)), key(&plain.for_run(1)));
        assert_eq!(plain.for_run(6).seed, 1, "run seeds wrap around the pool");
    }

    /// Graded worlds only: the teacher's labels flip on disputed combinations, consistently
    /// (every request with the same context, topic and intent), on about `boundary_noise` of
    /// the borderline combinations (score 1 or 2) in both directions, never elsewhere, and
    /// never in the one-token world.
    #[test]
    fn boundary_noise_flips_disputed_combinations_only() {
        use crate::world::vocab::{N_TOPICS, TOPIC0};
        use std::collections::BTreeMap;
        let world = WorldConfig {
            harm: Harm::Graded,
            boundary_noise: 0.2,
            ..Default::default()
        };
        let intent_world = WorldConfig {
            boundary_noise: 0.2,
            ..Default::default()
        };
        let mut rng = derive_rng(1, "t");
        let mut combos: BTreeMap<(Tok, Tok, Tok), bool> = BTreeMap::new();
        let mut flipped_ways = [0usize; 2];
        for kind in [Kind::Harmful, Kind::LookAlike, Kind::Jailbreak] {
            for _ in 0..6000 {
                let p = crate::world::generate_in(
                    &mut rng,
                    kind,
                    false,
                    crate::world::Side::Train,
                    Harm::Graded,
                );
                let t = &p.tokens;
                let i = t
                    .iter()
                    .position(|&x| (TOPIC0..TOPIC0 + N_TOPICS).contains(&x))
                    .unwrap();
                let key = (t[i - 1], t[i], t[i + 1]);
                let score = crate::world::generate::harm_score(key.0, key.1, key.2);
                let got = boundary_label(&p, &world);
                if let Some(r) = &got {
                    assert!((1..=2).contains(&score));
                    let ideal_refuses = ideal_response(&p)[0] == REFUSE;
                    assert_ne!(r[0] == REFUSE, ideal_refuses);
                    flipped_ways[ideal_refuses as usize] += 1;
                }
                let prev = combos.insert(key, got.is_some());
                assert!(
                    prev.is_none_or(|f| f == got.is_some()),
                    "inconsistent {key:?}"
                );
                assert!(boundary_label(&p, &intent_world).is_none());
            }
        }
        let border: Vec<bool> = combos
            .iter()
            .filter(|(k, _)| (1..=2).contains(&crate::world::generate::harm_score(k.0, k.1, k.2)))
            .map(|(_, &f)| f)
            .collect();
        let share = border.iter().filter(|&&f| f).count() as f64 / border.len() as f64;
        assert!(
            border.len() > 100 && (share - 0.2).abs() < 0.07,
            "{share} of {}",
            border.len()
        );
        assert!(
            flipped_ways[0] > 0 && flipped_ways[1] > 0,
            "{flipped_ways:?}"
        );
    }
}
