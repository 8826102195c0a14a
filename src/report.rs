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
