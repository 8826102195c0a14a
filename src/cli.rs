//! The command line's arguments (clap): subcommands and the options sweeps share.

use clap::{Parser, Subcommand};
use distill_sim::experiment::sweep::SweepArgs;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "distill-sim",
    version = env!("DISTILL_SIM_VERSION"),
    about = "Simulate distillation attacks on model APIs and the defenses against them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(clap::Args)]
pub struct Common {
    /// Override a config key, e.g. `--set attacker.budget=2000` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Root of the results tree.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Cache of trained teachers.
    #[arg(long, default_value = "results/.cache")]
    pub cache: PathBuf,
    /// Runs in parallel, as worker processes (default: the number of cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Run only the i-th of n deterministic slices of the runs, e.g. `--shard 0/2`.
    #[arg(long, value_name = "I/N", allow_hyphen_values = true)]
    pub shard: Option<String>,
    /// Neural engine: fused (default; the hand-written pure-Rust CPU engine), burn (burn 0.22,
    /// pure-Rust flex CPU backend) or tch (LibTorch; a build with `--features tch`). The same
    /// as `--set engine=...`.
    #[arg(long, value_parser = ["burn", "fused", "tch"])]
    pub engine: Option<String>,
    /// Device: cpu (default) or cuda (LibTorch on a CUDA GPU; implies `--engine tch`). The
    /// same as `--set device=...`.
    #[arg(long, value_parser = ["cpu", "cuda"])]
    pub device: Option<String>,
    /// After the sweep, also print paired differences (same seed and budget) to this grid
    /// point, e.g. `--baseline api.logprobs=0` or `--baseline variant=none`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub baseline: Option<String>,
    /// Re-run finished runs whose stored config differs from the requested one, replacing
    /// their results (without it such a sweep stops and lists the keys that differ).
    #[arg(long)]
    pub replace_changed: bool,
    /// Internal: a worker process's slice (set by the parent process).
    #[arg(long, hide = true)]
    pub worker: Option<String>,
}

#[derive(Subcommand)]
pub enum Cmd {
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
    Bench(BenchArgs),
    /// Train and evaluate students (same metrics and run record as a run) from a harvest
    /// collected by any client: JSON lines of `{"request": ..., "response": ...}` bodies of
    /// `/v1/completions` or `/v1/chat/completions`.
    Distill(DistillArgs),
    /// Serve the experiment's teacher behind its API over HTTP, OpenAI-compatible
    /// (`/v1/completions`, `/v1/chat/completions`, `/v1/models`, `/health`).
    Serve(ServeArgs),
    /// Traffic logs: `export` writes a run's replayed requests as JSON lines.
    Traffic {
        #[command(subcommand)]
        cmd: TrafficCmd,
    },
}

#[derive(Subcommand)]
pub enum TrafficCmd {
    /// Replay one run's traffic (benign users and the campaign, detectors and actions as
    /// configured) and write every request the API decided as a JSON line (schema version 1:
    /// minute, account, identity fields, prompt kind, reasoning, voice, template, token counts,
    /// response code, ground truth; README "Traffic logs").
    Export {
        config: PathBuf,
        /// The log to write (replaced atomically at the end).
        #[arg(long)]
        out: PathBuf,
        /// The run (as `sweep --list` prints it; default: the first).
        #[arg(long)]
        run: Option<String>,
        /// Override a config key (repeatable).
        #[arg(long)]
        set: Vec<String>,
    },
}

/// `distill-sim traffic ...`.
pub fn traffic_cmd(cmd: TrafficCmd) -> anyhow::Result<std::process::ExitCode> {
    use distill_sim::experiment::config;
    let TrafficCmd::Export {
        config: path,
        out,
        run,
        set,
    } = cmd;
    let exp = config::load(&path, &config::parse_overrides(&set)?)?;
    let spec = match &run {
        None => exp.runs.first(),
        Some(id) => exp.runs.iter().find(|r| &r.id == id),
    }
    .ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no run `{}` (see `distill-sim sweep {} --list`)",
            path.display(),
            run.as_deref().unwrap_or("(first)"),
            path.display()
        )
    })?;
    let c = &spec.config;
    let mut att = c.attacker.clone();
    att.world_harm = c.world.harm;
    let (lines, secs) =
        distill_sim::traffic::export::export_run(&c.api, &c.traffic, &att, spec.seed, &out)?;
    eprintln!(
        "[traffic] {}: {lines} requests of run {} written to {} ({secs:.1} s of replay)",
        path.display(),
        spec.id,
        out.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct DistillArgs {
    /// JSON lines of `{"request": ..., "response": ...}` bodies.
    pub harvest: PathBuf,
    /// The experiment whose student, world, seeds and teacher (the reference of the metrics)
    /// to use; its grid is dropped, its checkpoints default to the harvest's size.
    #[arg(long, default_value = "experiments/quickstart.yaml")]
    pub config: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    pub config: PathBuf,
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Keys file (JSON lines: key, tier, identity): read where it exists, else written with
    /// `--accounts` new keys.
    #[arg(long, default_value = "results/serve/keys.jsonl")]
    pub keys: PathBuf,
    /// New keys to create when the keys file does not exist.
    #[arg(long, default_value_t = 4)]
    pub accounts: usize,
    /// Tier of new keys (one of the experiment's `api.tiers`).
    #[arg(long, default_value = "tier2")]
    pub tier: String,
    /// Simulated seconds per real second: limits per minute apply per `60 / scale` seconds.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Durable ledger (JSON lines, one per decided request, synced before responses are
    /// sent); a server restarted on it restores spend, usage and limits.
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// Milliseconds the batcher waits to gather concurrent requests into one generation.
    #[arg(long, default_value_t = 2)]
    pub window_ms: u64,
    /// Override a config key, e.g. `--set api.logprobs=5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Cache of trained teachers.
    #[arg(long, default_value = "results/.cache")]
    pub cache: PathBuf,
}

#[derive(Subcommand)]
pub enum TeacherCmd {
    /// Load (shipped or cached) or train every teacher an experiment's runs use, and print
    /// each one's held-out table.
    Train {
        config: PathBuf,
        /// Train them again, from scratch, and compare each SHA-256 with the shipped file's.
        #[arg(long)]
        retrain: bool,
        /// With --retrain: write them, with manifests, into the shipped models (shipped/).
        #[arg(long)]
        ship: bool,
        #[command(flatten)]
        common: Common,
    },
}

impl Common {
    /// `--engine` and `--device` as `--set` overrides (so that worker processes get them too).
    /// The sweep these options ask for, of the experiment at `config`.
    pub fn sweep_args(self, config: PathBuf) -> SweepArgs {
        SweepArgs {
            config,
            set: self.set,
            results: self.results,
            cache: self.cache,
            jobs: self.jobs,
            shard: self.shard,
            worker: self.worker,
            replace_changed: self.replace_changed,
        }
    }

    pub fn fold_backend(mut self) -> Common {
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

/// Options of `bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Fewer repetitions (for CI).
    #[arg(long)]
    pub quick: bool,
    /// Benchmark the traffic layer (clock, limits, ledgers, detectors) instead of the models.
    #[arg(long)]
    pub traffic: bool,
    /// Load-test the HTTP API (`serve`) on loopback instead: `--clients` concurrent clients
    /// for `--seconds`.
    #[arg(long)]
    pub serve: bool,
    /// With `--serve`: concurrent clients (one account and connection each).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// With `--serve`: how long the clients send.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// With `--serve`: load-test a server already running at this IP:PORT instead (with
    /// `--keys`; `--ledger` to check its ledger file afterwards).
    #[arg(long, requires = "keys")]
    pub target: Option<String>,
    /// With `--target`: the server's keys file.
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// With `--target`: the server's ledger file, read after the test.
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// With `--serve`: simulated seconds per real second (tier 2 allows 1,000 requests per
    /// simulated minute and account).
    #[arg(long, default_value_t = 10.0)]
    pub time_scale: f64,
    /// Engines side by side: burn, fused, tch-cpu, tch-cuda (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "fused")]
    pub engines: Vec<String>,
    /// Model sizes (comma-separated presets).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "student-s,teacher-s,teacher-m"
    )]
    pub sizes: Vec<String>,
    /// Queries of the end-to-end harvest + distillation (0 = skip).
    #[arg(long, default_value_t = 0)]
    pub harvest: usize,
    /// Cache of trained teachers (the end-to-end run uses the default teacher).
    #[arg(long, default_value = "results/.cache")]
    pub cache: PathBuf,
    /// Write the weights and workload as safetensors here, for scripts/torch_reference.py.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Compute threads for LibTorch on the CPU (default: LibTorch's own choice).
    #[arg(long)]
    pub threads: Option<usize>,
}
