//! Experiment configs: strict YAML (unknown keys and wrong types are errors naming file, key
//! and line), one optional `base:` file, a sweep grid over any config key, and seeds.

use super::locate::{
    config_err, find_grid_line, find_key_line, located, prefix_context, validation_error,
    yaml_error,
};
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// Neural engine for teacher and students: `fused` (default: the transformer written out
    /// by hand in pure Rust, CPU), `burn` (burn 0.22, pure-Rust flex CPU backend) or `tch`
    /// (LibTorch; needs a build with `--features tch`).
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
    /// The teacher a run of this config faces: the pool resolved by the run's seed.
    pub fn run_teacher(&self) -> crate::teacher::TeacherConfig {
        self.teacher
            .for_run(self.seeds.first().copied().unwrap_or(0))
    }

    /// Budget checkpoints in increasing order, capped by the budget.
    /// The budgets a run reports a row for: its checkpoints, after the base itself (budget 0)
    /// when students start from the attacker's base.
    pub fn row_budgets(&self) -> Vec<usize> {
        let base = (self.student.init == crate::student::Init::Base).then_some(0);
        base.into_iter().chain(self.budgets()).collect()
    }

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
        // Engine and device combinations. Whether this build has the engine, and a CUDA
        // device is visible, is checked before a sweep runs (so that an experiment of another
        // build still lists, reports and plots).
        self.backend()
            .check_combination()
            .map_err(|e| e.to_string())?;
        self.teacher
            .spec()
            .map_err(|e| format!("teacher.size: {e}"))?;
        self.student
            .spec()
            .map_err(|e| format!("student.size: {e}"))?;
        if let Some(c) = &self.student.chain {
            if crate::model::ModelSpec::preset(&c.size).is_none() {
                return Err(format!(
                    "student.chain.size: unknown model size `{}` (allowed: {})",
                    c.size,
                    crate::model::spec::PRESETS.join(", ")
                ));
            }
        }
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
        if let Err((_, msg)) = super::ranges::check_value(
            &serde_json::to_value(self).map_err(|e| format!("config: {e}"))?,
        ) {
            return Err(msg);
        }
        self.check_relations()?;
        if self.seeds.is_empty() {
            return Err("seeds: at least one seed is needed".into());
        }
        for (i, d) in self.api.defenses.iter().enumerate() {
            if let crate::api::defense::DefenseConfig::Antidistillation { proxy, .. } = d {
                if crate::model::ModelSpec::preset(proxy).is_none() {
                    return Err(format!(
                        "api.defenses[{i}].proxy: `{proxy}` is not a model size ({})",
                        crate::model::spec::PRESETS.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Most queries (attacker or benign) one traffic replay may plan: the reported 2026 campaign
/// (28.8M) with room to spare; the replay runs about a million queries a second.
pub const MAX_REPLAY_QUERIES: f64 = 2e9;

impl ExperimentConfig {
    /// Bounds that depend on another key (the fixed ranges are in `ranges::RANGES`), and
    /// pairs of keys that contradict each other.
    fn check_relations(&self) -> std::result::Result<(), String> {
        self.check_steps()?;
        self.check_targets()?;
        self.check_world()?;
        if self.student.chain.is_some() && self.student.method == crate::student::Method::OnPolicy {
            return Err(
                "student.chain: the chain's second stage learns offline from the larger \
                 model, but student.method `on_policy` scores through the API; use text or \
                 logprobs"
                    .into(),
            );
        }
        if let Some(t) = &self.traffic.tiers {
            t.validate()?;
        }
        let canaries = self.attacker.adapt.as_ref().map_or(0.0, |a| a.canary_share);
        if canaries > 0.0 && !self.traffic.enabled {
            return Err(format!(
                "attacker.adapt.canary_share {canaries}: canaries detect a silent fallback, \
                 which only a traffic replay's actions route accounts to; set traffic.enabled \
                 or canary_share 0"
            ));
        }
        if self.traffic.enabled {
            self.check_traffic()?;
        }
        Ok(())
    }

    /// Warmup within the steps, the students' fewest steps within their cap, checkpoints
    /// within the budget.
    fn check_steps(&self) -> std::result::Result<(), String> {
        for (name, t) in [
            ("teacher.train", &self.teacher.train),
            ("student.train", &self.student.train),
        ] {
            if t.warmup > t.steps {
                return Err(format!(
                    "{name}.warmup: {} is above {name}.steps ({})",
                    t.warmup, t.steps
                ));
            }
        }
        if let Some(i) = self
            .teacher
            .curriculum
            .iter()
            .position(|p| p.skills.is_empty())
        {
            return Err(format!(
                "teacher.curriculum[{i}].skills: a phase needs at least one skill (one of: {})",
                crate::world::Skill::ALL
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.student.min_steps > self.student.train.steps {
            return Err(format!(
                "student.min_steps: {} is above student.train.steps ({}), which caps every \
                 student's steps",
                self.student.min_steps, self.student.train.steps
            ));
        }
        for &c in &self.checkpoints {
            if c > self.attacker.budget {
                return Err(format!(
                    "checkpoints: {c} is above attacker.budget ({}); a checkpoint is a prefix \
                     of the harvest",
                    self.attacker.budget
                ));
            }
        }
        Ok(())
    }

    /// The student's targets are ones the attacker asks the API for.
    fn check_targets(&self) -> std::result::Result<(), String> {
        use crate::student::Method;
        let a = &self.attacker;
        if a.top_k == 0 && matches!(self.student.method, Method::Logprobs | Method::OnPolicy) {
            return Err(format!(
                "attacker.top_k: 0 asks the API for no logprobs, but student.method `{}` learns \
                 from them; set attacker.top_k (1 to 20) or student.method: text",
                serde_json::to_value(self.student.method)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            ));
        }
        let st = &self.student;
        if st.method == Method::Text {
            let soft_keys = [
                ("student.temperature", st.temperature != 1.0),
                ("student.hard_weight", st.hard_weight != 0.0),
                (
                    "student.top_k_rest",
                    st.top_k_rest != crate::student::TopKRest::Renormalise,
                ),
            ];
            if let Some((key, _)) = soft_keys.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "{key}: shapes logprob targets, but student.method is `text` (no logprob \
                     targets); use student.method: logprobs or drop the key"
                ));
            }
        }
        Ok(())
    }

    /// World settings the teacher, the base and the defenses can serve.
    fn check_world(&self) -> std::result::Result<(), String> {
        if self.world.near_miss_share > 0.0 && self.world.answers == crate::world::Answers::One {
            return Err(format!(
                "world.near_miss_share: {} is part of the several-answer world's distribution, \
                 but world.answers is `one`; set world.answers: several or drop the key",
                self.world.near_miss_share
            ));
        }
        if self.world.answers == crate::world::Answers::Several
            && self.teacher.kind == crate::teacher::TeacherKind::Oracle
        {
            return Err(
                "world.answers: `several` needs a teacher that learns the answer \
                 distribution, but teacher.kind is `oracle` (one answer per prompt); use \
                 teacher.kind: trained"
                    .into(),
            );
        }
        if self.world.harm == crate::world::Harm::Graded {
            if self.student.init == crate::student::Init::Base {
                return Err(
                    "student.init: `base` pretrains on the one-token harm world, but world.harm \
                     is `graded`; use student.init: scratch"
                        .into(),
                );
            }
            let antidistill = self.api.defenses.iter().any(|d| {
                matches!(
                    d,
                    crate::api::defense::DefenseConfig::Antidistillation { .. }
                )
            });
            if antidistill {
                return Err(
                    "api.defenses: antidistillation trains its proxy on the one-token harm \
                     world, but world.harm is `graded`; drop the defense or use world.harm: \
                     intent"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// A traffic replay the simulator can run in minutes, and a campaign it can replay.
    fn check_traffic(&self) -> std::result::Result<(), String> {
        let (a, tr) = (&self.attacker, &self.traffic);
        // The replay simulates every query: bound the total to what runs in minutes.
        let c = &tr.campaign;
        let p = &tr.population;
        for (key, planned) in [
            ("traffic.campaign", c.planned(a.accounts, a.max_days)),
            (
                "traffic.population",
                p.users as f64 * p.daily_median * a.max_days,
            ),
        ] {
            if planned > MAX_REPLAY_QUERIES {
                return Err(format!(
                    "{key}: {planned:.3e} planned queries (accounts x per day x days) is \
                     above the replay's limit of {MAX_REPLAY_QUERIES:.0e} (about an hour \
                     on 2 cores)"
                ));
            }
        }
        if matches!(a.strategy, crate::attacker::Strategy::Active { .. }) {
            return Err(
                "attacker.strategy: `active` trains a student between rounds and \
                 cannot run inside a traffic replay; use another strategy or set \
                 traffic.enabled: false"
                    .into(),
            );
        }
        if let (Some(ch), Some(d)) = (&tr.limit_change, Some(a.max_days)) {
            if ch.day >= d {
                return Err(format!(
                    "traffic.limit_change.day: {} is not inside the campaign \
                     (attacker.max_days: {d})",
                    ch.day
                ));
            }
        }
        if self.api.tier_index(&tr.population.tier).is_none() {
            return Err(format!(
                "traffic.population.tier: `{}` is not one of api.tiers",
                tr.population.tier
            ));
        }
        Ok(())
    }
}

/// Type a merged config value; errors name the key (and its line).
fn typed(
    v: Value,
    files: &[(&Path, &str)],
    overrides: &[(String, String)],
    context: &str,
    grid_keys: &[&str],
) -> Result<ExperimentConfig> {
    // Numbers first: one too large for its field (1e39 for an f32) would become infinite.
    if let Err((key, msg)) = super::ranges::check_value(&v) {
        return Err(prefix_context(
            located(files, overrides, &key, &msg, grid_keys),
            context,
        ));
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let mut key = e.path().to_string();
        let inner = e.inner().to_string();
        if key == "." {
            key = String::new();
        }
        // YAML's `.nan` and `.inf` reach here as strings: say what is wrong with them.
        let msg = match ["\".nan\"", "\".inf\"", "\"-.inf\"", "\".NaN\"", "\".Inf\""]
            .iter()
            .find(|s| inner.contains(*s))
        {
            Some(s) => format!("{key}: {s} is not a finite number"),
            None => format!("{key}: {inner}{}", moved_hint(&key)),
        };
        prefix_context(located(files, overrides, &key, &msg, grid_keys), context)
    })
}

/// Parse one file strictly (line-aware errors) and as a generic value (for merging).
fn parse_file(path: &Path) -> Result<(ExperimentConfig, Value, String)> {
    if path.is_dir() {
        return Err(config_err(
            path,
            "is a directory; an experiment file is a YAML file",
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = config_text(&bytes).map_err(|msg| config_err(path, msg))?;
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(config_err(
            path,
            "the file has no settings (it is empty or only comments); an experiment file \
             is a YAML mapping, e.g. `attacker: {budget: 1000}`",
        ));
    }
    let value: Value = serde_saphyr::from_str(&text).map_err(|e| yaml_error(path, &text, &e))?;
    let cfg: ExperimentConfig = match serde_saphyr::from_str(&text) {
        Ok(cfg) => cfg,
        // serde names an unknown field without its section, and places neither an unknown
        // variant nor a missing field: the typed path of the generic value gives the whole
        // key, so the error is placed at that key's line.
        Err(e) if e.location().is_none() || e.to_string().contains("unknown field `") => {
            return Err(
                value_error(path, &text, &value).unwrap_or_else(|| yaml_error(path, &text, &e))
            )
        }
        Err(e) => return Err(yaml_error(path, &text, &e)),
    };
    Ok((cfg, value, text))
}

/// The text of a config file: valid UTF-8 (else the line and byte of the first invalid
/// sequence), no control characters (a NUL ends the YAML parser's input early, so the keys
/// after it would silently take their defaults), tabs between tokens read as spaces.
fn config_text(bytes: &[u8]) -> std::result::Result<String, String> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.valid_up_to();
            let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
            let col = at
                - bytes[..at]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
            return Err(format!(
                "line {line}, byte {} (offset {at} in the file): invalid UTF-8 (byte 0x{:02x}); \
                 a config is UTF-8 text",
                col + 1,
                bytes[at]
            ));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some((col, c)) = line
            .chars()
            .enumerate()
            .find(|(_, c)| (c.is_control() && *c != '\t') || *c == '\u{feff}')
        {
            let name = match c {
                '\0' => " (NUL)".to_string(),
                '\r' => " (carriage return inside a line)".to_string(),
                _ => String::new(),
            };
            return Err(format!(
                "line {}, column {}: control character U+{:04X}{name}; a config is plain text \
                 (the YAML parser would stop or misread there)",
                i + 1,
                col + 1,
                c as u32
            ));
        }
    }
    Ok(tabs_as_spaces(text))
}

/// YAML allows tabs as separation between tokens (`key:<TAB>value`), which the parser refuses:
/// outside quotes, block scalars and the indentation, a tab reads as a space. A tab in the
/// indentation is left for the parser to refuse (YAML forbids it).
fn tabs_as_spaces(text: &str) -> String {
    if !text.contains('\t') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    // Indentation of a line that opened a block scalar (`|`, `>`): more-indented lines after it
    // are its content, kept as written.
    let mut block: Option<usize> = None;
    for (n, line) in text.split('\n').enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let body = line.trim_start_matches([' ', '\t']);
        let indent = line.len() - body.len();
        if let Some(b) = block {
            if body.is_empty() || indent > b {
                out.push_str(line);
                continue;
            }
            block = None;
        }
        out.push_str(&line[..indent]);
        let (mut single, mut double, mut escaped) = (false, false, false);
        let mut comment = false;
        let mut prev = ' ';
        for c in body.chars() {
            if comment {
                out.push(c);
                continue;
            }
            match c {
                '\t' if !single && !double => {
                    out.push(' ');
                    prev = ' ';
                    continue;
                }
                '\'' if !double => single = !single,
                '"' if !single && !escaped => double = !double,
                '#' if !single && !double && (prev == ' ' || prev == '\t') => comment = true,
                _ => {}
            }
            escaped = double && c == '\\' && !escaped;
            prev = c;
            out.push(c);
        }
        let value = body.split(" #").next().unwrap_or(body).trim_end();
        if ["|", ">", "|-", ">-", "|+", ">+"].iter().any(|m| {
            value.ends_with(&format!(" {m}")) || value.ends_with(&format!(":{m}")) || value == *m
        }) {
            block = Some(indent);
        }
    }
    out
}

/// A type error placed at its full key: an unknown field at `traffic.campaign.budget` (not the
/// first line with a `budget:`), with where the key went if it moved; an unknown variant or a
/// missing field at the key it concerns.
fn value_error(path: &Path, text: &str, value: &Value) -> Option<Error> {
    let e = serde_path_to_error::deserialize::<_, ExperimentConfig>(value.clone()).err()?;
    let inner = e.inner().to_string();
    // The path of an unknown field ends with the field itself.
    let key = e.path().to_string();
    if key == "." || key.is_empty() {
        return None;
    }
    let moved = moved_hint(&key);
    let line = find_key_line(text, &key)
        .map(|n| format!("line {n}: "))
        .unwrap_or_default();
    Some(config_err(
        path,
        format!("{line}key `{key}`: {inner}{moved}"),
    ))
}

/// ` (`key` moved to `new`)` for a key that moved, else nothing.
fn moved_hint(key: &str) -> String {
    MOVED_KEYS
        .iter()
        .find(|(old, _)| *old == key)
        .map(|(_, new)| format!(" (`{key}` moved to `{new}`)"))
        .unwrap_or_default()
}

/// Keys that moved, and where to: an old config names its old key and gets the new one.
pub(crate) const MOVED_KEYS: &[(&str, &str)] = &[
    ("traffic.campaign.accounts", "attacker.accounts"),
    ("traffic.campaign.days", "attacker.max_days"),
    ("traffic.campaign.hard_share", "attacker.hard_share"),
    (
        "traffic.campaign.account_cost_usd",
        "attacker.account_cost_usd",
    ),
    (
        "traffic.campaign.skills",
        "attacker.strategy: {kind: targeted, skills: [...]}",
    ),
];

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
        let here = parts[..=i].join(".");
        // A new entry of a map (`teacher.skill_weights.add`): the typed config checks its name.
        let map_entry = i + 1 == parts.len()
            && super::ranges::range_of(&here).is_some_and(|r| r.key.ends_with(".*"));
        if !obj.contains_key(*part) && !map_entry {
            let allowed: Vec<&String> = obj.keys().collect();
            return Err(format!(
                "`{key}`: unknown key `{part}` (allowed: {}){}",
                allowed
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                moved_hint(&here)
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
/// `defaults` for an empty settings object, `off` for one whose settings are all null).
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
        // An empty object leaves every setting at its default (it is not "off").
        Value::Object(o) if o.is_empty() => "defaults".into(),
        // An object of settings: its non-null `key=value` pairs (e.g. detector thresholds),
        // `off` when every one listed is null.
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

pub use super::ranges::MAX_RUNS;

/// Longest experiment name or run id, in bytes: one directory name (255 on common file
/// systems) with room for the temporary name a run is written under.
pub const MAX_NAME_BYTES: usize = 200;

/// Top-level keys that shape the sweep itself and cannot be grid axes (nor, with
/// `description`, set per variant).
const NOT_SWEEPABLE: [&str; 5] = ["name", "base", "seeds", "grid", "variants"];

/// An error about top-level `key`, at its origin: `--set key=...` when an override set it,
/// else its line in the file.
fn at_origin(
    path: &Path,
    text: &str,
    overrides: &[(String, String)],
    key: &str,
    msg: impl std::fmt::Display,
) -> Error {
    match overrides
        .iter()
        .rev()
        .find(|(k, _)| k == key || k.starts_with(&format!("{key}.")))
    {
        Some((k, v)) => config_err(path, format!("--set {k}={v}: key `{key}`: {msg}")),
        None => config_err(path, at_key(text, key, msg)),
    }
}

/// An error about grid axis `key`, at the axis's line where the file has one.
fn grid_err(path: &Path, text: &str, key: &str, msg: impl std::fmt::Display) -> Error {
    let at = find_grid_line(text, key)
        .map(|n| format!("line {n}: "))
        .unwrap_or_default();
    config_err(path, format!("{at}key `grid.{key}`: {msg}"))
}

/// `line N: key `k`: msg` where the key is found in the file, else `key `k`: msg`.
fn at_key(text: &str, key: &str, msg: impl std::fmt::Display) -> String {
    match find_key_line(text, key) {
        Some(n) => format!("line {n}: key `{key}`: {msg}"),
        None => format!("key `{key}`: {msg}"),
    }
}

/// Load an experiment file, apply its base and `--set key=value` overrides, expand the grid:
/// the sources merged, the sweep's own shape checked (grid keys, name, variants, size,
/// seeds), then one typed and validated config per grid point and seed.
/// `--set KEY=VALUE` arguments as (key, value) pairs; one without `=` is an error naming it.
pub fn parse_overrides(set: &[String]) -> Result<Vec<(String, String)>> {
    set.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| Error::Invalid(format!("--set `{s}`: expected KEY=VALUE")))
        })
        .collect()
}

pub fn load(path: &Path, overrides: &[(String, String)]) -> Result<Experiment> {
    let (_, own, own_text) = parse_file(path)?;
    let (merged, base_file) = merge_sources(path, own, &own_text, overrides)?;
    let mut files: Vec<(&Path, &str)> = vec![(path, own_text.as_str())];
    if let Some((p, t)) = &base_file {
        files.push((p.as_path(), t.as_str()));
    }
    let src = Source {
        path,
        own_text: &own_text,
        overrides,
        files,
    };
    check_grid_keys(&src, &merged)?;
    let mut config = typed(merged, &src.files, overrides, "", &[])?;
    name_config(&src, &mut config)?;
    config
        .validate()
        .map_err(|e| validation_error(&src.files, overrides, e, "", &[]))?;
    let variants = parse_variants(&src, &config)?;
    let n_runs = check_sweep_size(&src, &config, variants.len())?;
    check_seeds(&src, &config)?;
    let runs = expand(&src, &config, &variants, n_runs)?;
    check_unique_ids(&src, &runs)?;
    Ok(Experiment {
        file: path.to_path_buf(),
        config,
        runs,
    })
}

/// Where an experiment came from, for errors that point at a line or a `--set`.
struct Source<'a> {
    path: &'a Path,
    own_text: &'a str,
    overrides: &'a [(String, String)],
    /// The experiment file and its base file, with their texts.
    files: Vec<(&'a Path, &'a str)>,
}

/// The defaults, the base file (without its sweep), the experiment file and the `--set`
/// overrides, merged in that order; with the base file's path and text.
fn merge_sources(
    path: &Path,
    own: Value,
    own_text: &str,
    overrides: &[(String, String)],
) -> Result<(Value, Option<(PathBuf, String)>)> {
    let mut merged = serde_json::to_value(ExperimentConfig::default()).expect("default serialises");
    let base_file = read_base(path, &own, own_text, overrides)?;
    if let Some((_, base_val, _)) = &base_file {
        merge(&mut merged, base_val.clone());
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
    Ok((merged, base_file.map(|(p, _, t)| (p, t))))
}

/// The base file the experiment names (or `--set base=...` chooses, relative to the
/// experiment file; `--set base=null` drops it): its path, its settings without its sweep
/// (grid and variants are not inherited) and its text.
fn read_base(
    path: &Path,
    own: &Value,
    own_text: &str,
    overrides: &[(String, String)],
) -> Result<Option<(PathBuf, Value, String)>> {
    let set_base = overrides.iter().rev().find(|(k, _)| k == "base");
    let base_value = match set_base {
        Some((_, v)) => serde_saphyr::from_str::<Value>(v).unwrap_or(Value::String(v.clone())),
        None => own.get("base").cloned().unwrap_or(Value::Null),
    };
    let base_origin = |msg: String| match set_base {
        Some((_, v)) => config_err(path, format!("--set base={v}: {msg}")),
        None => config_err(path, at_key(own_text, "base", msg)),
    };
    let base = match &base_value {
        Value::Null => return Ok(None),
        Value::String(base) => base,
        other => {
            return Err(base_origin(format!(
                "must be a file name (a string), got {other}"
            )))
        }
    };
    let base_path = path.parent().unwrap_or(Path::new(".")).join(base);
    if base_path.is_dir() {
        return Err(base_origin(format!(
            "`{base}` is a directory ({}); a base is a YAML file, relative to the experiment \
             file",
            base_path.display()
        )));
    }
    if !base_path.is_file() {
        return Err(base_origin(format!(
            "`{base}` is not a file ({} does not exist; the path is relative to the \
             experiment file)",
            base_path.display()
        )));
    }
    let (base_cfg, mut base_val, base_text) = parse_file(&base_path)?;
    if base_cfg.base.is_some() {
        return Err(config_err(
            &base_path,
            at_key(
                &base_text,
                "base",
                "a base file cannot have a base of its own (one level only)",
            ),
        ));
    }
    if let Some(o) = base_val.as_object_mut() {
        o.remove("grid");
        o.remove("variants");
    }
    Ok(Some((base_path, base_val, base_text)))
}

/// The grid's own shape first: keys that cannot be axes, before anything is expanded.
fn check_grid_keys(src: &Source, merged: &Value) -> Result<()> {
    let Some(grid) = merged.get("grid").and_then(Value::as_object) else {
        return Ok(());
    };
    for key in grid.keys() {
        let top = key.split('.').next().unwrap_or(key);
        if NOT_SWEEPABLE.contains(&top) {
            let hint = if top == "seeds" {
                "list the seeds in `seeds:` (every grid point runs once per seed)"
            } else {
                "it shapes the sweep (results directory, base file, seeds, axes), so it \
                 cannot be an axis; sweep config keys, or use variants"
            };
            return Err(grid_err(
                src.path,
                src.own_text,
                key,
                format!("`{key}` cannot be swept: {hint}"),
            ));
        }
    }
    Ok(())
}

/// The experiment's name (the file's stem unless set), checked as a directory name.
fn name_config(src: &Source, config: &mut ExperimentConfig) -> Result<()> {
    let (path, overrides) = (src.path, src.overrides);
    if config.name.is_empty() {
        config.name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "experiment".into());
    }
    let named =
        overrides.iter().any(|(k, _)| k == "name") || find_key_line(src.own_text, "name").is_some();
    let name_origin = |msg: String| {
        if named {
            at_origin(path, src.own_text, overrides, "name", msg)
        } else {
            config_err(path, format!("name (the file's stem): {msg}"))
        }
    };
    if !safe_dir_name(&config.name) {
        return Err(name_origin(format!(
            "`{}` must be one directory name (no `/`, `\\`, leading `.` or absolute path): \
             results go to <results>/<name>/",
            config.name
        )));
    }
    if config.name.len() > MAX_NAME_BYTES {
        return Err(name_origin(format!(
            "{} bytes is above the limit of {MAX_NAME_BYTES} (it names the results directory)",
            config.name.len()
        )));
    }
    Ok(())
}

/// Variants: (name, partial config), checked before anything runs; one unnamed empty
/// variant when there are none.
fn parse_variants(src: &Source, config: &ExperimentConfig) -> Result<Vec<(String, Value)>> {
    let variant_err = |i: usize, msg: String| {
        at_origin(
            src.path,
            src.own_text,
            src.overrides,
            "variants",
            format!("variants[{i}]: {msg}"),
        )
    };
    let mut variants: Vec<(String, Value)> = Vec::new();
    for (i, v) in config.variants.iter().enumerate() {
        let mut obj = v
            .as_object()
            .cloned()
            .ok_or_else(|| variant_err(i, "must be a mapping".into()))?;
        let name = match obj.remove("name") {
            Some(Value::String(n)) if !n.is_empty() => n,
            _ => return Err(variant_err(i, "needs a `name` (a non-empty string)".into())),
        };
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || " _.=()+-".contains(*c)))
        {
            return Err(variant_err(
                i,
                format!("the name `{name}` has `{c}`; use letters, digits, spaces and _.=()+-"),
            ));
        }
        if variants.iter().any(|(n, _)| *n == name) {
            return Err(variant_err(i, format!("the name `{name}` is used twice")));
        }
        for key in NOT_SWEEPABLE.iter().chain(&["description"]) {
            if *key != "name" && obj.contains_key(*key) {
                return Err(variant_err(
                    i,
                    format!("(`{name}`): `{key}` cannot be set per variant"),
                ));
            }
        }
        variants.push((name, Value::Object(obj)));
    }
    if variants.is_empty() {
        variants.push((String::new(), Value::Object(Default::default())));
    }
    Ok(variants)
}

/// The number of runs (variants x grid x seeds), before the sweep is expanded: every axis
/// has a value and the product stays under [`MAX_RUNS`].
fn check_sweep_size(src: &Source, config: &ExperimentConfig, n_variants: usize) -> Result<usize> {
    let mut n_runs = n_variants.saturating_mul(config.seeds.len().max(1));
    for (key, values) in &config.grid {
        if values.is_empty() {
            return Err(grid_err(
                src.path,
                src.own_text,
                key,
                "needs at least one value",
            ));
        }
        n_runs = n_runs.saturating_mul(values.len());
    }
    if n_runs <= MAX_RUNS {
        return Ok(n_runs);
    }
    let axes: Vec<String> = config
        .grid
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.len()))
        .collect();
    Err(config_err(
        src.path,
        format!(
            "the sweep has {} runs ({} variant(s) x grid [{}] x {} seed(s)), above the limit \
             of {MAX_RUNS} runs per experiment; split it into experiments",
            if n_runs == usize::MAX {
                "more than 2^64".to_string()
            } else {
                n_runs.to_string()
            },
            n_variants,
            axes.join(", "),
            config.seeds.len()
        ),
    ))
}

/// At least one seed, none twice.
fn check_seeds(src: &Source, config: &ExperimentConfig) -> Result<()> {
    let at = |msg: String| at_origin(src.path, src.own_text, src.overrides, "seeds", msg);
    if config.seeds.is_empty() {
        return Err(at("needs at least one seed".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for &seed in &config.seeds {
        if !seen.insert(seed) {
            return Err(at(format!("{seed} is listed twice")));
        }
    }
    Ok(())
}

/// The grid's points: the product of its axes, in key order.
fn grid_points(config: &ExperimentConfig) -> Vec<Vec<(String, Value)>> {
    let mut points: Vec<Vec<(String, Value)>> = vec![vec![]];
    for (key, values) in &config.grid {
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
    points
}

/// The runs: variants x grid points x seeds, one typed and validated config per point.
fn expand(
    src: &Source,
    config: &ExperimentConfig,
    variants: &[(String, Value)],
    n_runs: usize,
) -> Result<Vec<RunSpec>> {
    let points = grid_points(config);
    // The resolved config without its sweep (grid, variants, seeds): serialised once, so that
    // expanding is linear in the number of runs.
    let mut bare = config.clone();
    bare.grid = Default::default();
    bare.variants = vec![];
    bare.seeds = vec![];
    let bare = serde_json::to_value(&bare).expect("config serialises");
    let mut runs = Vec::with_capacity(n_runs);
    for (vname, overlay) in variants {
        for grid_point in &points {
            let mut point = grid_point.clone();
            if !vname.is_empty() {
                point.insert(0, ("variant".to_string(), Value::String(vname.clone())));
            }
            check_id_len(src, config, &point)?;
            let cfg = point_config(src, &bare, overlay, grid_point, &point, config.seeds[0])?;
            let point_label = label(&point);
            for &seed in &config.seeds {
                let mut c = cfg.clone();
                c.seeds = vec![seed];
                let mut id = point_label.clone();
                if !id.is_empty() {
                    id.push(',');
                }
                id.push_str(&format!("seed={seed}"));
                runs.push(RunSpec {
                    index: runs.len(),
                    id,
                    seed,
                    point: point.clone(),
                    config: c,
                });
            }
        }
    }
    Ok(runs)
}

/// The longest run id of a point (its largest seed) fits a directory name, checked before
/// the point is typed.
fn check_id_len(src: &Source, config: &ExperimentConfig, point: &[(String, Value)]) -> Result<()> {
    let point_label = label(point);
    let max_seed = config.seeds.iter().max().copied().unwrap_or(0);
    let id_len =
        point_label.len() + usize::from(!point_label.is_empty()) + 5 + max_seed.to_string().len();
    if id_len <= MAX_NAME_BYTES {
        return Ok(());
    }
    let key = point
        .iter()
        .max_by_key(|(_, v)| value_label(v).len())
        .map(|(k, _)| k.clone())
        .unwrap_or_else(|| "seeds".into());
    let at = if key == "variant" {
        find_key_line(src.own_text, "variants").map(|n| format!("line {n}: key `variants`: "))
    } else {
        find_grid_line(src.own_text, &key).map(|n| format!("line {n}: key `grid.{key}`: "))
    }
    .unwrap_or_default();
    Err(config_err(
        src.path,
        format!(
            "{at}the run id `{}...` is {id_len} bytes, above the limit of {MAX_NAME_BYTES} (it \
             names the run's directory); use shorter values, or variants with short names",
            point_label.chars().take(40).collect::<String>(),
        ),
    ))
}

/// The typed and validated config of one grid point: the bare config, the variant's overlay
/// and the point's values (the seeds only differ in `seeds`: typed once, with the first).
fn point_config(
    src: &Source,
    bare: &Value,
    overlay: &Value,
    grid_point: &[(String, Value)],
    point: &[(String, Value)],
    first_seed: u64,
) -> Result<ExperimentConfig> {
    let grid_keys: Vec<&str> = grid_point.iter().map(|(k, _)| k.as_str()).collect();
    let context = if point.is_empty() {
        String::new()
    } else {
        format!("grid point {}", label(point))
    };
    let mut v = bare.clone();
    merge(&mut v, overlay.clone());
    for (k, val) in grid_point {
        set_key(&mut v, k, val.clone()).map_err(|e| grid_err(src.path, src.own_text, k, e))?;
    }
    v["seeds"] = Value::Array(vec![Value::from(first_seed)]);
    let cfg = typed(v, &src.files, src.overrides, &context, &grid_keys)?;
    cfg.validate()
        .map_err(|e| validation_error(&src.files, src.overrides, e, &context, &grid_keys))?;
    Ok(cfg)
}

/// Every run needs a directory of its own: two grid points that map to one name would
/// silently leave one of them unrun.
fn check_unique_ids(src: &Source, runs: &[RunSpec]) -> Result<()> {
    let mut seen: std::collections::HashMap<&str, &RunSpec> = Default::default();
    for r in runs {
        let Some(other) = seen.insert(&r.id, r) else {
            continue;
        };
        let key = r
            .point
            .iter()
            .zip(&other.point)
            .find(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0.clone())
            .unwrap_or_default();
        let at = find_grid_line(src.own_text, &key)
            .map(|n| format!("line {n}: key `grid.{key}`: "))
            .unwrap_or_default();
        return Err(config_err(
            src.path,
            format!(
                "{at}grid: the points {} and {} would share the run directory `{}`; give them \
                 values that read differently",
                serde_json::to_string(&other.point).unwrap_or_default(),
                serde_json::to_string(&r.point).unwrap_or_default(),
                r.id
            ),
        ));
    }
    Ok(())
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

    /// `--set` adds an entry to a map (a skill weight), and a name the map does not take is an
    /// error that names it; an unknown key elsewhere is still an error.
    #[test]
    fn set_adds_map_entries_and_names_bad_ones() {
        let p = write("maps.yaml", "seeds: [1]\n");
        let set = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let exp = load(&p, &set("teacher.skill_weights.lookup", "3")).unwrap();
        let w = &exp.runs[0].config.teacher.skill_weights;
        assert_eq!(w.get(&crate::world::Skill::Lookup), Some(&3.0));
        let e = load(&p, &set("teacher.skill_weights.nope", "3"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("lookup"), "{e}");
        let e = load(&p, &set("teacher.train.nope", "3"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key `nope`"), "{e}");
        let e = load(&p, &set("teacher.skill_weights.add", "-1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside"), "{e}");
    }

    #[test]
    fn colliding_run_ids_and_escaping_names_are_errors() {
        let p = write("collide.yaml", "grid:\n  checkpoints: [[1, 23], [12, 3]]\n");
        let e = load(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("would share the run directory"), "{e}");
        let p = write("seeds.yaml", "seeds: [1, 1]\n");
        let e = load(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("key `seeds`: 1 is listed twice"), "{e}");
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
        assert!(
            e.contains("line 2: key `device`: cuda needs engine: tch"),
            "{e}"
        );
        let p = write("gpu.yaml", "device: gpu\n");
        let e = load(&p, &[]).unwrap_err().to_string();
        assert!(
            e.contains("line 1: key `device`") && e.contains("cuda"),
            "{e}"
        );
        // An engine this build lacks loads (it lists, reports and plots); running it is
        // refused before any work, saying how to build it.
        for (engine, tag, built) in [
            ("tch", "tch-cpu", cfg!(feature = "tch")),
            ("burn", "burn", cfg!(feature = "burn")),
        ] {
            let p = write(&format!("{engine}.yaml"), &format!("engine: {engine}\n"));
            let b = load(&p, &[]).unwrap().runs[0].config.backend();
            assert_eq!(b.tag(), tag);
            if !built {
                let e = b.check().unwrap_err().to_string();
                assert!(e.contains(&format!("--features {engine}")), "{e}");
            }
        }
    }

    /// The experiment files and test fixtures the fuzzer mutates, by file name.
    fn fuzz_corpus() -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut corpus: Vec<(String, String)> = Vec::new();
        for dir in ["experiments", "tests/fixtures"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "yaml") {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    corpus.push((name, std::fs::read_to_string(&p).unwrap()));
                }
            }
        }
        corpus.sort();
        corpus
    }

    const EDGES: &[&str] = &[
        "-1",
        "0",
        "1",
        "2",
        "0.5",
        "1.5",
        "-0.0",
        "1e39",
        "-1e39",
        "1e12",
        "1e18",
        "18446744073709551616",
        ".nan",
        ".inf",
        "-.inf",
        "\"x\"",
        "x",
        "[]",
        "{}",
        "[1, 1]",
        "null",
        "true",
        "~",
        "tier9",
        "[[1]]",
        "{kind: nope}",
        "1e-12",
        "4294967296",
    ];

    /// One random mutation of a file's lines: its class, and a byte sequence to insert at an
    /// offset after the lines are joined (control bytes, invalid UTF-8), if any.
    fn mutate(
        rng: &mut impl rand::Rng,
        lines: &mut Vec<String>,
    ) -> (&'static str, Option<(usize, Vec<u8>)>) {
        let at = rng.random_range(0..lines.len().max(1));
        let kind = rng.random_range(0..15);
        let class = match kind {
            0..=5 => "edge values",
            6..=9 => "lines dropped, repeated, added, truncated",
            10 | 11 => "control bytes and invalid UTF-8",
            12 => "tabs",
            13 => "huge seed lists",
            _ => "huge grids",
        };
        let mut raw = None;
        match kind {
            // The value of a `key: value` line (most cases).
            0..=5 => edge_value(rng, lines),
            6 => {
                if !lines.is_empty() {
                    lines.remove(at);
                }
            }
            7 => {
                if !lines.is_empty() {
                    let l = lines[at].clone();
                    lines.insert(at, l);
                }
            }
            8 => lines.insert(at, "bogus_key: 1".into()),
            9 => lines.truncate(at),
            // A control byte (NUL among them) or an invalid UTF-8 sequence at a random offset.
            10 | 11 => raw = Some(bad_bytes(rng, lines)),
            12 => tabs(rng, lines, at),
            // Huge grids and seed lists (most past the run limit).
            13 => huge_seeds(rng, lines),
            _ => huge_grid(rng, lines),
        }
        (class, raw)
    }

    /// An edge value in place of a random `key: value` line's value.
    fn edge_value(rng: &mut impl rand::Rng, lines: &mut [String]) {
        let candidates: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains(": ") && !l.trim_start().starts_with('#'))
            .map(|(i, _)| i)
            .collect();
        if let Some(&i) = candidates.get(rng.random_range(0..candidates.len().max(1))) {
            let edge = EDGES[rng.random_range(0..EDGES.len())];
            let l = &lines[i];
            // In flow style, one of the values inside the braces.
            let cut = if l.contains('{') && rng.random_bool(0.5) {
                l.rfind(": ").unwrap()
            } else {
                l.find(": ").unwrap()
            };
            let tail = if l[cut..].contains('}') && cut == l.rfind(": ").unwrap() {
                "}".repeat(l[cut..].matches('}').count())
            } else {
                String::new()
            };
            lines[i] = format!("{}: {edge}{tail}", &l[..cut]);
        }
    }

    fn bad_bytes(rng: &mut impl rand::Rng, lines: &[String]) -> (usize, Vec<u8>) {
        const BAD: &[&[u8]] = &[
            b"\0",
            b"\x01",
            b"\x07",
            b"\x1b",
            b"\x7f",
            b"\r",
            b"\x0b",
            b"\x0c",
            b"\xff",
            b"\xc3",
            b"\xe2\x82",
            b"\xed\xa0\x80",
            b"\xc0\xaf",
        ];
        let len = lines.join("\n").len();
        (
            rng.random_range(0..=len),
            BAD[rng.random_range(0..BAD.len())].to_vec(),
        )
    }

    /// Tabs: after a colon or comma (valid YAML, read as a space) or in the indentation
    /// (invalid YAML, refused).
    fn tabs(rng: &mut impl rand::Rng, lines: &mut Vec<String>, at: usize) {
        let i = at.min(lines.len().saturating_sub(1));
        if lines.is_empty() {
            lines.push(String::new());
        }
        let l = &mut lines[i];
        *l = if rng.random_bool(0.7) {
            l.replacen(": ", ":\t", 1).replacen(", ", ",\t", 1)
        } else {
            format!("\t{l}")
        };
    }

    fn huge_seeds(rng: &mut impl rand::Rng, lines: &mut Vec<String>) {
        let n = [10usize, 1_000, 20_000, 200_000][rng.random_range(0..4)];
        let list: Vec<String> = (0..n).map(|i| (i + 1).to_string()).collect();
        lines.retain(|l| !l.starts_with("seeds:"));
        lines.push(format!("seeds: [{}]", list.join(", ")));
    }

    fn huge_grid(rng: &mut impl rand::Rng, lines: &mut Vec<String>) {
        let n = [2usize, 5, 10, 21, 50, 200][rng.random_range(0..6)];
        let list: Vec<String> = (0..n).map(|i| (i + 1).to_string()).collect();
        let list = list.join(", ");
        if let Some(g) = lines.iter().position(|l| l.starts_with("grid:")) {
            let end = (g + 1..lines.len())
                .find(|&i| !lines[i].starts_with(' '))
                .unwrap_or(lines.len());
            lines.drain(g..end);
        }
        lines.push(format!(
            "grid: {{teacher.seed: [{list}], student.min_steps: [{list}], \
             attacker.accounts: [{list}]}}"
        ));
    }

    /// Load `file` in a thread: its number of runs or its error; a hang or a panic fails.
    fn load_guarded(file: &Path, what: &str) -> std::result::Result<usize, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let f = file.to_path_buf();
        let worker = std::thread::spawn(move || {
            let r = load(&f, &[])
                .map(|exp| exp.runs.len())
                .map_err(|e| e.to_string());
            let _ = tx.send(r);
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{what} hung or panicked"));
        worker.join().expect("no panic");
        result
    }

    /// Whether an error names a file of the corpus (or the mutated one) and a line or key.
    fn located(e: &str, file: &Path, corpus: &[(String, String)]) -> bool {
        let file_named = e.contains(&file.display().to_string())
            || corpus.iter().any(|(n, _)| e.contains(n.as_str()));
        let pointed = e.contains("line ")
            || e.contains("no settings")
            || e.contains("key `")
            || e.contains("variants[")
            || e.contains("grid")
            || e.contains("seeds:")
            || e.contains("name:")
            || e.contains("the sweep has");
        file_named && pointed
    }

    /// The process's peak resident set in KiB (Linux), every case so far included.
    fn peak_rss_kib() -> Option<u64> {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|n| n.parse::<u64>().ok())
                })
            })
    }

    /// Mutation fuzzing of the loader over the committed experiments and fixtures: each case
    /// changes one value to an edge (negative, zero, huge, NaN, infinite, wrong type), drops,
    /// repeats or truncates lines, or adds an unknown key. Whatever comes in, the loader must
    /// not panic or hang, and must return either a config that passes validation (every run,
    /// every number in range) or an error that names the file and a line or key.
    #[test]
    fn fuzzed_configs_give_a_located_error_or_a_valid_config() {
        use rand::Rng;
        let corpus = fuzz_corpus();
        let dir = std::env::temp_dir().join(format!("distill-sim-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Bases the corpus refers to, beside the mutated files.
        for (name, text) in &corpus {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let mut rng = crate::rng::derive_rng(12, "config-fuzz");
        let cases = 1500;
        let (mut ok, mut refused) = (0, 0);
        let mut by_class: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        let t0 = std::time::Instant::now();
        for case in 0..cases {
            let (name, text) = &corpus[rng.random_range(0..corpus.len())];
            let mut lines: Vec<String> = text.lines().map(String::from).collect();
            let (class, raw) = mutate(&mut rng, &mut lines);
            let mut bytes = lines.join("\n").into_bytes();
            if let Some((at, b)) = raw {
                bytes.splice(at..at, b);
            }
            let mutated = String::from_utf8_lossy(&bytes).into_owned();
            let file = dir.join(format!("case-{case}.yaml"));
            std::fs::write(&file, &bytes).unwrap();
            match load_guarded(&file, &format!("{name} case {case}:\n{mutated}")) {
                Ok(n) => {
                    by_class.entry(class).or_default().0 += 1;
                    let exp = load(&file, &[]).unwrap();
                    assert_eq!(exp.runs.len(), n);
                    for r in &exp.runs {
                        assert!(r.config.validate().is_ok(), "{name} case {case}");
                        let v = serde_json::to_value(&r.config).unwrap();
                        assert!(super::super::ranges::check_value(&v).is_ok());
                    }
                    ok += 1;
                }
                Err(e) => {
                    assert!(
                        located(&e, &file, &corpus),
                        "{name} case {case}: an error without a file and a line or key: {e}\n---\n{mutated}"
                    );
                    refused += 1;
                    by_class.entry(class).or_default().1 += 1;
                }
            }
        }
        let peak_kib = peak_rss_kib();
        eprintln!(
            "config fuzz: {cases} cases ({ok} loaded and valid, {refused} refused with a located \
             error) in {:.2} s, peak memory {} MiB",
            t0.elapsed().as_secs_f64(),
            peak_kib.map_or("?".to_string(), |k| (k / 1024).to_string())
        );
        for (class, (ok, refused)) in &by_class {
            eprintln!("  {class}: {ok} loaded and valid, {refused} refused with a located error");
        }
        assert!(ok > 0 && refused > 0);
        if let Some(k) = peak_kib {
            assert!(k < 4 << 20, "peak memory {} MiB", k / 1024);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
