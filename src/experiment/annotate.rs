//! A resolved config as commented YAML (`distill-sim config`): every key with its value, and
//! after it the key's meaning (from the JSON Schema), unit and range (from the range table).

use super::config::Experiment;
use super::schema::{describe_key, json_schema};
use crate::error::{Error, Result};
use serde_json::Value;

/// The resolved config of each run of `exp` (or only of the run with id `run`) as annotated
/// YAML, each under a `# run i of n: id` line. A run's config has no sweep of its own: its
/// grid point and seed are set, so `grid` and `variants` are left out.
pub fn annotated_runs(exp: &Experiment, run: Option<&str>) -> Result<String> {
    let runs: Vec<_> = exp
        .runs
        .iter()
        .filter(|r| run.is_none_or(|id| r.id == id))
        .collect();
    if runs.is_empty() {
        return Err(Error::Invalid(format!(
            "--run {}: no such run (runs: {})",
            run.unwrap_or(""),
            exp.runs
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let schema = json_schema();
    let mut t = String::new();
    for r in runs {
        // Through text, as config.json stores it (f32 values print shortest: 0.01).
        let text = serde_json::to_string(&r.config).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut v: Value =
            serde_json::from_str(&text).map_err(|e| Error::Invalid(e.to_string()))?;
        if let Some(o) = v.as_object_mut() {
            o.remove("grid");
            o.remove("variants");
        }
        t.push_str(&format!(
            "# run {} of {}: {}\n{}\n",
            r.index + 1,
            exp.runs.len(),
            r.id,
            annotated_yaml(&schema, &v)
        ));
    }
    Ok(t)
}

/// A resolved config as commented YAML: every key with its value, and after it the key's
/// meaning, unit and range from `schema` (from [`json_schema`], built once per command).
pub fn annotated_yaml(schema: &Value, config: &Value) -> String {
    let mut out = String::new();
    write_yaml(schema, "", config, 0, &mut out);
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => {
            if s.is_empty() || s.contains([':', '#', '{', '}', '[', ']', ',']) {
                format!("{s:?}")
            } else {
                s.clone()
            }
        }
        _ => v.to_string(),
    }
}

fn comment(schema: &Value, key: &str) -> String {
    match describe_key(schema, key) {
        Some(d) => {
            let one_line: String = d.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("  # {one_line}")
        }
        None => String::new(),
    }
}

fn write_yaml(schema: &Value, prefix: &str, v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    let Value::Object(o) = v else { return };
    for (k, x) in o {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match x {
            Value::Object(m) if !m.is_empty() => {
                out.push_str(&format!("{pad}{k}:{}\n", comment(schema, &key)));
                write_yaml(schema, &key, x, indent + 2, out);
            }
            Value::Array(a) if a.iter().any(|i| i.is_object()) => {
                out.push_str(&format!("{pad}{k}:{}\n", comment(schema, &key)));
                for (i, item) in a.iter().enumerate() {
                    let item_key = format!("{key}[{i}]");
                    let mut first = true;
                    if let Value::Object(m) = item {
                        for (ik, iv) in m {
                            let lead = if first { "- " } else { "  " };
                            first = false;
                            let sub = format!("{item_key}.{ik}");
                            out.push_str(&format!(
                                "{pad}  {lead}{ik}: {}{}\n",
                                compact(iv),
                                comment(schema, &sub)
                            ));
                        }
                    }
                }
            }
            _ => out.push_str(&format!(
                "{pad}{k}: {}{}\n",
                compact(x),
                comment(schema, &key)
            )),
        }
    }
}

/// A value on one line (flow style for lists and small maps).
fn compact(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("[{}]", a.iter().map(compact).collect::<Vec<_>>().join(", ")),
        Value::Object(o) if o.is_empty() => "{}".into(),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, x)| format!("{k}: {}", compact(x)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => scalar(v),
    }
}
