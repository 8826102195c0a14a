//! Hand profiling of one engine (for `perf record`): `cargo run --release --example profile_engine -- gen|train SIZE ENGINE REPS`, e.g. `-- train teacher-s fused 64`. Prints queries/s or training tokens/s on the benchmark workload of `distill-sim bench`.
use distill_sim::model::generate::{self, GenParams};
use distill_sim::model::train::make_batch;
use distill_sim::model::{new_engine, Backend, ModelSpec};
use distill_sim::rng::derive_rng;
use distill_sim::teacher::example;
use distill_sim::world::{ideal_response, Mix, Prompt};
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (what, size, eng, reps) = (&a[1], &a[2], &a[3], a[4].parse::<usize>().unwrap());
    let spec = ModelSpec::preset(size).unwrap();
    let be = Backend::parse(eng).unwrap();
    let mut e = new_engine(be, spec.clone(), 1).unwrap();
    let mut rng = derive_rng(0, "bench");
    let mix = Mix::benign();
    let mut prompts: Vec<Prompt> = (0..512).map(|_| mix.sample(&mut rng)).collect();
    prompts.sort_by_key(|p| p.tokens.len());
    let mut ex: Vec<_> = prompts
        .iter()
        .map(|p| example(p, &ideal_response(p)))
        .collect();
    ex.sort_by_key(|e| e.tokens.len() % 7);
    let batches: Vec<_> = ex
        .chunks(64)
        .map(|c| make_batch(&c.iter().collect::<Vec<_>>(), spec.vocab, spec.context))
        .collect();
    let t0 = Instant::now();
    if what == "gen" {
        let refs: Vec<&Prompt> = prompts.iter().collect();
        let params = vec![
            GenParams {
                max_new: 32,
                temperature: 0.0,
                top_k: 5
            };
            refs.len()
        ];
        let mut r = derive_rng(0, "g");
        for _ in 0..reps {
            let _ = generate::generate(e.as_ref(), &refs, &params, 256, &mut r, None);
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
