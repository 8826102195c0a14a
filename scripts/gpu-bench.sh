#!/usr/bin/env bash
# The GPU measurements of issue 6, in one go, on a machine with an NVIDIA GPU and PyTorch 2.11
# (CUDA build) but no Rust toolchain: the binary is built elsewhere by scripts/package-gpu.sh
# and arrives as .gpu/distill-sim.gz with the default teacher in .gpu/cache.
#
#   bash scripts/gpu-bench.sh [stage ...]     stages: check bench reference e2e quickstart defenses
#                                             (default: check bench reference e2e quickstart)
#
# Environment: TORCH_VENV (default /opt/torch/.venv), OUT (default ./gpu-results).
# Prints Markdown tables; every stage writes its output under $OUT as well.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="${TORCH_VENV:-/opt/torch/.venv}"
out="${OUT:-$root/gpu-results}"
mkdir -p "$out"
py="$venv/bin/python"
site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# LibTorch and the CUDA libraries it loads (libtorch_cpu.so needs libcudart/libcupti even on
# the CPU; libtorch_cuda.so finds the rest through its RPATH).
libs="$site/torch/lib"
for d in "$site"/nvidia/*/lib "$site"/nvidia/cu*/lib; do
    [ -d "$d" ] && libs="$libs:$d"
done
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
bin="$out/distill-sim"
if [ ! -x "$bin" ]; then
    gzip -dc .gpu/distill-sim.gz > "$bin"
    chmod +x "$bin"
fi
cache=.gpu/cache
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(check bench reference e2e quickstart)

for stage in "${stages[@]}"; do
    echo "## $stage"
    case "$stage" in
    check)
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
        echo "glibc here: $(ldd --version | head -1)"
        libstdcxx="$(ldconfig -p | awk '/libstdc\+\+\.so\.6 /{print $NF; exit}')"
        echo "libstdc++ here: $libstdcxx, newest $(strings "$libstdcxx" | grep -E '^GLIBCXX_[0-9.]+$' | sort -V | tail -1)"
        [ -f .gpu/requires.txt ] && echo "the binary needs: $(cat .gpu/requires.txt)"
        "$py" -c 'import torch; print("PyTorch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())'
        "$bin" --version
        ;;
    bench)
        # Throughput: the tch engine on the GPU and on the CPU, with the workload dumped for
        # the reference.
        "$bin" bench --engines tch-cuda,tch-cpu --sizes student-s,teacher-s,teacher-m \
            --dump "$out/workload" | tee "$out/bench-tch.md"
        ;;
    reference)
        # PyTorch eager (and torch.compile where it works) on the same device, same workload.
        "$py" scripts/torch_reference.py --dir "$out/workload" --device cuda --compile \
            | tee "$out/bench-torch.md"
        ;;
    e2e)
        # A 1M-query harvest plus distillation on the GPU.
        "$bin" bench --engines tch-cuda --sizes student-s --harvest 1000000 --cache "$cache" \
            | tee "$out/bench-e2e.md"
        ;;
    quickstart)
        "$bin" run experiments/quickstart.yaml --device cuda --results "$out/results" \
            --cache "$cache" --jobs 4 | tee "$out/quickstart.md"
        ;;
    defenses)
        "$bin" run experiments/compare_defenses.yaml --device cuda --results "$out/results" \
            --cache "$cache" --jobs 8 | tee "$out/compare_defenses.md"
        ;;
    *)
        echo "unknown stage '$stage' (allowed: check bench reference e2e quickstart defenses)" >&2
        exit 2
        ;;
    esac
done
