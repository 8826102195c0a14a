//! `distill-sim teacher train`: the teachers an experiment needs, loaded (shipped or cached)
//! or trained, each with its held-out table; `--retrain` trains them again and compares the
//! SHA-256 with the shipped file's; `--ship` writes them, with their manifests, into the
//! shipped models (see [`crate::shipped`]).

use super::config::Experiment;
use super::stages::eval_responses;
use crate::error::{Error, Result};
use crate::eval::{self, Scores};
use crate::shipped::{self, Manifest};
use crate::teacher::{Teacher, TeacherConfig, TeacherKind};
use crate::world::{EvalSuites, WorldConfig};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `teacher train` does beyond loading.
#[derive(Clone, Copy, Debug, Default)]
pub struct TeacherArgs {
    /// Train every teacher again (ignoring shipped and cached ones) and compare checksums.
    pub retrain: bool,
    /// Write the retrained teachers into the shipped models.
    pub ship: bool,
}

/// The distinct trained teachers of an experiment's runs (teacher config and world), in run
/// order.
pub fn distinct_teachers(exp: &Experiment) -> Vec<(TeacherConfig, WorldConfig)> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for r in &exp.runs {
        let (c, t) = (&r.config, r.config.run_teacher());
        if t.kind == TeacherKind::Trained && seen.insert(t.hash(&c.world)) {
            out.push((t, c.world.clone()));
        }
    }
    out
}

/// The held-out eval table of a teacher (the run's `teacher.*` metrics, unprefixed).
pub fn table(teacher: &Teacher, world: &WorldConfig) -> Scores {
    let suites = EvalSuites::new(world);
    eval::score(&suites, &eval_responses(Some(teacher), None, &suites))
}

/// Run the command; returns, per teacher, a heading, a line on where it came from, and its
/// held-out table.
pub fn run(exp: &Experiment, cache: &Path, args: TeacherArgs) -> Result<Vec<(String, Scores)>> {
    if args.ship && !args.retrain {
        return Err(Error::Invalid(
            "--ship writes teachers as they are trained: use it with --retrain".into(),
        ));
    }
    let teachers = distinct_teachers(exp);
    if teachers.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no run uses a trained teacher (teacher.kind: oracle)",
            exp.file.display()
        )));
    }
    let mut out = Vec::new();
    for (i, (cfg, world)) in teachers.iter().enumerate() {
        let key = cfg.hash(world);
        eprintln!(
            "[teacher] {}/{}: key {key} (seed {}, {} steps)",
            i + 1,
            teachers.len(),
            cfg.seed,
            cfg.total_steps()
        );
        let (scores, line) = if args.retrain {
            retrain(cfg, world, cache, args.ship)?
        } else {
            load(cfg, world, cache)?
        };
        out.push((
            format!("## teacher {key} (seed {})\n\n{line}\n", cfg.seed),
            scores,
        ));
    }
    Ok(out)
}

fn progress(steps: usize, t0: Instant) -> impl FnMut(usize, f32) {
    move |s, loss| {
        if s % 500 == 0 || s + 1 == steps {
            eprintln!(
                "[teacher] step {:>6}/{steps} loss {loss:.4} ({:.0}s)",
                s + 1,
                t0.elapsed().as_secs_f64()
            );
        }
    }
}

fn load(cfg: &TeacherConfig, world: &WorldConfig, cache: &Path) -> Result<(Scores, String)> {
    let key = cfg.hash(world);
    let shipped = shipped::find("teachers", &key)?;
    let t0 = Instant::now();
    let (teacher, cached) = Teacher::load_or_train(
        cfg,
        cfg.trainer(),
        world,
        cache,
        progress(cfg.total_steps(), t0),
    )?;
    let line = match (shipped, cached) {
        (Some((p, m)), _) => format!(
            "Shipped: {} (SHA-256 {}, trained in {:.0} s on {}).",
            p.display(),
            m.sha256,
            m.train_seconds,
            m.machine
        ),
        (None, true) => format!(
            "Cached: {}.",
            Teacher::cache_path(cfg, world, cache).display()
        ),
        (None, false) => format!(
            "Trained in {:.1} s and cached: {}.",
            t0.elapsed().as_secs_f64(),
            Teacher::cache_path(cfg, world, cache).display()
        ),
    };
    Ok((table(&teacher, world), line))
}

fn retrain(
    cfg: &TeacherConfig,
    world: &WorldConfig,
    cache: &Path,
    ship: bool,
) -> Result<(Scores, String)> {
    let key = cfg.hash(world);
    let t0 = Instant::now();
    let teacher = Teacher::train(cfg, cfg.trainer(), world, progress(cfg.total_steps(), t0))?;
    let secs = t0.elapsed().as_secs_f64();
    let eng = teacher
        .engine()
        .ok_or_else(|| Error::Invalid("an oracle is not trained".into()))?;
    let dir = cache.join("teachers").join(&key);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tmp: PathBuf = crate::fsutil::tmp_path(&dir.join("retrained.safetensors"));
    eng.save(&tmp)?;
    let bytes = std::fs::read(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let sha = shipped::sha256_hex(&bytes);
    let mut line = format!(
        "Retrained in {secs:.1} s on {}: SHA-256 {sha}",
        shipped::machine()
    );
    line += &match shipped::find("teachers", &key) {
        Ok(Some((_, m))) if m.sha256 == sha => " reproduces the shipped file.".to_string(),
        Ok(Some((_, m))) => format!(
            " differs from the shipped {} (trained on {}; another CPU type or thread count \
             rounds differently).",
            m.sha256, m.machine
        ),
        Ok(None) => " (nothing shipped under this key).".to_string(),
        Err(e) => format!(" (the shipped file is unusable: {e})."),
    };
    let scores = table(&teacher, world);
    if ship {
        let m = Manifest {
            kind: "teachers".into(),
            key: key.clone(),
            config: cfg.key_json(world),
            sha256: sha,
            engine: cfg.trainer().tag().to_string(),
            steps: cfg.total_steps(),
            train_seconds: (secs * 10.0).round() / 10.0,
            machine: shipped::machine(),
            table: scores.clone(),
        };
        let root = shipped::root().unwrap_or_else(|| PathBuf::from("shipped"));
        let d = shipped::write(&root, &tmp, &m)?;
        line += &format!(" Shipped to {}.", d.display());
    }
    let _ = std::fs::remove_file(&tmp);
    Ok((scores, line))
}
