//! Experiment configs: strict YAML (unknown keys and wrong types are errors naming file, key
//! and line), one optional `base:` file, a sweep grid over any config key, and seeds.

use crate::api::ApiConfig;
use crate::attacker::AttackerConfig;
use crate::error::{Error, Result};
use crate::model::{Backend, DeviceKind, EngineKind};
use crate::student::StudentConfig;
use crate::teacher::TeacherConfig;
use crate::world::WorldConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentConfig {
    /// Experiment name: results go to `results/<name>/`. Defaults to the file stem.
    pub name: String,
    /// One line on the question the experiment answers.
    pub description: String,
    /// A config file (relative to this one) whose values this one overrides. One level only;
    /// the base's `grid` and `variants` are not inherited.
    pub base: Option<String>,
    /// Run seeds: every grid point runs once per seed.
    pub seeds: Vec<u64>,
    /// Neural engine for teacher and students: `burn` (default, pure-Rust flex CPU backend)
    /// or `tch` (LibTorch; needs a build with `--features tch`).
    pub engine: EngineKind,
    /// Where the engine runs: `cpu` (default) or `cuda` (engine `tch` only).
    pub device: DeviceKind,
    pub world: WorldConfig,
    pub teacher: TeacherConfig,
    pub api: ApiConfig,
    pub attacker: AttackerConfig,
    pub student: StudentConfig,
    /// Traffic replay with detectors, coupled to the harvest (off by default).
    pub traffic: crate::traffic::TrafficConfig,
    /// Budget checkpoints (queries): a student is trained from scratch on the first `n` items
    /// of the harvest at each. Empty = only `attacker.budget`.
    pub checkpoints: Vec<usize>,
    /// Sweep axes: dotted config key -> values. Runs are the product of all axes and seeds.
    pub grid: BTreeMap<String, Vec<Value>>,
    /// Named settings that change several keys at once: each is a partial config with a
    /// `name`, merged over this config. Runs are the product of variants, grid axes and seeds.
    pub variants: Vec<Value>,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        ExperimentConfig {
            name: String::new(),
            description: String::new(),
            base: None,
            seeds: vec![1],
            engine: EngineKind::default(),
            device: DeviceKind::default(),
            world: WorldConfig::default(),
            teacher: TeacherConfig::default(),
            api: ApiConfig::default(),
            attacker: AttackerConfig::default(),
            student: StudentConfig::default(),
            traffic: Default::default(),
            checkpoints: vec![],
            grid: BTreeMap::new(),
            variants: vec![],
        }
    }
}

impl ExperimentConfig {
    /// Budget checkpoints in increasing order, capped by the budget.
    pub fn budgets(&self) -> Vec<usize> {
        let mut b: Vec<usize> = self
            .checkpoints
            .iter()
            .copied()
            .filter(|&n| n > 0 && n <= self.attacker.budget)
            .collect();
        if b.is_empty() {
            b.push(self.attacker.budget);
        }
        b.sort_unstable();
        b.dedup();
        b
    }

    /// Semantic checks that the schema cannot express.
    /// The engine and device every model of the run uses.
    pub fn backend(&self) -> Backend {
        Backend {
            engine: self.engine,
            device: self.device,
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        // Build and device combinations; whether a CUDA device is visible is checked when the
        // first model is built.
        let cuda_probe = cfg!(feature = "tch") && self.device == DeviceKind::Cuda;
        if !cuda_probe {
            self.backend().check().map_err(|e| e.to_string())?;
        }
        self.teacher
            .spec()
            .map_err(|e| format!("teacher.size: {e}"))?;
        self.student
            .spec()
            .map_err(|e| format!("student.size: {e}"))?;
        if self.api.tier_index(&self.attacker.tier).is_none() {
            return Err(format!(
                "attacker.tier: `{}` is not one of api.tiers ({})",
                self.attacker.tier,
                self.api
                    .tiers
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.api.logprobs > crate::model::generate::MAX_TOP_K {
            return Err(format!(
                "api.logprobs: {} is above the maximum of 20",
                self.api.logprobs
            ));
        }
        for (key, v) in [
            ("attacker.voice_share", self.attacker.voice_share),
            ("attacker.harmful_share", self.attacker.harmful_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{key}: {v} is outside [0, 1]"));
            }
        }
        if self.attacker.budget == 0 {
            return Err("attacker.budget: must be positive".into());
        }
        self.check_ranges()?;
        let max_eval = crate::world::mix::MAX_EVAL_PER_SUITE;
        if !(2..=max_eval).contains(&self.world.eval_per_suite) {
            return Err(format!(
                "world.eval_per_suite: {} is outside [2, {max_eval}] (calm suites alternate \
                 text and voice; the smallest eval side, easy stack programs, holds about 330 \
                 distinct prompts)",
                self.world.eval_per_suite
            ));
        }
        if self.seeds.is_empty() {
            return Err("seeds: at least one seed is needed".into());
        }
        for (i, d) in self.api.defenses.iter().enumerate() {
            if let crate::api::defense::DefenseConfig::Antidistillation { proxy, eps, .. } = d {
                if crate::model::ModelSpec::preset(proxy).is_none() {
                    return Err(format!(
                        "api.defenses[{i}].proxy: `{proxy}` is not a model size ({})",
                        crate::model::spec::PRESETS.join(", ")
                    ));
                }
                if *eps <= 0.0 || eps.is_nan() {
                    return Err(format!("api.defenses[{i}].eps: must be positive"));
                }
            }
        }
        let tr = &self.traffic;
        for (key, v) in [
            (
                "traffic.challenge.attacker_pass",
                tr.challenge.attacker_pass,
            ),
            (
                "traffic.challenge.benign_dropoff",
                tr.challenge.benign_dropoff,
            ),
            ("traffic.campaign.proxy_share", tr.campaign.proxy_share),
            ("traffic.campaign.hard_share", tr.campaign.hard_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{key}: {v} is outside [0, 1]"));
            }
        }
        if tr.throttle_factor <= 0.0 || tr.throttle_factor.is_nan() {
            return Err(format!(
                "traffic.throttle_factor: {} must be positive",
                tr.throttle_factor
            ));
        }
        Ok(())
    }
}

/// A number that must lie in `[lo, hi]` (and be finite).
fn in_range(key: &str, v: f64, lo: f64, hi: f64) -> std::result::Result<(), String> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(format!("{key}: {v} is outside [{lo}, {hi}]"))
    }
}

impl ExperimentConfig {
    /// Ranges of the numeric keys a user is likely to get wrong (a value outside them would
    /// be silently clamped, overflow, or run for hours).
    fn check_ranges(&self) -> std::result::Result<(), String> {
        let a = &self.attacker;
        in_range("attacker.accounts", a.accounts as f64, 1.0, 1e6)?;
        in_range("attacker.budget", a.budget as f64, 1.0, 1e8)?;
        in_range("attacker.temperature", a.temperature as f64, 0.0, 10.0)?;
        in_range("attacker.account_cost_usd", a.account_cost_usd, 0.0, 1e6)?;
        in_range("attacker.tick_seconds", a.tick_seconds, 1e-3, 86_400.0)?;
        in_range("attacker.max_days", a.max_days, 1e-3, 3650.0)?;
        if let Some(h) = a.hard_share {
            in_range("attacker.hard_share", h, 0.0, 1.0)?;
        }
        for (name, t) in [
            ("teacher.train", &self.teacher.train),
            ("student.train", &self.student.train),
        ] {
            in_range(&format!("{name}.steps"), t.steps as f64, 1.0, 1e7)?;
            in_range(
                &format!("{name}.batch_size"),
                t.batch_size as f64,
                1.0,
                65_536.0,
            )?;
            in_range(&format!("{name}.lr"), t.lr, 1e-8, 1.0)?;
            in_range(&format!("{name}.min_lr_ratio"), t.min_lr_ratio, 0.0, 1.0)?;
            in_range(
                &format!("{name}.weight_decay"),
                t.weight_decay as f64,
                0.0,
                1.0,
            )?;
            in_range(
                &format!("{name}.warmup"),
                t.warmup as f64,
                0.0,
                t.steps as f64,
            )?;
        }
        in_range("student.epochs", self.student.epochs, 1e-3, 1e4)?;
        in_range("student.drop_share", self.student.drop_share, 0.0, 0.5)?;
        in_range("student.val_share", self.student.val_share, 1e-3, 0.5)?;
        in_range("student.patience", self.student.patience as f64, 1.0, 1e4)?;
        for (w, v) in &self.teacher.skill_weights {
            in_range(&format!("teacher.skill_weights.{}", w.name()), *v, 0.0, 1e6)?;
        }
        for &c in &self.checkpoints {
            in_range("checkpoints[]", c as f64, 1.0, a.budget as f64)?;
        }
        for (i, t) in self.api.tiers.iter().enumerate() {
            let k = |f: &str| format!("api.tiers[{i}].{f}");
            in_range(&k("rpm"), t.rpm, 1e-6, 1e9)?;
            in_range(&k("input_tpm"), t.input_tpm, 1e-6, 1e12)?;
            in_range(&k("output_tpm"), t.output_tpm, 1e-6, 1e12)?;
            in_range(&k("price_in"), t.price_in, 0.0, 1e6)?;
            in_range(&k("price_out"), t.price_out, 0.0, 1e6)?;
        }
        use crate::api::defense::DefenseConfig as D;
        for (i, d) in self.api.defenses.iter().enumerate() {
            let k = |f: &str| format!("api.defenses[{i}].{f}");
            match d {
                D::Rounding { decimals } => in_range(&k("decimals"), *decimals as f64, 0.0, 6.0)?,
                D::Noise { std } => in_range(&k("std"), *std as f64, 0.0, 100.0)?,
                D::TemperatureFloor { min } => in_range(&k("min"), *min as f64, 0.0, 10.0)?,
                D::LogprobsCap { k: cap } => in_range(&k("k"), *cap as f64, 0.0, 20.0)?,
                D::Watermark {
                    gamma,
                    delta,
                    share,
                    ..
                } => {
                    in_range(&k("gamma"), *gamma as f64, 0.01, 0.99)?;
                    in_range(&k("delta"), *delta as f64, 0.0, 100.0)?;
                    in_range(&k("share"), *share, 0.0, 1.0)?;
                }
                D::Flip { rate, .. } => in_range(&k("rate"), *rate, 0.0, 1.0)?,
                D::Antidistillation { lambda, .. } => {
                    in_range(&k("lambda"), *lambda as f64, 0.0, 1e3)?
                }
                D::HideReasoning | D::SummariseReasoning => {}
            }
        }
        Ok(())
    }
}

fn config_err(file: &Path, msg: impl Into<String>) -> Error {
    Error::Config {
        file: file.to_path_buf(),
        msg: msg.into(),
    }
}

/// The dotted key path of the block-style YAML key on (1-based) `line`, from indentation.
fn key_path_at(text: &str, line: usize) -> Option<String> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    for (i, l) in text.lines().enumerate().take(line) {
        let body = l.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = l.len() - body.len();
        let Some((key, _)) = body.split_once(':') else {
            continue;
        };
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_alphanumeric() || "_.-".contains(c))
        {
            continue;
        }
        while stack.last().is_some_and(|(d, _)| *d >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_string()));
        if i + 1 == line {
            return Some(
                stack
                    .iter()
                    .map(|(_, k)| k.as_str())
                    .collect::<Vec<_>>()
                    .join("."),
            );
        }
    }
    None
}

/// A YAML error with the file, line and dotted key it concerns.
fn yaml_error(path: &Path, text: &str, e: &serde_saphyr::Error) -> Error {
    let msg = e.to_string();
    let line = e.location().map(|l| l.line() as usize).or_else(|| {
        // serde reports unknown fields and unknown enum values without a position: find the
        // offending key, or the key whose value it is.
        if let Some(field) = msg
            .split("unknown field `")
            .nth(1)
            .and_then(|r| r.split('`').next())
        {
            return text
                .lines()
                .position(|l| l.trim_start().starts_with(&format!("{field}:")))
                .map(|i| i + 1);
        }
        let value = msg.split("unknown variant `").nth(1)?.split('`').next()?;
        text.lines()
            .position(|l| {
                l.split_once(':')
                    .is_some_and(|(_, v)| v.trim().trim_matches(['"', '\'']) == value)
            })
            .map(|i| i + 1)
    });
    match line {
        Some(n) => {
            let key = key_path_at(text, n)
                .map(|k| format!(" key `{k}`:"))
                .unwrap_or_default();
            config_err(path, format!("line {n}:{key} {msg}"))
        }
        None => config_err(path, msg),
    }
}

/// Parse one file strictly (line-aware errors) and as a generic value (for merging).
fn parse_file(path: &Path) -> Result<(ExperimentConfig, Value)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let cfg: ExperimentConfig =
        serde_saphyr::from_str(&text).map_err(|e| yaml_error(path, &text, &e))?;
    let value: Value = serde_saphyr::from_str(&text).map_err(|e| yaml_error(path, &text, &e))?;
    Ok((cfg, value))
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    // The grid is replaced whole, not merged axis by axis.
                    Some(slot) if k != "grid" => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Set a dotted key in a config value; errors if the path does not exist.
pub fn set_key(root: &mut Value, key: &str, v: Value) -> std::result::Result<(), String> {
    let mut cur = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let obj = cur
            .as_object_mut()
            .ok_or_else(|| format!("`{key}`: `{}` is not a section", parts[..i].join(".")))?;
        if !obj.contains_key(*part) {
            let allowed: Vec<&String> = obj.keys().collect();
            return Err(format!(
                "`{key}`: unknown key `{part}` (allowed: {})",
                allowed
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if i + 1 == parts.len() {
            obj.insert(part.to_string(), v);
            return Ok(());
        }
        cur = obj.get_mut(*part).expect("checked above");
    }
    Ok(())
}

/// One run of an experiment: a grid point and a seed, with its fully resolved config.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Position in the expanded sweep (variants, then grid axes in key order, then seeds).
    pub index: usize,
    pub id: String,
    pub seed: u64,
    pub point: Vec<(String, Value)>,
    pub config: ExperimentConfig,
}

/// A loaded experiment: its resolved base config and its expanded runs.
#[derive(Clone, Debug)]
pub struct Experiment {
    pub file: PathBuf,
    pub config: ExperimentConfig,
    pub runs: Vec<RunSpec>,
}

/// The text of a grid value in a run id and in reports (`none` for an empty defense list,
/// `off` for an empty settings object).
pub fn value_label(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        // A list of tagged settings (e.g. defenses): `kind(key=value;...)+kind(...)`.
        Value::Array(items) if items.iter().all(|x| x.get("kind").is_some()) => {
            if items.is_empty() {
                return "none".into();
            }
            items
                .iter()
                .map(|x| {
                    let kind = x["kind"].as_str().unwrap_or("?").to_string();
                    let params: Vec<String> = x
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .filter(|(k, _)| *k != "kind")
                                .map(|(k, v)| format!("{k}={}", value_label(v)))
                                .collect()
                        })
                        .unwrap_or_default();
                    if params.is_empty() {
                        kind
                    } else {
                        format!("{kind}({})", params.join(";"))
                    }
                })
                .collect::<Vec<_>>()
                .join("+")
        }
        // An object of settings: its non-null `key=value` pairs (e.g. detector thresholds).
        Value::Object(o) => {
            let on: Vec<String> = o
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k}={}", value_label(v)))
                .collect();
            if on.is_empty() {
                "off".into()
            } else {
                on.join(";")
            }
        }
        Value::Array(_) => {
            let s = v.to_string();
            s.chars()
                .filter(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                .collect()
        }
        _ => v.to_string(),
    }
}

/// Load an experiment file, apply its base and `--set key=value` overrides, expand the grid.
pub fn load(path: &Path, overrides: &[(String, String)]) -> Result<Experiment> {
    let (_, own) = parse_file(path)?;
    let mut merged = serde_json::to_value(ExperimentConfig::default()).expect("default serialises");
    if let Some(base) = own.get("base").and_then(|b| b.as_str()) {
        let base_path = path.parent().unwrap_or(Path::new(".")).join(base);
        let (base_cfg, base_val) = parse_file(&base_path)?;
        if base_cfg.base.is_some() {
            return Err(config_err(
                &base_path,
                "base: a base file cannot have a base of its own (one level only)",
            ));
        }
        // A base shares settings, not its sweep: its grid and variants are not inherited.
        let mut base_val = base_val;
        if let Some(o) = base_val.as_object_mut() {
            o.remove("grid");
            o.remove("variants");
        }
        merge(&mut merged, base_val);
    }
    merge(&mut merged, own);
    for (k, v) in overrides {
        let val: Value = serde_saphyr::from_str(v).unwrap_or(Value::String(v.clone()));
        set_key(&mut merged, k, val).map_err(|e| config_err(path, format!("--set {e}")))?;
        // Setting a swept key pins it: its grid axis goes.
        if let Some(grid) = merged.get_mut("grid").and_then(|g| g.as_object_mut()) {
            grid.remove(k);
        }
    }
    let mut config: ExperimentConfig =
        serde_json::from_value(merged.clone()).map_err(|e| config_err(path, e.to_string()))?;
    if config.name.is_empty() {
        config.name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "experiment".into());
    }
    if !safe_dir_name(&config.name) {
        return Err(config_err(
            path,
            format!(
                "name: `{}` must be one directory name (no `/`, `\\`, leading `.` or absolute \
                 path): results go to <results>/<name>/",
                config.name
            ),
        ));
    }
    config.validate().map_err(|e| config_err(path, e))?;

    // Variants: (name, partial config), checked before anything runs.
    let mut variants: Vec<(String, Value)> = Vec::new();
    for (i, v) in config.variants.iter().enumerate() {
        let mut obj = v
            .as_object()
            .cloned()
            .ok_or_else(|| config_err(path, format!("variants[{i}]: must be a mapping")))?;
        let name = match obj.remove("name") {
            Some(Value::String(n)) if !n.is_empty() => n,
            _ => {
                return Err(config_err(
                    path,
                    format!("variants[{i}]: needs a `name` (a non-empty string)"),
                ))
            }
        };
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || " _.=()+-".contains(*c)))
        {
            return Err(config_err(
                path,
                format!(
                    "variants[{i}]: the name `{name}` has `{c}`; use letters, digits, spaces and _.=()+-"
                ),
            ));
        }
        if variants.iter().any(|(n, _)| *n == name) {
            return Err(config_err(
                path,
                format!("variants[{i}]: the name `{name}` is used twice"),
            ));
        }
        for key in ["name", "base", "seeds", "grid", "variants", "description"] {
            if key != "name" && obj.contains_key(key) {
                return Err(config_err(
                    path,
                    format!("variants[{i}] (`{name}`): `{key}` cannot be set per variant"),
                ));
            }
        }
        variants.push((name, Value::Object(obj)));
    }
    if variants.is_empty() {
        variants.push((String::new(), Value::Object(Default::default())));
    }

    // Expand the grid: product of variants x axes (in key order) x seeds.
    let mut points: Vec<Vec<(String, Value)>> = vec![vec![]];
    for (key, values) in &config.grid {
        if values.is_empty() {
            return Err(config_err(
                path,
                format!("grid.{key}: needs at least one value"),
            ));
        }
        points = points
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push((key.clone(), v.clone()));
                    q
                })
            })
            .collect();
    }
    let mut runs = Vec::new();
    for (vname, overlay) in &variants {
        for grid_point in &points {
            let mut point = grid_point.clone();
            if !vname.is_empty() {
                point.insert(0, ("variant".to_string(), Value::String(vname.clone())));
            }
            for &seed in &config.seeds {
                let mut v = serde_json::to_value(&config).expect("config serialises");
                merge(&mut v, overlay.clone());
                for (k, val) in grid_point {
                    set_key(&mut v, k, val.clone())
                        .map_err(|e| config_err(path, format!("grid: {e}")))?;
                }
                v["grid"] = Value::Object(Default::default());
                v["variants"] = Value::Array(vec![]);
                v["seeds"] = Value::Array(vec![Value::from(seed)]);
                let cfg: ExperimentConfig = serde_json::from_value(v)
                    .map_err(|e| config_err(path, format!("grid point {}: {e}", label(&point))))?;
                cfg.validate()
                    .map_err(|e| config_err(path, format!("grid point {}: {e}", label(&point))))?;
                let mut id = label(&point);
                if !id.is_empty() {
                    id.push(',');
                }
                id.push_str(&format!("seed={seed}"));
                runs.push(RunSpec {
                    index: runs.len(),
                    id,
                    seed,
                    point: point.clone(),
                    config: cfg,
                });
            }
        }
    }
    // Every run needs a directory of its own: two grid points (or a repeated seed) that map
    // to one name would silently leave one of them unrun.
    let mut seen: std::collections::HashMap<&str, &RunSpec> = Default::default();
    for r in &runs {
        if let Some(other) = seen.insert(&r.id, r) {
            let msg = if other.point == r.point {
                format!("seeds: {} is listed twice", r.seed)
            } else {
                format!(
                    "grid: the points {} and {} would share the run directory `{}`; give them \
                     values that read differently",
                    serde_json::to_string(&other.point).unwrap_or_default(),
                    serde_json::to_string(&r.point).unwrap_or_default(),
                    r.id
                )
            };
            return Err(config_err(path, msg));
        }
    }
    Ok(Experiment {
        file: path.to_path_buf(),
        config,
        runs,
    })
}

/// Whether `name` is a single path component that stays inside its parent directory.
fn safe_dir_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !Path::new(name).is_absolute()
}

/// `key=value,...` label of a grid point (also the run directory name).
pub fn label(point: &[(String, Value)]) -> String {
    point
        .iter()
        .map(|(k, v)| format!("{k}={}", value_label(v)))
        .collect::<Vec<_>>()
        .join(",")
        // A run id is one directory name: separators cannot take it elsewhere.
        .replace(['/', '\\'], "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("distill-sim-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn every_committed_experiment_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let exp = load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                assert!(!exp.runs.is_empty());
                n += 1;
            }
        }
        assert!(n >= 9, "{n} experiments");
    }

    #[test]
    fn colliding_run_ids_and_escaping_names_are_errors() {
        let p = write("collide.yaml", "grid:\n  checkpoints: [[1, 23], [12, 3]]\n");
        let e = load(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("would share the run directory"), "{e}");
        let p = write("seeds.yaml", "seeds: [1, 1]\n");
        let e = load(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("seeds: 1 is listed twice"), "{e}");
        for name in ["../../DOTDOT", "/tmp/abs", ".hidden"] {
            let p = write("escape.yaml", &format!("name: \"{name}\"\n"));
            let e = load(&p, &[]).unwrap_err().to_string();
            assert!(e.contains("must be one directory name"), "{name}: {e}");
        }
        let p = write(
            "slash.yaml",
            "grid:\n  description: [\"x/../../ESCAPED\"]\n",
        );
        let exp = load(&p, &[]).unwrap();
        assert_eq!(exp.runs[0].id, "description=x_.._.._ESCAPED,seed=1");
    }

    #[test]
    fn variants_merge_several_keys_and_multiply_with_the_grid() {
        let p = write(
            "variants.yaml",
            "seeds: [1, 2]\n\
             variants:\n  \
               - {name: none}\n  \
               - {name: challenge, traffic: {enabled: true, action: challenge, challenge: {attacker_pass: 0.1}}}\n\
             grid:\n  attacker.budget: [100, 200]\n",
        );
        let exp = load(&p, &[]).unwrap();
        assert_eq!(exp.runs.len(), 2 * 2 * 2);
        let ch: Vec<&RunSpec> = exp
            .runs
            .iter()
            .filter(|r| r.id.starts_with("variant=challenge,"))
            .collect();
        assert_eq!(ch.len(), 4);
        let c = &ch[0].config;
        assert!(c.traffic.enabled);
        assert_eq!(c.traffic.action, crate::traffic::Action::Challenge);
        assert_eq!(c.traffic.challenge.attacker_pass, 0.1);
        // Keys the variant does not name keep their values.
        assert_eq!(c.traffic.challenge.hours, 24.0);
        assert_eq!(ch[0].id, "variant=challenge,attacker.budget=100,seed=1");
        let none = exp
            .runs
            .iter()
            .find(|r| r.id.starts_with("variant=none"))
            .unwrap();
        assert!(!none.config.traffic.enabled);
    }

    #[test]
    fn bad_variants_are_errors_naming_the_variant() {
        for (text, needle) in [
            ("variants:\n  - {api: {logprobs: 5}}\n", "needs a `name`"),
            ("variants:\n  - {name: a/b}\n", "has `/`"),
            ("variants:\n  - {name: a}\n  - {name: a}\n", "used twice"),
            (
                "variants:\n  - {name: a, seeds: [3]}\n",
                "`seeds` cannot be set",
            ),
            (
                "variants:\n  - {name: typo, attacker: {budjet: 5}}\n",
                "grid point variant=typo",
            ),
        ] {
            let p = write("bad.yaml", text);
            let e = load(&p, &[]).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn engine_and_device_combinations_this_build_cannot_run_are_errors() {
        let p = write("cuda-burn.yaml", "engine: burn\ndevice: cuda\n");
        let e = load(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("device: cuda needs engine: tch"), "{e}");
        let p = write("gpu.yaml", "device: gpu\n");
        let e = load(&p, &[]).unwrap_err().to_string();
        assert!(
            e.contains("line 1: key `device`") && e.contains("cuda"),
            "{e}"
        );
        let p = write("tch.yaml", "engine: tch\n");
        let r = load(&p, &[]);
        if cfg!(feature = "tch") {
            assert_eq!(r.unwrap().runs[0].config.backend().tag(), "tch-cpu");
        } else {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("--features tch"), "{e}");
        }
    }
}
