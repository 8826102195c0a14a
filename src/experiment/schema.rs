//! One source for what a config key means and which values it takes: the doc comments of the
//! config structs (through `schemars`) and the range table below. The loader checks every
//! number against the table, `distill-sim config --schema` writes both as a JSON Schema, and
//! `distill-sim config` prints each resolved key with its meaning, unit and range.

use serde_json::{json, Value};

/// The allowed values of a numeric key (both ends included) and its unit.
#[derive(Clone, Copy, Debug)]
pub struct Range {
    /// Dotted key; `[]` stands for any list index, `*` for any map key.
    pub key: &'static str,
    pub lo: f64,
    pub hi: f64,
    pub unit: &'static str,
}

const fn r(key: &'static str, lo: f64, hi: f64, unit: &'static str) -> Range {
    Range { key, lo, hi, unit }
}

/// Every numeric key of an experiment config. Upper bounds are what fits this simulator in
/// memory and time (a value beyond them would allocate for minutes or overflow), lower bounds
/// what has a meaning. Keys whose bound depends on another key (warmup <= steps, checkpoints
/// <= budget, top_k <= api.logprobs) are checked again in `ExperimentConfig::validate`.
pub const RANGES: &[Range] = &[
    r("seeds[]", 0.0, 9.007e15, "seed"),
    r("checkpoints[]", 1.0, 1e8, "queries"),
    r("world.eval_per_suite", 2.0, 250.0, "prompts per suite"),
    r("world.eval_seed", 0.0, 9.007e15, "seed"),
    r("world.synonym_share", 0.0, 0.49, "probability per digit"),
    r(
        "world.near_miss_share",
        0.0,
        0.49,
        "probability mass per digit",
    ),
    r(
        "world.boundary_noise",
        0.0,
        0.49,
        "share of borderline labels",
    ),
    r("student.temperature", 0.1, 20.0, "distillation temperature"),
    r("student.hard_weight", 0.0, 1.0, "share of the loss"),
    r("teacher.seed", 0.0, 9.007e15, "seed"),
    r("teacher.skill_weights.*", 0.0, 1e6, "relative weight"),
    r("teacher.oracle_confidence_easy", 0.0, 1.0, "probability"),
    r("teacher.oracle_confidence_hard", 0.0, 1.0, "probability"),
    r("teacher.train.steps", 1.0, 1e7, "optimiser steps"),
    r("teacher.train.batch_size", 1.0, 65536.0, "sequences"),
    r("teacher.train.lr", 1e-8, 1.0, "learning rate"),
    r("teacher.train.warmup", 0.0, 1e7, "steps"),
    r("teacher.train.min_lr_ratio", 0.0, 1.0, "fraction of lr"),
    r(
        "teacher.train.weight_decay",
        0.0,
        1.0,
        "per step, decoupled",
    ),
    r("student.train.steps", 1.0, 1e7, "optimiser steps"),
    r("student.train.batch_size", 1.0, 65536.0, "sequences"),
    r("student.train.lr", 1e-8, 1.0, "learning rate"),
    r("student.train.warmup", 0.0, 1e7, "steps"),
    r("student.train.min_lr_ratio", 0.0, 1.0, "fraction of lr"),
    r(
        "student.train.weight_decay",
        0.0,
        1.0,
        "per step, decoupled",
    ),
    r("student.base.seed", 0.0, 9.007e15, "seed"),
    r("student.base.train.steps", 1.0, 1e7, "optimiser steps"),
    r("student.base.train.batch_size", 1.0, 65536.0, "sequences"),
    r("student.base.train.lr", 1e-8, 1.0, "learning rate"),
    r("student.base.train.warmup", 0.0, 1e7, "steps"),
    r(
        "student.base.train.min_lr_ratio",
        0.0,
        1.0,
        "fraction of lr",
    ),
    r(
        "student.base.train.weight_decay",
        0.0,
        1.0,
        "per step, decoupled",
    ),
    r("student.base.corpus.skills", 0.0, 1e6, "relative weight"),
    r(
        "student.base.corpus.skill_weights.*",
        0.0,
        1e6,
        "relative weight",
    ),
    r(
        "student.base.corpus.hard_share",
        0.0,
        1.0,
        "share of skill prompts",
    ),
    r("student.base.corpus.harmful", 0.0, 1e6, "relative weight"),
    r("student.base.corpus.lookalike", 0.0, 1e6, "relative weight"),
    r("student.base.corpus.affect", 0.0, 1e6, "relative weight"),
    r("student.base.corpus.probe", 0.0, 1e6, "relative weight"),
    r(
        "student.base.corpus.distress_share",
        0.0,
        1.0,
        "share of affect and probe prompts",
    ),
    r(
        "student.base.corpus.voice_share",
        0.0,
        1.0,
        "share of prompts",
    ),
    r("student.epochs", 1e-3, 1e4, "passes over the harvest"),
    r("student.min_steps", 0.0, 1e7, "optimiser steps"),
    r("student.val_share", 1e-3, 0.5, "share of the harvest"),
    r("student.patience", 1.0, 1e4, "validation checks"),
    r("student.drop_share", 0.0, 0.5, "share of the harvest"),
    r("api.tiers[].rpm", 1e-6, 1e9, "requests per minute"),
    r("api.tiers[].input_tpm", 1e-6, 1e12, "tokens per minute"),
    r("api.tiers[].output_tpm", 1e-6, 1e12, "tokens per minute"),
    r("api.tiers[].price_in", 0.0, 1e6, "USD per 1M input tokens"),
    r(
        "api.tiers[].price_out",
        0.0,
        1e6,
        "USD per 1M output tokens",
    ),
    r("api.logprobs", 0.0, 20.0, "tokens per position"),
    r("api.max_tokens", 1.0, 4096.0, "tokens"),
    r("api.voice_price_multiplier", 0.0, 1e3, "x text price"),
    r("api.defenses[].decimals", 0.0, 6.0, "decimal places"),
    r("api.defenses[].std", 0.0, 100.0, "nats"),
    r("api.defenses[].min", 0.0, 10.0, "temperature"),
    r("api.defenses[].k", 0.0, 20.0, "tokens per position"),
    r(
        "api.defenses[].gamma",
        0.01,
        0.99,
        "share of the vocabulary",
    ),
    r("api.defenses[].delta", 0.0, 100.0, "logit bias"),
    r("api.defenses[].key", 0.0, 1.8446744073709552e19, "key"),
    r("api.defenses[].share", 0.0, 1.0, "share of requests"),
    r("api.defenses[].rate", 0.0, 1.0, "share of prompts"),
    r("api.defenses[].lambda", 0.0, 1e3, "logit shift scale"),
    r("api.defenses[].eps", 1e-6, 10.0, "finite-difference step"),
    r("api.defenses[].proxy_steps", 1.0, 1e6, "optimiser steps"),
    r("api.defenses[].seed", 0.0, 9.007e15, "seed"),
    r("attacker.accounts", 1.0, 1e6, "accounts"),
    r("attacker.budget", 1.0, 1e8, "queries"),
    r("attacker.voice_share", 0.0, 1.0, "share of queries"),
    r("attacker.harmful_share", 0.0, 1.0, "share of queries"),
    r("attacker.hard_share", 0.0, 1.0, "share of skill queries"),
    r("attacker.temperature", 0.0, 10.0, "temperature"),
    r("attacker.top_k", 0.0, 20.0, "tokens per position"),
    r("attacker.account_cost_usd", 0.0, 1e6, "USD per account"),
    r("attacker.tick_seconds", 1e-3, 86400.0, "simulated seconds"),
    r("attacker.max_days", 1e-3, 3650.0, "simulated days"),
    r(
        "attacker.strategy.pool",
        1.0,
        1e4,
        "candidate prompts per query",
    ),
    r("attacker.strategy.rounds", 1.0, 1e3, "rounds"),
    r("traffic.throttle_factor", 1e-6, 1.0, "x tier limits"),
    r("traffic.population.users", 0.0, 1e7, "users"),
    r(
        "traffic.population.daily_median",
        0.0,
        1e6,
        "queries per user per day",
    ),
    r("traffic.population.sigma", 0.0, 10.0, "log-normal sigma"),
    r("traffic.population.diurnal", 0.0, 1.0, "relative swing"),
    r(
        "traffic.campaign.daily_per_account",
        0.0,
        1e7,
        "queries per account per day",
    ),
    r(
        "traffic.campaign.identity_sharing",
        1.0,
        1e6,
        "accounts per identity",
    ),
    r(
        "traffic.campaign.proxy_share",
        0.0,
        1.0,
        "share of accounts",
    ),
    r("traffic.campaign.burst_minutes", 1.0, 1440.0, "minutes"),
    r("traffic.campaign.seed_prompts", 0.0, 1e6, "prompts"),
    r(
        "traffic.campaign.creation_per_day",
        1e-3,
        1e7,
        "accounts per day",
    ),
    r("traffic.campaign.regrow_hours", 0.0, 87600.0, "hours"),
    r(
        "traffic.campaign.identity_cost_usd",
        0.0,
        1e6,
        "USD per identity",
    ),
    r(
        "traffic.detectors.volume_per_day",
        1.0,
        1e9,
        "queries per account per day",
    ),
    r(
        "traffic.detectors.min_entropy",
        0.0,
        1.0,
        "normalised entropy",
    ),
    r(
        "traffic.detectors.skill_concentration",
        0.0,
        1.0,
        "share of skill queries",
    ),
    r(
        "traffic.detectors.reasoning_share",
        0.0,
        1.0,
        "share of queries",
    ),
    r("traffic.detectors.mmd", 0.0, 2.0, "MMD^2"),
    r("traffic.detectors.cluster_size", 2.0, 1e6, "accounts"),
    r("traffic.detectors.prada_w", 0.0, 1.0, "Shapiro-Wilk W"),
    r(
        "traffic.detectors.sync_share",
        0.0,
        1.0,
        "share of active minutes",
    ),
    r("traffic.detectors.sync_min_active", 1.0, 1440.0, "minutes"),
    r(
        "traffic.detectors.burst_z",
        0.0,
        100.0,
        "Poisson standard deviations",
    ),
    r("traffic.detectors.burst_rel", 0.0, 100.0, "relative excess"),
    r("traffic.detectors.prada_min", 3.0, 1e6, "distances"),
    r("traffic.detectors.min_queries", 1.0, 1e9, "queries"),
    r("traffic.detectors.check_minutes", 1.0, 1440.0, "minutes"),
    r(
        "traffic.detectors.action_delay_minutes",
        0.0,
        1e6,
        "minutes",
    ),
    r("traffic.access.blocked_regions[]", 0.0, 8.0, "region"),
    r(
        "traffic.access.max_accounts_per_payment",
        1.0,
        1e6,
        "accounts",
    ),
    r("traffic.access.tier_gate_days", 0.0, 3650.0, "days"),
    r("traffic.access.tier_gate_spend_usd", 0.0, 1e9, "USD"),
    r("traffic.challenge.hours", 0.0, 87600.0, "hours"),
    r(
        "traffic.challenge.attacker_cost_usd",
        0.0,
        1e6,
        "USD per challenge",
    ),
    r(
        "traffic.challenge.attacker_pass",
        0.0,
        1.0,
        "share of challenges",
    ),
    r(
        "traffic.challenge.benign_dropoff",
        0.0,
        1.0,
        "share of challenged users",
    ),
    r("traffic.limit_change.day", 0.0, 3650.0, "simulated day"),
    r("traffic.campaign.ramp_days", 1e-3, 3650.0, "simulated days"),
    r(
        "traffic.answer_one_in",
        1.0,
        1e12,
        "queries per answered query",
    ),
    r(
        "traffic.detectors.limit_jump",
        1.0,
        1e3,
        "x queries before the change",
    ),
    r("traffic.detectors.limit_jump_hours", 1.0, 8760.0, "hours"),
    r("traffic.detectors.limit_jump_min", 1.0, 1e9, "queries"),
    r("traffic.limit_change.factor", 1e-3, 1e3, "x tier limits"),
];

/// The range of a dotted key (list indices and map keys generalised), if it is numeric.
pub fn range_of(key: &str) -> Option<&'static Range> {
    let general = generalise(key);
    RANGES.iter().find(|r| {
        r.key == general
            || (r.key.ends_with(".*")
                && general
                    .rsplit_once('.')
                    .is_some_and(|(head, _)| head == &r.key[..r.key.len() - 2]))
    })
}

/// `api.tiers[2].rpm` -> `api.tiers[].rpm`.
fn generalise(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// A number as a config shows it (integers without a fraction).
pub fn show_number(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// Every numeric leaf of a config value with its dotted key.
fn numeric_leaves(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                numeric_leaves(&key, x, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                numeric_leaves(&format!("{prefix}[{i}]"), x, out);
            }
        }
        Value::Number(_) => out.push((prefix.to_string(), v.clone())),
        _ => {}
    }
}

/// Check every number of a config value (before it is typed, so that a value too large for
/// its field is refused here rather than overflowing) against [`RANGES`]. `grid` and
/// `variants` are skipped: each grid point and variant is checked once merged.
pub fn check_value(v: &Value) -> Result<(), (String, String)> {
    let mut leaves = Vec::new();
    if let Value::Object(o) = v {
        for (k, x) in o {
            if k != "grid" && k != "variants" {
                numeric_leaves(k, x, &mut leaves);
            }
        }
    }
    for (key, x) in leaves {
        let Some(r) = range_of(&key) else { continue };
        let n = x.as_f64().unwrap_or(f64::NAN);
        if !(n.is_finite() && n >= r.lo && n <= r.hi) {
            return Err((
                key.clone(),
                format!(
                    "{key}: {x} is outside [{}, {}] ({})",
                    show_number(r.lo),
                    show_number(r.hi),
                    r.unit
                ),
            ));
        }
    }
    Ok(())
}

/// The JSON Schema of an experiment file: the config structs' types and doc comments, with
/// the minimum, maximum and unit of every key in [`RANGES`]. Every subschema is inlined, so
/// that each key has its own (an editor shows the range of `student.train.lr` there).
pub fn json_schema() -> Value {
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| {
        s.inline_subschemas = true;
    });
    let schema = settings
        .into_generator()
        .into_root_schema_for::<super::config::ExperimentConfig>();
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
fn split_key(key: &str) -> Vec<String> {
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

/// Keys that a schema gives no range although they are numeric (for the coverage test).
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
teacher: {skill_weights: {add: 2}}
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
    let cfg: super::config::ExperimentConfig = serde_json::from_value(over).unwrap();
    serde_json::to_value(cfg).unwrap()
}

#[cfg(test)]
mod tests {
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
