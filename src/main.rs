//! The `distill-sim` command line: a thin edge over the library. Data (tables) go to stdout;
//! progress and logs go to stderr. Exit codes: 0 ok, 1 error, 2 some runs failed.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use distill_sim::experiment::config;
use distill_sim::experiment::run::Runner;
use distill_sim::report;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "distill-sim",
    version,
    about = "Simulate distillation attacks on model APIs and the defenses against them"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct Common {
    /// Override a config key, e.g. `--set attacker.budget=2000` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Root of the results tree.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Cache of trained teachers.
    #[arg(long, default_value = "results/.cache")]
    cache: PathBuf,
    /// Runs in parallel, as worker processes (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Run only the i-th of n deterministic slices of the runs, e.g. `--shard 0/2`.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Internal: a worker process's slice (set by the parent process).
    #[arg(long, hide = true)]
    worker: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an experiment (every grid point and seed); finished runs are skipped.
    Run {
        config: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Teacher commands.
    Teacher {
        #[command(subcommand)]
        cmd: TeacherCmd,
    },
    /// Print teacher generation queries/s and student training tokens/s on this machine.
    Bench {
        /// Fewer repetitions (for CI).
        #[arg(long)]
        quick: bool,
        /// Benchmark the traffic layer (clock, limits, ledgers, detectors) instead of the models.
        #[arg(long)]
        traffic: bool,
    },
}

#[derive(Subcommand)]
enum TeacherCmd {
    /// Train (or load from cache) the teacher of an experiment config and print its table.
    Train {
        config: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

fn overrides(set: &[String]) -> Result<Vec<(String, String)>> {
    set.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("--set `{s}`: expected KEY=VALUE"))
        })
        .collect()
}

/// `i/n`: the i-th of n deterministic slices (runs whose index is i mod n).
fn parse_slice(s: &str) -> Result<(usize, usize)> {
    let (i, n) = s.split_once('/').context("expected i/n, e.g. 0/2")?;
    let (i, n): (usize, usize) = (i.trim().parse()?, n.trim().parse()?);
    anyhow::ensure!(n > 0 && i < n, "slice {i}/{n}: need 0 <= i < n");
    Ok((i, n))
}

fn run(config_path: PathBuf, common: Common) -> Result<ExitCode> {
    let exp = config::load(&config_path, &overrides(&common.set)?)?;
    let mut runs: Vec<(usize, &config::RunSpec)> = exp.runs.iter().enumerate().collect();
    for slice in [&common.shard, &common.worker].into_iter().flatten() {
        let (i, n) = parse_slice(slice)?;
        runs = runs
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % n == i)
            .map(|(_, r)| r)
            .collect();
    }
    let mut runner = Runner::new(common.results.clone(), common.cache.clone());
    let total = exp.runs.len();
    if common.worker.is_none() {
        eprintln!(
            "[run] {}: {} of {total} runs x {} checkpoints",
            exp.config.name,
            runs.len(),
            exp.config.budgets().len()
        );
    }
    // Teachers are prepared (trained or loaded) only for runs that still have work to do.
    let specs: Vec<_> = runs
        .iter()
        .filter(|(_, r)| {
            distill_sim::experiment::results::finished_rows(&runner.run_dir(&exp, &r.id)).is_none()
        })
        .map(|(_, r)| (*r).clone())
        .collect();
    runner.prepare(&specs)?;
    let jobs = common
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, runs.len().max(1));
    if jobs > 1 && common.worker.is_none() {
        // Independent runs go to worker processes (the engine serialises threads).
        let exe = std::env::current_exe()?;
        let children: Vec<_> = (0..jobs)
            .map(|k| {
                let mut cmd = std::process::Command::new(&exe);
                cmd.arg("run").arg(&config_path);
                for s in &common.set {
                    cmd.arg("--set").arg(s);
                }
                if let Some(s) = &common.shard {
                    cmd.arg("--shard").arg(s);
                }
                cmd.arg("--results")
                    .arg(&common.results)
                    .arg("--cache")
                    .arg(&common.cache);
                cmd.arg("--jobs")
                    .arg("1")
                    .arg("--worker")
                    .arg(format!("{k}/{jobs}"));
                cmd.stdout(std::process::Stdio::null());
                cmd.spawn().context("starting a worker process")
            })
            .collect::<Result<_>>()?;
        for mut c in children {
            c.wait()?;
        }
    } else {
        for (n, (i, spec)) in runs.iter().enumerate() {
            let log = |msg: &str| eprintln!("[run {}/{total}] {msg}", i + 1);
            let outcome = runner.run(&exp, spec, &log);
            if outcome.skipped {
                log(&format!("{}: already finished, skipped", outcome.id));
            } else if outcome.status == "ok" {
                log(&format!(
                    "{}: done ({} of {} in this process)",
                    outcome.id,
                    n + 1,
                    runs.len()
                ));
            } else {
                log(&format!("{}: {}", outcome.id, outcome.status));
            }
        }
    }
    if common.worker.is_some() {
        return Ok(ExitCode::SUCCESS);
    }
    // The table is read back from the results files, whichever process wrote them.
    let mut rows = Vec::new();
    let mut failed = 0;
    for (_, spec) in &runs {
        match distill_sim::experiment::results::finished_rows(&runner.run_dir(&exp, &spec.id)) {
            Some(r) => rows.extend(r.into_iter().map(|x| (spec.id.clone(), x))),
            None => failed += 1,
        }
    }
    let columns: &[&str] = if exp.config.traffic.enabled {
        &report::DETECTION_COLUMNS
    } else if exp.config.api.defenses.is_empty() && !exp.config.grid.contains_key("api.defenses") {
        &report::RUN_COLUMNS
    } else {
        &report::DEFENSE_COLUMNS
    };
    println!("{}", report::run_table(&rows, columns));
    if exp.config.seeds.len() > 1 {
        println!("{}", report::aggregate_table(&rows, columns));
    }
    if failed > 0 {
        eprintln!(
            "[run] {failed} of {} runs failed (see their summary.json)",
            runs.len()
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn teacher_train(config_path: PathBuf, common: Common) -> Result<ExitCode> {
    let exp = config::load(&config_path, &overrides(&common.set)?)?;
    let spec = exp.runs.first().context("the experiment has no runs")?;
    let path = distill_sim::teacher::Teacher::cache_path(
        &spec.config.teacher,
        spec.config.engine,
        &common.cache,
    );
    let mut runner = Runner::new(common.results, common.cache);
    let t = runner.teacher(spec)?;
    eprintln!(
        "[teacher] {} ({})",
        if t.from_cache {
            "loaded from cache"
        } else {
            "trained"
        },
        path.display()
    );
    println!("{}", report::teacher_table(&t.scores));
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run { config, common } => run(config, common),
        Cmd::Teacher {
            cmd: TeacherCmd::Train { config, common },
        } => teacher_train(config, common),
        Cmd::Bench { quick, traffic } => {
            let r = if traffic {
                distill_sim::bench::traffic(quick)
            } else {
                distill_sim::bench::run(quick)
            };
            r.map(|_| ExitCode::SUCCESS).map_err(Into::into)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
