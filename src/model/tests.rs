//! Engine tests, on every CPU engine of the build: save/load round trip, KV-cache generation
//! against full recomputation, and a train step that lowers the loss.

use super::generate::{self, model_input, pack, GenParams};
use super::{load_engine, new_engine, Backend, ModelSpec};
use crate::rng::derive_rng;
use crate::teacher::example;
use crate::world::{ideal_response, Mix};

/// The CPU engines of this build (fused, and burn with the feature): each test runs on each.
fn built() -> Vec<Backend> {
    let mut v = vec![Backend::FUSED];
    if cfg!(feature = "burn") {
        v.push(Backend::BURN);
    }
    v
}

fn tiny() -> ModelSpec {
    ModelSpec::preset("tiny").expect("preset")
}

#[test]
fn save_load_round_trip_gives_identical_logits() {
    for be in built() {
        save_load_round_trip_gives_identical_logits_on(be);
    }
}

fn save_load_round_trip_gives_identical_logits_on(be: Backend) {
    let eng = new_engine(be, tiny(), 3).unwrap();
    let mut rng = derive_rng(1, "t");
    let p = Mix::benign().sample(&mut rng);
    let input = model_input(&p);
    let voice = p.voice_input();
    let batch = pack(&[(&input, &voice)]);
    let before = eng.logits(&batch);
    let dir = std::env::temp_dir().join(format!("distill-sim-test-{}", std::process::id()));
    let path = dir.join("m.safetensors");
    eng.save(&path).unwrap();
    let loaded = load_engine(be, tiny(), &path).unwrap();
    assert_eq!(before, loaded.logits(&batch));
    // A different seed gives different weights.
    let other = new_engine(be, tiny(), 4).unwrap();
    assert_ne!(before, other.logits(&batch));
    // Loading into a wrong spec is an error, not a panic.
    let mut wrong = tiny();
    wrong.d_model = 32;
    assert!(load_engine(be, wrong, &path).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// Greedy generation with left padding and a KV cache must pick, at every step, the argmax
/// of a full forward pass over the unpadded sequence so far.
#[test]
fn cached_batched_generation_matches_full_recomputation() {
    for be in built() {
        cached_batched_generation_matches_full_recomputation_on(be);
    }
}

fn cached_batched_generation_matches_full_recomputation_on(be: Backend) {
    let mut spec = tiny();
    spec.d_model = 32;
    spec.layers = 2;
    let eng = new_engine(be, spec.clone(), 9).unwrap();
    let mut rng = derive_rng(2, "t");
    let prompts: Vec<_> = (0..6).map(|_| Mix::benign().sample(&mut rng)).collect();
    let refs: Vec<_> = prompts.iter().collect();
    let params = vec![
        GenParams {
            max_new: 6,
            temperature: 0.0,
            top_k: 3
        };
        refs.len()
    ];
    let gens = generate::generate(eng.as_ref(), &refs, &params, 6, &mut rng, None);
    for (p, g) in prompts.iter().zip(&gens) {
        assert!(!g.tokens.is_empty());
        assert_eq!(g.top.len(), g.tokens.len());
        let mut seq = model_input(p);
        let voice = p.voice_input();
        for (step, &tok) in g.tokens.iter().enumerate() {
            let batch = pack(&[(&seq, &voice)]);
            let logits = eng.logits(&batch);
            let v = spec.vocab;
            let last = &logits[(seq.len() - 1) * v..seq.len() * v];
            let best = generate::top_k_indices(last, 1)[0] as u32;
            assert_eq!(tok, best, "step {step}");
            // The recorded top-1 logprob is the log-softmax of the same logits.
            let mut ls = vec![0.0; v];
            generate::log_softmax(last, &mut ls);
            assert!((g.top[step][0].1 - ls[best as usize]).abs() < 1e-4);
            seq.push(tok);
        }
    }
}

#[test]
fn training_lowers_the_loss() {
    for be in built() {
        training_lowers_the_loss_on(be);
    }
}

fn training_lowers_the_loss_on(be: Backend) {
    let mut eng = new_engine(be, tiny(), 5).unwrap();
    let mut rng = derive_rng(3, "t");
    let examples: Vec<_> = (0..32)
        .map(|_| {
            let p = Mix::benign().sample(&mut rng);
            example(&p, &ideal_response(&p))
        })
        .collect();
    let refs: Vec<_> = examples.iter().collect();
    let (b, t) = super::train::make_batch(&refs, eng.spec().vocab, eng.spec().context);
    let first = eng.train_step(&b, &t, 1e-2);
    let mut last = first;
    for _ in 0..30 {
        last = eng.train_step(&b, &t, 1e-2);
    }
    assert!(first.is_finite() && last < first * 0.7, "{first} -> {last}");
}

/// Examples with soft targets at temperature 2 (hard label 0.3, a rest bucket of 0.2 on
/// every response position).
fn tempered_examples(n: usize, seed: u64) -> Vec<super::train::Example> {
    let mut rng = derive_rng(seed, "tempered");
    (0..n)
        .map(|_| {
            let p = Mix::benign().sample(&mut rng);
            let resp = ideal_response(&p);
            let mut ex = example(&p, &resp);
            for t in ex.targets.iter_mut() {
                t[0].1 = 0.3;
            }
            let positions = resp
                .iter()
                .map(|&t| (vec![(t, 0.6), ((t + 1) % 80, 0.2)], 0.2))
                .collect();
            ex.soft = Some(super::train::Soft {
                temperature: 2.0,
                weight: 0.7,
                positions,
            });
            ex
        })
        .collect()
}

/// The engine's tempered loss (soft term, T^2 scale, rest bucket, hard label) is the host's
/// definition of it (`train::position_loss`, which validation uses), and training on it
/// lowers it.
#[test]
fn tempered_loss_matches_its_host_definition_and_trains() {
    for be in built() {
        tempered_loss_matches_its_host_definition_and_trains_on(be);
    }
}

fn tempered_loss_matches_its_host_definition_and_trains_on(be: Backend) {
    let mut eng = new_engine(be, tiny(), 5).unwrap();
    let examples = tempered_examples(24, 4);
    let refs: Vec<_> = examples.iter().collect();
    let (b, t) = super::train::make_batch(&refs, eng.spec().vocab, eng.spec().context);
    assert!(t.soft.as_ref().is_some_and(|s| !s.rest_mask.is_empty()));
    let (engine_loss, _) = eng.loss_gradient(&b, &t);
    let host = super::train::eval_loss(eng.as_ref(), &examples, 64);
    assert!(
        (engine_loss - host).abs() < 1e-4 * host.abs().max(1.0),
        "engine {engine_loss} vs host {host}"
    );
    // Without the soft term the loss is the hard term alone: smaller.
    let plain: Vec<_> = examples
        .iter()
        .map(|e| super::train::Example {
            soft: None,
            ..e.clone()
        })
        .collect();
    assert!(super::train::eval_loss(eng.as_ref(), &plain, 64) < host);
    let first = eng.train_step(&b, &t, 1e-2);
    let mut last = first;
    for _ in 0..30 {
        last = eng.train_step(&b, &t, 1e-2);
    }
    assert!(first.is_finite() && last < first * 0.8, "{first} -> {last}");
}

/// Issue "no silent wrong results", case 5: a loss that becomes non-finite stops training at
/// once and the report says so (the runner then fails the run instead of recording `ok`).
#[test]
fn case_5_a_non_finite_loss_stops_training_and_is_reported() {
    for be in built() {
        case_5_a_non_finite_loss_stops_training_and_is_reported_on(be);
    }
}

fn case_5_a_non_finite_loss_stops_training_and_is_reported_on(be: Backend) {
    let mut eng = new_engine(be, tiny(), 5).unwrap();
    let mut rng = derive_rng(3, "t");
    let examples: Vec<_> = (0..32)
        .map(|_| {
            let p = Mix::benign().sample(&mut rng);
            let mut e = example(&p, &ideal_response(&p));
            e.voice = [f32::NAN; crate::world::VOICE_DIM];
            e
        })
        .collect();
    let cfg = super::train::TrainConfig {
        steps: 20,
        batch_size: 8,
        ..Default::default()
    };
    let report =
        super::train::train_validated(eng.as_mut(), &examples, &[], None, &cfg, 1, |_, _| {});
    assert!(!report.is_finite(), "{report:?}");
    assert_eq!(
        report.steps, 1,
        "training stops at the first non-finite loss"
    );
}
