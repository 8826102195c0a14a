//! The notebooks under `notebooks/` execute headless against the committed sample results.
//! Set-up (a Python venv with pandas, matplotlib and nbclient) is done by `notebooks/setup.sh`;
//! where it cannot be done (no python3, no package index) the test says so and skips. CI runs
//! the set-up first, so there a broken set-up fails the build.

use std::path::Path;
use std::process::Command;

#[test]
fn notebooks_execute_headless_against_the_sample_results() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let setup = Command::new("bash")
        .arg(root.join("notebooks/setup.sh"))
        .output();
    match setup {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "SKIPPED notebooks: notebooks/setup.sh failed (python3 -m venv / pip install):\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED notebooks: cannot run bash notebooks/setup.sh: {e}");
            return;
        }
    }
    let out = Command::new("bash")
        .arg(root.join("notebooks/run.sh"))
        .env("DISTILL_SIM_RESULTS", root.join("results/samples"))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for nb in ["parity_curves", "defenses", "watermark"] {
        assert!(stdout.contains(&format!("ok      {nb}.ipynb")), "{stdout}");
    }
}
