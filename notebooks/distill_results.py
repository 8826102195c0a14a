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


def point_of(summary: dict) -> str:
    """The grid point of a run, from its record (`key=value,...` in key order; `-` for none)."""
    point = summary.get("point") or {}
    if not point:
        return "-"
    def text(v):
        return v if isinstance(v, str) else json.dumps(v)
    return ",".join(f"{k}={text(v)}" for k, v in point.items())


# 0.975 quantiles of Student's t for 1..30 degrees of freedom (95% two-sided intervals).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    """The t quantile the simulator's reports use (same table)."""
    if df < 1:
        return math.nan
    return _T975[df - 1] if df <= 30 else (2.0 + 0.042 * (60 - df) / 30 if df <= 60 else 1.96)


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
            m["point"] = point_of(summary)
            m["seed"] = summary.get("seed")
            m["index"] = summary.get("index", math.inf)
            rows.append(m)
    if not rows:
        raise FileNotFoundError(f"{experiment_dir}: no finished runs")
    df = pd.DataFrame(rows)
    # Metrics recorded as null (undefined, e.g. parity on a tier the teacher cannot do) are NaN.
    for c in df.columns:
        if c not in ("run", "point"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    df = df.sort_values(["index", "run", "budget"], kind="stable")
    return df.reset_index(drop=True)


def load_timelines(experiment_dir) -> pd.DataFrame:
    """One row per (run, simulated day) of the runs with a traffic timeline."""
    rows = []
    for run in sorted(Path(experiment_dir).iterdir()):
        t = run / "timeline.json"
        if run.is_dir() and t.exists():
            data = json.loads(t.read_text())
            summary = json.loads((run / "summary.json").read_text())
            for d in data["days"]:
                rows.append({"run": run.name, "point": point_of(summary), **d})
    return pd.DataFrame(rows)


def mean_stderr(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean, standard error and 95% t half-width (`ci95`) over seeds of `metric` per
    (point, budget)."""
    g = df.groupby(["point", "budget"], sort=False)[metric]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["stderr"] = out["std"] / out["count"].pow(0.5)
    out["ci95"] = [t975(int(n) - 1) * se for n, se in zip(out["count"], out["stderr"])]
    return out.drop(columns="std")
