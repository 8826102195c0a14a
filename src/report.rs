//! Markdown tables from results rows: a pure function of results files, never the simulation.

use crate::eval::{direction, Direction};
use serde_json::Value;

/// Columns of the standard run table.
pub const RUN_COLUMNS: [&str; 11] = [
    "parity",
    "parity.hard",
    "fidelity",
    "safety.refusal",
    "safety.transfer",
    "safety.jailbreak_refusal",
    "ei.act.words",
    "ei.act.voice",
    "ei.gap",
    "ei.perception",
    "cost.usd",
];

fn arrow(metric: &str) -> &'static str {
    match direction(metric) {
        Direction::Higher => " ↑",
        Direction::Lower => " ↓",
        Direction::Neutral => "",
    }
}

fn fmt(v: Option<&Value>) -> String {
    match v.and_then(|v| v.as_f64()) {
        Some(x) if x.is_finite() && x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.is_finite() => format!("{x:.3}"),
        Some(_) => "nan".into(),
        None => "-".into(),
    }
}

/// A Markdown table: one row per (run, checkpoint), plus a teacher row from the first row's
/// `teacher.*` metrics.
pub fn run_table(rows: &[(String, Value)], columns: &[&str]) -> String {
    let mut out = String::new();
    out.push_str("| run | budget |");
    for c in columns {
        out.push_str(&format!(" {c}{} |", arrow(c)));
    }
    out.push('\n');
    out.push_str("|---|---:|");
    for _ in columns {
        out.push_str("---:|");
    }
    out.push('\n');
    if let Some((_, first)) = rows.first() {
        out.push_str("| teacher | - |");
        for c in columns {
            let v = match *c {
                "parity" | "parity.hard" | "fidelity" | "safety.transfer" => Some(Value::from(1.0)),
                "ei.gap" => Some(Value::from(0.0)),
                _ => first.get(format!("teacher.{c}")).cloned(),
            };
            out.push_str(&format!(" {} |", fmt(v.as_ref())));
        }
        out.push('\n');
    }
    for (id, r) in rows {
        out.push_str(&format!("| {id} | {} |", fmt(r.get("budget"))));
        for c in columns {
            out.push_str(&format!(" {} |", fmt(r.get(*c))));
        }
        out.push('\n');
    }
    out
}

/// The teacher's own metrics as a two-column table.
pub fn teacher_table(scores: &crate::eval::Scores) -> String {
    let mut out = String::from("| metric | teacher |\n|---|---:|\n");
    for (k, v) in scores {
        out.push_str(&format!("| {k}{} | {v:.3} |\n", arrow(k)));
    }
    out
}

/// The grid point of a run id (`...,seed=N` without the seed).
pub fn point_of(run_id: &str) -> String {
    match run_id.rfind("seed=") {
        Some(0) => "-".into(),
        Some(i) => run_id[..i].trim_end_matches(',').to_string(),
        None => run_id.to_string(),
    }
}

/// Mean and standard error of the finite values (stderr is NaN for fewer than two).
pub fn mean_stderr(xs: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (m, f64::NAN);
    }
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

/// One row per (grid point, budget): mean ± standard error over seeds, in first-seen order.
pub fn aggregate_table(rows: &[(String, Value)], columns: &[&str]) -> String {
    let mut out = String::from("| setting | budget | seeds |");
    for c in columns {
        out.push_str(&format!(" {c}{} |", arrow(c)));
    }
    out.push_str("\n|---|---:|---:|");
    for _ in columns {
        out.push_str("---:|");
    }
    out.push('\n');
    for (key, g) in group_rows(rows) {
        out.push_str(&format!("| {} | {} | {} |", key.0, key.1, g.len()));
        for c in columns {
            let xs: Vec<f64> = g
                .iter()
                .filter_map(|r| r.get(*c).and_then(|v| v.as_f64()))
                .collect();
            let (m, se) = mean_stderr(&xs);
            let cell = if !m.is_finite() {
                "-".to_string()
            } else if se.is_finite() {
                format!("{m:.3} ± {se:.3}")
            } else {
                format!("{m:.3}")
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}

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
    "cost.usd",
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
    "cost.usd",
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
    "cost.usd",
    "cost.campaign_usd",
];

/// Columns for a results set: the first of the standard column sets whose defining metric the
/// rows carry, keeping the columns present in at least one row.
pub fn default_columns(rows: &[(String, Value)]) -> Vec<String> {
    let has = |m: &str| rows.iter().any(|(_, r)| r.get(m).is_some());
    let set: &[&str] = if has("detection.recall") && has("defense.utility") && rows.len() > 40 {
        &SUITE_COLUMNS
    } else if has("detection.recall") {
        &DETECTION_COLUMNS
    } else if has("defense.utility") && rows.iter().any(|(id, _)| id.contains("defenses")) {
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

fn csv_number(v: Option<&Value>) -> String {
    match v {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => (*b as u8).to_string(),
        Some(Value::String(s)) => csv_field(s),
        _ => String::new(),
    }
}

/// Every metric name in the rows, sorted.
fn metric_names(rows: &[(String, Value)]) -> Vec<String> {
    let mut names: std::collections::BTreeSet<String> = Default::default();
    for (_, r) in rows {
        if let Some(o) = r.as_object() {
            names.extend(o.keys().filter(|k| *k != "budget").cloned());
        }
    }
    names.into_iter().collect()
}

/// Long CSV: one line per run and budget checkpoint, every metric a column.
pub fn runs_csv(runs: &[crate::experiment::results::RunRecord]) -> String {
    let rows: Vec<(String, Value)> = runs
        .iter()
        .flat_map(|r| r.rows.iter().map(|x| (r.id.clone(), x.clone())))
        .collect();
    let names = metric_names(&rows);
    let mut out = String::from("run,point,seed,status,budget");
    for n in &names {
        out.push(',');
        out.push_str(&csv_field(n));
    }
    out.push('\n');
    for r in runs {
        let lines: Vec<Option<&Value>> = if r.rows.is_empty() {
            vec![None]
        } else {
            r.rows.iter().map(Some).collect()
        };
        for row in lines {
            out.push_str(&format!(
                "{},{},{},{},{}",
                csv_field(&r.id),
                csv_field(&r.point()),
                r.seed,
                csv_field(&r.status),
                csv_number(row.and_then(|x| x.get("budget")))
            ));
            for n in &names {
                out.push(',');
                out.push_str(&csv_number(row.and_then(|x| x.get(n))));
            }
            out.push('\n');
        }
    }
    out
}

/// Summary CSV: one line per grid point, budget and metric: mean, standard error, seeds.
pub fn summary_csv(rows: &[(String, Value)]) -> String {
    let names = metric_names(rows);
    let mut out = String::from("point,budget,metric,direction,mean,stderr,n\n");
    for ((point, budget), group) in group_rows(rows) {
        for n in &names {
            let xs: Vec<f64> = group
                .iter()
                .filter_map(|r| r.get(n).and_then(|v| v.as_f64()))
                .collect();
            if xs.is_empty() {
                continue;
            }
            let (m, se) = mean_stderr(&xs);
            let dir = match direction(n) {
                Direction::Higher => "higher",
                Direction::Lower => "lower",
                Direction::Neutral => "",
            };
            let f = |x: f64| {
                if x.is_finite() {
                    format!("{x}")
                } else {
                    String::new()
                }
            };
            out.push_str(&format!(
                "{},{budget},{},{dir},{},{},{}\n",
                csv_field(&point),
                csv_field(n),
                f(m),
                f(se),
                xs.iter().filter(|x| x.is_finite()).count()
            ));
        }
    }
    out
}

/// Rows grouped by (grid point, budget), in first-seen order.
pub fn group_rows(rows: &[(String, Value)]) -> Vec<((String, i64), Vec<&Value>)> {
    let mut out: Vec<((String, i64), Vec<&Value>)> = Vec::new();
    for (id, r) in rows {
        let key = (
            point_of(id),
            r.get("budget").and_then(|b| b.as_i64()).unwrap_or(0),
        );
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(r),
            None => out.push((key, vec![r])),
        }
    }
    out
}

/// `distill-sim report`: the Markdown table (mean ± stderr over seeds, directions marked) of a
/// results directory, written with `runs.csv` and `summary.csv` next to the runs. Returns the
/// Markdown.
pub fn report_dir(dir: &std::path::Path, columns: Option<&[String]>) -> crate::Result<String> {
    let runs = crate::experiment::results::load_dir(dir)?;
    let rows: Vec<(String, Value)> = runs
        .iter()
        .flat_map(|r| r.rows.iter().map(|x| (r.id.clone(), x.clone())))
        .collect();
    let cols: Vec<String> = match columns {
        Some(c) => c.to_vec(),
        None => default_columns(&rows),
    };
    let col_refs: Vec<&str> = cols.iter().map(|s| s.as_str()).collect();
    let failed: Vec<&crate::experiment::results::RunRecord> =
        runs.iter().filter(|r| r.status != "ok").collect();
    let mut md = format!(
        "# {}\n\n{} runs ({} failed). Cells: mean ± standard error over seeds; ↑/↓: which \
         direction is better for the copy (detection metrics: for the defender).\n\n",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        runs.len(),
        failed.len()
    );
    md.push_str(&aggregate_table(&rows, &col_refs));
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
    let put = |name: &str, text: &str| -> crate::Result<()> {
        crate::fsutil::write_atomic(&dir.join(name), text.as_bytes())
    };
    put("report.md", &md)?;
    put("runs.csv", &runs_csv(&runs))?;
    put("summary.csv", &summary_csv(&rows))?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_stderr_by_hand() {
        let (m, se) = mean_stderr(&[1.0, 2.0, 3.0, f64::NAN]);
        assert_eq!(m, 2.0);
        assert!((se - (1.0f64 / 3.0).sqrt()).abs() < 1e-12); // sd 1, n 3
        assert_eq!(point_of("a=1,b=2,seed=3"), "a=1,b=2");
        assert_eq!(point_of("seed=3"), "-");
        let rows = vec![
            (
                "a=1,seed=1".to_string(),
                serde_json::json!({"budget": 10, "parity": 0.5}),
            ),
            (
                "a=1,seed=2".to_string(),
                serde_json::json!({"budget": 10, "parity": 0.7}),
            ),
        ];
        let t = aggregate_table(&rows, &["parity"]);
        assert!(t.contains("| a=1 | 10 | 2 | 0.600 ± 0.100 |"), "{t}");
    }
}
