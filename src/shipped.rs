//! Shipped models: trained teachers and attacker base models committed with the project, so
//! that a new user does not train them for minutes (and every user faces the same teacher
//! bytes). An artefact is `shipped/<kind>/<key>/model.safetensors` beside a `manifest.json`
//! that records its cache key, the config it was trained from, its SHA-256, the engine, steps,
//! wall time and machine that trained it, and its held-out eval table.
//!
//! The cache looks here first (read-only, checksum checked), then in its own directory, then
//! trains. `distill-sim teacher train --retrain` trains a shipped teacher again and compares
//! its SHA-256 with the shipped file's (bit-identical on the CPU type that trained it; on
//! another, floating point differs and so do the bytes).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a manifest records about one shipped model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `teachers` or `bases`.
    pub kind: String,
    /// The cache key (the directory's name).
    pub key: String,
    /// The config it was trained from (the teacher section and the world keys in its key, or
    /// the base section and the student size).
    pub config: serde_json::Value,
    /// SHA-256 of `model.safetensors`, hex.
    pub sha256: String,
    /// The engine that trained it.
    pub engine: String,
    pub steps: usize,
    pub train_seconds: f64,
    /// CPU and thread count of the machine that trained it.
    pub machine: String,
    /// Held-out eval table (teachers: the run's `teacher.*` metrics without the prefix).
    #[serde(default)]
    pub table: BTreeMap<String, f64>,
}

/// Where shipped models live: `$DISTILL_SIM_SHIPPED`, else `shipped/` in the working
/// directory, else the `shipped/` of the source tree this binary was built from.
pub fn root() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DISTILL_SIM_SHIPPED") {
        return Some(PathBuf::from(p));
    }
    let here = PathBuf::from("shipped");
    if here.is_dir() {
        return Some(here);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("shipped");
    built.is_dir().then_some(built)
}

/// The directory of artefact `key` of `kind` under `root`.
pub fn dir(root: &Path, kind: &str, key: &str) -> PathBuf {
    root.join(kind).join(key)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Read and check the artefact in `dir`: its manifest parses, names `kind` and `key`, and
/// the weights match its SHA-256. Returns the weights' path and the manifest.
pub fn check(dir: &Path, kind: &str, key: &str) -> Result<(PathBuf, Manifest)> {
    let mpath = dir.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).map_err(|e| Error::io(&mpath, e))?;
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: {e}", mpath.display())))?;
    if m.kind != kind || m.key != key {
        return Err(Error::Model(format!(
            "{}: the manifest is for {} {}, not {kind} {key}",
            mpath.display(),
            m.kind,
            m.key
        )));
    }
    let wpath = dir.join("model.safetensors");
    let bytes = std::fs::read(&wpath).map_err(|e| Error::io(&wpath, e))?;
    let actual = sha256_hex(&bytes);
    if actual != m.sha256 {
        return Err(Error::Model(format!(
            "shipped {kind} {}: checksum {actual} differs from its manifest's {} (a corrupt \
             or edited file; restore it with `git checkout -- {}`)",
            wpath.display(),
            m.sha256,
            dir.display()
        )));
    }
    Ok((wpath, m))
}

/// The shipped artefact `key` of `kind`, checked, if there is one.
pub fn find(kind: &str, key: &str) -> Result<Option<(PathBuf, Manifest)>> {
    let Some(root) = root() else { return Ok(None) };
    let d = dir(&root, kind, key);
    if !d.join("manifest.json").exists() {
        return Ok(None);
    }
    check(&d, kind, key).map(Some)
}

/// Every shipped artefact of `kind` under `root`: (key, directory).
pub fn list(root: &Path, kind: &str) -> Result<Vec<(String, PathBuf)>> {
    let d = root.join(kind);
    if !d.is_dir() {
        return Ok(vec![]);
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
        let e = e.map_err(|e| Error::io(&d, e))?;
        if e.path().is_dir() {
            out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Copy trained weights into `root` as artefact `m.key` of `m.kind`, manifest written last
/// (an artefact without a manifest is not found).
pub fn write(root: &Path, weights: &Path, m: &Manifest) -> Result<PathBuf> {
    let d = dir(root, &m.kind, &m.key);
    std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    let bytes = std::fs::read(weights).map_err(|e| Error::io(weights, e))?;
    if sha256_hex(&bytes) != m.sha256 {
        return Err(Error::Model(format!(
            "{}: its checksum is not the manifest's {}",
            weights.display(),
            m.sha256
        )));
    }
    crate::fsutil::write_atomic(&d.join("model.safetensors"), &bytes)?;
    let text = serde_json::to_string_pretty(m)
        .map_err(|e| Error::Invalid(format!("manifest of {}: {e}", m.key)))?
        + "\n";
    crate::fsutil::write_atomic(&d.join("manifest.json"), text.as_bytes())?;
    Ok(d)
}

/// The machine, for manifests: CPU model, family/model numbers and the thread count.
pub fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "{} (family {} model {}), {} threads",
        field("model name"),
        field("cpu family"),
        field("model\t"),
        crate::model::compute_threads()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_artefacts_are_found_checked_and_refused_when_edited() {
        let root = std::env::temp_dir().join(format!("ds-shipped-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let w = root.join("w.safetensors");
        std::fs::write(&w, b"weights").unwrap();
        let m = Manifest {
            kind: "teachers".into(),
            key: "00ff".into(),
            config: serde_json::json!({"size": "tiny"}),
            sha256: sha256_hex(b"weights"),
            engine: "fused".into(),
            steps: 1,
            train_seconds: 0.0,
            machine: machine(),
            table: Default::default(),
        };
        let d = write(&root, &w, &m).unwrap();
        let (p, back) = check(&d, "teachers", "00ff").unwrap();
        assert_eq!(back, m);
        assert_eq!(std::fs::read(p).unwrap(), b"weights");
        assert_eq!(list(&root, "teachers").unwrap().len(), 1);
        // Another key's manifest is refused; so is an edited file.
        assert!(check(&d, "teachers", "00fe").is_err());
        std::fs::write(d.join("model.safetensors"), b"weightz").unwrap();
        let e = check(&d, "teachers", "00ff").unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        // Weights that do not match the manifest are not written.
        assert!(write(
            &root,
            &w,
            &Manifest {
                sha256: "00".into(),
                ..m
            }
        )
        .is_err());
        let _ = std::fs::remove_dir_all(&root);
    }
}
