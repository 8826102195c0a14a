//! A sweep: which of an experiment's runs this process does (shards and worker slices), the
//! state of each in the results tree, the check that no finished run is reused under another
//! config, the worker processes and their progress, waiting for runs another sweep holds, and
//! what the sweep ends with (the finished runs' records and the failures with their reasons).

use super::config::{Experiment, RunSpec};
use super::results::{changed_keys, check_one_config, is_finished, load_runs, RunRecord};
use super::run::{Runner, BUSY};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A sweep as the command line asked for it.
#[derive(Clone, Debug, Default)]
pub struct SweepArgs {
    /// The experiment file (worker processes load it again).
    pub config: PathBuf,
    /// `--set KEY=VALUE` overrides, as given (passed on to workers).
    pub set: Vec<String>,
    pub results: PathBuf,
    pub cache: PathBuf,
    /// Worker processes (default: the number of cores).
    pub jobs: Option<usize>,
    /// `--shard I/N`.
    pub shard: Option<String>,
    /// `--worker I/N`: this process is a worker of a parent sweep.
    pub worker: Option<String>,
    pub replace_changed: bool,
}

/// Where a run stands in the results tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Complete, with the config asked for.
    Finished,
    /// Complete, but run with another config.
    Changed,
    /// A summary without complete results (the run failed, or its files are damaged).
    Failed,
    /// Not run yet (or interrupted before its summary).
    Pending,
}

impl RunState {
    pub fn of(dir: &Path, spec: &RunSpec) -> RunState {
        if is_finished(dir, spec) {
            RunState::Finished
        } else if changed_keys(dir, spec, 0).is_some() {
            RunState::Changed
        } else if dir.join("summary.json").exists() {
            RunState::Failed
        } else {
            RunState::Pending
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Finished => "finished",
            RunState::Changed => "changed",
            RunState::Failed => "failed",
            RunState::Pending => "pending",
        }
    }
}

/// `i/n`: the i-th of n deterministic slices (runs whose index is i mod n). `flag` names the
/// option in errors.
pub fn parse_slice(flag: &str, s: &str) -> Result<(usize, usize)> {
    let bad = |why: &str| {
        Error::Invalid(format!(
            "{flag} `{s}`: {why}; expected I/N with whole numbers 0 <= I < N, e.g. `{flag} 0/2`"
        ))
    };
    let (i, n) = s.split_once('/').ok_or_else(|| bad("no `/`"))?;
    if n.contains('/') {
        return Err(bad("more than one `/`"));
    }
    let num = |x: &str, what: &str| -> Result<usize> {
        let x = x.trim();
        if x.is_empty() || !x.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad(&format!("{what} `{x}` is not a whole number")));
        }
        x.parse()
            .map_err(|_| bad(&format!("{what} `{x}` is too large")))
    };
    let (i, n) = (num(i, "I")?, num(n, "N")?);
    if n == 0 || i >= n {
        return Err(bad(&format!("{i}/{n} is not a slice (need 0 <= I < N)")));
    }
    Ok((i, n))
}

/// The runs this process does, with their index in the experiment: the `--shard` slice of
/// all runs, then the `--worker` slice of that.
pub fn select<'a>(runs: &'a [RunSpec], args: &SweepArgs) -> Result<Vec<(usize, &'a RunSpec)>> {
    let mut picked: Vec<(usize, &RunSpec)> = runs.iter().enumerate().collect();
    for (flag, slice) in [("--shard", &args.shard), ("--worker", &args.worker)] {
        let Some(slice) = slice else { continue };
        let (i, n) = parse_slice(flag, slice)?;
        picked = picked
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % n == i)
            .map(|(_, r)| r)
            .collect();
    }
    Ok(picked)
}

/// The selected runs with their states, for `sweep --list`.
pub fn list<'a>(exp: &'a Experiment, args: &SweepArgs) -> Result<Vec<(usize, RunState, &'a str)>> {
    let dir = args.results.join(&exp.config.name);
    Ok(select(&exp.runs, args)?
        .into_iter()
        .map(|(i, r)| (i, RunState::of(&dir.join(&r.id), r), r.id.as_str()))
        .collect())
}

/// A finished run is the result of its config: one whose config has changed since is neither
/// reused nor silently overwritten. Errors with the runs and the keys that differ.
pub fn check_unchanged(exp: &Experiment, runs: &[(usize, &RunSpec)], results: &Path) -> Result<()> {
    let exp_dir = results.join(&exp.config.name);
    let changed: Vec<String> = runs
        .iter()
        .filter_map(|(_, r)| {
            let keys = changed_keys(&exp_dir.join(&r.id), r, 4)?;
            Some(format!("  {}: {}", r.id, keys.join("; ")))
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{} finished run(s) in {} were run with a different config:\n{}\nTo keep them, sweep \
         into another directory (`--results DIR`); to replace them, pass `--replace-changed`.",
        changed.len(),
        exp_dir.display(),
        changed.join("\n")
    )))
}

/// What a sweep ends with.
pub struct SweepOutcome {
    /// The finished runs' records, read back from the results tree.
    pub records: Vec<RunRecord>,
    /// Runs not finished, each with why (as recorded, or what is known).
    pub failed: Vec<(String, String)>,
    /// Runs selected.
    pub selected: usize,
}

/// Run the selected runs of `exp`: checks, teachers, then the runs in worker processes (or
/// in this one), then wait for runs another sweep holds. A worker returns no records.
pub fn run(exp: &Experiment, args: &SweepArgs) -> Result<SweepOutcome> {
    let is_worker = args.worker.is_some();
    if is_worker {
        // Worker processes share the cores: one compute thread each.
        crate::model::set_threads(1);
    }
    let runs = select(&exp.runs, args)?;
    let mut runner = Runner::new(args.results.clone(), args.cache.clone());
    if !is_worker {
        start(exp, args, &runs, &runner)?;
    }
    // Teachers are prepared (trained or loaded) only for runs that still have work to do.
    let specs: Vec<RunSpec> = runs
        .iter()
        .filter(|(_, r)| !is_finished(&runner.run_dir(exp, &r.id), r))
        .map(|(_, r)| (*r).clone())
        .collect();
    runner.prepare(&specs)?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, runs.len().max(1));
    if jobs > 1 && !is_worker {
        run_workers(exp, args, &runs, jobs)?;
    } else {
        run_here(exp, &runs, &runner, !is_worker);
    }
    if is_worker {
        return Ok(SweepOutcome {
            records: vec![],
            failed: vec![],
            selected: runs.len(),
        });
    }
    wait_for_others(exp, &runs, &runner);
    finish(exp, &runs, &runner)
}

/// The parent's checks before any run starts: no changed run reused, one config per
/// experiment directory, results and cache writable; stale temporaries removed.
fn start(
    exp: &Experiment,
    args: &SweepArgs,
    runs: &[(usize, &RunSpec)],
    runner: &Runner,
) -> Result<()> {
    if !args.replace_changed {
        check_unchanged(exp, runs, &args.results)?;
    }
    let exp_dir = args.results.join(&exp.config.name);
    check_one_config(&exp_dir, exp, args.replace_changed)
        .map_err(|e| Error::Invalid(format!("--results {}: {e}", args.results.display())))?;
    let cleaned = runner.clean_temps(exp);
    if cleaned > 0 {
        eprintln!("[run] removed {cleaned} temporary file(s) left by interrupted writes");
    }
    eprintln!(
        "[run] {}: {} of {} runs x {} checkpoints",
        exp.config.name,
        runs.len(),
        exp.runs.len(),
        exp.config.budgets().len()
    );
    Ok(())
}

/// The command line of worker `k` of `jobs`: this sweep's arguments and its slice.
pub fn worker_args(args: &SweepArgs, k: usize, jobs: usize) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec!["run".into(), args.config.clone().into()];
    for s in &args.set {
        a.extend(["--set".into(), s.into()]);
    }
    if let Some(s) = &args.shard {
        a.extend(["--shard".into(), s.into()]);
    }
    a.extend([
        "--results".into(),
        args.results.clone().into(),
        "--cache".into(),
        args.cache.clone().into(),
    ]);
    if args.replace_changed {
        a.push("--replace-changed".into());
    }
    a.extend([
        "--jobs".into(),
        "1".into(),
        "--worker".into(),
        format!("{k}/{jobs}").into(),
    ]);
    a
}

/// Independent runs go to `jobs` worker processes (the engine serialises threads); the
/// parent shows their progress by watching the results tree, where each writes its runs.
fn run_workers(
    exp: &Experiment,
    args: &SweepArgs,
    runs: &[(usize, &RunSpec)],
    jobs: usize,
) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| Error::io("the running executable", e))?;
    let mut children = (0..jobs)
        .map(|k| {
            std::process::Command::new(&exe)
                .args(worker_args(args, k, jobs))
                .stdout(std::process::Stdio::null())
                .spawn()
                .map_err(|e| Error::Invalid(format!("starting a worker process: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let exp_dir = args.results.join(&exp.config.name);
    let pb = progress_bar(runs.len());
    loop {
        let states: Vec<RunState> = runs
            .iter()
            .map(|(_, r)| RunState::of(&exp_dir.join(&r.id), r))
            .collect();
        let failed = states.iter().filter(|&&s| s == RunState::Failed).count();
        pb.set_position(states.iter().filter(|&&s| s != RunState::Pending).count() as u64);
        pb.set_message(if failed > 0 {
            format!("{failed} failed")
        } else {
            String::new()
        });
        let mut alive = false;
        for c in children.iter_mut() {
            alive |= c
                .try_wait()
                .map_err(|e| Error::Invalid(format!("waiting for a worker process: {e}")))?
                .is_none();
        }
        if !alive {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    pb.finish();
    Ok(())
}

/// The runs one after another in this process (a worker's slice, or a sweep of one job),
/// each logged; the parent's own sweep draws a progress bar.
fn run_here(exp: &Experiment, runs: &[(usize, &RunSpec)], runner: &Runner, bar: bool) {
    let pb = bar.then(|| progress_bar(runs.len()));
    let (parent, total) = (parent_id(), exp.runs.len());
    let mut failed = 0;
    for (n, (i, spec)) in runs.iter().enumerate() {
        // A worker whose parent has gone (killed) stops between runs.
        if !bar && parent_id() != parent {
            break;
        }
        // A hidden bar (stderr not a terminal) drops println: log to stderr then.
        let log = |msg: &str| match &pb {
            Some(pb) if !pb.is_hidden() => pb.println(format!("[run {}/{total}] {msg}", i + 1)),
            _ => eprintln!("[run {}/{total}] {msg}", i + 1),
        };
        let outcome = runner.run(exp, spec, &log);
        if outcome.status == BUSY {
            log(&format!(
                "{}: another process is running it, left to that one",
                outcome.id
            ));
        } else if outcome.skipped {
            log(&format!("{}: already finished, skipped", outcome.id));
        } else if outcome.status == "ok" {
            log(&format!(
                "{}: done ({} of {} in this process)",
                outcome.id,
                n + 1,
                runs.len()
            ));
        } else {
            failed += 1;
            log(&format!("{}: {}", outcome.id, outcome.status));
        }
        if let Some(pb) = &pb {
            pb.set_position(n as u64 + 1);
            if failed > 0 {
                pb.set_message(format!("{failed} failed"));
            }
        }
    }
    if let Some(pb) = pb {
        pb.finish();
    }
}

/// Runs another sweep into the same results is running: wait for them to end.
fn wait_for_others(exp: &Experiment, runs: &[(usize, &RunSpec)], runner: &Runner) {
    let mut waited = false;
    loop {
        let busy = runs
            .iter()
            .filter(|(_, r)| {
                !is_finished(&runner.run_dir(exp, &r.id), r) && runner.busy_elsewhere(exp, r)
            })
            .count();
        if busy == 0 {
            return;
        }
        if !waited {
            eprintln!("[run] waiting for {busy} run(s) that another process is running");
            waited = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The outcome read back from the results files, whichever process wrote them: this sweep's
/// runs only, each with the config it ran with.
fn finish(exp: &Experiment, runs: &[(usize, &RunSpec)], runner: &Runner) -> Result<SweepOutcome> {
    let (done, failed): (Vec<&RunSpec>, Vec<&RunSpec>) = runs
        .iter()
        .map(|(_, spec)| *spec)
        .partition(|spec| is_finished(&runner.run_dir(exp, &spec.id), spec));
    let ids: std::collections::HashSet<&str> = done.iter().map(|s| s.id.as_str()).collect();
    let records = if ids.is_empty() {
        vec![]
    } else {
        load_runs(&runner.results_root.join(&exp.config.name), &ids)?
    };
    let failed = failed
        .iter()
        .map(|spec| {
            (
                spec.id.clone(),
                failure_reason(&runner.run_dir(exp, &spec.id)),
            )
        })
        .collect();
    Ok(SweepOutcome {
        records,
        failed,
        selected: runs.len(),
    })
}

/// Why the run in `dir` is not finished: the error its summary records, or what is known.
pub fn failure_reason(dir: &Path) -> String {
    let summary = dir.join("summary.json");
    let recorded = std::fs::read(&summary)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["error"].as_str().map(String::from));
    match recorded {
        Some(e) => e,
        None if summary.exists() => format!(
            "{} holds a run this sweep cannot use (a damaged file, or another config written \
             by another process); `distill-sim sweep --list` shows its state",
            dir.display()
        ),
        None => format!(
            "not finished, and no summary.json in {} (if this sweep ran it, the error is in \
             the log above; run the sweep again to finish it)",
            dir.display()
        ),
    }
}

/// A progress bar on stderr (drawn only on a terminal; logs go above it).
fn progress_bar(n: usize) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(n as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "[sweep] {bar:32.cyan/blue} {pos}/{len} runs  {elapsed_precise} elapsed, eta {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

/// The parent process id (0 where the platform has none).
fn parent_id() -> u32 {
    #[cfg(unix)]
    {
        std::os::unix::process::parent_id()
    }
    #[cfg(not(unix))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_parse_and_bad_ones_name_the_flag() {
        assert_eq!(parse_slice("--shard", "1/3").unwrap(), (1, 3));
        assert_eq!(parse_slice("--shard", " 0 / 2 ").unwrap(), (0, 2));
        for bad in [
            "3",
            "1/2/3",
            "a/2",
            "2/2",
            "0/0",
            "-1/2",
            "1/99999999999999999999999",
        ] {
            let e = parse_slice("--worker", bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--worker `{bad}`")), "{e}");
            assert!(e.contains("expected I/N"), "{e}");
        }
    }

    fn experiment(seeds: usize) -> Experiment {
        let dir = std::env::temp_dir().join(format!("ds-sweep-{}-{seeds}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("e.yaml");
        let list: Vec<String> = (1..=seeds).map(|s| s.to_string()).collect();
        std::fs::write(&path, format!("seeds: [{}]\n", list.join(", "))).unwrap();
        let exp = super::super::config::load(&path, &[]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        exp
    }

    #[test]
    fn shards_and_workers_partition_the_runs() {
        let exp = experiment(7);
        let ids = |args: &SweepArgs| -> Vec<usize> {
            select(&exp.runs, args)
                .unwrap()
                .iter()
                .map(|(i, _)| *i)
                .collect()
        };
        assert_eq!(ids(&SweepArgs::default()), (0..7).collect::<Vec<_>>());
        let shard = |s: &str, w: Option<&str>| SweepArgs {
            shard: Some(s.into()),
            worker: w.map(Into::into),
            ..SweepArgs::default()
        };
        assert_eq!(ids(&shard("0/2", None)), vec![0, 2, 4, 6]);
        assert_eq!(ids(&shard("1/2", None)), vec![1, 3, 5]);
        // Workers split the shard's runs, not all runs: every run once, none twice.
        let mut all: Vec<usize> = (0..2)
            .flat_map(|s| (0..3).map(move |w| (s, w)))
            .flat_map(|(s, w)| ids(&shard(&format!("{s}/2"), Some(&format!("{w}/3")))))
            .collect();
        all.sort();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
        assert_eq!(ids(&shard("0/2", Some("1/3"))), vec![2]);
    }

    #[test]
    fn workers_get_the_sweeps_arguments_and_their_slice() {
        let args = SweepArgs {
            config: "e.yaml".into(),
            set: vec!["attacker.budget=300".into()],
            results: "r".into(),
            cache: "c".into(),
            shard: Some("1/2".into()),
            replace_changed: true,
            ..SweepArgs::default()
        };
        let a: Vec<String> = worker_args(&args, 2, 3)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert_eq!(
            a.join(" "),
            "run e.yaml --set attacker.budget=300 --shard 1/2 --results r --cache c \
             --replace-changed --jobs 1 --worker 2/3"
        );
    }

    #[test]
    fn run_states_follow_the_results_tree() {
        let exp = experiment(1);
        let spec = &exp.runs[0];
        let dir = std::env::temp_dir().join(format!("ds-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(RunState::of(&dir, spec), RunState::Pending);
        assert!(failure_reason(&dir).contains("no summary.json"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("summary.json"),
            r#"{"error": "the teacher diverged"}"#,
        )
        .unwrap();
        assert_eq!(RunState::of(&dir, spec), RunState::Failed);
        assert_eq!(failure_reason(&dir), "the teacher diverged");
        std::fs::write(dir.join("summary.json"), "not json").unwrap();
        assert!(failure_reason(&dir).contains("cannot use"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
