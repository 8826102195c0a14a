//! `distill-sim distill HARVEST`: a harvest saved by any client (see [`crate::wire::harvest`])
//! run as an experiment's runs: the overrides that point the experiment at the file.

use crate::error::{Error, Result};
use std::path::Path;

/// The `--set` overrides (the user's `user` last, so they win) that make `config`'s runs
/// train on `harvest`: its absolute path and SHA-256, no grid, the checkpoints and budget at
/// the harvest's size unless given, and the teacher `serve` serves for `config` (its first
/// seed's, `teacher.pool: 1`) as every run's reference unless the teacher is given.
pub fn overrides(harvest: &Path, config: &Path, user: &[String]) -> Result<Vec<String>> {
    let file = harvest.canonicalize().map_err(|e| Error::io(harvest, e))?;
    let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
    let sha = crate::shipped::sha256_hex(&bytes);
    let read = crate::wire::harvest::read(&file, &sha)?;
    let n = read.items.len();
    if n == 0 {
        return Err(Error::Invalid(format!(
            "{}: no answered exchanges to train on ({} error responses)",
            file.display(),
            read.errors
        )));
    }
    eprintln!(
        "[distill] {}: {n} answers ({} error responses skipped)",
        file.display(),
        read.errors
    );
    let stem = file
        .file_stem()
        .map_or("harvest".into(), |s| s.to_string_lossy().into_owned());
    let given = |k: &str| user.iter().any(|s| s.starts_with(&format!("{k}=")));
    let mut set = vec![
        format!("name=distill-{stem}"),
        "grid={}".to_string(),
        format!("attacker.harvest_file={}", file.display()),
        format!("attacker.harvest_sha256={sha}"),
    ];
    if !given("checkpoints") {
        set.push(format!("checkpoints=[{n}]"));
    }
    if !given("attacker.budget") {
        set.push(format!("attacker.budget={n}"));
    }
    set.extend(user.iter().cloned());
    if !given("teacher.seed") && !given("teacher.pool") {
        let pairs = set
            .iter()
            .map(|s| {
                s.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| Error::Invalid(format!("--set `{s}`: expected KEY=VALUE")))
            })
            .collect::<Result<Vec<_>>>()?;
        let served = super::config::load(config, &pairs)?
            .config
            .run_teacher()
            .seed;
        set.push(format!("teacher.seed={served}"));
        set.push("teacher.pool=1".into());
    }
    Ok(set)
}
