//! The shipped models (shipped/): every artefact loads, matches its checksum and its key, and
//! scores its manifest's table on a small eval within sampling error; every committed
//! experiment's teachers are shipped, or the experiment is listed in shipped/PENDING (and a
//! listed experiment whose teachers are all shipped is a stale entry).

use distill_sim::experiment::config;
use distill_sim::experiment::teachers::distinct_teachers;
use distill_sim::experiment::teachers::table;
use distill_sim::model::{load_engine, Backend, ModelSpec};
use distill_sim::shipped;
use distill_sim::teacher::Teacher;
use distill_sim::teacher::TeacherConfig;
use distill_sim::world::answers::Answers;
use distill_sim::world::{Harm, WorldConfig};

/// The key a teacher config of `json`'s fields has in `world` (the manifest's config is what
/// the key hashes, so the two must agree).
fn teacher_key(json: &serde_json::Value, world: &WorldConfig) -> String {
    let mut t = TeacherConfig {
        size: json["size"].as_str().unwrap().into(),
        seed: json["seed"].as_u64().unwrap(),
        train: serde_json::from_value(json["train"].clone()).unwrap(),
        skill_weights: serde_json::from_value(json["skill_weights"].clone()).unwrap(),
        ..TeacherConfig::default()
    };
    if let Some(c) = json.get("trainer") {
        t.trainer = serde_json::from_value(c.clone()).unwrap();
    }
    if let Some(c) = json.get("curriculum") {
        t.curriculum = serde_json::from_value(c.clone()).unwrap();
    }
    t.hash(world)
}
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("shipped")
}

fn key_of(json: &serde_json::Value) -> String {
    Sha256::digest(json.to_string().as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Prompts per suite of the small eval.
const SMALL: usize = 60;

#[test]
fn every_shipped_teacher_loads_matches_its_key_and_scores_its_table() {
    let teachers = shipped::list(&root(), "teachers").unwrap();
    // The quickstart's pool alone is five teachers: an empty list means the tree was not found.
    assert!(
        teachers.len() >= 5,
        "{} shipped teachers under {}",
        teachers.len(),
        root().display()
    );
    for (key, dir) in &teachers {
        let (weights, m) = shipped::check(dir, "teachers", key).unwrap();
        assert_eq!(
            &key_of(&m.config),
            key,
            "{}: key of its config",
            dir.display()
        );
        let size = m.config["size"].as_str().unwrap();
        let spec = ModelSpec::preset(size).unwrap();
        let teacher = Teacher::Neural(load_engine(Backend::FUSED, spec, &weights).unwrap());
        // The world of the key, with a smaller eval sample.
        let c = &m.config;
        let world = WorldConfig {
            eval_per_suite: SMALL,
            answers: if c["answers"]["several"] == true {
                Answers::Several
            } else {
                Answers::One
            },
            synonym_share: c["answers"]["synonym_share"].as_f64().unwrap_or(0.3),
            near_miss_share: c["answers"]["near_miss_share"].as_f64().unwrap_or(0.0),
            harm: if c["harm"]["graded"] == true {
                Harm::Graded
            } else {
                Harm::Intent
            },
            boundary_noise: c["harm"]["boundary_noise"].as_f64().unwrap_or(0.0),
            ..WorldConfig::default()
        };
        assert_eq!(
            teacher_key(c, &world),
            *key,
            "{key}: the world read back from its key"
        );
        let small = table(&teacher, &world);
        let mut checked = 0;
        for (metric, &want) in &m.table {
            // Exact-match rates of the skill tiers (cap.<skill>.<tier>).
            if !(metric.starts_with("cap.") && metric.matches('.').count() == 2) {
                continue;
            }
            let got = small[metric];
            // Another sample of the same suites' distribution (SMALL against the manifest's
            // 200 prompts): binomial sampling error of both, 4 sigma, plus a little for
            // another CPU's rounding.
            let var = want * (1.0 - want) * (1.0 / SMALL as f64 + 1.0 / 200.0);
            let tol = 4.0 * var.sqrt() + 0.03;
            assert!(
                (got - want).abs() <= tol,
                "{key} {metric}: {got:.3} on {SMALL} prompts, the manifest says {want:.3} (tolerance {tol:.3})"
            );
            checked += 1;
        }
        assert!(
            checked >= 10,
            "{key}: only {checked} capability tiers in its table"
        );
    }
}

#[test]
fn every_committed_experiment_has_its_teachers_shipped_or_is_listed_pending() {
    let pending_path = root().join("PENDING");
    let pending_text = std::fs::read_to_string(&pending_path).unwrap_or_default();
    let pending: Vec<&str> = pending_text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut missing = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let exp = config::load(f, &[]).unwrap();
        let unshipped: Vec<String> = distinct_teachers(&exp)
            .iter()
            .map(|(t, w)| t.hash(w))
            .filter(|k| {
                !root()
                    .join("teachers")
                    .join(k)
                    .join("manifest.json")
                    .exists()
            })
            .collect();
        let listed = pending.contains(&name.as_str());
        if !unshipped.is_empty() && !listed {
            missing.push(format!("{name}: teachers {unshipped:?} are not shipped"));
        }
        if unshipped.is_empty() && listed {
            missing.push(format!(
                "{name}: every teacher is shipped; remove it from {}",
                pending_path.display()
            ));
        }
    }
    for p in &pending {
        assert!(
            files
                .iter()
                .any(|f| f.file_name().unwrap().to_string_lossy() == *p),
            "{}: `{p}` is not an experiment",
            pending_path.display()
        );
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
