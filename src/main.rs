//! The `distill-sim` command line: a thin edge over the library. Data (tables) go to stdout;
//! progress and logs go to stderr. Exit codes: 0 ok, 1 error, 2 some runs failed.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use distill_sim::experiment::config;
use distill_sim::experiment::run::Runner;
use distill_sim::report;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

// mimalloc instead of the system allocator: burn/flex allocates a fresh buffer for every
// tensor op, and glibc's malloc, after a generation pass has left its arenas fragmented, made
// the training steps that followed up to 1.8x slower (measured with `distill-sim bench`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "distill-sim",
    version = env!("DISTILL_SIM_VERSION"),
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
    #[arg(long, value_name = "I/N", allow_hyphen_values = true)]
    shard: Option<String>,
    /// Neural engine: fused (default; the hand-written pure-Rust CPU engine), burn (burn 0.22,
    /// pure-Rust flex CPU backend) or tch (LibTorch; a build with `--features tch`). The same
    /// as `--set engine=...`.
    #[arg(long, value_parser = ["burn", "fused", "tch"])]
    engine: Option<String>,
    /// Device: cpu (default) or cuda (LibTorch on a CUDA GPU; implies `--engine tch`). The
    /// same as `--set device=...`.
    #[arg(long, value_parser = ["cpu", "cuda"])]
    device: Option<String>,
    /// After the sweep, also print paired differences (same seed and budget) to this grid
    /// point, e.g. `--baseline api.logprobs=0` or `--baseline variant=none`.
    #[arg(long, value_name = "KEY=VALUE")]
    baseline: Option<String>,
    /// Re-run finished runs whose stored config differs from the requested one, replacing
    /// their results (without it such a sweep stops and lists the keys that differ).
    #[arg(long)]
    replace_changed: bool,
    /// Internal: a worker process's slice (set by the parent process).
    #[arg(long, hide = true)]
    worker: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an experiment's sweep (every variant, grid point and seed) with a progress bar;
    /// finished runs are skipped, half-written ones redone, failures recorded.
    Sweep {
        config: PathBuf,
        #[command(flatten)]
        common: Common,
        /// List the runs and whether each is finished, then exit.
        #[arg(long)]
        list: bool,
    },
    /// The same as `sweep` (kept for scripts).
    Run {
        config: PathBuf,
        #[command(flatten)]
        common: Common,
        /// List the runs and whether each is finished, then exit.
        #[arg(long)]
        list: bool,
    },
    /// Markdown table (mean ± 95% interval over seeds) of a results directory, written as
    /// report.md with runs.csv and summary.csv beside it.
    Report {
        /// An experiment's results, e.g. `results/quickstart`.
        dir: PathBuf,
        /// Columns (comma-separated metric names; default: chosen from the metrics present).
        #[arg(long, value_delimiter = ',')]
        metrics: Option<Vec<String>>,
        /// Paired differences (same seed and budget) to this grid point, e.g.
        /// `--baseline variant=none` or `--baseline api.logprobs=0`.
        #[arg(long, value_name = "KEY=VALUE")]
        baseline: Option<String>,
    },
    /// Figures of a results directory (PNG and SVG): parity curves, safety and EI transfer,
    /// defense Pareto, detection timeline, as the data allows.
    Plot {
        /// An experiment's results, e.g. `results/quickstart`.
        dir: PathBuf,
        /// Output directory (default: `<dir>/figures`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print every metric a run records: name, direction and definition (Markdown).
    Metrics,
    /// Print the fully resolved config of each run of an experiment (after its base, variants,
    /// grid and `--set`), every key with its meaning, unit and allowed range; or, with
    /// `--schema`, the JSON Schema of experiment files (for editors).
    Config {
        /// An experiment file (not needed with `--schema`).
        #[arg(required_unless_present = "schema")]
        config: Option<PathBuf>,
        /// Override a config key, e.g. `--set attacker.budget=2000` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Only the run with this id (as `sweep --list` prints it).
        #[arg(long)]
        run: Option<String>,
        /// Write the JSON Schema of experiment files instead.
        #[arg(long, conflicts_with_all = ["config", "run", "set"])]
        schema: bool,
        /// Write to this file (atomically) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
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
        /// Engines side by side: burn, fused, tch-cpu, tch-cuda (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "fused")]
        engines: Vec<String>,
        /// Model sizes (comma-separated presets).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "student-s,teacher-s,teacher-m"
        )]
        sizes: Vec<String>,
        /// Queries of the end-to-end harvest + distillation (0 = skip).
        #[arg(long, default_value_t = 0)]
        harvest: usize,
        /// Cache of trained teachers (the end-to-end run uses the default teacher).
        #[arg(long, default_value = "results/.cache")]
        cache: PathBuf,
        /// Write the weights and workload as safetensors here, for scripts/torch_reference.py.
        #[arg(long)]
        dump: Option<PathBuf>,
        /// Compute threads for LibTorch on the CPU (default: LibTorch's own choice).
        #[arg(long)]
        threads: Option<usize>,
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

/// Print data to stdout. A reader that stops early (`| head`) closes the pipe: that ends the
/// output quietly instead of panicking, as `println!` would.
fn emit(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush());
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

/// `i/n`: the i-th of n deterministic slices (runs whose index is i mod n). `flag` names the
/// option in errors.
fn parse_slice(flag: &str, s: &str) -> Result<(usize, usize)> {
    let bad = |why: &str| {
        anyhow::anyhow!(
            "{flag} `{s}`: {why}; expected I/N with whole numbers 0 <= I < N, e.g. `{flag} 0/2`"
        )
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

impl Common {
    /// `--engine` and `--device` as `--set` overrides (so that worker processes get them too).
    fn fold_backend(mut self) -> Common {
        let engine = match (&self.engine, self.device.as_deref()) {
            (None, Some("cuda")) => Some("tch".to_string()),
            (e, _) => e.clone(),
        };
        if let Some(e) = engine {
            self.set.push(format!("engine={e}"));
        }
        if let Some(d) = self.device.take() {
            self.set.push(format!("device={d}"));
        }
        self.engine = None;
        self
    }
}

/// Load an experiment and check, before any work, that this build and machine can run its
/// engine and device.
fn load_checked(config_path: &Path, common: &Common) -> Result<config::Experiment> {
    let exp = config::load(config_path, &overrides(&common.set)?)?;
    let mut checked = Vec::new();
    for r in &exp.runs {
        let b = r.config.backend();
        if !checked.contains(&b) {
            b.check()?;
            checked.push(b);
        }
    }
    Ok(exp)
}

fn sweep(config_path: PathBuf, common: Common, list: bool) -> Result<ExitCode> {
    let common = common.fold_backend();
    // Listing needs no engine: an experiment of another build (say `engine: burn`) lists too.
    let exp = if list {
        config::load(&config_path, &overrides(&common.set)?)?
    } else {
        load_checked(&config_path, &common)?
    };
    if common.worker.is_some() {
        // Worker processes share the cores: one compute thread each.
        distill_sim::model::set_threads(1);
    }
    let mut runs: Vec<(usize, &config::RunSpec)> = exp.runs.iter().enumerate().collect();
    for (flag, slice) in [("--shard", &common.shard), ("--worker", &common.worker)] {
        let Some(slice) = slice else { continue };
        let (i, n) = parse_slice(flag, slice)?;
        runs = runs
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % n == i)
            .map(|(_, r)| r)
            .collect();
    }
    let mut runner = Runner::new(common.results.clone(), common.cache.clone());
    let total = exp.runs.len();
    let exp_dir = common.results.join(&exp.config.name);
    let state = |spec: &config::RunSpec| -> &'static str {
        let dir = exp_dir.join(&spec.id);
        if distill_sim::experiment::results::is_finished(&dir, spec) {
            "finished"
        } else if distill_sim::experiment::results::changed_keys(&dir, spec, 0).is_some() {
            "changed"
        } else if dir.join("summary.json").exists() {
            "failed"
        } else {
            "pending"
        }
    };
    if list {
        for (i, spec) in &runs {
            emit(&format!("{}\t{}\t{}\n", i + 1, state(spec), spec.id));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if common.worker.is_none() && !common.replace_changed {
        // A finished run is the result of its config: one whose config has changed since is
        // neither reused nor silently overwritten.
        let changed: Vec<String> = runs
            .iter()
            .filter_map(|(_, r)| {
                let keys = distill_sim::experiment::results::changed_keys(
                    &runner.run_dir(&exp, &r.id),
                    r,
                    4,
                )?;
                Some(format!("  {}: {}", r.id, keys.join("; ")))
            })
            .collect();
        if !changed.is_empty() {
            anyhow::bail!(
                "{} finished run(s) in {} were run with a different config:\n{}\nTo keep \
                 them, sweep into another directory (`--results DIR`); to replace them, pass \
                 `--replace-changed`.",
                changed.len(),
                exp_dir.display(),
                changed.join("\n")
            );
        }
    }
    if common.worker.is_none() {
        // One experiment directory holds one config (varied by its grid, variants and seeds),
        // and the results and cache must be writable, before any run starts.
        distill_sim::experiment::results::check_one_config(&exp_dir, &exp, common.replace_changed)
            .with_context(|| format!("--results {}", common.results.display()))?;
        let cleaned = runner.clean_temps(&exp);
        if cleaned > 0 {
            eprintln!("[run] removed {cleaned} temporary file(s) left by interrupted writes");
        }
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
            !distill_sim::experiment::results::is_finished(&runner.run_dir(&exp, &r.id), r)
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
                if common.replace_changed {
                    cmd.arg("--replace-changed");
                }
                cmd.arg("--jobs")
                    .arg("1")
                    .arg("--worker")
                    .arg(format!("{k}/{jobs}"));
                cmd.stdout(std::process::Stdio::null());
                cmd.spawn().context("starting a worker process")
            })
            .collect::<Result<_>>()?;
        // Progress: the parent watches the results tree (each worker writes its runs there).
        let pb = progress_bar(runs.len());
        let mut children = children;
        loop {
            let done = runs.iter().filter(|(_, r)| state(r) != "pending").count();
            let failed = runs.iter().filter(|(_, r)| state(r) == "failed").count();
            pb.set_position(done as u64);
            pb.set_message(if failed > 0 {
                format!("{failed} failed")
            } else {
                String::new()
            });
            let mut alive = false;
            for c in children.iter_mut() {
                alive |= c.try_wait()?.is_none();
            }
            if !alive {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        pb.finish();
    } else {
        let pb = (common.worker.is_none()).then(|| progress_bar(runs.len()));
        let parent = parent_id();
        let mut failed = 0;
        for (n, (i, spec)) in runs.iter().enumerate() {
            // A worker whose parent has gone (killed) stops between runs.
            if common.worker.is_some() && parent_id() != parent {
                break;
            }
            // A hidden bar (stderr not a terminal) drops println: log to stderr then.
            let log = |msg: &str| match &pb {
                Some(pb) if !pb.is_hidden() => pb.println(format!("[run {}/{total}] {msg}", i + 1)),
                _ => eprintln!("[run {}/{total}] {msg}", i + 1),
            };
            let outcome = runner.run(&exp, spec, &log);
            if outcome.status == distill_sim::experiment::run::BUSY {
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
    if common.worker.is_some() {
        return Ok(ExitCode::SUCCESS);
    }
    // Runs another sweep into the same results is running: wait for them to end.
    let mut waited = false;
    loop {
        let busy = runs
            .iter()
            .filter(|(_, r)| state(r) != "finished" && runner.busy_elsewhere(&exp, r))
            .count();
        if busy == 0 {
            break;
        }
        if !waited {
            eprintln!("[run] waiting for {busy} run(s) that another process is running");
            waited = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // The table is read back from the results files, whichever process wrote them: this
    // sweep's runs only, each with the config it ran with.
    let (done, failed): (Vec<&config::RunSpec>, Vec<&config::RunSpec>) =
        runs.iter().map(|(_, spec)| *spec).partition(|spec| {
            distill_sim::experiment::results::is_finished(&runner.run_dir(&exp, &spec.id), spec)
        });
    let ids: std::collections::HashSet<&str> = done.iter().map(|s| s.id.as_str()).collect();
    let records: Vec<_> = if ids.is_empty() {
        vec![]
    } else {
        distill_sim::experiment::results::load_runs(&exp_dir, &ids)?
    };
    let columns: &[&str] = if exp.config.traffic.enabled {
        &report::DETECTION_COLUMNS
    } else if exp.config.api.defenses.is_empty() && !exp.config.grid.contains_key("api.defenses") {
        &report::RUN_COLUMNS
    } else {
        &report::DEFENSE_COLUMNS
    };
    let baseline = common
        .baseline
        .as_deref()
        .map(report::parse_baseline)
        .transpose()?;
    emit(&format!(
        "{}\n",
        report::markdown(&exp.config.name, &records, columns, baseline.as_ref())?
    ));
    if !failed.is_empty() {
        eprintln!("[run] {} of {} runs failed:", failed.len(), runs.len());
        for spec in &failed {
            let dir = runner.run_dir(&exp, &spec.id);
            let recorded = std::fs::read(dir.join("summary.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["error"].as_str().map(String::from));
            let exists = dir.join("summary.json").exists();
            match recorded {
                Some(e) => eprintln!("  {}: {e}", spec.id),
                None if exists => eprintln!(
                    "  {}: {} holds a run this sweep cannot use (a damaged file, or another \
                     config written by another process); `distill-sim sweep --list` shows its \
                     state",
                    spec.id,
                    dir.display()
                ),
                None => eprintln!(
                    "  {}: not finished, and no summary.json in {} (if this sweep ran it, the \
                     error is in the log above; run the sweep again to finish it)",
                    spec.id,
                    dir.display()
                ),
            }
        }
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
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

fn show_config(
    config_path: Option<PathBuf>,
    set: &[String],
    run: Option<&str>,
    schema: bool,
    out: Option<&Path>,
) -> Result<ExitCode> {
    let text = if schema {
        let mut t = serde_json::to_string_pretty(&distill_sim::experiment::schema::json_schema())?;
        t.push('\n');
        t
    } else {
        let path = config_path.context("an experiment file is needed")?;
        let exp = config::load(&path, &overrides(set)?)?;
        let runs: Vec<_> = exp
            .runs
            .iter()
            .filter(|r| run.is_none_or(|id| r.id == id))
            .collect();
        if runs.is_empty() {
            anyhow::bail!(
                "--run {}: no such run (runs: {})",
                run.unwrap_or(""),
                exp.runs
                    .iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let schema = distill_sim::experiment::schema::json_schema();
        let mut t = String::new();
        for r in runs {
            // Through text, as config.json stores it (f32 values print shortest: 0.01).
            let mut v: serde_json::Value =
                serde_json::from_str(&serde_json::to_string(&r.config)?)?;
            if let Some(o) = v.as_object_mut() {
                // A run's config has no sweep of its own: its grid point and seed are set.
                o.remove("grid");
                o.remove("variants");
            }
            t.push_str(&format!(
                "# run {} of {}: {}\n{}\n",
                r.index + 1,
                exp.runs.len(),
                r.id,
                distill_sim::experiment::schema::annotated_yaml(&schema, &v)
            ));
        }
        t
    };
    match out {
        Some(p) => {
            distill_sim::fsutil::write_atomic(p, text.as_bytes())?;
            eprintln!("[config] wrote {}", p.display());
        }
        None => emit(&text),
    }
    Ok(ExitCode::SUCCESS)
}

fn teacher_train(config_path: PathBuf, common: Common) -> Result<ExitCode> {
    let common = common.fold_backend();
    let exp = load_checked(&config_path, &common)?;
    let spec = exp.runs.first().context("the experiment has no runs")?;
    let path = distill_sim::teacher::Teacher::cache_path(
        &spec.config.teacher,
        spec.config.backend(),
        &spec.config.world,
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
    emit(&format!("{}\n", report::teacher_table(&t.scores)));
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // Usage errors exit 1 like every other error: 2 means "some runs failed".
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.cmd {
        Cmd::Sweep {
            config,
            common,
            list,
        }
        | Cmd::Run {
            config,
            common,
            list,
        } => sweep(config, common, list),
        Cmd::Report {
            dir,
            metrics,
            baseline,
        } => distill_sim::report::report_dir(&dir, metrics.as_deref(), baseline.as_deref())
            .map(|md| {
                emit(&format!("{md}\n"));
                eprintln!(
                    "[report] wrote {}, runs.csv and summary.csv",
                    dir.join("report.md").display()
                );
                ExitCode::SUCCESS
            })
            .map_err(Into::into),
        Cmd::Plot { dir, out } => distill_sim::plot::plot_dir(&dir, out.as_deref())
            .map(|files| {
                for f in files {
                    emit(&format!("{}\n", f.display()));
                }
                ExitCode::SUCCESS
            })
            .map_err(Into::into),
        Cmd::Config {
            config,
            set,
            run,
            schema,
            out,
        } => show_config(config, &set, run.as_deref(), schema, out.as_deref()),
        Cmd::Metrics => {
            emit(&distill_sim::eval::markdown_table());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Teacher {
            cmd: TeacherCmd::Train { config, common },
        } => teacher_train(config, common),
        Cmd::Bench {
            quick,
            traffic,
            engines,
            sizes,
            harvest,
            cache,
            dump,
            threads,
        } => {
            if let Some(n) = threads {
                distill_sim::model::set_threads(n);
            }
            if traffic {
                distill_sim::bench::traffic(quick)
                    .map(|_| ExitCode::SUCCESS)
                    .map_err(Into::into)
            } else {
                engines
                    .iter()
                    .map(|e| distill_sim::model::Backend::parse(e))
                    .collect::<distill_sim::Result<Vec<_>>>()
                    .and_then(|backends| {
                        distill_sim::bench::run(&distill_sim::bench::BenchOptions {
                            quick,
                            backends,
                            sizes,
                            harvest,
                            cache,
                            dump,
                        })
                    })
                    .map(|_| ExitCode::SUCCESS)
                    .map_err(Into::into)
            }
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
