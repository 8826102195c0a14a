//! The stages of one run, in the order of the loop (DESIGN.md): the harvest (direct, or
//! replayed on the simulated clock beside benign users and detectors), then at each budget
//! checkpoint the student (from scratch, from the attacker's base, through a self-family
//! chain, or on-policy), its evaluation, and the metric record. Each stage reads the run's
//! [`Context`] and hands its typed result to the next; a new stage (an adaptive attacker, a
//! new detector score) goes between two of them.

use super::config::{ExperimentConfig, RunSpec};
use crate::api::defense::DefenseConfig;
use crate::api::{AccountId, Api};
use crate::attacker::{self, Harvest, Item};
use crate::error::{Error, Result};
use crate::eval;
use crate::eval::Scores;
use crate::model::generate::{self, GenParams};
use crate::model::train::TrainReport;
use crate::model::Engine;
use crate::rng::{derive_rng, derive_seed};
use crate::student;
use crate::teacher::Teacher;
use crate::world::vocab::Tok;
use crate::world::EvalSuites;
use serde_json::{json, Map, Value};
use std::path::Path;
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

/// What every stage of one run reads.
pub(super) struct Context<'a> {
    /// The run's config (with the world's harm set on the attacker).
    pub cfg: ExperimentConfig,
    pub spec: &'a RunSpec,
    pub teacher: &'a EvaluatedTeacher,
    /// The attacker's base model (None: students start from scratch).
    pub base: Option<&'a Path>,
    /// The attacker's base model that scores its harvest (a filtering attacker only).
    pub scorer: Option<&'a Path>,
    pub suites: EvalSuites,
    pub log: &'a (dyn Fn(&str) + Sync),
}

/// The harvest stage's result: the answered queries, the API as the campaign left it (the
/// on-policy student keeps querying it), and with traffic what the detectors did.
pub(super) struct Harvested {
    pub harvest: Harvest,
    pub api: Api,
    pub attacker_ids: Vec<AccountId>,
    /// `detection.*` and campaign metrics of a replay (empty without traffic).
    pub detection: Map<String, Value>,
    /// The replay's day-by-day timeline (None without traffic).
    pub timeline: Option<Value>,
}

/// The harvest: replayed with traffic, direct otherwise; logs its size and time.
pub(super) fn harvest(ctx: &Context) -> Result<Harvested> {
    let t0 = Instant::now();
    let h = if ctx.cfg.attacker.harvest_file.is_some() {
        file_harvest(ctx)?
    } else if ctx.cfg.traffic.enabled {
        replayed_harvest(ctx)?
    } else {
        direct_harvest(ctx)?
    };
    let harvest = &h.harvest;
    (ctx.log)(&format!(
        "{}: harvested {} items in {:.1}s ({:.1} simulated minutes)",
        ctx.spec.id,
        harvest.items.len(),
        t0.elapsed().as_secs_f64(),
        harvest.times.last().copied().unwrap_or(0.0) / 60.0
    ));
    Ok(h)
}

/// A harvest collected outside the simulator (`attacker.harvest_file`, e.g. by an `openai`
/// client against `distill-sim serve`): its items in file order, billed at the attacker's
/// tier's prices as the API would bill them (input framed by BOS and SEP).
fn file_harvest(ctx: &Context) -> Result<Harvested> {
    let cfg = &ctx.cfg;
    let a = &cfg.attacker;
    let (Some(file), Some(sha)) = (&a.harvest_file, &a.harvest_sha256) else {
        return Err(Error::Invalid(
            "attacker.harvest_file needs attacker.harvest_sha256 (distill-sim distill sets both)"
                .into(),
        ));
    };
    if cfg.traffic.enabled || cfg.student.method == student::Method::OnPolicy {
        return Err(Error::Invalid(
            "attacker.harvest_file: a harvest from a file has no API behind it: traffic.enabled and student.method on_policy are not available with it"
                .into(),
        ));
    }
    let read = crate::wire::harvest::read(Path::new(file), sha)?;
    // The metrics compare the copy with the run's teacher: it must be the one that answered.
    let want = format!("teacher-{}", cfg.run_teacher().hash(&cfg.world));
    if let Some(other) = read
        .fingerprints
        .iter()
        .find(|f| f.starts_with("teacher-") && **f != want)
    {
        return Err(Error::Invalid(format!(
            "{file}: answered by {other} (its system_fingerprint), but this run's teacher is {want}: set teacher.seed and teacher.pool to the served teacher's"
        )));
    }
    let tier = cfg.api.tier_index(&a.tier).ok_or_else(|| {
        Error::Invalid(format!(
            "attacker.tier `{}` is not an API tier (allowed: {})",
            a.tier,
            cfg.api.tier_names()
        ))
    })?;
    let t = &cfg.api.tiers[tier];
    let mut spend = Vec::with_capacity(read.items.len());
    let mut total = 0.0;
    for it in &read.items {
        total += ((it.prompt.tokens.len() + 2) as f64 * t.price_in
            + it.tokens.len() as f64 * t.price_out)
            / 1e6;
        spend.push(total);
    }
    let n = read.items.len();
    let harvest = Harvest {
        items: read.items,
        times: vec![0.0; n],
        spend,
        refused: read.errors,
        from_fallback: vec![false; n],
        ..Harvest::default()
    };
    Ok(Harvested {
        harvest,
        api: Api::new(cfg.api.clone())?,
        attacker_ids: vec![],
        detection: Map::new(),
        timeline: None,
    })
}

/// The attacker queries the API directly (its own clock, no benign traffic).
fn direct_harvest(ctx: &Context) -> Result<Harvested> {
    let cfg = &ctx.cfg;
    let mut api = Api::new(cfg.api.clone())?;
    let learner = |items: &[Item], seed: u64| {
        student::distill(&cfg.student, cfg.backend(), ctx.base, items, seed).map(|(e, _)| e)
    };
    let harvest = attacker::harvest(
        &cfg.attacker,
        &mut api,
        &ctx.teacher.teacher,
        ctx.spec.seed,
        Some(&learner),
    )?;
    let attacker_ids = harvest.account_ids.clone();
    Ok(Harvested {
        harvest,
        api,
        attacker_ids,
        detection: Map::new(),
        timeline: None,
    })
}

/// The campaign on the API beside benign users, detectors acting; the teacher answers a
/// sample of what the API admitted, and that is the harvest.
fn replayed_harvest(ctx: &Context) -> Result<Harvested> {
    let (cfg, spec, t) = (&ctx.cfg, ctx.spec, ctx.teacher);
    let tr = &cfg.traffic;
    let planned = tr
        .campaign
        .planned(cfg.attacker.accounts, cfg.attacker.max_days);
    let one_in = tr
        .answer_one_in
        .unwrap_or_else(|| ((planned / cfg.attacker.budget.max(1) as f64).floor() as u64).max(1));
    let plan = Some((one_in, cfg.attacker.budget));
    use crate::traffic::replay::{calibrate, Replay};
    let cal = calibrate(&cfg.api, tr, &cfg.attacker, spec.seed)?;
    let o = Replay::new(&cfg.api, tr, &cfg.attacker, spec.seed, plan)?
        .with_calibration(cal)
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
        cfg.world.answer_space(),
        spec.seed,
    );
    let timeline = Some(json!({
        "campaign_planned": planned,
        "attacker_accounts": cfg.attacker.accounts,
        "benign_users": tr.population.users,
        "limit_change_day": tr.limit_change.as_ref().map(|c| c.day),
        "days": &o.detection.timeline,
    }));
    let detection = detection_metrics(cfg, &o, hlog, planned);
    (ctx.log)(&format!(
        "{}: the API answered {:.1}% of the campaign's planned queries (recall {:.3}); \
         the teacher answered {} sampled queries (one in {one_in})",
        spec.id,
        100.0 * o.stats.attacker_served as f64 / planned.max(1.0),
        o.detection.recall,
        harvest.items.len()
    ));
    Ok(Harvested {
        harvest,
        api: o.api,
        attacker_ids: o.attacker_accounts,
        detection,
        timeline,
    })
}

/// What benign users get under the output defenses: the teacher's eval responses as served
/// (greedy requests), scored against the ideal, relative to the teacher's own capability.
pub(super) fn served_utility(ctx: &Context) -> Result<f64> {
    let (cfg, t) = (&ctx.cfg, ctx.teacher);
    let defenses = crate::api::defense::Defenses::for_api(&cfg.api)?;
    let prompts: Vec<_> = ctx.suites.prompts.iter().collect();
    let params = vec![GenParams::greedy(cfg.api.max_tokens); prompts.len()];
    let mut rng = derive_rng(ctx.spec.seed, "eval/served");
    let served: Vec<Vec<Tok>> = defenses
        .serve(&t.teacher, &prompts, params, &mut rng)
        .into_iter()
        .map(|(g, _)| g.tokens)
        .collect();
    let served_cap = eval::score(&ctx.suites, &served)["capability"];
    Ok(served_cap / t.scores["capability"])
}

/// The provider's keys for the provenance tests.
pub(super) struct ProvenanceKeys {
    /// The watermark key and green share (the configured ones, or a fixed key for runs
    /// without a watermark, as a control).
    watermark: (u64, f32),
    /// The answer-flip defense's rate and key, if it is on.
    flip: Option<(f64, u64)>,
}

impl ProvenanceKeys {
    pub(super) fn of(cfg: &ExperimentConfig) -> ProvenanceKeys {
        let defenses = &cfg.api.defenses;
        let watermark = defenses
            .iter()
            .find_map(|d| match d {
                DefenseConfig::Watermark { key, gamma, .. } => Some((*key, *gamma)),
                _ => None,
            })
            .unwrap_or((42, 0.25));
        let flip = defenses.iter().find_map(|d| match d {
            DefenseConfig::Flip { rate, key } => Some((*rate, *key)),
            _ => None,
        });
        ProvenanceKeys { watermark, flip }
    }
}

/// One budget checkpoint: the student trained on the first `budget` answers, evaluated, and
/// its metric row.
pub(super) fn checkpoint(
    ctx: &Context,
    h: &mut Harvested,
    budget: usize,
    utility: f64,
    keys: &ProvenanceKeys,
) -> Result<Value> {
    // A campaign the detectors stopped before its first answer leaves an untrained copy.
    let n = budget.min(h.harvest.items.len());
    if n == 0 && budget > 0 && !ctx.cfg.traffic.enabled {
        return Err(Error::Invalid("the campaign harvested nothing".into()));
    }
    let Harvested {
        harvest,
        api,
        attacker_ids,
        ..
    } = h;
    let items = &harvest.items[..n];
    let end = harvest.times.last().copied().unwrap_or(0.0);
    // A canary-checking attacker decides on what it had seen by this budget.
    let canaries = canary_check(ctx, harvest, n);
    let usable: Vec<Item>;
    let train_on = match &canaries {
        Some((keep, _)) => {
            usable = items
                .iter()
                .zip(keep)
                .filter(|(_, &k)| k)
                .map(|(i, _)| i.clone())
                .collect();
            &usable[..]
        }
        None => items,
    };
    let trained = train_student(ctx, (api, attacker_ids, end), budget, train_on)?;
    let student = trained.student.as_ref();
    let (suites, t) = (&ctx.suites, ctx.teacher);
    let s_resp = eval_responses(None, Some(student), suites);
    let s_scores = eval::score(suites, &s_resp);
    let rel = eval::relative(&s_scores, &t.scores, suites, &s_resp, &t.responses);
    let mut m = harvest_metrics(budget, items, harvest, &trained);
    m.extend(train_metrics(&trained.report, trained.seconds));
    m.insert("defense.utility".into(), json!(utility));
    m.extend(h.detection.clone());
    if ctx.cfg.traffic.enabled {
        let from_fallback = harvest.from_fallback[..n].iter().filter(|&&f| f).count();
        m.insert(
            "harvest.fallback_share".into(),
            json!(from_fallback as f64 / n.max(1) as f64),
        );
    }
    if let Some((keep, burnt)) = &canaries {
        m.extend(canary_metrics(harvest, n, keep, *burnt));
    }
    m.extend(provenance_metrics(ctx, student, items, keys));
    for (k, v) in rel.iter().chain(s_scores.iter()) {
        m.insert(k.clone(), json!(v));
    }
    m.extend(trained.chain);
    for (k, v) in &t.scores {
        m.insert(format!("teacher.{k}"), json!(v));
    }
    (ctx.log)(&format!(
        "{} budget {budget}: parity {:.3}, loss {:.3}, {:.1}s",
        ctx.spec.id, rel["parity"], trained.report.train_loss, trained.seconds
    ));
    Ok(Value::Object(m))
}

/// The student stage's result.
pub(super) struct Trained {
    pub student: Box<dyn Engine>,
    pub report: TrainReport,
    /// What the on-policy phase did (None off-policy).
    pub on_policy: Option<student::OnPolicy>,
    /// Items trained on (after `student.drop_share`).
    pub kept: usize,
    /// `chain.large.*` metrics of a self-family chain (empty without one).
    pub chain: Map<String, Value>,
    /// Wall time of the stage, chain included.
    pub seconds: f64,
}

/// The student at one budget: the harvest's training items (less a random `drop_share`),
/// through the self-family chain where there is one, learned from scratch or from the base,
/// off- or on-policy. Budget 0 is the base itself; an empty harvest (a campaign stopped or
/// blocked before its first answer) leaves the copy untrained. The on-policy student queries
/// `api` from the attacker's accounts after the harvest's end (simulated seconds).
fn train_student(
    ctx: &Context,
    (api, accounts, end): (&mut Api, &[AccountId], f64),
    budget: usize,
    items: &[Item],
) -> Result<Trained> {
    let cfg = &ctx.cfg;
    let t0 = Instant::now();
    let seed = derive_seed(ctx.spec.seed, &format!("student/{budget}"));
    let scorer = match ctx.scorer {
        Some(path) => Some(crate::model::load_engine(
            cfg.backend(),
            cfg.student.spec()?,
            path,
        )?),
        None => None,
    };
    let score = |items: &[Item]| -> Result<Vec<f32>> {
        let model = scorer.as_deref().ok_or_else(|| {
            Error::Invalid("attacker.adapt.filter_share: the base model was not prepared".into())
        })?;
        Ok(crate::attacker::plausibility(model, items))
    };
    let training = cfg
        .attacker
        .training_items(items, derive_seed(seed, "public"), Some(&score))?;
    let mut kept: Vec<Item> =
        student::drop_random(&training, cfg.student.drop_share, derive_seed(seed, "drop"));
    // A self-family chain: the harvest trains the attacker's larger model, whose answers
    // then stand in for the teacher's.
    let mut chain = Map::new();
    if let (Some(stage), false) = (&cfg.student.chain, kept.is_empty()) {
        let (large_items, m) = chain_stage(cfg, stage, &kept, &ctx.suites, ctx.teacher, seed)?;
        kept = large_items;
        chain = m;
    }
    let (student, report, on_policy) = if budget == 0 || kept.is_empty() {
        let s = crate::base::new_student(cfg.backend(), cfg.student.spec()?, seed, ctx.base)?;
        (s, TrainReport::default(), None)
    } else if cfg.student.method == student::Method::OnPolicy {
        let (s, l, o) = student::on_policy(
            &cfg.student,
            cfg.backend(),
            &cfg.attacker,
            api,
            accounts,
            &ctx.teacher.teacher,
            ctx.base,
            &kept,
            seed,
            end,
        )?;
        (s, l, Some(o))
    } else {
        let (s, l) = student::distill(&cfg.student, cfg.backend(), ctx.base, &kept, seed)?;
        (s, l, None)
    };
    if !report.is_finite() {
        return Err(Error::Invalid(format!(
            "student training diverged at budget {budget}: loss {} after {} steps \
             (lower student.train.lr)",
            report.train_loss, report.steps
        )));
    }
    Ok(Trained {
        student,
        report,
        on_policy,
        kept: kept.len(),
        chain,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// What a canary-checking attacker keeps of the first `n` items, deciding on the canaries
/// answered by the time of the `n`-th (None: it sends none).
fn canary_check(ctx: &Context, harvest: &Harvest, n: usize) -> Option<(Vec<bool>, usize)> {
    let a = ctx.cfg.attacker.adapt.as_ref()?;
    if a.canary_share <= 0.0 || harvest.item_accounts.len() < n {
        return None;
    }
    let items: Vec<(u32, f64)> = harvest.item_accounts[..n]
        .iter()
        .copied()
        .zip(harvest.times[..n].iter().copied())
        .collect();
    let until = items.last().map_or(0.0, |i| i.1);
    let seen = harvest.canary_events.partition_point(|c| c.0 <= until);
    Some(crate::attacker::canary_keep(
        &items,
        &harvest.canary_events[..seen],
        a.canary_streak,
    ))
}

/// `harvest.canaries` (canary queries answered by the checkpoint), `.canaries_sampled` (of
/// them in the harvest's sample, in place of training items), `.canary_pass` (their pass
/// rate), `.canary_burnt` (accounts taken for fallback ones), `.canary_dropped` (campaign
/// answers dropped with them), `.canary_precision` (share of those the fallback model gave)
/// and `.trained_fallback_share` (fallback answers among those kept).
fn canary_metrics(harvest: &Harvest, n: usize, keep: &[bool], burnt: usize) -> Map<String, Value> {
    let (mut dropped, mut dropped_fb, mut kept, mut kept_fb) = (0, 0, 0, 0);
    for (i, &k) in keep.iter().enumerate().take(n) {
        let fb = harvest.from_fallback.get(i).copied().unwrap_or(false) as usize;
        if k {
            kept += 1;
            kept_fb += fb;
        } else {
            dropped += 1;
            dropped_fb += fb;
        }
    }
    let until = harvest.times.get(n.max(1) - 1).copied().unwrap_or(0.0);
    let seen = &harvest.canary_events[..harvest.canary_events.partition_point(|c| c.0 <= until)];
    let passed = seen.iter().filter(|c| c.2).count();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let mut m = Map::new();
    m.insert("harvest.canaries".into(), json!(seen.len()));
    m.insert(
        "harvest.canaries_sampled".into(),
        json!(harvest.canaries_sampled),
    );
    m.insert(
        "harvest.canary_pass".into(),
        json!(ratio(passed, seen.len())),
    );
    m.insert("harvest.canary_burnt".into(), json!(burnt));
    m.insert("harvest.canary_dropped".into(), json!(dropped));
    m.insert(
        "harvest.canary_precision".into(),
        json!(ratio(dropped_fb, dropped)),
    );
    m.insert(
        "harvest.trained_fallback_share".into(),
        json!(ratio(kept_fb, kept)),
    );
    m
}

/// `budget`, `harvest.*`, `sim.hours` and `cost.*` of one checkpoint.
fn harvest_metrics(
    budget: usize,
    items: &[Item],
    harvest: &Harvest,
    trained: &Trained,
) -> Map<String, Value> {
    let n = items.len();
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
    let mut m = Map::new();
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
    m.insert("harvest.top1_prob".into(), json!(mean_top1(items)));
    m.insert("harvest.trained_items".into(), json!(trained.kept));
    let mut api_usd = harvest.api_spend_at(n);
    if let Some(o) = &trained.on_policy {
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
    m
}

/// How peaked the returned distributions are: mean probability of the top token (1.0 would
/// mean the logprobs carry nothing beyond the text; NaN without logprobs).
fn mean_top1(items: &[Item]) -> f64 {
    let tops: Vec<f64> = items
        .iter()
        .flat_map(|i| {
            i.top
                .iter()
                .filter_map(|t| t.first())
                .map(|&(_, lp)| (lp as f64).exp())
        })
        .collect();
    if tops.is_empty() {
        f64::NAN
    } else {
        tops.iter().sum::<f64>() / tops.len() as f64
    }
}

/// `train.*` of one checkpoint.
fn train_metrics(report: &TrainReport, seconds: f64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("train.loss".into(), json!(report.train_loss));
    m.insert("train.steps".into(), json!(report.steps));
    m.insert("train.best_step".into(), json!(report.best_step));
    m.insert("train.val_loss".into(), json!(report.val_loss));
    m.insert(
        "train.stopped_early".into(),
        json!(report.stopped_early as u8),
    );
    m.insert("train.seconds".into(), json!(seconds));
    m
}

/// Prompts the provenance test samples the suspect model on.
const PROVENANCE_PROBES: usize = 1000;

/// The provider's provenance tests on the suspect model: the watermark test on its samples
/// (temperature 1, on its own probe prompts) and, with the answer-flip defense, DAWN's check
/// (`provenance.*`).
fn provenance_metrics(
    ctx: &Context,
    student: &dyn Engine,
    items: &[Item],
    keys: &ProvenanceKeys,
) -> Map<String, Value> {
    let (cfg, seed) = (&ctx.cfg, ctx.spec.seed);
    let probe_mix = crate::world::Mix::benign().in_world(cfg.world.harm);
    let mut prng = derive_rng(seed, "provenance/probe");
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
    let sampled = generate::generate(student, &probe_refs, &probe_params, 512, &mut prng, None);
    let (wm_key, wm_gamma) = keys.watermark;
    let det = crate::api::defense::watermark::provenance(
        wm_key,
        wm_gamma,
        sampled.iter().map(|g| g.tokens.as_slice()),
        200,
    );
    let mut m = Map::new();
    m.insert("provenance.watermark_z".into(), json!(det.z));
    m.insert("provenance.watermark_p".into(), json!(det.p_value));
    m.insert(
        "provenance.watermark_green_share".into(),
        json!(det.green_share),
    );
    m.insert("provenance.watermark_tokens".into(), json!(det.n));
    if let Some((rate, key)) = keys.flip {
        let v = flip_agreement(student, items, rate, key, seed);
        m.insert("provenance.flip_agreement".into(), json!(v));
    }
    m
}

/// DAWN's check: replay the harvested queries that were flipped and count how often the
/// suspect model repeats the flipped answer (NaN when none was flipped).
fn flip_agreement(student: &dyn Engine, items: &[Item], rate: f64, key: u64, seed: u64) -> f64 {
    let flipped: Vec<&Item> = items
        .iter()
        .filter(|i| crate::api::defense::flipped(&i.prompt, key, rate))
        .take(300)
        .collect();
    let prompts: Vec<&crate::world::Prompt> = flipped.iter().map(|i| &i.prompt).collect();
    let params = vec![GenParams::greedy(32); prompts.len()];
    let mut rng = derive_rng(seed, "provenance/flip");
    let answers = generate::generate(student, &prompts, &params, 512, &mut rng, None);
    let agree: Vec<f64> = flipped
        .iter()
        .zip(&answers)
        .map(|(i, g)| {
            (crate::world::parse_response(&g.tokens).answer
                == crate::world::parse_response(&i.tokens).answer) as u32 as f64
        })
        .collect();
    if agree.is_empty() {
        f64::NAN
    } else {
        agree.iter().sum::<f64>() / agree.len() as f64
    }
}

/// What a replay says about detection, benign casualties and the campaign's cost.
fn detection_metrics(
    cfg: &ExperimentConfig,
    o: &crate::traffic::replay::Outcome,
    log: &crate::traffic::harvest::HarvestLog,
    planned: f64,
) -> Map<String, Value> {
    use crate::traffic::Action;
    let (st, d) = (&o.stats, &o.detection);
    let mut m = Map::new();
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
    for (k, v) in score_metrics(&o.scores) {
        put(&k, v);
    }
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

/// Every detector's score and the fused scores at operating points calibrated on a
/// benign-only replay: AUC over accounts, and per benign-FPR target the recall, the FPR
/// measured on this replay's benign accounts, time to detection, the harvest a takedown at
/// each crossing would have left and the benign queries it would have refused.
fn score_metrics(scores: &[crate::traffic::detect::score::ScoreOutcome]) -> Map<String, Value> {
    use crate::traffic::detect::score::FPR_NAMES;
    let mut m = Map::new();
    let mut put = |k: String, v: Value| {
        m.insert(k, v);
    };
    for so in scores {
        let n = &so.name;
        put(format!("score.auc.{n}"), json!(so.auc));
        for (k, f) in FPR_NAMES.iter().enumerate() {
            put(format!("score.recall@{f}.{n}"), json!(so.recall[k]));
            put(format!("score.benign_fpr@{f}.{n}"), json!(so.benign_fpr[k]));
            put(
                format!("score.days@{f}.{n}"),
                json!(so.days_to_detection[k]),
            );
            let harvest = so.harvest_before_takedown[k];
            put(format!("score.harvest@{f}.{n}"), json!(harvest));
            let hit = so.benign_queries_hit[k];
            put(format!("score.benign_hit@{f}.{n}"), json!(hit));
            for (g, fpr) in &so.group_fpr {
                put(format!("score.benign_fpr@{f}.{n}.{g}"), json!(fpr[k]));
            }
        }
    }
    m
}

/// The first stage of a self-family chain: the attacker's larger model trained on the harvest
/// (from scratch, with the student's schedule), scored (`chain.large.*`: parity, safety, EI),
/// then asked the harvest's prompts offline: its answers (greedy, with its top-k logprobs where
/// the attacker asked the API for them) are the items the student learns from.
fn chain_stage(
    cfg: &ExperimentConfig,
    stage: &student::ChainStage,
    items: &[Item],
    suites: &EvalSuites,
    t: &EvaluatedTeacher,
    seed: u64,
) -> Result<(Vec<Item>, Map<String, Value>)> {
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
    let mut m = Map::new();
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
        .map(|(p, g)| Item {
            prompt: p.clone(),
            tokens: g.tokens,
            top: g.top,
        })
        .collect();
    Ok((answered, m))
}
