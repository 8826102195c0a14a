//! `distill-sim bench`: teacher generation queries/s and student training tokens/s for the
//! default sizes, printed (benchmarks print numbers; tests never time).

use crate::model::generate::{self, GenParams};
use crate::model::train::{make_batch, Example};
use crate::model::{new_engine, EngineKind, ModelSpec};
use crate::rng::derive_rng;
use crate::teacher::example;
use crate::world::{ideal_response, Mix};
use std::time::Instant;

pub fn run(quick: bool) -> crate::Result<()> {
    let engine = EngineKind::Burn;
    let reps = if quick { 1 } else { 3 };
    let mut rng = derive_rng(0, "bench");
    let mix = Mix::benign();
    let prompts: Vec<_> = (0..512).map(|_| mix.sample(&mut rng)).collect();
    println!("| engine | model | params | teacher generation (queries/s) | training (tokens/s) |");
    println!("|---|---|---:|---:|---:|");
    for size in ["student-s", "teacher-s"] {
        let spec = ModelSpec::preset(size).expect("preset");
        let mut eng = new_engine(engine, spec.clone(), 1)?;
        // Generation: 512 benign prompts, greedy, up to 32 tokens, batches of 256.
        let refs: Vec<_> = prompts.iter().collect();
        let params = vec![
            GenParams {
                max_new: 32,
                temperature: 0.0,
                top_k: 5
            };
            refs.len()
        ];
        let _ = generate::generate(eng.as_ref(), &refs[..64], &params[..64], 64, &mut rng, None);
        let t0 = Instant::now();
        for _ in 0..reps {
            let _ = generate::generate(eng.as_ref(), &refs, &params, 256, &mut rng, None);
        }
        let qps = (reps * refs.len()) as f64 / t0.elapsed().as_secs_f64();
        // Training: batches of 64 ideal-policy sequences.
        let examples: Vec<Example> = prompts
            .iter()
            .map(|p| example(p, &ideal_response(p)))
            .collect();
        let batches: Vec<_> = examples
            .chunks(64)
            .map(|c| make_batch(&c.iter().collect::<Vec<_>>(), spec.vocab, spec.context))
            .collect();
        let steps = if quick { 4 } else { 16 };
        let mut tokens = 0usize;
        let _ = eng.train_step(&batches[0].0, &batches[0].1, 1e-3);
        let t0 = Instant::now();
        for i in 0..steps {
            let (b, t) = &batches[i % batches.len()];
            tokens += b.b * b.t;
            let _ = eng.train_step(b, t, 1e-3);
        }
        let tps = tokens as f64 / t0.elapsed().as_secs_f64();
        println!(
            "| {engine:?} | {size} | {} | {qps:.0} | {tps:.0} |",
            spec.param_count()
        );
    }
    Ok(())
}
