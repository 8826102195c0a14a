//! `distill-sim bench`: teacher generation queries/s, student training tokens/s and the
//! end-to-end time of a harvest plus distillation, per engine and model size, printed
//! (benchmarks print numbers; tests never time). `--dump` writes the benchmark's weights and
//! data as safetensors so that `scripts/torch_reference.py` runs the identical workload in
//! PyTorch, for ratios measured side by side on one device.

use crate::model::generate::{self, model_input, GenParams};
use crate::model::train::{make_batch, Example};
use crate::model::weights::{self, Weights};
use crate::model::{load_engine, Backend, Engine, ModelSpec};
use crate::rng::derive_rng;
use crate::teacher::example;
use crate::world::{ideal_response, Mix, Prompt};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `distill-sim bench` measures.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Fewer repetitions.
    pub quick: bool,
    /// Engines/devices, side by side in one process.
    pub backends: Vec<Backend>,
    /// Model size presets.
    pub sizes: Vec<String>,
    /// Queries of the end-to-end harvest + distillation (0 = skip).
    pub harvest: usize,
    /// Teacher cache (the end-to-end run uses the default teacher, trained if missing).
    pub cache: PathBuf,
    /// Write weights and workload as safetensors here (for the PyTorch reference).
    pub dump: Option<PathBuf>,
}

/// Generation: this many benign prompts, greedy, up to `GEN_MAX_NEW` tokens with top-5
/// logprobs, in batches of `GEN_BATCH`.
pub const GEN_PROMPTS: usize = 512;
pub const GEN_MAX_NEW: usize = 32;
pub const GEN_BATCH: usize = 256;
/// Training: batches of this many ideal-policy sequences.
pub const TRAIN_BATCH: usize = 64;

/// The benchmark workload: `GEN_PROMPTS` benign prompts sorted by length, and their
/// ideal-policy examples in the order the training batches take them.
pub fn workload() -> (Vec<Prompt>, Vec<Example>) {
    let mut rng = derive_rng(0, "bench");
    let mix = Mix::benign();
    let mut prompts: Vec<Prompt> = (0..GEN_PROMPTS).map(|_| mix.sample(&mut rng)).collect();
    // The order generation batches in (by length), so that a dump reproduces its batches.
    prompts.sort_by_key(|p| p.tokens.len());
    let mut examples: Vec<Example> = prompts
        .iter()
        .map(|p| example(p, &ideal_response(p)))
        .collect();
    // Training batches of mixed lengths, as the training loop's buckets are.
    examples.sort_by_key(|e| e.tokens.len() % 7);
    (prompts, examples)
}

/// The workload as tensors: prompts right-padded with -1 (`gen.prompts [n, p]`),
/// `gen.voice [n, VD]`, and per training batch `train.{i}.tokens [b, t]`,
/// `train.{i}.probs [b, t, V]`, `train.{i}.weight [b, t]` (token ids as exact floats).
fn dump_workload(
    dir: &Path,
    prompts: &[Prompt],
    batches: &[(crate::model::Batch, crate::model::Targets)],
    vocab: usize,
) -> crate::Result<()> {
    let mut w = Weights::default();
    let (shape, toks) = prompt_tensor(prompts);
    w.insert("gen.prompts".into(), shape, toks);
    let voice: Vec<f32> = prompts.iter().flat_map(|q| q.voice_input()).collect();
    w.insert(
        "gen.voice".into(),
        vec![prompts.len(), crate::world::VOICE_DIM],
        voice,
    );
    w.insert(
        "gen.config".into(),
        vec![3],
        vec![GEN_MAX_NEW as f32, GEN_BATCH as f32, 5.0],
    );
    for (i, (b, t)) in batches.iter().enumerate() {
        w.insert(
            format!("train.{i}.tokens"),
            vec![b.b, b.t],
            b.tokens.iter().map(|&x| x as f32).collect(),
        );
        w.insert(
            format!("train.{i}.voice"),
            vec![b.b, crate::world::VOICE_DIM],
            b.voice.clone(),
        );
        w.insert(
            format!("train.{i}.probs"),
            vec![b.b, b.t, vocab],
            t.probs.clone(),
        );
        w.insert(
            format!("train.{i}.weight"),
            vec![b.b, b.t],
            t.weight.clone(),
        );
    }
    w.save(&dir.join("workload.safetensors"))
}

/// The model inputs of `prompts` right-padded with -1, token ids as exact floats: `[n, p]`.
pub fn prompt_tensor(prompts: &[Prompt]) -> (Vec<usize>, Vec<f32>) {
    let inputs: Vec<Vec<u32>> = prompts.iter().map(model_input).collect();
    let p = inputs.iter().map(|x| x.len()).max().unwrap_or(0);
    let mut toks = vec![-1.0f32; inputs.len() * p];
    for (r, x) in inputs.iter().enumerate() {
        for (j, &t) in x.iter().enumerate() {
            toks[r * p + j] = t as f32;
        }
    }
    (vec![inputs.len(), p], toks)
}

/// Generation queries/s and training tokens/s of one engine.
fn throughput(
    eng: &mut dyn Engine,
    prompts: &[Prompt],
    batches: &[(crate::model::Batch, crate::model::Targets)],
    quick: bool,
) -> (f64, f64, usize) {
    let mut rng = derive_rng(0, "bench/gen");
    let refs: Vec<&Prompt> = prompts.iter().collect();
    let params = vec![
        GenParams {
            max_new: GEN_MAX_NEW,
            temperature: 0.0,
            top_k: 5
        };
        refs.len()
    ];
    let _ = generate::generate(eng, &refs[..64], &params[..64], 64, &mut rng, None);
    let reps = if quick { 1 } else { 3 };
    let t0 = Instant::now();
    let mut generated = 0;
    for _ in 0..reps {
        let g = generate::generate(eng, &refs, &params, GEN_BATCH, &mut rng, None);
        generated = g.iter().map(|x| x.tokens.len()).sum::<usize>();
    }
    let qps = (reps * refs.len()) as f64 / t0.elapsed().as_secs_f64();
    let steps = if quick { 4 } else { 16 };
    let _ = eng.train_step(&batches[0].0, &batches[0].1, 1e-3);
    let mut tokens = 0usize;
    let t0 = Instant::now();
    for i in 0..steps {
        let (b, t) = &batches[i % batches.len()];
        tokens += b.b * b.t;
        let _ = eng.train_step(b, t, 1e-3);
    }
    let tps = tokens as f64 / t0.elapsed().as_secs_f64();
    (qps, tps, generated)
}

pub fn run(opts: &BenchOptions) -> crate::Result<()> {
    let (prompts, examples) = workload();
    let vocab = crate::world::vocab::VOCAB_SIZE;
    // Every preset has the same context; the workload is shared by all sizes.
    let context = ModelSpec::preset("student-s").map_or(64, |s| s.context);
    let batches: Vec<_> = examples
        .chunks(TRAIN_BATCH)
        .map(|c| make_batch(&c.iter().collect::<Vec<_>>(), vocab, context))
        .collect();
    if let Some(dir) = &opts.dump {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
        dump_workload(dir, &prompts, &batches, vocab)?;
    }
    let scratch = std::env::temp_dir().join(format!("distill-sim-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| crate::Error::io(&scratch, e))?;
    println!(
        "Generation: {GEN_PROMPTS} benign prompts, greedy, up to {GEN_MAX_NEW} tokens, top-5 \
         logprobs, batches of {GEN_BATCH}. Training: AdamW steps on batches of {TRAIN_BATCH} \
         ideal-policy sequences. Weights: the seeded initialisation (identical on every engine)."
    );
    println!();
    println!("| engine | model | params | generation (queries/s) | tokens generated | training (tokens/s) |");
    println!("|---|---|---:|---:|---:|---:|");
    for size in &opts.sizes {
        let spec = ModelSpec::preset(size).ok_or_else(|| {
            crate::Error::Invalid(format!(
                "--sizes: unknown size `{size}` (allowed: {})",
                crate::model::spec::PRESETS.join(", ")
            ))
        })?;
        let w = weights::init(&spec, 1);
        let path = match &opts.dump {
            Some(dir) => dir.join(format!("{size}.safetensors")),
            None => scratch.join(format!("{size}.safetensors")),
        };
        w.save(&path)?;
        if let Some(dir) = &opts.dump {
            let json = serde_json::to_vec_pretty(&spec).unwrap_or_default();
            crate::fsutil::write_atomic(&dir.join(format!("{size}.json")), &json)?;
        }
        for &backend in &opts.backends {
            let mut eng = load_engine(backend, spec.clone(), &path)?;
            let (qps, tps, generated) = throughput(eng.as_mut(), &prompts, &batches, opts.quick);
            println!(
                "| {} | {size} | {} | {qps:.0} | {generated} | {tps:.0} |",
                backend.tag(),
                spec.param_count()
            );
        }
    }
    #[cfg(feature = "burn")]
    if opts.backends.contains(&Backend::BURN) {
        println!();
        burn_breakdown(opts, &batches)?;
    }
    if opts.backends.contains(&Backend::FUSED) {
        println!();
        fused_breakdown(opts, &batches)?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if opts.harvest > 0 {
        println!();
        end_to_end(opts)?;
    }
    Ok(())
}

/// A harvest of `opts.harvest` queries from the default teacher through the API (top-20
/// logprobs, 1,000 accounts so that rate limits do not bind), then the default student's
/// distillation on it.
fn end_to_end(opts: &BenchOptions) -> crate::Result<()> {
    use crate::teacher::{Teacher, TeacherConfig};
    let tcfg = TeacherConfig::default();
    // The default teacher (shipped, cached or trained once by the fused engine): its
    // weights load into every engine.
    let world = crate::world::WorldConfig::default();
    let t0 = Instant::now();
    let (_, cached) =
        Teacher::load_or_train(&tcfg, Backend::FUSED, &world, &opts.cache, |_, _| {})?;
    if !cached {
        eprintln!(
            "[bench] default teacher trained in {:.1} s (cached for next time)",
            t0.elapsed().as_secs_f64()
        );
    }
    let source = Teacher::weights_path(&tcfg, &world, &opts.cache)?;
    println!(
        "End to end: {} queries harvested from the default teacher ({}) through the API, then \
         the default student ({}) distilled on them.",
        opts.harvest,
        tcfg.size,
        crate::student::StudentConfig::default().size
    );
    println!();
    println!("| engine | queries | harvest (s) | queries/s | distillation (s) | total (s) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for &backend in &opts.backends {
        let teacher = Teacher::Neural(load_engine(backend, tcfg.spec()?, &source)?);
        let mut api = crate::api::Api::new(crate::api::ApiConfig::default())?;
        let cfg = crate::attacker::AttackerConfig {
            accounts: 1000,
            budget: opts.harvest,
            ..Default::default()
        };
        let t0 = Instant::now();
        let h = crate::attacker::harvest(&cfg, &mut api, &teacher, 1, None)?;
        let th = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let student = crate::student::StudentConfig::default();
        let _ = crate::student::distill(&student, backend, None, &h.items, 1)?;
        let td = t1.elapsed().as_secs_f64();
        println!(
            "| {} | {} | {th:.1} | {:.0} | {td:.1} | {:.1} |",
            backend.tag(),
            h.items.len(),
            h.items.len() as f64 / th,
            th + td
        );
    }
    Ok(())
}

/// Traffic-layer throughput: the 2026 campaign's scale (25,000 accounts, 28.8M queries over
/// 45 days) among benign users, through the API's admission, limits, ledgers and every
/// detector. Bans are delayed past the end so that the whole load is processed; a last pass
/// with actions on reports what the detectors catch. The first row is the earlier benchmark's
/// load (20,000 benign users, ~14.8M benign queries), the others the full one (40,000 users,
/// at least as many benign queries as attacker ones).
pub fn traffic(quick: bool) -> crate::Result<()> {
    use crate::traffic::detect::DetectorConfig;
    use crate::traffic::replay::replay;
    use crate::traffic::{CampaignConfig, PopulationConfig};
    let days = if quick { 3.0 } else { 45.0 };
    let api = crate::api::ApiConfig::default();
    let attacker = crate::attacker::AttackerConfig {
        accounts: 25_000,
        max_days: days,
        harmful_share: 0.0,
        hard_share: Some(0.8),
        strategy: crate::attacker::Strategy::Targeted {
            skills: crate::world::Skill::ALL.to_vec(),
        },
        ..Default::default()
    };
    let camp = CampaignConfig {
        daily_per_account: 28.8e6 / (25_000.0 * 45.0),
        identity_sharing: 1,
        ..Default::default()
    };
    let detectors = DetectorConfig {
        skill_concentration: Some(0.9),
        limit_jump: Some(1.8),
        ..Default::default()
    };
    println!(
        "| pass | benign users | simulated days | queries | attacker served | benign served | wall (s) | queries/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, users, delay, prada) in [
        (
            "all detectors, no actions (earlier load)",
            20_000,
            u32::MAX / 2,
            true,
        ),
        (
            "detectors except PRADA, no actions",
            40_000,
            u32::MAX / 2,
            false,
        ),
        ("all detectors, no actions", 40_000, u32::MAX / 2, true),
        (
            "all detectors scored, no actions",
            40_000,
            u32::MAX / 2,
            true,
        ),
        ("all detectors + bans", 40_000, 60, true),
    ] {
        let det = DetectorConfig {
            action_delay_minutes: delay,
            prada_w: detectors.prada_w.filter(|_| prada),
            ..detectors.clone()
        };
        let tr = crate::traffic::TrafficConfig {
            population: PopulationConfig {
                users,
                ..Default::default()
            },
            campaign: camp.clone(),
            detectors: det,
            limit_change: Some(crate::traffic::LimitChange {
                day: days / 2.0,
                factor: 2.0,
            }),
            ..Default::default()
        };
        let row = |s: &crate::traffic::replay::ReplayStats, name: &str| {
            println!(
                "| {name} | {users} | {days} | {} | {} | {} | {:.2} | {:.0} |",
                s.queries,
                s.attacker_served,
                s.benign_served,
                s.wall_seconds,
                s.queries as f64 / s.wall_seconds
            )
        };
        if !name.contains("scored") {
            let (s, d) = replay(&api, &tr, &attacker, 1)?;
            row(&s, name);
            if delay < u32::MAX / 2 {
                eprintln!(
                    "[bench] detection: first action after {:?} days, recall {:.3}, false-positive rate {:.4}, harvested before stop {}",
                    d.days_to_first_action, d.recall, d.false_positive_rate, d.harvested_before_stop
                );
            }
            continue;
        }
        let (o, cal_s) = scored_replay(&api, &tr, &attacker)?;
        row(&o.stats, name);
        println!("| (its calibration: benign-only and fit replays) | {users} | {days} | - | - | - | {cal_s:.2} | - |");
    }
    Ok(())
}

/// The full load without actions, scored: every detector and both fused scores at operating
/// points from a benign-only replay and a labelled fit replay of the same population. Returns
/// the evaluation replay and the calibration's seconds (timed apart).
fn scored_replay(
    api: &crate::api::ApiConfig,
    tr: &crate::traffic::TrafficConfig,
    attacker: &crate::attacker::AttackerConfig,
) -> crate::Result<(crate::traffic::replay::Outcome, f64)> {
    use crate::traffic::replay::{calibrate, Replay};
    let t0 = std::time::Instant::now();
    let cal = calibrate(api, tr, attacker, 1)?;
    let cal_s = t0.elapsed().as_secs_f64();
    let o = Replay::new(api, tr, attacker, 1, None)?
        .with_calibration(cal)
        .run()?;
    for f in o.scores.iter().filter(|x| x.name.starts_with("fused")) {
        eprintln!(
            "[bench] {}: AUC {:?}, recall at 0.1% / 0.3% benign FPR {:.3} / {:.3} (measured FPR {:.4} / {:.4})",
            f.name, f.auc, f.recall[0], f.recall[1], f.benign_fpr[0], f.benign_fpr[1]
        );
    }
    Ok((o, cal_s))
}

/// Where a burn training step's time goes, per size: the forward pass that builds the loss
/// (with its autodiff graph), the backward pass, the optimiser update, and the floor set by
/// the step's matrix products alone (the same shapes, forward and both backward products of
/// every linear layer and of attention, run as plain flex matmuls without autodiff).
#[cfg(feature = "burn")]
fn burn_breakdown(
    opts: &BenchOptions,
    batches: &[(crate::model::Batch, crate::model::Targets)],
) -> crate::Result<()> {
    use crate::model::burn_engine::BurnEngine;
    println!(
        "burn training step, {} compute threads: milliseconds per step (share of the step)",
        crate::model::compute_threads()
    );
    println!();
    println!("| model | forward + loss | backward | optimiser | step | matmuls alone | step GFLOP/s | matmul GFLOP/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let steps = if opts.quick { 4 } else { 16 };
    for size in &opts.sizes {
        let Some(spec) = ModelSpec::preset(size) else {
            continue;
        };
        let mut eng = BurnEngine::from_weights(spec.clone(), &weights::init(&spec, 1))?;
        let _ = eng.timed_step(&batches[0].0, &batches[0].1, 1e-3);
        let mut parts = [0.0f64; 3];
        let mut flops = 0.0;
        for i in 0..steps {
            let (b, t) = &batches[i % batches.len()];
            let (_, p) = eng.timed_step(b, t, 1e-3);
            for (acc, x) in parts.iter_mut().zip(p) {
                *acc += x / steps as f64;
            }
            // Forward and backward: three times the forward's multiply-adds.
            flops += 3.0 * spec.flops_per_token(b.t) * (b.b * b.t) as f64 / steps as f64;
        }
        let step: f64 = parts.iter().sum();
        // The floor over the same batches as the steps (their lengths differ).
        let (mut mm, mut mm_flops) = (0.0, 0.0);
        for i in 0..steps {
            let (s, f) = matmul_floor(&spec, &batches[i % batches.len()].0, 2);
            mm += s / steps as f64;
            mm_flops += f / steps as f64;
        }
        let share = |x: f64| format!("{:.1} ({:.0}%)", x * 1e3, 100.0 * x / step);
        println!(
            "| {size} | {} | {} | {} | {:.1} | {} | {:.1} | {:.1} |",
            share(parts[0]),
            share(parts[1]),
            share(parts[2]),
            step * 1e3,
            share(mm),
            flops / step / 1e9,
            mm_flops / mm / 1e9
        );
    }
    Ok(())
}

/// Where a fused training step's time goes, per size: forward with the loss, backward,
/// optimiser, and the floor set by the linear layers' matmuls alone (same tiled `gemm` calls).
fn fused_breakdown(
    opts: &BenchOptions,
    batches: &[(crate::model::Batch, crate::model::Targets)],
) -> crate::Result<()> {
    use crate::model::fused::{linear_matmul_floor, packed_rows, FusedEngine};
    println!(
        "fused training step, {} compute threads: milliseconds per step (share of the step)",
        crate::model::compute_threads()
    );
    println!();
    println!(
        "The step computes each sequence up to its last trained position (packed rows); the \
         FLOP rates count the packed rows' matmuls."
    );
    println!();
    println!("| model | packed rows | forward + loss | backward | optimiser | step | linear matmuls alone | step GFLOP/s | matmul GFLOP/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let steps = if opts.quick { 4 } else { 16 };
    for size in &opts.sizes {
        let Some(spec) = ModelSpec::preset(size) else {
            continue;
        };
        let mut eng = FusedEngine::from_weights(spec.clone(), &weights::init(&spec, 1))?;
        let _ = eng.timed_step(&batches[0].0, &batches[0].1, 1e-3);
        let mut parts = [0.0f64; 3];
        let mut flops = 0.0;
        for i in 0..steps {
            let (b, t) = &batches[i % batches.len()];
            let (_, p) = eng.timed_step(b, t, 1e-3);
            for (acc, x) in parts.iter_mut().zip(p) {
                *acc += x / steps as f64;
            }
            flops += 3.0 * spec.flops_per_token(b.t) * packed_rows(b, t) as f64 / steps as f64;
        }
        let step: f64 = parts.iter().sum();
        let (mut mm, mut mm_flops, mut rows) = (0.0, 0.0, 0.0);
        for i in 0..steps {
            let (b, t) = &batches[i % batches.len()];
            let n = packed_rows(b, t);
            let (s, f) = linear_matmul_floor(&spec, n, 1, 2);
            mm += s / steps as f64;
            mm_flops += f / steps as f64;
            rows += n as f64 / (b.b * b.t) as f64 / steps as f64;
        }
        let share = |x: f64| format!("{:.1} ({:.0}%)", x * 1e3, 100.0 * x / step);
        println!(
            "| {size} | {:.0}% | {} | {} | {} | {:.1} | {} | {:.1} | {:.1} |",
            100.0 * rows,
            share(parts[0]),
            share(parts[1]),
            share(parts[2]),
            step * 1e3,
            share(mm),
            flops / step / 1e9,
            mm_flops / mm / 1e9
        );
    }
    Ok(())
}

/// Seconds per step of the matrix products of one training step on `batch` alone, and their
/// floating-point operations.
#[cfg(feature = "burn")]
fn matmul_floor(spec: &ModelSpec, batch: &crate::model::Batch, reps: usize) -> (f64, f64) {
    use burn::tensor::{Device, Tensor};
    let device = Device::flex();
    let (b, t, d, h) = (batch.b, batch.t, spec.d_model, spec.heads);
    let hs = d / h;
    let n = b * t;
    let rand2 = |r: usize, c: usize| {
        Tensor::<2>::random(
            [r, c],
            burn::tensor::Distribution::Uniform(-1.0, 1.0),
            &device,
        )
    };
    let rand3 = |a: usize, r: usize, c: usize| {
        Tensor::<3>::random(
            [a, r, c],
            burn::tensor::Distribution::Uniform(-1.0, 1.0),
            &device,
        )
    };
    // (rows, in, out) of every linear layer.
    let mut linears = Vec::new();
    for _ in 0..spec.layers {
        let m = d * spec.mlp_ratio;
        linears.extend([(n, d, 3 * d), (n, d, d), (n, d, m), (n, m, d)]);
    }
    linears.push((n, d, spec.vocab));
    let mut flops = 0.0;
    let mut work: Vec<Box<dyn Fn()>> = Vec::new();
    for &(r, i, o) in &linears {
        let (x, w, dy) = (rand2(r, i), rand2(i, o), rand2(r, o));
        flops += 3.0 * 2.0 * (r * i * o) as f64;
        work.push(Box::new(move || {
            let _ = x.clone().matmul(w.clone()).into_data(); // forward
            let _ = dy.clone().matmul(w.clone().transpose()).into_data(); // input gradient
            let _ = x.clone().transpose().matmul(dy.clone()).into_data(); // weight gradient
        }));
    }
    for _ in 0..spec.layers {
        let (q, k, v) = (
            rand3(b * h, t, hs),
            rand3(b * h, t, hs),
            rand3(b * h, t, hs),
        );
        let att = rand3(b * h, t, t);
        flops += 3.0 * 2.0 * 2.0 * (b * h * t * t * hs) as f64;
        work.push(Box::new(move || {
            let _ = q.clone().matmul(k.clone().swap_dims(1, 2)).into_data();
            let _ = att.clone().matmul(v.clone()).into_data();
            // Backward: two products each.
            let _ = att.clone().matmul(k.clone()).into_data();
            let _ = att.clone().swap_dims(1, 2).matmul(q.clone()).into_data();
            let _ = att.clone().matmul(v.clone()).into_data();
            let _ = att.clone().swap_dims(1, 2).matmul(v.clone()).into_data();
        }));
    }
    for w in &work {
        w();
    }
    let t0 = Instant::now();
    for _ in 0..reps {
        for w in &work {
            w();
        }
    }
    (t0.elapsed().as_secs_f64() / reps as f64, flops)
}
