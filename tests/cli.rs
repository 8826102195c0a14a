//! End-to-end tests of the `distill-sim` binary (all integration tests live in this binary).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_distill-sim"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("distill-sim-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(config: &Path, results: &Path, extra: &[&str]) -> Output {
    let cache = results.join("cache");
    bin()
        .arg("run")
        .arg(config)
        .arg("--results")
        .arg(results)
        .arg("--cache")
        .arg(&cache)
        .args(extra)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Metrics of every run, without wall-clock fields.
fn metrics(results: &Path) -> Vec<(String, Vec<Value>)> {
    metrics_of(results, "tiny")
}

fn metrics_of(results: &Path, experiment: &str) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    let exp = results.join(experiment);
    let mut dirs: Vec<_> = std::fs::read_dir(&exp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for d in dirs {
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        let rows = std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("train.seconds");
                v
            })
            .collect();
        out.push((name, rows));
    }
    out
}

#[test]
fn tiny_end_to_end_run_writes_results_and_is_deterministic() {
    let a = scratch("e2e-a");
    let out = run(&fixture("tiny.yaml"), &a, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("| setting | budget | seeds |"), "{stdout}");
    assert!(stdout.contains("| api.logprobs=5 | 40 | 1 |"), "{stdout}");
    let m = metrics(&a);
    assert_eq!(m.len(), 2, "one directory per grid point");
    for (name, rows) in &m {
        assert_eq!(rows.len(), 2, "{name}: one line per checkpoint");
        assert_eq!(rows[0]["budget"], 10);
        assert_eq!(rows[1]["budget"], 40);
        for key in [
            "parity",
            "fidelity",
            "safety.refusal",
            "ei.act.voice",
            "cost.api_usd",
        ] {
            assert!(rows[1].get(key).is_some(), "{name} lacks {key}");
        }
        let dir = a.join("tiny").join(name);
        let summary: Value =
            serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["status"], "ok");
        assert_eq!(summary["seed"], 1);
        assert!(summary["wall_seconds"].as_f64().unwrap() > 0.0);
        assert!(summary["versions"]["distill_sim"].is_string());
        assert!(summary["versions"]["teacher"].is_number());
        let config: Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(
            config["attacker"]["budget"], 40,
            "resolved config is written"
        );
    }
    // Same seed, fresh results and cache: identical metrics.
    let b = scratch("e2e-b");
    let out = run(&fixture("tiny.yaml"), &b, &[]);
    assert!(out.status.success());
    assert_eq!(m, metrics(&b));
    // Running again skips finished runs.
    let out = run(&fixture("tiny.yaml"), &a, &[]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stderr)
            .matches("already finished, skipped")
            .count(),
        2
    );
    let _ = std::fs::remove_dir_all(a);
    let _ = std::fs::remove_dir_all(b);
}

#[test]
fn unknown_key_is_an_error_naming_key_file_and_line() {
    let r = scratch("bad-key");
    let out = run(&fixture("unknown_key.yaml"), &r, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("unknown_key.yaml"), "{err}");
    assert!(err.contains("budjet"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("key `attacker.budjet`"), "{err}");
    assert!(
        !r.join("unknown_key").exists(),
        "no results directory for a bad config"
    );
    let _ = std::fs::remove_dir_all(r);
}

#[test]
fn wrong_type_is_an_error_naming_the_line() {
    let r = scratch("bad-type");
    let out = run(&fixture("wrong_type.yaml"), &r, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("wrong_type.yaml") && err.contains("line 4"),
        "{err}"
    );
    assert!(err.contains("key `attacker.budget`"), "{err}");
    let _ = std::fs::remove_dir_all(r);
}

#[test]
fn bad_override_names_the_allowed_keys() {
    let r = scratch("bad-set");
    let out = run(&fixture("tiny.yaml"), &r, &["--set", "attacker.budgett=5"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("budgett") && err.contains("allowed:") && err.contains("budget"),
        "{err}"
    );
    let out = run(
        &fixture("tiny.yaml"),
        &r,
        &["--set", "attacker.tier=platinum"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("tier2"), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(r);
}

#[test]
fn set_pins_a_swept_key_and_shards_partition_the_runs() {
    let r = scratch("pin");
    let out = run(
        &fixture("tiny.yaml"),
        &r,
        &["--set", "api.logprobs=5", "--shard", "0/1"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("| - | 40 | 1 |"), "{stdout}");
    assert!(!stdout.contains("api.logprobs=0"), "{stdout}");
    // Two shards together produce exactly the runs of the unsharded experiment.
    let s = scratch("shards");
    for shard in ["0/2", "1/2"] {
        let out = run(
            &fixture("tiny.yaml"),
            &s,
            &["--shard", shard, "--jobs", "1"],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let whole = scratch("whole");
    assert!(run(&fixture("tiny.yaml"), &whole, &[]).status.success());
    assert_eq!(metrics(&s), metrics(&whole));
    for d in [r, s, whole] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// An interrupted write leaves a hidden temporary directory; the next run of the same point
/// removes it, and nothing half-written is ever visible under the run's name.
#[test]
fn stale_temporary_run_directories_are_cleaned_up() {
    let r = scratch("stale");
    let stale = r.join("tiny").join(".api.logprobs=0,seed=1.tmp-4999999");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("metrics.jsonl"), "{\"half\":").unwrap();
    let out = run(&fixture("tiny.yaml"), &r, &["--jobs", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!stale.exists());
    let names: Vec<String> = std::fs::read_dir(r.join("tiny"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // Hidden: only the directory's record of its config and its lock.
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with('.') || n.starts_with(".experiment.")),
        "{names:?}"
    );
    let _ = std::fs::remove_dir_all(r);
}

/// With the traffic replay on, the harvest is what the API answered the campaign's accounts:
/// identity clustering bans them within hours, and the student trains on the sampled answers
/// from before the bans only.
#[test]
fn detection_cuts_the_harvest_to_what_the_api_answered() {
    let r = scratch("detect");
    let out = run(
        &fixture("tiny.yaml"),
        &r,
        &[
            "--set",
            "traffic.enabled=true",
            "--set",
            "traffic.population.users=200",
            "--set",
            "attacker.accounts=30",
            "--set",
            "attacker.max_days=2",
            "--set",
            "api.logprobs=0",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = metrics(&r);
    let last = m[0].1.last().unwrap().clone();
    let share = last["detection.harvest_share"].as_f64().unwrap();
    assert!(
        share < 0.5,
        "identity clustering stops the campaign early: {share}"
    );
    assert_eq!(last["detection.recall"], 1.0);
    // 30 accounts x 26 a day x 2 days planned, budget 40: the teacher answers one in 39.
    assert_eq!(last["harvest.sample_one_in"], 39);
    let items = last["harvest.items"].as_u64().unwrap();
    let answered = last["harvest.campaign_answered"].as_u64().unwrap();
    assert!(items < 40 && items <= answered, "{items} of {answered}");
    let _ = std::fs::remove_dir_all(r);
}

/// Silent fallback: the attacker keeps receiving answers, the later ones from the fallback
/// model, and trains on them unknowingly.
#[test]
fn silent_fallback_keeps_answering_from_the_fallback_model() {
    let r = scratch("fallback");
    let mut args = vec![
        "--set",
        "traffic.enabled=true",
        "--set",
        "traffic.population.users=200",
    ];
    args.extend([
        "--set",
        "attacker.accounts=30",
        "--set",
        "attacker.max_days=2",
    ]);
    args.extend([
        "--set",
        "traffic.action=fallback_silent",
        "--set",
        "api.logprobs=0",
    ]);
    let out = run(&fixture("tiny.yaml"), &r, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let last = metrics(&r)[0].1.last().unwrap().clone();
    let items = last["harvest.items"].as_u64().unwrap();
    assert!(items > 20, "{items}");
    let fb = last["harvest.fallback_share"].as_f64().unwrap();
    assert!(fb > 0.3, "most of the campaign runs after the flag: {fb}");
    assert!(last.get("detection.benign_degraded_share").is_some());
    let _ = std::fs::remove_dir_all(r);
}

/// A sweep killed with SIGKILL midway and resumed ends with the same results as one that ran
/// through; nothing partial is ever visible under a run's name; report and plot read the
/// results back.
#[test]
fn killed_sweep_resumes_to_the_same_results_and_reports_and_plots() {
    let cfg = fixture("sweep.yaml");
    let killed = scratch("killed");
    let sweep = |results: &Path| {
        let mut c = bin();
        c.arg("sweep")
            .arg(&cfg)
            .arg("--results")
            .arg(results)
            .arg("--cache")
            .arg(results.join("cache"))
            .args(["--jobs", "1"]);
        c
    };
    let exp = killed.join("sweep");
    let visible = || -> Vec<PathBuf> {
        std::fs::read_dir(&exp)
            .map(|d| {
                d.map(|e| e.unwrap().path())
                    .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut child = sweep(&killed)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once two of its six runs are written (or after 60 s).
    let t0 = std::time::Instant::now();
    while visible().len() < 2 && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let before = visible().len();
    assert!(before < 6, "the sweep finished before it could be killed");
    // Every visible run directory is complete.
    for d in visible() {
        let summary: Value =
            serde_json::from_slice(&std::fs::read(d.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["status"], "ok", "{}", d.display());
        let lines = std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 2, "{}", d.display());
    }
    let listed = sweep(&killed).arg("--list").output().unwrap();
    let listed = text(&listed.stdout);
    assert_eq!(listed.matches("\tfinished\t").count(), before, "{listed}");
    assert_eq!(
        listed.matches("\tpending\t").count(),
        6 - before,
        "{listed}"
    );
    let out = sweep(&killed).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let through = scratch("through");
    assert!(sweep(&through).output().unwrap().status.success());
    assert_eq!(metrics_of(&killed, "sweep"), metrics_of(&through, "sweep"));
    let hidden: Vec<String> = std::fs::read_dir(&exp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && !n.starts_with(".experiment."))
        .collect();
    // Only the directory's record of its config and its lock stay hidden there.
    assert!(hidden.is_empty(), "{hidden:?}");

    // Report: Markdown with mean ± stderr, a CSV line per run and checkpoint.
    let out = bin().arg("report").arg(&exp).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let md = text(&out.stdout);
    assert!(
        md.contains("| api.logprobs=5 | 40 | 3 |") && md.contains(" ± "),
        "{md}"
    );
    assert!(md.contains("parity ↑"), "{md}");
    let csv = std::fs::read_to_string(exp.join("runs.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 6 * 2);
    assert!(csv.starts_with("run,point,seed,status,budget,"));
    let summary = std::fs::read_to_string(exp.join("summary.csv")).unwrap();
    assert!(
        summary.contains("api.logprobs=0,40,parity,higher,"),
        "{summary}"
    );
    // Plot: parity and transfer curves (two checkpoints), PNG and SVG.
    let out = bin().arg("plot").arg(&exp).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let png = std::fs::read(exp.join("figures/parity.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(exp.join("figures/transfer.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("Safety transfer"));
    // Bad input: a directory without runs is an error naming it.
    let empty = scratch("empty");
    let out = bin().arg("report").arg(&empty).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no run directories"));
    for d in [killed, through, empty] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// On-policy distillation spends half the budget on the API's scoring mode where it is offered,
/// and falls back to off-policy learning where it is denied.
#[test]
fn on_policy_uses_the_scoring_mode_or_falls_back() {
    for (scoring, scored, denied) in [("true", true, 0), ("false", false, 1)] {
        let r = scratch(&format!("onpolicy-{scoring}"));
        let out = run(
            &fixture("tiny.yaml"),
            &r,
            &[
                "--set",
                "student.method=on_policy",
                "--set",
                &format!("api.scoring={scoring}"),
                "--set",
                "api.logprobs=5",
                "--jobs",
                "1",
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let m = metrics(&r);
        let last = m[0].1.last().unwrap();
        assert_eq!(last["harvest.on_policy_denied"], denied);
        let n = last["harvest.on_policy_scored"].as_u64().unwrap();
        if scored {
            assert_eq!(n, 20, "half of the 40-query budget is scored");
            assert!(last["cost.scoring_usd"].as_f64().unwrap() > 0.0);
        } else {
            assert_eq!(n, 0);
        }
        let _ = std::fs::remove_dir_all(r);
    }
}

// ---------------------------------------------------------------------------------------------
// Issue "no silent wrong results": one regression test per numbered case of its "Why".

/// An experiment file in `dir` whose settings extend the tiny fixture.
fn tiny_variant(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &p,
        format!("base: {}\n{extra}", fixture("tiny.yaml").display()),
    )
    .unwrap();
    p
}

fn sweep_cmd(config: &Path, results: &Path) -> Command {
    let mut c = bin();
    c.arg("sweep")
        .arg(config)
        .arg("--results")
        .arg(results)
        .arg("--cache")
        .arg(results.join("cache"))
        .args(["--jobs", "1"]);
    c
}

/// Case 1: a finished run whose config has changed is neither reused nor silently replaced.
#[test]
fn case_1_a_changed_config_does_not_reuse_old_results() {
    let r = scratch("case1");
    let cfg = fixture("tiny.yaml");
    assert!(run(&cfg, &r, &["--jobs", "1"]).status.success());
    let before = metrics(&r);
    let changed = [
        "--set",
        "attacker.budget=30",
        "--set",
        "checkpoints=[10, 30]",
    ];
    let out = run(&cfg, &r, &[&changed[..], &["--jobs", "1"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("api.logprobs=0,seed=1: attacker.budget: 40 -> 30")
            && err.contains("--replace-changed"),
        "{err}"
    );
    assert_eq!(metrics(&r), before, "nothing was overwritten");
    let list = run(&cfg, &r, &[&changed[..], &["--list"]].concat());
    assert_eq!(text(&list.stdout).matches("\tchanged\t").count(), 2);
    let out = run(
        &cfg,
        &r,
        &[&changed[..], &["--jobs", "1", "--replace-changed"]].concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let budgets: Vec<u64> = metrics(&r)[0]
        .1
        .iter()
        .map(|row| row["budget"].as_u64().unwrap())
        .collect();
    assert_eq!(budgets, vec![10, 30]);
    let _ = std::fs::remove_dir_all(r);
}

/// Case 2: grid points or seeds that would share one run directory are an error.
#[test]
fn case_2_grid_points_and_seeds_sharing_a_run_id_are_errors() {
    let d = scratch("case2");
    for (extra, want) in [
        (
            "attacker: {budget: 200}\ngrid: {checkpoints: [[1, 20], [120]]}\n",
            "would share the run directory",
        ),
        (
            "grid: {description: [\"a/b\", \"a_b\"]}\n",
            "would share the run directory",
        ),
        ("seeds: [1, 1]\n", "key `seeds`: 1 is listed twice"),
    ] {
        let p = tiny_variant(&d, "collide", extra);
        let out = sweep_cmd(&p, &d).arg("--list").output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{extra}");
        assert!(text(&out.stderr).contains(want), "{}", text(&out.stderr));
    }
    // `{}` keeps the default detectors: its run is not labelled `off`.
    let p = tiny_variant(
        &d,
        "labels",
        "grid: {traffic.detectors: [{}, {volume_per_day: null}]}\n",
    );
    let list = text(&sweep_cmd(&p, &d).arg("--list").output().unwrap().stdout);
    assert!(
        list.contains("traffic.detectors=defaults,seed=1")
            && list.contains("traffic.detectors=off,seed=1"),
        "{list}"
    );
    let _ = std::fs::remove_dir_all(d);
}

/// Case 3: names and grid values cannot take a run directory outside `--results`.
#[test]
fn case_3_run_directories_stay_inside_the_results() {
    let d = scratch("case3");
    let results = d.join("inner").join("results");
    for extra in ["name: ../../DOTDOT\n", "name: /tmp/ABSOLUTE\n"] {
        let p = tiny_variant(&d, "escape", extra);
        let out = sweep_cmd(&p, &results).arg("--list").output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{extra}");
        assert!(text(&out.stderr).contains("must be one directory name"));
    }
    let p = tiny_variant(
        &d,
        "escape",
        "grid: {description: [\"x/../../../ESCAPED\"]}\nseeds: [1]\n",
    );
    let out = sweep_cmd(&p, &results).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let runs: Vec<String> = std::fs::read_dir(results.join("escape"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(runs, vec!["description=x_.._.._.._ESCAPED,seed=1"]);
    assert!(!d.join("ESCAPED").exists() && !d.join("inner").join("ESCAPED").exists());
    let _ = std::fs::remove_dir_all(d);
}

/// Case 4: nonsense values are refused, naming key, range and line, before anything runs.
#[test]
fn case_4_nonsense_values_are_refused_with_key_and_range() {
    let d = scratch("case4");
    for (extra, key) in [
        ("attacker: {accounts: 0}\n", "attacker.accounts"),
        ("world: {eval_per_suite: 0}\n", "world.eval_per_suite"),
        ("world: {eval_per_suite: 1e12}\n", "world.eval_per_suite"),
        (
            "api: {defenses: [{kind: flip, rate: 2, key: 1}]}\n",
            "api.defenses[0].rate",
        ),
        (
            "api: {defenses: [{kind: watermark, gamma: 1.5, delta: 2, key: 1}]}\n",
            "api.defenses[0].gamma",
        ),
        ("attacker: {hard_share: 2}\n", "attacker.hard_share"),
        (
            "api: {defenses: [{kind: noise, std: -1}]}\n",
            "api.defenses[0].std",
        ),
        ("attacker: {temperature: -1}\n", "attacker.temperature"),
        (
            "api:\n  tiers:\n    - {name: tier2, rpm: 5, input_tpm: 1000, output_tpm: 1000, price_in: -3, price_out: 1}\n",
            "api.tiers[0].price_in",
        ),
        ("attacker: {account_cost_usd: -100}\n", "attacker.account_cost_usd"),
        ("attacker: {max_days: -1}\n", "attacker.max_days"),
        (
            "traffic: {campaign: {daily_per_account: 1e12}}\n",
            "traffic.campaign.daily_per_account",
        ),
        ("student: {train: {batch_size: 0}}\n", "student.train.batch_size"),
        (
            "api: {defenses: [{kind: rounding, decimals: 39}]}\n",
            "api.defenses[0].decimals",
        ),
        ("attacker: {budget: 1e18}\n", "attacker.budget"),
        ("attacker: {top_k: 0}\n", "attacker.top_k"),
        ("student: {chain: {size: huge}}\n", "student.chain.size"),
        (
            "student: {method: on_policy, chain: {size: student-m}}\n",
            "student.chain",
        ),
        (
            "student: {method: text, temperature: 2.0}\n",
            "student.temperature",
        ),
        (
            "world: {answers: one, near_miss_share: 0.1}\n",
            "world.near_miss_share",
        ),
        (
            "world: {answers: several}\nteacher: {kind: oracle}\n",
            "world.answers",
        ),
        (
            "world: {harm: graded}\nstudent: {init: base}\n",
            "student.init",
        ),
        (
            "world: {harm: graded}\napi: {defenses: [{kind: antidistillation, lambda: 0.3}]}\n",
            "api.defenses",
        ),
    ] {
        let p = tiny_variant(&d, "nonsense", extra);
        let out = sweep_cmd(&p, &d).arg("--list").output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra} was accepted");
        assert!(
            err.contains(&format!("key `{key}`")) && err.contains("line "),
            "{extra}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(d);
}

/// The cached teacher of a results tree made by `run` (one per tiny config).
fn cached_teacher(results: &Path) -> PathBuf {
    let dir = results.join("cache").join("teachers");
    let hash = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    hash.join("model.safetensors")
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Case 5: teacher weights with flipped bytes or NaNs fail every run that needs them (exit 2,
/// status failed, the reason in each summary),
/// never serve a capability-0 teacher as `ok`. (Diverged student training: the lib test
/// `case_5_a_non_finite_loss_stops_training_and_is_reported`; `lr: 1e30` is refused at load.)
#[test]
fn case_5_corrupt_teacher_weights_fail_the_run() {
    let r = scratch("case5");
    assert!(run(&fixture("tiny.yaml"), &r, &["--jobs", "1"])
        .status
        .success());
    let model = cached_teacher(&r);
    let good = std::fs::read(&model).unwrap();
    let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    // A flipped byte in the data: the checksum recorded at caching time catches it.
    let mut flipped = good.clone();
    flipped[header + 17] ^= 0x40;
    std::fs::write(&model, &flipped).unwrap();
    // A fresh results tree on the same teacher cache.
    let sweep_fresh = |name: &str| {
        let out = bin()
            .arg("sweep")
            .arg(fixture("tiny.yaml"))
            .arg("--results")
            .arg(r.join(name))
            .arg("--cache")
            .arg(r.join("cache"))
            .args(["--jobs", "1"])
            .output()
            .unwrap();
        // Every run fails with the reason in its summary; none is recorded ok.
        for run in ["api.logprobs=0,seed=1", "api.logprobs=5,seed=1"] {
            let summary: Value = serde_json::from_slice(
                &std::fs::read(r.join(name).join("tiny").join(run).join("summary.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(summary["status"], "failed");
            assert!(summary["error"].as_str().unwrap().contains("teacher"));
        }
        out
    };
    let out = sweep_fresh("fresh1");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("checksum"),
        "{}",
        text(&out.stderr)
    );
    // NaNs with a matching checksum (written by something that computed one): refused too.
    let mut nan = good.clone();
    nan[header..header + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&model, &nan).unwrap();
    std::fs::write(model.with_extension("sha256"), sha256_hex(&nan)).unwrap();
    let out = sweep_fresh("fresh2");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("holds NaN"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(r);
}

/// Case 6: a failed run's reason reaches stderr whatever the job count and terminal, also
/// where its summary cannot be written; usage errors exit 1.
#[test]
fn case_6_failed_runs_tell_why_on_stderr() {
    let r = scratch("case6");
    // A file where the run directory must go: the run computes, then cannot be written.
    let blocked = r.join("tiny").join("api.logprobs=0,seed=1");
    std::fs::create_dir_all(blocked.parent().unwrap()).unwrap();
    std::fs::write(&blocked, "in the way").unwrap();
    for jobs in ["1", "2"] {
        let out = run(&fixture("tiny.yaml"), &r, &["--jobs", jobs]);
        assert_eq!(out.status.code(), Some(2), "jobs {jobs}");
        let err = text(&out.stderr);
        assert!(
            err.contains("1 of 2 runs failed")
                && err.contains("api.logprobs=0,seed=1: not finished"),
            "jobs {jobs}: {err}"
        );
        assert!(
            err.contains("Not a directory") || err.contains("not a directory"),
            "jobs {jobs}: {err}"
        );
    }
    let out = bin().args(["sweep", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(r);
}

/// Case 7: messages name the file, the key and the line.
#[test]
fn case_7_messages_name_file_key_and_line() {
    let d = scratch("case7");
    for (extra, want) in [
        (
            "student:\n  train:\n    lr: .nan\n",
            "line 4: key `student.train.lr`: \".nan\" is not a finite number",
        ),
        (
            "attacker:\n  temperature: 1e39\n",
            "line 3: key `attacker.temperature`: 1e+39 is outside [0, 10]",
        ),
    ] {
        let p = tiny_variant(&d, "located", extra);
        let out = sweep_cmd(&p, &d).arg("--list").output().unwrap();
        let err = text(&out.stderr);
        assert!(err.contains("located.yaml") && err.contains(want), "{err}");
    }
    // A missing base names the including file and the key, once.
    let p = d.join("includer.yaml");
    std::fs::write(&p, "base: nowhere.yaml\n").unwrap();
    let err = text(&sweep_cmd(&p, &d).arg("--list").output().unwrap().stderr);
    assert!(
        err.contains("includer.yaml: line 1: key `base`: `nowhere.yaml` is not a file")
            && err.matches("nowhere.yaml").count() == 2,
        "{err}"
    );
    // A teacher file of the wrong shape names the file.
    assert!(run(&fixture("tiny.yaml"), &d, &["--jobs", "1"])
        .status
        .success());
    let model = cached_teacher(&d);
    let cfg = tiny_variant(&d, "bigger", "teacher: {size: student-s}\n");
    let spec = distill_sim::experiment::config::load(&cfg, &[])
        .unwrap()
        .runs[0]
        .config
        .clone();
    let other = distill_sim::teacher::Teacher::cache_path(
        &spec.run_teacher(),
        &spec.world,
        &d.join("cache"),
    );
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::copy(&model, &other).unwrap();
    std::fs::copy(
        model.with_extension("sha256"),
        other.with_extension("sha256"),
    )
    .unwrap();
    let out = run(&cfg, &d, &["--jobs", "1"]);
    let err = text(&out.stderr);
    assert!(
        err.contains(&other.display().to_string()) && err.contains("has shape"),
        "{err}"
    );
    // An unknown report column lists the known ones.
    let out = bin()
        .arg("report")
        .arg(d.join("tiny"))
        .args(["--metrics", "fidelty"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no run records `fidelty` (recorded: "));
    let _ = std::fs::remove_dir_all(d);
}

/// Case 8: report and plot refuse malformed results with file and line; a checkpoint is
/// never counted as a seed.
#[test]
fn case_8_report_and_plot_refuse_malformed_results() {
    let r = scratch("case8");
    assert!(run(&fixture("tiny.yaml"), &r, &["--jobs", "1"])
        .status
        .success());
    let file = r
        .join("tiny")
        .join("api.logprobs=0,seed=1")
        .join("metrics.jsonl");
    let good = std::fs::read_to_string(&file).unwrap();
    for (bad, want) in [
        (
            good.replace("\"budget\":40", "\"budget\":\"lots\""),
            "metrics.jsonl:2: `budget`",
        ),
        (
            good.lines().next().unwrap()[..20].to_string(),
            "metrics.jsonl:1:",
        ),
        (String::new(), "no checkpoints"),
    ] {
        std::fs::write(&file, &bad).unwrap();
        for cmd in ["report", "plot"] {
            let out = bin().arg(cmd).arg(r.join("tiny")).output().unwrap();
            assert_eq!(out.status.code(), Some(1), "{cmd} accepted {bad:?}");
            assert!(
                text(&out.stderr).contains(want),
                "{cmd}: {}",
                text(&out.stderr)
            );
        }
    }
    let _ = std::fs::remove_dir_all(r);
}

/// Case 9: temporaries left by failed or killed writes (teacher cache, run directories,
/// figures) are removed by the next run, and figures are written atomically.
#[test]
fn case_9_stale_temporaries_are_cleaned_and_figures_are_atomic() {
    let r = scratch("case9");
    assert!(run(&fixture("tiny.yaml"), &r, &["--jobs", "1"])
        .status
        .success());
    let teacher_dir = cached_teacher(&r).parent().unwrap().to_path_buf();
    // pids above the kernel's maximum (4194304): writers that are surely gone.
    let stale_cache = teacher_dir.join(".model.safetensors.tmp-4999999");
    std::fs::write(&stale_cache, b"half a teacher").unwrap();
    let stale_run = r.join("tiny").join(".api.logprobs=0,seed=1.tmp-4999999");
    std::fs::create_dir_all(&stale_run).unwrap();
    let out = run(&fixture("tiny.yaml"), &r, &["--jobs", "1"]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("removed 2 temporary file(s)"),
        "{}",
        text(&out.stderr)
    );
    assert!(!stale_cache.exists() && !stale_run.exists());
    let figures = r.join("tiny").join("figures");
    std::fs::create_dir_all(&figures).unwrap();
    let stale_fig = figures.join(".parity.png.tmp-4999999.png");
    std::fs::write(&stale_fig, b"").unwrap();
    let out = bin().arg("plot").arg(r.join("tiny")).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!stale_fig.exists());
    let names: Vec<String> = std::fs::read_dir(&figures)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    for n in &names {
        assert!(
            std::fs::metadata(figures.join(n)).unwrap().len() > 0,
            "{n} is empty"
        );
    }
    let _ = std::fs::remove_dir_all(r);
}

/// Case 10: two sweeps sharing a results directory split the work: a run another process
/// holds is left to it (and waited for), and two concurrent sweeps run each run once.
#[test]
fn case_10_two_sweeps_split_the_work() {
    let r = scratch("case10");
    let cfg = fixture("sweep.yaml");
    // Warm the teacher cache so that both sweeps start on runs at once.
    assert!(sweep_cmd(&cfg, &r)
        .arg("--shard")
        .arg("0/6")
        .output()
        .unwrap()
        .status
        .success());
    // This process holds one run's lock, as another sweep would while running it.
    let lock_path = r
        .join(".locks")
        .join("sweep")
        .join("api.logprobs=5,seed=2.lock");
    std::fs::create_dir_all(lock_path.parent().unwrap()).unwrap();
    let held = std::fs::File::create(&lock_path).unwrap();
    held.lock().unwrap();
    let mut child = sweep_cmd(&cfg, &r)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the others are done, the sweep waits for the held one; then release it unfinished.
    let t0 = std::time::Instant::now();
    let finished = || {
        std::fs::read_dir(r.join("sweep"))
            .map(|d| {
                d.filter(|e| e.as_ref().unwrap().path().join("summary.json").exists())
                    .count()
            })
            .unwrap_or(0)
    };
    while finished() < 5 && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the sweep did not wait for the held run"
    );
    drop(held);
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(
        err.contains("api.logprobs=5,seed=2: another process is running it")
            && err.contains("waiting for 1 run(s)"),
        "{err}"
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "the held run is reported unfinished: {err}"
    );
    assert!(!r.join("sweep").join("api.logprobs=5,seed=2").exists());
    // Two sweeps at once over a fresh tree: every run is done exactly once.
    let fresh = r.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::create_dir_all(fresh.join("cache")).unwrap();
    let _ = std::fs::remove_dir_all(fresh.join("cache"));
    copy_dir(&r.join("cache"), &fresh.join("cache"));
    let a = sweep_cmd(&cfg, &fresh)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let b = sweep_cmd(&cfg, &fresh)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let done =
        text(&a.stderr).matches(": done (").count() + text(&b.stderr).matches(": done (").count();
    assert_eq!(done, 6, "{}\n{}", text(&a.stderr), text(&b.stderr));
    let _ = std::fs::remove_dir_all(r);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// A reader that stops early (`distill-sim metrics | head -1`) closes the pipe: the output ends
/// quietly (exit 0), with no panic.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    for args in [vec!["metrics"], vec!["config", "--schema"]] {
        let mut child = bin()
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).contains("panicked"), "{args:?}");
    }
}

/// The committed samples of the experiments produced under the measurement protocol are
/// current: their stored configs match what the experiment files request now (a key removed
/// from an inert section, such as a disabled `traffic`, does not make them stale; a key added
/// since, at its default, neither).
#[test]
fn committed_protocol_samples_match_their_experiment_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for exp in [
        "quickstart",
        "stability",
        "convergence",
        "ei_gap",
        "safety_transfer",
        "campaign_2026",
        "self_family",
        "ei_gap_base",
        "soft_vs_hard",
        "soft_vs_hard_near_miss",
        "compare_defenses_dk",
        "adaptive_counters",
        "compare_defenses",
        "compare_detectors",
        "reasoning",
        "watermark_share",
        "attackers",
        "compare_actions",
        "compare_actions_segments",
    ] {
        let out = bin()
            .arg("sweep")
            .arg(root.join("experiments").join(format!("{exp}.yaml")))
            .arg("--results")
            .arg(root.join("results/samples"))
            .arg("--list")
            .output()
            .unwrap();
        assert!(out.status.success(), "{exp}: {}", text(&out.stderr));
        let list = text(&out.stdout);
        assert!(!list.is_empty());
        for line in list.lines() {
            assert!(line.contains("\tfinished\t"), "{exp}: {line}");
        }
        // Each holds one config: a sweep into it (on a copy) passes the one-config check.
        let copy = scratch(&format!("samples-{exp}"));
        copy_dir(&root.join("results/samples").join(exp), &copy.join(exp));
        let loaded = distill_sim::experiment::config::load(
            &root.join("experiments").join(format!("{exp}.yaml")),
            &[],
        )
        .unwrap();
        distill_sim::experiment::results::check_one_config(&copy.join(exp), &loaded, false)
            .unwrap_or_else(|e| panic!("{exp}: {e}"));
        let _ = std::fs::remove_dir_all(copy);
    }
}

/// Students on the attacker's base: the base is pretrained once (cached by config hash, beside
/// the teachers), every run reports it as its budget-0 row, and its students start from it
/// (they differ from scratch students trained on the same harvest).
#[test]
fn students_on_the_attackers_base_report_the_base_at_budget_0() {
    let r = scratch("base");
    let args = [
        "--set",
        "student.init=base",
        "--set",
        "student.base.train.steps=30",
        "--set",
        "student.base.train.batch_size=16",
    ];
    let out = run(&fixture("tiny.yaml"), &r, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.matches("[base] pretrained").count(), 1, "{err}");
    let m = metrics(&r);
    assert_eq!(m.len(), 2);
    for (_, rows) in &m {
        let budgets: Vec<u64> = rows.iter().map(|x| x["budget"].as_u64().unwrap()).collect();
        assert_eq!(budgets, [0, 10, 40]);
        assert_eq!(rows[0]["harvest.items"], 0);
    }
    // The same runs again from scratch give other copies.
    let s = scratch("base-scratch");
    let out = run(&fixture("tiny.yaml"), &s, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let from_scratch = metrics(&s);
    assert_ne!(
        m[0].1[2]["train.val_loss"], from_scratch[0].1[1]["train.val_loss"],
        "a base-initialised student trains from other weights"
    );
    let _ = std::fs::remove_dir_all(r);
    let _ = std::fs::remove_dir_all(s);
}

/// On-policy scoring calls after a campaign go through the same API and accounts: when the
/// detectors banned every attacker account, the scoring calls are refused (nothing scored);
/// when the bans come too late to land, they are scored.
#[test]
fn on_policy_scoring_after_a_campaign_uses_its_accounts() {
    let scored = |delay: &str| {
        let r = scratch(&format!("onpolicy-{delay}"));
        let delay = format!("traffic.detectors.action_delay_minutes={delay}");
        let args = [
            "--set",
            "traffic.enabled=true",
            "--set",
            "traffic.population.users=200",
            "--set",
            "attacker.accounts=30",
            "--set",
            "attacker.max_days=2",
            "--set",
            "student.method=on_policy",
            "--set",
            "api.scoring=true",
            "--set",
            "api.logprobs=5",
            "--set",
            "traffic.answer_one_in=1",
            "--set",
            &delay,
        ];
        let out = run(&fixture("tiny.yaml"), &r, &args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let last = metrics(&r)[0].1.last().unwrap().clone();
        let _ = std::fs::remove_dir_all(&r);
        // Enough harvest for the on-policy half to exist.
        assert!(last["harvest.items"].as_u64().unwrap() >= 4, "{last}");
        (
            last["harvest.on_policy_scored"].as_u64().unwrap(),
            last["detection.recall"].as_f64().unwrap(),
        )
    };
    // Identity clustering flags every account within the first hour.
    let (banned, recall) = scored("60");
    assert_eq!((banned, recall), (0, 1.0));
    let (late, recall) = scored("100000");
    assert!(late > 0 && recall == 0.0, "{late} {recall}");
}

/// A campaign the access defenses block entirely harvests nothing: its runs report an
/// untrained copy (zero training steps), not a diverged training.
#[test]
fn a_blocked_campaign_reports_an_untrained_copy() {
    let r = scratch("blocked");
    let args = [
        "--set",
        "traffic.enabled=true",
        "--set",
        "traffic.population.users=100",
        "--set",
        "attacker.accounts=10",
        "--set",
        "attacker.max_days=1",
        "--set",
        "traffic.access.blocked_regions=[8]",
    ];
    let out = run(&fixture("tiny.yaml"), &r, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (_, rows) in metrics(&r) {
        for row in rows {
            assert_eq!(row["harvest.items"], 0);
            assert_eq!(row["train.steps"], 0);
            assert_eq!(row["detection.harvest_share"], 0.0);
        }
    }
    let _ = std::fs::remove_dir_all(r);
}

/// A self-family chain: the harvest trains the larger model, which is scored
/// (`chain.large.*`) and whose answers train the student offline.
#[test]
fn a_chain_reports_its_larger_model_and_trains_the_student_on_its_answers() {
    let r = scratch("chain");
    let args = ["--set", "student.chain={size: student-s}"];
    let out = run(&fixture("tiny.yaml"), &r, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (_, rows) in metrics(&r) {
        for row in rows {
            assert!(
                row["chain.large.train_steps"].as_u64().unwrap() > 0,
                "{row}"
            );
            assert!(row.get("chain.large.parity").is_some());
            assert!(row.get("chain.large.safety.refusal").is_some());
        }
    }
    let err = text(&out.stderr);
    assert!(!err.contains("failed"), "{err}");
    // The student learned from other targets than the direct student's (with logprobs: the
    // tiny teacher's greedy text is the larger model's too).
    let d = scratch("chain-direct");
    let out = run(&fixture("tiny.yaml"), &d, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (chain, direct) = (metrics(&r), metrics(&d));
    assert_eq!(chain[1].0, "api.logprobs=5,seed=1");
    assert_ne!(
        chain[1].1[1]["train.val_loss"], direct[1].1[1]["train.val_loss"],
        "the chain's student trains on the larger model's answers"
    );
    let _ = std::fs::remove_dir_all(r);
    let _ = std::fs::remove_dir_all(d);
}

// Issue "No silent wrong results, round two": one regression test per numbered case of its
// "Why" (`round2_case_N_...`).

/// `distill-sim <args>` in `dir`: (exit code, stdout, stderr).
fn cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = bin().current_dir(dir).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Case 1: a NUL (or another control byte) is refused at its line and column, never read as
/// the end of the file.
#[test]
fn round2_case_1_control_bytes_are_refused_not_truncating() {
    let d = scratch("r2c1");
    std::fs::write(
        d.join("nul.yaml"),
        "seeds: [7]\0\nbogus: 1\nattacker: {budget: 0}\n",
    )
    .unwrap();
    let (code, out, err) = cli(&d, &["sweep", "nul.yaml", "--list"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("nul.yaml: line 1, column 11: control character U+0000 (NUL)"),
        "{err}"
    );
    std::fs::write(d.join("mid.yaml"), "attacker:\n  budget: 2\x0000\n").unwrap();
    let (code, _, err) = cli(&d, &["config", "mid.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("line 2, column 12: control character"),
        "{err}"
    );
    std::fs::write(d.join("esc.yaml"), "name: a\x1bb\n").unwrap();
    let (code, _, err) = cli(&d, &["config", "esc.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("line 1, column 8: control character U+001B"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(d);
}

/// A finished-looking run directory written by hand: the resolved config of run `index` of
/// `config` (with `set` overrides) as config.json, a summary and one checkpoint.
fn fake_run(exp_dir: &Path, config: &Path, set: &[(&str, &str)], index: usize, parity: f64) {
    let set: Vec<(String, String)> = set
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let spec = distill_sim::experiment::config::load(config, &set)
        .unwrap()
        .runs
        .remove(index);
    let d = exp_dir.join(&spec.id);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("config.json"),
        serde_json::to_vec_pretty(&spec.config).unwrap(),
    )
    .unwrap();
    let point: serde_json::Map<String, Value> = spec.point.iter().cloned().collect();
    std::fs::write(
        d.join("summary.json"),
        serde_json::json!({"status": "ok", "seed": spec.seed, "index": spec.index,
            "point": point})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        d.join("metrics.jsonl"),
        format!("{{\"budget\": 40, \"parity\": {parity}}}\n"),
    )
    .unwrap();
}

/// Case 2: `report` refuses to average runs of different configs under one label.
#[test]
fn round2_case_2_report_refuses_runs_of_different_configs() {
    let d = scratch("r2c2");
    let cfg = d.join("exp.yaml");
    std::fs::write(&cfg, "seeds: [1, 2]\nattacker: {budget: 40}\n").unwrap();
    let exp_dir = d.join("results/exp");
    fake_run(&exp_dir, &cfg, &[], 0, 0.1);
    fake_run(&exp_dir, &cfg, &[], 1, 0.2);
    let (code, _, err) = cli(&d, &["report", "results/exp"]);
    assert_eq!(code, 0, "one config reports: {err}");
    let other = [("seeds", "[3, 4]"), ("attacker.harmful_share", "0.9")];
    fake_run(&exp_dir, &cfg, &other, 0, 0.5);
    fake_run(&exp_dir, &cfg, &other, 1, 0.6);
    for cmd in ["report", "plot"] {
        let (code, _, err) = cli(&d, &[cmd, "results/exp"]);
        assert_eq!(code, 1, "{cmd}: {err}");
        assert!(
            err.contains("different configs outside the grid")
                && err.contains("attacker.harmful_share: 0.02 vs 0.9"),
            "{cmd}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(d);
}

/// Case 3: a sweep of another config into a directory that holds (or is being filled with)
/// runs of one config is refused before it starts; the first sweep finishes its own runs.
#[test]
fn round2_case_3_two_configs_never_share_a_results_directory() {
    let r = scratch("r2c3");
    let cfg = fixture("tiny.yaml");
    let mut a = sweep_cmd(&cfg, &r)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The first sweep records its config before its first run.
    let manifest = r.join("tiny/.experiment.json");
    let t0 = std::time::Instant::now();
    while !manifest.exists() {
        assert!(t0.elapsed().as_secs() < 120, "no .experiment.json");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = sweep_cmd(&cfg, &r)
        .args([
            "--set",
            "attacker.budget=30",
            "--set",
            "checkpoints=[10, 30]",
        ])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("holds runs of another config") && err.contains("attacker.budget: 40 vs 30"),
        "{err}"
    );
    assert!(a.wait().unwrap().success());
    for (_, rows) in metrics(&r) {
        assert_eq!(rows.last().unwrap()["budget"], 40);
    }
    // After it, too; the grid's own axis may differ, and the same config may add seeds.
    let out = sweep_cmd(&cfg, &r)
        .args([
            "--set",
            "attacker.budget=30",
            "--set",
            "checkpoints=[10, 30]",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = sweep_cmd(&cfg, &r)
        .args(["--set", "seeds=[2]", "--set", "api.logprobs=3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(r);
}

/// Case 4: no key is accepted and ignored: `--set base=` chooses the base, a missing one is
/// an error, and keys that shape the sweep cannot be grid axes.
#[test]
fn round2_case_4_base_by_set_and_unsweepable_grid_keys() {
    let d = scratch("r2c4");
    std::fs::write(d.join("b.yaml"), "attacker: {budget: 150}\n").unwrap();
    std::fs::write(d.join("exp.yaml"), "seeds: [1]\n").unwrap();
    let set = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    let exp =
        distill_sim::experiment::config::load(&d.join("exp.yaml"), &set("base", "b.yaml")).unwrap();
    assert_eq!(exp.runs[0].config.attacker.budget, 150);
    assert_eq!(exp.runs[0].config.base.as_deref(), Some("b.yaml"));
    let (code, _, err) = cli(&d, &["config", "exp.yaml", "--set", "base=missing.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--set base=missing.yaml: `missing.yaml` is not a file"),
        "{err}"
    );
    for (grid, want) in [
        (
            "grid: {name: [a, b]}\n",
            "line 2: key `grid.name`: `name` cannot be swept",
        ),
        (
            "grid:\n  seeds: [[1], [2]]\n",
            "line 3: key `grid.seeds`: `seeds` cannot be swept: list the seeds in `seeds:`",
        ),
    ] {
        std::fs::write(d.join("g.yaml"), format!("seeds: [1]\n{grid}")).unwrap();
        let (code, _, err) = cli(&d, &["sweep", "g.yaml", "--list"]);
        assert_eq!(code, 1, "{grid}");
        assert!(err.contains(want), "{err}");
    }
    let _ = std::fs::remove_dir_all(d);
}

/// Case 5: on-policy distillation from an API that returns no logprobs does not pay for
/// scoring calls that return nothing: its scoring counts as not offered.
#[test]
fn round2_case_5_on_policy_without_logprobs_is_scoring_denied() {
    let r = scratch("r2c5");
    let p = tiny_variant(&r, "onpol", "student: {method: on_policy}\n");
    let out = run(
        &p,
        &r,
        &[
            "--jobs",
            "1",
            "--set",
            "api.logprobs=0",
            "--set",
            "api.scoring=true",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let runs = metrics_of(&r, "onpol");
    assert_eq!(runs.len(), 1);
    for row in &runs[0].1 {
        assert_eq!(row["harvest.on_policy_denied"], 1, "{row}");
        assert_eq!(row["harvest.on_policy_scored"], 0, "{row}");
        assert_eq!(row["cost.scoring_usd"], 0.0, "{row}");
    }
    let _ = std::fs::remove_dir_all(r);
}

/// Case 6: `report` refuses a summary.json of the wrong shape, naming the file.
#[test]
fn round2_case_6_report_refuses_malformed_summaries() {
    let d = scratch("r2c6");
    let cfg = d.join("exp.yaml");
    std::fs::write(&cfg, "seeds: [1]\nattacker: {budget: 40}\n").unwrap();
    let exp_dir = d.join("results/exp");
    fake_run(&exp_dir, &cfg, &[], 0, 0.1);
    let summary = exp_dir.join("seed=1/summary.json");
    for (bad, want) in [
        ("[1,2]", "expected a JSON object"),
        (
            r#"{"status": "ok", "seed": "x", "index": 0, "point": {}}"#,
            "`seed` must be a non-negative integer, got \"x\"",
        ),
        (
            r#"{"status": "done", "seed": 1}"#,
            "`status` must be \"ok\" or \"failed\"",
        ),
        (
            r#"{"status": "ok", "seed": 1, "point": [1]}"#,
            "`point` must be a mapping",
        ),
    ] {
        std::fs::write(&summary, bad).unwrap();
        let (code, _, err) = cli(&d, &["report", "results/exp"]);
        assert_eq!(code, 1, "{bad}");
        assert!(
            err.contains("summary.json: ") && err.contains(want),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(d);
}

/// Cases 7 and 8: the size of a sweep is bounded before it is expanded (a clear error past
/// `MAX_RUNS`), and expanding a large seed list is linear (64,000 seeds took 27.8 s before).
#[test]
fn round2_case_7_8_huge_grids_and_seed_lists_are_refused_quickly() {
    let d = scratch("r2c7");
    // Every point valid (so that an unbounded loader would expand them all): 20^4 points.
    let values: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    let list = format!("[{}]", values.join(", "));
    let grid = format!(
        "grid:\n  teacher.seed: {list}\n  world.eval_seed: {list}\n  attacker.accounts: {list}\n  \
         student.min_steps: {list}\n"
    );
    std::fs::write(d.join("grid.yaml"), grid).unwrap();
    let seeds: Vec<String> = (0..64_000).map(|i| i.to_string()).collect();
    std::fs::write(
        d.join("seeds.yaml"),
        format!("seeds: [{}]\n", seeds.join(", ")),
    )
    .unwrap();
    for (file, want) in [
        ("grid.yaml", "the sweep has 160000 runs"),
        ("seeds.yaml", "the sweep has 64000 runs"),
    ] {
        let t0 = std::time::Instant::now();
        let (code, _, err) = cli(&d, &["sweep", file, "--list"]);
        assert_eq!(code, 1, "{file}");
        assert!(
            err.contains(want) && err.contains("above the limit of 10000 runs"),
            "{err}"
        );
        // Generous: a hang guard, not a speed target.
        assert!(t0.elapsed().as_secs() < 20, "{file}: {:?}", t0.elapsed());
    }
    // At the limit it expands, every seed its own run.
    let seeds: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    std::fs::write(
        d.join("max.yaml"),
        format!("seeds: [{}]\n", seeds.join(", ")),
    )
    .unwrap();
    let exp = distill_sim::experiment::config::load(&d.join("max.yaml"), &[]).unwrap();
    assert_eq!(exp.runs.len(), 10_000);
    assert_eq!(exp.runs[9_999].seed, 9_999);
    assert_eq!(exp.runs[9_999].config.seeds, vec![9_999]);
    let _ = std::fs::remove_dir_all(d);
}

/// Case 9: a name or a grid value too long for a directory name is refused at load, with its
/// key and line.
#[test]
fn round2_case_9_names_too_long_for_a_directory_are_refused_at_load() {
    let d = scratch("r2c9");
    let long = "a".repeat(300);
    for (yaml, want) in [
        (format!("name: {long}\n"), "line 1: key `name`: 300 bytes"),
        (
            format!("grid:\n  api.logprobs: [0]\n  teacher.size: [\"{long}\"]\n"),
            "line 3: key `grid.teacher.size`: the run id",
        ),
    ] {
        std::fs::write(d.join("long.yaml"), &yaml).unwrap();
        let (code, _, err) = cli(&d, &["sweep", "long.yaml", "--list"]);
        assert_eq!(code, 1);
        assert!(
            err.contains(want) && err.contains("above the limit of 200"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(d);
}

/// Case 10: an unwritable `--results` is refused before any run starts (exit 1, naming the
/// flag); a cache that holds the teacher serves it even where no lock can be made beside it.
#[test]
fn round2_case_10_unwritable_results_and_a_cache_without_locks() {
    let r = scratch("r2c10");
    let cfg = fixture("tiny.yaml");
    std::fs::write(r.join("plain"), "x").unwrap();
    for results in [r.join("plain"), PathBuf::from("/dev/null")] {
        let out = bin()
            .arg("sweep")
            .arg(&cfg)
            .arg("--results")
            .arg(&results)
            .arg("--cache")
            .arg(r.join("cache"))
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("--results {}", results.display()))
                && !err.contains("run the sweep again"),
            "{err}"
        );
        assert!(!r.join("cache").exists(), "no teacher was trained");
    }
    assert!(run(&cfg, &r, &["--jobs", "1"]).status.success());
    // No lock can be created where the cache keeps it (a read-only cache behaves so).
    let model = cached_teacher(&r);
    let lock = model.parent().unwrap().with_extension("lock");
    let _ = std::fs::remove_file(&lock);
    std::fs::create_dir_all(&lock).unwrap();
    let out = bin()
        .arg("sweep")
        .arg(&cfg)
        .arg("--results")
        .arg(r.join("other"))
        .arg("--cache")
        .arg(r.join("cache"))
        .args(["--jobs", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(r);
}

/// Case 11: a damaged run the sweep does not touch does not stop it, and a truncated
/// config.json is a damaged run (redone), not a config change.
#[test]
fn round2_case_11_damaged_runs_elsewhere_and_truncated_configs() {
    let r = scratch("r2c11");
    let cfg = fixture("tiny.yaml");
    assert!(run(&cfg, &r, &["--jobs", "1"]).status.success());
    let exp = r.join("tiny");
    std::fs::write(exp.join("api.logprobs=5,seed=1/metrics.jsonl"), "{\"budg").unwrap();
    let out = run(&cfg, &r, &["--jobs", "1", "--shard", "0/2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let conf = exp.join("api.logprobs=0,seed=1/config.json");
    let full = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, &full[..full.len() / 2]).unwrap();
    let out = sweep_cmd(&cfg, &r).arg("--list").output().unwrap();
    let listed = text(&out.stdout);
    assert!(!listed.contains("changed"), "{listed}");
    let out = run(&cfg, &r, &["--jobs", "1"]);
    let err = text(&out.stderr);
    assert!(
        out.status.success() && !err.contains("--replace-changed"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&conf).unwrap().len(), full.len());
    let _ = std::fs::remove_dir_all(r);
}

/// Cases 12 and 13: an unknown field is placed at its own key's line (not the first line
/// with a field of that name), a moved key says where it went, and an error in a grid value
/// points at the grid.
#[test]
fn round2_case_12_13_errors_at_the_right_line() {
    let d = scratch("r2c12");
    for (yaml, want) in [
        (
            "attacker:\n  budget: 200\ntraffic:\n  campaign:\n    budget: 5\n",
            "line 5: key `traffic.campaign.budget`: unknown field `budget`",
        ),
        (
            "attacker:\n  accounts: 20\ntraffic:\n  campaign: {accounts: 200}\n",
            "line 4: key `traffic.campaign.accounts`: unknown field `accounts`",
        ),
        (
            "attacker: {budget: 200}\ngrid: {attacker.budget: [100, x]}\n",
            "line 2: key `grid.attacker.budget`",
        ),
        (
            "attacker:\n  budget: 200\ngrid:\n  attacker.budget:\n    - 100\n    - x\n",
            "line 4: key `grid.attacker.budget`",
        ),
    ] {
        std::fs::write(d.join("m.yaml"), yaml).unwrap();
        let (code, _, err) = cli(&d, &["config", "m.yaml"]);
        assert_eq!(code, 1, "{yaml}");
        assert!(err.contains(want), "{yaml}\n{err}");
    }
    std::fs::write(d.join("m.yaml"), "traffic:\n  campaign: {accounts: 200}\n").unwrap();
    let (_, _, err) = cli(&d, &["config", "m.yaml"]);
    assert!(err.contains("moved to `attacker.accounts`"), "{err}");
    // From a variant and from `--set` too.
    std::fs::write(
        d.join("v.yaml"),
        "variants:\n  - {name: a, traffic: {campaign: {days: 3}}}\n",
    )
    .unwrap();
    let (_, _, err) = cli(&d, &["config", "v.yaml"]);
    assert!(err.contains("moved to `attacker.max_days`"), "{err}");
    let (_, _, err) = cli(
        &d,
        &["config", "v.yaml", "--set", "traffic.campaign.hard_share=1"],
    );
    assert!(
        err.contains("--set `traffic.campaign.hard_share`")
            && err.contains("moved to `attacker.hard_share`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(d);
}

/// Case 14: every message names the file, line and key (or the flag), once, in the tool's
/// words.
#[test]
fn round2_case_14_messages_name_their_place() {
    let d = scratch("r2c14");
    std::fs::write(d.join("utf.yaml"), b"seeds: [1]\nname: ab\xffc\n").unwrap();
    let (code, _, err) = cli(&d, &["config", "utf.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("line 2, byte 9") && err.contains("invalid UTF-8"),
        "{err}"
    );
    for (yaml, want) in [
        (
            "api: {defenses: [{kind: nope}]}\n",
            "line 1: key `api.defenses",
        ),
        (
            "api:\n  tiers:\n    - {name: t}\n",
            "line 2: key `api.tiers",
        ),
        ("seeds: [1, 1]\n", "line 1: key `seeds`: 1 is listed twice"),
        (
            "seeds: [1]\n---\nseeds: [2]\n",
            "more than one YAML document",
        ),
    ] {
        std::fs::write(d.join("m.yaml"), yaml).unwrap();
        let (code, _, err) = cli(&d, &["config", "m.yaml"]);
        assert_eq!(code, 1, "{yaml}");
        assert!(
            err.contains("m.yaml: ") && err.contains(want),
            "{yaml}\n{err}"
        );
    }
    std::fs::write(d.join("ok.yaml"), "seeds: [1]\n").unwrap();
    let (_, _, err) = cli(&d, &["config", "ok.yaml", "--set", "attacker.budget=x"]);
    assert!(
        err.contains("--set attacker.budget=x: key `attacker.budget`"),
        "{err}"
    );
    let (_, _, err) = cli(&d, &["config", "ok.yaml", "--set", "seeds=[1,1]"]);
    assert!(
        err.contains("--set seeds=[1,1]: key `seeds`: 1 is listed twice"),
        "{err}"
    );
    for shard in ["-1/2", "1/2/3", "0/18446744073709551616", "2/2", "a"] {
        let (code, _, err) = cli(&d, &["sweep", "ok.yaml", "--list", "--shard", shard]);
        assert_eq!(code, 1, "{shard}");
        assert!(
            err.contains(&format!("--shard `{shard}`")),
            "{shard}: {err}"
        );
    }
    let (code, _, err) = cli(&d, &["report", "nowhere"]);
    assert_eq!(code, 1);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    let _ = std::fs::remove_dir_all(d);
}

/// Case 15: a tab after a colon is YAML and is read; a base that is a directory says so;
/// `metrics` declares the teacher's own columns.
#[test]
fn round2_case_15_tabs_directory_bases_and_teacher_metrics() {
    let d = scratch("r2c15");
    std::fs::write(d.join("tab.yaml"), "seeds:\t[3]\nattacker: {budget:\t50}\n").unwrap();
    let exp = distill_sim::experiment::config::load(&d.join("tab.yaml"), &[]).unwrap();
    assert_eq!(exp.runs[0].seed, 3);
    assert_eq!(exp.runs[0].config.attacker.budget, 50);
    std::fs::write(d.join("q.yaml"), "name: \"a\tb\"\n").unwrap();
    let exp = distill_sim::experiment::config::load(&d.join("q.yaml"), &[]).unwrap();
    // A tab inside quotes is kept as written.
    assert_eq!(exp.config.name, "a\tb");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    std::fs::write(d.join("b.yaml"), "base: sub\n").unwrap();
    let (code, _, err) = cli(&d, &["config", "b.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("line 1: key `base`: `sub` is a directory"),
        "{err}"
    );
    let (code, out, _) = cli(&d, &["metrics"]);
    assert_eq!(code, 0);
    assert!(out.contains("`teacher.*`"), "{out}");
    let _ = std::fs::remove_dir_all(d);
}

/// `traffic export` writes a run's decided requests as versioned JSON lines, the same bytes
/// twice; an experiment without traffic, or an unknown run, is an error naming it, and no
/// log is left behind.
#[test]
fn traffic_export_writes_the_replayed_requests_as_json_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = scratch("traffic-export");
    let exp = root.join("experiments/compare_actions.yaml");
    let export = |out: &Path, extra: &[&str]| {
        bin()
            .args(["traffic", "export"])
            .arg(&exp)
            .arg("--out")
            .arg(out)
            .args(extra)
            .args([
                "--set",
                "traffic.population.users=300",
                "--set",
                "attacker.max_days=1",
            ])
            .output()
            .unwrap()
    };
    let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    for p in [&a, &b] {
        let out = export(p, &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let log = std::fs::read_to_string(&a).unwrap();
    assert_eq!(log, std::fs::read_to_string(&b).unwrap());
    let rows: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.len() > 1000, "{}", rows.len());
    assert!(rows.iter().all(|r| r["v"] == 1 && r["code"].is_string()));
    assert!(rows.iter().any(|r| r["attacker"] == true));
    let out = export(&dir.join("c.jsonl"), &["--run", "no-such-run"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no-such-run"),
        "{}",
        text(&out.stderr)
    );
    let out = bin()
        .args(["traffic", "export"])
        .arg(root.join("experiments/quickstart.yaml"))
        .arg("--out")
        .arg(dir.join("d.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("traffic.enabled"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.join("d.jsonl").exists() && !dir.join("d.partial").exists());
}
