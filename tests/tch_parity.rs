//! The LibTorch engine (feature `tch`) against the burn engine on the same weights: logits,
//! greedy generations and their logprobs, gradients, AdamW steps and safetensors both ways.
//!
//! In a build without the feature (the default `cargo test --release`), the test below builds
//! this file with `--features tch` in `target/tch` and runs it there, when LibTorch has been
//! set up by `scripts/setup-libtorch.sh` (CI runs it first); otherwise it prints why it is
//! skipped.

#[cfg(not(feature = "tch"))]
#[test]
fn tch_engine_matches_burn_engine() {
    use std::path::Path;
    use std::process::Command;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lt = root.join(".libtorch");
    if !lt.join("torch/lib/libtorch_cpu.so").exists() {
        eprintln!(
            "SKIPPED tch parity: LibTorch is not set up (no .libtorch/torch/lib/libtorch_cpu.so); \
             run `bash scripts/setup-libtorch.sh` (downloads the torch 2.11.0 wheel, about 530 MB)"
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
    let out = Command::new(cargo)
        .current_dir(root)
        .args([
            "test",
            "--release",
            "--features",
            "tch",
            "--test",
            "tch_parity",
            "--",
            "--nocapture",
        ])
        // Its own target directory: this process's build holds the lock on `target/`.
        .env("CARGO_TARGET_DIR", root.join("target/tch"))
        .env("LIBTORCH", lt.join("torch"))
        .env("LD_LIBRARY_PATH", lib_path)
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("test parity::tch_cpu_matches_burn_on_the_same_weights ... ok"),
        "{stdout}"
    );
    eprintln!("{stdout}");
}

#[cfg(feature = "tch")]
mod parity {
    use distill_sim::model::generate::{self, model_input, pack, GenParams};
    use distill_sim::model::train::{make_batch, Example, Soft};
    use distill_sim::model::{load_engine, new_engine, Backend, ModelSpec};
    use distill_sim::rng::derive_rng;
    use distill_sim::teacher::example;
    use distill_sim::world::{ideal_response, Mix, Prompt};

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

    #[test]
    fn tch_cpu_matches_burn_on_the_same_weights() {
        let spec = ModelSpec::preset("student-s").unwrap();
        let (prompts, examples) = data(128, 1);
        let refs: Vec<&Example> = examples.iter().collect();
        // Weights with some structure (a few burn steps), so that greedy choices have margins.
        let mut burn = new_engine(Backend::BURN, spec.clone(), 7).unwrap();
        for c in refs.chunks(32).cycle().take(40) {
            let (b, t) = make_batch(c, spec.vocab, spec.context);
            burn.train_step(&b, &t, 1e-2);
        }
        let dir = std::env::temp_dir().join(format!("distill-sim-parity-{}", std::process::id()));
        let path = dir.join("w.safetensors");
        burn.save(&path).unwrap();
        let mut tch = load_engine(tch_cpu(), spec.clone(), &path).unwrap();

        // 1. Logits on the same batch.
        let (batch, targets) = make_batch(&refs[..32], spec.vocab, spec.context);
        let (lb, lt) = (burn.logits(&batch), tch.logits(&batch));
        let scale = lb.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let d = max_abs_diff(&lb, &lt);
        println!("logits: max |burn - tch| = {d:.2e} (max |logit| {scale:.2})");
        assert!(scale > 1.0 && d < 1e-4, "logits differ by {d}");

        // 2. Greedy generation with top-5 logprobs: identical tokens, logprobs within 1e-4.
        let prefs: Vec<&Prompt> = prompts.iter().collect();
        let params = vec![
            GenParams {
                max_new: 24,
                temperature: 0.0,
                top_k: 5
            };
            prefs.len()
        ];
        let mut r1 = derive_rng(3, "gen");
        let mut r2 = derive_rng(3, "gen");
        let gb = generate::generate(burn.as_ref(), &prefs, &params, 48, &mut r1, None);
        let gt = generate::generate(tch.as_ref(), &prefs, &params, 48, &mut r2, None);
        let mut tokens = 0;
        let mut worst = 0.0f32;
        for (i, (a, b)) in gb.iter().zip(&gt).enumerate() {
            assert_eq!(a.tokens, b.tokens, "prompt {i}: greedy generations differ");
            tokens += a.tokens.len();
            for (x, y) in a.top.iter().zip(&b.top) {
                for ((ta, la), (tb, lb)) in x.iter().zip(y) {
                    if (la - lb).abs() > 1e-5 {
                        // Near-ties may swap places below the top-1; their values still agree.
                        assert!(x.iter().any(|(t, _)| t == tb) || ta == tb);
                    }
                    worst = worst.max((la - lb).abs());
                }
            }
        }
        println!(
            "generation: {} prompts, {tokens} tokens identical; top-5 logprobs within {worst:.2e}",
            gb.len()
        );
        assert!(tokens > prefs.len() * 2 && worst < 1e-4);

        // 3. Gradients of the same loss.
        let grads = |batch: &distill_sim::model::engine::Batch,
                     targets: &distill_sim::model::engine::Targets| {
            let (l1, g1) = burn.loss_gradient(batch, targets);
            let (l2, g2) = tch.loss_gradient(batch, targets);
            let mut gd = 0.0f32;
            for (name, (_, a)) in &g1.tensors {
                let (_, b) = g2.get(name).unwrap();
                gd = gd.max(max_abs_diff(a, b));
            }
            (l1, l2, gd)
        };
        let (l1, l2, gd) = grads(&batch, &targets);
        println!("loss {l1:.6} vs {l2:.6}; gradients within {gd:.2e}");
        assert!((l1 - l2).abs() < 1e-5 && gd < 1e-5);

        // 3b. The tempered loss (T = 2, hard label 0.3, a rest bucket): same loss and gradients.
        let tempered: Vec<Example> = examples[..32]
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
            .collect();
        let trefs: Vec<&Example> = tempered.iter().collect();
        let (tb, tt) = make_batch(&trefs, spec.vocab, spec.context);
        let (l1, l2, gd) = grads(&tb, &tt);
        println!("tempered loss {l1:.6} vs {l2:.6}; gradients within {gd:.2e}");
        assert!((l1 - l2).abs() < 1e-5 * l1.abs().max(1.0) && gd < 1e-5);

        // 4. Five AdamW steps (clipping, weight decay) from the saved weights and a fresh
        // optimiser on both engines: same losses and weights.
        let mut burn = load_engine(Backend::BURN, spec.clone(), &path).unwrap();
        for (s, c) in refs.chunks(32).take(5).enumerate() {
            let (b, t) = make_batch(c, spec.vocab, spec.context);
            let (a, z) = (burn.train_step(&b, &t, 3e-3), tch.train_step(&b, &t, 3e-3));
            assert!((a - z).abs() < 1e-4, "step {s}: loss {a} vs {z}");
        }
        let (wb, wt) = (burn.weights(), tch.weights());
        let mut wd = 0.0f32;
        for (name, (_, a)) in &wb.tensors {
            wd = wd.max(max_abs_diff(a, wt.get(name).unwrap().1));
        }
        println!("after 5 AdamW steps: weights within {wd:.2e}");
        assert!(wd < 1e-4, "weights differ by {wd}");

        // 5. Safetensors written by tch load into burn and give tch's logits.
        let path2 = dir.join("from_tch.safetensors");
        tch.save(&path2).unwrap();
        let back = load_engine(Backend::BURN, spec.clone(), &path2).unwrap();
        let input = model_input(&prompts[0]);
        let voice = prompts[0].voice_input();
        let one = pack(&[(&input, &voice)]);
        let d2 = max_abs_diff(&back.logits(&one), &tch.logits(&one));
        println!("tch -> safetensors -> burn: logits within {d2:.2e}");
        assert!(d2 < 1e-4);
        let _ = std::fs::remove_dir_all(dir);
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
