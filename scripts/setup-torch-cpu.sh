#!/usr/bin/env bash
# A Python environment with PyTorch 2.11 for the CPU reference of scripts/cpu-bench.sh, in
# .torch-venv/ (ignored by git). Only benchmarks use it; nothing the simulator runs needs it.
# The PyPI wheel of torch 2.11 for Linux is the CUDA build: its libraries load the CUDA runtime
# packages even on a CPU-only machine, so they are installed too (about 3 GB in all); triton
# (GPU kernels for torch.compile) is left out, since torch.compile on the CPU generates C++.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.torch-venv"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "PyTorch already in $venv"
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --no-deps torch==2.11.0
"$venv/bin/pip" install --quiet numpy safetensors typing_extensions sympy filelock jinja2 \
    networkx fsspec \
    "cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx]==13.0.2" \
    nvidia-cudnn-cu13==9.19.0.56 nvidia-cusparselt-cu13==0.8.0 nvidia-nccl-cu13==2.28.9 \
    nvidia-nvshmem-cu13==3.4.5
"$venv/bin/python" -c "import torch; print('PyTorch', torch.__version__, 'in $venv')"
