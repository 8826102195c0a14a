//! Diagnostic: a teacher's exact-match rate per suite on prompts it trained on (the first ones
//! of its training stream) versus the held-out eval suites. A large gap is memorisation, not a
//! step budget. `cargo run --release --example probe_teacher -- WEIGHTS.safetensors STEPS`
//! (STEPS: the teacher's `train.steps`, which sets its training stream).
use distill_sim::model::{load_engine, Backend, GenParams, ModelSpec};
use distill_sim::rng::derive_rng;
use distill_sim::teacher::{Teacher, TeacherConfig};
use distill_sim::world::{ideal_response, parse_response, EvalSuites, Prompt, WorldConfig};
use std::collections::BTreeMap;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 3 {
        eprintln!("usage: probe_teacher WEIGHTS STEPS");
        std::process::exit(2);
    }
    let steps: usize = a[2].parse().expect("STEPS is a count");
    let spec = ModelSpec::preset("teacher-s").unwrap();
    let path = std::path::Path::new(&a[1]);
    let forced = load_engine(Backend::FUSED, spec.clone(), path).unwrap();
    let teacher = Teacher::Neural(load_engine(Backend::FUSED, spec, path).unwrap());
    let mut cfg = TeacherConfig::default();
    cfg.train.steps = steps;
    let suites = EvalSuites::new(&WorldConfig::default());
    let mut by_kind: BTreeMap<String, Vec<Prompt>> = BTreeMap::new();
    for p in Teacher::training_prompts(&cfg).take(200_000) {
        let k = p.kind.name();
        let skill = k.contains('.');
        let v = by_kind.entry(k).or_default();
        if v.len() < 200 && skill {
            v.push(p);
        }
    }
    let score = |ps: &[&Prompt]| -> f64 {
        let params = vec![GenParams::greedy(32); ps.len()];
        let mut rng = derive_rng(0, "probe");
        let g = teacher.respond(ps, &params, &mut rng, None);
        let ok = ps
            .iter()
            .zip(&g)
            .filter(|(p, g)| {
                parse_response(&g.tokens).answer == parse_response(&ideal_response(p)).answer
            })
            .count();
        ok as f64 / ps.len().max(1) as f64
    };
    println!("| suite | trained-on prompts | held-out | teacher-forced loss, trained-on |");
    println!("|---|---:|---:|---:|");
    for (k, train) in &by_kind {
        let held: Vec<&Prompt> = suites
            .prompts
            .iter()
            .filter(|p| &p.kind.name() == k)
            .collect();
        if train.is_empty() {
            continue;
        }
        let tr: Vec<&Prompt> = train.iter().collect();
        let ex: Vec<_> = train
            .iter()
            .map(|p| distill_sim::teacher::example(p, &ideal_response(p)))
            .collect();
        let loss = distill_sim::model::train::eval_loss(forced.as_ref(), &ex, 64);
        println!(
            "| {k} | {:.3} | {:.3} | {loss:.4} |",
            score(&tr),
            score(&held)
        );
    }
}
