//! The JSON Schema of experiment files: the config structs' types and doc comments (through
//! `schemars`) with the range table ([`super::ranges`]) applied, and what it says of a key.
//! `distill-sim config --schema` writes it; `distill-sim config` reads descriptions from it.

use super::config::ExperimentConfig;
use super::ranges::{generalise, show_number, Range, RANGES};
use serde_json::{json, Value};

/// The JSON Schema of an experiment file: the config structs' types and doc comments, with
/// the minimum, maximum and unit of every key in [`RANGES`]. Every subschema is inlined, so
/// that each key has its own (an editor shows the range of `student.train.lr` there).
pub fn json_schema() -> Value {
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| {
        s.inline_subschemas = true;
    });
    let schema = settings
        .into_generator()
        .into_root_schema_for::<ExperimentConfig>();
    let mut v = serde_json::to_value(schema).expect("a schema serialises");
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "title".into(),
            json!("distill-sim experiment (see `distill-sim config --help`)"),
        );
    }
    for r in RANGES {
        let parts = split_key(r.key);
        let mut applied = 0;
        apply_range(&mut v, &parts, r, &mut applied);
        debug_assert!(applied > 0, "no schema node for {}", r.key);
    }
    v
}

/// `api.tiers[].rpm` -> ["api", "tiers", "[]", "rpm"].
pub(super) fn split_key(key: &str) -> Vec<String> {
    let mut parts = Vec::new();
    for p in key.split('.') {
        match p.strip_suffix("[]") {
            Some(head) => {
                parts.push(head.to_string());
                parts.push("[]".into());
            }
            None => parts.push(p.to_string()),
        }
    }
    parts
}

/// The subschemas a schema node may take (itself, its anyOf/oneOf/allOf branches).
fn branches(node: &mut Value) -> Vec<&mut Value> {
    let has_alts = node.as_object().is_some_and(|o| {
        ["anyOf", "oneOf", "allOf"]
            .iter()
            .any(|k| o.get(*k).is_some_and(|x| x.is_array()))
    });
    if !has_alts {
        return vec![node];
    }
    let mut out = Vec::new();
    if let Some(o) = node.as_object_mut() {
        for (k, x) in o.iter_mut() {
            if matches!(k.as_str(), "anyOf" | "oneOf" | "allOf") {
                if let Some(a) = x.as_array_mut() {
                    for alt in a.iter_mut() {
                        out.extend(branches(alt));
                    }
                }
            }
        }
    }
    out
}

fn apply_range(node: &mut Value, parts: &[String], r: &Range, applied: &mut usize) {
    if parts.is_empty() {
        // Optional numbers are `type: [number, null]` or anyOf with null: bound the number.
        for b in branches(node) {
            let Some(o) = b.as_object_mut() else { continue };
            let numeric = match o.get("type") {
                Some(Value::String(t)) => t == "number" || t == "integer",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "number" || t == "integer"),
                _ => false,
            };
            if numeric {
                o.insert("minimum".into(), json!(r.lo));
                o.insert("maximum".into(), json!(r.hi));
                let d = o
                    .get("description")
                    .and_then(|d| d.as_str())
                    .unwrap_or("")
                    .to_string();
                let unit = format!("[{}, {}] {}", show_number(r.lo), show_number(r.hi), r.unit);
                o.insert(
                    "description".into(),
                    json!(if d.is_empty() {
                        unit
                    } else {
                        format!("{d} ({unit})")
                    }),
                );
                *applied += 1;
            }
        }
        return;
    }
    let (head, rest) = (&parts[0], &parts[1..]);
    for b in branches(node) {
        let next = if head == "[]" {
            b.get_mut("items")
        } else if head == "*" {
            b.get_mut("additionalProperties")
        } else {
            b.get_mut("properties")
                .and_then(|p| p.get_mut(head.as_str()))
        };
        if let Some(n) = next {
            apply_range(n, rest, r, applied);
        }
    }
}

/// The subschemas a schema node may take, read-only (see [`branches`]).
fn branches_of(node: &Value) -> Vec<&Value> {
    let alts: Vec<&Value> = node
        .as_object()
        .map(|o| {
            ["anyOf", "oneOf", "allOf"]
                .iter()
                .filter_map(|k| o.get(*k).and_then(|x| x.as_array()))
                .flatten()
                .collect()
        })
        .unwrap_or_default();
    if alts.is_empty() {
        vec![node]
    } else {
        alts.into_iter().flat_map(branches_of).collect()
    }
}

/// What the schema says of a dotted key: its description (the key's own, else its type's)
/// and, for a choice among names, the names allowed.
pub fn describe_key(schema: &Value, key: &str) -> Option<String> {
    let parts = split_key(&generalise(key));
    let mut nodes = vec![schema];
    for p in &parts {
        nodes = nodes
            .into_iter()
            .flat_map(branches_of)
            .filter_map(|b| {
                if p == "[]" {
                    b.get("items")
                } else {
                    b.get("properties")
                        .and_then(|q| q.get(p.as_str()))
                        .or_else(|| b.get("additionalProperties").filter(|a| a.is_object()))
                }
            })
            .collect();
    }
    let first = *nodes.first()?;
    let mut names: Vec<&str> = Vec::new();
    for b in nodes.iter().flat_map(|n| branches_of(n)) {
        let consts = b.get("const").into_iter().chain(
            b.get("enum")
                .and_then(|e| e.as_array())
                .into_iter()
                .flatten(),
        );
        for c in consts.filter_map(|c| c.as_str()) {
            if !names.contains(&c) {
                names.push(c);
            }
        }
    }
    fn description(n: &Value) -> Option<&str> {
        n.get("description").and_then(|d| d.as_str())
    }
    // A key without a doc comment of its own (`kind`) says nothing: its type's description
    // would describe one variant only.
    let desc = description(first).or_else(|| {
        if names.is_empty() {
            branches_of(first).into_iter().find_map(description)
        } else {
            None
        }
    });
    let choice = (names.len() > 1).then(|| format!("one of: {}", names.join(", ")));
    match (desc, choice) {
        (Some(d), Some(c)) => Some(format!("{d} ({c})")),
        (Some(d), None) => Some(d.to_string()),
        (None, Some(c)) => Some(c),
        (None, None) => None,
    }
}

/// Keys that a schema gives no range although they are numeric (for the coverage test).
#[cfg(test)]
use super::ranges::{numeric_leaves, range_of};

#[cfg(test)]
fn unranged(v: &Value) -> Vec<String> {
    let mut leaves = Vec::new();
    numeric_leaves("", v, &mut leaves);
    leaves
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| range_of(k).is_none())
        .collect()
}

#[cfg(test)]
fn maximal_config() -> Value {
    // Every optional section set and one defense of every kind, so that every numeric key
    // appears once.
    let yaml = r#"
teacher: {skill_weights: {add: 2}, curriculum: [{steps: 10, skills: [lookup], hard_share: 0.5}]}
student: {init: base, base: {seed: 3, corpus: {skills: 1, hard_share: 0.1, harmful: 0, lookalike: 0, affect: 0, probe: 1, distress_share: 0.5, voice_share: 0.5, skill_weights: {add: 2}}}}
attacker: {hard_share: 0.5}
api:
  defenses:
    - {kind: rounding, decimals: 2}
    - {kind: noise, std: 0.1}
    - {kind: temperature_floor, min: 0.5}
    - {kind: logprobs_cap, k: 1}
    - {kind: watermark, gamma: 0.5, delta: 2, key: 1}
    - {kind: flip, rate: 0.1, key: 2}
    - {kind: antidistillation, lambda: 1}
traffic:
  limit_change: {day: 20, factor: 2}
  access: {blocked_regions: [8], max_accounts_per_payment: 3}
  campaign: {creation_per_day: 10, regrow_hours: 5}
  detectors: {skill_concentration: 0.9, limit_jump: 2}
  answer_one_in: 10
checkpoints: [10]
"#;
    let over: Value = serde_saphyr::from_str(yaml).unwrap();
    let cfg: ExperimentConfig = serde_json::from_value(over).unwrap();
    serde_json::to_value(cfg).unwrap()
}

#[cfg(test)]
mod tests {
    use super::super::ranges::*;
    use super::*;

    #[test]
    fn every_numeric_key_has_a_range_and_a_schema_node() {
        let mut values = vec![maximal_config()];
        // Each attacker strategy's own numbers.
        for s in [
            json!({"kind": "active", "rounds": 3, "pool": 4}),
            json!({"kind": "targeted", "skills": ["add"]}),
        ] {
            let mut v = maximal_config();
            v["attacker"]["strategy"] = s;
            values.push(v);
        }
        for v in &values {
            let missing = unranged(v);
            assert!(
                missing.is_empty(),
                "numeric keys without a range: {missing:?}"
            );
            assert!(check_value(v).is_ok(), "{:?}", check_value(v));
        }
        let schema = json_schema();
        for r in RANGES {
            let mut applied = 0;
            apply_range(&mut schema.clone(), &split_key(r.key), r, &mut applied);
            assert!(applied > 0, "no schema node for {}", r.key);
        }
        let d = describe_key(&schema, "student.train.lr").unwrap();
        assert!(
            d.contains("Peak learning rate") && d.contains("learning rate)"),
            "{d}"
        );
    }

    fn experiments_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments")
    }

    #[test]
    fn the_committed_schema_is_the_generated_one() {
        let file = experiments_dir().join("schema.json");
        let committed: Value =
            serde_json::from_slice(&std::fs::read(&file).expect("experiments/schema.json"))
                .unwrap();
        assert!(
            committed == json_schema(),
            "experiments/schema.json is stale: regenerate it with \
             `distill-sim config --schema --out experiments/schema.json`"
        );
    }

    /// What an editor does with the schema: the committed experiments validate, and an
    /// out-of-range value is flagged by the schema and by the loader alike.
    #[test]
    fn schema_and_loader_agree_on_experiments_and_out_of_range_values() {
        let schema = json_schema();
        let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
        let mut n = 0;
        for e in std::fs::read_dir(experiments_dir()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let v: Value =
                    serde_saphyr::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                let errors: Vec<String> = validator
                    .iter_errors(&v)
                    .map(|e| format!("{} at {}", e, e.instance_path()))
                    .collect();
                assert!(errors.is_empty(), "{}: {errors:?}", p.display());
                n += 1;
            }
        }
        assert!(n >= 5, "only {n} experiments found");
        let dir = std::env::temp_dir().join(format!("distill-sim-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (yaml, key) in [
            ("student:\n  train:\n    lr: 2\n", "student.train.lr"),
            (
                "api:\n  defenses:\n    - {kind: watermark, gamma: 1.5, delta: 2, key: 1}\n",
                "api.defenses[0].gamma",
            ),
            ("attacker:\n  max_days: -1\n", "attacker.max_days"),
            (
                "world:\n  eval_per_suite: 1000000000000\n",
                "world.eval_per_suite",
            ),
            ("attacker:\n  top_k: 21\n", "attacker.top_k"),
        ] {
            let v: Value = serde_saphyr::from_str(yaml).unwrap();
            assert!(!validator.is_valid(&v), "the schema passes {yaml}");
            let f = dir.join("bad.yaml");
            std::fs::write(&f, yaml).unwrap();
            let e = super::super::config::load(&f, &[]).unwrap_err().to_string();
            assert!(
                e.contains(&format!("key `{key}`")) && e.contains("outside"),
                "{e}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn out_of_range_numbers_name_key_range_and_unit() {
        let mut v = maximal_config();
        v["api"]["tiers"][1]["rpm"] = json!(-1);
        let (key, msg) = check_value(&v).unwrap_err();
        assert_eq!(key, "api.tiers[1].rpm");
        assert!(
            msg.contains("outside [") && msg.contains("requests per minute"),
            "{msg}"
        );
        let mut v = maximal_config();
        v["attacker"]["temperature"] = json!(1e39);
        assert!(check_value(&v).is_err());
    }
}
