//! Hand profiling of one engine (for `perf record`):
//! `cargo run --release --example profile_engine -- gen|train SIZE ENGINE REPS`, e.g.
//! `-- train teacher-s fused 64`. Prints queries/s or training tokens/s on the benchmark
//! workload of `distill-sim bench`.
use distill_sim::bench;
use distill_sim::model::generate::{self, GenParams};
use distill_sim::model::train::make_batch;
use distill_sim::model::{new_engine, Backend, ModelSpec};
use distill_sim::rng::derive_rng;
use distill_sim::world::Prompt;
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let usage = "usage: profile_engine gen|train SIZE ENGINE REPS (e.g. train teacher-s fused 64)";
    if a.len() != 5 || !matches!(a[1].as_str(), "gen" | "train") {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let (what, size, eng) = (&a[1], &a[2], &a[3]);
    let reps: usize = a[4].parse().unwrap_or_else(|_| {
        eprintln!("REPS `{}` is not a count; {usage}", a[4]);
        std::process::exit(2)
    });
    let spec = ModelSpec::preset(size).unwrap_or_else(|| {
        eprintln!(
            "unknown size `{size}` (allowed: {})",
            distill_sim::model::spec::PRESETS.join(", ")
        );
        std::process::exit(2)
    });
    let fail = |e: distill_sim::Error| -> ! {
        eprintln!("{e}");
        std::process::exit(2)
    };
    let be = Backend::parse(eng).unwrap_or_else(|e| fail(e));
    let mut e = new_engine(be, spec.clone(), 1).unwrap_or_else(|e| fail(e));
    let (prompts, ex) = bench::workload();
    let batches: Vec<_> = ex
        .chunks(bench::TRAIN_BATCH)
        .map(|c| make_batch(&c.iter().collect::<Vec<_>>(), spec.vocab, spec.context))
        .collect();
    let t0 = Instant::now();
    if what == "gen" {
        let refs: Vec<&Prompt> = prompts.iter().collect();
        let params = vec![
            GenParams {
                max_new: bench::GEN_MAX_NEW,
                temperature: 0.0,
                top_k: 5
            };
            refs.len()
        ];
        let mut r = derive_rng(0, "g");
        for _ in 0..reps {
            let _ = generate::generate(e.as_ref(), &refs, &params, bench::GEN_BATCH, &mut r, None);
        }
        println!(
            "gen {:.1} q/s",
            (reps * 512) as f64 / t0.elapsed().as_secs_f64()
        );
    } else {
        let mut tok = 0;
        for i in 0..reps {
            let (b, t) = &batches[i % batches.len()];
            tok += b.b * b.t;
            e.train_step(b, t, 1e-3);
        }
        println!(
            "train {:.0} tok/s (T {:?})",
            tok as f64 / t0.elapsed().as_secs_f64(),
            batches.iter().map(|b| b.0.t).collect::<Vec<_>>()
        );
    }
}
