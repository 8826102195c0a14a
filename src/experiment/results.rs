//! Results directories: atomic writes of a run's files, and reading finished runs back.

use super::config::RunSpec;
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::path::Path;

/// Whether the run of `spec` in `dir` is finished: its status is ok, its stored config is
/// `spec`'s, and its metrics file holds one well-formed checkpoint per budget of that config.
/// A run whose metrics are truncated is not finished: it runs again. A run whose config
/// changed since (an edited file, a `--set`) is not finished either; the sweep refuses to
/// replace it unless asked to (see `changed_keys`).
pub fn is_finished(dir: &Path, spec: &RunSpec) -> bool {
    let read = |file: &str| read_json(&dir.join(file));
    let (Some(stored), Some(summary)) = (read("config.json"), read("summary.json")) else {
        return false;
    };
    let Some(want) = stored_form(spec) else {
        return false;
    };
    let mut diffs = Vec::new();
    let (stored, want) = (without_inert(stored), without_inert(want));
    diff_values("", &stored, &want, defaults(), &mut diffs);
    if summary["status"] != "ok" || !diffs.is_empty() {
        return false;
    }
    read_checkpoints(&dir.join("metrics.jsonl")).is_ok_and(|rows| {
        rows.iter()
            .map(|c| c.budget as usize)
            .eq(spec.config.row_budgets())
    })
}

/// A JSON file, if it exists and parses.
fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The config a run should be stored with, as its `config.json` would read back (f32 fields
/// print shortest, e.g. 0.01).
/// The default config as stored: a key a run's stored config lacks (it was added since) counts
/// as unchanged where the requested value is its default.
fn defaults() -> &'static Value {
    static DEFAULTS: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DEFAULTS.get_or_init(|| {
        // Through text, as stored (an f32 read back from text is not the f32 widened to f64).
        serde_json::to_string(&super::config::ExperimentConfig::default())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    })
}

/// A config with its inert sections reduced: the `traffic` section of a run without traffic,
/// the `student.base` of students that start from scratch, the several-answer world's keys in
/// a one-answer world and the graded-harm world's key in an intent world cannot change its
/// results, so they are not compared (keys removed from them, or their defaults changed, since
/// a run was stored do not make it stale).
fn without_inert(mut v: Value) -> Value {
    // The base file's name: a run is its merged config, whichever file its keys came from.
    if let Some(o) = v.as_object_mut() {
        o.remove("base");
    }
    if let Some(w) = v["world"].as_object_mut() {
        if w.get("answers").and_then(Value::as_str).unwrap_or("one") == "one" {
            w.remove("synonym_share");
            w.remove("near_miss_share");
        }
        if w.get("harm").and_then(Value::as_str).unwrap_or("intent") == "intent" {
            w.remove("boundary_noise");
        }
    }
    if let Some(a) = v
        .pointer_mut("/attacker/adapt")
        .and_then(Value::as_object_mut)
    {
        without_inert_counters(a);
    }
    // Before `teacher.pool` and `teacher.trainer` existed, every run faced `teacher.seed`,
    // trained by the run's engine.
    let engine = v.get("engine").cloned().unwrap_or_else(|| "fused".into());
    if let Some(t) = v["teacher"].as_object_mut() {
        t.entry("pool").or_insert(1.into());
        t.entry("trainer").or_insert(engine);
    }
    // Before tiered actions existed, flags and `traffic.action` decided.
    if let Some(t) = v["traffic"].as_object_mut() {
        if t.get("tiers").is_some_and(Value::is_null) {
            t.remove("tiers");
        }
    }
    // Before benign segments existed, the population was the crowd alone.
    if let Some(p) = v
        .pointer_mut("/traffic/population")
        .and_then(Value::as_object_mut)
    {
        if p.get("segments")
            .and_then(Value::as_array)
            .is_some_and(|a| a.is_empty())
        {
            p.remove("segments");
        }
    }
    // Before proxy resellers existed, no campaign account carried customers' queries.
    if let Some(c) = v
        .pointer_mut("/traffic/campaign")
        .and_then(Value::as_object_mut)
    {
        if c.get("reseller_share").and_then(Value::as_f64) == Some(0.0) {
            c.remove("reseller_share");
            c.remove("reseller_customer_share");
        }
    }
    if v["traffic"]["enabled"] == Value::Bool(false) {
        v["traffic"] = serde_json::json!({"enabled": false});
    }
    let init = v["student"]["init"].as_str().unwrap_or("scratch");
    // The base also scores the harvest of an attacker that filters it.
    let filters = v
        .pointer("/attacker/adapt/filter_share")
        .and_then(Value::as_f64)
        .is_some_and(|f| f > 0.0);
    if init == "scratch" && !filters {
        if let Some(s) = v["student"].as_object_mut() {
            s.remove("base");
        }
    }
    v
}

/// An adaptive attacker's counters at their "off" values: before `public_share` existed,
/// adaptive attackers used no public data; before the others, none filtered, rewrote or sent
/// canaries.
fn without_inert_counters(a: &mut serde_json::Map<String, Value>) {
    let zero =
        |a: &serde_json::Map<String, Value>, k: &str| a.get(k).and_then(Value::as_f64) == Some(0.0);
    if zero(a, "public_share") {
        a.remove("public_share");
    }
    if zero(a, "filter_share") {
        a.remove("filter_share");
    }
    if a.get("rewrite") == Some(&Value::Bool(false)) {
        a.remove("rewrite");
    }
    if zero(a, "canary_share") {
        a.remove("canary_share");
        a.remove("canary_streak");
    }
}

fn stored_form(spec: &RunSpec) -> Option<Value> {
    serde_json::to_string(&spec.config)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
}

/// Where a finished (status ok) run in `dir` was run with a config other than `spec`'s: the
/// differing keys as `key: stored -> requested` (at most `limit`, then a count). None when
/// `dir` holds no finished run or its config is `spec`'s.
pub fn changed_keys(dir: &Path, spec: &RunSpec, limit: usize) -> Option<Vec<String>> {
    let read = |file: &str| read_json(&dir.join(file));
    let summary = read("summary.json")?;
    if summary["status"] != "ok" {
        return None;
    }
    // A damaged config.json (truncated, unreadable) is a damaged run, redone: not a change.
    let stored = without_inert(read("config.json")?);
    let want = without_inert(stored_form(spec)?);
    let mut diffs = Vec::new();
    diff_values("", &stored, &want, defaults(), &mut diffs);
    if diffs.is_empty() {
        return None;
    }
    Some(first_of(diffs, limit))
}

/// Dotted keys at which two config values differ, as `key: a -> b`. A key missing from `a`
/// (the stored config, older than the key) whose value in `b` is its default (`d`) is not a
/// difference.
fn diff_values(prefix: &str, a: &Value, b: &Value, d: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                let null = Value::Null;
                let default = d.get(k).unwrap_or(&null);
                if !x.contains_key(k) && y.get(k) == Some(default) {
                    continue;
                }
                diff_values(
                    &key,
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    default,
                    out,
                );
            }
        }
        _ if a != b => {
            let key = if prefix.is_empty() {
                "(config)"
            } else {
                prefix
            };
            out.push(format!("{key}: {a} -> {b}"))
        }
        _ => {}
    }
}

/// Top-level keys that describe the sweep rather than a run's setting: never compared between
/// runs of one experiment directory.
const SWEEP_KEYS: [&str; 6] = ["name", "description", "base", "seeds", "grid", "variants"];

/// Dotted paths of the leaves a partial config sets (`{attacker: {hard_share: 1}}` gives
/// `attacker.hard_share`; lists are leaves).
pub fn leaf_paths(prefix: &str, v: &Value, out: &mut std::collections::BTreeSet<String>) {
    match v.as_object() {
        Some(o) if !o.is_empty() => {
            for (k, x) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_paths(&key, x, out);
            }
        }
        _ if !prefix.is_empty() => {
            out.insert(prefix.to_string());
        }
        _ => {}
    }
}

/// Keys at which two stored run configs differ outside `swept` (dotted keys the sweep varies)
/// and the sweep's own keys. Inert sections are reduced first, and only keys both configs
/// hold are compared (a key added since, or a section that is inert in one run, is not a
/// difference).
pub fn differ_outside(
    a: &Value,
    b: &Value,
    swept: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    fn walk(
        prefix: &str,
        a: &Value,
        b: &Value,
        swept: &std::collections::BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if swept.contains(prefix) {
            return;
        }
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for (k, xv) in x {
                    if prefix.is_empty() && SWEEP_KEYS.contains(&k.as_str()) {
                        continue;
                    }
                    let Some(yv) = y.get(k) else { continue };
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, xv, yv, swept, out);
                }
            }
            // A section a sweep sets inside (a variant's `student.chain.size`) may be absent
            // (null) in another run.
            _ if a != b => {
                let below = format!("{prefix}.");
                if !swept.iter().any(|k| k.starts_with(&below)) {
                    out.push(format!("{prefix}: {a} vs {b}"))
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &without_inert(a.clone()),
        &without_inert(b.clone()),
        swept,
        &mut out,
    );
    out
}

/// The first `limit` differences, then how many more.
fn first_of(diffs: Vec<String>, limit: usize) -> Vec<String> {
    let n = diffs.len();
    let mut shown: Vec<String> = diffs.into_iter().take(limit).collect();
    if n > limit {
        shown.push(format!("... and {} more", n - limit));
    }
    shown
}

/// The keys a sweep varies: its grid axes and every key a variant sets.
pub fn swept_keys(exp: &super::config::Experiment) -> std::collections::BTreeSet<String> {
    let mut out: std::collections::BTreeSet<String> = exp.config.grid.keys().cloned().collect();
    for v in &exp.config.variants {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("name");
        }
        leaf_paths("", &v, &mut out);
    }
    out
}

/// The record an experiment directory keeps of the config it holds (hidden, beside the run
/// directories): one run's resolved config and the keys its sweep varies.
pub const MANIFEST: &str = ".experiment.json";

/// Refuse to put runs of another config into an experiment directory: the runs of `exp` may
/// differ from the runs already there (and from the config recorded in `.experiment.json` by
/// the sweep that made the directory, which may still be running) only in the keys a sweep
/// varies (grid axes, variant keys) and the seed. Runs that `exp` will itself replace
/// (`replace`, for `--replace-changed`) do not count. On success the directory records its
/// config (first sweep) or the union of the swept keys.
pub fn check_one_config(dir: &Path, exp: &super::config::Experiment, replace: bool) -> Result<()> {
    use std::collections::BTreeSet;
    let Some(first) = exp.runs.first() else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let _lock = crate::fsutil::lock(&dir.join(".experiment.lock"))?;
    let mine = stored_form(first).unwrap_or(Value::Null);
    let ids: std::collections::HashSet<&str> = exp.runs.iter().map(|r| r.id.as_str()).collect();
    let variants: BTreeSet<String> = exp
        .config
        .variants
        .iter()
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect();
    let mut swept = swept_keys(exp);
    // What is already there: the recorded config, then each run (a config.json and a summary).
    let manifest_path = dir.join(MANIFEST);
    let manifest = read_json(&manifest_path);
    let mut others: Vec<(String, Value)> = Vec::new();
    if let Some(m) = &manifest {
        if !replace {
            others.push((MANIFEST.to_string(), m["config"].clone()));
        }
        for k in m["swept"].as_array().into_iter().flatten() {
            if let Some(k) = k.as_str() {
                swept.insert(k.to_string());
            }
        }
    }
    others.extend(run_configs(dir, &ids, &variants, replace, &mut swept)?);
    for (name, other) in &others {
        let diffs = differ_outside(other, &mine, &swept);
        if !diffs.is_empty() {
            let n = diffs.len();
            let shown = first_of(diffs, 4);
            return Err(Error::Invalid(format!(
                "{}: holds runs of another config ({name} differs in {}: {}); one experiment \
                 directory holds one config, varied only by its grid, variants and seeds. \
                 Sweep into another directory (`--results DIR`, or another `name:`), or \
                 remove the old runs{}",
                dir.display(),
                if n == 1 { "one key" } else { "keys" },
                shown.join("; "),
                if replace {
                    ""
                } else {
                    " (`--replace-changed` replaces only runs with this sweep's run ids)"
                }
            )));
        }
    }
    let mut config = mine;
    if let Some(m) = &manifest {
        if !replace {
            config = m["config"].clone();
        }
    }
    let record = json!({"config": config, "swept": swept});
    if manifest.as_ref() != Some(&record) {
        crate::fsutil::write_atomic(
            &manifest_path,
            serde_json::to_vec_pretty(&record)
                .unwrap_or_default()
                .as_slice(),
        )?;
    }
    Ok(())
}

/// The configs of the runs already in `dir` (each distinct config once, seeds aside), with
/// the directory's name; adds the keys their grid points set to `swept`. Runs of a variant
/// this sweep does not define, and with `replace` the runs this sweep will replace, are left
/// out.
fn run_configs(
    dir: &Path,
    ids: &std::collections::HashSet<&str>,
    variants: &std::collections::BTreeSet<String>,
    replace: bool,
    swept: &mut std::collections::BTreeSet<String>,
) -> Result<Vec<(String, Value)>> {
    let mut others = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut seen = std::collections::HashSet::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with('.') || !path.is_dir() || (replace && ids.contains(name.as_str())) {
            continue;
        }
        let (Some(cfg), Some(summary)) = (
            read_json(&path.join("config.json")),
            read_json(&path.join("summary.json")),
        ) else {
            continue;
        };
        let point = summary["point"].as_object().cloned().unwrap_or_default();
        // A run of a variant this sweep does not define set keys the sweep cannot name.
        if let Some(v) = point.get("variant").and_then(Value::as_str) {
            if !variants.contains(v) {
                continue;
            }
        }
        swept.extend(point.keys().filter(|k| *k != "variant").cloned());
        // Runs that read the same are compared once.
        let mut c = cfg.clone();
        if let Some(o) = c.as_object_mut() {
            o.remove("seeds");
        }
        if seen.insert(c.to_string()) {
            others.push((name, cfg));
        }
    }
    Ok(others)
}

/// Refuse a report that would average runs of different configs: the runs of one variant
/// (or of an experiment without variants) may differ only in their grid keys and seed.
pub fn check_records_one_config(dir: &Path, runs: &[RunRecord]) -> Result<()> {
    let swept: std::collections::BTreeSet<String> = runs
        .iter()
        .flat_map(|r| r.point.iter().map(|(k, _)| k.clone()))
        .filter(|k| k != "variant")
        .collect();
    let mut first: std::collections::HashMap<Option<&str>, &RunRecord> = Default::default();
    for r in runs {
        let Some(cfg) = &r.config else { continue };
        let group = r.point_value("variant");
        let Some(f) = first.get(&group) else {
            first.insert(group, r);
            continue;
        };
        let diffs = differ_outside(f.config.as_ref().expect("has a config"), cfg, &swept);
        if !diffs.is_empty() {
            let shown = first_of(diffs, 4);
            return Err(Error::Invalid(format!(
                "{}: runs `{}` and `{}` were run with different configs outside the grid ({}); \
                 a report would average them under one label. Move one set of runs to \
                 another directory and report each",
                dir.display(),
                f.id,
                r.id,
                shown.join("; ")
            )));
        }
    }
    Ok(())
}

/// Write a run directory atomically: build it under a hidden temporary name, then rename.
pub(crate) fn write_run_dir(
    dir: &Path,
    spec: &RunSpec,
    rows: &[Value],
    summary: &Value,
    timeline: Option<&Value>,
) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    // Leftovers of interrupted writes (processes that are gone) are removed first.
    crate::fsutil::clean_stale_temps(parent);
    let tmp = crate::fsutil::tmp_path(dir);
    let written = fill_run_dir(&tmp, spec, rows, summary, timeline).and_then(|_| {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

fn fill_run_dir(
    tmp: &Path,
    spec: &RunSpec,
    rows: &[Value],
    summary: &Value,
    timeline: Option<&Value>,
) -> Result<()> {
    std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
    let put = |file: &str, data: Vec<u8>| -> Result<()> {
        let p = tmp.join(file);
        std::fs::write(&p, data).map_err(|e| Error::io(&p, e))
    };
    put(
        "config.json",
        serde_json::to_vec_pretty(&spec.config).unwrap_or_default(),
    )?;
    let mut lines = String::new();
    for r in rows {
        lines.push_str(&r.to_string());
        lines.push('\n');
    }
    put("metrics.jsonl", lines.into_bytes())?;
    if let Some(t) = timeline {
        put("timeline.json", serde_json::to_vec(t).unwrap_or_default())?;
    }
    put(
        "summary.json",
        serde_json::to_vec_pretty(summary).unwrap_or_default(),
    )
}

/// The versions a run records: the crate, the teacher recipe, and burn's where the build has it.
pub fn versions() -> Value {
    let mut v = json!({
        "distill_sim": env!("CARGO_PKG_VERSION"),
        "teacher": crate::teacher::TEACHER_VERSION,
    });
    if cfg!(feature = "burn") {
        v["burn"] = json!("0.22.1");
    }
    v
}

pub fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// One budget checkpoint of a run: the metrics of the student distilled from the first
/// `budget` queries (non-finite values are recorded as null and read back as NaN).
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub budget: u64,
    pub metrics: std::collections::BTreeMap<String, f64>,
}

impl Checkpoint {
    /// A checkpoint from one line of `metrics.jsonl`: an object with a non-negative integer
    /// `budget` and numeric (or null) metrics; anything else is an error saying what.
    pub fn from_json(v: &Value) -> std::result::Result<Checkpoint, String> {
        let o = v.as_object().ok_or("not a JSON object")?;
        // 0 is the row of a base model itself (students built on the attacker's base).
        let budget = o.get("budget").and_then(|b| b.as_u64()).ok_or_else(|| {
            format!(
                "`budget` must be a non-negative integer, got {:?}",
                o.get("budget")
            )
        })?;
        let mut metrics = std::collections::BTreeMap::new();
        for (k, x) in o {
            if k == "budget" {
                continue;
            }
            match x {
                Value::Number(n) => {
                    metrics.insert(k.clone(), n.as_f64().unwrap_or(f64::NAN));
                }
                Value::Null => {
                    metrics.insert(k.clone(), f64::NAN);
                }
                other => return Err(format!("`{k}` must be a number or null, got {other}")),
            }
        }
        Ok(Checkpoint { budget, metrics })
    }

    /// A metric's value (None when the run did not record it).
    pub fn get(&self, metric: &str) -> Option<f64> {
        self.metrics.get(metric).copied()
    }
}

/// One run directory read back.
#[derive(Clone, Debug)]
pub struct RunRecord {
    /// Directory name (the run id).
    pub id: String,
    /// Position in the sweep (runs written before it was recorded sort last, by id).
    pub index: usize,
    pub seed: u64,
    /// The grid point: (key, value) pairs as the sweep set them, without the seed.
    pub point: Vec<(String, String)>,
    /// `ok` or `failed`.
    pub status: String,
    pub error: Option<String>,
    /// One per budget checkpoint (empty for a failed run).
    pub rows: Vec<Checkpoint>,
    /// The traffic replay's per-day timeline, when the run had traffic.
    pub timeline: Option<Value>,
    /// The resolved config the run was run with (`config.json`; None where absent).
    pub config: Option<Value>,
}

impl RunRecord {
    /// The grid point as a label (`key=value,...`; `-` for a run without grid axes).
    pub fn point_label(&self) -> String {
        if self.point.is_empty() {
            "-".into()
        } else {
            self.point
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        }
    }

    /// The value of a grid key at this run's point.
    pub fn point_value(&self, key: &str) -> Option<&str> {
        self.point
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The checkpoints of an ok run: every line must parse, budgets must increase, and there must
/// be at least one (a truncated or hand-edited file is an error naming file and line, never a
/// silently smaller sample).
fn read_checkpoints(file: &Path) -> Result<Vec<Checkpoint>> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let mut out: Vec<Checkpoint> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |msg: String| Error::Invalid(format!("{}:{}: {msg}", file.display(), i + 1));
        let v: Value = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
        let c = Checkpoint::from_json(&v).map_err(at)?;
        if out.last().is_some_and(|p| p.budget >= c.budget) {
            return Err(at(format!(
                "budget {} does not follow the previous checkpoint's",
                c.budget
            )));
        }
        out.push(c);
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no checkpoints in a run whose status is ok (truncated?)",
            file.display()
        )));
    }
    Ok(out)
}

/// The fields of a `summary.json` a report reads, checked: an object with `status` (`ok` or
/// `failed`), a non-negative integer `seed`, an optional integer `index` and an optional
/// `point` mapping.
fn summary_fields(v: &Value) -> std::result::Result<(String, u64, usize), String> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("expected a JSON object (a run's summary), got {v}"))?;
    let status = match o.get("status") {
        Some(Value::String(s)) if s == "ok" || s == "failed" => s.clone(),
        other => {
            return Err(format!(
                "`status` must be \"ok\" or \"failed\", got {}",
                other.map_or("nothing".to_string(), |x| x.to_string())
            ))
        }
    };
    let seed = o.get("seed").and_then(Value::as_u64).ok_or_else(|| {
        format!(
            "`seed` must be a non-negative integer, got {}",
            o.get("seed")
                .map_or("nothing".to_string(), |x| x.to_string())
        )
    })?;
    let index = match o.get("index") {
        None | Some(Value::Null) => usize::MAX,
        Some(x) => x
            .as_u64()
            .map(|i| i as usize)
            .ok_or_else(|| format!("`index` must be a non-negative integer, got {x}"))?,
    };
    match o.get("point") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(x) => return Err(format!("`point` must be a mapping of grid keys, got {x}")),
    }
    Ok((status, seed, index))
}

/// Only the run directories named `ids` (a sweep's own runs): a damaged run the sweep does not
/// touch does not stop it.
pub fn load_runs(dir: &Path, ids: &std::collections::HashSet<&str>) -> Result<Vec<RunRecord>> {
    load_filtered(dir, &|name| ids.contains(name))
}

/// Every run directory under `dir` (an experiment's results), in sweep order; hidden and
/// temporary directories are ignored. Errors name the directory or file that is unreadable.
pub fn load_dir(dir: &Path) -> Result<Vec<RunRecord>> {
    load_filtered(dir, &|_| true)
}

fn load_filtered(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Vec<RunRecord>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with('.')
            || !keep(&name)
            || !path.is_dir()
            || !path.join("summary.json").exists()
        {
            continue;
        }
        let read_json = |file: &str| -> Result<Value> {
            let p = path.join(file);
            let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))
        };
        let summary = read_json("summary.json")?;
        let summary_path = path.join("summary.json");
        let (status, seed, index) = summary_fields(&summary)
            .map_err(|e| Error::Invalid(format!("{}: {e}", summary_path.display())))?;
        let config = if path.join("config.json").exists() {
            Some(read_json("config.json")?)
        } else {
            None
        };
        let rows = if status == "ok" {
            read_checkpoints(&path.join("metrics.jsonl"))?
        } else {
            vec![]
        };
        let timeline = if path.join("timeline.json").exists() {
            Some(read_json("timeline.json")?)
        } else {
            None
        };
        // Key order as in the run id: the variant first, then the grid keys in order.
        let mut point: Vec<(String, String)> = summary["point"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), super::config::value_label(v)))
                    .collect()
            })
            .unwrap_or_default();
        point.sort_by_key(|(k, _)| k != "variant");
        out.push(RunRecord {
            id: name,
            index,
            seed,
            point,
            status,
            error: summary["error"].as_str().map(String::from),
            rows,
            timeline,
            config,
        });
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no run directories (expected results/<experiment>/<run-id>/summary.json)",
            dir.display()
        )));
    }
    out.sort_by(|a, b| (a.index, &a.id).cmp(&(b.index, &b.id)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_dir(root: &Path, metrics: &str) -> std::path::PathBuf {
        let d = root.join("seed=1");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("summary.json"),
            r#"{"status": "ok", "seed": 1, "index": 0, "point": {}}"#,
        )
        .unwrap();
        std::fs::write(d.join("metrics.jsonl"), metrics).unwrap();
        d
    }

    #[test]
    fn a_run_is_finished_only_with_its_config_and_every_checkpoint() {
        let root =
            std::env::temp_dir().join(format!("distill-sim-finished-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let yaml = root.join("e.yaml");
        std::fs::write(&yaml, "attacker: {budget: 40}\ncheckpoints: [10, 40]\n").unwrap();
        let spec = super::super::config::load(&yaml, &[])
            .unwrap()
            .runs
            .remove(0);
        let dir = run_dir(&root, "{\"budget\": 10, \"parity\": 0.1}\n");
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&spec.config).unwrap(),
        )
        .unwrap();
        assert!(!is_finished(&dir, &spec), "a checkpoint is missing");
        std::fs::write(
            dir.join("metrics.jsonl"),
            "{\"budget\": 10, \"parity\": 0.1}\n{\"budget\": 40, \"parity\": 0.2}\n",
        )
        .unwrap();
        assert!(is_finished(&dir, &spec));
        let changed = super::super::config::load(&yaml, &[("seeds".into(), "[2]".into())])
            .unwrap()
            .runs
            .remove(0);
        assert!(!is_finished(&dir, &changed), "the stored config differs");
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A world key that cannot act (the graded world's `boundary_noise` in an intent world,
    /// the several-answer world's shares in a one-answer world) is not compared; the same key
    /// in the world where it acts is.
    #[test]
    fn inert_world_keys_are_not_compared() {
        let cfg = |harm: &str, noise: f64, answers: &str, synonyms: f64| {
            serde_json::json!({"world": {"harm": harm, "boundary_noise": noise,
                "answers": answers, "synonym_share": synonyms, "near_miss_share": 0.0}})
        };
        let same = |a: Value, b: Value| without_inert(a) == without_inert(b);
        assert!(same(
            cfg("intent", 0.1, "one", 0.3),
            cfg("intent", 0.15, "one", 0.2)
        ));
        assert!(!same(
            cfg("graded", 0.1, "one", 0.3),
            cfg("graded", 0.15, "one", 0.3)
        ));
        assert!(!same(
            cfg("intent", 0.1, "several", 0.3),
            cfg("intent", 0.1, "several", 0.2)
        ));
        // Which file the keys came from is not compared; what they say is.
        let based = |base: &str, budget: u64| serde_json::json!({"base": base, "attacker": {"budget": budget}});
        assert!(same(based("a.yaml", 5), based("bases/b.yaml", 5)));
        assert!(!same(based("a.yaml", 5), based("a.yaml", 6)));
    }

    #[test]
    fn malformed_metrics_are_errors_with_file_and_line() {
        let root = std::env::temp_dir().join(format!("distill-sim-results-{}", std::process::id()));
        let cases = [
            (
                "{\"budget\": 10, \"parity\": 0.5}\n{\"budget\": \"lots\"}\n",
                ":2: `budget`",
            ),
            (
                "{\"budget\": 10, \"parity\": \"high\"}\n",
                ":1: `parity` must be a number",
            ),
            (
                "{\"budget\": 10}\n{\"budget\": 10}\n",
                ":2: budget 10 does not follow",
            ),
            ("{\"budget\": 10", ":1: "),
            ("", "no checkpoints"),
        ];
        for (text, want) in cases {
            let _ = std::fs::remove_dir_all(&root);
            run_dir(&root, text);
            let e = load_dir(&root).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let _ = std::fs::remove_dir_all(&root);
        run_dir(
            &root,
            "{\"budget\": 10, \"parity\": null}\n{\"budget\": 20, \"parity\": 0.5}\n",
        );
        let runs = load_dir(&root).unwrap();
        assert_eq!(runs[0].rows.len(), 2);
        assert!(runs[0].rows[0].get("parity").unwrap().is_nan());
        let _ = std::fs::remove_dir_all(&root);
    }
}
