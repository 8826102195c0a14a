//! The `distill-sim` command line: a thin edge over the library. Data (tables) go to stdout;
//! progress and logs go to stderr. Exit codes: 0 ok, 1 error, 2 some runs failed.

use anyhow::{Context, Result};
use clap::Parser;
use cli::{Cli, Cmd, Common, TeacherCmd};
use distill_sim::experiment::config;
use distill_sim::experiment::sweep;
use distill_sim::experiment::teachers::TeacherArgs;
use distill_sim::{report, serve};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod cli;

// mimalloc, not the system allocator: burn/flex allocates a buffer per tensor op, and glibc's
// malloc, its arenas fragmented by generation, made training up to 1.8x slower (bench).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Print data to stdout. A reader that stops early (`| head`) closes the pipe: that ends the
/// output quietly instead of panicking, as `println!` would.
fn emit(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush());
}

/// Load an experiment and check, before any work, that this build and machine can run its
/// engine and device.
fn load_checked(config_path: &Path, common: &Common) -> Result<config::Experiment> {
    let exp = config::load(config_path, &config::parse_overrides(&common.set)?)?;
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
        config::load(&config_path, &config::parse_overrides(&common.set)?)?
    } else {
        load_checked(&config_path, &common)?
    };
    let baseline = common.baseline.clone();
    let args = common.sweep_args(config_path);
    if list {
        for (i, state, id) in sweep::list(&exp, &args)? {
            emit(&format!("{}\t{}\t{id}\n", i + 1, state.as_str()));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = sweep::run(&exp, &args)?;
    if args.worker.is_some() {
        return Ok(ExitCode::SUCCESS);
    }
    let baseline = baseline
        .as_deref()
        .map(report::parse_baseline)
        .transpose()?;
    let columns = report::columns_for(&exp.config);
    emit(&format!(
        "{}\n",
        report::markdown(&exp.config.name, &out.records, columns, baseline.as_ref())?
    ));
    if out.failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "[run] {} of {} runs failed:",
        out.failed.len(),
        out.selected
    );
    for (id, why) in &out.failed {
        eprintln!("  {id}: {why}");
    }
    Ok(ExitCode::from(2))
}

fn show_config(
    config_path: Option<PathBuf>,
    set: &[String],
    run: Option<&str>,
    schema: bool,
    out: Option<&Path>,
) -> Result<ExitCode> {
    let text = if schema {
        let schema = distill_sim::experiment::schema::json_schema();
        format!("{}\n", serde_json::to_string_pretty(&schema)?)
    } else {
        let path = config_path.context("an experiment file is needed")?;
        let exp = config::load(&path, &config::parse_overrides(set)?)?;
        distill_sim::experiment::annotate::annotated_runs(&exp, run)?
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

fn teacher_train(config_path: PathBuf, args: TeacherArgs, common: Common) -> Result<ExitCode> {
    let common = common.fold_backend();
    let exp = load_checked(&config_path, &common)?;
    for (head, scores) in distill_sim::experiment::teachers::run(&exp, &common.cache, args)? {
        emit(&format!("{head}\n{}\n", report::teacher_table(&scores)));
    }
    Ok(ExitCode::SUCCESS)
}

fn report_cmd(dir: &Path, metrics: Option<&[String]>, baseline: Option<&str>) -> Result<ExitCode> {
    let md = report::report_dir(dir, metrics, baseline)?;
    emit(&format!("{md}\n"));
    eprintln!(
        "[report] wrote {}, runs.csv and summary.csv",
        dir.join("report.md").display()
    );
    Ok(ExitCode::SUCCESS)
}

fn plot_cmd(dir: &Path, out: Option<&Path>) -> Result<ExitCode> {
    for f in distill_sim::plot::plot_dir(dir, out)? {
        emit(&format!("{}\n", f.display()));
    }
    Ok(ExitCode::SUCCESS)
}

fn distill_cmd(harvest: &Path, config_path: PathBuf, mut common: Common) -> Result<ExitCode> {
    common.set = distill_sim::experiment::distill::overrides(harvest, &config_path, &common.set)?;
    sweep(config_path, common, false)
}

fn serve_cmd(a: cli::ServeArgs) -> Result<ExitCode> {
    let exp = config::load(&a.config, &config::parse_overrides(&a.set)?)?;
    let keys = serve::KeySource::new(a.keys, a.accounts, a.tier);
    let opts = serve::Options::new(&exp, a.time_scale, a.window_ms, a.ledger)?;
    serve::launch(&exp, &a.cache, &keys, &opts, &a.addr)?;
    Ok(ExitCode::SUCCESS)
}

fn bench_cmd(b: cli::BenchArgs) -> Result<ExitCode> {
    if let Some(n) = b.threads {
        distill_sim::model::set_threads(n);
    }
    if b.serve {
        let target = b.target.as_deref().zip(b.keys.as_deref());
        let load = (b.clients, b.seconds, b.time_scale);
        emit(&distill_sim::serve::bench_cmd(
            target,
            b.ledger.as_deref(),
            &b.cache,
            load,
        )?);
        return Ok(ExitCode::SUCCESS);
    }
    if b.traffic {
        distill_sim::bench::traffic(b.quick)?;
        return Ok(ExitCode::SUCCESS);
    }
    let backends = b
        .engines
        .iter()
        .map(|e| distill_sim::model::Backend::parse(e))
        .collect::<distill_sim::Result<Vec<_>>>()?;
    distill_sim::bench::run(&distill_sim::bench::BenchOptions {
        quick: b.quick,
        backends,
        sizes: b.sizes,
        harvest: b.harvest,
        cache: b.cache,
        dump: b.dump,
    })?;
    Ok(ExitCode::SUCCESS)
}

fn dispatch(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
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
        } => report_cmd(&dir, metrics.as_deref(), baseline.as_deref()),
        Cmd::Plot { dir, out } => plot_cmd(&dir, out.as_deref()),
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
            cmd:
                TeacherCmd::Train {
                    config,
                    retrain,
                    ship,
                    common,
                },
        } => teacher_train(config, TeacherArgs { retrain, ship }, common),
        Cmd::Bench(b) => bench_cmd(b),
        Cmd::Serve(a) => serve_cmd(a),
        Cmd::Distill(d) => distill_cmd(&d.harvest, d.config, d.common),
        Cmd::Traffic { cmd } => cli::traffic_cmd(cmd),
    }
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
    match dispatch(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
