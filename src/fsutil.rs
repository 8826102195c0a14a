//! Atomic file and directory writes (readers never see a half-written result), the cleaning
//! of temporaries that a crashed or failed write left behind, and per-run locks.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The temporary sibling of `path` that this process writes before renaming it into place:
/// `.<name>.tmp-<pid><ext>` (the extension kept, for writers that pick a format by it).
pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .filter(|e| e.len() <= 5 && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}{ext}", std::process::id()))
}

/// The process id in a temporary name made by `tmp_path`, if `name` is one.
fn tmp_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp-")?;
    let digits: String = tail.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Whether a process with this id is running (on platforms without /proc: assumed so).
pub fn pid_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    if proc.is_dir() {
        proc.join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Remove the temporaries under `dir` (not recursive) whose writer is no longer running:
/// what a crash, a kill or a full disk left behind. Returns how many were removed.
pub fn clean_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = tmp_owner(&name) {
            if !pid_alive(pid) {
                let p = e.path();
                let gone = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                n += gone.is_ok() as usize;
            }
        }
    }
    n
}

/// Write `data` to `path` via a temporary sibling and a rename; a failed write removes its
/// temporary.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    let tmp = tmp_path(path);
    let written = std::fs::write(&tmp, data)
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Produce `path` by letting `write` fill a temporary sibling, then renaming it into place
/// (for writers that take a path, like the figure backends); a failure removes the temporary.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), String>,
) -> Result<()> {
    let tmp = tmp_path(path);
    let written = write(&tmp)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
        .and_then(|_| {
            // A writer that reports success but wrote nothing (a full disk can do that) is
            // a failure, not an empty figure.
            match std::fs::metadata(&tmp) {
                Ok(m) if m.len() > 0 => Ok(()),
                Ok(_) => Err(Error::Invalid(format!(
                    "{}: the writer produced an empty file",
                    path.display()
                ))),
                Err(e) => Err(Error::io(&tmp, e)),
            }
        })
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// An exclusive lock on a file, held until dropped (the OS releases it if the process dies,
/// so a killed sweep never leaves a run locked).
pub struct Lock {
    _file: std::fs::File,
}

fn open_lock(path: &Path) -> Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Take the lock at `path` if no other process holds it (None if one does).
pub fn try_lock(path: &Path) -> Result<Option<Lock>> {
    let file = open_lock(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(Lock { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

/// Take the lock at `path`, waiting for another process to release it.
pub fn lock(path: &Path) -> Result<Lock> {
    let file = open_lock(path)?;
    file.lock().map_err(|e| Error::io(path, e))?;
    Ok(Lock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_of_dead_writers_are_cleaned_and_live_ones_kept() {
        let dir = std::env::temp_dir().join(format!("distill-sim-fsutil-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mine = tmp_path(&dir.join("fig.png"));
        assert!(mine.to_string_lossy().ends_with(".png"));
        assert_eq!(
            tmp_owner(&mine.file_name().unwrap().to_string_lossy()),
            Some(std::process::id())
        );
        std::fs::write(&mine, b"x").unwrap();
        // A pid above the kernel's maximum (4194304) never runs.
        let dead = dir.join(".model.safetensors.tmp-4999999");
        std::fs::write(&dead, b"x").unwrap();
        let dead_dir = dir.join(".seed=1.tmp-4999998");
        std::fs::create_dir_all(dead_dir.join("inner")).unwrap();
        std::fs::write(dir.join("results.json"), b"{}").unwrap();
        assert_eq!(clean_stale_temps(&dir), 2);
        assert!(mine.exists() && !dead.exists() && !dead_dir.exists());
        assert!(dir.join("results.json").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_write_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("distill-sim-fsfail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("figure.png");
        let e = write_atomic_with(&target, |p| {
            std::fs::write(p, b"").map_err(|e| e.to_string())
        })
        .unwrap_err();
        assert!(e.to_string().contains("empty file"), "{e}");
        let e = write_atomic_with(&target, |p| {
            std::fs::write(p, b"half").unwrap();
            Err("disk full".into())
        })
        .unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_held_lock_is_not_taken_twice() {
        let p = std::env::temp_dir().join(format!("distill-sim-lock-{}", std::process::id()));
        let held = try_lock(&p).unwrap().expect("free");
        assert!(try_lock(&p).unwrap().is_none(), "held by another handle");
        drop(held);
        assert!(try_lock(&p).unwrap().is_some(), "released on drop");
        let _ = std::fs::remove_file(&p);
    }
}
