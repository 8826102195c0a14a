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
        assert!(summary["versions"]["burn"].is_string());
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
    let stale = r.join("tiny").join(".tmp-api.logprobs=0,seed=1-999999");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("metrics.jsonl"), "{\"half\":").unwrap();
    let out = run(&fixture("tiny.yaml"), &r, &["--jobs", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!stale.exists());
    let names: Vec<String> = std::fs::read_dir(r.join("tiny"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    let _ = std::fs::remove_dir_all(r);
}

/// With the traffic replay on, detectors stop the campaign and the attacker keeps only the
/// share of the budget served before the stop.
#[test]
fn detection_cuts_the_harvest_to_what_was_served_before_the_stop() {
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
            "traffic.campaign.accounts=30",
            "--set",
            "traffic.campaign.days=2",
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
    let kept = (40.0 * share).ceil() as u64;
    assert_eq!(last["harvest.items"].as_u64().unwrap(), kept.min(40));
    let _ = std::fs::remove_dir_all(r);
}

/// Silent fallback keeps the whole budget, with everything after the flag from the fallback.
#[test]
fn silent_fallback_keeps_the_budget_and_marks_the_fallback_share() {
    let r = scratch("fallback");
    let mut args = vec![
        "--set",
        "traffic.enabled=true",
        "--set",
        "traffic.population.users=200",
    ];
    args.extend([
        "--set",
        "traffic.campaign.accounts=30",
        "--set",
        "traffic.campaign.days=2",
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
    assert_eq!(last["harvest.items"], 40);
    let share = last["detection.harvest_share"].as_f64().unwrap();
    let fb = last["harvest.fallback_share"].as_f64().unwrap();
    assert!(
        (fb - (40.0 - (40.0 * share).ceil()) / 40.0).abs() < 1e-9,
        "{fb} {share}"
    );
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
        .filter(|n| n.starts_with('.'))
        .collect();
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
