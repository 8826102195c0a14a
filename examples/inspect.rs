//! Print a teacher's greedy responses next to the ideal ones, a few per eval suite.
//! Usage: cargo run --release --example inspect -- <model.safetensors> [size] [per-suite]

use distill_sim::model::{load_engine, Backend, GenParams, ModelSpec};
use distill_sim::world::vocab::render;
use distill_sim::world::{ideal_response, EvalSuites, WorldConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or("usage: inspect <model.safetensors> [size] [per-suite]")?;
    let size = args.get(2).map(String::as_str).unwrap_or("teacher-s");
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let spec = ModelSpec::preset(size).ok_or("unknown size")?;
    let eng = load_engine(Backend::default(), spec, std::path::Path::new(path))?;
    let suites = EvalSuites::new(&WorldConfig {
        eval_per_suite: n,
        ..Default::default()
    });
    let prompts: Vec<_> = suites.prompts.iter().collect();
    let params = vec![GenParams::greedy(32); prompts.len()];
    let mut rng = distill_sim::rng::derive_rng(0, "inspect");
    let gens = distill_sim::model::generate::generate(
        eng.as_ref(),
        &prompts,
        &params,
        256,
        &mut rng,
        None,
    );
    for (p, g) in prompts.iter().zip(gens) {
        let ideal = ideal_response(p);
        let mark = if g.tokens == ideal { "ok " } else { "BAD" };
        println!(
            "{mark} {:<22} {} => {}",
            p.kind.name(),
            render(&p.tokens),
            render(&g.tokens)
        );
        if g.tokens != ideal {
            println!("    {:<22} ideal: {}", "", render(&ideal));
        }
    }
    Ok(())
}
