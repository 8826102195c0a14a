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
    let mut keys: Vec<(String, i64)> = Vec::new();
    let mut groups: std::collections::HashMap<(String, i64), Vec<&Value>> = Default::default();
    for (id, r) in rows {
        let key = (
            point_of(id),
            r.get("budget").and_then(|b| b.as_i64()).unwrap_or(0),
        );
        if !groups.contains_key(&key) {
            keys.push(key.clone());
        }
        groups.entry(key).or_default().push(r);
    }
    let mut out = String::from("| setting | budget | seeds |");
    for c in columns {
        out.push_str(&format!(" {c}{} |", arrow(c)));
    }
    out.push_str("\n|---|---:|---:|");
    for _ in columns {
        out.push_str("---:|");
    }
    out.push('\n');
    for key in keys {
        let g = &groups[&key];
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
