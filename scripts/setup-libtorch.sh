#!/usr/bin/env bash
# Fetch LibTorch for the `tch` engine: the torch 2.11.0 wheel from the
# package index (about 530 MB), unpacked to .libtorch/ (torch/lib and torch/include), plus the
# two CUDA runtime libraries that the wheel's libtorch_cpu.so links against even on CPU
# (libcudart.so.13, libcupti.so.13; about 13 MB). Prints the environment to build with.
# Needs python3 with pip and access to the package index; run once (a second run only prints
# the environment).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.libtorch"
if [ -f "$dest/VERSION" ] && [ "$(cat "$dest/VERSION")" = "torch 2.11.0" ] \
    && [ -f "$dest/torch/lib/libtorch_cpu.so" ] && [ -f "$dest/lib/libcudart.so.13" ]; then
    echo "LibTorch 2.11.0 already in $dest"
    echo "export LIBTORCH=$dest/torch"
    echo "export LD_LIBRARY_PATH=$dest/torch/lib:$dest/lib:\${LD_LIBRARY_PATH:-}"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
py="${PYTHON:-python3}"
"$py" -m pip download --quiet --no-deps --only-binary=:all: -d "$work" \
    torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
rm -rf "$dest"
mkdir -p "$dest/lib"
cd "$work"
"$py" - "$dest" <<'PY'
import sys, zipfile, glob, os, shutil
dest = sys.argv[1]
torch = glob.glob("torch-2.11.0-*.whl")[0]
with zipfile.ZipFile(torch) as z:
    for n in z.namelist():
        if n.startswith(("torch/lib/", "torch/include/")):
            z.extract(n, dest)
for w in glob.glob("nvidia_cuda_*.whl"):
    with zipfile.ZipFile(w) as z:
        for n in z.namelist():
            if "/lib/lib" in n and ".so" in n:
                out = os.path.join(dest, "lib", os.path.basename(n))
                with z.open(n) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
PY
echo "torch 2.11.0" > "$dest/VERSION"
echo "LibTorch 2.11.0 in $dest"
echo "export LIBTORCH=$dest/torch"
echo "export LD_LIBRARY_PATH=$dest/torch/lib:$dest/lib:\${LD_LIBRARY_PATH:-}"
