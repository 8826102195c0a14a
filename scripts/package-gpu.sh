#!/usr/bin/env bash
# Build the GPU binary here (a CPU machine with Rust) for scripts/gpu-bench.sh on a GPU machine
# without Rust: the release binary with the LibTorch engine, stripped and gzipped, plus the
# default teacher from the cache, in .gpu/ (git-ignored; about 15 MB).
# Needs LibTorch 2.11.0 from scripts/setup-libtorch.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
[ -f .libtorch/torch/lib/libtorch_cpu.so ] || bash scripts/setup-libtorch.sh
export LIBTORCH="$root/.libtorch/torch"
export LD_LIBRARY_PATH="$root/.libtorch/torch/lib:$root/.libtorch/lib:${LD_LIBRARY_PATH:-}"
cargo build --release --features tch
mkdir -p .gpu/cache
strip -o .gpu/distill-sim target/release/distill-sim
# The newest glibc and libstdc++ symbol versions the binary needs (compare on the target).
objdump -T .gpu/distill-sim | grep -oE '(GLIBC|GLIBCXX|CXXABI)_[0-9.]+' | sort -Vu \
    | awk -F_ '{v[$1]=$0} END {for (k in v) printf "%s ", v[k]; print ""}' > .gpu/requires.txt
gzip -9f .gpu/distill-sim
# The default teacher (trained once by the quickstart; trained here if missing), so that the
# GPU run does not retrain it: weights load into any engine.
./target/release/distill-sim teacher train experiments/quickstart.yaml --cache results/.cache >/dev/null
cp -r results/.cache/teachers .gpu/cache/
ls -la .gpu .gpu/cache/teachers
echo "needs: $(cat .gpu/requires.txt)"
