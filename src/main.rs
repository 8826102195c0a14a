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

fn run(config_path: PathBuf, common: Common) -> Result<ExitCode> {
    let exp = config::load(&config_path, &overrides(&common.set)?)?;
    let mut runner = Runner::new(common.results.clone(), common.cache.clone());
    eprintln!(
        "[run] {}: {} runs x {} checkpoints",
        exp.config.name,
        exp.runs.len(),
        exp.config.budgets().len()
    );
    let mut rows = Vec::new();
    let mut failed = 0;
    let total = exp.runs.len();
    for (i, spec) in exp.runs.iter().enumerate() {
        let outcome = runner.run(&exp, spec, &mut |msg| {
            eprintln!("[run {}/{total}] {msg}", i + 1)
        });
        if outcome.skipped {
            eprintln!(
                "[run {}/{total}] {}: already finished, skipped",
                i + 1,
                outcome.id
            );
        }
        if outcome.status != "ok" {
            failed += 1;
            eprintln!("[run {}/{total}] {}: {}", i + 1, outcome.id, outcome.status);
        }
        rows.extend(outcome.rows.into_iter().map(|r| (outcome.id.clone(), r)));
    }
    println!("{}", report::run_table(&rows, &report::RUN_COLUMNS));
    if failed > 0 {
        eprintln!("[run] {failed} of {total} runs failed");
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
        Cmd::Bench { quick } => distill_sim::bench::run(quick)
            .map(|_| ExitCode::SUCCESS)
            .map_err(Into::into),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
