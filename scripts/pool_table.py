#!/usr/bin/env python3
"""Print the shipped teacher pool's held-out table (Markdown) from the manifests.

Usage: python3 scripts/pool_table.py [shipped/teachers]
Columns are the teachers in teacher-seed order; rows the metrics of the manifests' tables.
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "shipped/teachers")
mans = [json.loads(p.read_text()) for p in sorted(root.glob("*/manifest.json"))]
mans.sort(key=lambda m: m["config"]["seed"])
rows = [
    "cap.add.easy", "cap.add.hard", "cap.copy_reverse.easy", "cap.copy_reverse.hard",
    "cap.lookup.easy", "cap.lookup.hard", "cap.program.easy", "cap.program.hard",
    "cap.sort.easy", "cap.sort.hard", "capability", "safety.balanced",
    "safety.jailbreak_balanced", "ei.act.words", "ei.act.voice", "ei.act.both",
    "ei.act.conflict", "ei.perception",
]
target = {r: (">= 0.95" if r.endswith(".easy") else ">= 0.80") for r in rows if r.startswith("cap.")}
print("| metric | " + " | ".join(f"seed {m['config']['seed']} (`{m['key'][:8]}`)" for m in mans) + " | target |")
print("|---|" + "---:|" * (len(mans) + 1))
for r in rows:
    print(f"| {r} | " + " | ".join(f"{m['table'][r]:.3f}" for m in mans) + f" | {target.get(r, '')} |")
print("| train seconds | " + " | ".join(f"{m['train_seconds']:.0f}" for m in mans) + " | |")
