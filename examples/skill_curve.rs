//! Diagnostic: a learning curve of one model on skill prompts alone (no safety or affect),
//! held-out exact match per suite every `EVERY` steps, as the PyTorch experiments of issue 24
//! measured them. Constant learning rate after a linear warmup unless `MIN_LR_RATIO` < 1.
//!
//! `cargo run --release --example skill_curve -- SIZE SKILLS HARD_SHARE STEPS LR MIN_LR_RATIO EVERY [SEED]`
//! e.g. `-- teacher-s lookup 0 4000 2e-3 1 500`.
use distill_sim::model::train::{make_batch, TrainConfig};
use distill_sim::model::{new_engine, Backend, GenParams, ModelSpec, OptimSettings};
use distill_sim::rng::derive_rng;
use distill_sim::teacher::example;
use distill_sim::world::{ideal_response, parse_response, EvalSuites, Mix, WorldConfig};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 8 {
        eprintln!("usage: skill_curve SIZE SKILLS HARD_SHARE STEPS LR MIN_LR_RATIO EVERY [SEED]");
        std::process::exit(2);
    }
    let spec = ModelSpec::preset(&a[1]).expect("SIZE: a model preset");
    let skills: Vec<_> = a[2]
        .split(',')
        .map(|s| serde_json::from_value(serde_json::Value::String(s.into())).expect("SKILLS"))
        .collect();
    let hard_share: f64 = a[3].parse().expect("HARD_SHARE");
    let steps: usize = a[4].parse().expect("STEPS");
    let lr: f64 = a[5].parse().expect("LR");
    let min_lr_ratio: f64 = a[6].parse().expect("MIN_LR_RATIO");
    let every: usize = a[7].parse().expect("EVERY");
    let seed: u64 = a.get(8).map(|s| s.parse().expect("SEED")).unwrap_or(0);
    let cfg = TrainConfig {
        steps,
        batch_size: 64,
        lr,
        warmup: 100,
        min_lr_ratio,
        weight_decay: 0.01,
    };
    let mix = Mix::skills_only(skills, hard_share);
    let mut eng = new_engine(Backend::FUSED, spec.clone(), seed).unwrap();
    eng.set_optim(OptimSettings {
        weight_decay: cfg.weight_decay,
        ..Default::default()
    });
    let suites = EvalSuites::new(&WorldConfig::default());
    let names: Vec<String> = {
        let mut n: Vec<String> = mix
            .only_skills
            .iter()
            .flat_map(|s| {
                let s = serde_json::to_value(s).unwrap();
                let s = s.as_str().unwrap().to_string();
                [format!("{s}.easy"), format!("{s}.hard")]
            })
            .collect();
        n.dedup();
        n
    };
    // DUMP=DIR: write the initial weights and every batch (tokens, sep, answer tokens) for
    // the same run in another framework.
    let dump = std::env::var("DUMP").ok().map(std::path::PathBuf::from);
    let mut dump_lines = dump.as_ref().map(|d| {
        std::fs::create_dir_all(d).unwrap();
        eng.save(&d.join("init.safetensors")).unwrap();
        std::io::BufWriter::new(std::fs::File::create(d.join("batches.jsonl")).unwrap())
    });
    let mut rng = derive_rng(seed, "skill_curve/data");
    let t0 = std::time::Instant::now();
    let mut loss_sum = 0.0;
    // BUCKET=1: batches of equal length, as the training loop's length bucketing makes them
    // (8 batches drawn, sorted by length, cut).
    let bucket = std::env::var("BUCKET").is_ok();
    let mut queue: Vec<Vec<distill_sim::model::train::Example>> = Vec::new();
    for step in 0..steps {
        if queue.is_empty() {
            let n = if bucket { 8 } else { 1 };
            let mut pool: Vec<_> = (0..cfg.batch_size * n)
                .map(|_| {
                    let p = mix.sample(&mut rng);
                    example(&p, &ideal_response(&p))
                })
                .collect();
            if bucket {
                pool.sort_by_key(|e| e.tokens.len());
            }
            queue = pool.chunks(cfg.batch_size).map(|c| c.to_vec()).collect();
            use rand::seq::SliceRandom;
            queue.shuffle(&mut rng);
        }
        let exs = queue.pop().unwrap();
        if let Some(w) = dump_lines.as_mut() {
            use std::io::Write;
            let rows: Vec<_> = exs
                .iter()
                .map(|e| {
                    let t: Vec<u32> = e.targets.iter().map(|d| d[0].0).collect();
                    serde_json::json!({"tokens": e.tokens, "sep": e.sep, "voice": e.voice.to_vec(), "targets": t})
                })
                .collect();
            writeln!(w, "{}", serde_json::Value::Array(rows)).unwrap();
        }
        let refs: Vec<_> = exs.iter().collect();
        let (batch, targets) = make_batch(&refs, spec.vocab, spec.context);
        loss_sum += eng.train_step(&batch, &targets, cfg.lr_at(step));
        if (step + 1) % every == 0 || step + 1 == steps {
            let mut line = format!(
                "step {:>6} {:>6.0}s loss {:.4}",
                step + 1,
                t0.elapsed().as_secs_f64(),
                loss_sum / every as f32
            );
            loss_sum = 0.0;
            for k in &names {
                let held: Vec<_> = suites
                    .prompts
                    .iter()
                    .filter(|p| &p.kind.name() == k)
                    .collect();
                let params = vec![GenParams::greedy(32); held.len()];
                let mut r = derive_rng(0, "probe");
                let g = distill_sim::model::generate::generate(
                    eng.as_ref(),
                    &held,
                    &params,
                    256,
                    &mut r,
                    None,
                );
                let ok = held
                    .iter()
                    .zip(&g)
                    .filter(|(p, g)| {
                        parse_response(&g.tokens).answer
                            == parse_response(&ideal_response(p)).answer
                    })
                    .count();
                line += &format!("  {k} {:.3}", ok as f64 / held.len().max(1) as f64);
            }
            println!("{line}");
        }
    }
}
