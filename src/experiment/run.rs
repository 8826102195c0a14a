//! The runner: teacher (cached), harvest, students at budget checkpoints, evaluation, and
//! atomic results directories. An interrupted run leaves no visible partial directory; a
//! finished run is skipped when the experiment is run again.

use super::config::{Experiment, RunSpec};
use super::results::{git_revision, is_finished, versions, write_run_dir};
use crate::api::Api;
use crate::attacker::{self, Harvest};
use crate::error::{Error, Result};
use crate::eval::{self, Scores};
use crate::model::generate::{self, GenParams};
use crate::model::Engine;
use crate::rng::{derive_rng, derive_seed};
use crate::student;
use crate::teacher::Teacher;
use crate::world::vocab::Tok;
use crate::world::EvalSuites;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

/// Greedy responses of a teacher or student to every eval prompt.
pub fn eval_responses(
    teacher: Option<&Teacher>,
    engine: Option<&dyn Engine>,
    suites: &EvalSuites,
) -> Vec<Vec<Tok>> {
    let prompts: Vec<_> = suites.prompts.iter().collect();
    let params = vec![GenParams::greedy(32); prompts.len()];
    let mut rng = derive_rng(0, "eval/greedy");
    let gens = match (teacher, engine) {
        (Some(t), _) => t.respond(&prompts, &params, &mut rng, None),
        (None, Some(e)) => generate::generate(e, &prompts, &params, 512, &mut rng, None),
        (None, None) => vec![],
    };
    gens.into_iter().map(|g| g.tokens).collect()
}

/// A teacher with its eval responses and scores, shared by the runs that use it.
pub struct EvaluatedTeacher {
    pub teacher: Teacher,
    pub responses: Vec<Vec<Tok>>,
    pub scores: Scores,
    pub from_cache: bool,
}

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
            "{}/{:?}/{:?}",
            cfg.teacher.hash(cfg.backend(), &cfg.world),
            cfg.teacher.kind,
            cfg.world
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
            if cfg.student.init != student::Init::Base {
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
        match self.bases.get(&Self::base_key(spec)) {
            Some(Ok(p)) => Ok(Some(p.clone())),
            Some(Err(e)) => Err(Error::Invalid(e.clone())),
            None => Err(Error::Invalid("student.base not prepared".into())),
        }
    }

    fn ensure_teacher(&mut self, spec: &RunSpec) -> Result<String> {
        let cfg = &spec.config;
        let key = Self::teacher_key(spec);
        if !self.teachers.contains_key(&key) {
            let t0 = Instant::now();
            let steps = cfg.teacher.train.steps;
            let (teacher, from_cache) = Teacher::load_or_train(
                &cfg.teacher,
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

    /// The metric rows (one per budget checkpoint) and, with traffic, the replay's timeline.
    fn execute(
        &self,
        spec: &RunSpec,
        log: &(dyn Fn(&str) + Sync),
    ) -> Result<(Vec<Value>, Option<Value>)> {
        let mut cfg = spec.config.clone();
        cfg.attacker.world_harm = cfg.world.harm;
        let suites = EvalSuites::new(&cfg.world);
        let t = self.teachers.get(&Self::teacher_key(spec)).ok_or_else(|| {
            Error::Invalid(
                self.teacher_errors
                    .get(&Self::teacher_key(spec))
                    .cloned()
                    .unwrap_or_else(|| "teacher not prepared".into()),
            )
        })?;
        let (t_scores, t_resp) = (&t.scores, &t.responses);
        let base = self.base_path(spec)?;
        let base = base.as_deref();
        let t_h = Instant::now();
        let mut detection = serde_json::Map::new();
        let mut timeline = None;
        let (harvest, mut api, attacker_ids) = if cfg.traffic.enabled {
            // The campaign on the API beside benign users, detectors acting; the teacher
            // answers a sample of what the API admitted, and that is the harvest.
            let tr = &cfg.traffic;
            let planned = tr
                .campaign
                .planned(cfg.attacker.accounts, cfg.attacker.max_days);
            let one_in = tr.answer_one_in.unwrap_or_else(|| {
                ((planned / cfg.attacker.budget.max(1) as f64).floor() as u64).max(1)
            });
            let plan = Some((one_in, cfg.attacker.budget));
            let o =
                crate::traffic::replay::Replay::new(&cfg.api, tr, &cfg.attacker, spec.seed, plan)?
                    .run()?;
            let hlog = o
                .harvest
                .as_ref()
                .ok_or_else(|| Error::Invalid("the replay kept no harvest".into()))?;
            let harvest = hlog.answer(
                &o.api,
                &t.teacher,
                &cfg.attacker,
                &o.attacker_accounts,
                spec.seed,
            );
            timeline = Some(json!({
                "campaign_planned": planned,
                "attacker_accounts": cfg.attacker.accounts,
                "benign_users": tr.population.users,
                "limit_change_day": tr.limit_change.as_ref().map(|c| c.day),
                "days": &o.detection.timeline,
            }));
            detection = detection_metrics(&cfg, &o, hlog, planned);
            log(&format!(
                "{}: the API answered {:.1}% of the campaign's planned queries (recall {:.3}); \
                 the teacher answered {} sampled queries (one in {one_in})",
                spec.id,
                100.0 * o.stats.attacker_served as f64 / planned.max(1.0),
                o.detection.recall,
                harvest.items.len()
            ));
            (harvest, o.api, o.attacker_accounts)
        } else {
            let mut api = Api::new(cfg.api.clone())?;
            let learner = |items: &[attacker::Item], seed: u64| {
                student::distill(&cfg.student, cfg.backend(), base, items, seed).map(|(e, _)| e)
            };
            let harvest: Harvest = attacker::harvest(
                &cfg.attacker,
                &mut api,
                &t.teacher,
                spec.seed,
                Some(&learner),
            )?;
            let ids = harvest.account_ids.clone();
            (harvest, api, ids)
        };
        let harvest_secs = t_h.elapsed().as_secs_f64();
        log(&format!(
            "{}: harvested {} items in {:.1}s ({:.1} simulated minutes)",
            spec.id,
            harvest.items.len(),
            harvest_secs,
            harvest.times.last().copied().unwrap_or(0.0) / 60.0
        ));
        // What benign users get under the output defenses: the teacher's eval responses as
        // served (greedy requests), scored against the ideal.
        let defenses = crate::api::defense::Defenses::for_api(&cfg.api)?;
        let prompts: Vec<_> = suites.prompts.iter().collect();
        let params = vec![GenParams::greedy(cfg.api.max_tokens); prompts.len()];
        let mut rng = derive_rng(spec.seed, "eval/served");
        let served: Vec<Vec<Tok>> = defenses
            .serve(&t.teacher, &prompts, params, &mut rng)
            .into_iter()
            .map(|(g, _)| g.tokens)
            .collect();
        let served_cap = eval::score(&suites, &served)["capability"];
        let utility = served_cap / t_scores["capability"];
        // The watermark key the provenance test uses (the configured one, or a fixed key
        // for runs without a watermark, as a control).
        let (wm_key, wm_gamma) = cfg
            .api
            .defenses
            .iter()
            .find_map(|d| match d {
                crate::api::defense::DefenseConfig::Watermark { key, gamma, .. } => {
                    Some((*key, *gamma))
                }
                _ => None,
            })
            .unwrap_or((42, 0.25));
        let flip = cfg.api.defenses.iter().find_map(|d| match d {
            crate::api::defense::DefenseConfig::Flip { rate, key } => Some((*rate, *key)),
            _ => None,
        });
        let mut rows = Vec::new();
        // A copy built on a base: its row at budget 0 is the base itself.
        for budget in cfg.row_budgets() {
            // A campaign the detectors stopped before its first answer leaves an untrained copy.
            let n = budget.min(harvest.items.len());
            if n == 0 && budget > 0 && !cfg.traffic.enabled {
                return Err(Error::Invalid("the campaign harvested nothing".into()));
            }
            let items = &harvest.items[..n];
            let t_s = Instant::now();
            let seed = derive_seed(spec.seed, &format!("student/{budget}"));
            let mut kept: Vec<crate::attacker::Item> = student::drop_random(
                &cfg.attacker.training_items(items),
                cfg.student.drop_share,
                derive_seed(seed, "drop"),
            );
            // A self-family chain: the harvest trains the attacker's larger model, whose
            // answers then stand in for the teacher's.
            let mut chain_metrics = serde_json::Map::new();
            if let (Some(stage), false) = (&cfg.student.chain, kept.is_empty()) {
                let (large_items, m) = chain_stage(&cfg, stage, &kept, &suites, t, seed)?;
                kept = large_items;
                chain_metrics = m;
            }
            // Budget 0 is the base itself; an empty harvest (a campaign stopped or blocked
            // before its first answer) leaves the copy untrained: no steps to take.
            let (student, report, on_policy) = if budget == 0 || kept.is_empty() {
                let s = crate::base::new_student(cfg.backend(), cfg.student.spec()?, seed, base)?;
                (s, crate::model::train::TrainReport::default(), None)
            } else if cfg.student.method == student::Method::OnPolicy {
                let end = harvest.times.last().copied().unwrap_or(0.0);
                let (s, l, o) = student::on_policy(
                    &cfg.student,
                    cfg.backend(),
                    &cfg.attacker,
                    &mut api,
                    &attacker_ids,
                    &t.teacher,
                    base,
                    &kept,
                    seed,
                    end,
                )?;
                (s, l, Some(o))
            } else {
                let (s, l) = student::distill(&cfg.student, cfg.backend(), base, &kept, seed)?;
                (s, l, None)
            };
            let train_secs = t_s.elapsed().as_secs_f64();
            if !report.is_finite() {
                return Err(Error::Invalid(format!(
                    "student training diverged at budget {budget}: loss {} after {} steps \
                     (lower student.train.lr)",
                    report.train_loss, report.steps
                )));
            }
            let loss = report.train_loss;
            let s_resp = eval_responses(None, Some(student.as_ref()), &suites);
            let s_scores = eval::score(&suites, &s_resp);
            let rel = eval::relative(&s_scores, t_scores, &suites, &s_resp, t_resp);
            let harmful = items
                .iter()
                .filter(|i| {
                    matches!(
                        i.prompt.kind,
                        crate::world::Kind::Harmful | crate::world::Kind::Jailbreak
                    )
                })
                .count();
            let voiced = items.iter().filter(|i| i.prompt.voice.is_some()).count();
            // How peaked the returned distributions are: mean probability of the top token
            // (1.0 would mean the logprobs carry nothing beyond the text).
            let tops: Vec<f64> = items
                .iter()
                .flat_map(|i| {
                    i.top
                        .iter()
                        .filter_map(|t| t.first())
                        .map(|&(_, lp)| (lp as f64).exp())
                })
                .collect();
            let top1 = if tops.is_empty() {
                f64::NAN
            } else {
                tops.iter().sum::<f64>() / tops.len() as f64
            };
            let mut m = serde_json::Map::new();
            m.insert("budget".into(), json!(budget));
            m.insert("harvest.items".into(), json!(n));
            m.insert(
                "harvest.harmful_share".into(),
                json!(harmful as f64 / n as f64),
            );
            m.insert(
                "harvest.voice_share".into(),
                json!(voiced as f64 / n as f64),
            );
            m.insert("harvest.top1_prob".into(), json!(top1));
            m.insert("harvest.trained_items".into(), json!(kept.len()));
            let mut api_usd = harvest.api_spend_at(n);
            if let Some(o) = &on_policy {
                m.insert("harvest.on_policy_scored".into(), json!(o.scored));
                m.insert("harvest.on_policy_denied".into(), json!(o.denied as u8));
                m.insert("cost.scoring_usd".into(), json!(o.spend_usd));
                api_usd += o.spend_usd;
            }
            m.insert(
                "sim.hours".into(),
                json!(harvest.times.get(n.max(1) - 1).copied().unwrap_or(0.0) / 3600.0),
            );
            m.insert("cost.api_usd".into(), json!(api_usd));
            m.insert("cost.accounts_usd".into(), json!(harvest.accounts_cost()));
            m.insert("train.loss".into(), json!(loss));
            m.insert("train.steps".into(), json!(report.steps));
            m.insert("train.best_step".into(), json!(report.best_step));
            m.insert("train.val_loss".into(), json!(report.val_loss));
            m.insert(
                "train.stopped_early".into(),
                json!(report.stopped_early as u8),
            );
            m.insert("train.seconds".into(), json!(train_secs));
            m.insert("defense.utility".into(), json!(utility));
            m.extend(detection.clone());
            if cfg.traffic.enabled {
                let from_fallback = harvest.from_fallback[..n].iter().filter(|&&f| f).count();
                m.insert(
                    "harvest.fallback_share".into(),
                    json!(from_fallback as f64 / n.max(1) as f64),
                );
            }
            // The provider's provenance test: sample the suspect model (temperature 1) on its
            // own probe prompts and score the text with the watermark key.
            let probe_mix = crate::world::Mix::benign().in_world(cfg.world.harm);
            let mut prng = derive_rng(spec.seed, "provenance/probe");
            let probes: Vec<crate::world::Prompt> = (0..PROVENANCE_PROBES)
                .map(|_| probe_mix.sample(&mut prng))
                .collect();
            let probe_refs: Vec<&crate::world::Prompt> = probes.iter().collect();
            let probe_params = vec![
                GenParams {
                    max_new: cfg.api.max_tokens,
                    temperature: 1.0,
                    top_k: 0,
                };
                probes.len()
            ];
            let sampled = generate::generate(
                student.as_ref(),
                &probe_refs,
                &probe_params,
                512,
                &mut prng,
                None,
            );
            let det = crate::api::defense::watermark::provenance(
                wm_key,
                wm_gamma,
                sampled.iter().map(|g| g.tokens.as_slice()),
                200,
            );
            m.insert("provenance.watermark_z".into(), json!(det.z));
            m.insert("provenance.watermark_p".into(), json!(det.p_value));
            m.insert(
                "provenance.watermark_green_share".into(),
                json!(det.green_share),
            );
            m.insert("provenance.watermark_tokens".into(), json!(det.n));
            if let Some((rate, key)) = flip {
                // DAWN's check: replay the harvested queries that were flipped and count how
                // often the suspect model repeats the flipped answer.
                let flipped: Vec<&crate::attacker::Item> = items
                    .iter()
                    .filter(|i| crate::api::defense::flipped(&i.prompt, key, rate))
                    .take(300)
                    .collect();
                let prompts: Vec<&crate::world::Prompt> =
                    flipped.iter().map(|i| &i.prompt).collect();
                let params = vec![GenParams::greedy(32); prompts.len()];
                let mut rng = derive_rng(spec.seed, "provenance/flip");
                let answers =
                    generate::generate(student.as_ref(), &prompts, &params, 512, &mut rng, None);
                let agree: Vec<f64> = flipped
                    .iter()
                    .zip(&answers)
                    .map(|(i, g)| {
                        (crate::world::parse_response(&g.tokens).answer
                            == crate::world::parse_response(&i.tokens).answer)
                            as u32 as f64
                    })
                    .collect();
                let v = if agree.is_empty() {
                    f64::NAN
                } else {
                    agree.iter().sum::<f64>() / agree.len() as f64
                };
                m.insert("provenance.flip_agreement".into(), json!(v));
            }
            for (k, v) in rel.iter().chain(s_scores.iter()) {
                m.insert(k.clone(), json!(v));
            }
            m.extend(chain_metrics);
            for (k, v) in t_scores {
                m.insert(format!("teacher.{k}"), json!(v));
            }
            log(&format!(
                "{} budget {budget}: parity {:.3}, loss {loss:.3}, {train_secs:.1}s",
                spec.id, rel["parity"]
            ));
            rows.push(Value::Object(m));
        }
        Ok((rows, timeline))
    }
}

/// Prompts the provenance test samples the suspect model on.
const PROVENANCE_PROBES: usize = 1000;

/// What a replay says about detection, benign casualties and the campaign's cost.
fn detection_metrics(
    cfg: &super::config::ExperimentConfig,
    o: &crate::traffic::replay::Outcome,
    log: &crate::traffic::harvest::HarvestLog,
    planned: f64,
) -> serde_json::Map<String, Value> {
    use crate::traffic::Action;
    let (st, d) = (&o.stats, &o.detection);
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.into(), v);
    };
    put(
        "detection.days_to_first_action",
        json!(d.days_to_first_action),
    );
    if cfg.traffic.limit_change.is_some() {
        put(
            "detection.days_to_first_action_after_change",
            json!(d.days_to_first_action_after_change),
        );
    }
    put("detection.recall", json!(d.recall));
    put(
        "detection.false_positive_rate",
        json!(d.false_positive_rate),
    );
    // Benign casualties: refused queries (ban, suspension) block; fallback answers and
    // throttling degrade.
    let benign_total = (st.benign_served + d.benign_blocked + d.benign_degraded).max(1) as f64;
    put("detection.benign_blocked", json!(d.benign_blocked));
    put(
        "detection.benign_blocked_share",
        json!(d.benign_blocked as f64 / benign_total),
    );
    put(
        "detection.benign_degraded_share",
        json!((d.benign_degraded + d.benign_throttled) as f64 / benign_total),
    );
    if cfg.traffic.action == Action::Challenge {
        put("detection.challenged_benign", json!(d.challenged_benign));
        put("detection.benign_dropped", json!(d.benign_dropped));
    }
    put("detection.regrown", json!(d.regrown));
    // The share of the campaign's plan the teacher answered (what the attacker got).
    put(
        "detection.harvest_share",
        json!((st.attacker_served as f64 / planned.max(1.0)).min(1.0)),
    );
    put("harvest.sample_one_in", json!(log.one_in));
    put("harvest.campaign_answered", json!(st.attacker_served));
    // The whole campaign's cost at its own scale: API spend plus identity challenges, and per
    // thousand attacker queries the teacher answered.
    let campaign_usd = d.attacker_spend_usd + d.attacker_challenge_usd;
    put("cost.campaign_accounts_usd", json!(d.attacker_accounts_usd));
    put("cost.campaign_usd", json!(campaign_usd));
    put(
        "cost.campaign_usd_per_1k",
        json!(1e3 * campaign_usd / st.attacker_served.max(1) as f64),
    );
    m
}

/// The first stage of a self-family chain: the attacker's larger model trained on the harvest
/// (from scratch, with the student's schedule), scored (`chain.large.*`: parity, safety, EI),
/// then asked the harvest's prompts offline: its answers (greedy, with its top-k logprobs where
/// the attacker asked the API for them) are the items the student learns from.
fn chain_stage(
    cfg: &super::config::ExperimentConfig,
    stage: &student::ChainStage,
    items: &[crate::attacker::Item],
    suites: &EvalSuites,
    t: &EvaluatedTeacher,
    seed: u64,
) -> Result<(Vec<crate::attacker::Item>, serde_json::Map<String, Value>)> {
    let large_cfg = student::StudentConfig {
        size: stage.size.clone(),
        init: student::Init::Scratch,
        chain: None,
        ..cfg.student.clone()
    };
    let (large, report) = student::distill(
        &large_cfg,
        cfg.backend(),
        None,
        items,
        derive_seed(seed, "chain/large"),
    )?;
    if !report.is_finite() {
        return Err(Error::Invalid(format!(
            "student.chain: the larger model's training diverged (loss {})",
            report.train_loss
        )));
    }
    let resp = eval_responses(None, Some(large.as_ref()), suites);
    let scores = eval::score(suites, &resp);
    let rel = eval::relative(&scores, &t.scores, suites, &resp, &t.responses);
    let mut m = serde_json::Map::new();
    for (k, v) in rel.iter().chain(scores.iter()) {
        m.insert(format!("chain.large.{k}"), json!(v));
    }
    m.insert("chain.large.train_steps".into(), json!(report.steps));
    let prompts: Vec<&crate::world::Prompt> = items.iter().map(|i| &i.prompt).collect();
    let top_k = cfg
        .attacker
        .top_k
        .min(cfg.api.logprobs)
        .min(generate::MAX_TOP_K);
    let params = vec![
        GenParams {
            max_new: cfg.api.max_tokens,
            temperature: 0.0,
            top_k,
        };
        prompts.len()
    ];
    let mut rng = derive_rng(seed, "chain/answers");
    let gens = generate::generate(large.as_ref(), &prompts, &params, 256, &mut rng, None);
    let answered = prompts
        .into_iter()
        .zip(gens)
        .map(|(p, g)| crate::attacker::Item {
            prompt: p.clone(),
            tokens: g.tokens,
            top: g.top,
        })
        .collect();
    Ok((answered, m))
}
