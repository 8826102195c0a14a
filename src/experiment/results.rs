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
    if let Some(w) = v["world"].as_object_mut() {
        if w.get("answers").and_then(Value::as_str).unwrap_or("one") == "one" {
            w.remove("synonym_share");
            w.remove("near_miss_share");
        }
        if w.get("harm").and_then(Value::as_str).unwrap_or("intent") == "intent" {
            w.remove("boundary_noise");
        }
    }
    if v["traffic"]["enabled"] == Value::Bool(false) {
        v["traffic"] = serde_json::json!({"enabled": false});
    }
    let init = v["student"]["init"].as_str().unwrap_or("scratch");
    if init == "scratch" {
        if let Some(s) = v["student"].as_object_mut() {
            s.remove("base");
        }
    }
    v
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
    let stored = without_inert(read("config.json").unwrap_or(Value::Null));
    let want = without_inert(stored_form(spec)?);
    let mut diffs = Vec::new();
    diff_values("", &stored, &want, defaults(), &mut diffs);
    if diffs.is_empty() {
        return None;
    }
    let n = diffs.len();
    diffs.truncate(limit);
    if n > limit {
        diffs.push(format!("... and {} more", n - limit));
    }
    Some(diffs)
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

pub fn versions() -> Value {
    json!({
        "distill_sim": env!("CARGO_PKG_VERSION"),
        "burn": "0.22.1",
        "teacher": crate::teacher::TEACHER_VERSION,
    })
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

/// Every run directory under `dir` (an experiment's results), in sweep order; hidden and
/// temporary directories are ignored. Errors name the directory or file that is unreadable.
pub fn load_dir(dir: &Path) -> Result<Vec<RunRecord>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with('.') || !path.is_dir() || !path.join("summary.json").exists() {
            continue;
        }
        let read_json = |file: &str| -> Result<Value> {
            let p = path.join(file);
            let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))
        };
        let summary = read_json("summary.json")?;
        let status = summary["status"].as_str().unwrap_or("unknown").to_string();
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
            index: summary["index"].as_u64().map_or(usize::MAX, |i| i as usize),
            seed: summary["seed"].as_u64().unwrap_or(0),
            point,
            status,
            error: summary["error"].as_str().map(String::from),
            rows,
            timeline,
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
