//! Markdown tables and CSV from run records: a pure function of results files, never the
//! simulation. Cells are means over seeds with 95% t-intervals; comparisons are paired
//! differences (same seed, same budget) to a named baseline point.

use crate::eval::{direction, Direction};
use crate::experiment::results::{load_dir, Checkpoint, RunRecord};

/// Columns of the standard run table.
/// The sweep table's columns for an experiment: detection with traffic, defense columns
/// where defenses are on or swept, the run columns otherwise.
pub fn columns_for(cfg: &crate::experiment::config::ExperimentConfig) -> &'static [&'static str] {
    if cfg.traffic.enabled {
        &DETECTION_COLUMNS
    } else if cfg.api.defenses.is_empty() && !cfg.grid.contains_key("api.defenses") {
        &RUN_COLUMNS
    } else {
        &DEFENSE_COLUMNS
    }
}

pub const RUN_COLUMNS: [&str; 10] = [
    "parity",
    "parity.hard",
    "fidelity",
    "safety.balanced",
    "safety.transfer",
    "ei.act.words",
    "ei.act.voice",
    "ei.perceive.voice",
    "ei.gap",
    "cost.api_usd",
];

/// Columns of the detector comparison.
pub const DETECTION_COLUMNS: [&str; 10] = [
    "detection.days_to_first_action",
    "detection.recall",
    "detection.false_positive_rate",
    "detection.benign_blocked_share",
    "detection.benign_degraded_share",
    "detection.harvest_share",
    "harvest.items",
    "harvest.fallback_share",
    "parity",
    "cost.api_usd",
];

/// Columns of the defense comparison.
pub const DEFENSE_COLUMNS: [&str; 8] = [
    "parity",
    "safety.transfer",
    "ei.gap",
    "defense.utility",
    "provenance.watermark_z",
    "provenance.flip_agreement",
    "fidelity",
    "cost.api_usd",
];

/// The defense-suite comparison: copy, safety and EI transfer, defender utility, detection and
/// attacker cost.
pub const SUITE_COLUMNS: [&str; 12] = [
    "parity",
    "safety.transfer",
    "ei.gap",
    "defense.utility",
    "provenance.watermark_z",
    "detection.days_to_first_action",
    "detection.recall",
    "detection.false_positive_rate",
    "detection.benign_blocked_share",
    "detection.harvest_share",
    "cost.api_usd",
    "cost.campaign_usd",
];

fn arrow(metric: &str) -> &'static str {
    match direction(metric) {
        Direction::Higher => " ↑",
        Direction::Lower => " ↓",
        Direction::Neutral => "",
    }
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        "nan".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x != 0.0 && x.abs() < 0.01 {
        format!("{x:.4}")
    } else {
        format!("{x:.3}")
    }
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (two-sided 95%).
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        31..=60 => 2.000 + (2.042 - 2.000) * (60 - df) as f64 / 30.0,
        _ => 1.96,
    }
}

/// Mean, 95% half-width (t over seeds; NaN for fewer than two) and count of finite values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub half: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(xs: &[f64]) -> Stat {
        let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        let n = v.len();
        if n == 0 {
            return Stat {
                mean: f64::NAN,
                half: f64::NAN,
                n,
            };
        }
        let m = v.iter().sum::<f64>() / n as f64;
        let half = if n < 2 {
            f64::NAN
        } else {
            let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64;
            t975(n - 1) * (var / n as f64).sqrt()
        };
        Stat { mean: m, half, n }
    }

    /// Whether the 95% interval excludes 0.
    pub fn excludes_zero(&self) -> bool {
        self.half.is_finite() && (self.mean - self.half > 0.0 || self.mean + self.half < 0.0)
    }

    fn cell(&self) -> String {
        if !self.mean.is_finite() {
            "-".into()
        } else if self.half.is_finite() {
            format!("{} ± {}", num(self.mean), num(self.half))
        } else {
            num(self.mean)
        }
    }
}

/// Checkpoints grouped by (grid point, budget), in sweep order, each with its run's seed.
pub type Groups<'a> = Vec<((String, u64), Vec<(u64, &'a Checkpoint)>)>;

pub fn group(runs: &[RunRecord]) -> Groups<'_> {
    let mut out: Groups<'_> = Vec::new();
    for r in runs {
        for c in &r.rows {
            let key = (r.point_label(), c.budget);
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some((_, g)) => g.push((r.seed, c)),
                None => out.push((key, vec![(r.seed, c)])),
            }
        }
    }
    out
}

fn header(first: &[&str], columns: &[&str]) -> String {
    let mut out = String::from("|");
    for f in first {
        out.push_str(&format!(" {f} |"));
    }
    for c in columns {
        out.push_str(&format!(" {c}{} |", arrow(c)));
    }
    out.push_str("\n|---|");
    for _ in 1..first.len() {
        out.push_str("---:|");
    }
    for _ in columns {
        out.push_str("---:|");
    }
    out.push('\n');
    out
}

/// The teacher's value of a column, as the runs recorded it (relative metrics are 1 or 0 by
/// definition for the teacher itself).
fn teacher_value(c: &Checkpoint, column: &str) -> Option<f64> {
    match column {
        "parity" | "parity.hard" | "fidelity" | "safety.transfer" => Some(1.0),
        "ei.gap" | "ei.gap.words" => Some(0.0),
        _ => c.get(&format!("teacher.{column}")),
    }
}

/// The distinct teachers of a set of runs (told apart by every `teacher.*` value they
/// recorded), grouped by a label: `teacher` when there is one, else `teacher (k=v)` with the
/// grid keys that every run of that teacher shares. Teachers that no grid key tells apart
/// (a run's seed picking its teacher from a pool, `teacher.pool`) share one row, labelled
/// `teacher (pool of N)` where N > 1, whose cells are mean ± 95% half-width over the N.
fn teachers(runs: &[RunRecord]) -> Vec<(String, Vec<&Checkpoint>)> {
    // (every teacher.* value, a checkpoint recording them, the runs with this teacher)
    type Found<'a> = (Vec<(String, u64)>, &'a Checkpoint, Vec<&'a RunRecord>);
    let mut found: Vec<Found> = Vec::new();
    for r in runs {
        let Some(c) = r.rows.first() else { continue };
        let key: Vec<(String, u64)> = c
            .metrics
            .iter()
            .filter(|(k, _)| k.starts_with("teacher."))
            .map(|(k, v)| (k.clone(), v.to_bits()))
            .collect();
        match found.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, _, rs)) => rs.push(r),
            None => found.push((key, c, vec![r])),
        }
    }
    let labelled: Vec<(String, &Checkpoint)> = found
        .iter()
        .map(|(_, c, rs)| {
            let shared: Vec<String> = rs[0]
                .point
                .iter()
                .filter(|kv| rs.iter().all(|r| r.point.contains(kv)))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            (shared.join(","), *c)
        })
        .collect();
    let mut out: Vec<(String, Vec<&Checkpoint>)> = Vec::new();
    for (shared, c) in labelled {
        match out.iter_mut().find(|(l, _)| *l == shared) {
            Some((_, cs)) => cs.push(c),
            None => out.push((shared, vec![c])),
        }
    }
    let single = out.len() == 1;
    out.into_iter()
        .map(|(shared, cs)| {
            let mut parts = Vec::new();
            if !single && !shared.is_empty() {
                parts.push(shared);
            }
            if cs.len() > 1 {
                parts.push(format!("pool of {}", cs.len()));
            }
            let label = if parts.is_empty() {
                "teacher".to_string()
            } else {
                format!("teacher ({})", parts.join(", "))
            };
            (label, cs)
        })
        .collect()
}

/// One row per (grid point, budget): mean ± 95% half-width over seeds, in sweep order; the
/// teacher's row first (one per distinct teacher, e.g. when the world is a grid axis).
pub fn aggregate_table(runs: &[RunRecord], columns: &[&str]) -> String {
    let mut out = header(&["setting", "budget", "seeds"], columns);
    let groups = group(runs);
    for (label, cs) in teachers(runs) {
        out.push_str(&format!("| {label} | - | - |"));
        for c in columns {
            let vs: Vec<f64> = cs.iter().filter_map(|c0| teacher_value(c0, c)).collect();
            let cell = match vs.as_slice() {
                [] => "-".into(),
                [v] => num(*v),
                _ => Stat::of(&vs).cell(),
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    for ((point, budget), g) in &groups {
        out.push_str(&format!("| {point} | {budget} | {} |", g.len()));
        for c in columns {
            let xs: Vec<f64> = g.iter().filter_map(|(_, r)| r.get(c)).collect();
            out.push_str(&format!(" {} |", Stat::of(&xs).cell()));
        }
        out.push('\n');
    }
    out
}

/// Pairs (checkpoint, its baseline's checkpoint) grouped by (grid point, budget).
type PairGroups<'a> = Vec<((String, u64), Vec<(&'a Checkpoint, &'a Checkpoint)>)>;

/// A baseline point: `key=value` (e.g. `variant=none`, `api.logprobs=0`).
pub fn parse_baseline(s: &str) -> crate::Result<(String, String)> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| {
            crate::Error::Invalid(format!(
                "--baseline `{s}`: expected KEY=VALUE, e.g. variant=none or api.logprobs=0"
            ))
        })
}

/// The paired difference of every point to its baseline: the point with `key` set to
/// `value` and every other grid key as in the point. Differences are per seed and budget;
/// cells are the mean difference ± its 95% half-width, marked `*` where the interval excludes
/// 0. Errors name the key or value that no run has.
pub fn paired_table(
    runs: &[RunRecord],
    baseline: &(String, String),
    columns: &[&str],
) -> crate::Result<String> {
    let (key, value) = baseline;
    if !runs
        .iter()
        .any(|r| r.point_value(key) == Some(value.as_str()))
    {
        let values: std::collections::BTreeSet<&str> =
            runs.iter().filter_map(|r| r.point_value(key)).collect();
        return Err(crate::Error::Invalid(format!(
            "--baseline {key}={value}: no run has it (values of `{key}` in these results: {})",
            if values.is_empty() {
                "none, it is not a grid key".to_string()
            } else {
                values.into_iter().collect::<Vec<_>>().join(", ")
            }
        )));
    }
    let base_of = |r: &RunRecord| -> Vec<(String, String)> {
        r.point
            .iter()
            .map(|(k, v)| {
                if k == key {
                    (k.clone(), value.clone())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect()
    };
    let title = format!(
        "Paired differences to the baseline {key}={value} (same seed, same budget): mean ± 95% \
         half-width; * where the interval excludes 0.\n\n"
    );
    Ok(pairs_table(runs, &title, columns, |r| {
        (r.point_value(key) != Some(value.as_str())).then(|| base_of(r))
    }))
}

/// The naive variant an adaptive one counters: `X` for `X (counter)` or `X adaptive`.
fn naive_name(variant: &str) -> Option<&str> {
    variant
        .strip_suffix(')')
        .and_then(|x| x.rsplit_once(" ("))
        .map(|(x, _)| x)
        .or_else(|| variant.strip_suffix(" adaptive"))
}

/// The adaptive attacker against the naive one under the same defense: a variant named
/// `X (counter)` or `X adaptive` paired with the variant `X` (same seed, same budget, every
/// other grid key alike). None when no variant has such a partner.
pub fn gap_table(runs: &[RunRecord], columns: &[&str]) -> Option<String> {
    let naive_of = |r: &RunRecord| -> Option<Vec<(String, String)>> {
        let naive = naive_name(r.point_value("variant")?)?;
        let want: Vec<(String, String)> = r
            .point
            .iter()
            .map(|(k, x)| {
                let x = if k == "variant" { naive } else { x.as_str() };
                (k.clone(), x.to_string())
            })
            .collect();
        runs.iter().any(|b| b.point == want).then_some(want)
    };
    runs.iter().any(|r| naive_of(r).is_some()).then(|| {
        pairs_table(
            runs,
            "The adaptive attacker against the naive one under the same defense: each `X \
             (counter)` or `X adaptive` minus `X` (same seed, same budget): mean ± 95% half-width; * where the \
             interval excludes 0.\n\n",
            columns,
            naive_of,
        )
    })
}

/// The fused scores' names among the `score.*` metrics.
const FUSED: [&str; 2] = ["fused", "fused_logistic"];
/// A detector whose measured benign FPR at the 0.3% point exceeds this did not hold it.
const HELD: f64 = 0.01;

/// A run's last checkpoint (detection does not depend on the budget).
fn last(r: &RunRecord) -> Option<&std::collections::BTreeMap<String, f64>> {
    r.rows.last().map(|c| &c.metrics)
}

fn of<'a>(runs: &'a [RunRecord], p: &'a str) -> impl Iterator<Item = &'a RunRecord> {
    runs.iter().filter(move |r| r.point_label() == p)
}

/// A metric of the last checkpoints of the runs at grid point `p`, over seeds.
fn point_stat(runs: &[RunRecord], p: &str, key: &str) -> Stat {
    let xs: Vec<f64> = of(runs, p)
        .filter_map(|r| last(r)?.get(key).copied())
        .collect();
    Stat::of(&xs)
}

/// Detection at operating points (runs with calibrated detector scores, `score.*`): per
/// setting and score, the AUC over accounts and, at 0.1% and 0.3% benign-account FPR, the
/// recall, the FPR measured on the run's own benign accounts, days to detection and the
/// harvest a takedown at each crossing would have left; then the fused score minus the best
/// single detector (chosen per setting by mean recall at 0.3%, on these same runs, which
/// favours the single detector), paired by seed. None without scores.
pub fn operating_points_table(runs: &[RunRecord]) -> Option<String> {
    use crate::traffic::detect::score::NAMES;
    let has = |n: &str| {
        let k = format!("score.auc.{n}");
        runs.iter()
            .any(|r| last(r).is_some_and(|m| m.contains_key(&k)))
    };
    let names: Vec<&str> = NAMES
        .iter()
        .copied()
        .chain(FUSED)
        .filter(|n| has(n))
        .collect();
    if names.is_empty() {
        return None;
    }
    let mut points: Vec<String> = Vec::new();
    for r in runs {
        if !points.contains(&r.point_label()) {
            points.push(r.point_label());
        }
    }
    let stat = |p: &str, key: &str| point_stat(runs, p, key);
    const COLS: [&str; 6] = [
        "auc",
        "recall@0.1%",
        "recall@0.3%",
        "benign_fpr@0.3%",
        "days@0.3%",
        "harvest@0.3%",
    ];
    let mut out = String::from(
        "Detection at operating points: every detector's score and the fused score, with \
         thresholds set on a benign-only calibration replay at 0.1% and 0.3% of benign \
         accounts; `benign_fpr` is measured on the run's own benign accounts, `harvest` is \
         the share of the campaign's queries sent before each account crossed.\n\n",
    );
    let head: Vec<String> = COLS
        .iter()
        .map(|c| format!("{c}{}", arrow(&format!("score.{c}.x"))))
        .collect();
    let head: Vec<&str> = head.iter().map(|s| s.as_str()).collect();
    out.push_str(&header(&["setting", "score", "seeds"], &head));
    for p in &points {
        for n in &names {
            let n_seeds = of(runs, p).filter(|r| last(r).is_some()).count();
            out.push_str(&format!("| {p} | {n} | {n_seeds} |"));
            for c in COLS {
                out.push_str(&format!(" {} |", stat(p, &format!("score.{c}.{n}")).cell()));
            }
            out.push('\n');
        }
    }
    out.push_str(&fused_vs_best(runs, &points, &names));
    out.push_str(&group_fpr_table(runs, &points, &names));
    Some(out)
}

/// The benign FPR of each score by benign group (the crowd and each segment kind) at both
/// operating points, for the settings with segments (empty without any).
fn group_fpr_table(runs: &[RunRecord], points: &[String], names: &[&str]) -> String {
    const GROUPS: [&str; 4] = ["crowd", "batch", "eval_harness", "reasoning_dev"];
    let stat = |p: &str, key: &str| point_stat(runs, p, key);
    let key = |f: &str, n: &str, g: &str| format!("score.benign_fpr@{f}.{n}.{g}");
    let split: Vec<&String> = points
        .iter()
        .filter(|p| {
            names
                .iter()
                .any(|n| stat(p, &key("0.3%", n, "crowd")).n > 0)
        })
        .collect();
    if split.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "
Benign FPR by group (settings with benign segments): the share of each group's \
         accounts above each threshold, mean ± 95% half-width over seeds. Thresholds hold \
         the benign population as a whole at 0.1% and 0.3%; a group above that is what the \
         detector mistakes for a campaign.\n\n",
    );
    let cols: Vec<String> = GROUPS
        .iter()
        .flat_map(|g| ["0.1%", "0.3%"].map(|f| format!("{g}@{f}")))
        .collect();
    let cols: Vec<&str> = cols.iter().map(String::as_str).collect();
    out.push_str(&header(&["setting", "score"], &cols));
    for p in split {
        for n in names {
            out.push_str(&format!("| {p} | {n} |"));
            for g in GROUPS {
                for f in ["0.1%", "0.3%"] {
                    out.push_str(&format!(" {} |", stat(p, &key(f, n, g)).cell()));
                }
            }
            out.push('\n');
        }
    }
    out
}

/// Each fused score minus the best single detector of each setting, paired by seed (the
/// second table of [`operating_points_table`]).
fn fused_vs_best(runs: &[RunRecord], points: &[String], names: &[&str]) -> String {
    let stat = |p: &str, key: &str| point_stat(runs, p, key);
    let mut out = String::from(
        "\nEach fused score minus the best single detector of its setting, paired by seed: \
         mean ± 95% half-width; * where the interval excludes 0. The best single detector has \
         the highest mean recall at 0.3% FPR on these runs (ties: the lower measured FPR) \
         among those that held that operating point, i.e. whose benign FPR measured on the \
         runs' own benign accounts is at most 1% (a cross-account signal the campaign itself \
         moves can miss its calibrated target); the last column is that measured FPR.\n\n| setting | fused score | best single | pairs | recall@0.1% | recall@0.3% | best single's benign_fpr@0.3% |\n|---|---|---|---:|---:|---:|---:|\n",
    );
    for p in points {
        // Eligible: a detector that held its operating point on these runs' own benign
        // accounts (measured FPR at most HELD, or not recorded); ties in recall go to the
        // lower measured FPR.
        let best = names
            .iter()
            .filter(|n| !FUSED.contains(n))
            .map(|&n| {
                let r = stat(p, &format!("score.recall@0.3%.{n}")).mean;
                (n, r, stat(p, &format!("score.benign_fpr@0.3%.{n}")).mean)
            })
            .filter(|(_, r, f)| r.is_finite() && (f.is_nan() || *f <= HELD))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.2.total_cmp(&a.2)))
            .map(|(n, r, _)| (n, r));
        let Some((best, _)) = best else {
            continue;
        };
        for fused in FUSED.iter().filter(|f| names.contains(f)) {
            let diff = |c: &str| {
                let d: Vec<f64> = of(runs, p)
                    .filter_map(|r| {
                        let m = last(r)?;
                        let key = |n: &str| format!("score.{c}.{n}");
                        Some(m.get(&key(fused))? - m.get(&key(best))?)
                    })
                    .collect();
                Stat::of(&d)
            };
            let (a, b) = (diff("recall@0.1%"), diff("recall@0.3%"));
            let mark = |s: &Stat| if s.excludes_zero() { " *" } else { "" };
            let fpr = stat(p, &format!("score.benign_fpr@0.3%.{best}"));
            out.push_str(&format!(
                "| {p} | {fused} | {best} | {} | {}{} | {}{} | {} |\n",
                a.n,
                a.cell(),
                mark(&a),
                b.cell(),
                mark(&b),
                fpr.cell()
            ));
        }
    }
    out
}

/// Per-seed, per-budget differences of each run to its partner run (`partner` names the
/// partner's grid point; None: the run is not paired), as a table under `title`.
fn pairs_table(
    runs: &[RunRecord],
    title: &str,
    columns: &[&str],
    partner: impl Fn(&RunRecord) -> Option<Vec<(String, String)>>,
) -> String {
    let mut out = title.to_string();
    out.push_str(&header(&["setting", "budget", "pairs"], columns));
    let mut groups: PairGroups<'_> = Vec::new();
    for r in runs {
        let Some(want) = partner(r) else {
            continue;
        };
        let Some(b) = runs.iter().find(|b| b.point == want && b.seed == r.seed) else {
            continue;
        };
        for c in &r.rows {
            let Some(bc) = b.rows.iter().find(|x| x.budget == c.budget) else {
                continue;
            };
            let k = (r.point_label(), c.budget);
            match groups.iter_mut().find(|(g, _)| *g == k) {
                Some((_, v)) => v.push((c, bc)),
                None => groups.push((k, vec![(c, bc)])),
            }
        }
    }
    for ((point, budget), pairs) in &groups {
        out.push_str(&format!("| {point} | {budget} | {} |", pairs.len()));
        for c in columns {
            let d: Vec<f64> = pairs
                .iter()
                .filter_map(|(a, b)| Some(a.get(c)? - b.get(c)?))
                .collect();
            let s = Stat::of(&d);
            let mark = if s.excludes_zero() { " *" } else { "" };
            out.push_str(&format!(" {}{mark} |", s.cell()));
        }
        out.push('\n');
    }
    out
}

/// The teacher's own metrics as a two-column table.
pub fn teacher_table(scores: &crate::eval::Scores) -> String {
    let mut out = String::from("| metric | teacher |\n|---|---:|\n");
    for (k, v) in scores {
        out.push_str(&format!("| {k}{} | {} |\n", arrow(k), num(*v)));
    }
    out
}

/// Columns for a results set: the first of the standard column sets whose defining metric the
/// runs carry, keeping the columns present in at least one checkpoint.
pub fn default_columns(runs: &[RunRecord]) -> Vec<String> {
    let has = |m: &str| {
        runs.iter()
            .any(|r| r.rows.iter().any(|c| c.get(m).is_some()))
    };
    let n_rows: usize = runs.iter().map(|r| r.rows.len()).sum();
    let any_defense = runs.iter().any(|r| {
        r.point
            .iter()
            .any(|(k, v)| k.contains("defenses") || v.contains("defense"))
    });
    let set: &[&str] = if has("detection.recall") && has("defense.utility") && n_rows > 40 {
        &SUITE_COLUMNS
    } else if has("detection.recall") {
        &DETECTION_COLUMNS
    } else if has("defense.utility") && any_defense {
        &DEFENSE_COLUMNS
    } else {
        &RUN_COLUMNS
    };
    set.iter()
        .filter(|c| has(c))
        .map(|c| c.to_string())
        .collect()
}

/// Quote a CSV field when it needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_num(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x}"),
        _ => String::new(),
    }
}

/// Every metric name in the runs, sorted.
fn metric_names(runs: &[RunRecord]) -> Vec<String> {
    let mut names: std::collections::BTreeSet<String> = Default::default();
    for r in runs {
        for c in &r.rows {
            names.extend(c.metrics.keys().cloned());
        }
    }
    names.into_iter().collect()
}

/// Long CSV: one line per run and budget checkpoint, every metric a column.
pub fn runs_csv(runs: &[RunRecord]) -> String {
    let names = metric_names(runs);
    let mut out = String::from("run,point,seed,status,budget");
    for n in &names {
        out.push(',');
        out.push_str(&csv_field(n));
    }
    out.push('\n');
    for r in runs {
        let lines: Vec<Option<&Checkpoint>> = if r.rows.is_empty() {
            vec![None]
        } else {
            r.rows.iter().map(Some).collect()
        };
        for row in lines {
            out.push_str(&format!(
                "{},{},{},{},{}",
                csv_field(&r.id),
                csv_field(&r.point_label()),
                r.seed,
                csv_field(&r.status),
                row.map_or(String::new(), |c| c.budget.to_string())
            ));
            for n in &names {
                out.push(',');
                out.push_str(&csv_num(row.and_then(|c| c.get(n))));
            }
            out.push('\n');
        }
    }
    out
}

/// Summary CSV: one line per grid point, budget and metric: mean, 95% half-width, seeds.
pub fn summary_csv(runs: &[RunRecord]) -> String {
    let names = metric_names(runs);
    let mut out = String::from("point,budget,metric,direction,mean,ci95_half,n\n");
    for ((point, budget), g) in group(runs) {
        for n in &names {
            let xs: Vec<f64> = g.iter().filter_map(|(_, c)| c.get(n)).collect();
            if xs.is_empty() {
                continue;
            }
            let s = Stat::of(&xs);
            let dir = match direction(n) {
                Direction::Higher => "higher",
                Direction::Lower => "lower",
                Direction::Neutral => "",
            };
            out.push_str(&format!(
                "{},{budget},{},{dir},{},{},{}\n",
                csv_field(&point),
                csv_field(n),
                csv_num(Some(s.mean)),
                csv_num(Some(s.half)),
                s.n
            ));
        }
    }
    out
}

/// The Markdown report of a set of runs: the aggregate table, the paired table when a
/// baseline is given, and the failed runs.
pub fn markdown(
    title: &str,
    runs: &[RunRecord],
    columns: &[&str],
    baseline: Option<&(String, String)>,
) -> crate::Result<String> {
    let failed: Vec<&RunRecord> = runs.iter().filter(|r| r.status != "ok").collect();
    let mut md = format!(
        "# {title}\n\n{} runs ({} failed). Cells: mean ± 95% half-width over seeds (t \
         interval); ↑/↓: which direction is better for the copy (detection metrics: for the \
         defender).\n\n",
        runs.len(),
        failed.len()
    );
    md.push_str(&aggregate_table(runs, columns));
    if let Some(b) = baseline {
        md.push('\n');
        md.push_str(&paired_table(runs, b, columns)?);
    }
    if let Some(g) = gap_table(runs, columns) {
        md.push('\n');
        md.push_str(&g);
    }
    if let Some(t) = operating_points_table(runs) {
        md.push('\n');
        md.push_str(&t);
    }
    if !failed.is_empty() {
        md.push_str("\nFailed runs:\n\n");
        for r in failed {
            md.push_str(&format!(
                "- `{}`: {}\n",
                r.id,
                r.error.as_deref().unwrap_or("no error recorded")
            ));
        }
    }
    Ok(md)
}

/// `distill-sim report`: the Markdown report of a results directory, written as `report.md`
/// with `runs.csv` and `summary.csv` next to the runs. Returns the Markdown.
pub fn report_dir(
    dir: &std::path::Path,
    columns: Option<&[String]>,
    baseline: Option<&str>,
) -> crate::Result<String> {
    let runs = load_dir(dir)?;
    crate::experiment::results::check_records_one_config(dir, &runs)?;
    let cols: Vec<String> = match columns {
        Some(c) => {
            let known = metric_names(&runs);
            if let Some(bad) = c.iter().find(|m| !known.contains(m)) {
                return Err(crate::Error::Invalid(format!(
                    "--metrics: no run records `{bad}` (recorded: {})",
                    known.join(", ")
                )));
            }
            c.to_vec()
        }
        None => default_columns(&runs),
    };
    let col_refs: Vec<&str> = cols.iter().map(|s| s.as_str()).collect();
    let baseline = baseline.map(parse_baseline).transpose()?;
    let title = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let md = markdown(&title, &runs, &col_refs, baseline.as_ref())?;
    crate::fsutil::clean_stale_temps(dir);
    let put = |name: &str, text: &str| -> crate::Result<()> {
        crate::fsutil::write_atomic(&dir.join(name), text.as_bytes())
    };
    put("report.md", &md)?;
    put("runs.csv", &runs_csv(&runs))?;
    put("summary.csv", &summary_csv(&runs))?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(point: &[(&str, &str)], seed: u64, budget: u64, parity: f64) -> RunRecord {
        RunRecord {
            id: format!("p{seed}"),
            index: 0,
            seed,
            point: point
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            status: "ok".into(),
            error: None,
            rows: vec![Checkpoint {
                budget,
                metrics: [("parity".to_string(), parity)].into_iter().collect(),
            }],
            timeline: None,
            config: None,
        }
    }

    /// A world on a grid axis gives each world its own teacher: one teacher row each,
    /// labelled by the grid keys its runs share (not by the variant they differ in).
    #[test]
    fn one_teacher_row_per_distinct_teacher() {
        let with_teacher = |point: &[(&str, &str)], seed, cap: f64| {
            let mut r = run(point, seed, 100, 0.5);
            r.rows[0].metrics.insert("teacher.capability".into(), cap);
            r
        };
        let runs = vec![
            with_teacher(&[("variant", "text"), ("world.answers", "one")], 1, 0.56),
            with_teacher(
                &[("variant", "logprobs"), ("world.answers", "one")],
                1,
                0.56,
            ),
            with_teacher(
                &[("variant", "text"), ("world.answers", "several")],
                1,
                0.52,
            ),
            with_teacher(
                &[("variant", "logprobs"), ("world.answers", "several")],
                1,
                0.52,
            ),
        ];
        let md = aggregate_table(&runs, &["capability"]);
        assert!(
            md.contains("| teacher (world.answers=one) | - | - | 0.560 |"),
            "{md}"
        );
        assert!(
            md.contains("| teacher (world.answers=several) | - | - | 0.520 |"),
            "{md}"
        );
        let md = aggregate_table(&runs[..2], &["capability"]);
        assert!(md.contains("| teacher | - | - | 0.560 |"), "{md}");

        // A pool: seed 2 faces another teacher in each world. No grid key tells the two
        // teachers of a world apart, so they share one row: mean ± half-width over the two.
        let mut pooled = runs.clone();
        for (point, cap) in [
            (&[("variant", "text"), ("world.answers", "one")], 0.58),
            (&[("variant", "logprobs"), ("world.answers", "one")], 0.58),
            (&[("variant", "text"), ("world.answers", "several")], 0.50),
            (
                &[("variant", "logprobs"), ("world.answers", "several")],
                0.50,
            ),
        ] {
            pooled.push(with_teacher(point, 2, cap));
        }
        let md = aggregate_table(&pooled, &["capability"]);
        let half = Stat::of(&[0.56, 0.58]).half;
        assert!(half > 0.0);
        let one = format!(
            "| teacher (world.answers=one, pool of 2) | - | - | {} |",
            Stat::of(&[0.56, 0.58]).cell()
        );
        assert!(md.contains(&one), "{md}");
        assert!(
            md.contains("| teacher (world.answers=several, pool of 2) |"),
            "{md}"
        );
        let md = aggregate_table(&[pooled[0].clone(), pooled[4].clone()], &["capability"]);
        assert!(md.contains("| teacher (pool of 2) |"), "{md}");
    }

    #[test]
    fn intervals_by_hand() {
        let s = Stat::of(&[1.0, 2.0, 3.0, f64::NAN]);
        assert_eq!((s.mean, s.n), (2.0, 3));
        // sd 1, n 3: 4.303 / sqrt(3).
        assert!((s.half - 4.303 / 3f64.sqrt()).abs() < 1e-12);
        assert!(!s.excludes_zero()); // [-0.48, 4.48]
        assert!(Stat::of(&[0.9, 1.0, 1.1]).excludes_zero());
        assert!(Stat::of(&[-0.9, -1.0, -1.1]).excludes_zero());
        assert!(!Stat::of(&[-1.0, 1.5]).excludes_zero());
        assert!(!Stat::of(&[1.0]).excludes_zero());
        assert_eq!(t975(1), 12.706);
        assert_eq!(t975(1000), 1.96);
    }

    #[test]
    fn tables_group_by_point_and_pair_by_seed() {
        let a = [("m", "a")];
        let b = [("m", "b")];
        let runs = vec![
            run(&a, 1, 10, 0.5),
            run(&a, 2, 10, 0.7),
            run(&b, 1, 10, 0.6),
            run(&b, 2, 10, 0.9),
        ];
        let t = aggregate_table(&runs, &["parity"]);
        // mean 0.6, sd 0.1414, n 2: 12.706 * 0.1 = 1.271.
        assert!(t.contains("| m=a | 10 | 2 | 0.600 ± 1.271 |"), "{t}");
        let p = paired_table(&runs, &("m".into(), "a".into()), &["parity"]).unwrap();
        // differences 0.1 and 0.2: mean 0.15, sd 0.0707, half 12.706 * 0.05 = 0.635.
        assert!(p.contains("| m=b | 10 | 2 | 0.150 ± 0.635 |"), "{p}");
        let e = paired_table(&runs, &("m".into(), "z".into()), &["parity"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("values of `m` in these results: a, b"),
            "{e}"
        );
    }

    /// `X (counter)` pairs with `X` by seed; a variant without a naive partner is left out.
    #[test]
    fn adaptive_variants_pair_with_their_naive_defense() {
        let naive = [("variant", "noise 8.0")];
        let adaptive = [("variant", "noise 8.0 (repeats 3 + mean)")];
        let orphan = [("variant", "flip 0.25 (public 0.5)")];
        let runs = vec![
            run(&naive, 1, 10, 0.30),
            run(&naive, 2, 10, 0.40),
            run(&adaptive, 1, 10, 0.20),
            run(&adaptive, 2, 10, 0.20),
            run(&orphan, 1, 10, 0.5),
        ];
        let g = gap_table(&runs, &["parity"]).unwrap();
        // differences -0.1 and -0.2: mean -0.15, half-width 12.706 * 0.05 = 0.635.
        assert!(
            g.contains("| variant=noise 8.0 (repeats 3 + mean) | 10 | 2 | -0.150 ± 0.635 |"),
            "{g}"
        );
        assert!(!g.contains("flip"), "{g}");
        assert_eq!(naive_name("noise 2.0 adaptive"), Some("noise 2.0"));
        assert_eq!(naive_name("none"), None);
        assert!(gap_table(&runs[..2], &["parity"]).is_none());
    }

    /// The operating-point table: per setting and score, and the fused score minus the
    /// setting's best single detector (by mean recall at 0.3%), paired by seed.
    #[test]
    fn operating_points_pair_the_fused_score_with_the_best_single_detector() {
        let p = [("variant", "none")];
        let mut runs = Vec::new();
        // Seeds 1 and 2: mmd recall@0.3% 0.5 and 0.7, volume 0.2 and 0.2, fused 0.6 and 0.9.
        for (seed, mmd, vol, fused) in [(1, 0.5, 0.2, 0.6), (2, 0.7, 0.2, 0.9)] {
            let mut r = run(&p, seed, 10, 0.5);
            let m = &mut r.rows[0].metrics;
            for (n, v) in [("mmd", mmd), ("volume", vol), ("fused", fused)] {
                m.insert(format!("score.auc.{n}"), 0.9);
                m.insert(format!("score.recall@0.3%.{n}"), v);
                m.insert(format!("score.recall@0.1%.{n}"), v / 2.0);
            }
            runs.push(r);
        }
        let t = operating_points_table(&runs).unwrap();
        // volume before mmd (detector order), fused last.
        let (v, m, f) = (t.find("| volume |"), t.find("| mmd |"), t.find("| fused |"));
        assert!(v < m && m < f, "{t}");
        // mmd's recall@0.3%: mean 0.6, half-width 12.706 * 0.1 = 1.271.
        assert!(t.contains("| 0.600 ± 1.271 |"), "{t}");
        // Best single: mmd. Fused minus mmd at 0.3%: 0.1 and 0.2 (mean 0.15, half 0.635);
        // at 0.1%: 0.05 and 0.1 (mean 0.075, half 0.318).
        assert!(
            t.contains("| variant=none | fused | mmd | 2 | 0.075 ± 0.318 | 0.150 ± 0.635 | - |"),
            "{t}"
        );
        assert!(operating_points_table(&[run(&p, 1, 10, 0.5)]).is_none());
    }
}
