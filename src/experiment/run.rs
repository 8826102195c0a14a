//! The runner: teacher (cached), harvest, students at budget checkpoints, evaluation, and
//! atomic results directories. An interrupted run leaves no visible partial directory; a
//! finished run is skipped when the experiment is run again.

use super::config::{Experiment, RunSpec};
use super::results::{git_revision, is_finished, versions, write_run_dir};
use super::stages::{self, eval_responses, EvaluatedTeacher};
use crate::error::{Error, Result};
use crate::eval;
use crate::student;
use crate::teacher::Teacher;
use crate::world::EvalSuites;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

pub struct Runner {
    pub results_root: PathBuf,
    pub cache_dir: PathBuf,
    teachers: HashMap<String, EvaluatedTeacher>,
    /// Why a teacher could not be prepared, by teacher key.
    teacher_errors: HashMap<String, String>,
    /// The attacker's base models (weights file, or why it could not be had), by base key.
    bases: HashMap<String, std::result::Result<PathBuf, String>>,
}

/// The status of a run that another process is running (this one skipped it).
pub const BUSY: &str = "busy elsewhere";

/// Outcome of one run.
pub struct RunOutcome {
    pub id: String,
    pub status: String,
    pub skipped: bool,
}

impl Runner {
    pub fn new(results_root: PathBuf, cache_dir: PathBuf) -> Runner {
        Runner {
            results_root,
            cache_dir,
            teachers: HashMap::new(),
            teacher_errors: HashMap::new(),
            bases: HashMap::new(),
        }
    }

    /// The evaluated teacher for a run's config (trained and cached on first use).
    pub fn teacher(&mut self, spec: &RunSpec) -> Result<&EvaluatedTeacher> {
        let key = self.ensure_teacher(spec)?;
        Ok(&self.teachers[&key])
    }

    fn teacher_key(spec: &RunSpec) -> String {
        let cfg = &spec.config;
        format!(
            "{}/{:?}/{:?}/{}",
            cfg.run_teacher().hash(&cfg.world),
            cfg.teacher.kind,
            cfg.world,
            cfg.backend().tag()
        )
    }

    /// Train or load every teacher the runs need (before runs go parallel). A teacher that
    /// cannot be had (a corrupt cache file, diverged training) fails the runs that need it,
    /// each with the reason in its summary, not the whole sweep.
    pub fn prepare(&mut self, runs: &[RunSpec]) -> Result<()> {
        for r in runs {
            let key = Self::teacher_key(r);
            if self.teacher_errors.contains_key(&key) {
                continue;
            }
            if let Err(e) = self.ensure_teacher(r) {
                eprintln!("[teacher] {e}");
                self.teacher_errors.insert(key, e.to_string());
            }
        }
        for r in runs {
            let cfg = &r.config;
            if cfg.student.init != student::Init::Base && !cfg.attacker.filters() {
                continue;
            }
            let key = Self::base_key(r);
            if self.bases.contains_key(&key) {
                continue;
            }
            let got = cfg.student.spec().and_then(|spec| {
                let b = &cfg.student.base;
                b.load_or_train(&spec, &cfg.student.size, cfg.backend(), &self.cache_dir)
            });
            if let Err(e) = &got {
                eprintln!("[base] {e}");
            }
            self.bases
                .insert(key, got.map(|(p, _)| p).map_err(|e| e.to_string()));
        }
        Ok(())
    }

    fn base_key(spec: &RunSpec) -> String {
        let s = &spec.config.student;
        s.base.hash(&s.size, spec.config.backend())
    }

    /// The base model a run's students start from (None: from scratch).
    fn base_path(&self, spec: &RunSpec) -> Result<Option<PathBuf>> {
        if spec.config.student.init != student::Init::Base {
            return Ok(None);
        }
        self.prepared_base(spec).map(Some)
    }

    /// The base model that scores a filtering attacker's harvest (None: it does not filter).
    fn scorer_path(&self, spec: &RunSpec) -> Result<Option<PathBuf>> {
        if !spec.config.attacker.filters() {
            return Ok(None);
        }
        self.prepared_base(spec).map(Some)
    }

    fn prepared_base(&self, spec: &RunSpec) -> Result<PathBuf> {
        match self.bases.get(&Self::base_key(spec)) {
            Some(Ok(p)) => Ok(p.clone()),
            Some(Err(e)) => Err(Error::Invalid(e.clone())),
            None => Err(Error::Invalid("student.base not prepared".into())),
        }
    }

    fn ensure_teacher(&mut self, spec: &RunSpec) -> Result<String> {
        let cfg = &spec.config;
        let key = Self::teacher_key(spec);
        if !self.teachers.contains_key(&key) {
            let t0 = Instant::now();
            let tcfg = cfg.run_teacher();
            let steps = tcfg.total_steps();
            let (teacher, from_cache) = Teacher::load_or_train(
                &tcfg,
                cfg.backend(),
                &cfg.world,
                &self.cache_dir,
                |s, loss| {
                    if s % 100 == 0 || s + 1 == steps {
                        eprintln!(
                            "[teacher] step {:>5}/{steps} loss {loss:.4} ({:.0}s)",
                            s + 1,
                            t0.elapsed().as_secs_f64()
                        );
                    }
                },
            )?;
            if !from_cache {
                eprintln!(
                    "[teacher] trained in {:.1}s, cached",
                    t0.elapsed().as_secs_f64()
                );
            }
            let suites = EvalSuites::new(&cfg.world);
            let responses = eval_responses(Some(&teacher), None, &suites);
            let scores = eval::score(&suites, &responses);
            self.teachers.insert(
                key.clone(),
                EvaluatedTeacher {
                    teacher,
                    responses,
                    scores,
                    from_cache,
                },
            );
        }
        Ok(key)
    }

    pub fn run_dir(&self, exp: &Experiment, id: &str) -> PathBuf {
        self.results_root.join(&exp.config.name).join(id)
    }

    /// The lock a process holds while it runs `spec` (outside the run directories, which
    /// readers list).
    pub fn lock_path(&self, exp: &Experiment, spec: &RunSpec) -> PathBuf {
        self.results_root
            .join(".locks")
            .join(&exp.config.name)
            .join(format!("{}.lock", spec.id))
    }

    /// Whether another process is running `spec` now.
    pub fn busy_elsewhere(&self, exp: &Experiment, spec: &RunSpec) -> bool {
        matches!(
            crate::fsutil::try_lock(&self.lock_path(exp, spec)),
            Ok(None)
        )
    }

    /// Remove the temporaries that crashed or failed writes left in this experiment's
    /// results and in the teacher cache. Returns how many were removed.
    pub fn clean_temps(&self, exp: &Experiment) -> usize {
        let mut n = crate::fsutil::clean_stale_temps(&self.results_root.join(&exp.config.name));
        if let Ok(entries) = std::fs::read_dir(self.cache_dir.join("teachers")) {
            for e in entries.flatten() {
                n += crate::fsutil::clean_stale_temps(&e.path());
            }
        }
        n
    }

    /// Run one grid point, or skip it if its results are complete.
    pub fn run(&self, exp: &Experiment, spec: &RunSpec, log: &(dyn Fn(&str) + Sync)) -> RunOutcome {
        let dir = self.run_dir(exp, &spec.id);
        // A run is done by one process: another sweep into the same results skips it.
        let lock = match crate::fsutil::try_lock(&self.lock_path(exp, spec)) {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                return RunOutcome {
                    id: spec.id.clone(),
                    status: BUSY.into(),
                    skipped: true,
                }
            }
            Err(e) => {
                return RunOutcome {
                    id: spec.id.clone(),
                    status: format!("failed: {e}"),
                    skipped: false,
                }
            }
        };
        if is_finished(&dir, spec) {
            return RunOutcome {
                id: spec.id.clone(),
                status: "ok".into(),
                skipped: true,
            };
        }
        let t0 = Instant::now();
        let result = self.execute(spec, log);
        let wall = t0.elapsed().as_secs_f64();
        let (status, error, rows, timeline) = match result {
            Ok((rows, timeline)) => ("ok".to_string(), None, rows, timeline),
            Err(e) => ("failed".to_string(), Some(e.to_string()), vec![], None),
        };
        let summary = json!({
            "experiment": exp.config.name,
            "run": spec.id,
            "index": spec.index,
            "status": status,
            "error": error,
            "seed": spec.seed,
            // The teacher the run faced (its seed in the pool and its cache key).
            "teacher": {
                "seed": spec.config.run_teacher().seed,
                "key": spec.config.run_teacher().hash(&spec.config.world),
            },
            "point": spec.point.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<serde_json::Map<_, _>>(),
            "wall_seconds": wall,
            "versions": versions(),
            "git_revision": git_revision(),
            "final": rows.last().cloned().unwrap_or(Value::Null),
        });
        if let Err(e) = write_run_dir(&dir, spec, &rows, &summary, timeline.as_ref()) {
            return RunOutcome {
                id: spec.id.clone(),
                status: format!("failed: {e}"),
                skipped: false,
            };
        }
        drop(lock);
        RunOutcome {
            id: spec.id.clone(),
            status: match error {
                Some(e) => format!("failed: {e}"),
                None => status,
            },
            skipped: false,
        }
    }

    /// The metric rows (one per budget checkpoint) and, with traffic, the replay's timeline:
    /// the loop's stages in order (see [`stages`]).
    fn execute(
        &self,
        spec: &RunSpec,
        log: &(dyn Fn(&str) + Sync),
    ) -> Result<(Vec<Value>, Option<Value>)> {
        let key = Self::teacher_key(spec);
        let teacher = self.teachers.get(&key).ok_or_else(|| {
            Error::Invalid(
                self.teacher_errors
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| "teacher not prepared".into()),
            )
        })?;
        let base = self.base_path(spec)?;
        let scorer = self.scorer_path(spec)?;
        let mut cfg = spec.config.clone();
        cfg.attacker.world_harm = cfg.world.harm;
        let ctx = stages::Context {
            suites: EvalSuites::new(&cfg.world),
            cfg,
            spec,
            teacher,
            base: base.as_deref(),
            scorer: scorer.as_deref(),
            log,
        };
        let mut harvested = stages::harvest(&ctx)?;
        let utility = stages::served_utility(&ctx)?;
        let keys = stages::ProvenanceKeys::of(&ctx.cfg);
        // A copy built on a base: its row at budget 0 is the base itself.
        let rows = ctx
            .cfg
            .row_budgets()
            .into_iter()
            .map(|budget| stages::checkpoint(&ctx, &mut harvested, budget, utility, &keys))
            .collect::<Result<Vec<_>>>()?;
        Ok((rows, harvested.timeline))
    }
}
