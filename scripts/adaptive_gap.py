#!/usr/bin/env python3
"""Paired gaps of an adaptive attacker to the naive one under the same defense.

Usage: python3 scripts/adaptive_gap.py results/samples/adaptive_counters [metric ...]

Reads the report's runs.csv (run `distill-sim report DIR` first); for every variant `X` that
has a `X adaptive` twin, prints mean ± 95% t half-width over seeds of (adaptive - naive),
paired by seed, for each metric (default: parity, parity.hard, fidelity, cost.api_usd).
"""
import csv
import math
import sys
from collections import defaultdict

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}

d = sys.argv[1]
metrics = sys.argv[2:] or ["parity", "parity.hard", "fidelity", "cost.api_usd"]
rows = defaultdict(dict)  # (variant, budget) -> seed -> row
for r in csv.DictReader(open(f"{d}/runs.csv")):
    if r["status"] != "ok":
        continue
    variant = dict(kv.split("=", 1) for kv in r["point"].split(",") if "=" in kv).get("variant", r["point"])
    rows[(variant, r["budget"])][r["seed"]] = r


def cell(xs):
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return f"{m:+.3f}"
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    h = T95.get(n - 1, 1.96) * sd / math.sqrt(n)
    star = "*" if abs(m) > h else ""
    return f"{m:+.3f} ± {h:.3f}{star}"


print("| defense | budget | pairs | " + " | ".join(f"{m} (adaptive - naive)" for m in metrics) + " |")
print("|---|---:|---:|" + "---:|" * len(metrics))
for (variant, budget), naive in sorted(rows.items()):
    twin = rows.get((f"{variant} adaptive", budget))
    if variant.endswith(" adaptive") or not twin:
        continue
    seeds = sorted(set(naive) & set(twin), key=int)
    cells = [cell([float(twin[s][m]) - float(naive[s][m]) for s in seeds]) for m in metrics]
    print(f"| {variant} | {budget} | {len(seeds)} | " + " | ".join(cells) + " |")
