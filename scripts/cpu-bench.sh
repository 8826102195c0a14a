#!/usr/bin/env bash
# The engines side by side on this machine's CPU, in one run, at one thread count: fused (the
# default build), burn and tch-cpu (the build with both features in target/tch, if built: the
# test command builds it where LibTorch is set up), PyTorch eager and torch.compile
# (scripts/torch_reference.py, if a Python with torch is found), all on the same weights and
# workload (`distill-sim bench --dump`). Prints the tables, the fused and burn step breakdowns
# and each engine's ratio to PyTorch eager; keeps everything under $OUT.
#
# Environment: THREADS (default: the number of cores), SIZES (default
# student-s,teacher-s,teacher-m), OUT (default ./bench-results), TORCH_PYTHON (default
# .torch-venv/bin/python; see scripts/setup-torch-cpu.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
threads="${THREADS:-$(nproc)}"
sizes="${SIZES:-student-s,teacher-s,teacher-m}"
out="${OUT:-$root/bench-results}"
py="${TORCH_PYTHON:-$root/.torch-venv/bin/python}"
mkdir -p "$out"
fused="$root/target/release/distill-sim"
tch="$root/target/tch/release/distill-sim"
[ -x "$fused" ] || (cd "$root" && cargo build --release)

echo "# CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $threads threads per engine"
echo
"$fused" bench --engines fused --sizes "$sizes" --threads "$threads" --dump "$out/dump" | tee "$out/fused.md"
echo
if [ -x "$tch" ]; then
    LD_LIBRARY_PATH="$root/.libtorch/torch/lib:$root/.libtorch/lib:${LD_LIBRARY_PATH:-}" \
        "$tch" bench --engines burn,tch-cpu --sizes "$sizes" --threads "$threads" | tee "$out/tch.md"
else
    echo "(no build with burn and LibTorch in target/tch: burn and tch-cpu rows skipped; see README, Engines)" | tee "$out/tch.md"
fi
echo
if [ -x "$py" ] && "$py" -c "import torch" 2>/dev/null; then
    "$py" "$root/scripts/torch_reference.py" --dir "$out/dump" --device cpu --threads "$threads" \
        --sizes "$sizes" --compile 2>/dev/null | tee "$out/torch.md"
else
    echo "(no Python with torch at $py: PyTorch rows skipped; see scripts/setup-torch-cpu.sh)" | tee "$out/torch.md"
fi
echo
# Ratios to PyTorch eager, per model: generation queries/s and training tokens/s.
python3 - "$out" <<'PY'
import sys, glob
rows = {}
for f in sorted(glob.glob(sys.argv[1] + "/*.md")):
    for line in open(f):
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) == 6 and c[0] not in ("engine", "---") and c[1] in ("student-s", "student-m", "teacher-s", "teacher-m", "tiny"):
            rows[(c[0], c[1])] = (c[3], c[5])
eager = {m: v for (e, m), v in rows.items() if e == "torch-eager-cpu"}
if not eager:
    sys.exit(0)
print("| engine | model | generation / eager | training / eager |")
print("|---|---|---:|---:|")
num = lambda s: float(s) if s not in ("-", "") else None
for (e, m), (g, t) in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    if m not in eager:
        continue
    eg, et = num(eager[m][0]), num(eager[m][1])
    r = lambda a, b: f"{num(a) / b:.2f}x" if num(a) and b else "-"
    print(f"| {e} | {m} | {r(g, eg)} | {r(t, et)} |")
PY
