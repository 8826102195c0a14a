#!/usr/bin/env bash
# The engines side by side on this machine's CPU, in one run, at one thread count: fused (the
# default build), burn and tch-cpu (the build with both features in target/tch, if built: the
# test command builds it where LibTorch is set up), PyTorch eager and torch.compile
# (scripts/torch_reference.py, if a Python with torch is found), all on the same weights and
# workload (`distill-sim bench --dump`). Prints the tables, the fused and burn step breakdowns
# and each engine's ratio to PyTorch eager; keeps everything under $OUT.
#
# Environment: THREADS (default: the number of cores), ROUNDS (default 3), SIZES (default
# student-s,teacher-s,teacher-m), OUT (default ./bench-results), TORCH_PYTHON (default
# .torch-venv/bin/python; see scripts/setup-torch-cpu.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
threads="${THREADS:-$(nproc)}"
rounds="${ROUNDS:-3}"
sizes="${SIZES:-student-s,teacher-s,teacher-m}"
out="${OUT:-$root/bench-results}"
py="${TORCH_PYTHON:-$root/.torch-venv/bin/python}"
mkdir -p "$out"
fused="$root/target/release/distill-sim"
tch="$root/target/tch/release/distill-sim"
[ -x "$fused" ] || (cd "$root" && cargo build --release)

echo "# CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $threads threads per engine; $rounds rounds"
echo
# Rounds: each runs every engine once, one after another, so that a slow spell of a shared
# machine hits one round's engines together; the ratios below are each round's, then their
# median (and range) over the rounds.
for r in $(seq 1 "$rounds"); do
    d="$out/round$r"
    mkdir -p "$d"
    echo "## round $r of $rounds"
    echo
    "$fused" bench --engines fused --sizes "$sizes" --threads "$threads" --dump "$out/dump" | tee "$d/fused.md"
    echo
    if [ -x "$tch" ]; then
        LD_LIBRARY_PATH="$root/.libtorch/torch/lib:$root/.libtorch/lib:${LD_LIBRARY_PATH:-}" \
            "$tch" bench --engines burn,tch-cpu --sizes "$sizes" --threads "$threads" | tee "$d/tch.md"
    else
        echo "(no build with burn and LibTorch in target/tch: burn and tch-cpu rows skipped; see README, Engines)" | tee "$d/tch.md"
    fi
    echo
    if [ -x "$py" ] && "$py" -c "import torch" 2>/dev/null; then
        "$py" "$root/scripts/torch_reference.py" --dir "$out/dump" --device cpu --threads "$threads" \
            --sizes "$sizes" --compile 2>/dev/null | tee "$d/torch.md"
    else
        echo "(no Python with torch at $py: PyTorch rows skipped; see scripts/setup-torch-cpu.sh)" | tee "$d/torch.md"
    fi
    echo
done
# Ratios to PyTorch eager, per model and round: generation queries/s and training tokens/s;
# the median over rounds, with the lowest and highest round in brackets.
python3 - "$out" "$rounds" <<'PY'
import sys, glob, statistics
out, rounds = sys.argv[1], int(sys.argv[2])
num = lambda s: float(s) if s not in ("-", "") else None
ratios = {}  # (engine, model) -> ([gen ratios], [train ratios])
for r in range(1, rounds + 1):
    rows = {}
    for f in sorted(glob.glob(f"{out}/round{r}/*.md")):
        for line in open(f):
            c = [x.strip() for x in line.strip().strip("|").split("|")]
            if len(c) == 6 and c[0] not in ("engine", "---") and c[1] in ("student-s", "student-m", "teacher-s", "teacher-m", "tiny"):
                rows[(c[0], c[1])] = (num(c[3]), num(c[5]))
    eager = {m: v for (e, m), v in rows.items() if e == "torch-eager-cpu"}
    for (e, m), (g, t) in rows.items():
        if m not in eager:
            continue
        eg, et = eager[m]
        gr, tr = ratios.setdefault((e, m), ([], []))
        if g and eg:
            gr.append(g / eg)
        if t and et:
            tr.append(t / et)
if not ratios:
    sys.exit(0)
def show(xs):
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.2f}x"
    return f"{statistics.median(xs):.2f}x [{min(xs):.2f}-{max(xs):.2f}]"
print(f"| engine | model | generation / eager | training / eager |   (median of {rounds} rounds [lowest-highest])")
print("|---|---|---:|---:|")
for (e, m), (g, t) in sorted(ratios.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print(f"| {e} | {m} | {show(g)} | {show(t)} |")
PY
