//! The engines against each other on the same safetensors: the fused engine and burn each
//! against LibTorch (tch-cpu), and the fused engine and LibTorch against PyTorch itself
//! (`scripts/torch_reference.py --parity`): logits, the loss and every gradient for each
//! target kind (hard, top-k soft, tempered with a rest bucket), five AdamW steps, greedy
//! generations with their top-5 logprobs, and safetensors written by one engine read by
//! another. Tolerances, in float32 (the engines differ in the order of their sums, so not in
//! the last bits): logits and generation logprobs 1e-4, losses 1e-5 (relative above 1),
//! gradients 1e-5, weights after five AdamW steps 1e-4, greedy tokens identical.
//!
//! In a build without both features `tch` and `burn` (the default `cargo test --release`), the
//! test below builds this file and the library's model tests with `--features tch,burn` in
//! `target/tch` and runs them there, when LibTorch has been set up by
//! `scripts/setup-libtorch.sh` (CI runs it first); otherwise it prints why it is skipped. The
//! PyTorch comparison runs where a Python with torch is found (`TORCH_PYTHON`, default
//! `.torch-venv/bin/python`, see `scripts/setup-torch-cpu.sh`), and says so where not.

#[cfg(not(all(feature = "tch", feature = "burn")))]
#[test]
fn engines_match_on_the_same_weights() {
    use std::path::Path;
    use std::process::Command;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lt = root.join(".libtorch");
    if !lt.join("torch/lib/libtorch_cpu.so").exists() {
        eprintln!(
            "SKIPPED engine parity (fused, burn, LibTorch, PyTorch): LibTorch is not set up (no \
             .libtorch/torch/lib/libtorch_cpu.so); run `bash scripts/setup-libtorch.sh` \
             (downloads the torch 2.11.0 wheel, about 530 MB). The fused engine's own tests \
             (src/model/fused/tests.rs) ran in this build; `cargo test --release --features \
             burn --lib model::` adds its comparison with burn"
        );
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let lib_path = format!(
        "{}:{}:{}",
        lt.join("torch/lib").display(),
        lt.join("lib").display(),
        std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
    );
    let run = || {
        fresh_rustc_probe();
        Command::new(&cargo)
            .current_dir(root)
            .args([
                "test",
                "--release",
                "--features",
                "tch,burn",
                "--lib",
                "--test",
                "engine_parity",
                "--",
                "model::",
                "parity::",
                "--nocapture",
            ])
            // Its own target directory: this process's build holds the lock on `target/`.
            .env("CARGO_TARGET_DIR", root.join("target/tch"))
            .env("LIBTORCH", lt.join("torch"))
            .env("LD_LIBRARY_PATH", &lib_path)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("cargo runs")
    };
    let mut out = run();
    // The probe can still read what another program wrote to a regular-file /dev/null between
    // the emptying and the probe: that is the machine, not the engines, so run it once more.
    if String::from_utf8_lossy(&out.stderr).contains(PROBE_FAILED) {
        eprintln!("nested cargo's rustc probe failed (see fresh_rustc_probe); running it again");
        out = run();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for name in [
        "parity::fused_and_burn_match_libtorch_on_the_same_weights ... ok",
        "model::fused::tests::fused_matches_burn_on_the_same_weights ... ok",
    ] {
        assert!(stdout.contains(name), "{name} missing:\n{stdout}");
    }
    eprintln!("{stdout}");
}

/// What cargo prints when its `rustc -` probe of the target fails.
#[cfg(not(all(feature = "tch", feature = "burn")))]
const PROBE_FAILED: &str = "failed to run `rustc` to learn about target-specific information";

/// Machines of this kind have had a regular file at /dev/null instead of the device: what one
/// program writes there, another reads back. Cargo's rustc probe reads its program from
/// /dev/null, so a build script's failed feature probe (its stderr sent to /dev/null) fails the
/// nested cargo. Empty it.
#[cfg(not(all(feature = "tch", feature = "burn")))]
fn fresh_rustc_probe() {
    let null = std::path::Path::new("/dev/null");
    if std::fs::symlink_metadata(null).is_ok_and(|m| m.is_file()) {
        let _ = std::fs::File::create(null);
    }
}

#[cfg(all(feature = "tch", feature = "burn"))]
mod parity {
    use distill_sim::model::engine::{Batch, Targets};
    use distill_sim::model::generate::{self, model_input, pack, GenParams};
    use distill_sim::model::train::{make_batch, Example, Soft, REST_EPS};
    use distill_sim::model::weights::Weights;
    use distill_sim::model::{load_engine, new_engine, Backend, ModelSpec};
    use distill_sim::rng::derive_rng;
    use distill_sim::teacher::example;
    use distill_sim::world::{ideal_response, Mix, Prompt};
    use std::path::{Path, PathBuf};

    const GEN_MAX_NEW: usize = 24;
    const STEP_LR: f64 = 3e-3;

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn data(n: usize, seed: u64) -> (Vec<Prompt>, Vec<Example>) {
        let mut rng = derive_rng(seed, "parity");
        let prompts: Vec<Prompt> = (0..n).map(|_| Mix::benign().sample(&mut rng)).collect();
        let ex = prompts
            .iter()
            .map(|p| example(p, &ideal_response(p)))
            .collect();
        (prompts, ex)
    }

    fn tch_cpu() -> Backend {
        Backend::parse("tch-cpu").expect("a build with the tch feature runs tch-cpu")
    }

    /// Top-k soft targets: three listed tokens per position.
    fn top_k(examples: &[Example]) -> Vec<Example> {
        examples
            .iter()
            .map(|e| {
                let mut e = e.clone();
                for t in e.targets.iter_mut() {
                    let tok = t[0].0;
                    *t = vec![(tok, 0.7), ((tok + 3) % 80, 0.2), ((tok + 7) % 80, 0.1)];
                }
                e
            })
            .collect()
    }

    /// Tempered targets: T = 2, hard label 0.3, soft weight 0.7, a rest bucket of 0.2.
    fn tempered(examples: &[Example]) -> Vec<Example> {
        examples
            .iter()
            .map(|e| {
                let mut e = e.clone();
                let positions = e
                    .targets
                    .iter()
                    .map(|t| (vec![(t[0].0, 0.6), ((t[0].0 + 1) % 80, 0.2)], 0.2))
                    .collect();
                for t in e.targets.iter_mut() {
                    t[0].1 = 0.3;
                }
                e.soft = Some(Soft {
                    temperature: 2.0,
                    weight: 0.7,
                    positions,
                });
                e
            })
            .collect()
    }

    /// The shared fixture: weights with some structure (40 LibTorch steps, so that greedy
    /// choices have margins), saved; the three target kinds on one set of sequences; the
    /// batches of the five AdamW steps.
    struct Fixture {
        spec: ModelSpec,
        dir: PathBuf,
        path: PathBuf,
        prompts: Vec<Prompt>,
        kinds: Vec<(&'static str, Batch, Targets)>,
        steps: Vec<(Batch, Targets)>,
    }

    fn fixture() -> Fixture {
        let spec = ModelSpec::preset("student-s").unwrap();
        let (prompts, examples) = data(128, 1);
        let refs: Vec<&Example> = examples.iter().collect();
        let mut seed_eng = new_engine(tch_cpu(), spec.clone(), 7).unwrap();
        for c in refs.chunks(32).cycle().take(40) {
            let (b, t) = make_batch(c, spec.vocab, spec.context);
            seed_eng.train_step(&b, &t, 1e-2);
        }
        let dir = std::env::temp_dir().join(format!("distill-sim-parity-{}", std::process::id()));
        let path = dir.join("w.safetensors");
        seed_eng.save(&path).unwrap();
        let kind = |name: &'static str, ex: Vec<Example>| {
            let r: Vec<&Example> = ex.iter().collect();
            let (b, t) = make_batch(&r, spec.vocab, spec.context);
            (name, b, t)
        };
        let first = examples[..32].to_vec();
        let kinds = vec![
            kind("hard", first.clone()),
            kind("topk", top_k(&first)),
            kind("temp", tempered(&first)),
        ];
        let steps = refs
            .chunks(32)
            .cycle()
            .take(5)
            .map(|c| make_batch(c, spec.vocab, spec.context))
            .collect();
        Fixture {
            spec,
            dir,
            path,
            prompts,
            kinds,
            steps,
        }
    }

    fn gen_params(n: usize) -> Vec<GenParams> {
        vec![
            GenParams {
                max_new: GEN_MAX_NEW,
                temperature: 0.0,
                top_k: 5
            };
            n
        ]
    }

    /// Engine `a` against the reference engine `r` (LibTorch), on the fixture's weights.
    fn compare(fx: &Fixture, a_backend: Backend) {
        let tag = a_backend.tag();
        let spec = &fx.spec;
        let a = load_engine(a_backend, spec.clone(), &fx.path).unwrap();
        let r = load_engine(tch_cpu(), spec.clone(), &fx.path).unwrap();

        // 1. Logits on the same batch.
        let (_, batch, _) = &fx.kinds[0];
        let (la, lr) = (a.logits(batch), r.logits(batch));
        let scale = la.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let d = max_abs_diff(&la, &lr);
        println!("{tag} vs tch-cpu: logits within {d:.2e} (max |logit| {scale:.2})");
        assert!(scale > 1.0 && d < 1e-4, "{tag}: logits differ by {d}");

        // 2. Greedy generation with top-5 logprobs: identical tokens, logprobs within 1e-4.
        let prefs: Vec<&Prompt> = fx.prompts.iter().collect();
        let params = gen_params(prefs.len());
        let mut r1 = derive_rng(3, "gen");
        let mut r2 = derive_rng(3, "gen");
        let ga = generate::generate(a.as_ref(), &prefs, &params, 48, &mut r1, None);
        let gr = generate::generate(r.as_ref(), &prefs, &params, 48, &mut r2, None);
        let mut tokens = 0;
        let mut worst = 0.0f32;
        for (i, (x, y)) in ga.iter().zip(&gr).enumerate() {
            assert_eq!(
                x.tokens, y.tokens,
                "{tag}: prompt {i}: greedy generations differ"
            );
            tokens += x.tokens.len();
            for (p, q) in x.top.iter().zip(&y.top) {
                for ((ta, la), (tb, lb)) in p.iter().zip(q) {
                    if (la - lb).abs() > 1e-5 {
                        // Near-ties may swap places below the top-1; their values still agree.
                        assert!(p.iter().any(|(t, _)| t == tb) || ta == tb);
                    }
                    worst = worst.max((la - lb).abs());
                }
            }
        }
        println!(
            "{tag} vs tch-cpu: {} prompts, {tokens} generated tokens identical; top-5 logprobs \
             within {worst:.2e}",
            ga.len()
        );
        assert!(tokens > prefs.len() * 2 && worst < 1e-4);

        // 3. The loss and every gradient, for each target kind.
        for (kind, b, t) in &fx.kinds {
            let (l1, g1) = a.loss_gradient(b, t);
            let (l2, g2) = r.loss_gradient(b, t);
            let mut gd = 0.0f32;
            for (name, (_, x)) in &g1.tensors {
                gd = gd.max(max_abs_diff(x, g2.get(name).unwrap().1));
            }
            println!("{tag} vs tch-cpu, {kind} targets: loss {l1:.6} vs {l2:.6}; gradients within {gd:.2e}");
            assert!(
                (l1 - l2).abs() < 1e-5 * l1.abs().max(1.0) && gd < 1e-5,
                "{tag}, {kind}"
            );
        }

        // 4. Five AdamW steps (clipping, weight decay), fresh optimisers: same losses, weights.
        let mut a = load_engine(a_backend, spec.clone(), &fx.path).unwrap();
        let mut r = load_engine(tch_cpu(), spec.clone(), &fx.path).unwrap();
        assert_eq!(fx.steps.len(), 5);
        for (s, (b, t)) in fx.steps.iter().enumerate() {
            let (x, y) = (a.train_step(b, t, STEP_LR), r.train_step(b, t, STEP_LR));
            assert!((x - y).abs() < 1e-4, "{tag}: step {s}: loss {x} vs {y}");
        }
        let wd = weight_diff(&a.weights(), &r.weights());
        println!("{tag} vs tch-cpu: after 5 AdamW steps, weights within {wd:.2e}");
        assert!(wd < 1e-4, "{tag}: weights differ by {wd}");

        // 5. Safetensors written by LibTorch load into the engine and give LibTorch's logits.
        let path2 = fx.dir.join(format!("from_tch_{tag}.safetensors"));
        r.save(&path2).unwrap();
        let back = load_engine(a_backend, spec.clone(), &path2).unwrap();
        let input = model_input(&fx.prompts[0]);
        let voice = fx.prompts[0].voice_input();
        let one = pack(&[(&input, &voice)]);
        let d2 = max_abs_diff(&back.logits(&one), &r.logits(&one));
        println!("tch-cpu -> safetensors -> {tag}: logits within {d2:.2e}");
        assert!(d2 < 1e-4);
    }

    fn weight_diff(a: &Weights, b: &Weights) -> f32 {
        let mut wd = 0.0f32;
        for (name, (_, x)) in &a.tensors {
            wd = wd.max(max_abs_diff(x, b.get(name).unwrap().1));
        }
        wd
    }

    #[test]
    fn fused_and_burn_match_libtorch_on_the_same_weights() {
        let fx = fixture();
        compare(&fx, Backend::FUSED);
        compare(&fx, Backend::BURN);
        against_pytorch(&fx);
        let _ = std::fs::remove_dir_all(&fx.dir);
    }

    /// The fixture as `scripts/torch_reference.py --parity` reads it (token ids as exact floats).
    fn write_for_pytorch(fx: &Fixture) {
        let spec = &fx.spec;
        let json = serde_json::to_vec_pretty(spec).unwrap();
        std::fs::write(fx.dir.join("spec.json"), json).unwrap();
        let mut w = Weights::default();
        let (v, vd) = (spec.vocab, spec.voice_dim);
        let mut put = |prefix: &str, b: &Batch, t: &Targets| {
            let tok = b.tokens.iter().map(|&x| x as f32).collect();
            w.insert(format!("{prefix}.tokens"), vec![b.b, b.t], tok);
            w.insert(format!("{prefix}.voice"), vec![b.b, vd], b.voice.clone());
            w.insert(
                format!("{prefix}.probs"),
                vec![b.b, b.t, v],
                t.probs.clone(),
            );
            w.insert(format!("{prefix}.weight"), vec![b.b, b.t], t.weight.clone());
            if let Some(st) = &t.soft {
                let mask = if st.rest_mask.is_empty() {
                    vec![0.0; b.b * b.t * v]
                } else {
                    st.rest_mask.clone()
                };
                w.insert(
                    format!("{prefix}.sprobs"),
                    vec![b.b, b.t, v],
                    st.probs.clone(),
                );
                w.insert(format!("{prefix}.inv_t"), vec![1], vec![st.inv_temperature]);
                w.insert(format!("{prefix}.rest_mask"), vec![b.b, b.t, v], mask);
                w.insert(format!("{prefix}.rest"), vec![b.b, b.t], st.rest.clone());
            }
        };
        for (kind, b, t) in &fx.kinds {
            put(kind, b, t);
        }
        for (i, (b, t)) in fx.steps.iter().enumerate() {
            put(&format!("steps.{i}"), b, t);
        }
        w.insert("steps.lr".into(), vec![1], vec![STEP_LR as f32]);
        w.insert("rest_eps".into(), vec![1], vec![REST_EPS]);
        let (shape, toks) = distill_sim::bench::prompt_tensor(&fx.prompts);
        w.insert("gen.prompts".into(), shape, toks);
        let voice: Vec<f32> = fx.prompts.iter().flat_map(|q| q.voice_input()).collect();
        w.insert("gen.voice".into(), vec![fx.prompts.len(), vd], voice);
        w.insert(
            "gen.config".into(),
            vec![3],
            vec![GEN_MAX_NEW as f32, 48.0, 5.0],
        );
        w.save(&fx.dir.join("parity.safetensors")).unwrap();
    }

    fn torch_python() -> Option<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let py = std::env::var_os("TORCH_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".torch-venv/bin/python"));
        let ok = std::process::Command::new(&py)
            .args(["-c", "import torch"])
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then_some(py)
    }

    /// The fused engine and LibTorch against PyTorch on the fixture.
    fn against_pytorch(fx: &Fixture) {
        let Some(py) = torch_python() else {
            println!(
                "SKIPPED the PyTorch comparison: no Python with torch (TORCH_PYTHON, or \
                 .torch-venv/bin/python from scripts/setup-torch-cpu.sh)"
            );
            return;
        };
        write_for_pytorch(fx);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/torch_reference.py");
        let out = std::process::Command::new(&py)
            .arg(&script)
            .arg("--parity")
            .arg(&fx.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "torch_reference.py --parity: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{}", String::from_utf8_lossy(&out.stdout).trim());
        let t = Weights::load(&fx.dir.join("torch.safetensors")).unwrap();
        let spec = &fx.spec;
        for be in [Backend::FUSED, tch_cpu()] {
            let tag = be.tag();
            let e = load_engine(be, spec.clone(), &fx.path).unwrap();
            let (_, batch, _) = &fx.kinds[0];
            let d = max_abs_diff(&e.logits(batch), t.get("logits").unwrap().1);
            println!("{tag} vs PyTorch: logits within {d:.2e}");
            assert!(d < 1e-4, "{tag} vs PyTorch: logits differ by {d}");
            for (kind, b, tg) in &fx.kinds {
                let (l, g) = e.loss_gradient(b, tg);
                let lt = t.get(&format!("{kind}.loss")).unwrap().1[0];
                let mut gd = 0.0f32;
                for (name, (_, x)) in &g.tensors {
                    gd = gd.max(max_abs_diff(
                        x,
                        t.get(&format!("{kind}.grad.{name}")).unwrap().1,
                    ));
                }
                println!("{tag} vs PyTorch, {kind} targets: loss {l:.6} vs {lt:.6}; gradients within {gd:.2e}");
                assert!(
                    (l - lt).abs() < 1e-5 * l.abs().max(1.0) && gd < 1e-5,
                    "{tag}, {kind}"
                );
            }
            let mut e = load_engine(be, spec.clone(), &fx.path).unwrap();
            let losses: Vec<f32> = fx
                .steps
                .iter()
                .map(|(b, tg)| e.train_step(b, tg, STEP_LR))
                .collect();
            let ld = max_abs_diff(&losses, t.get("steps.loss").unwrap().1);
            let mut wd = 0.0f32;
            for (name, (_, x)) in &e.weights().tensors {
                wd = wd.max(max_abs_diff(
                    x,
                    t.get(&format!("steps.w.{name}")).unwrap().1,
                ));
            }
            println!(
                "{tag} vs PyTorch: 5 AdamW steps, losses within {ld:.2e}, weights within {wd:.2e}"
            );
            assert!(ld < 1e-4 && wd < 1e-4, "{tag} vs PyTorch after 5 steps");
            let e = load_engine(be, spec.clone(), &fx.path).unwrap();
            let prefs: Vec<&Prompt> = fx.prompts.iter().collect();
            let mut rng = derive_rng(3, "gen");
            let g = generate::generate(
                e.as_ref(),
                &prefs,
                &gen_params(prefs.len()),
                48,
                &mut rng,
                None,
            );
            let (shape, want) = t.get("gen.tokens").unwrap();
            let mut n = 0;
            for (r, x) in g.iter().enumerate() {
                let row: Vec<u32> = want[r * shape[1]..(r + 1) * shape[1]]
                    .iter()
                    .take_while(|&&v| v >= 0.0)
                    .map(|&v| v as u32)
                    .collect();
                assert_eq!(
                    x.tokens, row,
                    "{tag} vs PyTorch: prompt {r}: greedy generations differ"
                );
                n += row.len();
            }
            println!(
                "{tag} vs PyTorch: {} prompts, {n} generated tokens identical",
                g.len()
            );
        }
    }

    #[test]
    fn cuda_without_a_gpu_is_a_clear_error() {
        if tch::Cuda::is_available() {
            println!("a CUDA device is visible: nothing to check");
            return;
        }
        let e = Backend::parse("tch-cuda").unwrap_err().to_string();
        println!("tch-cuda here: {e}");
        assert!(e.contains("CUDA"), "{e}");
    }
}
