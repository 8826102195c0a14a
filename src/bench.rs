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

/// Traffic-layer throughput: the 2026 campaign's scale (25,000 accounts, 28.8M queries over
/// 45 days) plus a benign population, through the clock, limits, ledgers and every detector.
/// Bans are delayed past the end so that the whole load is processed; a second pass with
/// actions on reports what the detectors catch.
pub fn traffic(quick: bool) -> crate::Result<()> {
    use crate::traffic::detect::DetectorConfig;
    use crate::traffic::replay::replay;
    use crate::traffic::{CampaignConfig, PopulationConfig};
    let days = if quick { 3.0 } else { 45.0 };
    let api = crate::api::ApiConfig::default();
    let pop = PopulationConfig {
        users: 20_000,
        ..Default::default()
    };
    let camp = CampaignConfig {
        accounts: 25_000,
        daily_per_account: 28.8e6 / (25_000.0 * 45.0),
        days,
        identity_sharing: 1,
        ..Default::default()
    };
    let detectors = DetectorConfig {
        skill_concentration: Some(0.9),
        ..Default::default()
    };
    println!("| pass | simulated days | queries | attacker served | benign served | wall (s) | queries/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, delay, prada) in [
        ("detectors except PRADA, no actions", u32::MAX / 2, false),
        ("all detectors, no actions", u32::MAX / 2, true),
        ("all detectors + bans", 60, true),
    ] {
        let det = DetectorConfig {
            action_delay_minutes: delay,
            prada_w: detectors.prada_w.filter(|_| prada),
            ..detectors.clone()
        };
        let tr = crate::traffic::TrafficConfig {
            population: pop.clone(),
            campaign: camp.clone(),
            detectors: det,
            ..Default::default()
        };
        let (s, d) = replay(&api, &tr, 1)?;
        println!(
            "| {name} | {days} | {} | {} | {} | {:.2} | {:.0} |",
            s.queries,
            s.attacker_served,
            s.benign_served,
            s.wall_seconds,
            s.queries as f64 / s.wall_seconds
        );
        if delay < u32::MAX / 2 {
            eprintln!(
                "[bench] detection: first ban after {:?} days, recall {:.3}, false-positive rate {:.4}, harvested before stop {}",
                d.days_to_first_action, d.recall, d.false_positive_rate, d.harvested_before_stop
            );
        }
    }
    Ok(())
}
