#!/usr/bin/env bash
# Create notebooks/.venv with the packages in requirements.txt (once; re-run when the file
# changes). Needs python3 with the venv module and access to the package index at set-up time;
# running the notebooks afterwards needs no network.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
"$venv/bin/python" -m ipykernel install --prefix "$venv" --name distill-sim --display-name "distill-sim (notebooks/.venv)" >/dev/null
echo "$want" > "$stamp"
echo "notebooks/.venv ready"
