"""Load distill-sim results directories into pandas (shared by the notebooks).

A results directory is `results/<experiment>/`, one sub-directory per run with
`summary.json` (status, seed, grid point, sweep index), `metrics.jsonl` (one line per budget
checkpoint) and, for runs with traffic, `timeline.json`.
"""

import json
import math
import os
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def results_root() -> Path:
    """Where the notebooks read results: $DISTILL_SIM_RESULTS, else the committed samples."""
    return Path(os.environ.get("DISTILL_SIM_RESULTS", ROOT / "results" / "samples"))


def point_of(run_id: str) -> str:
    """The grid point of a run id (the id without its trailing `seed=N`)."""
    i = run_id.rfind("seed=")
    return "-" if i == 0 else run_id[:i].rstrip(",") if i > 0 else run_id


def load_runs(experiment_dir) -> pd.DataFrame:
    """One row per (run, budget checkpoint) of the finished runs, in sweep order."""
    experiment_dir = Path(experiment_dir)
    rows = []
    for run in sorted(p for p in experiment_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        summary_path = run / "summary.json"
        if not summary_path.exists():
            continue
        summary = json.loads(summary_path.read_text())
        if summary.get("status") != "ok":
            continue
        for line in (run / "metrics.jsonl").read_text().splitlines():
            m = json.loads(line)
            m["run"] = run.name
            m["point"] = point_of(run.name)
            m["seed"] = summary.get("seed")
            m["index"] = summary.get("index", math.inf)
            rows.append(m)
    if not rows:
        raise FileNotFoundError(f"{experiment_dir}: no finished runs")
    df = pd.DataFrame(rows).sort_values(["index", "run", "budget"], kind="stable")
    return df.reset_index(drop=True)


def load_timelines(experiment_dir) -> pd.DataFrame:
    """One row per (run, simulated day) of the runs with a traffic timeline."""
    rows = []
    for run in sorted(Path(experiment_dir).iterdir()):
        t = run / "timeline.json"
        if run.is_dir() and t.exists():
            data = json.loads(t.read_text())
            for d in data["days"]:
                rows.append({"run": run.name, "point": point_of(run.name), **d})
    return pd.DataFrame(rows)


def mean_stderr(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean and standard error over seeds of `metric` per (point, budget)."""
    g = df.groupby(["point", "budget"], sort=False)[metric]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["stderr"] = out["std"] / out["count"].pow(0.5)
    return out.drop(columns="std")
